//! Reading a layer's files ahead of its tar writer, on other threads.
//!
//! The tar writer is one thread: it hashes the stream (the diff_id, which the
//! next step waits for) and cuts it into pieces. Opening, reading and
//! BLAKE3-checking ten thousand small context files is most of its time;
//! done here by [`READERS`] threads in parallel, in entry order, the writer
//! only copies bytes. Every file is checked (a [`Content::Checked`] file
//! must hold the bytes its cache key was made from) before the writer takes
//! it, so the diff_id is never made from bytes the key did not see.
//!
//! Memory is bounded: at most [`AHEAD_BYTES`] of read bytes wait, and files
//! above [`SMALL`] are left to the writer, which streams them as before.

use super::{CheckingReader, Content, EntryKind, LayerEntry};
use parking_lot::{Condvar, Mutex};
use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Reader threads.
const READERS: usize = 2;
/// Files up to this size are read ahead; larger ones are streamed by the writer.
const SMALL: u64 = 1 << 20;
/// Read bytes waiting for the writer, at most (one file may exceed it).
const AHEAD_BYTES: usize = 64 << 20;

/// What a reader made of an entry.
pub(super) enum Ahead {
    /// Not a file read ahead: the writer handles the entry itself.
    Writer,
    /// The file's bytes, checked.
    Read(Vec<u8>),
    Failed(io::Error),
}

/// Files of a layer's entries being read ahead.
pub(super) struct Prefetch<'c> {
    entries: Vec<&'c LayerEntry>,
    next: AtomicUsize,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    ready: std::collections::HashMap<usize, Ahead>,
    /// Bytes in `ready`.
    bytes: usize,
    /// The entry the writer waits for (read whatever the room).
    wanted: usize,
    /// The writer stopped: readers stop too.
    stopped: bool,
}

impl<'c> Prefetch<'c> {
    pub(super) fn new(entries: impl Iterator<Item = &'c LayerEntry>) -> Prefetch<'c> {
        Prefetch {
            entries: entries.collect(),
            next: AtomicUsize::new(0),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }
    }

    /// Runs `write` (the tar writer, which takes entries in order with
    /// [`Prefetch::take`]) while reader threads read ahead of it.
    pub(super) fn run<T>(&self, write: impl FnOnce() -> T) -> T {
        std::thread::scope(|scope| {
            for _ in 0..READERS {
                scope.spawn(|| self.read_ahead());
            }
            let result = write();
            self.stop();
            result
        })
    }

    /// The entry at `index` as a reader left it (waiting for it if needed).
    pub(super) fn take(&self, index: usize) -> Ahead {
        let mut state = self.state.lock();
        state.wanted = index;
        self.changed.notify_all();
        loop {
            if let Some(ahead) = state.ready.remove(&index) {
                if let Ahead::Read(bytes) = &ahead {
                    state.bytes -= bytes.len();
                    self.changed.notify_all();
                }
                return ahead;
            }
            if index >= self.entries.len() {
                return Ahead::Writer;
            }
            self.changed.wait(&mut state);
        }
    }

    fn stop(&self) {
        self.state.lock().stopped = true;
        self.changed.notify_all();
    }

    fn read_ahead(&self) {
        loop {
            let index = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(entry) = self.entries.get(index) else {
                return;
            };
            // Wait for room, unless the writer waits for this one.
            {
                let mut state = self.state.lock();
                while !state.stopped && state.bytes > AHEAD_BYTES && state.wanted != index {
                    self.changed.wait(&mut state);
                }
                if state.stopped {
                    return;
                }
            }
            let ahead = read_entry(entry);
            let mut state = self.state.lock();
            if let Ahead::Read(bytes) = &ahead {
                state.bytes += bytes.len();
            }
            state.ready.insert(index, ahead);
            self.changed.notify_all();
        }
    }
}

fn read_entry(entry: &LayerEntry) -> Ahead {
    let (path, blake3) = match &entry.kind {
        EntryKind::File(Content::Checked { path, blake3 }) => (path, Some(blake3)),
        EntryKind::File(Content::Path(path)) => (path, None),
        _ => return Ahead::Writer,
    };
    // Never a FIFO or device swapped in since the file was listed.
    let (file, len) = match memobuild_rootpath::safefs::open_regular(path, false) {
        Ok(opened) => opened,
        Err(e) => return Ahead::Failed(e.into()),
    };
    if len > SMALL {
        return Ahead::Writer;
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // take(): a file that grows while we read it must not corrupt the tar.
    let read = match blake3 {
        Some(blake3) => {
            let mut reader = CheckingReader::new(file.take(len));
            reader
                .read_to_end(&mut bytes)
                .and_then(|_| reader.finish(len, blake3))
        }
        None => file.take(len).read_to_end(&mut bytes).map(|_| ()),
    };
    match read {
        Ok(()) => Ahead::Read(bytes),
        Err(e) => Ahead::Failed(e),
    }
}

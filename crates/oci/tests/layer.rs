//! The layer writer: multi-member gzip blobs that any gzip reader reads as one
//! tar, with the same digest whether members were compressed or reused.

use memobuild_oci::layer::open_layer;
use memobuild_oci::{ChangeSet, Content, EntryKind, LayerEntry, LayerWriter};
use memobuild_store::BlobStore;
use std::io::Read;

fn file(bytes: Vec<u8>) -> LayerEntry {
    LayerEntry {
        kind: EntryKind::File(Content::Bytes(bytes)),
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 7,
    }
}

/// Deterministic pseudo-random bytes (xorshift), incompressible enough.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// 300 small files, a few big ones (one over the 4 MiB piece size), a long
/// path, a directory, a symlink and a whiteout.
fn changes(edit: u64) -> ChangeSet {
    let mut c = ChangeSet::default();
    c.insert(
        "app".into(),
        LayerEntry {
            kind: EntryKind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 7,
        },
    );
    for i in 0..300u64 {
        let text =
            format!("file {i} {}\n", if i == 150 { edit } else { 0 }).repeat(i as usize % 40 + 1);
        c.insert(format!("app/f{i:03}"), file(text.into_bytes()));
    }
    c.insert("app/big1".into(), file(noise(1, 200_000)));
    c.insert("app/big2".into(), file(noise(2, 9 << 20)));
    c.insert(
        format!("app/{}", "long".repeat(60)),
        file(b"long name".to_vec()),
    );
    c.insert(
        "app/link".into(),
        LayerEntry {
            kind: EntryKind::Symlink("f001".into()),
            mode: 0o777,
            uid: 0,
            gid: 0,
            mtime: 7,
        },
    );
    c.insert(
        "gone".into(),
        LayerEntry {
            kind: EntryKind::Whiteout,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: 7,
        },
    );
    c
}

fn tar_of(blobs: &BlobStore, digest: &str) -> Vec<u8> {
    let mut out = Vec::new();
    open_layer(blobs, digest)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn warm_and_cold_writers_give_the_same_blob_and_a_readable_tar() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(dir.path()).unwrap();
    let warm = LayerWriter::new();
    let first = warm.write(&changes(0), &blobs).unwrap();
    let edited_warm = warm.write(&changes(1), &blobs).unwrap();
    let edited_cold = LayerWriter::new().write(&changes(1), &blobs).unwrap();
    assert_eq!(edited_warm, edited_cold, "reusing members changed the blob");
    assert_ne!(first.digest, edited_warm.digest);

    // The blob is several gzip members, and reads back as one tar whose
    // sha256 is the diff_id.
    let blob = std::fs::read(blobs.path(&first.digest).unwrap()).unwrap();
    let members = blob.windows(4).filter(|w| w == &[0x1f, 0x8b, 8, 0]).count();
    assert!(members > 10, "expected many members, found {members}");
    let tar = tar_of(&blobs, &first.digest);
    let diff_id = memobuild_store::blobs::sha256_digest(&tar);
    assert_eq!(diff_id, first.diff_id);
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut names = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        if name == "app/big2" {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            assert_eq!(data, noise(2, 9 << 20));
        }
        assert_eq!(entry.header().mtime().unwrap(), 7);
        names.push(name);
    }
    assert_eq!(names.len(), 1 + 300 + 2 + 1 + 1 + 1);
    assert!(names.contains(&".wh.gone".to_string()));
    assert!(names.contains(&format!("app/{}", "long".repeat(60))));
}

#[test]
fn a_reused_member_whose_blob_is_gone_is_compressed_again() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(dir.path()).unwrap();
    let warm = LayerWriter::new();
    let first = warm.write(&changes(0), &blobs).unwrap();
    blobs.remove(&first.digest).unwrap();
    let again = warm.write(&changes(0), &blobs).unwrap();
    assert_eq!(again, first);
    assert_eq!(tar_of(&blobs, &again.digest).len() % 512, 0);
}

#[test]
fn a_changed_context_file_fails_the_write_and_leaves_no_blob() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(dir.path().join("store").as_path()).unwrap();
    let src = dir.path().join("src.txt");
    std::fs::write(&src, b"what the key was made from").unwrap();
    let mut c = changes(0);
    c.insert(
        "app/checked".into(),
        LayerEntry {
            kind: EntryKind::File(Content::Checked {
                path: src,
                blake3: *blake3::hash(b"something else").as_bytes(),
            }),
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 7,
        },
    );
    let err = LayerWriter::new().write(&c, &blobs).unwrap_err();
    assert!(
        matches!(err, memobuild_oci::OciError::ContextChanged { ref path } if path == "app/checked"),
        "{err:?}"
    );
    assert!(blobs.list().unwrap().is_empty());
}

/// `changes(edit)` with an edit at the end (after `app/big2` and the long
/// name) instead of the middle, and context files read from disk.
fn changes_on_disk(dir: &std::path::Path, edit: u64) -> std::sync::Arc<ChangeSet> {
    let mut c = changes(0);
    for i in 0..200u64 {
        let path = dir.join(format!("ctx{i:03}"));
        let text = format!("context file {i} {}\n", if i == 190 { edit } else { 0 }).repeat(50);
        std::fs::write(&path, &text).unwrap();
        c.insert(
            format!("z/ctx{i:03}"),
            LayerEntry {
                kind: EntryKind::File(Content::Checked {
                    path,
                    blake3: *blake3::hash(text.as_bytes()).as_bytes(),
                }),
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: 9,
            },
        );
    }
    std::sync::Arc::new(c)
}

#[test]
fn an_edit_resumes_the_slots_last_layer_and_gives_the_blob_a_whole_write_gives() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(dir.path().join("store").as_path()).unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    let warm = LayerWriter::new();
    let slot = Some("parent chain\nCOPY . /");
    let first = changes_on_disk(&files, 0);
    let mut early = None;
    let (a, sizes_a) = warm
        .write_early(&first, &blobs, slot, |diff_id, sizes| {
            early = Some((diff_id.to_string(), sizes.to_vec()))
        })
        .unwrap();
    assert_eq!(early, Some((a.diff_id.clone(), sizes_a.clone())));
    assert_eq!(warm.resumed_entries(), 0);

    // Edited near the end: everything before the edit is taken from `a`.
    let edited = changes_on_disk(&files, 1);
    let (b, sizes_b) = warm.write_early(&edited, &blobs, slot, |_, _| {}).unwrap();
    let resumed = warm.resumed_entries();
    assert!(
        resumed > 300,
        "the edit resumed only {resumed} of {} entries",
        edited.entries.len()
    );
    let (whole, sizes_whole) = LayerWriter::new().write_sized(&edited, &blobs).unwrap();
    assert_eq!(b, whole, "a resumed write gave another blob");
    assert_eq!(sizes_b, sizes_whole);
    assert_ne!(a.digest, b.digest);
    let tar = tar_of(&blobs, &b.digest);
    assert_eq!(memobuild_store::blobs::sha256_digest(&tar), b.diff_id);

    // The same content again, and the first version back: both resume and
    // give what a whole write gives.
    let (again, _) = warm.write_early(&edited, &blobs, slot, |_, _| {}).unwrap();
    assert_eq!(again, whole);
    let first = changes_on_disk(&files, 0);
    let (back, _) = warm.write_early(&first, &blobs, slot, |_, _| {}).unwrap();
    assert_eq!(back, a);
}

#[test]
fn a_corrupt_earlier_blob_is_neither_resumed_nor_reused() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(dir.path().join("store").as_path()).unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    let warm = LayerWriter::new();
    let slot = Some("slot");
    let (a, _) = warm
        .write_early(&changes_on_disk(&files, 0), &blobs, slot, |_, _| {})
        .unwrap();
    // Flip a byte early in the blob (same size and time: only a full
    // verification, which a changed stat triggers, would see it).
    let path = blobs.path(&a.digest).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let edited = changes_on_disk(&files, 1);
    let (b, _) = warm.write_early(&edited, &blobs, slot, |_, _| {}).unwrap();
    assert_eq!(warm.resumed_entries(), 0, "resumed from a corrupt blob");
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = BlobStore::open(fresh_dir.path()).unwrap();
    let (whole, _) = LayerWriter::new().write_sized(&edited, &fresh).unwrap();
    assert_eq!(b, whole);
}

#[test]
fn a_context_file_changed_before_it_is_read_ahead_fails_the_write() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(dir.path().join("store").as_path()).unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    let c = changes_on_disk(&files, 0);
    std::fs::write(files.join("ctx100"), b"changed").unwrap();
    let err = LayerWriter::new()
        .write_early(&c, &blobs, Some("slot"), |_, _| {
            panic!("a diff_id of bytes the key did not see")
        })
        .unwrap_err();
    assert!(
        matches!(err, memobuild_oci::OciError::ContextChanged { ref path } if path == "z/ctx100"),
        "{err:?}"
    );
}

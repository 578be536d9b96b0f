//! FIFOs and device nodes in layers: tar entries of those types with the
//! device numbers, mode, owner and time, among the files (before the
//! directories), read back by `Node::from_header`.

use memobuild_oci::layer::open_layer;
use memobuild_oci::{ChangeSet, EntryKind, LayerEntry, LayerWriter, Node};
use memobuild_store::BlobStore;

fn entry(kind: EntryKind, mode: u32, uid: u32, gid: u32) -> LayerEntry {
    LayerEntry {
        kind,
        mode,
        uid,
        gid,
        mtime: 1_700_000_000,
    }
}

#[test]
fn fifos_and_devices_are_tar_entries_of_their_type() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(dir.path()).unwrap();
    let mut c = ChangeSet::default();
    c.insert("x".into(), entry(EntryKind::Dir, 0o755, 0, 0));
    c.insert(
        "x/pipe".into(),
        entry(EntryKind::Node(Node::Fifo), 0o640, 1, 2),
    );
    c.insert(
        "x/null".into(),
        entry(
            EntryKind::Node(Node::CharDevice { major: 1, minor: 3 }),
            0o666,
            1,
            2,
        ),
    );
    c.insert(
        "x/loop".into(),
        entry(
            EntryKind::Node(Node::BlockDevice {
                major: 7,
                minor: 300,
            }),
            0o600,
            0,
            6,
        ),
    );
    let record = LayerWriter::new().write(&c, &blobs).unwrap();
    let mut archive = tar::Archive::new(open_layer(&blobs, &record.digest).unwrap());
    let mut seen = Vec::new();
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        seen.push((
            e.path().unwrap().to_string_lossy().into_owned(),
            h.entry_type(),
            Node::from_header(h),
            h.mode().unwrap(),
            h.uid().unwrap(),
            h.gid().unwrap(),
            h.size().unwrap(),
            h.mtime().unwrap(),
        ));
    }
    let t = 1_700_000_000;
    assert_eq!(
        seen,
        vec![
            (
                "x/loop".into(),
                tar::EntryType::Block,
                Some(Node::BlockDevice {
                    major: 7,
                    minor: 300
                }),
                0o600,
                0,
                6,
                0,
                t
            ),
            (
                "x/null".into(),
                tar::EntryType::Char,
                Some(Node::CharDevice { major: 1, minor: 3 }),
                0o666,
                1,
                2,
                0,
                t
            ),
            (
                "x/pipe".into(),
                tar::EntryType::Fifo,
                Some(Node::Fifo),
                0o640,
                1,
                2,
                0,
                t
            ),
            // Directories come last (see ChangeSet::tar_order).
            (
                "x/".into(),
                tar::EntryType::Directory,
                None,
                0o755,
                0,
                0,
                0,
                t
            ),
        ]
    );
}

#[test]
fn a_changed_device_number_or_mode_is_a_different_entry() {
    let node = |major, mode| {
        let mut c = ChangeSet::default();
        c.insert(
            "d".into(),
            entry(
                EntryKind::Node(Node::CharDevice { major, minor: 3 }),
                mode,
                0,
                0,
            ),
        );
        c
    };
    let (delta, removed) = node(1, 0o666).delta_from(&node(1, 0o666)).unwrap();
    assert!(delta.is_empty() && removed.is_empty());
    let (delta, _) = node(2, 0o666).delta_from(&node(1, 0o666)).unwrap();
    assert_eq!(delta.entries.len(), 1);
    let (delta, _) = node(1, 0o600).delta_from(&node(1, 0o666)).unwrap();
    assert_eq!(delta.entries.len(), 1);
}

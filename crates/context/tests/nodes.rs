//! FIFOs and device nodes in the context: indexed with their kind and device
//! numbers (fsutil sends them as such), and part of a directory's digest by
//! kind, mode and device numbers (no content).

use memobuild_context::dockerignore::DockerIgnore;
use memobuild_context::merkle::DirDigests;
use memobuild_context::{ContextIndex, FileKind, HashCache};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mknod(path: &Path, kind: rustix::fs::FileType, mode: u32, major: u32, minor: u32) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        kind,
        rustix::fs::Mode::from_raw_mode(mode),
        rustix::fs::makedev(major, minor),
    )
    .unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn digest(root: &Path) -> [u8; 32] {
    let index = ContextIndex::scan(root, &DockerIgnore::default()).unwrap();
    let hashes = HashCache::new();
    // A fresh cache each time: the digest of what is there now.
    DirDigests::new()
        .digest(&index, "", &|p, m| hashes.hash(&index.host_path(p), m))
        .unwrap()
}

#[test]
fn fifos_and_devices_are_indexed_and_keyed_by_kind_mode_and_numbers() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: making a device node needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("file"), "x").unwrap();
    mknod(&root.join("pipe"), rustix::fs::FileType::Fifo, 0o640, 0, 0);
    mknod(
        &root.join("null"),
        rustix::fs::FileType::CharacterDevice,
        0o666,
        1,
        3,
    );
    mknod(
        &root.join("loop"),
        rustix::fs::FileType::BlockDevice,
        0o600,
        7,
        300,
    );
    let index = ContextIndex::scan(root, &DockerIgnore::default()).unwrap();
    let got = |rel: &str| {
        let m = index.get(rel).unwrap();
        (m.kind, m.mode, m.device_numbers())
    };
    assert_eq!(got("pipe"), (FileKind::Fifo, 0o640, None));
    assert_eq!(got("null"), (FileKind::CharDevice, 0o666, Some((1, 3))));
    assert_eq!(got("loop"), (FileKind::BlockDevice, 0o600, Some((7, 300))));
    assert_eq!(got("file").0, FileKind::File);

    let first = digest(root);
    assert_eq!(digest(root), first, "nothing changed");
    std::fs::set_permissions(root.join("pipe"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let pipe_mode = digest(root);
    assert_ne!(pipe_mode, first, "a FIFO's mode is in the digest");
    std::fs::remove_file(root.join("null")).unwrap();
    mknod(
        &root.join("null"),
        rustix::fs::FileType::CharacterDevice,
        0o666,
        1,
        5,
    );
    assert_ne!(
        digest(root),
        pipe_mode,
        "a device's numbers are in the digest"
    );
    std::fs::remove_file(root.join("null")).unwrap();
    mknod(
        &root.join("null"),
        rustix::fs::FileType::BlockDevice,
        0o666,
        1,
        3,
    );
    assert_ne!(digest(root), pipe_mode, "a device's kind is in the digest");
}

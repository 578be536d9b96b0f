//! FIFOs and device nodes, as BuildKit handles them: the context transfer
//! sends them as such and COPY makes them (mknod) with the mode, the
//! `--chown` owner and the time; a RUN's layer keeps the ones it made (tar
//! entries of their type, as containerd's tar writer does); `COPY --from`
//! copies them; `-o type=local` and `-o type=tar` give them. The daemon runs
//! as root, as it must to make device nodes.
//!
//! `run_keeps_fifos_and_devices_in_its_layer` ports the assertions of
//! BuildKit's client/mergediff_test.go cases TestDiffFifos and
//! TestDiffChardevs (`mknod PATH p` and `mknod PATH c 1 3` in a RUN give a
//! FIFO and a character device 1:3, mode 0644, in the diff).

mod common;
use common::{busybox_context, oci_archive, Daemon};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// What a layer says of one path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    kind: &'static str,
    major: u32,
    minor: u32,
    uid: u64,
    gid: u64,
    mode: u32,
}

fn kind_name(t: tar::EntryType) -> &'static str {
    match t {
        tar::EntryType::Fifo => "fifo",
        tar::EntryType::Char => "char",
        tar::EntryType::Block => "block",
        tar::EntryType::Directory => "dir",
        tar::EntryType::Symlink => "symlink",
        tar::EntryType::Link => "hardlink",
        _ => "file",
    }
}

fn header_of(h: &tar::Header) -> Header {
    // Only device entries have device numbers (other headers leave the
    // fields blank).
    let device = matches!(h.entry_type(), tar::EntryType::Char | tar::EntryType::Block);
    let number = |n: std::io::Result<Option<u32>>| if device { n.unwrap().unwrap() } else { 0 };
    Header {
        kind: kind_name(h.entry_type()),
        major: number(h.device_major()),
        minor: number(h.device_minor()),
        uid: h.uid().unwrap(),
        gid: h.gid().unwrap(),
        mode: h.mode().unwrap() & 0o7777,
    }
}

/// The entries of each layer of an `-o type=oci` archive, in order (paths
/// without `./` or a trailing `/`).
fn layers(archive: &Path) -> Vec<BTreeMap<String, Header>> {
    let (index, blobs) = oci_archive(archive);
    let manifest = &blobs[index["manifests"][0]["digest"].as_str().unwrap()];
    let manifest: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    let mut out = Vec::new();
    for layer in manifest["layers"].as_array().unwrap() {
        let blob = &blobs[layer["digest"].as_str().unwrap()];
        let mut tar = tar::Archive::new(flate2::read::MultiGzDecoder::new(blob.as_slice()));
        let mut entries = BTreeMap::new();
        for entry in tar.entries().unwrap() {
            let entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let path = path
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_string();
            entries.insert(path, header_of(entry.header()));
        }
        out.push(entries);
    }
    out
}

/// The last layer's entry for `path`.
fn last(layers: &[BTreeMap<String, Header>], path: &str) -> Option<Header> {
    layers.iter().rev().find_map(|l| l.get(path).cloned())
}

/// The content of `path` in the image.
fn read(archive: &Path, path: &str) -> String {
    String::from_utf8(common::oci_file(archive, path).unwrap_or_else(|| panic!("{path} missing")))
        .unwrap()
}

fn node(kind: &'static str, major: u32, minor: u32, uid: u64, gid: u64, mode: u32) -> Header {
    Header {
        kind,
        major,
        minor,
        uid,
        gid,
        mode,
    }
}

fn mknod(path: &Path, kind: libc::mode_t, mode: u32, major: u32, minor: u32) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mknod only reads it.
    let rc = unsafe { libc::mknod(c.as_ptr(), kind | 0o600, libc::makedev(major, minor)) };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn context_fifos_and_devices_are_copied_with_owner_and_mode() {
    let d = Daemon::start();
    let ctx = busybox_context(
        "COPY --chown=1:2 nodes/ /x/
COPY --chmod=600 nodes/pipe /y/pipe
RUN stat -c '%n %F %t %T %u %g %a' /x/pipe /x/null /y/pipe > /stat.txt
",
        &[("nodes/file", "f")],
    );
    let nodes = ctx.path().join("nodes");
    mknod(&nodes.join("pipe"), libc::S_IFIFO, 0o640, 0, 0);
    mknod(&nodes.join("null"), libc::S_IFCHR, 0o666, 1, 3);
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("img.tar");
    let spec = format!("type=oci,dest={}", archive.display());
    d.build_ok(ctx.path(), &["-o", &spec]);

    let layers = layers(&archive);
    assert_eq!(
        last(&layers, "x/pipe"),
        Some(node("fifo", 0, 0, 1, 2, 0o640))
    );
    assert_eq!(
        last(&layers, "x/null"),
        Some(node("char", 1, 3, 1, 2, 0o666))
    );
    assert_eq!(
        last(&layers, "y/pipe"),
        Some(node("fifo", 0, 0, 0, 0, 0o600))
    );
    // What a RUN on the snapshot writer's result sees.
    assert_eq!(
        read(&archive, "/stat.txt"),
        "/x/pipe fifo 0 0 1 2 640\n\
         /x/null character special file 1 3 1 2 666\n\
         /y/pipe fifo 0 0 0 0 600\n"
    );

    // Editing nothing keeps every step cached.
    let again = d.build_ok(ctx.path(), &[]);
    assert!(again.executed().is_empty(), "{:?}", again.executed());
    // A FIFO's mode is an input of the steps that copy it.
    std::fs::set_permissions(nodes.join("pipe"), std::fs::Permissions::from_mode(0o604)).unwrap();
    let edited = d.build_ok(ctx.path(), &["-o", &spec]);
    let executed = edited.executed();
    assert!(
        executed
            .iter()
            .any(|s| s.starts_with("COPY --chown=1:2 nodes/")),
        "{executed:?}"
    );
    assert!(
        executed.iter().any(|s| s.starts_with("COPY --chmod=600")),
        "{executed:?}"
    );
    assert_eq!(
        last(&self::layers(&archive), "x/pipe"),
        Some(node("fifo", 0, 0, 1, 2, 0o604))
    );
    // A device made again with other numbers too.
    std::fs::remove_file(nodes.join("null")).unwrap();
    mknod(&nodes.join("null"), libc::S_IFCHR, 0o666, 1, 5);
    let edited = d.build_ok(ctx.path(), &["-o", &spec]);
    assert!(
        edited
            .executed()
            .iter()
            .any(|s| s.starts_with("COPY --chown=1:2 nodes/")),
        "{:?}",
        edited.executed()
    );
    assert!(read(&archive, "/stat.txt").contains("/x/null character special file 1 5 1 2 666"));

    // The final filesystem as a directory and as a tar.
    let dir = out.path().join("rootfs");
    let local = format!("type=local,dest={}", dir.display());
    d.build_ok(ctx.path(), &["-o", &local]);
    let meta = std::fs::symlink_metadata(dir.join("x/pipe")).unwrap();
    assert!(meta.file_type().is_fifo());
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (1, 2, 0o604)
    );
    let meta = std::fs::symlink_metadata(dir.join("x/null")).unwrap();
    assert!(meta.file_type().is_char_device());
    assert_eq!(meta.rdev(), libc::makedev(1, 5));
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (1, 2, 0o666)
    );
    let tar_path = out.path().join("fs.tar");
    let spec = format!("type=tar,dest={}", tar_path.display());
    d.build_ok(ctx.path(), &["-o", &spec]);
    let mut fs = BTreeMap::new();
    let mut bytes = Vec::new();
    std::fs::File::open(&tar_path)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    for entry in tar::Archive::new(bytes.as_slice()).entries().unwrap() {
        let entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        fs.insert(path, header_of(entry.header()));
    }
    assert_eq!(fs.get("x/pipe"), Some(&node("fifo", 0, 0, 1, 2, 0o604)));
    assert_eq!(fs.get("x/null"), Some(&node("char", 1, 5, 1, 2, 0o666)));
}

#[test]
fn run_keeps_fifos_and_devices_in_its_layer() {
    let d = Daemon::start();
    let ctx = busybox_context(
        "RUN mkdir /a && mknod /a/fifo1 p && mknod /a/null1 c 1 3 && mkfifo -m 600 /p && mknod /d c 1 3 && mknod /blk b 7 0
RUN stat -c '%n %F %t %T %a' /a/fifo1 /a/null1 /p /d /blk > /seen.txt
RUN rm /d
RUN test ! -e /d && echo gone > /gone.txt
FROM base AS copier
COPY --from=base --chown=5:6 /a /copied/
RUN stat -c '%n %F %t %T %u %g %a' /copied/fifo1 /copied/null1 > /copied.txt
",
        &[],
    );
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("img.tar");
    let spec = format!("type=oci,dest={}", archive.display());
    d.build_ok(ctx.path(), &["-o", &spec]);
    let layers = layers(&archive);

    // The RUN's own layer (after COPY busybox and the --install RUN).
    let made = &layers[2];
    assert_eq!(made.get("a/fifo1"), Some(&node("fifo", 0, 0, 0, 0, 0o644)));
    assert_eq!(made.get("a/null1"), Some(&node("char", 1, 3, 0, 0, 0o644)));
    assert_eq!(made.get("p"), Some(&node("fifo", 0, 0, 0, 0, 0o600)));
    assert_eq!(made.get("d"), Some(&node("char", 1, 3, 0, 0, 0o644)));
    assert_eq!(made.get("blk"), Some(&node("block", 7, 0, 0, 0, 0o644)));
    // The next RUN saw them (from the snapshot the step left).
    assert_eq!(
        read(&archive, "/seen.txt"),
        "/a/fifo1 fifo 0 0 644\n\
         /a/null1 character special file 1 3 644\n\
         /p fifo 0 0 600\n\
         /d character special file 1 3 644\n\
         /blk block special file 7 0 644\n"
    );
    // Removing one is a whiteout, not a device 0:0.
    let removed = &layers[4];
    assert_eq!(removed.get(".wh.d").map(|h| h.kind), Some("file"));
    assert!(!removed.contains_key("d"));
    assert_eq!(read(&archive, "/gone.txt"), "gone\n");

    // COPY --from copies them, with the --chown owner.
    assert_eq!(
        last(&layers, "copied/fifo1"),
        Some(node("fifo", 0, 0, 5, 6, 0o644))
    );
    assert_eq!(
        last(&layers, "copied/null1"),
        Some(node("char", 1, 3, 5, 6, 0o644))
    );
    assert_eq!(
        read(&archive, "/copied.txt"),
        "/copied/fifo1 fifo 0 0 5 6 644\n\
         /copied/null1 character special file 1 3 5 6 644\n"
    );
    let again = d.build_ok(ctx.path(), &[]);
    assert!(again.executed().is_empty(), "{:?}", again.executed());
}

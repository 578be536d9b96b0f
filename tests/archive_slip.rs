//! ADD of a local archive against tar-slip shapes (issue 14 item 13): entry
//! names with `../` or a leading `/`, a symlink then files "under" it (in the
//! archive, or under a symlink an earlier step left, also one pointing above
//! the destination), hard links to files the archive does not hold. The layer
//! never holds an entry below a symlink or outside the destination; what
//! BuildKit's unpack refuses (a dangling hard link) fails with a clear error.
//!
//! No RUN: needs no containerd.

mod common;
use common::Daemon;
use std::collections::BTreeMap;
use std::path::Path;

enum E<'a> {
    File(&'a str, &'a str),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

/// A tar with entries exactly as named (the tar crate's `append_data` would
/// refuse `..`: the header's name bytes are set by hand).
fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        let (name, kind, link, body): (&str, tar::EntryType, Option<&str>, &[u8]) = match e {
            E::File(n, body) => (n, tar::EntryType::Regular, None, body.as_bytes()),
            E::Dir(n) => (n, tar::EntryType::Directory, None, b""),
            E::Symlink(n, t) => (n, tar::EntryType::Symlink, Some(t), b""),
            E::Hardlink(n, t) => (n, tar::EntryType::Link, Some(t), b""),
        };
        let bytes = name.as_bytes();
        h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        if let Some(link) = link {
            let l = link.as_bytes();
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
        }
        h.set_entry_type(kind);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(body.len() as u64);
        h.set_cksum();
        tar.append(&h, body).expect("tar");
    }
    tar.into_inner().expect("tar")
}

/// Builds `dockerfile` with `archives` in the context; the final filesystem
/// (`-o type=tar`) as path -> (kind, link target or content), or the error.
fn build(
    d: &Daemon,
    dockerfile: &str,
    archives: &[(&str, Vec<u8>)],
) -> Result<BTreeMap<String, String>, String> {
    let ctx = tempfile::tempdir().expect("tempdir");
    std::fs::write(ctx.path().join("Dockerfile"), dockerfile).expect("write");
    for (name, bytes) in archives {
        std::fs::write(ctx.path().join(name), bytes).expect("write");
    }
    let out = tempfile::tempdir().expect("tempdir");
    let dest = out.path().join("fs.tar");
    let spec = format!("type=tar,dest={}", dest.display());
    let result = d.build(ctx.path(), &["-o", &spec]);
    if !result.success {
        return Err(result.text());
    }
    Ok(listing(&dest))
}

fn listing(path: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(std::fs::File::open(path).expect("output"));
    for entry in archive.entries().expect("tar") {
        let mut entry = entry.expect("entry");
        let name = entry
            .path()
            .expect("path")
            .display()
            .to_string()
            .trim_end_matches('/')
            .to_string();
        let what = match entry.header().entry_type() {
            tar::EntryType::Symlink => format!(
                "symlink {}",
                entry
                    .link_name()
                    .ok()
                    .flatten()
                    .unwrap_or_default()
                    .display()
            ),
            tar::EntryType::Link => format!(
                "hardlink {}",
                entry
                    .link_name()
                    .ok()
                    .flatten()
                    .unwrap_or_default()
                    .display()
            ),
            tar::EntryType::Directory => "dir".to_string(),
            _ => {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut entry, &mut s).unwrap_or_default();
                format!("file {s}")
            }
        };
        out.insert(name, what);
    }
    out
}

/// No entry lies below a symlink of the same filesystem.
fn assert_nothing_below_a_symlink(fs: &BTreeMap<String, String>) {
    for path in fs.keys() {
        let mut parent = path.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            parent = p;
            assert!(
                !fs.get(parent).is_some_and(|k| k.starts_with("symlink")),
                "{path} lies below the symlink {parent}: {fs:#?}"
            );
        }
    }
}

#[test]
fn add_normalizes_names_and_resolves_symlinked_parents_inside_the_destination() {
    let d = Daemon::start();
    let evil = tar_of(&[
        E::File("../../../../escaped-dotdot", "a"),
        E::File("/escaped-absolute", "b"),
        E::Dir("sub"),
        E::Symlink("esc", "/host"),
        E::File("esc/pwned", "c"),
        E::Symlink("rel", "sub"),
        E::File("rel/inner", "d"),
        E::File("plain", "e"),
        E::Hardlink("twin", "plain"),
    ]);
    let fs = build(
        &d,
        "FROM scratch\nADD evil.tar /x/\n",
        &[("evil.tar", evil.clone())],
    )
    .unwrap_or_else(|e| panic!("{e}\n--- daemon log ---\n{}", d.log()));
    assert_nothing_below_a_symlink(&fs);
    assert_eq!(
        fs.get("x/escaped-dotdot").map(String::as_str),
        Some("file a"),
        "{fs:#?}"
    );
    assert_eq!(
        fs.get("x/escaped-absolute").map(String::as_str),
        Some("file b"),
        "{fs:#?}"
    );
    // Through `esc -> /host`, with the destination as the root.
    assert_eq!(
        fs.get("x/esc").map(String::as_str),
        Some("symlink /host"),
        "{fs:#?}"
    );
    assert_eq!(
        fs.get("x/host/pwned").map(String::as_str),
        Some("file c"),
        "{fs:#?}"
    );
    assert_eq!(
        fs.get("x/sub/inner").map(String::as_str),
        Some("file d"),
        "{fs:#?}"
    );
    assert_eq!(fs.get("twin").map(String::as_str), None);
    assert!(
        fs.get("x/twin")
            .is_some_and(|k| k == "hardlink x/plain" || k == "file e"),
        "{fs:#?}"
    );
    assert!(
        !fs.keys()
            .any(|k| k.contains("escaped") && !k.starts_with("x/")),
        "{fs:#?}"
    );

    // A symlink an earlier step left in the image leads the same way.
    let link = tar_of(&[E::Symlink("esc", "/etc")]);
    let later = tar_of(&[E::File("esc/passwd", "owned")]);
    let fs = build(
        &d,
        "FROM scratch\nADD link.tar /x/\nADD later.tar /x/\n",
        &[("link.tar", link), ("later.tar", later)],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_nothing_below_a_symlink(&fs);
    assert_eq!(
        fs.get("x/etc/passwd").map(String::as_str),
        Some("file owned"),
        "{fs:#?}"
    );
}

#[test]
fn add_keeps_symlinks_but_refuses_hard_links_out_of_the_archive() {
    let d = Daemon::start();
    // A relative symlink above the destination stays (BuildKit keeps it), but
    // what the archive puts "below" it lands inside the destination.
    let up = tar_of(&[
        E::Dir("a"),
        E::Symlink("a/up", "../../../etc"),
        E::File("a/up/passwd", "p"),
    ]);
    let fs = build(&d, "FROM scratch\nADD up.tar /x/\n", &[("up.tar", up)]).expect("builds");
    assert_nothing_below_a_symlink(&fs);
    assert_eq!(
        fs.get("x/a/up").map(String::as_str),
        Some("symlink ../../../etc"),
        "{fs:#?}"
    );
    assert_eq!(
        fs.get("x/etc/passwd").map(String::as_str),
        Some("file p"),
        "{fs:#?}"
    );
    // Hard links to files the archive does not hold (a dangling link used to
    // fail only at a later RUN).
    for target in ["../../etc/passwd", "/etc/shadow", "missing"] {
        let hard = tar_of(&[E::File("f", "x"), E::Hardlink("h", target)]);
        let err = build(
            &d,
            "FROM scratch\nADD hard.tar /x/\n",
            &[("hard.tar", hard)],
        )
        .unwrap_err();
        assert!(
            err.contains("invalid hard link") && err.contains("Dockerfile:2"),
            "{target}: {err}"
        );
    }
    // The daemon keeps serving.
    let ok = tar_of(&[E::File("f", "x")]);
    build(&d, "FROM scratch\nADD ok.tar /x/\n", &[("ok.tar", ok)]).expect("a plain archive builds");
}

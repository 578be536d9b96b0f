//! The resident daemon watches every project's context (issue 4): each way
//! editors and tools save is seen and `status` says what is dirty and why
//! before anyone builds; a build right after a save sees that save; thousands
//! of changes while builds run never give a stale image; a lost inotify queue
//! leads to a correct full rescan; the index survives a restart; and the
//! `status`/`projects`/`forget`/`explain` JSON follows docs/CLI.md.
//!
//! Everything goes through the real memobuildd and memobuild-ctl; images are
//! checked byte for byte (fsdump of an `-o type=oci` export) against the
//! directory they were built from.

mod common;
use common::{fsdump, write_files, BuildOutcome, Daemon, Rng};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

// ---------------------------------------------------------------------------
// Daemons
// ---------------------------------------------------------------------------

/// The inotify queue size is read when a daemon creates its inotify instance,
/// and the overflow test shrinks it for a moment: no other daemon of this file
/// may start during that moment.
static START: RwLock<()> = RwLock::new(());

fn start_daemon() -> Daemon {
    let _shared = START.read().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start();
    // The socket is bound before the engine (and its inotify instance) exists;
    // once a status answers, it does.
    status(&d, None);
    d
}

fn restart_daemon(d: &mut Daemon) {
    let _shared = START.read().unwrap_or_else(|e| e.into_inner());
    d.restart();
    status(d, None);
}

// ---------------------------------------------------------------------------
// status, polling
// ---------------------------------------------------------------------------

fn ctl_json(d: &Daemon, args: &[&str]) -> Value {
    let out = d.ctl(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "memobuild-ctl {args:?} failed:\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("memobuild-ctl {args:?} did not print JSON ({e}):\n{stdout}"))
}

fn status(d: &Daemon, filter: Option<&Path>) -> Value {
    match filter {
        None => ctl_json(d, &["status", "--json"]),
        Some(p) => ctl_json(d, &["status", "--json", p.to_str().expect("utf-8")]),
    }
}

fn canon(p: &Path) -> String {
    std::fs::canonicalize(p)
        .expect("canonicalize")
        .display()
        .to_string()
}

fn projects_of(status: &Value) -> Vec<Value> {
    status["projects"].as_array().cloned().unwrap_or_default()
}

/// The project of `ctx` built without flags (default Dockerfile, no args).
fn project_in(status: &Value, ctx: &Path) -> Option<Value> {
    let ctx = canon(ctx);
    projects_of(status)
        .into_iter()
        .find(|p| p["context"] == ctx.as_str() && p["build_args"] == json!({}))
}

fn project(d: &Daemon, ctx: &Path) -> Value {
    let s = status(d, None);
    project_in(&s, ctx)
        .unwrap_or_else(|| panic!("status does not list {}:\n{}", ctx.display(), pretty(&s)))
}

fn tree_of(status: &Value, ctx: &Path) -> Option<Value> {
    let ctx = PathBuf::from(canon(ctx));
    status["daemon"]["trees"]
        .as_array()?
        .iter()
        .filter(|t| t["root"].as_str().is_some_and(|r| ctx.starts_with(r)))
        .max_by_key(|t| t["root"].as_str().map_or(0, str::len))
        .cloned()
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn log_tail(d: &Daemon) -> String {
    let log = d.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

const WAIT: Duration = Duration::from_secs(5);

/// Polls `status --json` until `ok` holds for the project of `ctx` (5 s at most).
fn wait_project(d: &Daemon, ctx: &Path, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    let mut last = Value::Null;
    loop {
        if let Some(p) = project_in(&status(d, None), ctx) {
            if ok(&p) {
                return p;
            }
            last = p;
        }
        assert!(
            Instant::now() < deadline,
            "after {WAIT:?}, status still does not show {what} for {}; last seen:\n{}\n--- daemon log (tail) ---\n{}",
            ctx.display(),
            pretty(&last),
            log_tail(d)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the project is `dirty` with exactly the steps `dirty` (by
/// instruction of the last build) dirty, each step's `why` holding the given
/// reasons (a reason ending in `...` is a prefix), every other step clean, and
/// `changed_files` holding `changed`.
fn expect_dirty(d: &Daemon, ctx: &Path, dirty: &[(&str, &[&str])], changed: &[&str]) -> Value {
    let want =
        format!("state dirty with dirty steps {dirty:?} and changed_files containing {changed:?}");
    wait_project(d, ctx, &want, |p| {
        if p["state"] != "dirty" {
            return false;
        }
        let files = strs(&p["changed_files"]);
        if !changed.iter().all(|c| files.iter().any(|f| f == c)) {
            return false;
        }
        let steps = p["steps"].as_array().cloned().unwrap_or_default();
        let dirty_now: Vec<&Value> = steps.iter().filter(|s| s["state"] == "dirty").collect();
        if dirty_now.len() != dirty.len() {
            return false;
        }
        if steps
            .iter()
            .any(|s| s["state"] != "dirty" && s["state"] != "clean")
        {
            return false;
        }
        dirty.iter().all(|(instruction, reasons)| {
            dirty_now
                .iter()
                .find(|s| s["instruction"] == *instruction)
                .is_some_and(|s| {
                    let why = strs(&s["why"]);
                    reasons.iter().all(|r| match r.strip_suffix("...") {
                        Some(prefix) => why.iter().any(|w| w.starts_with(prefix)),
                        None => why.iter().any(|w| w == r),
                    })
                })
        })
    })
}

fn expect_clean(d: &Daemon, ctx: &Path) -> Value {
    wait_project(d, ctx, "state clean with every step clean", |p| {
        p["state"] == "clean"
            && p["steps"]
                .as_array()
                .is_some_and(|s| s.iter().all(|s| s["state"] == "clean"))
    })
}

/// Samples status for `how_long` and fails if the project ever turns dirty.
fn stays_clean(d: &Daemon, ctx: &Path, how_long: Duration) {
    let until = Instant::now() + how_long;
    while Instant::now() < until {
        let p = project(d, ctx);
        assert_ne!(
            p["state"],
            "dirty",
            "the project turned dirty although no input changed:\n{}",
            pretty(&p)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the daemon has received some file event after `before` events.
fn wait_events_after(d: &Daemon, before: u64) {
    let deadline = Instant::now() + WAIT;
    while status(d, None)["daemon"]["events"].as_u64().unwrap_or(0) <= before {
        assert!(
            Instant::now() < deadline,
            "the daemon received no file event in {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------
// Images against directories
// ---------------------------------------------------------------------------

/// Builds with an OCI export; returns the build and fsdump of the image.
fn build_image(d: &Daemon, ctx: &Path) -> (BuildOutcome, Value) {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let tar = out_dir.path().join("image.tar");
    let spec = format!("type=oci,dest={}", tar.display());
    let out = d.build_ok(ctx, &["-o", &spec]);
    let fs = fsdump(&tar);
    (out, fs)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn ignored(rel: &str, ignore: &[&str]) -> bool {
    ignore
        .iter()
        .any(|i| rel == *i || rel.starts_with(&format!("{i}/")))
}

/// What `COPY SRC/ DEST/` gives in the image, computed from the directory:
/// every entry below `ctx/src` that `ignore` (context-relative paths) does not
/// exclude, as fsdump prints it.
fn expected_entries(
    ctx: &Path,
    src: &str,
    dest: &str,
    ignore: &[&str],
    out: &mut BTreeMap<String, Value>,
) {
    fn walk(
        ctx: &Path,
        rel: &str,
        src_len: usize,
        dest: &str,
        ignore: &[&str],
        out: &mut BTreeMap<String, Value>,
    ) {
        let dir = if rel.is_empty() {
            ctx.to_path_buf()
        } else {
            ctx.join(rel)
        };
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let entry = entry.expect("dir entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".memobuild-cookie-") {
                continue;
            }
            let child = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if ignored(&child, ignore) {
                continue;
            }
            let meta = std::fs::symlink_metadata(entry.path()).expect("stat");
            let path = format!("{dest}/{}", &child[src_len..]);
            let mode = format!("{:04o}", meta.mode() & 0o7777);
            let ft = meta.file_type();
            let e = if ft.is_dir() {
                json!({"path": path, "type": "dir", "mode": mode, "uid": 0, "gid": 0})
            } else if ft.is_symlink() {
                let target = std::fs::read_link(entry.path()).expect("readlink");
                json!({"path": path, "type": "symlink", "mode": "0777", "uid": 0, "gid": 0,
                       "target": target.to_string_lossy()})
            } else {
                let bytes = std::fs::read(entry.path()).expect("read");
                json!({"path": path, "type": "file", "mode": mode, "uid": 0, "gid": 0,
                       "size": bytes.len(), "sha256": sha256_hex(&bytes)})
            };
            out.insert(path, e);
            if ft.is_dir() {
                walk(ctx, &child, src_len, dest, ignore, out);
            }
        }
    }
    let (start, src_len) = if src == "." {
        (String::new(), 0)
    } else {
        (src.to_string(), src.len() + 1)
    };
    walk(ctx, &start, src_len, dest, ignore, out);
}

/// Asserts the image holds exactly what the COPYs (src, dest) of the directory
/// give: same paths, types, modes, owners, sizes and sha256, nothing else.
fn assert_image_is(fs: &Value, ctx: &Path, copies: &[(&str, &str)], ignore: &[&str]) {
    let mut want = BTreeMap::new();
    for (src, dest) in copies {
        expected_entries(ctx, src, dest, ignore, &mut want);
    }
    let dests: Vec<&str> = copies.iter().map(|(_, d)| *d).collect();
    let mut got = BTreeMap::new();
    for e in fs["files"].as_array().expect("fsdump files") {
        let path = e["path"].as_str().expect("path").to_string();
        if dests.contains(&path.as_str()) {
            continue; // the destination directory itself
        }
        got.insert(path, e.clone());
    }
    if want == got {
        return;
    }
    let mut report = Vec::new();
    for (p, w) in &want {
        match got.get(p) {
            None => report.push(format!("missing from the image: {p}")),
            Some(g) if g != w => report.push(format!("differs: {p}\n  image: {g}\n  disk:  {w}")),
            _ => {}
        }
    }
    for p in got.keys().filter(|p| !want.contains_key(*p)) {
        report.push(format!("in the image but not on disk: {p}"));
    }
    let shown = report.len().min(30);
    panic!(
        "the image is not the directory {} ({} differences):\n{}",
        ctx.display(),
        report.len(),
        report[..shown].join("\n")
    );
}

// ---------------------------------------------------------------------------
// The project every save-pattern test edits
// ---------------------------------------------------------------------------

const DOCKERFILE: &str = "FROM scratch\nCOPY keep/ /keep/\nCOPY . /ctx/\nLABEL pattern=1\n";
const STEPS: [&str; 3] = ["COPY keep/ /keep/", "COPY . /ctx/", "LABEL pattern=1"];
const IGNORE: [&str; 2] = ["Dockerfile", ".dockerignore"];
const COPIES: [(&str, &str); 2] = [("keep", "/keep"), (".", "/ctx")];

struct Project {
    _base: tempfile::TempDir,
    /// The build context.
    ctx: PathBuf,
    /// A directory beside the context (same filesystem), for moves in and out.
    outside: PathBuf,
}

fn new_project() -> Project {
    let base = tempfile::tempdir().expect("tempdir");
    let ctx = base.path().join("ctx");
    let outside = base.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    write_files(
        &ctx,
        &[
            ("Dockerfile", DOCKERFILE),
            (".dockerignore", "Dockerfile\n.dockerignore\n"),
            ("keep/k.txt", "kept\n"),
            ("README", "read me\n"),
            ("src/main.c", "int main(void) { return 0; }\n"),
            ("src/tool.sh", "#!/bin/sh\necho tool\n"),
            ("src/lib/util.c", "int util;\n"),
            ("src/lib/deep/x.c", "int x;\n"),
        ],
    );
    Project {
        ctx: std::fs::canonicalize(&ctx).unwrap(),
        outside: std::fs::canonicalize(&outside).unwrap(),
        _base: base,
    }
}

fn owned(steps: &[&str]) -> Vec<String> {
    steps.iter().map(|s| s.to_string()).collect()
}

/// First build: everything executes, the image is the directory, status clean.
fn first_build(d: &Daemon, p: &Project) -> String {
    let (out, fs) = build_image(d, &p.ctx);
    assert_eq!(out.executed(), owned(&STEPS));
    assert_image_is(&fs, &p.ctx, &COPIES, &IGNORE);
    expect_clean(d, &p.ctx);
    out.manifest_digest()
}

/// After a save: builds and checks that exactly `executed` ran, that the image
/// is the directory, and that one more build (nothing changed) is all cached
/// with the same digest and leaves the project clean. Returns the fsdump.
fn rebuild(
    d: &Daemon,
    p: &Project,
    executed: &[&str],
    steps: &[&str],
    copies: &[(&str, &str)],
    ignore: &[&str],
) -> Value {
    let (out, fs) = build_image(d, &p.ctx);
    assert_eq!(
        out.executed(),
        owned(executed),
        "wrong steps executed after the save:\n{}",
        out.text()
    );
    assert_image_is(&fs, &p.ctx, copies, ignore);
    let again = d.build_ok(&p.ctx, &[]);
    assert_eq!(
        again.executed(),
        Vec::<String>::new(),
        "a build with nothing changed executed steps:\n{}",
        again.text()
    );
    assert_eq!(again.cached(), owned(steps));
    assert_eq!(again.manifest_digest(), out.manifest_digest());
    let st = project(d, &p.ctx);
    assert_eq!(st["state"], "clean", "{}", pretty(&st));
    fs
}

/// The usual rebuild of the standard project.
fn rebuild_std(d: &Daemon, p: &Project, executed: &[&str]) -> Value {
    rebuild(d, p, executed, &STEPS, &COPIES, &IGNORE)
}

const FROM_CTX: [&str; 2] = ["COPY . /ctx/", "LABEL pattern=1"];
const PARENT: &str = "parent step changed";

/// A save that only `COPY . /ctx/` selects: status names `reasons` for it
/// (and the parent for the LABEL after it) and `changed` among the changed
/// files; the rebuild runs exactly those two steps (see [`rebuild`]).
fn ctx_dirty_then_rebuild(d: &Daemon, p: &Project, reasons: &[&str], changed: &[&str]) -> Value {
    expect_dirty(
        d,
        &p.ctx,
        &[("COPY . /ctx/", reasons), ("LABEL pattern=1", &[PARENT])],
        changed,
    );
    rebuild_std(d, p, &FROM_CTX)
}

// ---------------------------------------------------------------------------
// 1. Every way of saving
// ---------------------------------------------------------------------------

#[test]
fn save_write_in_place() {
    let d = start_daemon();
    let p = new_project();
    first_build(&d, &p);

    std::fs::write(p.ctx.join("src/main.c"), "int main(void) { return 1; }\n").unwrap();
    ctx_dirty_then_rebuild(&d, &p, &["file changed: src/main.c"], &["src/main.c"]);

    // A file both COPYs select: both rebuild (and what follows them).
    std::fs::write(p.ctx.join("keep/k.txt"), "kept, edited\n").unwrap();
    expect_dirty(
        &d,
        &p.ctx,
        &[
            ("COPY keep/ /keep/", &["file changed: keep/k.txt"]),
            ("COPY . /ctx/", &["file changed: keep/k.txt"]),
            ("LABEL pattern=1", &[PARENT]),
        ],
        &["keep/k.txt"],
    );
    rebuild_std(&d, &p, &STEPS);

    // Truncate, then append in a second write (an editor flushing twice).
    {
        use std::io::Write;
        let mut f = std::fs::File::create(p.ctx.join("README")).unwrap();
        f.write_all(b"first half, ").unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(30));
        f.write_all(b"second half\n").unwrap();
    }
    ctx_dirty_then_rebuild(&d, &p, &["file changed: README"], &["README"]);
}

#[test]
fn save_write_temp_then_rename_over() {
    let d = start_daemon();
    let p = new_project();
    first_build(&d, &p);

    // VS Code / most "atomic save" editors: a temp file beside it, renamed over.
    let tmp = p.ctx.join("src/.main.c.tmp-4242");
    std::fs::write(&tmp, "int main(void) { return 2; }\n").unwrap();
    std::fs::rename(&tmp, p.ctx.join("src/main.c")).unwrap();
    let st = expect_dirty(
        &d,
        &p.ctx,
        &[
            ("COPY . /ctx/", &["file changed: src/main.c"]),
            ("LABEL pattern=1", &[PARENT]),
        ],
        &["src/main.c"],
    );
    for s in st["steps"].as_array().unwrap() {
        assert!(
            !strs(&s["why"]).iter().any(|w| w.contains(".main.c.tmp")),
            "the temp file, long gone, is named as a reason: {}",
            pretty(s)
        );
    }
    rebuild_std(&d, &p, &FROM_CTX);

    // vim (backupcopy=no): rename the original to a backup, write a new file,
    // delete the backup.
    let file = p.ctx.join("src/lib/util.c");
    let backup = p.ctx.join("src/lib/util.c~");
    std::fs::rename(&file, &backup).unwrap();
    std::fs::write(&file, "int util = 3;\n").unwrap();
    std::fs::remove_file(&backup).unwrap();
    ctx_dirty_then_rebuild(
        &d,
        &p,
        &["file changed: src/lib/util.c"],
        &["src/lib/util.c"],
    );
}

#[test]
fn save_delete_then_create() {
    let d = start_daemon();
    let p = new_project();
    let first = first_build(&d, &p);

    let file = p.ctx.join("src/main.c");
    std::fs::remove_file(&file).unwrap();
    std::fs::write(&file, "int main(void) { return 4; }\n").unwrap();
    ctx_dirty_then_rebuild(&d, &p, &["file changed: src/main.c"], &["src/main.c"]);

    // Deleted and created again with the same bytes and mode: nothing changed.
    std::fs::remove_file(&file).unwrap();
    std::fs::write(&file, "int main(void) { return 4; }\n").unwrap();
    wait_project(&d, &p.ctx, "the recreated file among changed_files", |s| {
        strs(&s["changed_files"]).contains(&"src/main.c".to_string())
    });
    expect_clean(&d, &p.ctx);
    let out = d.build_ok(&p.ctx, &[]);
    assert_eq!(out.executed(), Vec::<String>::new(), "{}", out.text());
    assert_ne!(out.manifest_digest(), first);

    // Deleted for good.
    std::fs::remove_file(&file).unwrap();
    ctx_dirty_then_rebuild(&d, &p, &["file removed: src/main.c"], &["src/main.c"]);
}

#[test]
fn save_chmod_rebuilds_but_touch_does_not() {
    let d = start_daemon();
    let p = new_project();
    let first = first_build(&d, &p);

    // touch: new times, same bytes and mode. Not dirty, nothing rebuilds.
    let before = status(&d, None)["daemon"]["events"].as_u64().unwrap();
    let f = std::fs::File::options()
        .write(true)
        .open(p.ctx.join("src/main.c"))
        .unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(f);
    wait_events_after(&d, before);
    stays_clean(&d, &p.ctx, Duration::from_millis(400));
    let out = d.build_ok(&p.ctx, &[]);
    assert_eq!(out.executed(), Vec::<String>::new(), "{}", out.text());
    assert_eq!(out.manifest_digest(), first);

    // chmod: the mode is part of the COPY's key and lands in the image.
    std::fs::set_permissions(
        p.ctx.join("src/tool.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let st = wait_project(
        &d,
        &p.ctx,
        "COPY . /ctx/ dirty after chmod of src/tool.sh",
        |s| {
            s["state"] == "dirty"
                && strs(&s["changed_files"]).contains(&"src/tool.sh".to_string())
                && s["steps"][1]["state"] == "dirty"
                && s["steps"][2]["state"] == "dirty"
                && s["steps"][0]["state"] == "clean"
        },
    );
    // Checked after the rebuild, so a wrong reason does not hide a wrong image.
    let why = strs(&st["steps"][1]["why"]);
    let why_ok = why.contains(&"file changed: src/tool.sh".to_string());
    let fs = rebuild_std(&d, &p, &FROM_CTX);
    let tool = fs["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "/ctx/src/tool.sh")
        .cloned()
        .unwrap_or_default();
    assert_eq!(tool["mode"], "0755", "{}", pretty(&tool));
    assert!(
        why_ok,
        "after chmod of src/tool.sh, status gives COPY . /ctx/ the reason {why:?}, \
         not the file (docs/CLI.md: `file changed: PATH`):\n{}",
        pretty(&st)
    );

    // chmod of a directory too.
    std::fs::set_permissions(
        p.ctx.join("src/lib"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    wait_project(&d, &p.ctx, "state dirty after chmod of src/lib", |s| {
        s["state"] == "dirty"
    });
    rebuild_std(&d, &p, &FROM_CTX);
}

#[test]
fn save_rename_a_directory() {
    let d = start_daemon();
    let p = new_project();
    first_build(&d, &p);

    std::fs::rename(p.ctx.join("src/lib"), p.ctx.join("src/library")).unwrap();
    ctx_dirty_then_rebuild(
        &d,
        &p,
        &[
            "file removed: src/lib/util.c",
            "file removed: src/lib/deep/x.c",
            "file added: src/library/util.c",
            "file added: src/library/deep/x.c",
        ],
        &["src/lib/util.c", "src/library/deep/x.c"],
    );

    // The renamed directory is still watched: an edit inside it is seen.
    std::fs::write(p.ctx.join("src/library/deep/x.c"), "int x = 1;\n").unwrap();
    ctx_dirty_then_rebuild(
        &d,
        &p,
        &["file changed: src/library/deep/x.c"],
        &["src/library/deep/x.c"],
    );
}

#[test]
fn save_move_a_directory_out_of_and_into_the_context() {
    let d = start_daemon();
    let p = new_project();
    first_build(&d, &p);

    // Out: its files are removed from the context.
    std::fs::rename(p.ctx.join("src/lib"), p.outside.join("lib")).unwrap();
    ctx_dirty_then_rebuild(
        &d,
        &p,
        &[
            "file removed: src/lib/util.c",
            "file removed: src/lib/deep/x.c",
        ],
        &["src/lib/util.c"],
    );

    // Edits outside the context are no input.
    let before = status(&d, None)["daemon"]["events"].as_u64().unwrap();
    std::fs::write(p.outside.join("lib/util.c"), "int util = 5;\n").unwrap();
    std::fs::write(p.ctx.join("src/main.c"), "int main(void) { return 5; }\n").unwrap();
    wait_events_after(&d, before);
    let st = expect_dirty(
        &d,
        &p.ctx,
        &[
            ("COPY . /ctx/", &["file changed: src/main.c"]),
            ("LABEL pattern=1", &[PARENT]),
        ],
        &["src/main.c"],
    );
    assert!(
        !strs(&st["changed_files"])
            .iter()
            .any(|f| f.contains("util.c")),
        "a file outside the context is listed as changed: {}",
        pretty(&st)
    );
    rebuild_std(&d, &p, &FROM_CTX);

    // In (into keep/, which both COPYs select), with the edit made outside.
    std::fs::rename(p.outside.join("lib"), p.ctx.join("keep/lib")).unwrap();
    expect_dirty(
        &d,
        &p.ctx,
        &[
            (
                "COPY keep/ /keep/",
                &[
                    "file added: keep/lib/util.c",
                    "file added: keep/lib/deep/x.c",
                ],
            ),
            (
                "COPY . /ctx/",
                &[
                    "file added: keep/lib/util.c",
                    "file added: keep/lib/deep/x.c",
                ],
            ),
            ("LABEL pattern=1", &[PARENT]),
        ],
        &["keep/lib/util.c"],
    );
    let fs = rebuild_std(&d, &p, &STEPS);
    let util = fs["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "/keep/lib/util.c")
        .cloned()
        .unwrap_or_default();
    assert_eq!(util["sha256"], sha256_hex(b"int util = 5;\n"));

    // The moved-in directory is watched: an edit deep inside it is seen.
    std::fs::write(p.ctx.join("keep/lib/deep/x.c"), "int x = 6;\n").unwrap();
    expect_dirty(
        &d,
        &p.ctx,
        &[
            ("COPY keep/ /keep/", &["file changed: keep/lib/deep/x.c"]),
            ("COPY . /ctx/", &["file changed: keep/lib/deep/x.c"]),
            ("LABEL pattern=1", &[PARENT]),
        ],
        &["keep/lib/deep/x.c"],
    );
    rebuild_std(&d, &p, &STEPS);
}

#[test]
fn save_create_a_new_subtree() {
    let d = start_daemon();
    let p = new_project();
    first_build(&d, &p);

    // mkdir -p and files at once, no pause between them.
    std::fs::create_dir_all(p.ctx.join("gen/a/b/c")).unwrap();
    std::fs::write(p.ctx.join("gen/a/b/c/f1"), "one\n").unwrap();
    std::fs::write(p.ctx.join("gen/a/b/c/f2"), "two\n").unwrap();
    std::fs::write(p.ctx.join("gen/a/top"), "top\n").unwrap();
    ctx_dirty_then_rebuild(
        &d,
        &p,
        &[
            "file added: gen/a/b/c/f1",
            "file added: gen/a/b/c/f2",
            "file added: gen/a/top",
        ],
        &["gen/a/b/c/f1", "gen/a/b/c/f2", "gen/a/top"],
    );

    // The new directories are watched.
    std::fs::write(p.ctx.join("gen/a/b/c/f3"), "three\n").unwrap();
    ctx_dirty_then_rebuild(&d, &p, &["file added: gen/a/b/c/f3"], &["gen/a/b/c/f3"]);
}

#[test]
fn save_delete_a_subtree() {
    let d = start_daemon();
    let p = new_project();
    first_build(&d, &p);

    std::fs::remove_dir_all(p.ctx.join("src/lib")).unwrap();
    ctx_dirty_then_rebuild(
        &d,
        &p,
        &[
            "file removed: src/lib/util.c",
            "file removed: src/lib/deep/x.c",
        ],
        &["src/lib/util.c", "src/lib/deep/x.c"],
    );

    // The same path made again (a new directory, new watch) is seen.
    write_files(&p.ctx, &[("src/lib/again.c", "again\n")]);
    ctx_dirty_then_rebuild(
        &d,
        &p,
        &["file added: src/lib/again.c"],
        &["src/lib/again.c"],
    );
}

#[test]
fn save_edit_the_dockerfile() {
    let d = start_daemon();
    let p = new_project();
    first_build(&d, &p);
    let df = p.ctx.join("Dockerfile");

    // A changed last line: only that step.
    std::fs::write(&df, DOCKERFILE.replace("pattern=1", "pattern=2")).unwrap();
    expect_dirty(
        &d,
        &p.ctx,
        &[("LABEL pattern=1", &["instruction changed (line 4)..."])],
        &["Dockerfile"],
    );
    let steps2 = ["COPY keep/ /keep/", "COPY . /ctx/", "LABEL pattern=2"];
    let fs = rebuild(&d, &p, &["LABEL pattern=2"], &steps2, &COPIES, &IGNORE);
    assert_eq!(fs["config"]["Labels"], json!({"pattern": "2"}));

    // A changed first step: it and everything after it.
    let df3 = DOCKERFILE
        .replace("pattern=1", "pattern=2")
        .replace("COPY keep/ /keep/", "COPY keep/ /kept/");
    std::fs::write(&df, &df3).unwrap();
    expect_dirty(
        &d,
        &p.ctx,
        &[
            ("COPY keep/ /keep/", &["instruction changed (line 2)..."]),
            ("COPY . /ctx/", &[PARENT]),
            ("LABEL pattern=2", &[PARENT]),
        ],
        &["Dockerfile"],
    );
    let steps3 = ["COPY keep/ /kept/", "COPY . /ctx/", "LABEL pattern=2"];
    rebuild(
        &d,
        &p,
        &steps3,
        &steps3,
        &[("keep", "/kept"), (".", "/ctx")],
        &IGNORE,
    );

    // A syntax error just saved: status says the build cannot be planned...
    std::fs::write(&df, "FROM scratch\nCOPY\n").unwrap();
    let st = wait_project(&d, &p.ctx, "a plan error", |s| {
        s["state"] == "dirty"
            && s["steps"].as_array().is_some_and(|steps| {
                steps.iter().any(|st| {
                    strs(&st["why"])
                        .iter()
                        .any(|w| w.starts_with("the build cannot be planned now: "))
                })
            })
    });
    assert!(st["steps"].as_array().is_some_and(|s| !s.is_empty()));
    // ...and once it is fixed (back to what was built), the project is clean.
    std::fs::write(&df, &df3).unwrap();
    expect_clean(&d, &p.ctx);
    let out = d.build_ok(&p.ctx, &[]);
    assert_eq!(out.executed(), Vec::<String>::new(), "{}", out.text());
}

#[test]
fn save_edit_the_dockerignore() {
    let d = start_daemon();
    let p = new_project();
    let first = first_build(&d, &p);
    let ignore_file = p.ctx.join(".dockerignore");

    std::fs::write(&ignore_file, "Dockerfile\n.dockerignore\nREADME\n").unwrap();
    expect_dirty(
        &d,
        &p.ctx,
        &[
            ("COPY . /ctx/", &["file removed: README"]),
            ("LABEL pattern=1", &[PARENT]),
        ],
        &[".dockerignore"],
    );
    let fs = rebuild(
        &d,
        &p,
        &FROM_CTX,
        &STEPS,
        &COPIES,
        &["Dockerfile", ".dockerignore", "README"],
    );
    assert!(
        !fs["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == "/ctx/README"),
        "an ignored file is in the image"
    );

    // Back to the first .dockerignore: dirty again, and the first build's
    // steps come from the cache.
    std::fs::write(&ignore_file, "Dockerfile\n.dockerignore\n").unwrap();
    expect_dirty(
        &d,
        &p.ctx,
        &[
            ("COPY . /ctx/", &["file added: README"]),
            ("LABEL pattern=1", &[PARENT]),
        ],
        &[".dockerignore"],
    );
    rebuild_std(&d, &p, &[]);
    assert_eq!(d.build_ok(&p.ctx, &[]).manifest_digest(), first);
}

// ---------------------------------------------------------------------------
// 2. The barrier: a build right after a save sees it
// ---------------------------------------------------------------------------

#[test]
fn a_build_right_after_a_save_sees_the_save() {
    let d = start_daemon();
    let base = tempfile::tempdir().unwrap();
    let ctx = base.path().join("ctx");
    write_files(
        &ctx,
        &[
            ("Dockerfile", "FROM scratch\nCOPY . /ctx/\n"),
            (".dockerignore", "Dockerfile\n.dockerignore\n"),
            ("f.txt", "start\n"),
        ],
    );
    d.build_ok(&ctx, &[]);
    let stage = base.path().join("stage.tmp");
    for i in 0..50 {
        let content = format!("save number {i} at {:?}\n", Instant::now());
        // In place, through a rename, or as a new file: no pause before building.
        let target = match i % 3 {
            0 => {
                std::fs::write(ctx.join("f.txt"), &content).unwrap();
                "f.txt".to_string()
            }
            1 => {
                std::fs::write(&stage, &content).unwrap();
                std::fs::rename(&stage, ctx.join("f.txt")).unwrap();
                "f.txt".to_string()
            }
            _ => {
                let name = format!("new-{i}.txt");
                std::fs::write(ctx.join(&name), &content).unwrap();
                name
            }
        };
        let (out, fs) = build_image(&d, &ctx);
        let entry = fs["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == format!("/ctx/{target}"))
            .cloned();
        assert_eq!(
            entry.as_ref().map(|e| e["sha256"].clone()),
            Some(json!(sha256_hex(content.as_bytes()))),
            "save {i} ({target}) was not in the build that started right after it:\n{}\n{}",
            out.text(),
            log_tail(&d)
        );
        assert_eq!(out.executed(), vec!["COPY . /ctx/".to_string()]);
    }
    // And the last image is the directory, all of it.
    let (_, fs) = build_image(&d, &ctx);
    assert_image_is(&fs, &ctx, &[(".", "/ctx")], &IGNORE);
}

// ---------------------------------------------------------------------------
// 3. Stress: thousands of changes while builds run
// ---------------------------------------------------------------------------

const STRESS_DIRS: [&str; 4] = ["s0", "s1", "s2", "s3"];

/// Random saves of every kind until `stop`; returns how many were made. File
/// contents come from a few variants, so keys recur and a cache entry stored
/// with the wrong content would be reused (and caught) later.
/// Makes random changes until `stop`, counting them in `ops`.
fn churn(ctx: &Path, stop: &AtomicBool, ops: &AtomicU64, seed: u64) {
    let mut rng = Rng(seed | 1);
    while !stop.load(Ordering::Relaxed) {
        let dir = ctx.join(STRESS_DIRS[rng.below(4) as usize]);
        let other = ctx.join(STRESS_DIRS[rng.below(4) as usize]);
        let file = dir.join(format!("f{}", rng.below(16)));
        let variant = rng.below(6) as usize;
        let content = format!("variant {variant} of a stress file\n").repeat(variant * 50 + 1);
        let sub = format!("sub{}", rng.below(4));
        let _ = match rng.below(100) {
            0..=29 => std::fs::write(&file, &content),
            30..=49 => {
                let tmp = dir.join(format!(".tmp-{}", rng.next()));
                std::fs::write(&tmp, &content)
                    .and_then(|_| std::fs::rename(&tmp, &file))
                    .inspect_err(|_| {
                        let _ = std::fs::remove_file(&tmp);
                    })
            }
            50..=61 => std::fs::remove_file(&file),
            62..=73 => std::fs::rename(&file, other.join(format!("f{}", rng.below(16)))),
            74..=81 => std::fs::set_permissions(
                &file,
                std::fs::Permissions::from_mode(if rng.below(2) == 0 { 0o644 } else { 0o755 }),
            ),
            82..=89 => std::fs::create_dir_all(dir.join(&sub))
                .and_then(|_| std::fs::write(dir.join(&sub).join("a"), &content))
                .and_then(|_| std::fs::write(dir.join(&sub).join("b"), "b\n")),
            90..=94 => std::fs::remove_dir_all(dir.join(&sub)),
            _ => std::fs::rename(dir.join(&sub), other.join(format!("sub{}", rng.below(4)))),
        };
        ops.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[test]
fn thousands_of_changes_while_builds_run_never_give_a_stale_image() {
    let d = start_daemon();
    let base = tempfile::tempdir().unwrap();
    let ctx = base.path().join("ctx");
    write_files(
        &ctx,
        &[
            ("Dockerfile", "FROM scratch\nCOPY s0/ /s0/\nCOPY . /ctx/\n"),
            (".dockerignore", "Dockerfile\n.dockerignore\n"),
        ],
    );
    for dir in STRESS_DIRS {
        for i in 0..16 {
            write_files(
                &ctx.join(dir),
                &[(&format!("f{i}"), &format!("initial {dir}/f{i}\n"))],
            );
        }
    }
    let copies = [("s0", "/s0"), (".", "/ctx")];
    d.build_ok(&ctx, &[]);

    let mut total_ops = 0;
    let mut total_builds = 0;
    let mut gave_up = 0usize;
    let mut failures: Vec<String> = Vec::new();
    for round in 0..3u64 {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let writer = {
            let (ctx, stop, ops) = (ctx.clone(), stop.clone(), ops.clone());
            std::thread::spawn(move || churn(&ctx, &stop, &ops, 0x5eed + round))
        };
        // At least 2.5 s and 1,000 changes per round; a loaded machine makes
        // changes slower, so the round runs longer (up to 30 s), not shorter.
        let started = Instant::now();
        let busy = |ops: &AtomicU64| {
            let elapsed = started.elapsed();
            elapsed < Duration::from_millis(2500)
                || (ops.load(Ordering::Relaxed) < 1000 && elapsed < Duration::from_secs(30))
        };
        while busy(&ops) {
            let out = d.build(&ctx, &[]);
            total_builds += 1;
            // A build whose files keep changing under it retries and may give
            // up with this error: that is the contract (never a mixed image).
            // Any other failure is a bug.
            if !out.success {
                if out
                    .text()
                    .contains("changed while the build was reading it")
                {
                    gave_up += 1;
                } else {
                    failures.push(format!("round {round}: {}", out.text()));
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().expect("writer thread");
        total_ops += ops.load(Ordering::Relaxed);
        // Quiet now: the image must be the directory, exactly.
        let (out, fs) = build_image(&d, &ctx);
        assert_image_is(&fs, &ctx, &copies, &IGNORE);
        let again = d.build_ok(&ctx, &[]);
        assert_eq!(again.executed(), Vec::<String>::new(), "{}", again.text());
        assert_eq!(again.manifest_digest(), out.manifest_digest());
    }
    eprintln!(
        "stress: {total_ops} changes, {total_builds} builds during them, {gave_up} gave up because the context kept changing, {} failed otherwise",
        failures.len()
    );
    assert!(total_ops >= 3000, "only {total_ops} changes were made");
    assert!(
        failures.is_empty(),
        "{} of {total_builds} builds made during {total_ops} changes failed; the first:\n{}",
        failures.len(),
        failures.first().map(String::as_str).unwrap_or("")
    );
}

// ---------------------------------------------------------------------------
// 4. inotify queue overflow: a correct full rescan
// ---------------------------------------------------------------------------

const QUEUE_SYSCTL: &str = "/proc/sys/fs/inotify/max_queued_events";

/// Puts the old inotify queue size back, whatever happens.
struct RestoreQueueSize(String);

impl Drop for RestoreQueueSize {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(QUEUE_SYSCTL, &self.0) {
            eprintln!("cannot restore {QUEUE_SYSCTL} to {}: {e}", self.0.trim());
        }
    }
}

/// A daemon whose inotify queue holds 16 events.
fn daemon_with_tiny_inotify_queue() -> Daemon {
    let euid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    assert_eq!(
        euid, 0,
        "this test shrinks {QUEUE_SYSCTL} to force an inotify queue overflow and must run as root (CI does)"
    );
    let _exclusive = START.write().unwrap_or_else(|e| e.into_inner());
    let old = std::fs::read_to_string(QUEUE_SYSCTL).expect("read the inotify queue size");
    let _restore = RestoreQueueSize(old);
    std::fs::write(QUEUE_SYSCTL, "16").expect("shrink the inotify queue");
    let d = Daemon::start();
    status(&d, None);
    d
    // _restore, then _exclusive, are dropped here.
}

#[test]
fn inotify_queue_overflow_leads_to_a_correct_full_rescan() {
    let d = daemon_with_tiny_inotify_queue();
    let base = tempfile::tempdir().unwrap();
    let ctx = base.path().join("ctx");
    write_files(
        &ctx,
        &[
            ("Dockerfile", "FROM scratch\nCOPY . /ctx/\n"),
            (".dockerignore", "Dockerfile\n.dockerignore\n"),
            ("seed.txt", "seed\n"),
        ],
    );
    d.build_ok(&ctx, &[]);
    // Let the first build's own events settle.
    std::thread::sleep(Duration::from_millis(200));
    let before = status(&d, None);
    let rescans_before = tree_of(&before, &ctx)
        .unwrap_or_else(|| panic!("no tree covers the context:\n{}", pretty(&before)))["rescans"]
        .as_u64()
        .expect("rescans");

    // Far more events than the queue holds.
    for i in 0..2000 {
        let dir = ctx.join(format!("d{}", i % 20));
        if i < 20 {
            std::fs::create_dir(&dir).unwrap();
        }
        std::fs::write(dir.join(format!("f{i}")), format!("file {i}\n")).unwrap();
    }
    // Status says the tree lost events and a rescan is due.
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status(&d, None);
        let t = tree_of(&s, &ctx).expect("tree");
        if t["mode"] == "rescan_pending" {
            assert!(t["reason"].is_string(), "{}", pretty(&t));
            assert_eq!(s["daemon"]["watching"], false, "{}", pretty(&s["daemon"]));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "2000 new files with a 16-event inotify queue, and status does not say a rescan is due:\n{}\n{}",
            pretty(&s["daemon"]),
            log_tail(&d)
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let (out, fs) = build_image(&d, &ctx);
    assert_image_is(&fs, &ctx, &[(".", "/ctx")], &IGNORE);
    assert_eq!(out.executed(), vec!["COPY . /ctx/".to_string()]);
    let after = status(&d, None);
    let tree = tree_of(&after, &ctx).expect("tree");
    assert!(
        tree["rescans"].as_u64().unwrap_or(0) > rescans_before
            && tree["rescans"].as_u64() >= Some(1),
        "the build after the overflow did not rescan:\n{}",
        pretty(&after["daemon"])
    );
    assert!(
        d.log().contains("full rescan"),
        "the log does not mention the rescan:\n{}",
        log_tail(&d)
    );

    // Watching goes on after the rescan: a later save is seen and built.
    std::fs::write(ctx.join("late.txt"), "late\n").unwrap();
    wait_project(&d, &ctx, "late.txt among changed_files", |p| {
        strs(&p["changed_files"]).contains(&"late.txt".to_string())
    });
    let (_, fs) = build_image(&d, &ctx);
    assert_image_is(&fs, &ctx, &[(".", "/ctx")], &IGNORE);
}

// ---------------------------------------------------------------------------
// 5. Restart: the index is re-validated by stat, not re-hashed
// ---------------------------------------------------------------------------

fn hashed_bytes(d: &Daemon) -> u64 {
    status(d, None)["daemon"]["hashed_bytes"]
        .as_u64()
        .expect("daemon.hashed_bytes")
}

/// Sets a file's mtime an hour back, out of the racy window (docs/CACHE.md).
fn age(path: &Path) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
}

/// Stops the daemon, runs `meanwhile`, starts it again on the same data.
fn restart_daemon_with(d: &mut Daemon, meanwhile: impl FnOnce()) {
    d.stop();
    meanwhile();
    let _shared = START.read().unwrap_or_else(|e| e.into_inner());
    d.spawn();
    status(d, None);
}

#[test]
fn after_a_restart_unchanged_files_are_not_rehashed() {
    let mut d = start_daemon();
    let base = tempfile::tempdir().unwrap();
    let ctx = base.path().join("ctx");
    let files: Vec<(String, String)> = (0..20)
        .map(|i| {
            (
                format!("data/f{i}.bin"),
                format!("{}", i % 10).repeat(1000 + i * 100),
            )
        })
        .collect();
    write_files(
        &ctx,
        &[
            ("Dockerfile", "FROM scratch\nCOPY . /ctx/\n"),
            (".dockerignore", "Dockerfile\n.dockerignore\n"),
        ],
    );
    for (path, content) in &files {
        write_files(&ctx, &[(path, content)]);
        age(&ctx.join(path));
    }
    let total: u64 = files.iter().map(|(_, c)| c.len() as u64).sum();
    let first = d.build_ok(&ctx, &[]);
    // The witness works: the first build read every file once.
    assert!(
        hashed_bytes(&d) >= total,
        "hashed_bytes {} after hashing {total} bytes of context",
        hashed_bytes(&d)
    );

    let mut failures = Vec::new();

    // Restart; nothing changed.
    restart_daemon(&mut d);
    let st = status(&d, None);
    let p = project_in(&st, &ctx).unwrap_or_else(|| {
        panic!(
            "the project is not listed after a restart:\n{}",
            pretty(&st)
        )
    });
    assert_eq!(
        p["last_build"]["manifest_digest"],
        first.manifest_digest().as_str()
    );
    assert!(
        tree_of(&st, &ctx).is_some(),
        "the context is not watched after a restart:\n{}",
        pretty(&st["daemon"])
    );
    let again = d.build_ok(&ctx, &[]);
    assert_eq!(again.executed(), Vec::<String>::new(), "{}", again.text());
    assert_eq!(again.manifest_digest(), first.manifest_digest());
    let after_noop = hashed_bytes(&d);
    eprintln!("hashed_bytes after restart + no-op build: {after_noop} (context: {total} bytes)");
    if after_noop != 0 {
        failures.push(format!(
            "after a restart, a build of the unchanged context hashed {after_noop} bytes \
             (expected 0: re-validated by stat from the persisted index)"
        ));
    }

    // Restart with a file edited while the daemon was down: same size, mtime
    // an hour back as before; only its inode change time tells. The build must
    // see it, and hash only it.
    let f3 = ctx.join("data/f3.bin");
    let f3_len = std::fs::metadata(&f3).unwrap().len();
    restart_daemon_with(&mut d, || {
        std::fs::write(&f3, "x".repeat(f3_len as usize)).unwrap();
        age(&f3);
    });
    let (out, fs) = build_image(&d, &ctx);
    assert_eq!(
        out.executed(),
        vec!["COPY . /ctx/".to_string()],
        "a file edited while the daemon was down was not rebuilt:\n{}",
        out.text()
    );
    assert_image_is(&fs, &ctx, &[(".", "/ctx")], &IGNORE);
    let after_edit = hashed_bytes(&d);
    eprintln!("hashed_bytes after restart + build with one file ({f3_len} bytes) edited while down: {after_edit}");
    if after_edit != f3_len {
        failures.push(format!(
            "after a restart with one file of {f3_len} bytes edited while the daemon was down, \
             the build hashed {after_edit} bytes (expected exactly that file)"
        ));
    }

    // One file replaced while the daemon runs (known size, aged so the racy
    // rule does not apply): exactly its bytes are hashed. Measured from before
    // the save: the daemon may hash it in the background (for the dirty set)
    // before the build asks for it.
    let new_content = "z".repeat(54_321);
    let stage = base.path().join("f7.staged");
    std::fs::write(&stage, &new_content).unwrap();
    age(&stage);
    let before = hashed_bytes(&d);
    std::fs::rename(&stage, ctx.join("data/f7.bin")).unwrap();
    let out = d.build_ok(&ctx, &[]);
    assert_eq!(out.executed(), vec!["COPY . /ctx/".to_string()]);
    let grown = hashed_bytes(&d) - before;
    eprintln!("hashed_bytes grew by {grown} for one changed file of 54321 bytes");
    if grown != 54_321 {
        failures.push(format!(
            "after one file of 54321 bytes changed, the build hashed {grown} bytes"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------
// 6. status, projects, forget, explain: the documented JSON
// ---------------------------------------------------------------------------

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

fn one_of(v: &Value, allowed: &[&str]) -> bool {
    v.as_str().is_some_and(|s| allowed.contains(&s))
}

/// Every documented field of `.daemon`, with its type and values.
fn check_daemon_schema(d: &Value) {
    let ctx = pretty(d);
    let pid = d["pid"].as_u64().unwrap_or_else(|| panic!("pid: {ctx}"));
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(comm.trim(), "memobuildd", "pid {pid} is not the daemon");
    assert_eq!(d["version"], env!("CARGO_PKG_VERSION"), "{ctx}");
    assert!(d["watching"].is_boolean(), "watching: {ctx}");
    let trees = d["trees"]
        .as_array()
        .unwrap_or_else(|| panic!("trees: {ctx}"));
    for t in trees {
        assert!(
            t["root"].as_str().is_some_and(|r| r.starts_with('/')),
            "{ctx}"
        );
        assert!(
            one_of(&t["mode"], &["watching", "rescan_pending", "polling"]),
            "{ctx}"
        );
        if t["mode"] == "watching" {
            assert!(t["reason"].is_null(), "{ctx}");
        } else {
            assert!(t["reason"].is_string(), "{ctx}");
        }
        assert!(t["entries"].is_u64() && t["rescans"].is_u64(), "{ctx}");
    }
    let entries: u64 = trees.iter().filter_map(|t| t["entries"].as_u64()).sum();
    assert_eq!(d["index_entries"].as_u64(), Some(entries), "{ctx}");
    assert_eq!(d["watch_count"].as_u64(), Some(trees.len() as u64), "{ctx}");
    assert_eq!(
        d["watching"].as_bool(),
        Some(trees.iter().all(|t| t["mode"] == "watching")),
        "{ctx}"
    );
    for f in ["events", "hashed_bytes", "running_builds"] {
        assert!(d[f].is_u64(), "{f}: {ctx}");
    }
}

/// Every documented field of a project, with its type and values.
fn check_project_schema(p: &Value) {
    let ctx = pretty(p);
    assert!(
        p["id"].as_str().is_some_and(|id| is_hex(id, 12)),
        "id: {ctx}"
    );
    for f in ["context", "dockerfile", "target"] {
        assert!(p[f].is_string(), "{f}: {ctx}");
    }
    assert!(
        p["build_args"]
            .as_object()
            .is_some_and(|m| m.values().all(Value::is_string)),
        "build_args: {ctx}"
    );
    assert!(
        one_of(
            &p["state"],
            &["never_built", "clean", "dirty", "building", "failed"]
        ),
        "state: {ctx}"
    );
    let steps = p["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("steps: {ctx}"));
    for (i, s) in steps.iter().enumerate() {
        assert_eq!(
            s["index"].as_u64(),
            Some(i as u64),
            "steps[{i}].index: {ctx}"
        );
        assert!(
            s["stage"].is_string() && s["instruction"].is_string(),
            "{ctx}"
        );
        assert!(s["line"].as_u64().is_some_and(|l| l >= 1), "line: {ctx}");
        assert!(
            one_of(
                &s["state"],
                &["clean", "dirty", "building", "cached", "done", "failed"]
            ),
            "steps[{i}].state: {ctx}"
        );
        let why = s["why"].as_array().unwrap_or_else(|| panic!("why: {ctx}"));
        assert!(why.iter().all(Value::is_string), "{ctx}");
        if s["state"] == "dirty" {
            assert!(!why.is_empty(), "a dirty step without a why: {ctx}");
        }
    }
    assert!(
        p["changed_files"]
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string)),
        "changed_files: {ctx}"
    );
    let lb = &p["last_build"];
    if !lb.is_null() {
        assert!(one_of(&lb["result"], &["success", "failed"]), "{ctx}");
        assert!(lb["finished_at"].is_i64(), "{ctx}");
        assert!(lb["millis"].is_u64(), "{ctx}");
        match &lb["manifest_digest"] {
            Value::Null => assert_eq!(lb["result"], "failed", "{ctx}"),
            Value::String(m) => assert!(
                m.strip_prefix("sha256:").is_some_and(|h| is_hex(h, 64)),
                "{ctx}"
            ),
            _ => panic!("manifest_digest: {ctx}"),
        }
        assert!(lb["error"].is_null() || lb["error"].is_string(), "{ctx}");
    }
    assert!(p["generation"].is_u64(), "generation: {ctx}");
}

fn check_schema(s: &Value) {
    check_daemon_schema(&s["daemon"]);
    for p in projects_of(s) {
        check_project_schema(&p);
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn status_projects_forget_and_explain_follow_the_documented_schema() {
    let mut d = start_daemon();
    let t0 = unix_now();
    let base = tempfile::tempdir().unwrap();
    let a = base.path().join("a");
    write_files(
        &a,
        &[
            (
                "Dockerfile",
                "FROM scratch\nENV A=1\nCOPY . /ctx/\nLABEL x=1\n",
            ),
            (".dockerignore", "Dockerfile\n.dockerignore\n"),
            ("src/a.txt", "a\n"),
            ("src/b.txt", "b\n"),
        ],
    );
    let a_steps = ["ENV A=1", "COPY . /ctx/", "LABEL x=1"];
    let built = d.build_ok(&a, &[]);

    // Clean.
    let s = status(&d, None);
    check_schema(&s);
    let pa = project_in(&s, &a).expect("project a");
    assert_eq!(pa["context"], canon(&a).as_str());
    assert_eq!(
        pa["dockerfile"],
        format!("{}/Dockerfile", canon(&a)).as_str()
    );
    assert_eq!(pa["target"], "");
    assert_eq!(pa["build_args"], json!({}));
    assert_eq!(pa["state"], "clean", "{}", pretty(&pa));
    let steps = pa["steps"].as_array().unwrap();
    assert_eq!(
        steps
            .iter()
            .map(|s| (
                s["instruction"].as_str().unwrap(),
                s["line"].as_u64().unwrap()
            ))
            .collect::<Vec<_>>(),
        vec![("ENV A=1", 2), ("COPY . /ctx/", 3), ("LABEL x=1", 4)]
    );
    assert!(steps
        .iter()
        .all(|s| s["state"] == "clean" && s["why"] == json!([])));
    assert_eq!(pa["changed_files"], json!([]));
    let lb = &pa["last_build"];
    assert_eq!(lb["result"], "success");
    assert_eq!(lb["manifest_digest"], built.manifest_digest().as_str());
    assert!(lb["error"].is_null());
    let fin = lb["finished_at"].as_i64().unwrap();
    assert!(fin >= t0 - 1 && fin <= unix_now() + 1, "finished_at {fin}");
    let daemon = &s["daemon"];
    assert_eq!(daemon["watching"], true);
    assert_eq!(daemon["running_builds"], 0);
    let tree = tree_of(&s, &a).expect("a tree covering the context");
    assert_eq!(tree["mode"], "watching");
    assert!(tree["entries"].as_u64().unwrap() >= 5, "{}", pretty(&tree));
    assert!(
        daemon["hashed_bytes"].as_u64().unwrap() >= 4,
        "{}",
        pretty(daemon)
    );

    // Dirty.
    let events_before = daemon["events"].as_u64().unwrap();
    std::fs::write(a.join("src/a.txt"), "a, edited\n").unwrap();
    let pa2 = expect_dirty(
        &d,
        &a,
        &[
            ("COPY . /ctx/", &["file changed: src/a.txt"]),
            ("LABEL x=1", &[PARENT]),
        ],
        &["src/a.txt"],
    );
    let s = status(&d, None);
    check_schema(&s);
    let steps = pa2["steps"].as_array().unwrap();
    assert_eq!(steps[0]["state"], "clean");
    assert_eq!(steps[1]["why"], json!(["file changed: src/a.txt"]));
    assert_eq!(steps[2]["why"], json!([PARENT]));
    assert_eq!(pa2["changed_files"], json!(["src/a.txt"]));
    assert!(pa2["generation"].as_u64() > pa["generation"].as_u64());
    assert!(s["daemon"]["events"].as_u64().unwrap() > events_before);

    // explain, after the build of that change.
    d.build_ok(&a, &[]);
    let ex = ctl_json(&d, &["explain", "--json", a.to_str().unwrap()]);
    assert_eq!(ex["project"], pa["id"]);
    let steps = ex["steps"].as_array().expect("explain steps");
    assert_eq!(steps.len(), 3, "{}", pretty(&ex));
    for (i, s) in steps.iter().enumerate() {
        assert_eq!(s["index"].as_u64(), Some(i as u64));
        assert_eq!(s["instruction"], a_steps[i]);
        assert_eq!(s["line"].as_u64(), Some(i as u64 + 2));
        assert!(s["stage"].is_string());
    }
    assert_eq!(steps[0]["outcome"], "cached", "{}", pretty(&ex));
    assert_eq!(steps[0]["why"], json!([]));
    assert_eq!(steps[1]["outcome"], "rebuilt", "{}", pretty(&ex));
    assert_eq!(steps[1]["why"], json!(["file changed: src/a.txt"]));
    assert_eq!(steps[2]["outcome"], "rebuilt");
    assert_eq!(steps[2]["why"], json!([PARENT]));

    // A failed build.
    let b = base.path().join("b");
    write_files(&b, &[("Dockerfile", "FROM scratch\nCOPY missing.txt /m\n")]);
    let failed = d.build(&b, &[]);
    assert!(!failed.success, "{}", failed.text());
    let s = status(&d, None);
    check_schema(&s);
    let pb = project_in(&s, &b).expect("the failed project is listed");
    assert_eq!(pb["state"], "failed", "{}", pretty(&pb));
    assert_eq!(pb["last_build"]["result"], "failed");
    assert!(pb["last_build"]["manifest_digest"].is_null());
    assert!(
        pb["last_build"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("missing.txt")),
        "{}",
        pretty(&pb)
    );

    // Same context with a build arg: another project.
    d.build_ok(&a, &["--build-arg", "V=1"]);
    let s = status(&d, None);
    check_schema(&s);
    let ids: Vec<String> = projects_of(&s)
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3, "{}", pretty(&s));
    let pa_arg = projects_of(&s)
        .into_iter()
        .find(|p| p["build_args"] == json!({"V": "1"}))
        .expect("the project with a build arg");
    assert_ne!(pa_arg["id"], pa["id"]);
    assert_eq!(pa_arg["context"], canon(&a).as_str());

    // status CONTEXT filters.
    let only_a = status(&d, Some(&a));
    check_schema(&only_a);
    let mut a_ids: Vec<String> = projects_of(&only_a)
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    a_ids.sort();
    let mut want = vec![
        pa["id"].as_str().unwrap().to_string(),
        pa_arg["id"].as_str().unwrap().to_string(),
    ];
    want.sort();
    assert_eq!(a_ids, want);
    let only_b = status(&d, Some(&b));
    assert_eq!(projects_of(&only_b).len(), 1);
    assert_eq!(projects_of(&only_b)[0]["id"], pb["id"]);
    // By project id too.
    let by_id = ctl_json(&d, &["status", "--json", pb["id"].as_str().unwrap()]);
    assert_eq!(projects_of(&by_id).len(), 1);
    assert_eq!(projects_of(&by_id)[0]["id"], pb["id"]);

    // projects --json: the projects array of status.
    let listed = ctl_json(&d, &["projects", "--json"]);
    let listed = listed.as_array().expect("projects --json is an array");
    for p in listed {
        check_project_schema(p);
    }
    let mut listed_ids: Vec<String> = listed
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    listed_ids.sort();
    let mut all_ids = ids.clone();
    all_ids.sort();
    assert_eq!(listed_ids, all_ids);

    // forget: gone from status and projects, its context no longer watched.
    let out = d.ctl(&["forget", b.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = status(&d, None);
    check_schema(&s);
    assert!(
        project_in(&s, &b).is_none(),
        "forgotten but listed:\n{}",
        pretty(&s)
    );
    assert_eq!(projects_of(&s).len(), 2);
    assert!(
        !s["daemon"]["trees"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["root"] == canon(&b).as_str()),
        "the forgotten context is still watched:\n{}",
        pretty(&s["daemon"])
    );
    assert!(tree_of(&s, &a).is_some(), "forgetting b stopped watching a");
    let listed = ctl_json(&d, &["projects", "--json"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(2));

    // ...and stays forgotten across a restart; the others persist.
    restart_daemon(&mut d);
    let s = status(&d, None);
    check_schema(&s);
    assert!(
        project_in(&s, &b).is_none(),
        "forgotten project back after a restart"
    );
    assert_eq!(projects_of(&s).len(), 2, "{}", pretty(&s));
}

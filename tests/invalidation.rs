//! Cache invalidation: exactly the steps whose inputs changed (and their
//! descendants) rebuild; nothing else does.

mod common;
use common::{write_files, Daemon};

const DOCKERFILE: &str = "FROM scratch AS base
ARG VERSION=1
COPY a.txt /a/
ENV V=${VERSION}
COPY src/ /src/
LABEL done=yes
";

fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_files(
        dir.path(),
        &[
            ("Dockerfile", DOCKERFILE),
            ("a.txt", "a"),
            ("src/main.c", "int main;"),
            ("src/lib.c", "int lib;"),
            ("unused.txt", "nobody copies me"),
            (".dockerignore", "src/*.tmp\n"),
        ],
    );
    dir
}

const ALL: [&str; 6] = [
    "ARG VERSION=1",
    "COPY a.txt /a/",
    "ENV V=${VERSION}",
    "COPY src/ /src/",
    "LABEL done=yes",
    "",
];

fn steps(names: &[&str]) -> Vec<String> {
    names
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| s.to_string())
        .collect()
}

#[test]
fn first_build_executes_everything_second_nothing() {
    let d = Daemon::start();
    let p = project();
    let first = d.build_ok(p.path(), &[]);
    assert_eq!(first.executed(), steps(&ALL));
    let second = d.build_ok(p.path(), &[]);
    assert_eq!(second.executed(), Vec::<String>::new());
    assert_eq!(second.cached(), steps(&ALL));
    assert_eq!(first.manifest_digest(), second.manifest_digest());
}

#[test]
fn one_changed_file_rebuilds_only_the_steps_reading_it() {
    let d = Daemon::start();
    let p = project();
    d.build_ok(p.path(), &[]);
    std::fs::write(p.path().join("src/lib.c"), "int lib2;").unwrap();
    let out = d.build_ok(p.path(), &[]);
    assert_eq!(
        out.executed(),
        steps(&["COPY src/ /src/", "LABEL done=yes"])
    );
}

#[test]
fn unselected_file_change_and_touch_rebuild_nothing() {
    let d = Daemon::start();
    let p = project();
    let first = d.build_ok(p.path(), &[]);
    std::fs::write(p.path().join("unused.txt"), "changed").unwrap();
    // Touch: new mtime, same bytes.
    let f = std::fs::File::options()
        .write(true)
        .open(p.path().join("a.txt"))
        .unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .unwrap();
    drop(f);
    // An ignored file appearing inside a copied directory changes nothing either.
    std::fs::write(p.path().join("src/scratch.tmp"), "ignored").unwrap();
    let out = d.build_ok(p.path(), &[]);
    assert_eq!(out.executed(), Vec::<String>::new());
    assert_eq!(out.manifest_digest(), first.manifest_digest());
}

#[test]
fn build_arg_change_rebuilds_from_the_arg_on() {
    let d = Daemon::start();
    let p = project();
    d.build_ok(p.path(), &[]);
    let out = d.build_ok(p.path(), &["--build-arg", "VERSION=2"]);
    assert_eq!(
        out.executed(),
        steps(&[
            "ARG VERSION=1",
            "COPY a.txt /a/",
            "ENV V=${VERSION}",
            "COPY src/ /src/",
            "LABEL done=yes"
        ])
    );
    // Back to the default: everything cached again.
    let again = d.build_ok(p.path(), &[]);
    assert_eq!(again.executed(), Vec::<String>::new());
}

#[test]
fn dockerfile_line_change_rebuilds_that_step_and_descendants() {
    let d = Daemon::start();
    let p = project();
    d.build_ok(p.path(), &[]);
    std::fs::write(
        p.path().join("Dockerfile"),
        DOCKERFILE.replace("LABEL done=yes", "LABEL done=no"),
    )
    .unwrap();
    let out = d.build_ok(p.path(), &[]);
    assert_eq!(out.executed(), steps(&["LABEL done=no"]));
    std::fs::write(
        p.path().join("Dockerfile"),
        DOCKERFILE.replace("ENV V=${VERSION}", "ENV V=x${VERSION}"),
    )
    .unwrap();
    let out = d.build_ok(p.path(), &[]);
    assert_eq!(
        out.executed(),
        steps(&["ENV V=x${VERSION}", "COPY src/ /src/", "LABEL done=yes"])
    );
}

#[test]
fn dockerignore_change_rebuilds_the_copy_it_affects() {
    let d = Daemon::start();
    let p = project();
    d.build_ok(p.path(), &[]);
    std::fs::write(p.path().join(".dockerignore"), "src/*.tmp\nsrc/lib.c\n").unwrap();
    let out = d.build_ok(p.path(), &[]);
    assert_eq!(
        out.executed(),
        steps(&["COPY src/ /src/", "LABEL done=yes"])
    );
    // A .dockerignore line that excludes nothing copied changes nothing.
    std::fs::write(
        p.path().join(".dockerignore"),
        "src/*.tmp\nsrc/lib.c\nnothing-here\n",
    )
    .unwrap();
    let out = d.build_ok(p.path(), &[]);
    assert_eq!(out.executed(), Vec::<String>::new());
}

#[test]
fn no_cache_reexecutes_but_gives_the_same_image() {
    let d = Daemon::start();
    let p = project();
    // With a pinned time, as in BuildKit: without one, a step run again gets
    // the time it ran (and another image) once the clock has moved on.
    let epoch = ["--build-arg", "SOURCE_DATE_EPOCH=1700000000"];
    let first = d.build_ok(p.path(), &epoch);
    let again = d.build_ok(p.path(), &[&epoch[..], &["--no-cache"]].concat());
    assert_eq!(again.executed(), steps(&ALL));
    assert_eq!(first.manifest_digest(), again.manifest_digest());
}

#[test]
fn unchanged_files_are_not_rehashed_after_restart_of_nothing() {
    // Same digest across a daemon restart (cold hash cache, warm store).
    let mut d = Daemon::start();
    let p = project();
    let first = d.build_ok(p.path(), &[]);
    d.restart();
    let second = d.build_ok(p.path(), &[]);
    assert_eq!(second.executed(), Vec::<String>::new());
    assert_eq!(first.manifest_digest(), second.manifest_digest());
}

#[test]
fn stages_the_target_does_not_need_are_not_built() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    write_files(
        dir.path(),
        &[
            (
                "Dockerfile",
                "FROM scratch AS unused\nCOPY does-not-exist /x\n\
                 FROM scratch AS left\nCOPY l /l\n\
                 FROM scratch AS right\nCOPY r /r\n\
                 FROM scratch AS final\nCOPY --from=left /l /l\nCOPY --from=right /r /r\n",
            ),
            ("l", "l"),
            ("r", "r"),
        ],
    );
    let out = d.build_ok(dir.path(), &[]);
    let executed = out.executed();
    assert!(
        !executed.iter().any(|s| s.contains("does-not-exist")),
        "unused stage was built: {executed:?}"
    );
    assert_eq!(executed.len(), 4, "{executed:?}");
    // --target picks a middle stage; the final stage is then not built.
    let out = d.build_ok(dir.path(), &["--target", "left", "--no-cache"]);
    assert_eq!(out.executed(), vec!["COPY l /l".to_string()]);
}

#[test]
fn a_retagged_base_image_rebuilds_its_children() {
    let d = Daemon::start();
    let base = tempfile::tempdir().unwrap();
    write_files(
        base.path(),
        &[("Dockerfile", "FROM scratch\nCOPY v /v\n"), ("v", "one")],
    );
    d.build_ok(base.path(), &["-t", "base:1"]);
    let child = tempfile::tempdir().unwrap();
    write_files(
        child.path(),
        &[("Dockerfile", "FROM base:1\nLABEL child=yes\n")],
    );
    let first = d.build_ok(child.path(), &[]);
    // Nothing in the child's context changes, but its base does.
    std::fs::write(base.path().join("v"), "two").unwrap();
    d.build_ok(base.path(), &["-t", "base:1"]);
    let second = d.build_ok(child.path(), &[]);
    assert_ne!(
        first.manifest_digest(),
        second.manifest_digest(),
        "the child must be rebuilt on the new base"
    );
    assert_eq!(second.executed(), steps(&["LABEL child=yes"]));
}

/// `COPY --exclude`: what the patterns leave out is no input of the step
/// (as BuildKit): editing an excluded file keeps the COPY cached (and the
/// image the same), editing a copied one re-runs it. Both a directory
/// source (its excluded entries) and a file source excluded by name.
#[test]
fn an_excluded_file_is_no_input_of_its_copy() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let dir_copy = "COPY --exclude=*.log --exclude=sub/*.log app /app";
    let file_copy = "COPY --exclude=*.log top.txt root.log /top/";
    write_files(
        dir.path(),
        &[
            (
                "Dockerfile",
                &format!("FROM scratch\n{dir_copy}\n{file_copy}\n"),
            ),
            ("app/keep.txt", "keep"),
            ("app/skip.log", "skip"),
            ("app/sub/more.log", "more"),
            ("app/sub/kept.txt", "kept"),
            ("top.txt", "top"),
            ("root.log", "root"),
        ],
    );
    let first = d.build_ok(dir.path(), &[]);
    assert_eq!(first.executed(), steps(&[dir_copy, file_copy]));
    for (path, text) in [
        ("app/skip.log", "skip, edited"),
        ("app/sub/more.log", "more, edited"),
        ("root.log", "root, edited"),
    ] {
        std::fs::write(dir.path().join(path), text).unwrap();
    }
    // A new excluded file too.
    std::fs::write(dir.path().join("app/new.log"), "new").unwrap();
    let second = d.build_ok(dir.path(), &[]);
    assert_eq!(second.executed(), Vec::<String>::new(), "{}", second.text());
    assert_eq!(second.cached(), steps(&[dir_copy, file_copy]));
    assert_eq!(second.manifest_digest(), first.manifest_digest());
    // A copied file below the directory: that COPY runs again (and the
    // one after it, its child).
    std::fs::write(dir.path().join("app/sub/kept.txt"), "kept, edited").unwrap();
    let third = d.build_ok(dir.path(), &[]);
    assert_eq!(
        third.executed(),
        steps(&[dir_copy, file_copy]),
        "{}",
        third.text()
    );
    // The copied file source.
    std::fs::write(dir.path().join("top.txt"), "top, edited").unwrap();
    let fourth = d.build_ok(dir.path(), &[]);
    assert_eq!(fourth.executed(), steps(&[file_copy]), "{}", fourth.text());
}

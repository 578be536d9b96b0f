//! The live progress display through a real pseudo-terminal: util-linux
//! `script` runs memobuild-ctl on a pty, as a developer's shell would, against
//! a real daemon, containerd and runc (Debian `containerd`, `runc`,
//! `busybox-static`, `bsdutils` for `script`).

mod common;
use common::{bin_dir, busybox_context, Daemon};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `memobuild-ctl ARGS` on a pty; returns (exit status, everything it
/// wrote to the terminal). `env` is added to the environment.
fn on_pty(d: &Daemon, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut line = format!(
        "{} --socket {}",
        bin_dir().join("memobuild-ctl").display(),
        d.socket.display()
    );
    for a in args {
        line.push(' ');
        line.push_str(&shell_quote(a));
    }
    let mut cmd = Command::new("script");
    cmd.args(["-qefc", &line, "/dev/null"])
        .env_remove("BUILDKIT_PROGRESS")
        .env_remove("NO_COLOR")
        .env_remove("SOURCE_DATE_EPOCH")
        .env("TERM", "xterm")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run script (apt-get install bsdutils)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

const DOCKERFILE: &str = "FROM base AS app
RUN printf 'one\\n\\033]0;pwned\\007two\\033[2J\\n'; sleep 1.5; echo three
COPY hello /hello
";

#[test]
fn auto_on_a_terminal_draws_the_live_display_and_escapes_run_output() {
    let d = Daemon::start();
    let ctx = busybox_context(DOCKERFILE, &[("hello", "hi\n")]);
    let (ok, out) = on_pty(&d, &["build", ctx.path().to_str().unwrap()], &[]);
    assert!(ok, "{out}");
    // The display was redrawn in place while the 1.5 s RUN ran: cursor moves
    // up over the last frame, and the timer was shown more than once.
    assert!(out.contains("\x1b[J"), "{out:?}");
    let redraws = out.matches("F[+] Building").count();
    assert!(redraws >= 5, "expected the frame redrawn in place: {out:?}");
    // Docker's step names, FROM first, stages named as Docker does.
    for want in [
        "=> [base 1/3] FROM scratch",
        "=> [base 2/3] COPY busybox /bin/busybox",
        "=> [app 1/3] FROM base",
        "=> [app 2/3] RUN printf",
        "=> [app 3/3] COPY hello /hello",
        " FINISHED",
        "=> => # one",
    ] {
        assert!(out.contains(want), "expected {want:?} in {out:?}");
    }
    // The RUN step's escape sequences are shown, not obeyed.
    assert!(out.contains("^[]0;pwned^Gtwo^[[2J"), "{out:?}");
    assert!(!out.contains("\x1b]0;pwned"), "{out:?}");
    assert!(!out.contains("\x1b[2J"), "{out:?}");
    // Colours by default: finished steps in blue.
    assert!(out.contains("\x1b[34m"), "{out:?}");
    // The last frame stays: its steps are all complete, output folded away.
    let last = &out[out.rfind("[+] Building").unwrap()..];
    assert!(last.contains("(4/4) FINISHED"), "{last:?}");
    assert!(!last.contains("=> => #"), "{last:?}");
    // The manifest digest ends the output, below the last frame (after its
    // erase-below).
    let tail = out.trim_end().rsplit("\x1b[J").next().unwrap();
    assert!(tail.starts_with("sha256:") && tail.len() == 71, "{tail:?}");

    // Again: everything cached, collapsed per stage.
    let (ok, out) = on_pty(
        &d,
        &["build", "--progress=tty", ctx.path().to_str().unwrap()],
        &[("NO_COLOR", "1")],
    );
    assert!(ok, "{out}");
    let last = &out[out.rfind("[+] Building").unwrap()..];
    assert!(last.contains("=> CACHED [base 2-3/3] 2 steps"), "{last:?}");
    assert!(last.contains("=> CACHED [app 2-3/3] 2 steps"), "{last:?}");
    // NO_COLOR: no colour sequences at all.
    assert!(
        !out.contains("\x1b[34m") && !out.contains("\x1b[0m"),
        "{out:?}"
    );

    // plain on the same terminal: unchanged, a line per step.
    let (ok, out) = on_pty(
        &d,
        &["build", "--progress=plain", ctx.path().to_str().unwrap()],
        &[],
    );
    assert!(ok, "{out}");
    assert!(
        !out.contains("[+] Building") && !out.contains("\x1b["),
        "{out:?}"
    );
    assert!(
        out.contains("#4 [app 2/2] COPY hello /hello CACHED"),
        "{out:?}"
    );
}

#[test]
fn ctrl_c_on_the_terminal_cancels_the_build_and_the_display_says_so() {
    let d = Daemon::start();
    let ctx = busybox_context("RUN echo started; sleep 60\n", &[]);
    let line = format!(
        "{} --socket {} build --progress=tty {}",
        bin_dir().join("memobuild-ctl").display(),
        d.socket.display(),
        ctx.path().display()
    );
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("typescript");
    let mut script = Command::new("script")
        .args(["-qef", "-c", &line])
        .arg(&log)
        .env_remove("BUILDKIT_PROGRESS")
        .env("TERM", "xterm")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("run script");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("=> => # started")
    {
        assert!(
            Instant::now() < deadline,
            "RUN never started: {:?}",
            std::fs::read_to_string(&log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Ctrl-C typed on the terminal: the pty turns it into SIGINT.
    let mut stdin = script.stdin.take().unwrap();
    stdin.write_all(b"\x03").unwrap();
    stdin.flush().unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = script.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "still running after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(stdin);
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(20), "{out:?}");
    let last = &out[out.rfind("[+] Building").unwrap()..];
    assert!(last.contains(") CANCELED"), "{last:?}");
    assert!(
        last.contains("s CANCELED"),
        "the RUN step is marked: {last:?}"
    );
    assert!(out.contains("error: build cancelled"), "{out:?}");
    // The daemon removes the step's container.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let containers = common::runc_leftovers(&d.data);
        if containers.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {containers:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

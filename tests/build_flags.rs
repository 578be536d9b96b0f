//! `docker build` flags the daemon applies: `--label`, `--network`,
//! `--add-host`, `--shm-size`, `--ulimit`, `--no-cache-filter`, `-f -`,
//! context `-`, and Docker's tag check. Real daemon, containerd and runc
//! (Debian `containerd`, `runc`, `busybox-static`); what RUN saw is read back
//! from the image's filesystem (`-o type=local`).

mod common;
use common::{bin_dir, busybox_context, BuildOutcome, Daemon};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Builds with `extra`, writes the final filesystem to a fresh directory and
/// returns it with the build's outcome.
fn build_to_dir(d: &Daemon, ctx: &Path, extra: &[&str]) -> (tempfile::TempDir, BuildOutcome) {
    let out = tempfile::tempdir().unwrap();
    let spec = format!("type=local,dest={}", out.path().display());
    let mut args = extra.to_vec();
    args.extend(["-o", spec.as_str()]);
    let outcome = d.build_ok(ctx, &args);
    (out, outcome)
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// The image config of an OCI archive.
fn image_config(archive: &Path) -> serde_json::Value {
    use std::io::Read;
    let mut files = std::collections::HashMap::new();
    let mut tar = tar::Archive::new(std::fs::File::open(archive).unwrap());
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        files.insert(name, bytes);
    }
    let json = |path: &str| -> serde_json::Value {
        serde_json::from_slice(files.get(path).unwrap_or_else(|| panic!("{path}"))).unwrap()
    };
    let index = json("index.json");
    let manifest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .replace(':', "/");
    let manifest = json(&format!("blobs/{manifest}"));
    let config = manifest["config"]["digest"]
        .as_str()
        .unwrap()
        .replace(':', "/");
    json(&format!("blobs/{config}"))
}

/// `memobuild-ctl build --progress json ARGS` with `stdin` on its stdin.
fn build_stdin(d: &Daemon, args: &[&str], stdin: &[u8]) -> BuildOutcome {
    let mut child = Command::new(bin_dir().join("memobuild-ctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["build", "--progress", "json"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A refusal before reading stdin closes it: not a test failure.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    BuildOutcome {
        success: out.status.success(),
        events: stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

const PROBE: &str = "FROM base AS app
LABEL from.dockerfile=1 over=dockerfile
RUN mkdir /out && cut -d: -f1 /proc/net/dev | tail -n +3 | tr -d ' ' | sort > /out/nets \
 && cat /etc/hosts > /out/hosts \
 && df -k /dev/shm | tail -n 1 > /out/shm \
 && grep 'open files' /proc/self/limits > /out/nofile
RUN --network=host cut -d: -f1 /proc/net/dev | tail -n +3 | tr -d ' ' | sort > /out/nets-host
";

/// Options that change what a RUN step sees (each is a key input).
const RUN_OPTIONS: &[&str] = &[
    "--allow",
    "network.host",
    "--network=none",
    "--add-host",
    "db.local:10.1.2.3",
    "--add-host",
    "v6.local=fd00::7",
    "--add-host",
    "gw:host-gateway",
    "--shm-size",
    "16m",
    "--ulimit",
    "nofile=123:456",
];

#[test]
fn run_options_reach_every_run_and_are_part_of_its_key() {
    // RUN --network=host needs the entitlement from the daemon and the build.
    let d = Daemon::start_with(&["--insecure-entitlements", "network.host"]);
    let ctx = busybox_context(PROBE, &[]);
    // The daemon's default: the step's own network (lo and eth0).
    let (plain, _) = build_to_dir(&d, ctx.path(), &["--allow", "network.host"]);
    let own_nets = read(plain.path(), "out/nets");
    assert_eq!(own_nets, "eth0\nlo\n");
    let host_nets = read(plain.path(), "out/nets-host");
    assert!(
        host_nets.lines().count() > 1 && host_nets != own_nets,
        "host interfaces: {host_nets}"
    );
    assert!(read(plain.path(), "out/shm").contains(" 65536 "));

    let (dir, outcome) = build_to_dir(&d, ctx.path(), RUN_OPTIONS);
    // Every option is a key input: the RUN steps ran again.
    let executed = outcome.executed();
    assert!(
        executed.iter().filter(|s| s.starts_with("RUN")).count() >= 2,
        "{executed:?}"
    );
    // --network none: only the loopback interface; RUN --network=host still wins.
    assert_eq!(read(dir.path(), "out/nets"), "lo\n");
    // The host's interfaces, less the veth ends of other tests' RUN steps,
    // which come and go while this test runs.
    let steady = |nets: &str| -> Vec<String> {
        nets.lines()
            .filter(|n| !n.starts_with("veth"))
            .map(String::from)
            .collect()
    };
    assert_eq!(
        steady(&read(dir.path(), "out/nets-host")),
        steady(&host_nets)
    );
    let hosts = read(dir.path(), "out/hosts");
    assert!(hosts.contains("10.1.2.3\tdb.local\n"), "{hosts}");
    assert!(hosts.contains("fd00::7\tv6.local\n"), "{hosts}");
    // host-gateway: the host end of RUN's bridge, as Docker writes its gateway.
    assert!(hosts.contains("10.213.0.1\tgw\n"), "{hosts}");
    assert!(hosts.starts_with("127.0.0.1\tlocalhost"), "{hosts}");
    let shm = read(dir.path(), "out/shm");
    assert!(
        shm.contains(" 16384 ") && shm.trim_end().ends_with("/dev/shm"),
        "{shm}"
    );
    let nofile: Vec<String> = read(dir.path(), "out/nofile")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(nofile[3..5], ["123", "456"], "{nofile:?}");

    // Same options again: all cached; without them: the first result, cached.
    let again = d.build_ok(ctx.path(), RUN_OPTIONS);
    assert!(again.executed().is_empty(), "{:?}", again.executed());
    let (back, outcome) = build_to_dir(&d, ctx.path(), &["--allow", "network.host"]);
    assert!(outcome.executed().is_empty(), "{:?}", outcome.executed());
    assert_eq!(read(back.path(), "out/nets"), own_nets);

    // What cannot apply says so before anything runs.
    for (args, want) in [
        (&["--add-host", "db:not-an-ip"][..], "not an IP address"),
        (&["--ulimit", "files=10"], "unknown limit"),
        (
            &["--ulimit", "nofile=10:5"],
            "soft limit is above the hard limit",
        ),
        (&["--network", "bridge"], "invalid value 'bridge'"),
    ] {
        let out = d.build(ctx.path(), args);
        assert!(!out.success, "{args:?}");
        assert!(out.text().contains(want), "{args:?}: {}", out.text());
    }
}

#[test]
fn labels_no_cache_filter_and_tags() {
    let d = Daemon::start();
    let ctx = busybox_context(
        "FROM base AS app\nLABEL over=dockerfile keep=yes\nRUN echo built > /built\n",
        &[],
    );
    let archive = ctx.path().join("img.tar");
    let spec = format!("type=oci,dest={}", archive.display());
    d.build_ok(ctx.path(), &["-o", &spec]);
    let before = image_config(&archive);
    assert_eq!(before["config"]["Labels"]["over"], "dockerfile");
    let out = d.build_ok(
        ctx.path(),
        &[
            "--label",
            "over=flag",
            "--label",
            "org.example.new=1",
            "--label",
            "empty",
            "-o",
            &spec,
        ],
    );
    // Labels change only the config: every step came from the cache.
    assert!(out.executed().is_empty(), "{:?}", out.executed());
    let labels = &image_config(&archive)["config"]["Labels"];
    assert_eq!(labels["over"], "flag");
    assert_eq!(labels["keep"], "yes");
    assert_eq!(labels["org.example.new"], "1");
    assert_eq!(labels["empty"], "");
    // Without --label again: the Dockerfile's labels only (not the last result).
    d.build_ok(ctx.path(), &["-o", &spec]);
    assert_eq!(image_config(&archive), before);

    // --no-cache-filter app: that stage's steps run, the base stage's are cached.
    let out = d.build_ok(ctx.path(), &["--no-cache-filter", "app"]);
    assert_eq!(
        out.executed(),
        ["LABEL over=dockerfile keep=yes", "RUN echo built > /built"]
    );
    assert_eq!(out.cached().len(), 2, "{:?}", out.cached());
    let out = d.build(ctx.path(), &["--no-cache-filter", "nosuch"]);
    assert!(!out.success);
    assert!(
        out.text()
            .contains("--no-cache-filter nosuch: the build has no stage"),
        "{}",
        out.text()
    );

    // Tags are checked as Docker checks them, before the build.
    for bad in ["Upper:1", "a b", "name@sha256:abc", ":x"] {
        let out = d.build(ctx.path(), &["-t", bad]);
        assert!(!out.success, "{bad}");
        assert!(
            out.text().contains("invalid reference format"),
            "{bad}: {}",
            out.text()
        );
        assert!(!out.events.iter().any(|e| e["event"] == "planned"), "{bad}");
    }
    d.build_ok(ctx.path(), &["-t", "localhost:5000/team/app:v1.2"]);
}

#[test]
fn dockerfile_and_context_from_stdin() {
    let d = Daemon::start();
    let ctx = busybox_context("", &[("hello.txt", "hello\n")]);
    d.build_ok(ctx.path(), &["-t", "bb:1"]);
    let out_dir = tempfile::tempdir().unwrap();
    let local = format!("type=local,dest={}", out_dir.path().display());

    // -f -: the Dockerfile from stdin, the files from the context directory.
    let df = "FROM bb:1\nCOPY hello.txt /from-stdin-df\n";
    let out = build_stdin(
        &d,
        &["-f", "-", "-o", &local, ctx.path().to_str().unwrap()],
        df.as_bytes(),
    );
    assert!(out.success, "{}", out.text());
    assert_eq!(read(out_dir.path(), "from-stdin-df"), "hello\n");
    let planned = out.events.iter().find(|e| e["event"] == "planned").unwrap();
    assert_eq!(planned["steps"][0]["location"], "-:2");
    // A second -f - with another text is not answered with the first's image.
    let df2 = "FROM bb:1\nCOPY hello.txt /second\n";
    let out = build_stdin(
        &d,
        &["-f", "-", "-o", &local, ctx.path().to_str().unwrap()],
        df2.as_bytes(),
    );
    assert!(out.success, "{}", out.text());
    assert!(out_dir.path().join("second").exists());

    // Context -: a tar archive with its Dockerfile.
    std::fs::write(
        ctx.path().join("Dockerfile.tar"),
        "FROM bb:1\nCOPY hello.txt /from-tar\n",
    )
    .unwrap();
    let tar = Command::new("tar")
        .args(["-c", "-C"])
        .arg(ctx.path())
        .args(["hello.txt", "Dockerfile.tar"])
        .output()
        .unwrap()
        .stdout;
    let out_dir = tempfile::tempdir().unwrap();
    let local = format!("type=local,dest={}", out_dir.path().display());
    let out = build_stdin(&d, &["-f", "Dockerfile.tar", "-o", &local, "-"], &tar);
    assert!(out.success, "{}", out.text());
    assert_eq!(read(out_dir.path(), "from-tar"), "hello\n");
    // gzip too.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let out = build_stdin(&d, &["-f", "Dockerfile.tar", "-"], &gz.finish().unwrap());
    assert!(out.success, "{}", out.text());

    // Context -: a Dockerfile alone (no files to copy).
    let out_dir = tempfile::tempdir().unwrap();
    let local = format!("type=local,dest={}", out_dir.path().display());
    let out = build_stdin(
        &d,
        &["-o", &local, "-"],
        b"FROM bb:1\nRUN echo alone > /alone\n",
    );
    assert!(out.success, "{}", out.text());
    assert_eq!(read(out_dir.path(), "alone"), "alone\n");
    // The unpacked contexts are not left watched by the daemon.
    let projects = d.ctl_json(&["projects"]);
    let text = projects.to_string();
    assert!(!text.contains("memobuild-stdin-"), "{text}");

    // Both from stdin cannot be.
    let out = build_stdin(&d, &["-f", "-", "-"], b"FROM bb:1\n");
    assert!(!out.success);
    assert!(
        out.text().contains("cannot both come from stdin"),
        "{}",
        out.text()
    );
}

//! A real Docker Engine for tests: Debian's `docker.io` (`/usr/sbin/dockerd`)
//! on a private socket, data root, exec root and pid file, with no bridge and
//! no iptables rules, stopped on drop. Driven with Debian's `/usr/bin/docker`
//! (another `docker` may come first on PATH).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const DOCKER: &str = "/usr/bin/docker";
pub const DOCKERD: &str = "/usr/sbin/dockerd";

pub struct Dockerd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: Option<Child>,
}

impl Dockerd {
    pub fn start() -> Dockerd {
        assert!(
            Path::new(DOCKERD).is_file() && Path::new(DOCKER).is_file(),
            "{DOCKERD} and {DOCKER} are missing: apt-get install docker.io (./x deps)"
        );
        // Short paths: containerd's socket goes under the exec root (108-byte limit).
        let dir = tempfile::Builder::new()
            .prefix("mbd")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let socket = dir.path().join("docker.sock");
        let config = dir.path().join("daemon.json");
        std::fs::write(&config, "{}").expect("daemon.json");
        let log = std::fs::File::create(dir.path().join("dockerd.log")).expect("log");
        let child = Command::new(DOCKERD)
            .arg("--data-root")
            .arg(dir.path().join("root"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("docker.pid"))
            .arg("--config-file")
            .arg(&config)
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--userland-proxy=false",
                "--log-level=warn",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let mut d = Dockerd {
            dir,
            socket,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if d.docker(&["version"]).status.success() {
                break;
            }
            let exited = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "dockerd did not start ({exited:?}): {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    /// `unix:///.../docker.sock`, for DOCKER_HOST.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// Runs `/usr/bin/docker ARGS` against this engine.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new(DOCKER)
            .env("DOCKER_HOST", self.host())
            .env("DOCKER_CONFIG", self.dir.path().join("client"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run /usr/bin/docker")
    }

    /// Runs `docker ARGS`; panics with its output and the engine's log on failure.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed:\n{}{}\n--- dockerd log ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Dockerd {
    /// SIGTERM, so dockerd stops the containerd it started, then waits.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

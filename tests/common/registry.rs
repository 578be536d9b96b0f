//! A real OCI registry for tests: Debian's `docker-registry` (Distribution 2.8)
//! on 127.0.0.1 with a temporary storage directory, optionally behind htpasswd
//! basic auth (`htpasswd` from apache2-utils), killed on drop. Images get into
//! it with skopeo, as a user would push them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Registry {
    pub dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`
    pub host: String,
    /// Some((user, password)) when the registry wants htpasswd basic auth.
    pub auth: Option<(String, String)>,
    child: Option<Child>,
}

impl Registry {
    pub fn start() -> Registry {
        Self::start_inner(None)
    }

    /// A registry that answers only to `user`/`password` (htpasswd, bcrypt).
    pub fn start_with_auth(user: &str, password: &str) -> Registry {
        Self::start_inner(Some((user.to_string(), password.to_string())))
    }

    fn start_inner(auth: Option<(String, String)>) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let mut registry = Registry {
            dir,
            host,
            auth,
            child: None,
        };
        registry.write_config();
        registry.spawn();
        registry
    }

    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    fn write_config(&self) {
        let storage = self.storage();
        std::fs::create_dir_all(&storage).expect("storage dir");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {}\n",
            storage.display(),
            self.host
        );
        if let Some((user, password)) = &self.auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("htpasswd (Debian package apache2-utils)");
            assert!(out.status.success(), "htpasswd failed");
            let file = self.dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout).expect("write htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: memobuild-test\n    path: {}\n",
                file.display()
            ));
        }
        std::fs::write(self.dir.path().join("config.yml"), config).expect("registry config");
    }

    /// Starts the registry (again, on the same port and storage) and waits until it answers.
    pub fn spawn(&mut self) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("registry.log"))
            .expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("docker-registry (Debian package docker-registry)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&self.host).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the registry at once (a crash, as far as clients can tell).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `HOST:PORT/repo:tag`
    pub fn image(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.host)
    }

    /// `skopeo copy` with the registry's credentials; `extra` before the two refs.
    pub fn skopeo_copy(&self, extra: &[&str], from: &str, to: &str) {
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ]);
        if let Some((user, password)) = &self.auth {
            let creds = format!("{user}:{password}");
            if to.starts_with("docker://") {
                cmd.arg("--dest-creds").arg(&creds);
            }
            if from.starts_with("docker://") {
                cmd.arg("--src-creds").arg(&creds);
            }
        }
        let out = cmd
            .args(extra)
            .arg(from)
            .arg(to)
            .output()
            .expect("skopeo (Debian package skopeo)");
        assert!(
            out.status.success(),
            "skopeo copy {from} {to} failed: {}\n--- registry log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// Puts an OCI layout directory's image into the registry as `repo:tag`.
    pub fn push_layout(&self, layout: &Path, repo_tag: &str, extra: &[&str]) {
        self.skopeo_copy(
            extra,
            &format!("oci:{}", layout.display()),
            &format!("docker://{}", self.image(repo_tag)),
        );
    }

    /// The manifest digest the registry serves for `repo:tag` (`skopeo inspect`).
    pub fn digest(&self, repo_tag: &str) -> String {
        let mut cmd = Command::new("skopeo");
        cmd.args(["inspect", "--tls-verify=false", "--raw"]);
        if let Some((user, password)) = &self.auth {
            cmd.arg("--creds").arg(format!("{user}:{password}"));
        }
        let out = cmd
            .arg(format!("docker://{}", self.image(repo_tag)))
            .output()
            .expect("skopeo inspect");
        assert!(
            out.status.success(),
            "skopeo inspect failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        use sha2::Digest;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&out.stdout)))
    }

    /// Where the registry keeps blob `digest` on disk.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// A docker `config.json` holding basic-auth credentials for `host`, in a new
/// directory to point `DOCKER_CONFIG` at.
pub fn docker_config(host: &str, user: &str, password: &str) -> tempfile::TempDir {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut f = std::fs::File::create(dir.path().join("config.json")).expect("config.json");
    write!(f, "{{\"auths\":{{\"{host}\":{{\"auth\":\"{auth}\"}}}}}}").expect("write config.json");
    dir
}

/// A daemon that may reach `reg` over plain HTTP.
#[allow(dead_code)]
pub fn daemon_for(reg: &Registry) -> super::Daemon {
    super::Daemon::start_with(&["--insecure-registry", &reg.host])
}

/// A registry holding `base:1` (busybox, `/marker` = "base"), built by `d`
/// in `dir`.
#[allow(dead_code)]
pub fn registry_with_base(d: &super::Daemon, dir: &Path) -> Registry {
    let reg = Registry::start();
    let layout = busybox_layout(d, dir, "base");
    reg.push_layout(&layout, "base:1", &[]);
    reg
}

/// An OCI layout of a small busybox image (`/bin/busybox`, `/marker` holding
/// `marker`), built by `d` from scratch: a base image to put into registries.
pub fn busybox_layout(d: &super::Daemon, dir: &Path, marker: &str) -> PathBuf {
    let ctx = dir.join(format!("base-{marker}"));
    std::fs::create_dir_all(&ctx).expect("mkdir");
    std::fs::copy("/bin/busybox", ctx.join("busybox"))
        .expect("/bin/busybox is missing: apt-get install busybox-static");
    super::write_files(
        &ctx,
        &[
            (
                "Dockerfile",
                "FROM scratch\nCOPY busybox /bin/busybox\nCOPY marker /marker\n",
            ),
            ("marker", marker),
        ],
    );
    let layout = dir.join(format!("layout-{marker}"));
    d.build_ok(
        &ctx,
        &["-o", &format!("type=oci-layout,dest={}", layout.display())],
    );
    layout
}

/// `memobuild-ctl build --progress json` with extra environment variables
/// (`DOCKER_CONFIG`, `SOURCE_DATE_EPOCH`), as a user's shell would have them.
pub fn build_env(
    d: &super::Daemon,
    context: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> super::BuildOutcome {
    let mut cmd = Command::new(super::bin_dir().join("memobuild-ctl"));
    cmd.arg("--socket")
        .arg(&d.socket)
        .args(["build", "--progress", "json"])
        .args(extra)
        .arg(context)
        .env_remove("SOURCE_DATE_EPOCH")
        .envs(env.iter().copied());
    super::BuildOutcome::from_output(cmd.output().expect("run memobuild-ctl"))
}

impl super::BuildOutcome {
    /// The progress lines (`log` events) of the build.
    pub fn logs(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| e["event"] == "log")
            .filter_map(|e| e["line"].as_str().map(String::from))
            .collect()
    }
}

// --- Token auth: a registry behind a Distribution token server -------------

/// The realm of a token-auth registry: `tests/token_server.py` on 127.0.0.1,
/// signing RS256 JWTs with a key and self-signed certificate made by the
/// `openssl` CLI in a temporary directory; killed on drop.
pub struct TokenServer {
    pub dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT/token`
    pub realm: String,
    /// What `grant_type=refresh_token` must present (an identitytoken).
    pub refresh_token: String,
    child: Child,
}

pub const TOKEN_SERVICE: &str = "memobuild-test-registry";
pub const TOKEN_ISSUER: &str = "memobuild-test-token-server";

impl TokenServer {
    /// Grants what it is asked only to `user`/`password` (or `refresh_token`).
    pub fn start(user: &str, password: &str, refresh_token: &str) -> TokenServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes"])
            .args(["-subj", "/CN=token", "-days", "2"])
            .arg("-keyout")
            .arg(dir.path().join("key.pem"))
            .arg("-out")
            .arg(dir.path().join("cert.pem"))
            .output()
            .expect("openssl (Debian package openssl)");
        assert!(
            out.status.success(),
            "openssl req: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log");
        let child = Command::new("python3")
            .arg(super::repo_root().join("tests/token_server.py"))
            .arg(port.to_string())
            .arg(dir.path())
            .args([user, password, refresh_token, TOKEN_ISSUER])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("python3");
        let server = TokenServer {
            realm: format!("http://127.0.0.1:{port}/token"),
            refresh_token: refresh_token.to_string(),
            dir,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "token server did not start: {}",
                std::fs::read_to_string(server.dir.path().join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// One line per token request: method, grant type, whether it was granted.
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("requests.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// A registry with `auth: token` whose realm is a new [`TokenServer`]
    /// granting pull and push to `user`/`password` only. skopeo (and so
    /// `push_layout`, `digest`) uses those credentials.
    pub fn start_with_token_auth(user: &str, password: &str) -> (Registry, TokenServer) {
        let server = TokenServer::start(user, password, "refresh-token-of-the-test");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut registry = Registry {
            dir,
            host: format!("127.0.0.1:{}", free_port()),
            auth: None,
            child: None,
        };
        registry.write_config();
        let config = registry.dir.path().join("config.yml");
        let mut text = std::fs::read_to_string(&config).expect("registry config");
        text.push_str(&format!(
            "auth:\n  token:\n    realm: {}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
            server.realm,
            server.cert().display()
        ));
        std::fs::write(&config, text).expect("registry config");
        registry.auth = Some((user.to_string(), password.to_string()));
        registry.spawn();
        (registry, server)
    }
}

/// A docker `config.json` whose entry for `host` is what `docker login`
/// writes for an OAuth login: the `identitytoken` (a refresh token) and an
/// `auth` of `<token>:` with no password.
pub fn docker_config_identity_token(host: &str, token: &str) -> tempfile::TempDir {
    use base64::Engine;
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = base64::engine::general_purpose::STANDARD.encode("<token>:");
    let config = serde_json::json!({"auths": {host: {"auth": auth, "identitytoken": token}}});
    std::fs::write(dir.path().join("config.json"), config.to_string()).expect("config.json");
    dir
}

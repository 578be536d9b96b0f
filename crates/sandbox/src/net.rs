//! The default network of RUN steps: a network namespace of its own per step,
//! joined to a host bridge with NAT for outbound traffic, as Docker's default
//! bridge and BuildKit's CNI provider give it.
//!
//! ```text
//! step netns: lo, eth0 10.213.x.y/16 ──veth──▶ memobuild0 10.213.0.1 (host) ──MASQUERADE──▶ out
//! ```
//!
//! The namespace is made by a thread of the daemon that unshares its network
//! namespace and then only waits (runc joins it through
//! `/proc/PID/task/TID/ns/net`: no bind mount, nothing to leak after a kill
//! -9); its `eth0`, address and route come from the Debian package
//! `containernetworking-plugins` (CNI `bridge` with `host-local` addresses,
//! the package containerd depends on). Two host rules are added once (and
//! kept, as Docker keeps its own): MASQUERADE for the subnet leaving by
//! another interface, and FORWARD accepts for the bridge.
//!
//! Each step gets a fresh namespace that no step used before; a few are made
//! ahead of time ([`POOL_READY`]) so a step does not wait for the plugin, and
//! a used one is torn down in the background. Host loopback services are out of
//! reach (the step's 127.0.0.1 is its own), packet sockets see only the step's
//! interfaces, and a port a step listens on is in its namespace only.

use super::SandboxError;
use parking_lot::Mutex;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

/// The CNI network name (host-local keeps addresses in
/// `/var/lib/cni/networks/memobuild`, shared by every memobuildd on the host).
pub(crate) const NETWORK: &str = "memobuild";
/// The host bridge.
pub const BRIDGE: &str = "memobuild0";
/// Addresses of RUN steps; the bridge (the steps' gateway) is the first.
pub const SUBNET: &str = "10.213.0.0/16";
/// The bridge's address: the host, as RUN steps reach it (`--add-host
/// HOST:host-gateway` names it).
pub const GATEWAY: &str = "10.213.0.1";
/// Where Debian (and then the upstream default) installs the CNI plugins.
const PLUGIN_DIRS: &[&str] = &["/usr/lib/cni", "/opt/cni/bin"];
const IPAM_DIR: &str = "/var/lib/cni/networks";
/// Namespaces kept ready for the next steps.
pub(crate) const POOL_READY: usize = 2;
/// The Debian package with the plugins.
pub const CNI_PACKAGE: &str = "containernetworking-plugins";

fn net_error(message: impl Into<String>) -> SandboxError {
    SandboxError::Network(message.into())
}

/// The directory holding the `bridge` and `host-local` plugins.
fn plugin_dir() -> Result<PathBuf, SandboxError> {
    PLUGIN_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("bridge").is_file() && d.join("host-local").is_file())
        .ok_or_else(|| {
            net_error(format!(
                "the CNI plugins `bridge` and `host-local` are not in {}; install the Debian package {CNI_PACKAGE} (apt-get install {CNI_PACKAGE})",
                PLUGIN_DIRS.join(" or ")
            ))
        })
}

fn bridge_config() -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "type": "bridge",
        "bridge": BRIDGE,
        "isGateway": true,
        // NAT is one host rule for the whole subnet (see `host_rules`), so a
        // namespace leaves no per-step rule behind.
        "ipMasq": false,
        "hairpinMode": false,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": SUBNET}]],
            "routes": [{"dst": "0.0.0.0/0"}],
        },
    })
    .to_string()
}

/// Runs the bridge plugin: `ADD` or `DEL` of `container_id` in `netns`
/// (empty for a namespace that is gone: only its address is released).
fn cni(plugins: &Path, command: &str, container_id: &str, netns: &str) -> Result<(), SandboxError> {
    let mut child = Command::new(plugins.join("bridge"))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", plugins)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| net_error(format!("running the CNI bridge plugin: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(bridge_config().as_bytes())
            .map_err(|e| net_error(format!("writing to the CNI bridge plugin: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| net_error(format!("running the CNI bridge plugin: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    // A failing plugin prints {"code": N, "msg": "...", "details": "..."}.
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let msg = reply["msg"].as_str().unwrap_or_default();
    let details = reply["details"].as_str().unwrap_or_default();
    Err(net_error(format!(
        "CNI bridge {command} failed ({}): {msg} {details} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

fn iptables(args: &[&str]) -> Result<bool, SandboxError> {
    let out = Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| {
            net_error(format!(
                "running iptables: {e}; install the Debian package iptables"
            ))
        })?;
    Ok(out.status.success())
}

/// Adds a rule unless it is there (`-C` first), as Docker does for its bridge.
fn ensure_rule(table: &str, chain: &str, insert: bool, rule: &[&str]) -> Result<(), SandboxError> {
    let with = |op: &'static str| {
        let mut a = vec!["-t", table, op, chain];
        a.extend_from_slice(rule);
        a
    };
    if iptables(&with("-C"))? {
        return Ok(());
    }
    if iptables(&with(if insert { "-I" } else { "-A" }))? {
        Ok(())
    } else {
        Err(net_error(format!(
            "iptables -t {table} {} {chain} {} failed",
            if insert { "-I" } else { "-A" },
            rule.join(" ")
        )))
    }
}

/// NAT and forwarding for the steps' subnet, and IPv4 forwarding on.
fn host_rules() -> Result<(), SandboxError> {
    let comment = ["-m", "comment", "--comment", "memobuild RUN steps"];
    let mut masq = vec!["-s", SUBNET, "!", "-o", BRIDGE];
    masq.extend_from_slice(&comment);
    masq.extend_from_slice(&["-j", "MASQUERADE"]);
    ensure_rule("nat", "POSTROUTING", false, &masq)?;
    let mut out = vec!["-i", BRIDGE];
    out.extend_from_slice(&comment);
    out.extend_from_slice(&["-j", "ACCEPT"]);
    ensure_rule("filter", "FORWARD", true, &out)?;
    let mut back = vec![
        "-o",
        BRIDGE,
        "-m",
        "conntrack",
        "--ctstate",
        "RELATED,ESTABLISHED",
    ];
    back.extend_from_slice(&comment);
    back.extend_from_slice(&["-j", "ACCEPT"]);
    ensure_rule("filter", "FORWARD", true, &back)?;
    let forward = Path::new("/proc/sys/net/ipv4/ip_forward");
    if std::fs::read_to_string(forward)
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
    {
        std::fs::write(forward, "1")
            .map_err(|e| net_error(format!("enabling IPv4 forwarding: {e}")))?;
    }
    Ok(())
}

/// `SIOCSIFFLAGS`: brings `lo` up in the calling thread's network namespace.
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: a plain socket, an ifreq we own, and ioctls on it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut result = Ok(());
        if libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            result = Err(std::io::Error::last_os_error());
        } else {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &req) < 0 {
                result = Err(std::io::Error::last_os_error());
            }
        }
        libc::close(fd);
        result
    }
}

/// A network namespace held by a parked thread of this process.
struct Holder {
    path: String,
    /// Dropping it lets the thread end, and with it the namespace.
    _stop: std::sync::mpsc::Sender<()>,
}

fn start_holder() -> Result<(Holder, String), SandboxError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<i32, String>>();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("mb-netns".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            // SAFETY: unshare affects only this thread, which does nothing
            // else but wait.
            let made = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            let ready = if made != 0 {
                Err(format!(
                    "unshare(CLONE_NEWNET): {}",
                    std::io::Error::last_os_error()
                ))
            } else {
                loopback_up()
                    .map_err(|e| format!("bringing up lo: {e}"))
                    .map(|()| {
                        // SAFETY: gettid has no preconditions.
                        unsafe { libc::gettid() }
                    })
            };
            let failed = ready.is_err();
            let _ = ready_tx.send(ready);
            if !failed {
                // Returns when the Holder is dropped.
                let _ = stop_rx.recv();
            }
        })
        .map_err(|e| net_error(format!("starting a network namespace thread: {e}")))?;
    let tid = ready_rx
        .recv()
        .map_err(|_| net_error("the network namespace thread ended"))?
        .map_err(net_error)?;
    let pid = std::process::id();
    let path = format!("/proc/{pid}/task/{tid}/ns/net");
    // Named so that a later daemon can tell a leftover (see `sweep`).
    let id = format!("mb-{pid}-{tid}-{}", start_time(pid).unwrap_or(0));
    Ok((
        Holder {
            path,
            _stop: stop_tx,
        },
        id,
    ))
}

/// A process's start time (clock ticks after boot), which tells a pid apart
/// from a later process that reused it.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split(' ').nth(19)?.parse().ok()
}

/// One step's network namespace, ready: `eth0` with an address and a default
/// route. Dropping it tears it down in the background.
pub(crate) struct NetNs {
    id: String,
    holder: Option<Holder>,
    plugins: PathBuf,
}

impl NetNs {
    /// What the runtime spec names as the step's network namespace.
    pub(crate) fn path(&self) -> &str {
        self.holder.as_ref().map(|h| h.path.as_str()).unwrap_or("")
    }

    fn create(plugins: &Path) -> Result<NetNs, SandboxError> {
        let (holder, id) = start_holder()?;
        let ns = NetNs {
            id,
            holder: Some(holder),
            plugins: plugins.to_path_buf(),
        };
        cni(plugins, "ADD", &ns.id, ns.path())?;
        Ok(ns)
    }

    fn teardown(id: &str, holder: Option<Holder>, plugins: &Path) {
        let path = holder.as_ref().map(|h| h.path.clone()).unwrap_or_default();
        if let Err(e) = cni(plugins, "DEL", id, &path) {
            tracing::warn!(netns = id, error = %e, "tearing down a RUN network namespace");
        }
        drop(holder);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if self.holder.is_none() {
            return;
        }
        let (id, holder, plugins) = (
            std::mem::take(&mut self.id),
            self.holder.take(),
            self.plugins.clone(),
        );
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(move || NetNs::teardown(&id, holder, &plugins));
            }
            Err(_) => NetNs::teardown(&id, holder, &plugins),
        }
    }
}

/// Fresh namespaces for RUN steps, a few made ahead.
#[derive(Default)]
pub(crate) struct NetPool {
    state: Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    /// The plugin directory, once the host is set up.
    plugins: Option<PathBuf>,
    ready: Vec<NetNs>,
    /// Namespaces being made for `ready`.
    filling: usize,
}

impl NetPool {
    /// Sets the host up on first use (plugins found, rules added, leftovers
    /// of dead daemons released).
    fn plugins(&self) -> Result<PathBuf, SandboxError> {
        if let Some(p) = &self.state.lock().plugins {
            return Ok(p.clone());
        }
        let plugins = plugin_dir()?;
        host_rules()?;
        sweep(&plugins);
        self.state.lock().plugins = Some(plugins.clone());
        Ok(plugins)
    }

    /// A namespace no step has used. Blocking: call it on the blocking pool.
    pub(crate) fn take(self: &Arc<Self>) -> Result<NetNs, SandboxError> {
        let plugins = self.plugins()?;
        let ready = self.state.lock().ready.pop();
        let ns = match ready {
            Some(ns) => ns,
            None => NetNs::create(&plugins)?,
        };
        self.refill(&plugins);
        Ok(ns)
    }

    /// Makes namespaces in the background until [`POOL_READY`] are ready.
    fn refill(self: &Arc<Self>, plugins: &Path) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let missing = {
            let mut state = self.state.lock();
            let missing = POOL_READY.saturating_sub(state.ready.len() + state.filling);
            state.filling += missing;
            missing
        };
        for _ in 0..missing {
            let (pool, plugins) = (self.clone(), plugins.to_path_buf());
            handle.spawn_blocking(move || {
                let made = NetNs::create(&plugins);
                let mut state = pool.state.lock();
                state.filling -= 1;
                match made {
                    Ok(ns) => state.ready.push(ns),
                    Err(e) => tracing::warn!(error = %e, "making a RUN network namespace ahead"),
                }
            });
        }
    }

    /// Tears down the namespaces made ahead (at shutdown). Blocking.
    pub(crate) fn drain(&self) {
        let ready = std::mem::take(&mut self.state.lock().ready);
        for mut ns in ready {
            let holder = ns.holder.take();
            NetNs::teardown(&ns.id, holder, &ns.plugins);
        }
    }
}

/// Releases the addresses that namespaces of dead daemons still hold (a kill
/// -9 ends the namespace with its thread, but not its host-local lease).
fn sweep(plugins: &Path) {
    let Ok(entries) = std::fs::read_dir(Path::new(IPAM_DIR).join(NETWORK)) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let Some(id) = text.lines().next().map(str::trim) else {
            continue;
        };
        let mut parts = id.strip_prefix("mb-").unwrap_or("").split('-');
        let (Some(pid), Some(tid), Some(started)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        let alive = Path::new(&format!("/proc/{pid}/task/{tid}")).exists()
            && start_time(pid).map(|t| t.to_string()).as_deref() == Some(started);
        if !alive {
            match cni(plugins, "DEL", id, "") {
                Ok(()) => tracing::info!(netns = id, "released a dead daemon's RUN address"),
                Err(e) => {
                    tracing::warn!(netns = id, error = %e, "releasing a leftover RUN address")
                }
            }
        }
    }
}

/// /etc/resolv.conf for a step with its own network: the host's, without
/// loopback name servers (unreachable from the step), or Google's public
/// servers when none is left, as Docker does.
pub(crate) fn resolv_conf(host: &str) -> String {
    let mut out = String::new();
    let mut servers = 0;
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            let addr = words.next().unwrap_or_default();
            let loopback = addr
                .parse::<std::net::IpAddr>()
                .map(|a| a.is_loopback())
                .unwrap_or(false);
            if loopback {
                continue;
            }
            servers += 1;
        }
        out.push_str(line);
        out.push('\n');
    }
    if servers == 0 {
        out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_name_servers_are_dropped() {
        let host = "# generated\nnameserver 127.0.0.53\nsearch example.org\noptions edns0\n";
        assert_eq!(
            resolv_conf(host),
            "# generated\nsearch example.org\noptions edns0\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n"
        );
        let host = "nameserver 10.0.0.2\nnameserver ::1\n";
        assert_eq!(resolv_conf(host), "nameserver 10.0.0.2\n");
    }

    #[test]
    fn the_gateway_is_the_first_address_of_the_subnet() {
        let (network, _) = SUBNET.split_once('/').unwrap();
        let network: std::net::Ipv4Addr = network.parse().unwrap();
        let first = std::net::Ipv4Addr::from(u32::from(network) + 1);
        assert_eq!(GATEWAY.parse::<std::net::Ipv4Addr>().unwrap(), first);
    }

    #[test]
    fn the_bridge_config_has_no_per_step_nat() {
        let c: serde_json::Value = serde_json::from_str(&bridge_config()).unwrap();
        assert_eq!(c["ipMasq"], false);
        assert_eq!(c["bridge"], BRIDGE);
        assert_eq!(c["ipam"]["ranges"][0][0]["subnet"], SUBNET);
    }

    #[test]
    fn start_time_reads_this_process() {
        assert!(start_time(std::process::id()).is_some());
    }
}

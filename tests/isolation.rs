//! RUN isolation as Docker's builds give it (docs/SECURITY.md), against the
//! real daemon, containerd and runc: each step has its own network namespace
//! with outbound access (host loopback services unreachable, host traffic
//! invisible to packet sockets, its listeners not on the host), Docker's
//! default capabilities and seccomp profile, and the host network or a
//! privileged step only with an entitlement granted by both the build
//! (`--allow`) and the daemon's administrator (`insecure-entitlements`).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn build_to_dir(d: &Daemon, ctx: &Path, extra: &[&str]) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    let spec = format!("type=local,dest={}", out.path().display());
    let mut args = extra.to_vec();
    args.extend(["-o", spec.as_str()]);
    d.build_ok(ctx, &args);
    out
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// A loopback listener counting the connections it accepts.
fn counting_listener(addr: Ipv4Addr) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((addr, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            seen.fetch_add(1, Ordering::SeqCst);
            let mut conn = conn;
            let _ = conn.write_all(b"hello from the host\n");
        }
    });
    (port, count)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The host's first non-loopback IPv4 address (the source of its default route).
fn host_address() -> Ipv4Addr {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .expect("ip (iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains(" memobuild0 "))
        .find_map(|l| {
            let addr = l.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
            addr.split('/').next()?.parse().ok()
        })
        .expect("the test machine needs a non-loopback IPv4 address")
}

const REACH: &str = r#"ARG PORT
ARG METRICS
RUN mkdir -p /out \
 && (echo | nc -w 3 127.0.0.1 $PORT > /out/loopback 2>&1; echo "exit $?" >> /out/loopback) \
 && ((printf 'GET /metrics HTTP/1.0\r\n\r\n'; sleep 2) | nc -w 3 127.0.0.1 $METRICS > /out/metrics 2>&1; echo "exit $?" >> /out/metrics)
"#;

#[test]
fn run_cannot_reach_host_loopback_services_but_host_network_can() {
    let metrics = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics}");
    let d = Daemon::start_with(&[
        "--metrics-listen",
        &metrics_addr,
        "--insecure-entitlements",
        "network.host",
    ]);
    let (port, accepted) = counting_listener(Ipv4Addr::LOCALHOST);
    let ctx = busybox_context(REACH, &[]);
    let (port_arg, metrics_arg) = (format!("PORT={port}"), format!("METRICS={metrics}"));
    let args = ["--build-arg", &port_arg, "--build-arg", &metrics_arg];
    let out = build_to_dir(&d, ctx.path(), &args);
    let loopback = read(out.path(), "out/loopback");
    assert!(
        !loopback.contains("hello from the host") && !loopback.ends_with("exit 0\n"),
        "a RUN reached the host's 127.0.0.1:{port}: {loopback}"
    );
    let scraped = read(out.path(), "out/metrics");
    assert!(
        !scraped.contains("memobuild_") && !scraped.ends_with("exit 0\n"),
        "a RUN scraped the daemon's metrics listener: {scraped}"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 0);

    // The same step on the host's network (entitled) reaches both: the
    // listeners were there to be reached.
    let host_df = REACH.replace("RUN mkdir", "RUN --network=host mkdir");
    let ctx = busybox_context(&host_df, &[]);
    let mut with_allow = args.to_vec();
    with_allow.extend(["--allow", "network.host"]);
    let out = build_to_dir(&d, ctx.path(), &with_allow);
    let loopback = read(out.path(), "out/loopback");
    assert!(loopback.contains("hello from the host"), "{loopback}");
    let scraped = read(out.path(), "out/metrics");
    assert!(scraped.contains("memobuild_"), "{scraped}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// Whether `/proc/net/tcp{,6}` text shows a listener on `port`.
fn listens(tcp: &str, port: u16) -> bool {
    let suffix = format!(":{port:04X}");
    tcp.lines().any(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        fields.len() > 3 && fields[1].ends_with(&suffix) && fields[3] == "0A"
    })
}

fn host_listens(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .any(|f| listens(&std::fs::read_to_string(f).unwrap_or_default(), port))
}

/// Builds `df` in the background and watches the host's sockets while it
/// runs; returns whether a listener on `port` appeared, and the build.
fn watch_for_listener(
    d: &Daemon,
    df: &str,
    port: u16,
    extra: &[&str],
) -> (bool, tempfile::TempDir) {
    let ctx = busybox_context(df, &[]);
    let out = tempfile::tempdir().unwrap();
    let spec = format!("type=local,dest={}", out.path().display());
    let port_arg = format!("PORT={port}");
    let mut args = vec!["--build-arg", &port_arg, "-o", &spec];
    args.extend_from_slice(extra);
    let mut child = d.spawn_build(ctx.path(), &args);
    let mut seen = false;
    let started = Instant::now();
    loop {
        seen |= host_listens(port);
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            assert!(status.success(), "build failed: {stderr}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "build hangs");
        std::thread::sleep(Duration::from_millis(20));
    }
    (seen, out)
}

const LISTEN: &str = r#"ARG PORT
RUN mkdir -p /out && (nc -l -p $PORT > /dev/null &) && sleep 1 \
 && cat /proc/net/tcp /proc/net/tcp6 > /out/tcp 2>/dev/null; sleep 2
"#;

#[test]
fn a_listening_run_does_not_listen_on_the_host() {
    let d = Daemon::start_with(&["--insecure-entitlements", "network.host"]);
    let port = free_port();
    let (seen, out) = watch_for_listener(&d, LISTEN, port, &[]);
    assert!(
        listens(&read(out.path(), "out/tcp"), port),
        "the step listened in its own namespace"
    );
    assert!(
        !seen,
        "a RUN's listener on port {port} appeared on the host"
    );
    // On the host's network (entitled) the same listener is the host's.
    let port = free_port();
    let host_df = LISTEN.replace("RUN mkdir", "RUN --network=host mkdir");
    let (seen, _) = watch_for_listener(&d, &host_df, port, &["--allow", "network.host"]);
    assert!(seen, "with --network=host the listener is on the host");
}

/// A static sniffer: an AF_PACKET socket on every interface for `argv[1]`
/// seconds; prints whether the socket opened and whether `argv[2]` was in
/// any packet it saw.
const SNIFFER: &str = r#"
#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
  int s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
  if (s < 0) { perror("socket"); puts("socket failed"); return 0; }
  puts("socket ok");
  struct timeval tv = {0, 200000};
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  time_t end = time(NULL) + atoi(argv[1]);
  static char buf[65536];
  long packets = 0; int seen = 0;
  while (time(NULL) < end) {
    ssize_t n = recv(s, buf, sizeof buf, 0);
    if (n <= 0) continue;
    packets++;
    if (memmem(buf, n, argv[2], strlen(argv[2]))) seen = 1;
  }
  printf("packets %ld\n%s\n", packets, seen ? "marker seen" : "marker not seen");
  return 0;
}
"#;

fn compile_sniffer(dir: &Path) {
    common::compile_static(dir, "sniff", SNIFFER);
}

/// Sends `marker` over host loopback TCP until `stop`.
fn loopback_chatter(marker: &'static str, stop: Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            let mut sink = [0u8; 4096];
            while conn.read(&mut sink).map(|n| n > 0).unwrap_or(false) {}
        }
    });
    std::thread::spawn(move || {
        let mut conn = TcpStream::connect(addr).unwrap();
        while !stop.load(Ordering::SeqCst) {
            let _ = conn.write_all(marker.as_bytes());
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}

#[test]
fn packet_sockets_in_run_see_only_the_steps_own_traffic() {
    const MARKER: &str = "memobuild-sniff-marker-7d1f";
    let d = Daemon::start_with(&["--insecure-entitlements", "network.host"]);
    let stop = Arc::new(AtomicBool::new(false));
    loopback_chatter(MARKER, stop.clone());
    let sniff = |network: &str, extra: &[&str]| {
        let ctx = busybox_context(
            &format!("COPY sniff /sniff\nRUN {network} mkdir -p /out && /sniff 3 {MARKER} > /out/sniff\n"),
            &[],
        );
        compile_sniffer(ctx.path());
        let out = build_to_dir(&d, ctx.path(), extra);
        read(out.path(), "out/sniff")
    };
    // Docker's default capabilities include CAP_NET_RAW: the socket opens,
    // but in the step's own namespace, so the host's loopback is not there.
    let own = sniff("", &[]);
    assert!(own.contains("socket ok"), "{own}");
    assert!(
        own.contains("marker not seen"),
        "a RUN sniffed host loopback traffic: {own}"
    );
    // The sniffer works: on the host's network it sees the traffic.
    let host = sniff("--network=host", &["--allow", "network.host"]);
    stop.store(true, Ordering::SeqCst);
    assert!(host.contains("marker seen"), "{host}");
}

const UNSHARE: &str = r#"RUN mkdir -p /out \
 && (unshare -U true > /out/user 2>&1; echo "exit $?" >> /out/user) \
 && (unshare -m true > /out/mount 2>&1; echo "exit $?" >> /out/mount) \
 && mkdir -p /m && (mount -t tmpfs none /m > /out/mnt 2>&1; echo "exit $?" >> /out/mnt) \
 && grep -E '^(Seccomp|CapBnd):' /proc/self/status > /out/status
"#;

#[test]
fn unshare_and_mount_fail_under_dockers_seccomp_profile_and_caps() {
    let d = Daemon::start_with(&["--insecure-entitlements", "security.insecure"]);
    let ctx = busybox_context(UNSHARE, &[]);
    let out = build_to_dir(&d, ctx.path(), &[]);
    for file in ["user", "mount", "mnt"] {
        let text = read(out.path(), &format!("out/{file}"));
        assert!(!text.ends_with("exit 0\n"), "{file}: {text}");
        // busybox mount words EPERM as "permission denied (are you root?)".
        assert!(
            text.contains("Operation not permitted") || text.contains("permission denied"),
            "{file}: {text}"
        );
    }
    let status = read(out.path(), "out/status");
    // Seccomp: 2 (filter mode); Docker's 14 capabilities: 0x00000000a80425fb.
    assert!(status.contains("Seccomp:\t2"), "{status}");
    assert!(status.contains("CapBnd:\t00000000a80425fb"), "{status}");

    // --security=insecure needs the entitlement from the build...
    let insecure = busybox_context(
        &UNSHARE.replace("RUN mkdir", "RUN --security=insecure mkdir"),
        &[],
    );
    let failed = d.build(insecure.path(), &[]);
    assert!(!failed.success);
    let text = failed.text();
    assert!(text.contains("security.insecure is not allowed"), "{text}");
    assert!(text.contains("Dockerfile:"), "{text}");
    // ...and with it the step is privileged: no filter, every capability.
    let out = build_to_dir(&d, insecure.path(), &["--allow", "security.insecure"]);
    assert!(read(out.path(), "out/mount").ends_with("exit 0\n"));
    assert!(read(out.path(), "out/mnt").ends_with("exit 0\n"));
    let status = read(out.path(), "out/status");
    assert!(status.contains("Seccomp:\t0"), "{status}");
    assert!(!status.contains("CapBnd:\t00000000a80425fb"), "{status}");
}

#[test]
fn host_network_needs_the_entitlement_from_build_and_daemon() {
    let ctx = busybox_context("RUN --network=host true\n", &[]);
    let plain = Daemon::start();
    // Not asked for: BuildKit's words, the RUN's place, and what to do.
    let out = plain.build(ctx.path(), &[]);
    assert!(!out.success);
    let err = out.error();
    let text = out.text();
    assert_eq!(err["kind"], "permission_denied", "{err}");
    assert!(text.contains("network.host is not allowed"), "{text}");
    assert!(text.contains("Dockerfile:4:"), "{text}");
    assert!(text.contains("--allow network.host"), "{text}");
    // Asked for, but the administrator did not enable it.
    let out = plain.build(ctx.path(), &["--allow", "network.host"]);
    assert!(!out.success);
    let text = out.text();
    assert!(
        text.contains("does not grant the network.host entitlement"),
        "{text}"
    );
    assert!(text.contains("insecure-entitlements"), "{text}");
    // `build --network host` is the same request.
    let default_ctx = busybox_context("RUN true\n", &[]);
    let out = plain.build(default_ctx.path(), &["--network", "host"]);
    assert!(!out.success);
    assert!(out
        .text()
        .contains("build --network host needs the network.host entitlement"));
    // Both: it runs.
    let entitled = Daemon::start_with(&["--insecure-entitlements", "network.host"]);
    entitled.build_ok(ctx.path(), &["--allow", "network.host"]);
    entitled.build_ok(
        default_ctx.path(),
        &["--allow", "network.host", "--network", "host"],
    );
    // A cached result is no way around it (BuildKit fails cached steps too):
    // the same build without --allow fails, with it is all cached.
    let out = entitled.build(ctx.path(), &[]);
    assert!(
        !out.success,
        "a cached --network=host step without the entitlement"
    );
    assert!(out.text().contains("network.host is not allowed"));
    let again = entitled.build_ok(ctx.path(), &["--allow", "network.host"]);
    assert!(again.executed().is_empty(), "{:?}", again.executed());
}

#[test]
fn run_has_outbound_access_through_its_own_interface() {
    let host = host_address();
    let listener = TcpListener::bind((host, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        (text, peer)
    });
    let d = Daemon::start();
    let df = format!(
        "RUN mkdir -p /out && ip route > /out/route && cut -d: -f1 /proc/net/dev | tail -n +3 | tr -d ' ' | sort > /out/nets \
 && echo from-the-step | nc -w 5 {host} {port}\n"
    );
    let ctx = busybox_context(&df, &[]);
    let out = build_to_dir(&d, ctx.path(), &[]);
    let (text, peer) = got.join().unwrap();
    assert_eq!(text, "from-the-step\n");
    // The step's address on the daemon's bridge, not the host's own.
    assert!(peer.ip().to_string().starts_with("10.213."), "{peer}");
    assert_eq!(read(out.path(), "out/nets"), "eth0\nlo\n");
    let route = read(out.path(), "out/route");
    assert!(route.contains("default via 10.213.0.1 dev eth0"), "{route}");
}

//! What every bench report starts with: the machine it ran on.

use std::fs;
use std::process::Command;

/// "machine: N cores (CPU), M GiB RAM, Linux KERNEL": the line every bench
/// report starts with.
pub fn machine_line() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("machine: {cores} cores ({cpu}), {mem} RAM, Linux {kernel}")
}

/// "memobuild's sandbox: containerd VERSION; runc VERSION".
pub fn sandbox_line() -> String {
    let first_line = |cmd: &str| {
        Command::new(cmd)
            .arg("--version")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string()
            })
            .unwrap_or_else(|_| "not installed".into())
    };
    format!(
        "memobuild's sandbox: {}; {}",
        first_line("containerd"),
        first_line("runc")
    )
}

/// /proc/loadavg, trimmed.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

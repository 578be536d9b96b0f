//! Command-line errors in words a Docker user understands: a `docker build`
//! flag memobuild-ctl does not take yet is named as such, instead of clap's
//! "to pass '--x' as a value, use '-- --x'".

use clap::error::{ContextKind, ContextValue, ErrorKind};
use std::process::ExitCode;

/// `docker build` / `docker buildx build` flags that memobuild-ctl does not
/// support yet (those it supports are in docs/CLI.md).
const DOCKER_BUILD_FLAGS: &[&str] = &[
    "--attest",
    "--builder",
    "--cgroup-parent",
    "--compress",
    "--cpu-period",
    "--cpu-quota",
    "--cpu-shares",
    "-c",
    "--cpuset-cpus",
    "--cpuset-mems",
    "--debug",
    "--disable-content-trust",
    "--force-rm",
    "--isolation",
    "--memory-swap",
    "--provenance",
    "--rm",
    "--sbom",
    "--security-opt",
    "--squash",
];

/// Why memobuild-ctl does not take `flag`, and what to do instead: (why, hint).
fn why_not(flag: &str) -> Option<(&'static str, &'static str)> {
    Some(match flag {
        "--security-opt" => (
            "RUN gets Docker's default seccomp profile and capabilities from the daemon (docs/SECURITY.md), not options per build",
            "for a RUN that needs every capability use `RUN --security=insecure` with --allow security.insecure",
        ),
        "--squash" => (
            "the image's layers are its steps' cached results, so they are never merged into one",
            "for a one-layer image copy the result into a last stage: `FROM scratch` + `COPY --from=build / /`",
        ),
        "--attest" | "--sbom" | "--provenance" => (
            "attestations (SBOM, provenance) need an image index with attestation manifests, and memobuild writes a single image manifest",
            "leave it out: the image has no attestations, as BuildKit's with --provenance=false",
        ),
        "--cgroup-parent" => (
            "RUN steps run in the daemon's cgroups, with a build's limits from -m, --cpus and --pids-limit",
            "set the limits with -m/--memory, --cpus and --pids-limit instead",
        ),
        "--isolation" => (
            "it picks a Windows container isolation; RUN on Linux is always isolated by containerd and runc",
            "leave it out",
        ),
        "--cpu-period" | "--cpu-quota" | "--cpu-shares" | "-c" | "--cpuset-cpus" | "--cpuset-mems" => (
            "RUN's CPU limit is one number of CPUs",
            "use --cpus N (e.g. --cpus 1.5)",
        ),
        "--memory-swap" => (
            "RUN's memory limit has no separate swap limit",
            "use -m/--memory SIZE",
        ),
        "--rm" | "--force-rm" => (
            "RUN containers are always removed when their step ends, failed or not",
            "leave it out",
        ),
        "--compress" => (
            "the daemon reads the context where it is; nothing is sent to compress",
            "leave it out",
        ),
        "--builder" => (
            "there are no builder instances: one daemon serves the socket",
            "pick the daemon with --socket PATH or MEMOBUILD_SOCKET",
        ),
        _ => return None,
    })
}

/// The message for an unknown flag, if `error` is about one: (what, hint).
fn unknown_flag(error: &clap::Error) -> Option<(String, String)> {
    if error.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    if !arg.starts_with('-') || arg == "-" {
        return None;
    }
    let flag = arg.split_once('=').map_or(arg.as_str(), |(f, _)| f);
    // `-cVALUE` and `-c` alike.
    let known = DOCKER_BUILD_FLAGS.iter().find(|f| {
        flag == **f || (f.len() == 2 && !flag.starts_with("--") && flag.starts_with(**f))
    });
    Some(match known {
        Some(f) => match why_not(f) {
            Some((why, hint)) => (
                format!("{f} is a `docker build` flag that memobuild-ctl does not support yet: {why}"),
                hint.to_string(),
            ),
            None => (
                format!("{f} is a `docker build` flag that memobuild-ctl does not support yet"),
                "leave it out; docs/CLI.md lists the flags memobuild-ctl takes (`memobuild-ctl build --help`)".to_string(),
            ),
        },
        None => (
            format!("unknown flag {flag}"),
            "see `memobuild-ctl --help` and `memobuild-ctl COMMAND --help` for the flags each command takes".to_string(),
        ),
    })
}

/// Prints a command-line error and returns the exit code (2, as clap's).
pub fn parse_error(error: clap::Error) -> ExitCode {
    match unknown_flag(&error) {
        Some((what, hint)) => {
            eprintln!("error: {what}\nhint: {hint}");
            ExitCode::from(2)
        }
        None => error.exit(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_docker_flags_say_why() {
        for flag in DOCKER_BUILD_FLAGS {
            if let Some((why, hint)) = why_not(flag) {
                assert!(!why.is_empty() && !hint.is_empty(), "{flag}");
            }
        }
        for flag in [
            "--security-opt",
            "--squash",
            "--attest",
            "--sbom",
            "--provenance",
            "--cgroup-parent",
            "--isolation",
        ] {
            assert!(why_not(flag).is_some(), "{flag} says why");
        }
    }
}

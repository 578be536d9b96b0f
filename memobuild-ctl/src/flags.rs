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
        Some(f) => (
            format!("{f} is a `docker build` flag that memobuild-ctl does not support yet"),
            "leave it out; docs/CLI.md lists the flags memobuild-ctl takes (`memobuild-ctl build --help`)".to_string(),
        ),
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

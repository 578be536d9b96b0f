//! `du`, `prune` and `verify`: the daemon's disk, as `docker system df` and
//! `docker builder prune` show and free it.

use crate::connect;
use crate::output::human_size;
use memobuild_proto::{PruneRequest, RpcError};
use std::path::Path;
use std::process::ExitCode;

fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

pub async fn du(socket: &Path, json: bool) -> Result<ExitCode, RpcError> {
    let client = connect::connect(socket, false).await?;
    let u = client
        .disk_usage(connect::ctx())
        .await
        .map_err(connect::rpc_failed)??;
    if json {
        print_json(&u);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<14} {:>8} {:>10}", "TYPE", "BLOBS", "SIZE");
    let rows = [
        ("images", u.image_blobs, u.image_bytes),
        ("build cache", u.cache_blobs, u.cache_bytes),
        ("unreferenced", u.unreferenced_blobs, u.unreferenced_bytes),
        ("total", u.blobs, u.total_bytes),
    ];
    for (kind, n, bytes) in rows {
        println!("{kind:<14} {n:>8} {:>10}", human_size(bytes));
    }
    println!(
        "{:<14} {:>8} {:>10}",
        "snapshots",
        "-",
        human_size(u.containerd_bytes)
    );
    println!(
        "{:<14} {:>8} {:>10}",
        "on disk",
        "-",
        human_size(u.disk_bytes)
    );
    println!("{} cache entries, {} images", u.cache_entries, u.images);
    if let Some(max) = u.max_storage {
        println!("max-storage: {}", human_size(max));
    }
    Ok(ExitCode::SUCCESS)
}

/// `--filter until=DURATION` (Go's durations as Docker takes them: `24h`,
/// `90m`, `1h30m`); the only filter memobuild's cache entries can answer.
pub fn until_filter(filters: &[String]) -> Result<Option<u64>, RpcError> {
    let mut until = None;
    for f in filters {
        match f.split_once('=') {
            Some(("until", v)) => {
                let d = humantime::parse_duration(v).map_err(|e| {
                    RpcError::with_hint(
                        format!("--filter {f}: {e}"),
                        "give a duration such as until=24h, until=90m or until=7days",
                    )
                })?;
                until = Some(d.as_secs());
            }
            _ => {
                return Err(RpcError::with_hint(
                    format!("--filter {f:?} is not supported"),
                    "memobuild's cache entries have no types, ids or descriptions to filter on; the filter it takes is until=DURATION",
                ))
            }
        }
    }
    Ok(until)
}

/// Docker's question before `builder prune`, when someone can answer it.
fn confirmed(request: &PruneRequest) -> Result<bool, RpcError> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Ok(true);
    }
    let what = if request.all {
        "all build cache"
    } else {
        "all dangling build cache"
    };
    eprint!("WARNING! This will remove {what}. Are you sure you want to continue? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| RpcError::new(format!("reading the answer: {e}")))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "Yes"))
}

pub async fn prune(
    socket: &Path,
    request: PruneRequest,
    force: bool,
    json: bool,
) -> Result<ExitCode, RpcError> {
    if !force && !json && !confirmed(&request)? {
        eprintln!("nothing removed");
        return Ok(ExitCode::SUCCESS);
    }
    let client = connect::connect(socket, false).await?;
    if request.unused_for_secs.is_some() {
        connect::require_features(&client, &[("prune-until", "--filter until")]).await?;
    }
    let r = client
        .prune(connect::ctx(), request)
        .await
        .map_err(connect::rpc_failed)??;
    if json {
        print_json(&r);
    } else {
        println!(
            "removed {} cache entries and {} blobs; freed {}, {} left",
            r.cache_entries_removed,
            r.blobs_removed,
            human_size(r.bytes_freed),
            human_size(r.bytes_after)
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn verify(socket: &Path, json: bool) -> Result<ExitCode, RpcError> {
    let client = connect::connect(socket, false).await?;
    let r = client
        .verify_store(connect::ctx())
        .await
        .map_err(connect::rpc_failed)??;
    if json {
        print_json(&r);
    } else {
        println!(
            "checked {} blobs, {} cache entries, {} images; {} temp files",
            r.blobs, r.cache_entries, r.images, r.temp_files
        );
        for p in &r.problems {
            println!("problem: {p}");
        }
    }
    Ok(if r.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

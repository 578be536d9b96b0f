//! `status`, `projects`, `forget`, `explain`: what the daemon knows about
//! projects, as text for people and as JSON for editors.

use crate::connect::{connect, ctx, rpc_failed};
use memobuild_proto::{BuildRequest, MemobuildClient, ProjectStatus, RpcError, StatusReport};
use std::path::Path;
use std::process::ExitCode;

/// A directory argument is sent as its canonical path; anything else (a project id) as is.
fn filter_arg(target: Option<String>) -> String {
    match target {
        None => String::new(),
        Some(t) => match std::fs::canonicalize(&t) {
            Ok(p) if p.is_dir() => p.display().to_string(),
            _ => t,
        },
    }
}

pub async fn status(
    socket: &Path,
    json: bool,
    target: Option<String>,
) -> Result<ExitCode, RpcError> {
    let client = connect(socket, false).await?;
    let report = client
        .status(ctx(), filter_arg(target))
        .await
        .map_err(rpc_failed)??;
    if json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        print_status(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(report: &StatusReport) {
    let d = &report.daemon;
    println!(
        "memobuildd {} (pid {}): {} tree(s), {} paths indexed, {} file events, {} build(s) running",
        d.version, d.pid, d.watch_count, d.index_entries, d.events, d.running_builds
    );
    for t in &d.trees {
        match &t.reason {
            Some(r) => println!("  {} [{}: {r}]", t.root, t.mode),
            None => println!("  {} [{}]", t.root, t.mode),
        }
    }
    for p in &report.projects {
        println!();
        println!("{}  {}  {}", p.id, p.state.to_uppercase(), p.context);
        if let Some(l) = &p.last_build {
            println!(
                "  last build: {} {:.2}s {}",
                l.result,
                l.millis as f64 / 1000.0,
                l.manifest_digest
                    .as_deref()
                    .or(l.error.as_deref())
                    .unwrap_or("")
            );
        }
        for s in &p.steps {
            println!(
                "  #{} [{}] {}  {}",
                s.index + 1,
                s.stage,
                s.instruction,
                s.state
            );
            for why in &s.why {
                println!("      {why}");
            }
        }
        if !p.changed_files.is_empty() {
            println!("  changed since last build: {}", p.changed_files.join(", "));
        }
    }
}

pub async fn projects(socket: &Path, json: bool) -> Result<ExitCode, RpcError> {
    let client = connect(socket, false).await?;
    let report = client
        .status(ctx(), String::new())
        .await
        .map_err(rpc_failed)??;
    if json {
        println!(
            "{}",
            serde_json::to_string(&report.projects).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<14} {:<12} {:<30} CONTEXT",
        "PROJECT", "STATE", "DOCKERFILE"
    );
    for p in &report.projects {
        let df = Path::new(&p.dockerfile)
            .strip_prefix(&p.context)
            .map(|r| r.display().to_string())
            .unwrap_or_else(|_| p.dockerfile.clone());
        println!("{:<14} {:<12} {:<30} {}", p.id, p.state, df, p.context);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn forget(socket: &Path, project: &str) -> Result<ExitCode, RpcError> {
    let client = connect(socket, false).await?;
    let ids = client
        .forget(ctx(), filter_arg(Some(project.to_string())))
        .await
        .map_err(rpc_failed)??;
    for id in ids {
        println!("forgot {id}");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn explain(
    socket: &Path,
    json: bool,
    project: Option<String>,
) -> Result<ExitCode, RpcError> {
    let client = connect(socket, false).await?;
    let filter = filter_arg(Some(project.unwrap_or_else(|| ".".into())));
    let explanation = client.explain(ctx(), filter).await.map_err(rpc_failed)??;
    if json {
        println!(
            "{}",
            serde_json::to_string(&explanation).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for s in &explanation.steps {
        println!(
            "#{} [{}] {}  {}",
            s.index + 1,
            s.stage,
            s.instruction,
            s.outcome.to_uppercase()
        );
        for why in &s.why {
            println!("    {why}");
        }
    }
    if let Some(error) = &explanation.failed {
        println!("the last build failed: {error}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The project a build request registered.
pub async fn project_of(
    client: &MemobuildClient,
    request: &BuildRequest,
) -> Result<ProjectStatus, RpcError> {
    let report = client
        .status(ctx(), request.context.clone())
        .await
        .map_err(rpc_failed)??;
    let dockerfile = match request.dockerfile.as_str() {
        "" => Path::new(&request.context)
            .join("Dockerfile")
            .display()
            .to_string(),
        d => d.to_string(),
    };
    report
        .projects
        .into_iter()
        .find(|p| {
            p.dockerfile == dockerfile
                && p.target == request.target
                && p.build_args == request.build_args
        })
        .ok_or_else(|| RpcError::new("the daemon does not know this project"))
}

pub async fn project_status(client: &MemobuildClient, id: &str) -> Result<ProjectStatus, RpcError> {
    let report = client
        .status(ctx(), id.to_string())
        .await
        .map_err(rpc_failed)??;
    report
        .projects
        .into_iter()
        .next()
        .ok_or_else(|| RpcError::new(format!("project {id} is gone")))
}

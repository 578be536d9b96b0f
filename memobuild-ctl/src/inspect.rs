//! `status`, `projects`, `forget`, `explain`: what the daemon knows about
//! projects, as text for people and as JSON for editors.

use crate::connect::{connect, ctx, rpc_failed};
use memobuild_proto::paths::normalize;
use memobuild_proto::{
    BuildRequest, ErrorKind, MemobuildClient, ProjectStatus, RpcError, StatusReport,
};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Which project(s) `status` and `explain` are about: a context directory or
/// project id, narrowed by Dockerfile and target among the projects of one
/// context (one per Dockerfile, target and build args).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Pick {
    /// A context directory or project id (`status`: all projects by default;
    /// `explain`: `.` by default)
    #[arg(value_name = "PROJECT")]
    pub project: Option<String>,
    /// Only the project(s) of this Dockerfile (a path as given to `build -f`)
    #[arg(long = "file", short = 'f', value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Only the project(s) building this stage (`--target` of the build;
    /// `--target ''` picks builds of the last stage)
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
}

impl Pick {
    fn narrows(&self) -> bool {
        self.file.is_some() || self.target.is_some()
    }

    /// Keeps the projects of the Dockerfile and target asked for.
    fn select(&self, projects: &mut Vec<ProjectStatus>) {
        let file = self.file.as_ref().map(|f| {
            let abs = std::path::absolute(f).unwrap_or_else(|_| f.clone());
            normalize(&abs)
        });
        projects.retain(|p| {
            file.iter()
                .all(|f| normalize(Path::new(&p.dockerfile)) == *f)
                && self.target.iter().all(|t| p.target == *t)
        });
    }
}

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

pub async fn status(socket: &Path, json: bool, pick: Pick) -> Result<ExitCode, RpcError> {
    let client = connect(socket, false).await?;
    let mut report = client
        .status(ctx(), filter_arg(pick.project.clone()))
        .await
        .map_err(rpc_failed)??;
    pick.select(&mut report.projects);
    if pick.narrows() && report.projects.is_empty() {
        return Err(no_pick(&pick));
    }
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
        println!(
            "{}  {}  {}",
            p.id,
            p.state.as_str().to_uppercase(),
            p.context
        );
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

/// `eager on|off`: the project(s) picked as for `explain`, `.` by default.
pub async fn eager(socket: &Path, on: bool, pick: Pick) -> Result<ExitCode, RpcError> {
    let client = connect(socket, false).await?;
    let filter = one_project(&client, &pick).await?;
    let ids = client
        .set_eager(ctx(), filter, on)
        .await
        .map_err(rpc_failed)??;
    for id in ids {
        println!("eager builds {} for {id}", if on { "on" } else { "off" });
    }
    Ok(ExitCode::SUCCESS)
}

/// The filter naming the project `pick` means: its id when `-f`/`--target`
/// narrow a context to one project.
async fn one_project(client: &MemobuildClient, pick: &Pick) -> Result<String, RpcError> {
    let mut filter = filter_arg(Some(pick.project.clone().unwrap_or_else(|| ".".into())));
    if pick.narrows() {
        let mut report = client
            .status(ctx(), filter.clone())
            .await
            .map_err(rpc_failed)??;
        pick.select(&mut report.projects);
        filter = match report.projects.as_slice() {
            [one] => one.id.clone(),
            [] => return Err(no_pick(pick)),
            many => {
                let ids: Vec<String> = many
                    .iter()
                    .map(|p| format!("{} (build args {:?})", p.id, p.build_args))
                    .collect();
                return Err(RpcError::of(
                    ErrorKind::InvalidInput,
                    format!("{} projects match: {}", many.len(), ids.join(", ")),
                )
                .hint("name one by its id"));
            }
        };
    }
    Ok(filter)
}

pub async fn explain(socket: &Path, json: bool, pick: Pick) -> Result<ExitCode, RpcError> {
    let client = connect(socket, false).await?;
    let filter = one_project(&client, &pick).await?;
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
            s.outcome.as_str().to_uppercase()
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

fn no_pick(pick: &Pick) -> RpcError {
    let mut what = Vec::new();
    if let Some(f) = &pick.file {
        what.push(format!("Dockerfile {}", f.display()));
    }
    if let Some(t) = &pick.target {
        what.push(format!("target {t:?}"));
    }
    RpcError::of(
        ErrorKind::NotFound,
        format!("no project has {}", what.join(" and ")),
    )
    .hint("projects are registered by building them; `memobuild-ctl projects` lists them")
}

/// `status --follow`: the matching projects once, then each project again
/// whenever its state changes (a long poll, `status_wait`, underneath). A
/// forgotten project prints `{"id": ID, "state": "forgotten"}`. Ends when the
/// daemon goes away (an error, exit status 69) or stdout is closed.
pub async fn follow(socket: &Path, json: bool, pick: Pick) -> Result<ExitCode, RpcError> {
    let client = connect(socket, false).await?;
    let filter = filter_arg(pick.project.clone());
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut generation = 0;
    let mut out = std::io::stdout().lock();
    loop {
        let mut report = client
            .status_wait(ctx(), filter.clone(), generation)
            .await
            .map_err(rpc_failed)??;
        generation = report.generation;
        pick.select(&mut report.projects);
        let mut lines = Vec::new();
        for p in &report.projects {
            if seen.insert(p.id.clone(), p.generation) != Some(p.generation) {
                lines.push(match json {
                    true => serde_json::to_string(p).unwrap_or_default(),
                    false => format!("{}  {}  {}", p.id, p.state, p.context),
                });
            }
        }
        let gone: Vec<String> = seen
            .keys()
            .filter(|id| !report.projects.iter().any(|p| &p.id == *id))
            .cloned()
            .collect();
        for id in gone {
            seen.remove(&id);
            lines.push(match json {
                true => serde_json::json!({ "id": id, "state": "forgotten" }).to_string(),
                false => format!("{id}  forgotten"),
            });
        }
        for line in lines {
            // The reader went away (an editor closed the pipe): done.
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
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
    let context = Path::new(&request.context);
    let dockerfile = match request.dockerfile.as_str() {
        // As the daemon: `dockerfile` when there is no `Dockerfile`.
        "" if !context.join("Dockerfile").exists() && context.join("dockerfile").exists() => {
            context.join("dockerfile")
        }
        "" => context.join("Dockerfile"),
        d => context.join(d),
    };
    let dockerfile = normalize(&dockerfile);
    report
        .projects
        .into_iter()
        .find(|p| {
            normalize(Path::new(&p.dockerfile)) == dockerfile
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

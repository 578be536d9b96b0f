//! memobuild-ctl: the command-line client of memobuildd.

mod connect;
mod output;
mod progress;

use clap::{Parser, Subcommand};
use memobuild_shared::{BuildEvent, BuildRequest, RpcError};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "memobuild-ctl",
    version,
    about = "Build container images incrementally with memobuildd"
)]
struct Cli {
    /// Daemon socket [default: $MEMOBUILD_SOCKET, else $XDG_RUNTIME_DIR/memobuild/memobuildd.sock]
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build an image from a Dockerfile and a context directory.
    Build(BuildArgs),
    /// List the images in the daemon's image store.
    Images {
        /// Print JSON (one array of objects) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct BuildArgs {
    /// Name of the Dockerfile [default: CONTEXT/Dockerfile]
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Name (and optionally tag) for the image: name:tag
    #[arg(short = 't', long = "tag", value_name = "NAME")]
    tags: Vec<String>,
    /// Stage to build
    #[arg(long, value_name = "STAGE")]
    target: Option<String>,
    /// Set a build-time variable: KEY=VALUE, or KEY to take it from the environment
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    build_args: Vec<String>,
    /// Do not use the step cache
    #[arg(long)]
    no_cache: bool,
    /// Progress output: auto, plain or json (one JSON event per line)
    #[arg(long, default_value = "auto", value_parser = ["auto", "plain", "json"])]
    progress: String,
    /// Output: type=oci,dest=FILE.tar or type=oci-layout,dest=DIR
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    output: Option<String>,
    /// Build context directory
    context: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(&RpcError::new(format!(
                "cannot start the async runtime: {e}"
            )))
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

fn fail(e: &RpcError) -> ExitCode {
    eprintln!("error: {}", e.message);
    if let Some(hint) = &e.hint {
        eprintln!("hint: {hint}");
    }
    ExitCode::FAILURE
}

async fn run(cli: Cli) -> Result<ExitCode, RpcError> {
    let socket = memobuild_shared::paths::socket_path(cli.socket.clone());
    match cli.command {
        Command::Build(args) => build(&socket, args).await,
        Command::Images { json } => {
            let client = connect::connect(&socket, false).await?;
            let images = client
                .images(connect::ctx())
                .await
                .map_err(connect::rpc_failed)??;
            output::print_images(&images, json);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn build(socket: &std::path::Path, args: BuildArgs) -> Result<ExitCode, RpcError> {
    let output = args
        .output
        .as_deref()
        .map(output::OutputSpec::parse)
        .transpose()?;
    let request = build_request(&args)?;
    let client = connect::connect(socket, true).await?;
    let id = client
        .start_build(connect::ctx(), request)
        .await
        .map_err(connect::rpc_failed)??;
    let mut printer = progress::Printer::new(&args.progress);
    let mut cursor = 0;
    let mut result = None;
    loop {
        let batch = client
            .events(connect::ctx(), id, cursor)
            .await
            .map_err(connect::rpc_failed)??;
        for event in &batch.events {
            printer.event(event);
            match event {
                BuildEvent::Finished {
                    manifest_digest,
                    tags,
                    ..
                } => result = Some(Ok((manifest_digest.clone(), tags.clone()))),
                BuildEvent::Failed { error } => result = Some(Err(error.clone())),
                _ => {}
            }
        }
        cursor = batch.next_cursor;
        if batch.finished {
            break;
        }
    }
    match result {
        Some(Ok((digest, tags))) => {
            if let Some(spec) = output {
                output::export(&client, &digest, &tags, &spec).await?;
                printer.note(&format!("wrote {} to {}", spec.kind, spec.dest.display()));
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Err(e)) => {
            if args.progress != "json" {
                return Err(e);
            }
            Ok(ExitCode::FAILURE)
        }
        None => Err(RpcError::new("the daemon ended the build without a result")),
    }
}

fn build_request(args: &BuildArgs) -> Result<BuildRequest, RpcError> {
    let context = std::fs::canonicalize(&args.context).map_err(|e| {
        RpcError::with_hint(
            format!("build context {}: {e}", args.context.display()),
            "pass an existing directory, e.g. `memobuild-ctl build .`",
        )
    })?;
    let dockerfile = match &args.file {
        None => String::new(),
        Some(f) => std::path::absolute(f)
            .map_err(|e| RpcError::new(format!("Dockerfile {}: {e}", f.display())))?
            .display()
            .to_string(),
    };
    let mut build_args = BTreeMap::new();
    for a in &args.build_args {
        match a.split_once('=') {
            Some((k, v)) => {
                build_args.insert(k.to_string(), v.to_string());
            }
            None => {
                // As docker: `--build-arg K` takes K from the environment, or is skipped.
                if let Ok(v) = std::env::var(a) {
                    build_args.insert(a.clone(), v);
                }
            }
        }
    }
    let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => Some(v.parse::<i64>().map_err(|_| {
            RpcError::with_hint(
                format!("SOURCE_DATE_EPOCH={v:?} is not a number"),
                "set it to Unix seconds, e.g. $(git log -1 --format=%ct)",
            )
        })?),
        _ => None,
    };
    Ok(BuildRequest {
        context: context.display().to_string(),
        dockerfile,
        tags: args.tags.clone(),
        target: args.target.clone().unwrap_or_default(),
        build_args,
        no_cache: args.no_cache,
        source_date_epoch,
    })
}

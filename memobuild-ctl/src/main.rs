//! memobuild-ctl: the command-line client of memobuildd.

mod blobfd;
mod connect;
mod containerd;
mod credhelper;
mod daemonctl;
mod disk;
mod docker;
mod dropin;
mod flags;
mod git;
mod images;
mod import;
mod inspect;
mod localcache;
mod lsp;
mod observe;
mod ocilayout;
mod output;
mod progress;
mod registry;
mod rootfs;
mod ssh;
mod stdin;
mod steplabel;
mod tty;

use clap::{CommandFactory, Parser, Subcommand};
use memobuild_proto::{BuildEvent, BuildRequest, ErrorKind, RpcError};
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
        /// DIGEST: the registry's digest of the name (after a push or pull), in full
        #[arg(long)]
        digests: bool,
    },
    /// What is dirty, building or failed, per project and step, and the daemon's health.
    Status {
        /// Print the stable JSON schema (docs/CLI.md) instead of text.
        #[arg(long)]
        json: bool,
        /// Keep running: print a line (with --json, a project's JSON object)
        /// whenever a project's state changes.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        pick: inspect::Pick,
    },
    /// List the projects the daemon keeps warm.
    Projects {
        #[arg(long)]
        json: bool,
    },
    /// Stop watching a project and drop its records.
    Forget {
        /// A context directory or project id.
        project: String,
    },
    /// Why each step of the last build was cached or rebuilt.
    Explain {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        pick: inspect::Pick,
    },
    /// Build, then rebuild on every change (Ctrl-C to stop).
    Watch(BuildArgs),
    /// Serve the Language Server Protocol over stdio for Dockerfiles (docs/EDITORS.md).
    Lsp,
    /// Turn eager builds on or off: the daemon rebuilds the project in the
    /// background after every save, so the next build finds its image ready.
    Eager {
        #[arg(value_parser = ["on", "off"])]
        mode: String,
        #[command(flatten)]
        pick: inspect::Pick,
    },
    /// Manage the daemon's image store.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Print one build's log: its steps, their status and time, RUN output, the result.
    Logs {
        /// Print the stable JSON schema (docs/CLI.md) instead of text.
        #[arg(long)]
        json: bool,
        /// A build id (`build` prints it), `last`, or a project id or context
        /// directory (its latest build)
        build: String,
    },
    /// Show the steps that made an image, newest first (as `docker history`).
    History {
        #[arg(long)]
        json: bool,
        /// An image name or ID
        name: String,
    },
    /// Print the daemon's metrics in the Prometheus text format.
    Metrics,
    /// Disk used by the daemon's blob store: images, build cache, unreferenced.
    Du {
        #[arg(long)]
        json: bool,
    },
    /// Remove build cache (as `docker builder prune`): without --all, what no
    /// image and no project's last build uses.
    Prune {
        /// Also remove what projects' last builds use (named images stay).
        #[arg(long, short = 'a')]
        all: bool,
        /// Remove least-recently-used cache only until the store is this small, e.g. 10GB
        #[arg(long, value_name = "SIZE", value_parser = memobuild_proto::parse_size)]
        keep_storage: Option<u64>,
        /// Only cache unused for this long: until=DURATION, e.g. until=24h
        #[arg(long, value_name = "FILTER")]
        filter: Vec<String>,
        /// Do not ask for confirmation (it is asked only when stdin is a terminal)
        #[arg(long, short = 'f')]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Check every cache entry, image and blob of the store (exit 1 on problems).
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Whether the daemon runs, and stopping it.
    #[command(subcommand)]
    Daemon(DaemonCommand),
    /// Print a shell completion script: bash, zsh, fish, elvish or powershell
    /// (e.g. `memobuild-ctl completion bash > ~/.local/share/bash-completion/completions/memobuild-ctl`).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (memobuild-ctl.1 and one per command) into DIR.
    Man {
        /// Directory to write the pages to (created if missing)
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum DaemonCommand {
    /// Whether a daemon answers at the socket: pid, version, data dir
    /// (exit 3 when none runs).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Stop the daemon gracefully (SIGTERM; running builds get its shutdown-grace).
    Stop {
        /// How long to wait for it to exit
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Load an OCI archive (`-o type=oci`) or a `docker save` archive into the image store.
    Import {
        /// Name for the image [default: the name recorded in the archive]
        #[arg(long)]
        name: Option<String>,
        /// The archive; `-` reads it from stdin
        file: PathBuf,
    },
    /// Print images' configs as JSON, in `docker image inspect`'s shape.
    Inspect {
        /// Image names or IDs
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Show the steps that made an image, newest first (as `docker history`).
    History {
        #[arg(long)]
        json: bool,
        name: String,
    },
    /// Remove an image name.
    Rm { name: String },
    /// List images (same as `memobuild-ctl images`).
    Ls {
        #[arg(long)]
        json: bool,
        /// DIGEST: the registry's digest of the name (after a push or pull), in full
        #[arg(long)]
        digests: bool,
    },
}

#[derive(clap::Args)]
struct BuildArgs {
    /// Name of the Dockerfile [default: CONTEXT/Dockerfile]; `-` reads it from stdin
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
    /// Progress output: tty (a live display on stderr), plain (a line per step on
    /// stderr), auto (tty when stderr is a terminal, else plain), json (one JSON
    /// event per line on stdout), rawjson (the same on stderr), quiet (none)
    #[arg(long, env = "BUILDKIT_PROGRESS", default_value = "auto", value_parser = ["auto", "tty", "plain", "json", "rawjson", "quiet"])]
    progress: String,
    /// Print only the image ID (the config digest) on stdout; no progress
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Write the image ID (the config digest) to FILE
    #[arg(long, value_name = "FILE")]
    iidfile: Option<PathBuf>,
    /// Write the build result as JSON (buildx's keys) to FILE
    #[arg(long, value_name = "FILE")]
    metadata_file: Option<PathBuf>,
    /// Output (repeatable): type=docker|oci|tar,dest=FILE|-, type=oci-layout|local,dest=DIR,
    /// DIR, -, type=docker[,name=NAME] (into the Docker Engine), type=registry,name=REF
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    output: Vec<String>,
    /// Load the image into the local Docker Engine (same as -o type=docker)
    #[arg(long)]
    load: bool,
    /// Secret for RUN --mount=type=secret: id=ID,src=FILE (or id=ID,env=VAR)
    #[arg(long = "secret", value_name = "SPEC")]
    secrets: Vec<String>,
    /// ssh agent for RUN --mount=type=ssh (and `default` for ADD git@HOST:PATH / ssh://):
    /// default (the agent at $SSH_AUTH_SOCK), ID (the same under another id),
    /// ID=SOCKET, or ID=KEYFILE[,KEYFILE...]
    #[arg(long = "ssh", value_name = "SPEC")]
    ssh: Vec<String>,
    /// Memory limit of each RUN step, e.g. 512m or 2g
    #[arg(short = 'm', long, value_name = "SIZE", value_parser = memobuild_proto::parse_size)]
    memory: Option<u64>,
    /// CPUs each RUN step may use, e.g. 1.5
    #[arg(long, value_name = "N")]
    cpus: Option<f64>,
    /// Most processes in each RUN step
    #[arg(long, value_name = "N")]
    pids_limit: Option<i64>,
    // ---- Registries (docs/REGISTRIES.md) ----
    /// Push the image to every -t name after the build
    #[arg(long)]
    push: bool,
    /// Platform taken from multi-platform base images: os/arch[/variant] [default: the host's]
    #[arg(long, value_name = "PLATFORM")]
    platform: Option<String>,
    /// When to pull FROM images: missing (default), always, never; --pull alone = always
    #[arg(long, value_name = "POLICY", num_args = 0..=1, require_equals = true, default_missing_value = "always", value_parser = ["missing", "always", "never"])]
    pull: Option<String>,
    /// Read steps from a cache: type=registry,ref=REF, IMAGE (its inline cache), type=local,src=DIR
    #[arg(long = "cache-from", value_name = "SPEC")]
    cache_from: Vec<String>,
    /// Write steps to a cache: type=registry,ref=REF[,mode=min|max], type=inline, type=local,dest=DIR
    #[arg(long = "cache-to", value_name = "SPEC")]
    cache_to: Vec<String>,
    /// Set a label in the image config: KEY=VALUE (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Network of RUN steps without --network: default, none or host
    #[arg(long, value_name = "MODE", value_parser = ["default", "none", "host"])]
    network: Option<String>,
    /// Add a line to RUN's /etc/hosts: HOST:IP (repeatable)
    #[arg(long = "add-host", value_name = "HOST:IP")]
    add_hosts: Vec<String>,
    /// Size of RUN's /dev/shm, e.g. 128m [default: 64m]
    #[arg(long, value_name = "SIZE", value_parser = memobuild_proto::parse_size)]
    shm_size: Option<u64>,
    /// Process limit of RUN steps: NAME=SOFT[:HARD], e.g. nofile=1024:2048 (repeatable)
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]")]
    ulimits: Vec<String>,
    /// Run every step of this stage, cached or not (repeatable)
    #[arg(long = "no-cache-filter", value_name = "STAGE", value_delimiter = ',')]
    no_cache_filter: Vec<String>,
    /// Add an annotation to the image manifest: [manifest:]KEY=VALUE (repeatable)
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    annotations: Vec<String>,
    /// Entitlement: network.host (RUN --network=host, --network host) or
    /// security.insecure (RUN --security=insecure); the daemon's administrator
    /// must enable it too (insecure-entitlements)
    #[arg(long = "allow", value_name = "ENTITLEMENT")]
    allow: Vec<String>,
    /// What FROM, COPY --from and RUN --mount=from= get for NAME:
    /// NAME=docker-image://REF or NAME=DIR (repeatable)
    #[arg(long = "build-context", value_name = "NAME=docker-image://REF|DIR")]
    build_contexts: Vec<String>,
    /// What to do: build (default), or check (BuildKit's lint rules on the
    /// Dockerfile, nothing built; exit status 1 when there are warnings)
    #[arg(long, value_name = "METHOD", default_value = "build", value_parser = ["build", "check"])]
    call: String,
    /// Same as --call=check
    #[arg(long)]
    check: bool,
    /// Build context directory; `-` reads a tar archive (or a Dockerfile alone) from stdin
    context: PathBuf,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return flags::parse_error(e),
    };
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
    let json = cli.command.wants_json();
    let result = runtime.block_on(run(cli));
    // Do not wait for blocking reads still parked (`lsp` reads stdin on one).
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) if json => fail_json(&e),
        Err(e) => fail(&e),
    }
}

impl Command {
    /// The command was asked for JSON: its failures are JSON too.
    fn wants_json(&self) -> bool {
        match self {
            Command::Images { json, .. }
            | Command::Status { json, .. }
            | Command::Projects { json }
            | Command::Explain { json, .. }
            | Command::Logs { json, .. }
            | Command::Du { json }
            | Command::Prune { json, .. }
            | Command::Verify { json }
            | Command::Daemon(DaemonCommand::Status { json }) => *json,
            Command::Image(ImageCommand::Ls { json, .. })
            | Command::Image(ImageCommand::History { json, .. })
            | Command::History { json, .. } => *json,
            Command::Image(ImageCommand::Inspect { .. }) => true,
            _ => false,
        }
    }
}

/// A failure of a `--json` command: `{"error": {"kind", "message", "hint"}}`
/// on stdout (docs/CLI.md), the message on stderr, the kind's exit status.
fn fail_json(e: &RpcError) -> ExitCode {
    println!("{}", serde_json::json!({ "error": e }));
    fail(e)
}

fn fail(e: &RpcError) -> ExitCode {
    eprintln!("error: {}", e.message);
    if let Some(hint) = &e.hint {
        eprintln!("hint: {hint}");
    }
    exit_code(e.kind)
}

/// A check of the command's own input that failed: `invalid_input`, unless
/// its kind already says more.
fn as_input_error(e: RpcError) -> RpcError {
    match e.kind {
        ErrorKind::Internal => e.kind(ErrorKind::InvalidInput),
        _ => e,
    }
}

/// The exit status for a failure of `kind` (docs/CLI.md, "Exit status"):
/// scripts can tell "not allowed" and "try again later" from a failed build.
fn exit_code(kind: ErrorKind) -> ExitCode {
    match kind {
        ErrorKind::PermissionDenied => ExitCode::from(77),
        ErrorKind::Unavailable => ExitCode::from(69),
        ErrorKind::Cancelled => ExitCode::from(130),
        _ => ExitCode::FAILURE,
    }
}

async fn run(cli: Cli) -> Result<ExitCode, RpcError> {
    let socket = memobuild_proto::paths::socket_path(cli.socket.clone());
    match cli.command {
        Command::Build(args) => build(&socket, args).await,
        Command::Images { json, digests } => {
            let client = connect::connect(&socket, false).await?;
            let images = client
                .images(connect::ctx())
                .await
                .map_err(connect::rpc_failed)??;
            if json {
                output::print_images_json(&images);
            } else {
                images::print_table(&client, &images, digests).await?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json, follow, pick } => match follow {
            true => inspect::follow(&socket, json, pick).await,
            false => inspect::status(&socket, json, pick).await,
        },
        Command::Projects { json } => inspect::projects(&socket, json).await,
        Command::Forget { project } => inspect::forget(&socket, &project).await,
        Command::Explain { json, pick } => inspect::explain(&socket, json, pick).await,
        Command::Watch(args) => watch(&socket, args).await,
        Command::Lsp => lsp::serve(&socket).await,
        Command::Eager { mode, pick } => inspect::eager(&socket, mode == "on", pick).await,
        Command::Image(cmd) => image(&socket, cmd).await,
        Command::Logs { json, build } => observe::logs(&socket, &build, json).await,
        Command::History { json, name } => {
            let client = connect::connect(&socket, false).await?;
            images::history(&client, &name, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Metrics => observe::metrics(&socket).await,
        Command::Du { json } => disk::du(&socket, json).await,
        Command::Prune {
            all,
            keep_storage,
            filter,
            force,
            json,
        } => {
            let request = memobuild_proto::PruneRequest {
                all,
                keep_bytes: keep_storage,
                unused_for_secs: disk::until_filter(&filter)?,
            };
            disk::prune(&socket, request, force, json).await
        }
        Command::Verify { json } => disk::verify(&socket, json).await,
        Command::Daemon(DaemonCommand::Status { json }) => daemonctl::status(&socket, json).await,
        Command::Daemon(DaemonCommand::Stop { timeout }) => daemonctl::stop(&socket, timeout).await,
        Command::Completion { shell } => {
            // Into memory first: clap_complete panics on a write error (`| head`).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "memobuild-ctl", &mut script);
            if shell == clap_complete::Shell::Bash {
                // clap_complete's bash script spells the states of a hyphenated
                // binary two ways, so no subcommand's flags ever complete
                // (clap-rs/clap#6421): make the case arms match the loop.
                script = String::from_utf8_lossy(&script)
                    .replace("memobuild__subcmd__ctl", "memobuild__ctl")
                    .into_bytes();
            }
            use std::io::Write;
            match std::io::stdout().write_all(&script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(RpcError::new(format!("writing the completion script: {e}")))
                }
                _ => Ok(ExitCode::SUCCESS),
            }
        }
        Command::Man { dir } => {
            std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir))
                .map_err(|e| {
                    RpcError::new(format!("writing man pages to {}: {e}", dir.display()))
                })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn image(socket: &std::path::Path, cmd: ImageCommand) -> Result<ExitCode, RpcError> {
    let client = connect::connect(socket, true).await?;
    match cmd {
        ImageCommand::Import { name, file } => {
            let before = client
                .images(connect::ctx())
                .await
                .map_err(connect::rpc_failed)??;
            let image = if file.as_os_str() == "-" {
                let staged = import::stdin_to_file()?;
                import::import(&client, staged.path(), name).await?
            } else {
                import::import(&client, &file, name).await?
            };
            if let Some(old) = before.iter().find(|i| i.name == image.name) {
                if old.manifest_digest != image.manifest_digest {
                    eprintln!(
                        "{} now names the imported image; it named {} (image ID {}) before",
                        image.name,
                        old.manifest_digest,
                        images::short_id(&old.config_digest)
                    );
                }
            }
            println!("{} {}", image.name, image.manifest_digest);
        }
        ImageCommand::Inspect { names } => images::inspect(&client, &names).await?,
        ImageCommand::History { json, name } => images::history(&client, &name, json).await?,
        ImageCommand::Rm { name } => {
            client
                .remove_image(connect::ctx(), name.clone())
                .await
                .map_err(connect::rpc_failed)??;
            println!("removed {name}");
        }
        ImageCommand::Ls { json, digests } => {
            let list = client
                .images(connect::ctx())
                .await
                .map_err(connect::rpc_failed)??;
            if json {
                output::print_images_json(&list);
            } else {
                images::print_table(&client, &list, digests).await?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds, then waits for the project to turn dirty and builds again, forever.
async fn watch(socket: &std::path::Path, args: BuildArgs) -> Result<ExitCode, RpcError> {
    if args.context.as_os_str() == "-" || args.file.as_ref().is_some_and(|f| f.as_os_str() == "-") {
        return Err(RpcError::with_hint(
            "watch cannot read the context or the Dockerfile from stdin",
            "pass a context directory and a Dockerfile path",
        ));
    }
    if git::parse(&args.context.to_string_lossy()).is_some() {
        return Err(RpcError::with_hint(
            "watch cannot watch a git URL context",
            "clone the repository and watch its directory",
        ));
    }
    let request = build_request(&args, None)?;
    let client = connect::connect(socket, true).await?;
    loop {
        let started = std::time::Instant::now();
        match run_build(&client, socket, &args, request.clone()).await {
            Ok(digest) => eprintln!(
                "== built {digest} in {:.2}s; watching for changes",
                started.elapsed().as_secs_f64()
            ),
            Err(e) => eprintln!("== build failed: {e}\n== watching for changes"),
        }
        let mut project = inspect::project_of(&client, &request).await?;
        // A save during the build leaves the project dirty right after it:
        // look before waiting for the next change.
        while project.state != memobuild_proto::ProjectState::Dirty {
            client
                .wait_change(connect::ctx(), project.id.clone(), project.generation)
                .await
                .map_err(connect::rpc_failed)??;
            project = inspect::project_status(&client, &project.id).await?;
        }
        // Debounce: let a burst of saves settle.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn build(socket: &std::path::Path, args: BuildArgs) -> Result<ExitCode, RpcError> {
    let events = !args.quiet && matches!(args.progress.as_str(), "json" | "rawjson");
    // With --progress json a failure is also the last event, before the build
    // too (`reported`: the build's printer already wrote it); `error:` goes to
    // stderr unless the events do (rawjson).
    let failed = |error: RpcError, reported: bool| {
        if !events {
            return Err(error);
        }
        if !reported {
            progress::Printer::new(&args.progress, false).event(&BuildEvent::Failed {
                error: error.clone(),
                failure: None,
            });
        }
        Ok(match args.progress.as_str() {
            "json" => fail(&error),
            _ => exit_code(error.kind),
        })
    };
    let refused = |error: RpcError| failed(error, false);
    let read = stdin::read(&args).and_then(|stdin_context| {
        let request = build_request(&args, stdin_context.as_ref())?;
        Ok((stdin_context, request))
    });
    let (stdin_context, request) = match read.map_err(as_input_error) {
        Ok(read) => read,
        Err(error) => return refused(error),
    };
    let client = match connect::connect(socket, true).await {
        Ok(client) => client,
        Err(error) => return refused(error),
    };
    if args.check || args.call == "check" {
        return check(&client, &args, request).await;
    }
    let result = run_build(&client, socket, &args, request.clone()).await;
    if stdin_context.is_some_and(|c| c.dir.is_some()) {
        // The unpacked context is deleted with the guard: the daemon need not watch it.
        let _ = client.forget(connect::ctx(), request.context.clone()).await;
    }
    match result {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => failed(e, true),
    }
}

/// `build --call=check`: BuildKit's lint warnings, as `docker build --check`
/// prints them (JSON on stdout with `--progress json`). Exit status 1 when
/// there are warnings (or `check=error=true` fails the build), else 0.
async fn check(
    client: &memobuild_proto::MemobuildClient,
    args: &BuildArgs,
    request: memobuild_proto::BuildRequest,
) -> Result<ExitCode, RpcError> {
    connect::require_features(client, &[("check", "--call=check")]).await?;
    let report = client
        .check(connect::ctx(), request)
        .await
        .map_err(connect::rpc_failed)??;
    let name = args
        .file
        .as_ref()
        .filter(|f| f.as_os_str() != "-")
        .map(|f| f.display().to_string())
        .unwrap_or_else(|| "Dockerfile".into());
    if matches!(args.progress.as_str(), "json" | "rawjson") {
        let json = serde_json::to_string(&report).unwrap_or_default();
        if args.progress == "json" {
            println!("{json}");
        } else {
            eprintln!("{json}");
        }
    } else if !args.quiet {
        let n = report.warnings.len();
        match n {
            0 => println!("Check complete, no warnings found."),
            1 => println!("Check complete, 1 warning has been found!"),
            n => println!("Check complete, {n} warnings have been found!"),
        }
        for w in &report.warnings {
            println!("\n{} - {}\n{}\n{name}:{}", w.rule, w.url, w.detail, w.line);
        }
        if let Some(e) = &report.error {
            println!("\nERROR: {e}");
        }
    }
    Ok(if report.warnings.is_empty() && report.error.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The outputs (`-o`, `--load`) written by this client, checked before the build.
async fn preflight(args: &BuildArgs) -> Result<Vec<output::OutputSpec>, RpcError> {
    let mut specs = Vec::new();
    for o in &args.output {
        if let Some(spec) = output::OutputSpec::parse(o)? {
            spec.preflight(&format!("-o {o}"))?;
            specs.push(spec);
        }
    }
    if args.load {
        specs.push(output::OutputSpec {
            kind: output::Kind::Docker,
            dest: output::Dest::Engine,
            names: Vec::new(),
        });
    }
    if specs.iter().any(|s| s.dest == output::Dest::Engine) {
        // The Docker Engine when one answers, else containerd, else an error naming both.
        docker::configured()?;
        if let Err(no_docker) = docker::ping().await {
            match containerd::reachable().await {
                Ok(target) => {
                    for s in specs.iter_mut().filter(|s| s.dest == output::Dest::Engine) {
                        s.dest = output::Dest::Containerd(target.clone());
                    }
                }
                Err(no_containerd) => {
                    return Err(RpcError::of(
                        ErrorKind::Unavailable,
                        format!("{}; and {no_containerd}", no_docker.message),
                    )
                    .hint(no_docker.hint.unwrap_or_default()))
                }
            }
        }
    }
    let to_stdout = specs
        .iter()
        .filter(|s| s.dest == output::Dest::Stdout)
        .count();
    if to_stdout > 1 {
        return Err(RpcError::with_hint(
            "more than one -o writes to stdout (dest=-)",
            "give all but one of them dest=FILE",
        ));
    }
    if to_stdout == 1 && args.quiet {
        return Err(RpcError::with_hint(
            "-q prints the image ID on stdout, where -o dest=- writes the archive",
            "use --iidfile FILE for the image ID, or give the output dest=FILE",
        ));
    }
    if to_stdout == 1 && args.progress == "json" {
        return Err(RpcError::with_hint(
            "--progress json prints on stdout, where -o dest=- writes the archive",
            "use --progress rawjson (the same events on stderr)",
        ));
    }
    for (flag, path) in [
        ("--iidfile", &args.iidfile),
        ("--metadata-file", &args.metadata_file),
    ] {
        if let Some(path) = path {
            output::check_parent(flag, path)?;
        }
    }
    Ok(specs)
}

/// Runs one build, printing its progress; returns the manifest digest.
async fn run_build(
    client: &memobuild_proto::MemobuildClient,
    socket: &std::path::Path,
    args: &BuildArgs,
    request: BuildRequest,
) -> Result<String, RpcError> {
    let mode = if args.quiet {
        "quiet"
    } else {
        args.progress.as_str()
    };
    // Checked before the build; a JSON reader sees a refusal as a `failed` event.
    // What the outputs ask for is the input here: a refusal is `invalid_input`
    // unless it says otherwise (no engine to load into is `unavailable`).
    let specs = match preflight(args).await.map_err(as_input_error) {
        Ok(specs) => specs,
        Err(error) => {
            progress::Printer::new(mode, false).event(&BuildEvent::Failed {
                error: error.clone(),
                failure: None,
            });
            return Err(error);
        }
    };
    // stdout carries the manifest digest, unless it carries an archive or -q's image ID.
    let digest_on_stdout = !args.quiet && !specs.iter().any(|s| s.dest == output::Dest::Stdout);
    let mut printer = progress::Printer::new(mode, digest_on_stdout);
    let mut request = request;
    let mut needed = Vec::new();
    if !request.annotations.is_empty() {
        needed.push(("annotations", "--annotation"));
    }
    if !request.build_contexts.is_empty() {
        needed.push(("build-contexts", "--build-context"));
    }
    let (cache_from, cache_to) = match local_caches(args).map_err(as_input_error) {
        Ok(c) => c,
        Err(error) => {
            printer.event(&BuildEvent::Failed {
                error: error.clone(),
                failure: None,
            });
            return Err(error);
        }
    };
    if !cache_from.is_empty() || !cache_to.is_empty() {
        needed.push(("local-cache", "type=local"));
    }
    if request.inline_cache {
        needed.push(("inline-cache", "--cache-to type=inline"));
    }
    if !args.ssh.is_empty() {
        needed.push((memobuild_proto::sshfwd::FEATURE, "--ssh"));
    }
    let gateway = memobuild_proto::HOST_GATEWAY;
    if request.add_hosts.iter().any(|(_, ip)| ip == gateway) {
        needed.push((gateway, "--add-host HOST:host-gateway"));
    }
    if let Err(error) = connect::require_features(client, &needed).await {
        printer.event(&BuildEvent::Failed {
            error: error.clone(),
            failure: None,
        });
        return Err(error);
    }
    // Held open until the build ends: the daemon asks it for agent connections.
    let _ssh = if args.ssh.is_empty() {
        None
    } else {
        match ssh::forward(socket, &args.ssh) {
            Ok((forward, session)) => {
                request.ssh = Some(forward);
                Some(session)
            }
            Err(error) => {
                printer.event(&BuildEvent::Failed {
                    error: error.clone(),
                    failure: None,
                });
                return Err(error);
            }
        }
    };
    let made = match dropin::local_contexts(client, &mut request, |l| printer.note(l)).await {
        Ok(made) => made,
        Err(error) => {
            printer.event(&BuildEvent::Failed {
                error: error.clone(),
                failure: None,
            });
            return Err(error);
        }
    };
    // As a registry cache: one that cannot be read means its steps are built here.
    for cache in &cache_from {
        let mut lines = Vec::new();
        let read = localcache::import(client, cache, |l| lines.push(l.to_string())).await;
        for line in lines {
            printer.note(&line);
        }
        if let Err(e) = read {
            printer.note(&format!(
                "warning: local cache {} cannot be read ({}); steps not cached here are built locally",
                cache.dir.display(),
                e.message
            ));
        }
    }
    let conn = connect::Conn { client, socket };
    let result = run_main_build(conn, args, request, &specs, &cache_to, &mut printer).await;
    // The directories' images were for this build only.
    for tag in made {
        let _ = client.remove_image(connect::ctx(), tag).await;
    }
    result
}

/// [`run_build`] once the outputs are checked and the build contexts made.
async fn run_main_build(
    conn: connect::Conn<'_>,
    args: &BuildArgs,
    request: BuildRequest,
    specs: &[output::OutputSpec],
    cache_to: &[localcache::LocalCache],
    printer: &mut progress::Printer,
) -> Result<String, RpcError> {
    let client = conn.client;
    // A refused build (e.g. the daemon is shutting down) is reported like a
    // failed one, so `--progress json` readers see it too.
    let id = match client
        .start_build(connect::ctx(), request)
        .await
        .map_err(connect::rpc_failed)
        .and_then(|r| r)
    {
        Ok(id) => id,
        Err(error) => {
            printer.event(&BuildEvent::Failed {
                error: error.clone(),
                failure: None,
            });
            return Err(error);
        }
    };
    // One listener for the whole build: a Ctrl-C between two polls is not lost.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| RpcError::new(format!("cannot listen for Ctrl-C: {e}")))?;
    let mut cursor = 0;
    let mut result = None;
    // The live display's timers move on between events.
    let mut redraw = tokio::time::interval(std::time::Duration::from_millis(100));
    redraw.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let poll = client.events(connect::ctx(), id, cursor);
    tokio::pin!(poll);
    loop {
        let batch = tokio::select! {
            batch = &mut poll => batch.map_err(connect::rpc_failed)??,
            _ = redraw.tick(), if printer.live() => {
                printer.tick();
                continue;
            }
            _ = interrupt.recv() => {
                // Ctrl-C: the daemon stops the build and removes its containers.
                let _ = client.cancel(connect::ctx(), id).await;
                printer.cancelled();
                return Err(RpcError::cancelled());
            }
        };
        printer.set_project(&batch.project);
        for event in &batch.events {
            printer.event(event);
            match event {
                BuildEvent::Finished {
                    manifest_digest,
                    config_digest,
                    tags,
                    ..
                } => {
                    result = Some(Ok((
                        manifest_digest.clone(),
                        config_digest.clone(),
                        tags.clone(),
                    )))
                }
                BuildEvent::Failed { error, .. } => result = Some(Err(error.clone())),
                _ => {}
            }
        }
        cursor = batch.next_cursor;
        if batch.finished {
            break;
        }
        poll.set(client.events(connect::ctx(), id, cursor));
    }
    let (digest, config, tags) = result
        .unwrap_or_else(|| Err(RpcError::new("the daemon ended the build without a result")))?;
    let done = write_results(conn, args, specs, &digest, &config, &tags, printer).await;
    if let Err(error) = done {
        printer.event(&BuildEvent::Failed {
            error: error.clone(),
            failure: None,
        });
        return Err(error);
    }
    // As a registry cache: a cache that cannot be written does not fail the build.
    for cache in cache_to {
        let mut lines = Vec::new();
        let written = localcache::export(client, id, cache, |l| lines.push(l.to_string())).await;
        for line in lines {
            printer.note(&line);
        }
        if let Err(e) = written {
            printer.note(&format!(
                "warning: local cache {} was not written: {}",
                cache.dir.display(),
                e.message
            ));
        }
    }
    Ok(digest)
}

/// `--cache-from/--cache-to type=local` (the others are registry caches).
fn local_caches(
    args: &BuildArgs,
) -> Result<(Vec<localcache::LocalCache>, Vec<localcache::LocalCache>), RpcError> {
    let mut from = Vec::new();
    for s in &args.cache_from {
        from.extend(localcache::parse("--cache-from", s)?);
    }
    let mut to = Vec::new();
    for s in &args.cache_to {
        to.extend(localcache::parse("--cache-to", s)?);
    }
    Ok((from, to))
}

/// After a build: the outputs, `--iidfile`, `--metadata-file`, `-q`'s image ID.
async fn write_results(
    conn: connect::Conn<'_>,
    args: &BuildArgs,
    specs: &[output::OutputSpec],
    digest: &str,
    config: &str,
    tags: &[String],
    printer: &progress::Printer,
) -> Result<(), RpcError> {
    output::export(conn, digest, tags, specs, |line| printer.note(line)).await?;
    if let Some(path) = &args.iidfile {
        std::fs::write(path, config)
            .map_err(|e| RpcError::new(format!("--iidfile {}: {e}", path.display())))?;
    }
    if let Some(path) = &args.metadata_file {
        let manifest = conn
            .client
            .image_blobs(connect::ctx(), digest.to_string())
            .await
            .map_err(connect::rpc_failed)??
            .manifest;
        let mut metadata = serde_json::json!({
            "containerimage.digest": digest,
            "containerimage.config.digest": config,
            "containerimage.descriptor": {
                "mediaType": manifest.media_type,
                "digest": digest,
                "size": manifest.size,
            },
        });
        if !tags.is_empty() {
            metadata["image.name"] = serde_json::Value::String(tags.join(","));
        }
        let text = serde_json::to_string_pretty(&metadata).unwrap_or_default();
        std::fs::write(path, text)
            .map_err(|e| RpcError::new(format!("--metadata-file {}: {e}", path.display())))?;
    }
    if args.quiet {
        println!("{config}");
    }
    Ok(())
}

/// `--secret id=ID,src=FILE` / `id=ID,env=VAR` (as docker buildx), read by the
/// client so the daemon never opens users' files.
fn read_secret(spec: &str) -> Result<(String, memobuild_proto::Secret), RpcError> {
    let mut id = None;
    let mut src = None;
    let mut env = None;
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("id", v)) => id = Some(v.to_string()),
            Some(("src" | "source", v)) => src = Some(v.to_string()),
            Some(("env", v)) => env = Some(v.to_string()),
            Some(("type", "file" | "env")) => {}
            _ => {
                return Err(RpcError::with_hint(
                    format!("bad --secret {spec:?}: unknown part {part:?}"),
                    "use --secret id=ID,src=FILE or --secret id=ID,env=VAR",
                ))
            }
        }
    }
    let id = id
        .or_else(|| {
            src.as_ref()
                .and_then(|s| std::path::Path::new(s).file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .ok_or_else(|| RpcError::with_hint(format!("--secret {spec:?} has no id"), "add id=ID"))?;
    let bytes = match (src, env) {
        (Some(path), _) => std::fs::read(&path)
            .map_err(|e| RpcError::new(format!("--secret id={id}: cannot read {path}: {e}")))?,
        (None, Some(var)) => std::env::var(&var)
            .map_err(|_| {
                RpcError::new(format!(
                    "--secret id={id}: environment variable {var} is not set"
                ))
            })?
            .into_bytes(),
        (None, None) => std::env::var(&id)
            .map_err(|_| {
                RpcError::with_hint(
                    format!("--secret id={id}: no src= and no ${id} in the environment"),
                    "add src=FILE or env=VAR",
                )
            })?
            .into_bytes(),
    };
    Ok((id, memobuild_proto::Secret(bytes)))
}

fn build_request(
    args: &BuildArgs,
    stdin_context: Option<&stdin::StdinContext>,
) -> Result<BuildRequest, RpcError> {
    let fetched_dir = stdin_context.and_then(|c| c.dir.as_ref().map(|d| d.path().join(&c.subdir)));
    let context_dir = fetched_dir.as_deref().unwrap_or(args.context.as_path());
    let context = std::fs::canonicalize(context_dir).map_err(|e| {
        RpcError::with_hint(
            format!("build context {}: {e}", args.context.display()),
            "pass an existing directory, e.g. `memobuild-ctl build .`",
        )
    })?;
    let dockerfile = match &args.file {
        None => String::new(),
        Some(f) if f.as_os_str() == "-" => String::new(),
        // Inside a context read from stdin or fetched with git: relative to it.
        Some(f) if fetched_dir.is_some() => f.display().to_string(),
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
    // `--build-arg SOURCE_DATE_EPOCH=N` is BuildKit's way to set it (buildx
    // passes the environment's that way); it wins over the environment.
    let epoch_text = match build_args.get("SOURCE_DATE_EPOCH") {
        Some(v) => Ok(v.clone()),
        None => std::env::var("SOURCE_DATE_EPOCH"),
    };
    // A number is sent as such; any other text (`context`, a stage's name,
    // or an invalid value) goes to the daemon as the build arg, which
    // resolves it as BuildKit's frontend does (or fails the plan).
    let source_date_epoch = match epoch_text {
        Ok(v) if !v.is_empty() => match v.parse::<i64>() {
            Ok(secs) => Some(secs),
            Err(_) => {
                build_args.insert("SOURCE_DATE_EPOCH".to_string(), v);
                None
            }
        },
        _ => None,
    };
    let secrets = args
        .secrets
        .iter()
        .map(|spec| read_secret(spec))
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    if let Some(c) = args.cpus.filter(|c| !(c.is_finite() && *c > 0.0)) {
        return Err(RpcError::new(format!(
            "--cpus {c} must be a positive number"
        )));
    }
    let mut request = BuildRequest {
        secrets,
        memory_bytes: args.memory,
        millicpus: args.cpus.map(|c| (c * 1000.0).round() as u64),
        pids_limit: args.pids_limit,
        context: context.display().to_string(),
        dockerfile,
        tags: args.tags.clone(),
        target: args.target.clone().unwrap_or_default(),
        build_args,
        no_cache: args.no_cache,
        source_date_epoch,
        ..BuildRequest::default()
    };
    stdin::add_docker_options(args, &mut request)?;
    dropin::add_options(args, &mut request)?;
    if let Some(text) = stdin_context.and_then(|c| c.dockerfile.clone()) {
        request.dockerfile = "-".into();
        request.dockerfile_text = Some(text);
    }
    add_registry_options(args, &mut request)?;
    Ok(request)
}

/// The registry part of the request: pushes, caches, platform, pull policy,
/// and the credentials of the registries involved.
fn add_registry_options(args: &BuildArgs, request: &mut BuildRequest) -> Result<(), RpcError> {
    if args.push {
        if args.tags.is_empty() {
            return Err(RpcError::with_hint(
                "--push needs an image name",
                "add -t REGISTRY/NAME:TAG, or use -o type=registry,name=REF",
            ));
        }
        request.push.extend(args.tags.iter().cloned());
    }
    for o in &args.output {
        if let Some(names) = registry::registry_output(o)? {
            request.push.extend(names);
        }
    }
    // type=local caches are the client's (localcache.rs); checked here.
    local_caches(args)?;
    let is_local = |s: &&String| s.split(',').any(|p| p == "type=local");
    for (flag, specs) in [
        ("--cache-from", &args.cache_from),
        ("--cache-to", &args.cache_to),
    ] {
        for spec in specs.iter().filter(|s| !is_local(s)) {
            match registry::cache_spec(flag, spec)? {
                registry::CacheSpec::Inline => request.inline_cache = true,
                registry::CacheSpec::Registry(c) if flag == "--cache-from" => {
                    request.cache_from.push(c.reference)
                }
                registry::CacheSpec::Registry(c) => request.cache_to.push(c),
            }
        }
    }
    // BuildKit's other spelling of --cache-to type=inline (true as Go's ParseBool reads it).
    if request
        .build_args
        .get("BUILDKIT_INLINE_CACHE")
        .is_some_and(|v| matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True"))
    {
        request.inline_cache = true;
    }
    request.platform = args.platform.clone().unwrap_or_default();
    request.pull = args.pull.clone().unwrap_or_default();
    let refs: Vec<String> = request
        .push
        .iter()
        .chain(&request.cache_from)
        .chain(request.cache_to.iter().map(|c| &c.reference))
        .cloned()
        .collect();
    let hosts = match &request.dockerfile_text {
        Some(text) => registry::hosts_in(
            text,
            refs.iter()
                .map(|r| memobuild_proto::registry::registry_host(r))
                .collect(),
        ),
        None => {
            let context = std::path::Path::new(&request.context);
            let dockerfile = match request.dockerfile.as_str() {
                // As the daemon: `dockerfile` when there is no `Dockerfile`.
                "" if !context.join("Dockerfile").exists()
                    && context.join("dockerfile").exists() =>
                {
                    context.join("dockerfile")
                }
                "" => context.join("Dockerfile"),
                f => context.join(f),
            };
            registry::hosts_used(&dockerfile, &refs)
        }
    };
    request.registry_auth = registry::credentials(hosts.as_ref())?;
    Ok(())
}

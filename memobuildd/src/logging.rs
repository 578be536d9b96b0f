//! The daemon's own log: tracing events to stderr (coloured text on a
//! terminal, plain text or JSON otherwise) and to daily-rolling files in the
//! log directory, written off the async workers by tracing-appender.
//!
//! Builds and steps run inside spans (`build`, `step`), so every line logged
//! while they run carries the build id, and the step index and instruction.
//! The format is described in docs/OBSERVABILITY.md.

use crate::config::Config;
use std::io::IsTerminal;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer, Registry};

/// Environment variable with a tracing filter, e.g. `MEMOBUILD_LOG=debug`.
pub const FILTER_ENV: &str = "MEMOBUILD_LOG";

/// Daily log files are `memobuildd.YYYY-MM-DD.log` in the log directory.
pub const FILE_PREFIX: &str = "memobuildd";

/// Keeps the file writer's background thread alive; dropping it flushes what
/// is buffered. Hold it for the daemon's whole life.
#[must_use = "dropping the guard stops writing the log files"]
pub struct LogGuard {
    _file: tracing_appender::non_blocking::WorkerGuard,
}

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("log directory {}: {source}\nhint: pass a writable directory with --log-dir (or log-dir in the config file)", dir.display())]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("log files in {}: {source}\nhint: pass a writable directory with --log-dir", dir.display())]
    Files {
        dir: PathBuf,
        source: tracing_appender::rolling::InitError,
    },
    #[error("a logger is already installed: {0}")]
    Installed(String),
}

type Base = Layered<EnvFilter, Registry>;
type BoxedLayer = Box<dyn Layer<Base> + Send + Sync>;

/// Installs the global subscriber: `MEMOBUILD_LOG` filter (default `info`),
/// stderr in the configured format, and the daily files.
pub fn init(config: &Config) -> Result<LogGuard, LoggingError> {
    let dir = config.log_dir.clone();
    // Build output lands here: 0700 like the data dir.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|source| LoggingError::Dir {
            dir: dir.clone(),
            source,
        })?;
    let appender = tracing_appender::rolling::Builder::new()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix(FILE_PREFIX)
        .filename_suffix("log")
        .max_log_files(config.log_max_files)
        .build(&dir)
        .map_err(|source| LoggingError::Files {
            dir: dir.clone(),
            source,
        })?;
    // The file is written by tracing-appender's own thread, so a slow disk
    // never stalls a build's task.
    let (file, guard) = tracing_appender::non_blocking(appender);
    let json = config.log_format == "json";
    let stderr_ansi = !json && std::io::stderr().is_terminal();
    let filter = EnvFilter::try_from_env(FILTER_ENV).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(filter)
        .with(vec![
            layer(json, stderr_ansi, std::io::stderr),
            layer(json, false, file),
        ])
        .try_init()
        .map_err(|e| LoggingError::Installed(e.to_string()))?;
    Ok(LogGuard { _file: guard })
}

/// One output: JSON objects (with the current span and all enclosing spans'
/// fields) or text lines.
fn layer<W>(json: bool, ansi: bool, writer: W) -> BoxedLayer
where
    W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    if json {
        fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(writer)
            .boxed()
    } else {
        fmt::layer().with_ansi(ansi).with_writer(writer).boxed()
    }
}

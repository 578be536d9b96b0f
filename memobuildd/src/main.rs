//! memobuildd: wires options, logging and the daemon together.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let flags = memobuildd::config::Flags::parse();
    let config = match memobuildd::config::load(&flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("memobuildd: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if flags.check_config {
        print!("{}", config.to_toml());
        return std::process::ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MEMOBUILD_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("memobuildd: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(memobuildd::daemon::run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memobuildd: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

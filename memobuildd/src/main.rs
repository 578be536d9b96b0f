//! memobuildd: wires options, logging and the daemon together.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // Whatever the daemon creates is private unless it says otherwise (the
    // socket, the files a step sees); the data dir holds other users' builds.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let flags = memobuildd::config::Flags::parse();
    if let Some(dir) = &flags.generate_man {
        use clap::CommandFactory;
        let man = clap_mangen::Man::new(memobuildd::config::Flags::command()).section("8");
        return match std::fs::create_dir_all(dir).and_then(|()| man.generate_to(dir)) {
            Ok(_) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("memobuildd: writing the man page to {}: {e}", dir.display());
                std::process::ExitCode::FAILURE
            }
        };
    }
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
    // Held until main returns: it flushes the log files.
    let _log = match memobuildd::logging::init(&config) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("memobuildd: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
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

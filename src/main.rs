//! The `faasd` binary: parses the command line, starts tracing, runs the subcommand, and turns
//! its outcome into an exit code.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // The sandbox shim runs before anything else exists: no threads, no runtime.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == faasd::sandbox::shim::SHIM_COMMAND)
    {
        faasd::sandbox::shim::shim_main(&args[2..]);
    }
    if args
        .get(1)
        .is_some_and(|a| a == faasd::sandbox::zygote::ZYGOTE_COMMAND)
    {
        faasd::sandbox::zygote::zygote_main(&args[2..]);
    }
    let cli = faasd::cmd::Cli::parse();
    faasd::cmd::init_tracing(cli.log_format);
    use faasd::cmd::Command;
    let server = matches!(cli.command, Command::Serve(_) | Command::Worker(_));
    if server || matches!(cli.command, Command::Bench(_)) {
        // `faasd bench` holds a connection per caller (`--connections`, up to thousands).
        raise_open_files_limit(server);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("faasd: cannot start the async runtime: {err}");
            return std::process::ExitCode::from(faasd::cmd::exit::FAILURE);
        }
    };
    match runtime.block_on(faasd::cmd::run(cli)) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(err) => {
            eprintln!("faasd: {err:#}");
            std::process::ExitCode::from(faasd::cmd::exit::code_of(&err))
        }
    }
}

/// Raises the open-files soft limit to the hard limit, before any thread starts: a server holds a
/// descriptor per connection, and the usual soft limit (1,024) is far below what it may use.
/// A failure is a warning: the server still runs, with fewer connections. A server logs the
/// limit it runs with (`announce`); a client command only a failure.
fn raise_open_files_limit(announce: bool) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) if announce => {
                tracing::info!(from = soft, to = hard, "raised the open-files limit")
            }
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-files limit"),
            Err(err) => tracing::warn!(
                limit = soft,
                hard,
                error = %err,
                "cannot raise the open-files limit (setrlimit NOFILE)"
            ),
        },
        Ok((soft, _)) if announce => tracing::info!(limit = soft, "open-files limit"),
        Ok(_) => {}
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the open-files limit (getrlimit NOFILE)")
        }
    }
}

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
    if !server && !matches!(cli.command, Command::Bench(_) | Command::Replay(_)) {
        die_quietly_on_closed_output();
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

/// Lets a client command end as `cat` does when what reads its output goes away (`faasd tasks |
/// head`): by `SIGPIPE`, which the shell reports as status 141, rather than with a panic in
/// `println!` (exit 101) or a write error read as a failed task (exit 1). Rust ignores the
/// signal by default; the server, the worker and commands that write to their executors' pipes
/// (`bench`, `replay --local`) keep it ignored, where a closed pipe is an error to handle.
fn die_quietly_on_closed_output() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: set before any thread starts, to the default disposition, with no handler code.
    if let Err(err) = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) } {
        tracing::debug!(error = %err, "cannot restore SIGPIPE's default");
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

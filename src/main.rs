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
    if !server {
        end_quietly_when_output_closes();
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
        Err(err) if !server && closed_output(&err) => std::process::ExitCode::from(CLOSED_OUTPUT),
        Err(err) => {
            eprintln!("faasd: {err:#}");
            std::process::ExitCode::from(faasd::cmd::exit::code_of(&err))
        }
    }
}

/// The exit status of a client command whose output was closed early (`faasd tasks | head`):
/// what a shell reports for `cat` killed by `SIGPIPE` there.
const CLOSED_OUTPUT: u8 = 141;

/// Lets a client command end quietly with [`CLOSED_OUTPUT`] when what reads its output goes
/// away, rather than with a panic in `println!` (exit 101) or a write error read as a failed
/// task (exit 1). `SIGPIPE` itself stays ignored (Rust's default): a socket written with
/// `writev` raises it too, and a server that resets an upload must be an error, not a silent
/// death.
fn end_quietly_when_output_closes() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        // `println!`'s "failed printing to stdout: Broken pipe (os error 32)", or a library's
        // own wording of the same error (clap_complete's "... kind: BrokenPipe ...").
        if message.contains("Broken pipe") || message.contains("BrokenPipe") {
            std::process::exit(i32::from(CLOSED_OUTPUT));
        }
        default(info);
    }));
}

/// Whether `err` is a write to a closed output (a `BrokenPipe` the command itself got, not one
/// of its connection's, which the client wraps in errors of its own).
fn closed_output(err: &anyhow::Error) -> bool {
    err.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
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

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

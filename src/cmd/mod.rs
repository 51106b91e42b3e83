//! The command line: the top-level parser, tracing set-up, and dispatch to one file per
//! subcommand. The documented exit codes, and the mapping of client errors to them, are in
//! [`exit`].

mod batch;
mod bench;
mod cancel;
mod completions;
pub mod exit;
mod failed;
mod grant;
mod invoke;
mod join_token;
mod ls;
mod register;
mod replay;
mod rm;
mod serve;
mod table;
mod task_list;
mod tasks;
mod upload;
mod usage;
mod user;
mod versions;
mod watch;
mod whoami;
mod worker;
mod workers;

use clap::{Parser, Subcommand, ValueEnum};

/// How log lines are written.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// faasd: register code once, invoke it many times, on sandboxed executors.
#[derive(Debug, Parser)]
#[command(name = "faasd", version, about)]
pub struct Cli {
    /// Log format (filter with RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The server address the client commands talk to, and who they are.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The server's URL.
    #[arg(long, env = "FAASD_URL", default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// The token that identifies you to the server (`faasd user add` prints one); sent as
    /// `Authorization: Bearer TOKEN`.
    #[arg(long, env = "FAASD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The CA certificate (PEM) that signed the server's certificate, for an `https://` URL;
    /// without it the system's roots are trusted.
    #[arg(long, env = "FAASD_CACERT", value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,
    /// When an answer has taken this long, check that the server is alive (`GET /healthz` on
    /// another connection, waiting as long again, at most 10 s) and exit 3 if it is not; a
    /// live server is waited for however long the answer takes. `0` never checks.
    #[arg(
        long,
        env = "FAASD_CHECK_AFTER",
        value_name = "DURATION",
        default_value = "30s",
        value_parser = crate::units::parse_duration
    )]
    pub check_after: std::time::Duration,
}

impl ClientArgs {
    /// A client for the server at `--url`, sending `--token` if one was given and trusting
    /// `--cacert` (or the system's roots) for an `https://` URL.
    pub fn connect(&self) -> Result<crate::client::Client, crate::client::Error> {
        let mut client = crate::client::Client::with_cacert(&self.url, self.cacert.as_deref())?;
        if !self.check_after.is_zero() {
            client = client.checking_after(self.check_after);
        }
        // An empty token (`FAASD_TOKEN=`, `--token ""`) is none: the server then says a token
        // is missing, not that this one is unknown.
        match self.token.as_deref().filter(|t| !t.trim().is_empty()) {
            Some(token) => client.with_token(token),
            None => Ok(client),
        }
    }
}

/// How workers run executors (on `serve` for its local workers, and on `worker`).
#[derive(Debug, Clone, clap::Args)]
pub struct ExecutorArgs {
    /// The Python interpreter for `python` and `pickle` functions (default: `python3` on PATH).
    #[arg(long, value_name = "PATH")]
    pub python: Option<std::path::PathBuf>,
    /// A directory put on the executors' PYTHONPATH, so functions pickled by reference to a
    /// module can be resolved (repeatable).
    #[arg(long = "python-path", value_name = "DIR")]
    pub python_path: Vec<std::path::PathBuf>,
    /// Isolation of executors: `auto` applies every layer this machine allows and logs any it
    /// cannot; `strict` refuses to start without all of them; `none` is for trusted code only.
    #[arg(long, value_enum, default_value = "auto")]
    pub sandbox: crate::sandbox::Mode,
    /// The uid:gid functions run as inside the sandbox.
    #[arg(long, default_value = "65534:65534", value_parser = parse_ids)]
    pub sandbox_user: (u32, u32),
    /// Size of each executor's writable tmpfs (its /tmp and working directory).
    #[arg(long, default_value = "64MiB", value_parser = crate::units::parse_bytes)]
    pub sandbox_tmpfs: usize,
    /// Memory limit of each call in the sandbox (a cgroup; exceeding it fails the task with
    /// `out_of_memory`).
    #[arg(long, default_value = "512MiB", value_parser = crate::units::parse_bytes)]
    pub sandbox_memory: usize,
    /// The resident memory idle warm executors may hold, such as `2GiB`; past it (or when the
    /// machine has under a tenth of its memory available) pre-warming for `min_warm` pauses.
    /// Default: a quarter of the machine's memory.
    #[arg(long, value_parser = crate::units::parse_bytes)]
    pub max_warm_memory: Option<usize>,
    /// The most bytes of code bundles a worker keeps cached; past it the least recently used
    /// bundles no executor uses are removed (fetched again when next needed).
    #[arg(long, default_value = "4GiB", value_parser = crate::units::parse_bytes)]
    pub code_cache_size: usize,
}

/// Parses `--sandbox-user`: `UID:GID`, or one number for both (a clap value parser).
fn parse_ids(text: &str) -> Result<(u32, u32), String> {
    let (uid, gid) = text.split_once(':').unwrap_or((text, text));
    let id = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| format!("{text:?} is not UID:GID"))
    };
    Ok((id(uid)?, id(gid)?))
}

impl ExecutorArgs {
    /// `--max-warm-memory`, or its default.
    pub fn max_warm_memory_bytes(&self) -> u64 {
        self.max_warm_memory
            .map_or_else(crate::exec::default_warm_budget_bytes, |b| b as u64)
    }

    /// The sandbox these flags ask for, before negotiation.
    pub fn sandbox_settings(&self) -> crate::sandbox::Settings {
        crate::sandbox::Settings {
            uid: self.sandbox_user.0,
            gid: self.sandbox_user.1,
            tmpfs_bytes: self.sandbox_tmpfs as u64,
            memory_bytes: self.sandbox_memory as u64,
        }
    }

    /// Negotiates the sandbox, starts its zygote, resolves the interpreter, and writes the
    /// harness into `dir`.
    pub fn runtimes(&self, dir: &std::path::Path) -> anyhow::Result<crate::exec::Runtimes> {
        use anyhow::Context;
        let sandbox = self.sandbox_settings().negotiate(self.sandbox)?;
        if let Some(sandbox) = &sandbox {
            crate::sandbox::start_zygote(sandbox, &dir.join("zygote"));
        }
        crate::exec::Runtimes::new(
            self.python.as_deref(),
            self.python_path.clone(),
            dir,
            sandbox,
        )
        .with_context(|| format!("cannot prepare the runtimes in {}", dir.display()))
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the platform: HTTP API, store, broker and local workers.
    Serve(serve::ServeArgs),
    /// Join a server's worker port and run its tasks.
    Worker(worker::WorkerArgs),
    /// Print the join token remote workers need (`faasd worker --join-token`).
    JoinToken(join_token::JoinTokenArgs),
    /// List the workers connected to a server.
    Workers(workers::WorkersArgs),
    /// Show who the server takes this client for: user, role, and protected mode.
    Whoami(whoami::WhoamiArgs),
    /// Register (or update) a function from a file.
    Register(register::RegisterArgs),
    /// Invoke a function and print its result (or its task id with --async); with --batch,
    /// once per line of input.
    Invoke(invoke::InvokeArgs),
    /// Show a task's status.
    Status(tasks::StatusArgs),
    /// Print a finished task's result bytes.
    Result(tasks::ResultArgs),
    /// Print a finished task's captured stderr (`--follow` waits for a running one).
    Logs(tasks::LogsArgs),
    /// List tasks, newest first, by function, status and age.
    Tasks(task_list::TasksArgs),
    /// Cancel tasks by id, or a function's: QUEUED ones never run, RUNNING ones are stopped.
    Cancel(cancel::CancelArgs),
    /// List functions.
    Ls(ls::LsArgs),
    /// Remove a function: every version of it (its name can be registered again).
    Rm(rm::RmArgs),
    /// List a function's kept versions, the live one marked.
    Versions(versions::VersionsArgs),
    /// Make a kept version of a function the live one again.
    Rollback(versions::RollbackArgs),
    /// Run a task's call again (same version and payload), on the server or with --local here.
    Replay(replay::ReplayArgs),
    /// Benchmark a running server (async throughput, sync latency).
    Bench(bench::BenchArgs),
    /// Manage users and their tokens (admins).
    User(user::UserArgs),
    /// Let a user invoke a function (admins and the function's owner).
    Grant(grant::GrantArgs),
    /// Take back a user's right to invoke a function.
    Revoke(grant::GrantArgs),
    /// Show usage per user or function: calls, failures, wall and CPU seconds, GB-seconds.
    Usage(usage::UsageArgs),
    /// Print a shell completion script (bash, zsh or fish) to stdout.
    Completions(completions::CompletionsArgs),
    /// Print live events (task state changes, workers, functions) as lines or JSON lines.
    Watch(watch::WatchArgs),
}

/// Starts tracing to stderr with `RUST_LOG` filtering (default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs the parsed command; returns the exit code.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Worker(args) => worker::run(args).await,
        Command::JoinToken(args) => join_token::run(args).await,
        Command::Workers(args) => workers::run(args).await,
        Command::Whoami(args) => whoami::run(args).await,
        Command::Register(args) => register::run(args).await,
        Command::Invoke(args) => invoke::run(args).await,
        Command::Status(args) => tasks::status(args).await,
        Command::Result(args) => tasks::result(args).await,
        Command::Logs(args) => tasks::logs(args).await,
        Command::Tasks(args) => task_list::run(args).await,
        Command::Cancel(args) => cancel::run(args).await,
        Command::Ls(args) => ls::run(args).await,
        Command::Rm(args) => rm::run(args).await,
        Command::Versions(args) => versions::versions(args).await,
        Command::Rollback(args) => versions::rollback(args).await,
        Command::Replay(args) => replay::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::User(args) => user::run(args).await,
        Command::Grant(args) => grant::grant(args).await,
        Command::Revoke(args) => grant::revoke(args).await,
        Command::Usage(args) => usage::run(args).await,
        Command::Completions(args) => completions::run(args).await,
        Command::Watch(args) => watch::run(args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uid_colon_gid_or_one_number_for_both() {
        assert_eq!(parse_ids("1000:100"), Ok((1000, 100)));
        assert_eq!(parse_ids("65534"), Ok((65534, 65534)));
        assert_eq!(parse_ids("0:0"), Ok((0, 0)));
    }

    #[test]
    fn ids_that_are_not_numbers_are_refused() {
        for text in ["", "a:b", "1:", ":1", "1:2:3", "-1:0", "4294967296"] {
            assert_eq!(
                parse_ids(text),
                Err(format!("{text:?} is not UID:GID")),
                "{text:?}"
            );
        }
    }

    #[test]
    fn the_command_line_parses() {
        <Cli as clap::CommandFactory>::command().debug_assert();
        let cli = Cli::try_parse_from(["faasd", "serve", "--sandbox-user", "10:20"])
            .expect("serve parses");
        let Command::Serve(_) = cli.command else {
            panic!("not serve: {:?}", cli.command);
        };
        let err =
            Cli::try_parse_from(["faasd", "serve", "--sandbox-user", "x"]).expect_err("bad ids");
        assert!(err.to_string().contains("\"x\" is not UID:GID"), "{err}");
        // A join token that begins with `-` is the option's value, not another option.
        let argv = [
            "faasd",
            "worker",
            "--server",
            "h:1",
            "--join-token",
            "-sAbC",
        ];
        let Command::Worker(worker) = Cli::try_parse_from(argv).expect("worker parses").command
        else {
            panic!("not worker");
        };
        assert_eq!(worker.join_token.as_deref(), Some("-sAbC"));
    }
}

//! `faasd replay TASK_ID [--wait | --local]`: run a task's exact call again.
//!
//! On the server, a replay is a new task of the same function version with the same payload
//! (`POST /v1/tasks/{id}/replay`). With `--local` nothing runs on the server: this machine
//! downloads that version's code and the payload and runs the call here the way a worker does
//! a cold call (the same runtime, environment, timeout and sandbox, as far as this machine
//! allows), so a failure can be looked at where it is easy to look.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{ClientArgs, ExecutorArgs, exit};
use crate::client::{Client, segment};
use crate::proto::{Isolation, Outcome, Runtime};

/// Run a task's call again: the same function version and payload.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The id of the task to replay.
    pub id: String,
    /// Wait for the new task and print its result as `invoke` does (exit 1 if it fails).
    #[arg(long, conflicts_with = "local")]
    pub wait: bool,
    /// Run the call on this machine instead: download the version's code and the payload, run
    /// them here (in the sandbox this machine allows; `--sandbox none` runs it unconfined),
    /// print the result to stdout and the function's stderr to stderr.
    #[arg(long)]
    pub local: bool,
    /// Print JSON: `{"task_id", ...}` for a server replay (with `result` once waited for), or
    /// `{"status", "result", "stderr", ...}` for a local one.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub executors: ExecutorArgs,
}

/// Runs `faasd replay`.
pub async fn run(args: ReplayArgs) -> anyhow::Result<u8> {
    let client = args.client.connect()?;
    if args.local {
        return run_local(&client, &args).await;
    }
    let path = format!("/v1/tasks/{}/replay", segment(&args.id));
    let answer = client
        .post(&path, "application/octet-stream", Bytes::new())
        .await?
        .ok()
        .with_context(|| format!("cannot replay task {}", args.id))?;
    let replayed: serde_json::Value = answer.json()?;
    let new_id = replayed["task_id"].as_str().unwrap_or_default().to_string();
    if args.wait {
        let task = (new_id.as_str(), true, args.json);
        return super::tasks::fetch_bytes(&args.client, task, "result").await;
    }
    if args.json {
        println!("{replayed}");
    } else {
        println!("{new_id}");
    }
    Ok(exit::OK)
}

/// What a local replay runs: the version's settings, code and the task's payload.
struct LocalCall {
    function: String,
    version: u32,
    runtime: Runtime,
    env: Vec<(String, String)>,
    timeout: Duration,
    isolation: Isolation,
    code: Bytes,
    payload: Bytes,
    json: bool,
}

/// Fetches what a local replay needs: the task, its version's settings and code (checked
/// against its hash), and its payload.
async fn fetch_call(client: &Client, id: &str) -> anyhow::Result<LocalCall> {
    let cannot = || format!("cannot replay task {id} locally");
    let task: serde_json::Value = client
        .get(&format!("/v1/tasks/{}", segment(id)))
        .await?
        .ok()
        .with_context(cannot)?
        .json()?;
    let function = task["function"].as_str().unwrap_or_default().to_string();
    let version = task["version"].as_u64().unwrap_or_default() as u32;
    let base = format!("/v1/functions/{}/versions", segment(&function));
    let versions: Vec<serde_json::Value> =
        client.get(&base).await?.ok().with_context(cannot)?.json()?;
    let view = versions
        .into_iter()
        .find(|v| v["version"].as_u64() == Some(u64::from(version)))
        .ok_or_else(|| {
            exit::coded(
                exit::NOT_FOUND,
                format!(
                    "{}: {function:?} no longer keeps version {version}",
                    cannot()
                ),
            )
        })?;
    let code = client
        .get(&format!("{base}/{version}/code"))
        .await?
        .ok()
        .with_context(cannot)?
        .body;
    if crate::proto::hex(&Sha256::digest(&code)) != view["code_sha256"].as_str().unwrap_or_default()
    {
        return Err(exit::coded(
            exit::SERVER,
            format!("{}: the code downloaded does not match its hash", cannot()),
        ));
    }
    let payload = client
        .get(&format!("/v1/tasks/{}/payload", segment(id)))
        .await?
        .ok()
        .with_context(cannot)?;
    let json = payload
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    settings(&view, function, version, code, (payload.body, json))
}

/// The call's settings from the version's view.
fn settings(
    view: &serde_json::Value,
    function: String,
    version: u32,
    code: Bytes,
    (payload, json): (Bytes, bool),
) -> anyhow::Result<LocalCall> {
    let runtime: Runtime = view["runtime"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|e| exit::coded(exit::SERVER, format!("{e}")))?;
    let env = view["env"]
        .as_object()
        .map(|env| {
            env.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    Ok(LocalCall {
        function,
        version,
        runtime,
        env,
        timeout: Duration::from_millis(view["timeout_ms"].as_u64().unwrap_or(30_000)),
        isolation: Isolation {
            memory_bytes: view["memory_bytes"].as_u64(),
            allow_net: view["allow_net"].as_bool().unwrap_or(false),
        },
        code,
        payload,
        json,
    })
}

/// Runs `faasd replay --local`.
async fn run_local(client: &Client, args: &ReplayArgs) -> anyhow::Result<u8> {
    let call = fetch_call(client, &args.id).await?;
    let dir = tempfile::Builder::new()
        .prefix("faasd-replay-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let run = run_here(&call, &args.executors, dir.path());
    // The function's stderr goes to stderr too: only warnings (a sandbox layer this machine
    // cannot apply, say) join it, unless RUST_LOG asks for more.
    let outcome = if std::env::var_os("RUST_LOG").is_some() {
        run.await?
    } else {
        use tracing::instrument::WithSubscriber;
        let quiet = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_max_level(tracing::Level::WARN)
            .finish();
        run.with_subscriber(quiet).await?
    };
    print_outcome(&args.id, &outcome, args.json)?;
    Ok(if outcome.failure.is_none() {
        exit::OK
    } else {
        exit::FAILURE
    })
}

/// Runs the call in `dir` as a worker would: warm runtimes through a one-call pool, the others
/// in a fresh process.
async fn run_here(
    call: &LocalCall,
    executors: &ExecutorArgs,
    dir: &Path,
) -> anyhow::Result<Outcome> {
    use std::os::unix::fs::PermissionsExt;
    // The sandbox's user must reach the code and the call's working directory.
    let open = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(dir, open.clone())
        .context("cannot open up the temporary directory")?;
    let bundle = dir.join("code");
    std::fs::write(&bundle, &call.code).context("cannot write the code")?;
    std::fs::set_permissions(&bundle, open.clone()).context("cannot make the code executable")?;
    let work_root = dir.join("work");
    std::fs::create_dir(&work_root).context("cannot create the working directory")?;
    std::fs::set_permissions(&work_root, open).context("cannot open up the working directory")?;
    let runtimes = executors.runtimes(dir)?;
    let (argv, env) = command_here(call, &runtimes, &bundle, dir).await?;
    let limits = crate::exec::Limits::default();
    if !call.runtime.always_warm() {
        let cold = crate::exec::Call {
            argv: &argv,
            env: &env,
            payload: call.payload.clone(),
            timeout: call.timeout,
            work_root: &work_root,
            limits,
        };
        return Ok(crate::exec::run(cold).await);
    }
    let pool = crate::exec::Pool::new(crate::exec::PoolLimits::for_slots(1, u64::MAX));
    let outcome = pool
        .run(crate::exec::WarmCall {
            key: (call.function.clone(), call.version),
            warm: crate::exec::DEFAULT_WARM,
            argv,
            env,
            waited: Duration::ZERO,
            work_root,
            payload: call.payload.clone(),
            json: call.json,
            timeout: call.timeout,
            limits,
            keep: None,
        })
        .await;
    pool.retire(&call.function, call.version);
    Ok(outcome)
}

/// The command line and environment of the call here: an `oci` function's image is unpacked
/// under `dir` first.
async fn command_here(
    call: &LocalCall,
    runtimes: &crate::exec::Runtimes,
    bundle: &Path,
    dir: &Path,
) -> anyhow::Result<(Vec<std::ffi::OsString>, Vec<(String, String)>)> {
    let cannot = || format!("cannot run a {} function here", call.runtime.as_str());
    if call.runtime != Runtime::Oci {
        let argv = runtimes
            .command(call.runtime, bundle, call.timeout, call.isolation)
            .with_context(cannot)?;
        return Ok((argv, runtimes.env(call.runtime, &call.env)));
    }
    let (bundle, images) = (bundle.to_owned(), dir.join("images"));
    let rootfs = tokio::task::spawn_blocking(move || {
        // The directory is this replay's own: one image in it, under any name.
        crate::oci::ensure_rootfs(&bundle, "image", &images, crate::oci::Limits::default())
    })
    .await
    .context("the image's unpack did not finish")?
    .context("cannot unpack the function's image")?;
    let argv = runtimes
        .image_command(&rootfs, call.timeout, call.isolation)
        .with_context(cannot)?;
    Ok((argv, runtimes.image_env(&rootfs, &call.env)))
}

/// Prints a local run: the result to stdout and the function's stderr to stderr, then on a
/// failure why; with `json`, one object on stdout.
fn print_outcome(id: &str, outcome: &Outcome, json: bool) -> anyhow::Result<()> {
    let status = if outcome.failure.is_none() {
        "COMPLETED"
    } else {
        "FAILED"
    };
    if json {
        let mut object = serde_json::Map::new();
        object.insert("replay_of".into(), id.into());
        object.insert("status".into(), status.into());
        object.insert("reason".into(), outcome.failure.map(|f| f.as_str()).into());
        object.insert("message".into(), outcome.message.clone().into());
        object.insert("exit_code".into(), outcome.exit_code.into());
        let (key, value) = super::tasks::bytes_field("result", &outcome.stdout);
        object.insert(key, value);
        let (key, value) = super::tasks::bytes_field("stderr", &outcome.stderr);
        object.insert(key, value);
        println!("{}", serde_json::Value::Object(object));
        return Ok(());
    }
    std::io::stderr().write_all(&outcome.stderr)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&outcome.stdout)?;
    out.flush()?;
    if let Some(reason) = outcome.failure {
        let why = outcome.message.as_deref().unwrap_or(reason.as_str());
        eprintln!("faasd: the local replay of task {id} failed: {why}");
    }
    Ok(())
}

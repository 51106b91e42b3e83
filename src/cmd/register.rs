//! `faasd register NAME FILE`: upload a function's code and settings. A new version keeps the
//! previous version's value of every setting not given (`--reset` starts from the defaults), and
//! the command prints what changed.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use base64::Engine;

use super::{ClientArgs, exit, upload};

/// Register (or update) a function. Updating a function keeps its settings for every flag not
/// given; `--reset` goes back to the defaults.
#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    /// The function's name: 1-63 of a-z, 0-9, '_', '-', starting with a letter or digit.
    pub name: String,
    /// The code file (`-` reads standard input), or for `python` a directory, uploaded as a
    /// bundle whose entry module (`--entry`) defines `handle`. Code up to 4 MiB travels in the
    /// registration; larger code is uploaded apart (streamed, up to the server's
    /// `--max-code-size`) unless the server already has it, then registered by its digest.
    /// The server checks it before storing it (Python must compile and define `handle`).
    pub file: PathBuf,
    /// The entry module of a `python` directory bundle (default `main`, i.e. `main.py`).
    #[arg(long)]
    pub entry: Option<String>,
    /// A pip requirements file for a `python` function: it runs in a virtualenv of its own,
    /// built by the worker once per distinct requirements (a directory bundle's top-level
    /// `requirements.txt` does the same without this flag; the flag replaces it).
    #[arg(long, value_name = "FILE")]
    pub requirements: Option<PathBuf>,
    /// How the code runs: `shell` (sh runs it), `exec` (run directly), `python` (a module with
    /// `handle(payload)`), `pickle` (a dill-pickled callable) or `oci` (a container image
    /// archive: `docker save` or an OCI layout in a tar). Default: the previous version's, or
    /// `shell`.
    #[arg(long)]
    pub runtime: Option<String>,
    /// Per-call timeout, such as `10` (seconds), `500ms`, `30s` or `2m` (server default 30s).
    #[arg(long, value_parser = crate::units::duration_text)]
    pub timeout: Option<String>,
    /// The most calls running at once (default unlimited).
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// The most tasks waiting in the function's queue; 0 for no waiting line (a call that finds
    /// every `--concurrency` slot busy is refused at once).
    #[arg(long)]
    pub queue_limit: Option<u32>,
    /// How many times a task is started before it fails with `worker_lost`.
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Keep executors warm between calls (`exec` programs that speak the warm frame protocol;
    /// always on for `python` and `pickle`).
    #[arg(long)]
    pub warm: bool,
    /// Warm executors kept ready even when idle.
    #[arg(long)]
    pub min_warm: Option<u32>,
    /// How long an idle warm executor lives, such as `60` (seconds) or `60s`.
    #[arg(long, value_parser = crate::units::duration_text)]
    pub idle_timeout: Option<String>,
    /// Memory limit per call in the sandbox, such as `256MiB`.
    #[arg(long)]
    pub memory: Option<String>,
    /// Let the function use the network in the sandbox (default: loopback only).
    #[arg(long)]
    pub allow_net: bool,
    /// The function is a web server listening on this port (`exec`, `python`): faasd starts
    /// it warm and proxies `/function/NAME/...` to it.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub http_port: Option<u16>,
    /// How many requests one executor of an HTTP service serves at once (default 100).
    #[arg(long, value_name = "N")]
    pub http_concurrency: Option<u32>,
    /// Store each request to an HTTP service as a task (default: only count it).
    #[arg(long)]
    pub record_requests: bool,
    /// An environment variable for every call, `K=V` (repeatable); given at all, the list
    /// replaces the previous version's.
    #[arg(long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Start from the defaults instead of the previous version's settings.
    #[arg(long)]
    pub reset: bool,
    /// Print the registered function as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `faasd register`.
pub async fn run(mut args: RegisterArgs) -> anyhow::Result<u8> {
    let client = args.client.connect()?;
    if args.requirements.is_some() && args.runtime.is_none() {
        args.runtime = Some(kept_runtime(&client, &args.name).await);
    }
    if args.runtime.is_none() && args.file.extension().is_some_and(|e| e == "py") {
        refuse_python_as_shell(&client, &args).await?;
    }
    let requirements = read_requirements(&args)?;
    let (mut body, blob) = match large_file(&args, requirements.is_some()) {
        Some(len) => {
            let file = upload::Source::File(args.file.clone(), len);
            (request_body(&args, &[])?, Some(file))
        }
        None => {
            let code = read_code(&args.file, requirements.as_deref())?;
            if code.len() as u64 > upload::UPLOAD_THRESHOLD {
                let bundle = upload::Source::Memory(code.into());
                (request_body(&args, &[])?, Some(bundle))
            } else {
                (request_body(&args, &code)?, None)
            }
        }
    };
    if let Some(source) = blob {
        let digest = upload::ensure_blob(&client, source).await?;
        if let Some(fields) = body.as_object_mut() {
            fields.remove("code");
        }
        body["code_sha256"] = digest.into();
    }
    if requirements.is_some() && !args.file.is_dir() {
        // A single module travels as a bundle with its requirements; it keeps the module
        // name a single-file function has.
        body["entry"] = SINGLE_MODULE.into();
    }
    let answer = client
        .post(
            "/v1/functions",
            "application/json",
            serde_json::to_vec(&body)?.into(),
        )
        .await?
        .ok()?;
    if args.json {
        println!("{}", String::from_utf8_lossy(&answer.body));
    } else {
        let f: serde_json::Value = answer.json()?;
        println!(
            "registered {} version {}",
            f["name"].as_str().unwrap_or("?"),
            f["version"]
        );
        for line in change_lines(&f) {
            println!("{line}");
        }
    }
    Ok(exit::OK)
}

/// The size of the code file when it is a plain file over [`upload::UPLOAD_THRESHOLD`] sent
/// as it is (no requirements bundled in): it is uploaded from disk, never read whole.
fn large_file(args: &RegisterArgs, bundled: bool) -> Option<u64> {
    if bundled || args.file.as_os_str() == "-" {
        return None;
    }
    let meta = std::fs::metadata(&args.file).ok()?;
    (meta.is_file() && meta.len() > upload::UPLOAD_THRESHOLD).then_some(meta.len())
}

/// The runtime a new version of `name` keeps: the live version's, or `shell` for a new
/// function (or one the caller may not see).
async fn kept_runtime(client: &crate::client::Client, name: &str) -> String {
    live_runtime(client, name)
        .await
        .flatten()
        .unwrap_or_else(|| "shell".into())
}

/// The runtime of `name`'s live version: `Some(None)` for a function the server does not have
/// (404), `None` when the server could not be asked or would not say.
async fn live_runtime(client: &crate::client::Client, name: &str) -> Option<Option<String>> {
    let path = format!("/v1/functions/{}", crate::client::segment(name));
    let answer = client.get(&path).await.ok()?;
    if answer.status == hyper::StatusCode::NOT_FOUND {
        return Some(None);
    }
    let live = answer.ok().ok()?.json::<serde_json::Value>().ok()?;
    Some(live["runtime"].as_str().map(str::to_owned))
}

/// Refuses a `.py` file given without `--runtime` for a function that would run it as a shell
/// script (a new one, or one whose live version is `shell`): that is almost always a forgotten
/// `--runtime python`, which would otherwise only show at the first call.
async fn refuse_python_as_shell(
    client: &crate::client::Client,
    args: &RegisterArgs,
) -> anyhow::Result<()> {
    // A new function runs as shell; a server that cannot be asked is the registration's to
    // report.
    let runtime = match live_runtime(client, &args.name).await {
        Some(runtime) => runtime.unwrap_or_else(|| "shell".into()),
        None => return Ok(()),
    };
    if runtime != "shell" {
        return Ok(());
    }
    Err(exit::coded(
        exit::USAGE,
        format!(
            "{} looks like Python, but {} would run it with /bin/sh: add --runtime python (or --runtime shell if it really is a shell script)",
            args.file.display(),
            args.name
        ),
    ))
}

/// One `setting: old -> new` line per setting the new version changed.
fn change_lines(answer: &serde_json::Value) -> Vec<String> {
    let Some(changed) = answer["changed"].as_array() else {
        return Vec::new();
    };
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
    changed
        .iter()
        .map(|c| {
            format!(
                "{}: {} -> {}",
                text(&c["setting"]),
                text(&c["from"]),
                text(&c["to"])
            )
        })
        .collect()
}

/// The registration JSON: the code in base64 and every setting given on the command line.
fn request_body(args: &RegisterArgs, code: &[u8]) -> anyhow::Result<serde_json::Value> {
    let mut env = serde_json::Map::new();
    for pair in &args.env {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| exit::coded(exit::USAGE, format!("--env wants K=V, got {pair:?}")))?;
        env.insert(k.to_string(), v.into());
    }
    let mut body = serde_json::json!({
        "name": args.name,
        "code": base64::engine::general_purpose::STANDARD.encode(code),
    });
    // Python tracebacks name the file (or directory) registered rather than the bundle's path
    // (the server keeps it for `python` functions only).
    let source = args
        .file
        .file_name()
        .filter(|_| args.file.as_os_str() != "-");
    if let Some(source) = source {
        body["source"] = source.to_string_lossy().into_owned().into();
    }
    // Only what is given: the server keeps the previous version's value of the rest.
    let given = [
        ("runtime", args.runtime.clone().map(serde_json::Value::from)),
        ("env", (!env.is_empty()).then(|| env.into())),
        ("warm", args.warm.then_some(true.into())),
        ("allow_net", args.allow_net.then_some(true.into())),
        (
            "record_requests",
            args.record_requests.then_some(true.into()),
        ),
        ("reset", args.reset.then_some(true.into())),
    ];
    for (key, value) in given {
        if let Some(v) = value {
            body[key] = v;
        }
    }
    let text = |v: &Option<String>| v.clone().map(serde_json::Value::from);
    let number = |v: Option<u32>| v.map(serde_json::Value::from);
    let fields = [
        ("timeout", text(&args.timeout)),
        ("concurrency", number(args.concurrency)),
        ("queue_limit", number(args.queue_limit)),
        ("max_attempts", number(args.max_attempts)),
        ("min_warm", number(args.min_warm)),
        ("idle_timeout", text(&args.idle_timeout)),
        ("entry", text(&args.entry)),
        ("memory", text(&args.memory)),
        ("http_port", args.http_port.map(serde_json::Value::from)),
        ("http_concurrency", number(args.http_concurrency)),
    ];
    for (key, value) in fields {
        if let Some(v) = value {
            body[key] = v;
        }
    }
    Ok(body)
}

/// The module name of a single file sent with `--requirements`.
const SINGLE_MODULE: &str = "handler";

/// The `--requirements` file, checked as the worker will check it; refused for runtimes
/// other than `python` and with `--entry` on a single file.
fn read_requirements(args: &RegisterArgs) -> anyhow::Result<Option<Vec<u8>>> {
    let usage = |message: String| exit::coded(exit::USAGE, message);
    // Not given (and without --requirements), the runtime is the previous version's, which
    // the server checks.
    let runtime = args.runtime.as_deref().unwrap_or("python");
    let Some(path) = &args.requirements else {
        if runtime == "python" && args.file.is_dir() {
            let inside = args.file.join("requirements.txt");
            if let Ok(text) = std::fs::read_to_string(&inside) {
                check_requirements(&text, &inside)?;
            }
        }
        return Ok(None);
    };
    if runtime != "python" {
        return Err(usage(format!(
            "--requirements is for the python runtime, not {runtime}"
        )));
    }
    if args.entry.is_some() && !args.file.is_dir() {
        return Err(usage(
            "--entry names the module of a directory bundle; a single file with --requirements runs as module `handler`".into(),
        ));
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {}", path.display()))
        .map_err(|e| usage(format!("{e:#}")))?;
    check_requirements(&text, path)?;
    Ok(Some(text.into_bytes()))
}

/// Refuses a requirements file the worker would refuse (a usage error naming the file).
fn check_requirements(text: &str, path: &std::path::Path) -> anyhow::Result<()> {
    crate::exec::requirements::normalize(text)
        .map(drop)
        .map_err(|e| {
            // The message names `requirements.txt`: name the file given instead.
            let message = e.to_string();
            let named = match message.strip_prefix("requirements.txt") {
                Some(rest) => format!("{}{rest}", path.display()),
                None => format!("{}: {message}", path.display()),
            };
            exit::coded(exit::USAGE, named)
        })
}

/// Reads the code: a file, standard input (`-`), or a directory packed as a bundle; with
/// `requirements`, a file becomes a bundle too.
fn read_code(file: &PathBuf, requirements: Option<&[u8]>) -> anyhow::Result<Vec<u8>> {
    let usage = |e: anyhow::Error| exit::coded(exit::USAGE, format!("{e:#}"));
    if file.is_dir() {
        return bundle_dir(file, requirements)
            .with_context(|| format!("cannot bundle the directory {}", file.display()))
            .map_err(usage);
    }
    let mut code = Vec::new();
    if file.as_os_str() == "-" {
        std::io::stdin()
            .read_to_end(&mut code)
            .context("cannot read code from standard input")
            .map_err(usage)?;
    } else {
        code = std::fs::read(file)
            .with_context(|| format!("cannot read {}", file.display()))
            .map_err(usage)?;
    }
    match requirements {
        Some(requirements) => bundle_module(&code, requirements)
            .context("cannot bundle the module with its requirements")
            .map_err(usage),
        None => Ok(code),
    }
}

/// Directories a bundle never carries: version control and Python's byte-code caches. A
/// virtualenv (any directory holding `pyvenv.cfg`) is left out too: its links point into the
/// machine that made it, and the worker builds the function's own from `requirements.txt`.
const SKIPPED_DIRS: &[&str] = &[".git", ".hg", ".svn", "__pycache__"];

/// Packs a directory into a tar archive (paths relative to it, in name order, symlinks kept as
/// links); with `requirements`, they replace its top-level `requirements.txt`. Leaves out
/// [`SKIPPED_DIRS`] and virtualenvs, and says so on standard error; refuses a link that points
/// outside the directory, which no worker could follow.
fn bundle_dir(dir: &std::path::Path, requirements: Option<&[u8]>) -> anyhow::Result<Vec<u8>> {
    let mut bundle = DirBundle {
        archive: tar::Builder::new(Vec::new()),
        root: dir,
        skipped: Vec::new(),
    };
    bundle.archive.follow_symlinks(false);
    bundle.archive.mode(tar::HeaderMode::Deterministic);
    bundle.add_dir(std::path::Path::new(""), requirements.is_some())?;
    if let Some(requirements) = requirements {
        append_file(&mut bundle.archive, "requirements.txt", requirements)?;
    }
    if !bundle.skipped.is_empty() {
        eprintln!("left out of the bundle: {}", bundle.skipped.join(", "));
    }
    bundle
        .archive
        .into_inner()
        .context("cannot finish the archive")
}

/// A directory being packed by [`bundle_dir`].
struct DirBundle<'a> {
    archive: tar::Builder<Vec<u8>>,
    root: &'a std::path::Path,
    /// What was left out, as `path/ (why)`.
    skipped: Vec<String>,
}

impl DirBundle<'_> {
    /// Adds the directory `rel` (relative to the root; empty for the root) and what it holds;
    /// `replace_requirements` leaves out the top-level `requirements.txt`.
    fn add_dir(&mut self, rel: &std::path::Path, replace_requirements: bool) -> anyhow::Result<()> {
        let path = self.root.join(rel);
        let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(&path)
            .with_context(|| format!("cannot list {}", path.display()))?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .with_context(|| format!("cannot list {}", path.display()))?;
        names.sort();
        for name in names {
            if replace_requirements && rel.as_os_str().is_empty() && name == "requirements.txt" {
                continue;
            }
            let rel = rel.join(&name);
            let path = self.root.join(&rel);
            let meta = std::fs::symlink_metadata(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if meta.is_dir() {
                if let Some(why) = skipped_dir(&name, &path) {
                    self.skipped.push(format!("{}/ ({why})", rel.display()));
                    continue;
                }
                self.archive
                    .append_dir(&rel, &path)
                    .with_context(|| format!("cannot add {}", path.display()))?;
                self.add_dir(&rel, false)?;
                continue;
            }
            if meta.is_symlink() {
                let target = std::fs::read_link(&path)
                    .with_context(|| format!("cannot read the link {}", path.display()))?;
                if !crate::api::stays_inside(&rel, &target) {
                    anyhow::bail!(
                        "{} is a link to {}, outside the directory: a bundle cannot carry it; copy what it points to into the directory, or remove the link",
                        path.display(),
                        target.display()
                    );
                }
            }
            self.archive
                .append_path_with_name(&path, &rel)
                .with_context(|| format!("cannot add {}", path.display()))?;
        }
        Ok(())
    }
}

/// Why the directory `name` (at `path`) is left out of a bundle, if it is.
fn skipped_dir(name: &std::ffi::OsStr, path: &std::path::Path) -> Option<&'static str> {
    if path.join("pyvenv.cfg").is_file() {
        Some("a virtualenv: list its packages in requirements.txt")
    } else if name == "__pycache__" {
        Some("byte-code cache")
    } else if SKIPPED_DIRS.iter().any(|d| name == *d) {
        Some("version control")
    } else {
        None
    }
}

/// Packs one module as `handler.py` with its `requirements.txt`.
fn bundle_module(code: &[u8], requirements: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut archive = tar::Builder::new(Vec::new());
    append_file(&mut archive, &format!("{SINGLE_MODULE}.py"), code)?;
    append_file(&mut archive, "requirements.txt", requirements)?;
    archive.into_inner().context("cannot finish the archive")
}

/// Adds a regular file (mode 0644, no timestamp) to an archive.
fn append_file(
    archive: &mut tar::Builder<Vec<u8>>,
    name: &str,
    bytes: &[u8],
) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    archive
        .append_data(&mut header, name, bytes)
        .with_context(|| format!("cannot add {name}"))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cmd::{Cli, Command};

    fn register_args(argv: &[&str]) -> RegisterArgs {
        let argv = ["faasd", "register", "f", "code.sh"].iter().chain(argv);
        match Cli::try_parse_from(argv).expect("register parses").command {
            Command::Register(args) => args,
            other => panic!("not register: {other:?}"),
        }
    }

    #[test]
    fn the_body_holds_only_the_settings_given() {
        let args = register_args(&["--timeout", "5s", "--concurrency", "2", "--env", "A=b=c"]);
        let body = request_body(&args, b"echo").expect("a body");
        assert_eq!(
            body,
            serde_json::json!({
                "name": "f",
                "code": "ZWNobw==",
                "env": {"A": "b=c"},
                "timeout": "5s",
                "concurrency": 2,
                "source": "code.sh",
            })
        );
        let args = register_args(&["--runtime", "exec", "--warm", "--reset"]);
        let body = request_body(&args, b"echo").expect("a body");
        assert_eq!(
            body,
            serde_json::json!({
                "name": "f",
                "code": "ZWNobw==",
                "runtime": "exec",
                "warm": true,
                "reset": true,
                "source": "code.sh",
            })
        );
    }

    #[test]
    fn each_change_is_one_line() {
        let answer = serde_json::json!({"name": "f", "changed": [
            {"setting": "timeout", "from": "5s", "to": "10s"},
            {"setting": "env A", "from": "1", "to": "unset"},
        ]});
        assert_eq!(
            change_lines(&answer),
            ["timeout: 5s -> 10s", "env A: 1 -> unset"]
        );
        assert!(change_lines(&serde_json::json!({"name": "f"})).is_empty());
    }

    #[test]
    fn an_env_without_equals_is_a_usage_error() {
        let args = register_args(&["--env", "NOVALUE"]);
        let err = request_body(&args, b"echo").expect_err("not K=V");
        assert_eq!(exit::code_of(&err), exit::USAGE);
        assert_eq!(err.to_string(), "--env wants K=V, got \"NOVALUE\"");
    }

    /// The names and texts of a tar archive's files.
    fn files_of(archive: &[u8]) -> Vec<(String, String)> {
        let mut archive = tar::Archive::new(archive);
        let mut files = Vec::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry.path().expect("path").to_string_lossy().into_owned();
            let mut text = String::new();
            entry.read_to_string(&mut text).expect("text");
            files.push((name.trim_start_matches("./").to_string(), text));
        }
        files.sort();
        files
    }

    fn pair(name: &str, text: &str) -> (String, String) {
        (name.to_string(), text.to_string())
    }

    #[test]
    fn a_module_with_requirements_travels_as_handler_py() {
        let bundle = bundle_module(b"def handle(p): return p\n", b"six\n").expect("bundle");
        assert_eq!(
            files_of(&bundle),
            [
                pair("handler.py", "def handle(p): return p\n"),
                pair("requirements.txt", "six\n")
            ]
        );
    }

    #[test]
    fn the_flag_replaces_a_directory_bundles_requirements() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("lib")).expect("mkdir");
        std::fs::write(dir.path().join("lib/util.py"), "X = 1\n").expect("write");
        std::fs::write(dir.path().join("main.py"), "import lib.util\n").expect("write");
        std::fs::write(dir.path().join("requirements.txt"), "old\n").expect("write");
        let expected = |reqs: &str| {
            vec![
                pair("lib/util.py", "X = 1\n"),
                pair("main.py", "import lib.util\n"),
                pair("requirements.txt", reqs),
            ]
        };
        let kept = bundle_dir(dir.path(), None).expect("bundle");
        assert_eq!(files_of(&kept), expected("old\n"));
        let replaced = bundle_dir(dir.path(), Some(b"new\n")).expect("bundle");
        assert_eq!(files_of(&replaced), expected("new\n"));
    }

    /// The paths of a tar archive's entries, with `/` after directories and `-> target` after
    /// links.
    fn entries_of(archive: &[u8]) -> Vec<String> {
        let mut archive = tar::Archive::new(archive);
        let mut names = Vec::new();
        for entry in archive.entries().expect("entries") {
            let entry = entry.expect("entry");
            let name = entry.path().expect("path").to_string_lossy().into_owned();
            let kind = entry.header().entry_type();
            names.push(if kind.is_dir() {
                format!("{name}/")
            } else if kind.is_symlink() {
                let target = entry.link_name().expect("link").expect("target");
                format!("{name} -> {}", target.display())
            } else {
                name
            });
        }
        names
    }

    #[test]
    fn a_bundle_leaves_out_virtualenvs_and_caches_and_keeps_links_inside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for d in [".venv/bin", ".git", "lib/__pycache__", "env"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        std::fs::write(root.join(".venv/pyvenv.cfg"), "home = /usr/bin\n").expect("write");
        std::fs::write(root.join("env/pyvenv.cfg"), "home = /usr/bin\n").expect("write");
        std::os::unix::fs::symlink("/usr/bin/python3", root.join(".venv/bin/python3"))
            .expect("link");
        std::fs::write(root.join(".git/HEAD"), "ref\n").expect("write");
        std::fs::write(root.join("lib/__pycache__/util.pyc"), "").expect("write");
        std::fs::write(root.join("lib/util.py"), "X = 1\n").expect("write");
        std::fs::write(root.join("main.py"), "import lib.util\n").expect("write");
        std::os::unix::fs::symlink("../main.py", root.join("lib/entry.py")).expect("link");
        let bundle = bundle_dir(root, None).expect("bundle");
        assert_eq!(
            entries_of(&bundle),
            [
                "lib/",
                "lib/entry.py -> ../main.py",
                "lib/util.py",
                "main.py"
            ]
        );

        std::os::unix::fs::symlink("/etc/hostname", root.join("lib/host")).expect("link");
        let err = bundle_dir(root, None).expect_err("a link outside");
        let message = format!("{err:#}");
        assert!(
            message.contains("lib/host is a link to /etc/hostname"),
            "{message}"
        );
    }

    #[test]
    fn requirements_for_another_runtime_or_with_entry_are_usage_errors() {
        let mut args = register_args(&["--requirements", "reqs.txt", "--runtime", "shell"]);
        let err = read_requirements(&args).expect_err("shell");
        assert_eq!(exit::code_of(&err), exit::USAGE);
        assert_eq!(
            err.to_string(),
            "--requirements is for the python runtime, not shell"
        );
        args.runtime = Some("python".into());
        args.entry = Some("other".into());
        let err = read_requirements(&args).expect_err("entry");
        assert_eq!(exit::code_of(&err), exit::USAGE);
    }
}

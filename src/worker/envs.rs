//! Per-function Python environments: a `python` bundle that carries a top-level
//! `requirements.txt` runs in a virtualenv of its own, built once per requirements hash under
//! `<code cache>/envs/`.
//!
//! The requirements are read from the bundle (a tar archive) once per code hash and normalized
//! (comments, blank lines and extra whitespace dropped, lines sorted and deduplicated). An env
//! is named by the SHA-256 of that text and of the base interpreter's identity (its real path
//! and version), so functions and versions with the same requirements share one env, and
//! another Python gets another. Each env is a directory `envs/<hash>/` holding the
//! `requirements.txt` it was built from, the build's log (`build.log`), the virtualenv
//! (`venv/`) and, written last, the `ready` marker: a build that crashed left no marker and
//! is redone from scratch. The virtualenv is built where it stays (a virtualenv records its
//! own path), with `python -m venv` then pip, or with `uv` when it is on `PATH`.
//!
//! Calls that need the same env at once share one build, which runs detached from them: a
//! call that gives up waiting does not cancel it. A failed build is remembered for
//! [`FAILURE_MEMORY`], so a flood of calls does not rebuild it each time; then it is retried.
//!
//! The build runs outside the sandbox, as the worker's user, so it installs wheels only
//! (`--only-binary :all:`: no package's code runs on the worker), and a requirements file may
//! not carry options that reach outside it (`-r`, `-e`, `--no-binary`...); an index may be
//! named (`--index-url`, `--extra-index-url`) and pre-releases allowed (`--pre`).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::{OnceCell, Semaphore, oneshot};

use crate::exec::{requirements, runtimes};
use crate::proto::{CodeHash, hex};

/// How long a failed build is remembered before a call tries again.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(30);

/// The longest one build (virtualenv and install) may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

/// How much of the end of a failed build's log goes into the call's logs.
const LOG_TAIL_BYTES: u64 = 16 * 1024;

/// Builds running at once (others wait their turn).
const PARALLEL_BUILDS: usize = 2;

/// Why a function's environment cannot be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The bundle's requirements cannot be read or are refused.
    #[error(transparent)]
    Requirements(#[from] requirements::Error),
    /// The worker has no Python interpreter to build with.
    #[error("no Python interpreter to build the environment with: {source}")]
    NoPython {
        /// Why.
        source: runtimes::Error,
    },
    /// Asking the interpreter who it is failed.
    #[error("cannot ask {} for its version: {reason}", python.display())]
    ProbePython {
        /// The interpreter.
        python: PathBuf,
        /// Why.
        reason: String,
    },
    /// A file or directory of the env could not be made.
    #[error("cannot prepare the environment at {}: {source}", path.display())]
    Prepare {
        /// What was being made.
        path: PathBuf,
        /// Why.
        source: Arc<std::io::Error>,
    },
    /// A build step failed; the end of its output is in `log`.
    #[error(
        "building the function's Python environment failed: {step} {how} (its output is in the logs)"
    )]
    Build {
        /// The step (`python -m venv`, `pip install`...).
        step: String,
        /// How it ended (`exited with exit status: 1`, `timed out after 10m`).
        how: String,
        /// The end of the build's log.
        log: String,
    },
    /// The build task ended without an answer (it panicked).
    #[error("the environment's build stopped without an answer")]
    BuildLost,
}

impl Error {
    /// What the failed call's logs show: the end of the build's output, if any.
    pub fn logs(&self) -> Bytes {
        match self {
            Error::Build { log, .. } => Bytes::from(log.clone()),
            _ => Bytes::new(),
        }
    }
}

/// A function's requirements, normalized, and the name of their env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The env's directory name under `envs/`.
    pub name: String,
    /// The normalized requirements the env is built from.
    pub requirements: String,
}

/// A bundle's env, and how long the call waited for its build.
#[derive(Debug)]
pub struct Got {
    /// The virtualenv (its interpreter is `bin/python`); `None` when the bundle has no
    /// requirements.
    pub venv: Result<Option<PathBuf>, Error>,
    /// How long the call waited for a build (zero when it found the env ready, or its
    /// failure remembered).
    pub waited: Duration,
}

/// What becomes of one env.
enum Build {
    Ready,
    Building(Vec<oneshot::Sender<Result<(), Error>>>),
    Failed { at: Instant, error: Error },
}

/// A worker's function environments: a cheap, cloneable handle.
#[derive(Clone)]
pub struct Envs {
    inner: Arc<EnvsInner>,
}

struct EnvsInner {
    /// `<code cache>/envs`.
    dir: PathBuf,
    /// The interpreter envs are built with, or why there is none.
    python: Result<PathBuf, runtimes::Error>,
    /// Its identity (real path and version), asked once.
    identity: OnceCell<Result<String, Error>>,
    /// Each bundle's normalized requirements, read once per code hash (`None`: it has none).
    wanted: Mutex<HashMap<CodeHash, Result<Option<String>, Error>>>,
    builds: Mutex<HashMap<String, Build>>,
    slots: Semaphore,
}

impl Envs {
    /// Envs kept in `dir` (made when the first is built), built with `python`.
    pub fn new(dir: PathBuf, python: Result<PathBuf, runtimes::Error>) -> Envs {
        Envs {
            inner: Arc::new(EnvsInner {
                dir,
                python,
                identity: OnceCell::new(),
                wanted: Mutex::new(HashMap::new()),
                builds: Mutex::new(HashMap::new()),
                slots: Semaphore::new(PARALLEL_BUILDS),
            }),
        }
    }

    /// The env a `python` bundle runs in, built first if needed.
    pub async fn for_bundle(&self, hash: CodeHash, bundle: &Path) -> Got {
        let started = Instant::now();
        let mut waited = Duration::ZERO;
        let venv = async {
            let Some(text) = self.requirements_of(hash, bundle).await? else {
                return Ok(None);
            };
            let wanted = wanted(&self.identity().await?, &text);
            let venv = self.env_dir(&wanted.name).join("venv");
            if let Some(built) = self.ready_or_wait(wanted)? {
                let built = built.await;
                waited = started.elapsed();
                built.map_err(|_| Error::BuildLost)??;
            }
            Ok(Some(venv))
        }
        .await;
        Got { venv, waited }
    }

    /// The normalized requirements of a bundle (`None`: it has none), read once per code hash.
    async fn requirements_of(
        &self,
        hash: CodeHash,
        bundle: &Path,
    ) -> Result<Option<String>, Error> {
        if let Some(known) = self.lock_wanted().get(&hash) {
            return known.clone();
        }
        let path = bundle.to_owned();
        let read = move || {
            let text = requirements::read(&path)?;
            text.map(|t| requirements::normalize(&t)).transpose()
        };
        let found = tokio::task::spawn_blocking(read)
            .await
            .map_err(|_| Error::BuildLost)?
            .map(|text| text.filter(|t| !t.is_empty()))
            .map_err(Error::from);
        // A bundle that could not be read is tried again by the next call.
        use requirements::Error::ReadBundle;
        if !matches!(found, Err(Error::Requirements(ReadBundle { .. }))) {
            self.lock_wanted().insert(hash, found.clone());
        }
        found
    }

    /// The base interpreter's identity, asked once.
    async fn identity(&self) -> Result<String, Error> {
        let python = self
            .inner
            .python
            .clone()
            .map_err(|source| Error::NoPython { source })?;
        self.inner
            .identity
            .get_or_init(|| probe_identity(python))
            .await
            .clone()
    }

    fn lock_wanted(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<CodeHash, Result<Option<String>, Error>>> {
        self.inner.wanted.lock().expect("envs lock poisoned")
    }

    fn lock_builds(&self) -> std::sync::MutexGuard<'_, HashMap<String, Build>> {
        self.inner.builds.lock().expect("envs lock poisoned")
    }

    fn env_dir(&self, name: &str) -> PathBuf {
        self.inner.dir.join(name)
    }

    /// `None` when the env is ready; else a wait for its build (started here when none runs).
    /// A build that failed within [`FAILURE_MEMORY`] fails at once.
    fn ready_or_wait(
        &self,
        wanted: Wanted,
    ) -> Result<Option<oneshot::Receiver<Result<(), Error>>>, Error> {
        let mut builds = self.lock_builds();
        let (tx, rx) = oneshot::channel();
        match builds.get_mut(&wanted.name) {
            Some(Build::Ready) => return Ok(None),
            Some(Build::Failed { at, error }) if at.elapsed() < FAILURE_MEMORY => {
                return Err(error.clone());
            }
            Some(Build::Building(waiters)) => {
                waiters.push(tx);
                return Ok(Some(rx));
            }
            Some(Build::Failed { .. }) | None => {}
        }
        if self.env_dir(&wanted.name).join("ready").exists() {
            builds.insert(wanted.name, Build::Ready);
            return Ok(None);
        }
        builds.insert(wanted.name.clone(), Build::Building(vec![tx]));
        let envs = self.clone();
        tokio::spawn(async move { envs.build_and_tell(wanted).await });
        Ok(Some(rx))
    }

    /// Builds an env (detached from the calls waiting for it) and tells them how it went.
    async fn build_and_tell(&self, wanted: Wanted) {
        let result = match self.inner.slots.acquire().await {
            Ok(_slot) => self.build(&wanted).await,
            Err(_) => Err(Error::BuildLost),
        };
        if let Err(error) = &result {
            tracing::warn!(env = %wanted.name, %error, "cannot build a function environment");
        } else {
            tracing::info!(env = %wanted.name, "function environment built");
        }
        let state = match &result {
            Ok(()) => Build::Ready,
            Err(error) => Build::Failed {
                at: Instant::now(),
                error: error.clone(),
            },
        };
        let waiters = match self.lock_builds().insert(wanted.name, state) {
            Some(Build::Building(waiters)) => waiters,
            _ => Vec::new(),
        };
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }

    /// Builds the env from scratch: its directory, the virtualenv, the install, the marker.
    async fn build(&self, wanted: &Wanted) -> Result<(), Error> {
        let python = self
            .inner
            .python
            .clone()
            .map_err(|source| Error::NoPython { source })?;
        let dir = self.env_dir(&wanted.name);
        let plan = Plan::new(&python, &dir, which("uv"));
        let prepare = |path: &Path, source: std::io::Error| Error::Prepare {
            path: path.to_owned(),
            source: Arc::new(source),
        };
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(prepare(&dir, e)),
            _ => {}
        }
        std::fs::create_dir_all(&dir).map_err(|e| prepare(&dir, e))?;
        let requirements = dir.join("requirements.txt");
        std::fs::write(&requirements, &wanted.requirements)
            .map_err(|e| prepare(&requirements, e))?;
        let log = dir.join("build.log");
        let deadline = tokio::time::Instant::now() + BUILD_TIMEOUT;
        for (step, argv) in plan.steps {
            run_step(&step, &argv, &log, deadline).await?;
        }
        let ready = dir.join("ready");
        std::fs::write(&ready, &wanted.requirements).map_err(|e| prepare(&ready, e))
    }
}

/// The commands that build one env.
struct Plan {
    steps: Vec<(String, Vec<std::ffi::OsString>)>,
}

impl Plan {
    /// `python -m venv` and pip, or `uv venv` and `uv pip` when `uv` is given.
    fn new(python: &Path, dir: &Path, uv: Option<PathBuf>) -> Plan {
        let venv = dir.join("venv");
        let env_python = venv.join("bin").join("python");
        let requirements = dir.join("requirements.txt");
        let os = |parts: &[&std::ffi::OsStr]| parts.iter().map(|p| p.to_os_string()).collect();
        let steps = match uv {
            Some(uv) => vec![
                (
                    "uv venv".to_string(),
                    os(&[
                        uv.as_ref(),
                        "venv".as_ref(),
                        "--python".as_ref(),
                        python.as_ref(),
                        venv.as_ref(),
                    ]),
                ),
                (
                    "uv pip install".to_string(),
                    os(&[
                        uv.as_ref(),
                        "pip".as_ref(),
                        "install".as_ref(),
                        "--python".as_ref(),
                        env_python.as_ref(),
                        "--only-binary".as_ref(),
                        ":all:".as_ref(),
                        "-r".as_ref(),
                        requirements.as_ref(),
                    ]),
                ),
            ],
            None => vec![
                (
                    "python -m venv".to_string(),
                    os(&[
                        python.as_ref(),
                        "-m".as_ref(),
                        "venv".as_ref(),
                        venv.as_ref(),
                    ]),
                ),
                (
                    "pip install".to_string(),
                    os(&[
                        env_python.as_ref(),
                        "-m".as_ref(),
                        "pip".as_ref(),
                        "install".as_ref(),
                        "--disable-pip-version-check".as_ref(),
                        "--no-input".as_ref(),
                        "--only-binary".as_ref(),
                        ":all:".as_ref(),
                        "-r".as_ref(),
                        requirements.as_ref(),
                    ]),
                ),
            ],
        };
        Plan { steps }
    }
}

/// Runs one build step with its output appended to `log`, until `deadline`.
async fn run_step(
    step: &str,
    argv: &[std::ffi::OsString],
    log: &Path,
    deadline: tokio::time::Instant,
) -> Result<(), Error> {
    let failed = |how: String| Error::Build {
        step: step.to_string(),
        how,
        log: log_tail(log),
    };
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
    };
    let (out, err) = match (open(), open()) {
        (Ok(out), Ok(err)) => (out, err),
        (Err(e), _) | (_, Err(e)) => {
            return Err(Error::Prepare {
                path: log.to_owned(),
                source: Arc::new(e),
            });
        }
    };
    let mut command = tokio::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env_remove("PYTHONPATH")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| failed(format!("could not start ({e})")))?;
    match tokio::time::timeout_at(deadline, child.wait()).await {
        Err(_) => Err(failed(format!(
            "did not finish within {}",
            crate::units::format_duration(BUILD_TIMEOUT)
        ))),
        Ok(Err(e)) => Err(failed(format!("could not be waited for ({e})"))),
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(failed(format!("failed ({status})"))),
    }
}

/// The last [`LOG_TAIL_BYTES`] of a build log, with the environment's directory (the log's)
/// left out of the paths it names: callers see `requirements.txt`, not where the worker keeps
/// its data.
fn log_tail(log: &Path) -> String {
    let Ok(mut file) = std::fs::File::open(log) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
    let mut tail = Vec::new();
    let _ = file.take(LOG_TAIL_BYTES).read_to_end(&mut tail);
    let tail = String::from_utf8_lossy(&tail).into_owned();
    match log
        .parent()
        .and_then(Path::to_str)
        .filter(|d| !d.is_empty())
    {
        Some(dir) => tail.replace(&format!("{dir}/"), ""),
        None => tail,
    }
}

/// A program's path when it is on `PATH`.
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Asks the interpreter for its base interpreter's real path and its version.
async fn probe_identity(python: PathBuf) -> Result<String, Error> {
    const PROBE: &str = "import os, sys; \
        print(os.path.realpath(getattr(sys, '_base_executable', sys.executable))); \
        print(sys.version)";
    let failed = |reason: String| Error::ProbePython {
        python: python.clone(),
        reason,
    };
    let run = tokio::process::Command::new(&python)
        .args(["-c", PROBE])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .map_err(|_| failed("it did not answer within 30s".into()))?
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The env for `requirements` (normalized) under the interpreter `identity`.
pub fn wanted(identity: &str, requirements: &str) -> Wanted {
    let mut hash = Sha256::new();
    hash.update(b"faasd python env 1\n");
    hash.update(identity.as_bytes());
    hash.update(b"\n\n");
    hash.update(requirements.as_bytes());
    Wanted {
        name: hex(hash.finalize().as_slice()),
        requirements: requirements.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::requirements::tests::tar_of;

    #[test]
    fn the_env_name_follows_the_requirements_and_the_interpreter() {
        let py311 = "/usr/bin/python3.11\n3.11.7";
        let a = wanted(py311, "six==1.16.0\n");
        assert_eq!(a, wanted(py311, "six==1.16.0\n"));
        assert_eq!(a.name.len(), 64);
        assert_ne!(a.name, wanted(py311, "six==1.15.0\n").name);
        assert_ne!(
            a.name,
            wanted("/usr/bin/python3.12\n3.12.1", "six==1.16.0\n").name
        );
    }

    #[test]
    fn a_failed_build_keeps_the_end_of_its_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("build.log");
        let mut text = "x".repeat(LOG_TAIL_BYTES as usize);
        text.push_str("ERROR: No matching distribution found for nothing-here\n");
        std::fs::write(&log, &text).expect("write");
        let tail = log_tail(&log);
        assert_eq!(tail.len(), LOG_TAIL_BYTES as usize);
        assert!(tail.ends_with("No matching distribution found for nothing-here\n"));
    }

    #[test]
    fn a_build_log_names_no_path_of_the_worker_s() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("build.log");
        let line = format!(
            "ERROR: Invalid requirement: 'six[' (from line 1 of {}/requirements.txt)\n",
            dir.path().display()
        );
        std::fs::write(&log, line).expect("write");
        assert_eq!(
            log_tail(&log),
            "ERROR: Invalid requirement: 'six[' (from line 1 of requirements.txt)\n"
        );
    }

    #[test]
    fn the_build_plan_uses_uv_when_it_is_there() {
        let dir = Path::new("/cache/envs/abc");
        let pip = Plan::new(Path::new("/usr/bin/python3"), dir, None);
        let steps: Vec<&str> = pip.steps.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(steps, ["python -m venv", "pip install"]);
        assert_eq!(pip.steps[1].1[0], "/cache/envs/abc/venv/bin/python");
        let uv = Plan::new(Path::new("/usr/bin/python3"), dir, Some("/bin/uv".into()));
        let steps: Vec<&str> = uv.steps.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(steps, ["uv venv", "uv pip install"]);
        for plan in [pip, uv] {
            let install = plan.steps[1].1.join(std::ffi::OsStr::new(" "));
            assert!(
                install
                    .to_string_lossy()
                    .contains("--only-binary :all: -r /cache/envs/abc/requirements.txt"),
                "{install:?}"
            );
        }
    }

    /// Envs built with a stand-in `python` script (it makes `venv/bin/python` and fails the
    /// install when the requirements name `fail`), counting its runs in `runs`.
    fn fake_envs(dir: &Path) -> Envs {
        let python = dir.join("python");
        let runs = dir.join("runs");
        let script = format!(
            "#!/bin/sh\necho run >> {runs}\n\
             case \"$1\" in\n\
             -c) echo /fake/python; echo 3.0 ;;\n\
             -m) if [ \"$2\" = venv ]; then mkdir -p \"$3/bin\" && ln -s {python} \"$3/bin/python\"; fi ;;\n\
             esac\n\
             if [ \"$2\" = pip ] && grep -q fail \"$9\"; then echo 'ERROR: no such package' >&2; exit 1; fi\n",
            runs = runs.display(),
            python = python.display(),
        );
        std::fs::write(&python, script).expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Envs::new(dir.join("envs"), Ok(python))
    }

    fn runs(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join("runs")).map_or(0, |t| t.lines().count())
    }

    fn bundle(dir: &Path, name: &str, requirements: &str) -> (CodeHash, PathBuf) {
        let path = dir.join(name);
        std::fs::write(
            &path,
            tar_of(&[("main.py", ""), ("requirements.txt", requirements)]),
        )
        .expect("write");
        (Sha256::digest(name.as_bytes()).into(), path)
    }

    /// The env a call got, which must be there.
    fn venv(got: Got) -> PathBuf {
        got.venv.expect("built").expect("an env")
    }

    #[tokio::test]
    async fn concurrent_calls_share_one_build_and_later_ones_reuse_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let envs = fake_envs(dir.path());
        let (h1, b1) = bundle(dir.path(), "v1", "six\n");
        let (h2, b2) = bundle(dir.path(), "v2", "# same\nsix\n");
        let (first, second) = tokio::join!(envs.for_bundle(h1, &b1), envs.for_bundle(h2, &b2));
        assert!(
            !first.waited.is_zero(),
            "the first call waited for no build"
        );
        let (first, second) = (venv(first), venv(second));
        assert_eq!(first, second);
        assert!(first.join("bin/python").exists());
        // One probe, one venv, one install.
        assert_eq!(runs(dir.path()), 3);
        let again = envs.for_bundle(h1, &b1).await;
        assert_eq!(again.waited, Duration::ZERO);
        assert_eq!(venv(again), first);
        // A new worker finds the env on disk.
        let reopened = Envs::new(dir.path().join("envs"), envs.inner.python.clone());
        assert_eq!(venv(reopened.for_bundle(h1, &b1).await), first);
        assert_eq!(runs(dir.path()), 4, "only the new worker's probe ran");
        let listed = std::fs::read_dir(dir.path().join("envs"))
            .expect("list")
            .count();
        assert_eq!(listed, 1);
    }

    #[tokio::test]
    async fn a_failed_build_is_remembered_with_its_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let envs = fake_envs(dir.path());
        let (hash, path) = bundle(dir.path(), "v1", "fail\n");
        let first = envs.for_bundle(hash, &path).await;
        assert!(!first.waited.is_zero());
        let err = first.venv.expect_err("fails");
        assert!(
            matches!(err, Error::Build { ref step, .. } if step == "pip install"),
            "{err:?}"
        );
        assert!(String::from_utf8_lossy(&err.logs()).contains("ERROR: no such package"));
        let before = runs(dir.path());
        let again = envs.for_bundle(hash, &path).await;
        assert_eq!(
            again.waited,
            Duration::ZERO,
            "a remembered failure waits for nothing"
        );
        assert_eq!(
            again.venv.expect_err("remembered").to_string(),
            err.to_string()
        );
        assert_eq!(
            runs(dir.path()),
            before,
            "rebuilt within the failure memory"
        );
    }

    #[tokio::test]
    async fn a_bundle_without_requirements_needs_no_env() {
        let dir = tempfile::tempdir().expect("tempdir");
        let envs = fake_envs(dir.path());
        let path = dir.path().join("module.py");
        std::fs::write(&path, "def handle(p):\n    return p\n").expect("write");
        let got = envs.for_bundle([7; 32], &path).await;
        assert!(got.venv.expect("no env").is_none());
        assert_eq!(runs(dir.path()), 0);
    }
}

//! How each runtime's executor is launched: its command line and the environment it adds, and
//! the Python interpreter and harness the `python` and `pickle` runtimes share. An interpreter
//! that cannot be resolved is an [`Error`] kept for the worker's life: `shell` and `exec`
//! functions still run, and every `python` or `pickle` call fails with it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::oci;
use crate::proto::{Isolation, Runtime};
use crate::sandbox::{Sandbox, shim};

/// The embedded Python harness (see `harness.py`).
const HARNESS: &str = include_str!("harness.py");

/// Where the sandbox shows the function's bundle.
const SANDBOX_BUNDLE: &str = shim::BUNDLE;

/// Where the sandbox shows the Python harness.
const SANDBOX_HARNESS: &str = "/faasd/harness.py";

/// Where the sandbox shows a function's own virtualenv (it finds its `pyvenv.cfg` beside its
/// interpreter, so it runs from any path).
const SANDBOX_ENV: &str = "/faasd/env";

/// Where the sandbox shows the `i`th `--python-path` directory.
fn sandbox_python_path(i: usize) -> PathBuf {
    PathBuf::from(format!("/faasd/python-path/{i}"))
}

/// The shell that runs `shell` functions.
const SHELL: &str = "/bin/sh";

/// Why the Python interpreter cannot be used (and so why a `python` or `pickle` function
/// cannot run).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Running the interpreter to ask where it lives failed.
    #[error("cannot run {}: {source}", python.display())]
    PythonStart {
        /// The interpreter asked for.
        python: PathBuf,
        /// Why it did not start (shared: every call that needs it gets this error).
        source: Arc<std::io::Error>,
    },
    /// The interpreter ran but exited with a failure.
    #[error("{} failed: {stderr}", python.display())]
    PythonFailed {
        /// The interpreter asked for.
        python: PathBuf,
        /// What it wrote on stderr, trimmed.
        stderr: String,
    },
    /// The interpreter did not print where it lives and imports from.
    #[error("{} did not say where it lives", python.display())]
    PythonLocationUnknown {
        /// The interpreter asked for.
        python: PathBuf,
    },
    /// An `oci` function needs its own root, which only the sandbox's namespaces give.
    #[error(
        "an oci function needs the sandbox's namespaces for its own root filesystem, and this worker runs without them (--sandbox none, or a machine that refuses namespaces)"
    )]
    ImageWithoutNamespaces,
    /// The image's config names nothing to run.
    #[error("the image's config has neither Entrypoint nor Cmd: nothing to run")]
    ImageWithoutCommand,
    /// An `oci` function's command line comes from its unpacked image, not from its bundle.
    #[error("an oci function runs from its unpacked image")]
    ImageNotUnpacked,
}

/// A resolved Python interpreter.
#[derive(Debug, Clone)]
struct Python {
    /// The interpreter as it names itself (`sys.executable`): a launcher script such as a pyenv
    /// shim is resolved to the interpreter it starts, but a virtualenv's interpreter stays the
    /// venv's (resolving its symlink would step out of the venv and lose its packages).
    path: PathBuf,
    /// Every directory it imports from (its prefixes, base prefixes, site-packages, user site,
    /// `.pth` additions), outermost only: the sandbox shows each read-only at its own path.
    visible: Vec<PathBuf>,
    /// Its user base (`site.USER_BASE`) when a user site directory exists, so executors, whose
    /// `HOME` is their working directory, still find the packages installed with `pip --user`.
    user_base: Option<PathBuf>,
}

/// Asks the interpreter where it lives and what it imports from, as one JSON object.
const PYTHON_PROBE: &str = r#"
import json, os, site, sys
paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
paths.update(p for p in sys.path if p)
try:
    paths.update(site.getsitepackages())
except AttributeError:
    pass
user_site = site.getusersitepackages() if site.ENABLE_USER_SITE else None
user_base = site.getuserbase() if user_site and os.path.isdir(user_site) else None
if user_base:
    paths.add(user_site)
print(json.dumps({
    "executable": sys.executable,
    "paths": sorted(p for p in paths if os.path.isdir(p)),
    "user_base": user_base,
}))
"#;

/// What [`PYTHON_PROBE`] prints.
#[derive(Debug, serde::Deserialize)]
struct ProbeAnswer {
    executable: PathBuf,
    paths: Vec<PathBuf>,
    user_base: Option<PathBuf>,
}

/// What a worker launches executors with.
#[derive(Debug, Clone)]
pub struct Runtimes {
    /// The Python interpreter, or why there is none.
    python: Result<Python, Error>,
    /// Executors run in the sandbox when set.
    sandbox: Option<Sandbox>,
    /// Directories put on `PYTHONPATH` (to resolve functions pickled by reference).
    python_path: Vec<PathBuf>,
    /// Where the harness was written.
    harness: PathBuf,
    /// The function's own virtualenv (see [`Runtimes::in_env`]), whose interpreter runs
    /// `python` executors instead of the worker's.
    function_env: Option<PathBuf>,
    /// `python` bundles run as programs that listen (HTTP services), not as handlers.
    serving: bool,
}

impl Runtimes {
    /// Resolves the Python interpreter (`python3` on `PATH` unless `python` names one) once,
    /// through any launcher script such as a pyenv shim (so no call pays for it) but never out
    /// of a virtualenv, and writes the harness into `dir`.
    pub fn new(
        python: Option<&Path>,
        python_path: Vec<PathBuf>,
        dir: &Path,
        sandbox: Option<Sandbox>,
    ) -> std::io::Result<Runtimes> {
        std::fs::create_dir_all(dir)?;
        let harness = dir.join("faasd_harness.py");
        std::fs::write(&harness, HARNESS)?;
        let python = resolve_python(python.unwrap_or(Path::new("python3")));
        match &python {
            Ok(found) => tracing::info!(python = %found.path.display(), "python runtime ready"),
            Err(why) => tracing::warn!("python runtimes unavailable: {why}"),
        }
        let python_path = python_path
            .into_iter()
            .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
            .collect();
        Ok(Runtimes {
            python,
            sandbox,
            python_path,
            harness,
            function_env: None,
            serving: false,
        })
    }

    /// Whether this worker can start executors of `runtime`: `python` and `pickle` need an
    /// interpreter, `oci` the sandbox's namespaces (its own root); the others run anywhere.
    pub fn can_run(&self, runtime: Runtime) -> bool {
        match runtime {
            Runtime::Shell | Runtime::Exec => true,
            Runtime::Python | Runtime::Pickle => self.python.is_ok(),
            Runtime::Oci => self.sandbox.as_ref().is_some_and(|s| s.namespaces),
        }
    }

    /// The runtimes [`Runtimes::can_run`] allows.
    pub fn runnable(&self) -> Vec<Runtime> {
        Runtime::ALL
            .into_iter()
            .filter(|r| self.can_run(*r))
            .collect()
    }

    /// The worker's Python interpreter, or why there is none.
    pub fn python(&self) -> Result<&Path, Error> {
        self.python
            .as_ref()
            .map(|p| p.path.as_path())
            .map_err(Clone::clone)
    }

    /// These runtimes with `python` executors running in the virtualenv `env` (shown read-only
    /// at `/faasd/env` inside the sandbox; its interpreter links into the base installation,
    /// which the sandbox already shows).
    pub fn in_env(&self, env: &Path) -> Runtimes {
        Runtimes {
            function_env: Some(env.to_owned()),
            ..self.clone()
        }
    }

    /// Whether an executor with `isolation` gets a network namespace of its own.
    pub fn isolates_network(&self, isolation: Isolation) -> bool {
        self.sandbox.as_ref().is_some_and(|s| s.namespaces) && !isolation.allow_net
    }

    /// These runtimes, with `python` bundles run as HTTP services: the harness runs the
    /// module as `__main__`, which listens on its port.
    pub fn serving(&self) -> Runtimes {
        Runtimes {
            serving: true,
            ..self.clone()
        }
    }

    /// The command line that runs `bundle` under `runtime` (inside the sandbox when the worker
    /// has one; `timeout` sets its CPU limit).
    pub fn command(
        &self,
        runtime: Runtime,
        bundle: &Path,
        timeout: Duration,
        isolation: Isolation,
    ) -> Result<Vec<OsString>, Error> {
        let Some(sandbox) = &self.sandbox else {
            return self.program(runtime, bundle, &self.harness, self.function_env.as_deref());
        };
        if !sandbox.namespaces {
            // No private filesystem: the program sees the host's paths.
            let argv =
                self.program(runtime, bundle, &self.harness, self.function_env.as_deref())?;
            return Ok(shim::wrap(
                &sandbox.faasd,
                &sandbox.config(timeout, Vec::new(), isolation),
                argv,
            ));
        }
        // Inside, the bundle and the harness sit at fixed paths; everything the interpreter
        // imports from at its own path (its location is how it finds its library and a venv).
        let mut read_only = vec![(bundle.to_owned(), PathBuf::from(SANDBOX_BUNDLE))];
        if let (Runtime::Python | Runtime::Pickle, Ok(python)) = (runtime, &self.python) {
            read_only.push((self.harness.clone(), PathBuf::from(SANDBOX_HARNESS)));
            read_only.extend(python.visible.iter().map(|dir| (dir.clone(), dir.clone())));
            for (i, dir) in self.python_path.iter().enumerate() {
                read_only.push((dir.clone(), sandbox_python_path(i)));
            }
        }
        if let (Runtime::Python, Some(env)) = (runtime, &self.function_env) {
            read_only.push((env.clone(), PathBuf::from(SANDBOX_ENV)));
        }
        let argv = self.program(
            runtime,
            Path::new(SANDBOX_BUNDLE),
            Path::new(SANDBOX_HARNESS),
            self.function_env.as_ref().map(|_| Path::new(SANDBOX_ENV)),
        )?;
        Ok(shim::wrap(
            &sandbox.faasd,
            &sandbox.config(timeout, read_only, isolation),
            argv,
        ))
    }

    /// The command line that runs an unpacked image's entrypoint and command in the sandbox,
    /// with the image as the root and its `WorkingDir` as the working directory.
    pub fn image_command(
        &self,
        rootfs: &oci::Rootfs,
        timeout: Duration,
        isolation: Isolation,
    ) -> Result<Vec<OsString>, Error> {
        let sandbox = self
            .sandbox
            .as_ref()
            .filter(|s| s.namespaces)
            .ok_or(Error::ImageWithoutNamespaces)?;
        let argv: Vec<OsString> = rootfs.config.argv().into_iter().map(Into::into).collect();
        if argv.is_empty() {
            return Err(Error::ImageWithoutCommand);
        }
        let mut config = sandbox.config(timeout, Vec::new(), isolation);
        config.rootfs = Some(rootfs.path.clone());
        let workdir = &rootfs.config.working_dir;
        config.workdir = (!workdir.is_empty()).then(|| PathBuf::from(workdir));
        Ok(shim::wrap(&sandbox.faasd, &config, argv))
    }

    /// An image function's environment: the image's `Env`, then the function's own variables
    /// over it; `HOME` and `TMPDIR` are `/tmp` unless one of them sets them.
    pub fn image_env(
        &self,
        rootfs: &oci::Rootfs,
        env: &[(String, String)],
    ) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = Vec::new();
        let image = rootfs.config.env.iter().filter_map(|entry| {
            let (k, v) = entry.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        });
        for (k, v) in image.chain(env.iter().cloned()) {
            all.retain(|(name, _)| *name != k);
            all.push((k, v));
        }
        for k in ["HOME", "TMPDIR"] {
            if !all.iter().any(|(name, _)| name == k) {
                all.push((k.to_string(), shim::WORKDIR.to_string()));
            }
        }
        all
    }

    /// The command line outside any sandbox, with the bundle, the harness and the function's
    /// virtualenv (if any) at the paths given.
    fn program(
        &self,
        runtime: Runtime,
        bundle: &Path,
        harness: &Path,
        function_env: Option<&Path>,
    ) -> Result<Vec<OsString>, Error> {
        Ok(match runtime {
            Runtime::Shell => vec![SHELL.into(), bundle.into()],
            Runtime::Exec => vec![bundle.into()],
            Runtime::Oci => return Err(Error::ImageNotUnpacked),
            Runtime::Python | Runtime::Pickle => {
                let base = &self.python.as_ref().map_err(Clone::clone)?.path;
                let python = match (function_env, runtime) {
                    (Some(env), Runtime::Python) => env.join("bin").join("python"),
                    _ => base.clone(),
                };
                let mode = match runtime {
                    Runtime::Python if self.serving => "serve",
                    Runtime::Python => "python",
                    _ => "pickle",
                };
                vec![
                    python.into(),
                    "-u".into(),
                    harness.into(),
                    mode.into(),
                    bundle.into(),
                ]
            }
        })
    }

    /// The function's environment plus what the runtime needs.
    pub fn env(&self, runtime: Runtime, env: &[(String, String)]) -> Vec<(String, String)> {
        let mut all = env.to_vec();
        if matches!(runtime, Runtime::Python | Runtime::Pickle) {
            let mut add = |k: &str, v: String| {
                if !all.iter().any(|(name, _)| name == k) {
                    all.push((k.to_string(), v));
                }
            };
            if !self.python_path.is_empty() {
                let dirs: Vec<PathBuf> = match &self.sandbox {
                    Some(sandbox) if sandbox.namespaces => (0..self.python_path.len())
                        .map(sandbox_python_path)
                        .collect(),
                    _ => self.python_path.clone(),
                };
                let joined = std::env::join_paths(&dirs)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                add("PYTHONPATH", joined);
            }
            add("PYTHONDONTWRITEBYTECODE", "1".into());
            if let Ok(Python {
                user_base: Some(base),
                ..
            }) = &self.python
            {
                add("PYTHONUSERBASE", base.to_string_lossy().into_owned());
            }
        }
        all
    }
}

/// Runs [`PYTHON_PROBE`] with `python`, as executors will run it (no `PYTHONPATH` of the
/// worker's), and keeps what it says.
fn resolve_python(python: &Path) -> Result<Python, Error> {
    let out = std::process::Command::new(python)
        .args(["-c", PYTHON_PROBE])
        .env_remove("PYTHONPATH")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| Error::PythonStart {
            python: python.to_owned(),
            source: Arc::new(source),
        })?;
    if !out.status.success() {
        return Err(Error::PythonFailed {
            python: python.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let answer: ProbeAnswer =
        serde_json::from_slice(&out.stdout).map_err(|_| Error::PythonLocationUnknown {
            python: python.to_owned(),
        })?;
    if answer.executable.as_os_str().is_empty() {
        return Err(Error::PythonLocationUnknown {
            python: python.to_owned(),
        });
    }
    // Relative, or through `..`, when found through such a `PATH` entry: executors start
    // elsewhere (their own working directory, the sandbox's root, where only the paths it
    // shows exist), so every path is made absolute here, its directory resolved but not its
    // last part (a virtualenv's `python3` is a link that must stay one).
    let absolute = |path: PathBuf| {
        let resolved = match (path.parent(), path.file_name()) {
            (Some(dir), Some(name)) if !dir.as_os_str().is_empty() => {
                std::fs::canonicalize(dir).map(|dir| dir.join(name))
            }
            _ => std::path::absolute(&path),
        };
        resolved.unwrap_or(path)
    };
    Ok(Python {
        path: absolute(answer.executable),
        visible: outermost(answer.paths.into_iter().map(absolute).collect()),
        user_base: answer.user_base.map(absolute),
    })
}

/// The directories of `paths` that no other one of them contains, in order.
fn outermost(mut paths: Vec<PathBuf>) -> Vec<PathBuf> {
    paths.sort();
    paths.dedup();
    let mut kept: Vec<PathBuf> = Vec::new();
    for path in paths {
        // Sorted, a directory comes right before what it contains.
        if !kept.last().is_some_and(|outer| path.starts_with(outer)) {
            kept.push(path);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runtimes without a sandbox, with `python` resolved (or not) as given.
    fn runtimes(python: Result<Python, Error>, python_path: &[&str]) -> Runtimes {
        Runtimes {
            python,
            sandbox: None,
            python_path: python_path.iter().map(PathBuf::from).collect(),
            harness: PathBuf::from("/cache/faasd_harness.py"),
            function_env: None,
            serving: false,
        }
    }

    fn python() -> Result<Python, Error> {
        Ok(Python {
            path: PathBuf::from("/usr/bin/python3.12"),
            visible: vec![PathBuf::from("/usr")],
            user_base: None,
        })
    }

    #[test]
    fn only_the_outermost_directories_are_kept() {
        let paths = ["/v/lib/site", "/a-b", "/v", "/a/x", "/a", "/v/lib", "/a"];
        let kept = outermost(paths.iter().map(PathBuf::from).collect());
        assert_eq!(kept, ["/a", "/a-b", "/v"].map(PathBuf::from));
    }

    #[test]
    fn the_user_base_reaches_executors_unless_the_function_sets_its_own() {
        let mut runtimes = runtimes(python(), &[]);
        if let Ok(python) = &mut runtimes.python {
            python.user_base = Some(PathBuf::from("/home/me/.local"));
        }
        let env = runtimes.env(Runtime::Python, &[]);
        assert!(env.contains(&("PYTHONUSERBASE".into(), "/home/me/.local".into())));
        let own = vars(&[("PYTHONUSERBASE", "/opt/mine")]);
        let env = runtimes.env(Runtime::Pickle, &own);
        let bases: Vec<_> = env.iter().filter(|(k, _)| k == "PYTHONUSERBASE").collect();
        assert_eq!(
            bases,
            [&("PYTHONUSERBASE".to_string(), "/opt/mine".to_string())]
        );
        assert!(runtimes.env(Runtime::Shell, &[]).is_empty());
    }

    #[test]
    fn a_virtualenv_keeps_its_own_interpreter_and_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let venv = dir.path().join("venv");
        let made = std::process::Command::new("python3")
            .args(["-m", "venv", "--without-pip"])
            .arg(&venv)
            .status();
        if !made.is_ok_and(|s| s.success()) {
            panic!("python3 -m venv failed: the tests need python3 with venv");
        }
        let found = resolve_python(&venv.join("bin/python3")).expect("resolved");
        assert!(
            found.path.starts_with(&venv),
            "stepped out of the venv: {found:?}"
        );
        assert!(
            found
                .visible
                .iter()
                .any(|p| venv.starts_with(p) || p.starts_with(&venv)),
            "the venv is not visible: {found:?}"
        );
        let base = resolve_python(Path::new("python3")).expect("base resolved");
        assert!(!base.path.starts_with(&venv));
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn command(runtimes: &Runtimes, runtime: Runtime) -> Result<Vec<OsString>, Error> {
        runtimes.command(
            runtime,
            Path::new("/cache/abc"),
            Duration::from_secs(1),
            Isolation::default(),
        )
    }

    #[test]
    fn shell_and_exec_command_lines() {
        let runtimes = runtimes(python(), &[]);
        assert_eq!(
            command(&runtimes, Runtime::Shell).expect("shell"),
            ["/bin/sh", "/cache/abc"].map(OsString::from)
        );
        assert_eq!(
            command(&runtimes, Runtime::Exec).expect("exec"),
            ["/cache/abc"].map(OsString::from)
        );
    }

    #[test]
    fn python_and_pickle_run_the_harness() {
        let runtimes = runtimes(python(), &[]);
        for (runtime, mode) in [(Runtime::Python, "python"), (Runtime::Pickle, "pickle")] {
            assert_eq!(
                command(&runtimes, runtime).expect("python"),
                [
                    "/usr/bin/python3.12",
                    "-u",
                    "/cache/faasd_harness.py",
                    mode,
                    "/cache/abc"
                ]
                .map(OsString::from)
            );
        }
    }

    #[test]
    fn a_python_function_in_an_env_runs_its_interpreter() {
        let runtimes = runtimes(python(), &[]).in_env(Path::new("/envs/abc/venv"));
        let argv = command(&runtimes, Runtime::Python).expect("python");
        assert_eq!(argv[0], OsString::from("/envs/abc/venv/bin/python"));
        // A pickle function keeps the worker's interpreter.
        let argv = command(&runtimes, Runtime::Pickle).expect("pickle");
        assert_eq!(argv[0], OsString::from("/usr/bin/python3.12"));
    }

    #[test]
    fn without_python_only_python_functions_fail() {
        let missing = Err(Error::PythonLocationUnknown {
            python: PathBuf::from("/opt/py"),
        });
        let runtimes = runtimes(missing, &[]);
        assert!(command(&runtimes, Runtime::Shell).is_ok());
        let err = command(&runtimes, Runtime::Pickle).expect_err("no python");
        assert_eq!(err.to_string(), "/opt/py did not say where it lives");
    }

    #[test]
    fn python_env_adds_only_what_is_unset() {
        let runtimes = runtimes(python(), &["/srv/a", "/srv/b"]);
        let env = runtimes.env(Runtime::Python, &vars(&[("X", "1")]));
        assert_eq!(
            env,
            vars(&[
                ("X", "1"),
                ("PYTHONPATH", "/srv/a:/srv/b"),
                ("PYTHONDONTWRITEBYTECODE", "1")
            ])
        );
        let own = vars(&[("PYTHONPATH", "/mine"), ("PYTHONDONTWRITEBYTECODE", "0")]);
        assert_eq!(runtimes.env(Runtime::Pickle, &own), own);
    }

    #[test]
    fn pythonpath_only_when_directories_are_given() {
        let runtimes = runtimes(python(), &[]);
        assert_eq!(
            runtimes.env(Runtime::Python, &[]),
            vars(&[("PYTHONDONTWRITEBYTECODE", "1")])
        );
    }

    #[test]
    fn shell_and_exec_env_is_the_functions_own() {
        let runtimes = runtimes(python(), &["/srv/a"]);
        let own = vars(&[("X", "1")]);
        assert_eq!(runtimes.env(Runtime::Shell, &own), own);
        assert_eq!(runtimes.env(Runtime::Exec, &own), own);
    }

    #[test]
    fn resolving_a_missing_interpreter_names_it() {
        let err = resolve_python(Path::new("/no/such/python3")).expect_err("missing");
        assert!(matches!(err, Error::PythonStart { .. }), "{err:?}");
        assert!(
            err.to_string().starts_with("cannot run /no/such/python3: "),
            "{err}"
        );
    }

    #[test]
    fn an_interpreter_that_fails_or_says_nothing_is_refused() {
        let failed = resolve_python(Path::new("/bin/false")).expect_err("fails");
        assert_eq!(failed.to_string(), "/bin/false failed: ");
        let silent = resolve_python(Path::new("/bin/true")).expect_err("silent");
        assert_eq!(silent.to_string(), "/bin/true did not say where it lives");
    }
}

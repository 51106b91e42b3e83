//! Python environments as Python people set them up: a virtualenv made with `python3 -m venv`
//! (symlinked interpreter, the default) holding dill and a package of its own, none of which
//! the system interpreter has. `serve` runs with the default sandbox, once with the venv first
//! on PATH and once with `--python VENV/bin/python`; each time a `python` function imports the
//! venv-only package and the MPCS contract tests (tests/python, dill-pickled functions) pass.
//! The venv lives under /tmp, as does a `--python-path` directory: both must be visible in the
//! sandbox, whose own /tmp is private.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Server, invoke, register, text};

/// A venv under a temporary directory with dill, pytest and requests, and `venvonly.py`.
struct Venv {
    dir: tempfile::TempDir,
}

impl Venv {
    fn create() -> Venv {
        let dir = tempfile::tempdir().expect("tempdir");
        let venv = dir.path().join("venv");
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        run(Command::new(venv.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["dill", "pytest", "requests"]));
        let site = Command::new(venv.join("bin/python"))
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ])
            .output()
            .expect("ask the venv for its site-packages");
        let site = PathBuf::from(text(&site.stdout).trim());
        std::fs::write(site.join("venvonly.py"), "VALUE = 'from the venv'\n").expect("module");
        Venv { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("venv")
    }

    fn python(&self) -> PathBuf {
        self.root().join("bin/python")
    }

    /// PATH with the venv's bin first.
    fn path_first(&self) -> OsString {
        let mut dirs = vec![self.root().join("bin")];
        dirs.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        std::env::join_paths(dirs).expect("join PATH")
    }
}

fn run(command: &mut Command) {
    let out = command.output().expect("run");
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The MPCS contract tests' modules, copied under a temporary directory (so under /tmp), to
/// serve as the `--python-path` directory that functions pickled by reference, and the module
/// of nested functions pickled by value, are imported from.
fn contract_module_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python");
    for module in ["mpcs_funcs.py", "test_mpcs.py"] {
        std::fs::copy(tests.join(module), dir.path().join(module)).expect("copy a test module");
    }
    dir
}

/// A `python` function importing the venv-only package answers with its value.
async fn imports_the_venv_package(server: &Server) {
    let client = server.client();
    let handler = "import venvonly\n\ndef handle(payload):\n    return venvonly.VALUE\n";
    let settings = serde_json::json!({"runtime": "python"});
    let answer = register(&client, "venv-import", handler, settings).await;
    assert_eq!(answer.status, 201, "{}", text(&answer.body));
    let answer = invoke(&client, "venv-import", b"x").await;
    assert_eq!(answer.status, 200, "{}", text(&answer.body));
    assert_eq!(text(&answer.body), "from the venv");
}

/// The MPCS contract tests, run by the venv's pytest against `server`.
fn contract_tests_pass(venv: &Venv, server: &Server) {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python");
    let out = Command::new(venv.python())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(&tests)
        .env("FAASD_URL", &server.url)
        .output()
        .expect("run pytest");
    assert!(
        out.status.success(),
        "the MPCS contract tests failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_virtualenv_first_on_path_or_named_by_python_works_in_the_sandbox() {
    // `venvonly` exists nowhere but in the venv, so importing it proves the venv is used even
    // on a machine whose system interpreter happens to have dill.
    let venv = Venv::create();
    let modules = contract_module_dir();
    let module_dir = modules.path().to_str().expect("utf-8 path");

    // The venv first on PATH: `python3` is the venv's.
    let path = venv.path_first();
    let server = Server::start_with_env(
        &[("PATH", path.as_os_str())],
        &["--local-workers", "2", "--python-path", module_dir],
    );
    imports_the_venv_package(&server).await;
    contract_tests_pass(&venv, &server);
    drop(server);

    // The venv's interpreter named by --python, PATH as it was.
    let python = venv.python();
    let python = python.to_str().expect("utf-8 path");
    let server = Server::start(&[
        "--local-workers",
        "2",
        "--python",
        python,
        "--python-path",
        module_dir,
    ]);
    imports_the_venv_package(&server).await;
    contract_tests_pass(&venv, &server);
}

//! Checks a function's code at registration, before anything is stored: code that can never run
//! is refused with 400 `invalid_code`.
//!
//! - `shell` and `exec` take a file, not a directory (a tar bundle).
//! - `pickle` must look like a pickle, by the rule `POST /register_function` applies.
//! - `oci`: the archive must be an image (`docker save` or an OCI layout) whose blobs match their
//!   digests, whose layers unpack within the limits with no entry refused (it is unpacked into
//!   a temporary directory, then removed), and whose config names something to run.
//! - `python`: a directory bundle's top-level `requirements.txt` must hold only requirements
//!   (PEP 508) and the allowed index options, and the bundle must hold its entry module; the
//!   module (or the single file) is compiled without running it, and must define `handle` at
//!   top level. The server's interpreter compiles it; a server without one asks the first
//!   connected worker that has one (`CheckCode` frames). With neither, the compile step is
//!   skipped (logged) and the first call reports the error.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::broker::{Broker, WorkerCheck};
use crate::exec::requirements;
use crate::proto::{CompileVerdict, Runtime};

/// How long one compile may take.
const COMPILE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most compiles running at once; more registrations wait for a turn.
const MAX_COMPILES: usize = 4;

/// Why registered code can never run.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    /// A `shell` or `exec` function was given a directory.
    #[error(
        "a {runtime} function takes a single file, not a directory (the code is a tar bundle); register the script or program itself, or use --runtime python for a Python package"
    )]
    Directory {
        /// The runtime asked for.
        runtime: &'static str,
    },
    /// An `oci` function's code is not a usable image.
    #[error("the image cannot run: {reason}")]
    Image {
        /// What is wrong with it.
        reason: String,
    },
    /// A `pickle` function's code is not a pickle.
    #[error(
        "a pickle function's code must be a pickle (serialize the function with dill); this code does not start with a pickle opcode and end with STOP"
    )]
    NotPickle,
    /// A directory bundle lacks its entry module.
    #[error(
        "the directory has no entry module {entry:?} (looked for {tried}); add it or name another with --entry"
    )]
    NoEntry {
        /// The entry module.
        entry: String,
        /// The paths looked for.
        tried: String,
    },
    /// A bundle holds an entry no worker can unpack: a path or a link that leaves the
    /// bundle, or a device or pipe.
    #[error(
        "the bundle cannot be unpacked: {path} {reason}; copy what it points to into the directory, or remove it (a virtualenv is never needed: list its packages in requirements.txt)"
    )]
    Unpackable {
        /// The entry's path in the bundle.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The bundle's `requirements.txt` cannot be installed as written.
    #[error("{reason}")]
    Requirements {
        /// What is wrong with it (naming `requirements.txt`).
        reason: String,
    },
    /// The Python code does not compile.
    #[error("{file} does not compile: {}", located(.message, *.line, *.column, .text))]
    Syntax {
        /// The module's file name.
        file: String,
        /// The compiler's message.
        message: String,
        /// The line, from 1.
        line: Option<u64>,
        /// The column, from 1.
        column: Option<u64>,
        /// The offending line's text.
        text: String,
    },
    /// The Python module defines no `handle`.
    #[error("{file} compiles but defines no top-level handle (write `def handle(payload): ...`)")]
    NoHandle {
        /// The module's file name.
        file: String,
    },
    /// The compiler did not finish in time.
    #[error("compiling {file} took longer than {}s", COMPILE_TIMEOUT.as_secs())]
    CompileTimeout {
        /// The module's file name.
        file: String,
    },
}

impl Invalid {
    /// The line the compiler pointed at, if any.
    pub fn line(&self) -> Option<u64> {
        match self {
            Invalid::Syntax { line, .. } => *line,
            _ => None,
        }
    }
}

/// `line 3, column 9: SyntaxError: expected ':' (def handle(p))`.
fn located(message: &str, line: Option<u64>, column: Option<u64>, text: &str) -> String {
    let mut out = String::new();
    if let Some(line) = line {
        out.push_str(&format!("line {line}"));
        if let Some(column) = column {
            out.push_str(&format!(", column {column}"));
        }
        out.push_str(": ");
    }
    out.push_str(message);
    if !text.is_empty() {
        out.push_str(&format!(" ({text})"));
    }
    out
}

/// Whether `code` looks like a pickle: it ends with the STOP opcode, and protocol 2+ pickles
/// (dill's) start with PROTO. The rule of `POST /register_function`.
pub fn looks_like_pickle(code: &[u8]) -> bool {
    matches!((code.first(), code.last()), (Some(&first), Some(b'.')) if first <= 0x80)
}

/// Whether `code` is a tar archive (a directory bundle).
fn is_tar(code: &[u8]) -> bool {
    code.get(257..262) == Some(b"ustar".as_slice())
}

/// The code checker: the server's Python interpreter and a bound on compiles at once.
#[derive(Clone)]
pub struct CodeCheck {
    python: PathBuf,
    turns: Arc<Semaphore>,
    /// The broker whose workers compile when the server cannot.
    workers: Option<Broker>,
}

impl CodeCheck {
    /// A checker compiling with `python` (default `python3` on PATH), else on the workers of
    /// `workers`.
    pub fn new(python: Option<PathBuf>, workers: Option<Broker>) -> CodeCheck {
        CodeCheck {
            python: python.unwrap_or_else(|| PathBuf::from("python3")),
            turns: Arc::new(Semaphore::new(MAX_COMPILES)),
            workers,
        }
    }

    /// Refuses `code` that can never run under `runtime`; `entry` is a bundle's entry module.
    pub async fn check(&self, runtime: Runtime, code: &[u8], entry: &str) -> Result<(), Invalid> {
        match runtime {
            Runtime::Shell | Runtime::Exec if is_tar(code) => Err(Invalid::Directory {
                runtime: runtime.as_str(),
            }),
            Runtime::Pickle if !looks_like_pickle(code) || is_tar(code) => Err(Invalid::NotPickle),
            Runtime::Python if is_tar(code) => {
                check_requirements(code)?;
                match entry_module(code, entry)? {
                    Some((file, source)) => self.compile(&file, source).await,
                    None => Ok(()),
                }
            }
            Runtime::Python => self.compile("the module", code.to_vec()).await,
            Runtime::Oci => {
                // An image check unpacks up to its size limit: a few at a time, as compiles.
                let Ok(_turn) = self.turns.acquire().await else {
                    return Ok(());
                };
                check_image(code.to_vec()).await
            }
            _ => Ok(()),
        }
    }

    /// Compiles `source` in the server's interpreter within [`COMPILE_TIMEOUT`]; when it cannot
    /// start one, on the first worker that can. With neither the compile is skipped (logged).
    async fn compile(&self, file: &str, source: Vec<u8>) -> Result<(), Invalid> {
        let Ok(_turn) = self.turns.acquire().await else {
            return Ok(());
        };
        let here = crate::exec::compile_python(&self.python, file, &source);
        let answer = match tokio::time::timeout(COMPILE_TIMEOUT, here).await {
            Err(_) => {
                return Err(Invalid::CompileTimeout { file: file.into() });
            }
            Ok(Err(e)) => {
                let why = format!("{}: {e}", self.python.display());
                return self.compile_on_worker(file, source, why).await;
            }
            Ok(Ok(answer)) => answer,
        };
        judge(file, answer)
    }

    /// Compiles `source` on a worker, the server's own interpreter having failed with `why`.
    async fn compile_on_worker(
        &self,
        file: &str,
        source: Vec<u8>,
        why: String,
    ) -> Result<(), Invalid> {
        let Some(broker) = &self.workers else {
            tracing::warn!(reason = %why, "cannot check Python code at registration; the first call will");
            return Ok(());
        };
        // The worker bounds its compile at the same timeout; the frames' round trip gets a margin.
        let wait = COMPILE_TIMEOUT + Duration::from_secs(2);
        match broker.check_on_worker(file, source.into(), wait).await {
            WorkerCheck::Verdict(answer) => judge(file, answer),
            WorkerCheck::TimedOut => Err(Invalid::CompileTimeout { file: file.into() }),
            WorkerCheck::Unchecked(on_workers) => {
                tracing::warn!(server = %why, workers = %on_workers, "cannot check Python code at registration, here or on a worker; the first call will");
                Ok(())
            }
        }
    }
}

/// Reads and unpacks an image archive into a temporary directory (off the async threads), and
/// refuses one that cannot run.
async fn check_image(code: Vec<u8>) -> Result<(), Invalid> {
    check_image_archive(ImageArchive::Bytes(code)).await
}

impl CodeCheck {
    /// Checks an image archive already in a file (an uploaded blob) as a registration's image
    /// is checked, without reading it into memory; a few at a time, as compiles.
    pub async fn check_image_file(&self, path: PathBuf) -> Result<(), Invalid> {
        let Ok(_turn) = self.turns.acquire().await else {
            return Ok(());
        };
        check_image_archive(ImageArchive::File(path)).await
    }
}

/// An image archive to check: its bytes, or a file holding them.
enum ImageArchive {
    Bytes(Vec<u8>),
    File(PathBuf),
}

async fn check_image_archive(archive: ImageArchive) -> Result<(), Invalid> {
    let invalid = |reason: String| Invalid::Image { reason };
    let checked = tokio::task::spawn_blocking(move || {
        let scratch = tempfile::tempdir()
            .map_err(|e| invalid(format!("no temporary directory to check it in: {e}")))?;
        let path = match archive {
            ImageArchive::File(path) => path,
            ImageArchive::Bytes(code) => {
                let path = scratch.path().join("image.tar");
                std::fs::write(&path, &code)
                    .map_err(|e| invalid(format!("cannot write it: {e}")))?;
                path
            }
        };
        let image = crate::oci::check(&path, scratch.path(), crate::oci::Limits::default())
            .map_err(|e| invalid(e.to_string()))?;
        if image.config.argv().is_empty() {
            return Err(invalid(
                "its config has neither Entrypoint nor Cmd: nothing to run".into(),
            ));
        }
        Ok(())
    })
    .await;
    checked.unwrap_or_else(|e| Err(invalid(format!("the check did not finish: {e}"))))
}

/// The verdict on a compiler's answer.
fn judge(file: &str, answer: CompileVerdict) -> Result<(), Invalid> {
    if let Some(message) = answer.error {
        return Err(Invalid::Syntax {
            file: file.into(),
            message,
            line: answer.line,
            column: answer.column,
            text: answer.text,
        });
    }
    if answer.missing_handle {
        return Err(Invalid::NoHandle { file: file.into() });
    }
    Ok(())
}

/// The file name and source of a bundle's entry module (`pkg.mod`: `pkg/mod.py` or
/// `pkg/mod/__init__.py`), after checking that every entry of the bundle unpacks inside it (as
/// the harness's `tarfile` "data" filter will insist). An entry module that is a link, or
/// otherwise not a regular file, is let through unread.
fn entry_module(bundle: &[u8], entry: &str) -> Result<Option<(String, Vec<u8>)>, Invalid> {
    let base = entry.replace('.', "/");
    let candidates = [format!("{base}.py"), format!("{base}/__init__.py")];
    let no_entry = || Invalid::NoEntry {
        entry: entry.into(),
        tried: candidates.join(" and "),
    };
    let mut archive = tar::Archive::new(bundle);
    let entries = archive.entries().map_err(|_| no_entry())?;
    let mut found: Option<Option<(String, Vec<u8>)>> = None;
    for item in entries {
        let Ok(mut item) = item else { break };
        let Ok(path) = item.path() else { continue };
        let path = path.to_string_lossy();
        let path = path.trim_start_matches("./").to_string();
        unpackable(&path, &item)?;
        if found.is_some() || !candidates.contains(&path) {
            continue;
        }
        if !item.header().entry_type().is_file() {
            found = Some(None);
            continue;
        }
        let mut source = Vec::new();
        if item.read_to_end(&mut source).is_err() {
            return Err(no_entry());
        }
        found = Some(Some((path, source)));
    }
    found.ok_or_else(no_entry)
}

/// Refuses a bundle whose top-level `requirements.txt` every worker would refuse: an option
/// not allowed, or a line that is not a requirement.
fn check_requirements(bundle: &[u8]) -> Result<(), Invalid> {
    let text = requirements::requirements_in(bundle);
    text.and_then(|text| text.map(|t| requirements::normalize(&t)).transpose())
        .map(drop)
        .map_err(|e| Invalid::Requirements {
            reason: e.to_string(),
        })
}

/// Refuses a bundle entry at `path` that would not unpack inside the bundle.
fn unpackable(path: &str, item: &tar::Entry<'_, &[u8]>) -> Result<(), Invalid> {
    let refuse = |reason: String| {
        Err(Invalid::Unpackable {
            path: path.into(),
            reason,
        })
    };
    let rel = std::path::Path::new(path);
    // No `..` at all in an entry's own path: a link's target is judged from where its entry
    // claims to be, which `a/../l` would misstate.
    let climbs = rel
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir));
    if climbs || !stays_inside(std::path::Path::new(""), rel) {
        return refuse("is outside the bundle (or names `..` in its path)".into());
    }
    let kind = item.header().entry_type();
    if kind.is_symlink() || kind.is_hard_link() {
        let target = item.link_name().ok().flatten().unwrap_or_default();
        // A symbolic link resolves from its own directory; a hard link names a path in the
        // bundle.
        let from = if kind.is_symlink() {
            rel
        } else {
            std::path::Path::new("")
        };
        if !stays_inside(from, &target) {
            return refuse(format!(
                "is a link to {}, outside the bundle",
                target.display()
            ));
        }
    } else if kind.is_block_special() || kind.is_character_special() || kind.is_fifo() {
        return refuse("is a device or a pipe".into());
    }
    Ok(())
}

/// Whether `target`, seen from the directory holding `rel` (both relative to a bundle's root;
/// an empty `rel` for the root itself), stays inside the root, by its path alone.
pub fn stays_inside(rel: &std::path::Path, target: &std::path::Path) -> bool {
    use std::path::Component;
    let mut depth = rel.components().count().saturating_sub(1);
    for part in target.components() {
        match part {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar bundle of `files`.
    fn bundle(files: &[(&str, &str)]) -> Vec<u8> {
        crate::exec::requirements::tests::tar_of(files)
    }

    fn python_present() -> bool {
        std::process::Command::new("python3")
            .arg("-c")
            .arg("")
            .status()
            .is_ok_and(|s| s.success())
    }

    #[tokio::test]
    async fn runtimes_refuse_what_they_cannot_run() {
        let check = CodeCheck::new(Some("/no/such/python3".into()), None);
        let tar = bundle(&[("main.py", "def handle(p): return p\n")]);
        for runtime in [Runtime::Shell, Runtime::Exec] {
            let err = check.check(runtime, &tar, "main").await.expect_err("a dir");
            assert!(matches!(err, Invalid::Directory { .. }), "{err:?}");
        }
        let err = check.check(Runtime::Pickle, b"echo hi\n", "main").await;
        assert!(matches!(err, Err(Invalid::NotPickle)), "{err:?}");
        assert!(
            check
                .check(Runtime::Pickle, b"\x80\x04N.", "main")
                .await
                .is_ok()
        );
        assert!(
            check
                .check(Runtime::Shell, b"echo hi\n", "main")
                .await
                .is_ok()
        );
        let err = check.check(Runtime::Python, &tar, "app.web").await;
        let Err(Invalid::NoEntry { tried, .. }) = err else {
            panic!("no entry: {err:?}");
        };
        assert_eq!(tried, "app/web.py and app/web/__init__.py");
        // Without an interpreter the compile step is skipped.
        assert!(check.check(Runtime::Python, b"def (", "main").await.is_ok());
    }

    /// A tar bundle of `main.py` and one link `name` to `target`, symbolic or hard.
    fn bundle_with_link(name: &str, target: &str, hard: bool) -> Vec<u8> {
        let mut archive = tar::Builder::new(Vec::new());
        let text = "def handle(p): return p\n";
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        archive
            .append_data(&mut header, "main.py", text.as_bytes())
            .expect("append");
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(if hard {
            tar::EntryType::Link
        } else {
            tar::EntryType::Symlink
        });
        link.set_size(0);
        archive.append_link(&mut link, name, target).expect("link");
        archive.into_inner().expect("finish")
    }

    #[tokio::test]
    async fn a_bundle_must_unpack_inside_itself() {
        let check = CodeCheck::new(Some("/no/such/python3".into()), None);
        for (name, target, hard) in [
            (".venv/bin/python3", "/usr/bin/python3", false),
            ("data/out.txt", "../../outside.txt", false),
            ("copy.py", "/etc/passwd", true),
            ("up.py", "../main.py", true),
        ] {
            let tar = bundle_with_link(name, target, hard);
            let err = check.check(Runtime::Python, &tar, "main").await;
            let Err(Invalid::Unpackable { path, reason }) = &err else {
                panic!("{name} -> {target}: {err:?}");
            };
            assert_eq!(path, name);
            assert!(reason.contains(target), "{reason}");
        }
        for (name, target, hard) in [
            ("data/link.txt", "../main.py", false),
            ("lib/here.py", "./there.py", false),
            ("again.py", "main.py", true),
        ] {
            let tar = bundle_with_link(name, target, hard);
            let ok = check.check(Runtime::Python, &tar, "main").await;
            assert!(ok.is_ok(), "{name} -> {target}: {ok:?}");
        }
        // The tar crate will not write `..` into a path; another tool may.
        let mut archive = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(0);
        header.set_mode(0o644);
        header.as_old_mut().name[..10].copy_from_slice(b"../evil.py");
        header.set_cksum();
        archive.append(&header, &[][..]).expect("append");
        let tar = archive.into_inner().expect("finish");
        let err = check.check(Runtime::Python, &tar, "main").await;
        assert!(matches!(err, Err(Invalid::Unpackable { .. })), "{err:?}");
    }

    #[tokio::test]
    async fn python_must_compile_and_define_handle() {
        if !python_present() {
            eprintln!("skipped: no python3");
            return;
        }
        let check = CodeCheck::new(None, None);
        let err = check
            .check(
                Runtime::Python,
                b"x = 1\ndef handle(p)\n    return p\n",
                "main",
            )
            .await
            .expect_err("a syntax error");
        assert_eq!(err.line(), Some(2), "{err}");
        assert!(
            err.to_string()
                .starts_with("the module does not compile: line 2"),
            "{err}"
        );
        let err = check
            .check(Runtime::Python, b"def main(p):\n    return p\n", "main")
            .await
            .expect_err("no handle");
        assert!(matches!(err, Invalid::NoHandle { .. }), "{err:?}");
        let err = check
            .check(Runtime::Python, b"def f():\n    pass\nreturn 1\n", "main")
            .await
            .expect_err("return outside a function");
        assert_eq!(err.line(), Some(3), "{err}");
        for fine in [
            "def handle(p):\n    return p\n",
            "async def handle(p):\n    return p\n",
            "handle = lambda p: p\n",
            "from os.path import basename as handle\n",
            "try:\n    from fast import handle\nexcept ImportError:\n    def handle(p): return p\n",
            "from impl import *\n",
        ] {
            let result = check.check(Runtime::Python, fine.as_bytes(), "main").await;
            assert!(result.is_ok(), "{fine:?}: {result:?}");
        }
        let tar = bundle(&[("./pkg/__init__.py", "def handle(p):\n  return p\n")]);
        assert!(check.check(Runtime::Python, &tar, "pkg").await.is_ok());
        let tar = bundle(&[("main.py", "def handle(p):\n  return (p\n")]);
        let err = check
            .check(Runtime::Python, &tar, "main")
            .await
            .expect_err("bad");
        assert!(
            err.to_string().starts_with("main.py does not compile"),
            "{err}"
        );
    }
}

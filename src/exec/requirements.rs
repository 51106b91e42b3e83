//! A `python` bundle's `requirements.txt`: found at the top of its tar archive, normalized, and
//! checked for what a worker will not install. The worker builds an environment from it
//! (`worker::envs`); the server and `faasd register` check it first, so a file that could never
//! be installed is refused when the function is registered.
//!
//! The build runs outside the sandbox, as the worker's user, so it installs wheels only, and a
//! requirements file may not carry options that reach outside it (`-r`, `-e`, `--no-binary`...);
//! an index may be named (`--index-url`, `--extra-index-url`) and pre-releases allowed
//! (`--pre`). Every other line must be a requirement pip can read ([`super::pep508`]).

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// The largest `requirements.txt` accepted.
const MAX_REQUIREMENTS_BYTES: u64 = 64 * 1024;

/// The options a requirements file may carry.
const ALLOWED_OPTIONS: &[&str] = &["-i", "--index-url", "--extra-index-url", "--pre"];

/// Why a bundle's requirements cannot be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The bundle could not be opened to look for its requirements.
    #[error("cannot read the bundle {}: {source}", path.display())]
    ReadBundle {
        /// The bundle.
        path: PathBuf,
        /// Why (shared: every call waiting for it gets this error).
        source: Arc<std::io::Error>,
    },
    /// `requirements.txt` is over [`MAX_REQUIREMENTS_BYTES`] or not UTF-8.
    #[error("requirements.txt must be UTF-8 text of at most {MAX_REQUIREMENTS_BYTES} bytes")]
    Unreadable,
    /// `requirements.txt` carries an option that is not allowed.
    #[error(
        "requirements.txt: the option in {line:?} is not allowed (only wheels are installed; allowed: -i, --index-url, --extra-index-url, --pre)"
    )]
    OptionRefused {
        /// The line, normalized.
        line: String,
    },
    /// A line of `requirements.txt` is not a requirement pip could read (PEP 508).
    #[error("requirements.txt: {line:?} is not a valid requirement: {reason}")]
    InvalidRequirement {
        /// The line, normalized.
        line: String,
        /// What is wrong with it.
        reason: super::pep508::NotARequirement,
    },
}

/// Normalizes a requirements file: line continuations joined, comments, blank lines and extra
/// whitespace dropped, lines sorted and deduplicated (the empty string when nothing is left).
/// Options other than [`ALLOWED_OPTIONS`] are refused, and so is a line that is not a PEP 508
/// requirement ([`super::pep508::check`]).
pub fn normalize(text: &str) -> Result<String, Error> {
    // A byte-order mark, as some editors on Windows write, is not part of the first line.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let joined = text.replace("\\\r\n", " ").replace("\\\n", " ");
    let mut lines = Vec::new();
    for line in joined.lines() {
        let words: Vec<&str> = strip_comment(line).split_whitespace().collect();
        let Some(first) = words.first() else {
            continue;
        };
        let line = words.join(" ");
        if first.starts_with('-') {
            // `--name=value`, and a short option with its value attached (`-ihttps://...`).
            let option = match first.strip_prefix('-') {
                Some(short) if !short.starts_with('-') => &first[..first.len().min(2)],
                _ => first.split('=').next().unwrap_or(first),
            };
            if !ALLOWED_OPTIONS.contains(&option) {
                return Err(Error::OptionRefused { line });
            }
        } else if let Err(reason) = super::pep508::check(&line) {
            return Err(Error::InvalidRequirement { line, reason });
        }
        lines.push(line);
    }
    lines.sort();
    lines.dedup();
    Ok(lines.iter().map(|l| format!("{l}\n")).collect())
}

/// A line without its comment: from a `#` that starts the line or follows whitespace (pip's
/// rule, so a URL's `#fragment` stays).
fn strip_comment(line: &str) -> &str {
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        if c == '#' && previous.is_whitespace() {
            return &line[..i];
        }
        previous = c;
    }
    line
}

/// The text of the top-level `requirements.txt` of a tar bundle; `None` when the bundle is not
/// a tar archive (a single-file module) or holds none.
pub fn read(bundle: &Path) -> Result<Option<String>, Error> {
    let file = std::fs::File::open(bundle).map_err(|source| Error::ReadBundle {
        path: bundle.to_owned(),
        source: Arc::new(source),
    })?;
    requirements_in(file)
}

/// The text of the top-level `requirements.txt` of the tar bundle `bundle` reads; `None` when
/// it is not a tar archive or holds none.
pub fn requirements_in(bundle: impl Read) -> Result<Option<String>, Error> {
    let mut archive = tar::Archive::new(bundle);
    let Ok(entries) = archive.entries() else {
        return Ok(None);
    };
    let mut found = None;
    for entry in entries {
        // Not a tar archive (or a damaged one, which the harness reports when it unpacks it).
        let Ok(entry) = entry else {
            return Ok(found);
        };
        let top_level = entry.path().is_ok_and(|path| {
            let parts: Vec<Component<'_>> = path
                .components()
                .filter(|c| !matches!(c, Component::CurDir))
                .collect();
            matches!(parts[..], [Component::Normal(name)] if name == "requirements.txt")
        });
        if !top_level || !entry.header().entry_type().is_file() {
            continue;
        }
        if entry.size() > MAX_REQUIREMENTS_BYTES {
            return Err(Error::Unreadable);
        }
        let mut text = String::new();
        entry
            .take(MAX_REQUIREMENTS_BYTES)
            .read_to_string(&mut text)
            .map_err(|_| Error::Unreadable)?;
        // Unpacking keeps the last of two entries with one name; so does this.
        found = Some(text);
    }
    Ok(found)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tar archive of `files` (name, text).
    pub(crate) fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
        let mut archive = tar::Builder::new(Vec::new());
        for (name, text) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(text.len() as u64);
            header.set_mode(0o644);
            archive
                .append_data(&mut header, name, text.as_bytes())
                .expect("append");
        }
        archive.into_inner().expect("finish")
    }

    fn read(bytes: &[u8]) -> Result<Option<String>, Error> {
        let dir = tempfile::tempdir().expect("tempdir");
        let bundle = dir.path().join("bundle");
        std::fs::write(&bundle, bytes).expect("write");
        super::read(&bundle)
    }

    #[test]
    fn normalizing_drops_comments_blanks_and_order() {
        let text = "# pinned\nsix==1.16.0   # for py2\n\n  requests >= 2  \nsix==1.16.0\nattrs \\\n  ==23.1\n";
        assert_eq!(
            normalize(text).expect("valid"),
            "attrs ==23.1\nrequests >= 2\nsix==1.16.0\n"
        );
        assert_eq!(
            normalize("requests\nsix==1.16.0").expect("valid"),
            normalize("six==1.16.0 \r\n# x\nrequests\n").expect("valid")
        );
        assert_eq!(normalize("# nothing\n\n").expect("valid"), "");
        assert_eq!(normalize("\u{feff}six\n").expect("valid"), "six\n");
    }

    #[test]
    fn a_url_fragment_is_not_a_comment() {
        let text = "pkg @ https://example.com/pkg.whl#sha256=abc\n";
        assert_eq!(normalize(text).expect("valid"), text);
    }

    #[test]
    fn only_index_options_are_allowed() {
        let ok = "--index-url https://pypi.org/simple\n-i https://x\n-ihttps://z\n--extra-index-url=https://y\n--pre\nsix\n";
        assert!(normalize(ok).is_ok());
        for bad in [
            "-r other.txt",
            "-e .",
            "--no-binary :all:",
            "--find-links /srv",
        ] {
            let err = normalize(&format!("six\n{bad}\n")).expect_err(bad);
            assert!(
                matches!(err, Error::OptionRefused { ref line } if line == bad),
                "{err:?}"
            );
        }
    }

    #[test]
    fn requirements_are_read_from_the_top_of_a_tar_bundle() {
        let bundle = tar_of(&[
            ("main.py", "def handle(p):\n    return p\n"),
            ("./requirements.txt", "six==1.16.0\n"),
            ("lib/requirements.txt", "not-this\n"),
        ]);
        assert_eq!(
            read(&bundle).expect("read").as_deref(),
            Some("six==1.16.0\n")
        );
        let without = tar_of(&[("main.py", ""), ("lib/requirements.txt", "x\n")]);
        assert_eq!(read(&without).expect("read"), None);
    }

    #[test]
    fn a_single_module_has_no_requirements() {
        assert_eq!(read(b"def handle(p):\n    return p\n").expect("read"), None);
        let long = "# a long module\n".repeat(200);
        assert_eq!(read(long.as_bytes()).expect("read"), None);
    }

    #[test]
    fn oversized_or_binary_requirements_are_refused() {
        let big = "six\n".repeat(20_000);
        let err = read(&tar_of(&[("requirements.txt", &big)])).expect_err("too big");
        assert!(matches!(err, Error::Unreadable), "{err:?}");
        let mut archive = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        archive
            .append_data(&mut header, "requirements.txt", &[0xff, 0xfe][..])
            .expect("append");
        let err = read(&archive.into_inner().expect("finish")).expect_err("not text");
        assert!(matches!(err, Error::Unreadable), "{err:?}");
    }
}

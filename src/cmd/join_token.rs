//! `faasd join-token`: print the token remote workers join with. The token itself lives in the
//! data directory (`join-token`, mode 0600), made by `serve` at its first start unless it was
//! given `--join-token-file`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;

use super::exit;

/// The file in the data directory that holds the generated join token.
pub(crate) const FILE_NAME: &str = "join-token";

/// Print the join token remote workers need (`faasd worker --join-token`).
#[derive(Debug, clap::Args)]
pub struct JoinTokenArgs {
    /// The server's data directory.
    #[arg(long, default_value = "./faasd-data")]
    pub data: PathBuf,
    /// Print `{"join_token"}`.
    #[arg(long)]
    pub json: bool,
}

/// Runs `faasd join-token`: prints the token alone on a line.
pub async fn run(args: JoinTokenArgs) -> anyhow::Result<u8> {
    let path = args.data.join(FILE_NAME);
    let token = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(exit::coded(
                exit::FAILURE,
                format!(
                    "{} does not exist: start `faasd serve --data {}` once to make the join token (a server given --join-token-file uses that file instead)",
                    path.display(),
                    args.data.display()
                ),
            ));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let token = checked(&token, &path)?;
    if args.json {
        println!("{}", serde_json::json!({ "join_token": token }));
    } else {
        println!("{token}");
    }
    Ok(exit::OK)
}

/// The token of a token file: its text without surrounding white space, which must not be
/// empty.
pub(crate) fn checked<'a>(text: &'a str, path: &Path) -> anyhow::Result<&'a str> {
    let token = text.trim();
    if token.is_empty() {
        return Err(exit::coded(
            exit::USAGE,
            format!("the join token file {} is empty", path.display()),
        ));
    }
    Ok(token)
}

/// The join token of a server: read from `file` when given, else from the data directory,
/// where it is generated (32 random bytes, base64url) at the first start.
pub(crate) fn load_or_create(file: Option<&Path>, data: &Path) -> anyhow::Result<String> {
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the join token file {}", file.display()))?;
        return Ok(checked(&text, file)?.to_owned());
    }
    let path = data.join(FILE_NAME);
    match std::fs::read_to_string(&path) {
        Ok(text) => return Ok(checked(&text, &path)?.to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let token = generate()?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(file, "{token}")
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated the join token for remote workers (print it with `faasd join-token`)");
    Ok(token)
}

/// A new token: 32 random bytes from the system, base64url without padding (43 characters),
/// drawn again while it would begin with `-`: such a token, pasted after `--join-token` in a
/// script, would read as an option (one in 64 did, and failed to start the worker).
fn generate() -> anyhow::Result<String> {
    loop {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).context("cannot get random bytes for the join token")?;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        if !token.starts_with('-') {
            return Ok(token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_generated_once_with_mode_0600_and_then_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let first = load_or_create(None, dir.path()).expect("generated");
        assert_eq!(first.len(), 43);
        assert!(
            first
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{first}"
        );
        let mode = std::fs::metadata(dir.path().join(FILE_NAME))
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create(None, dir.path()).expect("read"), first);
        let other = tempfile::tempdir().expect("tempdir");
        assert_ne!(load_or_create(None, other.path()).expect("another"), first);
    }

    #[test]
    fn no_generated_token_begins_with_a_hyphen() {
        // A leading `-` is one draw in 64: a thousand draws meet it with near certainty.
        for _ in 0..1000 {
            let token = generate().expect("random");
            assert!(!token.starts_with('-'), "{token}");
            assert_eq!(token.len(), 43);
        }
    }

    #[test]
    fn a_given_file_wins_and_an_empty_one_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "  my-token\n").expect("write");
        let token = load_or_create(Some(&file), dir.path()).expect("read");
        assert_eq!(token, "my-token");
        assert!(!dir.path().join(FILE_NAME).exists());
        std::fs::write(&file, "\n").expect("write");
        let err = load_or_create(Some(&file), dir.path()).expect_err("empty");
        assert_eq!(
            err.to_string(),
            format!("the join token file {} is empty", file.display())
        );
    }
}

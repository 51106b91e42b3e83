//! Code bundles sent apart from their registration: `faasd register` hashes a large bundle,
//! asks the server whether it has it (`HEAD /v1/blobs/sha256:<hex>`), uploads it only if not
//! (`PUT`, streamed from disk with a progress bar on a terminal), and registers it by digest.
//! Registering the same bundle twice uploads nothing the second time.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use hyper::{Method, StatusCode};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::client::Client;

/// Bundles larger than this (4 MiB) are uploaded apart and registered by digest.
pub const UPLOAD_THRESHOLD: u64 = 4 << 20;

/// The size of the pieces a file is read and sent in.
const PIECE_BYTES: usize = 1 << 20;

/// A bundle to upload.
pub enum Source {
    /// A file on disk, of this size: read as it is sent.
    File(PathBuf, u64),
    /// A bundle built in memory (a directory packed, standard input).
    Memory(Bytes),
}

/// Makes sure the server has the bundle, uploading it if it does not, and returns its digest
/// (`sha256:<hex>`) to register it by. Says on stderr whether it was uploaded.
pub async fn ensure_blob(client: &Client, source: Source) -> anyhow::Result<String> {
    let hash = match &source {
        Source::File(path, _) => hash_file(path.clone()).await?,
        Source::Memory(bytes) => Sha256::digest(bytes).into(),
    };
    let digest = format!("sha256:{}", crate::proto::hex(&hash));
    let path = format!("/v1/blobs/{digest}");
    let head = client
        .request(Method::HEAD, &path, None, Bytes::new())
        .await?;
    if head.status == StatusCode::OK {
        eprintln!("code already on the server ({digest})");
        return Ok(digest);
    }
    let answer = match source {
        Source::Memory(bytes) => {
            let ct = Some("application/octet-stream");
            client.request(Method::PUT, &path, ct, bytes).await?
        }
        Source::File(file, len) => {
            let bar = progress_bar(len);
            let answer = client
                .put_stream(&path, len, read_pieces(file, bar.clone()))
                .await;
            bar.finish_and_clear();
            answer?
        }
    };
    let answer = answer.ok()?;
    let bytes = answer.json::<serde_json::Value>()?["bytes"]
        .as_u64()
        .unwrap_or_default();
    eprintln!("uploaded {bytes} bytes of code ({digest})");
    Ok(digest)
}

/// The SHA-256 of a file, read on a blocking thread.
async fn hash_file(path: PathBuf) -> anyhow::Result<[u8; 32]> {
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut hasher = Sha256::new();
        let mut piece = vec![0; PIECE_BYTES];
        loop {
            let n = file
                .read(&mut piece)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if n == 0 {
                return Ok(hasher.finalize().into());
            }
            hasher.update(&piece[..n]);
        }
    })
    .await
    .context("the hashing thread failed")?
}

/// A file's bytes as a stream of pieces, moving `bar` on as each is read.
fn read_pieces(
    path: PathBuf,
    bar: ProgressBar,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static {
    futures_util::stream::unfold(None, move |file: Option<tokio::fs::File>| {
        let (path, bar) = (path.clone(), bar.clone());
        async move {
            use tokio::io::AsyncReadExt;
            let mut file = match file {
                Some(file) => file,
                None => match tokio::fs::File::open(&path).await {
                    Ok(file) => file,
                    Err(e) => return Some((Err(e), None)),
                },
            };
            let mut piece = bytes::BytesMut::with_capacity(PIECE_BYTES);
            match file.read_buf(&mut piece).await {
                Ok(0) => None,
                Ok(n) => {
                    bar.inc(n as u64);
                    Some((Ok(piece.freeze()), Some(file)))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    })
}

/// A progress bar of bytes sent on stderr when it is a terminal; a hidden one otherwise.
fn progress_bar(len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "uploading [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

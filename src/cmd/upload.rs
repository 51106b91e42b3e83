//! Code bundles sent apart from their registration: `faasd register` hashes a large bundle,
//! asks the server whether it has it (`HEAD /v1/blobs/sha256:<hex>`), uploads it only if not
//! (`PUT`, streamed from disk with a progress bar on a terminal; an upload that breaks off is
//! resumed from what the server kept), and registers it by digest.
//! Registering the same bundle twice uploads nothing the second time.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use hyper::{Method, StatusCode};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::client::{Client, Error};

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

/// How many times an upload that broke off is resumed before the command gives up.
const RESUMES: u32 = 3;

/// Makes sure the server has the bundle, uploading it if it does not (resuming from what the
/// server kept when an upload breaks off), and returns its digest (`sha256:<hex>`) to register
/// it by. Says on stderr whether it was uploaded.
pub async fn ensure_blob(client: &Client, source: Source) -> anyhow::Result<String> {
    let hash = match &source {
        Source::File(path, _) => hash_file(path.clone()).await?,
        Source::Memory(bytes) => Sha256::digest(bytes).into(),
    };
    let digest = format!("sha256:{}", crate::proto::hex(&hash));
    let path = format!("/v1/blobs/{digest}");
    let len = match &source {
        Source::File(_, len) => *len,
        Source::Memory(bytes) => bytes.len() as u64,
    };
    let mut resumes = 0;
    loop {
        let head = client
            .request(Method::HEAD, &path, None, Bytes::new())
            .await?;
        if head.status == StatusCode::OK {
            match resumes {
                0 => eprintln!("code already on the server ({digest})"),
                _ => eprintln!("uploaded {len} bytes of code ({digest})"),
            }
            return Ok(digest);
        }
        let offset = head
            .headers
            .get(crate::api::UPLOAD_OFFSET)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|kept| *kept <= len)
            .unwrap_or(0);
        match send(client, &path, &source, offset).await {
            Ok(answer) => {
                let answer = answer.ok()?;
                let bytes = answer.json::<serde_json::Value>()?["bytes"]
                    .as_u64()
                    .unwrap_or_default();
                eprintln!("uploaded {bytes} bytes of code ({digest})");
                return Ok(digest);
            }
            Err(e @ (Error::Unreachable { .. } | Error::ReadAnswer { .. }))
                if resumes < RESUMES =>
            {
                eprintln!("the upload broke off ({e}); resuming");
                resumes += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends the bundle from byte `offset` (`?offset=` when resuming).
async fn send(
    client: &Client,
    path: &str,
    source: &Source,
    offset: u64,
) -> Result<crate::client::Answer, Error> {
    let path = match offset {
        0 => path.to_owned(),
        _ => format!("{path}?offset={offset}"),
    };
    match source {
        Source::Memory(bytes) => {
            let rest = bytes.slice(usize::try_from(offset).unwrap_or(bytes.len())..);
            let ct = Some("application/octet-stream");
            client.request(Method::PUT, &path, ct, rest).await
        }
        Source::File(file, len) => {
            let bar = progress_bar(*len);
            bar.set_position(offset);
            let pieces = read_pieces(file.clone(), offset, bar.clone());
            let answer = client.put_stream(&path, len - offset, pieces).await;
            bar.finish_and_clear();
            answer
        }
    }
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

/// A file's bytes from `offset` as a stream of pieces, moving `bar` on as each is read.
fn read_pieces(
    path: PathBuf,
    offset: u64,
    bar: ProgressBar,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static {
    futures_util::stream::unfold(None, move |file: Option<tokio::fs::File>| {
        let (path, bar) = (path.clone(), bar.clone());
        async move {
            use tokio::io::{AsyncReadExt, AsyncSeekExt};
            let mut file = match file {
                Some(file) => file,
                None => {
                    let opened = match tokio::fs::File::open(&path).await {
                        Ok(mut file) => file
                            .seek(std::io::SeekFrom::Start(offset))
                            .await
                            .map(|_| file),
                        Err(e) => Err(e),
                    };
                    match opened {
                        Ok(file) => file,
                        Err(e) => return Some((Err(e), None)),
                    }
                }
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

//! Proxied HTTP over the worker protocol: what an HTTP-service function is ([`HttpSpec`]), the
//! request that opens a stream ([`HttpOpen`]), and the flow control both sides share.
//!
//! A stream carries one request and its response, multiplexed by its id on the worker
//! connection. Each direction's body travels as `HttpBody` frames of at most [`CHUNK_BYTES`]
//! and ends with `HttpEnd` (or the stream with `HttpAbort`). A sender may have at most
//! [`WINDOW_BYTES`] of a stream's body unconfirmed: the receiver answers `HttpCredit` as it
//! passes bytes on ([`Window`] on the sending side, [`Inbox`] on the receiving one), so a slow
//! client or a slow service holds up only its own stream and never fills either side's memory.
//! A peer that sends past its window has its stream aborted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};

use super::{CodeHash, Frame, Isolation, Runtime};

/// The largest body piece one `HttpBody` frame carries.
pub const CHUNK_BYTES: usize = 64 << 10;

/// How much of one direction of a stream's body may be in flight, unconfirmed.
pub const WINDOW_BYTES: u32 = 1 << 20;

/// The default number of requests one executor of an HTTP-service function serves at once.
pub const DEFAULT_HTTP_CONCURRENCY: u32 = 100;

/// What makes a function an HTTP service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpSpec {
    /// The port the service listens on inside its sandbox.
    pub port: u16,
    /// How many requests one executor serves at once.
    pub concurrency: u32,
    /// Whether each request is also stored as a task.
    pub record_requests: bool,
}

/// What a worker needs to start an executor of an HTTP-service function version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpTarget {
    /// The function's name.
    pub function: String,
    /// Its version.
    pub version: u32,
    /// How its code runs.
    pub runtime: Runtime,
    /// The code bundle's hash.
    pub code_hash: CodeHash,
    /// Its timeout: the longest its start may take until the port accepts.
    pub timeout_ms: u64,
    /// Its environment variables.
    pub env: Vec<(String, String)>,
    /// Its sandbox settings.
    pub isolation: Isolation,
    /// Its service settings.
    pub http: HttpSpec,
    /// How long an idle executor lives.
    pub idle_timeout_ms: u64,
}

/// A proxied request: it opens stream `stream`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpOpen {
    /// The stream's id, chosen by the server.
    pub stream: u64,
    /// The function version that serves it.
    pub target: HttpTarget,
    /// The request method.
    pub method: String,
    /// The path and query as the service sees them (`/file?x=1`).
    pub uri: String,
    /// The request headers, hop-by-hop ones removed and `X-Forwarded-*` added.
    pub headers: Vec<(String, Bytes)>,
}

/// The headers that concern one connection only, never passed on by a proxy (RFC 9110 7.6.1).
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Whether a header is hop-by-hop (also `upgrade`, which this proxy does not carry).
pub fn is_hop_by_hop(name: &str) -> bool {
    name.eq_ignore_ascii_case("upgrade") || HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// The sending side of one direction of a stream: the bytes it may still send.
#[derive(Clone)]
pub struct Window(Arc<Semaphore>);

impl Default for Window {
    fn default() -> Self {
        Window(Arc::new(Semaphore::new(WINDOW_BYTES as usize)))
    }
}

impl Window {
    /// Waits until `bytes` may be sent and takes them from the window; `false` once closed.
    async fn reserve(&self, bytes: usize) -> bool {
        match self.0.acquire_many(bytes as u32).await {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(_) => false,
        }
    }

    /// The receiver confirmed `bytes`: they may be sent again (capped at the window).
    pub fn grant(&self, bytes: u32) {
        let room = (WINDOW_BYTES as usize).saturating_sub(self.0.available_permits());
        self.0.add_permits((bytes as usize).min(room));
    }

    /// Ends the stream's sending: a sender waiting for room gives up.
    pub fn close(&self) {
        self.0.close();
    }
}

/// Sends `body` on stream `stream` as `HttpBody` frames within `window`, then `HttpEnd`; a body
/// that fails is reported as `HttpAbort`. Returns whether the whole body was sent.
pub async fn send_body<B>(
    stream: u64,
    mut body: B,
    window: &Window,
    frames: &mpsc::UnboundedSender<Frame>,
) -> bool
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    loop {
        let data = match body.frame().await {
            None => break,
            Some(Err(e)) => {
                let reason = format!("the body could not be read: {e}");
                let _ = frames.send(Frame::HttpAbort { stream, reason });
                return false;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_trailers) => continue,
            },
        };
        let mut rest = data;
        while !rest.is_empty() {
            let piece = rest.split_to(rest.len().min(CHUNK_BYTES));
            if !window.reserve(piece.len()).await {
                return false;
            }
            let frame = Frame::HttpBody {
                stream,
                bytes: piece,
            };
            if frames.send(frame).is_err() {
                return false;
            }
        }
    }
    frames.send(Frame::HttpEnd { stream }).is_ok()
}

/// One piece of a received body.
#[derive(Debug)]
pub enum Piece {
    /// Bytes of the body.
    Data(Bytes),
    /// The body is complete.
    End,
    /// The stream was abandoned, with the reason.
    Abort(String),
}

/// The receiving side of one direction of a stream, as the connection's reader sees it: it
/// hands pieces on and refuses a sender that overruns its window.
#[derive(Clone)]
pub struct Inbox {
    pieces: mpsc::UnboundedSender<Piece>,
    unconfirmed: Arc<AtomicU64>,
}

/// A sender sent more than its window.
#[derive(Debug, thiserror::Error)]
#[error(
    "the peer sent {unconfirmed} bytes of a stream's body without credit (window {WINDOW_BYTES})"
)]
pub struct Overrun {
    /// The bytes in flight with this piece.
    pub unconfirmed: u64,
}

/// The consumer of a received body: a stream of its bytes that sends `HttpCredit` for each
/// piece it yields.
pub struct Outlet {
    stream: u64,
    pieces: mpsc::UnboundedReceiver<Piece>,
    unconfirmed: Arc<AtomicU64>,
    frames: mpsc::UnboundedSender<Frame>,
}

/// A new receiving side of stream `stream` whose credits go out on `frames`.
pub fn inbox(stream: u64, frames: mpsc::UnboundedSender<Frame>) -> (Inbox, Outlet) {
    let (tx, rx) = mpsc::unbounded_channel();
    let unconfirmed = Arc::new(AtomicU64::new(0));
    let inbox = Inbox {
        pieces: tx,
        unconfirmed: unconfirmed.clone(),
    };
    let outlet = Outlet {
        stream,
        pieces: rx,
        unconfirmed,
        frames,
    };
    (inbox, outlet)
}

impl Inbox {
    /// Hands a piece on; a data piece past the window is refused.
    pub fn push(&self, piece: Piece) -> Result<(), Overrun> {
        if let Piece::Data(bytes) = &piece {
            let len = bytes.len() as u64;
            let unconfirmed = self.unconfirmed.fetch_add(len, Ordering::AcqRel) + len;
            if unconfirmed > u64::from(WINDOW_BYTES) {
                return Err(Overrun { unconfirmed });
            }
        }
        // The consumer may be gone (the client left); the stream's end cleans up.
        let _ = self.pieces.send(piece);
        Ok(())
    }
}

/// Why a received body ended early.
#[derive(Debug, thiserror::Error)]
#[error("the stream was abandoned: {reason}")]
pub struct Abandoned {
    /// The peer's reason, or the connection's end.
    pub reason: String,
}

impl Outlet {
    /// The next piece of the body (`Ok(None)` at its end), confirming it to the sender.
    pub async fn next(&mut self) -> Result<Option<Bytes>, Abandoned> {
        match self.pieces.recv().await {
            Some(Piece::Data(bytes)) => {
                let len = bytes.len() as u64;
                self.unconfirmed.fetch_sub(len, Ordering::AcqRel);
                let _ = self.frames.send(Frame::HttpCredit {
                    stream: self.stream,
                    bytes: len as u32,
                });
                Ok(Some(bytes))
            }
            Some(Piece::End) => Ok(None),
            Some(Piece::Abort(reason)) => Err(Abandoned { reason }),
            None => Err(Abandoned {
                reason: "the connection ended".into(),
            }),
        }
    }

    /// The body as a stream of byte pieces, for an HTTP body.
    pub fn into_stream(
        self,
    ) -> impl futures_util::Stream<Item = Result<Bytes, Abandoned>> + Send + 'static {
        futures_util::stream::unfold(Some(self), |outlet| async move {
            let mut outlet = outlet?;
            match outlet.next().await {
                Ok(Some(bytes)) => Some((Ok(bytes), Some(outlet))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_is_cut_into_chunks_within_the_window_and_credit_reopens_it() {
        let (frames, mut sent) = mpsc::unbounded_channel();
        let window = Window::default();
        let big = Bytes::from(vec![7u8; WINDOW_BYTES as usize + CHUNK_BYTES]);
        let body = http_body_util::Full::new(big);
        let sender = {
            let window = window.clone();
            tokio::spawn(async move { send_body(9, body, &window, &frames).await })
        };
        let mut got = 0usize;
        while got < WINDOW_BYTES as usize {
            match sent.recv().await.expect("a frame") {
                Frame::HttpBody { stream: 9, bytes } => {
                    assert!(bytes.len() <= CHUNK_BYTES);
                    got += bytes.len();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // The window is used up: nothing more until credit comes.
        tokio::task::yield_now().await;
        assert!(sent.try_recv().is_err());
        window.grant(CHUNK_BYTES as u32);
        assert!(matches!(sent.recv().await, Some(Frame::HttpBody { .. })));
        assert!(matches!(
            sent.recv().await,
            Some(Frame::HttpEnd { stream: 9 })
        ));
        assert!(sender.await.expect("join"));
    }

    #[tokio::test]
    async fn a_receiver_credits_what_it_yields_and_refuses_an_overrun() {
        let (frames, mut credits) = mpsc::unbounded_channel();
        let (inbox, mut outlet) = inbox(3, frames);
        inbox
            .push(Piece::Data(Bytes::from_static(b"abc")))
            .expect("within the window");
        inbox.push(Piece::End).expect("end");
        assert_eq!(
            outlet.next().await.expect("data"),
            Some(Bytes::from_static(b"abc"))
        );
        assert!(matches!(
            credits.try_recv(),
            Ok(Frame::HttpCredit {
                stream: 3,
                bytes: 3
            })
        ));
        assert_eq!(outlet.next().await.expect("end"), None);
        let too_much = Bytes::from(vec![0u8; WINDOW_BYTES as usize + 1]);
        assert!(inbox.push(Piece::Data(too_much)).is_err());
    }

    #[test]
    fn hop_by_hop_headers_are_known_in_any_case() {
        assert!(is_hop_by_hop("Connection"));
        assert!(is_hop_by_hop("transfer-encoding"));
        assert!(is_hop_by_hop("Upgrade"));
        assert!(!is_hop_by_hop("content-type"));
    }
}

//! The server side of one worker connection: the handshake ([`handshake`], with the join-token
//! check of [`Admission`]), then a loop that
//! hands each frame from the worker to a handler named after it (`on_report`, `on_fetch_code`,
//! `on_heartbeat` and its `Health`, `on_pull`, `on_drain`) until the connection ends, when the worker's leased
//! tasks are handed back to the broker.

use std::sync::Arc;
use std::time::Duration;

use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Broker;
use crate::proto::{
    self, CodeHash, Frame, HANDSHAKE_TIMEOUT, PROTOCOL_VERSION, Reader, Report, Writer,
};

/// How often workers are asked to heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// How many heartbeat periods may pass without any frame before the worker is declared dead.
const MISSED_HEARTBEATS: u32 = 3;

/// How long a leaving worker's connection may take to write its last frames and shut down.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Who may join over one connection.
#[derive(Clone)]
pub enum Admission {
    /// Any worker: the workers inside `serve`, over their in-memory pipe.
    Open,
    /// A worker that presents the join token, or any worker when `exempt` (a loopback peer
    /// while the server is in protected mode).
    JoinToken {
        /// The server's join token.
        token: Arc<str>,
        /// Whether this connection needs no token.
        exempt: bool,
    },
}

/// Why a worker with no token or the wrong one is refused.
pub const WRONG_JOIN_TOKEN: &str = "the join token is missing or wrong: pass the server's token with --join-token or FAASD_JOIN_TOKEN (print it on the server with `faasd join-token`)";

impl Admission {
    /// Whether a worker that presents `presented` may join (compared in constant time).
    fn admits(&self, presented: &str) -> bool {
        match self {
            Admission::Open => true,
            Admission::JoinToken { exempt: true, .. } => true,
            Admission::JoinToken { token, .. } => {
                // Lengths are not secret (every generated token has the same); bytes are.
                bool::from(token.as_bytes().ct_eq(presented.as_bytes()))
            }
        }
    }
}

/// What a worker announced in its `Hello`.
/// One attached worker, as the session loop sees it.
struct Session {
    broker: Broker,
    id: u64,
    name: String,
    /// Frames queued to the worker (written by the pump task).
    frames: mpsc::UnboundedSender<Frame>,
}

/// The task writing queued frames to the worker.
type Pump = tokio::task::JoinHandle<Result<(), proto::Error>>;

/// Whether the session loop goes on after a frame.
enum Next {
    Continue,
    Close,
}

/// Serves one worker connection, admitted by `admission`, until it ends or `cancel` fires.
pub async fn serve_worker<T>(
    broker: Broker,
    io: T,
    address: String,
    admission: Admission,
    cancel: CancellationToken,
) where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = proto::split(io);
    // Until the worker has said who it is, it may only send small frames.
    reader.set_max_frame_bytes(proto::HANDSHAKE_FRAME_BYTES);
    let handshake = handshake(&mut reader, &mut writer, &address, &admission);
    // One deadline for the whole handshake, however the worker spreads its frames.
    let hello = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(hello) => hello,
        Err(_) => {
            tracing::warn!(%address, "worker did not finish its handshake within {HANDSHAKE_TIMEOUT:?}; closing");
            None
        }
    };
    let Some(joining) = hello else {
        return;
    };
    reader.set_max_frame_bytes(proto::MAX_FRAME_BYTES);

    let (frames, outbox) = mpsc::unbounded_channel();
    let name = joining.name.clone();
    let (slots, mode, runtimes) = (joining.slots, joining.mode, joining.runtimes.clone());
    if broker.workers().iter().any(|w| w.name == joining.name) {
        // Allowed (a restarted worker may join before its old session is dropped), but the
        // tasks' records and the lists name workers by name: say so.
        tracing::warn!(name = %joining.name, %address, "a worker of the same name is connected: give each worker its own --name");
    }
    let id = broker.attach_worker(joining, frames.clone(), HEARTBEAT);
    tracing::info!(worker = id, %name, %address, slots, ?mode, ?runtimes, "worker joined");
    let mut pump = tokio::spawn(async move { writer.pump(outbox).await });
    let session = Session {
        broker,
        id,
        name,
        frames,
    };

    session.run(&mut reader, &mut pump, &cancel).await;
    session.end(pump).await;
}

/// Waits for the worker's `Hello` and `Join` and checks them. A worker that sends garbage,
/// sends another frame first, speaks another protocol version, or lacks the join token is
/// refused (`None`); the caller bounds the wait.
async fn handshake<R, W>(
    reader: &mut Reader<R>,
    writer: &mut Writer<W>,
    address: &str,
    admission: &Admission,
) -> Option<super::Joining>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Frame::Hello {
        protocol,
        name,
        slots,
        mode,
        runtimes,
    } = handshake_frame(reader, writer, address).await?
    else {
        tracing::warn!(%address, "worker's first frame was not a hello; closing");
        refuse(writer, "the first frame must be a Hello".into()).await;
        return None;
    };
    if protocol != PROTOCOL_VERSION {
        let reason = mismatch(protocol);
        tracing::warn!(%address, worker = %name, "{reason}; refusing");
        refuse(writer, reason).await;
        return None;
    }
    let Frame::Join { token } = handshake_frame(reader, writer, address).await? else {
        tracing::warn!(%address, worker = %name, "worker's second frame was not a join; closing");
        refuse(writer, "the second frame must be a Join".into()).await;
        return None;
    };
    if !admission.admits(&token) {
        tracing::warn!(%address, worker = %name, "worker's join token is missing or wrong; refusing");
        refuse(writer, WRONG_JOIN_TOKEN.into()).await;
        return None;
    }
    Some(super::Joining {
        name,
        address: address.to_owned(),
        slots,
        mode,
        runtimes,
    })
}

/// Why a worker speaking `protocol` is refused.
fn mismatch(protocol: u32) -> String {
    format!("protocol version mismatch: worker speaks {protocol}, server speaks {PROTOCOL_VERSION}")
}

/// Reads one handshake frame; `None` (logged) when the connection fails or ends first. A
/// worker of another version whose `Hello` does not decode here is told why.
async fn handshake_frame<R, W>(
    reader: &mut Reader<R>,
    writer: &mut Writer<W>,
    address: &str,
) -> Option<Frame>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match reader.next().await {
        Err(proto::Error::OtherProtocol { protocol }) => {
            let reason = mismatch(protocol);
            tracing::warn!(%address, "{reason}; refusing");
            refuse(writer, reason).await;
            None
        }
        Err(e) => {
            tracing::warn!(%address, error = %e, "bad handshake from worker; closing");
            None
        }
        Ok(frame) => frame,
    }
}

/// Tells the worker why it is refused (best effort: it may be gone already).
async fn refuse<W: AsyncWrite + Unpin>(writer: &mut Writer<W>, reason: String) {
    let _ = writer.send(&Frame::Refused { reason }).await;
}

impl Session {
    /// Reads frames from the worker and handles each until the connection ends, the worker
    /// falls silent, writing to it fails, or `cancel` fires.
    async fn run<R: AsyncRead + Unpin>(
        &self,
        reader: &mut Reader<R>,
        pump: &mut Pump,
        cancel: &CancellationToken,
    ) {
        let silence_limit = HEARTBEAT * MISSED_HEARTBEATS;
        loop {
            // Any frame proves the worker alive; silence past the limit ends the connection and
            // hands its tasks to other workers.
            let frame = tokio::select! {
                frame = reader.next() => frame,
                () = tokio::time::sleep(silence_limit) => {
                    tracing::warn!(worker = self.id, name = %self.name, "no heartbeat for {silence_limit:?}; declaring the worker dead");
                    return;
                }
                () = cancel.cancelled() => return,
                ended = &mut *pump => {
                    // Nothing more can reach the worker: end the session so its tasks move on.
                    tracing::warn!(worker = self.id, name = %self.name, outcome = ?ended, "writing to the worker failed; closing");
                    return;
                }
            };
            let next = match frame {
                Ok(Some(frame)) => self.on_frame(frame),
                Ok(None) => Next::Close,
                Err(e) => {
                    tracing::warn!(worker = self.id, error = %e, "worker connection failed; closing");
                    Next::Close
                }
            };
            if let Next::Close = next {
                return;
            }
        }
    }

    /// Hands one frame from the worker to its handler.
    fn on_frame(&self, frame: Frame) -> Next {
        if self.broker.on_http_frame(self.id, &frame) {
            return Next::Continue;
        }
        match frame {
            Frame::Report(report) => self.on_report(report),
            Frame::FetchCode { hash } => self.on_fetch_code(hash),
            Frame::FetchCodeChunk {
                hash,
                offset,
                max_len,
            } => self.on_fetch_code_chunk(hash, offset, max_len),
            Frame::Heartbeat { .. } => self.on_heartbeat(),
            Frame::Health(health) => self.broker.health(self.id, health),
            Frame::Warm(warm) => self.broker.warm(self.id, warm),
            Frame::Pull { slots } => self.on_pull(slots),
            Frame::Drain => self.on_drain(),
            Frame::CodeChecked { check, verdict } => {
                self.broker.code_checked(self.id, check, verdict)
            }
            other => {
                tracing::warn!(worker = self.id, frame = ?other, "unexpected frame from worker; closing");
                return Next::Close;
            }
        }
        Next::Continue
    }

    /// A task finished on the worker.
    fn on_report(&self, report: Report) {
        self.broker.report(self.id, report);
    }

    /// The worker wants a whole code bundle (one `Code` frame): read it off the session loop
    /// and send it back (`found: false` when the store has no such bundle, fails, or the
    /// bundle is too large for one frame: such a bundle is fetched in chunks).
    fn on_fetch_code(&self, hash: CodeHash) {
        let broker = self.broker.clone();
        let frames = self.frames.clone();
        let id = self.id;
        tokio::spawn(async move {
            let max = crate::proto::CODE_CHUNK_BYTES as usize;
            let (found, bytes) = match broker.store().code_chunk(hash, 0, max).await {
                Ok(Some((total, bytes))) if total == bytes.len() as u64 => {
                    broker.note_cached(id, hash);
                    (true, bytes)
                }
                Ok(_) => (false, Default::default()),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read a code blob for a worker");
                    (false, Default::default())
                }
            };
            let _ = frames.send(Frame::Code { hash, found, bytes });
        });
    }

    /// The worker wants a chunk of a code bundle: read it off the session loop and send it
    /// back as a `CodeChunk` frame (`found: false` when the store has no such bundle or
    /// fails). A chunk is at most [`crate::proto::CODE_CHUNK_BYTES`] whatever was asked.
    fn on_fetch_code_chunk(&self, hash: CodeHash, offset: u64, max_len: u32) {
        let broker = self.broker.clone();
        let frames = self.frames.clone();
        let id = self.id;
        tokio::spawn(async move {
            let max = max_len.min(crate::proto::CODE_CHUNK_BYTES) as usize;
            let (found, total_bytes, bytes) =
                match broker.store().code_chunk(hash, offset, max).await {
                    Ok(Some((total, bytes))) => {
                        if offset + bytes.len() as u64 >= total {
                            broker.note_cached(id, hash);
                        }
                        (true, total, bytes)
                    }
                    Ok(None) => (false, 0, Default::default()),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read a code blob for a worker");
                        (false, 0, Default::default())
                    }
                };
            let _ = frames.send(Frame::CodeChunk {
                hash,
                offset,
                total_bytes,
                bytes,
                found,
            });
        });
    }

    /// The worker is alive.
    fn on_heartbeat(&self) {
        self.broker.heartbeat(self.id);
    }

    /// A pull-mode worker asks for up to `slots` more tasks.
    fn on_pull(&self, slots: u32) {
        self.broker.pull(self.id, slots);
    }

    /// The worker takes no new tasks from now on.
    fn on_drain(&self) {
        tracing::info!(worker = self.id, "worker is draining");
        self.broker.drain_worker(self.id);
    }

    /// Detaches the worker, handing its leased tasks back, and stops writing to it.
    async fn end(self, pump: Pump) {
        let Session {
            broker,
            id,
            name,
            frames,
        } = self;
        broker.detach_worker(id);
        drop(frames);
        // With every sender gone the pump writes what is queued and shuts the stream down (a
        // TLS close_notify), unless the worker stopped reading: then it is cut off.
        // (A pump that already ended, polled to its end by `run`, must not be awaited again.)
        if !pump.is_finished() {
            let abort = pump.abort_handle();
            if tokio::time::timeout(CLOSE_GRACE, pump).await.is_err() {
                abort.abort();
            }
        }
        tracing::info!(worker = id, %name, "worker left");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(protocol: u32) -> Frame {
        Frame::Hello {
            protocol,
            name: "w".into(),
            slots: 1,
            mode: proto::DispatchMode::Push,
            runtimes: proto::Runtime::ALL.to_vec(),
        }
    }

    fn token(exempt: bool) -> Admission {
        Admission::JoinToken {
            token: "right".into(),
            exempt,
        }
    }

    /// Runs the server's handshake against a worker that sends `frames` and then waits;
    /// returns whether it was admitted and the refusal it got, if any.
    async fn handshake_with(frames: Vec<Frame>, admission: Admission) -> (bool, Option<String>) {
        let (worker_end, server_end) = tokio::io::duplex(1 << 16);
        let (mut server_reader, mut server_writer) = proto::split(server_end);
        let (mut reader, mut writer) = proto::split(worker_end);
        for frame in &frames {
            writer.send(frame).await.expect("send");
        }
        let admitted = handshake(&mut server_reader, &mut server_writer, "test", &admission)
            .await
            .is_some();
        // Both halves: the pipe closes only when the whole server end is gone.
        drop((server_reader, server_writer));
        let refusal = match reader.next().await.expect("read") {
            Some(Frame::Refused { reason }) => Some(reason),
            Some(other) => panic!("unexpected answer {other:?}"),
            None => None,
        };
        (admitted, refusal)
    }

    fn join(token: &str) -> Frame {
        Frame::Join {
            token: token.into(),
        }
    }

    #[tokio::test]
    async fn the_right_token_is_admitted_and_a_wrong_or_empty_one_refused() {
        let right = vec![hello(PROTOCOL_VERSION), join("right")];
        assert_eq!(handshake_with(right, token(false)).await, (true, None));
        for presented in ["wrong", "", "righ", "right "] {
            let frames = vec![hello(PROTOCOL_VERSION), join(presented)];
            let (admitted, refusal) = handshake_with(frames, token(false)).await;
            assert!(!admitted, "{presented:?}");
            assert_eq!(refusal.as_deref(), Some(WRONG_JOIN_TOKEN));
        }
    }

    #[tokio::test]
    async fn an_exempt_or_open_connection_needs_no_token() {
        let frames = vec![hello(PROTOCOL_VERSION), join("")];
        assert_eq!(
            handshake_with(frames.clone(), token(true)).await,
            (true, None)
        );
        assert_eq!(handshake_with(frames, Admission::Open).await, (true, None));
    }

    #[tokio::test]
    async fn an_older_worker_that_sends_only_hello_gets_a_version_mismatch() {
        let (admitted, refusal) =
            handshake_with(vec![hello(PROTOCOL_VERSION - 1)], token(false)).await;
        assert!(!admitted);
        assert_eq!(
            refusal.as_deref(),
            Some(
                format!(
                    "protocol version mismatch: worker speaks {}, server speaks {PROTOCOL_VERSION}",
                    PROTOCOL_VERSION - 1
                )
                .as_str()
            )
        );
    }

    #[tokio::test]
    async fn a_hello_not_followed_by_a_join_is_refused() {
        let frames = vec![hello(PROTOCOL_VERSION), Frame::Drain];
        let (admitted, refusal) = handshake_with(frames, Admission::Open).await;
        assert!(!admitted);
        assert_eq!(refusal.as_deref(), Some("the second frame must be a Join"));
    }
}

//! The worker protocol: the frames `serve` and its workers exchange, and their codec.
//!
//! Frames are postcard-encoded [`Frame`] values inside a `LengthDelimitedCodec` with a capped
//! frame length. The same frames travel over TCP for remote workers and over an in-memory
//! `tokio::io::duplex` pipe for the workers inside `serve`.
//!
//! postcard encodes enum variants by index, so variants and fields are only ever appended, and
//! [`PROTOCOL_VERSION`] is bumped on any change. The golden-bytes tests below pin every variant.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

pub mod http;
pub use http::{HttpOpen, HttpSpec, HttpTarget};

/// The protocol version both sides announce in their first frame.
pub const PROTOCOL_VERSION: u32 = 10;

/// The largest frame either side accepts (64 MiB).
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// The size of the chunks a worker fetches code in (`FetchCodeChunk`).
pub const CODE_CHUNK_BYTES: u32 = 4 << 20;

/// The largest frame either side accepts until the handshake is done: a `Hello`, `Join`,
/// `Welcome` or `Refused` is a few dozen bytes, so a peer cannot make the other side reserve a
/// large frame buffer before it has said who it is.
pub const HANDSHAKE_FRAME_BYTES: usize = 4 << 10;

/// How long a new connection may take to complete its handshake.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A SHA-256 content hash naming a code bundle.
pub type CodeHash = [u8; 32];

/// How a worker receives tasks. Named `push` and `pull` in JSON (`GET /v1/workers`); postcard
/// encodes it by variant index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DispatchMode {
    /// The broker places tasks on the worker's free slots.
    Push,
    /// The worker asks for one task each time a slot frees.
    Pull,
}

/// How a function's code is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    /// `sh` runs the script.
    Shell,
    /// The bundle is an executable run directly.
    Exec,
    /// The bundle is a Python module defining `handle(payload)`, run by the embedded harness.
    Python,
    /// The bundle is a dill-pickled Python callable, called with pickled `(args, kwargs)`.
    Pickle,
    /// The bundle is a container image archive (`docker save` or an OCI layout in a tar): its
    /// unpacked layers are the sandbox's root and its config says what to run.
    Oci,
}

impl Runtime {
    /// Every runtime.
    pub const ALL: [Runtime; 5] = [
        Runtime::Shell,
        Runtime::Exec,
        Runtime::Python,
        Runtime::Pickle,
        Runtime::Oci,
    ];

    /// The name used in the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Shell => "shell",
            Runtime::Exec => "exec",
            Runtime::Python => "python",
            Runtime::Pickle => "pickle",
            Runtime::Oci => "oci",
        }
    }

    /// The runtimes whose functions may be HTTP services, for messages.
    pub const SERVING_HTTP: &'static str = "exec, python or oci";

    /// Whether a function of this runtime may be an HTTP service (`--http-port`): its program
    /// can be started as a server that listens.
    pub fn serves_http(self) -> bool {
        matches!(self, Runtime::Exec | Runtime::Python | Runtime::Oci)
    }

    /// Whether calls of this runtime always run in warm executors.
    pub fn always_warm(self) -> bool {
        matches!(self, Runtime::Python | Runtime::Pickle)
    }
}

/// A runtime name that is not one of faasd's runtimes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown runtime {name:?} (expected shell, exec, python, pickle or oci)")]
pub struct UnknownRuntime {
    /// The name given.
    pub name: String,
}

impl std::str::FromStr for Runtime {
    type Err = UnknownRuntime;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "shell" => Ok(Runtime::Shell),
            "exec" => Ok(Runtime::Exec),
            "python" => Ok(Runtime::Python),
            "pickle" => Ok(Runtime::Pickle),
            "oci" => Ok(Runtime::Oci),
            other => Err(UnknownRuntime {
                name: other.to_string(),
            }),
        }
    }
}

/// Why a task failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// The function exited with a non-zero status.
    ExitStatus,
    /// The function was killed by a signal it did not ask for.
    Signal,
    /// The function ran past its timeout and its process group was killed.
    Timeout,
    /// The executor could not be started.
    SpawnFailed,
    /// The function wrote more to stdout than the result limit allows.
    OutputTooLarge,
    /// The worker running the task went away too many times.
    WorkerLost,
    /// The worker could not obtain the function's code.
    CodeUnavailable,
    /// A process that escaped the call's process group kept its output pipes open.
    OutputHeldOpen,
    /// The handler raised an exception (its traceback is in the task's stderr).
    Exception,
    /// A warm executor died during the call.
    ExecutorDied,
    /// A warm executor broke the frame protocol (garbage on its stdout).
    ProtocolError,
    /// A warm executor failed to start or to initialise.
    InitFailed,
    /// The call's memory limit killed it.
    OutOfMemory,
    /// The task was cancelled before it ran (`POST /v1/tasks/{id}/cancel`, a function's
    /// cancel, or `faasd rm` of its function). Set by the server only; no worker sends it.
    Cancelled,
}

impl FailureReason {
    /// The reason's name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::ExitStatus => "exit_status",
            FailureReason::Signal => "signal",
            FailureReason::Timeout => "timeout",
            FailureReason::SpawnFailed => "spawn_failed",
            FailureReason::OutputTooLarge => "output_too_large",
            FailureReason::WorkerLost => "worker_lost",
            FailureReason::CodeUnavailable => "code_unavailable",
            FailureReason::OutputHeldOpen => "output_held_open",
            FailureReason::Exception => "exception",
            FailureReason::ExecutorDied => "executor_died",
            FailureReason::ProtocolError => "protocol_error",
            FailureReason::InitFailed => "init_failed",
            FailureReason::OutOfMemory => "out_of_memory",
            FailureReason::Cancelled => "cancelled",
        }
    }
}

/// One task handed to a worker under a lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// The task's id.
    pub task_id: u128,
    /// The lease number; a report under any other number is refused.
    pub lease: u64,
    /// The function's name.
    pub function: String,
    /// The function's version.
    pub version: u32,
    /// How to run the code.
    pub runtime: Runtime,
    /// The code bundle's content hash; the worker fetches it if it lacks it.
    pub code_hash: CodeHash,
    /// How long the run may take before its process group is killed.
    pub timeout_ms: u64,
    /// Environment variables of the function.
    pub env: Vec<(String, String)>,
    /// The bytes written to the function's stdin.
    pub payload: Bytes,
    /// Run in a warm executor kept between calls (`None`: a fresh process per call).
    pub warm: Option<WarmSpec>,
    /// The payload is JSON (the caller sent `Content-Type: application/json`).
    pub json: bool,
    /// The function's sandbox settings.
    pub isolation: Isolation,
}

/// A function's own sandbox settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    /// Its memory limit per call (`None`: the worker's default).
    pub memory_bytes: Option<u64>,
    /// Whether it may use the host's network (else loopback only).
    pub allow_net: bool,
}

/// How a function's warm executors are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmSpec {
    /// Executors kept ready even when idle.
    pub min_warm: u32,
    /// How long an idle executor (beyond `min_warm`) lives.
    pub idle_timeout_ms: u64,
}

/// The outcome of one run, as the executor saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Why the run failed, or `None` when it completed.
    pub failure: Option<FailureReason>,
    /// The exit status, when the process exited.
    pub exit_code: Option<i32>,
    /// The signal that ended the process, when one did.
    pub signal: Option<i32>,
    /// A human-readable detail of a failure.
    pub message: Option<String>,
    /// What the function wrote to stdout (its result).
    pub stdout: Bytes,
    /// What it wrote to stderr, bounded, with a truncation marker.
    pub stderr: Bytes,
    /// Wall-clock time of the call itself, in microseconds.
    pub run_us: u64,
    /// Whether the call started a new executor.
    pub cold_start: bool,
    /// The new executor's start-up and init time (the load phase), in microseconds.
    pub init_us: u64,
    /// CPU time (user + system) of the call, in microseconds: the executor's whole for a cold
    /// run, its increase over the call for a warm one.
    pub cpu_us: u64,
    /// The executor's peak resident memory, in bytes (for a warm executor, over its life).
    pub peak_memory_bytes: u64,
}

/// A worker's report of a finished task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The task's id.
    pub task_id: u128,
    /// The lease the worker ran it under.
    pub lease: u64,
    /// What happened.
    pub outcome: Outcome,
}

/// Every message of the worker protocol. Append only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// Worker → server, first frame: who it is and what it offers.
    Hello {
        /// Must equal [`PROTOCOL_VERSION`].
        protocol: u32,
        /// A name for people (host name by default).
        name: String,
        /// How many tasks it runs at once.
        slots: u32,
        /// How it wants to receive tasks.
        mode: DispatchMode,
        /// The runtimes it can start executors of (no `python` without an interpreter, no
        /// `oci` without the sandbox): the server gives it no other task (protocol 10).
        runtimes: Vec<Runtime>,
    },
    /// Server → worker: the handshake succeeded.
    Welcome {
        /// The server's protocol version.
        protocol: u32,
        /// The id the server gave this connection.
        worker_id: u64,
        /// How often the worker must heartbeat.
        heartbeat_ms: u32,
    },
    /// Either side: the connection is refused, with the reason; the sender then closes it.
    Refused {
        /// What was wrong, for the log on the other side.
        reason: String,
    },
    /// Server → worker: run this task.
    Assign(Assignment),
    /// Worker → server: send me the code with this hash.
    FetchCode {
        /// The bundle wanted.
        hash: CodeHash,
    },
    /// Server → worker: the code asked for (empty and `found: false` when unknown).
    Code {
        /// The bundle's hash.
        hash: CodeHash,
        /// Whether the server has it.
        found: bool,
        /// The bundle's bytes.
        bytes: Bytes,
    },
    /// Worker → server: a task finished.
    Report(Report),
    /// Worker → server: still alive, with the number of running tasks.
    Heartbeat {
        /// Tasks running on the worker now.
        running: u32,
    },
    /// Worker → server (pull mode): send me up to `slots` more tasks.
    Pull {
        /// How many tasks the worker can take now.
        slots: u32,
    },
    /// Worker → server: take no new tasks for me; I finish what I have, then leave.
    Drain,
    /// Server → worker: keep `warm.min_warm` executors of this function version ready.
    Prewarm(Prewarm),
    /// Worker → server, right after its `Hello`: the join token that admits it (empty when it
    /// has none). A separate frame so that `Hello` keeps its layout, and a worker of an older
    /// protocol still gets a clear version mismatch.
    Join {
        /// The server's join token, as given to the worker.
        token: String,
    },
    /// Server → worker: compile this Python module without running it (a registration's code
    /// check, when the server has no interpreter of its own).
    CheckCode {
        /// The server's number for this check, echoed in the answer.
        check: u64,
        /// The module's file name, for the compiler's messages.
        file: String,
        /// The module's source.
        source: Bytes,
    },
    /// Worker → server: the answer to a `CheckCode`.
    CodeChecked {
        /// The check answered.
        check: u64,
        /// What the compiler said.
        verdict: CompileVerdict,
    },
    /// Worker → server, after each `Heartbeat`: the machine's health, read from `/proc`.
    Health(Health),
    /// Worker → server, after each `Health`: its warm executors (idle or serving) by function,
    /// for the functions that have any.
    Warm(Vec<WarmCount>),
    /// Server → worker: a proxied HTTP request to an HTTP-service function opens stream
    /// `open.stream`; its body follows as `HttpBody` frames and an `HttpEnd`.
    HttpOpen(HttpOpen),
    /// Worker → server: the response head of a stream; its body follows as `HttpBody` frames.
    HttpResponse {
        /// The stream.
        stream: u64,
        /// The HTTP status.
        status: u16,
        /// The response headers, in order (values as bytes).
        headers: Vec<(String, Bytes)>,
    },
    /// Either side: a piece of a stream's request (server → worker) or response (worker →
    /// server) body, at most [`http::CHUNK_BYTES`].
    HttpBody {
        /// The stream.
        stream: u64,
        /// The bytes.
        bytes: Bytes,
    },
    /// Either side: the sender's body of this stream is complete.
    HttpEnd {
        /// The stream.
        stream: u64,
    },
    /// Either side: the stream is abandoned (the client went away, the service failed).
    HttpAbort {
        /// The stream.
        stream: u64,
        /// Why, for the log and the client's error body.
        reason: String,
    },
    /// Either side: the receiver has passed on `bytes` more of the stream's body, so the sender
    /// may send that much more (each direction starts with [`http::WINDOW_BYTES`]).
    HttpCredit {
        /// The stream.
        stream: u64,
        /// The bytes consumed.
        bytes: u32,
    },
    /// Worker → server: send me up to `max_len` bytes of the code with this hash, from
    /// `offset` (a large bundle is fetched in chunks; see [`CODE_CHUNK_BYTES`]).
    FetchCodeChunk {
        /// The bundle wanted.
        hash: CodeHash,
        /// Where the chunk starts.
        offset: u64,
        /// The most bytes wanted.
        max_len: u32,
    },
    /// Server → worker: a chunk of the code asked for (empty and `found: false` when unknown).
    CodeChunk {
        /// The bundle's hash.
        hash: CodeHash,
        /// Where the chunk starts.
        offset: u64,
        /// The whole bundle's size.
        total_bytes: u64,
        /// The chunk's bytes.
        bytes: Bytes,
        /// Whether the server has the bundle.
        found: bool,
    },
    /// Server → worker: stop the task `task_id` it runs under `lease` (it was cancelled) and
    /// report it FAILED `cancelled`; a task no longer running there is left alone.
    Cancel {
        /// The task.
        task_id: u128,
        /// The lease it was assigned under.
        lease: u64,
    },
}

/// One function's warm executors on one worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmCount {
    /// The function's name.
    pub function: String,
    /// Its executors started and not stopped, over all its versions.
    pub executors: u32,
}

/// A worker machine's health, as its heartbeats carry it: whole-machine figures read from
/// `/proc/stat`, `/proc/meminfo` and `/proc/loadavg` (zero where they cannot be read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// CPU busy over the last heartbeat period, in percent of the whole machine (0 to 100).
    pub cpu_percent: f64,
    /// Memory in use: `MemTotal` − `MemAvailable`, in bytes.
    pub memory_used_bytes: u64,
    /// `MemTotal`, in bytes.
    pub memory_total_bytes: u64,
    /// The 1-minute load average.
    pub load1: f64,
    /// The 5-minute load average.
    pub load5: f64,
    /// The 15-minute load average.
    pub load15: f64,
}

/// What compiling a Python module (without running it) found: nothing wrong, a syntax error
/// with its place, or no top-level `handle`. Also the JSON the compile script prints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompileVerdict {
    /// The compiler's error (`SyntaxError: ...`), if any.
    #[serde(default)]
    pub error: Option<String>,
    /// The error's line, from 1.
    #[serde(default)]
    pub line: Option<u64>,
    /// The error's column, from 1.
    #[serde(default)]
    pub column: Option<u64>,
    /// The offending line's text.
    #[serde(default)]
    pub text: String,
    /// The module compiles but binds no top-level `handle`.
    #[serde(default)]
    pub missing_handle: bool,
    /// Why no compile happened at all (no interpreter): the verdict then says nothing.
    #[serde(default)]
    pub unavailable: Option<String>,
}

/// What a worker needs to start warm executors of a function version before any call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prewarm {
    /// The function's name.
    pub function: String,
    /// Its version.
    pub version: u32,
    /// How its code runs.
    pub runtime: Runtime,
    /// The code bundle's hash.
    pub code_hash: CodeHash,
    /// The start-up timeout.
    pub timeout_ms: u64,
    /// Its environment variables.
    pub env: Vec<(String, String)>,
    /// How its executors are kept.
    pub warm: WarmSpec,
    /// Its sandbox settings.
    pub isolation: Isolation,
}

/// The lowercase hex form of bytes (content hashes in paths, logs and the API).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Errors of the frame codec.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the connection failed (includes frames over the size cap).
    #[error("worker connection {op} failed: {source}")]
    Io {
        /// `read` or `write`.
        op: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A `Hello` of another protocol version, whose fields this side cannot decode (read
    /// from its first two numbers, which every version keeps: the variant and the version).
    #[error("a hello of protocol {protocol}, which this side does not speak")]
    OtherProtocol {
        /// The version the peer speaks.
        protocol: u32,
    },
    /// A frame's bytes are not a valid postcard `Frame`.
    #[error("undecodable frame of {len} bytes: {source}")]
    Decode {
        /// The frame's length.
        len: usize,
        /// The decoder's complaint.
        source: postcard::Error,
    },
    /// A frame could not be encoded.
    #[error("cannot encode frame: {source}")]
    Encode {
        /// The encoder's complaint.
        source: postcard::Error,
    },
}

/// The reading half of a worker connection.
pub struct Reader<R> {
    inner: FramedRead<R, LengthDelimitedCodec>,
}

/// The writing half of a worker connection.
pub struct Writer<W> {
    inner: FramedWrite<W, LengthDelimitedCodec>,
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME_BYTES)
        .new_codec()
}

/// Splits a byte stream into a frame reader and a frame writer, with the size cap set.
pub fn split<T: AsyncRead + AsyncWrite>(io: T) -> (Reader<ReadHalf<T>>, Writer<WriteHalf<T>>) {
    let (r, w) = tokio::io::split(io);
    (Reader::new(r), Writer::new(w))
}

/// Encodes one frame to its postcard bytes.
pub fn encode(frame: &Frame) -> Result<Bytes, Error> {
    postcard::to_stdvec(frame)
        .map(Bytes::from)
        .map_err(|source| Error::Encode { source })
}

/// Decodes one frame from its postcard bytes.
pub fn decode(bytes: &[u8]) -> Result<Frame, Error> {
    postcard::from_bytes(bytes).map_err(|source| Error::Decode {
        len: bytes.len(),
        source,
    })
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Wraps a byte reader.
    pub fn new(io: R) -> Self {
        Reader {
            inner: FramedRead::new(io, codec()),
        }
    }

    /// Reads the next frame; `Ok(None)` is a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Frame>, Error> {
        match self.inner.next().await {
            None => Ok(None),
            Some(Err(source)) => Err(Error::Io { op: "read", source }),
            Some(Ok(bytes)) => decode(&bytes).map(Some).map_err(|e| {
                match postcard::take_from_bytes::<(u32, u32)>(&bytes) {
                    // Variant 0 is `Hello` in every version; its first field is the version.
                    Ok(((0, protocol), _)) if protocol != PROTOCOL_VERSION => {
                        Error::OtherProtocol { protocol }
                    }
                    _ => e,
                }
            }),
        }
    }

    /// Sets the largest frame this reader accepts from now on: [`HANDSHAKE_FRAME_BYTES`] until
    /// the handshake is done, then [`MAX_FRAME_BYTES`]. A larger length prefix is a read error,
    /// raised before any of the frame is buffered.
    pub fn set_max_frame_bytes(&mut self, max: usize) {
        self.inner.decoder_mut().set_max_frame_length(max);
    }
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// Wraps a byte writer.
    pub fn new(io: W) -> Self {
        Writer {
            inner: FramedWrite::new(io, codec()),
        }
    }

    /// Queues a frame without flushing, so that many frames leave in one write.
    pub async fn feed(&mut self, frame: &Frame) -> Result<(), Error> {
        let bytes = encode(frame)?;
        self.inner.feed(bytes).await.map_err(|source| Error::Io {
            op: "write",
            source,
        })
    }

    /// Flushes the frames queued by [`Writer::feed`].
    pub async fn flush(&mut self) -> Result<(), Error> {
        SinkExt::<Bytes>::flush(&mut self.inner)
            .await
            .map_err(|source| Error::Io {
                op: "write",
                source,
            })
    }

    /// Writes one frame and flushes it.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), Error> {
        self.feed(frame).await?;
        self.flush().await
    }

    /// Writes every frame that arrives on `frames` until the channel closes, flushing only when
    /// no more are waiting, so a burst of frames leaves in few writes; then shuts the stream
    /// down.
    pub async fn pump(&mut self, mut frames: mpsc::UnboundedReceiver<Frame>) -> Result<(), Error> {
        while let Some(frame) = frames.recv().await {
            self.feed(&frame).await?;
            while let Ok(frame) = frames.try_recv() {
                self.feed(&frame).await?;
            }
            self.flush().await?;
        }
        // The session is over: shutting the stream down sends TLS's close_notify (and the TCP
        // FIN), so the peer reads a clean end, not a connection cut short.
        SinkExt::<Bytes>::close(&mut self.inner)
            .await
            .map_err(|source| Error::Io {
                op: "close",
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(frame: Frame, expected: &str) {
        let bytes = encode(&frame).expect("encode");
        let got = hex(&bytes);
        assert_eq!(
            got, expected,
            "encoding of {frame:?} changed: bump PROTOCOL_VERSION"
        );
        assert_eq!(decode(&bytes).expect("decode"), frame);
    }

    fn outcome() -> Outcome {
        Outcome {
            failure: Some(FailureReason::Timeout),
            exit_code: None,
            signal: Some(9),
            message: Some("m".into()),
            stdout: Bytes::from_static(b"o"),
            stderr: Bytes::from_static(b"e"),
            run_us: 300,
            cold_start: true,
            init_us: 5,
            cpu_us: 6,
            peak_memory_bytes: 7,
        }
    }

    #[test]
    fn frames_have_pinned_encodings() {
        golden(
            Frame::Hello {
                protocol: 1,
                name: "w".into(),
                slots: 2,
                mode: DispatchMode::Pull,
                runtimes: vec![Runtime::Shell, Runtime::Oci],
            },
            "000101770201020004",
        );
        golden(
            Frame::Welcome {
                protocol: 1,
                worker_id: 7,
                heartbeat_ms: 1000,
            },
            "010107e807",
        );
        golden(
            Frame::Refused {
                reason: "no".into(),
            },
            "02026e6f",
        );
        golden(
            Frame::Assign(Assignment {
                task_id: 5,
                lease: 3,
                function: "f".into(),
                version: 1,
                runtime: Runtime::Exec,
                code_hash: [0xab; 32],
                timeout_ms: 1000,
                env: vec![("K".into(), "V".into())],
                payload: Bytes::from_static(b"hi"),
                warm: Some(WarmSpec {
                    min_warm: 1,
                    idle_timeout_ms: 2,
                }),
                json: true,
                isolation: Isolation {
                    memory_bytes: Some(7),
                    allow_net: true,
                },
            }),
            concat!(
                "03050301660101",
                "abababababababababababababababababababababababababababababababab",
                "e80701014b01560268 69",
                "01010201",
                "010701"
            )
            .replace(' ', "")
            .as_str(),
        );
        golden(
            Frame::FetchCode { hash: [1; 32] },
            &format!("04{}", "01".repeat(32)),
        );
        golden(
            Frame::Code {
                hash: [2; 32],
                found: true,
                bytes: Bytes::from_static(b"x"),
            },
            &format!("05{}010178", "02".repeat(32)),
        );
        golden(
            Frame::Report(Report {
                task_id: 5,
                lease: 3,
                outcome: outcome(),
            }),
            "060503010200011201016d01 6f0165ac0201050607"
                .replace(' ', "")
                .as_str(),
        );
        golden(Frame::Heartbeat { running: 4 }, "0704");
        golden(Frame::Pull { slots: 2 }, "0802");
        golden(Frame::Drain, "09");
        golden(
            Frame::Prewarm(Prewarm {
                function: "f".into(),
                version: 1,
                runtime: Runtime::Python,
                code_hash: [3; 32],
                timeout_ms: 5,
                env: vec![],
                warm: WarmSpec {
                    min_warm: 1,
                    idle_timeout_ms: 2,
                },
                isolation: Isolation::default(),
            }),
            &format!("0a016601 02{}0500010200 00", "03".repeat(32)).replace(' ', ""),
        );
        golden(Frame::Join { token: "tk".into() }, "0b02746b");
        golden(Frame::Join { token: "".into() }, "0b00");
        golden(
            Frame::CheckCode {
                check: 3,
                file: "m".into(),
                source: Bytes::from_static(b"x"),
            },
            "0c03016d0178",
        );
        golden(
            Frame::CodeChecked {
                check: 3,
                verdict: CompileVerdict {
                    error: Some("E".into()),
                    line: Some(2),
                    column: None,
                    text: "t".into(),
                    missing_handle: true,
                    unavailable: None,
                },
            },
            "0d0301014501020001740100",
        );
        golden(
            Frame::Health(Health {
                cpu_percent: 0.5,
                memory_used_bytes: 3,
                memory_total_bytes: 4,
                load1: 1.0,
                load5: 2.0,
                load15: 0.0,
            }),
            concat!(
                "0e",
                "000000000000e03f",
                "0304",
                "000000000000f03f",
                "0000000000000040",
                "0000000000000000"
            ),
        );
        golden(
            Frame::Warm(vec![WarmCount {
                function: "f".into(),
                executors: 2,
            }]),
            "0f01016602",
        );
        http_frames_have_pinned_encodings();
    }

    fn http_frames_have_pinned_encodings() {
        golden(
            Frame::HttpOpen(HttpOpen {
                stream: 1,
                target: HttpTarget {
                    function: "f".into(),
                    version: 1,
                    runtime: Runtime::Exec,
                    code_hash: [4; 32],
                    timeout_ms: 5,
                    env: vec![],
                    isolation: Isolation::default(),
                    http: HttpSpec {
                        port: 8080,
                        concurrency: 2,
                        record_requests: false,
                    },
                    idle_timeout_ms: 3,
                },
                method: "GET".into(),
                uri: "/".into(),
                headers: vec![("a".into(), Bytes::from_static(b"b"))],
            }),
            &format!(
                "1001016601 01{}05000000 903f0200 03 03474554012f0101610162",
                "04".repeat(32)
            )
            .replace(' ', ""),
        );
        golden(
            Frame::HttpResponse {
                stream: 1,
                status: 200,
                headers: vec![],
            },
            "1101c80100",
        );
        golden(
            Frame::HttpBody {
                stream: 1,
                bytes: Bytes::from_static(b"x"),
            },
            "12010178",
        );
        golden(Frame::HttpEnd { stream: 1 }, "1301");
        golden(
            Frame::HttpAbort {
                stream: 1,
                reason: "r".into(),
            },
            "14010172",
        );
        golden(
            Frame::HttpCredit {
                stream: 1,
                bytes: 2,
            },
            "150102",
        );
        golden(
            Frame::FetchCodeChunk {
                hash: [1; 32],
                offset: 5,
                max_len: 6,
            },
            &format!("16{}0506", "01".repeat(32)),
        );
        golden(
            Frame::CodeChunk {
                hash: [2; 32],
                offset: 1,
                total_bytes: 3,
                bytes: Bytes::from_static(b"x"),
                found: true,
            },
            &format!("17{}01030178 01", "02".repeat(32)).replace(' ', ""),
        );
        golden(
            Frame::Cancel {
                task_id: 1,
                lease: 2,
            },
            "180102",
        );
    }

    #[tokio::test]
    async fn frames_cross_a_duplex_pipe() {
        let (a, b) = tokio::io::duplex(1024);
        let mut a = Writer::new(a);
        let mut b = Reader::new(b);
        a.send(&Frame::Heartbeat { running: 1 })
            .await
            .expect("send");
        drop(a);
        assert_eq!(
            b.next().await.expect("read"),
            Some(Frame::Heartbeat { running: 1 })
        );
        assert_eq!(b.next().await.expect("eof"), None);
    }

    #[tokio::test]
    async fn oversized_length_prefix_is_an_error() {
        use tokio::io::AsyncWriteExt;
        let (mut a, b) = tokio::io::duplex(1024);
        let mut b = Reader::new(b);
        a.write_all(&u32::MAX.to_be_bytes()).await.expect("write");
        assert!(matches!(b.next().await, Err(Error::Io { .. })));
    }

    #[tokio::test]
    async fn a_large_frame_is_refused_under_the_handshake_limit_and_read_after_it() {
        use tokio::io::AsyncWriteExt;
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let mut b = Reader::new(b);
        b.set_max_frame_bytes(HANDSHAKE_FRAME_BYTES);
        let big = (HANDSHAKE_FRAME_BYTES as u32 + 1).to_be_bytes();
        a.write_all(&big).await.expect("write");
        assert!(matches!(b.next().await, Err(Error::Io { .. })));

        let (a, b) = tokio::io::duplex(1 << 16);
        let (mut a, mut b) = (Writer::new(a), Reader::new(b));
        b.set_max_frame_bytes(HANDSHAKE_FRAME_BYTES);
        let hello = Frame::Hello {
            protocol: PROTOCOL_VERSION,
            name: "w".repeat(64),
            slots: 4,
            mode: DispatchMode::Push,
            runtimes: Runtime::ALL.to_vec(),
        };
        a.send(&hello).await.expect("send hello");
        assert_eq!(b.next().await.expect("read hello"), Some(hello));
        b.set_max_frame_bytes(MAX_FRAME_BYTES);
        let code = Frame::Code {
            hash: [0; 32],
            found: true,
            bytes: Bytes::from(vec![7; HANDSHAKE_FRAME_BYTES * 4]),
        };
        a.send(&code).await.expect("send code");
        assert_eq!(b.next().await.expect("read code"), Some(code));
    }

    #[test]
    fn dispatch_modes_are_named_push_and_pull_in_json() {
        let names = serde_json::to_value([DispatchMode::Push, DispatchMode::Pull]).expect("json");
        assert_eq!(names, serde_json::json!(["push", "pull"]));
    }

    #[test]
    fn failure_reasons_serialize_as_their_api_names() {
        let all = [
            FailureReason::ExitStatus,
            FailureReason::Signal,
            FailureReason::Timeout,
            FailureReason::SpawnFailed,
            FailureReason::OutputTooLarge,
            FailureReason::WorkerLost,
            FailureReason::CodeUnavailable,
            FailureReason::OutputHeldOpen,
            FailureReason::Exception,
            FailureReason::ExecutorDied,
            FailureReason::ProtocolError,
            FailureReason::InitFailed,
            FailureReason::OutOfMemory,
            FailureReason::Cancelled,
        ];
        for (index, reason) in all.into_iter().enumerate() {
            let json = serde_json::to_value(reason).expect("json");
            assert_eq!(json.as_str(), Some(reason.as_str()));
            // postcard pins the variant index: reasons are only ever appended.
            let bytes = postcard::to_stdvec(&reason).expect("encode");
            assert_eq!(bytes, [index as u8], "{reason:?}");
        }
    }

    #[test]
    fn runtimes_have_pinned_encodings() {
        // Assignments and stored function records carry the runtime as its variant index:
        // runtimes are only ever appended.
        let all = [
            Runtime::Shell,
            Runtime::Exec,
            Runtime::Python,
            Runtime::Pickle,
            Runtime::Oci,
        ];
        for (index, runtime) in all.into_iter().enumerate() {
            let bytes = postcard::to_stdvec(&runtime).expect("encode");
            assert_eq!(bytes, [index as u8], "{runtime:?}");
        }
    }

    #[test]
    fn runtimes_parse_from_their_names() {
        for runtime in [
            Runtime::Shell,
            Runtime::Exec,
            Runtime::Python,
            Runtime::Pickle,
            Runtime::Oci,
        ] {
            assert_eq!(runtime.as_str().parse::<Runtime>(), Ok(runtime));
        }
        assert!("ruby".parse::<Runtime>().is_err());
    }

    #[test]
    fn an_unknown_frame_variant_does_not_decode() {
        assert!(matches!(decode(&[0x0f]), Err(Error::Decode { len: 1, .. })));
    }

    #[test]
    fn a_truncated_frame_does_not_decode() {
        let bytes = encode(&Frame::Refused {
            reason: "no".into(),
        })
        .expect("encode");
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Err(Error::Decode { .. })
        ));
    }

    #[tokio::test]
    async fn the_pump_writes_every_queued_frame_in_order() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut writer = Writer::new(a);
        let mut reader = Reader::new(b);
        let (frames, outbox) = mpsc::unbounded_channel();
        for running in 0..5 {
            frames.send(Frame::Heartbeat { running }).expect("queue");
        }
        frames.send(Frame::Drain).expect("queue");
        drop(frames);
        writer.pump(outbox).await.expect("pump");
        drop(writer);
        let mut got = Vec::new();
        while let Some(frame) = reader.next().await.expect("read") {
            got.push(frame);
        }
        let mut expected: Vec<Frame> = (0..5).map(|running| Frame::Heartbeat { running }).collect();
        expected.push(Frame::Drain);
        assert_eq!(got, expected);
    }
}

//! The server's side of proxied HTTP: placing a request to an HTTP-service function on a worker,
//! and the streams in flight, multiplexed by id on the workers' connections.
//!
//! A request goes to a connected worker that is not draining, preferring one that holds the
//! function's code, then the one with the fewest proxied requests in flight; the worker starts
//! and grows the function's executors itself. The request body and the response body stream
//! under each stream's window (`proto::http`). A stream dropped before its end (the client
//! left) is aborted on the worker; a worker that leaves aborts its streams.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::Broker;
use crate::proto::http::{self as wire, Inbox, Outlet, Piece, Window};
use crate::proto::{Frame, HttpOpen, HttpTarget};
use crate::store::{FunctionRecord, HOUR_MS, TaskRecord, TaskStatus, UsageRow, UsageTotals, Write};
use crate::units::now_ms;

/// The head of a service's response.
#[derive(Debug)]
pub struct ResponseHead {
    /// The HTTP status.
    pub status: u16,
    /// Its headers, hop-by-hop ones removed.
    pub headers: Vec<(String, Bytes)>,
}

/// Why a stream failed before its response head: the service's or the worker's reason.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct StreamFailed {
    /// For people.
    pub reason: String,
}

/// A request to store as a task (`--record-requests`).
pub struct RecordedRequest<'a> {
    /// The caller's user id.
    pub caller: u32,
    /// The method.
    pub method: &'a str,
    /// The path the service saw, without the query.
    pub path: &'a str,
    /// The answer's status.
    pub status: u16,
    /// Whether the service answered (else faasd did, for it).
    pub answered_by_service: bool,
    /// The time until the answer's head, in microseconds.
    pub wall_us: u64,
}

/// What the proxy sends for a request.
pub struct RequestHead {
    /// The method.
    pub method: String,
    /// The path and query the service sees.
    pub uri: String,
    /// The headers, already filtered and with `X-Forwarded-*`.
    pub headers: Vec<(String, Bytes)>,
}

/// A stream as the server keeps it.
struct Open {
    worker: u64,
    head: Option<oneshot::Sender<Result<ResponseHead, StreamFailed>>>,
    body: Inbox,
    window: Window,
}

/// A worker's connection, as proxied requests use it.
struct Link {
    frames: mpsc::UnboundedSender<Frame>,
    in_flight: u32,
}

/// The streams in flight and the workers' connections.
#[derive(Default)]
pub(super) struct Streams {
    next: u64,
    open: HashMap<u64, Open>,
    links: HashMap<u64, Link>,
    /// Usage of answered requests not yet handed to the store, by (hour, caller, function).
    usage: BTreeMap<(u64, u32, String), UsageTotals>,
    /// When usage was last handed to the store (Unix ms).
    usage_flushed_ms: u64,
}

/// How often the usage of proxied requests is handed to the store, at most.
const USAGE_FLUSH_MS: u64 = 1_000;

impl Streams {
    /// Takes a stream out, giving its worker's count back.
    fn remove(&mut self, stream: u64) -> Option<Open> {
        let open = self.open.remove(&stream)?;
        if let Some(link) = self.links.get_mut(&open.worker) {
            link.in_flight = link.in_flight.saturating_sub(1);
        }
        Some(open)
    }
}

/// A proxied request in flight, from the proxy's side. Dropped before the response's end, it
/// aborts the stream on the worker.
pub struct HttpCall {
    guard: Arc<Guard>,
    head: oneshot::Receiver<Result<ResponseHead, StreamFailed>>,
    body: Outlet,
    window: Window,
}

/// Removes a stream when its last user goes, aborting it if it did not end.
struct Guard {
    broker: Broker,
    stream: u64,
    frames: mpsc::UnboundedSender<Frame>,
    /// The request body's window, closed with the stream so its sender stops.
    window: Window,
    ended: AtomicBool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.window.close();
        self.broker.close_stream(self.stream);
        if !self.ended.load(Ordering::Acquire) {
            let _ = self.frames.send(Frame::HttpAbort {
                stream: self.stream,
                reason: "the client went away".into(),
            });
        }
    }
}

/// Why a proxied request could not be placed.
#[derive(Debug, thiserror::Error)]
#[error(
    "no worker can serve HTTP requests to {function:?} now (none is connected, or all are draining)"
)]
pub struct NoWorker {
    /// The function.
    pub function: String,
}

/// Sends a request's body; it stops when the stream ends.
pub struct BodySender {
    stream: u64,
    frames: mpsc::UnboundedSender<Frame>,
    window: Window,
}

impl BodySender {
    /// Sends the request body to the service as it is read, within the stream's window;
    /// returns whether all of it went.
    pub async fn send<B>(self, body: B) -> bool
    where
        B: hyper::body::Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        wire::send_body(self.stream, body, &self.window, &self.frames).await
    }
}

impl HttpCall {
    /// The sender of the request body, to run beside the wait for the response.
    pub fn body_sender(&self) -> BodySender {
        BodySender {
            stream: self.guard.stream,
            frames: self.guard.frames.clone(),
            window: self.window.clone(),
        }
    }

    /// Waits for the service's response head; the reason when the stream failed first.
    pub async fn response(&mut self) -> Result<ResponseHead, StreamFailed> {
        match (&mut self.head).await {
            Ok(head) => head,
            Err(_) => Err(StreamFailed {
                reason: "the worker serving the request went away".into(),
            }),
        }
    }

    /// The response body as a stream of byte pieces; the stream ends the call.
    pub fn into_body(
        self,
    ) -> impl futures_util::Stream<Item = Result<Bytes, wire::Abandoned>> + Send + 'static {
        let HttpCall { guard, body, .. } = self;
        futures_util::stream::unfold(Some((body, guard)), |state| async move {
            let (mut body, guard) = state?;
            match body.next().await {
                Ok(Some(bytes)) => Some((Ok(bytes), Some((body, guard)))),
                Ok(None) => {
                    guard.ended.store(true, Ordering::Release);
                    None
                }
                Err(e) => {
                    guard.ended.store(true, Ordering::Release);
                    Some((Err(e), None))
                }
            }
        })
    }
}

impl Broker {
    fn streams(&self) -> std::sync::MutexGuard<'_, Streams> {
        self.inner.http.lock().expect("http streams lock")
    }

    /// Waits until no proxied request is in flight, or `until`; returns how many still are. A
    /// stop calls it (rarely, and with nothing else to do), so it looks every 10 ms rather than
    /// make every stream's end signal.
    pub async fn wait_streams_done(&self, until: tokio::time::Instant) -> usize {
        loop {
            let open = self.streams().open.len();
            if open == 0 || tokio::time::Instant::now() >= until {
                return open;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Lets proxied requests use worker `worker`'s connection.
    pub(super) fn link_http(&self, worker: u64, frames: mpsc::UnboundedSender<Frame>) {
        let link = Link {
            frames,
            in_flight: 0,
        };
        self.streams().links.insert(worker, link);
    }

    /// A worker left: its streams fail.
    pub(super) fn unlink_http(&self, worker: u64) {
        let mut streams = self.streams();
        streams.links.remove(&worker);
        let lost: Vec<u64> = streams
            .open
            .iter()
            .filter(|(_, s)| s.worker == worker)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            if let Some(s) = streams.remove(id) {
                fail(s, "the worker serving the request went away".into());
            }
        }
    }

    fn close_stream(&self, stream: u64) {
        self.streams().remove(stream);
    }

    /// Sends a request to an HTTP-service function's worker and opens its stream.
    pub fn open_http(
        &self,
        func: &FunctionRecord,
        head: RequestHead,
    ) -> Result<HttpCall, NoWorker> {
        let no_worker = || NoWorker {
            function: func.name.clone(),
        };
        let http = func.http.ok_or_else(no_worker)?;
        let candidates = self.http_candidates(func);
        let mut streams = self.streams();
        let links = &streams.links;
        let worker = candidates
            .iter()
            .filter_map(|(id, cached)| links.get(id).map(|l| (*id, *cached, l.in_flight)))
            .min_by_key(|(_, cached, in_flight)| (!cached, *in_flight))
            .map(|(id, _, _)| id)
            .ok_or_else(no_worker)?;
        streams.next += 1;
        let stream = streams.next;
        let link = streams.links.get_mut(&worker).ok_or_else(no_worker)?;
        link.in_flight += 1;
        let frames = link.frames.clone();
        let (body, outlet) = wire::inbox(stream, frames.clone());
        let (head_tx, head_rx) = oneshot::channel();
        let window = Window::default();
        let open = Open {
            worker,
            head: Some(head_tx),
            body,
            window: window.clone(),
        };
        streams.open.insert(stream, open);
        drop(streams);
        let target = HttpTarget {
            function: func.name.clone(),
            version: func.version,
            runtime: func.runtime,
            code_hash: func.code_hash,
            timeout_ms: func.timeout_ms,
            env: func.env.clone(),
            isolation: func.isolation,
            http,
            idle_timeout_ms: func.warm.map_or(60_000, |w| w.idle_timeout_ms),
        };
        let _ = frames.send(Frame::HttpOpen(HttpOpen {
            stream,
            target,
            method: head.method,
            uri: head.uri,
            headers: head.headers,
        }));
        let guard = Arc::new(Guard {
            broker: self.clone(),
            stream,
            frames,
            window: window.clone(),
            ended: AtomicBool::new(false),
        });
        Ok(HttpCall {
            guard,
            head: head_rx,
            body: outlet,
            window,
        })
    }

    /// The workers that may take a request of `func`, and whether each holds its code.
    fn http_candidates(&self, func: &FunctionRecord) -> Vec<(u64, bool)> {
        let state = self.lock();
        state
            .workers
            .iter()
            .filter(|(_, w)| !w.draining && w.runs(func.runtime))
            .map(|(id, w)| (*id, w.cached.contains(&func.code_hash)))
            .collect()
    }

    /// Counts one answered request to HTTP-service function `function` by user `caller` in
    /// the usage totals: a call, a failure if faasd or the service answered 5xx, and the time
    /// until the answer's head. The sums go to the store at most every [`USAGE_FLUSH_MS`], as
    /// one write (none per request).
    pub fn http_used(&self, caller: u32, function: &str, status: u16, wall_us: u64) {
        let now = now_ms();
        let mut streams = self.streams();
        let key = (now / HOUR_MS, caller, function.to_owned());
        let totals = streams.usage.entry(key).or_default();
        totals.calls += 1;
        totals.failures += u64::from(status >= 500);
        totals.wall_us += wall_us;
        if now.saturating_sub(streams.usage_flushed_ms) < USAGE_FLUSH_MS {
            return;
        }
        drop(streams);
        self.flush_http_usage();
    }

    /// Writes the HTTP requests' usage sums counted so far (one write; none when there are
    /// none). Called as requests are answered, every second by `serve` (so the sums of the last
    /// requests do not wait for another), and before the store closes.
    pub fn flush_http_usage(&self) {
        let mut streams = self.streams();
        streams.usage_flushed_ms = now_ms();
        if streams.usage.is_empty() {
            return;
        }
        let rows = std::mem::take(&mut streams.usage)
            .into_iter()
            .map(|((hour, caller, function), totals)| UsageRow {
                hour,
                caller,
                function,
                totals,
            })
            .collect();
        drop(streams);
        self.inner.store.write_later(Write::AddUsage { rows });
    }

    /// Stores one answered request to an HTTP-service function that asks for it
    /// (`--record-requests`) as a finished task: no payload or result, its method and path
    /// (without the query) and status in its message, its time until the answer's head as its
    /// run time. COMPLETED when the service answered (whatever its status), FAILED
    /// `init_failed` when faasd answered for it (502, 503). The writer adds it to usage.
    pub fn record_http_request(&self, func: &FunctionRecord, request: RecordedRequest<'_>) {
        let seq = {
            let mut state = self.lock();
            state.next_seq += 1;
            state.next_seq
        };
        let id = uuid::Uuid::now_v7().as_u128();
        let mut record = TaskRecord::queued(id, seq, func.name.clone(), func.version);
        let now = now_ms();
        let started_ms = now.saturating_sub(request.wall_us / 1000);
        record.created_ms = started_ms;
        record.started_ms = Some(started_ms);
        record.finished_ms = Some(now);
        record.attempts = 1;
        record.caller = request.caller;
        record.run_us = request.wall_us;
        let (method, path, status) = (request.method, request.path, request.status);
        record.message = Some(format!("HTTP {method} {path}: {status}"));
        if request.answered_by_service {
            record.status = TaskStatus::Completed;
        } else {
            record.status = TaskStatus::Failed;
            record.failure = Some(crate::proto::FailureReason::InitFailed);
        }
        self.inner.store.write_later(Write::Finish {
            record,
            result: Bytes::new(),
            logs: Bytes::new(),
        });
    }

    /// Hands an HTTP frame from worker `worker` to its stream; `false` for another frame.
    pub(super) fn on_http_frame(&self, worker: u64, frame: &Frame) -> bool {
        let mut streams = self.streams();
        let (stream, piece) = match frame {
            Frame::HttpResponse {
                stream,
                status,
                headers,
            } => {
                if let Some(open) = streams.open.get_mut(stream).filter(|s| s.worker == worker)
                    && let Some(head) = open.head.take()
                {
                    let headers = headers.clone();
                    let _ = head.send(Ok(ResponseHead {
                        status: *status,
                        headers,
                    }));
                }
                return true;
            }
            Frame::HttpCredit { stream, bytes } => {
                if let Some(open) = streams.open.get(stream).filter(|s| s.worker == worker) {
                    open.window.grant(*bytes);
                }
                return true;
            }
            Frame::HttpBody { stream, bytes } => (stream, Piece::Data(bytes.clone())),
            Frame::HttpEnd { stream } => (stream, Piece::End),
            Frame::HttpAbort { stream, reason } => {
                // Only the worker serving a stream may end it.
                let serving = streams.open.get(stream).is_some_and(|s| s.worker == worker);
                if serving && let Some(open) = streams.remove(*stream) {
                    fail(open, reason.clone());
                }
                return true;
            }
            _ => return false,
        };
        let Some(open) = streams.open.get(stream).filter(|s| s.worker == worker) else {
            return true;
        };
        if let Err(overrun) = open.body.push(piece)
            && let Some(open) = streams.remove(*stream)
        {
            if let Some(link) = streams.links.get(&worker) {
                let _ = link.frames.send(Frame::HttpAbort {
                    stream: *stream,
                    reason: overrun.to_string(),
                });
            }
            fail(open, overrun.to_string());
        }
        true
    }
}

/// Ends a stream with `reason`: its response head, or its body if the head came.
fn fail(mut open: Open, reason: String) {
    match open.head.take() {
        Some(head) => {
            let _ = head.send(Err(StreamFailed { reason }));
        }
        None => {
            let _ = open.body.push(Piece::Abort(reason));
        }
    }
    open.window.close();
}

//! The worker's side of proxied HTTP: each `HttpOpen` from the server becomes a request to an
//! executor of the function's HTTP service, made with hyper's client over a connection into
//! the executor's network namespace; the response head and body go back as frames.
//!
//! Bodies stream both ways under the stream's window (`proto::http`): the request body is fed
//! to the service as its `HttpBody` frames arrive, and the response body is sent as the
//! service writes it, so Server-Sent Events and chunked responses pass through as they come.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::TryStreamExt;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Agent, Launch, Session};
use crate::exec::http::{HttpPool, Lease, ServiceSpec};
use crate::proto::http::{self as wire, Inbox, Piece, Window};
use crate::proto::{Frame, HttpOpen};

/// Why a proxied request failed here: the reason its `HttpAbort` carries.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Abort(String);

impl From<String> for Abort {
    fn from(reason: String) -> Self {
        Abort(reason)
    }
}

impl From<&str> for Abort {
    fn from(reason: &str) -> Self {
        Abort(reason.to_owned())
    }
}

/// One proxied request in flight on this worker.
struct Stream {
    /// Where the request body's pieces go.
    body: Inbox,
    /// What the response body may still send.
    window: Window,
    /// Fired when the server abandons the stream.
    cancel: CancellationToken,
}

/// A proxied request's body, boxed so that one kept-alive connection can carry any request.
type ProxyBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, wire::Abandoned>;

/// A connection to an executor's port, to send requests on.
type Connection = hyper::client::conn::http1::SendRequest<ProxyBody>;

/// How many executors of one HTTP-service function version a worker runs at most per slot it
/// has: a burst of requests starts executors up to that, then shares them.
const EXECUTORS_PER_SLOT: u32 = 4;

/// The most kept-alive connections kept for one executor.
const KEPT_PER_EXECUTOR: usize = 32;

/// The worker's HTTP services and the requests in flight to them.
#[derive(Default)]
pub(super) struct Services {
    /// The executors, by function version.
    pub pool: HttpPool,
    streams: Mutex<HashMap<u64, Stream>>,
    /// Connections whose last response ended with the connection open, by executor id: the
    /// next request to that executor takes one instead of connecting again.
    kept: Mutex<HashMap<u64, Vec<Connection>>>,
}

impl Services {
    /// A kept-alive connection to the lease's executor that is ready for a request, if any.
    async fn kept(&self, lease: &Lease) -> Option<Connection> {
        loop {
            let mut connection = {
                let mut kept = self.kept.lock().expect("kept connections lock");
                let list = kept.get_mut(&lease.executor_id())?;
                let connection = list.pop();
                if list.is_empty() {
                    kept.remove(&lease.executor_id());
                }
                connection?
            };
            if !connection.is_closed() && connection.ready().await.is_ok() {
                return Some(connection);
            }
        }
    }

    /// Keeps a connection whose response ended for the executor's next request (connections
    /// the service closed, here or to executors that stopped, are dropped).
    fn keep(&self, lease: &Lease, connection: Connection) {
        let mut kept = self.kept.lock().expect("kept connections lock");
        kept.retain(|_, list| {
            list.retain(|c| !c.is_closed());
            !list.is_empty()
        });
        if connection.is_closed() {
            return;
        }
        let list = kept.entry(lease.executor_id()).or_default();
        if list.len() < KEPT_PER_EXECUTOR {
            list.push(connection);
        }
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Stream>> {
        self.streams.lock().expect("http streams lock")
    }

    /// The proxied requests in flight here.
    pub(super) fn in_flight(&self) -> usize {
        self.streams().len()
    }

    /// Abandons every stream: the session that carried them ended.
    pub(super) fn cancel_all(&self) {
        for (_, s) in self.streams().drain() {
            s.window.close();
            s.cancel.cancel();
        }
    }

    /// Ends a stream here: its request is abandoned.
    fn cancel(&self, stream: u64) {
        if let Some(s) = self.streams().remove(&stream) {
            s.window.close();
            s.cancel.cancel();
        }
    }
}

impl Session {
    /// Hands an HTTP frame from the server to its stream; returns `false` for another frame.
    pub(super) fn on_http_frame(&self, frame: &Frame) -> bool {
        let services = &self.agent.http;
        match frame {
            Frame::HttpBody { stream, bytes } => {
                let piece = Piece::Data(bytes.clone());
                let overrun = services
                    .streams()
                    .get(stream)
                    .is_some_and(|s| s.body.push(piece).is_err());
                if overrun {
                    services.cancel(*stream);
                    let reason = "the server sent past the stream's window".to_string();
                    let _ = self.frames.send(Frame::HttpAbort {
                        stream: *stream,
                        reason,
                    });
                }
            }
            Frame::HttpEnd { stream } => {
                if let Some(s) = services.streams().get(stream) {
                    let _ = s.body.push(Piece::End);
                }
            }
            Frame::HttpAbort { stream, .. } => services.cancel(*stream),
            Frame::HttpCredit { stream, bytes } => {
                if let Some(s) = services.streams().get(stream) {
                    s.window.grant(*bytes);
                }
            }
            _ => return false,
        }
        true
    }

    /// Starts serving a proxied request on a task of its own.
    pub(super) fn on_http_open(&self, open: HttpOpen) {
        let frames = self.frames.clone();
        let stream = open.stream;
        let (body, outlet) = wire::inbox(stream, frames.clone());
        let window = Window::default();
        let cancel = CancellationToken::new();
        let entry = Stream {
            body,
            window: window.clone(),
            cancel: cancel.clone(),
        };
        self.agent.http.streams().insert(stream, entry);
        let agent = self.agent.clone();
        tokio::spawn(async move {
            tokio::select! {
                served = serve(&agent, open, outlet, &window, &frames) => {
                    if let Err(Abort(reason)) = served {
                        tracing::debug!(stream, %reason, "proxied request failed");
                        let _ = frames.send(Frame::HttpAbort { stream, reason });
                    }
                }
                () = cancel.cancelled() => {}
            }
            agent.http.streams().remove(&stream);
            // A drain may be waiting for the last request to end.
            agent.idle.notify_waiters();
        });
    }
}

/// Serves one request: an executor (started if needed), a connection, the request with its
/// streamed body, then the response head and its streamed body. An error is the abort reason.
async fn serve(
    agent: &Agent,
    open: HttpOpen,
    outlet: wire::Outlet,
    window: &Window,
    frames: &mpsc::UnboundedSender<Frame>,
) -> Result<(), Abort> {
    let lease = agent
        .http
        .pool
        .acquire(service_spec(agent, &open).await?)
        .await
        .map_err(|e| Abort(e.to_string()))?;
    let (mut connection, reused) = match agent.http.kept(&lease).await {
        Some(connection) => (connection, true),
        None => (connect(&lease).await?, false),
    };
    let stream = open.stream;
    let request = request(open, outlet)?;
    let response = match connection.try_send_request(request).await {
        Ok(response) => response,
        Err(mut failed) => match failed.take_message() {
            // A kept connection the service closed before the request went: a new one
            // takes it.
            Some(request) if reused => {
                connection = connect(&lease).await?;
                connection.send_request(request).await
            }
            _ => Err(failed.into_error()),
        }
        .map_err(|e| format!("the HTTP service did not answer: {e}"))?,
    };
    let headers = response
        .headers()
        .iter()
        .filter(|(name, _)| !wire::is_hop_by_hop(name.as_str()))
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec().into()))
        .collect();
    let head = Frame::HttpResponse {
        stream,
        status: response.status().as_u16(),
        headers,
    };
    frames
        .send(head)
        .map_err(|_| "the server connection is gone")?;
    if wire::send_body(stream, response.into_body(), window, frames).await {
        agent.http.keep(&lease, connection);
    }
    drop(lease);
    Ok(())
}

/// A new connection to the lease's executor, its HTTP/1.1 handshake done.
async fn connect(lease: &Lease) -> Result<Connection, Abort> {
    let stream = lease.connect().await.map_err(|e| Abort(e.to_string()))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("the HTTP service did not take the connection: {e}"))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// The request to the service, its body streamed from `outlet`.
fn request(open: HttpOpen, outlet: wire::Outlet) -> Result<hyper::Request<ProxyBody>, Abort> {
    let body = outlet.into_stream().map_ok(hyper::body::Frame::data);
    let mut builder = hyper::Request::builder()
        .method(open.method.as_str())
        .uri(open.uri.as_str());
    for (name, value) in &open.headers {
        builder = builder.header(name.as_str(), value.as_ref());
    }
    builder
        .body(http_body_util::BodyExt::boxed_unsync(
            http_body_util::StreamBody::new(body),
        ))
        .map_err(|e| Abort(format!("the proxied request is not valid HTTP: {e}")))
}

/// A service's environment: the function's, with the port it listens on as `FAASD_HTTP_PORT`,
/// and as `PORT` unless the function sets that itself.
fn service_env(mut env: Vec<(String, String)>, port: u16) -> Vec<(String, String)> {
    env.retain(|(k, _)| k != "FAASD_HTTP_PORT");
    env.push(("FAASD_HTTP_PORT".into(), port.to_string()));
    if !env.iter().any(|(k, _)| k == "PORT") {
        env.push(("PORT".into(), port.to_string()));
    }
    env
}

/// How an executor of the request's function version is started here.
async fn service_spec(agent: &Agent, open: &HttpOpen) -> Result<ServiceSpec, Abort> {
    let target = &open.target;
    let timeout = Duration::from_millis(target.timeout_ms);
    let launch = Launch {
        runtime: target.runtime,
        code_hash: target.code_hash,
        env: &target.env,
        timeout,
        isolation: target.isolation,
        serving: true,
    };
    let prepared = agent
        .prepare(launch, Some(timeout))
        .await
        .map_err(|why| Abort(why.message))?;
    let config = &agent.config;
    Ok(ServiceSpec {
        key: (target.function.clone(), target.version),
        argv: prepared.argv,
        env: service_env(prepared.env, target.http.port),
        work_root: config.work_root.clone(),
        port: target.http.port,
        concurrency: target.http.concurrency,
        max_executors: config.slots.max(1).saturating_mul(EXECUTORS_PER_SLOT),
        start_timeout: timeout,
        idle_timeout: Duration::from_millis(target.idle_timeout_ms),
        own_network: config.runtimes.isolates_network(target.isolation),
        keep: Some(std::sync::Arc::new(prepared.code)),
    })
}

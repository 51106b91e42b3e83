//! The HTTP server under the API: accepts connections up to `--max-connections`, serves each
//! with hyper's HTTP/1 connection driving the axum router, and cuts a connection that is slow
//! to send a request's headers (`--header-timeout`) or sits idle between requests
//! (`--keepalive-timeout`), and fails a request body that arrives too slowly (`--body-timeout`,
//! see [`crate::api::SlowBodyGuard`]), closing its connection at once. A stop closes idle
//! connections and lets open requests finish.
//! With `--tls-cert` it serves HTTPS only: every connection starts with a TLS handshake, which
//! must end within the header timeout, and a plain HTTP request fails that handshake.
//! A connection closed with a request body left unread (a body over `--max-body`, answered 413)
//! is drained first, up to a bound, so the client reads the answer rather than a reset.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often, at most, the connection limit and accept failures are logged.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// How long the accept loop pauses after a failed accept (such as running out of descriptors),
/// so it does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The bounds put on HTTP clients.
#[derive(Debug, Clone)]
pub(super) struct HttpLimits {
    /// How long a client may take to send a request's headers, counted from its first byte
    /// (or from the connection's opening, for its first request).
    pub header_timeout: Duration,
    /// The grace period of a request body, after which it must average
    /// [`crate::api::MIN_BYTES_PER_SECOND`].
    pub body_timeout: Duration,
    /// How long a connection may sit idle between requests.
    pub keepalive_timeout: Duration,
    /// `serve --domain`: requests to `NAME.DOMAIN` go to HTTP-service functions, whose streams
    /// (like those of `/function/NAME/...`) are the function's to pace, not
    /// `--body-timeout`'s.
    pub domain: Option<Arc<str>>,
    /// The most HTTP connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// The most request bytes read and discarded after the last answer of a connection that
    /// closes with a body left unread (see [`linger`]).
    pub linger_bytes: u64,
}

/// How long a closing connection is drained at most (see [`linger`]).
const LINGER_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` (over TLS when `tls` is given) until `stop` fires, then closes
/// idle connections, waits for open requests to finish, and returns.
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut refused = RateLimitedWarning::default();
    let mut failed = RateLimitedWarning::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                failed.warn(|count| {
                    tracing::warn!(error = %e, failures = count, "accepting an HTTP connection failed");
                });
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(stream);
            refused.warn(|count| {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    refused = count,
                    "HTTP connection limit reached (--max-connections); closing new connections"
                );
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(accept_connection(
            stream,
            tls.clone(),
            app.clone(),
            limits.clone(),
            stop.clone(),
            permit,
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Serves one accepted connection, after its TLS handshake when `tls` is given. `permit` holds
/// its place under `--max-connections`.
async fn accept_connection(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: HttpLimits,
    stop: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    // The header timeout runs from the connection's opening, through the TLS handshake.
    let activity = Arc::new(Activity::new());
    // Unknown only if the socket has already failed; the request then reads as not local.
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let Some(tls) = tls else {
        return serve_connection(stream, peer, activity, app, limits, stop, permit).await;
    };
    let deadline = Instant::now() + limits.header_timeout;
    let handshake = tokio::select! {
        handshake = tokio::time::timeout_at(deadline, tls.accept(stream)) => handshake,
        () = stop.cancelled() => return,
    };
    match handshake {
        Ok(Ok(stream)) => serve_connection(stream, peer, activity, app, limits, stop, permit).await,
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "closing a connection slow to finish its TLS handshake"),
    }
}

/// Serves one connection until the client closes it, it breaks a timeout, or a stop has let its
/// open request finish. `_permit` holds its place under `--max-connections`.
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    activity: Arc<Activity>,
    app: Router,
    limits: HttpLimits,
    stop: CancellationToken,
    _permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let body_too_slow = Arc::new(AtomicBool::new(false));
    let service = Api {
        router: TowerToHyperService::new(app),
        activity: activity.clone(),
        peer,
        body_timeout: limits.body_timeout,
        body_too_slow: body_too_slow.clone(),
        domain: limits.domain.clone(),
    };
    // The header timeout is enforced here rather than by hyper, whose header timer also runs
    // while a kept-alive connection waits for its next request.
    let mut conn = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(io, service);
    let mut stopping = false;
    let served = loop {
        // While a request is open there is no deadline: look again after a while.
        let deadline = activity.deadline(&limits).unwrap_or_else(|| {
            Instant::now() + limits.header_timeout.min(limits.keepalive_timeout)
        });
        tokio::select! {
            served = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break served,
            () = tokio::time::sleep_until(deadline) => {
                if let Some(phase) = activity.expired(&limits, Instant::now()) {
                    tracing::debug!(phase, "closing a slow or idle HTTP connection");
                    return;
                }
            }
            () = stop.cancelled(), if !stopping => {
                stopping = true;
                Pin::new(&mut conn).graceful_shutdown();
            }
        }
    };
    match served {
        // A body too slow is not drained: that would hold the connection for its client.
        Ok(()) if body_too_slow.load(Ordering::Relaxed) => {
            tracing::debug!(%peer, "closing a connection whose request body was too slow");
        }
        Ok(()) if !stopping => {
            let stream = conn.into_parts().io.into_inner();
            linger(stream, limits.linger_bytes, &stop).await;
        }
        Ok(()) => {}
        Err(e) => tracing::debug!(error = %e, "HTTP connection ended with an error"),
    }
}

/// Closes a connection hyper is done with. If the client is still sending (a request body the
/// server did not read, such as one over `--max-body`), closing at once would make the kernel
/// answer its next bytes with a reset, which can destroy the answer before the client reads
/// it. So the answer is flushed and the write side shut down (the client sees the answer end),
/// then the rest of the request is read and discarded until the client closes, `max_bytes`
/// have been discarded, [`LINGER_TIMEOUT`] passes, or the server stops.
async fn linger<S>(mut stream: S, max_bytes: u64, stop: &CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    if stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut bounded = tokio::io::AsyncReadExt::take(&mut stream, max_bytes);
        tokio::io::copy(&mut bounded, &mut tokio::io::sink()).await
    };
    tokio::select! {
        drained = tokio::time::timeout(LINGER_TIMEOUT, drain) => {
            if let Ok(Ok(bytes @ 1..)) = drained {
                tracing::debug!(bytes, "drained the unread rest of a request before closing");
            }
        }
        () = stop.cancelled() => {}
    }
}

/// A warning logged at most once per [`WARN_INTERVAL`], with the number of occurrences since the
/// last one it logged.
#[derive(Default)]
struct RateLimitedWarning {
    count: u64,
    last: Option<Instant>,
}

impl RateLimitedWarning {
    /// Counts one occurrence and calls `log` with the count if the interval has passed.
    fn warn(&mut self, log: impl FnOnce(u64)) {
        self.count += 1;
        if self.last.is_none_or(|at| at.elapsed() >= WARN_INTERVAL) {
            log(self.count);
            self.count = 0;
            self.last = Some(Instant::now());
        }
    }
}

/// What a connection is doing, which decides its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the rest of a request's headers since `since` (its first byte, or the
    /// connection's opening).
    ReadingHead { since: Instant },
    /// Handling `requests` requests (from their headers to the last byte of their responses).
    Busy { requests: usize },
    /// Idle since its last response.
    Idle { since: Instant },
}

/// A connection's phase, shared by its reads, its requests and its watch.
struct Activity {
    phase: Mutex<Phase>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            phase: Mutex::new(Phase::ReadingHead {
                since: Instant::now(),
            }),
        }
    }

    fn update(&self, change: impl FnOnce(Phase) -> Phase) {
        let mut phase = self.phase.lock().expect("phase lock poisoned");
        *phase = change(*phase);
    }

    /// Bytes arrived: an idle connection starts reading a request's headers.
    fn on_read(&self) {
        self.update(|phase| match phase {
            Phase::Idle { .. } => Phase::ReadingHead {
                since: Instant::now(),
            },
            other => other,
        });
    }

    /// A request's headers were read.
    fn request_started(&self) {
        self.update(|phase| match phase {
            Phase::Busy { requests } => Phase::Busy {
                requests: requests + 1,
            },
            _ => Phase::Busy { requests: 1 },
        });
    }

    /// A response was sent (or dropped).
    fn request_finished(&self) {
        self.update(|phase| match phase {
            Phase::Busy { requests } if requests > 1 => Phase::Busy {
                requests: requests - 1,
            },
            _ => Phase::Idle {
                since: Instant::now(),
            },
        });
    }

    /// When the connection is cut if nothing happens (`None` while a request is open).
    fn deadline(&self, limits: &HttpLimits) -> Option<Instant> {
        match *self.phase.lock().expect("phase lock poisoned") {
            Phase::ReadingHead { since } => Some(since + limits.header_timeout),
            Phase::Idle { since } => Some(since + limits.keepalive_timeout),
            Phase::Busy { .. } => None,
        }
    }

    /// The name of the phase whose timeout has passed at `now`, if one has.
    fn expired(&self, limits: &HttpLimits, now: Instant) -> Option<&'static str> {
        let deadline = self.deadline(limits)?;
        if now < deadline {
            return None;
        }
        match *self.phase.lock().expect("phase lock poisoned") {
            Phase::ReadingHead { .. } => Some("header timeout"),
            _ => Some("keep-alive timeout"),
        }
    }
}

/// A connection's stream (TCP, or TLS over TCP) that tells its [`Activity`] when bytes arrive.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.on_read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router as a hyper service that marks each request open until its response is sent.
struct Api {
    router: TowerToHyperService<Router>,
    activity: Arc<Activity>,
    /// The client's address, given to every request as `ConnectInfo`.
    peer: SocketAddr,
    /// Each request body's grace period (see [`crate::api::SlowBodyGuard`]).
    body_timeout: Duration,
    /// Set when a request body was too slow: the connection then closes without draining it.
    body_too_slow: Arc<AtomicBool>,
    /// `serve --domain`, whose function hosts are proxied.
    domain: Option<Arc<str>>,
}

impl Api {
    /// Whether `request` goes to an HTTP-service function (`/function/NAME/...`, or a function's
    /// host under `--domain`), whose request stream is the service's to pace.
    fn proxied(&self, request: &hyper::Request<Incoming>) -> bool {
        if request.uri().path().starts_with("/function/") {
            return true;
        }
        let Some(domain) = self.domain.as_deref() else {
            return false;
        };
        request
            .headers()
            .get(hyper::header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()))
            .is_some_and(|host| crate::api::function_of_host(host, domain).is_some())
    }
}

/// The future of one call of [`Api`].
type ApiFuture =
    Pin<Box<dyn Future<Output = Result<hyper::Response<GuardedBody>, Infallible>> + Send>>;

impl hyper::service::Service<hyper::Request<Incoming>> for Api {
    type Response = hyper::Response<GuardedBody>;
    type Error = Infallible;
    type Future = ApiFuture;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let mut request = if self.proxied(&request) {
            request.map(Body::new)
        } else {
            let (timeout, flag) = (self.body_timeout, self.body_too_slow.clone());
            request.map(|body| Body::new(crate::api::SlowBodyGuard::new(body, timeout, flag)))
        };
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        let open = OpenRequest::start(self.activity.clone());
        let response = self.router.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            // Every answer of faasd's says whose it is, so a client can tell faasd's plain-text
            // errors (hyper's, axum's rejections) from another server's; an HTTP-service
            // function's answer keeps the `Server` its service sent.
            response
                .headers_mut()
                .entry(hyper::header::SERVER)
                .or_insert(hyper::header::HeaderValue::from_static(
                    crate::client::SERVER_NAME,
                ));
            Ok(response.map(|body| GuardedBody { body, _open: open }))
        })
    }
}

/// Marks a request open from its headers until it is dropped with its response body.
struct OpenRequest(Arc<Activity>);

impl OpenRequest {
    fn start(activity: Arc<Activity>) -> Self {
        activity.request_started();
        OpenRequest(activity)
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// A response body that keeps its request open until hyper has sent (and dropped) it.
struct GuardedBody {
    body: Body,
    _open: OpenRequest,
}

impl hyper::body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: Duration = Duration::from_secs(10);
    const KEEPALIVE: Duration = Duration::from_secs(60);

    fn limits() -> HttpLimits {
        HttpLimits {
            header_timeout: HEADER,
            body_timeout: Duration::from_secs(30),
            keepalive_timeout: KEEPALIVE,
            max_connections: 10,
            linger_bytes: 1 << 20,
            domain: None,
        }
    }

    /// The activity's deadline, checked to be `timeout` after a moment between `before` and now.
    fn deadline_after(activity: &Activity, before: Instant, timeout: Duration) -> Instant {
        let deadline = activity.deadline(&limits()).expect("a deadline");
        assert!(deadline >= before + timeout && deadline <= Instant::now() + timeout);
        deadline
    }

    #[test]
    fn a_new_connection_has_the_header_timeout() {
        let before = Instant::now();
        let activity = Activity::new();
        let deadline = deadline_after(&activity, before, HEADER);
        let just_before = deadline - Duration::from_millis(1);
        assert_eq!(activity.expired(&limits(), just_before), None);
        assert_eq!(
            activity.expired(&limits(), deadline),
            Some("header timeout")
        );
    }

    #[test]
    fn an_open_request_has_no_deadline_and_its_end_starts_the_keepalive_timeout() {
        let activity = Arc::new(Activity::new());
        let open = OpenRequest::start(activity.clone());
        assert_eq!(activity.deadline(&limits()), None);
        let much_later = Instant::now() + KEEPALIVE * 10;
        assert_eq!(activity.expired(&limits(), much_later), None);
        let before = Instant::now();
        drop(open);
        let deadline = deadline_after(&activity, before, KEEPALIVE);
        assert_eq!(
            activity.expired(&limits(), deadline),
            Some("keep-alive timeout")
        );
    }

    #[test]
    fn bytes_on_an_idle_connection_start_the_header_timeout() {
        let activity = Arc::new(Activity::new());
        drop(OpenRequest::start(activity.clone()));
        let before = Instant::now();
        activity.on_read();
        let deadline = deadline_after(&activity, before, HEADER);
        assert_eq!(
            activity.expired(&limits(), deadline),
            Some("header timeout")
        );
        // More bytes of the same headers do not move the deadline.
        activity.on_read();
        assert_eq!(activity.deadline(&limits()), Some(deadline));
    }

    #[test]
    fn pipelined_requests_keep_the_connection_busy_until_the_last_ends() {
        let activity = Arc::new(Activity::new());
        let first = OpenRequest::start(activity.clone());
        let second = OpenRequest::start(activity.clone());
        drop(first);
        assert_eq!(activity.deadline(&limits()), None);
        drop(second);
        assert!(activity.deadline(&limits()).is_some());
    }

    #[test]
    fn a_rate_limited_warning_logs_once_per_interval_with_the_count() {
        let mut warning = RateLimitedWarning::default();
        let mut logged = Vec::new();
        for _ in 0..5 {
            warning.warn(|count| logged.push(count));
        }
        assert_eq!(logged, [1]);
        assert_eq!(warning.count, 4);
    }
}

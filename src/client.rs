//! The HTTP client the CLI commands share: requests to the faasd API, whole answers, and a
//! typed [`Error`] that says what went wrong. The client knows nothing of exit codes: `cmd`
//! maps its errors to them.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::api::ErrorCode;
use crate::tls;

/// What went wrong talking to the server.
///
/// Each message is one whole line: a cause is written into it rather than returned by
/// `source()`, so the CLI prints it once.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server URL does not parse.
    #[error("invalid server URL {url:?}: {cause}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it does not parse.
        cause: hyper::http::uri::InvalidUri,
    },
    /// The server URL is not `http://HOST:PORT` or `https://HOST:PORT`.
    #[error("invalid server URL {url:?}: expected http://HOST:PORT or https://HOST:PORT")]
    UrlNotHttp {
        /// The URL as given.
        url: String,
    },
    /// TLS cannot be set up for an `https://` URL (such as an unreadable `--cacert`).
    #[error("{cause}")]
    Tls {
        /// What failed.
        cause: tls::Error,
    },
    /// The token cannot be sent in a header (it holds a control character or a line break).
    #[error("the token is not valid: it must be printable text without line breaks")]
    InvalidToken,
    /// A request for `path` could not be built.
    #[error("cannot build request for {path}: {cause}")]
    BuildRequest {
        /// The request's path.
        path: String,
        /// Why it could not be built.
        cause: hyper::http::Error,
    },
    /// Connecting to the server or sending the request failed.
    #[error("cannot reach the faasd server at {url}: {}", connect_cause(cause.as_ref()))]
    Unreachable {
        /// The server's base URL.
        url: String,
        /// What failed (hyper's or the connector's error).
        cause: BoxError,
    },
    /// Reading the answer's body failed.
    #[error("reading the answer failed: {cause}")]
    ReadAnswer {
        /// What failed.
        cause: hyper::Error,
    },
    /// The server answered with an error status.
    #[error("{message}")]
    Answered {
        /// The HTTP status.
        status: StatusCode,
        /// The `code` of the error body, if it has one.
        code: Option<ErrorCode>,
        /// The `error` of the error body, or the status and the body's text.
        message: String,
    },
    /// An error answer without faasd's error body (`{"error", "code"}`): most likely not a
    /// faasd server at all (another web server, a proxy's error page).
    #[error(
        "the server answered {status} ({content_type}) without a faasd error: is the URL (--url, FAASD_URL) a faasd server's? It said: {start}"
    )]
    NotFaasd {
        /// The HTTP status.
        status: StatusCode,
        /// The answer's `Content-Type`, or `no content type`.
        content_type: String,
        /// The start of the body's text, on one line.
        start: String,
    },
    /// A request went unanswered past the client's check interval, and the server did not
    /// answer a `GET /healthz` on another connection either: it is stopped, hung or
    /// overloaded ([`Client::checking_after`]).
    #[error(
        "the faasd server at {url} has not answered for {}, and did not answer a health check within {} either: it is stopped, hung or overloaded (--check-after, FAASD_CHECK_AFTER); the request may still take effect if it resumes (--idempotency-key makes a retry of a call safe)",
        crate::units::format_duration(*waited),
        crate::units::format_duration(*check)
    )]
    NotAnswering {
        /// The server's base URL.
        url: String,
        /// How long the request had waited when its check began.
        waited: Duration,
        /// How long the health check waited.
        check: Duration,
    },
    /// An event stream sent nothing, not even a keepalive, for [`STREAM_SILENCE`].
    #[error(
        "the event stream from {url} sent nothing for {}s, though the server sends a keepalive every 15s: the connection is lost",
        STREAM_SILENCE.as_secs()
    )]
    StreamSilent {
        /// The server's base URL.
        url: String,
    },
    /// The body is not the JSON the command expected.
    #[error("the server sent a body that is not the expected JSON: {cause}")]
    UnexpectedBody {
        /// Why it does not parse.
        cause: serde_json::Error,
    },
}

/// The most telling part of a failed request: the cause under hyper's wrapper, if it has one,
/// and for a server certificate the client does not trust, what to do about it.
fn connect_cause(err: &(dyn std::error::Error + Send + Sync + 'static)) -> String {
    let cause = err
        .source()
        .map_or_else(|| err.to_string(), |s| s.to_string());
    if let Some(explained) = tls::explain_certificate_error(err) {
        explained
    } else if answer_unparsable(err) {
        // What a plain request to a TLS port reads: the server's TLS alert, not HTTP.
        format!(
            "{cause} (the answer was not HTTP: if the server speaks HTTPS, use an https:// URL)"
        )
    } else {
        cause
    }
}

/// Whether hyper failed to parse the server's answer, somewhere down `err`'s chain.
fn answer_unparsable(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |e| e.source()).any(|e| {
        e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_parse)
    })
}

/// The `Server` header every answer of `faasd serve`'s HTTP API carries.
pub const SERVER_NAME: &str = "faasd";

/// An answer from the server.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The headers.
    pub headers: hyper::HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Answer {
    /// Parses the body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|cause| Error::UnexpectedBody { cause })
    }

    /// Succeeds on a 2xx answer; otherwise turns the error answer into [`Error::Answered`].
    pub fn ok(self) -> Result<Answer, Error> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(self.into_error())
        }
    }

    /// The error JSON's `code`, if the body has one.
    pub fn error_code(&self) -> Option<ErrorCode> {
        let body: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        body.get("code")?.as_str().map(ErrorCode::parse)
    }

    /// Turns an error answer into [`Error::Answered`] with the server's message.
    pub fn into_error(self) -> Error {
        let parsed: Option<serde_json::Value> = serde_json::from_slice(&self.body).ok();
        let faasd_code = parsed
            .as_ref()
            .and_then(|v| v.get("code")?.as_str())
            .is_some();
        let faasd_server = self
            .headers
            .get(hyper::header::SERVER)
            .is_some_and(|v| v.as_bytes() == SERVER_NAME.as_bytes());
        if !faasd_code && !faasd_server {
            let content_type = self
                .headers
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("no content type")
                .to_string();
            let text = String::from_utf8_lossy(&self.body);
            let mut start: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
            if start.chars().count() > 120 {
                start = start.chars().take(120).collect::<String>() + "…";
            }
            return Error::NotFaasd {
                status: self.status,
                content_type,
                start,
            };
        }
        let message = parsed
            .as_ref()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| {
                format!(
                    "server answered {}: {}",
                    self.status,
                    String::from_utf8_lossy(&self.body).trim()
                )
            });
        let code = self.error_code();
        // Say which of the two access refusals it was, whatever the server's wording.
        let message = match self.status {
            StatusCode::UNAUTHORIZED => format!("unauthenticated: {message}"),
            StatusCode::FORBIDDEN => format!("forbidden: {message}"),
            _ => message,
        };
        Error::Answered {
            status: self.status,
            code,
            message,
        }
    }
}

/// A request body: whole bytes, or a stream (an upload from disk).
type RequestBody = BoxBody<Bytes, std::io::Error>;

/// An error from hyper or from the connector, boxed.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client of one faasd server.
#[derive(Clone)]
pub struct Client {
    base: String,
    /// The server's URL, parsed (for [`Client::connection`]).
    uri: hyper::Uri,
    /// What opens connections, TLS or not (the pool has its own clone).
    connector: HttpsConnector<HttpConnector>,
    /// The `Host` header of [`Connection`]'s requests: the URL's host, and its port if it
    /// names one (the pooled client sets its own).
    host: hyper::header::HeaderValue,
    http: HyperClient<HttpsConnector<HttpConnector>, RequestBody>,
    /// The `Authorization` header value sent with every request, if a token was given.
    authorization: Option<hyper::header::HeaderValue>,
    /// How long a request waits for its answer before the server's health is checked
    /// ([`Client::checking_after`]); `None` waits as long as the connection lasts.
    check_after: Option<Duration>,
}

/// The longest the health check of a server that has not answered a request may take (no
/// longer than the interval that started it).
pub const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an event stream may send nothing before it counts as lost: three of the server's
/// 15 s keepalives.
pub const STREAM_SILENCE: Duration = Duration::from_secs(45);

impl Client {
    /// A client for the server at `url` (`http://HOST:PORT`, or `https://HOST:PORT` trusting
    /// the system's roots).
    pub fn new(url: &str) -> Result<Client, Error> {
        Client::with_cacert(url, None)
    }

    /// A client for the server at `url`; for `https://`, it trusts the CA certificate in
    /// `cacert` (PEM), or without one the system's roots. An `http://` URL never uses TLS.
    pub fn with_cacert(url: &str, cacert: Option<&std::path::Path>) -> Result<Client, Error> {
        let base = url.trim_end_matches('/').to_string();
        let uri: hyper::Uri = base.parse().map_err(|cause| Error::InvalidUrl {
            url: url.to_owned(),
            cause,
        })?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(Error::UrlNotHttp {
                    url: url.to_owned(),
                });
            }
        };
        if uri.authority().is_none() {
            return Err(Error::UrlNotHttp {
                url: url.to_owned(),
            });
        }
        let host = match (uri.host(), uri.port_u16()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (host, None) => host.unwrap_or_default().to_owned(),
            (None, Some(_)) => String::new(),
        };
        let host = hyper::header::HeaderValue::from_str(&host).map_err(|_| Error::UrlNotHttp {
            url: url.to_owned(),
        })?;
        let connector = connector(https, cacert)?;
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(64)
            .build(connector.clone());
        Ok(Client {
            base,
            uri,
            connector,
            host,
            http,
            authorization: None,
            check_after: None,
        })
    }

    /// The same client, checking the server's health whenever a request has waited `after`
    /// for its answer (and again every `after` while it waits): `GET /healthz` on another
    /// connection. A server that answers it is alive, however long the request takes (a sync
    /// call of a long function, a long poll); one that does not answer within `after` (at
    /// most [`HEALTH_CHECK_TIMEOUT`]) fails the request with [`Error::NotAnswering`], where it
    /// would otherwise wait for ever on a server that accepted the connection and stopped.
    /// An event stream silent for [`STREAM_SILENCE`] fails with [`Error::StreamSilent`].
    pub fn checking_after(mut self, after: Duration) -> Client {
        self.check_after = Some(after);
        self
    }

    /// The same client, sending `token` as `Authorization: Bearer TOKEN` with every request.
    pub fn with_token(mut self, token: &str) -> Result<Client, Error> {
        let value = format!("Bearer {}", token.trim());
        let mut value =
            hyper::header::HeaderValue::from_str(&value).map_err(|_| Error::InvalidToken)?;
        value.set_sensitive(true);
        self.authorization = Some(value);
        Ok(self)
    }

    /// Sends a request and reads the whole answer.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Answer, Error> {
        self.request_with(method, path, content_type, &[], body)
            .await
    }

    /// Sends a request with extra `headers` and reads the whole answer.
    pub async fn request_with(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Answer, Error> {
        let body = Full::new(body).map_err(|never| match never {}).boxed();
        self.checked(async {
            let response = self.send(method, path, content_type, headers, body).await?;
            Self::read_answer(response).await
        })
        .await
    }

    /// Runs `work` (a request and the reading of its answer), checking the server's health
    /// each time it has waited [`Client::checking_after`]'s interval.
    async fn checked<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let Some(after) = self.check_after else {
            return work.await;
        };
        let started = std::time::Instant::now();
        tokio::pin!(work);
        loop {
            match tokio::time::timeout(after, &mut work).await {
                Ok(done) => return done,
                Err(_) => self.check_health(started.elapsed(), after).await?,
            }
        }
    }

    /// `GET /healthz` on a connection of its own: any answer within `after` (at most
    /// [`HEALTH_CHECK_TIMEOUT`]) means the server is alive.
    async fn check_health(&self, waited: Duration, after: Duration) -> Result<(), Error> {
        let check = after.min(HEALTH_CHECK_TIMEOUT);
        let empty = Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed();
        let uri = format!("{}/healthz", self.base);
        let request = self.build(Method::GET, uri, "/healthz", None, &[], empty)?;
        match tokio::time::timeout(check, self.http.request(request)).await {
            // An answer, or a connection refused or cut (a server at its connection limit
            // closes new ones at once): it is alive, or the request's own connection will say
            // it is not. Only silence counts against it.
            Ok(_) => Ok(()),
            Err(_) => Err(Error::NotAnswering {
                url: self.base.clone(),
                // To a tenth of a second, as people read it.
                waited: Duration::from_millis(waited.as_millis() as u64 / 100 * 100),
                check,
            }),
        }
    }

    /// `PUT path` with a body of `len` bytes read from `chunks` as it is sent (not held
    /// whole), and reads the whole answer.
    pub async fn put_stream(
        &self,
        path: &str,
        len: u64,
        chunks: impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
    ) -> Result<Answer, Error> {
        use futures_util::TryStreamExt;
        let frames = chunks.map_ok(hyper::body::Frame::data);
        let body = BodyExt::boxed(StreamBody::new(frames));
        let length = len.to_string();
        let headers = [("content-length", length.as_str())];
        let content_type = Some("application/octet-stream");
        self.checked(async {
            let response = self
                .send(Method::PUT, path, content_type, &headers, body)
                .await?;
            Self::read_answer(response).await
        })
        .await
    }

    /// Reads an answer's whole body.
    async fn read_answer(
        response: hyper::Response<hyper::body::Incoming>,
    ) -> Result<Answer, Error> {
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|cause| Error::ReadAnswer { cause })?
            .to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// `GET path` of an event stream (`GET /v1/events`): the answer's body is read event by
    /// event as it arrives. An error answer is read whole and returned as [`Error::Answered`].
    pub async fn events(&self, path: &str) -> Result<EventStream, Error> {
        let accept = [("accept", "text/event-stream")];
        let empty = Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed();
        let response = self
            .checked(self.send(Method::GET, path, None, &accept, empty))
            .await?;
        let (parts, body) = response.into_parts();
        if !parts.status.is_success() {
            let body = body
                .collect()
                .await
                .map_err(|cause| Error::ReadAnswer { cause })?
                .to_bytes();
            let answer = Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            };
            return Err(answer.into_error());
        }
        Ok(EventStream {
            body,
            buffer: Vec::new(),
            silence: self.check_after.map(|_| STREAM_SILENCE),
            url: self.base.clone(),
        })
    }

    /// Sends a request and returns the answer with its body unread.
    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        headers: &[(&str, &str)],
        body: RequestBody,
    ) -> Result<hyper::Response<hyper::body::Incoming>, Error> {
        let uri = format!("{}{path}", self.base);
        let request = self.build(method, uri, path, content_type, headers, body)?;
        self.http
            .request(request)
            .await
            .map_err(|cause| self.unreachable(cause))
    }

    /// The error of a request that did not reach this client's server.
    fn unreachable(&self, cause: impl Into<BoxError>) -> Error {
        Error::Unreachable {
            url: self.base.clone(),
            cause: cause.into(),
        }
    }

    /// A request to `uri` (for `path`, which errors name) with the headers every request of
    /// this client carries: the content type, `headers`, and the token.
    fn build(
        &self,
        method: Method,
        uri: String,
        path: &str,
        content_type: Option<&str>,
        headers: &[(&str, &str)],
        body: RequestBody,
    ) -> Result<Request<RequestBody>, Error> {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(ct) = content_type {
            builder = builder.header(hyper::header::CONTENT_TYPE, ct);
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if let Some(auth) = &self.authorization {
            builder = builder.header(hyper::header::AUTHORIZATION, auth.clone());
        }
        builder.body(body).map_err(|cause| Error::BuildRequest {
            path: path.to_owned(),
            cause,
        })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Answer, Error> {
        self.request(Method::GET, path, None, Bytes::new()).await
    }

    /// `POST path` with a body.
    pub async fn post(&self, path: &str, content_type: &str, body: Bytes) -> Result<Answer, Error> {
        self.request(Method::POST, path, Some(content_type), body)
            .await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<Answer, Error> {
        self.request(Method::DELETE, path, None, Bytes::new()).await
    }
}

impl Client {
    /// Opens an HTTP/1.1 connection of its own to the server, for a caller that sends one
    /// request after another on it (each of `faasd bench`'s callers): no pool to check a
    /// connection out of and back into, and no task spawned per request to wait for the
    /// connection's readiness, as the pooled client has; hyper's own task for the connection
    /// stays.
    pub async fn connection(&self) -> Result<Connection, Error> {
        use tower_service::Service;
        let io = self
            .connector
            .clone()
            .call(self.uri.clone())
            .await
            .map_err(|cause| self.unreachable(cause))?;
        let (send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|cause| self.unreachable(cause))?;
        tokio::spawn(async move {
            // Ends when the connection closes (the `Connection` dropped, or the server
            // closed it); a request on it then fails, and `Connection::post` reconnects.
            let _ = conn.await;
        });
        Ok(Connection {
            client: self.clone(),
            send,
        })
    }
}

/// One connection of a [`Client`], used by one caller at a time (see [`Client::connection`]).
pub struct Connection {
    client: Client,
    send: hyper::client::conn::http1::SendRequest<RequestBody>,
}

impl Connection {
    /// `POST path` with a body on this connection, and reads the whole answer. When the server
    /// has closed the connection (its keep-alive timeout, or a `Connection: close`), one new
    /// connection is opened and the request sent on it, as long as it was not sent on the old
    /// one.
    pub async fn post(
        &mut self,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<Answer, Error> {
        let request = self.request(path, content_type, body)?;
        let request = match self.send.ready().await {
            Ok(()) => match self.send.try_send_request(request).await {
                Ok(response) => return Client::read_answer(response).await,
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) => unsent,
                    None => return Err(self.client.unreachable(failed.into_error())),
                },
            },
            Err(_) => request,
        };
        *self = self.client.connection().await?;
        self.send
            .ready()
            .await
            .map_err(|cause| self.client.unreachable(cause))?;
        let response = self
            .send
            .send_request(request)
            .await
            .map_err(|cause| self.client.unreachable(cause))?;
        Client::read_answer(response).await
    }

    /// The request of [`Connection::post`]: origin-form, after the server URL's own path, with
    /// the pooled client's headers and the `Host` it would have set.
    fn request(
        &self,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<Request<RequestBody>, Error> {
        let client = &self.client;
        let uri = format!("{}{path}", client.uri.path().trim_end_matches('/'));
        let body = Full::new(body).map_err(|never| match never {}).boxed();
        let mut request = client.build(Method::POST, uri, path, Some(content_type), &[], body)?;
        request
            .headers_mut()
            .insert(hyper::header::HOST, client.host.clone());
        Ok(request)
    }
}

/// One Server-Sent Event: its type (`message` when the server gave none) and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEvent {
    /// The `event:` field.
    pub event: String,
    /// The `data:` lines, joined by line breaks.
    pub data: String,
}

/// An open event stream, read one event at a time.
pub struct EventStream {
    body: hyper::body::Incoming,
    /// Bytes received and not yet parsed into an event.
    buffer: Vec<u8>,
    /// How long the stream may send nothing before it counts as lost, when its client checks.
    silence: Option<Duration>,
    /// The server's base URL, for the error of a lost stream.
    url: String,
}

impl EventStream {
    /// The next event; `None` when the server ended the stream. Comments (keepalives) are
    /// skipped.
    pub async fn next(&mut self) -> Result<Option<ServerEvent>, Error> {
        loop {
            if let Some(event) = take_event(&mut self.buffer) {
                return Ok(Some(event));
            }
            let frame = match self.silence {
                Some(silence) => tokio::time::timeout(silence, self.body.frame())
                    .await
                    .map_err(|_| Error::StreamSilent {
                        url: self.url.clone(),
                    })?,
                None => self.body.frame().await,
            };
            let Some(frame) = frame else {
                return Ok(None);
            };
            let frame = frame.map_err(|cause| Error::ReadAnswer { cause })?;
            if let Ok(data) = frame.into_data() {
                self.buffer.extend_from_slice(&data);
            }
        }
    }
}

/// Takes the first whole event (up to a blank line) off `buffer`, skipping blocks that hold
/// only comments; `None` until a whole event with data has arrived.
fn take_event(buffer: &mut Vec<u8>) -> Option<ServerEvent> {
    loop {
        let end = buffer.windows(2).position(|w| w == b"\n\n")?;
        let block: Vec<u8> = buffer.drain(..end + 2).collect();
        let block = String::from_utf8_lossy(&block);
        let mut event = String::from("message");
        let mut data: Vec<&str> = Vec::new();
        for line in block.lines() {
            if let Some(value) = line.strip_prefix("event:") {
                event = value.trim_start().to_owned();
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push(value.strip_prefix(' ').unwrap_or(value));
            }
        }
        if !data.is_empty() {
            return Some(ServerEvent {
                event,
                data: data.join("\n"),
            });
        }
    }
}

/// How long connecting to the server may take before the command gives up (exit 3).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The connector of a client: plain TCP for `http://`; TLS, trusting `cacert` or the system's
/// roots, for `https://` (and then only TLS: an `https://` client never falls back to plain
/// HTTP).
fn connector(
    https: bool,
    cacert: Option<&std::path::Path>,
) -> Result<HttpsConnector<HttpConnector>, Error> {
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.enforce_http(false);
    // A host that drops connection attempts would otherwise hold a command for the kernel's
    // two minutes or so of retries.
    tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    if https {
        let config = tls::client_config(cacert).map_err(|cause| Error::Tls { cause })?;
        Ok(builder
            .with_tls_config((*config).clone())
            .https_only()
            .enable_http1()
            .wrap_connector(tcp))
    } else {
        // Never used for a handshake: the URL is `http://`, and so is every request's.
        let config = tls::client_config_trusting_nothing().map_err(|cause| Error::Tls { cause })?;
        Ok(builder
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp))
    }
}

/// Escapes a path segment (function names are validated, task ids are UUIDs, but user input
/// reaches here before the server checks it).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: StatusCode, body: &str) -> Answer {
        Answer {
            status,
            headers: hyper::HeaderMap::new(),
            body: Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    #[test]
    fn a_segment_keeps_unreserved_characters() {
        assert_eq!(segment("fn-1_x.v2~"), "fn-1_x.v2~");
        assert_eq!(segment(""), "");
    }

    #[test]
    fn a_segment_escapes_everything_else_bytewise() {
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
        assert_eq!(segment("../x?y#z"), "..%2Fx%3Fy%23z");
        assert_eq!(segment("caf\u{e9}"), "caf%C3%A9");
        assert_eq!(segment("%"), "%25");
    }

    #[test]
    fn a_server_url_must_be_http_or_https_with_an_authority() {
        assert!(Client::new("http://127.0.0.1:8000/").is_ok());
        let err = Client::new("ftp://example.com").err().expect("not http");
        assert!(matches!(err, Error::UrlNotHttp { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "invalid server URL \"ftp://example.com\": expected http://HOST:PORT or https://HOST:PORT"
        );
        let err = Client::new("/v1").err().expect("no authority");
        assert!(matches!(err, Error::UrlNotHttp { .. }), "{err:?}");
        let err = Client::new("http://a b").err().expect("does not parse");
        assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("invalid server URL \"http://a b\": ")
        );
    }

    #[test]
    fn an_error_answer_carries_the_servers_message_and_code() {
        let body = r#"{"error": "no function named \"f\"", "code": "function_not_found"}"#;
        let err = answer(StatusCode::NOT_FOUND, body).ok().expect_err("404");
        assert_eq!(err.to_string(), "no function named \"f\"");
        let Error::Answered { status, code, .. } = err else {
            panic!("not an error answer: {err:?}");
        };
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(code, Some(ErrorCode::FunctionNotFound));
    }

    #[test]
    fn an_error_answer_without_faasd_json_is_named_as_not_faasd() {
        let err = answer(StatusCode::BAD_GATEWAY, "upstream\n  down\n")
            .ok()
            .expect_err("502");
        assert_eq!(
            err.to_string(),
            "the server answered 502 Bad Gateway (no content type) without a faasd error: is the URL (--url, FAASD_URL) a faasd server's? It said: upstream down"
        );
        assert!(matches!(err, Error::NotFaasd { .. }), "{err:?}");
        // JSON without faasd's `code` is not faasd's either; a long page is cut.
        let page = format!("{{\"detail\": \"{}\"}}", "x".repeat(300));
        let err = answer(StatusCode::NOT_FOUND, &page).ok().expect_err("404");
        assert!(matches!(err, Error::NotFaasd { .. }), "{err:?}");
        assert!(err.to_string().ends_with("x…"), "{err}");
        // A plain-text error faasd itself sent (hyper's, an axum rejection) is faasd's.
        let mut plain = answer(StatusCode::BAD_REQUEST, "Invalid URL: bad percent-encoding");
        plain
            .headers
            .insert(hyper::header::SERVER, SERVER_NAME.parse().expect("value"));
        let err = plain.ok().expect_err("400");
        assert!(matches!(err, Error::Answered { code: None, .. }), "{err:?}");
    }

    #[test]
    fn an_unknown_error_code_is_kept() {
        let a = answer(
            StatusCode::FORBIDDEN,
            r#"{"error": "no", "code": "quota_exceeded"}"#,
        );
        assert_eq!(
            a.error_code(),
            Some(ErrorCode::Other("quota_exceeded".into()))
        );
        assert_eq!(
            answer(StatusCode::FORBIDDEN, r#"{"code": 7}"#).error_code(),
            None
        );
    }

    #[test]
    fn a_success_passes_and_a_bad_body_is_an_unexpected_body() {
        let ok = answer(StatusCode::OK, "[1, 2]").ok().expect("2xx");
        assert_eq!(ok.json::<Vec<u32>>().expect("a list"), vec![1, 2]);
        let err = ok.json::<String>().expect_err("not a string");
        assert!(matches!(err, Error::UnexpectedBody { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("the server sent a body that is not the expected JSON: ")
        );
    }

    #[test]
    fn an_unreadable_cacert_is_a_tls_error_naming_the_file() {
        let err = Client::with_cacert("https://127.0.0.1:1", Some("/nonexistent/ca.pem".as_ref()))
            .err()
            .expect("no such file");
        assert!(matches!(err, Error::Tls { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("cannot read certificate /nonexistent/ca.pem: "),
            "{err}"
        );
        // An http:// URL never reads it.
        assert!(
            Client::with_cacert("http://127.0.0.1:1", Some("/nonexistent/ca.pem".as_ref())).is_ok()
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        drop(listener);
        let client = Client::new(&format!("http://{addr}")).expect("client");
        let err = client.get("/healthz").await.expect_err("nothing listens");
        assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("cannot reach the faasd server at http://{addr}: ")),
            "{message}"
        );
        assert!(std::error::Error::source(&err).is_none());
    }

    #[test]
    fn server_events_are_cut_at_blank_lines_and_comments_are_skipped() {
        let mut buffer = b": keepalive\n\nevent: task\ndata: {\"a\":1}\n\nevent: wor".to_vec();
        assert_eq!(
            take_event(&mut buffer),
            Some(ServerEvent {
                event: "task".into(),
                data: "{\"a\":1}".into(),
            })
        );
        assert_eq!(take_event(&mut buffer), None);
        buffer.extend_from_slice(b"ker\ndata:x\ndata: y\n\n");
        let event = take_event(&mut buffer).expect("a whole event");
        assert_eq!(
            (event.event.as_str(), event.data.as_str()),
            ("worker", "x\ny")
        );
        assert!(buffer.is_empty());
    }
}

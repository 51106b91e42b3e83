//! The HTTP client the CLI commands share: requests to the faasd API, and the mapping of its
//! error answers to the CLI's exit codes.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::cmd::exit;

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
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| {
            exit::coded(
                exit::SERVER,
                format!("the server sent a body that is not the expected JSON: {e}"),
            )
        })
    }

    /// Succeeds on a 2xx answer; otherwise turns the error answer into a coded error.
    pub fn ok(self) -> anyhow::Result<Answer> {
        if self.status.is_success() {
            Ok(self)
        } else {
            Err(self.into_error())
        }
    }

    /// The error JSON's `code`, if the body has one.
    pub fn error_code(&self) -> Option<String> {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(str::to_owned))
    }

    /// Turns an error answer into a coded error with the server's message.
    pub fn into_error(self) -> anyhow::Error {
        let parsed: Option<serde_json::Value> = serde_json::from_slice(&self.body).ok();
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
        let code = self.error_code().unwrap_or_default();
        let exit_code = match (self.status, code.as_str()) {
            (
                _,
                "function_failed" | "function_timeout" | "worker_lost" | "output_too_large"
                | "executor_failed",
            ) => exit::FAILURE,
            (_, "task_not_finished") => exit::NOT_FINISHED,
            (StatusCode::NOT_FOUND, _) => exit::NOT_FOUND,
            (s, _) if s.is_client_error() && s != StatusCode::TOO_MANY_REQUESTS => exit::USAGE,
            _ => exit::SERVER,
        };
        exit::coded(exit_code, message)
    }
}

/// A client of one faasd server.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    /// A client for the server at `url` (`http://HOST:PORT`).
    pub fn new(url: &str) -> anyhow::Result<Client> {
        let base = url.trim_end_matches('/').to_string();
        let uri: hyper::Uri = base
            .parse()
            .map_err(|e| exit::coded(exit::USAGE, format!("invalid server URL {url:?}: {e}")))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(exit::coded(
                exit::USAGE,
                format!("invalid server URL {url:?}: expected http://HOST:PORT"),
            ));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(64)
            .build(connector);
        Ok(Client { base, http })
    }

    /// Sends a request and reads the whole answer.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> anyhow::Result<Answer> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(ct) = content_type {
            builder = builder.header(hyper::header::CONTENT_TYPE, ct);
        }
        let request = builder.body(Full::new(body)).map_err(|e| {
            exit::coded(exit::USAGE, format!("cannot build request for {path}: {e}"))
        })?;
        let response = self.http.request(request).await.map_err(|e| {
            let cause =
                std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
            exit::coded(
                exit::SERVER,
                format!("cannot reach the faasd server at {}: {cause}", self.base),
            )
        })?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| exit::coded(exit::SERVER, format!("reading the answer failed: {e}")))?
            .to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> anyhow::Result<Answer> {
        self.request(Method::GET, path, None, Bytes::new()).await
    }

    /// `POST path` with a body.
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> anyhow::Result<Answer> {
        self.request(Method::POST, path, Some(content_type), body)
            .await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> anyhow::Result<Answer> {
        self.request(Method::DELETE, path, None, Bytes::new()).await
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

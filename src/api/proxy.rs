//! The HTTP-service proxy: `ANY /function/{name}/{*path}` (and `/function/{name}` of an HTTP
//! function) forwarded to the function's server on a worker, and `serve --domain`, which routes
//! `Host: NAME.DOMAIN` to function NAME the same way.
//!
//! The method, the path after the name, the query and the headers pass through (hop-by-hop
//! headers dropped, `X-Forwarded-For`, `-Proto`, `-Host` added, and `X-Forwarded-Prefix:
//! /function/NAME` on the path route); both bodies stream (`broker::HttpCall`). The caller's
//! faasd token (`Authorization: Bearer fdt_...`) is not passed on: it is faasd's, not the
//! service's.

use std::net::SocketAddr;

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;

use super::{ApiError, AppState, ErrorCode};
use crate::auth::Caller;
use crate::broker::RequestHead;
use crate::proto::http::is_hop_by_hop;

/// How long past a function's timeout the proxy waits for a response head, so that a worker's
/// report of a start that timed out comes first.
const START_REPORT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Marks a request that `serve --domain` routed by its `Host`.
#[derive(Debug, Clone)]
pub struct HostRouted;

/// `ANY /function/{name}/{*path}`: the request goes to the function's HTTP service.
pub async fn proxy_path(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, _)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    // The path as the client wrote it, not as the router decoded it: `%2F`, `%3F` or `%2e%2e`
    // reach the service as sent, for it to judge.
    let raw = request.uri().path();
    let rest = raw.splitn(4, '/').nth(3).unwrap_or_default();
    let path = format!("/{rest}");
    forward(&state, &caller, &name, &path, request).await
}

/// Whether `name` is an HTTP-service function (whose `/function/{name}` is proxied too).
pub(crate) fn is_service(state: &AppState, name: &str) -> bool {
    state
        .broker
        .function(name)
        .is_some_and(|f| f.http.is_some())
}

/// Forwards `request` to function `name`'s service at `path`.
pub(crate) async fn forward(
    state: &AppState,
    caller: &Caller,
    name: &str,
    path: &str,
    request: Request,
) -> Result<Response, ApiError> {
    let by_host = request.extensions().get::<HostRouted>().is_some();
    let unknown = || unknown_function(name, by_host);
    if super::functions::validate_name(name).is_err() {
        return Err(unknown());
    }
    super::functions::check_invoke(state, caller, name)?;
    let func = state.broker.function(name).ok_or_else(unknown)?;
    if func.http.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::RouteNotFound,
            format!(
                "{name:?} is not an HTTP service (register it with --http-port): call it at /function/{name}"
            ),
        ));
    }
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let answered = proxy(state, &func, name, path, request, by_host).await;
    let status = answered
        .as_ref()
        .map_or_else(ApiError::status, |r| r.status());
    let status = status.as_u16();
    state
        .broker
        .store()
        .metrics()
        .service_answered(name, status);
    let wall_us = started.elapsed().as_micros() as u64;
    if func.http.is_some_and(|h| h.record_requests) {
        let recorded = crate::broker::RecordedRequest {
            caller: caller.user,
            method: method.as_str(),
            path,
            status,
            answered_by_service: answered.is_ok(),
            wall_us,
        };
        state.broker.record_http_request(&func, recorded);
    } else {
        state.broker.http_used(caller.user, name, status, wall_us);
    }
    answered
}

/// Opens the stream to the service, sends the body beside the wait for the answer, and makes
/// the response whose body is the service's, as it comes.
async fn proxy(
    state: &AppState,
    func: &crate::store::FunctionRecord,
    name: &str,
    path: &str,
    request: Request,
    by_host: bool,
) -> Result<Response, ApiError> {
    let head = request_head(state, &request, name, path, by_host);
    let mut call = state.broker.open_http(func, head).map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ServiceUnavailable,
            e.to_string(),
        )
    })?;
    let sender = call.body_sender();
    tokio::spawn(async move { sender.send(request.into_body()).await });
    // The response head comes within the function's timeout (a stream that follows it may
    // last as long as both sides keep it). The worker bounds an executor's start by the same
    // timeout and reports why it failed (with the program's output): the grace lets that
    // report, a 502 that says why, arrive before this 504, which could only say "no answer".
    let wait = std::time::Duration::from_millis(func.timeout_ms) + START_REPORT_GRACE;
    let head = match tokio::time::timeout(wait, call.response()).await {
        Ok(head) => head.map_err(|reason| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                ErrorCode::ServiceFailed,
                format!("the HTTP service of {name:?} failed: {reason}"),
            )
        })?,
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                ErrorCode::ServiceFailed,
                format!(
                    "the HTTP service of {name:?} did not answer within its timeout ({} ms)",
                    func.timeout_ms
                ),
            ));
        }
    };
    let mut response = Response::new(Body::from_stream(call.into_body()));
    *response.status_mut() = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = response.headers_mut();
    for (name, value) in head.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            headers.append(name, value);
        }
    }
    if !by_host {
        confine(headers);
    }
    Ok(response)
}

/// What a page served on the path route runs under: `/function/NAME/...` shares its origin with
/// the dashboard and the API, so the page runs in an opaque origin of its own (scripts, forms and
/// pop-ups allowed; the origin's storage, such as the dashboard's token, out of reach), and may
/// not claim the origin for a service worker. A host of its own (`serve --domain`) needs none of
/// this.
const PATH_ROUTE_POLICY: &str = "sandbox allow-scripts allow-forms allow-popups allow-downloads";

fn confine(headers: &mut axum::http::HeaderMap) {
    headers.remove("service-worker-allowed");
    headers.append(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PATH_ROUTE_POLICY),
    );
}

/// The 404 of a name no function has.
pub(crate) fn unknown_function(name: &str, by_host: bool) -> ApiError {
    if by_host {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no function {name:?} serves this host name"),
        )
    } else {
        super::functions::function_not_found(name)
    }
}

/// What the service is sent: the method, the path and query, and the headers (see the module
/// doc).
fn request_head(
    state: &AppState,
    request: &Request,
    name: &str,
    path: &str,
    by_host: bool,
) -> RequestHead {
    let uri = match request.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let original = request.headers();
    // Headers the `Connection` header names are hop-by-hop too.
    let listed: Vec<String> = original
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    let mut headers: Vec<(String, Bytes)> = original
        .iter()
        .filter(|(n, _)| !is_hop_by_hop(n.as_str()) && !listed.iter().any(|l| l == n.as_str()))
        .filter(|(n, v)| !(*n == header::AUTHORIZATION && is_faasd_token(v)))
        .filter(|(n, _)| !n.as_str().starts_with("x-forwarded-"))
        .map(|(n, v)| (n.as_str().to_owned(), Bytes::copy_from_slice(v.as_bytes())))
        .collect();
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip().to_string());
    let earlier = original
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let forwarded_for = match (earlier, peer) {
        (Some(earlier), Some(peer)) => Some(format!("{earlier}, {peer}")),
        (None, Some(peer)) => Some(peer),
        (Some(earlier), None) => Some(earlier.to_owned()),
        (None, None) => None,
    };
    let mut add = |n: &str, v: String| headers.push((n.to_owned(), Bytes::from(v)));
    if let Some(forwarded_for) = forwarded_for {
        add("x-forwarded-for", forwarded_for);
    }
    let proto = if state.https { "https" } else { "http" };
    add("x-forwarded-proto", proto.to_owned());
    if let Some(host) = host_of(request) {
        add("x-forwarded-host", host.to_owned());
    }
    if !by_host {
        add("x-forwarded-prefix", format!("/function/{name}"));
    }
    RequestHead {
        method: request.method().as_str().to_owned(),
        uri,
        headers,
    }
}

/// Whether an `Authorization` value carries a faasd token.
fn is_faasd_token(value: &HeaderValue) -> bool {
    value.to_str().ok().is_some_and(|v| {
        v.strip_prefix("Bearer ")
            .is_some_and(|t| t.trim().starts_with(crate::auth::token::PREFIX))
    })
}

/// The host a request was sent to: its `Host` header, else its URI's authority.
fn host_of(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
}

/// The function a host name names under `domain`: `NAME.DOMAIN` (any case, port ignored).
pub fn function_of_host<'a>(host: &'a str, domain: &str) -> Option<&'a str> {
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let cut = host.len().checked_sub(domain.len() + 1)?;
    let (name, rest) = host.split_at(cut);
    let matches = rest.as_bytes()[0] == b'.' && rest[1..].eq_ignore_ascii_case(domain);
    (matches && !name.is_empty() && !name.contains('.')).then_some(name)
}

/// `serve --domain`: a request to `NAME.DOMAIN` is routed as `/function/NAME/<path>`, marked
/// [`HostRouted`]; the bare domain and other hosts keep the API.
pub async fn by_host(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let Some(domain) = state.domain.as_deref() else {
        return next.run(request).await;
    };
    let name = host_of(&request)
        .and_then(|host| function_of_host(host, domain))
        .map(str::to_ascii_lowercase);
    if let Some(name) = name {
        let path_and_query = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let rewritten = format!("/function/{name}{path_and_query}");
        if let Ok(uri) = rewritten.parse::<Uri>() {
            *request.uri_mut() = uri;
            request.extensions_mut().insert(HostRouted);
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_under_the_domain_names_its_function() {
        let d = "example.com";
        assert_eq!(function_of_host("web.example.com", d), Some("web"));
        assert_eq!(function_of_host("Web.Example.COM:8443", d), Some("Web"));
        assert_eq!(function_of_host("web.example.com.", d), Some("web"));
        assert_eq!(function_of_host("example.com", d), None);
        assert_eq!(function_of_host("a.b.example.com", d), None);
        assert_eq!(function_of_host("webexample.com", d), None);
        assert_eq!(function_of_host("web.other.com", d), None);
        assert_eq!(function_of_host("127.0.0.1:8080", d), None);
    }
}

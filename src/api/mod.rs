//! The HTTP API: routes, request bodies, and the mapping of broker outcomes to answers.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/functions` | register (JSON with base64 code, or multipart; or `code_sha256` naming an uploaded blob) |
//! | `HEAD/PUT /v1/blobs/sha256:{hex}` | whether the server has a code blob; upload one (streamed, `--max-code-size`) |
//! | `GET /v1/functions`, `GET/DELETE /v1/functions/{name}` | list, show, remove |
//! | `GET /v1/functions/{name}/versions`, `POST /v1/functions/{name}/rollback` | kept versions, go back to one |
//! | `GET /v1/functions/{name}/versions/{version}/code` | a kept version's code (admins, owner) |
//! | `POST /v1/functions/{name}/invoke` | call (sync, or `?async=true`; `?version=N` pins a version); `Idempotency-Key` honoured here, on batch and on `/execute_function` |
//! | `POST /v1/functions/{name}/batch` | many async calls in one request and one commit |
//! | `GET /v1/tasks` | the tasks the caller may read, newest first, filtered, paged by cursor |
//! | `GET /v1/tasks/{id}[/result|/logs|/payload]` | task status, result bytes, stderr, payload |
//! | `POST /v1/tasks/{id}/replay` | a new task of the same version and payload |
//! | `POST /v1/tasks/{id}/cancel`, `POST /v1/functions/{name}/cancel` | cancel a QUEUED task, or a function's (`cancel.rs`) |
//! | `POST /v1/tasks/wait` | wait for the first of many tasks to finish; their results inline |
//! | `ANY /function/{name}` | body to stdin, stdout to body |
//! | `GET /v1/workers`, `GET /healthz` | workers (with their machines' health), health |
//! | `GET /v1/events[?function=NAME][&tasks=summary]` | live task, worker and function events (Server-Sent Events); task summaries once a second |
//! | `GET /metrics` | Prometheus metrics (OpenMetrics text; admins and developers, or anyone with `serve --metrics-open`) |
//! | `GET /`, `GET /assets/app.js`, `GET /assets/app.css` | the dashboard (`dashboard.rs`), open to all |
//! | `/v1/users[/{name}[/token\|/grants/{function}]]`, `GET /v1/whoami` | users, tokens, grants |
//! | `GET /v1/usage` | calls, failures, wall and CPU seconds, GB-seconds per user or function |
//! | `POST /register_function`, `POST /execute_function`, `GET /status/{id}`, `GET /result/{id}` | the MPCS FaaS API |

mod access;
mod batch;
mod blobs;
mod cancel;
mod code;
mod dashboard;
mod error;
mod events;
mod functions;
#[cfg(test)]
mod fuzz;
mod idempotency;
mod metrics;
mod mpcs;
mod panic;
mod proxy;
mod settings;
mod slow_body;
mod task_list;
mod tasks;
mod usage;
mod users;
mod versions;
mod wait;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{MethodRouter, any, delete, get, head, post, put};

use crate::broker::Broker;
pub use blobs::{DEFAULT_MAX_CODE_BYTES, UPLOAD_OFFSET};
pub use code::{CodeCheck, stays_inside};
pub use error::{ApiError, ErrorCode, TASK_ID_HEADER};
pub use idempotency::Keys;
pub use panic::log_panics;
pub use proxy::function_of_host;
pub use settings::Change;
pub use slow_body::{BodyTooSlow, MIN_BYTES_PER_SECOND, SlowBodyGuard, too_slow};

/// What every handler shares: a cheap handle (two reference counts per clone, as every handler
/// and middleware takes one) on [`Shared`] and on what the routes keep for themselves.
#[derive(Clone)]
pub struct AppState {
    shared: Arc<Shared>,
    /// The dashboard's history of ends, once a summary stream has started it.
    recorder: Arc<events::RecorderSlot>,
}

impl AppState {
    /// The handle on `shared`.
    pub fn new(shared: Shared) -> AppState {
        AppState {
            shared: Arc::new(shared),
            recorder: Arc::default(),
        }
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

/// The state behind [`AppState`].
pub struct Shared {
    /// The broker (and through it the store).
    pub broker: Broker,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// The largest code bundle uploaded to `PUT /v1/blobs/...` (`--max-code-size`).
    pub max_code_bytes: u64,
    /// Defaults for functions registered without them.
    pub defaults: FunctionDefaults,
    /// The users, their tokens and grants.
    pub users: crate::auth::Directory,
    /// The role of requests without a token (`serve --anonymous`), if any.
    pub anonymous: Option<crate::auth::Role>,
    /// Whether `GET /metrics` needs no caller (`serve --metrics-open`).
    pub metrics_open: bool,
    /// Checks registered code before it is stored.
    pub code_check: CodeCheck,
    /// The `Idempotency-Key` settings and the locks of the keys in use.
    pub keys: Keys,
    /// `serve --domain`: `Host: NAME.DOMAIN` goes to function NAME (lowercase).
    pub domain: Option<String>,
    /// Whether the API is served over TLS (the `X-Forwarded-Proto` of proxied requests).
    pub https: bool,
}

/// The default of the largest `min_warm` a registration may ask for (`serve --max-min-warm`).
pub const DEFAULT_MAX_MIN_WARM: u32 = 64;

/// Settings a registration gets when it does not give them, and bounds it is held to.
#[derive(Debug, Clone, Copy)]
pub struct FunctionDefaults {
    /// Per-call timeout.
    pub timeout: Duration,
    /// How many tasks may wait in a function's queue.
    pub queue_limit: u32,
    /// How many times a task is started before it fails with `worker_lost`.
    pub max_attempts: u32,
    /// The largest `min_warm` accepted.
    pub max_min_warm: u32,
}

impl Default for FunctionDefaults {
    fn default() -> Self {
        FunctionDefaults {
            timeout: Duration::from_secs(30),
            queue_limit: 100_000,
            max_attempts: 3,
            max_min_warm: DEFAULT_MAX_MIN_WARM,
        }
    }
}

/// Builds the router over `state`.
pub fn router(state: AppState) -> Router {
    let api = finish(routes(), state.clone());
    if state.domain.is_none() {
        return api;
    }
    // Host routing rewrites the path before the API routes it, so it wraps the whole router.
    Router::new()
        .fallback_service(api)
        .layer(axum::middleware::from_fn_with_state(state, proxy::by_host))
}

/// One route: its method (`ANY` for all), its path, and its handler.
type Route = (&'static str, &'static str, MethodRouter<AppState>);

/// Every route of the API; the router is built from this list, and [`route_table`] lists it.
fn route_list() -> Vec<Route> {
    vec![
        ("POST", "/v1/functions", post(functions::register)),
        ("GET", "/v1/functions", get(functions::list)),
        ("HEAD", "/v1/blobs/{digest}", head(blobs::head)),
        ("PUT", "/v1/blobs/{digest}", put(blobs::put)),
        ("GET", "/v1/functions/{name}", get(functions::show)),
        ("DELETE", "/v1/functions/{name}", delete(functions::remove)),
        ("POST", "/v1/functions/{name}/invoke", post(tasks::invoke)),
        ("POST", "/v1/functions/{name}/batch", post(batch::submit)),
        (
            "POST",
            "/v1/functions/{name}/cancel",
            post(cancel::function),
        ),
        ("GET", "/v1/functions/{name}/versions", get(versions::list)),
        (
            "GET",
            "/v1/functions/{name}/versions/{version}/code",
            get(versions::code),
        ),
        (
            "POST",
            "/v1/functions/{name}/rollback",
            post(versions::rollback),
        ),
        ("ANY", "/function/{name}", any(tasks::invoke_url)),
        ("ANY", "/function/{name}/", any(tasks::invoke_url_slash)),
        ("ANY", "/function/{name}/{*path}", any(proxy::proxy_path)),
        ("GET", "/v1/tasks", get(task_list::list)),
        ("POST", "/v1/tasks/wait", post(wait::wait)),
        ("GET", "/v1/tasks/{id}", get(tasks::status)),
        ("GET", "/v1/tasks/{id}/result", get(tasks::result)),
        ("GET", "/v1/tasks/{id}/logs", get(tasks::logs)),
        ("GET", "/v1/tasks/{id}/payload", get(versions::payload)),
        ("POST", "/v1/tasks/{id}/replay", post(versions::replay)),
        ("POST", "/v1/tasks/{id}/cancel", post(cancel::task)),
        ("GET", "/v1/workers", get(workers)),
        ("GET", "/v1/events", get(events::events)),
        ("GET", "/v1/usage", get(usage::usage)),
        ("POST", "/v1/users", post(users::add)),
        ("GET", "/v1/users", get(users::list)),
        ("GET", "/v1/users/{name}", get(users::show)),
        ("DELETE", "/v1/users/{name}", delete(users::remove)),
        ("POST", "/v1/users/{name}/token", post(users::rotate)),
        (
            "PUT",
            "/v1/users/{name}/grants/{function}",
            put(users::grant),
        ),
        (
            "DELETE",
            "/v1/users/{name}/grants/{function}",
            delete(users::revoke),
        ),
        ("GET", "/v1/whoami", get(users::whoami)),
        ("POST", "/register_function", post(mpcs::register)),
        ("POST", "/execute_function", post(mpcs::execute)),
        ("GET", "/status/{id}", get(mpcs::status)),
        ("GET", "/result/{id}", get(mpcs::result)),
        ("GET", "/healthz", get(healthz)),
        ("GET", crate::metrics::PATH, get(metrics::scrape)),
        ("GET", "/", get(dashboard::index)),
        ("GET", "/assets/app.js", get(dashboard::script)),
        ("GET", "/assets/app.css", get(dashboard::style)),
    ]
}

/// Every route of the API as (method, path), `ANY` for a route that takes every method. The
/// access test checks its table of expected answers against this list.
pub fn route_table() -> Vec<(&'static str, &'static str)> {
    route_list()
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect()
}

/// Every route of the API.
fn routes() -> Router<AppState> {
    route_list()
        .into_iter()
        .fold(Router::new(), |router, (_, path, handler)| {
            router.route(path, handler)
        })
}

/// Adds the fallbacks and the layers every route shares to `routes`, and binds `state`.
fn finish(routes: Router<AppState>, state: AppState) -> Router {
    let limit = state.max_body_bytes;
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Multipart bodies honour this; plain bodies are read by `read_body` with the same cap.
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::authenticate,
        ))
        // A panic anywhere below is answered 500, not a dropped connection.
        .layer(axum::middleware::from_fn(panic::catch_panic))
        // Outermost: every answer is counted, refusals and panics included.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::count_requests,
        ))
        .with_state(state)
}

/// `GET /healthz`: 200 with the counters, the data directory's free space (`disk`, once
/// measured), `warnings` (free space under `--min-free-space`, writes refused for a full
/// disk) and `max_body_bytes` (`--max-body`, which `faasd invoke --batch` sizes its requests
/// by); `status` is `ok`, or `degraded` while there is a warning.
async fn healthz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::Json<serde_json::Value> {
    let counts = state.broker.counts();
    let store = state.broker.store();
    let warnings = store.warnings();
    axum::Json(serde_json::json!({
        "status": if warnings.is_empty() { "ok" } else { "degraded" },
        "queued": counts.queued,
        "running": counts.running,
        "workers": counts.workers,
        "slots": counts.slots,
        "disk": store.space(),
        "warnings": warnings,
        "max_body_bytes": state.max_body_bytes,
    }))
}

async fn workers(
    axum::extract::State(state): axum::extract::State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
) -> Result<axum::Json<Vec<crate::broker::WorkerView>>, ApiError> {
    if !crate::auth::policy::may_list_workers(&caller) {
        return Err(access::forbidden(&caller, "list the workers"));
    }
    Ok(axum::Json(state.broker.workers()))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::RouteNotFound,
        format!("no route for {}", uri.path()),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Parses a JSON body into `T`, answering 400 `invalid_request` with a message that names the
/// field at fault (also given as the answer's `field`) and says what `what` was expected.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    body: &[u8],
    what: &str,
) -> Result<T, ApiError> {
    // The usual case, a body that parses, takes the plain parser; only a refused one is parsed
    // again to name the field at fault (tracking the path costs on every value, a wait
    // request's thousand ids among them).
    if let Ok(value) = serde_json::from_slice(body) {
        return Ok(value);
    }
    let mut json = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        // A body cut short or not JSON at all has no field at fault (the path ends in `?`
        // where the parser met the end before a key).
        if field == "." || field.ends_with('?') {
            ApiError::invalid(format!("bad {what}: {inner}"))
        } else {
            ApiError::invalid(format!("bad {what}: field `{field}`: {inner}"))
                .with("field", field.into())
        }
    })?;
    json.end()
        .map_err(|e| ApiError::invalid(format!("bad {what}: {e}")))?;
    Ok(value)
}

/// Reads a whole request body, answering 413 past `limit` bytes.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(bytes),
        Err(e) => {
            if let Some(slow) = too_slow(&e) {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    ErrorCode::RequestTimeout,
                    slow.to_string(),
                ));
            }
            // The length-limit error is wrapped; find it by walking the source chain.
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(err) = source {
                if err.is::<http_body_util::LengthLimitError>() {
                    return Err(ApiError::too_large(limit));
                }
                source = err.source();
            }
            Err(ApiError::invalid(format!("cannot read request body: {e}")))
        }
    }
}

/// The first `len` bytes of the file at `path` as a stream of chunks of up to 64 KiB, the file
/// opened for each chunk: a client that stalls holds no open file, only its connection (which
/// `--max-connections` bounds). A file that ends early ends the stream with an error.
pub(crate) fn path_chunks(
    path: std::path::PathBuf,
    len: u64,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
    futures_util::stream::unfold(0u64, move |offset| {
        let path = path.clone();
        async move {
            if offset >= len {
                return None;
            }
            let want = (len - offset).min(64 << 10) as usize;
            let read = tokio::task::spawn_blocking(move || read_chunk(&path, offset, want))
                .await
                .map_err(std::io::Error::other)
                .and_then(|chunk| chunk);
            match read {
                Ok(chunk) => {
                    let next = offset + chunk.len() as u64;
                    Some((Ok(chunk), next))
                }
                Err(e) => Some((Err(e), len)),
            }
        }
    })
}

/// Up to `want` bytes of the file at `path` from `offset`; an error if none are left.
fn read_chunk(path: &std::path::Path, offset: u64, want: usize) -> std::io::Result<bytes::Bytes> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)?;
    let mut chunk = vec![0u8; want];
    let read = file.read_at(&mut chunk, offset)?;
    if read == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the file ended before its length",
        ));
    }
    chunk.truncate(read);
    Ok(bytes::Bytes::from(chunk))
}

#[cfg(test)]
pub(super) mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::store::Store;

    /// A state over a fresh store in `dir`: no users, no anonymous role, default limits.
    pub(super) async fn state(dir: &std::path::Path) -> AppState {
        let store = Store::open(dir).expect("open store");
        AppState::new(Shared {
            users: crate::auth::Directory::load(store.clone())
                .await
                .expect("users"),
            anonymous: None,
            metrics_open: false,
            broker: Broker::start(store).await.expect("broker"),
            max_body_bytes: 1 << 20,
            max_code_bytes: DEFAULT_MAX_CODE_BYTES,
            defaults: FunctionDefaults::default(),
            code_check: CodeCheck::new(None, None),
            keys: Keys::new(Duration::from_secs(24 * 3600)),
            domain: None,
            https: false,
        })
    }

    /// A body `parse_json` refuses: its message.
    fn refused(body: &str) -> String {
        match parse_json::<super::wait::WaitRequest>(body.as_bytes(), "wait request") {
            Ok(parsed) => panic!("{body} parsed as {parsed:?}"),
            Err(e) => e.message().to_owned(),
        }
    }

    #[test]
    fn parse_json_takes_a_good_body_and_names_what_is_wrong_with_a_bad_one() {
        let parsed: super::wait::WaitRequest =
            parse_json(br#" {"ids": ["a", "b"], "wait": 5} "#, "wait request").expect("parses");
        assert_eq!(parsed.ids, ["a", "b"]);
        assert_eq!(
            refused(r#"{"ids": ["a", 1]}"#),
            "bad wait request: field `ids[1]`: invalid type: integer `1`, expected a string at line 1 column 15"
        );
        assert_eq!(
            refused(r#"{"ids": [], "other": 1}"#),
            "bad wait request: field `other`: unknown field `other`, expected `ids` or `wait` at line 1 column 19"
        );
        assert_eq!(
            refused(r#"{"ids": []} x"#),
            "bad wait request: trailing characters at line 1 column 13"
        );
        assert_eq!(
            refused(r#"{"ids": "#),
            "bad wait request: field `ids`: EOF while parsing a value at line 1 column 8"
        );
        assert_eq!(
            refused(r#"{"ids": [],"#),
            "bad wait request: EOF while parsing a value at line 1 column 11"
        );
    }

    #[tokio::test]
    async fn protected_mode_refuses_clients_off_loopback_and_says_how_to_add_a_user() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let app = router(state(dir.path()).await);
        let peers = [
            (Some([127, 0, 0, 1]), StatusCode::OK),
            (Some([10, 1, 2, 3]), StatusCode::FORBIDDEN),
            (Some([192, 168, 0, 9]), StatusCode::FORBIDDEN),
            // No peer address known: not trusted.
            (None, StatusCode::FORBIDDEN),
        ];
        for (peer, expected) in peers {
            let mut request = Request::get("/v1/whoami")
                .body(Body::empty())
                .expect("request");
            if let Some(ip) = peer {
                let addr = std::net::SocketAddr::from((ip, 40000));
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(addr));
            }
            let response = app.clone().oneshot(request).await.expect("an answer");
            assert_eq!(response.status(), expected, "{peer:?}");
            let body = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .expect("body");
            let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
            if expected == StatusCode::FORBIDDEN {
                assert_eq!(json["code"], "forbidden");
                let message = json["error"].as_str().expect("message");
                assert!(message.contains("protected mode"), "{message}");
                assert!(
                    message.contains("faasd user add NAME --role admin"),
                    "{message}"
                );
            } else {
                assert_eq!(json["mode"], "protected");
            }
        }
        let health = Request::get("/healthz")
            .body(Body::empty())
            .expect("request");
        let response = app.oneshot(health).await.expect("an answer");
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn every_listed_route_is_served_with_its_method() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let app = router(state(dir.path()).await);
        let table = route_table();
        assert!(table.contains(&("GET", "/healthz")));
        for (method, path) in table {
            let uri = path
                .replace("{name}", "f")
                .replace("{function}", "f")
                .replace("{version}", "1")
                .replace("{digest}", &format!("sha256:{}", "0".repeat(64)))
                .replace("{id}", "0190a4b2-0000-7000-8000-000000000000");
            let method = if method == "ANY" { "PATCH" } else { method };
            let mut request = Request::builder()
                .method(method)
                .uri(&uri)
                .body(Body::empty())
                .expect("request");
            let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 40000));
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let response = app.clone().oneshot(request).await.expect("an answer");
            let status = response.status();
            if path == "/v1/events" {
                // A stream that never ends by itself: its status is the answer.
                assert_eq!(status, StatusCode::OK, "{method} {uri}");
                continue;
            }
            let body = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .expect("body");
            let text = String::from_utf8_lossy(&body);
            assert_ne!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {uri}: {text}"
            );
            assert!(!text.contains("route_not_found"), "{method} {uri}: {text}");
        }
    }
}

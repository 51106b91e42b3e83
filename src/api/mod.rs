//! The HTTP API: routes, request bodies, and the mapping of broker outcomes to answers.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/functions` | register (JSON with base64 code, or multipart) |
//! | `GET /v1/functions`, `GET/DELETE /v1/functions/{name}` | list, show, remove |
//! | `POST /v1/functions/{name}/invoke` | call (sync, or `?async=true`) |
//! | `POST /v1/functions/{name}/batch` | many async calls in one request and one commit |
//! | `GET /v1/tasks/{id}[/result|/logs]` | task status, result bytes, stderr |
//! | `POST /v1/tasks/wait` | wait for the first of many tasks to finish; their results inline |
//! | `ANY /function/{name}` | body to stdin, stdout to body |
//! | `GET /v1/workers`, `GET /healthz` | workers, health |
//! | `GET /v1/usage` | calls, failures, wall and CPU seconds, GB-seconds per user or function |
//! | `POST /register_function`, `POST /execute_function`, `GET /status/{id}`, `GET /result/{id}` | the MPCS FaaS API |

mod access;
mod batch;
mod error;
mod functions;
#[cfg(test)]
mod fuzz;
mod mpcs;
mod panic;
mod tasks;
mod usage;
mod wait;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{any, get, post};

use crate::broker::Broker;
pub use error::{ApiError, ErrorCode, TASK_ID_HEADER};
pub use panic::log_panics;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The broker (and through it the store).
    pub broker: Broker,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// Defaults for functions registered without them.
    pub defaults: FunctionDefaults,
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
    finish(routes(), state)
}

/// Every route of the API.
fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/functions",
            post(functions::register).get(functions::list),
        )
        .route(
            "/v1/functions/{name}",
            get(functions::show).delete(functions::remove),
        )
        .route("/v1/functions/{name}/invoke", post(tasks::invoke))
        .route("/v1/functions/{name}/batch", post(batch::submit))
        .route("/function/{name}", any(tasks::invoke_url))
        .route("/v1/tasks/wait", post(wait::wait))
        .route("/v1/tasks/{id}", get(tasks::status))
        .route("/v1/tasks/{id}/result", get(tasks::result))
        .route("/v1/tasks/{id}/logs", get(tasks::logs))
        .route("/v1/workers", get(workers))
        .route("/v1/usage", get(usage::usage))
        .route("/register_function", post(mpcs::register))
        .route("/execute_function", post(mpcs::execute))
        .route("/status/{id}", get(mpcs::status))
        .route("/result/{id}", get(mpcs::result))
        .route("/healthz", get(healthz))
}

/// Adds the fallbacks and the layers every route shares to `routes`, and binds `state`.
fn finish(routes: Router<AppState>, state: AppState) -> Router {
    let limit = state.max_body_bytes;
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Multipart bodies honour this; plain bodies are read by `read_body` with the same cap.
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(access::authenticate))
        // Outermost: a panic anywhere below is answered 500, not a dropped connection.
        .layer(axum::middleware::from_fn(panic::catch_panic))
        .with_state(state)
}

/// `GET /healthz`: 200 with the counters, the data directory's free space (`disk`, once
/// measured) and `warnings` (free space under `--min-free-space`, writes refused for a full
/// disk); `status` is `ok`, or `degraded` while there is a warning.
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
    }))
}

async fn workers(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::Json<Vec<crate::broker::WorkerView>> {
    axum::Json(state.broker.workers())
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
    let mut json = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        if field == "." {
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

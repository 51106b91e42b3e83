//! Task routes: invoke (sync or async), the per-function URL, status, result and logs.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::functions::{rfc3339, validate_name};
use super::idempotency::{self, Once};
use super::{ApiError, AppState, ErrorCode, TASK_ID_HEADER, read_body};
use crate::auth::{Caller, policy};
use crate::store::{Output, TaskRecord, TaskStatus};

/// A task as the API shows it.
#[derive(Debug, Serialize)]
pub struct TaskView {
    id: String,
    function: String,
    version: u32,
    status: &'static str,
    attempts: u32,
    created_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    exit_code: Option<i32>,
    signal: Option<i32>,
    reason: Option<&'static str>,
    message: Option<String>,
    payload_bytes: u64,
    result_bytes: u64,
    stderr_bytes: u64,
    queued_ms: Option<u64>,
    run_ms: Option<f64>,
    cold_start: Option<bool>,
    init_ms: Option<f64>,
    cpu_ms: Option<f64>,
    peak_memory_bytes: Option<u64>,
    /// The worker its latest attempt ran on: while it runs and once it has ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    worker: Option<String>,
}

impl From<&TaskRecord> for TaskView {
    fn from(t: &TaskRecord) -> Self {
        TaskView {
            id: uuid::Uuid::from_u128(t.id).to_string(),
            function: t.function.clone(),
            version: t.version,
            status: t.status.as_str(),
            attempts: t.attempts,
            created_at: rfc3339(t.created_ms),
            started_at: t.started_ms.map(rfc3339),
            finished_at: t.finished_ms.map(rfc3339),
            exit_code: t.exit_code,
            signal: t.signal,
            reason: t.failure.map(|f| f.as_str()),
            message: t.message.clone(),
            payload_bytes: t.payload_bytes,
            result_bytes: t.result_bytes,
            stderr_bytes: t.stderr_bytes,
            queued_ms: t.started_ms.map(|s| s.saturating_sub(t.created_ms)),
            run_ms: t.status.is_finished().then(|| t.run_us as f64 / 1000.0),
            cold_start: t.status.is_finished().then_some(t.cold_start),
            init_ms: t.status.is_finished().then(|| t.init_us as f64 / 1000.0),
            cpu_ms: t.status.is_finished().then(|| t.cpu_us as f64 / 1000.0),
            peak_memory_bytes: t.status.is_finished().then_some(t.peak_memory_bytes),
            worker: t.worker.clone(),
        }
    }
}

/// `?async=true` on invoke, and `?version=N` to run a kept version rather than the live one.
#[derive(Debug, Deserialize)]
pub struct InvokeQuery {
    #[serde(default, rename = "async", deserialize_with = "flag")]
    is_async: bool,
    #[serde(default)]
    version: Option<u32>,
}

/// `?version=N` on the routes that call a function without other options.
#[derive(Debug, Deserialize)]
pub struct VersionQuery {
    /// The kept version to run instead of the live one.
    #[serde(default)]
    pub version: Option<u32>,
}

/// The record of the version `version` of `name` for a call that pins one (`None`: the live
/// version runs); 404 `version_not_found` when it is not kept.
pub(super) async fn pin(
    state: &AppState,
    name: &str,
    version: Option<u32>,
) -> Result<Option<std::sync::Arc<crate::store::FunctionRecord>>, ApiError> {
    match version {
        Some(v) => Ok(Some(state.broker.pinned(name, v).await?)),
        None => Ok(None),
    }
}

fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let text = String::deserialize(d)?;
    match text.as_str() {
        "" | "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        other => Err(serde::de::Error::custom(format!(
            "expected true or false, got {other:?}"
        ))),
    }
}

/// `POST /v1/functions/{name}/invoke`.
pub async fn invoke(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    query: Result<Query<InvokeQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let target = (name.as_str(), query.version);
    call(&state, &caller, target, &headers, body, query.is_async).await
}

/// `ANY /function/{name}`: the body goes to stdin, stdout comes back as the body; an
/// HTTP-service function gets the request at `/` instead (`api/proxy.rs`).
pub async fn invoke_url(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    query: Result<Query<VersionQuery>, axum::extract::rejection::QueryRejection>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    if super::proxy::is_service(&state, &name) {
        return super::proxy::forward(&state, &caller, &name, "/", request).await;
    }
    let by_host = request
        .extensions()
        .get::<super::proxy::HostRouted>()
        .is_some();
    if by_host && state.broker.function(&name).is_none() {
        // As the proxy answers it: after the caller's right to invoke the name is checked.
        super::functions::check_invoke(&state, &caller, &name)?;
        return Err(super::proxy::unknown_function(&name, true));
    }
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let target = (name.as_str(), query.version);
    let (parts, body) = request.into_parts();
    call(&state, &caller, target, &parts.headers, body, false).await
}

/// `ANY /function/{name}/`: an HTTP-service function's `/` (as `/function/{name}` for any
/// other function).
pub async fn invoke_url_slash(
    state: State<AppState>,
    caller: Extension<Caller>,
    name: Path<String>,
    query: Result<Query<VersionQuery>, axum::extract::rejection::QueryRejection>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    invoke_url(state, caller, name, query, request).await
}

/// Calls `name` (pinned to a kept version when one is given).
async fn call(
    state: &AppState,
    caller: &Caller,
    (name, version): (&str, Option<u32>),
    headers: &HeaderMap,
    body: Body,
    is_async: bool,
) -> Result<Response, ApiError> {
    // A JSON payload is handed to `python` handlers decoded.
    let json = is_json(headers);
    validate_name(name)?;
    super::functions::check_invoke(state, caller, name)?;
    super::functions::check_task_function(state, name)?;
    let pin = pin(state, name, version).await?;
    let payload = read_body(body, state.max_body_bytes).await?;
    if json {
        let runtime = match &pin {
            Some(version) => Some(version.runtime),
            None => state.broker.function(name).map(|f| f.runtime),
        };
        check_json_payload(runtime, &payload)?;
    }
    let request = idempotency::Request {
        function: name,
        route: "invoke",
        payload_hash: crate::store::payload_hash([payload.as_ref()]),
    };
    let submitted = idempotency::once(state, caller, headers, request, |key| async move {
        let submitted = state
            .broker
            .submit_keyed(
                name,
                payload,
                json,
                !is_async,
                caller.user,
                crate::broker::Extras { pin, key },
            )
            .await?;
        Ok(submitted)
    })
    .await?;
    let (record, waiter) = match submitted {
        Once::Fresh(submitted) => submitted,
        Once::Repeat(ids) => return repeated_call(state, &ids, is_async).await,
    };
    let id = uuid::Uuid::from_u128(record.id).to_string();
    let Some(waiter) = waiter else {
        let mut response = (
            StatusCode::ACCEPTED,
            Json(AcceptedView {
                status: "QUEUED",
                task_id: &id,
            }),
        )
            .into_response();
        set_task_header(&mut response, &id);
        return Ok(response);
    };
    let Some(ended) = state.broker.wait_while_runnable(record.id, waiter).await else {
        return Err(ApiError::stranded(&id));
    };
    let finished = ended
        .map_err(|_| ApiError::internal("the task's waiter was dropped"))?
        .map_err(|e| ApiError::store(&e))?;
    finished_response(&finished.record, finished.result.clone(), &finished.logs)
}

/// Whether the request's `Content-Type` is `application/json` (in any case, with or without
/// parameters such as `charset`).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// Refuses a body sent as JSON that is not, when the version called would decode it (a
/// `python` handler): the handler never runs, rather than failing inside the harness's decoder.
fn check_json_payload(
    runtime: Option<crate::proto::Runtime>,
    payload: &[u8],
) -> Result<(), ApiError> {
    if runtime != Some(crate::proto::Runtime::Python) {
        return Ok(());
    }
    match serde_json::from_slice::<serde::de::IgnoredAny>(payload) {
        Ok(_) => Ok(()),
        Err(e) => Err(ApiError::invalid(format!(
            "the body is sent as application/json but is not JSON ({e}); fix it, or send it with another Content-Type to hand the handler the bytes as they are"
        ))),
    }
}

/// The body of an invoke's 202: `{"status": ..., "task_id": ...}`, keys in that order.
#[derive(serde::Serialize)]
struct AcceptedView<'a> {
    status: &'a str,
    task_id: &'a str,
}

/// The answer to a repeat of a keyed invoke: 202 with the first request's task id and its
/// status now, or for a sync call that task's result, waiting for it as the first caller does.
async fn repeated_call(
    state: &AppState,
    ids: &[u128],
    is_async: bool,
) -> Result<Response, ApiError> {
    let Some(&task_id) = ids.first() else {
        return Err(ApiError::internal("an idempotency key names no task"));
    };
    let id = uuid::Uuid::from_u128(task_id).to_string();
    if is_async {
        let status = state
            .broker
            .task(task_id)
            .await?
            .map_or("QUEUED", |r| r.status.as_str());
        let mut response = (
            StatusCode::ACCEPTED,
            Json(AcceptedView {
                status,
                task_id: &id,
            }),
        )
            .into_response();
        set_task_header(&mut response, &id);
        return Ok(response);
    }
    if let Some(waiter) = state.broker.watch(task_id) {
        let finished = waiter
            .await
            .map_err(|_| ApiError::internal("the task's waiter was dropped"))?
            .map_err(|e| ApiError::store(&e))?;
        return finished_response(&finished.record, finished.result.clone(), &finished.logs);
    }
    let Some(record) = state.broker.task(task_id).await? else {
        return Err(ApiError::task_not_found(&id));
    };
    let result = state.broker.result(task_id).await?.unwrap_or_default();
    let logs = state.broker.logs(task_id).await?.unwrap_or_default();
    finished_response(&record, result, &logs)
}

fn set_task_header(response: &mut Response, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        response.headers_mut().insert(TASK_ID_HEADER, v);
    }
}

/// The answer for a finished task: its result bytes, or the failure as an error.
fn finished_response(
    record: &TaskRecord,
    result: Bytes,
    logs: &[u8],
) -> Result<Response, ApiError> {
    if record.status != TaskStatus::Completed {
        return Err(ApiError::task_failed(record, logs));
    }
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        result,
    )
        .into_response();
    set_task_header(&mut response, &uuid::Uuid::from_u128(record.id).to_string());
    Ok(response)
}

pub(super) fn parse_id(id: &str) -> Result<u128, ApiError> {
    uuid::Uuid::parse_str(id).map(|u| u.as_u128()).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidTaskId,
            format!("{id:?} is not a task id (a UUID)"),
        )
    })
}

/// `?wait=30s` on the status route: hold the answer until the task finishes or this passes.
#[derive(Debug, Deserialize)]
pub struct StatusQuery {
    wait: Option<String>,
}

/// The longest a status request may be held.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// The `?wait=` of the status route: a duration text, held to at most [`MAX_WAIT`].
pub(super) fn wait_param(text: &str) -> Result<Duration, ApiError> {
    crate::units::parse_duration(text)
        .map(|wait| wait.min(MAX_WAIT))
        .map_err(|e| ApiError::invalid(format!("wait {text:?}: {e}")).with("field", "wait".into()))
}

/// `GET /v1/tasks/{id}`.
pub async fn status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    query: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TaskView>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let task_id = parse_id(&id)?;
    if let Some(wait) = query.wait {
        let wait = wait_param(&wait)?;
        // Checked before waiting, so a caller cannot learn of a task by how long it is held.
        visible_task(&state, &caller, &id, task_id).await?;
        if let Some(waiter) = state.broker.watch(task_id) {
            if let Ok(Ok(Ok(finished))) = tokio::time::timeout(wait, waiter).await {
                return Ok(Json(TaskView::from(&finished.record)));
            }
        }
    }
    let record = visible_task(&state, &caller, &id, task_id).await?;
    let mut view = TaskView::from(&record);
    if record.status == TaskStatus::Queued {
        // Leased since the store's copy was read, or its RUNNING record not yet committed.
        view.worker = state.broker.worker_of(task_id);
    }
    Ok(Json(view))
}

/// Whether `caller` may read `record` (its caller, the function's owner, admins).
pub(crate) fn may_read(state: &AppState, caller: &Caller, record: &TaskRecord) -> bool {
    caller.is_admin()
        || policy::may_read_task(
            caller,
            record.caller,
            state.broker.function(&record.function).map(|f| f.owner),
        )
}

/// The task `id` if `caller` may read it; 404 `task_not_found` both when it does not exist and
/// when the caller may not read it, so task ids cannot be probed; 410 `task_expired` when it is
/// not stored and the retention purge has passed its id (whoever asks: nothing of it is left to
/// reveal).
pub(crate) async fn visible_task(
    state: &AppState,
    caller: &Caller,
    id: &str,
    task_id: u128,
) -> Result<TaskRecord, ApiError> {
    match state.broker.task(task_id).await? {
        Some(record) if may_read(state, caller, &record) => Ok(record),
        Some(_) => Err(ApiError::task_not_found(id)),
        None => {
            let store = state.broker.store();
            if store.expired(task_id).await? {
                return Err(ApiError::task_expired(id, store.retain()));
            }
            Err(ApiError::task_not_found(id))
        }
    }
}

/// The task `id` if it has finished; 409 `task_not_finished` if not, saying it has no `what`
/// yet and, with `hint`, how to wait for it.
async fn finished_record(
    state: &AppState,
    caller: &Caller,
    id: &str,
    what: &str,
    hint: Option<String>,
) -> Result<TaskRecord, ApiError> {
    let task_id = parse_id(id)?;
    let record = visible_task(state, caller, id, task_id).await?;
    if !record.status.is_finished() {
        let status = record.status.as_str();
        let hint = hint.map_or_else(String::new, |h| format!(" ({h})"));
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::TaskNotFinished,
            format!("task {id} is {status}; it has no {what} yet{hint}"),
        )
        .with("status", serde_json::json!(record.status.as_str())));
    }
    Ok(record)
}

/// `GET /v1/tasks/{id}/result`: 200 with the result bytes when COMPLETED, the failure's error
/// when FAILED, 409 while QUEUED or RUNNING, 404 when unknown.
pub async fn result(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let record = finished_record(&state, &caller, &id, "result", None).await?;
    let broker = &state.broker;
    // A success needs its result; a failure's answer carries the stderr tail instead.
    if record.status != TaskStatus::Completed {
        let logs = broker.logs(record.id).await?.unwrap_or_default();
        return finished_response(&record, Bytes::new(), &logs);
    }
    match broker.result_to_send(record.id).await? {
        Some(Output::File { path, len }) => {
            // Streamed: a reader that reads slowly holds a chunk, not the whole result, and
            // no open file between chunks.
            let body = Body::from_stream(super::path_chunks(path, len));
            let mut response = (
                StatusCode::OK,
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    ),
                    (header::CONTENT_LENGTH, HeaderValue::from(len)),
                ],
                body,
            )
                .into_response();
            set_task_header(&mut response, &uuid::Uuid::from_u128(record.id).to_string());
            Ok(response)
        }
        Some(Output::Whole(result)) => finished_response(&record, result, &[]),
        None => {
            // Its end may have been stored since without its output (a full disk): answer
            // what is stored, not an empty result.
            let now = finished_record(&state, &caller, &id, "result", None).await?;
            let logs = broker.logs(now.id).await?.unwrap_or_default();
            finished_response(&now, Bytes::new(), &logs)
        }
    }
}

/// `GET /v1/tasks/{id}/logs`: the captured stderr of a finished task (409 while unfinished).
pub async fn logs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let hint = format!("`faasd logs {id} --follow` waits for it to end and prints them");
    let record = finished_record(&state, &caller, &id, "logs", Some(hint)).await?;
    let logs = state.broker.logs(record.id).await?.unwrap_or_default();
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        logs,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::AcceptedView;

    #[test]
    fn an_accepted_body_is_status_then_task_id() {
        let body = serde_json::to_string(&AcceptedView {
            status: "QUEUED",
            task_id: "0190c1e2-0000-7000-8000-000000000001",
        })
        .expect("json");
        assert_eq!(
            body,
            r#"{"status":"QUEUED","task_id":"0190c1e2-0000-7000-8000-000000000001"}"#
        );
    }
}

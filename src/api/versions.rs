//! Versions and replay: list a function's kept versions, roll back to one, fetch one's code,
//! and read or re-run a task's payload.
//!
//! Every registration is kept as a version (the store never rewrites one), so going back is
//! moving the live pointer, and a task's `(function, version)` always names the code it ran:
//! a replay runs that same code on that same payload, whatever is live now.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::access::forbidden;
use super::functions::{FunctionView, check_invoke, function_not_found, validate_name};
use super::tasks::{parse_id, visible_task};
use super::{ApiError, AppState, ErrorCode, read_body};
use crate::auth::{Caller, Role, policy};

/// One kept version as `GET /v1/functions/{name}/versions` lists it: the function's view and
/// whether it is the live one.
#[derive(Debug, Serialize)]
pub struct VersionView {
    #[serde(flatten)]
    function: FunctionView,
    live: bool,
}

/// `GET /v1/functions/{name}/versions`: every kept version, oldest first.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<Vec<VersionView>>, ApiError> {
    check_invoke(&state, &caller, &name)?;
    let (versions, live) = state
        .broker
        .store()
        .versions(&name)
        .await?
        .ok_or_else(|| function_not_found(&name))?;
    Ok(Json(
        versions
            .iter()
            .map(|f| VersionView {
                function: FunctionView::from(f),
                live: f.version == live,
            })
            .collect(),
    ))
}

/// The body of a rollback.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    version: u32,
}

/// `POST /v1/functions/{name}/rollback` `{"version": N}`: makes version N live again. Needs
/// the right to register the function (admins, its owner).
pub async fn rollback(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Json<FunctionView>, ApiError> {
    validate_name(&name)?;
    let live = state
        .broker
        .function(&name)
        .ok_or_else(|| function_not_found(&name))?;
    if caller.role == Role::Invoker || !policy::may_register(&caller, Some(live.owner)) {
        return Err(forbidden(&caller, &format!("roll back {name:?}")));
    }
    let body = read_body(body, state.max_body_bytes).await?;
    let req: RollbackRequest = super::parse_json(&body, "rollback JSON")?;
    let record = state.broker.rollback(&name, req.version).await?;
    tracing::info!(function = %name, version = record.version, by = %caller.name, "rolled back");
    Ok(Json(FunctionView::from(record.as_ref())))
}

/// `GET /v1/functions/{name}/versions/{version}/code`: a kept version's code bundle (admins and
/// the function's owner; code is not shown to those who may only call it).
pub async fn code(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let version = parse_version(&version)?;
    let live = state
        .broker
        .function(&name)
        .ok_or_else(|| function_not_found(&name))?;
    if !policy::may_read_code(&caller, live.owner) {
        return Err(forbidden(&caller, &format!("read the code of {name:?}")));
    }
    let record = state.broker.pinned(&name, version).await?;
    let store = state.broker.store();
    let body = match store.blob(record.code_hash).await? {
        Some(code) => axum::body::Body::from(code),
        None => {
            // An uploaded blob: streamed from its file, never read whole.
            let path = store.blob_files().path(&record.code_hash);
            let len = tokio::fs::metadata(&path).await.map_err(|_| {
                ApiError::internal(format!("the code of {name:?} {version} is missing"))
            })?;
            axum::body::Body::from_stream(super::path_chunks(path, len.len()))
        }
    };
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        body,
    )
        .into_response())
}

/// A version number in a path, 400 `invalid_request` if it is not one.
fn parse_version(text: &str) -> Result<u32, ApiError> {
    text.parse().map_err(|_| {
        ApiError::invalid(format!("{text:?} is not a version number"))
            .with("field", "version".into())
    })
}

/// 404 `payload_not_found`: the task's payload is not kept (it finished before payloads were
/// kept with their tasks).
fn payload_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::PayloadNotFound,
        format!(
            "task {id} has no payload kept (it finished before payloads were kept with their tasks), so it cannot be replayed"
        ),
    )
}

/// `GET /v1/tasks/{id}/payload`: the bytes a task read on stdin (for whoever may read the task).
pub async fn payload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let task_id = parse_id(&id)?;
    let record = visible_task(&state, &caller, &id, task_id).await?;
    let payload = state.broker.store().payload(record.id).await?;
    let payload = payload.ok_or_else(|| payload_not_found(&id))?;
    let content_type = if record.json {
        "application/json"
    } else {
        "application/octet-stream"
    };
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type)],
        payload,
    )
        .into_response())
}

/// `POST /v1/tasks/{id}/replay`: queues a new task of the same function version with the same
/// payload; 202 `{"task_id", "status", "function", "version", "replay_of"}`. The caller must
/// be able to read the task and invoke the function.
pub async fn replay(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    _body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let task_id = parse_id(&id)?;
    let old = visible_task(&state, &caller, &id, task_id).await?;
    check_invoke(&state, &caller, &old.function)?;
    let store = state.broker.store();
    let payload = store.payload(old.id).await?;
    let payload = payload.ok_or_else(|| payload_not_found(&id))?;
    let pin = state.broker.pinned(&old.function, old.version).await?;
    let (record, _) = state
        .broker
        .submit(
            &old.function,
            payload,
            old.json,
            false,
            caller.user,
            Some(pin),
        )
        .await?;
    let new_id = uuid::Uuid::from_u128(record.id).to_string();
    tracing::info!(task = %new_id, replay_of = %id, "replayed");
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({
            "task_id": new_id,
            "status": "QUEUED",
            "function": record.function,
            "version": record.version,
            "replay_of": id,
        })),
    ))
}

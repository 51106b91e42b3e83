//! Cancel routes: `POST /v1/tasks/{id}/cancel` (one QUEUED task) and
//! `POST /v1/functions/{name}/cancel[?version=N]` (every QUEUED task of a function the caller
//! may cancel).
//!
//! A cancelled task ends FAILED with reason `cancelled`, durably, before the answer; a RUNNING
//! task is not cancelled (409 `task_running`): it runs to its end or its timeout.

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;

use super::access::forbidden;
use super::functions::{function_not_found, validate_name};
use super::tasks::{TaskView, VersionQuery, parse_id, visible_task};
use super::{ApiError, AppState, ErrorCode};
use crate::auth::Caller;
use crate::auth::policy::{self, CancelScope};
use crate::broker::{Cancel, CancelFilter};
use crate::store::TaskRecord;

/// `POST /v1/tasks/{id}/cancel`: 200 with the task's view, now FAILED `cancelled`; 409
/// `task_running` or `task_finished` (with `status`) when it is not QUEUED.
pub async fn task(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    _body: Body,
) -> Result<Json<TaskView>, ApiError> {
    let task_id = parse_id(&id)?;
    let record = visible_task(&state, &caller, &id, task_id).await?;
    check_cancel(&state, &caller, &record)?;
    let why = format!("cancelled by {} before it ran", caller.name);
    match state.broker.cancel(task_id, &why).await? {
        Cancel::Cancelled(end) => {
            tracing::info!(task = %id, by = %caller.name, "cancelled");
            Ok(Json(TaskView::from(&end)))
        }
        Cancel::Running(now) => Err(running(&id, &now)),
        Cancel::Finished(end) => Err(finished(&id, &end)),
        Cancel::NotActive => match state.broker.task(task_id).await? {
            Some(end) => Err(finished(&id, &end)),
            None => Err(ApiError::task_not_found(&id)),
        },
    }
}

/// 403 unless `caller` may cancel `record` (see [`policy::may_cancel_task`]).
fn check_cancel(state: &AppState, caller: &Caller, record: &TaskRecord) -> Result<(), ApiError> {
    let function = state.broker.function(&record.function);
    let owner = function.as_ref().map(|f| f.owner);
    let granted = state.users.is_granted(caller.user, &record.function);
    if policy::may_cancel_task(caller, record.caller, owner, granted) {
        return Ok(());
    }
    let id = uuid::Uuid::from_u128(record.id);
    let what = match owner {
        Some(_) => format!(
            "cancel task {id} (a task is cancelled by its caller while it may invoke {:?}, by the function's owner, or by an admin)",
            record.function
        ),
        None => format!("cancel task {id} (its function is gone)"),
    };
    Err(forbidden(caller, &what))
}

/// 409 `task_running`: only a QUEUED task can be cancelled.
fn running(id: &str, record: &TaskRecord) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        ErrorCode::TaskRunning,
        format!(
            "task {id} is RUNNING and cannot be cancelled: only QUEUED tasks can; it runs to its end or its function's timeout"
        ),
    )
    .with("status", serde_json::json!(record.status.as_str()))
}

/// 409 `task_finished`: nothing is left to cancel.
fn finished(id: &str, record: &TaskRecord) -> ApiError {
    let status = record.status.as_str();
    let how = match record.failure {
        Some(reason) => format!("{status} ({})", reason.as_str()),
        None => status.to_owned(),
    };
    ApiError::new(
        StatusCode::CONFLICT,
        ErrorCode::TaskFinished,
        format!("task {id} has already ended {how}: there is nothing to cancel"),
    )
    .with("status", serde_json::json!(status))
    .with(
        "reason",
        serde_json::json!(record.failure.map(|f| f.as_str())),
    )
}

/// `POST /v1/functions/{name}/cancel[?version=N]`: cancels the function's QUEUED tasks (of
/// version N only, with `?version`), everyone's for admins and its owner, the caller's own for
/// whoever may invoke it; 200 `{"function", "cancelled": N}` once their ends are durable.
pub async fn function(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    query: Result<Query<VersionQuery>, axum::extract::rejection::QueryRejection>,
    _body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    validate_name(&name)?;
    let func = state
        .broker
        .function(&name)
        .ok_or_else(|| function_not_found(&name))?;
    let granted = state.users.is_granted(caller.user, &name);
    let only = match policy::cancel_scope(&caller, func.owner, granted) {
        CancelScope::All => None,
        CancelScope::Own => Some(caller.user),
        CancelScope::Nothing => {
            let what = format!("cancel tasks of {name:?} (it needs the right to invoke it)");
            return Err(forbidden(&caller, &what));
        }
    };
    let filter = CancelFilter {
        version: query.version,
        caller: only,
    };
    let why = format!("cancelled by {} before it ran", caller.name);
    let cancelled = state.broker.cancel_queued_of(&name, filter, &why).await?;
    tracing::info!(function = %name, by = %caller.name, cancelled, "cancelled queued tasks");
    Ok(Json(
        serde_json::json!({"function": name, "cancelled": cancelled}),
    ))
}

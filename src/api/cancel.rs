//! Cancel routes: `POST /v1/tasks/{id}/cancel[?wait=10s]` (one QUEUED or RUNNING task) and
//! `POST /v1/functions/{name}/cancel[?version=N][&running=true]` (every QUEUED task of a
//! function the caller may cancel, and with `running`, every RUNNING one).
//!
//! A cancelled task ends FAILED with reason `cancelled`, durably, before the answer. A RUNNING
//! task is stopped on its worker (its process killed); if the worker has not reported within
//! the wait, the answer is 202 with the task still RUNNING, and it ends `cancelled` once the
//! worker reports or is lost.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;

use super::access::forbidden;
use super::functions::{function_not_found, validate_name};
use super::tasks::{TaskView, parse_id, visible_task, wait_param};
use super::{ApiError, AppState, ErrorCode};
use crate::auth::Caller;
use crate::auth::policy::{self, CancelScope};
use crate::broker::{Cancel, CancelFilter};
use crate::store::TaskRecord;

/// `?wait=10s` on a task's cancel: how long to wait for a RUNNING task's worker to stop it.
#[derive(Debug, serde::Deserialize)]
pub struct CancelQuery {
    wait: Option<String>,
}

/// How long a task's cancel waits for its worker by default.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// `POST /v1/tasks/{id}/cancel`: 200 with the task's view, now FAILED `cancelled`; 202 with
/// its view, still RUNNING, when its worker was told to stop it and has not reported within
/// `?wait` (default 10 s); 409 `task_finished` (with `status`) when it has ended.
pub async fn task(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    query: Result<Query<CancelQuery>, axum::extract::rejection::QueryRejection>,
    _body: Body,
) -> Result<(StatusCode, Json<TaskView>), ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let wait = query.wait.as_deref().map(wait_param).transpose()?;
    let task_id = parse_id(&id)?;
    let record = visible_task(&state, &caller, &id, task_id).await?;
    check_cancel(&state, &caller, &record)?;
    let wait = wait.unwrap_or(STOP_WAIT);
    match state.broker.cancel(task_id, &caller.name, wait).await? {
        Cancel::Cancelled(end) => {
            tracing::info!(task = %id, by = %caller.name, "cancelled");
            Ok((StatusCode::OK, Json(TaskView::from(&end))))
        }
        Cancel::Stopping(now) => {
            tracing::info!(task = %id, by = %caller.name, "cancelled; its worker is stopping it");
            Ok((StatusCode::ACCEPTED, Json(TaskView::from(&now))))
        }
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

/// The query of a function's cancel: `?version=N` takes that version's tasks only;
/// `?running=true` stops its RUNNING tasks too, waiting up to `?wait` (default 10 s) for them.
#[derive(Debug, serde::Deserialize)]
pub struct FunctionCancelQuery {
    version: Option<u32>,
    #[serde(default)]
    running: bool,
    wait: Option<String>,
}

/// `POST /v1/functions/{name}/cancel[?version=N][&running=true[&wait=10s]]`: cancels the
/// function's QUEUED tasks (of version N only, with `?version`), everyone's for admins and its
/// owner, the caller's own for whoever may invoke it; with `?running=true` stops the same
/// RUNNING tasks on their workers. 200 `{"function", "cancelled": N}` (with `running`, also
/// `"stopped"` and `"stopping"`) once the queued ends (and the stopped ones) are durable.
pub async fn function(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    query: Result<Query<FunctionCancelQuery>, axum::extract::rejection::QueryRejection>,
    _body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let wait = query.wait.as_deref().map(wait_param).transpose()?;
    if wait.is_some() && !query.running {
        return Err(
            ApiError::invalid("wait applies to running=true only").with("field", "wait".into())
        );
    }
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
    let mut answer = serde_json::json!({"function": name, "cancelled": cancelled});
    if query.running {
        let wait = wait.unwrap_or(STOP_WAIT);
        let stopped = state
            .broker
            .stop_running_of(&name, filter, &caller.name, wait)
            .await?;
        answer["stopped"] = stopped.stopped.into();
        answer["stopping"] = stopped.stopping.into();
    }
    Ok(Json(answer))
}

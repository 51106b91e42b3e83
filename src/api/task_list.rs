//! `GET /v1/tasks`: the tasks a caller may read, newest first, filtered by function, status and
//! age, a page at a time with an opaque cursor. Served from the store's task indexes.

use std::collections::HashMap;

use axum::Extension;
use axum::Json;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};

use super::tasks::TaskView;
use super::{ApiError, AppState};
use crate::auth::{Caller, policy};
use crate::store::{TaskQuery, TaskRecord, TaskStatus, first_id_at};
use crate::units::{now_ms, parse_duration};

/// The page size when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 50;
/// The largest page a request may ask for.
pub const MAX_LIMIT: usize = 1000;

/// `?function=&status=&since=&limit=&cursor=`; an empty value is the same as none.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    function: Option<String>,
    status: Option<String>,
    since: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// One page of tasks.
#[derive(Debug, Serialize)]
pub struct TaskListView {
    tasks: Vec<TaskView>,
    /// Pass as `cursor` for the next page; `null` on the last one. A page may hold fewer than
    /// `limit` tasks and still have a next one (the server bounds the work of one request).
    next_cursor: Option<String>,
}

/// `GET /v1/tasks`.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TaskListView>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let query = parse_query(query, now_ms())?;
    let page = if caller.is_admin() {
        state.broker.store().list_tasks(query, |_| true).await?
    } else {
        let visible = visibility(&state, caller);
        state.broker.store().list_tasks(query, visible).await?
    };
    Ok(Json(TaskListView {
        tasks: page.tasks.iter().map(TaskView::from).collect(),
        next_cursor: page.next.map(|id| uuid::Uuid::from_u128(id).to_string()),
    }))
}

/// Whether the (non-admin) `caller` may read a task, as `GET /v1/tasks/{id}` decides, with the
/// live functions' owners taken once for the whole page.
fn visibility(state: &AppState, caller: Caller) -> impl Fn(&TaskRecord) -> bool + Send + 'static {
    let owners: HashMap<String, u32> = state
        .broker
        .functions()
        .iter()
        .map(|f| (f.name.clone(), f.owner))
        .collect();
    move |record| {
        let owner = owners.get(&record.function).copied();
        policy::may_read_task(&caller, record.caller, owner)
    }
}

/// A 400 `invalid_request` naming the query field at fault.
fn bad(field: &str, message: String) -> ApiError {
    ApiError::invalid(message).with("field", field.into())
}

/// The value of a query field, `None` when absent or empty.
fn given(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// Checks every field of the query and turns it into the store's terms.
fn parse_query(query: ListQuery, now_ms: u64) -> Result<TaskQuery, ApiError> {
    let status = given(query.status).map(|s| parse_status(&s)).transpose()?;
    let since_id = match given(query.since) {
        Some(since) => {
            let age = parse_duration(&since)
                .map_err(|reason| bad("since", format!("since {since:?}: {reason}")))?;
            let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
            first_id_at(now_ms.saturating_sub(age_ms))
        }
        None => 0,
    };
    let limit = given(query.limit).map_or(Ok(DEFAULT_LIMIT), |l| parse_limit(&l))?;
    let before_id = given(query.cursor).map(|c| parse_cursor(&c)).transpose()?;
    Ok(TaskQuery {
        function: given(query.function),
        status,
        since_id,
        before_id,
        limit,
    })
}

fn parse_status(text: &str) -> Result<TaskStatus, ApiError> {
    let statuses = [
        TaskStatus::Queued,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
    ];
    statuses
        .into_iter()
        .find(|s| s.as_str().eq_ignore_ascii_case(text))
        .ok_or_else(|| {
            bad(
                "status",
                format!("status {text:?} is not one of QUEUED, RUNNING, COMPLETED, FAILED"),
            )
        })
}

fn parse_limit(text: &str) -> Result<usize, ApiError> {
    match text.parse::<usize>() {
        Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => Ok(limit),
        _ => Err(bad(
            "limit",
            format!("limit {text:?} is not a whole number from 1 to {MAX_LIMIT}"),
        )),
    }
}

fn parse_cursor(text: &str) -> Result<u128, ApiError> {
    uuid::Uuid::parse_str(text)
        .map(|u| u.as_u128())
        .map_err(|_| {
            bad(
                "cursor",
                format!(
                    "cursor {text:?} is not one this route gave: pass `next_cursor` back as it came"
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ages_are_durations_or_bare_seconds() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "x", "-1", "1 parsec", "99999999999999999999999"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits_outside_1_to_1000_are_refused() {
        assert_eq!(parse_limit("1").ok(), Some(1));
        assert_eq!(parse_limit("1000").ok(), Some(1000));
        for bad in ["0", "1001", "-1", "ten", ""] {
            assert!(parse_limit(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn statuses_are_read_in_any_case() {
        assert_eq!(parse_status("failed").ok(), Some(TaskStatus::Failed));
        assert_eq!(parse_status("RUNNING").ok(), Some(TaskStatus::Running));
        assert!(parse_status("done").is_err());
    }
}

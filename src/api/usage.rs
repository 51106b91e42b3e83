//! `GET /v1/usage`: what tasks used, summed per user or per function over a recent window.
//!
//! The store keeps hourly totals per caller and function (see `store::UsageTotals`); this route
//! sums the hours from `since` on (the hour `since` falls in counts whole) into one row per
//! user or function. Admins see every caller's calls, everyone else only their own.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState};
use crate::auth::{Caller, NO_USER};
use crate::store::{UsageRow, UsageTotals};
use crate::units::{now_ms, parse_duration};

/// The window when `since` is not given.
const DEFAULT_SINCE: &str = "24h";

/// What the rows are keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum By {
    /// One row per caller.
    User,
    /// One row per function.
    Function,
}

/// `?by=user|function&since=24h|all`.
#[derive(Debug, Deserialize)]
pub struct UsageQuery {
    by: Option<String>,
    since: Option<String>,
}

/// The answer of `GET /v1/usage`.
#[derive(Debug, Serialize)]
pub struct UsageView {
    by: By,
    since: String,
    rows: Vec<RowView>,
}

/// One row: the key (`user` or `function`, named after `by`) and its sums.
#[derive(Debug, Serialize)]
pub struct RowView {
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function: Option<String>,
    calls: u64,
    failures: u64,
    wall_seconds: f64,
    cpu_seconds: f64,
    gb_seconds: f64,
}

/// `GET /v1/usage`.
pub async fn usage(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    query: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<UsageView>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let by = parse_by(query.by.as_deref())?;
    let since = query.since.unwrap_or_else(|| DEFAULT_SINCE.to_owned());
    let since_ms = parse_since(&since, now_ms())?;
    let rows = state.broker.store().usage(since_ms).await?;
    let visible = rows
        .into_iter()
        .filter(|r| caller.is_admin() || r.caller == caller.user);
    Ok(Json(UsageView {
        by,
        since,
        rows: summed(&state, by, visible),
    }))
}

/// The `by` parameter; `function` when absent.
fn parse_by(by: Option<&str>) -> Result<By, ApiError> {
    match by {
        None | Some("function") => Ok(By::Function),
        Some("user") => Ok(By::User),
        Some(other) => Err(ApiError::invalid(format!(
            "bad `by` {other:?}: expected `user` or `function`"
        ))),
    }
}

/// The start of the window (Unix ms) `since` names before `now_ms`: `all`, or a duration such
/// as `24h`, `7d`, `30m`.
fn parse_since(since: &str, now_ms: u64) -> Result<u64, ApiError> {
    if since == "all" {
        return Ok(0);
    }
    let window: Duration = parse_duration(since).map_err(|e| {
        ApiError::invalid(format!(
            "bad `since`: {e} (give a duration such as 24h or 7d, or `all`)"
        ))
    })?;
    Ok(now_ms.saturating_sub(window.as_millis().min(u128::from(u64::MAX)) as u64))
}

/// The buckets summed per user or function, sorted by that key.
fn summed(state: &AppState, by: By, rows: impl Iterator<Item = UsageRow>) -> Vec<RowView> {
    let mut sums: BTreeMap<String, UsageTotals> = BTreeMap::new();
    for row in rows {
        let key = match by {
            By::User => user_name(state, row.caller),
            By::Function => row.function,
        };
        sums.entry(key).or_default().add(&row.totals);
    }
    sums.into_iter()
        .map(|(key, t)| RowView {
            user: (by == By::User).then(|| key.clone()),
            function: (by == By::Function).then_some(key),
            calls: t.calls,
            failures: t.failures,
            wall_seconds: t.wall_us as f64 / 1e6,
            cpu_seconds: t.cpu_us as f64 / 1e6,
            gb_seconds: t.gb_seconds(),
        })
        .collect()
}

/// The name a usage row shows for user `id`: `(none)` for calls made without one (protected
/// mode's loopback admin, `--anonymous` callers), `#ID (removed)` for a user since removed.
fn user_name(state: &AppState, id: u32) -> String {
    if id == NO_USER {
        return "(none)".to_owned();
    }
    state
        .users
        .name_of(id)
        .unwrap_or_else(|| format!("#{id} (removed)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_defaults_to_function_and_refuses_others() {
        assert_eq!(parse_by(None).expect("default"), By::Function);
        assert_eq!(parse_by(Some("user")).expect("user"), By::User);
        let err = parse_by(Some("team")).expect_err("refused");
        assert!(
            err.message().contains("`user` or `function`"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn since_is_a_duration_back_from_now_or_all() {
        let now = 100 * 3_600_000;
        assert_eq!(parse_since("24h", now).expect("24h"), 76 * 3_600_000);
        assert_eq!(parse_since("all", now).expect("all"), 0);
        assert_eq!(parse_since("1000d", now).expect("long"), 0);
        let err = parse_since("yesterday", now).expect_err("refused");
        assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
        assert!(err.message().contains("bad `since`"), "{}", err.message());
    }
}

//! Waiting for many tasks at once: `POST /v1/tasks/wait` long-polls until at least one of the
//! given tasks has finished (or the wait passes) and answers every finished one with its result
//! inlined, so a client with thousands of calls in flight needs one request, not one per task.
//!
//! A request holds one broker waiter per active task it names, and only while it lasts: the
//! waiters drop with the request, however it ends.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use base64::Engine;
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};

use super::tasks::TaskView;
use super::{ApiError, AppState, read_body};
use crate::broker::{Finished, Waiter};
use crate::store::{TaskRecord, TaskStatus};

/// The longest a wait request may be held.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// The most ids one request may name.
const MAX_IDS: usize = 10_000;
/// Results are inlined until their total would pass this.
const INLINE_RESULT_BYTES: usize = 8 << 20;
/// How much of a failed task's logs comes inline.
const LOGS_TAIL_BYTES: usize = 8 << 10;

/// The body of `POST /v1/tasks/wait`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WaitRequest {
    pub(super) ids: Vec<String>,
    pub(super) wait: Option<WaitField>,
}

/// How long to wait: seconds (a number) or a duration text such as `"30s"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum WaitField {
    Seconds(f64),
    Text(String),
    /// Anything else, refused by [`WaitField::duration`].
    Other(serde_json::Value),
}

impl WaitField {
    pub(super) fn duration(&self) -> Result<Duration, ApiError> {
        let wait = match self {
            WaitField::Seconds(s) if s.is_finite() && *s >= 0.0 => {
                Duration::try_from_secs_f64(*s).unwrap_or(Duration::MAX)
            }
            WaitField::Seconds(s) => {
                return Err(ApiError::invalid(format!(
                    "wait must be zero or more seconds, got {s}"
                )));
            }
            WaitField::Text(t) => crate::units::parse_duration(t).map_err(|e| {
                ApiError::invalid(format!("wait {t:?}: {e}")).with("field", "wait".into())
            })?,
            WaitField::Other(v) => {
                return Err(ApiError::invalid(format!(
                    "wait must be seconds (a number) or a duration text such as \"30s\", got {v}"
                )));
            }
        };
        if wait > MAX_WAIT {
            return Err(ApiError::invalid(format!(
                "wait may be at most {}s",
                MAX_WAIT.as_secs()
            )));
        }
        Ok(wait)
    }
}

/// A finished task as the wait route shows it: its status, and its result (or that it was left
/// out) and, when it failed, the tail of its logs.
#[derive(Debug, Serialize)]
struct FinishedView {
    #[serde(flatten)]
    task: TaskView,
    #[serde(skip_serializing_if = "Option::is_none")]
    result_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result_omitted: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logs_tail: Option<String>,
}

/// The answer: every finished task among the ids, and the ids that are not valid or not found.
#[derive(Debug, Default, Serialize)]
pub struct WaitAnswer {
    tasks: Vec<FinishedView>,
    unknown: Vec<String>,
    /// Ids of tasks the retention purge removed (`GET /v1/tasks/{id}` answers them 410).
    expired: Vec<String>,
    #[serde(skip)]
    inlined_bytes: usize,
}

impl WaitAnswer {
    /// Whether a result of `len` bytes still fits inline; counts it if so.
    fn inline(&mut self, len: usize) -> bool {
        let fits = self.inlined_bytes.saturating_add(len) <= INLINE_RESULT_BYTES;
        if fits {
            self.inlined_bytes += len;
        }
        fits
    }

    /// Adds a finished task; `result` is `None` when it was left out.
    fn push(&mut self, record: &TaskRecord, result: Option<&[u8]>, logs_tail: Option<&[u8]>) {
        let failed = record.status == TaskStatus::Failed;
        self.tasks.push(FinishedView {
            task: TaskView::from(record),
            result_base64: result.map(|r| base64::engine::general_purpose::STANDARD.encode(r)),
            result_omitted: result.is_none().then_some(true),
            logs_tail: failed.then(|| lossy_tail(logs_tail.unwrap_or_default())),
        });
    }

    /// Adds a task whose end a waiter brought.
    fn push_finished(&mut self, finished: &Finished) {
        let inline = self.inline(finished.result.len());
        let logs = &finished.logs[finished.logs.len().saturating_sub(LOGS_TAIL_BYTES)..];
        self.push(
            &finished.record,
            inline.then_some(&finished.result[..]),
            Some(logs),
        );
    }
}

/// The last bytes of a log as text: invalid UTF-8 replaced, a character cut at the start
/// dropped.
fn lossy_tail(bytes: &[u8]) -> String {
    let cut = bytes
        .iter()
        .take(3)
        .take_while(|b| (0x80..0xC0).contains(*b))
        .count();
    String::from_utf8_lossy(&bytes[cut..]).into_owned()
}

/// `POST /v1/tasks/wait`: 200 `{"tasks": [...], "unknown": [...], "expired": [...]}` once at least one of the
/// ids is finished, or when `wait` passes.
pub async fn wait(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    body: Body,
) -> Result<Json<WaitAnswer>, ApiError> {
    let body = read_body(body, state.max_body_bytes).await?;
    let request: WaitRequest = super::parse_json(
        &body,
        r#"wait request (expected {"ids": ["<task id>", ...], "wait": "30s"})"#,
    )?;
    if request.ids.len() > MAX_IDS {
        return Err(ApiError::invalid(format!(
            "a wait request may name at most {MAX_IDS} task ids, got {}",
            request.ids.len()
        )));
    }
    let wait = match &request.wait {
        Some(w) => w.duration().map_err(|e| e.with("field", "wait".into()))?,
        None => Duration::ZERO,
    };
    let mut answer = WaitAnswer::default();
    let (ids, texts) = parse_ids(request.ids, &mut answer.unknown);
    let ids = readable(&state, &caller, ids, &texts, &mut answer.unknown).await?;
    let (waiters, inactive) = state.broker.watch_many(&ids, !wait.is_zero());
    read_stored(&state, inactive, &texts, &mut answer).await?;
    let mut pending: FuturesUnordered<Waiter> = waiters.into_iter().collect();
    take_ready(&mut pending, &mut answer);
    if answer.tasks.is_empty() && !pending.is_empty() {
        let deadline = tokio::time::Instant::now() + wait;
        if let Ok(Some(finished)) = tokio::time::timeout_at(deadline, first_end(&mut pending)).await
        {
            answer.push_finished(&finished);
            take_ready(&mut pending, &mut answer);
            let linger = linger_for(pending.len());
            gather_until(
                &mut pending,
                &mut answer,
                deadline.min(tokio::time::Instant::now() + linger),
            )
            .await;
        }
    }
    Ok(Json(answer))
}

/// The ids as numbers, each once, in the order given, and the text each was given as; a text
/// that is not a UUID goes to `unknown`.
pub(super) fn parse_ids(
    texts: Vec<String>,
    unknown: &mut Vec<String>,
) -> (Vec<u128>, HashMap<u128, String>) {
    let mut order = Vec::with_capacity(texts.len());
    let mut ids = HashMap::with_capacity(texts.len());
    let mut invalid = HashSet::new();
    for text in texts {
        match uuid::Uuid::parse_str(&text) {
            Ok(id) => {
                if let Entry::Vacant(slot) = ids.entry(id.as_u128()) {
                    slot.insert(text);
                    order.push(id.as_u128());
                }
            }
            Err(_) => {
                if invalid.insert(text.clone()) {
                    unknown.push(text);
                }
            }
        }
    }
    (order, ids)
}

/// The ids of `ids` that `caller` may read; the others join `unknown`, as if they did not
/// exist, so task ids cannot be probed.
async fn readable(
    state: &AppState,
    caller: &crate::auth::Caller,
    ids: Vec<u128>,
    texts: &HashMap<u128, String>,
    unknown: &mut Vec<String>,
) -> Result<Vec<u128>, ApiError> {
    if caller.is_admin() || ids.is_empty() {
        return Ok(ids);
    }
    let stored = state.broker.store().tasks(ids.clone()).await?;
    let mut out = Vec::with_capacity(ids.len());
    for (id, record) in ids.into_iter().zip(stored) {
        // A sync call's QUEUED record may not be written yet: the broker holds it.
        let record = match record {
            Some(r) => Some(r),
            None => state.broker.task(id).await?,
        };
        match record {
            Some(r) if super::tasks::may_read(state, caller, &r) => out.push(id),
            Some(_) => unknown.push(texts.get(&id).cloned().unwrap_or_default()),
            // Unknown ids are reported as such by the rest of the request.
            None => out.push(id),
        }
    }
    Ok(out)
}

/// Reads the tasks that are not active from the store: finished ones join the answer with
/// their results (within the inline budget) and failed ones with their log tails; ids the
/// store does not know join `unknown`.
async fn read_stored(
    state: &AppState,
    ids: Vec<u128>,
    texts: &HashMap<u128, String>,
    answer: &mut WaitAnswer,
) -> Result<(), ApiError> {
    if ids.is_empty() {
        return Ok(());
    }
    let store = state.broker.store();
    let records = store.tasks(ids.clone()).await?;
    let mut finished = Vec::new();
    for (id, record) in ids.iter().zip(records) {
        match record {
            None => {
                let text = texts.get(id).cloned().unwrap_or_default();
                if store.expired(*id).await? {
                    answer.expired.push(text);
                } else {
                    answer.unknown.push(text);
                }
            }
            Some(r) if r.status.is_finished() => {
                let inline = answer.inline(r.result_bytes as usize);
                finished.push((r, inline));
            }
            Some(_) => {}
        }
    }
    let wanted = |keep: &dyn Fn(&(TaskRecord, bool)) -> bool| -> Vec<u128> {
        finished
            .iter()
            .filter(|f| keep(f))
            .map(|(r, _)| r.id)
            .collect()
    };
    let result_ids = wanted(&|(_, inline)| *inline);
    let failed_ids = wanted(&|(r, _)| r.status == TaskStatus::Failed);
    let mut results = read_if_any(result_ids, |ids| store.results(ids)).await?;
    let mut tails = read_if_any(failed_ids, |ids| store.log_tails(ids, LOGS_TAIL_BYTES)).await?;
    for (record, inline) in &finished {
        let result = inline.then(|| results.next().flatten().unwrap_or_default());
        let tail = (record.status == TaskStatus::Failed)
            .then(|| tails.next().flatten().unwrap_or_default());
        answer.push(record, result.as_deref(), tail.as_deref());
    }
    Ok(())
}

/// Runs a many-task store read unless there is nothing to read.
async fn read_if_any<F, Fut>(
    ids: Vec<u128>,
    read: F,
) -> Result<std::vec::IntoIter<Option<Bytes>>, ApiError>
where
    F: FnOnce(Vec<u128>) -> Fut,
    Fut: Future<Output = Result<Vec<Option<Bytes>>, crate::store::Error>>,
{
    if ids.is_empty() {
        return Ok(Vec::new().into_iter());
    }
    Ok(read(ids).await?.into_iter())
}

/// The first end any waiter brings (`None` once every waiter is gone without one).
async fn first_end(pending: &mut FuturesUnordered<Waiter>) -> Option<Arc<Finished>> {
    while let Some(outcome) = pending.next().await {
        // A failed commit or a dropped waiter ends nothing visible; keep waiting on the rest.
        if let Ok(Ok(finished)) = outcome {
            return Some(finished);
        }
    }
    None
}

/// How long an answer that has its first end waits for more: 20 µs per task still waited on, at
/// most 20 ms. A long poll over many slow tasks then brings several ends per round, rather than
/// one end per round for a request that names every id again; a poll over a few answers at once.
fn linger_for(still_waiting: usize) -> Duration {
    (Duration::from_micros(20) * still_waiting.min(1_000) as u32).min(MAX_LINGER)
}

/// The longest an answer lingers after its first end.
const MAX_LINGER: Duration = Duration::from_millis(20);

/// Adds the ends that arrive until `until`.
async fn gather_until(
    pending: &mut FuturesUnordered<Waiter>,
    answer: &mut WaitAnswer,
    until: tokio::time::Instant,
) {
    while let Ok(Some(outcome)) = tokio::time::timeout_at(until, pending.next()).await {
        if let Ok(Ok(finished)) = outcome {
            answer.push_finished(&finished);
        }
    }
}

/// Adds every end the waiters already hold, without waiting.
fn take_ready(pending: &mut FuturesUnordered<Waiter>, answer: &mut WaitAnswer) {
    while let Some(Some(outcome)) = pending.next().now_or_never() {
        if let Ok(Ok(finished)) = outcome {
            answer.push_finished(&finished);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ErrorCode;

    fn wait(json: serde_json::Value) -> Result<Duration, ApiError> {
        serde_json::from_value::<WaitField>(json)
            .expect("a number or a text")
            .duration()
    }

    #[test]
    fn a_wait_is_seconds_or_a_duration_text_up_to_a_minute() {
        assert_eq!(wait(serde_json::json!(0)).expect("0"), Duration::ZERO);
        assert_eq!(
            wait(serde_json::json!(1.5)).expect("1.5"),
            Duration::from_millis(1500)
        );
        assert_eq!(wait(serde_json::json!("60s")).expect("60s"), MAX_WAIT);
        for bad in [
            serde_json::json!(61),
            serde_json::json!("2m"),
            serde_json::json!(-1),
            serde_json::json!("soon"),
        ] {
            let err = wait(bad.clone()).expect_err("refused");
            assert_eq!(err.code(), &ErrorCode::InvalidRequest, "{bad}");
        }
    }

    #[test]
    fn ids_are_taken_once_and_invalid_ones_are_unknown() {
        let id = uuid::Uuid::now_v7();
        let mut unknown = Vec::new();
        let other = uuid::Uuid::now_v7();
        let (ids, texts) = parse_ids(
            vec![
                other.to_string(),
                id.to_string(),
                "nope".into(),
                other.to_string(),
                "nope".into(),
            ],
            &mut unknown,
        );
        assert_eq!(ids, [other.as_u128(), id.as_u128()]);
        assert_eq!(texts[&id.as_u128()], id.to_string());
        assert_eq!(unknown, ["nope"]);
    }

    #[test]
    fn results_are_inlined_until_their_total_would_pass_the_budget() {
        let mut answer = WaitAnswer::default();
        assert!(answer.inline(INLINE_RESULT_BYTES - 10));
        assert!(!answer.inline(11));
        assert!(answer.inline(10));
        assert!(!answer.inline(1));
    }

    #[test]
    fn an_answer_lingers_longer_the_more_tasks_it_still_waits_on() {
        assert_eq!(linger_for(0), Duration::ZERO);
        assert_eq!(linger_for(1), Duration::from_micros(20));
        assert_eq!(linger_for(500), Duration::from_millis(10));
        assert_eq!(linger_for(1_000), MAX_LINGER);
        assert_eq!(linger_for(10_000), MAX_LINGER);
    }

    #[test]
    fn a_log_tail_drops_a_character_cut_at_its_start() {
        let text = "é.".as_bytes();
        assert_eq!(lossy_tail(&text[1..]), ".");
        assert_eq!(lossy_tail(b"plain"), "plain");
        assert_eq!(lossy_tail(b"bad \xff byte"), "bad \u{fffd} byte");
    }
}

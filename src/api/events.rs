//! `GET /v1/events[?function=NAME][&tasks=summary]`: the broker's live events as Server-Sent
//! Events.
//!
//! Each event is `event: TYPE` and one line of JSON (`task`, `worker`, `function`), with a
//! `: keepalive` comment every 15 s. With `?tasks=summary` the task events are not sent one by
//! one: once a second, if anything changed, the stream sends one `tasks` event with, for each
//! function, the tasks that ended in that second, a sample of their run times and (for callers
//! who may read all of its tasks) its queued and running levels, plus the latest state of the
//! newest tasks that changed. At ten thousand tasks a second that is one event instead of thirty
//! thousand, which is what the dashboard reads, so that watching costs the broker little. The JSON is made here, per consumer, from the plain event
//! the broker published, so the broker never serializes. A caller sees the task events of tasks
//! it may read (as `GET /v1/tasks/{id}` decides) and the worker events only if it may list the
//! workers; `?function=` keeps the task and function events of that function (and no worker
//! events). A consumer that reads too slowly to keep up with the broker's event buffer gets a
//! `dropped` event and its stream ends: it should reconnect. The streams end when the server
//! stops.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::{Receiver, error::RecvError};
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{ApiError, AppState};
use crate::auth::{Caller, policy};
use crate::broker::events::TaskEvent;
use crate::broker::{Broker, Event};
use crate::store::TaskStatus;

/// How often an idle stream sends a `: keepalive` comment.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// How long a `tasks` summary covers.
const SUMMARY_WINDOW: Duration = Duration::from_secs(1);
/// How many of the newest changed tasks a summary carries.
const SUMMARY_LATEST: usize = 50;
/// How many run times per function a summary samples.
const SUMMARY_SAMPLES: usize = 100;

/// `?function=` (an empty value is the same as none) and `?tasks=each|summary`.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    function: Option<String>,
    tasks: Option<String>,
}

/// Which events one consumer gets.
struct Filter {
    caller: Caller,
    /// Only the events of this function, when given.
    function: Option<String>,
    /// Whether it may see the workers.
    workers: bool,
}

impl Filter {
    /// Whether this consumer gets `event`.
    fn admits(&self, event: &Event) -> bool {
        let of_function = |name: &str| self.function.as_deref().is_none_or(|f| f == name);
        match event {
            Event::Task(t) => {
                of_function(&t.function)
                    && policy::may_read_task(&self.caller, t.caller, Some(t.owner))
            }
            Event::Worker(_) => self.workers && self.function.is_none(),
            Event::Function(f) => of_function(&f.name),
        }
    }
}

/// `GET /v1/events`.
pub async fn events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let summary = match query.tasks.as_deref() {
        None | Some("" | "each") => None,
        Some("summary") => {
            let mut ticker = tokio::time::interval(SUMMARY_WINDOW);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            Some(Summary {
                broker: state.broker.clone(),
                ticker,
                window: Window::default(),
                levels_sent: Vec::new(),
            })
        }
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "tasks must be each or summary, not {other:?}"
            )));
        }
    };
    let filter = Filter {
        workers: policy::may_list_workers(&caller),
        caller,
        function: query.function.filter(|f| !f.is_empty()),
    };
    let consumer = Consumer {
        receiver: state.broker.subscribe(),
        closed: state.broker.events_closed(),
        filter,
        summary,
    };
    let stream = futures_util::stream::unfold(Some(consumer), |consumer| async move {
        let mut consumer = consumer?;
        let next = consumer.next().await?;
        let more = !matches!(next, Next::Dropped(_));
        Some((Ok(next.into_sse()), more.then_some(consumer)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEPALIVE).text("keepalive")))
}

/// One open stream.
struct Consumer {
    receiver: Receiver<Event>,
    closed: CancellationToken,
    filter: Filter,
    /// Set for `?tasks=summary`.
    summary: Option<Summary>,
}

impl Consumer {
    /// What the stream sends next: the next event the filter admits (or the next summary),
    /// `Dropped` once the consumer lagged, or `None` when the server stops.
    async fn next(&mut self) -> Option<Next> {
        loop {
            let received = match &mut self.summary {
                None => tokio::select! {
                    received = self.receiver.recv() => received,
                    () = self.closed.cancelled() => return None,
                },
                Some(summary) => tokio::select! {
                    biased;
                    () = self.closed.cancelled() => return None,
                    _ = summary.ticker.tick() => match summary.take(&self.filter) {
                        Some(json) => return Some(Next::Tasks(json)),
                        None => continue,
                    },
                    received = self.receiver.recv() => received,
                },
            };
            match received {
                Ok(event) if !self.filter.admits(&event) => {}
                Ok(Event::Task(task)) if self.summary.is_some() => {
                    if let Some(summary) = &mut self.summary {
                        summary.window.add(task);
                    }
                }
                Ok(event) => return Some(Next::Event(event)),
                Err(RecvError::Lagged(missed)) => {
                    tracing::info!(missed, "an event consumer fell behind; closing its stream");
                    return Some(Next::Dropped(missed));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

/// A `?tasks=summary` stream's window and what it last sent.
struct Summary {
    broker: Broker,
    ticker: Interval,
    window: Window,
    /// The levels in the last summary, so that an idle server sends nothing.
    levels_sent: Vec<Level>,
}

impl Summary {
    /// The JSON of the window that just closed, or `None` when nothing changed in it.
    fn take(&mut self, filter: &Filter) -> Option<String> {
        let warm = self.broker.warm_executors();
        let levels: Vec<Level> = self
            .broker
            .function_levels()
            .into_iter()
            .filter(|l| {
                filter.function.as_deref().is_none_or(|f| f == l.name)
                    && policy::may_read_all_tasks(&filter.caller, l.owner)
            })
            .map(|l| Level {
                warm: warm.get(&l.name).copied().unwrap_or(0),
                name: l.name,
                queued: l.queued,
                running: l.running,
            })
            .collect();
        let window = std::mem::take(&mut self.window);
        if window.latest.is_empty() && levels == self.levels_sent {
            return None;
        }
        let json = window.json(&levels);
        self.levels_sent = levels;
        Some(json)
    }
}

/// A function's queue now, as a summary reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Level {
    name: String,
    queued: u64,
    running: u64,
    /// Its warm executors over every worker.
    warm: u32,
}

/// The task events of one summary window.
#[derive(Debug, Default)]
struct Window {
    /// By function.
    ends: BTreeMap<String, Ends>,
    /// The latest state of the newest tasks that changed (UUIDv7 ids sort by creation).
    latest: BTreeMap<uuid::Uuid, TaskEvent>,
}

/// The tasks of one function that ended in a window.
#[derive(Debug, Default)]
struct Ends {
    completed: u64,
    failed: u64,
    /// A uniform sample of their run times (reservoir sampling keyed by the task id's random
    /// bits).
    run_ms: Vec<u64>,
}

impl Window {
    fn add(&mut self, task: TaskEvent) {
        if task.status.is_finished() {
            let ends = match self.ends.get_mut(&task.function) {
                Some(ends) => ends,
                None => self.ends.entry(task.function.clone()).or_default(),
            };
            if task.status == TaskStatus::Failed {
                ends.failed += 1;
            } else {
                ends.completed += 1;
            }
            if let Some(run_ms) = task.run_ms {
                let seen = ends.completed + ends.failed;
                if ends.run_ms.len() < SUMMARY_SAMPLES {
                    ends.run_ms.push(run_ms);
                } else if let Some(slot) = ends
                    .run_ms
                    .get_mut((task.id.as_u128() as u64 % seen) as usize)
                {
                    *slot = run_ms;
                }
            }
        }
        let newest_kept = self.latest.first_key_value().map(|(id, _)| *id);
        if self.latest.len() < SUMMARY_LATEST
            || newest_kept.is_some_and(|oldest| task.id > oldest)
            || self.latest.contains_key(&task.id)
        {
            self.latest.insert(task.id, task);
            if self.latest.len() > SUMMARY_LATEST {
                self.latest.pop_first();
            }
        }
    }

    /// The `tasks` event's JSON: functions by name, with `levels` joined in, and the latest
    /// tasks newest first.
    fn json(self, levels: &[Level]) -> String {
        #[derive(Serialize)]
        struct FunctionSummary<'a> {
            name: &'a str,
            completed: u64,
            failed: u64,
            run_ms: &'a [u64],
            queued: Option<u64>,
            running: Option<u64>,
            warm_executors: Option<u32>,
        }
        #[derive(Serialize)]
        struct TasksSummary<'a> {
            window_ms: u64,
            functions: Vec<FunctionSummary<'a>>,
            latest: Vec<&'a TaskEvent>,
        }
        let mut names: Vec<&str> = self.ends.keys().map(String::as_str).collect();
        names.extend(levels.iter().map(|l| l.name.as_str()));
        names.sort_unstable();
        names.dedup();
        let functions = names
            .into_iter()
            .map(|name| {
                let ends = self.ends.get(name);
                let level = levels.iter().find(|l| l.name == name);
                FunctionSummary {
                    name,
                    completed: ends.map_or(0, |e| e.completed),
                    failed: ends.map_or(0, |e| e.failed),
                    run_ms: ends.map_or(&[], |e| e.run_ms.as_slice()),
                    queued: level.map(|l| l.queued),
                    running: level.map(|l| l.running),
                    warm_executors: level.map(|l| l.warm),
                }
            })
            .collect();
        let summary = TasksSummary {
            window_ms: SUMMARY_WINDOW.as_millis() as u64,
            functions,
            latest: self.latest.values().rev().collect(),
        };
        serde_json::to_string(&summary)
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string())
    }
}

/// What a stream sends next.
enum Next {
    /// An event for this consumer.
    Event(Event),
    /// A `tasks` summary's JSON.
    Tasks(String),
    /// It fell this many events behind: the last thing it gets.
    Dropped(u64),
}

impl Next {
    /// The SSE event, its data one line of JSON.
    fn into_sse(self) -> SseEvent {
        let (kind, data) = match self {
            Next::Event(event) => (event.kind(), event_json(&event)),
            Next::Tasks(json) => ("tasks", json),
            Next::Dropped(missed) => {
                let message = format!(
                    "this stream fell {missed} events behind and was closed; reconnect to go on"
                );
                (
                    "dropped",
                    serde_json::json!({ "message": message }).to_string(),
                )
            }
        };
        SseEvent::default().event(kind).data(data)
    }
}

/// The event's JSON (its fields are plain values: serialization cannot fail).
fn event_json(event: &Event) -> String {
    let json = match event {
        Event::Task(t) => serde_json::to_string(t),
        Event::Worker(w) => serde_json::to_string(w),
        Event::Function(f) => serde_json::to_string(f),
    };
    json.unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use crate::broker::events::{FunctionChange, FunctionEvent, TaskEvent};
    use crate::store::TaskRecord;

    fn task(function: &str, caller: u32, owner: u32) -> Event {
        let mut record = TaskRecord::queued(1, 1, function.into(), 1);
        record.caller = caller;
        Event::Task(TaskEvent::of(&record, owner))
    }

    fn filter(user: u32, role: Role, function: Option<&str>) -> Filter {
        let caller = Caller {
            user,
            name: format!("u{user}"),
            role,
        };
        Filter {
            workers: policy::may_list_workers(&caller),
            caller,
            function: function.map(str::to_owned),
        }
    }

    #[test]
    fn a_caller_sees_the_tasks_it_may_read_of_the_function_it_asked_for() {
        let invoker = filter(5, Role::Invoker, None);
        assert!(invoker.admits(&task("f", 5, 9)));
        assert!(!invoker.admits(&task("f", 6, 9)));
        let owner = filter(9, Role::Developer, None);
        assert!(owner.admits(&task("f", 6, 9)));
        let only_g = filter(1, Role::Admin, Some("g"));
        assert!(!only_g.admits(&task("f", 1, 1)));
        assert!(only_g.admits(&task("g", 1, 1)));
        let registered = |name: &str| {
            Event::Function(FunctionEvent {
                kind: FunctionChange::Registered,
                name: name.into(),
                version: 1,
            })
        };
        assert!(only_g.admits(&registered("g")));
        assert!(!only_g.admits(&registered("f")));
    }

    #[test]
    fn a_task_event_is_one_line_of_json() {
        let json = event_json(&task("f", 1, 1));
        assert!(!json.contains('\n'), "{json}");
        let value: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(value["status"], "QUEUED");
    }
}

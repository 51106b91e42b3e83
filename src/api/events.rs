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
//!
//! A summary stream opens with one `history` event: the ends of the last five minutes, second
//! by second, in the `tasks` event's form (counts and sampled run times per function, of the
//! tasks the caller may read), so that a page opened now shows what a page left open would.
//! They come from the server's [`Recorder`], which reads every event from the first summary
//! stream on (having read the last five minutes' ends from the store once, when it started) and
//! keeps per-second counts, not tasks: opening a stream costs a pass over at most 300 seconds.
//! An end published at the instant a stream opens may be missed or counted twice.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use serde::{Deserialize, Serialize, Serializer};
use tokio::sync::broadcast::{Receiver, error::RecvError};
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{ApiError, AppState};
use crate::auth::{Caller, policy};
use crate::broker::events::TaskEvent;
use crate::broker::{Broker, Event};
use crate::store::{TaskQuery, TaskRecord, TaskStatus, first_id_at};
use crate::units::now_ms;

/// How often an idle stream sends a `: keepalive` comment.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// How long a `tasks` summary covers.
const SUMMARY_WINDOW: Duration = Duration::from_secs(1);
/// How many of the newest changed tasks a summary carries.
const SUMMARY_LATEST: usize = 50;
/// How many run times per function a summary samples.
const SUMMARY_SAMPLES: usize = 100;

/// How far back a `history` event goes (the dashboard's chart), in seconds.
const HISTORY_SPAN_S: u64 = 300;
/// How many run times the history samples per second, function and caller.
const HISTORY_SAMPLES: usize = 50;
/// How many function and caller pairs one second of history keeps apart; the ends of callers
/// past them are kept without their caller (see [`Source`]).
const HISTORY_KEYS: usize = 64;
/// How many run times a `history` event carries in all, newest first, and how many it carries
/// of each function even past that (what the dashboard keeps).
const HISTORY_RUN_TIMES: (usize, usize) = (1000, 200);
/// The most finished tasks of each status a starting recorder reads from the store.
const BACKFILL_MAX: usize = 20_000;
/// How long before the history's span a task may have been created and still be read by the
/// backfill (the store's listing ranges over creation; the history counts ends).
const BACKFILL_SLACK_MS: u64 = 10 * 60 * 1000;

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
    /// Who holds grants, for the events of functions it may invoke without owning them
    /// (`None`: nobody holds any).
    users: Option<crate::auth::Directory>,
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
            Event::Function(f) => of_function(&f.name) && self.sees_function(f.owner, &f.name),
        }
    }

    /// Whether this consumer may see the function `name` of `owner` at all: as it may list it
    /// (`GET /v1/functions`), which is as it may invoke it.
    fn sees_function(&self, owner: u32, name: &str) -> bool {
        let granted = || {
            self.users
                .as_ref()
                .is_some_and(|users| users.is_granted(self.caller.user, name))
        };
        self.caller.is_admin() || policy::may_invoke(&self.caller, owner, granted())
    }

    /// Whether this consumer sees the ends of `function` counted under `source` in the history.
    fn sees_ends(&self, function: &str, source: Source) -> bool {
        let readable = match source.caller {
            Some(caller) => policy::may_read_task(&self.caller, caller, source.owner),
            None => {
                self.caller.is_admin()
                    || source
                        .owner
                        .is_some_and(|owner| policy::may_read_all_tasks(&self.caller, owner))
            }
        };
        readable && self.function.as_deref().is_none_or(|f| f == function)
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
        None | Some("" | "each") => false,
        Some("summary") => true,
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
        users: Some(state.users.clone()),
    };
    // The history is read just after this stream subscribes: an end is in the history or in
    // the stream's summaries, but for the few in flight at that instant (see the module doc).
    let recorder = if summary {
        Some(Recorder::of(&state.broker, &state.recorder).await)
    } else {
        None
    };
    let receiver = state.broker.subscribe();
    let summary = recorder.map(|recorder| {
        let mut ticker = tokio::time::interval(SUMMARY_WINDOW);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Summary {
            broker: state.broker.clone(),
            ticker,
            history: Some(recorder.json(&filter, now_ms())),
            window: Window::default(),
            levels_sent: Vec::new(),
        }
    });
    let consumer = Consumer {
        receiver,
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
        if let Some(json) = self.summary.as_mut().and_then(|s| s.history.take()) {
            return Some(Next::History(json));
        }
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
    /// The `history` event, until it is sent (first).
    history: Option<String>,
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
    /// A uniform sample of their run times in microseconds (reservoir sampling keyed by the
    /// task id's random bits).
    run_us: Vec<u64>,
}

impl Ends {
    /// Counts one end, sampling its run time into at most `samples` of them.
    fn add(&mut self, failed: bool, run_us: Option<u64>, id: u128, samples: usize) {
        if failed {
            self.failed += 1;
        } else {
            self.completed += 1;
        }
        if let Some(run_us) = run_us {
            let seen = self.completed + self.failed;
            if self.run_us.len() < samples {
                self.run_us.push(run_us);
            } else if let Some(slot) = self.run_us.get_mut((id as u64 % seen) as usize) {
                *slot = run_us;
            }
        }
    }
}

impl Window {
    fn add(&mut self, task: TaskEvent) {
        if task.status.is_finished() {
            let ends = match self.ends.get_mut(&task.function) {
                Some(ends) => ends,
                None => self.ends.entry(task.function.clone()).or_default(),
            };
            let failed = task.status == TaskStatus::Failed;
            ends.add(failed, task.run_us, task.id.as_u128(), SUMMARY_SAMPLES);
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
            #[serde(rename = "run_ms", serialize_with = "as_ms")]
            run_us: &'a [u64],
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
                    run_us: ends.map_or(&[], |e| e.run_us.as_slice()),
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

/// Where a server keeps its [`Recorder`] once the first summary stream has started it (in
/// [`super::AppState`]).
#[derive(Default)]
pub struct RecorderSlot(Mutex<Option<Arc<Recorder>>>);

/// Locks `mutex`, whose data (counts) stays sound whatever panicked while it was held.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The ends of the last five minutes on one server, for the `history` event. Started by the
/// first summary stream (so a server nobody watches pays nothing for it), it reads the store's
/// ends of the last five minutes once, then every task event until the server stops.
pub struct Recorder {
    history: Mutex<History>,
    /// True once the store's ends are in the history.
    ready: watch::Receiver<bool>,
}

impl Recorder {
    /// The recorder of `broker`'s server (kept in `slot`), started now if it has none, once it
    /// is ready (or the server stops).
    async fn of(broker: &Broker, slot: &Arc<RecorderSlot>) -> Arc<Recorder> {
        let recorder = {
            let mut kept = lock(&slot.0);
            match kept.as_ref() {
                Some(recorder) => recorder.clone(),
                None => {
                    let (ready_sender, ready) = watch::channel(false);
                    let recorder = Arc::new(Recorder {
                        history: Mutex::default(),
                        ready,
                    });
                    *kept = Some(recorder.clone());
                    // Subscribed before the store is read, so that no end falls between.
                    let receiver = broker.subscribe();
                    let run =
                        recorder
                            .clone()
                            .run(broker.clone(), receiver, slot.clone(), ready_sender);
                    // Not in the server's `TaskTracker`, which a route cannot reach: it holds
                    // only memory, and ends when the event streams do, at the server's stop.
                    tokio::spawn(run);
                    recorder
                }
            }
        };
        let mut ready = recorder.ready.clone();
        let closed = broker.events_closed();
        tokio::select! {
            _ = ready.wait_for(|ready| *ready) => {}
            () = closed.cancelled() => {}
        }
        recorder
    }

    /// Reads the store's ends, then records every end the broker publishes until the server
    /// stops; then leaves its slot.
    async fn run(
        self: Arc<Self>,
        broker: Broker,
        mut receiver: Receiver<Event>,
        slot: Arc<RecorderSlot>,
        ready: watch::Sender<bool>,
    ) {
        let closed = broker.events_closed();
        // An end committed while the store is read is both read and published: the ids read
        // tell them apart, for as long as the ends read can be in the history.
        let mut read = match self.backfill(&broker).await {
            Ok(read) => read,
            Err(err) => {
                tracing::warn!(error = %err, "the history of ends could not read the store");
                HashSet::new()
            }
        };
        let forget_read_at = Instant::now() + Duration::from_secs(HISTORY_SPAN_S);
        ready.send_replace(true);
        loop {
            let received = tokio::select! {
                () = closed.cancelled() => break,
                received = receiver.recv() => received,
            };
            if !read.is_empty() && Instant::now() >= forget_read_at {
                read = HashSet::new();
            }
            match received {
                Ok(Event::Task(task)) if task.status.is_finished() => {
                    if !read.contains(&task.id.as_u128()) {
                        lock(&self.history).add(&End::of_event(&task), now_ms());
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => {
                    tracing::info!(missed, "the history of ends fell behind and misses some");
                }
                Err(RecvError::Closed) => break,
            }
        }
        let mut kept = lock(&slot.0);
        if kept.as_ref().is_some_and(|r| Arc::ptr_eq(r, &self)) {
            *kept = None;
        }
    }

    /// Adds the store's tasks that ended in the last five minutes, at most [`BACKFILL_MAX`] of
    /// each status (the newest); returns the ids it added.
    async fn backfill(&self, broker: &Broker) -> Result<HashSet<u128>, crate::store::Error> {
        let from_ms = now_ms().saturating_sub(HISTORY_SPAN_S * 1000);
        let owners: HashMap<String, u32> = broker
            .functions()
            .iter()
            .map(|f| (f.name.clone(), f.owner))
            .collect();
        let mut added = HashSet::new();
        for status in [TaskStatus::Completed, TaskStatus::Failed] {
            let mut before_id = None;
            let mut left = BACKFILL_MAX;
            while left > 0 {
                let query = TaskQuery {
                    function: None,
                    status: Some(status),
                    since_id: first_id_at(from_ms.saturating_sub(BACKFILL_SLACK_MS)),
                    before_id,
                    limit: left.min(super::task_list::MAX_LIMIT),
                };
                let page = broker.store().list_tasks(query, |_| true).await?;
                left = left.saturating_sub(page.tasks.len().max(1));
                let now = now_ms();
                let mut history = lock(&self.history);
                for record in &page.tasks {
                    let end = End::of_record(record, owners.get(&record.function).copied());
                    if end.finished_ms >= from_ms {
                        history.add(&end, now);
                        added.insert(record.id);
                    }
                }
                match page.next {
                    Some(next) => before_id = Some(next),
                    None => break,
                }
            }
        }
        tracing::debug!(ends = added.len(), "the history of ends read the store");
        Ok(added)
    }

    /// The `history` event's JSON for the consumer `filter` describes.
    fn json(&self, filter: &Filter, now_ms: u64) -> String {
        lock(&self.history).json(filter, now_ms)
    }
}

/// Whose ends a slot of the history counts, for who may see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Source {
    /// The user who made the calls; `None` for the callers past [`HISTORY_KEYS`] in a second,
    /// whose ends only those who may read all of the function's tasks see.
    caller: Option<u32>,
    /// The function's owner (`None`: it was gone).
    owner: Option<u32>,
}

/// One finished task, as the history counts it.
#[derive(Debug)]
struct End<'a> {
    id: u128,
    function: &'a str,
    source: Source,
    finished_ms: u64,
    failed: bool,
    run_us: Option<u64>,
}

impl End<'_> {
    /// The end a finished task's event tells of.
    fn of_event(task: &TaskEvent) -> End<'_> {
        End {
            id: task.id.as_u128(),
            function: &task.function,
            source: Source {
                caller: Some(task.caller),
                owner: Some(task.owner),
            },
            finished_ms: task.finished_ms.unwrap_or_else(now_ms),
            failed: task.status == TaskStatus::Failed,
            run_us: task.run_us,
        }
    }

    /// The end of a finished task's stored record, of a function owned by `owner`.
    fn of_record(record: &TaskRecord, owner: Option<u32>) -> End<'_> {
        End {
            id: record.id,
            function: &record.function,
            source: Source {
                caller: Some(record.caller),
                owner,
            },
            finished_ms: record.finished_ms.unwrap_or(record.created_ms),
            failed: record.status == TaskStatus::Failed,
            run_us: Some(record.run_us),
        }
    }
}

/// Ends by second over the last [`HISTORY_SPAN_S`] seconds, oldest first.
#[derive(Debug, Default)]
struct History {
    seconds: VecDeque<Second>,
}

/// The ends of one second: by function, then by source.
#[derive(Debug)]
struct Second {
    /// Unix seconds.
    at_s: u64,
    ends: BTreeMap<String, Vec<(Source, Ends)>>,
    /// How many (function, source) slots `ends` holds.
    slots: usize,
}

impl History {
    /// Counts `end` in the second it finished in (at most `now_ms`), unless that is out of
    /// the span; forgets the seconds that left the span.
    fn add(&mut self, end: &End<'_>, now_ms: u64) {
        let now_s = now_ms / 1000;
        while self
            .seconds
            .front()
            .is_some_and(|s| s.at_s + HISTORY_SPAN_S <= now_s)
        {
            self.seconds.pop_front();
        }
        let at_s = (end.finished_ms / 1000).min(now_s);
        if at_s + HISTORY_SPAN_S <= now_s {
            return;
        }
        let at = self.seconds.partition_point(|s| s.at_s < at_s);
        if self.seconds.get(at).is_none_or(|s| s.at_s != at_s) {
            let second = Second {
                at_s,
                ends: BTreeMap::new(),
                slots: 0,
            };
            self.seconds.insert(at, second);
        }
        if let Some(second) = self.seconds.get_mut(at) {
            second.add(end);
        }
    }

    /// The `history` event's JSON: the seconds of the span before `now_ms` with the ends
    /// `filter` lets its consumer see, oldest first, each with its functions by name; the run
    /// times of the newest seconds only, up to [`HISTORY_RUN_TIMES`].
    fn json(&self, filter: &Filter, now_ms: u64) -> String {
        #[derive(Serialize)]
        struct FunctionEnds<'a> {
            name: &'a str,
            completed: u64,
            failed: u64,
            #[serde(rename = "run_ms", serialize_with = "as_ms")]
            run_us: Vec<u64>,
        }
        #[derive(Serialize)]
        struct SecondView<'a> {
            at_ms: u64,
            functions: Vec<FunctionEnds<'a>>,
        }
        #[derive(Serialize)]
        struct HistoryView<'a> {
            now_ms: u64,
            span_ms: u64,
            window_ms: u64,
            seconds: Vec<SecondView<'a>>,
        }
        let now_s = now_ms / 1000;
        let mut seconds: Vec<SecondView> = self
            .seconds
            .iter()
            .filter(|s| s.at_s + HISTORY_SPAN_S > now_s)
            .map(|second| SecondView {
                at_ms: second.at_s * 1000,
                functions: second
                    .ends
                    .iter()
                    .filter_map(|(name, sources)| {
                        let mut seen = sources
                            .iter()
                            .filter(|(source, _)| filter.sees_ends(name, *source))
                            .peekable();
                        seen.peek()?;
                        let mut ends = FunctionEnds {
                            name,
                            completed: 0,
                            failed: 0,
                            run_us: Vec::new(),
                        };
                        for (_, e) in seen {
                            ends.completed += e.completed;
                            ends.failed += e.failed;
                            ends.run_us.extend_from_slice(&e.run_us);
                        }
                        Some(ends)
                    })
                    .collect(),
            })
            .filter(|s| !s.functions.is_empty())
            .collect();
        let (most, per_function) = HISTORY_RUN_TIMES;
        let mut sent = 0;
        let mut sent_of: HashMap<&str, usize> = HashMap::new();
        for ends in seconds.iter_mut().rev().flat_map(|s| &mut s.functions) {
            let of_function = sent_of.entry(ends.name).or_default();
            if sent >= most && *of_function >= per_function {
                ends.run_us.clear();
            }
            sent += ends.run_us.len();
            *of_function += ends.run_us.len();
        }
        let view = HistoryView {
            now_ms,
            span_ms: HISTORY_SPAN_S * 1000,
            window_ms: SUMMARY_WINDOW.as_millis() as u64,
            seconds,
        };
        serde_json::to_string(&view)
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string())
    }
}

impl Second {
    /// Counts `end` under its function and source (without its caller past [`HISTORY_KEYS`]).
    fn add(&mut self, end: &End<'_>) {
        let sources = match self.ends.get_mut(end.function) {
            Some(sources) => sources,
            None => self.ends.entry(end.function.to_owned()).or_default(),
        };
        let mut source = end.source;
        if self.slots >= HISTORY_KEYS && !sources.iter().any(|(s, _)| *s == source) {
            source.caller = None;
        }
        let slot = match sources.iter().position(|(s, _)| *s == source) {
            Some(slot) => slot,
            None => {
                sources.push((source, Ends::default()));
                self.slots += 1;
                sources.len() - 1
            }
        };
        if let Some((_, ends)) = sources.get_mut(slot) {
            ends.add(end.failed, end.run_us, end.id, HISTORY_SAMPLES);
        }
    }
}

/// Run times kept in microseconds, sent as milliseconds with their fraction (`0.052`), so that
/// a sub-millisecond run is not counted as 0.
fn as_ms<S: Serializer>(run_us: &[u64], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(run_us.iter().map(|us| *us as f64 / 1000.0))
}

/// What a stream sends next.
enum Next {
    /// An event for this consumer.
    Event(Event),
    /// A `tasks` summary's JSON.
    Tasks(String),
    /// The `history` event's JSON.
    History(String),
    /// It fell this many events behind: the last thing it gets.
    Dropped(u64),
}

impl Next {
    /// The SSE event, its data one line of JSON.
    fn into_sse(self) -> SseEvent {
        let (kind, data) = match self {
            Next::Event(event) => (event.kind(), event_json(&event)),
            Next::Tasks(json) => ("tasks", json),
            Next::History(json) => ("history", json),
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
            users: None,
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
                owner: 9,
            })
        };
        assert!(only_g.admits(&registered("g")));
        assert!(!only_g.admits(&registered("f")));
        // A function's events go to those who may list it: its owner and admins here (no
        // grants in this filter), not an invoker or another developer.
        assert!(owner.admits(&registered("f")));
        assert!(!invoker.admits(&registered("f")));
        assert!(!filter(8, Role::Developer, None).admits(&registered("f")));
    }

    fn end(function: &str, caller: u32, finished_ms: u64, failed: bool, run_ms: u64) -> End<'_> {
        End {
            id: u128::from(finished_ms) << 64 | u128::from(caller),
            function,
            source: Source {
                caller: Some(caller),
                owner: Some(9),
            },
            finished_ms,
            failed,
            run_us: Some(run_ms * 1000),
        }
    }

    /// (at_ms, function, completed, failed, run times) of each second of a `history` event.
    fn seconds(json: &str) -> Vec<(u64, String, u64, u64, usize)> {
        let value: serde_json::Value = serde_json::from_str(json).expect("json");
        let mut out = Vec::new();
        for second in value["seconds"].as_array().expect("seconds") {
            for f in second["functions"].as_array().expect("functions") {
                out.push((
                    second["at_ms"].as_u64().expect("at_ms"),
                    f["name"].as_str().expect("name").to_owned(),
                    f["completed"].as_u64().expect("completed"),
                    f["failed"].as_u64().expect("failed"),
                    f["run_ms"].as_array().expect("run_ms").len(),
                ));
            }
        }
        out
    }

    #[test]
    fn the_history_counts_ends_by_second_and_forgets_them_after_five_minutes() {
        let start = 1_700_000_000_000;
        let mut history = History::default();
        let admin = filter(1, Role::Admin, None);
        history.add(&end("f", 5, start + 10, false, 3), start + 20);
        history.add(&end("f", 5, start + 900, true, 4), start + 950);
        history.add(&end("g", 5, start + 2500, false, 5), start + 2600);
        // Late, out of order: still in its own second.
        history.add(&end("f", 6, start + 999, false, 6), start + 2700);
        assert_eq!(
            seconds(&history.json(&admin, start + 3000)),
            vec![
                (start, "f".into(), 2, 1, 3),
                (start + 2000, "g".into(), 1, 0, 1)
            ]
        );
        let later = start + HISTORY_SPAN_S * 1000;
        assert_eq!(
            seconds(&history.json(&admin, later)),
            vec![(start + 2000, "g".into(), 1, 0, 1)],
            "the first second left the span"
        );
        history.add(&end("f", 5, start + 1500, false, 1), later + 2000);
        assert!(
            seconds(&history.json(&admin, later + 2000)).is_empty(),
            "an end older than the span is not counted"
        );
        assert!(history.seconds.is_empty(), "the old seconds are forgotten");
    }

    #[test]
    fn the_history_shows_each_caller_only_the_ends_it_may_read() {
        let start = 1_700_000_000_000;
        let mut history = History::default();
        history.add(&end("f", 5, start, false, 1), start);
        history.add(&end("f", 6, start, true, 1), start);
        let counts = |history: &History, filter: &Filter| {
            seconds(&history.json(filter, start + 1000))
                .into_iter()
                .map(|(_, name, completed, failed, _)| (name, completed, failed))
                .collect::<Vec<(String, u64, u64)>>()
        };
        assert_eq!(
            counts(&history, &filter(5, Role::Invoker, None)),
            vec![("f".into(), 1, 0)]
        );
        assert_eq!(
            counts(&history, &filter(6, Role::Invoker, None)),
            vec![("f".into(), 0, 1)]
        );
        assert_eq!(counts(&history, &filter(7, Role::Invoker, None)), vec![]);
        assert_eq!(
            counts(&history, &filter(9, Role::Developer, None)),
            vec![("f".into(), 1, 1)]
        );
        assert_eq!(counts(&history, &filter(8, Role::Developer, None)), vec![]);
        assert_eq!(counts(&history, &filter(1, Role::Admin, Some("g"))), vec![]);

        // Past HISTORY_KEYS callers in a second, the ends are kept without their caller:
        // the owner still counts them all, their caller no longer sees them.
        let many = HISTORY_KEYS as u32 + 10;
        for caller in 100..100 + many {
            history.add(&end("h", caller, start, false, 1), start);
        }
        let owner = counts(&history, &filter(9, Role::Developer, Some("h")));
        assert_eq!(owner, vec![("h".into(), u64::from(many), 0)]);
        let last = counts(&history, &filter(100 + many - 1, Role::Invoker, Some("h")));
        assert_eq!(last, vec![]);
        let first = counts(&history, &filter(100, Role::Invoker, Some("h")));
        assert_eq!(first, vec![("h".into(), 1, 0)]);
    }

    #[test]
    fn run_times_are_sent_in_milliseconds_to_the_microsecond() {
        let start = 1_700_000_000_000;
        let mut history = History::default();
        let mut quick = end("f", 5, start, false, 0);
        quick.run_us = Some(52);
        history.add(&quick, start);
        history.add(&end("f", 5, start, false, 3), start);
        let json = history.json(&filter(1, Role::Admin, None), start + 1000);
        let value: serde_json::Value = serde_json::from_str(&json).expect("json");
        let run_ms = &value["seconds"][0]["functions"][0]["run_ms"];
        assert_eq!(run_ms, &serde_json::json!([0.052, 3.0]));
    }

    #[test]
    fn the_history_sends_the_newest_run_times_within_its_bounds() {
        let start = 1_700_000_000_000;
        let mut history = History::default();
        for second in 0..100 {
            for i in 0..30 {
                let at = start + second * 1000 + i;
                history.add(&end("busy", 5, at, false, i), at);
            }
            let at = start + second * 1000;
            history.add(&end("rare", 5, at, false, 7), at);
        }
        let json = history.json(&filter(1, Role::Admin, None), start + 100_000);
        let seconds = seconds(&json);
        let sent =
            |name: &str| -> usize { seconds.iter().filter(|s| s.1 == name).map(|s| s.4).sum() };
        let (most, per_function) = HISTORY_RUN_TIMES;
        assert!(sent("busy") <= most && sent("busy") >= most - HISTORY_SAMPLES);
        assert_eq!(
            sent("rare"),
            per_function.min(100),
            "a function past the total keeps its own"
        );
        let newest = seconds.iter().rev().find(|s| s.1 == "busy").expect("busy");
        assert_eq!(newest.4, 30, "the newest second keeps its run times");
        let oldest = seconds.iter().find(|s| s.1 == "busy").expect("busy");
        assert_eq!(
            (oldest.2, oldest.4),
            (30, 0),
            "the oldest keeps its counts only"
        );
    }

    #[test]
    fn a_task_event_is_one_line_of_json() {
        let json = event_json(&task("f", 1, 1));
        assert!(!json.contains('\n'), "{json}");
        let value: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(value["status"], "QUEUED");
    }
}

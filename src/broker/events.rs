//! The broker's live events: task state changes, workers joining, leaving and reporting their
//! health, and function registrations, removals and rollbacks, for `GET /v1/events`.
//!
//! Events go into one bounded `tokio::sync::broadcast` channel. Publishing never waits for a
//! consumer: `broadcast::send` overwrites the oldest event once the channel is full, and a
//! consumer that fell that far behind learns it (`RecvError::Lagged`) at its next read, when
//! the route closes its stream. An event is built only while someone listens, and holds plain
//! values that the route, not the broker, turns into JSON: the broker's lock is never held for
//! serialization, and with no consumer the broker pays one atomic load per change.

use serde::{Serialize, Serializer};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::proto::{DispatchMode, FailureReason, Health};
use crate::store::{FunctionRecord, TaskRecord, TaskStatus};

/// How many events the channel holds before a consumer that reads none of them is dropped
/// (`serve --event-buffer`).
pub const DEFAULT_EVENT_BUFFER: usize = 8192;

/// How long [`Events::publish_paced`] pauses at a time for its consumers.
const PACE: std::time::Duration = std::time::Duration::from_millis(1);

/// One live event.
#[derive(Debug, Clone)]
pub enum Event {
    /// A task changed state.
    Task(TaskEvent),
    /// A worker joined, left, or reported its health.
    Worker(WorkerEvent),
    /// A function was registered, removed or rolled back.
    Function(FunctionEvent),
}

impl Event {
    /// The event's type, the SSE `event:` field.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Task(_) => "task",
            Event::Worker(_) => "worker",
            Event::Function(_) => "function",
        }
    }
}

/// A task's new state.
#[derive(Debug, Clone, Serialize)]
pub struct TaskEvent {
    /// The task's id.
    pub id: uuid::Uuid,
    /// Its function.
    pub function: String,
    /// The function version it runs.
    pub version: u32,
    /// Its new status (`QUEUED`, `RUNNING`, `COMPLETED`, `FAILED`).
    #[serde(serialize_with = "status_name")]
    pub status: TaskStatus,
    /// Why it failed, when it did.
    pub reason: Option<FailureReason>,
    /// The failure's detail.
    pub message: Option<String>,
    /// When it was acknowledged (Unix ms).
    pub queued_ms: u64,
    /// When its latest attempt started (Unix ms).
    pub started_ms: Option<u64>,
    /// When it finished (Unix ms).
    pub finished_ms: Option<u64>,
    /// How long its run took, once finished (ms, rounded down).
    pub run_ms: Option<u64>,
    /// The same, in microseconds (what a sub-millisecond run needs).
    pub run_us: Option<u64>,
    /// The worker its latest attempt runs or ran on, from RUNNING on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The user who made the call (for who may see the event; not sent).
    #[serde(skip)]
    pub caller: u32,
    /// The owner of the function (for who may see the event; not sent).
    #[serde(skip)]
    pub owner: u32,
}

impl TaskEvent {
    /// The event of `record`'s current state, for a function owned by `owner`.
    pub fn of(record: &TaskRecord, owner: u32) -> TaskEvent {
        let finished = record.status.is_finished();
        TaskEvent {
            id: uuid::Uuid::from_u128(record.id),
            function: record.function.clone(),
            version: record.version,
            status: record.status,
            reason: record.failure,
            message: record.message.clone(),
            queued_ms: record.created_ms,
            started_ms: record.started_ms,
            finished_ms: record.finished_ms,
            run_ms: finished.then_some(record.run_us / 1000),
            run_us: finished.then_some(record.run_us),
            worker: record.worker.clone(),
            caller: record.caller,
            owner,
        }
    }
}

fn status_name<S: Serializer>(status: &TaskStatus, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(status.as_str())
}

/// What happened to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerChange {
    /// It completed its handshake.
    Joined,
    /// Its connection ended.
    Left,
    /// It reported its machine's health (once a heartbeat).
    Health,
}

/// A worker's change, with its state after it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerEvent {
    /// What happened.
    pub kind: WorkerChange,
    /// The worker's id.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Where it connected from.
    pub address: String,
    /// How it receives tasks.
    pub mode: DispatchMode,
    /// Its slots.
    pub slots: u32,
    /// Tasks it runs now.
    pub running: usize,
    /// Its machine's CPU busy, in percent (null before its first health report).
    pub cpu_percent: Option<f64>,
    /// Its machine's memory in use, in bytes.
    pub memory_used_bytes: Option<u64>,
    /// Its machine's memory, in bytes.
    pub memory_total_bytes: Option<u64>,
    /// Its machine's 1-minute load average.
    pub load1: Option<f64>,
    /// When it last heartbeat (Unix ms; its join time before the first).
    pub last_heartbeat_ms: u64,
}

/// The health fields of a worker's views, `None` before its first report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct HealthView {
    /// CPU busy of its machine over the last heartbeat period, in percent.
    pub cpu_percent: Option<f64>,
    /// Memory in use (`MemTotal` − `MemAvailable`), in bytes.
    pub memory_used_bytes: Option<u64>,
    /// `MemTotal`, in bytes.
    pub memory_total_bytes: Option<u64>,
    /// The load averages over 1, 5 and 15 minutes.
    pub load1: Option<f64>,
    /// See `load1`.
    pub load5: Option<f64>,
    /// See `load1`.
    pub load15: Option<f64>,
}

impl From<Option<Health>> for HealthView {
    fn from(health: Option<Health>) -> HealthView {
        let Some(h) = health else {
            return HealthView::default();
        };
        HealthView {
            cpu_percent: Some(h.cpu_percent),
            memory_used_bytes: Some(h.memory_used_bytes),
            memory_total_bytes: Some(h.memory_total_bytes),
            load1: Some(h.load1),
            load5: Some(h.load5),
            load15: Some(h.load15),
        }
    }
}

/// What happened to a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FunctionChange {
    /// A new version was registered.
    Registered,
    /// Its live version was removed.
    Removed,
    /// A kept version became the live one again.
    Rollback,
}

/// A function's change.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionEvent {
    /// What happened.
    pub kind: FunctionChange,
    /// The function's name.
    pub name: String,
    /// The version registered, removed or made live.
    pub version: u32,
    /// The function's owner (for who may see the event; not sent).
    #[serde(skip)]
    pub owner: u32,
}

impl FunctionEvent {
    /// The event of `change` to `func`.
    pub fn of(change: FunctionChange, func: &FunctionRecord) -> FunctionEvent {
        FunctionEvent {
            kind: change,
            name: func.name.clone(),
            version: func.version,
            owner: func.owner,
        }
    }
}

/// The sending side of the event channel; cheap to clone.
#[derive(Debug, Clone)]
pub struct Events {
    sender: broadcast::Sender<Event>,
    /// How many events the channel holds.
    capacity: usize,
    /// Fires when the server stops, so that open streams end instead of holding it up.
    closed: CancellationToken,
}

impl Events {
    /// A channel holding up to `capacity` events (at least 1).
    pub fn new(capacity: usize) -> Events {
        let capacity = capacity.max(1);
        let (sender, _) = broadcast::channel(capacity);
        Events {
            sender,
            capacity,
            closed: CancellationToken::new(),
        }
    }

    /// Publishes many events (the ends of a bulk cancel), pausing while the slowest consumer is
    /// more than half the channel behind, for at most `patience` in all (what is left of it is
    /// given back for the operation's next call): a burst of 100,000 then reaches consumers
    /// that keep up at their own pace, where publishing it at once would drop every one of
    /// them. Once `patience` is spent it publishes without pausing, so a consumer that stopped
    /// reading holds an operation up for a bounded time, and is then dropped as usual.
    pub async fn publish_paced(
        &self,
        events: impl IntoIterator<Item = Event>,
        patience: &mut std::time::Duration,
    ) {
        let behind = (self.capacity / 2).max(1);
        for event in events {
            if self.sender.receiver_count() == 0 {
                return;
            }
            while self.sender.len() >= behind && !patience.is_zero() {
                let paused = tokio::time::Instant::now();
                tokio::time::sleep(PACE).await;
                *patience = patience.saturating_sub(paused.elapsed());
            }
            let _ = self.sender.send(event);
        }
    }

    /// Ends every consumer's stream (the server is stopping).
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Fires once [`Events::close`] was called.
    pub fn closed(&self) -> CancellationToken {
        self.closed.clone()
    }

    /// A new consumer, seeing the events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }

    /// Publishes the event `make` builds, if anyone listens; never waits.
    pub fn publish(&self, make: impl FnOnce() -> Event) {
        if self.sender.receiver_count() > 0 {
            let _ = self.sender.send(make());
        }
    }
}

impl Default for Events {
    fn default() -> Events {
        Events::new(DEFAULT_EVENT_BUFFER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_event_has_the_contract_fields_and_hides_who_may_see_it() {
        let mut record = TaskRecord::queued(7, 1, "f".into(), 2);
        record.status = TaskStatus::Failed;
        record.failure = Some(FailureReason::Timeout);
        record.created_ms = 10;
        record.started_ms = Some(11);
        record.finished_ms = Some(20);
        record.run_us = 5_042;
        record.caller = 3;
        let json = serde_json::to_value(TaskEvent::of(&record, 4)).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "id": uuid::Uuid::from_u128(7).to_string(),
                "function": "f",
                "version": 2,
                "status": "FAILED",
                "reason": "timeout",
                "message": null,
                "queued_ms": 10,
                "started_ms": 11,
                "finished_ms": 20,
                "run_ms": 5,
                "run_us": 5_042,
            })
        );
    }

    #[tokio::test]
    async fn a_consumer_that_falls_behind_learns_it_and_publishing_never_waits() {
        let events = Events::new(4);
        let mut slow = events.subscribe();
        for version in 0..100 {
            events.publish(|| {
                Event::Function(FunctionEvent {
                    kind: FunctionChange::Registered,
                    name: "f".into(),
                    version,
                    owner: 1,
                })
            });
        }
        assert!(matches!(
            slow.recv().await,
            Err(broadcast::error::RecvError::Lagged(96))
        ));
    }

    #[tokio::test]
    async fn a_paced_burst_reaches_a_consumer_that_keeps_up_at_its_own_pace() {
        let events = Events::new(4);
        let mut consumer = events.subscribe();
        let reader = tokio::spawn(async move {
            let mut versions = Vec::new();
            while let Ok(Event::Function(f)) = consumer.recv().await {
                versions.push(f.version);
                if versions.len() == 100 {
                    break;
                }
                tokio::task::yield_now().await;
            }
            versions
        });
        let burst = (0..100).map(|version| {
            Event::Function(FunctionEvent {
                kind: FunctionChange::Registered,
                name: "f".into(),
                version,
                owner: 1,
            })
        });
        let mut patience = std::time::Duration::from_secs(30);
        events.publish_paced(burst, &mut patience).await;
        let seen = reader.await.expect("reader");
        assert_eq!(seen, (0..100).collect::<Vec<u32>>(), "none missed");
    }

    #[test]
    fn nothing_is_built_while_nobody_listens() {
        let events = Events::new(4);
        events.publish(|| panic!("built an event nobody listens to"));
    }
}

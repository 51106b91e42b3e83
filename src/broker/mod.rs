//! The broker: per-function queues, concurrency caps, placement on workers, leases, retries and
//! the waiters of synchronous calls.
//!
//! All scheduling state lives in memory under one short-held mutex; every change that matters
//! after a crash goes to the store first (a task is acknowledged only once its QUEUED record is
//! committed). Store writes that follow a state change are queued to the store's single writer
//! while the lock is held, so they reach disk in the order the changes happened.
//!
//! Memory follows the number of tasks, not their payloads: once a task's QUEUED record (its
//! payload with it) is committed, only a small payload stays in memory; a larger one is read
//! back from the store when the task is dispatched (see `outbox`). A sync call keeps its
//! payload until it ends: its caller's connection holds the request body anyway.

mod cancel;
mod checks;
pub mod events;
mod http;
mod outbox;
mod session;
mod state;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::metrics::{FunctionLevel, Live, TaskEnd, WorkerLevel};
use crate::proto::{CodeHash, DispatchMode, FailureReason, Frame, Report, Runtime};
use crate::store::{self, FunctionRecord, Store, TaskRecord, TaskStatus, Write};
use crate::units::now_ms;
pub use cancel::{Cancel, CancelFilter, Stopped};
pub use checks::WorkerCheck;
pub use events::{DEFAULT_EVENT_BUFFER, Event};
use events::{Events, FunctionChange, FunctionEvent, HealthView, TaskEvent, WorkerChange};
pub use http::{
    BodySender, HttpCall, NoWorker, RecordedRequest, RequestHead, ResponseHead, StreamFailed,
};
pub use session::{Admission, WRONG_JOIN_TOKEN, serve_worker};
use state::{Active, INLINE_PAYLOAD, State, WorkerEntry};

/// Errors of the broker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No live function has this name.
    #[error("no function named {name:?}")]
    UnknownFunction {
        /// The name asked for.
        name: String,
    },
    /// The function's queue has no room for the calls.
    #[error("{}", queue_full(name, *limit, *waiting, *asked))]
    QueueFull {
        /// The function.
        name: String,
        /// Its queue limit.
        limit: u32,
        /// The tasks waiting in its queue.
        waiting: usize,
        /// How many calls asked for room (a batch's size).
        asked: usize,
    },
    /// The function has no waiting line (`queue_limit` 0) and every concurrency slot is busy.
    #[error(
        "every one of the {concurrency} concurrency slots of {name:?} is busy, and it has no \
         waiting line (queue_limit 0)"
    )]
    NoFreeSlot {
        /// The function.
        name: String,
        /// Its concurrency cap.
        concurrency: u32,
    },
    /// A sync call found no worker connected to run it (none has joined, or every one is
    /// draining): it would wait for one with no answer meanwhile.
    #[error(
        "no worker is connected to run {name:?} now, so a sync call would wait with no answer \
         until one joins: start a worker (`faasd worker --server HOST:PORT`), or call it async \
         (`?async=true`, `faasd invoke --async`), which queues it until a worker takes it"
    )]
    NoWorkers {
        /// The function.
        name: String,
    },
    /// A sync call found workers, but none that runs the function's runtime (no Python
    /// interpreter, or no sandbox for `oci`).
    #[error(
        "no connected worker can run {runtime} functions such as {name:?} now (python and \
         pickle need a Python interpreter on the worker, oci its sandbox: a worker's log says at \
         start which it lacks and why), so a sync call would wait \
         with no answer until one joins: start such a worker, or call it async, which queues it \
         until one takes it"
    )]
    NoWorkerRuns {
        /// The function.
        name: String,
        /// Its runtime.
        runtime: &'static str,
    },
    /// The server is shutting down and takes no new tasks.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The store failed or is closed.
    #[error("{0}")]
    Store(#[from] Arc<store::Error>),
    /// The function is live but has no kept version of this number (never registered, or
    /// removed by `rm`).
    #[error("{name:?} has no version {version} (`faasd versions {name}` lists them)")]
    UnknownVersion {
        /// The function.
        name: String,
        /// The version asked for.
        version: u32,
    },
}

impl From<store::Error> for Error {
    fn from(e: store::Error) -> Self {
        Error::Store(Arc::new(e))
    }
}

/// A task at its end, as committed (or, for a sync call's answer, being committed) to the store.
#[derive(Debug)]
pub struct Finished {
    /// The task's final record.
    pub record: TaskRecord,
    /// Its stdout.
    pub result: Bytes,
    /// Its captured stderr.
    pub logs: Bytes,
}

impl Finished {
    /// This end without its result and logs, FAILED with `output_too_large` saying why: what
    /// is stored of a task whose output does not fit in the data directory's free space.
    fn without_output(&self) -> Finished {
        let mut record = self.record.clone();
        let ended = match (record.status, &record.message) {
            (TaskStatus::Completed, _) => "it completed".to_owned(),
            (_, Some(message)) => format!("it failed ({message})"),
            _ => "it failed".to_owned(),
        };
        let bytes = self.result.len() + self.logs.len();
        record.message = Some(format!(
            "{ended}, but its result and logs ({bytes} bytes) could not be stored: the data directory had too little free space"
        ));
        record.status = TaskStatus::Failed;
        record.failure = Some(FailureReason::OutputTooLarge);
        record.result_bytes = 0;
        record.stderr_bytes = 0;
        Finished {
            record,
            result: Bytes::new(),
            logs: Bytes::new(),
        }
    }
}

/// Resolves once the task's end is committed (or with an error if the commit failed); a sync
/// caller's resolves as soon as the end is known, unless `serve --commit-before-answer`.
pub type Waiter = oneshot::Receiver<Result<Arc<Finished>, Arc<store::Error>>>;

/// Told how a task end's first commit went (see [`Broker::finalize_noting`]).
type Done = oneshot::Sender<Result<(), Arc<store::Error>>>;

/// A worker as its `Hello` describes it.
pub(crate) struct Joining {
    /// Its name.
    pub name: String,
    /// Where it connected from.
    pub address: String,
    /// Its slots.
    pub slots: u32,
    /// How it receives tasks.
    pub mode: DispatchMode,
    /// The runtimes it can start executors of.
    pub runtimes: Vec<Runtime>,
}

/// A worker as listed by `GET /v1/workers`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkerView {
    /// The id given at the handshake.
    pub id: u64,
    /// The worker's name.
    pub name: String,
    /// Where it connected from (`local` for in-process workers).
    pub address: String,
    /// How it receives tasks (`push` or `pull` in JSON).
    pub dispatch: DispatchMode,
    /// Its slots.
    pub slots: u32,
    /// The runtimes it can run (tasks of the others go to other workers).
    pub runtimes: Vec<Runtime>,
    /// Tasks it runs now.
    pub running: usize,
    /// Tasks it finished.
    pub done: u64,
    /// When it last heartbeat (RFC 3339).
    pub last_heartbeat: String,
    /// Whether it takes new tasks (`ready` or `draining`), or has stopped heartbeating
    /// (`stale`).
    pub state: WorkerState,
    /// Its machine's health as last reported (null fields before the first report).
    #[serde(flatten)]
    pub health: HealthView,
    /// When it last heartbeat (Unix ms; its join time before the first).
    pub last_heartbeat_ms: u64,
}

/// Whether a worker takes new tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// It takes new tasks.
    Ready,
    /// It finishes what it runs and takes nothing new.
    Draining,
    /// It has not heartbeat for two periods (the server drops it at three).
    Stale,
}

/// Counters for `/healthz` and the CLI.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Counts {
    /// Tasks waiting in queues.
    pub queued: usize,
    /// Tasks leased to workers.
    pub running: usize,
    /// Connected workers.
    pub workers: usize,
    /// Their total slots.
    pub slots: u64,
}

/// A cheap, cloneable handle on the broker.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    state: Mutex<State>,
    /// Signalled whenever the number of running tasks drops.
    settled: Notify,
    /// Signalled whenever a worker leaves (sync callers check they still have one).
    worker_left: Notify,
    /// Code checks waiting for a worker's answer.
    checks: Mutex<checks::Checks>,
    /// Where live events are published (the state holds a clone).
    events: Events,
    /// Proxied HTTP requests in flight and the workers' connections they use.
    http: Mutex<http::Streams>,
}

impl Broker {
    /// Starts the broker over `store`: loads the live functions and puts every task that was
    /// QUEUED or RUNNING when the store was last closed back in its queue, in arrival order.
    pub async fn start(store: Store) -> Result<Broker, Error> {
        Broker::start_with_events(store, DEFAULT_EVENT_BUFFER).await
    }

    /// [`Broker::start`], with a live event channel of `event_buffer` events: a consumer that
    /// falls that far behind is dropped.
    pub async fn start_with_events(store: Store, event_buffer: usize) -> Result<Broker, Error> {
        let functions = store.functions().await?;
        let last_seq = store.last_seq().await?;
        let mut state = State::new(last_seq);
        state.events = Events::new(event_buffer);
        let events = state.events.clone();
        for f in functions {
            state.set_function(Arc::new(f));
        }
        let failed = recover_pending(&store, &mut state).await?;
        let broker = Broker {
            inner: Arc::new(Inner {
                store,
                state: Mutex::new(state),
                settled: Notify::new(),
                worker_left: Notify::new(),
                checks: Mutex::default(),
                events,
                http: Mutex::default(),
            }),
        };
        broker.fail_lost_at_start(failed).await?;
        Ok(broker)
    }

    /// Ends the tasks recovery will not run, all in the store's group commits (not one fsync
    /// each: a crash right after `rm` of a function with 100,000 queued tasks leaves them all
    /// here) and waits until they are on disk.
    async fn fail_lost_at_start(&self, failed: Vec<TaskRecord>) -> Result<(), Error> {
        if failed.is_empty() {
            return Ok(());
        }
        let count = failed.len();
        let acks: Vec<_> = failed
            .into_iter()
            .map(|record| self.inner.store.submit(self.lost_at_start(record)))
            .collect();
        for ack in acks {
            ack.await.map_err(|_| Arc::new(store::Error::Closed))??;
        }
        tracing::info!(
            tasks = count,
            "ended unfinished tasks that will not run again"
        );
        Ok(())
    }

    /// The end of a task recovery will not run: FAILED `worker_lost` when a stop interrupted
    /// every attempt, or `cancelled` when its function was removed (a crash between `rm`'s
    /// commit and its cancels' commit leaves such a task pending).
    fn lost_at_start(&self, mut record: TaskRecord) -> Write {
        let removed = !self.lock().functions.contains_key(&record.function);
        let (failure, message) = if removed {
            let why = format!(
                "its function {:?} was removed before it ran",
                record.function
            );
            (FailureReason::Cancelled, why)
        } else {
            let why = "interrupted by server stops on every attempt".to_owned();
            (FailureReason::WorkerLost, why)
        };
        record.status = TaskStatus::Failed;
        record.failure = Some(failure);
        record.message = Some(message);
        record.finished_ms = Some(now_ms());
        Write::Finish {
            record,
            result: Bytes::new(),
            logs: Bytes::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves scheduling state we cannot trust; propagating
        // the poison as a panic is the honest outcome.
        self.inner
            .state
            .lock()
            .expect("broker state lock poisoned by an earlier panic")
    }

    fn checks(&self) -> MutexGuard<'_, checks::Checks> {
        self.inner
            .checks
            .lock()
            .expect("code check lock poisoned by an earlier panic")
    }

    /// The store this broker writes to.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// A new consumer of the live events, from now on. It must keep up: once it is more than
    /// the event buffer behind, its next read says it lagged.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Fires when the server stops: event streams end then rather than hold up the shutdown.
    pub fn events_closed(&self) -> tokio_util::sync::CancellationToken {
        self.inner.events.closed()
    }

    /// Publishes a function's change.
    fn function_changed(&self, change: FunctionChange, func: &FunctionRecord) {
        self.inner
            .events
            .publish(|| Event::Function(FunctionEvent::of(change, func)));
    }

    /// Registers a new version of a function and returns it with its assigned version. The
    /// code is `Some(bytes)`, or `None` when it is an uploaded blob file already stored.
    pub async fn register(
        &self,
        record: FunctionRecord,
        code: Option<Bytes>,
    ) -> Result<Arc<FunctionRecord>, Error> {
        let write = match code {
            Some(code) => Write::Register {
                record: record.clone(),
                code,
            },
            None => Write::RegisterFile {
                record: record.clone(),
            },
        };
        let version = self.inner.store.write(write).await?;
        let record = Arc::new(FunctionRecord { version, ..record });
        self.make_live(&record, FunctionChange::Registered);
        Ok(record)
    }

    /// Makes `record` its name's live version in memory (a new one, or a kept one again for a
    /// rollback), tells the workers to keep it warm, and announces the change.
    fn make_live(&self, record: &Arc<FunctionRecord>, change: FunctionChange) {
        let mut state = self.lock();
        match change {
            FunctionChange::Rollback => state.replace_function(record.clone()),
            _ => state.set_function(record.clone()),
        }
        state.prewarm_all(record);
        state.dispatch(&self.inner.store);
        drop(state);
        self.function_changed(change, record);
    }

    /// Makes a kept version of a function its live one again: the store's head, the record
    /// calls get from now on (its settings and cap), and the workers' warm executors, as a
    /// registration does.
    pub async fn rollback(&self, name: &str, version: u32) -> Result<Arc<FunctionRecord>, Error> {
        let unknown = || Error::UnknownVersion {
            name: name.into(),
            version,
        };
        if self.function(name).is_none() {
            return Err(Error::UnknownFunction { name: name.into() });
        }
        let record = self.inner.store.kept_version(name, version).await?;
        let record = Arc::new(record.ok_or_else(unknown)?);
        let applied = self
            .inner
            .store
            .write(Write::Rollback {
                name: name.into(),
                version,
            })
            .await?;
        if applied != version {
            return Err(unknown());
        }
        self.make_live(&record, FunctionChange::Rollback);
        Ok(record)
    }

    /// The kept version `version` of the live function `name`, for a call that pins it.
    pub async fn pinned(&self, name: &str, version: u32) -> Result<Arc<FunctionRecord>, Error> {
        if self.function(name).is_none() {
            return Err(Error::UnknownFunction { name: name.into() });
        }
        match self.inner.store.kept_version(name, version).await? {
            Some(record) => Ok(Arc::new(record)),
            None => Err(Error::UnknownVersion {
                name: name.into(),
                version,
            }),
        }
    }

    /// Removes a function (every version), and ends its queued tasks FAILED `cancelled`
    /// (`message` says why) rather than let them run the removed code; its running tasks run to
    /// their end. Returns the removed live version and how many tasks were cancelled once their
    /// ends are durable, or, when they are not (the removal itself is), why.
    pub async fn delete(
        &self,
        name: &str,
        message: &str,
    ) -> Result<(Arc<FunctionRecord>, Result<usize, Error>), Error> {
        let Some(func) = self.function(name) else {
            return Err(Error::UnknownFunction { name: name.into() });
        };
        self.inner
            .store
            .write(Write::Delete { name: name.into() })
            .await?;
        let mut waiting = {
            let mut state = self.lock();
            state.functions.remove(name);
            for worker in state.workers.values() {
                worker.retire(&func);
            }
            // Off the queue in the same hold as the removal, so that no queued task starts the
            // removed code; ended below in steps, so that a queue of 100,000 does not hold the
            // lock (and so every submit and dispatch) for all of them at once.
            state.take_waiting(name)
        };
        self.function_changed(FunctionChange::Removed, &func);
        let mut commits = Vec::with_capacity(waiting.len());
        for step in waiting.make_contiguous().chunks(cancel::CANCEL_STEP) {
            commits.extend(self.lock().cancel_taken(step, message, &self.inner.store));
        }
        let cancelled = self.settle_cancelled(name, commits).await;
        Ok((func, cancelled))
    }

    /// The live version of a function.
    pub fn function(&self, name: &str) -> Option<Arc<FunctionRecord>> {
        self.lock().functions.get(name).cloned()
    }

    /// Every live function, sorted by name.
    pub fn functions(&self) -> Vec<Arc<FunctionRecord>> {
        let mut all: Vec<_> = self.lock().functions.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Accepts a call: queues its QUEUED record to the store and the task to its function's
    /// queue, and returns once the record is durably committed. With `wait` (a sync call),
    /// returns at once with a [`Waiter`] for its end, which resolves only once the end, and so
    /// the QUEUED record before it, is durable.
    ///
    /// Dispatch does not wait for that commit: the store applies writes in the order they are
    /// queued, so the task's later records (RUNNING, its end) always land after its QUEUED one,
    /// and the caller hears nothing before the QUEUED record is on disk.
    /// `caller` is the id of the user making the call, recorded on the task. `pin` (from
    /// [`Broker::pinned`]) runs a kept version instead of the live one; the live version's
    /// queue limit and cap still apply.
    pub async fn submit(
        &self,
        name: &str,
        payload: Bytes,
        json: bool,
        wait: bool,
        caller: u32,
        pin: Option<Arc<FunctionRecord>>,
    ) -> Result<(TaskRecord, Option<Waiter>), Error> {
        let extras = Extras { pin, key: None };
        self.submit_keyed(name, payload, json, wait, caller, extras)
            .await
    }

    /// [`Broker::submit`], recording `key` (when given) in the same transaction as the QUEUED
    /// record. With a key, a sync call too waits for that commit before its waiter is returned,
    /// so a repeat of the request finds the key as soon as the first one could.
    pub async fn submit_keyed(
        &self,
        name: &str,
        payload: Bytes,
        json: bool,
        wait: bool,
        caller: u32,
        Extras { pin, key }: Extras,
    ) -> Result<(TaskRecord, Option<Waiter>), Error> {
        // A full disk refuses the call before it runs rather than after.
        self.inner.store.check_writable()?;
        let (record, waiter, committed) = {
            let mut state = self.lock();
            let func = pinned_or(state.admit(name, 1)?, pin);
            // One look at the workers on the usual path; why none can run it, only when none can.
            if wait && !state.has_worker_for(func.runtime) {
                let name = name.into();
                return Err(if state.has_worker() {
                    Error::NoWorkerRuns {
                        name,
                        runtime: func.runtime.as_str(),
                    }
                } else {
                    Error::NoWorkers { name }
                });
            }
            state.next_seq += 1;
            let record = queued_record(&func, state.next_seq, &payload, json, caller);
            let enqueue = Write::Enqueue {
                record: record.clone(),
                payload: payload.clone(),
            };
            // A sync caller's acknowledgement is the result, whose commit makes this record
            // durable too (one writer, in order); it learns no task id before then, so an
            // fsync for the QUEUED record alone would buy it nothing. With an idempotency key
            // it is committed (with the key) before the call goes on, so a repeat finds it.
            let committed = match key {
                None if wait => {
                    self.inner.store.write_later(enqueue);
                    None
                }
                None => Some(vec![self.inner.store.submit(enqueue)]),
                Some(key) => {
                    let remember = key.write(name, caller, vec![record.id]);
                    Some(self.inner.store.submit_group(vec![enqueue, remember]))
                }
            };
            let waiter = state.enqueue(Active::new(record.clone(), Some(payload), func), wait);
            state.dispatch(&self.inner.store);
            (record, waiter, committed)
        };
        let Some(committed) = committed else {
            return Ok((record, waiter));
        };
        if let Err(e) = all_committed(committed).await {
            // Never acknowledged: take it back if it has not started (it may have, since
            // dispatch does not wait for the commit; then it runs once, unrecorded as QUEUED).
            self.lock().withdraw(record.id);
            return Err(Error::Store(e));
        }
        self.lock().payloads_stored([record.id]);
        Ok((record, waiter))
    }

    /// Accepts many calls of one function at once, all or none: admits the whole batch against
    /// the queue limit, queues every QUEUED record to the store under one lock (so the writer
    /// groups them into one commit), and returns the records in input order once every one is
    /// durable. If the commit fails, the tasks that have not started are taken back.
    /// `caller` is the id of the user making the calls, recorded on each task; `pin` as for
    /// [`Broker::submit`].
    pub async fn submit_batch(
        &self,
        name: &str,
        payloads: Vec<Bytes>,
        caller: u32,
        pin: Option<Arc<FunctionRecord>>,
    ) -> Result<Vec<TaskRecord>, Error> {
        let extras = Extras { pin, key: None };
        self.submit_batch_keyed(name, payloads, caller, extras)
            .await
    }

    /// [`Broker::submit_batch`], recording `key` (when given) in the same transaction as the
    /// QUEUED records: with a key the records and the key are queued as one group, which the
    /// writer never splits between commits.
    pub async fn submit_batch_keyed(
        &self,
        name: &str,
        payloads: Vec<Bytes>,
        caller: u32,
        Extras { pin, key }: Extras,
    ) -> Result<Vec<TaskRecord>, Error> {
        self.inner.store.check_writable()?;
        let (records, acks) = {
            let mut state = self.lock();
            let func = pinned_or(state.admit(name, payloads.len())?, pin);
            let mut records = Vec::with_capacity(payloads.len());
            let mut acks = Vec::with_capacity(payloads.len());
            let mut group = Vec::new();
            for payload in payloads {
                state.next_seq += 1;
                let record = queued_record(&func, state.next_seq, &payload, false, caller);
                let enqueue = Write::Enqueue {
                    record: record.clone(),
                    payload: payload.clone(),
                };
                if key.is_some() {
                    group.push(enqueue);
                } else {
                    acks.push(self.inner.store.submit(enqueue));
                }
                state.enqueue(
                    Active::new(record.clone(), Some(payload), func.clone()),
                    false,
                );
                records.push(record);
            }
            if let Some(key) = key {
                group.push(key.write(name, caller, records.iter().map(|r| r.id).collect()));
                acks = self.inner.store.submit_group(group);
            }
            state.dispatch(&self.inner.store);
            (records, acks)
        };
        if let Err(e) = all_committed(acks).await {
            let mut state = self.lock();
            for record in &records {
                state.withdraw(record.id);
            }
            return Err(Error::Store(e));
        }
        self.lock().payloads_stored(records.iter().map(|r| r.id));
        Ok(records)
    }

    /// A task's current record: from memory while it is active, else from the store.
    pub async fn task(&self, id: u128) -> Result<Option<TaskRecord>, Error> {
        if let Some(active) = self.lock().tasks.get(&id) {
            return Ok(Some(active.current().clone()));
        }
        Ok(self.inner.store.task(id).await?)
    }

    /// A finished task's result: from memory while its end is being committed, else from the
    /// store.
    pub async fn result(&self, id: u128) -> Result<Option<Bytes>, Error> {
        if let Some(ended) = self.ended(id) {
            return Ok(Some(ended.result.clone()));
        }
        Ok(self.inner.store.result(id).await?)
    }

    /// A finished task's result to send, as [`Broker::result`] reads it, but a large stored one
    /// as its file ([`store::Store::result_to_send`]).
    pub async fn result_to_send(&self, id: u128) -> Result<Option<store::Output>, Error> {
        if let Some(ended) = self.ended(id) {
            return Ok(Some(store::Output::Whole(ended.result.clone())));
        }
        Ok(self.inner.store.result_to_send(id).await?)
    }

    /// A finished task's captured stderr, as [`Broker::result`] reads its result.
    pub async fn logs(&self, id: u128) -> Result<Option<Bytes>, Error> {
        if let Some(ended) = self.ended(id) {
            return Ok(Some(ended.logs.clone()));
        }
        Ok(self.inner.store.logs(id).await?)
    }

    /// Makes `finished` the end readers see of a task answered before its end was committed:
    /// the end as it will be stored, when that changed (stored without its output).
    fn replace_ended(&self, id: u128, finished: &Arc<Finished>) {
        if let Some(active) = self.lock().tasks.get_mut(&id) {
            if active.ended.is_some() {
                active.ended = Some(finished.clone());
            }
        }
    }

    /// The end of a task whose sync caller was answered before the end was committed.
    fn ended(&self, id: u128) -> Option<Arc<Finished>> {
        self.lock().tasks.get(&id).and_then(|a| a.ended.clone())
    }

    /// Whether a sync call's answer waits until its end is committed (`serve
    /// --commit-before-answer`); by default it goes as soon as the worker reports it.
    pub fn set_commit_before_answer(&self, on: bool) {
        self.lock().commit_before_answer = on;
    }

    /// A waiter for an active task's end, or `None` if the task is not active (finished or
    /// unknown: read the store).
    pub fn watch(&self, id: u128) -> Option<Waiter> {
        self.lock().tasks.get_mut(&id).map(Active::watch)
    }

    /// Looks at many tasks under one lock: returns a [`Waiter`] for each of `ids` that is active
    /// (none when `wait` is false), and the ids that are not active (finished or unknown: read
    /// the store). A waiter dropped unresolved is cleared at the task's next watch or its end.
    pub fn watch_many(&self, ids: &[u128], wait: bool) -> (Vec<Waiter>, Vec<u128>) {
        let mut state = self.lock();
        let mut waiters = Vec::new();
        let mut inactive = Vec::new();
        for id in ids {
            match state.tasks.get_mut(id) {
                Some(active) if wait => waiters.push(active.watch()),
                Some(_) => {}
                None => inactive.push(*id),
            }
        }
        (waiters, inactive)
    }

    /// Attaches a worker that sent a valid `Hello`: queues its `Welcome` on `frames` (ahead
    /// of any task) and returns its id.
    pub(crate) fn attach_worker(
        &self,
        joining: Joining,
        frames: mpsc::UnboundedSender<Frame>,
        heartbeat: Duration,
    ) -> u64 {
        let Joining {
            name,
            address,
            slots,
            mode,
            runtimes,
        } = joining;
        let mut state = self.lock();
        state.next_worker += 1;
        let id = state.next_worker;
        let _ = frames.send(Frame::Welcome {
            protocol: crate::proto::PROTOCOL_VERSION,
            worker_id: id,
            heartbeat_ms: heartbeat.as_millis() as u32,
        });
        self.link_http(id, frames.clone());
        let outbox = outbox::start(self.clone(), id, frames);
        let mut worker = WorkerEntry::new(name, address, slots, mode, outbox);
        worker.heartbeat_period = heartbeat;
        worker.runtimes = runtimes;
        for func in state.functions.values() {
            worker.prewarm(func);
        }
        self.inner
            .events
            .publish(|| worker.event(id, WorkerChange::Joined));
        state.workers.insert(id, worker);
        state.dispatch(&self.inner.store);
        id
    }

    /// Detaches a worker whose connection ended: its tasks go back to their queues (or fail
    /// with `worker_lost` past their attempt limit).
    pub(crate) fn detach_worker(&self, id: u64) {
        self.forget_checks_of(Some(id));
        self.unlink_http(id);
        let mut state = self.lock();
        if let Some(worker) = state.workers.get(&id) {
            self.inner
                .events
                .publish(|| worker.event(id, WorkerChange::Left));
        }
        let lost = state.detach_worker(id, &self.inner.store);
        state.dispatch(&self.inner.store);
        drop(state);
        for (task_id, commit) in lost {
            self.finalize_after(task_id, commit);
        }
        self.inner.settled.notify_waiters();
        self.inner.worker_left.notify_waiters();
    }

    /// Waits for task `id`'s end as [`Broker::watch`]'s waiter gives it, unless every worker
    /// that could run it leaves first: then `None`, and the task stays queued for the next
    /// one (a sync caller is told so rather than held with no answer).
    pub async fn wait_while_runnable(
        &self,
        id: u128,
        waiter: Waiter,
    ) -> Option<Result<Result<Arc<Finished>, Arc<store::Error>>, oneshot::error::RecvError>> {
        tokio::pin!(waiter);
        loop {
            let left = self.inner.worker_left.notified();
            tokio::pin!(left);
            // Registered before the check, so a worker leaving in between still wakes us.
            left.as_mut().enable();
            if !self.can_still_run(id) {
                return None;
            }
            tokio::select! {
                ended = &mut waiter => return Some(ended),
                () = left => {}
            }
        }
    }

    /// The name of the worker running task `id`, if one is.
    pub fn worker_of(&self, id: u128) -> Option<String> {
        self.lock().worker_of(id)
    }

    /// Whether task `id` is running, ended, or has a connected worker that could run it.
    fn can_still_run(&self, id: u128) -> bool {
        self.lock().can_still_run(id)
    }

    /// Takes back a task whose assignment under `lease` could not reach `worker` (its payload
    /// could not be read from the store): it is queued again, or fails past its attempts.
    fn undeliverable(&self, worker: u64, task_id: u128, lease: u64) {
        let task = uuid::Uuid::from_u128(task_id);
        tracing::error!(%task, worker, "could not read the task's payload to send it; taking it back");
        let why = "its payload could not be read from the store";
        let mut state = self.lock();
        let commit = state.take_back(worker, task_id, lease, why, &self.inner.store);
        state.dispatch(&self.inner.store);
        drop(state);
        if let Some(commit) = commit {
            self.finalize_after(task_id, commit);
        }
        self.inner.settled.notify_waiters();
    }

    /// Records that a worker holds a code bundle (it fetched it).
    pub(crate) fn note_cached(&self, worker: u64, hash: CodeHash) {
        if let Some(w) = self.lock().workers.get_mut(&worker) {
            w.cached.insert(hash);
        }
    }

    /// Grants a pull-mode worker more task credits.
    pub(crate) fn pull(&self, worker: u64, slots: u32) {
        let mut state = self.lock();
        state.grant_credits(worker, slots);
        state.dispatch(&self.inner.store);
    }

    /// Records a heartbeat from a worker.
    pub(crate) fn heartbeat(&self, worker: u64) {
        self.lock().heartbeat(worker);
    }

    /// Records a worker's health report (it follows each heartbeat) and publishes it.
    pub(crate) fn health(&self, worker: u64, health: crate::proto::Health) {
        self.lock().health(worker, health);
    }

    /// Records a worker's warm executors (its report follows each health report).
    pub(crate) fn warm(&self, worker: u64, warm: Vec<crate::proto::WarmCount>) {
        self.lock().warm(worker, warm);
    }

    /// The warm executors of each function over every connected worker, as they last
    /// reported them.
    pub fn warm_executors(&self) -> HashMap<String, u32> {
        let state = self.lock();
        let mut total: HashMap<String, u32> = HashMap::new();
        for count in state.workers.values().flat_map(|w| &w.warm) {
            *total.entry(count.function.clone()).or_default() += count.executors;
        }
        total
    }

    /// Revokes expired leases every `period` until `cancel` fires. At a tick that finds the
    /// broker idle (no task in memory) after tasks came in, hands the memory freed since back to
    /// the system (see [`trim_freed_memory`]).
    pub async fn watch_leases(
        &self,
        period: Duration,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut trimmed_at_seq = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = cancel.cancelled() => return,
            }
            let (failed, trim) = self.expire_leases(&mut trimmed_at_seq);
            for (task_id, commit) in failed {
                self.finalize_after(task_id, commit);
            }
            self.inner.settled.notify_waiters();
            if trim {
                let _ = tokio::task::spawn_blocking(trim_freed_memory).await;
            }
        }
    }

    /// Revokes expired leases and dispatches; returns the commits of tasks that failed for good,
    /// and whether to trim the heap now: the broker went idle (no task in memory) since the last
    /// trim (at arrival number `trimmed_at_seq`), or payloads of [`TRIM_AFTER_BYTES`] left
    /// memory for the store.
    fn expire_leases(
        &self,
        trimmed_at_seq: &mut Option<u64>,
    ) -> (Vec<(u128, state::PendingCommit)>, bool) {
        let mut state = self.lock();
        let failed = state.revoke_expired(std::time::Instant::now(), &self.inner.store);
        state.dispatch(&self.inner.store);
        let idle_at = state.tasks.is_empty().then_some(state.next_seq);
        let went_idle = idle_at.is_some() && idle_at != *trimmed_at_seq;
        let trim = went_idle || state.released_bytes >= TRIM_AFTER_BYTES;
        if trim {
            state.released_bytes = 0;
            *trimmed_at_seq = idle_at;
        }
        (failed, trim)
    }

    /// Waits until a worker that takes tasks is connected, up to `within`; whether one is.
    pub async fn wait_for_worker(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !self.lock().has_worker() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }

    /// Marks a worker as draining: it gets no new tasks.
    pub(crate) fn drain_worker(&self, worker: u64) {
        if let Some(w) = self.lock().workers.get_mut(&worker) {
            w.draining = true;
        }
    }

    /// Takes a worker's report of a finished task. A report under a lease that is no longer the
    /// task's current one is refused and logged, so a task never has two results.
    pub(crate) fn report(&self, worker: u64, report: Report) {
        let task_id = report.task_id;
        let mut state = self.lock();
        let commit = state.finish(worker, report, &self.inner.store);
        state.dispatch(&self.inner.store);
        drop(state);
        if let Some(commit) = commit {
            self.finalize_after(task_id, commit);
            self.inner.settled.notify_waiters();
        }
    }

    /// Once the end of a task is committed, drops it from memory and wakes its waiters.
    /// A failed commit (a full disk, say) answers the waiters at once with the error (a sync
    /// call must not hang on the disk) and is retried with backoff: the task stays in memory,
    /// still RUNNING to readers, until its end is on disk or the store closes (then the task is
    /// still pending in the store and runs again at the next start).
    fn finalize_after(&self, task_id: u128, commit: state::PendingCommit) {
        self.finalize_noting(task_id, commit, None);
    }

    /// [`Broker::finalize_after`], also telling `done` how the first commit went: once the end
    /// is durable, or at once with the error when it failed (the retries go on regardless).
    fn finalize_noting(&self, task_id: u128, commit: state::PendingCommit, mut done: Option<Done>) {
        let broker = self.clone();
        tokio::spawn(async move {
            let task = uuid::Uuid::from_u128(task_id);
            let mut finished = commit.finished;
            let mut ack = commit.ack;
            let mut retry_in = Duration::from_millis(100);
            let mut retries = 0u32;
            let outcome = loop {
                match ack.await {
                    Ok(Ok(_)) => {
                        if retries > 0 {
                            tracing::info!(%task, retries, "committed a finished task after retrying");
                        }
                        broker.count_end(&finished.record);
                        break Ok(finished);
                    }
                    Err(_) => break Err(Arc::new(store::Error::Closed)),
                    Ok(Err(e)) => {
                        // Once a task at error level; its retries (each 100 ms to 1 s while a
                        // disk stays full) at debug, so a full disk does not flood the log.
                        if retries == 0 {
                            tracing::error!(%task, error = %e, "could not commit a finished task; retrying until it is on disk");
                        } else {
                            tracing::debug!(%task, error = %e, ?retry_in, retries, "still cannot commit a finished task; retrying");
                        }
                        retries += 1;
                        if let Some(done) = done.take() {
                            let _ = done.send(Err(e.clone()));
                        }
                        let output = (finished.result.len() + finished.logs.len()) as u64;
                        if e.is_disk_full() && broker.inner.store.exceeds_space_left(output) {
                            // It could never be stored, and every write waits behind it.
                            tracing::warn!(%task, bytes = output, "a finished task's result and logs do not fit in the data directory's free space: its end is stored without them");
                            finished = Arc::new(finished.without_output());
                            broker.replace_ended(task_id, &finished);
                        }
                        broker.answer_waiters(task_id, &Err(e));
                        tokio::time::sleep(retry_in).await;
                        // The store retries on its own every second; this only needs to follow.
                        retry_in = (retry_in * 2).min(Duration::from_secs(1));
                        ack = broker.inner.store.submit(Write::Finish {
                            record: finished.record.clone(),
                            result: finished.result.clone(),
                            logs: finished.logs.clone(),
                        });
                    }
                }
            };
            let active = broker.lock().tasks.remove(&task_id);
            if let (Some(active), Ok(finished)) = (&active, &outcome) {
                let owner = active.func.owner;
                broker
                    .inner
                    .events
                    .publish(|| Event::Task(TaskEvent::of(&finished.record, owner)));
            }
            let waiters = active.map(|mut a| a.take_waiters()).unwrap_or_default();
            for w in waiters {
                let _ = w.send(outcome.clone());
            }
            if let Some(done) = done {
                let _ = done.send(outcome.map(|_| ()));
            }
        });
    }

    /// Counts a task's end in the metrics, once its end is committed.
    fn count_end(&self, record: &TaskRecord) {
        let since = |from: u64, to: Option<u64>| {
            to.map(|to| Duration::from_millis(to.saturating_sub(from)))
        };
        // A task failed `worker_lost` ended without a report, and one `cancelled` never ran:
        // no run time was measured and no executor started.
        let reported = !matches!(
            record.failure,
            Some(FailureReason::WorkerLost | FailureReason::Cancelled)
        );
        self.inner.store.metrics().task_ended(TaskEnd {
            function: &record.function,
            completed: record.status == TaskStatus::Completed,
            run: reported.then(|| Duration::from_micros(record.run_us)),
            queue_wait: since(record.created_ms, record.started_ms),
            cold_start: reported && record.cold_start,
        });
    }

    /// Answers (and forgets) the waiters a task has now, leaving the task in memory.
    fn answer_waiters(&self, task_id: u128, outcome: &Result<Arc<Finished>, Arc<store::Error>>) {
        let waiters = self
            .lock()
            .tasks
            .get_mut(&task_id)
            .map(Active::take_waiters)
            .unwrap_or_default();
        for w in waiters {
            let _ = w.send(outcome.clone());
        }
    }

    /// Stops accepting and dispatching tasks (queued ones stay in the store for the next start).
    pub fn stop_dispatch(&self) {
        let mut state = self.lock();
        state.accepting = false;
        state.dispatching = false;
        drop(state);
        self.inner.events.close();
    }

    /// Waits until no task is running, or `deadline` passes; returns the number still running.
    pub async fn wait_settled(&self, deadline: Duration) -> usize {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let notified = self.inner.settled.notified();
            let running = self.lock().running_count();
            if running == 0 {
                return 0;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return self.lock().running_count();
            }
        }
    }

    /// Counters of queued and running tasks and connected workers.
    pub fn counts(&self) -> Counts {
        let state = self.lock();
        Counts {
            queued: state.queues.values().map(|q| q.waiting.len()).sum(),
            running: state.running_count(),
            workers: state.workers.len(),
            slots: state.workers.values().map(|w| u64::from(w.slots)).sum(),
        }
    }

    /// The levels `GET /metrics` reports (tasks queued and running per live function, every
    /// worker's slots and health), taken in one hold of the lock.
    pub fn live_metrics(&self) -> Live {
        let state = self.lock();
        let functions = function_levels(&state);
        let workers = state
            .workers
            .iter()
            .map(|(id, w)| {
                let view = w.view(*id);
                WorkerLevel {
                    name: view.name,
                    slots: u64::from(view.slots),
                    running: view.running as u64,
                    cpu_percent: view.health.cpu_percent,
                    memory_used_bytes: view.health.memory_used_bytes,
                    memory_total_bytes: view.health.memory_total_bytes,
                }
            })
            .collect();
        Live { functions, workers }
    }

    /// Every live function's queued and running tasks now.
    pub fn function_levels(&self) -> Vec<FunctionLevel> {
        function_levels(&self.lock())
    }

    /// Every connected worker.
    pub fn workers(&self) -> Vec<WorkerView> {
        self.lock()
            .workers
            .iter()
            .map(|(id, w)| w.view(*id))
            .collect()
    }
}

/// How many bytes of payloads may leave memory for the store before the heap is trimmed.
const TRIM_AFTER_BYTES: usize = 32 << 20;

/// Hands the heap memory freed by a drained backlog back to the system. glibc's allocator keeps
/// freed memory for reuse, so without this the RSS of a server stays at its peak after a burst.
fn trim_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it takes the allocator's own locks and
    // touches no memory in use.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Puts every task the store holds as unfinished back in its queue, in arrival order, pinned to
/// the function version it was called with. A task that was RUNNING counts that attempt; one
/// that has used every attempt is returned, to be failed with `worker_lost`, and so is one whose
/// function was removed, to be failed `cancelled`.
async fn recover_pending(store: &Store, state: &mut State) -> Result<Vec<TaskRecord>, Error> {
    let pending = store.pending(INLINE_PAYLOAD).await?;
    let mut versions: HashMap<(String, u32), Arc<FunctionRecord>> = HashMap::new();
    let mut requeued = 0usize;
    let mut failed = Vec::new();
    for task in pending {
        let Some(func) = pinned_function(store, &mut versions, &task.record).await? else {
            tracing::error!(task = %uuid::Uuid::from_u128(task.record.id), "pending task pins a missing function version; dropping it");
            continue;
        };
        let mut record = task.record;
        if !state.functions.contains_key(&record.function) {
            // Its function was removed: the task is cancelled, not run on removed code.
            failed.push(record);
            continue;
        }
        if record.status == TaskStatus::Running {
            // Interrupted mid-run by the stop: that attempt counts.
            if record.attempts >= func.max_attempts {
                failed.push(record);
                continue;
            }
            record.status = TaskStatus::Queued;
            record.worker = None;
            store.write_later(Write::Update {
                record: record.clone(),
            });
        }
        state.enqueue(Active::new(record, task.payload, func), false);
        requeued += 1;
    }
    if requeued > 0 {
        tracing::info!(
            tasks = requeued,
            "re-queued unfinished tasks from the store"
        );
    }
    Ok(failed)
}

/// The function version a task pins, read from the store once per version (`None` when the
/// store no longer has it).
async fn pinned_function(
    store: &Store,
    versions: &mut HashMap<(String, u32), Arc<FunctionRecord>>,
    task: &TaskRecord,
) -> Result<Option<Arc<FunctionRecord>>, Error> {
    let key = (task.function.clone(), task.version);
    if let Some(f) = versions.get(&key) {
        return Ok(Some(f.clone()));
    }
    let Some(f) = store.function(&key.0, Some(key.1)).await? else {
        return Ok(None);
    };
    let f = Arc::new(f);
    versions.insert(key, f.clone());
    Ok(Some(f))
}

/// What a submit may add to a plain call: a pinned version (from [`Broker::pinned`]; `None` runs
/// the live one) and an idempotency key to record with the tasks.
#[derive(Debug, Default)]
pub struct Extras {
    /// The kept version to run instead of the live one.
    pub pin: Option<Arc<FunctionRecord>>,
    /// The key to record in the same transaction as the tasks.
    pub key: Option<NewKey>,
}

/// An idempotency key to record with the tasks a submit creates (see
/// [`Broker::submit_keyed`]); the broker fills in the function, the task ids and the time.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The key as the client sent it.
    pub key: String,
    /// What kind of request it came with (`invoke`, `batch`, `execute_function`).
    pub route: &'static str,
    /// [`store::payload_hash`] of the request's payloads.
    pub payload_hash: [u8; 32],
}

impl NewKey {
    /// The store write that records this key for `caller`'s call of `function`.
    fn write(self, function: &str, caller: u32, task_ids: Vec<u128>) -> Write {
        Write::RememberKey {
            caller,
            key: self.key,
            record: store::KeyRecord {
                function: function.to_owned(),
                route: self.route.to_owned(),
                payload_hash: self.payload_hash,
                task_ids,
                created_ms: now_ms(),
            },
        }
    }
}

/// Waits for every acknowledgement of a submit's writes; the first error, if any.
async fn all_committed(
    acks: Vec<oneshot::Receiver<Result<u32, Arc<store::Error>>>>,
) -> Result<(), Arc<store::Error>> {
    for ack in acks {
        match ack.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Arc::new(store::Error::Closed)),
        }
    }
    Ok(())
}

/// The version a call runs: the pinned one when it is of the same function, else the live one.
fn pinned_or(live: Arc<FunctionRecord>, pin: Option<Arc<FunctionRecord>>) -> Arc<FunctionRecord> {
    pin.filter(|p| p.name == live.name).unwrap_or(live)
}

/// The QUEUED record of a new call of `func`, arriving as number `seq`.
fn queued_record(
    func: &FunctionRecord,
    seq: u64,
    payload: &Bytes,
    json: bool,
    caller: u32,
) -> TaskRecord {
    let id = uuid::Uuid::now_v7().as_u128();
    TaskRecord {
        created_ms: now_ms(),
        payload_bytes: payload.len() as u64,
        json,
        caller,
        ..TaskRecord::queued(id, seq, func.name.clone(), func.version)
    }
}

/// Every live function's queued and running tasks in `state`, by name.
fn function_levels(state: &State) -> Vec<FunctionLevel> {
    let mut levels: Vec<FunctionLevel> = state
        .functions
        .iter()
        .map(|(name, func)| {
            let queue = state.queues.get(name);
            FunctionLevel {
                name: name.clone(),
                owner: func.owner,
                queued: queue.map_or(0, |q| q.waiting.len() as u64),
                running: queue.map_or(0, |q| u64::from(q.running_now())),
            }
        })
        .collect();
    levels.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    levels
}

/// The message of [`Error::QueueFull`]: a batch that could never fit says so (it must be sent
/// in smaller parts), one that could later says how much room there is now.
fn queue_full(name: &str, limit: u32, waiting: usize, asked: usize) -> String {
    let room = (limit as usize).saturating_sub(waiting);
    if asked <= 1 {
        format!("the queue of {name:?} is full ({waiting} of {limit} tasks waiting)")
    } else if asked > limit as usize {
        format!(
            "a batch of {asked} calls can never fit the queue of {name:?}, which holds at most \
             {limit} tasks: send at most {limit} calls at a time"
        )
    } else {
        format!(
            "the queue of {name:?} has room for {room} more tasks ({waiting} of {limit} \
             waiting), not the {asked} this batch asks for"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_view_serializes_its_mode_and_state_as_lowercase_words() {
        let view = WorkerView {
            id: 3,
            name: "w".into(),
            address: "local".into(),
            dispatch: DispatchMode::Pull,
            slots: 2,
            runtimes: vec![Runtime::Shell, Runtime::Python],
            running: 1,
            done: 5,
            last_heartbeat: "1970-01-01T00:00:00Z".into(),
            state: WorkerState::Draining,
            health: HealthView::default(),
            last_heartbeat_ms: 0,
        };
        let json = serde_json::to_value(&view).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({
                "id": 3,
                "name": "w",
                "address": "local",
                "dispatch": "pull",
                "slots": 2,
                "runtimes": ["shell", "python"],
                "running": 1,
                "done": 5,
                "last_heartbeat": "1970-01-01T00:00:00Z",
                "state": "draining",
                "cpu_percent": null,
                "memory_used_bytes": null,
                "memory_total_bytes": null,
                "load1": null,
                "load5": null,
                "load15": null,
                "last_heartbeat_ms": 0,
            })
        );
        let ready = WorkerView {
            dispatch: DispatchMode::Push,
            state: WorkerState::Ready,
            ..view
        };
        let json = serde_json::to_value(&ready).expect("serialize");
        assert_eq!(
            (json["dispatch"].as_str(), json["state"].as_str()),
            (Some("push"), Some("ready"))
        );
    }
}

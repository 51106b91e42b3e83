//! The broker's in-memory scheduling state: queues, active tasks, workers, and the placement
//! loop. Everything here runs under the broker's mutex and never blocks.
//!
//! [`State::dispatch`] reads as its steps: the next runnable function, the worker to place its
//! head task on ([`State::pick_worker`]), the lease, the hand-over. Reports pass
//! [`State::finish`], which refuses stale ones. The tests below drive this state directly,
//! without a server or a broker handle.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::events::{Event, Events, HealthView, TaskEvent, WorkerChange, WorkerEvent};
use super::outbox::{Outbound, Outbox};
use super::{Error, Finished, Waiter, WorkerState, WorkerView};
use crate::proto::{
    Assignment, CodeHash, DispatchMode, FailureReason, Frame, Health, Outcome, Prewarm, Report,
    Runtime, WarmCount, WarmSpec,
};
use crate::store::{self, FunctionRecord, Store, TaskRecord, TaskStatus, Write};
use crate::units::{now_ms, rfc3339};

/// How long past its timeout a leased task may stay unreported before the lease is revoked.
pub(super) const LEASE_GRACE: Duration = Duration::from_secs(5);

/// Payloads of at most this many bytes stay in memory with their task; larger ones wait in the
/// store once their QUEUED record is committed, and are read when the task is dispatched.
pub(super) const INLINE_PAYLOAD: usize = 512;

/// A task the broker is responsible for: queued, leased, or finishing (its end not yet on disk).
pub(super) struct Active {
    pub record: TaskRecord,
    /// The payload, or `None` while it waits in the store.
    payload: Option<Bytes>,
    pub func: Arc<FunctionRecord>,
    lease: u64,
    worker: Option<u64>,
    /// When the current lease expires: the function's timeout plus [`LEASE_GRACE`].
    deadline: Option<Instant>,
    finishing: bool,
    pub waiters: Vec<oneshot::Sender<Result<Arc<Finished>, Arc<store::Error>>>>,
    /// Waiters that hear of its end only once it is on disk, even when its sync caller is
    /// answered before (a cancel's: a cancel the caller heard of must survive a crash).
    durable: Vec<oneshot::Sender<Result<Arc<Finished>, Arc<store::Error>>>>,
    /// Whether a sync caller waits for it (its answer may go before its end is on disk).
    sync: bool,
    /// Its end, once its sync caller was answered before the end was committed: what readers
    /// see until the commit removes the task from memory.
    pub ended: Option<Arc<Finished>>,
    /// Why it is being stopped, once it was cancelled while RUNNING: its worker was told to
    /// stop it, and it ends FAILED `cancelled` with this message unless its end came first.
    stopping: Option<String>,
}

impl Active {
    /// A task with its payload in memory (`Some`) or in the store (`None`). A small payload is
    /// copied, so it never keeps a larger buffer (a whole request body) alive.
    pub fn new(record: TaskRecord, payload: Option<Bytes>, func: Arc<FunctionRecord>) -> Active {
        let payload = payload.map(|p| {
            if p.len() <= INLINE_PAYLOAD {
                Bytes::copy_from_slice(&p)
            } else {
                p
            }
        });
        Active {
            record,
            payload,
            func,
            lease: 0,
            worker: None,
            deadline: None,
            finishing: false,
            waiters: Vec::new(),
            durable: Vec::new(),
            sync: false,
            ended: None,
            stopping: None,
        }
    }

    /// Adds a waiter for this task's end (answered at once when its end is known already).
    pub fn watch(&mut self) -> Waiter {
        let (tx, rx) = oneshot::channel();
        if let Some(ended) = &self.ended {
            let _ = tx.send(Ok(ended.clone()));
            return rx;
        }
        self.waiters.retain(|w| !w.is_closed());
        self.waiters.push(tx);
        rx
    }

    /// Adds a waiter for this task's end once that end is on disk (never answered early, as a
    /// sync caller is; see [`answer_early`]).
    pub fn watch_durable(&mut self) -> Waiter {
        let (tx, rx) = oneshot::channel();
        self.durable.push(tx);
        rx
    }

    /// Takes every waiter, early and durable (its end is committed, or its commit failed).
    pub fn take_waiters(
        &mut self,
    ) -> Vec<oneshot::Sender<Result<Arc<Finished>, Arc<store::Error>>>> {
        let mut all = std::mem::take(&mut self.waiters);
        all.append(&mut self.durable);
        all
    }

    /// Whether its end is known and being committed (reported, failed for good, cancelled).
    pub fn is_finishing(&self) -> bool {
        self.finishing
    }

    /// Its record as readers see it: its end once that was answered, else its current state.
    pub fn current(&self) -> &TaskRecord {
        self.ended.as_ref().map_or(&self.record, |e| &e.record)
    }
}

/// A task end that is being committed; its waiters are woken once `ack` resolves.
pub(super) struct PendingCommit {
    pub ack: oneshot::Receiver<Result<u32, Arc<store::Error>>>,
    pub finished: Arc<Finished>,
}

/// One function's queue.
pub(super) struct FnQueue {
    /// Task ids waiting, in arrival order.
    pub waiting: VecDeque<u128>,
    running: u32,
    cap: Option<u32>,
    /// Whether the function is in the runnable rotation.
    listed: bool,
}

impl FnQueue {
    fn new(func: &FunctionRecord) -> FnQueue {
        FnQueue {
            waiting: VecDeque::new(),
            running: 0,
            cap: func.concurrency,
            listed: false,
        }
    }

    /// Its tasks leased to workers now.
    pub fn running_now(&self) -> u32 {
        self.running
    }

    fn can_start(&self) -> bool {
        !self.waiting.is_empty() && self.cap.is_none_or(|cap| self.running < cap)
    }
}

/// A connected worker.
pub(super) struct WorkerEntry {
    name: String,
    address: String,
    pub slots: u32,
    mode: DispatchMode,
    frames: Outbox,
    running: HashSet<u128>,
    done: u64,
    /// Pull mode: tasks the worker has asked for and not yet received.
    credits: u32,
    /// Code bundles the worker holds.
    pub cached: HashSet<CodeHash>,
    pub draining: bool,
    /// Tasks whose lease was revoked while the worker still runs them: their slots stay taken
    /// until the late report arrives or the worker leaves.
    revoked: HashSet<u128>,
    /// When the worker last heartbeat (Unix ms; its join time before the first).
    last_heartbeat_ms: u64,
    /// How often it was asked to heartbeat.
    pub heartbeat_period: Duration,
    /// Its machine's health as last reported (`None` before the first report).
    pub health: Option<Health>,
    /// Its warm executors by function, as last reported.
    pub warm: Vec<WarmCount>,
    /// The runtimes it can start executors of (all of them until its `Hello` says).
    pub runtimes: Vec<Runtime>,
}

/// How many heartbeat periods without a heartbeat make a worker `stale` (the session drops it
/// at three periods of silence, so it shows as stale for the last of them).
const STALE_AFTER_PERIODS: u64 = 2;

impl WorkerEntry {
    pub fn new(
        name: String,
        address: String,
        slots: u32,
        mode: DispatchMode,
        frames: Outbox,
    ) -> WorkerEntry {
        WorkerEntry {
            name,
            address,
            slots,
            mode,
            frames,
            running: HashSet::new(),
            done: 0,
            credits: 0,
            cached: HashSet::new(),
            draining: false,
            revoked: HashSet::new(),
            last_heartbeat_ms: now_ms(),
            heartbeat_period: Duration::from_secs(1),
            health: None,
            warm: Vec::new(),
            runtimes: Runtime::ALL.to_vec(),
        }
    }

    /// Whether it can start executors of `runtime`.
    pub fn runs(&self, runtime: Runtime) -> bool {
        self.runtimes.contains(&runtime)
    }

    /// The event of `change` to this worker (of id `id`), with its state now.
    pub fn event(&self, id: u64, change: WorkerChange) -> Event {
        let health = HealthView::from(self.health);
        Event::Worker(WorkerEvent {
            kind: change,
            id,
            name: self.name.clone(),
            address: self.address.clone(),
            mode: self.mode,
            slots: self.slots,
            running: self.running.len(),
            cpu_percent: health.cpu_percent,
            memory_used_bytes: health.memory_used_bytes,
            memory_total_bytes: health.memory_total_bytes,
            load1: health.load1,
            last_heartbeat_ms: self.last_heartbeat_ms,
        })
    }

    /// Whether the worker is draining, silent past [`STALE_AFTER_PERIODS`], or ready, at
    /// `now_ms`.
    fn state_at(&self, now_ms: u64) -> WorkerState {
        let period_ms = self.heartbeat_period.as_millis() as u64;
        if self.draining {
            WorkerState::Draining
        } else if now_ms.saturating_sub(self.last_heartbeat_ms) > STALE_AFTER_PERIODS * period_ms {
            WorkerState::Stale
        } else {
            WorkerState::Ready
        }
    }

    fn free(&self) -> u32 {
        if self.draining {
            return 0;
        }
        match self.mode {
            DispatchMode::Push => self
                .slots
                .saturating_sub((self.running.len() + self.revoked.len()) as u32),
            DispatchMode::Pull => self.credits,
        }
    }

    /// Sends a `Prewarm` for `func` if it keeps executors warm even when idle.
    pub fn prewarm(&self, func: &FunctionRecord) {
        // An HTTP service's executors start with its requests (they do not speak the warm
        // frame protocol a prewarmed executor is started with).
        if func.http.is_some() || !self.runs(func.runtime) {
            return;
        }
        if let Some(warm) = func.warm.filter(|w| w.min_warm > 0) {
            self.send_prewarm(func, warm);
        }
    }

    /// Tells the worker to keep no executors of a removed function ready.
    pub fn retire(&self, func: &FunctionRecord) {
        let http = func.http.is_some();
        if let Some(warm) = func.warm.filter(|w| w.min_warm > 0 || http) {
            self.send_prewarm(
                func,
                WarmSpec {
                    min_warm: 0,
                    ..warm
                },
            );
        }
    }

    /// Queues an item for the worker (lost if it has left).
    pub fn send(&self, item: Outbound) {
        let _ = self.frames.send(item);
    }

    fn send_prewarm(&self, func: &FunctionRecord, warm: WarmSpec) {
        let _ = self.frames.send(Outbound::Frame(Frame::Prewarm(Prewarm {
            function: func.name.clone(),
            version: func.version,
            runtime: func.runtime,
            code_hash: func.code_hash,
            timeout_ms: func.timeout_ms,
            env: func.env.clone(),
            warm,
            isolation: func.isolation,
        })));
    }

    pub fn view(&self, id: u64) -> WorkerView {
        WorkerView {
            id,
            name: self.name.clone(),
            address: self.address.clone(),
            dispatch: self.mode,
            slots: self.slots,
            runtimes: self.runtimes.clone(),
            running: self.running.len(),
            done: self.done,
            last_heartbeat: rfc3339(self.last_heartbeat_ms),
            state: self.state_at(now_ms()),
            health: HealthView::from(self.health),
            last_heartbeat_ms: self.last_heartbeat_ms,
        }
    }
}

/// The end of a task as a worker reported it: a copy of its running `record` with the outcome.
fn ended(record: &TaskRecord, outcome: Outcome) -> Finished {
    let o = outcome;
    let mut end = record.clone();
    let r = &mut end;
    r.status = if o.failure.is_none() {
        TaskStatus::Completed
    } else {
        TaskStatus::Failed
    };
    r.finished_ms = Some(now_ms());
    r.exit_code = o.exit_code;
    r.signal = o.signal;
    r.failure = o.failure;
    r.message = o.message;
    r.result_bytes = o.stdout.len() as u64;
    r.stderr_bytes = o.stderr.len() as u64;
    r.run_us = o.run_us;
    r.cold_start = o.cold_start;
    r.init_us = o.init_us;
    r.cpu_us = o.cpu_us;
    r.peak_memory_bytes = o.peak_memory_bytes;
    Finished {
        record: end,
        result: o.stdout,
        logs: o.stderr,
    }
}

/// Answers a sync call's waiters with its end now, before the end is committed: the caller
/// holds the answer, so the commit adds nothing to it, and the next group commit writes the
/// record. Readers see the end from then on ([`Active::current`]). A crash before that commit
/// loses the record (the task may run again at the next start, as any task a crash
/// interrupts), never an acknowledged async task: those are answered only from the store.
fn answer_early(active: &mut Active, finished: &Arc<Finished>) {
    if !active.sync {
        return;
    }
    active.ended = Some(finished.clone());
    for w in active.waiters.drain(..) {
        let _ = w.send(Ok(finished.clone()));
    }
}

/// Everything the broker schedules with.
pub(super) struct State {
    pub functions: HashMap<String, Arc<FunctionRecord>>,
    pub queues: HashMap<String, FnQueue>,
    /// Functions with a task that can start now, in rotation order.
    runnable: VecDeque<String>,
    /// Functions out of the rotation for now: no worker with a free slot runs their runtime
    /// (see [`State::dispatch`]). Still `listed`.
    parked: Vec<String>,
    pub tasks: HashMap<u128, Active>,
    pub workers: BTreeMap<u64, WorkerEntry>,
    pub next_worker: u64,
    next_lease: u64,
    pub next_seq: u64,
    /// The worker picked last, where the round robin resumes.
    last_pick: u64,
    /// Tasks leased to a worker whose end is not yet reported.
    leased: usize,
    pub accepting: bool,
    pub dispatching: bool,
    /// Bytes of payloads that left memory for the store since the heap was last trimmed.
    pub released_bytes: usize,
    /// Where task state changes are published.
    pub events: Events,
    /// Whether a sync call waits for its end's commit (`serve --commit-before-answer`); else it
    /// is answered at the report (see [`answer_early`]).
    pub commit_before_answer: bool,
}

impl State {
    pub fn new(last_seq: u64) -> State {
        State {
            functions: HashMap::new(),
            queues: HashMap::new(),
            runnable: VecDeque::new(),
            parked: Vec::new(),
            tasks: HashMap::new(),
            workers: BTreeMap::new(),
            next_worker: 0,
            // Seeded from the clock so lease numbers never repeat across restarts of the server.
            next_lease: now_ms() << 16,
            next_seq: last_seq,
            last_pick: 0,
            leased: 0,
            accepting: true,
            dispatching: true,
            released_bytes: 0,
            events: Events::default(),
            commit_before_answer: false,
        }
    }

    pub fn running_count(&self) -> usize {
        self.leased
    }

    /// Checks that `count` new calls of `name` may be queued: the server accepts tasks, the
    /// function is live, and its queue has room for all of them. A `queue_limit` of 0 means no
    /// waiting line: the calls are admitted only if, with the tasks already queued or running,
    /// they all fit the function's concurrency cap (always, without a cap). Returns the live
    /// version.
    pub fn admit(&self, name: &str, count: usize) -> Result<Arc<FunctionRecord>, Error> {
        if !self.accepting {
            return Err(Error::ShuttingDown);
        }
        let func = self
            .functions
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownFunction { name: name.into() })?;
        let (waiting, running) = self
            .queues
            .get(name)
            .map_or((0, 0), |q| (q.waiting.len(), q.running as usize));
        if func.queue_limit == 0 {
            // No waiting line: admitted only if every task can take a concurrency slot now.
            return match func.concurrency {
                Some(cap) if waiting + running + count > cap as usize => Err(Error::NoFreeSlot {
                    name: name.into(),
                    concurrency: cap,
                }),
                _ => Ok(func),
            };
        }
        if waiting + count > func.queue_limit as usize {
            return Err(Error::QueueFull {
                name: name.into(),
                limit: func.queue_limit,
                waiting,
                asked: count,
            });
        }
        Ok(func)
    }

    /// Whether a worker that takes tasks (not draining) is connected.
    pub fn has_worker(&self) -> bool {
        self.workers.values().any(|w| !w.draining)
    }

    /// The name of the worker task `id` is leased to, if any.
    pub fn worker_of(&self, id: u128) -> Option<String> {
        let worker = self.tasks.get(&id)?.worker?;
        self.workers.get(&worker).map(|w| w.name.clone())
    }

    /// Whether task `id` is leased, ended, or waits with a connected worker that could run it.
    pub fn can_still_run(&self, id: u128) -> bool {
        match self.tasks.get(&id) {
            // A task ending (given up when its worker left) is answered with its end.
            Some(active)
                if active.worker.is_none() && !active.finishing && active.ended.is_none() =>
            {
                self.has_worker_for(active.func.runtime)
            }
            _ => true,
        }
    }

    /// Whether a worker that takes tasks (not draining) and runs `runtime` is connected.
    pub fn has_worker_for(&self, runtime: Runtime) -> bool {
        self.workers
            .values()
            .any(|w| !w.draining && w.runs(runtime))
    }

    fn queue(&mut self, func: &FunctionRecord) -> &mut FnQueue {
        self.queues
            .entry(func.name.clone())
            .or_insert_with(|| FnQueue::new(func))
    }

    fn make_runnable(&mut self, name: &str) {
        if let Some(q) = self.queues.get_mut(name) {
            if !q.listed && q.can_start() {
                q.listed = true;
                self.runnable.push_back(name.to_owned());
            }
        }
    }

    /// Asks every worker to keep `func`'s `min_warm` executors ready (if it has any).
    pub fn prewarm_all(&self, func: &FunctionRecord) {
        for worker in self.workers.values() {
            worker.prewarm(func);
        }
    }

    /// Makes `func` the live version of its name (its cap applies from now on).
    pub fn set_function(&mut self, func: Arc<FunctionRecord>) {
        if self
            .functions
            .get(&func.name)
            .is_some_and(|live| live.version > func.version)
        {
            // A concurrent registration committed a newer version first.
            return;
        }
        self.queue(&func).cap = func.concurrency;
        let name = func.name.clone();
        self.functions.insert(name.clone(), func);
        self.make_runnable(&name);
    }

    /// Makes `func` the live version of its name even when a newer one is live (a rollback).
    pub fn replace_function(&mut self, func: Arc<FunctionRecord>) {
        self.functions.remove(&func.name);
        self.set_function(func);
    }

    /// Puts a task in its function's queue at its arrival position.
    pub fn enqueue(&mut self, mut active: Active, wait: bool) -> Option<Waiter> {
        let waiter = wait.then(|| active.watch());
        active.sync = wait;
        let id = active.record.id;
        let seq = active.record.seq;
        let name = active.record.function.clone();
        let func = active.func.clone();
        self.events
            .publish(|| Event::Task(TaskEvent::of(&active.record, func.owner)));
        self.tasks.insert(id, active);
        self.insert_waiting(&func, id, seq);
        self.make_runnable(&name);
        waiter
    }

    fn insert_waiting(&mut self, func: &FunctionRecord, id: u128, seq: u64) {
        let tasks = &self.tasks;
        let seq_of = |id: &u128| tasks.get(id).map_or(0, |a| a.record.seq);
        let queue = self
            .queues
            .entry(func.name.clone())
            .or_insert_with(|| FnQueue::new(func));
        if queue.waiting.back().is_none_or(|last| seq_of(last) <= seq) {
            queue.waiting.push_back(id);
        } else {
            let at = queue.waiting.partition_point(|other| seq_of(other) < seq);
            queue.waiting.insert(at, id);
        }
    }

    /// Removes a task that is still waiting in its queue (its QUEUED record never committed).
    pub fn withdraw(&mut self, id: u128) {
        let Some(active) = self.tasks.get(&id) else {
            return;
        };
        let name = active.record.function.clone();
        if let Some(queue) = self.queues.get_mut(&name) {
            if let Some(at) = queue.waiting.iter().position(|t| *t == id) {
                queue.waiting.remove(at);
                self.tasks.remove(&id);
            }
        }
    }

    /// Ends task `id` FAILED `cancelled` with `message` if it waits in its queue (not leased,
    /// not finishing); returns its commit, or `None` when it does not wait.
    pub fn cancel_queued(
        &mut self,
        id: u128,
        message: &str,
        store: &Store,
    ) -> Option<PendingCommit> {
        let active = self.tasks.get(&id)?;
        if active.finishing || active.worker.is_some() {
            return None;
        }
        let queue = self.queues.get_mut(&active.record.function)?;
        let at = queue.waiting.iter().position(|t| *t == id)?;
        queue.waiting.remove(at);
        Some(self.end_cancelled(id, message, store))
    }

    /// Takes up to `max` of the tasks waiting in `name`'s queue that `pick` accepts off it and
    /// ends them FAILED `cancelled` with `message`, in one pass; returns their commits (fewer
    /// than `max` once none is left).
    pub fn cancel_waiting(
        &mut self,
        name: &str,
        pick: impl Fn(&TaskRecord) -> bool,
        max: usize,
        message: &str,
        store: &Store,
    ) -> Vec<(u128, PendingCommit)> {
        let tasks = &self.tasks;
        let Some(queue) = self.queues.get_mut(name) else {
            return Vec::new();
        };
        let mut taken = Vec::new();
        queue.waiting.retain(|id| {
            let waits = tasks
                .get(id)
                .is_some_and(|a| !a.finishing && a.worker.is_none() && pick(&a.record));
            if waits && taken.len() < max {
                taken.push(*id);
                return false;
            }
            true
        });
        taken
            .into_iter()
            .map(|id| (id, self.end_cancelled(id, message, store)))
            .collect()
    }

    /// Tells the worker running task `id` to stop it (it was cancelled while RUNNING, `message`
    /// saying by whom): the worker kills its process and reports it FAILED `cancelled`, and a
    /// lost worker ends it `cancelled` rather than giving it back to its queue. Returns whether
    /// the task is leased (a second cancel sends nothing more).
    pub fn stop_running(&mut self, id: u128, message: &str) -> bool {
        let Some(active) = self.tasks.get_mut(&id) else {
            return false;
        };
        let Some(worker_id) = active.worker.filter(|_| !active.finishing) else {
            return false;
        };
        if active.stopping.is_some() {
            return true;
        }
        active.stopping = Some(message.to_owned());
        let frame = Frame::Cancel {
            task_id: id,
            lease: active.lease,
        };
        if let Some(worker) = self.workers.get(&worker_id) {
            worker.send(Outbound::Frame(frame));
        }
        true
    }

    /// Takes every task waiting in `name`'s queue off it at once (its function was removed):
    /// none of them can start from now on. [`State::cancel_taken`] ends them in steps.
    pub fn take_waiting(&mut self, name: &str) -> VecDeque<u128> {
        self.queues
            .get_mut(name)
            .map(|q| std::mem::take(&mut q.waiting))
            .unwrap_or_default()
    }

    /// Ends the tasks of `ids` that [`State::take_waiting`] took, FAILED `cancelled` with
    /// `message` (a task that ended otherwise meanwhile is left alone); returns their commits.
    pub fn cancel_taken(
        &mut self,
        ids: &[u128],
        message: &str,
        store: &Store,
    ) -> Vec<(u128, PendingCommit)> {
        let mut commits = Vec::with_capacity(ids.len());
        for &id in ids {
            let waits = self
                .tasks
                .get(&id)
                .is_some_and(|a| !a.finishing && a.worker.is_none());
            if waits {
                commits.push((id, self.end_cancelled(id, message, store)));
            }
        }
        commits
    }

    /// Stops every RUNNING task of function `name` that `pick` accepts ([`State::stop_running`]
    /// with `message`, or the message of an earlier cancel already stopping it); returns a
    /// waiter for each one's durable end.
    pub fn stop_running_of(
        &mut self,
        name: &str,
        pick: impl Fn(&TaskRecord) -> bool,
        message: &str,
    ) -> Vec<super::Waiter> {
        let running: Vec<u128> = self
            .workers
            .values()
            .flat_map(|w| w.running.iter().copied())
            .filter(|id| {
                self.tasks
                    .get(id)
                    .is_some_and(|a| a.record.function == name && !a.finishing && pick(&a.record))
            })
            .collect();
        let mut ends = Vec::with_capacity(running.len());
        for id in running {
            // One already being stopped (an earlier cancel) is waited for again, not re-sent.
            if self.stop_running(id, message) {
                ends.extend(self.tasks.get_mut(&id).map(Active::watch_durable));
            }
        }
        ends
    }

    /// Ends task `id`, which is off its queue and not leased, FAILED `cancelled`: queues the
    /// end to the store (readers see it QUEUED until that commits, as a reported end is seen
    /// RUNNING). Returns the commit to wait on.
    fn end_cancelled(&mut self, id: u128, message: &str, store: &Store) -> PendingCommit {
        let active = self.tasks.get_mut(&id).expect("a waiting task is active");
        active.finishing = true;
        let mut end = active.record.clone();
        end.status = TaskStatus::Failed;
        end.failure = Some(FailureReason::Cancelled);
        end.message = Some(message.to_owned());
        end.finished_ms = Some(now_ms());
        let finished = Arc::new(Finished {
            record: end,
            result: Bytes::new(),
            logs: Bytes::new(),
        });
        self.commit_end(id, finished, store)
    }

    /// Picks the worker for a task of code `hash`: one with a free slot, preferring one that
    /// holds the code, then the least loaded, then round robin from the last pick.
    ///
    /// `Err(true)` when no such worker runs `runtime` though one has a free slot, `Err(false)`
    /// when no worker has a free slot.
    fn pick_worker(&self, hash: &CodeHash, runtime: Runtime) -> Result<u64, bool> {
        let after = self.workers.range(self.last_pick + 1..);
        let before = self.workers.range(..=self.last_pick);
        let mut best: Option<(u64, bool, usize, u32)> = None;
        let mut free_elsewhere = false;
        for (&id, w) in after.chain(before) {
            if w.free() == 0 {
                continue;
            }
            if !w.runs(runtime) {
                free_elsewhere = true;
                continue;
            }
            let cold = !w.cached.contains(hash);
            let (running, slots) = (w.running.len(), w.slots.max(1));
            let better = match best {
                None => true,
                Some((_, b_cold, b_running, b_slots)) => {
                    // Less loaded means a smaller running/slots ratio; compare by cross product.
                    (cold, running * b_slots as usize) < (b_cold, b_running * slots as usize)
                }
            };
            if better {
                best = Some((id, cold, running, slots));
            }
        }
        best.map(|(id, ..)| id).ok_or(free_elsewhere)
    }

    /// Leases queued tasks to workers with free slots until either runs out.
    ///
    /// A function whose runtime no worker with a free slot runs is set aside (`parked`) while
    /// the others go on; every dispatch tries the parked ones again first, since a slot may
    /// have freed or a worker joined that runs them.
    pub fn dispatch(&mut self, store: &Store) {
        if !self.dispatching {
            return;
        }
        for name in std::mem::take(&mut self.parked).into_iter().rev() {
            self.runnable.push_front(name);
        }
        while let Some((name, head, hash, runtime)) = self.next_runnable() {
            let worker_id = match self.pick_worker(&hash, runtime) {
                Ok(id) => id,
                Err(true) => {
                    self.parked.push(name);
                    continue;
                }
                Err(false) => {
                    self.runnable.push_front(name);
                    return;
                }
            };
            self.take_head(name);
            let frame = self.lease(head, worker_id, store);
            self.hand_over(worker_id, head, hash, frame);
        }
    }

    /// The next function in the rotation whose queue can start a task, with its head task and
    /// that task's code hash. Functions that cannot start now leave the rotation; a head that is
    /// no longer active is dropped from its queue.
    fn next_runnable(&mut self) -> Option<(String, u128, CodeHash, Runtime)> {
        while let Some(name) = self.runnable.pop_front() {
            let Some(queue) = self.queues.get_mut(&name) else {
                continue;
            };
            if !queue.can_start() {
                queue.listed = false;
                continue;
            }
            let head = queue.waiting[0];
            let Some((hash, runtime)) = self
                .tasks
                .get(&head)
                .map(|a| (a.func.code_hash, a.func.runtime))
            else {
                queue.waiting.pop_front();
                self.runnable.push_front(name);
                continue;
            };
            return Some((name, head, hash, runtime));
        }
        None
    }

    /// Takes the head task off `name`'s queue as running, and keeps the function in the
    /// rotation (at its end) only if it can start another.
    fn take_head(&mut self, name: String) {
        let queue = self.queues.get_mut(&name).expect("queue looked up above");
        queue.waiting.pop_front();
        queue.running += 1;
        if queue.can_start() {
            self.runnable.push_back(name);
        } else {
            queue.listed = false;
        }
    }

    /// Leases task `id` to `worker_id` under a new lease number and deadline, queues its
    /// RUNNING record to the store, and returns the assignment for the worker (without its
    /// payload when that waits in the store).
    fn lease(&mut self, id: u128, worker_id: u64, store: &Store) -> Outbound {
        self.next_lease += 1;
        self.last_pick = worker_id;
        self.leased += 1;
        let lease = self.next_lease;
        let active = self.tasks.get_mut(&id).expect("queued task is active");
        active.lease = lease;
        active.worker = Some(worker_id);
        active.deadline =
            Some(Instant::now() + Duration::from_millis(active.func.timeout_ms) + LEASE_GRACE);
        let r = &mut active.record;
        r.status = TaskStatus::Running;
        r.attempts += 1;
        r.started_ms = Some(now_ms());
        r.worker = self.workers.get(&worker_id).map(|w| w.name.clone());
        let assignment = Assignment {
            task_id: id,
            lease,
            function: active.func.name.clone(),
            version: active.func.version,
            runtime: active.func.runtime,
            code_hash: active.func.code_hash,
            timeout_ms: active.func.timeout_ms,
            env: active.func.env.clone(),
            payload: active.payload.clone().unwrap_or_default(),
            warm: active.func.warm,
            json: active.record.json,
            isolation: active.func.isolation,
        };
        let item = if active.payload.is_some() {
            Outbound::Frame(Frame::Assign(assignment))
        } else {
            Outbound::Unloaded(assignment)
        };
        store.write_later(Write::Update {
            record: active.record.clone(),
        });
        let owner = active.func.owner;
        self.events
            .publish(|| Event::Task(TaskEvent::of(&active.record, owner)));
        item
    }

    /// Takes a slot (or a pull credit) of `worker_id` for task `id` and sends it the task.
    fn hand_over(&mut self, worker_id: u64, id: u128, hash: CodeHash, item: Outbound) {
        let worker = self
            .workers
            .get_mut(&worker_id)
            .expect("picked worker exists");
        worker.running.insert(id);
        worker.cached.insert(hash);
        if worker.mode == DispatchMode::Pull {
            worker.credits -= 1;
        }
        // A closed channel means the session is ending; its detach re-queues this task.
        let _ = worker.frames.send(item);
    }

    /// Lets the payloads of tasks `ids` wait in the store (their QUEUED records, payloads with
    /// them, are committed), keeping only the small ones in memory.
    pub fn payloads_stored(&mut self, ids: impl IntoIterator<Item = u128>) {
        for id in ids {
            if let Some(active) = self.tasks.get_mut(&id) {
                let len = active.payload.as_ref().map_or(0, Bytes::len);
                if len > INLINE_PAYLOAD {
                    active.payload = None;
                    self.released_bytes += len;
                }
            }
        }
    }

    /// Takes task `id` back from `worker_id` when its assignment under `lease` never reached the
    /// worker: it is queued again, or fails once it has used every attempt (then returns the
    /// commit to wait on). A task no longer under that lease is left alone.
    pub fn take_back(
        &mut self,
        worker_id: u64,
        id: u128,
        lease: u64,
        why: &str,
        store: &Store,
    ) -> Option<PendingCommit> {
        let active = self.tasks.get(&id)?;
        if active.finishing || active.lease != lease || active.worker != Some(worker_id) {
            return None;
        }
        self.revoke(id, why, store)
    }

    /// Applies a worker's report; returns the commit to wait on, or `None` if it was refused.
    pub fn finish(
        &mut self,
        worker_id: u64,
        report: Report,
        store: &Store,
    ) -> Option<PendingCommit> {
        let id = report.task_id;
        if let Some(why) = self.refusal(worker_id, &report) {
            let task = uuid::Uuid::from_u128(id);
            tracing::warn!(%task, worker = worker_id, lease = report.lease, "refused a report for {why}");
            // A slot held for a revoked lease is free once its late report arrives.
            if let Some(w) = self.workers.get_mut(&worker_id) {
                w.revoked.remove(&id);
            }
            return None;
        }
        let active = self.tasks.get_mut(&id).expect("checked by refusal");
        active.finishing = true;
        // Readers keep seeing RUNNING until the end is committed: the end record is a copy.
        let mut end = ended(&active.record, report.outcome);
        if end.record.failure == Some(FailureReason::Cancelled) {
            if let Some(why) = active.stopping.take() {
                end.record.message = Some(why);
            }
        }
        let finished = Arc::new(end);
        let name = finished.record.function.clone();
        self.release(worker_id, id, &name, true);
        Some(self.commit_end(id, finished, store))
    }

    /// Queues task `id`'s end to the store; its sync caller has it at once unless
    /// `commit_before_answer` (see [`answer_early`]). Returns the commit to wait on.
    fn commit_end(&mut self, id: u128, finished: Arc<Finished>, store: &Store) -> PendingCommit {
        let ack = store.submit(Write::Finish {
            record: finished.record.clone(),
            result: finished.result.clone(),
            logs: finished.logs.clone(),
        });
        if !self.commit_before_answer {
            if let Some(active) = self.tasks.get_mut(&id) {
                answer_early(active, &finished);
            }
        }
        PendingCommit { ack, finished }
    }

    /// Why a report must be refused: its task is not active, already finishing, or leased under
    /// another lease or to another worker. `None` accepts it.
    fn refusal(&self, worker_id: u64, report: &Report) -> Option<&'static str> {
        match self.tasks.get(&report.task_id) {
            None => Some("a task that is not active"),
            Some(a) if a.finishing || a.lease != report.lease || a.worker != Some(worker_id) => {
                Some("a stale lease")
            }
            Some(_) => None,
        }
    }

    /// Frees the slot and concurrency unit a leased task held.
    fn release(&mut self, worker_id: u64, id: u128, function: &str, done: bool) {
        if let Some(w) = self.workers.get_mut(&worker_id) {
            w.running.remove(&id);
            if done {
                w.done += 1;
            }
        }
        if let Some(q) = self.queues.get_mut(function) {
            q.running = q.running.saturating_sub(1);
        }
        self.leased = self.leased.saturating_sub(1);
        self.make_runnable(function);
    }

    /// Removes a worker; its leased tasks go back to their queues at their arrival position,
    /// or fail with `worker_lost` once they have used every attempt.
    pub fn detach_worker(&mut self, worker_id: u64, store: &Store) -> Vec<(u128, PendingCommit)> {
        let Some(worker) = self.workers.get(&worker_id) else {
            return Vec::new();
        };
        let mut lost: Vec<u128> = worker.running.iter().copied().collect();
        if !self.accepting {
            // Stopping: the tasks stay RUNNING in the store and run again at the next start;
            // they must not spend an attempt or fail here.
            self.workers.remove(&worker_id);
            return Vec::new();
        }
        lost.sort_by_key(|id| self.tasks.get(id).map_or(0, |a| a.record.seq));
        let commits = lost
            .into_iter()
            .filter_map(|id| {
                self.revoke(id, "the worker running it was lost", store)
                    .map(|c| (id, c))
            })
            .collect();
        self.workers.remove(&worker_id);
        commits
    }

    /// Revokes every lease whose deadline has passed (the worker holds the task far past its
    /// timeout); returns the commits of tasks that thereby failed for good.
    pub fn revoke_expired(&mut self, now: Instant, store: &Store) -> Vec<(u128, PendingCommit)> {
        let mut expired: Vec<(u64, u128)> = self
            .tasks
            .iter()
            .filter(|(_, a)| {
                a.worker.is_some() && !a.finishing && a.deadline.is_some_and(|d| d <= now)
            })
            .map(|(id, a)| (a.record.seq, *id))
            .collect();
        expired.sort_unstable();
        expired
            .into_iter()
            .filter_map(|(_, id)| {
                tracing::warn!(task = %uuid::Uuid::from_u128(id), "lease expired; revoking it");
                let worker = self.tasks.get(&id).and_then(|a| a.worker);
                let commit = self.revoke(id, "its lease expired", store).map(|c| (id, c));
                if let Some(w) = worker.and_then(|w| self.workers.get_mut(&w)) {
                    w.revoked.insert(id);
                }
                commit
            })
            .collect()
    }

    /// Takes a leased task back from its worker: QUEUED again at its arrival position, or FAILED
    /// `worker_lost` when it has used every attempt, or `cancelled` when its function was removed
    /// meanwhile, so that the removed code never starts again (then returns the commit to wait
    /// on).
    fn revoke(&mut self, id: u128, why: &str, store: &Store) -> Option<PendingCommit> {
        let active = self.tasks.get_mut(&id)?;
        let worker_id = active.worker.take()?;
        let func = active.func.clone();
        active.lease = 0;
        active.deadline = None;
        let removed = !self.functions.contains_key(&func.name);
        let stopping = active.stopping.take();
        if removed || stopping.is_some() || active.record.attempts >= func.max_attempts {
            active.finishing = true;
            let r = &mut active.record;
            r.status = TaskStatus::Failed;
            if let Some(stopping) = stopping {
                r.failure = Some(FailureReason::Cancelled);
                r.message = Some(format!("{stopping}; {why} before it stopped"));
            } else if removed {
                r.failure = Some(FailureReason::Cancelled);
                r.message = Some(format!(
                    "{why}; its function was removed, so it is not started again"
                ));
            } else {
                r.failure = Some(FailureReason::WorkerLost);
                r.message = Some(format!("{why}, on each of {} attempts", r.attempts));
            }
            let now = now_ms();
            r.finished_ms = Some(now);
            // It ran (as far as anyone knows) from its last start until it was given up, in a
            // fresh process unless its function keeps executors warm.
            r.run_us = r.started_ms.map_or(0, |at| now.saturating_sub(at) * 1000);
            r.cold_start = func.warm.is_none();
            let finished = Arc::new(Finished {
                record: r.clone(),
                result: Bytes::new(),
                logs: Bytes::new(),
            });
            self.release(worker_id, id, &func.name, false);
            Some(self.commit_end(id, finished, store))
        } else {
            active.record.status = TaskStatus::Queued;
            active.record.worker = None;
            let seq = active.record.seq;
            store.write_later(Write::Update {
                record: active.record.clone(),
            });
            self.events
                .publish(|| Event::Task(TaskEvent::of(&active.record, func.owner)));
            self.release(worker_id, id, &func.name, false);
            self.insert_waiting(&func, id, seq);
            self.make_runnable(&func.name);
            None
        }
    }

    /// Grants a pull-mode worker `slots` more task credits, never more than its slots.
    pub fn grant_credits(&mut self, worker_id: u64, slots: u32) {
        if let Some(w) = self.workers.get_mut(&worker_id) {
            w.credits = w.credits.saturating_add(slots).min(w.slots);
        }
    }

    /// Records a heartbeat from a worker.
    pub fn heartbeat(&mut self, worker_id: u64) {
        if let Some(w) = self.workers.get_mut(&worker_id) {
            w.last_heartbeat_ms = now_ms();
        }
    }

    /// Records a worker's report of its warm executors.
    pub fn warm(&mut self, worker_id: u64, warm: Vec<WarmCount>) {
        if let Some(w) = self.workers.get_mut(&worker_id) {
            w.warm = warm;
        }
    }

    /// Records a worker's health report and publishes it.
    pub fn health(&mut self, worker_id: u64, health: Health) {
        if let Some(w) = self.workers.get_mut(&worker_id) {
            w.health = Some(health);
            self.events
                .publish(|| w.event(worker_id, WorkerChange::Health));
        }
    }
}

#[cfg(test)]
mod tests {
    //! The scheduling state on its own: a real store in a temporary directory takes its writes,
    //! workers are channels whose frames the tests read back.

    use super::*;

    use tokio::sync::mpsc;

    use crate::proto::{Isolation, Runtime};

    /// A state, the store it writes to, and the directory holding that store.
    struct Fixture {
        state: State,
        store: Store,
        _dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().expect("temporary directory");
            let store = Store::open(dir.path()).expect("open store");
            Fixture {
                state: State::new(0),
                store,
                _dir: dir,
            }
        }

        /// Makes a function live: code hash `[code; 32]`, timeout 1 s.
        fn function(
            &mut self,
            name: &str,
            code: u8,
            concurrency: Option<u32>,
        ) -> Arc<FunctionRecord> {
            let func = Arc::new(FunctionRecord {
                name: name.into(),
                version: 1,
                runtime: Runtime::Shell,
                code_hash: [code; 32],
                code_bytes: 1,
                timeout_ms: 1000,
                concurrency,
                queue_limit: 3,
                max_attempts: 2,
                env: Vec::new(),
                created_ms: 0,
                warm: None,
                isolation: Isolation::default(),
                owner: 0,
                display_name: None,
                http: None,
            });
            self.state.set_function(func.clone());
            func
        }

        /// Queues a task of `func` with arrival number `seq`; its id is `seq` too.
        fn enqueue(&mut self, func: &Arc<FunctionRecord>, seq: u64) -> u128 {
            let record = TaskRecord::queued(u128::from(seq), seq, func.name.clone(), func.version);
            let id = record.id;
            self.state
                .enqueue(Active::new(record, Some(Bytes::new()), func.clone()), false);
            id
        }

        /// Connects a worker; returns its id and the frames sent to it.
        /// Marks task `id` as running on `worker` (a slot it holds).
        fn occupy(&mut self, worker: u64, id: u128) {
            let entry = self.state.workers.get_mut(&worker).expect("worker");
            entry.running.insert(id);
        }

        fn worker(
            &mut self,
            slots: u32,
            mode: DispatchMode,
        ) -> (u64, mpsc::UnboundedReceiver<Outbound>) {
            let (frames, outbox) = mpsc::unbounded_channel();
            self.state.next_worker += 1;
            let id = self.state.next_worker;
            let entry = WorkerEntry::new(format!("w{id}"), "local".into(), slots, mode, frames);
            self.state.workers.insert(id, entry);
            (id, outbox)
        }

        fn dispatch(&mut self) {
            self.state.dispatch(&self.store);
        }

        /// Reports task `id` done (successfully) by `worker` under `lease`.
        fn report(&mut self, worker: u64, id: u128, lease: u64) -> Option<PendingCommit> {
            self.state
                .finish(worker, report(id, lease, None), &self.store)
        }

        /// Past the deadline of every lease handed out so far.
        fn expire(&mut self) -> Vec<(u128, PendingCommit)> {
            let later =
                Instant::now() + Duration::from_secs(1) + LEASE_GRACE + Duration::from_millis(1);
            self.state.revoke_expired(later, &self.store)
        }

        fn status(&self, id: u128) -> TaskStatus {
            self.state.tasks[&id].record.status
        }

        fn waiting(&self, function: &str) -> Vec<u128> {
            self.state.queues[function]
                .waiting
                .iter()
                .copied()
                .collect()
        }
    }

    fn report(id: u128, lease: u64, failure: Option<FailureReason>) -> Report {
        Report {
            task_id: id,
            lease,
            outcome: Outcome {
                failure,
                exit_code: Some(if failure.is_some() { 1 } else { 0 }),
                signal: None,
                message: None,
                stdout: Bytes::from_static(b"out"),
                stderr: Bytes::from_static(b"err!"),
                run_us: 7,
                cold_start: true,
                init_us: 3,
                cpu_us: 2,
                peak_memory_bytes: 1 << 20,
            },
        }
    }

    /// The tasks assigned on a worker's channel so far, as `(task id, lease)`.
    fn assigned(frames: &mut mpsc::UnboundedReceiver<Outbound>) -> Vec<(u128, u64)> {
        let mut out = Vec::new();
        while let Ok(item) = frames.try_recv() {
            match item {
                Outbound::Frame(Frame::Assign(a)) | Outbound::Unloaded(a) => {
                    out.push((a.task_id, a.lease));
                }
                Outbound::Frame(_) => {}
            }
        }
        out
    }

    /// Queues a task of `func` for a sync caller (`seq` as for `enqueue`); returns its id and
    /// the caller's waiter.
    fn enqueue_sync(fx: &mut Fixture, func: &Arc<FunctionRecord>, seq: u64) -> (u128, Waiter) {
        let record = TaskRecord::queued(u128::from(seq), seq, func.name.clone(), func.version);
        let id = record.id;
        let active = Active::new(record, Some(Bytes::new()), func.clone());
        let waiter = fx
            .state
            .enqueue(active, true)
            .expect("a sync call has a waiter");
        (id, waiter)
    }

    #[test]
    fn a_sync_caller_is_answered_at_the_report_and_readers_see_the_end_from_then() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let (worker, mut frames) = fx.worker(2, DispatchMode::Push);
        let (sync_id, mut sync_waiter) = enqueue_sync(&mut fx, &f, 1);
        let async_id = fx.enqueue(&f, 2);
        let mut async_watcher = fx.state.tasks.get_mut(&async_id).expect("active").watch();
        let sync_active = fx.state.tasks.get_mut(&sync_id).expect("active");
        let mut canceller = sync_active.watch_durable();
        fx.dispatch();
        for (id, lease) in assigned(&mut frames) {
            let _pending = fx.report(worker, id, lease).expect("accepted");
        }
        // The sync caller holds its end before the commit; the async task's watcher does not.
        let answered = sync_waiter
            .try_recv()
            .expect("answered")
            .expect("no store error");
        assert_eq!(answered.record.status, TaskStatus::Completed);
        assert_eq!(&answered.result[..], b"out");
        assert!(async_watcher.try_recv().is_err());
        // A durable waiter (a cancel's) hears of it only from the commit.
        assert!(canceller.try_recv().is_err());
        let durable = fx
            .state
            .tasks
            .get_mut(&sync_id)
            .expect("active")
            .take_waiters();
        assert_eq!(
            durable.len(),
            1,
            "the durable waiter is kept for the commit"
        );
        // Readers of the sync task see its end; a late watcher is answered at once.
        let active = &fx.state.tasks[&sync_id];
        assert_eq!(active.current().status, TaskStatus::Completed);
        let mut late = fx.state.tasks.get_mut(&sync_id).expect("active").watch();
        assert!(late.try_recv().is_ok());
        assert_eq!(
            fx.state.tasks[&async_id].current().status,
            TaskStatus::Running
        );
    }

    #[test]
    fn with_commit_before_answer_a_sync_caller_waits_for_the_commit() {
        let mut fx = Fixture::new();
        fx.state.commit_before_answer = true;
        let f = fx.function("f", 1, None);
        let (worker, mut frames) = fx.worker(1, DispatchMode::Push);
        let (id, mut waiter) = enqueue_sync(&mut fx, &f, 1);
        fx.dispatch();
        let (_, lease) = assigned(&mut frames)[0];
        let _pending = fx.report(worker, id, lease).expect("accepted");
        assert!(waiter.try_recv().is_err());
        assert_eq!(fx.state.tasks[&id].current().status, TaskStatus::Running);
    }

    #[test]
    fn the_least_loaded_worker_gets_the_task() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let (busy, mut busy_frames) = fx.worker(2, DispatchMode::Push);
        let (idle, mut idle_frames) = fx.worker(2, DispatchMode::Push);
        fx.occupy(busy, 99);
        let id = fx.enqueue(&f, 1);
        fx.dispatch();
        assert!(assigned(&mut busy_frames).is_empty());
        assert_eq!(assigned(&mut idle_frames).len(), 1);
        assert_eq!(fx.state.tasks[&id].worker, Some(idle));
    }

    #[test]
    fn load_compares_running_tasks_against_slots() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        // One of two slots taken is a heavier load than one of four.
        let (small, _small_frames) = fx.worker(2, DispatchMode::Push);
        let (large, _large_frames) = fx.worker(4, DispatchMode::Push);
        fx.occupy(small, 98);
        fx.occupy(large, 99);
        let id = fx.enqueue(&f, 1);
        fx.dispatch();
        assert_eq!(fx.state.tasks[&id].worker, Some(large));
    }

    #[test]
    fn a_worker_holding_the_code_wins_over_a_less_loaded_one() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let (cold, _cold_frames) = fx.worker(2, DispatchMode::Push);
        let (warm, _warm_frames) = fx.worker(2, DispatchMode::Push);
        let w = fx.state.workers.get_mut(&warm).expect("worker");
        w.cached.insert(f.code_hash);
        w.running.insert(99);
        let id = fx.enqueue(&f, 1);
        fx.dispatch();
        assert_eq!(fx.state.tasks[&id].worker, Some(warm));
        assert_eq!(fx.state.workers[&cold].running.len(), 0);
    }

    #[test]
    fn equally_loaded_workers_take_turns() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let (first, mut first_frames) = fx.worker(1, DispatchMode::Push);
        let (second, mut second_frames) = fx.worker(1, DispatchMode::Push);
        for w in fx.state.workers.values_mut() {
            w.cached.insert(f.code_hash);
        }
        let mut picks = Vec::new();
        for seq in 1..=4 {
            let id = fx.enqueue(&f, seq);
            fx.dispatch();
            let worker = fx.state.tasks[&id].worker.expect("leased");
            picks.push(worker);
            let frames = if worker == first {
                &mut first_frames
            } else {
                &mut second_frames
            };
            let (_, lease) = assigned(frames)[0];
            fx.report(worker, id, lease).expect("accepted");
        }
        assert_eq!(picks, [first, second, first, second]);
    }

    #[test]
    fn tasks_start_in_arrival_order_whatever_order_they_are_queued_in() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        for seq in [3, 1, 2] {
            fx.enqueue(&f, seq);
        }
        assert_eq!(fx.waiting("f"), [1, 2, 3]);
        let (_, mut frames) = fx.worker(3, DispatchMode::Push);
        fx.dispatch();
        let order: Vec<u128> = assigned(&mut frames)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(order, [1, 2, 3]);
    }

    #[test]
    fn a_task_whose_worker_left_goes_ahead_of_newer_work() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let (lost, _lost_frames) = fx.worker(1, DispatchMode::Push);
        let old = fx.enqueue(&f, 1);
        fx.dispatch();
        fx.enqueue(&f, 2);
        fx.enqueue(&f, 3);
        let failed = fx.state.detach_worker(lost, &fx.store);
        assert!(failed.is_empty());
        assert_eq!(fx.waiting("f"), [old, 2, 3]);
        assert_eq!(fx.status(old), TaskStatus::Queued);
        assert_eq!(fx.state.tasks[&old].record.attempts, 1);
        let (_, mut frames) = fx.worker(1, DispatchMode::Push);
        fx.dispatch();
        assert_eq!(assigned(&mut frames)[0].0, old);
    }

    #[test]
    fn an_expired_lease_puts_the_task_back_in_its_queue() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let (_, _frames) = fx.worker(1, DispatchMode::Push);
        let id = fx.enqueue(&f, 1);
        fx.dispatch();
        assert_eq!(fx.status(id), TaskStatus::Running);
        assert!(fx.expire().is_empty());
        let active = &fx.state.tasks[&id];
        assert_eq!(active.record.status, TaskStatus::Queued);
        assert_eq!((active.lease, active.worker), (0, None));
        assert_eq!(fx.waiting("f"), [id]);
        assert_eq!(fx.state.running_count(), 0);
    }

    #[test]
    fn a_stopped_task_gets_a_cancel_frame_once_and_ends_cancelled_when_its_lease_expires() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let (_, mut frames) = fx.worker(1, DispatchMode::Push);
        let id = fx.enqueue(&f, 1);
        fx.dispatch();
        let lease = assigned(&mut frames)[0].1;
        assert!(fx.state.stop_running(id, "cancelled by x while it ran"));
        assert!(fx.state.stop_running(id, "again"));
        let cancels: Vec<(u128, u64)> = std::iter::from_fn(|| frames.try_recv().ok())
            .filter_map(|item| match item {
                Outbound::Frame(Frame::Cancel { task_id, lease }) => Some((task_id, lease)),
                _ => None,
            })
            .collect();
        assert_eq!(cancels, [(id, lease)], "one Cancel, under the task's lease");
        // Lost before it answers: cancelled with the first message, not queued again.
        let ended = fx.expire();
        assert_eq!(ended.len(), 1);
        let end = &ended[0].1.finished.record;
        assert_eq!(end.failure, Some(FailureReason::Cancelled));
        let message = end.message.as_deref().unwrap_or_default();
        assert!(
            message.starts_with("cancelled by x while it ran; "),
            "{message}"
        );
        assert!(fx.waiting("f").is_empty());
    }

    #[test]
    fn a_removed_functions_waiting_tasks_never_start_and_end_cancelled_in_steps() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let ids: Vec<u128> = (1..=3).map(|seq| fx.enqueue(&f, seq)).collect();
        let taken: Vec<u128> = fx.state.take_waiting("f").into();
        assert_eq!(taken, ids);
        let (_, mut frames) = fx.worker(1, DispatchMode::Push);
        fx.dispatch();
        assert!(assigned(&mut frames).is_empty(), "nothing taken starts");
        let first = fx.state.cancel_taken(&taken[..2], "gone", &fx.store);
        assert_eq!(first.len(), 2);
        // A task already ending is left alone; the rest end cancelled.
        let again = fx.state.cancel_taken(&taken, "gone", &fx.store);
        assert_eq!(
            again.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            [ids[2]]
        );
        let end = &again[0].1.finished.record;
        assert_eq!(end.failure, Some(FailureReason::Cancelled));
    }

    #[test]
    fn only_a_waiting_task_is_cancelled_and_it_never_starts() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let (running, queued, last) = (fx.enqueue(&f, 1), fx.enqueue(&f, 2), fx.enqueue(&f, 3));
        let (_, mut frames) = fx.worker(1, DispatchMode::Push);
        fx.dispatch();
        assert_eq!(fx.status(running), TaskStatus::Running);
        // A leased task is not cancelled; a waiting one is, and only once.
        assert!(fx.state.cancel_queued(running, "no", &fx.store).is_none());
        let commit = fx
            .state
            .cancel_queued(queued, "why", &fx.store)
            .expect("waiting");
        let end = &commit.finished.record;
        assert_eq!(
            (end.status, end.failure),
            (TaskStatus::Failed, Some(FailureReason::Cancelled))
        );
        assert_eq!(end.message.as_deref(), Some("why"));
        assert!(fx.state.tasks[&queued].is_finishing());
        assert!(fx.state.cancel_queued(queued, "again", &fx.store).is_none());
        assert_eq!(fx.waiting("f"), [last]);
        // When the slot frees, the next task to start is the one after the cancelled one.
        let lease = assigned(&mut frames)[0].1;
        assert!(fx.report(1, running, lease).is_some());
        fx.dispatch();
        assert_eq!(assigned(&mut frames)[0].0, last);
    }

    #[test]
    fn a_functions_waiting_tasks_are_cancelled_in_steps_by_filter() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let ids: Vec<u128> = (1..=5).map(|seq| fx.enqueue(&f, seq)).collect();
        let odd = |r: &TaskRecord| r.seq % 2 == 1;
        let step = fx.state.cancel_waiting("f", odd, 2, "why", &fx.store);
        assert_eq!(
            step.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            [ids[0], ids[2]]
        );
        let step = fx.state.cancel_waiting("f", odd, 2, "why", &fx.store);
        assert_eq!(step.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [ids[4]]);
        assert_eq!(fx.waiting("f"), [ids[1], ids[3]]);
        assert!(
            fx.state
                .cancel_waiting("g", |_| true, 9, "why", &fx.store)
                .is_empty()
        );
    }

    #[test]
    fn a_lease_is_kept_until_its_deadline() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let (worker, _frames) = fx.worker(1, DispatchMode::Push);
        let id = fx.enqueue(&f, 1);
        fx.dispatch();
        assert!(
            fx.state
                .revoke_expired(Instant::now(), &fx.store)
                .is_empty()
        );
        assert_eq!(fx.status(id), TaskStatus::Running);
        assert_eq!(fx.state.tasks[&id].worker, Some(worker));
    }

    #[test]
    fn an_expired_lease_on_the_last_attempt_fails_the_task_as_worker_lost() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let (_, _frames) = fx.worker(1, DispatchMode::Push);
        let id = fx.enqueue(&f, 1);
        fx.dispatch();
        fx.expire();
        // The first worker's slot stays taken by the revoked run: the retry goes elsewhere.
        let (_, _retry_frames) = fx.worker(1, DispatchMode::Push);
        fx.dispatch();
        let failed = fx.expire();
        assert_eq!(failed.len(), 1);
        let (failed_id, commit) = &failed[0];
        assert_eq!(*failed_id, id);
        let record = &commit.finished.record;
        assert_eq!(record.status, TaskStatus::Failed);
        assert_eq!(record.failure, Some(FailureReason::WorkerLost));
        assert_eq!(record.attempts, 2);
        assert_eq!(
            record.message.as_deref(),
            Some("its lease expired, on each of 2 attempts")
        );
        assert!(fx.waiting("f").is_empty());
    }

    #[test]
    fn a_report_under_a_revoked_lease_is_refused() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let (slow, mut slow_frames) = fx.worker(1, DispatchMode::Push);
        let id = fx.enqueue(&f, 1);
        fx.dispatch();
        let (_, old_lease) = assigned(&mut slow_frames)[0];
        fx.expire();
        let (fresh, mut fresh_frames) = fx.worker(1, DispatchMode::Push);
        fx.dispatch();
        let (_, new_lease) = assigned(&mut fresh_frames)[0];
        assert_ne!(old_lease, new_lease);
        assert!(fx.report(slow, id, old_lease).is_none());
        assert_eq!(fx.status(id), TaskStatus::Running);
        assert_eq!(fx.state.tasks[&id].lease, new_lease);
        let commit = fx
            .report(fresh, id, new_lease)
            .expect("current lease accepted");
        assert_eq!(commit.finished.record.status, TaskStatus::Completed);
    }

    #[test]
    fn a_report_from_another_worker_is_refused() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let (_, mut frames) = fx.worker(1, DispatchMode::Push);
        let (other, _other_frames) = fx.worker(1, DispatchMode::Push);
        fx.state.workers.get_mut(&other).expect("worker").draining = true;
        let id = fx.enqueue(&f, 1);
        fx.dispatch();
        let (_, lease) = assigned(&mut frames)[0];
        assert!(fx.report(other, id, lease).is_none());
        assert_eq!(fx.status(id), TaskStatus::Running);
    }

    #[test]
    fn a_report_for_an_unknown_task_is_refused() {
        let mut fx = Fixture::new();
        let (worker, _frames) = fx.worker(1, DispatchMode::Push);
        assert!(fx.report(worker, 42, 1).is_none());
    }

    #[test]
    fn a_second_report_of_the_same_lease_is_refused() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let (worker, mut frames) = fx.worker(1, DispatchMode::Push);
        let id = fx.enqueue(&f, 1);
        fx.dispatch();
        let (_, lease) = assigned(&mut frames)[0];
        assert!(fx.report(worker, id, lease).is_some());
        assert!(fx.report(worker, id, lease).is_none());
        assert_eq!(fx.state.workers[&worker].done, 1);
    }

    #[test]
    fn a_report_ends_the_task_with_its_outcome_and_frees_the_slot() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let (worker, mut frames) = fx.worker(1, DispatchMode::Push);
        let id = fx.enqueue(&f, 1);
        fx.dispatch();
        let (_, lease) = assigned(&mut frames)[0];
        let commit = fx.report(worker, id, lease).expect("accepted");
        let end = &commit.finished;
        assert_eq!(end.record.status, TaskStatus::Completed);
        assert_eq!((end.record.result_bytes, end.record.stderr_bytes), (3, 4));
        assert_eq!((end.record.run_us, end.record.init_us), (7, 3));
        assert_eq!(
            (end.record.cpu_us, end.record.peak_memory_bytes),
            (2, 1 << 20)
        );
        assert!(end.record.cold_start && end.record.finished_ms.is_some());
        assert_eq!(end.result, Bytes::from_static(b"out"));
        // Readers see RUNNING until the end is committed.
        assert_eq!(fx.status(id), TaskStatus::Running);
        let w = &fx.state.workers[&worker];
        assert_eq!((w.running.len(), w.done, w.free()), (0, 1, 1));
        assert_eq!(fx.state.running_count(), 0);
        assert_eq!(
            commit.ack.blocking_recv().expect("writer alive").ok(),
            Some(0)
        );
    }

    #[test]
    fn a_report_with_a_failure_fails_the_task() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let (worker, mut frames) = fx.worker(1, DispatchMode::Push);
        let id = fx.enqueue(&f, 1);
        fx.dispatch();
        let (_, lease) = assigned(&mut frames)[0];
        let failed = report(id, lease, Some(FailureReason::ExitStatus));
        let commit = fx
            .state
            .finish(worker, failed, &fx.store)
            .expect("accepted");
        let record = &commit.finished.record;
        assert_eq!(record.status, TaskStatus::Failed);
        assert_eq!(
            (record.failure, record.exit_code),
            (Some(FailureReason::ExitStatus), Some(1))
        );
    }

    #[test]
    fn a_function_with_concurrency_one_never_runs_two_tasks_while_others_dispatch() {
        let mut fx = Fixture::new();
        let capped = fx.function("capped", 1, Some(1));
        let free = fx.function("free", 2, None);
        for seq in 1..=3 {
            fx.enqueue(&capped, seq);
        }
        fx.enqueue(&free, 4);
        fx.enqueue(&free, 5);
        let (worker, mut frames) = fx.worker(8, DispatchMode::Push);
        fx.dispatch();
        let leases = assigned(&mut frames);
        let ids: Vec<u128> = leases.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [1, 4, 5]);
        assert_eq!(fx.waiting("capped"), [2, 3]);
        fx.report(worker, 1, leases[0].1).expect("accepted");
        fx.dispatch();
        let next: Vec<u128> = assigned(&mut frames)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(next, [2]);
    }

    #[test]
    fn a_lowered_concurrency_cap_applies_to_the_next_dispatch() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        for seq in 1..=2 {
            fx.enqueue(&f, seq);
        }
        let capped = Arc::new(FunctionRecord {
            version: 2,
            concurrency: Some(1),
            ..(*f).clone()
        });
        fx.state.set_function(capped);
        let (_, mut frames) = fx.worker(4, DispatchMode::Push);
        fx.dispatch();
        assert_eq!(assigned(&mut frames).len(), 1);
    }

    #[test]
    fn a_pull_worker_gets_no_more_tasks_than_it_asked_for() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        for seq in 1..=3 {
            fx.enqueue(&f, seq);
        }
        let (worker, mut frames) = fx.worker(4, DispatchMode::Pull);
        fx.dispatch();
        assert!(assigned(&mut frames).is_empty());
        fx.state.grant_credits(worker, 2);
        fx.dispatch();
        assert_eq!(assigned(&mut frames).len(), 2);
        assert_eq!(fx.state.workers[&worker].credits, 0);
        assert_eq!(fx.waiting("f"), [3]);
    }

    #[test]
    fn pull_credits_never_exceed_the_workers_slots() {
        let mut fx = Fixture::new();
        let (worker, _frames) = fx.worker(2, DispatchMode::Pull);
        fx.state.grant_credits(worker, 1);
        fx.state.grant_credits(worker, 5);
        assert_eq!(fx.state.workers[&worker].credits, 2);
        fx.state.grant_credits(worker, u32::MAX);
        assert_eq!(fx.state.workers[&worker].free(), 2);
    }

    #[test]
    fn a_draining_worker_gets_no_tasks() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let (worker, mut frames) = fx.worker(2, DispatchMode::Push);
        fx.state.workers.get_mut(&worker).expect("worker").draining = true;
        let id = fx.enqueue(&f, 1);
        fx.dispatch();
        assert!(assigned(&mut frames).is_empty());
        assert_eq!(fx.status(id), TaskStatus::Queued);
    }

    #[test]
    fn nothing_dispatches_once_dispatch_is_stopped() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let (_, mut frames) = fx.worker(2, DispatchMode::Push);
        fx.state.dispatching = false;
        fx.enqueue(&f, 1);
        fx.dispatch();
        assert!(assigned(&mut frames).is_empty());
    }

    #[test]
    fn a_leaving_worker_frees_its_slots_and_concurrency() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, Some(2));
        let (leaving, _frames) = fx.worker(2, DispatchMode::Push);
        for seq in 1..=3 {
            fx.enqueue(&f, seq);
        }
        fx.dispatch();
        assert_eq!(fx.state.running_count(), 2);
        fx.state.detach_worker(leaving, &fx.store);
        assert!(!fx.state.workers.contains_key(&leaving));
        assert_eq!(fx.state.running_count(), 0);
        assert_eq!(fx.state.queues["f"].running, 0);
        assert_eq!(fx.waiting("f"), [1, 2, 3]);
        let (_, mut frames) = fx.worker(4, DispatchMode::Push);
        fx.dispatch();
        assert_eq!(assigned(&mut frames).len(), 2);
    }

    #[test]
    fn a_leaving_worker_fails_tasks_on_their_last_attempt() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let (first, _first_frames) = fx.worker(1, DispatchMode::Push);
        let id = fx.enqueue(&f, 1);
        fx.dispatch();
        fx.state.detach_worker(first, &fx.store);
        let (second, _second_frames) = fx.worker(1, DispatchMode::Push);
        fx.dispatch();
        let failed = fx.state.detach_worker(second, &fx.store);
        assert_eq!(failed.len(), 1);
        let record = &failed[0].1.finished.record;
        assert_eq!(record.id, id);
        assert_eq!(record.failure, Some(FailureReason::WorkerLost));
        assert_eq!(
            record.message.as_deref(),
            Some("the worker running it was lost, on each of 2 attempts")
        );
    }

    #[test]
    fn a_worker_leaving_during_shutdown_keeps_its_tasks_running() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let (worker, _frames) = fx.worker(1, DispatchMode::Push);
        let id = fx.enqueue(&f, 1);
        fx.dispatch();
        fx.state.accepting = false;
        assert!(fx.state.detach_worker(worker, &fx.store).is_empty());
        assert!(fx.state.workers.is_empty());
        assert_eq!(fx.status(id), TaskStatus::Running);
        assert_eq!(fx.state.tasks[&id].record.attempts, 1);
    }

    #[test]
    fn a_revoked_slot_stays_taken_until_the_late_report_arrives() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let (worker, mut frames) = fx.worker(1, DispatchMode::Push);
        let id = fx.enqueue(&f, 1);
        fx.dispatch();
        let (_, lease) = assigned(&mut frames)[0];
        fx.expire();
        fx.dispatch();
        // The worker still runs the revoked task: no free slot for its retry.
        assert!(assigned(&mut frames).is_empty());
        assert_eq!(fx.state.workers[&worker].free(), 0);
        assert!(fx.report(worker, id, lease).is_none());
        fx.dispatch();
        assert_eq!(assigned(&mut frames)[0].0, id);
    }

    #[test]
    fn admission_refuses_unknown_functions_full_queues_and_a_stopping_server() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        assert!(matches!(
            fx.state.admit("nope", 1),
            Err(Error::UnknownFunction { name }) if name == "nope"
        ));
        for seq in 1..=3 {
            assert_eq!(fx.state.admit("f", 1).expect("room").version, 1);
            fx.enqueue(&f, seq);
        }
        assert!(matches!(
            fx.state.admit("f", 1),
            Err(Error::QueueFull { limit: 3, .. })
        ));
        fx.state.accepting = false;
        assert!(matches!(fx.state.admit("f", 1), Err(Error::ShuttingDown)));
    }

    #[test]
    fn a_batch_is_admitted_only_if_all_of_it_fits_the_queue() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        fx.enqueue(&f, 1);
        assert!(
            fx.state.admit("f", 2).is_ok(),
            "1 waiting + 2 fits a limit of 3"
        );
        assert!(matches!(
            fx.state.admit("f", 3),
            Err(Error::QueueFull { limit: 3, .. })
        ));
    }

    /// Makes `func` live again as a new version with `queue_limit` 0.
    fn without_waiting_line(fx: &mut Fixture, func: &FunctionRecord) -> Arc<FunctionRecord> {
        let func = Arc::new(FunctionRecord {
            version: func.version + 1,
            queue_limit: 0,
            ..func.clone()
        });
        fx.state.set_function(func.clone());
        func
    }

    #[test]
    fn without_a_waiting_line_a_call_is_admitted_only_if_a_slot_is_free() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, Some(2));
        let f = without_waiting_line(&mut fx, &f);
        let (worker, mut frames) = fx.worker(8, DispatchMode::Push);
        assert!(fx.state.admit("f", 3).is_err(), "3 calls never fit 2 slots");
        fx.state.admit("f", 1).expect("a free slot");
        fx.enqueue(&f, 1);
        fx.dispatch();
        let leases = assigned(&mut frames);
        fx.state.admit("f", 1).expect("1 running, 1 slot free");
        fx.enqueue(&f, 2);
        // Admitted but not yet dispatched, the second call holds the last slot all the same.
        assert!(matches!(
            fx.state.admit("f", 1),
            Err(Error::NoFreeSlot { concurrency: 2, .. })
        ));
        fx.dispatch();
        fx.report(worker, leases[0].0, leases[0].1)
            .expect("accepted");
        fx.state
            .admit("f", 1)
            .expect("a slot freed by the finished task");
    }

    #[test]
    fn without_a_waiting_line_or_a_cap_every_call_is_admitted() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let f = without_waiting_line(&mut fx, &f);
        for seq in 1..=5 {
            fx.state.admit("f", 1).expect("no cap");
            fx.enqueue(&f, seq);
        }
    }

    #[test]
    fn an_older_version_never_replaces_the_live_one() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let newer = Arc::new(FunctionRecord {
            version: 3,
            ..(*f).clone()
        });
        fx.state.set_function(newer);
        fx.state.set_function(Arc::new(FunctionRecord {
            version: 2,
            ..(*f).clone()
        }));
        assert_eq!(fx.state.functions["f"].version, 3);
    }

    #[test]
    fn a_withdrawn_task_leaves_its_queue() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let first = fx.enqueue(&f, 1);
        let second = fx.enqueue(&f, 2);
        fx.state.withdraw(first);
        assert_eq!(fx.waiting("f"), [second]);
        assert!(!fx.state.tasks.contains_key(&first));
    }

    #[test]
    fn a_leased_task_is_not_withdrawn() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let (_, _frames) = fx.worker(1, DispatchMode::Push);
        let id = fx.enqueue(&f, 1);
        fx.dispatch();
        fx.state.withdraw(id);
        assert_eq!(fx.status(id), TaskStatus::Running);
    }

    #[test]
    fn an_assignment_carries_the_task_and_its_function() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 5, None);
        let (worker, mut frames) = fx.worker(1, DispatchMode::Push);
        let id = fx.enqueue(&f, 1);
        fx.dispatch();
        let Ok(Outbound::Frame(Frame::Assign(a))) = frames.try_recv() else {
            panic!("expected an assignment");
        };
        assert_eq!((a.task_id, a.function.as_str(), a.version), (id, "f", 1));
        assert_eq!((a.code_hash, a.timeout_ms), ([5; 32], 1000));
        assert_eq!(fx.state.tasks[&id].lease, a.lease);
        assert!(fx.state.workers[&worker].cached.contains(&[5; 32]));
        assert_eq!(fx.state.tasks[&id].record.attempts, 1);
    }

    /// Queues a task of `func` whose payload is `payload` bytes of 7; returns its id (`seq`).
    fn enqueue_payload(fx: &mut Fixture, func: &Arc<FunctionRecord>, seq: u64, len: usize) -> u128 {
        let record = TaskRecord::queued(u128::from(seq), seq, func.name.clone(), func.version);
        let payload = Bytes::from(vec![7; len]);
        fx.state
            .enqueue(Active::new(record, Some(payload), func.clone()), false);
        u128::from(seq)
    }

    #[test]
    fn a_stored_payload_leaves_memory_unless_it_is_small() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let small = enqueue_payload(&mut fx, &f, 1, INLINE_PAYLOAD);
        let large = enqueue_payload(&mut fx, &f, 2, INLINE_PAYLOAD + 1);
        fx.state.payloads_stored([small, large]);
        assert_eq!(
            fx.state.tasks[&small].payload.as_ref().map(Bytes::len),
            Some(INLINE_PAYLOAD)
        );
        assert!(fx.state.tasks[&large].payload.is_none());
        let (_, mut frames) = fx.worker(2, DispatchMode::Push);
        fx.dispatch();
        let Ok(Outbound::Frame(Frame::Assign(first))) = frames.try_recv() else {
            panic!("expected the small payload's assignment ready to send");
        };
        assert_eq!(first.payload, vec![7; INLINE_PAYLOAD]);
        let Ok(Outbound::Unloaded(second)) = frames.try_recv() else {
            panic!("expected the large payload's assignment to be read from the store");
        };
        assert_eq!((second.task_id, second.payload.len()), (large, 0));
        assert_eq!(fx.status(large), TaskStatus::Running);
    }

    #[test]
    fn an_undelivered_assignment_is_taken_back_only_under_its_lease() {
        let mut fx = Fixture::new();
        let f = fx.function("f", 1, None);
        let (worker, mut frames) = fx.worker(1, DispatchMode::Push);
        let id = fx.enqueue(&f, 1);
        fx.dispatch();
        let (_, lease) = assigned(&mut frames)[0];
        let stale = fx
            .state
            .take_back(worker, id, lease + 1, "unread", &fx.store);
        assert!(stale.is_none());
        assert_eq!(fx.status(id), TaskStatus::Running);
        assert!(
            fx.state
                .take_back(worker, id, lease, "unread", &fx.store)
                .is_none()
        );
        assert_eq!(fx.status(id), TaskStatus::Queued);
        assert_eq!(fx.state.workers[&worker].free(), 1);
        fx.dispatch();
        let (_, again) = assigned(&mut frames)[0];
        let failed = fx.state.take_back(worker, id, again, "unread", &fx.store);
        let message = failed.map(|c| c.finished.record.message.clone());
        assert_eq!(
            message,
            Some(Some("unread, on each of 2 attempts".to_string()))
        );
    }
}

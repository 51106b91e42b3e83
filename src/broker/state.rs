//! The broker's in-memory scheduling state: queues, active tasks, workers, and the placement
//! loop. Everything here runs under the broker's mutex and never blocks.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{Error, Finished, Waiter, WorkerState, WorkerView};
use crate::proto::{
    Assignment, CodeHash, DispatchMode, FailureReason, Frame, Outcome, Prewarm, Report, WarmSpec,
};
use crate::store::{self, FunctionRecord, Store, TaskRecord, TaskStatus, Write};
use crate::units::{now_ms, rfc3339};

/// How long past its timeout a leased task may stay unreported before the lease is revoked.
pub(super) const LEASE_GRACE: Duration = Duration::from_secs(5);

/// A task the broker is responsible for: queued, leased, or finishing (its end not yet on disk).
pub(super) struct Active {
    pub record: TaskRecord,
    payload: Bytes,
    func: Arc<FunctionRecord>,
    lease: u64,
    worker: Option<u64>,
    /// When the current lease expires: the function's timeout plus [`LEASE_GRACE`].
    deadline: Option<Instant>,
    finishing: bool,
    pub waiters: Vec<oneshot::Sender<Result<Arc<Finished>, Arc<store::Error>>>>,
}

impl Active {
    pub fn new(record: TaskRecord, payload: Bytes, func: Arc<FunctionRecord>) -> Active {
        Active {
            record,
            payload,
            func,
            lease: 0,
            worker: None,
            deadline: None,
            finishing: false,
            waiters: Vec::new(),
        }
    }

    /// Adds a waiter for this task's end.
    pub fn watch(&mut self) -> Waiter {
        self.waiters.retain(|w| !w.is_closed());
        let (tx, rx) = oneshot::channel();
        self.waiters.push(tx);
        rx
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
    frames: mpsc::UnboundedSender<Frame>,
    running: HashSet<u128>,
    done: u64,
    /// Pull mode: tasks the worker has asked for and not yet received.
    pub credits: u32,
    /// Code bundles the worker holds.
    pub cached: HashSet<CodeHash>,
    pub draining: bool,
    /// Tasks whose lease was revoked while the worker still runs them: their slots stay taken
    /// until the late report arrives or the worker leaves.
    revoked: HashSet<u128>,
    /// When the worker last heartbeat (Unix ms; its join time before the first).
    last_heartbeat_ms: u64,
}

impl WorkerEntry {
    pub fn new(
        name: String,
        address: String,
        slots: u32,
        mode: DispatchMode,
        frames: mpsc::UnboundedSender<Frame>,
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
        if let Some(warm) = func.warm.filter(|w| w.min_warm > 0) {
            self.send_prewarm(func, warm);
        }
    }

    /// Tells the worker to keep no executors of a removed function ready.
    pub fn retire(&self, func: &FunctionRecord) {
        if let Some(warm) = func.warm.filter(|w| w.min_warm > 0) {
            self.send_prewarm(
                func,
                WarmSpec {
                    min_warm: 0,
                    ..warm
                },
            );
        }
    }

    fn send_prewarm(&self, func: &FunctionRecord, warm: WarmSpec) {
        let _ = self.frames.send(Frame::Prewarm(Prewarm {
            function: func.name.clone(),
            version: func.version,
            runtime: func.runtime,
            code_hash: func.code_hash,
            timeout_ms: func.timeout_ms,
            env: func.env.clone(),
            warm,
            isolation: func.isolation,
        }));
    }

    pub fn view(&self, id: u64) -> WorkerView {
        WorkerView {
            id,
            name: self.name.clone(),
            address: self.address.clone(),
            dispatch: self.mode,
            slots: self.slots,
            running: self.running.len(),
            done: self.done,
            last_heartbeat: rfc3339(self.last_heartbeat_ms),
            state: if self.draining {
                WorkerState::Draining
            } else {
                WorkerState::Ready
            },
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
    Finished {
        record: end,
        result: o.stdout,
        logs: o.stderr,
    }
}

/// Everything the broker schedules with.
pub(super) struct State {
    pub functions: HashMap<String, Arc<FunctionRecord>>,
    pub queues: HashMap<String, FnQueue>,
    /// Functions with a task that can start now, in rotation order.
    runnable: VecDeque<String>,
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
}

impl State {
    pub fn new(last_seq: u64) -> State {
        State {
            functions: HashMap::new(),
            queues: HashMap::new(),
            runnable: VecDeque::new(),
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
        }
    }

    pub fn running_count(&self) -> usize {
        self.leased
    }

    /// Checks that a new call of `name` may be queued: the server accepts tasks, the function
    /// is live, and its queue is under its limit. Returns the live version.
    pub fn admit(&self, name: &str) -> Result<Arc<FunctionRecord>, Error> {
        if !self.accepting {
            return Err(Error::ShuttingDown);
        }
        let func = self
            .functions
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownFunction { name: name.into() })?;
        let waiting = self.queues.get(name).map_or(0, |q| q.waiting.len());
        if waiting >= func.queue_limit as usize {
            return Err(Error::QueueFull {
                name: name.into(),
                limit: func.queue_limit,
            });
        }
        Ok(func)
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

    /// Puts a task in its function's queue at its arrival position.
    pub fn enqueue(&mut self, mut active: Active, wait: bool) -> Option<Waiter> {
        let waiter = wait.then(|| active.watch());
        let id = active.record.id;
        let seq = active.record.seq;
        let name = active.record.function.clone();
        let func = active.func.clone();
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

    /// Picks the worker for a task of code `hash`: one with a free slot, preferring one that
    /// holds the code, then the least loaded, then round robin from the last pick.
    fn pick_worker(&self, hash: &CodeHash) -> Option<u64> {
        let after = self.workers.range(self.last_pick + 1..);
        let before = self.workers.range(..=self.last_pick);
        let mut best: Option<(u64, bool, usize, u32)> = None;
        for (&id, w) in after.chain(before) {
            if w.free() == 0 {
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
        best.map(|(id, ..)| id)
    }

    /// Leases queued tasks to workers with free slots until either runs out.
    pub fn dispatch(&mut self, store: &Store) {
        if !self.dispatching {
            return;
        }
        while let Some((name, head, hash)) = self.next_runnable() {
            let Some(worker_id) = self.pick_worker(&hash) else {
                self.runnable.push_front(name);
                return;
            };
            self.take_head(name);
            let frame = self.lease(head, worker_id, store);
            self.hand_over(worker_id, head, hash, frame);
        }
    }

    /// The next function in the rotation whose queue can start a task, with its head task and
    /// that task's code hash. Functions that cannot start now leave the rotation; a head that is
    /// no longer active is dropped from its queue.
    fn next_runnable(&mut self) -> Option<(String, u128, CodeHash)> {
        while let Some(name) = self.runnable.pop_front() {
            let Some(queue) = self.queues.get_mut(&name) else {
                continue;
            };
            if !queue.can_start() {
                queue.listed = false;
                continue;
            }
            let head = queue.waiting[0];
            let Some(hash) = self.tasks.get(&head).map(|a| a.func.code_hash) else {
                queue.waiting.pop_front();
                self.runnable.push_front(name);
                continue;
            };
            return Some((name, head, hash));
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
    /// RUNNING record to the store, and returns the `Assign` frame for the worker.
    fn lease(&mut self, id: u128, worker_id: u64, store: &Store) -> Frame {
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
        let frame = Frame::Assign(Assignment {
            task_id: id,
            lease,
            function: active.func.name.clone(),
            version: active.func.version,
            runtime: active.func.runtime,
            code_hash: active.func.code_hash,
            timeout_ms: active.func.timeout_ms,
            env: active.func.env.clone(),
            payload: active.payload.clone(),
            warm: active.func.warm,
            json: active.record.json,
            isolation: active.func.isolation,
        });
        store.write_later(Write::Update {
            record: active.record.clone(),
        });
        frame
    }

    /// Takes a slot (or a pull credit) of `worker_id` for task `id` and sends it the task.
    fn hand_over(&mut self, worker_id: u64, id: u128, hash: CodeHash, frame: Frame) {
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
        let _ = worker.frames.send(frame);
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
        let finished = Arc::new(ended(&active.record, report.outcome));
        let name = finished.record.function.clone();
        self.release(worker_id, id, &name, true);
        let ack = store.submit(Write::Finish {
            record: finished.record.clone(),
            result: finished.result.clone(),
            logs: finished.logs.clone(),
        });
        Some(PendingCommit { ack, finished })
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
    /// `worker_lost` when it has used every attempt (then returns the commit to wait on).
    fn revoke(&mut self, id: u128, why: &str, store: &Store) -> Option<PendingCommit> {
        let active = self.tasks.get_mut(&id)?;
        let worker_id = active.worker.take()?;
        let func = active.func.clone();
        active.lease = 0;
        active.deadline = None;
        if active.record.attempts >= func.max_attempts {
            active.finishing = true;
            let r = &mut active.record;
            r.status = TaskStatus::Failed;
            r.failure = Some(FailureReason::WorkerLost);
            r.message = Some(format!("{why}, on each of {} attempts", r.attempts));
            r.finished_ms = Some(now_ms());
            let finished = Arc::new(Finished {
                record: r.clone(),
                result: Bytes::new(),
                logs: Bytes::new(),
            });
            let ack = store.submit(Write::Finish {
                record: finished.record.clone(),
                result: Bytes::new(),
                logs: Bytes::new(),
            });
            self.release(worker_id, id, &func.name, false);
            Some(PendingCommit { ack, finished })
        } else {
            active.record.status = TaskStatus::Queued;
            let seq = active.record.seq;
            store.write_later(Write::Update {
                record: active.record.clone(),
            });
            self.release(worker_id, id, &func.name, false);
            self.insert_waiting(&func, id, seq);
            self.make_runnable(&func.name);
            None
        }
    }

    /// Records a heartbeat from a worker.
    pub fn heartbeat(&mut self, worker_id: u64) {
        if let Some(w) = self.workers.get_mut(&worker_id) {
            w.last_heartbeat_ms = now_ms();
        }
    }
}

//! Warm executor pools: per function version, executors that stay alive between calls.
//!
//! A call takes an idle executor or starts a new one (a cold start, timed as the load phase),
//! and gives it back when the call succeeds; a failed call drops (kills and reaps) its executor.
//! So a function's executors grow with its concurrent calls, up to the worker's slots or the
//! function's concurrency cap, and [`Pool::reap`] shrinks them back: an executor idle past the
//! function's idle timeout is stopped, except the `min_warm` kept ready, which
//! [`Pool::keep_min_warm`] tops up (backing off a version whose executors fail to start).
//! Across all functions a worker keeps at most `max_idle` idle executors (least recently used go
//! first), and only the newest version of a function keeps executors ready.
//!
//! Pre-warming cannot sink the worker ([`PoolLimits`]): a function keeps at most one ready
//! executor per slot whatever its `min_warm`, at most `max_starts` pre-starts run at once (the
//! rest wait their turn), and none begins while the idle executors hold the memory budget or
//! the machine runs low (see `memory`). [`Pool::retire`] (a removed function) stops its idle
//! executors at once, abandons its pending starts, and drops its busy ones when they finish.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::Limits;
use super::memory;
use super::warm::WarmExecutor;
use crate::proto::{FailureReason, Outcome, WarmSpec};
use crate::units::format_duration;

/// Which executors can serve a call: one function version.
pub type PoolKey = (String, u32);

/// The wait after a function's first failed top-up start.
const FIRST_START_BACKOFF: Duration = Duration::from_millis(250);

/// The longest a function whose executors fail to start waits before the next top-up try.
const MAX_START_BACKOFF: Duration = Duration::from_secs(60);

/// How a worker bounds its warm executors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// Idle executors kept across all functions.
    pub max_idle: usize,
    /// The worker's slots: no function keeps more executors ready than this.
    pub slots: usize,
    /// Pre-starts (for `min_warm`) running at once; the rest wait their turn.
    pub max_starts: usize,
    /// The resident memory the idle executors may hold before pre-warming pauses.
    pub warm_memory_bytes: u64,
}

impl PoolLimits {
    /// The limits of a worker with `slots` slots: idle executors enough to keep every slot's
    /// function warm a few times over, and at most two pre-starts at once.
    pub fn for_slots(slots: u32, warm_memory_bytes: u64) -> PoolLimits {
        let slots = (slots as usize).max(1);
        PoolLimits {
            max_idle: (slots * 4).max(8),
            slots,
            max_starts: slots.min(2),
            warm_memory_bytes,
        }
    }
}

/// One call for a warm executor.
pub struct WarmCall {
    /// The function version.
    pub key: PoolKey,
    /// How its executors are kept.
    pub warm: WarmSpec,
    /// The executor's command line.
    pub argv: Vec<OsString>,
    /// Its environment.
    pub env: Vec<(String, String)>,
    /// Time the call already spent before it reached the pool (building the function's Python
    /// environment): it counts as cold start, and comes off the call's timeout.
    pub waited: Duration,
    /// Where its working directory is made.
    pub work_root: PathBuf,
    /// The payload.
    pub payload: Bytes,
    /// Whether the payload is JSON.
    pub json: bool,
    /// The time start-up and call together may take.
    pub timeout: Duration,
    /// Output bounds.
    pub limits: Limits,
    /// What the executors need kept while the pool keeps this function version (the worker's
    /// hold on its code bundle, so the code cache does not evict it); `None` for nothing.
    pub keep: Option<KeepAlive>,
}

/// A value a pool entry holds for as long as it lives (see [`WarmCall::keep`]).
pub type KeepAlive = Arc<dyn std::any::Any + Send + Sync>;

/// An idle executor taken for one call ([`Pool::take_ready`]), counted as busy until
/// [`Pool::run_ready`] gives it back: take one only to run a call on it at once. Dropped
/// instead, it stops the executor and uncounts the call.
pub struct Ready<'a> {
    executor: WarmExecutor,
    busy: Busy<'a>,
}

/// A call (or a start) counted as busy in its function version's entry until [`Busy::end`]. A
/// call's future dropped halfway (its task was cancelled) drops this too, which uncounts it: the
/// executor it held was dropped with the future, and so stopped.
struct Busy<'a> {
    pool: &'a Pool,
    key: Option<PoolKey>,
}

impl Busy<'_> {
    /// Ends the call: the executor goes back to the idle ones (`Some`) or stops (`None`).
    fn end(mut self, executor: Option<WarmExecutor>) {
        if let Some(key) = self.key.take() {
            self.pool.release(&key, executor);
        }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.pool.release(&key, None);
        }
    }
}

/// What one call on a ready executor sends and may take.
pub struct CallInput {
    /// The payload.
    pub payload: Bytes,
    /// Whether the payload is JSON.
    pub json: bool,
    /// The time the call may take.
    pub timeout: Duration,
    /// Output bounds.
    pub limits: Limits,
}

struct Recipe {
    argv: Vec<OsString>,
    env: Vec<(String, String)>,
    work_root: PathBuf,
    timeout: Duration,
    /// Held, never read: dropped with the entry.
    _keep: Option<KeepAlive>,
}

struct Entry {
    /// Its warm settings, `min_warm` already capped by the worker's slots.
    warm: WarmSpec,
    recipe: Arc<Recipe>,
    idle: Vec<WarmExecutor>,
    /// Executors serving a call or starting.
    busy: usize,
    /// After a failed top-up: no new one before this, and the next wait doubles.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// The function was removed: nothing is kept ready, and finished executors are stopped.
    retired: bool,
    /// Fires on retirement: pending pre-starts give up.
    cancel: CancellationToken,
}

impl Entry {
    /// Executors this version keeps ready even when idle.
    fn min_warm(&self, superseded: bool) -> usize {
        if superseded || self.retired {
            0
        } else {
            self.warm.min_warm as usize
        }
    }

    /// The most recently used idle executor that is still alive (its caches are hot); one that
    /// died while idle (killed from outside) is dropped here, not handed out.
    fn pop_live(&mut self) -> Option<WarmExecutor> {
        std::iter::from_fn(|| self.idle.pop()).find(|executor| !executor.has_exited())
    }
}

/// A cheap, cloneable handle on a worker's warm executors.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    entries: Mutex<HashMap<PoolKey, Entry>>,
    limits: PoolLimits,
    /// Pre-starts under way; only raised under the `entries` lock, so it never passes
    /// `limits.max_starts`.
    starting: AtomicUsize,
    /// Each removed function's highest removed version.
    retired: Mutex<HashMap<String, u32>>,
    /// Whether pre-warming waits for memory (said once per pause in the log).
    memory_paused: AtomicBool,
}

/// Whether a newer version of `key`'s function is in the pool.
fn superseded(entries: &HashMap<PoolKey, Entry>, key: &PoolKey) -> bool {
    entries.keys().any(|k| k.0 == key.0 && k.1 > key.1)
}

impl Pool {
    /// A pool within `limits`.
    pub fn new(limits: PoolLimits) -> Pool {
        Pool {
            inner: Arc::new(PoolInner {
                entries: Mutex::new(HashMap::new()),
                limits: PoolLimits {
                    max_idle: limits.max_idle.max(1),
                    slots: limits.slots.max(1),
                    max_starts: limits.max_starts.max(1),
                    ..limits
                },
                starting: AtomicUsize::new(0),
                retired: Mutex::new(HashMap::new()),
                memory_paused: AtomicBool::new(false),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Entry>> {
        self.inner.entries.lock().expect("pool lock poisoned")
    }

    /// Whether `key`'s function was removed at or after this version.
    fn is_retired(&self, key: &PoolKey) -> bool {
        let retired = self.inner.retired.lock().expect("retired lock poisoned");
        retired.get(&key.0).is_some_and(|v| key.1 <= *v)
    }

    /// The function version's entry, made from `call` if it has none; `call`'s warm settings
    /// apply from now on, its `min_warm` capped by the worker's slots.
    fn entry<'a>(
        &self,
        entries: &'a mut HashMap<PoolKey, Entry>,
        call: &WarmCall,
    ) -> &'a mut Entry {
        let entry = entries.entry(call.key.clone()).or_insert_with(|| Entry {
            warm: call.warm,
            recipe: Arc::new(Recipe {
                argv: call.argv.clone(),
                env: call.env.clone(),
                work_root: call.work_root.clone(),
                timeout: call.timeout,
                _keep: call.keep.clone(),
            }),
            idle: Vec::new(),
            busy: 0,
            retry_at: None,
            backoff: FIRST_START_BACKOFF,
            retired: self.is_retired(&call.key),
            cancel: CancellationToken::new(),
        });
        let slots = u32::try_from(self.inner.limits.slots).unwrap_or(u32::MAX);
        entry.warm = WarmSpec {
            min_warm: call.warm.min_warm.min(slots),
            ..call.warm
        };
        entry
    }

    /// Makes the pool keep `call.warm.min_warm` executors of this function version ready
    /// (at most one per slot) from its next round on, before any call. A version of a
    /// removed function is not kept ready again.
    pub fn prewarm(&self, call: WarmCall) {
        if self.is_retired(&call.key) {
            return;
        }
        if call.warm.min_warm as usize > self.inner.limits.slots {
            tracing::info!(function = %call.key.0, min_warm = call.warm.min_warm,
                slots = self.inner.limits.slots, "min_warm capped by this worker's slots");
        }
        let mut entries = self.lock();
        let entry = self.entry(&mut entries, &call);
        entry.retry_at = None;
    }

    /// Executors alive (idle, serving a call or starting), by function over its versions;
    /// functions with none are left out.
    pub fn warm_counts(&self) -> Vec<crate::proto::WarmCount> {
        let mut counts: std::collections::BTreeMap<String, u32> = Default::default();
        for ((function, _), entry) in self.lock().iter() {
            let executors = (entry.idle.len() + entry.busy) as u32;
            if executors > 0 {
                *counts.entry(function.clone()).or_default() += executors;
            }
        }
        counts
            .into_iter()
            .map(|(function, executors)| crate::proto::WarmCount {
                function,
                executors,
            })
            .collect()
    }

    /// Stops keeping `function` ready at `version` and before (it was removed): its idle
    /// executors stop now, its pending pre-starts are abandoned (their processes killed), and
    /// executors serving calls stop when their call ends.
    pub fn retire(&self, function: &str, version: u32) {
        {
            let mut retired = self.inner.retired.lock().expect("retired lock poisoned");
            let highest = retired.entry(function.to_owned()).or_insert(version);
            *highest = (*highest).max(version);
        }
        let stopped: Vec<WarmExecutor> = {
            let mut entries = self.lock();
            let mut stopped = Vec::new();
            for (_, entry) in entries
                .iter_mut()
                .filter(|(k, _)| k.0 == function && k.1 <= version)
            {
                entry.retired = true;
                entry.cancel.cancel();
                stopped.append(&mut entry.idle);
            }
            forget_unused(&mut entries);
            stopped
        };
        tracing::info!(
            function,
            version,
            executors = stopped.len(),
            "stopping a removed function's warm executors"
        );
        // Dropping an executor kills its process group and reaps it.
        drop(stopped);
    }

    /// Takes an idle executor ([`Entry::pop_live`]), counting the call as busy either way.
    fn take_idle(&self, call: &WarmCall) -> Option<WarmExecutor> {
        let mut entries = self.lock();
        let entry = self.entry(&mut entries, call);
        entry.busy += 1;
        entry.pop_live()
    }
    /// Runs one call on a warm executor; start-up (on a cold start) and the call share the
    /// call's timeout, so a task never runs past the lease the server gave it.
    pub async fn run(&self, call: WarmCall) -> Outcome {
        let timeout = call.timeout.saturating_sub(call.waited);
        let deadline = Instant::now() + timeout;
        let taken = self.take_idle(&call);
        let busy = Busy {
            pool: self,
            key: Some(call.key),
        };
        let (executor, cold_start, init_us) = match taken {
            Some(executor) => (Ok(executor), !call.waited.is_zero(), 0),
            None => {
                let started = Instant::now();
                let executor =
                    WarmExecutor::start(&call.argv, &call.env, &call.work_root, timeout).await;
                (executor, true, started.elapsed().as_micros() as u64)
            }
        };
        let init_us = init_us + call.waited.as_micros() as u64;
        let executor = match executor {
            Ok(executor) => executor,
            Err(failure) => {
                busy.end(None);
                return failed(failure, cold_start, init_us, 0);
            }
        };
        let input = CallInput {
            payload: call.payload,
            json: call.json,
            timeout: deadline.saturating_duration_since(Instant::now()),
            limits: call.limits,
        };
        let outcome = self
            .call_on(Ready { executor, busy }, input, cold_start, init_us)
            .await;
        budget_spent(outcome, call.timeout, init_us)
    }

    /// An idle executor of function version `key`, if one is ready, taken for a call (which
    /// [`Pool::run_ready`] makes): a warm call needs nothing else, not even the command line
    /// that [`Pool::run`] needs to start one.
    pub fn take_ready(&self, key: PoolKey) -> Option<Ready<'_>> {
        let mut entries = self.lock();
        let entry = entries.get_mut(&key)?;
        let executor = entry.pop_live()?;
        entry.busy += 1;
        Some(Ready {
            executor,
            busy: Busy {
                pool: self,
                key: Some(key),
            },
        })
    }

    /// Runs one call on an executor from [`Pool::take_ready`] and gives it back.
    pub async fn run_ready(&self, ready: Ready<'_>, input: CallInput) -> Outcome {
        self.call_on(ready, input, false, 0).await
    }

    /// The call itself: sends it, reads what it used, and gives the executor back (or stops
    /// it, when the call left it unsound).
    async fn call_on(
        &self,
        ready: Ready<'_>,
        input: CallInput,
        cold_start: bool,
        init_us: u64,
    ) -> Outcome {
        let Ready { mut executor, busy } = ready;
        let started = Instant::now();
        let answer = executor
            .call(&input.payload, input.json, input.timeout, input.limits)
            .await;
        let run_us = started.elapsed().as_micros() as u64;
        let (cpu_us, peak_memory_bytes) = executor.call_ended();
        match answer {
            Ok(answer) => {
                busy.end(Some(executor));
                Outcome {
                    failure: None,
                    exit_code: None,
                    signal: None,
                    message: None,
                    stdout: answer.result,
                    stderr: answer.logs,
                    run_us,
                    cold_start,
                    init_us,
                    cpu_us,
                    peak_memory_bytes,
                }
            }
            Err(failure) => {
                // An exception leaves the executor sound; anything else does not.
                let keep = failure.reason == FailureReason::Exception;
                busy.end(keep.then_some(executor));
                Outcome {
                    cpu_us,
                    peak_memory_bytes,
                    ..failed(failure, cold_start, init_us, run_us)
                }
            }
        }
    }

    /// Counts a call or start of `key` as over and keeps its executor idle, unless the
    /// function was removed meanwhile (the executor then stops).
    fn release(&self, key: &PoolKey, executor: Option<WarmExecutor>) {
        let mut entries = self.lock();
        let stop = match entries.get_mut(key) {
            Some(entry) => {
                entry.busy = entry.busy.saturating_sub(1);
                match executor {
                    Some(executor) if !entry.retired => {
                        entry.idle.push(executor);
                        None
                    }
                    other => other,
                }
            }
            None => executor,
        };
        drop(entries);
        // Dropping an executor kills its process group and reaps it.
        drop(stop);
    }

    /// Starts executors in the background to bring each function version that may try again
    /// (see `next_backoff`) back up to its `min_warm`, at most `max_starts` at a time and only
    /// while memory allows; each start that ends calls this again for the next. The worker
    /// calls it before [`Pool::reap`] each round, so an executor the idle cap stops is
    /// replaced on the next round, not at once.
    pub fn keep_min_warm(&self) {
        let Some(groups) = self.wanted_starts() else {
            return;
        };
        if !self.memory_allows_starts(&groups) {
            return;
        }
        for (key, recipe, cancel) in self.claim_starts() {
            let pool = self.clone();
            tokio::spawn(async move { pool.start_for_min_warm(key, &recipe, cancel).await });
        }
    }

    /// Whether a pre-start is wanted and has a free turn: if so, the process groups of the
    /// idle executors (whose memory counts against the budget).
    fn wanted_starts(&self) -> Option<HashSet<u32>> {
        let limits = self.inner.limits;
        if self.inner.starting.load(Ordering::Acquire) >= limits.max_starts {
            return None;
        }
        let now = Instant::now();
        let entries = self.lock();
        let wanted = entries.iter().any(|(key, entry)| {
            entry.retry_at.is_none_or(|t| t <= now)
                && entry.idle.len() + entry.busy < entry.min_warm(superseded(&entries, key))
        });
        wanted.then(|| {
            let idle = entries.values().flat_map(|e| e.idle.iter());
            idle.map(WarmExecutor::pid).collect()
        })
    }

    /// Whether the idle executors' memory and the machine's allow another pre-start; says so
    /// in the log once when pre-warming pauses, and once when it resumes.
    fn memory_allows_starts(&self, groups: &HashSet<u32>) -> bool {
        let shortage = memory::shortage(groups, self.inner.limits.warm_memory_bytes);
        let was_paused = self
            .inner
            .memory_paused
            .swap(shortage.is_some(), Ordering::AcqRel);
        match (shortage, was_paused) {
            (Some(shortage), false) => {
                tracing::warn!(%shortage, "pre-warming paused: no new warm executor starts");
            }
            (None, true) => tracing::info!("pre-warming resumed: memory is available again"),
            _ => {}
        }
        shortage.is_none()
    }

    /// Counts as starting (busy) the executors the next free turns go to, up to each
    /// version's `min_warm`, and returns what to start.
    fn claim_starts(&self) -> Vec<(PoolKey, Arc<Recipe>, CancellationToken)> {
        let now = Instant::now();
        let mut starts = Vec::new();
        let mut entries = self.lock();
        let keys: Vec<PoolKey> = entries.keys().cloned().collect();
        for key in keys {
            let old = superseded(&entries, &key);
            let Some(entry) = entries.get_mut(&key) else {
                continue;
            };
            if entry.retry_at.is_some_and(|t| t > now) {
                continue;
            }
            for _ in entry.idle.len() + entry.busy..entry.min_warm(old) {
                let starting = self.inner.starting.load(Ordering::Acquire);
                if starting >= self.inner.limits.max_starts {
                    return starts;
                }
                self.inner.starting.store(starting + 1, Ordering::Release);
                entry.busy += 1;
                starts.push((key.clone(), entry.recipe.clone(), entry.cancel.clone()));
            }
        }
        starts
    }

    /// Starts one executor counted as busy by [`Pool::claim_starts`] and makes it idle; on
    /// failure, backs the function version off; on retirement, gives up (killing it). Then
    /// gives the freed turn to the next start.
    async fn start_for_min_warm(&self, key: PoolKey, recipe: &Recipe, cancel: CancellationToken) {
        let start =
            WarmExecutor::start(&recipe.argv, &recipe.env, &recipe.work_root, recipe.timeout);
        let started = tokio::select! {
            started = start => Some(started),
            () = cancel.cancelled() => None,
        };
        self.inner.starting.fetch_sub(1, Ordering::AcqRel);
        match started {
            // The function was removed: the dropped start killed its process.
            None => self.release(&key, None),
            Some(Ok(executor)) => {
                self.release(&key, Some(executor));
                if let Some(entry) = self.lock().get_mut(&key) {
                    entry.retry_at = None;
                    entry.backoff = FIRST_START_BACKOFF;
                }
            }
            Some(Err(failure)) => self.back_off(&key, &failure),
        }
        self.keep_min_warm();
    }

    /// Counts a failed pre-start as over and makes the version wait before the next.
    fn back_off(&self, key: &PoolKey, failure: &super::warm::Failure) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(key) {
            entry.busy = entry.busy.saturating_sub(1);
            entry.retry_at = Some(Instant::now() + entry.backoff);
            tracing::warn!(function = %key.0, version = key.1, error = %failure.message,
                retry_in = ?entry.backoff, "cannot pre-start a warm executor");
            entry.backoff = next_backoff(entry.backoff);
        }
    }

    /// Stops executors idle past their function's idle timeout (keeping `min_warm` per
    /// function), stops the least recently used past the pool's idle cap, and forgets
    /// function versions left with nothing to keep.
    pub fn reap(&self) {
        let now = Instant::now();
        let stopped = {
            let mut entries = self.lock();
            let mut stopped = stop_expired(&mut entries, now);
            stopped.extend(stop_past_cap(&mut entries, self.inner.limits.max_idle));
            forget_unused(&mut entries);
            stopped
        };
        if !stopped.is_empty() {
            tracing::debug!(executors = stopped.len(), "stopping idle warm executors");
        }
        // Dropping an executor kills its process group and reaps it.
        drop(stopped);
    }
}

/// Takes out the executors idle past their function's idle timeout, oldest first, keeping
/// each version's `min_warm` (counting its busy ones).
fn stop_expired(entries: &mut HashMap<PoolKey, Entry>, now: Instant) -> Vec<WarmExecutor> {
    let mut stopped = Vec::new();
    let keys: Vec<PoolKey> = entries.keys().cloned().collect();
    for key in keys {
        let old = superseded(entries, &key);
        let Some(entry) = entries.get_mut(&key) else {
            continue;
        };
        let idle_timeout = Duration::from_millis(entry.warm.idle_timeout_ms);
        let min = entry.min_warm(old);
        // Oldest first: they go before the warm ones (calls take from the back).
        entry.idle.sort_by_key(|e| e.last_used);
        while entry.idle.len() + entry.busy > min
            && entry
                .idle
                .first()
                .is_some_and(|e| now.duration_since(e.last_used) >= idle_timeout)
        {
            stopped.push(entry.idle.remove(0));
        }
    }
    stopped
}

/// Takes out the least recently used idle executors, whatever their function, until at most
/// `max_idle` are left.
fn stop_past_cap(entries: &mut HashMap<PoolKey, Entry>, max_idle: usize) -> Vec<WarmExecutor> {
    let mut stopped = Vec::new();
    let idle: usize = entries.values().map(|e| e.idle.len()).sum();
    for _ in max_idle..idle {
        let oldest = entries
            .iter()
            .filter_map(|(k, e)| e.idle.first().map(|x| (x.last_used, k.clone())))
            .min_by_key(|(t, _)| *t);
        let Some((_, key)) = oldest else {
            break;
        };
        if let Some(entry) = entries.get_mut(&key) {
            stopped.push(entry.idle.remove(0));
        }
    }
    stopped
}

/// Drops the entries of versions with no executor and none to keep ready.
fn forget_unused(entries: &mut HashMap<PoolKey, Entry>) {
    let keep: Vec<PoolKey> = entries
        .iter()
        .filter(|(k, e)| e.busy > 0 || !e.idle.is_empty() || e.min_warm(superseded(entries, k)) > 0)
        .map(|(k, _)| k.clone())
        .collect();
    entries.retain(|k, _| keep.contains(k));
}

/// The wait after the next failed start: double the last, up to [`MAX_START_BACKOFF`].
fn next_backoff(backoff: Duration) -> Duration {
    (backoff * 2).min(MAX_START_BACKOFF)
}

fn failed(failure: super::warm::Failure, cold_start: bool, init_us: u64, run_us: u64) -> Outcome {
    Outcome {
        failure: Some(failure.reason),
        exit_code: None,
        signal: None,
        message: Some(failure.message),
        stdout: failure.result,
        stderr: failure.logs,
        run_us,
        cold_start,
        init_us,
        cpu_us: 0,
        peak_memory_bytes: 0,
    }
}

/// A timed-out call's message names the function's whole timeout and the part of it that
/// starting the executor (and waiting for it) took, rather than the remainder the call itself
/// had: "timed out after 3s (35ms of it starting its executor)", not "after 2s 964ms 424us".
fn budget_spent(mut outcome: Outcome, timeout: Duration, init_us: u64) -> Outcome {
    if outcome.failure == Some(FailureReason::Timeout) && init_us > 0 {
        let start = Duration::from_millis(init_us / 1000);
        outcome.message = Some(format!(
            "timed out after {} ({} of it starting its executor)",
            format_duration(timeout),
            format_duration(start)
        ));
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warm(min_warm: u32, idle_timeout_ms: u64) -> WarmSpec {
        WarmSpec {
            min_warm,
            idle_timeout_ms,
        }
    }

    /// A call whose executor runs `script` under `/bin/sh`, working under `dir`.
    fn call(dir: &std::path::Path, version: u32, script: &str, warm: WarmSpec) -> WarmCall {
        let program = dir.join(format!("executor-{version}.sh"));
        std::fs::write(&program, script).expect("write script");
        WarmCall {
            key: ("f".into(), version),
            warm,
            argv: vec!["/bin/sh".into(), program.into()],
            env: Vec::new(),
            waited: Duration::ZERO,
            work_root: dir.to_owned(),
            payload: Bytes::new(),
            json: false,
            timeout: Duration::from_secs(5),
            limits: Limits::default(),
            keep: None,
        }
    }

    /// A pool with `max_idle` idle executors and no other bound in the way.
    fn pool(max_idle: usize) -> Pool {
        Pool::new(PoolLimits {
            max_idle,
            slots: 8,
            max_starts: 8,
            warm_memory_bytes: u64::MAX,
        })
    }

    /// An executor that says it is ready, then waits for its stdin to close.
    const READY: &str = "printf '\\000\\000\\000\\001R'; cat >/dev/null";

    /// Waits (boundedly) until `check` holds of the pool's entries.
    async fn eventually(pool: &Pool, check: impl Fn(&HashMap<PoolKey, Entry>) -> bool) {
        for _ in 0..500 {
            if check(&pool.lock()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the pool never reached the expected state");
    }

    fn idle(entries: &HashMap<PoolKey, Entry>, version: u32) -> usize {
        entries
            .get(&("f".to_string(), version))
            .map_or(0, |e| e.idle.len())
    }

    /// An executor that says it is ready, then answers `ok` to every call with an empty payload
    /// (a frame of six bytes), until its stdin closes.
    const ANSWERS_OK: &str = "printf '\\000\\000\\000\\001R'; \
        while [ \"$(head -c 6 | wc -c)\" -eq 6 ]; do printf '\\000\\000\\000\\007O\\000\\000\\000\\002ok'; done";

    #[tokio::test]
    async fn a_call_that_times_out_after_a_start_names_the_whole_timeout_and_the_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = pool(8);
        // Ready after 200 ms, then never answers.
        let slow_start = format!("sleep 0.2; {READY}");
        let mut slow = call(dir.path(), 1, &slow_start, warm(0, 60_000));
        slow.timeout = Duration::from_secs(1);
        let outcome = pool.run(slow).await;
        assert_eq!(outcome.failure, Some(FailureReason::Timeout), "{outcome:?}");
        let message = outcome.message.expect("a message");
        assert!(
            message.starts_with("timed out after 1s (")
                && message.ends_with("ms of it starting its executor)"),
            "{message}"
        );
        assert!(outcome.init_us >= 200_000, "{}", outcome.init_us);
    }

    #[tokio::test]
    async fn a_ready_executor_serves_a_call_without_its_recipe_and_goes_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = pool(8);
        let key: PoolKey = ("f".into(), 1);
        assert!(
            pool.take_ready(key.clone()).is_none(),
            "no entry, nothing ready"
        );
        pool.prewarm(call(dir.path(), 1, ANSWERS_OK, warm(1, 60_000)));
        pool.keep_min_warm();
        eventually(&pool, |e| idle(e, 1) == 1).await;
        let ready = pool
            .take_ready(key.clone())
            .expect("the pre-started executor");
        assert!(
            pool.take_ready(key.clone()).is_none(),
            "its one executor is taken"
        );
        assert_eq!(pool.lock()[&key].busy, 1);
        let input = CallInput {
            payload: Bytes::new(),
            json: false,
            timeout: Duration::from_secs(5),
            limits: Limits::default(),
        };
        let outcome = pool.run_ready(ready, input).await;
        assert_eq!(outcome.failure, None, "{outcome:?}");
        assert_eq!(&outcome.stdout[..], b"ok");
        assert!(!outcome.cold_start);
        let entries = pool.lock();
        assert_eq!((entries[&key].idle.len(), entries[&key].busy), (1, 0));
    }

    #[test]
    fn only_a_newer_version_of_the_same_function_supersedes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = pool(8);
        for (name, version) in [("f", 1), ("f", 2), ("g", 1)] {
            let mut spec = call(dir.path(), version, READY, warm(1, 0));
            spec.key = (name.into(), version);
            pool.prewarm(spec);
        }
        let entries = pool.lock();
        assert!(superseded(&entries, &("f".into(), 1)));
        assert!(!superseded(&entries, &("f".into(), 2)));
        assert!(!superseded(&entries, &("g".into(), 1)));
        let old = &entries[&("f".to_string(), 1)];
        assert_eq!(old.min_warm(true), 0);
        assert_eq!(old.min_warm(false), 1);
    }

    #[test]
    fn start_backoff_doubles_up_to_the_cap() {
        assert_eq!(
            next_backoff(FIRST_START_BACKOFF),
            Duration::from_millis(500)
        );
        assert_eq!(next_backoff(Duration::from_secs(40)), MAX_START_BACKOFF);
        assert_eq!(next_backoff(MAX_START_BACKOFF), MAX_START_BACKOFF);
    }

    #[tokio::test]
    async fn min_warm_is_kept_and_survives_reaping() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = pool(8);
        pool.prewarm(call(dir.path(), 1, READY, warm(1, 0)));
        pool.keep_min_warm();
        eventually(&pool, |e| idle(e, 1) == 1).await;
        // Idle past its (zero) timeout, but it is the one kept ready.
        pool.reap();
        assert_eq!(idle(&pool.lock(), 1), 1);
        // Another round starts no second one.
        pool.keep_min_warm();
        let entries = pool.lock();
        let entry = &entries[&("f".to_string(), 1)];
        assert_eq!((entry.idle.len(), entry.busy), (1, 0));
    }

    #[tokio::test]
    async fn a_newer_version_retires_the_older_ones_executors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = pool(8);
        pool.prewarm(call(dir.path(), 1, READY, warm(1, 0)));
        pool.keep_min_warm();
        eventually(&pool, |e| idle(e, 1) == 1).await;
        pool.prewarm(call(dir.path(), 2, READY, warm(1, 0)));
        pool.keep_min_warm();
        eventually(&pool, |e| idle(e, 2) == 1).await;
        pool.reap();
        let entries = pool.lock();
        assert!(!entries.contains_key(&("f".to_string(), 1)), "v1 kept");
        assert_eq!(idle(&entries, 2), 1);
    }

    #[tokio::test]
    async fn a_failing_start_backs_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = pool(8);
        pool.prewarm(call(dir.path(), 1, "exit 1", warm(1, 0)));
        pool.keep_min_warm();
        eventually(&pool, |e| {
            e.values().all(|x| x.retry_at.is_some() && x.busy == 0)
        })
        .await;
        let backoff = pool.lock()[&("f".to_string(), 1)].backoff;
        assert_eq!(backoff, next_backoff(FIRST_START_BACKOFF));
        // Within the backoff, no new start is tried.
        pool.keep_min_warm();
        assert_eq!(pool.lock()[&("f".to_string(), 1)].busy, 0);
    }

    #[tokio::test]
    async fn the_idle_cap_stops_the_least_recently_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = pool(1);
        // Two idle executors of two functions, the first used less recently.
        for (name, version) in [("f1", 1), ("f2", 2)] {
            let mut spec = call(dir.path(), version, READY, warm(0, 60_000));
            spec.key = (name.into(), version);
            let executor = WarmExecutor::start(&spec.argv, &[], dir.path(), spec.timeout)
                .await
                .expect("ready");
            pool.prewarm(spec);
            pool.lock()
                .get_mut(&(name.to_string(), version))
                .expect("entry")
                .idle
                .push(executor);
        }
        pool.reap();
        let entries = pool.lock();
        assert!(
            !entries.contains_key(&("f1".to_string(), 1)),
            "the older stayed"
        );
        assert_eq!(entries[&("f2".to_string(), 2)].idle.len(), 1);
    }

    /// Whether the process with this pid is still running (not gone, not a zombie).
    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    }

    #[tokio::test]
    async fn min_warm_is_capped_by_the_slots_and_starts_are_paced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = Pool::new(PoolLimits {
            max_idle: 8,
            slots: 3,
            max_starts: 1,
            warm_memory_bytes: u64::MAX,
        });
        let slow_ready = "sleep 0.2; printf '\\000\\000\\000\\001R'; cat >/dev/null";
        pool.prewarm(call(dir.path(), 1, slow_ready, warm(1000, 0)));
        assert_eq!(pool.lock()[&("f".to_string(), 1)].warm.min_warm, 3);
        pool.keep_min_warm();
        // One start at a time: the first is under way, the others wait their turn.
        assert_eq!(pool.lock()[&("f".to_string(), 1)].busy, 1);
        pool.keep_min_warm();
        assert_eq!(pool.lock()[&("f".to_string(), 1)].busy, 1);
        // Each start that ends hands its turn on, up to the cap and no further.
        eventually(&pool, |e| idle(e, 1) == 3).await;
        let entries = pool.lock();
        assert_eq!(entries[&("f".to_string(), 1)].busy, 0);
        assert_eq!(pool.inner.starting.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn no_pre_start_past_the_memory_budget() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = Pool::new(PoolLimits {
            warm_memory_bytes: 0,
            ..PoolLimits::for_slots(2, 0)
        });
        pool.prewarm(call(dir.path(), 1, READY, warm(2, 0)));
        pool.keep_min_warm();
        let entries = pool.lock();
        assert_eq!(entries[&("f".to_string(), 1)].busy, 0);
        assert!(pool.inner.memory_paused.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn retiring_stops_idle_executors_and_abandons_pending_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pool = pool(8);
        pool.prewarm(call(dir.path(), 1, READY, warm(1, 60_000)));
        pool.keep_min_warm();
        eventually(&pool, |e| idle(e, 1) == 1).await;
        let idle_pid = pool.lock()[&("f".to_string(), 1)].idle[0].pid();
        // Version 2 never gets ready: its start is pending when the function goes.
        pool.prewarm(call(dir.path(), 2, "sleep 30", warm(1, 60_000)));
        pool.keep_min_warm();
        assert_eq!(pool.lock()[&("f".to_string(), 2)].busy, 1);
        pool.retire("f", 2);
        assert_eq!(idle(&pool.lock(), 1), 0);
        eventually(&pool, |e| e.values().all(|x| x.busy == 0)).await;
        assert_eq!(pool.inner.starting.load(Ordering::Acquire), 0);
        pool.reap();
        assert!(pool.lock().is_empty());
        let deadline = Instant::now() + Duration::from_secs(2);
        while alive(idle_pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!alive(idle_pid), "the idle executor outlived its function");
        // A late prewarm of a removed version keeps nothing ready.
        pool.prewarm(call(dir.path(), 1, READY, warm(1, 60_000)));
        pool.keep_min_warm();
        assert!(pool.lock().is_empty());
    }
}

//! Warm executor pools: per function version, executors that stay alive between calls.
//!
//! A call takes an idle executor or starts a new one (a cold start, timed as the load phase),
//! and gives it back when the call succeeds; a failed call drops (kills and reaps) its executor.
//! So a function's executors grow with its concurrent calls, up to the worker's slots or the
//! function's concurrency cap, and [`Pool::reap`] shrinks them back: an executor idle past the
//! function's idle timeout is stopped, except the `min_warm` kept ready, which it also tops up.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Limits;
use super::warm::WarmExecutor;
use crate::proto::{Outcome, WarmSpec};

/// Which executors can serve a call: one function version.
pub type PoolKey = (String, u32);

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
    /// Where its working directory is made.
    pub work_root: PathBuf,
    /// The payload.
    pub payload: Bytes,
    /// Whether the payload is JSON.
    pub json: bool,
    /// The call's (and the start-up's) timeout.
    pub timeout: Duration,
    /// Output bounds.
    pub limits: Limits,
}

struct Recipe {
    argv: Vec<OsString>,
    env: Vec<(String, String)>,
    work_root: PathBuf,
    timeout: Duration,
}

struct Entry {
    warm: WarmSpec,
    recipe: Arc<Recipe>,
    idle: Vec<WarmExecutor>,
    /// Executors serving a call or starting.
    busy: usize,
}

/// A cheap, cloneable handle on a worker's warm executors.
#[derive(Clone, Default)]
pub struct Pool {
    entries: Arc<Mutex<HashMap<PoolKey, Entry>>>,
}

/// How many executors a pool holds for one function version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSize {
    /// Waiting for a call.
    pub idle: usize,
    /// Serving a call or starting.
    pub busy: usize,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Entry>> {
        self.entries.lock().expect("pool lock poisoned")
    }

    /// The function version's entry, made from `call` if it has none; `call`'s warm settings
    /// apply from now on.
    fn entry<'a>(entries: &'a mut HashMap<PoolKey, Entry>, call: &WarmCall) -> &'a mut Entry {
        // Older versions of the function keep no executors ready any more: they shrink away.
        for (key, older) in entries.iter_mut() {
            if key.0 == call.key.0 && key.1 < call.key.1 {
                older.warm.min_warm = 0;
            }
        }
        let entry = entries.entry(call.key.clone()).or_insert_with(|| Entry {
            warm: call.warm,
            recipe: Arc::new(Recipe {
                argv: call.argv.clone(),
                env: call.env.clone(),
                work_root: call.work_root.clone(),
                timeout: call.timeout,
            }),
            idle: Vec::new(),
            busy: 0,
        });
        entry.warm = call.warm;
        entry
    }

    /// Makes the pool keep `call.warm.min_warm` executors of this function version ready from
    /// its next round on, before any call.
    pub fn prewarm(&self, call: WarmCall) {
        Self::entry(&mut self.lock(), &call);
    }

    /// Runs one call on a warm executor.
    pub async fn run(&self, call: WarmCall) -> Outcome {
        let idle = {
            let mut entries = self.lock();
            let entry = Self::entry(&mut entries, &call);
            entry.busy += 1;
            // The most recently used executor is the warmest (its caches are hot).
            entry.idle.pop()
        };
        let (executor, cold_start, init_us) = match idle {
            Some(executor) => (Ok(executor), false, 0),
            None => {
                let started = Instant::now();
                let executor =
                    WarmExecutor::start(&call.argv, &call.env, &call.work_root, call.timeout).await;
                (executor, true, started.elapsed().as_micros() as u64)
            }
        };
        let mut executor = match executor {
            Ok(executor) => executor,
            Err(failure) => {
                self.release(&call.key, None);
                return failed(failure, cold_start, init_us, 0);
            }
        };
        let started = Instant::now();
        let answer = executor
            .call(&call.payload, call.json, call.timeout, call.limits)
            .await;
        let run_us = started.elapsed().as_micros() as u64;
        match answer {
            Ok(answer) => {
                self.release(&call.key, Some(executor));
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
                }
            }
            Err(failure) => {
                // An exception leaves the executor sound; anything else does not.
                let keep = failure.reason == crate::proto::FailureReason::Exception;
                self.release(&call.key, keep.then_some(executor));
                failed(failure, cold_start, init_us, run_us)
            }
        }
    }

    fn release(&self, key: &PoolKey, executor: Option<WarmExecutor>) {
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(key) {
            entry.busy = entry.busy.saturating_sub(1);
            if let Some(executor) = executor {
                entry.idle.push(executor);
            }
        }
    }

    /// Stops executors idle past their function's idle timeout (keeping `min_warm` per
    /// function) and starts executors to bring each function back up to `min_warm`.
    pub async fn reap(&self) {
        let now = Instant::now();
        let mut stopped = Vec::new();
        let mut top_up = Vec::new();
        {
            let mut entries = self.lock();
            for (key, entry) in entries.iter_mut() {
                let idle_timeout = Duration::from_millis(entry.warm.idle_timeout_ms);
                let min = entry.warm.min_warm as usize;
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
                let live = entry.idle.len() + entry.busy;
                for _ in live..min {
                    entry.busy += 1;
                    top_up.push((key.clone(), entry.recipe.clone()));
                }
            }
            entries.retain(|_, e| e.busy > 0 || !e.idle.is_empty() || e.warm.min_warm > 0);
        }
        if !stopped.is_empty() {
            tracing::debug!(executors = stopped.len(), "stopping idle warm executors");
        }
        // Dropping an executor kills its process group and reaps it.
        drop(stopped);
        for (key, recipe) in top_up {
            let started =
                WarmExecutor::start(&recipe.argv, &recipe.env, &recipe.work_root, recipe.timeout)
                    .await;
            match started {
                Ok(executor) => self.release(&key, Some(executor)),
                Err(failure) => {
                    tracing::warn!(function = %key.0, version = key.1, error = %failure.message, "cannot pre-start a warm executor");
                    self.release(&key, None);
                }
            }
        }
    }

    /// How many executors the pool holds for a function version.
    pub fn size(&self, key: &PoolKey) -> PoolSize {
        self.lock()
            .get(key)
            .map_or(PoolSize { idle: 0, busy: 0 }, |e| PoolSize {
                idle: e.idle.len(),
                busy: e.busy,
            })
    }
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
    }
}

//! Code checks run on workers: a registration's Python compile, when the server has no
//! interpreter of its own, goes to the first connected worker that can run one.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::Broker;
use super::outbox::Outbound;
use crate::proto::{CompileVerdict, Frame};

/// The most workers asked before a check gives up.
const MAX_ASKED: usize = 3;

/// Checks sent to workers and not yet answered.
#[derive(Default)]
pub(super) struct Checks {
    next: u64,
    /// By check number: the worker asked, and who waits for its answer.
    waiting: HashMap<u64, (u64, oneshot::Sender<CompileVerdict>)>,
}

/// How a check on the workers ended.
#[derive(Debug)]
pub enum WorkerCheck {
    /// A worker compiled the code.
    Verdict(CompileVerdict),
    /// The worker asked did not answer in time.
    TimedOut,
    /// No worker could compile it: none is connected, or none has an interpreter.
    Unchecked(String),
}

impl Broker {
    /// Compiles the Python module `source` on the first connected worker that can (in worker id
    /// order, at most three asked), each given `timeout` to answer.
    pub async fn check_on_worker(
        &self,
        file: &str,
        source: Bytes,
        timeout: Duration,
    ) -> WorkerCheck {
        let mut why = String::from("no worker is connected");
        let mut asked = Vec::new();
        while asked.len() < MAX_ASKED {
            let Some((worker, answer)) = self.send_check(file, &source, &asked) else {
                break;
            };
            asked.push(worker);
            match tokio::time::timeout(timeout, answer).await {
                Err(_) => {
                    self.forget_checks_of(Some(worker));
                    return WorkerCheck::TimedOut;
                }
                // The worker left before answering: ask the next.
                Ok(Err(_)) => why = format!("worker {worker} left before answering"),
                Ok(Ok(verdict)) => match verdict.unavailable {
                    Some(reason) => why = reason,
                    None => return WorkerCheck::Verdict(verdict),
                },
            }
        }
        WorkerCheck::Unchecked(why)
    }

    /// Sends a check to the first connected, non-draining worker not in `asked`.
    fn send_check(
        &self,
        file: &str,
        source: &Bytes,
        asked: &[u64],
    ) -> Option<(u64, oneshot::Receiver<CompileVerdict>)> {
        let (tx, rx) = oneshot::channel();
        let mut checks = self.checks();
        checks.next += 1;
        let check = checks.next;
        let frame = Frame::CheckCode {
            check,
            file: file.into(),
            source: source.clone(),
        };
        let state = self.lock();
        let (&worker, entry) = state.workers.iter().find(|(id, w)| {
            !w.draining && w.runs(crate::proto::Runtime::Python) && !asked.contains(id)
        })?;
        entry.send(Outbound::Frame(frame));
        drop(state);
        checks.waiting.insert(check, (worker, tx));
        Some((worker, rx))
    }

    /// Hands a worker's answer to the registration waiting for it.
    pub(crate) fn code_checked(&self, worker: u64, check: u64, verdict: CompileVerdict) {
        let mut checks = self.checks();
        if checks
            .waiting
            .get(&check)
            .is_some_and(|(w, _)| *w == worker)
        {
            if let Some((_, tx)) = checks.waiting.remove(&check) {
                let _ = tx.send(verdict);
            }
        }
    }

    /// Drops the checks waiting on `worker` (every check when `None`), whose waiters then move on.
    pub(crate) fn forget_checks_of(&self, worker: Option<u64>) {
        self.checks()
            .waiting
            .retain(|_, (w, _)| worker.is_some_and(|id| id != *w));
    }
}

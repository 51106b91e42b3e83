//! Cancelling queued tasks: one by id, every waiting task of a function (or of one caller, or
//! one version), and a removed function's.
//!
//! A cancelled task is taken off its queue under the broker's lock and ends FAILED with reason
//! `cancelled`, as any end does: its end record is queued to the store's writer (which groups
//! many into one commit, so a queue of 100,000 costs a few dozen fsyncs, not one each), its
//! waiters and the event stream hear of it once the end is on disk, and the caller is answered
//! only then. A RUNNING task is not cancelled: its worker runs it to its end (see
//! `docs/architecture.md`, The life of a task).

use std::sync::Arc;

use tokio::sync::oneshot;

use super::{Broker, Error, state};
use crate::store::{self, TaskRecord};

/// How many tasks one hold of the broker's lock cancels at most: a queue of 100,000 is
/// cancelled in steps, so dispatch and submits go on between them.
const CANCEL_STEP: usize = 4096;

/// What [`Broker::cancel`] did with a task.
#[derive(Debug)]
pub enum Cancel {
    /// It was QUEUED: it has ended FAILED `cancelled`, and that end is on disk. Its final
    /// record.
    Cancelled(TaskRecord),
    /// It is RUNNING on a worker and was left alone. Its record now.
    Running(TaskRecord),
    /// It has already ended (its end may still be being committed). Its record as readers see
    /// it.
    Finished(TaskRecord),
    /// No task with this id is in memory: it finished earlier, or never existed (read the
    /// store).
    NotActive,
}

/// Which waiting tasks of a function a cancel takes.
#[derive(Debug, Clone, Copy, Default)]
pub struct CancelFilter {
    /// Only the tasks of this version (`None`: every version).
    pub version: Option<u32>,
    /// Only the tasks this user made (`None`: everyone's).
    pub caller: Option<u32>,
}

impl CancelFilter {
    fn takes(&self, record: &TaskRecord) -> bool {
        self.version.is_none_or(|v| record.version == v)
            && self.caller.is_none_or(|c| record.caller == c)
    }
}

impl Broker {
    /// Cancels task `id` if it is QUEUED, recording `message` as why; returns once its end is
    /// durable. A RUNNING or finished task is left as it is and reported as such; one whose end
    /// is being committed is reported once that end is durable.
    pub async fn cancel(&self, id: u128, message: &str) -> Result<Cancel, Error> {
        let taken = {
            let mut state = self.lock();
            let Some(active) = state.tasks.get_mut(&id) else {
                return Ok(Cancel::NotActive);
            };
            if active.is_finishing() {
                Err(active.watch())
            } else {
                let record = active.current().clone();
                match state.cancel_queued(id, message, &self.inner.store) {
                    Some(commit) => Ok(commit),
                    None => return Ok(Cancel::Running(record)),
                }
            }
        };
        let commit = match taken {
            Ok(commit) => commit,
            Err(ending) => {
                let finished = ending.await.map_err(|_| closed())??;
                return Ok(Cancel::Finished(finished.record.clone()));
            }
        };
        let (tx, rx) = oneshot::channel();
        let end = commit.finished.record.clone();
        self.finalize_noting(id, commit, Some(tx));
        settled(vec![rx]).await?;
        Ok(Cancel::Cancelled(end))
    }

    /// Cancels every task waiting in `name`'s queue that `filter` takes (every version of the
    /// name, live or not), recording `message` as why; returns how many once all their ends
    /// are durable.
    pub async fn cancel_queued_of(
        &self,
        name: &str,
        filter: CancelFilter,
        message: &str,
    ) -> Result<usize, Error> {
        let mut commits = Vec::new();
        loop {
            let step = self.lock().cancel_waiting(
                name,
                |r| filter.takes(r),
                CANCEL_STEP,
                message,
                &self.inner.store,
            );
            let last = step.len() < CANCEL_STEP;
            commits.extend(step);
            if last {
                break;
            }
        }
        self.settle_cancelled(name, commits).await
    }

    /// Hands the ends of cancelled tasks of `name` to their commits; returns how many once
    /// every one is durable.
    pub(super) async fn settle_cancelled(
        &self,
        name: &str,
        commits: Vec<(u128, state::PendingCommit)>,
    ) -> Result<usize, Error> {
        let cancelled = commits.len();
        let dones = commits
            .into_iter()
            .map(|(id, commit)| {
                let (tx, rx) = oneshot::channel();
                self.finalize_noting(id, commit, Some(tx));
                rx
            })
            .collect();
        if cancelled > 0 {
            tracing::info!(function = %name, tasks = cancelled, "cancelled queued tasks");
        }
        settled(dones).await?;
        Ok(cancelled)
    }
}

/// Waits until every cancelled end is durable; the first error, if any.
async fn settled(
    dones: Vec<oneshot::Receiver<Result<(), Arc<store::Error>>>>,
) -> Result<(), Error> {
    for done in dones {
        done.await.map_err(|_| closed())??;
    }
    Ok(())
}

/// The error of a commit whose outcome never came: the store closed.
fn closed() -> Error {
    Error::Store(Arc::new(store::Error::Closed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(version: u32, caller: u32) -> TaskRecord {
        TaskRecord {
            caller,
            ..TaskRecord::queued(1, 1, "f".into(), version)
        }
    }

    #[test]
    fn a_filter_takes_its_version_and_caller_only() {
        let all = CancelFilter::default();
        assert!(all.takes(&task(1, 7)) && all.takes(&task(2, 8)));
        let v2 = CancelFilter {
            version: Some(2),
            caller: None,
        };
        assert!(!v2.takes(&task(1, 7)) && v2.takes(&task(2, 7)));
        let mine = CancelFilter {
            version: None,
            caller: Some(7),
        };
        assert!(mine.takes(&task(1, 7)) && !mine.takes(&task(1, 8)));
    }
}

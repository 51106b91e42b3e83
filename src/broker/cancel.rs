//! Cancelling tasks: one by id (QUEUED or RUNNING), every waiting task of a function (or of
//! one caller, or one version), and a removed function's.
//!
//! A cancelled QUEUED task is taken off its queue under the broker's lock and ends FAILED with
//! reason `cancelled`, as any end does: its end record is queued to the store's writer (which
//! groups many into one commit, so a queue of 100,000 costs a few dozen fsyncs, not one each),
//! its waiters and the event stream hear of it once the end is on disk, and the caller is
//! answered only then. A RUNNING task's worker is sent a `Cancel` frame: it kills the task's
//! process (or warm executor) and reports the task FAILED `cancelled`, which ends it the same
//! way. A worker lost meanwhile ends it `cancelled` too, never back in its queue.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::events::{Event, TaskEvent};
use super::state::Active;
use super::{Broker, Error, Finished, state};
use crate::proto::FailureReason;
use crate::store::{self, TaskRecord};

/// How many tasks one hold of the broker's lock cancels at most: a queue of 100,000 is
/// cancelled in steps, so dispatch and submits go on between them.
pub(super) const CANCEL_STEP: usize = 4096;

/// How long a bulk cancel may pause in all for event consumers that fall behind (see
/// [`super::events::Events::publish_paced`]).
const PACE_PATIENCE: Duration = Duration::from_secs(5);

/// What [`Broker::cancel`] did with a task.
#[derive(Debug)]
pub enum Cancel {
    /// It was QUEUED: it has ended FAILED `cancelled`, and that end is on disk. Its final
    /// record.
    Cancelled(TaskRecord),
    /// It is RUNNING: its worker was told to stop it, and had not reported by the time the
    /// caller would wait. It ends FAILED `cancelled` once the worker reports or is lost
    /// (unless it ended on its own first). Its record as the cancel found it.
    Stopping(TaskRecord),
    /// It has already ended (its end may still be being committed). Its record as readers see
    /// it.
    Finished(TaskRecord),
    /// No task with this id is in memory: it finished earlier, or never existed (read the
    /// store).
    NotActive,
}

/// What [`Broker::stop_running_of`] did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stopped {
    /// RUNNING tasks that ended `cancelled` within the wait.
    pub stopped: usize,
    /// RUNNING tasks whose workers were told to stop them and had not reported by then.
    pub stopping: usize,
}

/// What a cancel found under the broker's lock.
enum Taken {
    /// A QUEUED task, now ended: the commit of its end.
    Queued(state::PendingCommit),
    /// A RUNNING task (its record then) whose worker was told to stop it, with a waiter for
    /// its end.
    Running(Box<TaskRecord>, super::Waiter),
    /// A task whose end is being committed: a waiter for it.
    Ending(super::Waiter),
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
    /// Cancels task `id`, `by` whom: a QUEUED task ends at once; a RUNNING one is stopped on
    /// its worker, waiting up to `wait` for it to end. Returns once the end is durable (or the
    /// wait is over). A task that ended meanwhile, or had ended, is reported as such; one whose
    /// end is being committed is reported once that end is durable.
    pub async fn cancel(&self, id: u128, by: &str, wait: Duration) -> Result<Cancel, Error> {
        let taken = {
            let mut state = self.lock();
            let Some(active) = state.tasks.get_mut(&id) else {
                return Ok(Cancel::NotActive);
            };
            if active.is_finishing() {
                Taken::Ending(active.watch())
            } else {
                let record = active.current().clone();
                let before = format!("cancelled by {by} before it ran");
                match state.cancel_queued(id, &before, &self.inner.store) {
                    Some(commit) => Taken::Queued(commit),
                    None => {
                        let during = format!("cancelled by {by} while it ran");
                        let running = state.stop_running(id, &during);
                        let end = match state.tasks.get_mut(&id) {
                            // A sync caller hears of the end before it is committed; the
                            // canceller only once it is, so the cancel survives a crash.
                            Some(active) if running => Some(active.watch_durable()),
                            Some(active) => Some(active.watch()),
                            None => None,
                        };
                        match end {
                            Some(end) if running => Taken::Running(Box::new(record), end),
                            // Neither waiting nor leased: off its queue to be cancelled by
                            // `rm` (the function was removed); its end comes shortly.
                            Some(end) => Taken::Ending(end),
                            None => return Ok(Cancel::NotActive),
                        }
                    }
                }
            }
        };
        match taken {
            Taken::Ending(ending) => {
                let finished = ending.await.map_err(|_| closed())??;
                Ok(Cancel::Finished(finished.record.clone()))
            }
            Taken::Running(record, end) => self.stopped(*record, end, wait).await,
            Taken::Queued(commit) => {
                let (tx, rx) = oneshot::channel();
                let end = commit.finished.record.clone();
                self.finalize_noting(id, commit, Some(tx));
                settled(vec![rx]).await?;
                Ok(Cancel::Cancelled(end))
            }
        }
    }

    /// Waits up to `wait` for the end of a RUNNING task its worker was told to stop
    /// (`record` as it was then).
    async fn stopped(
        &self,
        record: TaskRecord,
        end: super::Waiter,
        wait: Duration,
    ) -> Result<Cancel, Error> {
        match tokio::time::timeout(wait, end).await {
            // Its record as the cancel found it (RUNNING): a read now could catch its end
            // answered early to a sync caller, not yet on disk.
            Err(_) => Ok(Cancel::Stopping(record)),
            Ok(ended) => {
                let finished = ended.map_err(|_| closed())??;
                let end = finished.record.clone();
                Ok(if end.failure == Some(FailureReason::Cancelled) {
                    Cancel::Cancelled(end)
                } else {
                    Cancel::Finished(end)
                })
            }
        }
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

    /// Stops every RUNNING task of `name` that `filter` takes, `by` whom, on its worker; waits up
    /// to `wait` for their ends. Returns how many ended `cancelled` and how many still run
    /// (their workers have not reported; each ends `cancelled` when its worker reports or is
    /// lost). A task that ended on its own meanwhile counts in neither.
    pub async fn stop_running_of(
        &self,
        name: &str,
        filter: CancelFilter,
        by: &str,
        wait: Duration,
    ) -> Result<Stopped, Error> {
        let during = format!("cancelled by {by} while it ran");
        let ends = self
            .lock()
            .stop_running_of(name, |r| filter.takes(r), &during);
        let mut stopped = Stopped::default();
        let deadline = tokio::time::Instant::now() + wait;
        for end in ends {
            match tokio::time::timeout_at(deadline, end).await {
                Err(_) => stopped.stopping += 1,
                Ok(ended) => {
                    let finished = ended.map_err(|_| closed())??;
                    if finished.record.failure == Some(FailureReason::Cancelled) {
                        stopped.stopped += 1;
                    }
                }
            }
        }
        if stopped.stopped + stopped.stopping > 0 {
            tracing::info!(function = %name, stopped = stopped.stopped, stopping = stopped.stopping, "stopped running tasks");
        }
        Ok(stopped)
    }

    /// Settles the ends of cancelled tasks of `name` in steps of [`CANCEL_STEP`]; returns how
    /// many once every one is durable (or the first commit's error; a failed end is retried as
    /// any is, see [`Broker::finalize_after`]).
    pub(super) async fn settle_cancelled(
        &self,
        name: &str,
        commits: Vec<(u128, state::PendingCommit)>,
    ) -> Result<usize, Error> {
        let cancelled = commits.len();
        // On a task of its own: the tasks are taken and their ends queued already, so their
        // settling must not stop halfway when the request's client goes away.
        let broker = self.clone();
        let settling = tokio::spawn(async move {
            let mut patience = PACE_PATIENCE;
            let mut first_error = None;
            let mut commits = commits.into_iter().peekable();
            while commits.peek().is_some() {
                let step: Vec<_> = commits.by_ref().take(CANCEL_STEP).collect();
                if let Err(e) = broker.settle_step(step, &mut patience).await {
                    first_error.get_or_insert(e);
                }
            }
            first_error
        });
        if cancelled > 0 {
            tracing::info!(function = %name, tasks = cancelled, "cancelled queued tasks");
        }
        match settling.await {
            Ok(None) => Ok(cancelled),
            Ok(Some(e)) => Err(e),
            Err(_) => Err(closed()),
        }
    }

    /// One step of [`Broker::settle_cancelled`]: once the step's ends are durable, forgets the
    /// tasks in one hold of the lock, answers their waiters, and publishes their events paced to
    /// the event consumers ([`super::events::Events::publish_paced`], within what is left of
    /// `patience`), where ending each on its own would publish the whole burst at once and drop
    /// every open event stream.
    async fn settle_step(
        &self,
        step: Vec<(u128, state::PendingCommit)>,
        patience: &mut Duration,
    ) -> Result<(), Error> {
        let mut durable = Vec::with_capacity(step.len());
        let mut error = None;
        for (id, commit) in step {
            let failure = match commit.ack.await {
                Ok(Ok(_)) => {
                    durable.push((id, commit.finished));
                    continue;
                }
                Ok(Err(e)) => e,
                Err(_) => Arc::new(store::Error::Closed),
            };
            // Retried on its own, as any end whose commit failed.
            let (failed, ack) = oneshot::channel();
            let _ = failed.send(Err(failure.clone()));
            let finished = commit.finished;
            self.finalize_after(id, state::PendingCommit { ack, finished });
            error.get_or_insert(Error::Store(failure));
        }
        let ended: Vec<(Active, Arc<Finished>)> = {
            let mut state = self.lock();
            durable
                .into_iter()
                .filter_map(|(id, finished)| state.tasks.remove(&id).map(|a| (a, finished)))
                .collect()
        };
        let mut events = Vec::with_capacity(ended.len());
        for (mut active, finished) in ended {
            self.count_end(&finished.record);
            events.push(Event::Task(TaskEvent::of(
                &finished.record,
                active.func.owner,
            )));
            for waiter in active.take_waiters() {
                let _ = waiter.send(Ok(finished.clone()));
            }
        }
        self.inner.events.publish_paced(events, patience).await;
        error.map_or(Ok(()), Err)
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

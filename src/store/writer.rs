//! The group-commit writer: one thread that applies every write, many per durable transaction.
//!
//! Callers queue [`Write`]s; the thread takes the first, drains whatever else is already queued
//! (up to a batch limit), applies them all in one write transaction with immediate durability,
//! commits once, and only then acknowledges each of them.
//!
//! A commit that fails with an I/O error (a full disk, most often) faults the writer. Waiters
//! of the failed batch are answered with the error ([`Error::DiskFull`] for lack of space);
//! writes nobody waits on are held. redb refuses all I/O on a `Database` after a failed write,
//! so the writer reopens the file at once (reads that miss redb's cache need it), and then,
//! every second once free space has grown (or every ten seconds regardless), re-applies the
//! held writes; when they are stored the fault clears. While faulted, new waiters are refused
//! at once and new writes nobody waits on join the held ones, so they land in order.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{Database, Durability, ReadableTable, WriteTransaction};
use tokio::sync::oneshot;

use super::idempotency::KeyRecord;
use super::records::{self, FunctionRecord, TaskRecord};
use super::space::out_of_space;
use super::values::{self, Kind, Values};
use super::{
    BLOBS, Error, FUNCTIONS, HEADS, LOGS, PAYLOADS, PENDING, REMOVED, RESULTS, Shared, TASKS, db,
    decode_task, space,
};

/// The most writes one transaction groups (a group queued with `Op::Group` may take it past this:
/// a group is never split).
const MAX_BATCH: usize = 4096;

/// One change to the store.
#[derive(Debug)]
pub enum Write {
    /// Registers a new version of a function: the version is the highest ever used for the
    /// name plus one (the record's own version is ignored), and the code blob is stored once.
    Register {
        /// The function (version assigned on commit).
        record: FunctionRecord,
        /// Its code bundle.
        code: Bytes,
    },
    /// Registers a new version of a function whose code is an uploaded blob file (see
    /// [`super::blobs`]): as [`Write::Register`], with nothing put in the blob table.
    RegisterFile {
        /// The function (version assigned on commit).
        record: FunctionRecord,
    },
    /// Removes a function: its live version and, for the API, every version it has (see
    /// [`REMOVED`](super::REMOVED)); the rows stay for the tasks that pin them.
    Delete {
        /// The function's name.
        name: String,
    },
    /// Records a new QUEUED task and its payload.
    Enqueue {
        /// The task.
        record: TaskRecord,
        /// What it will read on stdin.
        payload: Bytes,
    },
    /// Replaces a task's record (a state change that is not the end).
    Update {
        /// The task.
        record: TaskRecord,
    },
    /// Records a finished task with its result and stderr; its payload stays (a replay reads
    /// it) until the task is purged.
    Finish {
        /// The task in its end state.
        record: TaskRecord,
        /// Its stdout.
        result: Bytes,
        /// Its captured stderr.
        logs: Bytes,
    },
    /// Records an idempotency key; queued in one group with the enqueues of the tasks it
    /// names (see [`super::Store::submit_group`]), so both commit together.
    RememberKey {
        /// The user whose key it is.
        caller: u32,
        /// The key as the client sent it.
        key: String,
        /// What it stands for.
        record: KeyRecord,
    },
    /// Removes up to `max` idempotency keys created before `before_ms`; the write's answer is
    /// how many it removed.
    ExpireKeys {
        /// The age limit (Unix ms).
        before_ms: u64,
        /// The most keys removed in this write.
        max: u32,
    },
    /// Makes a kept version of a function its live one again. Commits as the version when the
    /// function is live and the version is kept (not removed by `rm`), else as 0 and changes
    /// nothing.
    Rollback {
        /// The function's name.
        name: String,
        /// The version to make live.
        version: u32,
    },
    /// One retention step (see [`super::retention`]): deletes up to `limit` finished tasks
    /// whose ids are below `before_id`, with their values and index keys, and when fewer were
    /// left, the versions and blobs nothing refers to. Acknowledged with the tasks deleted.
    Purge {
        /// Only tasks with ids below this (made before the retention cut-off).
        before_id: u128,
        /// The most tasks to delete.
        limit: usize,
    },
    /// Adds usage that is no task's (requests to HTTP-service functions) to its buckets.
    AddUsage {
        /// The sums to add, one per bucket.
        rows: Vec<super::usage::UsageRow>,
    },
}

type Ack = oneshot::Sender<Result<u32, Arc<Error>>>;

/// A queued write and, when someone waits on its commit, where to answer.
type Queued = (Box<Write>, Option<Ack>);

pub(super) enum Op {
    Write {
        write: Box<Write>,
        ack: Option<Ack>,
    },
    /// Nothing to write: makes the writer plan its next timed check again.
    Wake,
    Close(oneshot::Sender<()>),
    /// Writes that must commit in one transaction: the writer takes them into one batch.
    Group(Vec<Queued>),
}

/// How often a faulted writer retries (reopening the database if it must).
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// A faulted writer whose free space has not grown still retries this often (a quota being
/// raised does not show in `statvfs`).
const RETRY_BLIND_EVERY: Duration = Duration::from_secs(10);
/// How much free space must grow before a faulted writer retries early.
const SPACE_GAIN_BYTES: u64 = 1 << 20;

/// Starts the writer thread and returns the queue that feeds it.
pub(super) fn start(shared: Arc<Shared>) -> mpsc::Sender<Op> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("faasd-store-writer".into())
        .spawn(move || Writer::new(shared).run(rx))
        .expect("the OS refused to start the store writer thread");
    tx
}

/// A failed write the writer has not recovered from yet.
#[derive(Debug)]
struct Fault {
    /// Whether it was for lack of space (writes are refused with [`Error::DiskFull`]).
    full: bool,
    /// Whether the open `Database` has refused I/O since and must be reopened.
    poisoned: bool,
    /// When to retry next.
    next_try: Instant,
    /// When the unacknowledged writes were last tried.
    last_try: Instant,
    /// Free bytes when they were last tried.
    free_bytes: u64,
}

/// The writer thread's state.
struct Writer {
    shared: Arc<Shared>,
    /// Writes nobody waits on (RUNNING records, sync calls' QUEUED records) that could not be
    /// committed: re-applied, in order and before anything newer, once the store recovers.
    held: Vec<Queued>,
    fault: Option<Fault>,
}

impl Writer {
    fn new(shared: Arc<Shared>) -> Writer {
        Writer {
            shared,
            held: Vec::new(),
            fault: None,
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Op>) {
        let mut batch: Vec<Queued> = Vec::new();
        loop {
            let wait = self.next_wake().saturating_duration_since(Instant::now());
            let mut close = None;
            match rx.recv_timeout(wait) {
                Ok(Op::Write { write, ack }) => batch.push((write, ack)),
                Ok(Op::Group(writes)) => batch.extend(writes),
                Ok(Op::Wake) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Ok(Op::Close(done)) => close = Some(done),
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            while close.is_none() && batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Op::Write { write, ack }) => batch.push((write, ack)),
                    // A group may take the batch past MAX_BATCH: it is never split.
                    Ok(Op::Group(writes)) => batch.extend(writes),
                    Ok(Op::Wake) => {}
                    Ok(Op::Close(done)) => close = Some(done),
                    Err(_) => break,
                }
            }
            self.tick(Instant::now());
            if !batch.is_empty() {
                self.commit(&mut batch);
            }
            if let Some(done) = close {
                if !self.held.is_empty() {
                    // Never acknowledged; recovery at the next start treats their tasks as
                    // the store last saw them.
                    tracing::warn!(
                        writes = self.held.len(),
                        "store closed with unstored writes"
                    );
                }
                // Writes queued behind the close are refused: their acks drop with `rx`.
                let _ = done.send(());
                return;
            }
        }
    }

    /// When the writer must wake with nothing queued: its next retry or space measurement.
    fn next_wake(&self) -> Instant {
        let mut wake = Instant::now() + Duration::from_secs(3600);
        if let Some(fault) = &self.fault {
            wake = wake.min(fault.next_try);
        }
        let watch = self
            .shared
            .space
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(watch) = watch.as_ref() {
            wake = wake.min(watch.next_check());
        }
        wake
    }

    /// Runs `f` on the free-space watch, when the store has one.
    fn with_space_watch(&self, f: impl FnOnce(&mut super::space::Watch)) {
        let mut space = self
            .shared
            .space
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(watch) = space.as_mut() {
            f(watch);
        }
    }

    /// Timed work: measures free space when due, and retries after a fault when due.
    fn tick(&mut self, now: Instant) {
        self.with_space_watch(|watch| watch.check_if_due(now));
        if self.fault.as_ref().is_some_and(|f| now >= f.next_try) {
            self.recover(now);
        }
    }

    /// One recovery attempt: reopens the database if it must, then, if space may have
    /// returned, re-applies the held writes; the fault clears once they are stored.
    fn recover(&mut self, now: Instant) {
        let Some(fault) = self.fault.as_mut() else {
            return;
        };
        fault.next_try = now + RETRY_EVERY;
        if fault.poisoned {
            let started = Instant::now();
            if let Err(e) = self.shared.reopen() {
                tracing::warn!(error = %e, "cannot reopen the store yet; retrying");
                return;
            }
            fault.poisoned = false;
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "reopened the store after a failed write"
            );
        }
        let free_bytes = free_bytes(&self.shared);
        let gained = free_bytes >= fault.free_bytes.saturating_add(SPACE_GAIN_BYTES);
        if fault.full && !gained && now < fault.last_try + RETRY_BLIND_EVERY {
            return;
        }
        fault.last_try = now;
        fault.free_bytes = free_bytes;
        if self.held.is_empty() {
            self.clear_fault();
            return;
        }
        let held = std::mem::take(&mut self.held);
        let count = held.len();
        match self.apply_logged(&held, true) {
            Ok(_) => {
                tracing::info!(
                    writes = count,
                    "store recovered: unstored writes re-applied"
                );
                self.clear_fault();
            }
            Err(e) => {
                self.held = held;
                self.note_fault(&e, now);
            }
        }
    }

    fn clear_fault(&mut self) {
        if self.fault.take().is_some_and(|f| f.full) {
            tracing::info!("the data directory has space again: writes are stored again");
        }
        self.shared.set_full(false);
    }

    /// Records a failed commit: the database is poisoned if the error was an I/O one.
    fn note_fault(&mut self, err: &Error, now: Instant) {
        let full = io_fault(err) == Some(true);
        // `/healthz` should show the space the failure found, not wait for the next check.
        self.with_space_watch(|watch| {
            watch.due_now();
            watch.check_if_due(now);
        });
        let poisoned = poisons(err);
        let free_bytes = free_bytes(&self.shared);
        match self.fault.as_mut() {
            Some(fault) => {
                fault.poisoned |= poisoned;
                fault.full = full;
                fault.free_bytes = free_bytes;
            }
            None => {
                self.fault = Some(Fault {
                    full,
                    poisoned,
                    // Reopen at once, so reads that miss redb's cache work again.
                    next_try: now,
                    last_try: now,
                    free_bytes,
                });
            }
        }
        self.shared.set_full(full);
    }

    /// Commits a batch and answers its waiters. While faulted, nothing is tried: waiters are
    /// refused at once and unacknowledged writes are held for the recovery.
    fn commit(&mut self, batch: &mut Vec<Queued>) {
        if let Some(fault) = &self.fault {
            let err = Arc::new(if fault.full {
                self.shared.disk_full()
            } else {
                previous_io()
            });
            self.refuse(batch, &err);
            return;
        }
        let durable = batch.iter().any(|(_, ack)| ack.is_some());
        match self.apply_logged(batch, durable) {
            Ok(versions) => {
                for ((_, ack), version) in batch.drain(..).zip(versions) {
                    if let Some(ack) = ack {
                        let _ = ack.send(Ok(version));
                    }
                }
            }
            Err(err) if io_fault(&err).is_some() => {
                self.note_fault(&err, Instant::now());
                let err = Arc::new(if io_fault(&err) == Some(true) {
                    self.shared.disk_full()
                } else {
                    err
                });
                self.refuse(batch, &err);
            }
            Err(err) => {
                // Not an I/O failure (a record that cannot be encoded, say): the batch is
                // dropped and the database stays usable.
                let err = Arc::new(err);
                for (_, ack) in batch.drain(..) {
                    if let Some(ack) = ack {
                        let _ = ack.send(Err(err.clone()));
                    }
                }
            }
        }
    }

    /// Answers every waiter of `batch` with `err` and holds the writes nobody waits on.
    fn refuse(&mut self, batch: &mut Vec<Queued>, err: &Arc<Error>) {
        for (write, ack) in batch.drain(..) {
            match ack {
                Some(ack) => {
                    let _ = ack.send(Err(err.clone()));
                }
                None => self.held.push((write, None)),
            }
        }
    }

    /// Applies writes in one transaction, logging a failure and the time taken.
    fn apply_logged(&self, batch: &[Queued], durable: bool) -> Result<Vec<u32>, Error> {
        let started = Instant::now();
        let quick_repair = self.shared.quick_repair.load(Ordering::Acquire);
        let result = self.shared.database().and_then(|database| {
            apply(&database, &self.shared.values, batch, durable, quick_repair)
        });
        match &result {
            Err(err) => tracing::error!(error = %err, writes = batch.len(), "store commit failed"),
            Ok(_) => self
                .shared
                .metrics
                .store_committed(started.elapsed(), batch.len()),
        }
        tracing::trace!(
            writes = batch.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "group commit"
        );
        result
    }
}

/// Free bytes in the data directory (0 if they cannot be measured).
fn free_bytes(shared: &Shared) -> u64 {
    space::measure(&shared.data_dir).map_or(0, |(free, _)| free)
}

/// The error a faulted writer answers when the fault was not for lack of space.
fn previous_io() -> Error {
    Error::Db {
        op: "commit (the store is recovering from an I/O error)",
        source: Box::new(redb::Error::PreviousIo),
    }
}

/// Whether `err` is an I/O failure of the database file (after which redb refuses all I/O on
/// that `Database`) or of a value file, and if so whether it was for lack of space (`ENOSPC`,
/// `EDQUOT`).
fn io_fault(err: &Error) -> Option<bool> {
    let source = match err {
        Error::Db { source, .. } => source,
        Error::Value { source, .. } => return Some(out_of_space(source)),
        _ => return None,
    };
    match source.as_ref() {
        redb::Error::Io(io) => Some(out_of_space(io)),
        redb::Error::PreviousIo => Some(false),
        _ => None,
    }
}

/// Whether the database must be reopened after `err` (redb refuses all I/O once a write of its
/// file failed; a value file's failure leaves it usable).
fn poisons(err: &Error) -> bool {
    matches!(err, Error::Db { .. }) && io_fault(err).is_some()
}

/// The large values of a batch, which go to files (see [`values`]).
fn spilled_values(batch: &[Queued]) -> Vec<values::Item<'_>> {
    let mut items: Vec<values::Item<'_>> = Vec::new();
    for (write, _) in batch {
        match write.as_ref() {
            Write::Enqueue { record, payload } => {
                items.push((record.id, Kind::Payload, payload));
            }
            Write::Finish {
                record,
                result,
                logs,
            } => {
                items.push((record.id, Kind::Result, result));
                items.push((record.id, Kind::Logs, logs));
            }
            _ => {}
        }
    }
    items.retain(|(_, _, bytes)| values::spills(bytes.len()));
    items
}

fn apply(
    database: &Database,
    values: &Values,
    batch: &[Queued],
    durable: bool,
    quick_repair: bool,
) -> Result<Vec<u32>, Error> {
    // Large values are durable in their files before the commit that refers to them.
    values.write_durably(&spilled_values(batch))?;
    let mut txn = database.begin_write().map_err(db("begin write"))?;
    txn.set_quick_repair(quick_repair);
    // A batch nobody waits on (state changes such as RUNNING) skips the fsync: the next
    // durable commit persists it along with its own writes, and recovery treats a RUNNING task
    // like a QUEUED one, so losing such a batch in a crash loses nothing acknowledged.
    if !durable {
        txn.set_durability(Durability::None)
            .map_err(db("set durability"))?;
    }
    // A task that starts and ends within one batch needs only its end record: the RUNNING
    // update would be overwritten in the same transaction.
    let ending: HashSet<u128> = batch
        .iter()
        .filter_map(|(w, _)| match w.as_ref() {
            Write::Finish { record, .. } => Some(record.id),
            _ => None,
        })
        .collect();
    // Version uses first: a purge later in this batch must see the new tasks' versions.
    let enqueued = batch.iter().filter_map(|(w, _)| match w.as_ref() {
        Write::Enqueue { record, .. } => Some(record),
        _ => None,
    });
    super::retention::record_uses(&txn, enqueued)?;
    let mut versions = Vec::with_capacity(batch.len());
    let mut purged = Vec::new();
    {
        let mut tables = TaskTables::open(&txn)?;
        for (write, _) in batch {
            let superseded =
                matches!(write.as_ref(), Write::Update { record } if ending.contains(&record.id));
            versions.push(if superseded {
                0
            } else {
                apply_one(&txn, &mut tables, write, &mut purged)?
            });
        }
    }
    let finished = batch.iter().filter_map(|(w, _)| match w.as_ref() {
        Write::Finish { record, .. } => Some(record),
        _ => None,
    });
    super::usage::record(&txn, finished)?;
    txn.commit().map_err(db("commit"))?;
    // A purged task's files, whether or not it had any: only now that nothing refers to them.
    for id in purged {
        for kind in [Kind::Payload, Kind::Result, Kind::Logs] {
            values.remove(id, kind);
        }
    }
    Ok(versions)
}

/// The tables every task write touches, opened once per transaction.
struct TaskTables<'txn> {
    tasks: redb::Table<'txn, u128, &'static [u8]>,
    payloads: redb::Table<'txn, u128, &'static [u8]>,
    pending: redb::Table<'txn, u64, u128>,
    results: redb::Table<'txn, u128, &'static [u8]>,
    logs: redb::Table<'txn, u128, &'static [u8]>,
    index: super::index::Tables<'txn>,
}

impl<'txn> TaskTables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, Error> {
        Ok(TaskTables {
            tasks: txn.open_table(TASKS).map_err(db("open tasks"))?,
            payloads: txn.open_table(PAYLOADS).map_err(db("open payloads"))?,
            pending: txn.open_table(PENDING).map_err(db("open pending"))?,
            results: txn.open_table(RESULTS).map_err(db("open results"))?,
            logs: txn.open_table(LOGS).map_err(db("open logs"))?,
            index: super::index::Tables::open(txn)?,
        })
    }

    fn put_task(&mut self, record: &TaskRecord) -> Result<(), Error> {
        let bytes = encode("tasks", record)?;
        let old = self
            .tasks
            .insert(record.id, bytes.as_slice())
            .map_err(db("write task"))?;
        self.index.put(record, old.as_ref().map(|o| o.value()))
    }
}

/// Applies one write; a purge adds the ids it deleted to `purged`.
fn apply_one(
    txn: &WriteTransaction,
    t: &mut TaskTables<'_>,
    write: &Write,
    purged: &mut Vec<u128>,
) -> Result<u32, Error> {
    match write {
        Write::Register { record, code } => register(txn, record, Some(code)),
        Write::RegisterFile { record } => register(txn, record, None),
        Write::Delete { name } => {
            let mut heads = txn.open_table(HEADS).map_err(db("open heads"))?;
            heads.remove(name.as_str()).map_err(db("remove head"))?;
            let last = last_version(txn, name)?;
            let mut removed = txn.open_table(REMOVED).map_err(db("open removed"))?;
            removed
                .insert(name.as_str(), last)
                .map_err(db("write removed"))?;
            Ok(0)
        }
        Write::Rollback { name, version } => rollback(txn, name, *version),
        Write::Enqueue { record, payload } => {
            t.put_task(record)?;
            if !values::spills(payload.len()) {
                t.payloads
                    .insert(record.id, payload.as_ref())
                    .map_err(db("write payload"))?;
            }
            t.pending
                .insert(record.seq, record.id)
                .map_err(db("write pending"))?;
            Ok(0)
        }
        Write::Update { record } => {
            t.put_task(record)?;
            Ok(0)
        }
        Write::Finish {
            record,
            result,
            logs,
        } => {
            t.put_task(record)?;
            if !values::spills(result.len()) {
                t.results
                    .insert(record.id, result.as_ref())
                    .map_err(db("write result"))?;
            }
            if !values::spills(logs.len()) {
                t.logs
                    .insert(record.id, logs.as_ref())
                    .map_err(db("write logs"))?;
            }
            t.pending.remove(record.seq).map_err(db("drop pending"))?;
            Ok(0)
        }
        Write::RememberKey {
            caller,
            key,
            record,
        } => {
            super::idempotency::put(txn, *caller, key, record)?;
            Ok(0)
        }
        Write::ExpireKeys { before_ms, max } => {
            super::idempotency::expire(txn, *before_ms, *max as usize)
        }
        Write::Purge { before_id, limit } => purge(txn, t, *before_id, *limit, purged),
        Write::AddUsage { rows } => {
            super::usage::add_rows(txn, rows)?;
            Ok(0)
        }
    }
}

/// A [`Write::Purge`]: the expired tasks, then, once fewer than `limit` were left, the versions
/// and blobs nothing refers to. Returns how many tasks it deleted.
fn purge(
    txn: &WriteTransaction,
    t: &mut TaskTables<'_>,
    before_id: u128,
    limit: usize,
    purged: &mut Vec<u128>,
) -> Result<u32, Error> {
    let ids = purge_tasks(t, before_id, limit)?;
    let count = ids.len();
    if let Some(&highest) = ids.iter().max() {
        super::retention::raise_watermark(txn, highest)?;
    }
    purged.extend(ids);
    if count < limit {
        let floor = t.tasks.first().map_err(db("read first task"))?;
        let floor = floor.map(|(id, _)| id.value());
        let (versions, blobs) = super::retention::purge_versions(txn, floor, before_id)?;
        if versions > 0 {
            tracing::info!(versions, blobs, "purged function versions no task uses");
        }
    }
    Ok(count as u32)
}

/// Deletes up to `limit` finished tasks whose ids are below `before_id`, with their values'
/// rows and index keys. Returns their ids: their value files are removed once the transaction
/// has committed.
fn purge_tasks(t: &mut TaskTables<'_>, before_id: u128, limit: usize) -> Result<Vec<u128>, Error> {
    let candidates = t.index.finished_before(before_id, limit)?;
    let mut purged = Vec::with_capacity(candidates.len());
    for (status, id) in candidates {
        let record = t.tasks.get(id).map_err(db("read task"))?;
        let record = record.map(|b| decode_task(b.value())).transpose()?;
        match record {
            Some(record) if record.status.is_finished() => {
                t.tasks.remove(id).map_err(db("purge task"))?;
                t.index.remove(&record)?;
            }
            // An index key the record no longer matches: dropped, so the range moves on.
            _ => {
                t.index.remove_status_key(status, id)?;
                continue;
            }
        }
        t.payloads.remove(id).map_err(db("purge payload"))?;
        t.results.remove(id).map_err(db("purge result"))?;
        t.logs.remove(id).map_err(db("purge logs"))?;
        purged.push(id);
    }
    Ok(purged)
}

/// The highest version ever used for `name`: the last stored row, or the last one `rm` removed
/// if its rows have been purged since, so a (name, version) never names two codes.
fn last_version(txn: &WriteTransaction, name: &str) -> Result<u32, Error> {
    let functions = txn.open_table(FUNCTIONS).map_err(db("open functions"))?;
    let last_row = functions
        .range((name, 0)..=(name, u32::MAX))
        .map_err(db("scan versions"))?
        .next_back()
        .transpose()
        .map_err(db("scan versions"))?
        .map_or(0, |(key, _)| key.value().1);
    let removed = txn.open_table(REMOVED).map_err(db("open removed"))?;
    let last_removed = removed
        .get(name)
        .map_err(db("read removed"))?
        .map_or(0, |v| v.value());
    Ok(last_row.max(last_removed))
}

/// Applies [`Write::Rollback`]: the version when it became live, else 0.
fn rollback(txn: &WriteTransaction, name: &str, version: u32) -> Result<u32, Error> {
    let mut heads = txn.open_table(HEADS).map_err(db("open heads"))?;
    if heads.get(name).map_err(db("read head"))?.is_none() {
        return Ok(0);
    }
    let removed = txn.open_table(REMOVED).map_err(db("open removed"))?;
    let floor = removed
        .get(name)
        .map_err(db("read removed"))?
        .map_or(0, |v| v.value());
    let functions = txn.open_table(FUNCTIONS).map_err(db("open functions"))?;
    let kept = functions
        .get((name, version))
        .map_err(db("read function"))?
        .is_some();
    if version <= floor || !kept {
        return Ok(0);
    }
    heads.insert(name, version).map_err(db("write head"))?;
    Ok(version)
}

/// Applies [`Write::Register`] (with `code`) or [`Write::RegisterFile`] (without).
fn register(
    txn: &WriteTransaction,
    record: &FunctionRecord,
    code: Option<&Bytes>,
) -> Result<u32, Error> {
    let name = record.name.as_str();
    let version = last_version(txn, name)? + 1;
    let mut functions = txn.open_table(FUNCTIONS).map_err(db("open functions"))?;
    let record = FunctionRecord {
        version,
        ..record.clone()
    };
    let bytes = encode("functions", &record)?;
    functions
        .insert((name, version), bytes.as_slice())
        .map_err(db("write function"))?;
    let mut heads = txn.open_table(HEADS).map_err(db("open heads"))?;
    heads.insert(name, version).map_err(db("write head"))?;
    let Some(code) = code else {
        return Ok(version);
    };
    let mut blobs = txn.open_table(BLOBS).map_err(db("open blobs"))?;
    let hash = record.code_hash.as_slice();
    if blobs.get(hash).map_err(db("read blob"))?.is_none() {
        blobs
            .insert(hash, code.as_ref())
            .map_err(db("write blob"))?;
    }
    Ok(version)
}

fn encode<T: serde::Serialize>(table: &'static str, record: &T) -> Result<Vec<u8>, Error> {
    records::encode(record).map_err(|source| Error::Corrupt { table, source })
}

#[cfg(test)]
pub(super) mod tests {
    //! The writer driven in-process: ops are queued first, then [`run`] applies them on the
    //! test's own thread, so what one batch holds is known.

    use super::*;

    use redb::{ReadableDatabase, ReadableTableMetadata};

    use crate::proto::{Isolation, Runtime};
    use crate::store::{TaskStatus, create_tables};

    /// A database in a temporary directory, with the store's tables.
    fn database() -> (Database, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let database = Database::create(dir.path().join("test.redb")).expect("create database");
        create_tables(&database).expect("create tables");
        (database, dir)
    }

    /// The value files of a test's directory.
    fn values(dir: &tempfile::TempDir) -> Values {
        Values::open(dir.path()).expect("value files")
    }

    /// A shell function `name` with a fixed code hash, for the store's tests.
    pub(in crate::store) fn function(name: &str) -> FunctionRecord {
        FunctionRecord {
            name: name.into(),
            version: 0,
            runtime: Runtime::Shell,
            code_hash: [9; 32],
            code_bytes: 4,
            timeout_ms: 1000,
            concurrency: None,
            queue_limit: 10,
            max_attempts: 1,
            env: Vec::new(),
            created_ms: 0,
            warm: None,
            isolation: Isolation::default(),
            owner: 0,
            display_name: None,
            http: None,
        }
    }

    fn task(id: u128, status: TaskStatus) -> TaskRecord {
        TaskRecord {
            status,
            payload_bytes: 1,
            ..TaskRecord::queued(id, id as u64, "f".into(), 1)
        }
    }

    /// A writer over `database`, and the state it shares with the store's handles.
    fn writer(database: Database, dir: &tempfile::TempDir) -> (Writer, Arc<Shared>) {
        let path = dir.path().join("test.redb");
        let values = Values::open(dir.path()).expect("value files");
        let blobs = super::super::BlobFiles::open(dir.path()).expect("blob files");
        let files = (values, blobs);
        let shared = Arc::new(Shared::new(path, dir.path().to_owned(), database, files));
        (Writer::new(shared.clone()), shared)
    }

    fn batch(writes: Vec<Write>) -> Vec<Queued> {
        writes.into_iter().map(|w| (Box::new(w), None)).collect()
    }

    fn stored_task(database: &Database, id: u128) -> Option<TaskRecord> {
        let txn = database.begin_read().expect("read");
        let tasks = txn.open_table(TASKS).expect("tasks");
        let bytes = tasks.get(id).expect("get")?;
        Some(records::decode(bytes.value()).expect("decode"))
    }

    fn has(database: &Database, table: redb::TableDefinition<u128, &[u8]>, id: u128) -> bool {
        let txn = database.begin_read().expect("read");
        let t = txn.open_table(table).expect("open");
        t.get(id).expect("get").is_some()
    }

    fn pending_count(database: &Database) -> u64 {
        let txn = database.begin_read().expect("read");
        let t = txn.open_table(PENDING).expect("pending");
        t.len().expect("len")
    }

    #[test]
    fn registering_a_name_again_assigns_the_next_version() {
        let (database, _dir) = database();
        let writes = batch(vec![
            Write::Register {
                record: function("f"),
                code: Bytes::from_static(b"code"),
            },
            Write::Register {
                record: function("f"),
                code: Bytes::from_static(b"code"),
            },
            Write::Register {
                record: function("g"),
                code: Bytes::from_static(b"code"),
            },
        ]);
        assert_eq!(
            apply(&database, &values(&_dir), &writes, false, false).expect("apply"),
            [1, 2, 1]
        );
        let txn = database.begin_read().expect("read");
        let heads = txn.open_table(HEADS).expect("heads");
        assert_eq!(heads.get("f").expect("get").map(|v| v.value()), Some(2));
    }

    fn head(database: &Database, name: &str) -> Option<u32> {
        let txn = database.begin_read().expect("read");
        let heads = txn.open_table(HEADS).expect("heads");
        heads.get(name).expect("get").map(|v| v.value())
    }

    #[test]
    fn rollback_moves_the_head_to_a_kept_version_and_rm_numbering_continues() {
        let (database, dir) = database();
        let register = || Write::Register {
            record: function("f"),
            code: Bytes::from_static(b"code"),
        };
        let rollback = |version| Write::Rollback {
            name: "f".into(),
            version,
        };
        let writes = batch(vec![register(), register(), rollback(1), rollback(9)]);
        let answers = apply(&database, &values(&dir), &writes, false, false).expect("apply");
        assert_eq!(answers, [1, 2, 1, 0]);
        assert_eq!(head(&database, "f"), Some(1));
        let writes = batch(vec![
            Write::Delete { name: "f".into() },
            rollback(2),
            register(),
            // Version 2 was removed with the name: it cannot come back.
            rollback(2),
        ]);
        let answers = apply(&database, &values(&dir), &writes, false, false).expect("apply");
        assert_eq!(answers, [0, 0, 3, 0]);
        assert_eq!(head(&database, "f"), Some(3));
    }

    fn finish(id: u128, function: &str, caller: u32, status: TaskStatus) -> Write {
        Write::Finish {
            record: TaskRecord {
                function: function.into(),
                caller,
                finished_ms: Some(5 * crate::store::HOUR_MS + 7),
                run_us: 1000,
                cpu_us: 10,
                peak_memory_bytes: 3,
                ..task(id, status)
            },
            result: Bytes::new(),
            logs: Bytes::new(),
        }
    }

    #[test]
    fn usage_sums_each_commits_ends_per_hour_caller_and_function() {
        let (database, _dir) = database();
        let first = batch(vec![
            finish(1, "f", 7, TaskStatus::Completed),
            finish(2, "f", 7, TaskStatus::Failed),
            finish(3, "g", 7, TaskStatus::Completed),
            // Not an end: counts for nothing.
            Write::Update {
                record: task(4, TaskStatus::Running),
            },
        ]);
        apply(&database, &values(&_dir), &first, true, false).expect("apply");
        let second = batch(vec![finish(5, "f", 7, TaskStatus::Completed)]);
        apply(&database, &values(&_dir), &second, true, false).expect("apply");
        let rows = super::super::usage::read_since(&database, 0).expect("read usage");
        let keys: Vec<(u64, u32, &str)> = rows
            .iter()
            .map(|r| (r.hour, r.caller, r.function.as_str()))
            .collect();
        assert_eq!(keys, [(5, 7, "f"), (5, 7, "g")]);
        let f = rows[0].totals;
        assert_eq!((f.calls, f.failures, f.wall_us, f.cpu_us), (3, 1, 3000, 30));
        assert_eq!(f.memory_byte_us, 9000);
        assert_eq!(rows[1].totals.calls, 1);
        assert!(
            super::super::usage::read_since(&database, 6)
                .expect("read usage")
                .is_empty()
        );
    }

    #[test]
    fn a_task_started_and_finished_in_one_batch_keeps_only_its_end() {
        let (database, _dir) = database();
        let mut running = task(1, TaskStatus::Running);
        running.attempts = 1;
        let mut end = running.clone();
        end.status = TaskStatus::Completed;
        let writes = batch(vec![
            Write::Enqueue {
                record: task(1, TaskStatus::Queued),
                payload: Bytes::from_static(b"p"),
            },
            Write::Update {
                record: running.clone(),
            },
            Write::Finish {
                record: end.clone(),
                result: Bytes::from_static(b"r"),
                logs: Bytes::from_static(b"l"),
            },
            // A stale RUNNING update behind the end must not overwrite it.
            Write::Update { record: running },
        ]);
        apply(&database, &values(&_dir), &writes, false, false).expect("apply");
        assert_eq!(stored_task(&database, 1), Some(end));
        // A finished task keeps its payload (for a replay) until it is purged.
        assert!(has(&database, PAYLOADS, 1));
        assert!(has(&database, RESULTS, 1) && has(&database, LOGS, 1));
        assert_eq!(pending_count(&database), 0);
    }

    #[test]
    fn an_update_of_a_task_that_does_not_end_in_the_batch_is_applied() {
        let (database, _dir) = database();
        let running = task(2, TaskStatus::Running);
        let writes = batch(vec![
            Write::Enqueue {
                record: task(1, TaskStatus::Queued),
                payload: Bytes::new(),
            },
            Write::Enqueue {
                record: task(2, TaskStatus::Queued),
                payload: Bytes::new(),
            },
            Write::Update {
                record: running.clone(),
            },
            Write::Finish {
                record: task(1, TaskStatus::Failed),
                result: Bytes::new(),
                logs: Bytes::new(),
            },
        ]);
        apply(&database, &values(&_dir), &writes, false, false).expect("apply");
        assert_eq!(stored_task(&database, 2), Some(running));
        assert!(has(&database, PAYLOADS, 2));
        assert_eq!(pending_count(&database), 1);
    }

    #[test]
    fn writes_queued_together_are_acknowledged_after_one_commit_and_writes_behind_a_close_are_refused()
     {
        let (database, dir) = database();
        let (writer, shared) = writer(database, &dir);
        let (ops, queue) = mpsc::channel();
        let mut acks = Vec::new();
        for id in 1..=3 {
            let (ack, acked) = oneshot::channel();
            let write = Write::Enqueue {
                record: task(id, TaskStatus::Queued),
                payload: Bytes::new(),
            };
            ops.send(Op::Write {
                write: Box::new(write),
                ack: Some(ack),
            })
            .expect("queue");
            acks.push(acked);
        }
        let (done, closed) = oneshot::channel();
        ops.send(Op::Close(done)).expect("queue");
        let (late_ack, late) = oneshot::channel();
        ops.send(Op::Write {
            write: Box::new(Write::Delete { name: "f".into() }),
            ack: Some(late_ack),
        })
        .expect("queue");
        writer.run(queue);
        for acked in acks {
            assert_eq!(acked.blocking_recv().expect("acknowledged").ok(), Some(0));
        }
        assert!(closed.blocking_recv().is_ok());
        assert!(late.blocking_recv().is_err());
        assert_eq!(pending_count(&shared.database().expect("open")), 3);
    }

    #[test]
    fn a_failed_batch_answers_every_waiting_writer_with_the_error() {
        let (database, dir) = database();
        // A `tasks` table of another type makes every task write fail.
        let txn = database.begin_write().expect("write");
        txn.delete_table(TASKS).expect("drop tasks");
        let wrong: redb::TableDefinition<&str, &str> = redb::TableDefinition::new("tasks");
        txn.open_table(wrong)
            .expect("create a mistyped tasks table");
        txn.commit().expect("commit");
        let mut writes = Vec::new();
        let mut acks = Vec::new();
        for id in 1..=2 {
            let (ack, acked) = oneshot::channel();
            let write = Write::Update {
                record: task(id, TaskStatus::Running),
            };
            writes.push((Box::new(write), Some(ack)));
            acks.push(acked);
        }
        let (mut writer, _shared) = writer(database, &dir);
        writer.commit(&mut writes);
        assert!(writes.is_empty());
        assert!(writer.held.is_empty() && writer.fault.is_none());
        for acked in acks {
            let answer = acked.blocking_recv().expect("answered");
            let Err(error) = answer else {
                panic!("a write into a mistyped table succeeded");
            };
            assert!(matches!(*error, Error::Db { .. }), "{error}");
        }
    }

    #[test]
    fn a_group_is_never_split_between_commits() {
        let (database, dir) = database();
        // A mistyped `idempotency` table makes a key write fail, and with it its whole batch.
        let txn = database.begin_write().expect("write");
        txn.delete_table(super::super::idempotency::KEYS)
            .expect("drop idempotency");
        let wrong: redb::TableDefinition<&str, &str> = redb::TableDefinition::new("idempotency");
        txn.open_table(wrong).expect("create a mistyped table");
        txn.commit().expect("commit");
        let (writer, shared) = writer(database, &dir);
        let (ops, queue) = mpsc::channel();
        // Fills the first batch to one short of its limit.
        for id in 1..MAX_BATCH as u128 {
            let write = Write::Enqueue {
                record: task(id, TaskStatus::Queued),
                payload: Bytes::new(),
            };
            ops.send(Op::Write {
                write: Box::new(write),
                ack: None,
            })
            .expect("queue");
        }
        let last = MAX_BATCH as u128;
        let enqueue = Write::Enqueue {
            record: task(last, TaskStatus::Queued),
            payload: Bytes::new(),
        };
        let remember = Write::RememberKey {
            caller: 1,
            key: "k".into(),
            record: KeyRecord {
                function: "f".into(),
                route: "invoke".into(),
                payload_hash: [0; 32],
                task_ids: vec![last],
                created_ms: 0,
            },
        };
        ops.send(Op::Group(batch(vec![enqueue, remember])))
            .expect("queue");
        let (done, closed) = oneshot::channel();
        ops.send(Op::Close(done)).expect("queue");
        writer.run(queue);
        assert!(closed.blocking_recv().is_ok());
        // Split at the limit, the group's enqueue would have committed without its key.
        let database = shared.database().expect("open");
        assert_eq!(stored_task(&database, last), None);
    }

    #[test]
    fn a_purge_keeps_a_version_that_a_task_queued_earlier_in_its_batch_pins() {
        let (database, dir) = database();
        let values = values(&dir);
        let register = |hash| Write::Register {
            record: FunctionRecord {
                code_hash: [hash; 32],
                ..function("f")
            },
            code: Bytes::from(vec![hash]),
        };
        let registered = batch(vec![register(1), register(2)]);
        apply(&database, &values, &registered, true, false).expect("apply");
        // Version 1 is not live and no stored task uses it, but the batch enqueues one that
        // pins it ahead of the purge.
        let pinned = TaskRecord {
            version: 1,
            ..task(
                crate::store::first_id_at(crate::units::now_ms()),
                TaskStatus::Queued,
            )
        };
        let writes = batch(vec![
            Write::Enqueue {
                record: pinned,
                payload: Bytes::new(),
            },
            Write::Purge {
                before_id: crate::store::first_id_at(crate::units::now_ms() + 1),
                limit: 10,
            },
        ]);
        apply(&database, &values, &writes, true, false).expect("apply");
        let txn = database.begin_read().expect("read");
        let functions = txn.open_table(FUNCTIONS).expect("functions");
        assert!(functions.get(("f", 1)).expect("get").is_some());
        drop((functions, txn));
        // Without a task, the same purge deletes it and its blob, and keeps the live one's.
        let (database, dir) = super::tests::database();
        let values = Values::open(dir.path()).expect("value files");
        apply(&database, &values, &registered, true, false).expect("apply");
        let purge = batch(vec![Write::Purge {
            before_id: crate::store::first_id_at(crate::units::now_ms() + 1),
            limit: 10,
        }]);
        apply(&database, &values, &purge, true, false).expect("apply");
        let txn = database.begin_read().expect("read");
        let functions = txn.open_table(FUNCTIONS).expect("functions");
        assert!(functions.get(("f", 1)).expect("get").is_none());
        assert!(functions.get(("f", 2)).expect("get").is_some());
        let blobs = txn.open_table(BLOBS).expect("blobs");
        assert!(blobs.get([1u8; 32].as_slice()).expect("get").is_none());
        assert!(blobs.get([2u8; 32].as_slice()).expect("get").is_some());
    }

    #[test]
    fn large_values_go_to_files_and_a_finished_task_keeps_its_payload_file() {
        let (database, dir) = database();
        let values = values(&dir);
        let big = Bytes::from(vec![7u8; values::MIN_BYTES]);
        let mut queued = task(1, TaskStatus::Queued);
        queued.payload_bytes = big.len() as u64;
        let enqueue = batch(vec![Write::Enqueue {
            record: queued.clone(),
            payload: big.clone(),
        }]);
        apply(&database, &values, &enqueue, true, false).expect("apply");
        assert!(
            !has(&database, PAYLOADS, 1),
            "a large payload is not in the table"
        );
        let payload = values.read(1, Kind::Payload, usize::MAX).expect("read");
        assert_eq!(payload, Some(big.clone()));
        let end = TaskRecord {
            status: TaskStatus::Completed,
            ..queued
        };
        let finish = batch(vec![Write::Finish {
            record: end,
            result: big.clone(),
            logs: Bytes::from_static(b"small"),
        }]);
        apply(&database, &values, &finish, true, false).expect("apply");
        // The payload stays for a replay until the task is purged.
        let kept = values.read(1, Kind::Payload, usize::MAX).expect("read");
        assert_eq!(kept, Some(big.clone()));
        assert!(!has(&database, RESULTS, 1) && has(&database, LOGS, 1));
        let result = values.read(1, Kind::Result, usize::MAX).expect("read");
        assert_eq!(result, Some(big));
        assert_eq!(values.read(1, Kind::Logs, 1).expect("read"), None);
    }
}

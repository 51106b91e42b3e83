//! Retention: finished tasks older than `serve --retain` are purged, in small batches, with
//! their payloads, results, logs (rows and value files) and index keys; then the function
//! versions no live name and no stored task refers to, and the code blobs no version uses.
//!
//! Why batches through the writer: a purge is a write like any other, so it is ordered with
//! the task writes around it (a task cannot be purged between its end and a later update), and
//! one purge step deletes at most [`PURGE_BATCH`] tasks, so it never holds the writer long
//! while invokes wait behind it. The background loop ([`Store::keep_purging`]) pauses between
//! steps while there is more to do, and sleeps for the purge interval once it has caught up.
//!
//! Which tasks: a task is expired when it is finished (COMPLETED or FAILED) and its id was made
//! before `now - retain`. Ids are UUIDv7, so "made before" is a range of the status index up to
//! [`first_id_at`]: no record is read to find them. An unfinished task is never purged, however
//! old.
//!
//! What a purged id answers: the purge keeps a watermark, the highest id it has deleted. A
//! task id at or below it that is not stored is reported as expired (410 `task_expired`) rather
//! than unknown (404).
//!
//! Which versions: each commit records, per distinct `(function, version)` its new tasks use,
//! the highest task id that used it ([`VERSION_USE`]). Every task that used a version has an id
//! at or below that mark; the oldest stored task (the first key of the tasks table, finished or
//! not) is the floor. A version whose mark is under the floor (or that no task used) is used by
//! no stored task, and unless it is its name's live version it is deleted; its blob goes when
//! no remaining version has the same hash. A version replaced (by the next registration of its
//! name) within the retention stays too, so a recent deploy can be rolled back. Uses began to
//! be recorded when this table was made ([`USE_SINCE`]): while tasks older than that remain, no
//! version is deleted.
//!
//! Uploaded blobs (files, see [`super::blobs`]): once a step finds the purge caught up, the blob
//! files no stored version names, and partial uploads, are removed when untouched for
//! [`super::BLOB_GRACE`] (an hour), so a blob just uploaded and not registered yet stays.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use tokio_util::sync::CancellationToken;

use super::records::TaskRecord;
use super::{BLOBS, Error, FUNCTIONS, HEADS, Store, db, decode_function, index::first_id_at};
use crate::proto::CodeHash;

/// `(function name, version)` → the highest task id that ran (or will run) that version.
const VERSION_USE: TableDefinition<(&str, u32), u128> = TableDefinition::new("version_use");
/// Retention's own marks: [`WATERMARK`] and [`USE_SINCE`].
const META: TableDefinition<&str, u128> = TableDefinition::new("retention_meta");
/// The highest task id a purge has deleted.
const WATERMARK: &str = "purged_through";
/// The first task id whose version use is recorded in [`VERSION_USE`] (the table's creation).
const USE_SINCE: &str = "version_use_since";

/// The most tasks one purge step deletes (one write transaction).
pub const PURGE_BATCH: usize = 500;

/// The pause between purge steps while expired tasks remain, so writes queued meanwhile are
/// committed between them.
const STEP_PAUSE: Duration = Duration::from_millis(20);

/// How long finished tasks are kept, and how often the purge looks for expired ones.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Finished tasks whose ids were made longer ago than this are purged.
    pub retain: Duration,
    /// How long the purge sleeps once it has caught up.
    pub interval: Duration,
}

/// Creates the retention tables; on a store without them, records that version uses are
/// known from now on.
pub(super) fn prepare(txn: &WriteTransaction) -> Result<(), Error> {
    txn.open_table(VERSION_USE)
        .map_err(db("create version use"))?;
    let mut meta = txn.open_table(META).map_err(db("create retention meta"))?;
    if meta
        .get(USE_SINCE)
        .map_err(db("read retention meta"))?
        .is_none()
    {
        let since = first_id_at(crate::units::now_ms());
        meta.insert(USE_SINCE, since)
            .map_err(db("write retention meta"))?;
    }
    Ok(())
}

/// In the writer's transaction: raises the use mark of each version the new tasks `enqueued`
/// run (one read and at most one write per distinct version, however many tasks).
pub(super) fn record_uses<'a>(
    txn: &WriteTransaction,
    enqueued: impl Iterator<Item = &'a TaskRecord>,
) -> Result<(), Error> {
    let mut highest: BTreeMap<(&str, u32), u128> = BTreeMap::new();
    for task in enqueued {
        let mark = highest
            .entry((task.function.as_str(), task.version))
            .or_default();
        *mark = (*mark).max(task.id);
    }
    if highest.is_empty() {
        return Ok(());
    }
    let mut table = txn
        .open_table(VERSION_USE)
        .map_err(db("open version use"))?;
    for (key, id) in highest {
        let old = table
            .get(key)
            .map_err(db("read version use"))?
            .map(|v| v.value());
        if old.is_none_or(|old| old < id) {
            table.insert(key, id).map_err(db("write version use"))?;
        }
    }
    Ok(())
}

/// In the writer's transaction: raises the watermark to `highest`, the highest id a purge
/// step has just deleted.
pub(super) fn raise_watermark(txn: &WriteTransaction, highest: u128) -> Result<(), Error> {
    let mut meta = txn.open_table(META).map_err(db("open retention meta"))?;
    let old = meta.get(WATERMARK).map_err(db("read retention meta"))?;
    if old.map(|v| v.value()).is_none_or(|old| old < highest) {
        meta.insert(WATERMARK, highest)
            .map_err(db("write retention meta"))?;
    }
    Ok(())
}

/// One stored function version, as the version purge weighs it.
struct VersionRow {
    name: String,
    version: u32,
    hash: CodeHash,
    /// When it was registered (Unix ms).
    created_ms: u64,
    /// Whether it is its name's live version, or a stored task uses it.
    needed: bool,
}

/// In the writer's transaction: deletes every function version that is not live, that no
/// stored task uses (`floor`: the oldest stored task's id, `None` when none is stored), and that
/// stopped being live before `before_id`'s time (the retention cut-off: a version replaced
/// within the retention stays, for a rollback), and the blobs no remaining version uses.
/// Returns how many versions and blobs went.
pub(super) fn purge_versions(
    txn: &WriteTransaction,
    floor: Option<u128>,
    before_id: u128,
) -> Result<(usize, usize), Error> {
    let meta = txn.open_table(META).map_err(db("open retention meta"))?;
    let since = meta.get(USE_SINCE).map_err(db("read retention meta"))?;
    if floor.is_some_and(|floor| since.is_none_or(|s| floor < s.value())) {
        // Tasks from before uses were recorded remain: any version may be theirs.
        return Ok((0, 0));
    }
    let cutoff_ms = (before_id >> 80) as u64;
    let rows = version_rows(txn, floor)?;
    let mut doomed: Vec<(&str, u32)> = Vec::new();
    let mut kept: HashSet<CodeHash> = HashSet::new();
    let mut freed: HashSet<CodeHash> = HashSet::new();
    for (i, row) in rows.iter().enumerate() {
        // Replaced when the next version of its name was registered; the last version of a
        // removed name counts from its own registration.
        let replaced_ms = match rows.get(i + 1) {
            Some(next) if next.name == row.name => next.created_ms,
            _ => row.created_ms,
        };
        if row.needed || replaced_ms >= cutoff_ms {
            kept.insert(row.hash);
        } else {
            doomed.push((row.name.as_str(), row.version));
            freed.insert(row.hash);
        }
    }
    let mut functions = txn.open_table(FUNCTIONS).map_err(db("open functions"))?;
    let mut uses = txn
        .open_table(VERSION_USE)
        .map_err(db("open version use"))?;
    for key in &doomed {
        functions.remove(*key).map_err(db("purge function"))?;
        uses.remove(*key).map_err(db("purge version use"))?;
    }
    let mut blobs = txn.open_table(BLOBS).map_err(db("open blobs"))?;
    let mut blobs_purged = 0;
    for hash in freed.difference(&kept) {
        if blobs
            .remove(hash.as_slice())
            .map_err(db("purge blob"))?
            .is_some()
        {
            blobs_purged += 1;
        }
    }
    Ok((doomed.len(), blobs_purged))
}

/// Every stored function version in key order (by name, then version), with whether it is
/// live or used by a stored task (its use mark at or above `floor`).
fn version_rows(txn: &WriteTransaction, floor: Option<u128>) -> Result<Vec<VersionRow>, Error> {
    let functions = txn.open_table(FUNCTIONS).map_err(db("open functions"))?;
    let heads = txn.open_table(HEADS).map_err(db("open heads"))?;
    let uses = txn
        .open_table(VERSION_USE)
        .map_err(db("open version use"))?;
    let mut rows = Vec::new();
    for entry in functions.iter().map_err(db("scan functions"))? {
        let (key, value) = entry.map_err(db("scan functions"))?;
        let (name, version) = key.value();
        let record = decode_function(value.value())?;
        let head = heads.get(name).map_err(db("read head"))?.map(|v| v.value());
        let live = head == Some(version);
        // The highest version of a live name stays even when a rollback left it not live:
        // registration numbers from the highest stored row, and must never reuse a number.
        let highest = head.is_some() && next_version_of(&functions, name, version)?.is_none();
        let mark = uses.get((name, version)).map_err(db("read version use"))?;
        let used = floor.zip(mark).is_some_and(|(f, m)| m.value() >= f);
        rows.push(VersionRow {
            name: name.to_owned(),
            version,
            hash: record.code_hash,
            created_ms: record.created_ms,
            needed: live || used || highest,
        });
    }
    Ok(rows)
}

/// The next stored version of `name` after `version`, if any.
fn next_version_of(
    functions: &impl ReadableTable<(&'static str, u32), &'static [u8]>,
    name: &str,
    version: u32,
) -> Result<Option<u32>, Error> {
    let Some(after) = version.checked_add(1) else {
        return Ok(None);
    };
    let mut range = functions
        .range((name, after)..=(name, u32::MAX))
        .map_err(db("scan versions"))?;
    let next = range.next().transpose().map_err(db("scan versions"))?;
    Ok(next.map(|(key, _)| key.value().1))
}

/// Whether a purge has passed `id`: the highest id it deleted is at or above it.
pub(super) fn passed(database: &Database, id: u128) -> Result<bool, Error> {
    use redb::ReadableDatabase;
    let txn = database.begin_read().map_err(db("begin read"))?;
    let meta = txn.open_table(META).map_err(db("open retention meta"))?;
    let mark = meta.get(WATERMARK).map_err(db("read retention meta"))?;
    Ok(mark.is_some_and(|m| id <= m.value()))
}

impl Store {
    /// One purge step: deletes up to `limit` finished tasks whose ids are below `before_id`
    /// (see the module doc); once fewer than `limit` were left, also the versions and blobs
    /// nothing refers to. Returns how many tasks it deleted.
    pub async fn purge(
        &self,
        before_id: u128,
        limit: usize,
    ) -> Result<usize, std::sync::Arc<Error>> {
        let purged = self.write(super::Write::Purge { before_id, limit }).await?;
        Ok(purged as usize)
    }

    /// Whether a task id that is not stored was purged (a purge has passed it), as opposed to
    /// never having existed.
    pub async fn expired(&self, id: u128) -> Result<bool, Error> {
        self.read(move |database| passed(database, id)).await
    }

    /// The `--retain` the purge runs with, once [`Store::keep_purging`] has started.
    pub fn retain(&self) -> Option<Duration> {
        self.inner.retain.get().copied()
    }

    /// Purges expired tasks until `cancel` fires: a step at a time, pausing briefly between
    /// steps while there is more to do, then sleeping for `retention.interval`.
    pub async fn keep_purging(&self, retention: Retention, cancel: CancellationToken) {
        let _ = self.inner.retain.set(retention.retain);
        let retain_ms = u64::try_from(retention.retain.as_millis()).unwrap_or(u64::MAX);
        loop {
            let cutoff_ms = crate::units::now_ms().saturating_sub(retain_ms);
            let pause = match self.purge(first_id_at(cutoff_ms), PURGE_BATCH).await {
                Ok(PURGE_BATCH) => STEP_PAUSE,
                Ok(purged) => {
                    if purged > 0 {
                        tracing::debug!(tasks = purged, "purged expired tasks");
                    }
                    match self.sweep_blob_files().await {
                        Ok(0) => {}
                        Ok(removed) => {
                            tracing::info!(removed, "removed code blobs no version uses")
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot sweep the code blob files"),
                    }
                    retention.interval
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot purge expired tasks; retrying later");
                    retention.interval
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = cancel.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::store::values::{Kind, MIN_BYTES};
    use crate::store::{FunctionRecord, TaskStatus, Write};

    fn function(name: &str, hash: u8) -> FunctionRecord {
        FunctionRecord {
            code_hash: [hash; 32],
            code_bytes: 1,
            ..crate::store::writer::tests::function(name)
        }
    }

    /// A task of `f` version `version` made at `ms` (its id's time).
    fn task(ms: u64, n: u128, version: u32) -> TaskRecord {
        TaskRecord {
            created_ms: ms,
            finished_ms: Some(ms),
            run_us: 10,
            ..TaskRecord::queued(first_id_at(ms) + n, n as u64, "f".into(), version)
        }
    }

    async fn enqueue(store: &Store, record: &TaskRecord, payload: Bytes) {
        let record = TaskRecord {
            payload_bytes: payload.len() as u64,
            ..record.clone()
        };
        let write = Write::Enqueue { record, payload };
        store.write(write).await.expect("enqueue");
    }

    async fn finish(store: &Store, record: &TaskRecord, value: Bytes) {
        let record = TaskRecord {
            status: TaskStatus::Completed,
            ..record.clone()
        };
        let write = Write::Finish {
            record,
            result: value.clone(),
            logs: value,
        };
        store.write(write).await.expect("finish");
    }

    async fn register(store: &Store, hash: u8) -> u32 {
        let write = Write::Register {
            record: function("f", hash),
            code: Bytes::from(vec![hash]),
        };
        store.write(write).await.expect("register")
    }

    #[tokio::test]
    async fn a_purge_deletes_expired_finished_tasks_with_their_values_and_keeps_the_rest() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(dir.path()).expect("open");
        register(&store, 1).await;
        let big = Bytes::from(vec![5u8; MIN_BYTES]);
        let old_done = task(1_000, 1, 1);
        let old_small = task(1_000, 2, 1);
        let old_queued = task(1_000, 3, 1);
        let new_done = task(9_000, 4, 1);
        for (record, payload) in [
            (&old_done, big.clone()),
            (&old_small, Bytes::from_static(b"p")),
            (&old_queued, Bytes::from_static(b"q")),
            (&new_done, Bytes::from_static(b"n")),
        ] {
            enqueue(&store, record, payload).await;
        }
        finish(&store, &old_done, big.clone()).await;
        finish(&store, &old_small, Bytes::from_static(b"s")).await;
        finish(&store, &new_done, Bytes::from_static(b"n")).await;
        let values = store.inner.shared.values.clone();
        assert!(
            values
                .read(old_done.id, Kind::Result, 1)
                .expect("read")
                .is_some()
        );
        let usage_before = store.usage(0).await.expect("usage");

        let purged = store.purge(first_id_at(5_000), PURGE_BATCH).await;
        assert_eq!(purged.expect("purge"), 2);

        let ids = vec![old_done.id, old_small.id, old_queued.id, new_done.id];
        let left = store.tasks(ids).await.expect("tasks");
        let left: Vec<bool> = left.iter().map(Option::is_some).collect();
        assert_eq!(left, [false, false, true, true]);
        for kind in [Kind::Payload, Kind::Result, Kind::Logs] {
            assert_eq!(values.read(old_done.id, kind, 1).expect("read"), None);
        }
        assert_eq!(store.result(old_small.id).await.expect("result"), None);
        assert_eq!(store.logs(old_small.id).await.expect("logs"), None);
        assert!(store.expired(old_done.id).await.expect("expired"));
        assert!(store.expired(old_small.id).await.expect("expired"));
        assert!(!store.expired(new_done.id).await.expect("expired"));
        assert_eq!(store.usage(0).await.expect("usage"), usage_before);
        let listed = crate::store::TaskQuery {
            function: Some("f".into()),
            status: None,
            since_id: 0,
            before_id: None,
            limit: 10,
        };
        let page = store.list_tasks(listed, |_| true).await.expect("list");
        let listed: Vec<u128> = page.tasks.iter().map(|t| t.id).collect();
        assert_eq!(listed, [new_done.id, old_queued.id]);
    }

    #[tokio::test]
    async fn a_purge_step_deletes_at_most_its_limit() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(dir.path()).expect("open");
        register(&store, 1).await;
        for n in 1..=5 {
            let record = task(1_000, n, 1);
            enqueue(&store, &record, Bytes::new()).await;
            finish(&store, &record, Bytes::new()).await;
        }
        let cutoff = first_id_at(5_000);
        assert_eq!(store.purge(cutoff, 2).await.expect("purge"), 2);
        assert_eq!(store.purge(cutoff, 2).await.expect("purge"), 2);
        assert_eq!(store.purge(cutoff, 2).await.expect("purge"), 1);
        assert_eq!(store.purge(cutoff, 2).await.expect("purge"), 0);
    }

    #[tokio::test]
    async fn an_old_version_goes_once_no_stored_task_uses_it_and_the_live_one_stays() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(dir.path()).expect("open");
        let now = crate::units::now_ms();
        assert_eq!(register(&store, 1).await, 1);
        let first = task(now, 1, 1);
        enqueue(&store, &first, Bytes::new()).await;
        finish(&store, &first, Bytes::new()).await;
        // Version 2 shares version 1's code, version 3 has its own.
        assert_eq!(register(&store, 1).await, 2);
        assert_eq!(register(&store, 2).await, 3);
        // A task pins version 1, so it stays; 2 is unused and goes, its blob stays (1 uses it).
        store
            .purge(first_id_at(now), PURGE_BATCH)
            .await
            .expect("purge");
        let version = |v| store.function("f", Some(v));
        assert!(version(1).await.expect("read").is_some());
        assert!(version(2).await.expect("read").is_none());
        assert!(version(3).await.expect("read").is_some());
        assert!(store.blob([1; 32]).await.expect("blob").is_some());
        // Once that task is purged, version 1 and its blob go; live version 3 stays.
        store.purge(first.id + 1, PURGE_BATCH).await.expect("purge");
        assert!(version(1).await.expect("read").is_none());
        assert!(store.blob([1; 32]).await.expect("blob").is_none());
        assert!(version(3).await.expect("read").is_some());
        assert!(store.blob([2; 32]).await.expect("blob").is_some());
    }

    #[tokio::test]
    async fn no_version_goes_while_tasks_older_than_the_use_marks_remain() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(dir.path()).expect("open");
        register(&store, 1).await;
        register(&store, 2).await;
        // Made before the store recorded uses (its id's time is in 1970).
        let old = task(1_000, 1, 1);
        enqueue(&store, &old, Bytes::new()).await;
        store
            .purge(first_id_at(500), PURGE_BATCH)
            .await
            .expect("purge");
        assert!(store.function("f", Some(1)).await.expect("read").is_some());
    }
}

//! The task indexes: which tasks a function has and which tasks are in a status, kept by the
//! writer in the same transaction as the task records, and the listing of tasks they serve.
//!
//! Task ids are UUIDv7s, so every index is keyed by `(something, id)` and a range of it runs in
//! creation order: a listing walks one index backwards (newest first) between the `since`
//! bound (an id made of a timestamp) and the cursor, reading each task's record. A store made
//! before the indexes existed is indexed once when it is opened, in chunks, each its own
//! transaction; a marker row says where the next chunk starts, so an interrupted backfill goes
//! on at the next open.

use redb::{
    Database, ReadableDatabase, ReadableTable, Table, TableDefinition, TableHandle,
    WriteTransaction,
};

use super::records::{TaskRecord, TaskStatus};
use super::{Error, Store, TASKS, db, decode_task};

/// `(function name, task id)` → nothing: every task of a function.
const BY_FUNCTION: TableDefinition<(&str, u128), ()> = TableDefinition::new("task_by_function");
/// `(status byte, task id)` → nothing: every task in a status (see [`status_byte`]).
const BY_STATUS: TableDefinition<(u8, u128), ()> = TableDefinition::new("task_by_status");
/// `"backfill"` → the first task id not yet indexed, while a backfill is unfinished.
const INDEX_META: TableDefinition<&str, u128> = TableDefinition::new("task_index_meta");
/// The key of [`INDEX_META`] that marks an unfinished backfill.
const BACKFILL: &str = "backfill";
/// How many tasks one backfill transaction indexes (bounds its memory).
const BACKFILL_CHUNK: usize = 10_000;

/// The most index entries one listing looks at. A filter the index does not serve (access, or a
/// second filter) may find fewer matches than asked within it; the page then ends early with a
/// cursor to go on from.
pub const SCAN_BUDGET: usize = 10_000;

/// The index key of a status.
fn status_byte(status: TaskStatus) -> u8 {
    match status {
        TaskStatus::Queued => 0,
        TaskStatus::Running => 1,
        TaskStatus::Completed => 2,
        TaskStatus::Failed => 3,
    }
}

/// The lowest UUIDv7 made at or after `ms` (Unix milliseconds): its first 48 bits are the time.
pub fn first_id_at(ms: u64) -> u128 {
    u128::from(ms.min((1 << 48) - 1)) << 80
}

/// The index tables, opened once per write transaction.
pub(super) struct Tables<'txn> {
    by_function: Table<'txn, (&'static str, u128), ()>,
    by_status: Table<'txn, (u8, u128), ()>,
}

impl<'txn> Tables<'txn> {
    /// Opens the index tables in `txn`.
    pub(super) fn open(txn: &'txn WriteTransaction) -> Result<Self, Error> {
        Ok(Tables {
            by_function: txn.open_table(BY_FUNCTION).map_err(db("open task index"))?,
            by_status: txn.open_table(BY_STATUS).map_err(db("open task index"))?,
        })
    }

    /// Indexes `record`, which replaced `old` (the stored bytes, `None` for a new task): a
    /// status that changed moves the task from the old status key to the new one.
    pub(super) fn put(&mut self, record: &TaskRecord, old: Option<&[u8]>) -> Result<(), Error> {
        let old = old.map(decode_task).transpose()?;
        let id = record.id;
        let function = record.function.as_str();
        if old.as_ref().map(|o| o.function.as_str()) != Some(function) {
            if let Some(old) = &old {
                self.by_function
                    .remove((old.function.as_str(), id))
                    .map_err(db("drop task index"))?;
            }
            self.by_function
                .insert((function, id), ())
                .map_err(db("write task index"))?;
        }
        if old.as_ref().map(|o| o.status) != Some(record.status) {
            if let Some(old) = &old {
                self.by_status
                    .remove((status_byte(old.status), id))
                    .map_err(db("drop task index"))?;
            }
            self.by_status
                .insert((status_byte(record.status), id), ())
                .map_err(db("write task index"))?;
        }
        Ok(())
    }

    /// The finished tasks (COMPLETED, then FAILED) whose ids are below `before_id`, oldest
    /// first within each status, at most `limit` of them, as `(status byte, id)`.
    pub(super) fn finished_before(
        &self,
        before_id: u128,
        limit: usize,
    ) -> Result<Vec<(u8, u128)>, Error> {
        let mut out = Vec::new();
        for status in [TaskStatus::Completed, TaskStatus::Failed] {
            let byte = status_byte(status);
            let range = self
                .by_status
                .range((byte, 0)..(byte, before_id))
                .map_err(db("scan task index"))?;
            for entry in range.take(limit - out.len()) {
                let (key, _) = entry.map_err(db("scan task index"))?;
                out.push(key.value());
            }
        }
        Ok(out)
    }

    /// Removes every index key of `record`: what deleting a task (a retention purge) must do
    /// in the transaction that deletes it.
    pub(super) fn remove(&mut self, record: &TaskRecord) -> Result<(), Error> {
        self.by_function
            .remove((record.function.as_str(), record.id))
            .map_err(db("drop task index"))?;
        self.remove_status_key(status_byte(record.status), record.id)
    }

    /// Removes one key of the status index.
    pub(super) fn remove_status_key(&mut self, status: u8, id: u128) -> Result<(), Error> {
        self.by_status
            .remove((status, id))
            .map_err(db("drop task index"))?;
        Ok(())
    }
}

/// Creates the index tables; on a store that had tasks before they existed, indexes those
/// tasks, in chunks of [`BACKFILL_CHUNK`], and says so in the log.
pub(super) fn prepare(database: &Database) -> Result<(), Error> {
    let txn = database.begin_write().map_err(db("begin write"))?;
    let exists = txn
        .list_tables()
        .map_err(db("list tables"))?
        .any(|t| t.name() == BY_FUNCTION.name());
    if !exists {
        Tables::open(&txn)?;
        let mut meta = txn
            .open_table(INDEX_META)
            .map_err(db("create index meta"))?;
        meta.insert(BACKFILL, 0).map_err(db("write index meta"))?;
    }
    txn.commit().map_err(db("commit"))?;
    let mut indexed = 0;
    let started = std::time::Instant::now();
    while let Some(count) = backfill_chunk(database)? {
        indexed += count;
    }
    if indexed > 0 {
        tracing::info!(
            tasks = indexed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "indexed the tasks of a store made before the task indexes"
        );
    }
    Ok(())
}

/// Indexes the next chunk of an unfinished backfill in one transaction; `None` once none is
/// left to do.
fn backfill_chunk(database: &Database) -> Result<Option<usize>, Error> {
    let txn = database.begin_write().map_err(db("begin write"))?;
    let mut count = 0;
    {
        let mut meta = txn.open_table(INDEX_META).map_err(db("open index meta"))?;
        let from = meta.get(BACKFILL).map_err(db("read index meta"))?;
        let Some(from) = from.map(|f| f.value()) else {
            return Ok(None);
        };
        let tasks = txn.open_table(TASKS).map_err(db("open tasks"))?;
        let mut tables = Tables::open(&txn)?;
        let mut next = None;
        for entry in tasks.range(from..).map_err(db("scan tasks"))? {
            let (id, bytes) = entry.map_err(db("scan tasks"))?;
            if count == BACKFILL_CHUNK {
                next = Some(id.value());
                break;
            }
            tables.put(&decode_task(bytes.value())?, None)?;
            count += 1;
        }
        match next {
            Some(id) => meta.insert(BACKFILL, id).map(drop),
            None => meta.remove(BACKFILL).map(drop),
        }
        .map_err(db("write index meta"))?;
    }
    txn.commit().map_err(db("commit"))?;
    Ok(Some(count))
}

/// Which tasks a listing wants, newest first.
#[derive(Debug, Clone)]
pub struct TaskQuery {
    /// Only tasks of this function.
    pub function: Option<String>,
    /// Only tasks in this status.
    pub status: Option<TaskStatus>,
    /// Only tasks with ids at or above this (see [`first_id_at`]).
    pub since_id: u128,
    /// Only tasks with ids below this (the cursor of the page before).
    pub before_id: Option<u128>,
    /// The most tasks to return.
    pub limit: usize,
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct TaskPage {
    /// The tasks, newest first.
    pub tasks: Vec<TaskRecord>,
    /// Where the next page starts (pass it as [`TaskQuery::before_id`]); `None` when the range
    /// holds no more.
    pub next: Option<u128>,
}

impl Store {
    /// Lists tasks matching `query` and `visible` (the caller's access), newest first, from the
    /// index that narrows the most. Looks at no more than [`SCAN_BUDGET`] index entries.
    pub async fn list_tasks(
        &self,
        query: TaskQuery,
        visible: impl Fn(&TaskRecord) -> bool + Send + 'static,
    ) -> Result<TaskPage, Error> {
        self.read(move |database| list(database, &query, &visible))
            .await
    }
}

fn list(
    database: &Database,
    query: &TaskQuery,
    visible: &dyn Fn(&TaskRecord) -> bool,
) -> Result<TaskPage, Error> {
    let txn = database.begin_read().map_err(db("begin read"))?;
    let tasks = txn.open_table(TASKS).map_err(db("open tasks"))?;
    let Some(upper) = query
        .before_id
        .map_or(Some(u128::MAX), |c| c.checked_sub(1))
    else {
        return Ok(TaskPage {
            tasks: Vec::new(),
            next: None,
        });
    };
    let lower = query.since_id;
    let ids: Box<dyn Iterator<Item = Result<u128, Error>>> = match (&query.function, query.status) {
        (Some(name), _) => {
            let index = txn.open_table(BY_FUNCTION).map_err(db("open task index"))?;
            let range = index
                .range((name.as_str(), lower)..=(name.as_str(), upper))
                .map_err(db("scan task index"))?;
            Box::new(
                range
                    .rev()
                    .map(|e| Ok(e.map_err(db("scan task index"))?.0.value().1)),
            )
        }
        (None, Some(status)) => {
            let index = txn.open_table(BY_STATUS).map_err(db("open task index"))?;
            let byte = status_byte(status);
            let range = index
                .range((byte, lower)..=(byte, upper))
                .map_err(db("scan task index"))?;
            Box::new(
                range
                    .rev()
                    .map(|e| Ok(e.map_err(db("scan task index"))?.0.value().1)),
            )
        }
        (None, None) => {
            let range = tasks.range(lower..=upper).map_err(db("scan tasks"))?;
            Box::new(
                range
                    .rev()
                    .map(|e| Ok(e.map_err(db("scan tasks"))?.0.value())),
            )
        }
    };
    collect_page(ids, &tasks, query, visible)
}

/// Reads the records of `ids` (newest first) until the page is full, the budget is spent or the
/// ids run out, keeping those that match `query` and `visible`.
fn collect_page(
    mut ids: impl Iterator<Item = Result<u128, Error>>,
    tasks: &redb::ReadOnlyTable<u128, &'static [u8]>,
    query: &TaskQuery,
    visible: &dyn Fn(&TaskRecord) -> bool,
) -> Result<TaskPage, Error> {
    let mut page = Vec::new();
    let mut last = None;
    let mut looked = 0;
    while page.len() < query.limit && looked < SCAN_BUDGET {
        let Some(id) = ids.next().transpose()? else {
            return Ok(TaskPage {
                tasks: page,
                next: None,
            });
        };
        looked += 1;
        last = Some(id);
        let Some(bytes) = tasks.get(id).map_err(db("read task"))? else {
            continue;
        };
        let record = decode_task(bytes.value())?;
        let wanted = query
            .function
            .as_ref()
            .is_none_or(|f| *f == record.function)
            && query.status.is_none_or(|s| s == record.status)
            && visible(&record);
        if wanted {
            page.push(record);
        }
    }
    // Stopped early: a next page exists only if the range holds another id.
    let more = ids.next().transpose()?.is_some();
    Ok(TaskPage {
        tasks: page,
        next: last.filter(|_| more),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::writer::Write;
    use bytes::Bytes;

    fn task(id: u128, function: &str, caller: u32) -> TaskRecord {
        TaskRecord {
            caller,
            ..TaskRecord::queued(id, id as u64, function.into(), 1)
        }
    }

    fn query(limit: usize) -> TaskQuery {
        TaskQuery {
            function: None,
            status: None,
            since_id: 0,
            before_id: None,
            limit,
        }
    }

    fn ids(page: &TaskPage) -> Vec<u128> {
        page.tasks.iter().map(|t| t.id).collect()
    }

    async fn enqueue(store: &Store, record: TaskRecord) {
        let payload = Bytes::new();
        store
            .write(Write::Enqueue { record, payload })
            .await
            .expect("enqueue");
    }

    #[tokio::test]
    async fn status_changes_move_a_task_between_status_keys() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(dir.path()).expect("open");
        for id in 1..=3 {
            enqueue(&store, task(id, if id == 2 { "g" } else { "f" }, 0)).await;
        }
        let mut done = task(1, "f", 0);
        done.status = TaskStatus::Completed;
        let (result, logs) = (Bytes::new(), Bytes::new());
        let finish = Write::Finish {
            record: done,
            result,
            logs,
        };
        store.write(finish).await.expect("finish");
        let by = |function: Option<&str>, status| TaskQuery {
            function: function.map(str::to_owned),
            status,
            ..query(10)
        };
        let list = |q| store.list_tasks(q, |_| true);
        let queued = list(by(None, Some(TaskStatus::Queued)))
            .await
            .expect("list");
        assert_eq!(ids(&queued), [3, 2]);
        let completed = list(by(None, Some(TaskStatus::Completed))).await;
        assert_eq!(ids(&completed.expect("list")), [1]);
        let f = list(by(Some("f"), None)).await.expect("list");
        assert_eq!(ids(&f), [3, 1]);
        let f_queued = list(by(Some("f"), Some(TaskStatus::Queued))).await;
        assert_eq!(ids(&f_queued.expect("list")), [3]);
        // The old status key went: one key per task in each index.
        let lengths = store.read(|database| {
            use redb::ReadableTableMetadata;
            let txn = database.begin_read().map_err(db("begin read"))?;
            let by_status = txn.open_table(BY_STATUS).map_err(db("open"))?;
            let by_function = txn.open_table(BY_FUNCTION).map_err(db("open"))?;
            let len = |n: Result<u64, redb::StorageError>| n.map_err(db("len"));
            Ok((len(by_status.len())?, len(by_function.len())?))
        });
        assert_eq!(lengths.await.expect("lengths"), (3, 3));
    }

    #[tokio::test]
    async fn pages_follow_the_cursor_and_respect_since_and_access() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(dir.path()).expect("open");
        for id in 1..=5 {
            enqueue(&store, task(id << 80, "f", (id % 2) as u32)).await;
        }
        let first = store.list_tasks(query(2), |_| true).await.expect("list");
        assert_eq!(ids(&first), [5 << 80, 4 << 80]);
        let second = TaskQuery {
            before_id: first.next,
            ..query(2)
        };
        let second = store.list_tasks(second, |_| true).await.expect("list");
        assert_eq!(ids(&second), [3 << 80, 2 << 80]);
        let third = TaskQuery {
            before_id: second.next,
            ..query(2)
        };
        let third = store.list_tasks(third, |_| true).await.expect("list");
        assert_eq!((ids(&third), third.next), (vec![1 << 80], None));
        let since = TaskQuery {
            since_id: first_id_at(4),
            ..query(10)
        };
        let since = store.list_tasks(since, |_| true).await.expect("list");
        assert_eq!(ids(&since), [5 << 80, 4 << 80]);
        let odd = store.list_tasks(query(10), |t| t.caller == 1).await;
        assert_eq!(ids(&odd.expect("list")), [5 << 80, 3 << 80, 1 << 80]);
    }

    #[tokio::test]
    async fn a_store_made_before_the_indexes_is_indexed_when_opened() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join(super::super::DB_FILE);
        {
            let database = Database::create(&path).expect("create");
            let txn = database.begin_write().expect("write");
            {
                let mut tasks = txn.open_table(TASKS).expect("tasks");
                for id in 0..(BACKFILL_CHUNK as u128 + 5) {
                    let bytes = crate::store::records::encode(&task(id, "old", 0)).expect("encode");
                    tasks.insert(id, bytes.as_slice()).expect("insert");
                }
            }
            txn.commit().expect("commit");
        }
        let store = Store::open(dir.path()).expect("open");
        let old = TaskQuery {
            function: Some("old".into()),
            ..query(3)
        };
        let page = store.list_tasks(old, |_| true).await.expect("list");
        let newest = BACKFILL_CHUNK as u128 + 4;
        assert_eq!(ids(&page), [newest, newest - 1, newest - 2]);
        let oldest = TaskQuery {
            status: Some(TaskStatus::Queued),
            before_id: Some(2),
            ..query(10)
        };
        let page = store.list_tasks(oldest, |_| true).await.expect("list");
        assert_eq!(ids(&page), [1, 0]);
    }

    #[test]
    fn a_removed_task_leaves_no_index_key() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let database = Database::create(dir.path().join("test.redb")).expect("create");
        super::super::create_tables(&database).expect("create tables");
        prepare(&database).expect("prepare");
        let record = task(7, "f", 0);
        let txn = database.begin_write().expect("write");
        Tables::open(&txn)
            .expect("open")
            .put(&record, None)
            .expect("put");
        let bytes = crate::store::records::encode(&record).expect("encode");
        let mut tasks = txn.open_table(TASKS).expect("tasks");
        tasks.insert(7, bytes.as_slice()).expect("insert");
        drop(tasks);
        txn.commit().expect("commit");
        let indexed = TaskQuery {
            function: Some("f".into()),
            ..query(10)
        };
        let indexed = list(&database, &indexed, &|_| true).expect("list");
        assert_eq!(ids(&indexed), [7]);
        let txn = database.begin_write().expect("write");
        Tables::open(&txn)
            .expect("open")
            .remove(&record)
            .expect("remove");
        txn.commit().expect("commit");
        let found = list(&database, &query(10), &|_| true).expect("list");
        let by_function = TaskQuery {
            function: Some("f".into()),
            ..query(10)
        };
        let by_function = list(&database, &by_function, &|_| true).expect("list");
        let by_status = TaskQuery {
            status: Some(TaskStatus::Queued),
            ..query(10)
        };
        let by_status = list(&database, &by_status, &|_| true).expect("list");
        // The record stays (the sweep deletes it itself); only the index keys are gone.
        assert_eq!(ids(&found), [7]);
        assert!(by_function.tasks.is_empty() && by_function.next.is_none());
        assert!(by_status.tasks.is_empty() && by_status.next.is_none());
    }
}

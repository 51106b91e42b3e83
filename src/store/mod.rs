//! The embedded store: one redb file holding functions, code blobs, tasks, payloads, results and
//! captured stderr.
//!
//! Reads open their own read transaction. Every write goes through one writer thread
//! (`writer`) that commits many pending writes in a single durable transaction (group commit),
//! so an acknowledged write is on disk and throughput is not one fsync per task.

mod records;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

pub use records::{FunctionRecord, TaskRecord, TaskStatus};
use writer::Op;
pub use writer::Write;

/// `(name, version)` → [`FunctionRecord`].
const FUNCTIONS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("functions");
/// name → the live (latest registered, not deleted) version.
const HEADS: TableDefinition<&str, u32> = TableDefinition::new("function_heads");
/// code hash → code bundle.
const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");
/// task id → [`TaskRecord`].
const TASKS: TableDefinition<u128, &[u8]> = TableDefinition::new("tasks");
/// task id → payload, kept until the task finishes.
const PAYLOADS: TableDefinition<u128, &[u8]> = TableDefinition::new("payloads");
/// task id → result bytes (stdout).
const RESULTS: TableDefinition<u128, &[u8]> = TableDefinition::new("results");
/// task id → captured stderr.
const LOGS: TableDefinition<u128, &[u8]> = TableDefinition::new("logs");
/// arrival sequence → task id, for every task not yet finished.
const PENDING: TableDefinition<u64, u128> = TableDefinition::new("pending");

/// The most memory redb's page cache may hold (its default, 1 GiB, let a backlog of large
/// payloads stay resident after they were written).
const CACHE_BYTES: usize = 64 << 20;

/// The name of the database file inside the data directory.
pub const DB_FILE: &str = "faasd.redb";

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database file could not be opened.
    #[error("cannot open store {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: Box<redb::DatabaseError>,
    },
    /// A read or write transaction failed.
    #[error("store {op} failed: {source}")]
    Db {
        /// What was being done.
        op: &'static str,
        /// Why.
        source: Box<redb::Error>,
    },
    /// A stored record could not be decoded.
    #[error("corrupt {table} record: {source}")]
    Corrupt {
        /// The table it came from.
        table: &'static str,
        /// The decoder's complaint.
        source: postcard::Error,
    },
    /// The writer thread has stopped (the store is closed).
    #[error("the store is closed")]
    Closed,
    /// A blocking read task could not be joined.
    #[error("store read task failed: {0}")]
    Join(String),
}

/// Maps any redb error to [`Error::Db`] naming the operation.
fn db<E: Into<redb::Error>>(op: &'static str) -> impl FnOnce(E) -> Error {
    move |e| Error::Db {
        op,
        source: Box::new(e.into()),
    }
}

/// What the store knows of a task that had not finished when it was last closed.
#[derive(Debug, Clone)]
pub struct PendingTask {
    /// The task as last written.
    pub record: TaskRecord,
    /// Its payload when it is small (see [`Store::pending`]); `None` leaves it in the store,
    /// to be read with [`Store::payloads`] when the task is dispatched.
    pub payload: Option<Bytes>,
}

/// A cheap, cloneable handle on the store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    path: PathBuf,
    ops: mpsc::UnboundedSender<Op>,
}

impl Store {
    /// Opens (or creates) the store in `data_dir` and starts its writer thread.
    pub fn open(data_dir: &Path) -> Result<Store, Error> {
        std::fs::create_dir_all(data_dir).map_err(|source| Error::CreateDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|source| Error::Open {
                path: path.clone(),
                source: Box::new(source),
            })?;
        let db = Arc::new(db);
        create_tables(&db)?;
        let ops = writer::start(db.clone());
        Ok(Store {
            inner: Arc::new(Inner { db, path, ops }),
        })
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Queues a write and returns a receiver that resolves once it is durably committed.
    pub fn submit(&self, write: Write) -> oneshot::Receiver<Result<u32, Arc<Error>>> {
        let (ack, done) = oneshot::channel();
        // A closed writer drops the ack, which the receiver sees as an error.
        let _ = self.inner.ops.send(Op::Write {
            write: Box::new(write),
            ack: Some(ack),
        });
        done
    }

    /// Writes and waits until the write is on disk. Returns the version a
    /// [`Write::Register`] assigned (0 for other writes).
    pub async fn write(&self, write: Write) -> Result<u32, Arc<Error>> {
        self.submit(write)
            .await
            .map_err(|_| Arc::new(Error::Closed))?
    }

    /// Queues a write without waiting for its commit (it still commits in order).
    pub fn write_later(&self, write: Write) {
        let _ = self.inner.ops.send(Op::Write {
            write: Box::new(write),
            ack: None,
        });
    }

    /// Commits everything queued, stops the writer thread and waits for it.
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.inner.ops.send(Op::Close(done)).is_ok() {
            let _ = closed.await;
        }
    }

    async fn read<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, Error> + Send + 'static,
    {
        let database = self.inner.db.clone();
        tokio::task::spawn_blocking(move || f(&database))
            .await
            .map_err(|e| Error::Join(e.to_string()))?
    }

    /// The live version of every function, sorted by name.
    pub async fn functions(&self) -> Result<Vec<FunctionRecord>, Error> {
        self.read(|database| {
            let txn = database.begin_read().map_err(db("begin read"))?;
            let heads = txn.open_table(HEADS).map_err(db("open heads"))?;
            let functions = txn.open_table(FUNCTIONS).map_err(db("open functions"))?;
            let mut out = Vec::new();
            for entry in heads.iter().map_err(db("scan heads"))? {
                let (name, version) = entry.map_err(db("scan heads"))?;
                if let Some(bytes) = functions
                    .get((name.value(), version.value()))
                    .map_err(db("read function"))?
                {
                    out.push(decode_function(bytes.value())?);
                }
            }
            Ok(out)
        })
        .await
    }

    /// A function version; `version: None` is the live version.
    pub async fn function(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<FunctionRecord>, Error> {
        let name = name.to_owned();
        self.read(move |database| read_function(database, &name, version))
            .await
    }

    /// A code bundle by its hash.
    pub async fn blob(&self, hash: [u8; 32]) -> Result<Option<Bytes>, Error> {
        self.read(move |database| {
            let txn = database.begin_read().map_err(db("begin read"))?;
            let blobs = txn.open_table(BLOBS).map_err(db("open blobs"))?;
            let blob = blobs.get(hash.as_slice()).map_err(db("read blob"))?;
            Ok(blob.map(|b| Bytes::copy_from_slice(b.value())))
        })
        .await
    }

    /// A task's record.
    pub async fn task(&self, id: u128) -> Result<Option<TaskRecord>, Error> {
        self.read(move |database| {
            let txn = database.begin_read().map_err(db("begin read"))?;
            let tasks = txn.open_table(TASKS).map_err(db("open tasks"))?;
            match tasks.get(id).map_err(db("read task"))? {
                Some(bytes) => Ok(Some(decode_task(bytes.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    /// A finished task's result bytes.
    pub async fn result(&self, id: u128) -> Result<Option<Bytes>, Error> {
        self.read(move |database| read_bytes(database, RESULTS, id))
            .await
    }

    /// A finished task's captured stderr.
    pub async fn logs(&self, id: u128) -> Result<Option<Bytes>, Error> {
        self.read(move |database| read_bytes(database, LOGS, id))
            .await
    }

    /// Many tasks' records, read in one transaction, in the order of `ids` (`None` for an
    /// unknown id).
    pub async fn tasks(&self, ids: Vec<u128>) -> Result<Vec<Option<TaskRecord>>, Error> {
        self.read(move |database| {
            let txn = database.begin_read().map_err(db("begin read"))?;
            let tasks = txn.open_table(TASKS).map_err(db("open tasks"))?;
            ids.iter()
                .map(|id| match tasks.get(*id).map_err(db("read task"))? {
                    Some(bytes) => Ok(Some(decode_task(bytes.value())?)),
                    None => Ok(None),
                })
                .collect()
        })
        .await
    }

    /// Many finished tasks' result bytes, read in one transaction, in the order of `ids`.
    pub async fn results(&self, ids: Vec<u128>) -> Result<Vec<Option<Bytes>>, Error> {
        self.read(move |database| read_many(database, RESULTS, &ids, usize::MAX))
            .await
    }

    /// The last `max_bytes` of many finished tasks' captured stderr, read in one transaction,
    /// in the order of `ids`.
    pub async fn log_tails(
        &self,
        ids: Vec<u128>,
        max_bytes: usize,
    ) -> Result<Vec<Option<Bytes>>, Error> {
        self.read(move |database| read_many(database, LOGS, &ids, max_bytes))
            .await
    }

    /// Many unfinished tasks' payloads, read in one transaction, in the order of `ids` (`None`
    /// for a task that has no payload stored: unknown, or finished since).
    pub async fn payloads(&self, ids: Vec<u128>) -> Result<Vec<Option<Bytes>>, Error> {
        self.read(move |database| read_many(database, PAYLOADS, &ids, usize::MAX))
            .await
    }

    /// Every unfinished task in arrival order. Only payloads of at most `inline_max` bytes are
    /// read (by the size their record gives), so the scan's memory grows with the number of
    /// pending tasks, not with their payloads.
    pub async fn pending(&self, inline_max: usize) -> Result<Vec<PendingTask>, Error> {
        self.read(move |database| {
            let txn = database.begin_read().map_err(db("begin read"))?;
            let pending = txn.open_table(PENDING).map_err(db("open pending"))?;
            let tasks = txn.open_table(TASKS).map_err(db("open tasks"))?;
            let payloads = txn.open_table(PAYLOADS).map_err(db("open payloads"))?;
            let mut out = Vec::new();
            for entry in pending.iter().map_err(db("scan pending"))? {
                let (_, id) = entry.map_err(db("scan pending"))?;
                let id = id.value();
                let Some(bytes) = tasks.get(id).map_err(db("read task"))? else {
                    continue;
                };
                let record = decode_task(bytes.value())?;
                let payload = if record.payload_bytes <= inline_max as u64 {
                    let stored = payloads.get(id).map_err(db("read payload"))?;
                    Some(stored.map_or_else(Bytes::new, |p| Bytes::copy_from_slice(p.value())))
                } else {
                    None
                };
                out.push(PendingTask { record, payload });
            }
            Ok(out)
        })
        .await
    }

    /// The highest arrival sequence number ever written (0 for a new store).
    pub async fn last_seq(&self) -> Result<u64, Error> {
        self.read(|database| {
            let txn = database.begin_read().map_err(db("begin read"))?;
            let tasks = txn.open_table(TASKS).map_err(db("open tasks"))?;
            let pending = txn.open_table(PENDING).map_err(db("open pending"))?;
            // Task ids are UUIDv7 and so sort by creation: the newest task carries the highest
            // seq, short of clock steps, which the pending table's last key covers.
            let newest = match tasks.last().map_err(db("read last task"))? {
                Some((_, bytes)) => decode_task(bytes.value())?.seq,
                None => 0,
            };
            let last_pending = pending
                .last()
                .map_err(db("read last pending"))?
                .map_or(0, |(seq, _)| seq.value());
            Ok(newest.max(last_pending))
        })
        .await
    }
}

fn create_tables(database: &Database) -> Result<(), Error> {
    let txn = database.begin_write().map_err(db("begin write"))?;
    txn.open_table(FUNCTIONS).map_err(db("create functions"))?;
    txn.open_table(HEADS).map_err(db("create heads"))?;
    txn.open_table(BLOBS).map_err(db("create blobs"))?;
    txn.open_table(TASKS).map_err(db("create tasks"))?;
    txn.open_table(PAYLOADS).map_err(db("create payloads"))?;
    txn.open_table(RESULTS).map_err(db("create results"))?;
    txn.open_table(LOGS).map_err(db("create logs"))?;
    txn.open_table(PENDING).map_err(db("create pending"))?;
    txn.commit().map_err(db("commit"))
}

fn read_function(
    database: &Database,
    name: &str,
    version: Option<u32>,
) -> Result<Option<FunctionRecord>, Error> {
    let txn = database.begin_read().map_err(db("begin read"))?;
    let version = match version {
        Some(v) => v,
        None => {
            let heads = txn.open_table(HEADS).map_err(db("open heads"))?;
            match heads.get(name).map_err(db("read head"))? {
                Some(v) => v.value(),
                None => return Ok(None),
            }
        }
    };
    let functions = txn.open_table(FUNCTIONS).map_err(db("open functions"))?;
    match functions
        .get((name, version))
        .map_err(db("read function"))?
    {
        Some(bytes) => Ok(Some(decode_function(bytes.value())?)),
        None => Ok(None),
    }
}

fn read_bytes(
    database: &Database,
    table: TableDefinition<u128, &[u8]>,
    id: u128,
) -> Result<Option<Bytes>, Error> {
    let txn = database.begin_read().map_err(db("begin read"))?;
    let t = txn.open_table(table).map_err(db("open table"))?;
    let value = t.get(id).map_err(db("read"))?;
    Ok(value.map(|v| Bytes::copy_from_slice(v.value())))
}

/// The values of `ids` in `table`, each cut to its last `max_bytes`.
fn read_many(
    database: &Database,
    table: TableDefinition<u128, &[u8]>,
    ids: &[u128],
    max_bytes: usize,
) -> Result<Vec<Option<Bytes>>, Error> {
    let txn = database.begin_read().map_err(db("begin read"))?;
    let t = txn.open_table(table).map_err(db("open table"))?;
    ids.iter()
        .map(|id| {
            let value = t.get(*id).map_err(db("read"))?;
            Ok(value.map(|v| {
                let bytes = v.value();
                Bytes::copy_from_slice(&bytes[bytes.len().saturating_sub(max_bytes)..])
            }))
        })
        .collect()
}

fn decode_function(bytes: &[u8]) -> Result<FunctionRecord, Error> {
    records::decode(bytes).map_err(|source| Error::Corrupt {
        table: "functions",
        source,
    })
}

fn decode_task(bytes: &[u8]) -> Result<TaskRecord, Error> {
    records::decode(bytes).map_err(|source| Error::Corrupt {
        table: "tasks",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::proto::{Isolation, Runtime};

    fn function(name: &str) -> FunctionRecord {
        FunctionRecord {
            name: name.into(),
            version: 0,
            runtime: Runtime::Exec,
            code_hash: [4; 32],
            code_bytes: 3,
            timeout_ms: 1000,
            concurrency: Some(2),
            queue_limit: 10,
            max_attempts: 3,
            env: vec![("K".into(), "V".into())],
            created_ms: 5,
            warm: None,
            isolation: Isolation::default(),
        }
    }

    fn queued(id: u128, seq: u64) -> TaskRecord {
        TaskRecord {
            payload_bytes: 1,
            ..TaskRecord::queued(id, seq, "f".into(), 1)
        }
    }

    #[tokio::test]
    async fn unfinished_tasks_are_listed_in_arrival_order_and_finished_ones_keep_their_output() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(dir.path()).expect("open");
        // Ids deliberately out of arrival order: the pending table is keyed by seq.
        for (id, seq) in [(30, 1), (10, 2), (20, 3)] {
            store
                .write(Write::Enqueue {
                    record: queued(id, seq),
                    payload: Bytes::from(vec![id as u8]),
                })
                .await
                .expect("enqueue");
        }
        let mut done = queued(10, 2);
        done.status = TaskStatus::Completed;
        store
            .write(Write::Finish {
                record: done,
                result: Bytes::from_static(b"result"),
                logs: Bytes::from_static(b"logs"),
            })
            .await
            .expect("finish");
        let pending = store.pending(1).await.expect("pending");
        let order: Vec<(u128, Option<Bytes>)> = pending
            .iter()
            .map(|p| (p.record.id, p.payload.clone()))
            .collect();
        assert_eq!(
            order,
            [
                (30, Some(Bytes::from_static(&[30]))),
                (20, Some(Bytes::from_static(&[20])))
            ]
        );
        let large_left_in_store = store.pending(0).await.expect("pending");
        assert!(large_left_in_store.iter().all(|p| p.payload.is_none()));
        let payloads = store.payloads(vec![20, 10, 30]).await.expect("payloads");
        assert_eq!(
            payloads,
            [
                Some(Bytes::from_static(&[20])),
                None,
                Some(Bytes::from_static(&[30]))
            ]
        );
        assert_eq!(store.last_seq().await.expect("last seq"), 3);
        assert_eq!(
            store.result(10).await.expect("result"),
            Some(Bytes::from_static(b"result"))
        );
        assert_eq!(
            store.logs(10).await.expect("logs"),
            Some(Bytes::from_static(b"logs"))
        );
        let status = store.task(10).await.expect("task").map(|t| t.status);
        assert_eq!(status, Some(TaskStatus::Completed));
    }

    #[tokio::test]
    async fn many_tasks_read_together_come_back_in_the_order_asked() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(dir.path()).expect("open");
        for (id, logs) in [(1, &b"first log"[..]), (2, b"second log")] {
            let mut done = queued(id, id as u64);
            done.status = TaskStatus::Failed;
            store
                .write(Write::Finish {
                    record: done,
                    result: Bytes::from(vec![id as u8]),
                    logs: Bytes::copy_from_slice(logs),
                })
                .await
                .expect("finish");
        }
        let records = store.tasks(vec![2, 9, 1]).await.expect("tasks");
        let ids: Vec<Option<u128>> = records.iter().map(|r| r.as_ref().map(|r| r.id)).collect();
        assert_eq!(ids, [Some(2), None, Some(1)]);
        let results = store.results(vec![1, 9, 2]).await.expect("results");
        assert_eq!(
            results,
            [
                Some(Bytes::from_static(&[1])),
                None,
                Some(Bytes::from_static(&[2]))
            ]
        );
        let tails = store.log_tails(vec![2, 1], 3).await.expect("log tails");
        assert_eq!(
            tails,
            [
                Some(Bytes::from_static(b"log")),
                Some(Bytes::from_static(b"log"))
            ]
        );
    }

    #[tokio::test]
    async fn a_deleted_function_keeps_the_versions_its_tasks_pin() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(dir.path()).expect("open");
        let code = Bytes::from_static(b"abc");
        for expected in [1, 2] {
            let version = store
                .write(Write::Register {
                    record: function("f"),
                    code: code.clone(),
                })
                .await
                .expect("register");
            assert_eq!(version, expected);
        }
        let live = store.function("f", None).await.expect("read");
        assert_eq!(live.map(|f| f.version), Some(2));
        store
            .write(Write::Delete { name: "f".into() })
            .await
            .expect("delete");
        assert!(store.function("f", None).await.expect("read").is_none());
        assert!(store.functions().await.expect("list").is_empty());
        let pinned = store.function("f", Some(1)).await.expect("read");
        assert_eq!(
            pinned.map(|f| (f.version, f.env)),
            Some((1, function("f").env))
        );
        assert_eq!(store.blob([4; 32]).await.expect("blob"), Some(code));
    }

    #[tokio::test]
    async fn a_closed_store_refuses_writes() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(dir.path()).expect("open");
        store.close().await;
        let refused = store.write(Write::Delete { name: "f".into() }).await;
        assert!(matches!(
            refused.as_ref().map_err(|e| e.as_ref()),
            Err(Error::Closed)
        ));
    }
}

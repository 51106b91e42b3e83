//! The embedded store: one redb file holding functions, code blobs, tasks, payloads, results and
//! captured stderr.
//!
//! Reads open their own read transaction. Every write goes through one writer thread
//! (`writer`) that commits many pending writes in a single durable transaction (group commit),
//! so an acknowledged write is on disk and throughput is not one fsync per task.
//!
//! A full disk is an answer, not an outage: a write that cannot be stored is refused with
//! [`Error::DiskFull`], reads go on, and the writer reopens the database (redb refuses all I/O
//! after a failed write) and resumes by itself once space returns. Readers reach the database
//! through [`Shared`], whose handle the writer swaps when it reopens the file.

mod blobs;
mod idempotency;
mod index;
mod records;
mod retention;
mod space;
mod usage;
mod users;
mod values;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

pub use blobs::{BlobFiles, GRACE as BLOB_GRACE, Kept, Refused, Stored, Upload, parse_hash};
pub use idempotency::{KeyRecord, payload_hash};
pub use index::{SCAN_BUDGET, TaskPage, TaskQuery, first_id_at};
pub use records::{FunctionRecord, TaskRecord, TaskStatus};
pub use retention::{PURGE_BATCH, Retention};
pub use space::{DEFAULT_MIN_FREE_BYTES, DEFAULT_MIN_FREE_PERCENT, Space};
pub use usage::{HOUR_MS, UsageRow, UsageTotals};
pub use users::UserRecord;
use values::{Kind, Values};
use writer::Op;
pub use writer::Write;

/// `(name, version)` → [`FunctionRecord`].
const FUNCTIONS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("functions");
/// name → the live (latest registered, not deleted) version.
const HEADS: TableDefinition<&str, u32> = TableDefinition::new("function_heads");
/// name → the highest version `rm` removed. Versions up to it are gone from the API (not
/// listed, pinned or rolled back to) but their rows stay for the retained tasks that pin them,
/// and a name registered again goes on numbering above it.
const REMOVED: TableDefinition<&str, u32> = TableDefinition::new("function_removed");
/// code hash → code bundle.
const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");
/// task id → [`TaskRecord`].
const TASKS: TableDefinition<u128, &[u8]> = TableDefinition::new("tasks");
/// task id → payload, kept until the task is purged (a replay reads it).
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
    #[error("cannot open store {path}: {cause}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why. Part of the message, not a `source()`: `main` prints the chain of causes, which
        /// would say it twice.
        cause: Box<redb::DatabaseError>,
    },
    /// A new store could not be created. The file this start made for it is removed (when
    /// that fails too, the message says so): left behind, it would be a file without redb's
    /// magic number (all zeros on a full disk) that no later start can open.
    #[error(
        "cannot create store {path}: {}; {}",
        creation_cause(cause),
        creation_leftover(path, cause, not_removed.as_ref())
    )]
    Create {
        /// The database file.
        path: PathBuf,
        /// What failed (not a `source()`, as for [`Error::Open`]).
        cause: Box<Error>,
        /// Why the file could not be removed, if it could not.
        not_removed: Option<std::io::Error>,
    },
    /// The database file holds only zeros: what a start leaves when creating the store was cut
    /// short (by a full disk, or a crash) before anything was stored in it. redb calls it "not
    /// a redb database"; it is never removed for the operator.
    #[error(
        "{path} is not a store but {bytes} bytes of zeros: what is left when creating the store \
         was cut short (a full disk, a crash) before anything was stored in it. Nothing is lost: \
         remove the file, then start again to create the store afresh"
    )]
    Unfinished {
        /// The database file.
        path: PathBuf,
        /// Its size.
        bytes: u64,
    },
    /// Another process (another `faasd serve`) holds the database's lock, past the wait.
    #[error(
        "the data directory {} is in use: another faasd serve holds its lock",
        data_dir.display()
    )]
    Locked {
        /// The data directory.
        data_dir: PathBuf,
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
    /// The write was not stored: the filesystem of the data directory is out of space (or the
    /// user's quota is spent).
    #[error(
        "the data directory {data_dir} is full: the write was not stored (free space there; \
         the store resumes by itself within seconds)"
    )]
    DiskFull {
        /// The data directory.
        data_dir: PathBuf,
    },
    /// The database is being reopened after an I/O error and could not be reopened yet.
    #[error("the store is reopening {path} after an I/O error; retry in a moment")]
    Reopening {
        /// The database file.
        path: PathBuf,
    },
    /// Every user id has been used (ids are never reused).
    #[error("no user id is left (ids are never reused)")]
    UserIdsExhausted,
    /// A value file (a large payload, result or stderr kept beside the database) could not be
    /// written or read.
    #[error("cannot {op} value file {path}: {source}")]
    Value {
        /// What was being done.
        op: &'static str,
        /// The file (or their directory).
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An uploaded blob's file (kept beside the database) could not be written or read.
    #[error("cannot {op} blob file {path}: {source}")]
    BlobFile {
        /// What was being done.
        op: &'static str,
        /// The file (or their directory).
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A step of a blob upload failed; `kept` says what stays of it. For lack of space its
    /// partial file is removed (it would keep the disk full), else it stays for a resume.
    #[error("cannot {op} blob file {path}: {source}; {kept}")]
    Upload {
        /// The step.
        op: &'static str,
        /// The file (or their directory).
        path: PathBuf,
        /// Why.
        source: std::io::Error,
        /// What stays of the upload.
        kept: Kept,
    },
    /// The free space of the data directory could not be measured.
    #[error("cannot measure free space in {path}: statvfs: {source}")]
    Statvfs {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: nix::errno::Errno,
    },
}

impl Error {
    /// Whether this is [`Error::DiskFull`]: the write was refused for lack of space.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Error::DiskFull { .. })
    }

    /// Whether this is an I/O error of a file beside the database (a blob or value file, a
    /// directory) for lack of space (`ENOSPC`, `EDQUOT`). The writer's own refusal for lack of
    /// space is [`Error::DiskFull`].
    pub fn is_out_of_space(&self) -> bool {
        match self {
            Error::Upload { source, .. }
            | Error::BlobFile { source, .. }
            | Error::Value { source, .. }
            | Error::CreateDir { source, .. } => space::out_of_space(source),
            _ => false,
        }
    }

    /// The I/O error under a failed database operation, if that is what it was.
    fn database_io(&self) -> Option<&std::io::Error> {
        match self {
            Error::Db { source, .. } => match source.as_ref() {
                redb::Error::Io(io) => Some(io),
                _ => None,
            },
            Error::Open { cause, .. } => match cause.as_ref() {
                redb::DatabaseError::Storage(redb::StorageError::Io(io)) => Some(io),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Why a new store could not be created, for [`Error::Create`]: a full filesystem in so many
/// words, else the error.
fn creation_cause(cause: &Error) -> String {
    match cause.database_io() {
        Some(io) if space::out_of_space(io) => format!("its filesystem is full ({io})"),
        _ => cause.to_string(),
    }
}

/// What became of the file a failed creation made, and what to do, for [`Error::Create`].
fn creation_leftover(path: &Path, cause: &Error, not_removed: Option<&std::io::Error>) -> String {
    if let Some(e) = not_removed {
        return format!(
            "the file this start created could not be removed ({e}): remove {} before the next start",
            path.display()
        );
    }
    let full = cause.database_io().is_some_and(space::out_of_space);
    let then = if full {
        ": free space, then start again"
    } else {
        ""
    };
    format!("the file this start created was removed{then}")
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
    shared: Arc<Shared>,
    ops: std::sync::mpsc::Sender<Op>,
    /// The `--retain` of the running purge, once it has started.
    retain: std::sync::OnceLock<Duration>,
}

/// What the handles and the writer thread share: the database behind a handle the writer swaps
/// when it reopens the file, and what `/healthz` reports.
struct Shared {
    /// The database file.
    path: PathBuf,
    /// The data directory.
    data_dir: PathBuf,
    /// The open database; `None` only while a reopen is failing.
    db: RwLock<Option<Arc<Database>>>,
    /// Set while the writer refuses writes because the disk is full.
    full: AtomicBool,
    /// The free-space watch, once `serve` set one.
    space: Mutex<Option<space::Watch>>,
    /// Commits record the allocator state (redb's quick-repair), so a restart after a crash
    /// need not walk the whole file.
    quick_repair: AtomicBool,
    /// The large values kept in files beside the database.
    values: Values,
    /// The uploaded code bundles kept in files beside the database.
    blobs: BlobFiles,
    /// The server's metrics (the writer times its commits into them).
    metrics: Metrics,
}

/// How long a reopen waits for the reads in flight on the old database to finish.
const REOPEN_WAIT: Duration = Duration::from_secs(10);

impl Shared {
    fn new(
        path: PathBuf,
        data_dir: PathBuf,
        database: Database,
        (values, blobs): (Values, BlobFiles),
    ) -> Shared {
        Shared {
            path,
            data_dir,
            values,
            blobs,
            db: RwLock::new(Some(Arc::new(database))),
            full: AtomicBool::new(false),
            space: Mutex::new(None),
            quick_repair: AtomicBool::new(false),
            metrics: Metrics::new(),
        }
    }

    /// The open database (waits while the writer reopens it).
    fn database(&self) -> Result<Arc<Database>, Error> {
        let db = self.db.read().unwrap_or_else(PoisonError::into_inner);
        db.clone().ok_or_else(|| Error::Reopening {
            path: self.path.clone(),
        })
    }

    /// Closes the database and opens it again (redb refuses all I/O on a `Database` once a write
    /// failed). Readers wait on the handle meanwhile; the reads in flight on the old database
    /// are let finish first, as redb allows one open `Database` per file.
    fn reopen(&self) -> Result<(), Error> {
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(mut old) = slot.take() {
            let deadline = Instant::now() + REOPEN_WAIT;
            loop {
                match Arc::try_unwrap(old) {
                    Ok(database) => {
                        drop(database);
                        break;
                    }
                    // A read in flight holds a clone for the length of one read transaction;
                    // no new clone can be taken while this holds the handle.
                    Err(shared) if Instant::now() < deadline => {
                        old = shared;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(shared) => {
                        *slot = Some(shared);
                        return Err(Error::Reopening {
                            path: self.path.clone(),
                        });
                    }
                }
            }
        }
        let database = open_database(&self.path).map_err(|cause| Error::Open {
            path: self.path.clone(),
            cause: Box::new(cause),
        })?;
        *slot = Some(Arc::new(database));
        Ok(())
    }

    fn set_full(&self, full: bool) {
        self.full.store(full, Ordering::Release);
    }

    fn disk_full(&self) -> Error {
        Error::DiskFull {
            data_dir: self.data_dir.clone(),
        }
    }
}

/// Opens (or creates) the database file, its page cache capped at [`CACHE_BYTES`].
fn open_database(path: &Path) -> Result<Database, redb::DatabaseError> {
    Database::builder().set_cache_size(CACHE_BYTES).create(path)
}

/// How long start-up waits for the database file's lock.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Opens the database as [`open_database`] does, waiting up to [`LOCK_WAIT`] while another
/// process holds its lock. After a `kill -9` of the server, a child it was starting (forked,
/// not yet exec'd) can hold the file open for a moment; a second server on the same data
/// directory holds it for good, and is reported once the wait is over.
fn open_database_waiting(path: &Path) -> Result<Database, redb::DatabaseError> {
    let until = Instant::now() + LOCK_WAIT;
    let mut logged = false;
    loop {
        match open_database(path) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < until => {
                if !logged {
                    tracing::warn!(path = %path.display(), "the store is locked by another process; waiting for it");
                    logged = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// Opens the store's database file `path` in `data_dir`, creating it when there is none.
fn open_or_create(path: &Path, data_dir: &Path) -> Result<Database, Error> {
    let new = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path);
    match new {
        Ok(file) => create(path, data_dir, file),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => open_existing(path, data_dir),
        Err(e) => Err(Error::Open {
            path: path.to_owned(),
            cause: Box::new(e.into()),
        }),
    }
}

/// Makes a new store in `file`, just created at `path`: the database, its tables, and the
/// directory entry, all durable. Made whole or removed: left half made, the file would lack
/// redb's magic number (written last; on a full disk the file is all zeros), and no later
/// start could open it.
fn create(path: &Path, data_dir: &Path, file: std::fs::File) -> Result<Database, Error> {
    let mut builder = Database::builder();
    builder.set_cache_size(CACHE_BYTES);
    let made = redb::backends::FileBackend::new(file)
        .and_then(|backend| builder.create_with_backend(backend))
        .map_err(|e| match e {
            // Another start on the same directory took the new file: it is that one's to make.
            redb::DatabaseError::DatabaseAlreadyOpen => (
                Error::Locked {
                    data_dir: data_dir.to_owned(),
                },
                None,
            ),
            // Nothing was made: the file is this start's to remove.
            e => (db("create")(e), std::fs::remove_file(path).err()),
        })
        .and_then(|database| {
            let finished = create_tables(&database)
                .and_then(|()| index::prepare(&database))
                .and_then(|()| {
                    std::fs::File::open(data_dir)
                        .and_then(|dir| dir.sync_all())
                        .map_err(|e| db("sync the data directory")(redb::Error::Io(e)))
                });
            match finished {
                Ok(()) => Ok(database),
                // Unlinked while this start still holds the file's lock, so that no other
                // start waiting for it can have opened it meanwhile.
                Err(cause) => Err((cause, std::fs::remove_file(path).err())),
            }
        });
    match made {
        Ok(database) => Ok(database),
        Err((locked @ Error::Locked { .. }, _)) => Err(locked),
        Err((cause, not_removed)) => Err(Error::Create {
            path: path.to_owned(),
            cause: Box::new(cause),
            not_removed,
        }),
    }
}

/// Opens the existing store at `path`, waiting a while for its lock; a file left all zeros by
/// a creation cut short is named for what it is ([`Error::Unfinished`]).
fn open_existing(path: &Path, data_dir: &Path) -> Result<Database, Error> {
    let bytes = std::fs::metadata(path).map_or(0, |m| m.len());
    let database = open_database_waiting(path).map_err(|cause| match cause {
        redb::DatabaseError::DatabaseAlreadyOpen => Error::Locked {
            data_dir: data_dir.to_owned(),
        },
        // Checked after redb's refusal, which holds the lock while it looks: a file another
        // start is creating is not mistaken for a leftover. An empty file redb initializes.
        _ if bytes > 0 && all_zero(path) => Error::Unfinished {
            path: path.to_owned(),
            bytes,
        },
        cause => Error::Open {
            path: path.to_owned(),
            cause: Box::new(cause),
        },
    })?;
    create_tables(&database)?;
    index::prepare(&database)?;
    Ok(database)
}

/// Whether the file at `path` holds only zero bytes (read up to 64 MiB: a creation cut short
/// leaves far less; a larger file is not taken for one).
fn all_zero(path: &Path) -> bool {
    const MAX_BYTES: u64 = 64 << 20;
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    if file.metadata().map_or(true, |m| m.len() > MAX_BYTES) {
        return false;
    }
    let mut reader = std::io::BufReader::with_capacity(64 << 10, file);
    loop {
        match std::io::BufRead::fill_buf(&mut reader) {
            Ok([]) => return true,
            Ok(bytes) if bytes.iter().all(|&b| b == 0) => {
                let n = bytes.len();
                std::io::BufRead::consume(&mut reader, n);
            }
            _ => return false,
        }
    }
}

impl Store {
    /// Opens (or creates) the store in `data_dir` and starts its writer thread. A new store
    /// that cannot be created completely leaves no database file ([`Error::Create`]).
    pub fn open(data_dir: &Path) -> Result<Store, Error> {
        std::fs::create_dir_all(data_dir).map_err(|source| Error::CreateDir {
            path: data_dir.to_owned(),
            source,
        })?;
        // The directories first: a start that cannot make them makes no database file.
        let files = (Values::open(data_dir)?, BlobFiles::open(data_dir)?);
        let path = data_dir.join(DB_FILE);
        let db = open_or_create(&path, data_dir)?;
        let shared = Arc::new(Shared::new(path, data_dir.to_owned(), db, files));
        sweep_values_later(&shared);
        let ops = writer::start(shared.clone());
        Ok(Store {
            inner: Arc::new(Inner {
                shared,
                ops,
                retain: std::sync::OnceLock::new(),
            }),
        })
    }

    /// The server's metrics: made with the store, as every part that records into them (the
    /// store's writer, the broker, the API) holds the store.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.shared.metrics
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.inner.shared.path
    }

    /// Whether writes are refused now because the data directory is full.
    pub fn is_full(&self) -> bool {
        self.inner.shared.full.load(Ordering::Acquire)
    }

    /// [`Error::DiskFull`] while writes are refused for lack of space: lets a caller refuse work
    /// before starting it rather than after.
    pub fn check_writable(&self) -> Result<(), Error> {
        if self.is_full() {
            return Err(self.inner.shared.disk_full());
        }
        Ok(())
    }

    /// Watches free space in the data directory: measures it now and then every few seconds,
    /// and warns in the log when it falls under `min_free_bytes` (`None`: the smaller of 1 GiB
    /// and 5% of the filesystem). Returns the first measurement.
    pub fn watch_free_space(&self, min_free_bytes: Option<u64>) -> Option<Space> {
        let shared = &self.inner.shared;
        let mut watch = space::Watch::new(shared.data_dir.clone(), min_free_bytes);
        watch.check_if_due(Instant::now());
        let first = watch.last;
        *shared.space.lock().unwrap_or_else(PoisonError::into_inner) = Some(watch);
        // Wakes the writer so it plans its next measurement.
        let _ = self.inner.ops.send(Op::Wake);
        first
    }

    /// Makes every commit from now on record redb's allocator state, with a two-phase commit
    /// (two fsyncs instead of one), so that a restart after a crash is quick whatever the
    /// store's size; without it, that restart verifies the whole file.
    pub fn set_quick_repair(&self, enabled: bool) {
        self.inner
            .shared
            .quick_repair
            .store(enabled, Ordering::Release);
    }

    /// The last free-space measurement (`None` before [`Store::watch_free_space`]).
    pub fn space(&self) -> Option<Space> {
        let watch = self.inner.shared.space.lock();
        watch.unwrap_or_else(PoisonError::into_inner).as_ref()?.last
    }

    /// Whether `bytes` more cannot be stored now though the data directory is not short of
    /// space: they are more than its free space above `--min-free-space` (last measured, and
    /// measured again after every write that failed for lack of space). A write of them fails
    /// until space is freed, and every write waits behind it meanwhile.
    pub fn exceeds_space_left(&self, bytes: u64) -> bool {
        self.space()
            .is_some_and(|s| !s.low && bytes > s.free_bytes.saturating_sub(s.min_free_bytes))
    }

    /// What an operator should know now: free space under the threshold, writes refused.
    pub fn warnings(&self) -> Vec<String> {
        let shared = &self.inner.shared;
        let mut out = Vec::new();
        if let Some(space) = self.space().filter(|s| s.low) {
            out.push(space::low_space_message(&shared.data_dir, &space));
        }
        if self.is_full() {
            out.push(shared.disk_full().to_string());
        }
        out
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

    /// Queues writes that commit in one transaction, whatever else is queued around them (the
    /// writer never splits a group between commits); returns one receiver per write.
    pub fn submit_group(
        &self,
        writes: Vec<Write>,
    ) -> Vec<oneshot::Receiver<Result<u32, Arc<Error>>>> {
        let mut group = Vec::with_capacity(writes.len());
        let mut done = Vec::with_capacity(writes.len());
        for write in writes {
            let (ack, acked) = oneshot::channel();
            group.push((Box::new(write), Some(ack)));
            done.push(acked);
        }
        // A closed writer drops the acks, which the receivers see as errors.
        let _ = self.inner.ops.send(Op::Group(group));
        done
    }

    /// The record of the idempotency key `key` of user `caller`, if one is stored (whatever its
    /// age: the caller judges whether it has expired).
    pub async fn idempotency_key(
        &self,
        caller: u32,
        key: &str,
    ) -> Result<Option<KeyRecord>, Error> {
        let key = key.to_owned();
        self.read(move |database| {
            let txn = database.begin_read().map_err(db("begin read"))?;
            let keys = txn
                .open_table(idempotency::KEYS)
                .map_err(db("open idempotency"))?;
            idempotency::get(&keys, caller, &key)
        })
        .await
    }

    /// Removes up to `max` idempotency keys created before `before_ms` (Unix ms), oldest first,
    /// in one write through the writer; returns how many it removed (fewer than `max`: no
    /// more are that old).
    pub async fn expire_keys(&self, before_ms: u64, max: u32) -> Result<u32, Arc<Error>> {
        self.write(Write::ExpireKeys { before_ms, max }).await
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
        let shared = self.inner.shared.clone();
        tokio::task::spawn_blocking(move || f(&*shared.database()?))
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

    /// Every kept version of a live function, oldest first, with the live version number;
    /// `None` when no function of that name is live. Versions `rm` removed are left out.
    pub async fn versions(&self, name: &str) -> Result<Option<(Vec<FunctionRecord>, u32)>, Error> {
        let name = name.to_owned();
        self.read(move |database| {
            let txn = database.begin_read().map_err(db("begin read"))?;
            let heads = txn.open_table(HEADS).map_err(db("open heads"))?;
            let Some(live) = heads.get(name.as_str()).map_err(db("read head"))? else {
                return Ok(None);
            };
            let floor = removed_through(&txn, &name)?;
            let functions = txn.open_table(FUNCTIONS).map_err(db("open functions"))?;
            let mut out = Vec::new();
            let range = (name.as_str(), floor.saturating_add(1))..=(name.as_str(), u32::MAX);
            for entry in functions.range(range).map_err(db("scan versions"))? {
                let (_, bytes) = entry.map_err(db("scan versions"))?;
                out.push(decode_function(bytes.value())?);
            }
            Ok(Some((out, live.value())))
        })
        .await
    }

    /// A version of a live function that `rm` has not removed (what a call may pin);
    /// `None` otherwise.
    pub async fn kept_version(
        &self,
        name: &str,
        version: u32,
    ) -> Result<Option<FunctionRecord>, Error> {
        let name = name.to_owned();
        self.read(move |database| {
            let txn = database.begin_read().map_err(db("begin read"))?;
            let heads = txn.open_table(HEADS).map_err(db("open heads"))?;
            if heads.get(name.as_str()).map_err(db("read head"))?.is_none()
                || version <= removed_through(&txn, &name)?
            {
                return Ok(None);
            }
            drop(txn);
            read_function(database, &name, Some(version))
        })
        .await
    }

    /// A task's payload (kept until the task is purged).
    pub async fn payload(&self, id: u128) -> Result<Option<Bytes>, Error> {
        let mut one = self
            .read_values(PAYLOAD_VALUES, vec![id], usize::MAX)
            .await?;
        Ok(one.pop().flatten())
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

    /// The uploaded code bundles kept as files.
    pub fn blob_files(&self) -> &BlobFiles {
        &self.inner.shared.blobs
    }

    /// The size of a stored code bundle (in the blob table or an uploaded file, whose time is
    /// touched: see [`BLOB_GRACE`]); `None` when there is none.
    pub async fn has_blob(&self, hash: [u8; 32]) -> Result<Option<u64>, Error> {
        let files = self.inner.shared.blobs.clone();
        self.read(move |database| {
            let txn = database.begin_read().map_err(db("begin read"))?;
            let blobs = txn.open_table(BLOBS).map_err(db("open blobs"))?;
            if let Some(blob) = blobs.get(hash.as_slice()).map_err(db("read blob"))? {
                return Ok(Some(blob.value().len() as u64));
            }
            files.touch(&hash)
        })
        .await
    }

    /// Up to `max_len` bytes of a code bundle from `offset`, with its whole size, from the
    /// blob table or an uploaded file; `None` when there is no such bundle.
    pub async fn code_chunk(
        &self,
        hash: [u8; 32],
        offset: u64,
        max_len: usize,
    ) -> Result<Option<(u64, Bytes)>, Error> {
        let files = self.inner.shared.blobs.clone();
        self.read(move |database| {
            let txn = database.begin_read().map_err(db("begin read"))?;
            let blobs = txn.open_table(BLOBS).map_err(db("open blobs"))?;
            if let Some(blob) = blobs.get(hash.as_slice()).map_err(db("read blob"))? {
                let all = blob.value();
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(all.len());
                let end = start.saturating_add(max_len).min(all.len());
                return Ok(Some((
                    all.len() as u64,
                    Bytes::copy_from_slice(&all[start..end]),
                )));
            }
            files.read_chunk(&hash, offset, max_len)
        })
        .await
    }

    /// Removes the uploaded blob files no stored function version names, once untouched for
    /// [`BLOB_GRACE`]. Returns how many went.
    pub async fn sweep_blob_files(&self) -> Result<usize, Error> {
        let files = self.inner.shared.blobs.clone();
        let before = std::time::SystemTime::now() - BLOB_GRACE;
        self.read(move |database| {
            let txn = database.begin_read().map_err(db("begin read"))?;
            let functions = txn.open_table(FUNCTIONS).map_err(db("open functions"))?;
            let mut named = std::collections::HashSet::new();
            for row in functions.iter().map_err(db("scan functions"))? {
                let (_, value) = row.map_err(db("scan functions"))?;
                named.insert(decode_function(value.value())?.code_hash);
            }
            files.sweep(before, |hash| named.contains(hash))
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

    /// The usage buckets (see [`UsageRow`]) of every hour that ends after `since_ms` (Unix ms),
    /// sorted by hour, caller and function.
    pub async fn usage(&self, since_ms: u64) -> Result<Vec<UsageRow>, Error> {
        let since_hour = since_ms / HOUR_MS;
        self.read(move |database| usage::read_since(database, since_hour))
            .await
    }

    /// A finished task's result bytes.
    pub async fn result(&self, id: u128) -> Result<Option<Bytes>, Error> {
        let mut one = self
            .read_values(RESULT_VALUES, vec![id], usize::MAX)
            .await?;
        Ok(one.pop().flatten())
    }

    /// A finished task's result to send: small ones whole, large ones as their file, so a
    /// reader holds a chunk of it at a time, not all of it.
    pub async fn result_to_send(&self, id: u128) -> Result<Option<Output>, Error> {
        let values = self.inner.shared.values.clone();
        self.read(move |database| {
            let txn = database.begin_read().map_err(db("begin read"))?;
            let results = txn.open_table(RESULTS).map_err(db("open table"))?;
            if let Some(value) = results.get(id).map_err(db("read"))? {
                return Ok(Some(Output::Whole(Bytes::copy_from_slice(value.value()))));
            }
            let file = values.file(id, Kind::Result)?;
            Ok(file.map(|(path, len)| Output::File { path, len }))
        })
        .await
    }

    /// A finished task's captured stderr.
    pub async fn logs(&self, id: u128) -> Result<Option<Bytes>, Error> {
        let mut one = self.read_values(LOG_VALUES, vec![id], usize::MAX).await?;
        Ok(one.pop().flatten())
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
        self.read_values(RESULT_VALUES, ids, usize::MAX).await
    }

    /// The last `max_bytes` of many finished tasks' captured stderr, read in one transaction,
    /// in the order of `ids`.
    pub async fn log_tails(
        &self,
        ids: Vec<u128>,
        max_bytes: usize,
    ) -> Result<Vec<Option<Bytes>>, Error> {
        self.read_values(LOG_VALUES, ids, max_bytes).await
    }

    /// Many tasks' payloads, read in one transaction, in the order of `ids` (`None` for a task
    /// that has no payload stored: unknown, or purged).
    pub async fn payloads(&self, ids: Vec<u128>) -> Result<Vec<Option<Bytes>>, Error> {
        self.read_values(PAYLOAD_VALUES, ids, usize::MAX).await
    }

    /// Values of one kind for many tasks, read in one transaction (files for values kept
    /// beside the database), each cut to its last `max_bytes`.
    async fn read_values(
        &self,
        (table, kind): (ValueTable, values::Kind),
        ids: Vec<u128>,
        max_bytes: usize,
    ) -> Result<Vec<Option<Bytes>>, Error> {
        let values = self.inner.shared.values.clone();
        self.read(move |database| {
            let txn = database.begin_read().map_err(db("begin read"))?;
            let t = txn.open_table(table).map_err(db("open table"))?;
            ids.iter()
                .map(|id| read_value(&t, &values, kind, *id, max_bytes))
                .collect()
        })
        .await
    }

    /// Every unfinished task in arrival order. Only payloads of at most `inline_max` bytes are
    /// read (by the size their record gives), so the scan's memory grows with the number of
    /// pending tasks, not with their payloads.
    pub async fn pending(&self, inline_max: usize) -> Result<Vec<PendingTask>, Error> {
        let values = self.inner.shared.values.clone();
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
                    let stored = read_value(&payloads, &values, Kind::Payload, id, usize::MAX)?;
                    Some(stored.unwrap_or_default())
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
    txn.open_table(REMOVED).map_err(db("create removed"))?;
    txn.open_table(BLOBS).map_err(db("create blobs"))?;
    txn.open_table(TASKS).map_err(db("create tasks"))?;
    txn.open_table(PAYLOADS).map_err(db("create payloads"))?;
    txn.open_table(RESULTS).map_err(db("create results"))?;
    txn.open_table(LOGS).map_err(db("create logs"))?;
    txn.open_table(PENDING).map_err(db("create pending"))?;
    users::create_tables(&txn)?;
    txn.open_table(usage::USAGE).map_err(db("create usage"))?;
    idempotency::create_tables(&txn)?;
    retention::prepare(&txn)?;
    txn.commit().map_err(db("commit"))
}

/// The highest version of `name` that `rm` removed (0 when none was).
fn removed_through(txn: &redb::ReadTransaction, name: &str) -> Result<u32, Error> {
    let removed = txn.open_table(REMOVED).map_err(db("open removed"))?;
    Ok(removed
        .get(name)
        .map_err(db("read removed"))?
        .map_or(0, |v| v.value()))
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

/// A table of task values, and the kind of file it spills to.
type ValueTable = TableDefinition<'static, u128, &'static [u8]>;
const PAYLOAD_VALUES: (ValueTable, Kind) = (PAYLOADS, Kind::Payload);
const RESULT_VALUES: (ValueTable, Kind) = (RESULTS, Kind::Result);
const LOG_VALUES: (ValueTable, Kind) = (LOGS, Kind::Logs);

/// A value to send: whole bytes, or the file a large one is kept in.
#[derive(Debug)]
pub enum Output {
    /// The bytes.
    Whole(Bytes),
    /// The value's file (opened for each chunk sent, so a reader that stalls holds no file
    /// open) and its length.
    File {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
}

/// A task's value, cut to its last `max_bytes`: from its table, or else from its file.
fn read_value(
    table: &impl ReadableTable<u128, &'static [u8]>,
    values: &Values,
    kind: Kind,
    id: u128,
    max_bytes: usize,
) -> Result<Option<Bytes>, Error> {
    if let Some(value) = table.get(id).map_err(db("read"))? {
        let bytes = value.value();
        return Ok(Some(Bytes::copy_from_slice(
            &bytes[bytes.len().saturating_sub(max_bytes)..],
        )));
    }
    values.read(id, kind, max_bytes)
}

/// Starts a thread that removes the value files a crash left behind (see [`Values::sweep`]):
/// a payload, result or stderr of a task that is not stored (a finished task keeps its
/// payload until it is purged). (A result or stderr written for a task whose end did not commit stays: the
/// task runs again, and its end rewrites the same file; removing it here could race that.)
/// It runs beside the server, so start-up does not wait on the directory.
fn sweep_values_later(shared: &Arc<Shared>) {
    let shared = shared.clone();
    let before = std::time::SystemTime::now();
    let spawned = std::thread::Builder::new()
        .name("faasd-values-sweep".into())
        .spawn(move || {
            let swept = shared.database().and_then(|database| {
                let txn = database.begin_read().map_err(db("begin read"))?;
                let tasks = txn.open_table(TASKS).map_err(db("open tasks"))?;
                shared.values.sweep(before, |id, _kind| {
                    Ok(tasks.get(id).map_err(db("read task"))?.is_some())
                })
            });
            match swept {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "removed value files a crash left behind"),
                Err(e) => tracing::warn!(error = %e, "cannot sweep the value files"),
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the value files' sweep");
    }
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

    #[test]
    fn opening_waits_while_another_process_briefly_holds_the_lock() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join(DB_FILE);
        let holder = open_database(&path).expect("first open");
        assert!(matches!(
            open_database(&path),
            Err(redb::DatabaseError::DatabaseAlreadyOpen)
        ));
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(holder);
        });
        open_database_waiting(&path).expect("opened once the holder let go");
        release.join().expect("holder thread");
    }

    fn open_error(dir: &Path) -> Error {
        match Store::open(dir) {
            Ok(_) => panic!("the store opened"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_file_left_by_a_creation_cut_short_is_named_for_what_it_is_and_kept() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join(DB_FILE);
        std::fs::write(&path, vec![0u8; 73_728]).expect("write zeros");
        let error = open_error(dir.path());
        assert!(
            matches!(&error, Error::Unfinished { bytes: 73_728, .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("bytes of zeros"), "{message}");
        assert!(message.contains("remove the file"), "{message}");
        // Never removed for the operator.
        assert_eq!(std::fs::metadata(&path).expect("kept").len(), 73_728);

        // Anything else redb refuses keeps its own error, said once however it is printed.
        std::fs::write(&path, b"not a store").expect("write");
        let error = open_error(dir.path());
        assert!(matches!(&error, Error::Open { .. }), "{error:?}");
        let chain = format!("{:#}", anyhow::Error::new(error));
        assert_eq!(chain.matches("magic number mismatch").count(), 1, "{chain}");

        // An empty file is a store to create.
        std::fs::write(&path, b"").expect("empty");
        drop(Store::open(dir.path()).expect("created in the empty file"));
        drop(Store::open(dir.path()).expect("opened again"));
    }

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
            owner: 0,
            display_name: None,
            http: None,
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
                // A finished task keeps its payload, for a replay.
                Some(Bytes::from_static(&[10])),
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

    /// Uploads `code` as a blob file and returns its hash.
    async fn upload(store: &Store, code: &[u8]) -> [u8; 32] {
        use sha2::Digest;
        let hash: [u8; 32] = sha2::Sha256::digest(code).into();
        let upload = store.blob_files().upload(hash, 0).await.expect("upload");
        let mut upload = upload.expect("not refused");
        upload
            .write(Bytes::copy_from_slice(code))
            .await
            .expect("write");
        assert!(matches!(
            upload.finish().await.expect("finish"),
            Stored::Stored(_)
        ));
        hash
    }

    #[tokio::test]
    async fn blob_files_are_read_in_chunks_and_swept_once_unnamed_and_untouched() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(dir.path()).expect("open");
        let named = upload(&store, b"named code").await;
        let loose = upload(&store, b"loose code").await;
        let record = FunctionRecord {
            code_hash: named,
            ..function("f")
        };
        store
            .write(Write::RegisterFile { record })
            .await
            .expect("register by file");
        let chunk = store.code_chunk(named, 6, 100).await.expect("read");
        assert_eq!(chunk, Some((10, Bytes::from_static(b"code"))));
        assert_eq!(
            store.blob(named).await.expect("read"),
            None,
            "a blob file went into redb"
        );
        // Within the grace period nothing goes.
        assert_eq!(store.sweep_blob_files().await.expect("sweep"), 0);
        let long_ago = std::time::SystemTime::now() - BLOB_GRACE * 2;
        for hash in [named, loose] {
            let path = store.blob_files().path(&hash);
            let file = std::fs::File::options()
                .write(true)
                .open(path)
                .expect("open");
            file.set_modified(long_ago).expect("age the file");
        }
        assert_eq!(store.sweep_blob_files().await.expect("sweep"), 1);
        assert_eq!(store.has_blob(loose).await.expect("read"), None);
        assert_eq!(store.has_blob(named).await.expect("read"), Some(10));
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
        let (listed, live) = store.versions("f").await.expect("versions").expect("live");
        let numbers: Vec<u32> = listed.iter().map(|f| f.version).collect();
        assert_eq!((numbers, live), (vec![1, 2], 2));
        assert!(store.kept_version("f", 1).await.expect("read").is_some());
        store
            .write(Write::Delete { name: "f".into() })
            .await
            .expect("delete");
        assert!(store.function("f", None).await.expect("read").is_none());
        assert!(store.functions().await.expect("list").is_empty());
        // Gone from the API (not listed, not pinnable), yet kept for the tasks that pin it.
        assert!(store.versions("f").await.expect("versions").is_none());
        assert!(store.kept_version("f", 1).await.expect("read").is_none());
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

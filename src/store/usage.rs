//! Usage records: what finished tasks used, summed per hour, caller and function.
//!
//! The writer adds every finished task of a commit to these totals in the same transaction that
//! stores the task's end (one read-modify-write per distinct key per commit, not per task), so
//! the totals are exactly as durable as the ends they count. They live in their own table and
//! nothing that removes tasks touches it: usage keeps its totals when tasks are purged.

use std::collections::BTreeMap;

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::records::{self, TaskRecord, TaskStatus};
use super::{Error, db};

/// `(hour, caller, function)` → [`UsageTotals`], where `hour` counts hours since the Unix
/// epoch (of the task's end) and `caller` is the user id (0: no user).
pub(super) const USAGE: TableDefinition<(u64, u32, &str), &[u8]> = TableDefinition::new("usage");

/// Milliseconds in an hour, the width of a usage bucket.
pub const HOUR_MS: u64 = 3_600_000;

/// The sums of one bucket's tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageTotals {
    /// Tasks that ended.
    pub calls: u64,
    /// Of those, the ones that failed.
    pub failures: u64,
    /// Their run (wall-clock) time, in microseconds.
    pub wall_us: u64,
    /// Their CPU time (user + system), in microseconds.
    pub cpu_us: u64,
    /// Each task's peak memory times its run time, summed, in byte-microseconds (GB-seconds
    /// are this over 2^30 and 10^6, as Lambda bills).
    pub memory_byte_us: u128,
}

impl UsageTotals {
    /// Adds one finished task.
    pub fn add_task(&mut self, task: &TaskRecord) {
        self.calls += 1;
        self.failures += u64::from(task.status == TaskStatus::Failed);
        self.wall_us += task.run_us;
        self.cpu_us += task.cpu_us;
        self.memory_byte_us += u128::from(task.peak_memory_bytes) * u128::from(task.run_us);
    }

    /// Adds another bucket's totals.
    pub fn add(&mut self, other: &UsageTotals) {
        self.calls += other.calls;
        self.failures += other.failures;
        self.wall_us += other.wall_us;
        self.cpu_us += other.cpu_us;
        self.memory_byte_us += other.memory_byte_us;
    }

    /// Memory use in GB-seconds (GiB of peak memory times seconds of run time).
    pub fn gb_seconds(&self) -> f64 {
        self.memory_byte_us as f64 / (1u64 << 30) as f64 / 1e6
    }
}

/// One bucket of the usage table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    /// Hours since the Unix epoch.
    pub hour: u64,
    /// The caller's user id (0: no user).
    pub caller: u32,
    /// The function's name.
    pub function: String,
    /// What its tasks used.
    pub totals: UsageTotals,
}

/// The bucket key of a finished task: the hour of its end, its caller, its function.
fn key_of(task: &TaskRecord) -> (u64, u32, String) {
    let hour = task.finished_ms.unwrap_or(task.created_ms) / HOUR_MS;
    (hour, task.caller, task.function.clone())
}

/// In the writer's transaction: adds `finished` (the ends this commit stores) to their buckets.
pub(super) fn record<'a>(
    txn: &WriteTransaction,
    finished: impl Iterator<Item = &'a TaskRecord>,
) -> Result<(), Error> {
    let mut sums: BTreeMap<(u64, u32, String), UsageTotals> = BTreeMap::new();
    for task in finished.filter(|t| t.status.is_finished()) {
        sums.entry(key_of(task)).or_default().add_task(task);
    }
    add_sums(txn, sums)
}

/// In the writer's transaction: adds rows of sums (HTTP requests) to their buckets.
pub(super) fn add_rows(txn: &WriteTransaction, rows: &[UsageRow]) -> Result<(), Error> {
    let mut sums: BTreeMap<(u64, u32, String), UsageTotals> = BTreeMap::new();
    for row in rows {
        let key = (row.hour, row.caller, row.function.clone());
        sums.entry(key).or_default().add(&row.totals);
    }
    add_sums(txn, sums)
}

/// Adds each bucket's sum to its stored totals.
fn add_sums(
    txn: &WriteTransaction,
    sums: BTreeMap<(u64, u32, String), UsageTotals>,
) -> Result<(), Error> {
    if sums.is_empty() {
        return Ok(());
    }
    let mut table = txn.open_table(USAGE).map_err(db("open usage"))?;
    for ((hour, caller, function), sum) in sums {
        let key = (hour, caller, function.as_str());
        let mut totals = match table.get(key).map_err(db("read usage"))? {
            Some(bytes) => decode(bytes.value())?,
            None => UsageTotals::default(),
        };
        totals.add(&sum);
        let bytes = records::encode(&totals).map_err(|source| Error::Corrupt {
            table: "usage",
            source,
        })?;
        table
            .insert(key, bytes.as_slice())
            .map_err(db("write usage"))?;
    }
    Ok(())
}

fn decode(bytes: &[u8]) -> Result<UsageTotals, Error> {
    records::decode(bytes).map_err(|source| Error::Corrupt {
        table: "usage",
        source,
    })
}

/// Every bucket from hour `since_hour` on, in key order (hour, caller, function).
pub(super) fn read_since(
    database: &redb::Database,
    since_hour: u64,
) -> Result<Vec<UsageRow>, Error> {
    let txn = database.begin_read().map_err(db("begin read"))?;
    let table = txn.open_table(USAGE).map_err(db("open usage"))?;
    let mut rows = Vec::new();
    for entry in table
        .range((since_hour, 0, "")..)
        .map_err(db("scan usage"))?
    {
        let (key, value) = entry.map_err(db("scan usage"))?;
        let (hour, caller, function) = key.value();
        rows.push(UsageRow {
            hour,
            caller,
            function: function.to_owned(),
            totals: decode(value.value())?,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_encoding_is_pinned() {
        let totals = UsageTotals {
            calls: 1,
            failures: 2,
            wall_us: 3,
            cpu_us: 4,
            memory_byte_us: 5,
        };
        let bytes = records::encode(&totals).expect("encode");
        assert_eq!(bytes, [1, 2, 3, 4, 5]);
        assert_eq!(decode(&bytes).expect("decode"), totals);
    }

    #[test]
    fn a_task_adds_its_calls_failure_times_and_memory() {
        let task = TaskRecord {
            status: TaskStatus::Failed,
            run_us: 2_000_000,
            cpu_us: 500_000,
            peak_memory_bytes: 1 << 30,
            ..TaskRecord::queued(1, 1, "f".into(), 1)
        };
        let mut totals = UsageTotals::default();
        totals.add_task(&task);
        totals.add_task(&TaskRecord {
            status: TaskStatus::Completed,
            ..task.clone()
        });
        assert_eq!((totals.calls, totals.failures), (2, 1));
        assert_eq!((totals.wall_us, totals.cpu_us), (4_000_000, 1_000_000));
        assert!((totals.gb_seconds() - 4.0).abs() < 1e-9);
    }
}

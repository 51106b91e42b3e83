//! Idempotency keys: what a request sent with `Idempotency-Key` created, so a repeat of it
//! answers the same task ids instead of running the work again.
//!
//! A key is written by the writer in the same transaction as the QUEUED records of the tasks it
//! names ([`super::Write::RememberKey`], queued in one group with the enqueues, see
//! [`super::Store::submit_group`]): after a crash either both are on disk or neither is, so a
//! repeat can never find the tasks without the key (and run them twice) nor the key without its
//! tasks.
//!
//! Keys are scoped per caller (user id). A second table indexes them by creation time, so the
//! background expiry ([`super::Store::expire_keys`]) removes the oldest in small batches without
//! scanning the rest.

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::records;
use super::{Error, db};

/// `(caller, key)` → [`KeyRecord`].
pub(super) const KEYS: TableDefinition<(u32, &str), &[u8]> = TableDefinition::new("idempotency");
/// `(created_ms, caller, key)` → nothing: the keys by age, for the expiry.
pub(super) const KEYS_BY_AGE: TableDefinition<(u64, u32, &str), ()> =
    TableDefinition::new("idempotency_by_age");

/// What one idempotency key stands for. Stored with postcard: fields are only ever appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The function the request called.
    pub function: String,
    /// What kind of request it was (`invoke`, `batch`, `execute_function`).
    pub route: String,
    /// SHA-256 of the request's payload(s) (see [`payload_hash`]).
    pub payload_hash: [u8; 32],
    /// The tasks it created, in input order.
    pub task_ids: Vec<u128>,
    /// When it was recorded (Unix ms).
    pub created_ms: u64,
}

/// SHA-256 over the payloads of a request, each preceded by its length, so that no two
/// different lists of payloads hash alike by concatenation.
pub fn payload_hash<'a>(payloads: impl IntoIterator<Item = &'a [u8]>) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for payload in payloads {
        hasher.update((payload.len() as u64).to_le_bytes());
        hasher.update(payload);
    }
    hasher.finalize().into()
}

/// Creates both tables.
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), Error> {
    txn.open_table(KEYS).map_err(db("create idempotency"))?;
    txn.open_table(KEYS_BY_AGE)
        .map_err(db("create idempotency_by_age"))?;
    Ok(())
}

/// Records `record` under `(caller, key)`, replacing an older (expired) record of the same key.
pub(super) fn put(
    txn: &WriteTransaction,
    caller: u32,
    key: &str,
    record: &KeyRecord,
) -> Result<(), Error> {
    let bytes = records::encode(record).map_err(|source| Error::Corrupt {
        table: "idempotency",
        source,
    })?;
    let mut keys = txn.open_table(KEYS).map_err(db("open idempotency"))?;
    let mut by_age = txn
        .open_table(KEYS_BY_AGE)
        .map_err(db("open idempotency_by_age"))?;
    if let Some(old) = keys
        .insert((caller, key), bytes.as_slice())
        .map_err(db("write idempotency key"))?
    {
        let old = decode(old.value())?;
        by_age
            .remove((old.created_ms, caller, key))
            .map_err(db("drop idempotency age"))?;
    }
    by_age
        .insert((record.created_ms, caller, key), ())
        .map_err(db("write idempotency age"))?;
    Ok(())
}

/// The record of `(caller, key)`, whatever its age.
pub(super) fn get(
    keys: &impl ReadableTable<(u32, &'static str), &'static [u8]>,
    caller: u32,
    key: &str,
) -> Result<Option<KeyRecord>, Error> {
    match keys
        .get((caller, key))
        .map_err(db("read idempotency key"))?
    {
        Some(bytes) => Ok(Some(decode(bytes.value())?)),
        None => Ok(None),
    }
}

/// Removes up to `max` keys created before `before_ms`, oldest first; returns how many.
pub(super) fn expire(txn: &WriteTransaction, before_ms: u64, max: usize) -> Result<u32, Error> {
    let mut keys = txn.open_table(KEYS).map_err(db("open idempotency"))?;
    let mut by_age = txn
        .open_table(KEYS_BY_AGE)
        .map_err(db("open idempotency_by_age"))?;
    let mut old: Vec<(u64, u32, String)> = Vec::new();
    for entry in by_age
        .range(..(before_ms, 0, ""))
        .map_err(db("scan idempotency ages"))?
        .take(max)
    {
        let (age, _) = entry.map_err(db("scan idempotency ages"))?;
        let (created_ms, caller, key) = age.value();
        old.push((created_ms, caller, key.to_owned()));
    }
    for (created_ms, caller, key) in &old {
        by_age
            .remove((*created_ms, *caller, key.as_str()))
            .map_err(db("drop idempotency age"))?;
        keys.remove((*caller, key.as_str()))
            .map_err(db("drop idempotency key"))?;
    }
    Ok(old.len() as u32)
}

fn decode(bytes: &[u8]) -> Result<KeyRecord, Error> {
    records::decode(bytes).map_err(|source| Error::Corrupt {
        table: "idempotency",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use redb::{Database, ReadableDatabase};

    fn record(created_ms: u64) -> KeyRecord {
        KeyRecord {
            function: "f".into(),
            route: "invoke".into(),
            payload_hash: [7; 32],
            task_ids: vec![1, u128::MAX],
            created_ms,
        }
    }

    fn database() -> (Database, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let database = Database::create(dir.path().join("k.redb")).expect("create database");
        let txn = database.begin_write().expect("write");
        create_tables(&txn).expect("tables");
        txn.commit().expect("commit");
        (database, dir)
    }

    fn stored(database: &Database, caller: u32, key: &str) -> Option<KeyRecord> {
        let txn = database.begin_read().expect("read");
        let keys = txn.open_table(KEYS).expect("keys");
        get(&keys, caller, key).expect("get")
    }

    #[test]
    fn a_key_record_has_fixed_bytes() {
        let bytes = records::encode(&record(300)).expect("encode");
        // "f", "invoke", the hash as 32 bare bytes, two ids (u128::MAX a 19-byte varint), 300.
        let expected = format!(
            "016606{}{}0201{}03ac02",
            "696e766f6b65",
            "07".repeat(32),
            "ff".repeat(18),
        );
        assert_eq!(hex(&bytes), expected);
        assert_eq!(decode(&bytes).expect("decode"), record(300));
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn payload_hashes_tell_lists_apart_that_concatenate_alike() {
        let one = payload_hash([b"ab".as_slice()]);
        let two = payload_hash([b"a".as_slice(), b"b".as_slice()]);
        assert_ne!(one, two);
        assert_eq!(one, payload_hash([b"ab".as_slice()]));
    }

    #[test]
    fn keys_are_per_caller_and_expire_oldest_first_in_batches() {
        let (database, _dir) = database();
        let txn = database.begin_write().expect("write");
        for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
            put(&txn, 1, key, &record(10 + i as u64)).expect("put");
        }
        put(&txn, 2, "a", &record(50)).expect("put");
        txn.commit().expect("commit");
        assert_eq!(stored(&database, 1, "a"), Some(record(10)));
        assert_eq!(stored(&database, 2, "a"), Some(record(50)));
        assert_eq!(stored(&database, 3, "a"), None);

        let txn = database.begin_write().expect("write");
        assert_eq!(expire(&txn, 40, 2).expect("expire"), 2);
        txn.commit().expect("commit");
        assert_eq!(stored(&database, 1, "a"), None);
        assert_eq!(stored(&database, 1, "b"), None);
        assert_eq!(stored(&database, 1, "c"), Some(record(12)));

        let txn = database.begin_write().expect("write");
        assert_eq!(expire(&txn, 40, 2).expect("expire"), 1);
        assert_eq!(expire(&txn, 40, 2).expect("expire"), 0);
        txn.commit().expect("commit");
        assert_eq!(stored(&database, 2, "a"), Some(record(50)));
    }

    #[test]
    fn a_replaced_key_leaves_no_stale_age_behind() {
        let (database, _dir) = database();
        let txn = database.begin_write().expect("write");
        put(&txn, 1, "k", &record(10)).expect("put");
        put(&txn, 1, "k", &record(90)).expect("put");
        // The old age entry is gone: expiring up to 50 removes nothing.
        assert_eq!(expire(&txn, 50, 10).expect("expire"), 0);
        txn.commit().expect("commit");
        assert_eq!(stored(&database, 1, "k"), Some(record(90)));
    }
}

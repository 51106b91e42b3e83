//! Users and grants: who may call the API and which functions an invoker may call.
//!
//! A user's token is never stored, only the SHA-256 of its secret part. Changes are rare (an
//! admin adds a user, rotates a token, grants a function), so each one is its own durable write
//! transaction, committed before the caller is answered; the group-commit writer stays for the
//! task path.

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{Error, Store, db, records};

/// user id → [`UserRecord`].
pub(super) const USERS: TableDefinition<u32, &[u8]> = TableDefinition::new("users");
/// (user id, function name) → nothing: the user may invoke the function.
pub(super) const GRANTS: TableDefinition<(u32, &str), ()> = TableDefinition::new("grants");
/// A counter per name: `next_user_id` is the id the next user gets (ids are never reused, so a
/// removed user's tasks never become a new user's).
pub(super) const USER_META: TableDefinition<&str, u64> = TableDefinition::new("user_meta");

const NEXT_USER_ID: &str = "next_user_id";

/// One user as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The user's id (at least 1; 0 is no user).
    pub id: u32,
    /// The user's name (unique).
    pub name: String,
    /// The user's role as the API spells it (`admin`, `developer`, `invoker`).
    pub role: String,
    /// SHA-256 of the secret part of the user's current token.
    pub token_sha256: [u8; 32],
    /// When the user was added (Unix ms).
    pub created_ms: u64,
}

/// Creates the tables of this file (inside the store's start-up transaction).
pub(super) fn create_tables(txn: &redb::WriteTransaction) -> Result<(), Error> {
    txn.open_table(USERS).map_err(db("create users"))?;
    txn.open_table(GRANTS).map_err(db("create grants"))?;
    txn.open_table(USER_META).map_err(db("create user meta"))?;
    Ok(())
}

fn decode_user(bytes: &[u8]) -> Result<UserRecord, Error> {
    records::decode(bytes).map_err(|source| Error::Corrupt {
        table: "users",
        source,
    })
}

fn encode_user(user: &UserRecord) -> Result<Vec<u8>, Error> {
    records::encode(user).map_err(|source| Error::Corrupt {
        table: "users",
        source,
    })
}

/// Runs `f` in one write transaction with immediate durability and commits it.
fn write<T>(
    database: &Database,
    f: impl FnOnce(&redb::WriteTransaction) -> Result<T, Error>,
) -> Result<T, Error> {
    let txn = database.begin_write().map_err(db("begin write"))?;
    let out = f(&txn)?;
    txn.commit().map_err(db("commit"))?;
    Ok(out)
}

impl Store {
    /// Runs `f` on the database off the async threads.
    async fn blocking<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, Error> + Send + 'static,
    {
        self.read(f).await
    }

    /// Every user, by id.
    pub async fn users(&self) -> Result<Vec<UserRecord>, Error> {
        self.read(|database| {
            let txn = database.begin_read().map_err(db("begin read"))?;
            let users = txn.open_table(USERS).map_err(db("open users"))?;
            let mut out = Vec::new();
            for entry in users.iter().map_err(db("scan users"))? {
                let (_, bytes) = entry.map_err(db("scan users"))?;
                out.push(decode_user(bytes.value())?);
            }
            Ok(out)
        })
        .await
    }

    /// Every grant as (user id, function name).
    pub async fn grants(&self) -> Result<Vec<(u32, String)>, Error> {
        self.read(|database| {
            let txn = database.begin_read().map_err(db("begin read"))?;
            let grants = txn.open_table(GRANTS).map_err(db("open grants"))?;
            let mut out = Vec::new();
            for entry in grants.iter().map_err(db("scan grants"))? {
                let (key, _) = entry.map_err(db("scan grants"))?;
                let (user, function) = key.value();
                out.push((user, function.to_owned()));
            }
            Ok(out)
        })
        .await
    }

    /// Adds a user with the next id (the record's own id is ignored) and returns that id, once
    /// durable.
    pub async fn add_user(&self, mut user: UserRecord) -> Result<u32, Error> {
        self.blocking(move |database| {
            write(database, |txn| {
                let mut meta = txn.open_table(USER_META).map_err(db("open user meta"))?;
                let next = meta
                    .get(NEXT_USER_ID)
                    .map_err(db("read user meta"))?
                    .map_or(1, |v| v.value());
                let id = u32::try_from(next).map_err(|_| Error::UserIdsExhausted)?;
                meta.insert(NEXT_USER_ID, next + 1)
                    .map_err(db("write user meta"))?;
                user.id = id;
                let mut users = txn.open_table(USERS).map_err(db("open users"))?;
                users
                    .insert(id, encode_user(&user)?.as_slice())
                    .map_err(db("write user"))?;
                Ok(id)
            })
        })
        .await
    }

    /// Replaces a user's record (a new token), once durable.
    pub async fn put_user(&self, user: UserRecord) -> Result<(), Error> {
        self.blocking(move |database| {
            write(database, |txn| {
                let mut users = txn.open_table(USERS).map_err(db("open users"))?;
                users
                    .insert(user.id, encode_user(&user)?.as_slice())
                    .map_err(db("write user"))?;
                Ok(())
            })
        })
        .await
    }

    /// Removes a user and its grants, once durable.
    pub async fn remove_user(&self, id: u32) -> Result<(), Error> {
        self.blocking(move |database| {
            write(database, |txn| {
                let mut users = txn.open_table(USERS).map_err(db("open users"))?;
                users.remove(id).map_err(db("remove user"))?;
                let mut grants = txn.open_table(GRANTS).map_err(db("open grants"))?;
                grants
                    .retain_in((id, "")..(id.saturating_add(1), ""), |_, _| false)
                    .map_err(db("remove grants"))?;
                Ok(())
            })
        })
        .await
    }

    /// Grants (`allow`) or revokes a user's right to invoke `function`, once durable.
    pub async fn set_grant(&self, user: u32, function: String, allow: bool) -> Result<(), Error> {
        self.blocking(move |database| {
            write(database, |txn| {
                let mut grants = txn.open_table(GRANTS).map_err(db("open grants"))?;
                if allow {
                    grants
                        .insert((user, function.as_str()), ())
                        .map_err(db("write grant"))?;
                } else {
                    grants
                        .remove((user, function.as_str()))
                        .map_err(db("remove grant"))?;
                }
                Ok(())
            })
        })
        .await
    }

    /// Revokes every grant of `function` (it was deleted), once durable.
    pub async fn remove_grants_of(&self, function: String) -> Result<(), Error> {
        self.blocking(move |database| {
            write(database, |txn| {
                let mut grants = txn.open_table(GRANTS).map_err(db("open grants"))?;
                grants
                    .retain(|key, _| key.1 != function)
                    .map_err(db("remove grants"))?;
                Ok(())
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserRecord {
        UserRecord {
            id: 0,
            name: name.into(),
            role: "developer".into(),
            token_sha256: [9; 32],
            created_ms: 7,
        }
    }

    #[test]
    fn user_record_has_a_pinned_encoding() {
        let record = UserRecord {
            id: 3,
            ..user("al")
        };
        let bytes = records::encode(&record).expect("encode");
        let expected =
            format!("03 02616c 09646576656c6f706572 {} 07", "09".repeat(32)).replace(' ', "");
        assert_eq!(crate::proto::hex(&bytes), expected);
        assert_eq!(decode_user(&bytes).expect("decode"), record);
    }

    #[tokio::test]
    async fn users_and_grants_survive_a_reopen_and_ids_are_never_reused() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(dir.path()).expect("open");
        let a = store.add_user(user("a")).await.expect("add a");
        let b = store.add_user(user("b")).await.expect("add b");
        assert_eq!((a, b), (1, 2));
        store.set_grant(a, "f".into(), true).await.expect("grant");
        store.set_grant(b, "f".into(), true).await.expect("grant");
        store.set_grant(b, "g".into(), true).await.expect("grant");
        store.set_grant(b, "g".into(), false).await.expect("revoke");
        store.remove_user(b).await.expect("remove b");
        store.close().await;
        drop(store);
        let store = Store::open(dir.path()).expect("reopen");
        let names: Vec<_> = store.users().await.expect("users");
        assert_eq!(names, [UserRecord { id: 1, ..user("a") }]);
        assert_eq!(store.grants().await.expect("grants"), [(1, "f".into())]);
        assert_eq!(store.add_user(user("c")).await.expect("add c"), 3);
        store.remove_grants_of("f".into()).await.expect("drop f");
        assert!(store.grants().await.expect("grants").is_empty());
    }
}

//! The users directory: every user and grant held in memory, loaded from the store at start and
//! written through to it on every change, so checking a token costs one hash and one map
//! lookup.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use super::{Caller, Error, Role, token};
use crate::store::{Store, UserRecord};
use crate::units::now_ms;

/// A user as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// The user's id.
    pub id: u32,
    /// The user's name.
    pub name: String,
    /// The user's role.
    pub role: Role,
    /// When the user was added (Unix ms).
    pub created_ms: u64,
    /// The functions the user may invoke by grant, sorted.
    pub grants: Vec<String>,
}

struct User {
    record: UserRecord,
    role: Role,
}

#[derive(Default)]
struct State {
    users: HashMap<u32, User>,
    ids: HashMap<String, u32>,
    grants: HashMap<u32, BTreeSet<String>>,
}

impl State {
    fn info(&self, id: u32) -> Option<UserInfo> {
        let user = self.users.get(&id)?;
        Some(UserInfo {
            id,
            name: user.record.name.clone(),
            role: user.role,
            created_ms: user.record.created_ms,
            grants: self
                .grants
                .get(&id)
                .map(|g| g.iter().cloned().collect())
                .unwrap_or_default(),
        })
    }
}

/// A cheap, cloneable handle on the users directory.
#[derive(Clone)]
pub struct Directory {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    state: RwLock<State>,
    /// Held across each change's store write, so changes apply one at a time and in order.
    changes: tokio::sync::Mutex<()>,
}

fn role_of(record: &UserRecord) -> Result<Role, Error> {
    <Role as clap::ValueEnum>::from_str(&record.role, false).map_err(|_| Error::CorruptRole {
        name: record.name.clone(),
        role: record.role.clone(),
    })
}

impl Directory {
    /// Loads every user and grant from `store`.
    pub async fn load(store: Store) -> Result<Directory, Error> {
        let mut state = State::default();
        for record in store.users().await? {
            let role = role_of(&record)?;
            state.ids.insert(record.name.clone(), record.id);
            state.users.insert(record.id, User { record, role });
        }
        for (user, function) in store.grants().await? {
            state.grants.entry(user).or_default().insert(function);
        }
        Ok(Directory {
            inner: Arc::new(Inner {
                store,
                state: RwLock::new(state),
                changes: tokio::sync::Mutex::new(()),
            }),
        })
    }

    fn state(&self) -> RwLockReadGuard<'_, State> {
        self.inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn change(&self, f: impl FnOnce(&mut State)) {
        let mut state = self
            .inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        f(&mut state);
    }

    /// Whether no user exists (the server is in protected mode).
    pub fn is_empty(&self) -> bool {
        self.state().users.is_empty()
    }

    /// Whether removing user `id` would leave users but no admin, so that nobody could manage
    /// them (removing the very last user is allowed: that is protected mode).
    fn would_orphan(&self, id: u32) -> bool {
        let state = self.state();
        let is_admin = |u: &User| u.role == Role::Admin;
        state.users.get(&id).is_some_and(is_admin)
            && state.users.len() > 1
            && !state.users.iter().any(|(k, u)| *k != id && is_admin(u))
    }

    /// The caller a token names, if it is a current token of a user.
    pub fn authenticate(&self, text: &str) -> Option<Caller> {
        let presented = token::parse(text)?;
        let state = self.state();
        let user = state.users.get(&presented.user)?;
        token::matches(&presented.secret_sha256, &user.record.token_sha256).then(|| Caller {
            user: presented.user,
            name: user.record.name.clone(),
            role: user.role,
        })
    }

    /// Adds a user; returns it and its token (the only time the token is seen).
    pub async fn add(&self, name: &str, role: Role) -> Result<(UserInfo, String), Error> {
        let _change = self.inner.changes.lock().await;
        if self.state().ids.contains_key(name) {
            return Err(Error::UserExists { name: name.into() });
        }
        let was_empty = self.is_empty();
        let (secret, hash) = token::new_secret()?;
        let mut record = UserRecord {
            id: 0,
            name: name.into(),
            role: role.as_str().into(),
            token_sha256: hash,
            created_ms: now_ms(),
        };
        record.id = self.inner.store.add_user(record.clone()).await?;
        let token = token::text(record.id, &secret);
        let id = record.id;
        self.change(|state| {
            state.ids.insert(record.name.clone(), id);
            state.users.insert(id, User { record, role });
        });
        if was_empty {
            tracing::info!(
                user = name,
                "the first user exists: every request now needs a token (protected mode is over)"
            );
        }
        let info = self
            .state()
            .info(id)
            .ok_or(Error::UserNotFound { name: name.into() })?;
        Ok((info, token))
    }

    /// Removes a user; its token stops working at once.
    pub async fn remove(&self, name: &str) -> Result<(), Error> {
        let _change = self.inner.changes.lock().await;
        let id = self.id(name)?;
        if self.would_orphan(id) {
            return Err(Error::LastAdmin { name: name.into() });
        }
        self.inner.store.remove_user(id).await?;
        self.change(|state| {
            state.ids.remove(name);
            state.users.remove(&id);
            state.grants.remove(&id);
        });
        if self.is_empty() {
            tracing::warn!(
                "the last user was removed: faasd is in protected mode (loopback clients act as admin, others are refused)"
            );
        }
        Ok(())
    }

    /// Issues a new token for a user; the old one stops working at once.
    pub async fn rotate(&self, name: &str) -> Result<String, Error> {
        let _change = self.inner.changes.lock().await;
        let id = self.id(name)?;
        let (token, hash) = token::generate(id)?;
        let mut record = {
            let state = self.state();
            let user = state
                .users
                .get(&id)
                .ok_or(Error::UserNotFound { name: name.into() })?;
            user.record.clone()
        };
        record.token_sha256 = hash;
        self.inner.store.put_user(record.clone()).await?;
        self.change(|state| {
            if let Some(user) = state.users.get_mut(&id) {
                user.record = record;
            }
        });
        Ok(token)
    }

    /// Grants (`allow`) or revokes a user's right to invoke `function`.
    pub async fn set_grant(&self, name: &str, function: &str, allow: bool) -> Result<(), Error> {
        let _change = self.inner.changes.lock().await;
        // Tokenless callers (`serve --anonymous ROLE`) are one identity, `anonymous`, without
        // a user: their grants are kept under the no-user id they call with.
        let id = if name == super::ANONYMOUS {
            super::NO_USER
        } else {
            self.id(name)?
        };
        self.inner
            .store
            .set_grant(id, function.into(), allow)
            .await?;
        self.change(|state| {
            let grants = state.grants.entry(id).or_default();
            if allow {
                grants.insert(function.into());
            } else {
                grants.remove(function);
            }
        });
        Ok(())
    }

    /// Revokes every grant on `function` (it was deleted, and a later function of that name
    /// may belong to someone else).
    pub async fn forget_function(&self, function: &str) -> Result<(), Error> {
        let _change = self.inner.changes.lock().await;
        let held = self
            .state()
            .grants
            .values()
            .any(|grants| grants.contains(function));
        if !held {
            return Ok(());
        }
        self.inner.store.remove_grants_of(function.into()).await?;
        self.change(|state| {
            for grants in state.grants.values_mut() {
                grants.remove(function);
            }
        });
        Ok(())
    }

    /// Whether `user` holds a grant on `function`.
    pub fn is_granted(&self, user: u32, function: &str) -> bool {
        self.state()
            .grants
            .get(&user)
            .is_some_and(|g| g.contains(function))
    }

    /// The id of the user named `name`.
    pub fn id(&self, name: &str) -> Result<u32, Error> {
        self.state()
            .ids
            .get(name)
            .copied()
            .ok_or_else(|| Error::UserNotFound { name: name.into() })
    }

    /// One user.
    pub fn get(&self, name: &str) -> Result<UserInfo, Error> {
        let id = self.id(name)?;
        self.state()
            .info(id)
            .ok_or_else(|| Error::UserNotFound { name: name.into() })
    }

    /// The name of the user with id `id`, if it still exists.
    pub fn name_of(&self, id: u32) -> Option<String> {
        self.state().users.get(&id).map(|u| u.record.name.clone())
    }

    /// Every user, sorted by name.
    pub fn list(&self) -> Vec<UserInfo> {
        let state = self.state();
        let mut all: Vec<UserInfo> = state
            .users
            .keys()
            .filter_map(|id| state.info(*id))
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_token_names_its_user_until_it_is_rotated_or_the_user_removed() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(dir.path()).expect("open");
        let users = Directory::load(store.clone()).await.expect("load");
        assert!(users.is_empty());
        let (ann, token) = users.add("ann", Role::Developer).await.expect("add");
        assert!(token.starts_with(&format!("fdt_{}_", ann.id)), "{token}");
        let caller = users.authenticate(&token).expect("known");
        assert_eq!((caller.user, caller.name.as_str()), (ann.id, "ann"));
        assert!(matches!(
            users.add("ann", Role::Admin).await,
            Err(Error::UserExists { .. })
        ));
        let new = users.rotate("ann").await.expect("rotate");
        assert!(users.authenticate(&token).is_none());
        assert!(users.authenticate(&new).is_some());
        users.set_grant("ann", "f", true).await.expect("grant");
        assert!(users.is_granted(ann.id, "f"));
        // Everything survives a reload from the store.
        let reloaded = Directory::load(store.clone()).await.expect("reload");
        assert!(reloaded.authenticate(&new).is_some());
        assert_eq!(reloaded.get("ann").expect("ann").grants, ["f"]);
        reloaded.forget_function("f").await.expect("forget");
        assert!(!reloaded.is_granted(ann.id, "f"));
        reloaded.remove("ann").await.expect("remove");
        assert!(reloaded.authenticate(&new).is_none());
        assert!(reloaded.is_empty());
        assert!(matches!(
            reloaded.rotate("ann").await,
            Err(Error::UserNotFound { .. })
        ));
    }
}

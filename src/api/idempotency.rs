//! The `Idempotency-Key` header: a repeat of a request that carried a key answers what the first
//! one created (its task ids, and for a sync call its result) instead of running it again.
//!
//! A key is the caller's own (user id and key), lives `serve --idempotency-ttl` (24 hours by
//! default), and is stored in the same transaction as the tasks it names (see
//! `store::idempotency`). Reusing a key for another function, another kind of request or other
//! payloads is refused with 409 `idempotency_key_reused`.
//!
//! Two requests with the same key at once must not both create tasks: each takes a lock on
//! its (caller, key) from the lookup until its tasks and key are committed, so the second
//! finds what the first stored. The locks live in memory only while someone holds or waits on
//! them.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use tokio::sync::OwnedMutexGuard;

use super::{ApiError, AppState, ErrorCode};
use crate::auth::Caller;
use crate::broker::NewKey;
use crate::store::KeyRecord;
use crate::units::now_ms;

/// The request header (HTTP header names are case-insensitive).
pub const HEADER: &str = "idempotency-key";
/// The longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 255;

/// (caller, key) → the lock its requests take in turn.
type LockMap = HashMap<(u32, String), Arc<tokio::sync::Mutex<()>>>;

/// The keys' settings and the in-memory locks of the keys in use.
#[derive(Clone)]
pub struct Keys {
    /// How long a key is remembered; an older one is ignored (and purged in the background).
    ttl: Duration,
    locks: Arc<Mutex<LockMap>>,
}

impl Keys {
    /// Keys remembered for `ttl`.
    pub fn new(ttl: Duration) -> Keys {
        Keys {
            ttl,
            locks: Arc::default(),
        }
    }

    /// Waits for the lock of `caller`'s `key`; it is released (and forgotten when nobody else
    /// waits on it) when the guard drops.
    async fn lock(&self, caller: u32, key: &str) -> KeyGuard {
        let id = (caller, key.to_owned());
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.clone())
            .or_default()
            .clone();
        KeyGuard {
            guard: Some(lock.lock_owned().await),
            locks: self.locks.clone(),
            id,
        }
    }
}

/// A held key lock.
struct KeyGuard {
    guard: Option<OwnedMutexGuard<()>>,
    locks: Arc<Mutex<LockMap>>,
    id: (u32, String),
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        // Only the map holds it now: nobody waits, so it can go.
        if locks
            .get(&self.id)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            locks.remove(&self.id);
        }
    }
}

/// What a request is, for comparing a repeat with the first use of its key.
pub struct Request<'a> {
    /// The function it calls.
    pub function: &'a str,
    /// Its kind (`invoke`, `batch`, `execute_function`).
    pub route: &'static str,
    /// `store::payload_hash` of its payloads.
    pub payload_hash: [u8; 32],
}

/// The outcome of a request that may carry a key.
pub enum Once<T> {
    /// It ran (no key, or a key not seen within its lifetime).
    Fresh(T),
    /// Its key was seen: the task ids the first request created, in input order.
    Repeat(Vec<u128>),
}

/// The `Idempotency-Key` of a request, if it has one: 400 when it is empty, longer than
/// [`MAX_KEY_BYTES`] or not printable ASCII.
pub fn key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let bad = |why: &str| {
        ApiError::invalid(format!(
            "the Idempotency-Key header {why}: give 1 to {MAX_KEY_BYTES} printable ASCII \
             characters (a UUID, say)"
        ))
        .with("header", serde_json::json!("Idempotency-Key"))
    };
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return Err(bad("is empty"));
    }
    if bytes.len() > MAX_KEY_BYTES {
        return Err(bad(&format!("is {} bytes long", bytes.len())));
    }
    if !bytes.iter().all(|b| (b' '..=b'~').contains(b)) {
        return Err(bad("holds a character that is not printable ASCII"));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// Runs `submit` unless the request's key (if any) was seen: then answers the ids the first
/// request created. `submit` gets the key to record with its tasks; the key's lock is held
/// until it returns, that is until the tasks and the key are committed.
pub async fn once<T, F, Fut>(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    request: Request<'_>,
    submit: F,
) -> Result<Once<T>, ApiError>
where
    F: FnOnce(Option<NewKey>) -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let Some(key) = key(headers)? else {
        return submit(None).await.map(Once::Fresh);
    };
    let keys = &state.keys;
    let _guard = keys.lock(caller.user, &key).await;
    let store = state.broker.store();
    if let Some(prior) = store.idempotency_key(caller.user, &key).await? {
        let age_ms = now_ms().saturating_sub(prior.created_ms);
        if u128::from(age_ms) < keys.ttl.as_millis() {
            check_same(&key, &prior, &request)?;
            return Ok(Once::Repeat(prior.task_ids));
        }
    }
    let new_key = NewKey {
        key,
        route: request.route,
        payload_hash: request.payload_hash,
    };
    submit(Some(new_key)).await.map(Once::Fresh)
}

/// 409 `idempotency_key_reused` when `request` is not the one `prior` recorded, saying what
/// differs.
fn check_same(key: &str, prior: &KeyRecord, request: &Request<'_>) -> Result<(), ApiError> {
    let differs = if prior.function != request.function {
        format!(
            "it was first used to call {:?}, and this request calls {:?}",
            prior.function, request.function
        )
    } else if prior.route != request.route {
        format!(
            "it was first used with a {} request, and this is a {} request",
            prior.route, request.route
        )
    } else if prior.payload_hash != request.payload_hash {
        format!(
            "it was first used to call {:?} with a different payload",
            prior.function
        )
    } else {
        return Ok(());
    };
    Err(ApiError::new(
        StatusCode::CONFLICT,
        ErrorCode::IdempotencyKeyReused,
        format!(
            "Idempotency-Key {key:?} was reused for another request: {differs} (a new request needs a new key)"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            HEADER,
            axum::http::HeaderValue::from_bytes(value).expect("header value"),
        );
        headers
    }

    #[test]
    fn a_key_is_1_to_255_printable_ascii_characters() {
        assert_eq!(key(&HeaderMap::new()).expect("no key"), None);
        assert_eq!(
            key(&headers(b"order-17 retry")).expect("valid"),
            Some("order-17 retry".into())
        );
        let longest = vec![b'k'; MAX_KEY_BYTES];
        assert!(key(&headers(&longest)).is_ok());
        for bad in [
            b"".to_vec(),
            vec![b'k'; MAX_KEY_BYTES + 1],
            b"tab\there".to_vec(),
        ] {
            let err = key(&headers(&bad)).expect_err("refused");
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
            assert!(
                err.message().contains("Idempotency-Key"),
                "{}",
                err.message()
            );
        }
        let err = key(&headers("caf\u{e9}".as_bytes())).expect_err("refused");
        assert!(
            err.message().contains("printable ASCII"),
            "{}",
            err.message()
        );
    }

    fn prior() -> KeyRecord {
        KeyRecord {
            function: "f".into(),
            route: "invoke".into(),
            payload_hash: [1; 32],
            task_ids: vec![9],
            created_ms: 0,
        }
    }

    #[test]
    fn a_reused_key_names_what_differs() {
        let same = Request {
            function: "f",
            route: "invoke",
            payload_hash: [1; 32],
        };
        assert!(check_same("k", &prior(), &same).is_ok());
        let cases = [
            (
                Request {
                    function: "g",
                    ..same
                },
                "calls \"g\"",
            ),
            (
                Request {
                    route: "batch",
                    ..same
                },
                "batch request",
            ),
            (
                Request {
                    payload_hash: [2; 32],
                    ..same
                },
                "different payload",
            ),
        ];
        for (request, says) in cases {
            let err = check_same("k", &prior(), &request).expect_err("reused");
            assert_eq!(err.status(), StatusCode::CONFLICT);
            assert_eq!(err.code(), &ErrorCode::IdempotencyKeyReused);
            assert!(err.message().contains(says), "{}", err.message());
        }
    }

    #[tokio::test]
    async fn a_key_lock_is_taken_in_turn_and_forgotten_when_free() {
        let keys = Keys::new(Duration::from_secs(24 * 3600));
        let first = keys.lock(1, "k").await;
        let other_caller = keys.lock(2, "k").await;
        let waiting = {
            let keys = keys.clone();
            tokio::spawn(async move { keys.lock(1, "k").await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        let second = waiting.await.expect("the waiter gets the lock");
        drop(second);
        drop(other_caller);
        assert!(keys.locks.lock().expect("locks").is_empty());
    }
}

//! The background expiry of idempotency keys: every so often, the keys older than
//! `--idempotency-ttl` are removed, at most [`BATCH`] per write transaction through the store's
//! writer, so a large expiry never holds the writer for long (other writes queue between the
//! batches). Lookups ignore an expired key already; this only reclaims the space.
//!
//! A key must not outlive the tasks it names: when tasks are purged after a retention period,
//! the key's lifetime is the shorter of the two (`serve` passes that as `ttl`).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;
use crate::units::now_ms;

/// The most keys one write transaction removes.
pub(super) const BATCH: u32 = 500;

/// How long the loop sleeps between expiries: half the lifetime, within a second and a minute.
fn period(ttl: Duration) -> Duration {
    (ttl / 2).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Removes expired keys until `cancel` fires.
pub(super) async fn expire(store: Store, ttl: Duration, cancel: CancellationToken) {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    loop {
        expire_now(&store, ttl_ms, &cancel).await;
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(period(ttl)) => {}
        }
    }
}

/// One expiry: batches of [`BATCH`] until a batch finds fewer (or the store refuses).
async fn expire_now(store: &Store, ttl_ms: u64, cancel: &CancellationToken) {
    let mut removed = 0u64;
    while !cancel.is_cancelled() {
        let before_ms = now_ms().saturating_sub(ttl_ms);
        match store.expire_keys(before_ms, BATCH).await {
            Ok(count) => {
                removed += u64::from(count);
                if count < BATCH {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot expire idempotency keys now; retrying later");
                break;
            }
        }
    }
    if removed > 0 {
        tracing::debug!(keys = removed, "expired idempotency keys");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_period_is_half_the_lifetime_within_a_second_and_a_minute() {
        assert_eq!(
            period(Duration::from_secs(24 * 3600)),
            Duration::from_secs(60)
        );
        assert_eq!(period(Duration::from_secs(10)), Duration::from_secs(5));
        assert_eq!(period(Duration::from_millis(100)), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn an_expiry_removes_every_old_key_in_batches() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(dir.path()).expect("open store");
        let mut writes = Vec::new();
        for i in 0..(BATCH + 20) {
            writes.push(crate::store::Write::RememberKey {
                caller: 1,
                key: format!("k{i}"),
                record: crate::store::KeyRecord {
                    function: "f".into(),
                    route: "invoke".into(),
                    payload_hash: [0; 32],
                    task_ids: vec![u128::from(i)],
                    created_ms: 1_000 + u64::from(i),
                },
            });
        }
        for ack in store.submit_group(writes) {
            ack.await.expect("acknowledged").expect("stored");
        }
        let fresh = crate::store::Write::RememberKey {
            caller: 1,
            key: "new".into(),
            record: crate::store::KeyRecord {
                function: "f".into(),
                route: "invoke".into(),
                payload_hash: [0; 32],
                task_ids: vec![7],
                created_ms: now_ms(),
            },
        };
        store.write(fresh).await.expect("stored");
        expire_now(&store, 60_000, &CancellationToken::new()).await;
        assert_eq!(store.idempotency_key(1, "k0").await.expect("read"), None);
        let last = format!("k{}", BATCH + 19);
        assert_eq!(store.idempotency_key(1, &last).await.expect("read"), None);
        assert!(
            store
                .idempotency_key(1, "new")
                .await
                .expect("read")
                .is_some()
        );
        store.close().await;
    }
}

//! The benchmark's functions: `--functions N` copies of one function, registered and removed
//! over concurrent requests, so that thousands take seconds rather than minutes.

use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use base64::Engine;

use super::BenchArgs;
use crate::client::{Client, segment};

/// Requests in flight while registering or removing the copies.
const CONCURRENT_REQUESTS: usize = 32;

/// The names of the `count` copies: NAME itself for one, NAME-0 to NAME-(count-1) for more.
pub(super) fn names(name: &str, count: usize) -> Vec<String> {
    if count <= 1 {
        return vec![name.to_string()];
    }
    (0..count).map(|i| format!("{name}-{i}")).collect()
}

/// Registers every copy of the function (`--code-file` or `--script`); when one fails, removes
/// those it registered and returns the error.
pub(super) async fn register_all(
    client: &Client,
    args: &BenchArgs,
    names: &Arc<[String]>,
) -> anyhow::Result<()> {
    let registered = Arc::new(Mutex::new(Vec::new()));
    let result = register_each(client, args, names, registered.clone()).await;
    if result.is_err() {
        let done: Arc<[String]> = std::mem::take(&mut *lock(&registered)).into();
        let _ = remove_all(client, &done).await;
    }
    result
}

/// Registers every copy, noting each registered name in `registered`.
async fn register_each(
    client: &Client,
    args: &BenchArgs,
    names: &Arc<[String]>,
    registered: Arc<Mutex<Vec<String>>>,
) -> anyhow::Result<()> {
    let code = match &args.code_file {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        None => args.script.clone().into_bytes(),
    };
    let code: Arc<str> = base64::engine::general_purpose::STANDARD
        .encode(code)
        .into();
    let runtime: Arc<str> = args.runtime.clone().into();
    each_name(
        names,
        move |client, name| {
            let (code, runtime, registered) = (code.clone(), runtime.clone(), registered.clone());
            async move {
                let body =
                    serde_json::json!({ "name": name, "runtime": &*runtime, "code": &*code });
                client
                    .post(
                        "/v1/functions",
                        "application/json",
                        serde_json::to_vec(&body)?.into(),
                    )
                    .await?
                    .ok()
                    .with_context(|| format!("cannot register the benchmark function {name}"))?;
                lock(&registered).push(name);
                Ok(())
            }
        },
        client,
    )
    .await
}

/// Removes every copy of the function.
pub(super) async fn remove_all(client: &Client, names: &Arc<[String]>) -> anyhow::Result<()> {
    each_name(
        names,
        |client, name| async move {
            let path = format!("/v1/functions/{}", segment(&name));
            let removed = async { client.delete(&path).await?.ok() }.await;
            removed.map(drop).with_context(|| {
                format!(
                    "cannot remove the benchmark function {name} (remove it with `faasd rm {name}`)"
                )
            })
        },
        client,
    )
    .await
}

/// Runs `request` for every name, [`CONCURRENT_REQUESTS`] at a time; the first error, once all
/// have run.
async fn each_name<F, Fut>(names: &Arc<[String]>, request: F, client: &Client) -> anyhow::Result<()>
where
    F: Fn(Client, String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let lanes = CONCURRENT_REQUESTS.min(names.len()).max(1);
    let mut requests = tokio::task::JoinSet::new();
    for lane in 0..lanes {
        let (names, request, client) = (names.clone(), request.clone(), client.clone());
        requests.spawn(async move {
            let mut first_error = None;
            for name in names.iter().skip(lane).step_by(lanes) {
                if let Err(e) = request(client.clone(), name.clone()).await {
                    first_error.get_or_insert(e);
                }
            }
            first_error.map_or(Ok(()), Err)
        });
    }
    let mut first_error = None;
    while let Some(joined) = requests.join_next().await {
        if let Err(e) = joined.context("a benchmark request panicked")? {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Locks the list of registered names (a poisoned lock still holds a usable list).
fn lock(names: &Mutex<Vec<String>>) -> MutexGuard<'_, Vec<String>> {
    names
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

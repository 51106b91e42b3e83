//! What a registration starts from for the settings it omits, and what a new version changed.
//!
//! A new version of a function keeps the previous version's value of every setting the
//! registration omits; a first registration, or one with `"reset": true`, gets the server's
//! defaults instead. The answer lists each setting whose value changed.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::FunctionDefaults;
use crate::proto::Runtime;
use crate::store::FunctionRecord;
use crate::units::format_duration;

/// How long an idle warm executor lives by default.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The value of every setting a registration may omit.
#[derive(Debug, Clone)]
pub(crate) struct Base {
    pub runtime: Runtime,
    pub timeout: Duration,
    pub concurrency: Option<u32>,
    pub queue_limit: u32,
    pub max_attempts: u32,
    /// With the entry module of a bundle as `FAASD_ENTRY`.
    pub env: BTreeMap<String, String>,
    /// Asked for explicitly (runtimes that are always warm do not ask).
    pub warm: bool,
    pub min_warm: u32,
    pub idle_timeout: Duration,
    pub memory_bytes: Option<u64>,
    pub allow_net: bool,
    /// The HTTP-service settings, when the function is one.
    pub http: Option<crate::proto::HttpSpec>,
}

impl Base {
    /// The server's defaults.
    pub(crate) fn defaults(defaults: &FunctionDefaults) -> Base {
        Base {
            runtime: Runtime::Shell,
            timeout: defaults.timeout,
            concurrency: None,
            queue_limit: defaults.queue_limit,
            max_attempts: defaults.max_attempts,
            env: BTreeMap::new(),
            warm: false,
            min_warm: 0,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            memory_bytes: None,
            allow_net: false,
            http: None,
        }
    }

    /// The settings of a live version.
    pub(crate) fn of(f: &FunctionRecord, defaults: &FunctionDefaults) -> Base {
        Base {
            runtime: f.runtime,
            timeout: Duration::from_millis(f.timeout_ms),
            concurrency: f.concurrency,
            queue_limit: f.queue_limit,
            max_attempts: f.max_attempts,
            env: f.env.iter().cloned().collect(),
            warm: f.warm.is_some() && !f.runtime.always_warm(),
            min_warm: f.warm.map_or(0, |w| w.min_warm),
            idle_timeout: match f.warm {
                Some(w) => Duration::from_millis(w.idle_timeout_ms),
                None => Base::defaults(defaults).idle_timeout,
            },
            memory_bytes: f.isolation.memory_bytes,
            allow_net: f.isolation.allow_net,
            http: f.http,
        }
    }
}

/// One setting a new version changed, with both values as people write them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The setting, as the `register` flag names it without `--`.
    pub setting: String,
    /// The previous version's value.
    pub from: String,
    /// The new version's value.
    pub to: String,
}

/// Each setting's value as people write it, in the order `register` prints changes.
fn shown(f: &FunctionRecord) -> Vec<(String, String)> {
    let none = || "none".to_string();
    let ms = |ms: u64| format_duration(Duration::from_millis(ms));
    let mut out = vec![
        ("runtime".to_string(), f.runtime.as_str().to_string()),
        (
            "code".to_string(),
            crate::proto::hex(&f.code_hash)[..12].to_string(),
        ),
        ("timeout".to_string(), ms(f.timeout_ms)),
        (
            "concurrency".to_string(),
            f.concurrency.map_or("unlimited".into(), |n| n.to_string()),
        ),
        ("queue-limit".to_string(), f.queue_limit.to_string()),
        ("max-attempts".to_string(), f.max_attempts.to_string()),
        ("warm".to_string(), f.warm.is_some().to_string()),
        (
            "min-warm".to_string(),
            f.warm.map_or_else(none, |w| w.min_warm.to_string()),
        ),
        (
            "idle-timeout".to_string(),
            f.warm.map_or_else(none, |w| ms(w.idle_timeout_ms)),
        ),
        (
            "memory".to_string(),
            f.isolation
                .memory_bytes
                .map_or_else(none, |b| format!("{b} bytes")),
        ),
        ("allow-net".to_string(), f.isolation.allow_net.to_string()),
        (
            "http-port".to_string(),
            f.http.map_or_else(none, |h| h.port.to_string()),
        ),
        (
            "http-concurrency".to_string(),
            f.http.map_or_else(none, |h| h.concurrency.to_string()),
        ),
        (
            "record-requests".to_string(),
            f.http.is_some_and(|h| h.record_requests).to_string(),
        ),
    ];
    let env: BTreeMap<&str, &str> = f
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for (k, v) in env {
        match k {
            "FAASD_ENTRY" => out.push(("entry".into(), v.into())),
            _ => out.push((format!("env {k}"), v.into())),
        }
    }
    out
}

/// The settings whose value differs between `old` and `new`, in a stable order.
pub(crate) fn changes(old: &FunctionRecord, new: &FunctionRecord) -> Vec<Change> {
    let before: BTreeMap<String, String> = shown(old).into_iter().collect();
    let after = shown(new);
    let mut out: Vec<Change> = Vec::new();
    for (setting, to) in &after {
        let from = before
            .get(setting)
            .cloned()
            .unwrap_or_else(|| "unset".into());
        if &from != to {
            out.push(Change {
                setting: setting.clone(),
                from,
                to: to.clone(),
            });
        }
    }
    let now: BTreeMap<&str, &str> = after
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for (setting, from) in shown(old) {
        if !now.contains_key(setting.as_str()) {
            out.push(Change {
                setting,
                from,
                to: "unset".into(),
            });
        }
    }
    out
}

//! Function routes: register (JSON or multipart), list, show, remove.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::{Extension, Json};
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::access::forbidden;
use super::settings::{self, Base, Change};
use super::{ApiError, AppState, ErrorCode, read_body};
use crate::auth::{Caller, policy};
use crate::proto::{HttpSpec, Isolation, Runtime, WarmSpec};
use crate::store::FunctionRecord;
use crate::units::now_ms;

/// A function as the API shows it.
#[derive(Debug, Serialize)]
pub struct FunctionView {
    name: String,
    version: u32,
    runtime: &'static str,
    code_sha256: String,
    code_bytes: u64,
    timeout_ms: u64,
    concurrency: Option<u32>,
    queue_limit: u32,
    max_attempts: u32,
    env: BTreeMap<String, String>,
    created_at: String,
    warm: bool,
    min_warm: Option<u32>,
    idle_timeout_ms: Option<u64>,
    memory_bytes: Option<u64>,
    allow_net: bool,
    /// The name an MPCS client gave the function (whose name is its id), or null.
    display_name: Option<String>,
    /// The port of an HTTP-service function (`--http-port`), or null.
    http_port: Option<u16>,
    /// The requests one executor of an HTTP-service function serves at once, or null.
    http_concurrency: Option<u32>,
    /// Whether each proxied request is stored as a task.
    record_requests: bool,
    /// Its warm executors now over every worker, as they last reported them (in the list and
    /// on `GET /v1/functions/{name}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    warm_executors: Option<u32>,
}

impl From<&FunctionRecord> for FunctionView {
    fn from(f: &FunctionRecord) -> Self {
        FunctionView {
            name: f.name.clone(),
            version: f.version,
            runtime: f.runtime.as_str(),
            code_sha256: crate::proto::hex(&f.code_hash),
            code_bytes: f.code_bytes,
            timeout_ms: f.timeout_ms,
            concurrency: f.concurrency,
            queue_limit: f.queue_limit,
            max_attempts: f.max_attempts,
            env: f.env.iter().cloned().collect(),
            created_at: rfc3339(f.created_ms),
            warm: f.warm.is_some(),
            min_warm: f.warm.map(|w| w.min_warm),
            idle_timeout_ms: f.warm.map(|w| w.idle_timeout_ms),
            memory_bytes: f.isolation.memory_bytes,
            allow_net: f.isolation.allow_net,
            display_name: f.display_name.clone(),
            http_port: f.http.map(|h| h.port),
            http_concurrency: f.http.map(|h| h.concurrency),
            record_requests: f.http.is_some_and(|h| h.record_requests),
            warm_executors: None,
        }
    }
}

impl FunctionView {
    /// The view with its live count of warm executors from `warm`.
    fn with_warm(mut self, warm: &HashMap<String, u32>) -> FunctionView {
        self.warm_executors = Some(warm.get(&self.name).copied().unwrap_or(0));
        self
    }
}

pub(crate) use crate::units::rfc3339;

/// The longest per-call timeout or warm idle timeout.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The largest per-call memory limit.
const MAX_MEMORY_BYTES: u64 = 1 << 40;
/// The smallest per-call memory limit.
const MIN_MEMORY_BYTES: u64 = 4 << 20;
/// The most times a task may be started.
const MAX_ATTEMPTS: u32 = 1000;

/// A timeout given as seconds (a number) or a duration text such as `"30s"` or `"1m 30s"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TimeoutField {
    Seconds(f64),
    Text(String),
    /// Anything else, refused by [`TimeoutField::duration`] with the field's name.
    Other(serde_json::Value),
}

impl TimeoutField {
    /// The duration, between 1ms and 24h; an error names `field`.
    fn duration(&self, field: &str) -> Result<Duration, ApiError> {
        let out_of_range = || {
            ApiError::invalid(format!("{field} must be between 1ms and 24h"))
                .with("field", field.into())
        };
        let d = match self {
            TimeoutField::Seconds(s) if s.is_finite() && *s > 0.0 => {
                Duration::try_from_secs_f64(*s).map_err(|_| out_of_range())?
            }
            TimeoutField::Seconds(s) => {
                return Err(
                    ApiError::invalid(format!("{field} must be positive, got {s}"))
                        .with("field", field.into()),
                );
            }
            TimeoutField::Text(t) => crate::units::parse_duration(t).map_err(|e| {
                ApiError::invalid(format!("{field} {t:?}: {e}")).with("field", field.into())
            })?,
            TimeoutField::Other(v) => {
                return Err(ApiError::invalid(format!(
                    "{field} must be seconds (a number) or a duration text such as \"30s\", got {v}"
                ))
                .with("field", field.into()));
            }
        };
        if d < Duration::from_millis(1) || d > MAX_TIMEOUT {
            return Err(out_of_range());
        }
        Ok(d)
    }
}

/// The JSON form of a registration. A setting left out keeps the previous version's value
/// (the server's default for a new function, or with `reset`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegisterRequest {
    name: String,
    runtime: Option<String>,
    /// The code, base64 (standard alphabet; line breaks allowed); empty when `code_sha256`
    /// names it instead.
    #[serde(default)]
    code: String,
    /// The code as a blob uploaded before (`PUT /v1/blobs/sha256:<hex>`): `sha256:<hex>` or
    /// the bare hex.
    code_sha256: Option<String>,
    timeout: Option<TimeoutField>,
    concurrency: Option<u32>,
    queue_limit: Option<u32>,
    max_attempts: Option<u32>,
    env: Option<BTreeMap<String, String>>,
    /// Keep executors warm between calls (`exec` programs that speak the warm frame protocol;
    /// always on for `python` and `pickle`).
    warm: Option<bool>,
    min_warm: Option<u32>,
    idle_timeout: Option<TimeoutField>,
    /// For a `python` directory bundle: the entry module (default `main`).
    entry: Option<String>,
    /// For `python`: the name of the file (or directory) the code was registered from, which
    /// tracebacks show instead of the bundle's path (kept from the previous version if omitted).
    source: Option<String>,
    /// Memory limit per call in the sandbox, bytes or a size such as "256MiB".
    memory: Option<SizeField>,
    /// Let the function use the host's network in the sandbox.
    allow_net: Option<bool>,
    /// The function is an HTTP service listening on this port (`exec`, `python`).
    http_port: Option<u16>,
    /// How many requests one executor of an HTTP service serves at once (default 100).
    http_concurrency: Option<u32>,
    /// Store each proxied request as a task (default: only count it).
    record_requests: Option<bool>,
    /// Start from the server's defaults, not from the previous version's settings.
    #[serde(default)]
    reset: bool,
    /// The name an MPCS client sent; not part of the native JSON.
    #[serde(skip)]
    display_name: Option<String>,
}

/// A size given as bytes (a number) or a text such as `"256MiB"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeField {
    Bytes(serde_json::Number),
    Text(String),
    /// Anything else, refused by [`SizeField::bytes`].
    Other(serde_json::Value),
}

impl SizeField {
    /// The size in bytes, between 4MiB and 1TiB.
    fn bytes(&self) -> Result<u64, ApiError> {
        let invalid = |message: String| ApiError::invalid(message).with("field", "memory".into());
        let n = match self {
            SizeField::Bytes(n) => n.as_u64().ok_or_else(|| {
                invalid(format!("memory must be a whole number of bytes, got {n}"))
            })?,
            SizeField::Text(t) => {
                crate::units::parse_bytes(t).map_err(|e| invalid(format!("memory: {e}")))? as u64
            }
            SizeField::Other(v) => {
                return Err(invalid(format!(
                    "memory must be bytes (a number) or a size such as \"256MiB\", got {v}"
                )));
            }
        };
        if n < MIN_MEMORY_BYTES {
            return Err(invalid("memory must be at least 4MiB".into()));
        }
        if n > MAX_MEMORY_BYTES {
            return Err(invalid(format!(
                "memory must be at most 1TiB, got {n} bytes"
            )));
        }
        Ok(n)
    }
}

impl RegisterRequest {
    /// The code as given: base64 text.
    #[cfg(test)]
    pub(crate) fn code_text(&self) -> String {
        self.code.clone()
    }

    /// A request with every setting at its default.
    pub(crate) fn new(name: String, runtime: &str) -> RegisterRequest {
        RegisterRequest {
            name,
            runtime: Some(runtime.into()),
            code: String::new(),
            code_sha256: None,
            timeout: None,
            concurrency: None,
            queue_limit: None,
            max_attempts: None,
            env: None,
            warm: None,
            min_warm: None,
            idle_timeout: None,
            entry: None,
            source: None,
            memory: None,
            allow_net: None,
            http_port: None,
            http_concurrency: None,
            record_requests: None,
            reset: false,
            display_name: None,
        }
    }

    /// The same request, keeping `display_name` beside the function's name.
    pub(crate) fn with_display_name(self, display_name: String) -> RegisterRequest {
        RegisterRequest {
            display_name: Some(display_name),
            ..self
        }
    }
}

/// Checks a function name against `[a-z0-9][a-z0-9_-]{0,62}`.
pub(crate) fn validate_name(name: &str) -> Result<(), ApiError> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if first_ok && rest_ok && name.len() <= 63 {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidName,
            format!(
                "invalid function name {name:?}: use 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
            ),
        ))
    }
}

fn validate_env(env: &BTreeMap<String, String>) -> Result<(), ApiError> {
    for (k, v) in env {
        let key_ok = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !key_ok {
            return Err(ApiError::invalid(format!(
                "invalid environment variable name {k:?}: use letters, digits and '_'"
            )));
        }
        if v.contains('\0') {
            return Err(ApiError::invalid(format!(
                "environment variable {k} contains a NUL byte"
            )));
        }
    }
    Ok(())
}

pub(crate) fn decode_base64(code: &str) -> Result<Vec<u8>, ApiError> {
    let compact: String = code.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidBase64,
                format!("code is not valid base64: {e}"),
            )
        })
}

/// `POST /v1/functions`.
pub async fn register(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    request: Request,
) -> Result<(StatusCode, Json<RegisteredView>), ApiError> {
    let is_multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let (req, code) = if is_multipart {
        let multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|e| ApiError::invalid(format!("bad multipart body: {e}")))?;
        from_multipart(multipart, state.max_body_bytes).await?
    } else {
        let body = read_body(request.into_body(), state.max_body_bytes)
            .await
            .map_err(|e| explain_base64(e, state.max_body_bytes))?;
        let req: RegisterRequest = super::parse_json(&body, "registration JSON")?;
        let code = if req.code_sha256.is_some() && req.code.is_empty() {
            None
        } else {
            Some(decode_base64(&req.code)?)
        };
        (req, code)
    };
    let code = match (code, &req.code_sha256) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "give the code or code_sha256 (an uploaded blob), not both",
            ));
        }
        (Some(bytes), None) => Code::Inline(bytes),
        (None, Some(digest)) => uploaded(&state, &caller, digest).await?,
        (None, None) => {
            return Err(ApiError::invalid(
                "the registration has no code: send `code` or `code_sha256`",
            ));
        }
    };
    let (record, changed) = register_function(&state, &caller, req, code).await?;
    Ok((
        StatusCode::CREATED,
        Json(RegisteredView {
            function: FunctionView::from(record.as_ref()),
            changed,
        }),
    ))
}

/// A registration's code: its bytes, or a blob uploaded before.
pub(crate) enum Code {
    /// The bytes, sent with the registration.
    Inline(Vec<u8>),
    /// An uploaded blob (a file beside the store).
    Blob {
        /// Its SHA-256.
        hash: crate::proto::CodeHash,
        /// Its size.
        bytes: u64,
    },
}

/// The largest uploaded bundle the registration's code checks read into memory; a larger one
/// is registered unchecked (logged), as the checks need the whole bundle.
pub(crate) const CHECKED_BLOB_BYTES: u64 = 4 << 20;

/// The uploaded blob `digest` names (touched, so the sweep leaves it: see
/// [`crate::store::BLOB_GRACE`]); 400 `blob_not_found` when there is none.
async fn uploaded(state: &AppState, caller: &Caller, digest: &str) -> Result<Code, ApiError> {
    let hash = super::blobs::parse_digest(digest)?;
    // A blob the caller may not use by digest answers as if it were missing: the caller
    // uploads it, which proves it has the code.
    match super::blobs::usable(state, caller, &hash).await? {
        Some(bytes) => Ok(Code::Blob { hash, bytes }),
        None => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BlobNotFound,
            format!(
                "no blob sha256:{} was uploaded: PUT it to /v1/blobs/sha256:{} first",
                crate::proto::hex(&hash),
                crate::proto::hex(&hash)
            ),
        )),
    }
}

/// Adds to a 413 why code that looks small enough is refused: it travels base64-encoded in
/// the JSON body, and what size of file fits.
fn explain_base64(err: ApiError, limit: usize) -> ApiError {
    if err.code() != &ErrorCode::PayloadTooLarge {
        return err;
    }
    // Base64 takes 4 bytes for every 3; leave room for the other fields.
    let fits = limit.saturating_sub(REGISTRATION_OVERHEAD_BYTES) / 4 * 3;
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::PayloadTooLarge,
        format!(
            "request body exceeds the {limit} byte limit (--max-body): the code is sent base64-encoded, which makes it a third larger, so a code file of up to about {fits} bytes fits; raise the limit with `faasd serve --max-body`, or send the code as a multipart file part"
        ),
    )
}

/// Room left in a registration body for everything but the code.
const REGISTRATION_OVERHEAD_BYTES: usize = 64 << 10;

/// The answer to a registration: the function, and what this version changed from the
/// previous one (empty for a first version).
#[derive(Debug, Serialize)]
pub struct RegisteredView {
    #[serde(flatten)]
    function: FunctionView,
    changed: Vec<Change>,
}

/// Validates a registration and registers it, owned by `caller`; shared by the native and the
/// MPCS routes. A developer may not replace a function another user owns (403). Settings the
/// request omits keep the previous version's values unless it asks to `reset`; code that can
/// never run is refused (400 `invalid_code`) before anything is stored.
pub(crate) async fn register_function(
    state: &AppState,
    caller: &Caller,
    req: RegisterRequest,
    code: Code,
) -> Result<(std::sync::Arc<FunctionRecord>, Vec<Change>), ApiError> {
    if caller.role == crate::auth::Role::Invoker {
        return Err(forbidden(caller, "register functions"));
    }
    validate_name(&req.name)?;
    let existing = state.broker.function(&req.name);
    if !policy::may_register(caller, existing.as_ref().map(|f| f.owner)) {
        return Err(forbidden(
            caller,
            &format!("replace {:?}, which another user owns", req.name),
        ));
    }
    let id = match &code {
        Code::Inline(bytes) => (Sha256::digest(bytes).into(), bytes.len() as u64),
        Code::Blob { hash, bytes } => (*hash, *bytes),
    };
    let mut record = record_for(req, id, &state.defaults, existing.as_deref())?;
    let entry = record.env.iter().find(|(k, _)| k == ENTRY_VAR);
    let entry = entry.map_or(DEFAULT_ENTRY, |(_, v)| v.as_str());
    // An HTTP service's Python module is a program that listens, with no `handle` to look for.
    let check = !(record.http.is_some() && record.runtime == Runtime::Python);
    let inline = match code {
        Code::Inline(bytes) => {
            if check {
                state
                    .code_check
                    .check(record.runtime, &bytes, entry)
                    .await?;
            }
            Some(bytes.into())
        }
        Code::Blob { hash, bytes } => {
            if check {
                check_blob(state, record.runtime, hash, bytes, entry).await?;
            }
            None
        }
    };
    // An admin updating another user's function leaves it with its owner.
    record.owner = existing.as_ref().map_or(caller.user, |f| f.owner);
    let record = state.broker.register(record, inline).await?;
    tracing::info!(function = %record.name, version = record.version, "registered");
    let changed = existing.map_or_else(Vec::new, |old| settings::changes(&old, &record));
    Ok((record, changed))
}

/// Runs the code checks on an uploaded blob of up to [`CHECKED_BLOB_BYTES`], read from its
/// file; a larger one is not read into memory, and goes unchecked (logged).
async fn check_blob(
    state: &AppState,
    runtime: Runtime,
    hash: crate::proto::CodeHash,
    bytes: u64,
    entry: &str,
) -> Result<(), ApiError> {
    if runtime == Runtime::Oci {
        // An image is checked from its file, whatever its size: hostile layers are refused here.
        let path = state.broker.store().blob_files().path(&hash);
        return Ok(state.code_check.check_image_file(path).await?);
    }
    if bytes > CHECKED_BLOB_BYTES {
        tracing::info!(hash = %crate::proto::hex(&hash), bytes,
            "registration code checks skipped: the uploaded bundle is over 4 MiB");
        return Ok(());
    }
    let store = state.broker.store();
    let chunk = store.code_chunk(hash, 0, bytes as usize).await;
    let code = match chunk.map_err(|e| ApiError::store(&e))? {
        Some((_, code)) => code,
        None => return Err(ApiError::internal("an uploaded blob went missing")),
    };
    state.code_check.check(runtime, &code, entry).await?;
    Ok(())
}

/// The environment variable that carries a bundle's entry module to the harness.
const ENTRY_VAR: &str = "FAASD_ENTRY";
/// The entry module of a bundle registered without one.
const DEFAULT_ENTRY: &str = "main";

/// Checks every setting of a registration and builds the record to store (version 0: the
/// broker numbers it). Omitted settings come from `previous` (unless the request asks to
/// `reset`), else from `defaults`.
#[cfg(test)]
pub(crate) fn function_record(
    req: RegisterRequest,
    code: &[u8],
    defaults: &super::FunctionDefaults,
    previous: Option<&FunctionRecord>,
) -> Result<FunctionRecord, ApiError> {
    let id = (Sha256::digest(code).into(), code.len() as u64);
    record_for(req, id, defaults, previous)
}

/// [`function_record`] for the code of hash and size `(code_hash, code_bytes)`.
fn record_for(
    mut req: RegisterRequest,
    (code_hash, code_bytes): (crate::proto::CodeHash, u64),
    defaults: &super::FunctionDefaults,
    previous: Option<&FunctionRecord>,
) -> Result<FunctionRecord, ApiError> {
    validate_name(&req.name)?;
    let base = match previous {
        Some(f) if !req.reset => Base::of(f, defaults),
        _ => Base::defaults(defaults),
    };
    let runtime = match &req.runtime {
        Some(text) => text
            .parse::<Runtime>()
            .map_err(|e| ApiError::invalid(e.to_string()))?,
        None => base.runtime,
    };
    let env = merged_env(&mut req, &base, runtime)?;
    validate_env(&env)?;
    if code_bytes == 0 {
        return Err(ApiError::invalid("code is empty"));
    }
    let timeout = match &req.timeout {
        Some(t) => t.duration("timeout")?,
        None => base.timeout,
    };
    check_counts(&req)?;
    check_min_warm(req.min_warm, defaults.max_min_warm)?;
    let http = http_spec(&req, runtime, &base)?;
    let mut warm = warm_spec(&req, runtime, &base)?;
    if http.is_some() && warm.is_none() {
        // An HTTP service always runs in warm executors, which stop when idle.
        let idle = match &req.idle_timeout {
            Some(t) => t.duration("idle_timeout")?,
            None => base.idle_timeout,
        };
        warm = Some(WarmSpec {
            min_warm: req.min_warm.unwrap_or(base.min_warm),
            idle_timeout_ms: idle.as_millis() as u64,
        });
    }
    if warm.is_none() && (req.min_warm.is_some_and(|n| n > 0) || req.idle_timeout.is_some()) {
        return Err(ApiError::invalid(format!(
            "min_warm and idle_timeout are settings of warm executors, and a {} function without warm runs each call in a fresh process: drop them, or make it warm",
            runtime.as_str()
        )));
    }
    let memory_bytes = req.memory.as_ref().map(SizeField::bytes).transpose()?;
    Ok(FunctionRecord {
        name: req.name,
        version: 0,
        runtime,
        code_hash,
        code_bytes,
        timeout_ms: timeout.as_millis() as u64,
        concurrency: req.concurrency.or(base.concurrency),
        queue_limit: req.queue_limit.unwrap_or(base.queue_limit),
        max_attempts: req.max_attempts.unwrap_or(base.max_attempts),
        env: env.into_iter().collect(),
        created_ms: now_ms(),
        warm,
        isolation: Isolation {
            memory_bytes: memory_bytes.or(base.memory_bytes),
            allow_net: req.allow_net.unwrap_or(base.allow_net),
        },
        // Set by the caller's identity once the registration is accepted.
        owner: 0,
        display_name: req.display_name,
        http,
    })
}

/// The most requests one executor of an HTTP service may be given at once.
const MAX_HTTP_CONCURRENCY: u32 = 10_000;

/// The HTTP-service settings of the new version: the request's, else the base's. Asking for
/// concurrency or recording without a port, port 0, or a runtime that cannot serve is refused.
fn http_spec(
    req: &RegisterRequest,
    runtime: Runtime,
    base: &Base,
) -> Result<Option<HttpSpec>, ApiError> {
    let field = |name: &str, message: String| ApiError::invalid(message).with("field", name.into());
    let Some(port) = req.http_port.or(base.http.map(|h| h.port)) else {
        if req.http_concurrency.is_some() || req.record_requests.is_some() {
            return Err(field(
                "http_port",
                "http_concurrency and record_requests need http_port: the port the function's server listens on".into(),
            ));
        }
        return Ok(None);
    };
    if port == 0 {
        return Err(field(
            "http_port",
            "http_port must be between 1 and 65535".into(),
        ));
    }
    if !runtime.serves_http() {
        return Err(field(
            "http_port",
            format!(
                "a {} function cannot be an HTTP service (http_port needs runtime {})",
                runtime.as_str(),
                Runtime::SERVING_HTTP
            ),
        ));
    }
    // Settings of tasks, which an HTTP service never takes: given, they would do nothing.
    let task_settings = [
        ("concurrency", req.concurrency.is_some()),
        ("queue_limit", req.queue_limit.is_some()),
        ("max_attempts", req.max_attempts.is_some()),
        ("min_warm", req.min_warm.is_some_and(|n| n > 0)),
    ];
    if let Some((name, _)) = task_settings.iter().find(|(_, given)| *given) {
        return Err(field(
            name,
            format!(
                "{name} does nothing for an HTTP-service function, which takes requests, not \
                 tasks: its executors start with the requests (http_concurrency each) and stop \
                 after idle_timeout"
            ),
        ));
    }
    let concurrency = req
        .http_concurrency
        .or(base.http.map(|h| h.concurrency))
        .unwrap_or(crate::proto::http::DEFAULT_HTTP_CONCURRENCY);
    if concurrency == 0 || concurrency > MAX_HTTP_CONCURRENCY {
        return Err(field(
            "http_concurrency",
            format!(
                "http_concurrency must be between 1 and {MAX_HTTP_CONCURRENCY}, got {concurrency}"
            ),
        ));
    }
    let record_requests = req
        .record_requests
        .unwrap_or(base.http.is_some_and(|h| h.record_requests));
    Ok(Some(HttpSpec {
        port,
        concurrency,
        record_requests,
    }))
}

/// The environment of the new version: the request's (else the base's), with the request's
/// entry module and source name (else the base's) as `FAASD_ENTRY` and, for `python`,
/// `FAASD_SOURCE`.
fn merged_env(
    req: &mut RegisterRequest,
    base: &Base,
    runtime: Runtime,
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut env = req.env.take().unwrap_or_else(|| base.env.clone());
    let given = [
        (ENTRY_VAR, check_entry(req.entry.take())?),
        (SOURCE_VAR, check_source(req.source.take())?),
    ];
    for (var, value) in given {
        let kept = base.env.get(var).cloned();
        env.remove(var);
        if let Some(value) = value.or(kept) {
            env.insert(var.into(), value);
        }
    }
    if runtime != Runtime::Python {
        env.remove(SOURCE_VAR);
    }
    Ok(env)
}

/// The variable that carries a `python` function's source name to its executors.
const SOURCE_VAR: &str = "FAASD_SOURCE";

/// Checks a `source` name: a file name, not a path, of at most 255 bytes.
fn check_source(source: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(source) = source else {
        return Ok(None);
    };
    let valid = !source.is_empty()
        && source.len() <= 255
        && !source.contains('/')
        && !source.chars().any(char::is_control);
    if !valid {
        return Err(ApiError::invalid(format!(
            "source {source:?} is not a file name (no '/', at most 255 bytes)"
        ))
        .with("field", "source".into()));
    }
    Ok(Some(source))
}

/// Checks the whole-number settings: `concurrency` and `max_attempts` of at least 1,
/// `max_attempts` of at most [`MAX_ATTEMPTS`]. A `queue_limit` of 0 is allowed: no waiting line.
fn check_counts(req: &RegisterRequest) -> Result<(), ApiError> {
    if req.concurrency == Some(0) {
        return Err(
            ApiError::invalid("concurrency must be at least 1 (omit it for unlimited)")
                .with("field", "concurrency".into()),
        );
    }
    if let Some(n) = req.max_attempts {
        if n == 0 || n > MAX_ATTEMPTS {
            return Err(ApiError::invalid(format!(
                "max_attempts must be between 1 and {MAX_ATTEMPTS}, got {n}"
            ))
            .with("field", "max_attempts".into()));
        }
    }
    Ok(())
}

/// Refuses a `min_warm` over the server's `--max-min-warm`.
fn check_min_warm(min_warm: Option<u32>, max: u32) -> Result<(), ApiError> {
    match min_warm {
        Some(n) if n > max => Err(ApiError::invalid(format!(
            "min_warm {n} is over this server's maximum of {max} (serve --max-min-warm); each worker also keeps at most one ready executor per slot"
        ))),
        _ => Ok(()),
    }
}

/// Checks the `entry` of a directory bundle, which travels in the environment, where the
/// harness reads it (`FAASD_ENTRY`).
fn check_entry(entry: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(entry) = entry else {
        return Ok(None);
    };
    let valid = !entry.is_empty()
        && entry.split('.').all(|part| {
            !part.is_empty()
                && !part.starts_with(|c: char| c.is_ascii_digit())
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    if !valid {
        return Err(ApiError::invalid(format!(
            "entry {entry:?} is not a Python module name"
        )));
    }
    Ok(Some(entry))
}

/// The warm settings: `None` for a cold function; always warm for runtimes that need it;
/// refused for `shell`. An `idle_timeout` out of range is refused even for a cold function,
/// which does not use it.
fn warm_spec(
    req: &RegisterRequest,
    runtime: Runtime,
    base: &Base,
) -> Result<Option<WarmSpec>, ApiError> {
    let idle = match &req.idle_timeout {
        Some(t) => t.duration("idle_timeout")?,
        None => base.idle_timeout,
    };
    // A shell function cannot be warm: a kept `warm` from an exec version does not carry over.
    let warm = req.warm.unwrap_or(base.warm && runtime != Runtime::Shell);
    if !runtime.always_warm() && !warm {
        return Ok(None);
    }
    if runtime == Runtime::Shell {
        return Err(ApiError::invalid(
            "shell functions cannot be warm (use exec with a program that speaks the warm frame protocol)",
        ));
    }
    Ok(Some(WarmSpec {
        min_warm: req.min_warm.unwrap_or(base.min_warm),
        idle_timeout_ms: idle.as_millis() as u64,
    }))
}

/// Reads a multipart registration: text fields `name`, `runtime`, `timeout`, `concurrency`,
/// `queue_limit`, `max_attempts`, `min_warm`, `idle_timeout`, `warm`, `entry`, `memory`,
/// `allow_net`, `http_port`, `http_concurrency`, `record_requests`, `reset`, repeated `env` fields of `K=V`, and a `code` file part.
async fn from_multipart(
    mut form: Multipart,
    limit: usize,
) -> Result<(RegisterRequest, Option<Vec<u8>>), ApiError> {
    let mut req = RegisterRequest::new(String::new(), "shell");
    // Omitted, the runtime is kept from the previous version like any other setting.
    req.runtime = None;
    let mut code = None;
    let multipart_err = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(limit)
        } else {
            ApiError::invalid(format!("bad multipart body: {e}"))
        }
    };
    while let Some(field) = form.next_field().await.map_err(multipart_err)? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "code" {
            code = Some(field.bytes().await.map_err(multipart_err)?.to_vec());
            continue;
        }
        let text = field.text().await.map_err(multipart_err)?;
        let number = |what: &str| {
            text.trim().parse::<u32>().map_err(|_| {
                ApiError::invalid(format!("{what} must be a whole number, got {text:?}"))
            })
        };
        match name.as_str() {
            "name" => req.name = text,
            "runtime" => req.runtime = Some(text),
            "timeout" => req.timeout = Some(TimeoutField::Text(text)),
            "concurrency" => req.concurrency = Some(number("concurrency")?),
            "queue_limit" => req.queue_limit = Some(number("queue_limit")?),
            "max_attempts" => req.max_attempts = Some(number("max_attempts")?),
            "min_warm" => req.min_warm = Some(number("min_warm")?),
            "idle_timeout" => req.idle_timeout = Some(TimeoutField::Text(text)),
            "warm" => req.warm = Some(truthy(&text)),
            "entry" => req.entry = Some(text),
            "source" => req.source = Some(text),
            "memory" => req.memory = Some(SizeField::Text(text)),
            "allow_net" => req.allow_net = Some(truthy(&text)),
            "http_port" => {
                let port = text.trim().parse::<u16>().map_err(|_| {
                    ApiError::invalid(format!("http_port must be a port number, got {text:?}"))
                })?;
                req.http_port = Some(port);
            }
            "http_concurrency" => req.http_concurrency = Some(number("http_concurrency")?),
            "record_requests" => req.record_requests = Some(truthy(&text)),
            "reset" => req.reset = truthy(&text),
            "code_sha256" => req.code_sha256 = Some(text),
            "env" => {
                let (k, v) = text.split_once('=').ok_or_else(|| {
                    ApiError::invalid(format!("env field must be K=V, got {text:?}"))
                })?;
                req.env
                    .get_or_insert_with(BTreeMap::new)
                    .insert(k.to_string(), v.to_string());
            }
            other => return Err(ApiError::invalid(format!("unknown form field {other:?}"))),
        }
    }
    if code.is_none() && req.code_sha256.is_none() {
        return Err(ApiError::invalid(
            "the form has no `code` file part (nor a `code_sha256` field)",
        ));
    }
    Ok((req, code))
}

/// Whether a form field's text means yes.
fn truthy(text: &str) -> bool {
    matches!(text.trim(), "1" | "true" | "yes")
}

/// `GET /v1/functions`: admins see every function, others the ones they own or are granted.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Json<Vec<FunctionView>> {
    let warm = state.broker.warm_executors();
    Json(
        state
            .broker
            .functions()
            .iter()
            .filter(|f| may_see(&state, &caller, f))
            .map(|f| FunctionView::from(f.as_ref()).with_warm(&warm))
            .collect(),
    )
}

/// Whether `caller` may see and invoke `f`.
pub(crate) fn may_see(state: &AppState, caller: &Caller, f: &FunctionRecord) -> bool {
    caller.is_admin()
        || policy::may_invoke(
            caller,
            f.owner,
            state.users.is_granted(caller.user, &f.name),
        )
}

/// Checks that `caller` may invoke the function `name`: 403 when it has no right to it. An
/// unknown function is let through (the broker answers 404), and admins are not looked up at
/// all, so their calls take no extra lock.
pub(crate) fn check_invoke(state: &AppState, caller: &Caller, name: &str) -> Result<(), ApiError> {
    if caller.is_admin() {
        return Ok(());
    }
    match state.broker.function(name) {
        Some(f) if !may_see(state, caller, &f) => Err(forbidden(
            caller,
            &format!(
                "invoke {name:?} (it needs a grant: `faasd grant {} {name}`)",
                if caller.user == crate::auth::NO_USER {
                    crate::auth::ANONYMOUS
                } else {
                    "USER"
                }
            ),
        )),
        _ => Ok(()),
    }
}

/// Refuses a task of an HTTP-service function: its requests go to `/function/{name}/...`.
pub(crate) fn check_task_function(state: &AppState, name: &str) -> Result<(), ApiError> {
    match state.broker.function(name) {
        Some(f) if f.http.is_some() => Err(ApiError::invalid(format!(
            "{name:?} is an HTTP service: send HTTP requests to /function/{name}/PATH instead of tasks"
        ))),
        _ => Ok(()),
    }
}

pub(crate) fn function_not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::FunctionNotFound,
        format!("no function named {name:?}"),
    )
}

/// `GET /v1/functions/{name}`.
pub async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<FunctionView>, ApiError> {
    check_invoke(&state, &caller, &name)?;
    let f = state
        .broker
        .function(&name)
        .ok_or_else(|| function_not_found(&name))?;
    let warm = state.broker.warm_executors();
    Ok(Json(FunctionView::from(f.as_ref()).with_warm(&warm)))
}

/// `DELETE /v1/functions/{name}`: removes every version; its queued tasks end FAILED
/// `cancelled` (`"cancelled": N` in the answer).
pub async fn remove(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    _body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    if let Some(f) = state.broker.function(&name) {
        if !policy::may_delete(&caller, f.owner) {
            return Err(forbidden(&caller, &format!("delete {name:?}")));
        }
    }
    let why = format!(
        "its function {name:?} was removed by {} before it ran",
        caller.name
    );
    let (f, cancelled) = state.broker.delete(&name, &why).await?;
    // The function is gone whatever became of its cancels: its grants go too, or a function
    // registered under the name later would inherit them.
    state.users.forget_function(&name).await?;
    let cancelled = cancelled?;
    tracing::info!(function = %name, by = %caller.name, cancelled, "deleted");
    Ok(Json(serde_json::json!({
        "name": f.name,
        "version": f.version,
        "deleted": true,
        "cancelled": cancelled,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_request(json: serde_json::Value) -> Result<RegisterRequest, serde_json::Error> {
        serde_json::from_value(json)
    }

    fn timeout(json: serde_json::Value) -> Result<Duration, ApiError> {
        serde_json::from_value::<TimeoutField>(json)
            .expect("a number or a text")
            .duration("timeout")
    }

    fn size(json: serde_json::Value) -> Result<u64, ApiError> {
        serde_json::from_value::<SizeField>(json)
            .expect("a number or a text")
            .bytes()
    }

    #[test]
    fn valid_names_pass() {
        let longest = format!("a{}", "b".repeat(62));
        for name in ["a", "0", "hello", "fn-1_x", "9lives", longest.as_str()] {
            assert!(validate_name(name).is_ok(), "{name:?}");
        }
    }

    #[test]
    fn an_empty_name_is_refused() {
        let err = validate_name("").expect_err("empty");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert_eq!(err.code(), &ErrorCode::InvalidName);
    }

    #[test]
    fn a_name_over_63_characters_is_refused() {
        let name = "a".repeat(64);
        assert_eq!(
            validate_name(&name).expect_err("too long").code(),
            &ErrorCode::InvalidName
        );
    }

    #[test]
    fn names_with_bad_characters_are_refused() {
        for name in [
            "Hello",
            "-lead",
            "_lead",
            "a b",
            "a/b",
            "a.b",
            "caf\u{e9}",
            "a\n",
        ] {
            let err = validate_name(name).expect_err(name);
            assert_eq!(err.code(), &ErrorCode::InvalidName, "{name:?}");
            assert!(err.message().contains("invalid function name"), "{name:?}");
        }
    }

    #[test]
    fn a_timeout_in_seconds_may_have_a_fraction() {
        assert_eq!(
            timeout(serde_json::json!(1.5)).expect("1.5s"),
            Duration::from_millis(1500)
        );
        assert_eq!(
            timeout(serde_json::json!(30)).expect("30s"),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn a_timeout_as_text_is_a_duration() {
        assert_eq!(
            timeout(serde_json::json!("1m 30s")).expect("90s"),
            Duration::from_secs(90)
        );
        assert_eq!(
            timeout(serde_json::json!("250ms")).expect("250ms"),
            Duration::from_millis(250)
        );
        let err = timeout(serde_json::json!("soon")).expect_err("not a duration");
        assert_eq!(err.code(), &ErrorCode::InvalidRequest);
        assert!(err.message().contains("\"soon\""), "{}", err.message());
    }

    #[test]
    fn a_timeout_must_be_between_a_millisecond_and_a_day() {
        assert!(timeout(serde_json::json!("24h")).is_ok());
        assert!(timeout(serde_json::json!("1ms")).is_ok());
        for out_of_range in [
            serde_json::json!(0),
            serde_json::json!(-5),
            serde_json::json!(0.0001),
            serde_json::json!("25h"),
            serde_json::json!("0s"),
        ] {
            let err = timeout(out_of_range.clone()).expect_err("out of range");
            assert_eq!(err.code(), &ErrorCode::InvalidRequest, "{out_of_range}");
        }
    }

    #[test]
    fn a_memory_size_is_bytes_or_a_text_of_at_least_4mib() {
        assert_eq!(size(serde_json::json!("256MiB")).expect("text"), 256 << 20);
        assert_eq!(size(serde_json::json!(8 << 20)).expect("bytes"), 8 << 20);
        assert_eq!(size(serde_json::json!("4MiB")).expect("the least"), 4 << 20);
        let small = size(serde_json::json!("1MiB")).expect_err("below 4MiB");
        assert_eq!(small.message(), "memory must be at least 4MiB");
        let bad = size(serde_json::json!("lots")).expect_err("not a size");
        assert_eq!(bad.code(), &ErrorCode::InvalidRequest);
    }

    fn defaults() -> super::super::FunctionDefaults {
        super::super::FunctionDefaults::default()
    }

    #[test]
    fn a_registration_defaults_to_the_shell_runtime() {
        let req = parse_request(serde_json::json!({"name": "f", "code": "ZWNobw=="}))
            .expect("minimal registration");
        let f = function_record(req, b"echo", &defaults(), None).expect("a record");
        assert_eq!(f.runtime, Runtime::Shell);
        assert!(f.warm.is_none() && !f.isolation.allow_net && f.env.is_empty());
        assert_eq!(f.timeout_ms, 30_000);
    }

    #[test]
    fn omitted_settings_keep_the_previous_versions_and_reset_drops_them() {
        let first = parse_request(serde_json::json!({
            "name": "f", "code": "", "runtime": "exec", "timeout": "5s", "concurrency": 2,
            "env": {"A": "1"}, "entry": "app", "warm": true, "min_warm": 1, "memory": "8MiB",
            "allow_net": true, "queue_limit": 7, "max_attempts": 2,
        }))
        .expect("registration");
        let old = function_record(first, b"x", &defaults(), None).expect("first version");
        let again = parse_request(serde_json::json!({"name": "f", "code": "", "timeout": 10}))
            .expect("registration");
        let new = function_record(again, b"y", &defaults(), Some(&old)).expect("kept");
        assert_eq!(new.timeout_ms, 10_000);
        assert_eq!(
            (
                new.runtime,
                new.concurrency,
                new.queue_limit,
                new.max_attempts
            ),
            (Runtime::Exec, Some(2), 7, 2)
        );
        assert_eq!(
            (new.env.clone(), new.warm, new.isolation),
            (old.env.clone(), old.warm, old.isolation)
        );
        let changed = settings::changes(&old, &new);
        let names: Vec<&str> = changed.iter().map(|c| c.setting.as_str()).collect();
        assert_eq!(names, ["code", "timeout"]);
        assert_eq!(
            (changed[1].from.as_str(), changed[1].to.as_str()),
            ("5s", "10s")
        );
        let reset = parse_request(serde_json::json!({"name": "f", "code": "", "reset": true}))
            .expect("registration");
        let fresh = function_record(reset, b"y", &defaults(), Some(&old)).expect("reset");
        let blank = parse_request(serde_json::json!({"name": "f", "code": ""})).expect("blank");
        let mut first_time = function_record(blank, b"y", &defaults(), None).expect("new");
        first_time.created_ms = fresh.created_ms;
        assert_eq!(fresh, first_time);
    }

    #[test]
    fn a_new_env_keeps_the_entry_module_and_a_shell_version_drops_warm() {
        let first = parse_request(serde_json::json!({
            "name": "f", "code": "", "runtime": "exec", "warm": true, "entry": "app",
            "env": {"A": "1"},
        }))
        .expect("registration");
        let old = function_record(first, b"x", &defaults(), None).expect("first version");
        let again = parse_request(serde_json::json!({
            "name": "f", "code": "", "runtime": "shell", "env": {"B": "2"},
        }))
        .expect("registration");
        let new = function_record(again, b"x", &defaults(), Some(&old)).expect("shell");
        assert_eq!(
            new.env,
            [
                ("B".to_string(), "2".to_string()),
                ("FAASD_ENTRY".into(), "app".into())
            ]
        );
        assert!(new.warm.is_none());
    }

    #[test]
    fn a_registration_names_each_runtime() {
        for (text, runtime) in [
            ("shell", Runtime::Shell),
            ("exec", Runtime::Exec),
            ("python", Runtime::Python),
            ("pickle", Runtime::Pickle),
            ("oci", Runtime::Oci),
        ] {
            let req = parse_request(serde_json::json!({"name": "f", "runtime": text, "code": ""}))
                .expect("registration");
            let f = function_record(req, b"x", &defaults(), None).expect("a record");
            assert_eq!(f.runtime, runtime, "{text}");
        }
        let req = parse_request(serde_json::json!({"name": "f", "runtime": "cobol", "code": ""}))
            .expect("the runtime is checked later");
        assert!(function_record(req, b"x", &defaults(), None).is_err());
    }

    #[test]
    fn a_registration_with_an_unknown_field_is_refused() {
        let err = parse_request(serde_json::json!({"name": "f", "code": "", "cpu": 2}))
            .expect_err("unknown field");
        assert!(err.to_string().contains("cpu"), "{err}");
    }

    #[test]
    fn warm_settings_follow_the_runtime() {
        let mut req = RegisterRequest::new("f".into(), "python");
        let base = Base::defaults(&defaults());
        let spec = warm_spec(&req, Runtime::Python, &base)
            .expect("python is warm")
            .expect("a warm spec");
        assert_eq!(
            spec.idle_timeout_ms,
            settings::DEFAULT_IDLE_TIMEOUT.as_millis() as u64
        );
        assert_eq!(spec.min_warm, 0);
        assert!(
            warm_spec(&req, Runtime::Exec, &base)
                .expect("cold exec")
                .is_none()
        );
        req.warm = Some(true);
        req.min_warm = Some(2);
        req.idle_timeout = Some(TimeoutField::Text("5s".into()));
        let spec = warm_spec(&req, Runtime::Exec, &base)
            .expect("warm exec")
            .expect("a warm spec");
        assert_eq!((spec.min_warm, spec.idle_timeout_ms), (2, 5000));
        assert!(warm_spec(&req, Runtime::Shell, &base).is_err());
    }

    #[test]
    fn the_entry_module_moves_into_the_environment() {
        let mut req = RegisterRequest::new("f".into(), "python");
        req.entry = Some("pkg.main_mod".into());
        let env = merged_env(&mut req, &Base::defaults(&defaults()), Runtime::Python)
            .expect("a module name");
        assert_eq!(env["FAASD_ENTRY"], "pkg.main_mod");
        assert!(req.entry.is_none());
        for bad in ["", "1mod", "a..b", "a-b", "pkg."] {
            assert!(check_entry(Some(bad.into())).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn environment_names_are_checked() {
        let env = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert!(validate_env(&env("PATH_2", "x")).is_ok());
        assert!(validate_env(&env("2X", "x")).is_err());
        assert!(validate_env(&env("A-B", "x")).is_err());
        assert!(validate_env(&env("", "x")).is_err());
        assert!(validate_env(&env("A", "x\0y")).is_err());
    }
}

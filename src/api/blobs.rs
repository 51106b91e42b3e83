//! `HEAD` and `PUT /v1/blobs/sha256:<hex>`: code bundles uploaded apart from their
//! registration, so a bundle may be larger than a request body (`--max-code-size`, not
//! `--max-body`) and is sent once however often it is registered.
//!
//! `HEAD` answers 200 when the server has the blob, 404 when not (with `Upload-Offset: N` when
//! an interrupted upload left N bytes). `PUT` answers 200 at once, without reading the body,
//! when it has it; else it streams the body into a file while hashing it, refuses it past
//! `--max-code-size` (413) or when it does not hash to its name (400 `digest_mismatch`),
//! keeping nothing either way, and answers 201 once the blob is durable. A write that fails for
//! lack of space keeps nothing either (507 `insufficient_storage`): its partial file would keep
//! the disk full. An upload cut off (or failed otherwise) keeps what it received, and its
//! answer says how much (`upload_offset`): `PUT ...?offset=N` sends the rest from byte N (at
//! most what was kept; 409 `upload_offset_mismatch` with `upload_offset` past it), and a `PUT`
//! without `offset` starts over. A failed upload's answer says what was kept. One upload of a
//! blob at a time (409 `upload_in_progress`). Who may register functions (admins and
//! developers) may upload. A registration then names the blob with `code_sha256` (see
//! `functions.rs`); blobs no version names are swept after an hour (see `store/blobs.rs`).

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::json;

use super::access::forbidden;
use super::{ApiError, AppState, ErrorCode};
use crate::auth::{Caller, policy};
use crate::proto::{CodeHash, hex};
use crate::store::{Kept, Refused, Stored};

/// The header that gives how many bytes of a blob an interrupted upload left.
pub const UPLOAD_OFFSET: &str = "upload-offset";

/// The query of a `PUT`: where a resumed upload starts.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutQuery {
    /// The byte the body starts at (what an interrupted upload left; default 0: start over).
    #[serde(default)]
    offset: u64,
}

/// The default of `serve --max-code-size`: 1 GiB.
pub const DEFAULT_MAX_CODE_BYTES: u64 = 1 << 30;

/// `sha256:<64 hex digits>` (or the bare hex) → the hash; 400 otherwise.
pub(crate) fn parse_digest(text: &str) -> Result<CodeHash, ApiError> {
    let hex_part = text.strip_prefix("sha256:").unwrap_or(text);
    crate::store::parse_hash(hex_part).ok_or_else(|| {
        ApiError::invalid(format!(
            "{text:?} is not a blob digest: use sha256: and the 64 hex digits of the SHA-256"
        ))
    })
}

fn may_upload(caller: &Caller) -> Result<(), ApiError> {
    if policy::may_upload_code(caller) {
        Ok(())
    } else {
        Err(forbidden(caller, "upload code"))
    }
}

/// Whether `caller` may use blob `hash` by its digest alone (find it with `HEAD`, skip sending
/// its body, register a function with it): an admin, whoever sent its whole body since the
/// server started, or the owner of a live function whose code it is. Knowing a digest (shown on
/// every function a user may call) is not having the code.
fn may_use(state: &AppState, caller: &Caller, hash: &CodeHash) -> bool {
    caller.is_admin()
        || state
            .broker
            .store()
            .blob_files()
            .uploaded_by(hash, caller.user)
        || state
            .broker
            .functions()
            .iter()
            .any(|f| f.owner == caller.user && &f.code_hash == hash)
}

/// The size of blob `hash` when the server has it and `caller` may use it by its digest
/// ([`may_use`]); `None` otherwise, so a caller who may not is answered as if it were missing.
pub(crate) async fn usable(
    state: &AppState,
    caller: &Caller,
    hash: &CodeHash,
) -> Result<Option<u64>, ApiError> {
    let found = state
        .broker
        .store()
        .has_blob(*hash)
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok(found.filter(|_| may_use(state, caller, hash)))
}

fn view(hash: &CodeHash, bytes: u64) -> Json<serde_json::Value> {
    Json(json!({ "digest": format!("sha256:{}", hex(hash)), "bytes": bytes }))
}

/// `HEAD /v1/blobs/{digest}`: 200 when the server has the blob (with its size in
/// `Content-Length`), 404 when not (with `Upload-Offset` when an upload of it was interrupted).
pub async fn head(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(digest): Path<String>,
) -> Result<Response, ApiError> {
    may_upload(&caller)?;
    let hash = parse_digest(&digest)?;
    let store = state.broker.store();
    if let Some(bytes) = usable(&state, &caller, &hash).await? {
        return Ok((StatusCode::OK, [(header::CONTENT_LENGTH, bytes)]).into_response());
    }
    let missing = ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::BlobNotFound,
        format!("no blob sha256:{}", hex(&hash)),
    );
    let mut answer = missing.into_response();
    if let Some(kept) = store.blob_files().partial_len(&hash) {
        answer.headers_mut().insert(UPLOAD_OFFSET, kept.into());
    }
    Ok(answer)
}

/// 413 `payload_too_large` for a bundle over `--max-code-size`; `kept` is what stays of it.
fn too_large(limit: u64, kept: &Kept) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::PayloadTooLarge,
        format!(
            "code bundle exceeds the {limit} byte limit (--max-code-size); {kept}: send a smaller bundle, or raise the server's --max-code-size"
        ),
    )
    .with("limit_bytes", json!(limit))
}

/// `PUT /v1/blobs/{digest}`: see the module doc.
pub async fn put(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(digest): Path<String>,
    Query(query): Query<PutQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    may_upload(&caller)?;
    let hash = parse_digest(&digest)?;
    let store = state.broker.store();
    // A caller who may not use the blob by its digest sends its body like a first uploader.
    if let Some(bytes) = usable(&state, &caller, &hash).await? {
        return Ok((StatusCode::OK, view(&hash, bytes)));
    }
    let limit = state.max_code_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len.saturating_add(query.offset) > limit) {
        return Err(too_large(limit, &Kept::Nothing));
    }
    store.check_writable().map_err(|e| ApiError::store(&e))?;
    let started = store.blob_files().upload(hash, query.offset).await;
    let mut upload = match started.map_err(|e| stored(&e))? {
        Ok(upload) => upload,
        Err(refused) => return Err(conflict(&hash, refused)),
    };
    let mut body = body.into_data_stream();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => return Err(cut_off(&e, upload.len())),
        };
        if upload.len() + chunk.len() as u64 > limit {
            let kept = upload.discard().await;
            return Err(too_large(limit, &kept));
        }
        upload.write(chunk).await.map_err(|e| stored(&e))?;
    }
    match upload.finish().await.map_err(|e| stored(&e))? {
        Stored::Stored(bytes) => {
            store.blob_files().record_uploader(hash, caller.user);
            tracing::info!(digest = %hex(&hash), bytes, "code blob uploaded");
            Ok((StatusCode::CREATED, view(&hash, bytes)))
        }
        Stored::Mismatch { actual, kept } => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::DigestMismatch,
            format!(
                "the body's SHA-256 is {}, not the {} it was sent to; {kept}",
                hex(&actual),
                hex(&hash)
            ),
        )),
    }
}

/// 400 for an upload whose body broke off after `kept` bytes, which stay for a resume; 408
/// when it broke off for arriving too slowly (`serve --body-timeout`).
fn cut_off(e: &axum::Error, kept: u64) -> ApiError {
    let message = format!(
        "the upload was cut off ({e}) after {kept} bytes: send the rest with ?offset={kept}, or all of it again"
    );
    let error = if super::too_slow(e).is_some() {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorCode::RequestTimeout,
            message,
        )
    } else {
        ApiError::invalid(message)
    };
    error.with("upload_offset", json!(kept))
}

/// 409 for an upload that cannot start: another is under way, or the offset is past what an
/// interrupted one kept.
fn conflict(hash: &CodeHash, refused: Refused) -> ApiError {
    match refused {
        Refused::InProgress => ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::UploadInProgress,
            format!(
                "an upload of sha256:{} is under way; retry once it ends",
                hex(hash)
            ),
        ),
        Refused::Offset(kept) => ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::UploadOffsetMismatch,
            format!(
                "only {kept} bytes of sha256:{} were kept: resume with ?offset={kept} or lower",
                hex(hash)
            ),
        )
        .with("upload_offset", json!(kept)),
    }
}

/// The answer for an upload that failed in the store: 507 for a blob file that ran out of
/// space, else the store's answer. The message says what was kept (see `store::Kept`), and
/// `upload_offset` gives where a resumed upload starts when a partial file stays.
fn stored(e: &crate::store::Error) -> ApiError {
    let answer = if e.is_out_of_space() {
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            ErrorCode::InsufficientStorage,
            format!("{e}: free space in the data directory, then send it again"),
        )
    } else {
        ApiError::store(e)
    };
    match e {
        crate::store::Error::Upload {
            kept: Kept::Partial(kept),
            ..
        } => answer.with("upload_offset", json!(kept)),
        _ => answer,
    }
}

//! The MPCS FaaS REST API, as its Python clients expect it: register a dill-pickled function,
//! execute it with pickled arguments, poll status, fetch the pickled result.
//!
//! | route | answer |
//! |---|---|
//! | `POST /register_function` `{"name", "payload"}` | 200 `{"function_id"}`; 400 if `payload` is not base64 of a pickle; 422 if a field is missing |
//! | `POST /execute_function` `{"function_id", "payload"}` | 200 `{"task_id"}`; 404 for an unknown function |
//! | `GET /status/{task_id}` | 200 `{"task_id", "status"}`; 404 |
//! | `GET /result/{task_id}` | 200 `{"task_id", "status", "result"}` (`result`: dill + base64, `null` until finished); 404 |
//!
//! Functions registered here are `pickle` functions named by their UUID, so they also appear in
//! the native API, with the `name` their client sent as their `display_name`. The server never unpickles anything: it only checks the pickle's framing.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::{Value, json};

use super::functions::{Code, RegisterRequest, decode_base64, register_function};
use super::idempotency::Once;
use super::{ApiError, AppState, ErrorCode, read_body};
use crate::auth::Caller;
use crate::store::TaskStatus;

/// Reads a JSON object body and the string fields it must have (422 when one is missing).
async fn fields<const N: usize>(
    state: &AppState,
    body: Body,
    names: [&str; N],
) -> Result<[String; N], ApiError> {
    let body = read_body(body, state.max_body_bytes).await?;
    parse_fields(&body, names)
}

/// The string fields `names` of a JSON object body (422 when the body is not JSON or lacks one).
pub(super) fn parse_fields<const N: usize>(
    body: &[u8],
    names: [&str; N],
) -> Result<[String; N], ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidRequest,
            format!("the body is not JSON: {e}"),
        )
    })?;
    let mut out: [String; N] = std::array::from_fn(|_| String::new());
    for (slot, name) in out.iter_mut().zip(names) {
        *slot = value
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    ErrorCode::MissingField,
                    format!("the body needs a string field {name:?}"),
                )
                .with(
                    "detail",
                    json!([{"loc": ["body", name], "msg": "field required"}]),
                )
            })?
            .to_string();
    }
    Ok(out)
}

/// Checks that `code` looks like a pickle: it ends with the STOP opcode, and protocol 2+
/// pickles (dill's) start with PROTO.
pub(super) fn check_pickle(code: &[u8]) -> Result<(), ApiError> {
    match super::code::looks_like_pickle(code) {
        true => Ok(()),
        false => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidPickle,
            "payload is base64, but not of a pickle (serialize the function with dill, then base64)",
        )),
    }
}

/// The longest `name` an MPCS registration may send, in characters.
const MAX_DISPLAY_NAME_CHARS: usize = 200;

/// The `name` of an MPCS registration, kept as the function's display name: at most
/// [`MAX_DISPLAY_NAME_CHARS`] characters (400 past that), control characters replaced so that
/// it prints on one line.
pub(super) fn display_name(name: &str) -> Result<String, ApiError> {
    if name.chars().count() > MAX_DISPLAY_NAME_CHARS {
        return Err(ApiError::invalid(format!(
            "name may be at most {MAX_DISPLAY_NAME_CHARS} characters"
        ))
        .with("field", "name".into()));
    }
    Ok(name
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect())
}

/// `POST /register_function`.
pub async fn register(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let [name, payload] = fields(&state, body, ["name", "payload"]).await?;
    let name = display_name(&name)?;
    let code = decode_base64(&payload)?;
    check_pickle(&code)?;
    let function_id = uuid::Uuid::now_v7().to_string();
    let request =
        RegisterRequest::new(function_id.clone(), "pickle").with_display_name(name.clone());
    let (record, _) = register_function(&state, &caller, request, Code::Inline(code)).await?;
    tracing::info!(function = %record.name, mpcs_name = %name, "registered an MPCS function");
    Ok(Json(json!({ "function_id": function_id })))
}

/// `POST /execute_function`.
pub async fn execute(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let [function_id, payload] = fields(&state, body, ["function_id", "payload"]).await?;
    // Functions are named by the canonical (lowercase, hyphenated) form of their id.
    let Ok(id) = uuid::Uuid::parse_str(&function_id) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::FunctionNotFound,
            format!("no function with id {function_id:?}"),
        ));
    };
    let name = id.hyphenated().to_string();
    super::functions::check_invoke(&state, &caller, &name)?;
    let payload = Bytes::from(payload);
    let request = super::idempotency::Request {
        function: &name,
        route: "execute_function",
        payload_hash: crate::store::payload_hash([payload.as_ref()]),
    };
    let submitted = super::idempotency::once(&state, &caller, &headers, request, |key| async {
        let (record, _) = state
            .broker
            .submit_keyed(
                &name,
                payload,
                false,
                false,
                caller.user,
                crate::broker::Extras { pin: None, key },
            )
            .await?;
        Ok(vec![record.id])
    })
    .await?;
    let (Once::Fresh(ids) | Once::Repeat(ids)) = submitted;
    let Some(&id) = ids.first() else {
        return Err(ApiError::internal("an idempotency key names no task"));
    };
    Ok(Json(
        json!({ "task_id": uuid::Uuid::from_u128(id).to_string() }),
    ))
}

async fn task(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<crate::store::TaskRecord, ApiError> {
    let Ok(task_id) = uuid::Uuid::parse_str(id) else {
        return Err(ApiError::task_not_found(id));
    };
    super::tasks::visible_task(state, caller, id, task_id.as_u128()).await
}

/// `GET /status/{task_id}`.
pub async fn status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = task(&state, &caller, &id).await?;
    Ok(Json(
        json!({ "task_id": id, "status": record.status.as_str() }),
    ))
}

/// `GET /result/{task_id}`.
pub async fn result(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = task(&state, &caller, &id).await?;
    let result = if record.status.is_finished() {
        let bytes = state.broker.result(record.id).await?.unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        // A failure without a pickled exception (a timeout, a lost worker) has no result.
        (!(text.is_empty() && record.status == TaskStatus::Failed)).then_some(text)
    } else {
        None
    };
    Ok(Json(json!({
        "task_id": id,
        "status": record.status.as_str(),
        "result": result,
    })))
}

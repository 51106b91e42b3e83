//! The API's one error type, its stable machine codes ([`ErrorCode`], shared with the client),
//! and its mapping to HTTP statuses and JSON bodies.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::broker;
use crate::proto::FailureReason;
use crate::store::TaskRecord;

/// The header that carries a task's id on invoke answers.
pub const TASK_ID_HEADER: &str = "x-faasd-task-id";

/// The stable machine code of an error answer: the `code` field of its JSON body.
///
/// Serializes to the snake_case name of the variant (`FunctionNotFound` is
/// `ErrorCode::FunctionNotFound`). A code this build does not know (from a newer server) parses as
/// [`ErrorCode::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or a setting is out of range.
    InvalidRequest,
    /// A function name breaks the naming rule.
    InvalidName,
    /// The code is not valid base64.
    InvalidBase64,
    /// An MPCS payload is not base64 of a pickle.
    InvalidPickle,
    /// Registered code can never run: it does not compile, lacks its entry module or `handle`,
    /// or does not suit its runtime.
    InvalidCode,
    /// A task id is not a UUID.
    InvalidTaskId,
    /// An MPCS request lacks a field.
    MissingField,
    /// The request body is over the limit.
    PayloadTooLarge,
    /// No function has that name.
    FunctionNotFound,
    /// No task has that id.
    TaskNotFound,
    /// No route matches the path.
    RouteNotFound,
    /// The route does not take that method.
    MethodNotAllowed,
    /// The task has not finished yet.
    TaskNotFinished,
    /// A cancel found the task already finished (409; the body's `status` says how it ended).
    TaskFinished,
    /// A cancel found the task RUNNING (409): sent only by servers from before a cancel could
    /// stop a running task; read still, so that a newer client exits 5 against one.
    TaskRunning,
    /// The task was cancelled (reason `cancelled`; 409 on its result).
    TaskCancelled,
    /// The function's queue is full.
    QueueFull,
    /// The server is stopping.
    ShuttingDown,
    /// A sync call found no worker connected to run it (503).
    NoWorkers,
    /// The function failed (an exception, a non-zero exit, a signal, out of memory).
    FunctionFailed,
    /// The function ran past its timeout.
    FunctionTimeout,
    /// The task's worker was lost too many times.
    WorkerLost,
    /// The function's output is over the limit.
    OutputTooLarge,
    /// The executor could not run the function (spawn, init or protocol failure).
    ExecutorFailed,
    /// The server failed (a store error and the like).
    Internal,
    /// The data directory is full: the write was not stored.
    InsufficientStorage,
    /// The request body arrived too slowly (`serve --body-timeout`; 408).
    RequestTimeout,
    /// The request carries no token, or one no user holds (401).
    Unauthenticated,
    /// The caller's role or grants do not allow the request (403).
    Forbidden,
    /// A user of that name already exists.
    UserExists,
    /// No user has that name.
    UserNotFound,
    /// The request would remove the only admin while other users remain (409).
    LastAdmin,
    /// An `Idempotency-Key` was sent again with another function, kind of request or payload
    /// (409).
    IdempotencyKeyReused,
    /// The function has no kept version of that number.
    VersionNotFound,
    /// The task's payload is not kept (it cannot be replayed).
    PayloadNotFound,
    /// The task finished longer ago than the server's retention (`serve --retain`) and was
    /// purged with its result and logs (410).
    TaskExpired,
    /// No function serves the host name a request was sent to (`serve --domain`).
    NotFound,
    /// No worker can take a request to an HTTP-service function now (503).
    ServiceUnavailable,
    /// An HTTP-service function could not be started or reached, or failed before answering
    /// (502).
    ServiceFailed,
    /// An uploaded blob's body does not hash to the digest it was sent to (400).
    DigestMismatch,
    /// A registration names a blob (`code_sha256`) that was not uploaded (400), or `HEAD`
    /// finds none (404).
    BlobNotFound,
    /// Another upload of the blob is under way (409).
    UploadInProgress,
    /// A resumed upload's offset is past what the interrupted one kept (409).
    UploadOffsetMismatch,
    /// A code this build does not know.
    #[serde(untagged)]
    Other(String),
}

impl ErrorCode {
    /// The code for `text`: a known variant, or [`ErrorCode::Other`].
    pub fn parse(text: &str) -> ErrorCode {
        use serde::de::value::{Error, StrDeserializer};
        ErrorCode::deserialize(StrDeserializer::<Error>::new(text))
            .unwrap_or_else(|_| ErrorCode::Other(text.to_owned()))
    }
}

/// An error answer: status, a stable machine code, a message a person can act on, and
/// optional extra fields.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    extra: Map<String, Value>,
    task_id: Option<String>,
}

impl ApiError {
    /// An error with a status, a code and a message.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: Map::new(),
            task_id: None,
        }
    }

    /// 503 `no_workers` for a sync call whose task lost its worker with no other connected
    /// that runs it: the task waits in its queue, and the caller can follow it by its id.
    pub fn stranded(id: &str) -> ApiError {
        let mut err = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::NoWorkers,
            format!(
                "the worker running task {id} was lost and no connected worker can run it now; \
                 it is QUEUED again and runs when one joins: follow it with `faasd status {id} \
                 --wait`"
            ),
        );
        err.extra.insert("task_id".into(), json!(id));
        err.task_id = Some(id.to_owned());
        err
    }

    /// 401 `unauthenticated`: no token, or one no user holds.
    pub fn unauthenticated(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthenticated,
            message,
        )
    }

    /// 403 `forbidden`: the caller may not do this.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }

    /// 400 `invalid_request`.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, message)
    }

    /// 404 `task_not_found`.
    pub fn task_not_found(id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::TaskNotFound,
            format!("no task with id {id}"),
        )
    }

    /// 410 `task_expired`: the task `id` is not stored, and the retention purge has passed it;
    /// `retain` is the server's `--retain` when a purge runs now.
    pub fn task_expired(id: &str, retain: Option<std::time::Duration>) -> ApiError {
        let kept = match retain {
            Some(retain) => format!(
                "finished tasks are kept for {} (serve --retain)",
                crate::units::format_duration(retain)
            ),
            None => "finished tasks are kept for the server's --retain".to_owned(),
        };
        ApiError::new(
            StatusCode::GONE,
            ErrorCode::TaskExpired,
            format!("task {id} has expired: {kept}, and its record, result and logs were purged"),
        )
    }

    /// 413 `payload_too_large`, naming the limit and the flag that sets it. The answer closes
    /// the connection: the rest of the body is not read (the server drains it before closing).
    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!(
                "request body exceeds the {limit} byte limit (--max-body); send less, or raise the server's --max-body"
            ),
        )
        .with("limit_bytes", json!(limit))
    }

    /// 500 `internal`: the server failed (store error and the like).
    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            format!("internal error: {message}"),
        )
    }

    /// 507 `insufficient_storage` for a store error that is a full disk, else 500 `internal`.
    pub fn store(e: &crate::store::Error) -> ApiError {
        if e.is_disk_full() {
            return ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                ErrorCode::InsufficientStorage,
                e.to_string(),
            );
        }
        ApiError::internal(e)
    }

    /// The answer for a task that ended FAILED: its status and code depend on the reason.
    pub fn task_failed(record: &TaskRecord, stderr: &[u8]) -> ApiError {
        let (status, code) = match record.failure {
            Some(FailureReason::Timeout) => {
                (StatusCode::GATEWAY_TIMEOUT, ErrorCode::FunctionTimeout)
            }
            Some(FailureReason::WorkerLost) => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::WorkerLost)
            }
            Some(FailureReason::OutputTooLarge) => {
                (StatusCode::BAD_GATEWAY, ErrorCode::OutputTooLarge)
            }
            Some(
                FailureReason::OutputHeldOpen
                | FailureReason::Exception
                | FailureReason::ExecutorDied
                | FailureReason::OutOfMemory,
            ) => (StatusCode::BAD_GATEWAY, ErrorCode::FunctionFailed),
            Some(FailureReason::ProtocolError | FailureReason::InitFailed) => {
                (StatusCode::BAD_GATEWAY, ErrorCode::ExecutorFailed)
            }
            Some(FailureReason::SpawnFailed | FailureReason::CodeUnavailable) => {
                (StatusCode::BAD_GATEWAY, ErrorCode::ExecutorFailed)
            }
            Some(FailureReason::ExitStatus | FailureReason::Signal) | None => {
                (StatusCode::BAD_GATEWAY, ErrorCode::FunctionFailed)
            }
            Some(FailureReason::Cancelled) => (StatusCode::CONFLICT, ErrorCode::TaskCancelled),
        };
        let id = uuid::Uuid::from_u128(record.id).to_string();
        let detail = record
            .message
            .as_deref()
            .unwrap_or("no reason was recorded");
        let mut err = ApiError::new(
            status,
            code,
            format!("function {} failed: {detail} (task {id})", record.function),
        );
        err.extra.insert("task_id".into(), json!(id));
        err.extra.insert("message".into(), json!(detail));
        err.extra.insert(
            "reason".into(),
            json!(record.failure.map(FailureReason::as_str)),
        );
        err.extra
            .insert("exit_code".into(), json!(record.exit_code));
        err.extra.insert("signal".into(), json!(record.signal));
        err.extra
            .insert("stderr_tail".into(), json!(tail(stderr, 2048)));
        err.task_id = Some(id);
        err
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine code.
    pub fn code(&self) -> &ErrorCode {
        &self.code
    }

    /// The message for a person.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Adds a field to the JSON body.
    pub fn with(mut self, key: &str, value: Value) -> ApiError {
        self.extra.insert(key.into(), value);
        self
    }
}

/// The last `max` bytes of `bytes` as text, starting at a line break where one is near.
fn tail(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    let text = String::from_utf8_lossy(&bytes[start..]);
    match (start > 0, text.find('\n')) {
        (true, Some(nl)) if nl + 1 < text.len() => text[nl + 1..].to_string(),
        _ => text.into_owned(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.extra;
        body.insert("error".into(), json!(self.message));
        body.insert("code".into(), json!(self.code));
        let mut response = (self.status, axum::Json(Value::Object(body))).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
        }
        // The rest of the body is not read: the connection closes after this answer.
        if matches!(
            self.status,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
        ) {
            response
                .headers_mut()
                .insert("connection", HeaderValue::from_static("close"));
        }
        if let Some(id) = self.task_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
            response.headers_mut().insert(TASK_ID_HEADER, id);
        }
        response
    }
}

impl From<broker::Error> for ApiError {
    fn from(e: broker::Error) -> Self {
        match e {
            broker::Error::UnknownFunction { .. } => ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::FunctionNotFound,
                e.to_string(),
            ),
            broker::Error::QueueFull { limit, waiting, .. } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::QueueFull,
                e.to_string(),
            )
            .with("queue_limit", json!(limit))
            .with("waiting", json!(waiting)),
            broker::Error::NoFreeSlot { .. } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::QueueFull,
                e.to_string(),
            ),
            broker::Error::NoWorkers { .. } | broker::Error::NoWorkerRuns { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::NoWorkers,
                e.to_string(),
            ),
            broker::Error::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::ShuttingDown,
                e.to_string(),
            ),
            broker::Error::Store(e) => ApiError::store(&e),
            broker::Error::UnknownVersion { .. } => ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::VersionNotFound,
                e.to_string(),
            ),
        }
    }
}

impl From<super::code::Invalid> for ApiError {
    fn from(e: super::code::Invalid) -> Self {
        let line = e.line();
        let err = ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidCode,
            e.to_string(),
        );
        match line {
            Some(line) => err.with("line", line.into()),
            None => err,
        }
    }
}

impl From<crate::store::Error> for ApiError {
    fn from(e: crate::store::Error) -> Self {
        ApiError::store(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every known code and the exact string it has on the wire.
    const CODES: [(ErrorCode, &str); 39] = [
        (ErrorCode::InvalidRequest, "invalid_request"),
        (ErrorCode::InvalidName, "invalid_name"),
        (ErrorCode::InvalidBase64, "invalid_base64"),
        (ErrorCode::InvalidPickle, "invalid_pickle"),
        (ErrorCode::InvalidCode, "invalid_code"),
        (ErrorCode::InvalidTaskId, "invalid_task_id"),
        (ErrorCode::MissingField, "missing_field"),
        (ErrorCode::PayloadTooLarge, "payload_too_large"),
        (ErrorCode::FunctionNotFound, "function_not_found"),
        (ErrorCode::TaskNotFound, "task_not_found"),
        (ErrorCode::RouteNotFound, "route_not_found"),
        (ErrorCode::MethodNotAllowed, "method_not_allowed"),
        (ErrorCode::TaskNotFinished, "task_not_finished"),
        (ErrorCode::TaskFinished, "task_finished"),
        (ErrorCode::TaskRunning, "task_running"),
        (ErrorCode::TaskCancelled, "task_cancelled"),
        (ErrorCode::QueueFull, "queue_full"),
        (ErrorCode::ShuttingDown, "shutting_down"),
        (ErrorCode::NoWorkers, "no_workers"),
        (ErrorCode::FunctionFailed, "function_failed"),
        (ErrorCode::FunctionTimeout, "function_timeout"),
        (ErrorCode::WorkerLost, "worker_lost"),
        (ErrorCode::OutputTooLarge, "output_too_large"),
        (ErrorCode::ExecutorFailed, "executor_failed"),
        (ErrorCode::Internal, "internal"),
        (ErrorCode::InsufficientStorage, "insufficient_storage"),
        (ErrorCode::IdempotencyKeyReused, "idempotency_key_reused"),
        (ErrorCode::VersionNotFound, "version_not_found"),
        (ErrorCode::PayloadNotFound, "payload_not_found"),
        (ErrorCode::TaskExpired, "task_expired"),
        (ErrorCode::NotFound, "not_found"),
        (ErrorCode::ServiceUnavailable, "service_unavailable"),
        (ErrorCode::ServiceFailed, "service_failed"),
        (ErrorCode::DigestMismatch, "digest_mismatch"),
        (ErrorCode::BlobNotFound, "blob_not_found"),
        (ErrorCode::UploadInProgress, "upload_in_progress"),
        (ErrorCode::UploadOffsetMismatch, "upload_offset_mismatch"),
        (ErrorCode::RequestTimeout, "request_timeout"),
        (ErrorCode::LastAdmin, "last_admin"),
    ];

    #[test]
    fn every_code_serializes_to_its_wire_string() {
        for (code, text) in CODES {
            let json = serde_json::to_value(&code).expect("serialize");
            assert_eq!(json, Value::String(text.into()), "{code:?}");
        }
    }

    #[test]
    fn every_wire_string_parses_back_to_its_code() {
        for (code, text) in CODES {
            let parsed: ErrorCode = serde_json::from_value(json!(text)).expect("deserialize");
            assert_eq!(parsed, code);
            assert_eq!(ErrorCode::parse(text), code);
        }
    }

    #[test]
    fn an_unknown_code_parses_as_other_and_keeps_its_text() {
        let parsed: ErrorCode = serde_json::from_value(json!("quota_exceeded")).expect("parse");
        assert_eq!(parsed, ErrorCode::Other("quota_exceeded".into()));
        assert_eq!(ErrorCode::parse("quota_exceeded"), parsed);
        assert_eq!(
            serde_json::to_value(&parsed).expect("serialize"),
            json!("quota_exceeded")
        );
    }

    #[tokio::test]
    async fn the_answer_carries_status_code_and_message_as_json() {
        let response = ApiError::invalid("timeout must be positive")
            .with("field", json!("timeout"))
            .into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        let body: Value = serde_json::from_slice(&body).expect("JSON body");
        assert_eq!(
            body,
            json!({"error": "timeout must be positive", "code": "invalid_request", "field": "timeout"})
        );
    }

    #[test]
    fn a_429_answer_asks_to_retry_after_a_second() {
        let response = ApiError::new(StatusCode::TOO_MANY_REQUESTS, ErrorCode::QueueFull, "full")
            .into_response();
        assert_eq!(response.headers()["retry-after"], "1");
    }

    #[test]
    fn a_full_disk_is_507_insufficient_storage_and_other_store_errors_are_500() {
        let full = crate::store::Error::DiskFull {
            data_dir: "/data".into(),
        };
        let err = ApiError::from(broker::Error::from(full));
        assert_eq!(err.status(), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(err.code(), &ErrorCode::InsufficientStorage);
        assert!(err.message().contains("/data is full"), "{}", err.message());
        let closed = ApiError::from(crate::store::Error::Closed);
        assert_eq!(closed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn tail_starts_at_a_line_break_when_it_cuts() {
        assert_eq!(tail(b"short", 2048), "short");
        assert_eq!(tail(b"first line\nsecond", 10), "second");
    }
}

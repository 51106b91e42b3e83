//! The API's one error type and its mapping to HTTP statuses and JSON bodies.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::broker;
use crate::proto::FailureReason;
use crate::store::TaskRecord;

/// The header that carries a task's id on invoke answers.
pub const TASK_ID_HEADER: &str = "x-faasd-task-id";

/// An error answer: status, a stable machine code, a message a person can act on, and
/// optional extra fields.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    extra: Map<String, Value>,
    task_id: Option<String>,
}

impl ApiError {
    /// An error with a status, a code and a message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: Map::new(),
            task_id: None,
        }
    }

    /// 400 `invalid_request`.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 404 `task_not_found`.
    pub fn task_not_found(id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "task_not_found",
            format!("no task with id {id}"),
        )
    }

    /// 413 `payload_too_large`.
    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds the {limit} byte limit"),
        )
    }

    /// 500 `internal`: the server failed (store error and the like).
    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error: {message}"),
        )
    }

    /// The answer for a task that ended FAILED: its status and code depend on the reason.
    pub fn task_failed(record: &TaskRecord, stderr: &[u8]) -> ApiError {
        let (status, code) = match record.failure {
            Some(FailureReason::Timeout) => (StatusCode::GATEWAY_TIMEOUT, "function_timeout"),
            Some(FailureReason::WorkerLost) => (StatusCode::SERVICE_UNAVAILABLE, "worker_lost"),
            Some(FailureReason::OutputTooLarge) => (StatusCode::BAD_GATEWAY, "output_too_large"),
            Some(
                FailureReason::OutputHeldOpen
                | FailureReason::Exception
                | FailureReason::ExecutorDied
                | FailureReason::OutOfMemory,
            ) => (StatusCode::BAD_GATEWAY, "function_failed"),
            Some(FailureReason::ProtocolError | FailureReason::InitFailed) => {
                (StatusCode::BAD_GATEWAY, "executor_failed")
            }
            Some(FailureReason::SpawnFailed | FailureReason::CodeUnavailable) => {
                (StatusCode::BAD_GATEWAY, "executor_failed")
            }
            Some(FailureReason::ExitStatus | FailureReason::Signal) | None => {
                (StatusCode::BAD_GATEWAY, "function_failed")
            }
        };
        let id = uuid::Uuid::from_u128(record.id).to_string();
        let detail = record.message.as_deref().unwrap_or("failed");
        let mut err = ApiError::new(
            status,
            code,
            format!("function {} {detail} (task {id})", record.function),
        );
        err.extra.insert("task_id".into(), json!(id));
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
        if let Some(id) = self.task_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
            response.headers_mut().insert(TASK_ID_HEADER, id);
        }
        response
    }
}

impl From<broker::Error> for ApiError {
    fn from(e: broker::Error) -> Self {
        match e {
            broker::Error::UnknownFunction { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "function_not_found", e.to_string())
            }
            broker::Error::QueueFull { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", e.to_string())
            }
            broker::Error::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                e.to_string(),
            ),
            broker::Error::Store(e) => ApiError::internal(e),
        }
    }
}

impl From<crate::store::Error> for ApiError {
    fn from(e: crate::store::Error) -> Self {
        ApiError::internal(e)
    }
}

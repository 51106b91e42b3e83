//! Panics in handlers: [`catch_panic`] turns one into a 500 `internal` answer instead of a
//! dropped connection, and [`log_panics`] logs every panic with its backtrace.

use std::panic::AssertUnwindSafe;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;

use super::ApiError;

/// Middleware: runs the rest of the stack, and answers 500 `internal` if it panics. The panic
/// itself is logged by the hook [`log_panics`] installs; this logs the request it broke.
pub(crate) async fn catch_panic(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    match AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(payload) => {
            let message = payload_text(payload.as_ref());
            tracing::error!(%method, %path, panic = %message, "a request handler panicked");
            ApiError::internal(format!(
                "the server failed while answering {method} {path} (the failure is in its log)"
            ))
            .into_response()
        }
    }
}

/// The text a panic was raised with, when it is one.
fn payload_text(payload: &(dyn std::any::Any + Send)) -> &str {
    if let Some(text) = payload.downcast_ref::<&str>() {
        text
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text
    } else {
        "a panic without a message"
    }
}

/// Replaces the process's panic hook with one that logs each panic as an error with its
/// message, location, thread and backtrace (captured whatever `RUST_BACKTRACE` says).
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let backtrace = std::backtrace::Backtrace::force_capture();
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        let thread = std::thread::current();
        tracing::error!(
            panic = %payload_text(info.payload()),
            %location,
            thread = thread.name().unwrap_or("unnamed"),
            "panicked\n{backtrace}"
        );
    }));
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt;

    use super::super::{finish, routes};

    #[tokio::test]
    async fn a_panicking_handler_answers_500_internal_and_the_router_keeps_serving() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let state = crate::api::tests::state(dir.path()).await;
        let panics = || async {
            if true {
                panic!("a test route that always panics");
            }
        };
        let app = finish(routes().route("/test/panic", get(panics)), state);
        let request = |uri: &str| {
            let mut request = Request::get(uri).body(Body::empty()).expect("request");
            // A loopback client: in protected mode it acts as the admin.
            let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 40000));
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            request
        };
        let response = app
            .clone()
            .oneshot(request("/test/panic"))
            .await
            .expect("an answer");
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
        assert_eq!(json["code"], "internal");
        assert!(
            json["error"]
                .as_str()
                .is_some_and(|e| e.contains("/test/panic")),
            "{json}"
        );
        let health = app.oneshot(request("/healthz")).await.expect("an answer");
        assert_eq!(health.status(), StatusCode::OK);
    }
}

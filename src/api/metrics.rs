//! `GET /metrics`, and the layer that counts every HTTP request by method, matched route and
//! status into the same metrics.
//!
//! The route pattern (`/v1/tasks/{id}`), not the path, is the label, so the label set stays as
//! small as the route table whatever clients ask for; a request no route matched counts as
//! `unmatched`. A scrape takes the broker's lock once ([`Broker::live_metrics`]) and encodes
//! off it.
//!
//! [`Broker::live_metrics`]: crate::broker::Broker::live_metrics

use axum::Extension;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState, ErrorCode, access};
use crate::auth::{Caller, policy};

/// `GET /metrics`: every metric in the OpenMetrics text format. Needs the right to list the
/// workers (admins and developers) unless the server runs with `--metrics-open`, where the
/// authentication layer lets the request through without a caller.
pub async fn scrape(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
) -> Result<Response, ApiError> {
    if !state.metrics_open {
        // The authentication layer gives every other request a caller or refuses it.
        let Some(Extension(caller)) = caller else {
            return Err(ApiError::unauthenticated("the metrics need a token"));
        };
        if !policy::may_list_workers(&caller) {
            return Err(access::forbidden(&caller, "read the metrics"));
        }
    }
    let live = state.broker.live_metrics();
    let text = state.broker.store().metrics().encode(&live).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            format!("cannot encode the metrics: {e}"),
        )
    })?;
    let content_type = HeaderValue::from_static(crate::metrics::CONTENT_TYPE);
    Ok(([(header::CONTENT_TYPE, content_type)], text).into_response())
}

/// Counts the request once it is answered (the outermost layer, so refusals, panics answered
/// 500 and unknown routes count too).
pub async fn count_requests(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let response = next.run(request).await;
    state.broker.store().metrics().http_answered(
        method.as_str(),
        route.as_ref().map(MatchedPath::as_str),
        response.status().as_u16(),
    );
    response
}

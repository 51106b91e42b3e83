//! The authentication layer: finds the [`Caller`] of each request and puts it in the request's
//! extensions, where handlers take it as `Extension<Caller>`.
//!
//! While no user exists the server is in protected mode: loopback clients act as the local
//! admin, others are refused with 403 and how to add a user. Once a user exists, a request
//! needs `Authorization: Bearer TOKEN` (401 `unauthenticated` without a valid one), or acts
//! with `serve --anonymous ROLE` when it sends no header. `/healthz` needs nothing, nor does
//! `/metrics` with `serve --metrics-open`.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::auth::policy::{self, Presented, Refusal};
use crate::auth::{Caller, Directory};

/// The routes that need no caller.
const OPEN_PATHS: &[&str] = &["/healthz"];

/// The message of a protected-mode refusal.
pub const PROTECTED_MESSAGE: &str = "faasd is in protected mode: no user exists yet, and only \
     loopback clients are served; on the server's machine run `faasd user add NAME --role admin \
     --url http://127.0.0.1:PORT` (a server listening only on another address must also listen \
     on loopback for this: `serve --listen 0.0.0.0:PORT`), then send its token as \
     `Authorization: Bearer TOKEN` (or `--token` / FAASD_TOKEN)";

/// Finds the caller of `request` (see the module doc) or answers the refusal.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let open = OPEN_PATHS.contains(&path) || super::dashboard::PATHS.contains(&path);
    if open || (state.metrics_open && path == crate::metrics::PATH) {
        return next.run(request).await;
    }
    // Without the peer address (no connection, as in unit tests) the client is not trusted.
    let loopback = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|ConnectInfo(peer)| peer.ip().is_loopback());
    let presented = presented(&state.users, request.headers());
    match policy::identify(state.users.is_empty(), loopback, presented, state.anonymous) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refusal) => refused(refusal).into_response(),
    }
}

/// What the `Authorization` header presents.
fn presented(users: &Directory, headers: &HeaderMap) -> Presented {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Presented::Nothing;
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match token.and_then(|t| users.authenticate(t)) {
        Some(caller) => Presented::Known(caller),
        None => Presented::Unknown,
    }
}

fn refused(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::Protected => ApiError::forbidden(PROTECTED_MESSAGE),
        Refusal::Unauthenticated { sent_token: false } => ApiError::unauthenticated(
            "this request has no token: send `Authorization: Bearer TOKEN` (the CLI takes \
             --token or FAASD_TOKEN; an admin prints one with `faasd user add` or `faasd user token`)",
        ),
        Refusal::Unauthenticated { sent_token: true } => ApiError::unauthenticated(
            "the token is not valid (unknown, revoked, or not a faasd token); ask an admin for \
             a new one with `faasd user token NAME`",
        ),
    }
}

/// 403 `forbidden` for `caller`, naming what it tried.
pub fn forbidden(caller: &Caller, what: &str) -> ApiError {
    ApiError::forbidden(format!("{} ({}) may not {what}", caller.name, caller.role))
}

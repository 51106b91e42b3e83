//! The authentication layer: finds the [`Caller`] of each request and puts it in the request's
//! extensions, where handlers take it as `Extension<Caller>`.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

use crate::auth::Caller;

/// Every request acts as the local admin (no users yet).
pub async fn authenticate(mut request: Request, next: Next) -> Response {
    request.extensions_mut().insert(Caller::local_admin());
    next.run(request).await
}

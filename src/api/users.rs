//! User routes: add, list, show, remove users, issue their tokens, grant and revoke the right
//! to invoke a function; and `whoami`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::access::forbidden;
use super::functions::{rfc3339, validate_name};
use super::{ApiError, AppState, ErrorCode};
use crate::auth::{self, Caller, Role, UserInfo, policy};

/// Names a user may not take: they name callers without a user.
const RESERVED_NAMES: &[&str] = &["anonymous", "local"];

impl From<auth::Error> for ApiError {
    fn from(e: auth::Error) -> Self {
        let status = match &e {
            auth::Error::UserExists { .. } => (StatusCode::CONFLICT, ErrorCode::UserExists),
            auth::Error::UserNotFound { .. } => (StatusCode::NOT_FOUND, ErrorCode::UserNotFound),
            auth::Error::LastAdmin { .. } => (StatusCode::CONFLICT, ErrorCode::LastAdmin),
            auth::Error::Store(store) => return ApiError::store(store),
            auth::Error::Random(_) | auth::Error::CorruptRole { .. } => {
                return ApiError::internal(e);
            }
        };
        ApiError::new(status.0, status.1, e.to_string())
    }
}

/// A user as the API shows it.
#[derive(Debug, Serialize)]
pub struct UserView {
    name: String,
    role: Role,
    created_at: String,
    grants: Vec<String>,
}

impl From<UserInfo> for UserView {
    fn from(u: UserInfo) -> Self {
        UserView {
            name: u.name,
            role: u.role,
            created_at: rfc3339(u.created_ms),
            grants: u.grants,
        }
    }
}

/// The body of `POST /v1/users`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddRequest {
    name: String,
    role: Role,
}

fn check_manage(caller: &Caller, what: &str) -> Result<(), ApiError> {
    if policy::may_manage_users(caller) {
        Ok(())
    } else {
        Err(forbidden(caller, what))
    }
}

fn validate_user_name(name: &str) -> Result<(), ApiError> {
    validate_name(name).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidName,
            format!(
                "invalid user name {name:?}: use 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
            ),
        )
    })?;
    if RESERVED_NAMES.contains(&name) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidName,
            format!("the user name {name:?} is reserved for callers without a user"),
        ));
    }
    Ok(())
}

/// `POST /v1/users`: 201 with the new user's token, the only time it is shown.
pub async fn add(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    check_manage(&caller, "add users")?;
    let body = super::read_body(body, state.max_body_bytes).await?;
    let req: AddRequest = super::parse_json(
        &body,
        r#"user (expected {"name": "...", "role": "admin|developer|invoker"})"#,
    )?;
    validate_user_name(&req.name)?;
    if state.users.is_empty() && req.role != Role::Admin {
        // Protected mode ends with the first user: were it not an admin, no one could manage
        // users any more.
        return Err(ApiError::invalid(format!(
            "the first user must be an admin (--role admin): once {:?} exists every request \
             needs a token, and a {} could not add or manage users",
            req.name, req.role
        ))
        .with("field", "role".into()));
    }
    let (user, token) = state.users.add(&req.name, req.role).await?;
    tracing::info!(user = %user.name, role = %user.role, by = %caller.name, "user added");
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "name": user.name,
            "role": user.role,
            "token": token,
            "created_at": rfc3339(user.created_ms),
        })),
    ))
}

/// `GET /v1/users`.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<UserView>>, ApiError> {
    check_manage(&caller, "list users")?;
    Ok(Json(
        state.users.list().into_iter().map(UserView::from).collect(),
    ))
}

/// `GET /v1/users/{name}`: for admins and the user itself.
pub async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    if !policy::may_read_user(&caller, &name) {
        return Err(forbidden(&caller, "read other users"));
    }
    Ok(Json(UserView::from(state.users.get(&name)?)))
}

/// `DELETE /v1/users/{name}`: 204; the user's token stops working at once.
pub async fn remove(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_manage(&caller, "remove users")?;
    state.users.remove(&name).await?;
    tracing::info!(user = %name, by = %caller.name, "user removed");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/users/{name}/token`: a new token; the old one stops working at once.
pub async fn rotate(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_manage(&caller, "issue tokens")?;
    let token = state.users.rotate(&name).await?;
    tracing::info!(user = %name, by = %caller.name, "token issued");
    Ok(Json(serde_json::json!({ "name": name, "token": token })))
}

/// `PUT /v1/users/{name}/grants/{function}`: 204.
pub async fn grant(
    state: State<AppState>,
    caller: Extension<Caller>,
    Path((name, function)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    set_grant(state, caller, name, function, true).await
}

/// `DELETE /v1/users/{name}/grants/{function}`: 204.
pub async fn revoke(
    state: State<AppState>,
    caller: Extension<Caller>,
    Path((name, function)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    set_grant(state, caller, name, function, false).await
}

async fn set_grant(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    name: String,
    function: String,
    allow: bool,
) -> Result<StatusCode, ApiError> {
    validate_name(&function)?;
    let owner = match state.broker.function(&function) {
        Some(f) => f.owner,
        // Revoking a grant on a function that is gone is allowed to admins (grants of a
        // deleted function are dropped with it, so there is nothing to do).
        None if !allow && caller.is_admin() => {
            state.users.id(&name)?;
            return Ok(StatusCode::NO_CONTENT);
        }
        None => return Err(super::functions::function_not_found(&function)),
    };
    if !policy::may_grant(&caller, owner) {
        return Err(forbidden(
            &caller,
            &format!("grant or revoke {function:?} (only its owner and admins may)"),
        ));
    }
    state.users.set_grant(&name, &function, allow).await?;
    let what = if allow { "granted" } else { "revoked" };
    tracing::info!(user = %name, function = %function, by = %caller.name, "{what}");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/whoami`: the caller's name, role, and whether the server is in protected mode.
pub async fn whoami(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Json<serde_json::Value> {
    let mode = if state.users.is_empty() {
        "protected"
    } else {
        "tokens"
    };
    Json(serde_json::json!({ "name": caller.name, "role": caller.role, "mode": mode }))
}

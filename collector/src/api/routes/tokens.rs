//! API tokens: listed without their secret, created (shown once), deleted.

use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};

use crate::api::{
    auth::{Role, TokenError},
    error::ApiError,
    extract::{Body, P},
    state::ApiState,
};

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Exists(_) | TokenError::LastAdmin(_) => ApiError::Conflict(e.to_string()),
            TokenError::Unknown(_) => ApiError::NotFound(e.to_string()),
            TokenError::BadName { .. } => ApiError::BadRequest(e.to_string()),
            TokenError::NoFile => ApiError::Unavailable(e.to_string()),
            e
            @ (TokenError::Read { .. } | TokenError::Parse { .. } | TokenError::Write { .. } | TokenError::Random) => {
                ApiError::internal("the tokens file cannot be updated", e)
            }
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TokenInfo {
    name: String,
    role: Role,
    created_ns: i64,
}

pub async fn list(State(state): State<ApiState>) -> Json<Vec<TokenInfo>> {
    Json(
        state
            .tokens
            .list()
            .into_iter()
            .map(|t| TokenInfo { name: t.name, role: t.role, created_ns: t.created_ns })
            .collect(),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    name: String,
    role: Role,
}

// No `Debug`: it carries a live token, which must never reach a log.
#[derive(Serialize)]
pub struct TokenCreated {
    name: String,
    role: Role,
    /// Shown once: only its hash is kept.
    token: String,
}

pub async fn create(
    State(state): State<ApiState>,
    Body(req): Body<TokenRequest>,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    let (st, name, role) = (state.clone(), req.name.clone(), req.role);
    // The file is fsynced: off the runtime's threads.
    let token = tokio::task::spawn_blocking(move || st.tokens.add(&name, role))
        .await
        .map_err(|e| ApiError::internal("the token was not created", e))??;
    tracing::info!(name = %req.name, role = %req.role, "api token created");
    Ok((StatusCode::CREATED, Json(TokenCreated { name: req.name, role: req.role, token })))
}

pub async fn delete(State(state): State<ApiState>, P(name): P<String>) -> Result<StatusCode, ApiError> {
    let (st, n) = (state.clone(), name.clone());
    tokio::task::spawn_blocking(move || st.tokens.remove(&n))
        .await
        .map_err(|e| ApiError::internal("the token was not deleted", e))??;
    tracing::info!(%name, "api token deleted");
    Ok(StatusCode::NO_CONTENT)
}

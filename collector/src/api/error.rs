//! The API's one error type: a status and a message that is safe to show to the client, as JSON
//! `{"error": "..."}`; whatever the client must not see (paths, database answers) goes to the log.

use axum::{
    Json,
    extract::rejection::{JsonRejection, PathRejection, QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

/// One problem found in a rule file, as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProblemView {
    pub key: String,
    pub message: String,
}

#[derive(Debug)]
pub enum ApiError {
    /// 401: no token, or one the collector does not know.
    Unauthorized,
    /// 403, naming the caller's role, what was refused and the role it needs.
    Forbidden(String),
    /// 400: a bad body, query or path, naming what was wrong.
    BadRequest(String),
    /// 400 with the list of problems (a rule file that does not validate).
    Invalid { message: String, problems: Vec<ProblemView> },
    /// 404, naming what was not found.
    NotFound(String),
    /// 409: the request conflicts with what is there.
    Conflict(String),
    /// 503: a part of the collector this route needs is off or not ready.
    Unavailable(String),
    /// 501: the configured store cannot answer this.
    NotImplemented(String),
    /// 502: the database failed; `detail` goes to the log only.
    BadGateway { message: String, detail: String },
    /// 500: `detail` goes to the log only.
    Internal { message: String, detail: String },
}

impl ApiError {
    pub fn internal(message: &str, detail: impl std::fmt::Display) -> Self {
        ApiError::Internal { message: message.into(), detail: detail.to_string() }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) | ApiError::Invalid { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            ApiError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the client is told.
    pub fn message(&self) -> &str {
        match self {
            ApiError::Unauthorized => "missing or unknown token",
            ApiError::Forbidden(m)
            | ApiError::BadRequest(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::Unavailable(m)
            | ApiError::NotImplemented(m) => m,
            ApiError::Invalid { message, .. }
            | ApiError::BadGateway { message, .. }
            | ApiError::Internal { message, .. } => message,
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    problems: Option<&'a [ProblemView]>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal { message, detail } => tracing::error!(%detail, "api: {message}"),
            ApiError::BadGateway { message, detail } => tracing::warn!(%detail, "api: {message}"),
            _ => tracing::debug!(status = %self.status(), error = self.message(), "api: request refused"),
        }
        let problems = match &self {
            ApiError::Invalid { problems, .. } => Some(problems.as_slice()),
            _ => None,
        };
        let mut response = (self.status(), Json(Body { error: self.message(), problems })).into_response();
        if matches!(self, ApiError::Unauthorized) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError::BadRequest(format!("bad request body: {}", strip_axum_prefix(&e.body_text())))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::BadRequest(format!("bad query: {}", strip_axum_prefix(&e.body_text())))
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::BadRequest(format!("bad path: {}", e.body_text()))
    }
}

/// axum's rejection texts start with a generic sentence; the serde part after it names the field.
fn strip_axum_prefix(text: &str) -> &str {
    for prefix in [
        "Failed to deserialize the JSON body into the target type: ",
        "Failed to parse the request body as JSON: ",
        "Failed to deserialize query string: ",
    ] {
        if let Some(rest) = text.strip_prefix(prefix) {
            return rest;
        }
    }
    text
}

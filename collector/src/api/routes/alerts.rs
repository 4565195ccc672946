//! Alerts, acknowledgements and silences (the automation's alert book).

use axum::{Extension, Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};

use edgeloop_shared::clock::now_ns;

use crate::{
    api::{
        auth::Caller,
        error::ApiError,
        extract::{Body, P, Q},
        state::ApiState,
    },
    automation::{
        alerts::{AlertError, AlertView},
        muting::{Matcher, Silence, SilenceView},
    },
    model::AlertState,
};

impl From<AlertError> for ApiError {
    fn from(e: AlertError) -> Self {
        match e {
            AlertError::UnknownAlert { .. } | AlertError::UnknownSilence { .. } => ApiError::NotFound(e.to_string()),
            e => ApiError::BadRequest(e.to_string()),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsQuery {
    state: Option<AlertState>,
}

/// Alerts, newest first (by when their condition started).
pub async fn list(State(state): State<ApiState>, Q(q): Q<AlertsQuery>) -> Result<Json<Vec<AlertView>>, ApiError> {
    let mut alerts = state.automation()?.alerts();
    alerts.retain(|v| q.state.is_none_or(|s| v.alert.state == s));
    alerts.sort_by_key(|v| std::cmp::Reverse(v.alert.started_ns));
    Ok(Json(alerts))
}

/// The body of an ack: nothing yet (`{}` or empty); unknown fields are refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {}

pub async fn ack(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    P(fingerprint): P<String>,
    Body(_): Body<AckRequest>,
) -> Result<Json<AlertView>, ApiError> {
    Ok(Json(state.automation()?.ack(&fingerprint, &caller.name)?))
}

pub async fn silences(State(state): State<ApiState>) -> Result<Json<Vec<SilenceView>>, ApiError> {
    Ok(Json(state.automation()?.silences()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SilenceRequest {
    matchers: Vec<Matcher>,
    /// How long from now; or `ends_ns`.
    duration_s: Option<u64>,
    ends_ns: Option<i64>,
    /// When it starts (default: now).
    starts_ns: Option<i64>,
    comment: String,
}

#[derive(Debug, Serialize)]
pub struct SilenceCreated {
    id: String,
}

pub async fn silence(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Body(req): Body<SilenceRequest>,
) -> Result<Json<SilenceCreated>, ApiError> {
    let automation = state.automation()?;
    let starts_ns = req.starts_ns.unwrap_or_else(now_ns);
    let ends_ns = match (req.duration_s, req.ends_ns) {
        // Refused, not saturated: a silence "until the end of time" is exactly what must not pass.
        (Some(d), None) => i64::try_from(d)
            .ok()
            .and_then(|d| d.checked_mul(1_000_000_000))
            .and_then(|d| starts_ns.checked_add(d))
            .ok_or_else(|| ApiError::BadRequest(format!("duration_s {d} is too long")))?,
        (None, Some(e)) => e,
        _ => return Err(ApiError::BadRequest("give either duration_s or ends_ns (one of them)".into())),
    };
    let silence = Silence { matchers: req.matchers, starts_ns, ends_ns, created_by: caller.name, comment: req.comment };
    Ok(Json(SilenceCreated { id: automation.silence(silence)? }))
}

pub async fn expire(State(state): State<ApiState>, P(id): P<String>) -> Result<StatusCode, ApiError> {
    state.automation()?.expire_silence(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

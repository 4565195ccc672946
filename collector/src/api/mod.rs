//! The collector's HTTP API, the fleet dashboard, `/metrics` and `/fleet`, on `[api] listen`.
//!
//! Every `/api/v1/*` route needs `Authorization: Bearer <token>` (the stream also takes
//! `?token=`, as `EventSource` cannot set headers) and a role at least the route's ([`auth`]).
//! Errors are JSON `{"error": "..."}` ([`error::ApiError`]).
//!
//! | method path | role |
//! |---|---|
//! | GET /api/v1/me | viewer |
//! | GET /api/v1/agents | viewer |
//! | GET /api/v1/agents/{agent} | viewer |
//! | GET /api/v1/agents/{agent}/series | viewer |
//! | GET /api/v1/agents/{agent}/rules | viewer |
//! | POST /api/v1/agents/{agent}/rules | engineer (refusals audited) |
//! | POST /api/v1/agents/{agent}/commands | operator (refusals audited) |
//! | GET /api/v1/events | viewer |
//! | GET /api/v1/alerts | viewer |
//! | POST /api/v1/alerts/{fingerprint}/ack | maintenance |
//! | GET /api/v1/silences | viewer |
//! | POST /api/v1/silences | maintenance |
//! | DELETE /api/v1/silences/{id} | maintenance |
//! | POST /api/v1/rules/check | engineer |
//! | GET /api/v1/commands/approvals | viewer |
//! | POST /api/v1/commands/approvals/{id}/approve | operator (refusals audited) |
//! | GET /api/v1/audit | maintenance |
//! | GET /api/v1/tokens | admin |
//! | POST /api/v1/tokens | admin |
//! | DELETE /api/v1/tokens/{name} | admin |
//! | GET /api/v1/stream | viewer (server-sent events) |
//! | GET /api/openapi.json, /, /app.js, /app.css, /metrics, /fleet | none |
//!
//! The list above is [`table::ROUTES`]: the one table that registers the axum routes, gates
//! them by role and writes the OpenAPI document ([`openapi`]), so router, roles and spec cannot
//! drift apart.
//!
//! # Layout
//! - [`auth`]: tokens (hashed, constant-time compare) and roles.
//! - [`error`]: `ApiError`, the one error type, as JSON.
//! - [`table`]: the route table and the role gate.
//! - [`extract`]: body, query and path extractors whose rejections are `ApiError`s.
//! - [`openapi`]: the OpenAPI 3.0 document, built from the table.
//! - `routes/`: the handlers, by area (`fleet`, `alerts`, `commands`, `tokens`, `stream`, `files`).

pub mod auth;
pub mod error;
pub mod extract;
pub mod openapi;
mod routes;
pub mod table;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{automation::Automation, fleet::Fleet, live::Live, stats::CollectorStats, store::Store};

pub use self::{
    auth::{Caller, Role, Tokens},
    error::ApiError,
};

/// What the API reads and drives.
pub struct Parts {
    pub stats: Arc<CollectorStats>,
    pub fleet: Arc<Fleet>,
    pub live: Arc<Live>,
    pub automation: Option<Arc<Automation>>,
    pub store: Arc<Store>,
    pub tokens: Tokens,
    /// Ends the server-sent event streams.
    pub shutdown: CancellationToken,
}

/// The handlers' shared state.
#[derive(Clone)]
pub struct ApiState(Arc<Shared>);

pub struct Shared {
    pub parts: Parts,
    /// agent → the rule file last pushed to it through this collector.
    pub pushed_rules: Mutex<HashMap<String, String>>,
}

impl std::ops::Deref for ApiState {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.0.parts
    }
}

impl ApiState {
    pub fn new(parts: Parts) -> Self {
        Self(Arc::new(Shared { parts, pushed_rules: Mutex::default() }))
    }

    fn pushed_rules(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.0.pushed_rules.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The automation engine, or 503 when `[automation]` is not configured.
    pub fn automation(&self) -> Result<&Arc<Automation>, ApiError> {
        self.parts_automation().ok_or_else(|| {
            ApiError::Unavailable("automation is not configured ([automation] in the collector config)".into())
        })
    }

    fn parts_automation(&self) -> Option<&Arc<Automation>> {
        self.0.parts.automation.as_ref()
    }

    /// Whether the collector has heard of `agent` (fleet registry or live cache).
    pub fn knows(&self, agent: &str) -> bool {
        self.fleet.agents().iter().any(|a| a.agent == agent)
            || !self.live.latest(agent).is_empty()
            || self.live.site(agent).is_some()
    }

    /// 404 naming the agent when it is unknown.
    pub fn require_agent(&self, agent: &str) -> Result<(), ApiError> {
        if self.knows(agent) {
            Ok(())
        } else {
            Err(ApiError::NotFound(format!("no agent named {agent:?} is known to this collector")))
        }
    }
}

/// The whole router: the API, the dashboard, `/metrics` and `/fleet`.
pub fn router(state: ApiState) -> Router {
    table::register(state)
}

/// Serves the router on `listener` until `shutdown` (streams end then too).
pub async fn serve(listener: TcpListener, state: ApiState, shutdown: CancellationToken) {
    if state.tokens.path().is_none() {
        tracing::warn!(
            "the API has no tokens file: /api/v1 answers 401 to everything; set [api] tokens_file and create a token \
             with `edgeloop-collector token add NAME --role admin --tokens FILE`"
        );
    } else if state.tokens.is_empty() {
        tracing::warn!(
            file = %state.tokens.path().map(|p| p.display().to_string()).unwrap_or_default(),
            "the API's tokens file holds no token yet: create one with `edgeloop-collector token add NAME --role admin \
             --tokens FILE`"
        );
    }
    let app = router(state);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
        tracing::error!(error = %e, "the API server stopped");
    }
}

#[cfg(test)]
mod tests;

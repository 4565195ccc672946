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
//! The list above is [`table::routes`]: the one table that registers the axum routes, gates
//! them by role and writes the OpenAPI document ([`openapi`]), so router, roles and spec cannot
//! drift apart.
//!
//! # Layout
//! - [`auth`]: tokens (hashed, constant-time compare) and roles.
//! - [`error`]: `ApiError`, the one error type, as JSON.
//! - [`state`]: what the handlers share (`ApiState`).
//! - [`route`]: what a route is (method, access, reply, parameters) and the role check handlers make.
//! - [`extract`]: body, query and path extractors whose rejections are `ApiError`s.
//! - `routes/`: the handlers, by area (`fleet`, `alerts`, `commands`, `tokens`, `stream`, `files`).
//! - [`openapi`]: the OpenAPI 3.0 document, written from a list of routes.
//! - [`table`]: the route table (every handler with its route), the role gate, `/api/openapi.json`.
//!
//! Imports point down that list: handlers know the route types and the state, never the table;
//! the table knows the handlers and the OpenAPI writer.

pub mod auth;
pub mod error;
pub mod extract;
pub mod openapi;
pub mod route;
mod routes;
pub mod state;
pub mod table;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use self::{
    auth::{Caller, Role, Tokens},
    error::ApiError,
    state::{ApiState, Parts},
};

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

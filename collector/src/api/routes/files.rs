//! What needs no token: the dashboard (embedded at build time), `/metrics` and `/fleet` (as
//! `crate::metrics` has always served them). The OpenAPI document is the route table's own.

use axum::{
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};

use crate::api::state::ApiState;

fn file(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

pub async fn index() -> Response {
    file("text/html; charset=utf-8", include_str!("../dashboard/index.html"))
}

pub async fn app_js() -> Response {
    file("text/javascript; charset=utf-8", include_str!("../dashboard/app.js"))
}

pub async fn app_css() -> Response {
    file("text/css; charset=utf-8", include_str!("../dashboard/app.css"))
}

pub async fn metrics(State(state): State<ApiState>) -> Response {
    let mut body = crate::metrics::prometheus(&state.stats, &state.fleet);
    if let Some(automation) = &state.automation {
        let mut e = edgeloop_shared::http::Exposition::default();
        crate::notify::expose(&automation.notifier_stats(), &mut e);
        body.push_str(&e.finish());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

pub async fn fleet(State(state): State<ApiState>) -> Response {
    let body = serde_json::to_string_pretty(&state.fleet.agents()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

//! The route table: every route's method, path, least role, summary and JSON shapes, in one
//! list that registers the axum routes ([`register`]), gates them by role (`gate`) and is
//! written out as the OpenAPI document ([`super::openapi`], served here on `/api/openapi.json`).
//! A route added here is routed, guarded and documented at once; one missing here does not exist.

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderMap, Method as HttpMethod, Uri, header},
    middleware::{Next, from_fn_with_state},
    response::{IntoResponse, Response},
    routing::on,
};

use super::{
    auth::Role,
    error::ApiError,
    openapi,
    route::{Access, Method, Param, Reply, Required, RouteSpec, forbidden, param, route},
    routes::{alerts, commands, files, fleet, stream, tokens},
    state::ApiState,
};

const SERIES_QUERY: &[Param; 4] = &[
    param("sensor", "string", true, "Sensor name"),
    param("since_ns", "integer", false, "Range start, Unix ns (default: 15 minutes before until_ns)"),
    param("until_ns", "integer", false, "Range end, Unix ns (default: now)"),
    param("max_points", "integer", false, "At most this many points (default 600, at most 10000)"),
];
const EVENTS_QUERY: &[Param; 2] = &[
    param("agent", "string", false, "Only this agent's events"),
    param("limit", "integer", false, "At most this many (default 200, at most 2000)"),
];
const ALERTS_QUERY: &[Param; 1] = &[param("state", "string", false, "firing, pending or resolved")];
const AUDIT_QUERY: &[Param; 1] = &[param("limit", "integer", false, "At most this many (default 200, at most 10000)")];
const STREAM_QUERY: &[Param; 3] = &[
    param("token", "string", false, "The token, for clients that cannot set headers (EventSource)"),
    param("agent", "string", false, "Only this agent's readings"),
    param("readings", "boolean", false, "false: no reading events (a fleet view that draws none); default true"),
];

/// Every route the collector serves.
pub fn routes() -> Vec<RouteSpec> {
    use Access::{Command, Public, Role as R};
    use Method::{Delete, Get, Post};
    use Reply::{Array, Empty, Json, Other};
    use Role::{Admin, Engineer, Maintenance, Operator, Viewer};
    let v = R(Viewer);
    vec![
        route(Get, "/api/v1/me", v, "read", "Who the token belongs to", None, 200, Json("Me"), |m| on(m, fleet::me)),
        route(Get, "/api/v1/agents", v, "read", "Every agent with its health", None, 200, Array("AgentSummary"), |m| {
            on(m, fleet::agents)
        }),
        route(
            Get,
            "/api/v1/agents/{agent}",
            v,
            "read",
            "One agent and its sensors' latest readings",
            None,
            200,
            Json("AgentDetail"),
            |m| on(m, fleet::agent),
        ),
        route(
            Get,
            "/api/v1/agents/{agent}/series",
            v,
            "read",
            "A sensor's readings over a time range, downsampled (the recent window from memory, older from the store)",
            None,
            200,
            Json("Series"),
            |m| on(m, fleet::series),
        )
        .query(SERIES_QUERY),
        route(
            Get,
            "/api/v1/agents/{agent}/rules",
            v,
            "read",
            "The agent's rule-set version (last RulesLoaded) and the rule file last pushed through this collector",
            None,
            200,
            Json("AgentRules"),
            |m| on(m, commands::agent_rules),
        ),
        route(
            Post,
            "/api/v1/agents/{agent}/rules",
            Command(Engineer),
            "push_rules",
            "Check a rule file and push it to the agent (signed command)",
            Some("PushRulesRequest"),
            202,
            Json("CommandAccepted"),
            |m| on(m, commands::push_rules),
        ),
        route(
            Post,
            "/api/v1/agents/{agent}/commands",
            Command(Operator),
            "send commands",
            "Shut the machine down or reset a latched rule (signed command)",
            Some("CommandRequest"),
            202,
            Json("CommandAccepted"),
            |m| on(m, commands::command),
        ),
        route(Get, "/api/v1/events", v, "read", "Latest agent events, newest first", None, 200, Array("Event"), |m| {
            on(m, fleet::events)
        })
        .query(EVENTS_QUERY),
        route(Get, "/api/v1/alerts", v, "read", "Alerts, newest first", None, 200, Array("AlertView"), |m| {
            on(m, alerts::list)
        })
        .query(ALERTS_QUERY),
        route(
            Post,
            "/api/v1/alerts/{fingerprint}/ack",
            R(Maintenance),
            "acknowledge alerts",
            "Acknowledge an alert (you take care of it)",
            Some("AckRequest"),
            200,
            Json("AlertView"),
            |m| on(m, alerts::ack),
        ),
        route(Get, "/api/v1/silences", v, "read", "Silences", None, 200, Array("SilenceView"), |m| {
            on(m, alerts::silences)
        }),
        route(
            Post,
            "/api/v1/silences",
            R(Maintenance),
            "create silences",
            "Mute matching alerts for a while",
            Some("SilenceRequest"),
            200,
            Json("SilenceCreated"),
            |m| on(m, alerts::silence),
        ),
        route(
            Delete,
            "/api/v1/silences/{id}",
            R(Maintenance),
            "expire silences",
            "End a silence now",
            None,
            204,
            Empty,
            |m| on(m, alerts::expire),
        ),
        route(
            Post,
            "/api/v1/rules/check",
            R(Engineer),
            "check rules",
            "Check a rule file with the agent's own validator",
            Some("RulesCheckRequest"),
            200,
            Json("RulesCheck"),
            |m| on(m, commands::check_rules),
        ),
        route(
            Get,
            "/api/v1/commands/approvals",
            v,
            "read",
            "Commands from automation rules awaiting a person",
            None,
            200,
            Array("Approval"),
            |m| on(m, commands::approvals),
        ),
        route(
            Post,
            "/api/v1/commands/approvals/{id}/approve",
            Command(Operator),
            "approve commands",
            "Approve a held command: it is signed and sent now",
            None,
            202,
            Json("CommandAccepted"),
            |m| on(m, commands::approve),
        ),
        route(
            Get,
            "/api/v1/audit",
            R(Maintenance),
            "read the audit log",
            "The command audit log, newest first",
            None,
            200,
            Array("AuditRecord"),
            |m| on(m, commands::audit),
        )
        .query(AUDIT_QUERY),
        route(
            Get,
            "/api/v1/tokens",
            R(Admin),
            "manage tokens",
            "API tokens (never the tokens themselves)",
            None,
            200,
            Array("TokenInfo"),
            |m| on(m, tokens::list),
        ),
        route(
            Post,
            "/api/v1/tokens",
            R(Admin),
            "manage tokens",
            "Create a token; it is shown once",
            Some("TokenRequest"),
            201,
            Json("TokenCreated"),
            |m| on(m, tokens::create),
        ),
        route(Delete, "/api/v1/tokens/{name}", R(Admin), "manage tokens", "Delete a token", None, 204, Empty, |m| {
            on(m, tokens::delete)
        }),
        RouteSpec {
            token_in_query: true,
            ..route(
                Get,
                "/api/v1/stream",
                v,
                "read",
                "Live updates as server-sent events: `reading` (at most 10/s per series, latest wins), `agents` \
                 (every 2 s), `alerts` (when they change); a comment every 15 s keeps the connection alive",
                None,
                200,
                Other("text/event-stream"),
                |m| on(m, stream::stream),
            )
            .query(STREAM_QUERY)
        },
        route(Get, "/api/openapi.json", Public, "", "This document", None, 200, Other("application/json"), |m| {
            on(m, openapi_json)
        }),
        route(Get, "/", Public, "", "The dashboard", None, 200, Other("text/html"), |m| on(m, files::index)),
        route(Get, "/app.js", Public, "", "The dashboard's script", None, 200, Other("text/javascript"), |m| {
            on(m, files::app_js)
        }),
        route(Get, "/app.css", Public, "", "The dashboard's style sheet", None, 200, Other("text/css"), |m| {
            on(m, files::app_css)
        }),
        route(Get, "/metrics", Public, "", "Prometheus metrics", None, 200, Other("text/plain"), |m| {
            on(m, files::metrics)
        }),
        route(Get, "/fleet", Public, "", "The fleet registry as JSON", None, 200, Other("application/json"), |m| {
            on(m, files::fleet)
        }),
    ]
}

/// Registers every route of [`routes`], each behind the role gate its access names.
pub fn register(state: ApiState) -> Router {
    let mut router: Router<ApiState> = Router::new();
    for spec in routes() {
        let mut endpoint = (spec.handler)(spec.method.filter());
        if spec.access != Access::Public {
            let gate_state =
                Gate { state: state.clone(), access: spec.access, what: spec.what, query: spec.token_in_query };
            endpoint = endpoint.route_layer(from_fn_with_state(gate_state, gate));
        }
        router = router.route(spec.path, endpoint);
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// The dashboard's pages and scripts come only from this origin and never inside another site's
/// frame (clickjacking an operator into a shutdown); no response is sniffed into another type or
/// leaks its URL (which may carry the SSE stream's token) as a referrer. The dashboard has no
/// inline script or style, so the policy needs no exception.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                                       connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, header::HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_FRAME_OPTIONS, header::HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, header::HeaderValue::from_static("no-referrer"));
    response
}

/// The OpenAPI document of [`routes`].
async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi::document(&routes()).to_string()).into_response()
}

async fn not_found(method: HttpMethod, uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route {method} {} (see /api/openapi.json)", uri.path()))
}

async fn method_not_allowed(method: HttpMethod, uri: Uri) -> Response {
    let mut r = ApiError::BadRequest(format!("{method} is not allowed on {} (see /api/openapi.json)", uri.path()))
        .into_response();
    *r.status_mut() = axum::http::StatusCode::METHOD_NOT_ALLOWED;
    r
}

#[derive(Clone)]
struct Gate {
    state: ApiState,
    access: Access,
    what: &'static str,
    query: bool,
}

/// Authenticates the caller (401 otherwise), checks the route's role (403) unless the handler
/// does, and hands the handler the [`Caller`] and [`Required`] as request extensions.
async fn gate(State(g): State<Gate>, mut req: Request, next: Next) -> Response {
    let Some(needs) = g.access.role() else { return next.run(req).await };
    let token = bearer(req.headers()).or_else(|| if g.query { query_token(req.uri()) } else { None });
    let Some(caller) = token.and_then(|t| g.state.tokens.check(&t)) else {
        return ApiError::Unauthorized.into_response();
    };
    if matches!(g.access, Access::Role(_)) && caller.role < needs {
        tracing::info!(caller = %caller.name, role = %caller.role, path = %req.uri().path(), "api: role refused");
        return forbidden(&caller, g.what, needs).into_response();
    }
    req.extensions_mut().insert(Required { role: needs, what: g.what });
    req.extensions_mut().insert(caller);
    next.run(req).await
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

fn query_token(uri: &Uri) -> Option<String> {
    let axum::extract::Query(q) =
        axum::extract::Query::<std::collections::HashMap<String, String>>::try_from_uri(uri).ok()?;
    q.get("token").cloned()
}

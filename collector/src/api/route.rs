//! What a route is: its method, path, who may call it, what it takes and answers, and its
//! handler. The route table (`table.rs`) lists every route in these terms; the OpenAPI
//! writer reads them; a handler that checks the caller's role itself ([`Required`]) refuses with
//! [`forbidden`].

use axum::routing::{MethodFilter, MethodRouter};

use super::{
    auth::{Caller, Role},
    error::ApiError,
    state::ApiState,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Delete,
}

impl Method {
    pub const fn name(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Post => "post",
            Method::Delete => "delete",
        }
    }

    pub fn filter(self) -> MethodFilter {
        match self {
            Method::Get => MethodFilter::GET,
            Method::Post => MethodFilter::POST,
            Method::Delete => MethodFilter::DELETE,
        }
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed.
    Public,
    /// A token of this role or above; checked before the handler runs.
    Role(Role),
    /// A token of this role or above for a command; the handler checks the role itself, so that
    /// a refusal is written to the audit log with the agent and action it was about.
    Command(Role),
}

impl Access {
    pub fn role(self) -> Option<Role> {
        match self {
            Access::Public => None,
            Access::Role(r) | Access::Command(r) => Some(r),
        }
    }
}

/// What a route answers on success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// No body (204).
    Empty,
    /// One JSON object of this schema (`components.schemas`).
    Json(&'static str),
    /// A JSON array of this schema.
    Array(&'static str),
    /// Not JSON: this content type.
    Other(&'static str),
}

/// One query parameter.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    /// `string` or `integer`.
    pub kind: &'static str,
    pub required: bool,
    pub description: &'static str,
}

pub const fn param(name: &'static str, kind: &'static str, required: bool, description: &'static str) -> Param {
    Param { name, kind, required, description }
}

/// One route.
#[derive(Clone)]
pub struct RouteSpec {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    /// What a refused caller may not do: "role viewer may not {what} (needs operator)".
    pub what: &'static str,
    pub summary: &'static str,
    pub query: &'static [Param],
    /// The request body's schema.
    pub body: Option<&'static str>,
    pub status: u16,
    pub reply: Reply,
    /// The token may come as `?token=` (server-sent events: `EventSource` sets no headers).
    pub token_in_query: bool,
    pub handler: fn(MethodFilter) -> MethodRouter<ApiState>,
}

#[allow(clippy::too_many_arguments)]
pub fn route(
    method: Method,
    path: &'static str,
    access: Access,
    what: &'static str,
    summary: &'static str,
    body: Option<&'static str>,
    status: u16,
    reply: Reply,
    handler: fn(MethodFilter) -> MethodRouter<ApiState>,
) -> RouteSpec {
    RouteSpec { method, path, access, what, summary, query: &[], body, status, reply, token_in_query: false, handler }
}

impl RouteSpec {
    pub fn query(mut self, query: &'static [Param]) -> Self {
        self.query = query;
        self
    }
}

/// The least role a route needs and what it does, for a handler that checks the role itself.
#[derive(Debug, Clone, Copy)]
pub struct Required {
    pub role: Role,
    pub what: &'static str,
}

/// The refusal for a caller below `needs`.
pub fn forbidden(caller: &Caller, what: &str, needs: Role) -> ApiError {
    ApiError::Forbidden(format!("role {} may not {what} (needs {needs})", caller.role))
}

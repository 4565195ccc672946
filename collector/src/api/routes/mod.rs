//! The handlers, by area.
//!
//! - [`fleet`]: who am I, agents, their series and events.
//! - [`alerts`]: alerts, acks, silences.
//! - [`commands`]: rule checks and pushes, commands, approvals, the audit log.
//! - [`tokens`]: API tokens.
//! - [`stream`]: server-sent events.
//! - [`files`]: the OpenAPI document, the dashboard, `/metrics` and `/fleet`.

pub mod alerts;
pub mod commands;
pub mod files;
pub mod fleet;
pub mod stream;
pub mod tokens;

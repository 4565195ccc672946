//! Central automation (work in progress).
pub mod alerts;
pub mod commands;
pub mod detect;
pub mod engine;
pub mod model;
pub mod monitor;
pub mod notify;
pub mod predict;
pub mod rules;
pub mod synthetic;

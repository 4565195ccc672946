//! Local safety rules, as both ends of edgeloop understand them: the agent evaluates them on its
//! fast path (adding the pipeline stage and the actions), the collector checks rule files pushed
//! over its API and replays recordings (`rules test`). Pure and synchronous: time is an input, no
//! runtime, no database, no transport.
//!
//! # Layout
//! - [`config`]: the rule file (rules and actions keyed by id), strict parsing and validation.
//! - [`engine`]: the pure rule state machines (hysteresis, delays, k-of-n, rate, voting, latch).
//! - [`features`]: window features for rules (vibration RMS, kurtosis, velocity, bands, ISO zones).
//! - [`record`]: recordings of the rules' input (JSON Lines) and the bounded recorder that writes them.
//! - [`replay`]: runs a recording through the rules on simulated time and checks expected trips.

pub mod config;
pub mod engine;
pub mod features;
pub mod record;
pub mod replay;

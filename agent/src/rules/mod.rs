//! Local safety rules: evaluated on the fast path, before a reading is written anywhere.
//!
//! - [`config`]: the rule file (rules and actions keyed by id), strict parsing and validation.
//! - [`engine`]: the pure rule state machines (hysteresis, delays, k-of-n, rate, voting, latch).
//! - [`stage`]: the pipeline stage between `normalise` and the buffer; it fires actions inline
//!   and persists latches.

pub mod config;
pub mod engine;
pub mod stage;

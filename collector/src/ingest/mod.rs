//! Ingest: consume telemetry batches from MQTT, store them, acknowledge them end to end, and send
//! on what was stored ([`Outputs`]).
//!
//! # Layout
//! - [`consumer`]: the consumer (persistent session, manual acks) and the per-batch pipeline.
//! - [`dedup`]: the recently-stored window that answers re-sends without rewriting.

pub mod consumer;
pub mod dedup;

pub use consumer::{IngestSettings, Outputs, WriteBounds, run};

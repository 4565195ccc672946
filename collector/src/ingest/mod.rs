//! Ingest: consume telemetry batches from MQTT, store them, acknowledge them end to end.
//!
//! - [`mqtt`]: the consumer (rumqttc, persistent session, manual acks) and the per-batch pipeline.
//! - [`dedup`]: the recently-stored window that answers re-sends without rewriting.

pub mod dedup;
pub mod mqtt;

pub use mqtt::{IngestSettings, Outputs, WriteBounds, run};

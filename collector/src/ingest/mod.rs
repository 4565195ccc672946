//! Ingest: consume telemetry batches from MQTT, store them, acknowledge them end to end.
//!
//! - [`mqtt`]: the consumer (rumqttc, persistent session, manual acks) and the per-batch pipeline.
//! - [`client`]: the MQTT connection in either protocol version (3.1.1 or 5).
//! - [`dedup`]: the recently-stored window that answers re-sends without rewriting.

pub mod client;
pub mod dedup;
pub mod mqtt;

pub use mqtt::{IngestSettings, Tap, WriteBounds, run};

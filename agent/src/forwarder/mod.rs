//! The uplink: sends sealed batches to the collector and removes each from the buffer only when
//! the collector's end-to-end ack says it is stored.
//!
//! - [`window`]: the in-flight window, a pure state machine (what to send, re-send, forget).
//! - [`mqtt`]: the MQTT transport (rumqttc, QoS 1) that drives the window.
//!
//! rumqttc drops un-acked publishes when a broker restarts without the session, so the forwarder
//! never relies on MQTT delivery: after every (re)connect it re-sends its whole window, and a batch
//! whose ack has not come within `ack_timeout` is sent again. The collector deduplicates by
//! `(agent, seq)`; the database overwrites identical points.

pub mod mqtt;
pub mod window;

pub use mqtt::{UplinkSettings, run};

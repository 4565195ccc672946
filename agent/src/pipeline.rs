//! What flows between the agent's stages, defined upstream of all of them so that each stage
//! imports only from here, never from a stage after it:
//!
//! ```text
//! sources ──Observation──► normalise ──Record──► rules stage ──Record──► buffer ──► forwarder
//!                                                     └──LatchChange──► buffer (latches)
//! ```

pub use edgeloop_shared::model::Record;

/// What a source saw, about one sensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Index of the source in the agent's source table (its staleness and clock policy).
    pub source: u16,
    pub sensor: String,
    pub kind: ObservationKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ObservationKind {
    /// A value; `device_ts_ns` when the device has its own clock.
    Value { value: f64, device_ts_ns: Option<i64>, received_ns: i64 },
    /// Something arrived for this sensor but could not be used (garbage is a health condition).
    Error,
    /// The device is alive though it sent no value (e.g. a sensor node's heartbeat).
    Alive,
}

/// A rule latched (`Some(since_ns)`) or its latch cleared, from the rules stage to the latch store.
pub type LatchChange = (String, Option<i64>);

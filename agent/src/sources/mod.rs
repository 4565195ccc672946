//! Where readings come from, and the `normalise` stage that every reading passes first.
//!
//! Each source is a task that turns what a device sends into [`Observation`]s on a bounded
//! channel (a full channel makes the source wait: explicit backpressure). The normalise task
//! owns sensor health and time: it stamps readings, distrusts far-off device clocks, and turns a
//! silent sensor into a `SensorStale` event that travels like any reading.
//!
//! - [`simulated`]: a simulated machine (temperature + vibration), for the demo and load tests.
//! - [`serial`]: sensor nodes on serial ports (the shared COBS/postcard/CRC frame); commands go
//!   back down the same port.
//! - [`mqtt`]: MQTT sensors through the gateway's embedded broker or the site's broker.
//! - [`payload`]: MQTT payload mapping (plain numbers, JSON field paths, the binary reading).
//! - [`health`]: per-sensor last seen, rate, errors and staleness.
//! - [`normalise`]: the stage task tying health and time together.

pub mod health;
pub mod mqtt;
pub mod normalise;
pub mod payload;
pub mod serial;
pub mod simulated;

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::stats::{AgentStats, SourceCounters};

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

/// What every source task gets.
pub struct SourceContext {
    pub index: u16,
    pub id: String,
    pub out: mpsc::Sender<Observation>,
    pub counters: Arc<SourceCounters>,
    pub stats: Arc<AgentStats>,
    pub shutdown: CancellationToken,
}

impl SourceContext {
    /// Sends one observation; `false` when the pipeline is gone or shutting down.
    pub async fn emit(&self, sensor: String, kind: ObservationKind) -> bool {
        let is_value = matches!(kind, ObservationKind::Value { .. });
        let obs = Observation { source: self.index, sensor, kind };
        let sent = tokio::select! {
            r = self.out.send(obs) => r.is_ok(),
            _ = self.shutdown.cancelled() => false,
        };
        // Counted once handed on, so "produced" never includes a reading dropped at shutdown.
        if sent && is_value {
            self.counters.readings.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.stats.produced.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        sent
    }
}

/// The gateway's clock, in nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

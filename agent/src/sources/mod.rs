//! Where readings come from: the first stage of the pipeline.
//!
//! Each source is a task that turns what a device sends into [`Observation`]s on a bounded
//! channel (a full channel makes the source wait: explicit backpressure), read by the
//! [`normalise`](crate::normalise) stage.
//!
//! - [`simulated`]: a simulated machine (temperature + vibration), for the demo and load tests.
//! - [`serial`]: sensor nodes on serial ports (the shared COBS/postcard/CRC frame); commands go
//!   back down the same port.
//! - [`mqtt`]: MQTT sensors through the gateway's embedded broker or the site's broker.
//! - [`payload`]: MQTT payload mapping (plain numbers, JSON field paths, the binary reading).
//! - [`health`]: per-sensor last seen, rate, errors and staleness (kept by `normalise`).

pub mod health;
pub mod mqtt;
pub mod payload;
pub mod serial;
pub mod simulated;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    pipeline::{Observation, ObservationKind},
    stats::{AgentStats, SourceCounters},
};

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

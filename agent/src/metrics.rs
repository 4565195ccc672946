//! What the agent tells about itself: a JSON status and Prometheus metrics, served over plain
//! HTTP on `[metrics] listen` (`GET /metrics`, `GET /status`).
//!
//! The server is `edgeloop_shared::http`: tiny on purpose, it runs on the gateway beside the
//! fast path and must not need a web stack.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::Ordering::Relaxed},
    time::Duration,
};

use edgeloop_shared::http::{self, Exposition};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    buffer::Buffer,
    sources::health::SensorHealth,
    stats::{AgentStats, SourceCounters},
};

/// Everything the status is made from; cheap to clone.
#[derive(Clone)]
pub struct Probe {
    pub agent: String,
    pub stats: Arc<AgentStats>,
    pub buffer: Buffer,
    pub sources: BTreeMap<String, Arc<SourceCounters>>,
    pub health: Arc<Mutex<Vec<SensorHealth>>>,
}

/// The uplink as an operator thinks of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UplinkState {
    Offline,
    /// Up, and still sending what piled up while it was down.
    CatchingUp,
    Online,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub agent: String,
    pub version: &'static str,
    pub uplink: UplinkState,
    /// Readings and events waiting for the collector's ack.
    pub backlog_batches: u64,
    pub backlog_readings: u64,
    pub backlog_bytes: u64,
    /// Size of the buffer file on disk (it is reused, so it stays at its high-water mark).
    pub buffer_disk_bytes: u64,
    pub buffer_max_bytes: u64,
    /// Time of the oldest reading or event not yet acknowledged (ns since the epoch).
    pub oldest_unsent_ns: Option<i64>,
    /// Over the agent's whole life (persisted with the buffer).
    pub accepted_readings_total: u64,
    pub dropped_readings_total: u64,
    pub refused_readings_total: u64,
    pub quarantined_batches_total: u64,
    /// Since this process started.
    pub acked_readings: u64,
    pub rejected_readings: u64,
    pub acks_ignored: u64,
    pub batches_sent: u64,
    pub batches_resent: u64,
    pub rules_version: u64,
    pub latched: Vec<String>,
    pub sensors: Vec<SensorStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SensorStatus {
    pub sensor: String,
    pub stale: bool,
    pub readings: u64,
    pub errors: u64,
    pub rate_hz: f64,
    pub silent_for_ms: Option<u64>,
}

impl Probe {
    pub fn status(&self, latched: Vec<String>) -> Status {
        let s = &self.stats;
        let t = self.buffer.totals();
        let uplink = match (s.uplink_connected.load(Relaxed), s.catching_up.load(Relaxed)) {
            (false, _) => UplinkState::Offline,
            (true, true) => UplinkState::CatchingUp,
            (true, false) => UplinkState::Online,
        };
        let sensors = self
            .health
            .lock()
            .map(|h| {
                h.iter()
                    .map(|h| SensorStatus {
                        sensor: h.sensor.clone(),
                        stale: h.stale,
                        readings: h.readings,
                        errors: h.errors,
                        rate_hz: h.rate_hz,
                        silent_for_ms: h.silent_for.map(|d| d.as_millis() as u64),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Status {
            agent: self.agent.clone(),
            version: env!("CARGO_PKG_VERSION"),
            uplink,
            backlog_batches: t.held_batches,
            backlog_readings: t.held_readings,
            backlog_bytes: t.held_bytes,
            buffer_disk_bytes: self.buffer.disk_bytes(),
            buffer_max_bytes: self.buffer.settings().max_bytes,
            oldest_unsent_ns: self.buffer.oldest_unsent_ns(),
            accepted_readings_total: t.accepted_readings,
            dropped_readings_total: t.dropped_readings,
            refused_readings_total: t.refused_readings,
            quarantined_batches_total: t.quarantined_batches,
            acked_readings: s.acked.load(Relaxed),
            rejected_readings: s.rejected.load(Relaxed),
            acks_ignored: s.acks_ignored.load(Relaxed),
            batches_sent: s.batches_sent.load(Relaxed),
            batches_resent: s.batches_resent.load(Relaxed),
            rules_version: s.rules_version.load(Relaxed),
            latched,
            sensors,
        }
    }

    /// The status report sent to the collector (the fleet registry).
    pub fn report(&self, latched: Vec<String>) -> edgeloop_shared::model::AgentReport {
        let status = self.status(latched);
        edgeloop_shared::model::AgentReport {
            version: status.version.into(),
            sent_ns: edgeloop_shared::clock::now_ns(),
            interval_ms: crate::forwarder::mqtt::REPORT_EVERY.as_millis() as u32,
            stale_sensors: status.sensors.iter().filter(|s| s.stale).map(|s| s.sensor.clone()).collect(),
            sensors: status.sensors.into_iter().map(|s| s.sensor).collect(),
            backlog_readings: status.backlog_readings,
            backlog_bytes: status.backlog_bytes,
            oldest_unsent_ns: status.oldest_unsent_ns,
            accepted_total: status.accepted_readings_total,
            dropped_total: status.dropped_readings_total + status.refused_readings_total,
            quarantined_total: status.quarantined_batches_total,
            latched: status.latched,
        }
    }

    /// The Prometheus text exposition of the status and the per-source counters.
    pub fn prometheus(&self, status: &Status) -> String {
        let mut e = Exposition::default();
        let agent = [("agent", status.agent.as_str())];
        let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
            e.metric(&format!("edgeloop_agent_{name}"), kind, help, &agent, value);
        };
        let up = |state| f64::from(u8::from(status.uplink == state));
        metric("uplink_online", "gauge", "1 when the uplink is up (caught up or not)", 1.0 - up(UplinkState::Offline));
        metric(
            "uplink_catching_up",
            "gauge",
            "1 while a backlog from an outage is being sent",
            up(UplinkState::CatchingUp),
        );
        metric("backlog_batches", "gauge", "Batches waiting for the collector's ack", status.backlog_batches as f64);
        metric("backlog_readings", "gauge", "Readings waiting for the collector's ack", status.backlog_readings as f64);
        metric("backlog_bytes", "gauge", "Bytes of batches held in the buffer", status.backlog_bytes as f64);
        metric("buffer_disk_bytes", "gauge", "Size of the buffer file", status.buffer_disk_bytes as f64);
        metric("buffer_max_bytes", "gauge", "The buffer's byte limit", status.buffer_max_bytes as f64);
        let lag = status.oldest_unsent_ns.map_or(0.0, |ts| {
            let now = edgeloop_shared::clock::now_ns();
            Duration::from_nanos(now.saturating_sub(ts).max(0) as u64).as_secs_f64()
        });
        metric("oldest_unsent_age_seconds", "gauge", "Age of the oldest reading not yet acknowledged", lag);
        metric(
            "accepted_readings_total",
            "counter",
            "Readings written to the durable buffer",
            status.accepted_readings_total as f64,
        );
        metric(
            "dropped_readings_total",
            "counter",
            "Accepted readings dropped for room",
            status.dropped_readings_total as f64,
        );
        metric(
            "refused_readings_total",
            "counter",
            "Readings refused by a full buffer",
            status.refused_readings_total as f64,
        );
        metric(
            "quarantined_batches_total",
            "counter",
            "Unreadable batches set aside",
            status.quarantined_batches_total as f64,
        );
        metric(
            "acked_readings_total",
            "counter",
            "Readings the collector confirmed stored (this run)",
            status.acked_readings as f64,
        );
        metric(
            "rejected_readings_total",
            "counter",
            "Readings the collector refused for good (this run)",
            status.rejected_readings as f64,
        );
        metric(
            "acks_ignored_total",
            "counter",
            "Acks not acted on: for another agent or buffer, not in flight, or unreadable (this run)",
            status.acks_ignored as f64,
        );
        metric(
            "batches_sent_total",
            "counter",
            "Batches published, re-sends included (this run)",
            status.batches_sent as f64,
        );
        metric("batches_resent_total", "counter", "Batches published again (this run)", status.batches_resent as f64);
        metric("rules_version", "gauge", "Version of the running rule set", status.rules_version as f64);
        metric("latched_rules", "gauge", "Rules latched (tripped until reset)", status.latched.len() as f64);
        let s = &self.stats;
        metric("actions_fired_total", "counter", "Rule actions handed off", s.actions_fired.load(Relaxed) as f64);
        metric("action_failures_total", "counter", "Rule actions that failed", s.action_failures.load(Relaxed) as f64);
        e.family("edgeloop_agent_commands_total", "counter", "Signed commands by verdict (this run)");
        for (verdict, count) in [("accepted", &s.commands_accepted), ("refused", &s.commands_refused)] {
            e.sample(
                "edgeloop_agent_commands_total",
                &[("agent", &status.agent), ("result", verdict)],
                count.load(Relaxed) as f64,
            );
        }
        type Counter = fn(&SourceCounters) -> u64;
        let per_source: [(&str, &str, Counter); 5] = [
            ("source_readings_total", "Readings taken from the source", |c| c.readings.load(Relaxed)),
            ("source_crc_errors_total", "Frames with a bad CRC", |c| c.crc_errors.load(Relaxed)),
            ("source_short_frames_total", "Frames cut short or not COBS", |c| c.short_frames.load(Relaxed)),
            ("source_oversized_total", "Frames or payloads over the size limit", |c| c.oversized.load(Relaxed)),
            ("source_malformed_total", "Intact frames or payloads that make no reading", |c| c.malformed.load(Relaxed)),
        ];
        for (name, help, get) in per_source {
            let name = format!("edgeloop_agent_{name}");
            e.family(&name, "counter", help);
            for (id, c) in &self.sources {
                e.sample(&name, &[("agent", &status.agent), ("source", id)], get(c) as f64);
            }
        }
        e.family("edgeloop_agent_sensor_stale", "gauge", "1 when the sensor is stale");
        for sensor in &status.sensors {
            e.sample(
                "edgeloop_agent_sensor_stale",
                &[("agent", &status.agent), ("sensor", &sensor.sensor)],
                f64::from(u8::from(sensor.stale)),
            );
        }
        e.finish()
    }
}

/// Serves `/metrics` and `/status` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    probe: Probe,
    latched: impl Fn() -> Vec<String> + Send + Sync + 'static,
    shutdown: CancellationToken,
) {
    let handle = move |path: &str| match path {
        "/metrics" => Some(("200 OK", "text/plain; version=0.0.4", probe.prometheus(&probe.status(latched())))),
        "/status" => Some((
            "200 OK",
            "application/json",
            serde_json::to_string_pretty(&probe.status(latched())).unwrap_or_default(),
        )),
        _ => None,
    };
    http::serve(listener, handle, shutdown.cancelled_owned()).await;
}

/// Binds the metrics endpoint (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    http::bind(addr).await
}

//! What the collector tells about itself and the fleet: Prometheus `/metrics` and the fleet
//! registry as JSON on `/fleet` (both served by the API's router).
//!
//! The fast-data health signals: throughput (points and batches stored, counted once when the
//! database confirmed them), error rate (malformed, spoofed, refused, write errors by HTTP status
//! or kind), whether the database takes writes (`store_up`), processing time and event latency
//! (reading time to stored time) as histograms, queue depth, and per agent: the age of its oldest
//! batch waiting for its ack in the collector, online, its backlog and the
//! age of its oldest unsent reading (the consumer lag, as the agent reports it), and the age of
//! the newest reading stored from it.

use std::sync::atomic::Ordering::Relaxed;

use edgeloop_shared::http::Exposition;

use crate::{
    fleet::Fleet,
    stats::{CollectorStats, Histogram},
};

pub fn prometheus(stats: &CollectorStats, fleet: &Fleet) -> String {
    let mut e = Exposition::default();
    let counters: [(&str, &str, u64); 13] = [
        (
            "batches_received_total",
            "Telemetry messages received, re-sends included",
            stats.batches_received.load(Relaxed),
        ),
        (
            "batches_stored_total",
            "Batches the database confirmed (2xx), each counted once however often it was sent",
            stats.batches_stored.load(Relaxed),
        ),
        (
            "points_stored_total",
            "Points the database confirmed (2xx), each batch counted once however often it was sent",
            stats.points_stored.load(Relaxed),
        ),
        ("duplicates_total", "Re-sent batches answered without writing again", stats.duplicates.load(Relaxed)),
        ("malformed_total", "Messages that are not a valid batch or status", stats.malformed.load(Relaxed)),
        ("spoofed_total", "Batches whose agent id does not match their topic", stats.spoofed.load(Relaxed)),
        ("batches_rejected_total", "Batches the database refused for good", stats.rejected.load(Relaxed)),
        (
            "points_rejected_total",
            "Single points the database refused (the rest stored)",
            stats.points_rejected.load(Relaxed),
        ),
        ("write_retries_total", "Database writes that failed and were retried", stats.write_retries.load(Relaxed)),
        (
            "stale_messages_total",
            "Messages of an earlier broker connection, left for the broker to deliver again",
            stats.stale_messages.load(Relaxed),
        ),
        (
            "acks_not_queued_total",
            "Broker or agent acks that could not be queued (the MQTT client's queue was full)",
            stats.acks_not_queued.load(Relaxed),
        ),
        (
            "broker_disconnects_total",
            "Times the ingest lost its broker connection",
            stats.broker_disconnects.load(Relaxed),
        ),
        (
            "automation_skipped_total",
            "Whole-stream batches the automation did not evaluate (behind, or malformed)",
            stats.automation_skipped.load(Relaxed),
        ),
    ];
    for (name, help, value) in counters {
        e.metric(&format!("edgeloop_collector_{name}"), "counter", help, &[], value as f64);
    }
    if let Some(acl) = stats.broker_acl.get() {
        let refused: [(&str, &str, &std::sync::atomic::AtomicU64); 3] = [
            ("publishes", "Publishes outside the client's own topics, dropped", &acl.publishes),
            ("subscriptions", "Subscriptions outside the client's own topics, refused", &acl.subscriptions),
            ("wills", "Connections refused for a last will outside the client's own topics", &acl.wills),
        ];
        for (what, help, n) in refused {
            let name = format!("edgeloop_collector_broker_refused_{what}_total");
            e.metric(&name, "counter", help, &[], n.load(Relaxed) as f64);
        }
    }
    e.metric(
        "edgeloop_collector_queue_depth",
        "gauge",
        "Messages received and waiting for the ingest worker",
        &[],
        stats.queue_depth.load(Relaxed) as f64,
    );
    e.metric(
        "edgeloop_collector_store_up",
        "gauge",
        "1 while the database takes writes, 0 from a failed write until one succeeds",
        &[],
        f64::from(u8::from(stats.store_up.load(Relaxed))),
    );
    let name = "edgeloop_collector_write_errors_total";
    e.family(name, "counter", "Failed database write attempts, by HTTP status or timeout, connect, other");
    for (kind, n) in stats.write_errors() {
        e.sample(name, &[("kind", &kind)], n as f64);
    }
    let name = "edgeloop_collector_oldest_unacked_seconds";
    e.family(name, "gauge", "Per agent, how long its oldest batch taken by the ingest has waited for its ack");
    for (agent, age) in stats.oldest_unacked() {
        e.sample(name, &[("agent", &agent)], age.as_secs_f64());
    }
    histogram(&mut e, "edgeloop_collector_processing_seconds", "Message taken to message acked", &stats.processing);
    histogram(
        &mut e,
        "edgeloop_collector_event_latency_seconds",
        "Reading time to stored time (newest reading of each batch)",
        &stats.latency,
    );

    let now = edgeloop_shared::clock::now_ns();
    let agents = fleet.agents();
    let age = |ts: i64| ((now - ts).max(0) as f64) / 1e9;
    type Gauge = fn(&crate::fleet::AgentView, &dyn Fn(i64) -> f64) -> Option<f64>;
    let per_agent: [(&str, &str, Gauge); 7] = [
        ("agent_online", "1 while the agent reports (three missed reports or a goodbye: 0)", |a, _| {
            Some(f64::from(u8::from(a.online)))
        }),
        ("agent_last_seen_seconds", "Time since the agent was last heard from", |a, age| {
            Some(age(a.entry.last_seen_ns))
        }),
        ("agent_points_stored_total", "Points stored from the agent (kept across restarts)", |a, _| {
            Some(a.entry.points_stored as f64)
        }),
        ("agent_newest_reading_age_seconds", "Age of the newest reading stored from the agent", |a, age| {
            a.entry.newest_reading_ns.map(age)
        }),
        ("agent_backlog_readings", "Readings waiting in the agent's buffer (its last report)", |a, _| {
            a.entry.report.as_ref().map(|r| r.backlog_readings as f64)
        }),
        (
            "agent_lag_seconds",
            "Consumer lag: age of the agent's oldest unacknowledged reading (its last report)",
            |a, age| a.entry.report.as_ref().map(|r| r.oldest_unsent_ns.map_or(0.0, age)),
        ),
        ("agent_dropped_readings_total", "Readings the agent dropped or refused for room (its last report)", |a, _| {
            a.entry.report.as_ref().map(|r| r.dropped_total as f64)
        }),
    ];
    for (name, help, get) in per_agent {
        let name = format!("edgeloop_collector_{name}");
        let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
        e.family(&name, kind, help);
        for a in &agents {
            if let Some(v) = get(a, &age) {
                e.sample(&name, &[("agent", &a.agent)], v);
            }
        }
    }
    e.finish()
}

fn histogram(e: &mut Exposition, name: &str, help: &str, h: &Histogram) {
    e.family(name, "histogram", help);
    let (buckets, sum) = h.snapshot();
    let bucket = format!("{name}_bucket");
    let mut count = 0;
    for (le, n) in buckets {
        let le = if le.is_infinite() { "+Inf".to_string() } else { le.to_string() };
        e.sample(&bucket, &[("le", &le)], n as f64);
        count = n;
    }
    e.sample(&format!("{name}_sum"), &[], sum);
    e.sample(&format!("{name}_count"), &[], count as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_health_is_exported() {
        let stats = CollectorStats::default();
        let fleet = Fleet::load(None);
        stats.write_failed("timeout");
        stats.write_failed("503");
        stats.set_unacked_since([("gw-1".to_string(), std::time::Instant::now())].into());
        let text = prometheus(&stats, &fleet);
        for line in [
            "edgeloop_collector_store_up 0",
            "edgeloop_collector_write_errors_total{kind=\"503\"} 1",
            "edgeloop_collector_write_errors_total{kind=\"timeout\"} 1",
            "edgeloop_collector_write_retries_total 2",
            "# TYPE edgeloop_collector_oldest_unacked_seconds gauge",
            "edgeloop_collector_oldest_unacked_seconds{agent=\"gw-1\"} ",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        stats.write_succeeded();
        assert!(prometheus(&stats, &fleet).contains("edgeloop_collector_store_up 1"));
    }
}

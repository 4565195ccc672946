//! Counters the collector keeps about its ingest, read by the demo, the logs and the tests.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

#[derive(Debug)]
pub struct CollectorStats {
    /// Telemetry messages received (every re-send counts).
    pub batches_received: AtomicU64,
    /// Batches written to the store and acknowledged.
    pub batches_stored: AtomicU64,
    /// Points in batches written and acknowledged (re-sends answered from the dedup window excluded).
    pub points_stored: AtomicU64,
    /// Re-sent batches answered without writing again.
    pub duplicates: AtomicU64,
    /// Messages that are not a valid batch (bad version, truncated, invalid ids or values).
    pub malformed: AtomicU64,
    /// Batches whose agent id does not match the topic they came on.
    pub spoofed: AtomicU64,
    /// Batches the database refused for good.
    pub rejected: AtomicU64,
    /// Single points the database refused (isolated; the rest of their batch was stored).
    pub points_rejected: AtomicU64,
    /// Failed write attempts that were retried.
    pub write_retries: AtomicU64,
    /// 1 while the store takes writes, 0 from a failed attempt until the next write that succeeds.
    pub store_up: AtomicBool,
    /// Messages of an earlier broker connection that were not acknowledged to the broker (it
    /// redelivers them on the new connection; the dedup window answers the copy).
    pub stale_messages: AtomicU64,
    /// Broker acks and agent acks that could not be queued (the MQTT client's queue was full).
    pub acks_not_queued: AtomicU64,
    /// Times the ingest's broker connection was lost.
    pub broker_disconnects: AtomicU64,
    /// Whole-stream copies the automation did not evaluate (it was behind, or the copy was bad).
    pub automation_skipped: AtomicU64,
    /// Time from taking a message to acking it (decode, write, ack), seconds.
    pub processing: Histogram,
    /// Age of a batch's newest reading when it was stored (reading time to stored time), seconds.
    pub latency: Histogram,
    /// Messages received from the broker and waiting for the ingest worker.
    pub queue_depth: AtomicU64,
    /// What the embedded broker's topic ACL refused, once the broker runs.
    pub broker_acl: std::sync::OnceLock<std::sync::Arc<edgeloop_shared::broker::AclRefusals>>,
    per_agent: Mutex<HashMap<String, AgentIngest>>,
    /// Failed write attempts by how they failed (HTTP status, `timeout`, `connect`, `other`).
    write_errors: Mutex<BTreeMap<String, u64>>,
    /// Per agent, when the oldest of its messages not yet acknowledged was taken.
    unacked_since: Mutex<HashMap<String, Instant>>,
}

/// A Prometheus-style histogram with fixed buckets, lock-free.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// Sum in microseconds (an integer, so it can be atomic).
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum_us: AtomicU64::new(0) }
    }

    pub fn observe(&self, seconds: f64) {
        let seconds = seconds.max(0.0);
        let i = self.bounds.iter().position(|b| seconds <= *b).unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Relaxed);
        }
        self.sum_us.fetch_add((seconds * 1e6) as u64, Relaxed);
    }

    /// `(upper bound, cumulative count)` per bucket, `+Inf` last; and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, f64) {
        let mut total = 0;
        let mut out = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            total += c.load(Relaxed);
            out.push((self.bounds.get(i).copied().unwrap_or(f64::INFINITY), total));
        }
        (out, self.sum_us.load(Relaxed) as f64 / 1e6)
    }
}

const PROCESSING_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];
const LATENCY_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 3600.0, 86400.0];

impl Default for CollectorStats {
    fn default() -> Self {
        Self {
            batches_received: AtomicU64::new(0),
            batches_stored: AtomicU64::new(0),
            points_stored: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            spoofed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            points_rejected: AtomicU64::new(0),
            write_retries: AtomicU64::new(0),
            store_up: AtomicBool::new(true),
            stale_messages: AtomicU64::new(0),
            acks_not_queued: AtomicU64::new(0),
            broker_disconnects: AtomicU64::new(0),
            automation_skipped: AtomicU64::new(0),
            processing: Histogram::new(PROCESSING_BUCKETS),
            latency: Histogram::new(LATENCY_BUCKETS),
            queue_depth: AtomicU64::new(0),
            broker_acl: std::sync::OnceLock::new(),
            per_agent: Mutex::new(HashMap::new()),
            write_errors: Mutex::new(BTreeMap::new()),
            unacked_since: Mutex::new(HashMap::new()),
        }
    }
}

/// What the collector has taken from one agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgentIngest {
    pub batches: u64,
    pub points: u64,
    pub last_seq: u64,
}

impl CollectorStats {
    pub(crate) fn stored(&self, agent: &str, seq: u64, points: u64) {
        self.batches_stored.fetch_add(1, Relaxed);
        self.points_stored.fetch_add(points, Relaxed);
        if let Ok(mut m) = self.per_agent.lock() {
            let a = m.entry(agent.to_owned()).or_default();
            a.batches += 1;
            a.points += points;
            a.last_seq = a.last_seq.max(seq);
        }
    }

    /// A write answered 2xx: the store is up.
    pub(crate) fn write_succeeded(&self) {
        self.store_up.store(true, Relaxed);
    }

    /// A write attempt failed (`label`: the HTTP status or the kind of failure); it is retried.
    pub(crate) fn write_failed(&self, label: &str) {
        self.store_up.store(false, Relaxed);
        self.write_retries.fetch_add(1, Relaxed);
        if let Ok(mut m) = self.write_errors.lock() {
            *m.entry(label.to_owned()).or_default() += 1;
        }
    }

    /// Failed write attempts by how they failed, sorted by label.
    pub fn write_errors(&self) -> Vec<(String, u64)> {
        self.write_errors.lock().map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect()).unwrap_or_default()
    }

    /// Replaces the per-agent oldest un-acknowledged message times (the ingest's pipeline, whole).
    pub(crate) fn set_unacked_since(&self, since: HashMap<String, Instant>) {
        if let Ok(mut m) = self.unacked_since.lock() {
            *m = since;
        }
    }

    /// Per agent, how long its oldest message not yet acknowledged has waited, sorted by agent id.
    pub fn oldest_unacked(&self) -> Vec<(String, Duration)> {
        let mut v: Vec<_> = self
            .unacked_since
            .lock()
            .map(|m| m.iter().map(|(k, t)| (k.clone(), t.elapsed())).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Per-agent ingest, sorted by agent id.
    pub fn agents(&self) -> Vec<(String, AgentIngest)> {
        let mut v: Vec<_> =
            self.per_agent.lock().map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect()).unwrap_or_default();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn agent(&self, agent: &str) -> AgentIngest {
        self.per_agent.lock().map(|m| m.get(agent).copied().unwrap_or_default()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_up_follows_the_last_write_and_errors_count_by_kind() {
        let s = CollectorStats::default();
        assert!(s.store_up.load(Relaxed), "up until a write fails");
        s.write_failed("timeout");
        s.write_failed("503");
        s.write_failed("503");
        assert!(!s.store_up.load(Relaxed));
        assert_eq!(s.write_errors(), vec![("503".to_string(), 2), ("timeout".to_string(), 1)]);
        assert_eq!(s.write_retries.load(Relaxed), 3);
        s.write_succeeded();
        assert!(s.store_up.load(Relaxed));
    }

    #[test]
    fn a_batch_counts_its_points_once() {
        let s = CollectorStats::default();
        s.stored("a", 7, 100);
        assert_eq!(s.points_stored.load(Relaxed), 100);
        assert_eq!(s.agent("a"), AgentIngest { batches: 1, points: 100, last_seq: 7 });
    }
}

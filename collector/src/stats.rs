//! Counters the collector keeps about its ingest, read by the demo, the logs and the tests.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
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
            automation_skipped: AtomicU64::new(0),
            processing: Histogram::new(PROCESSING_BUCKETS),
            latency: Histogram::new(LATENCY_BUCKETS),
            queue_depth: AtomicU64::new(0),
            broker_acl: std::sync::OnceLock::new(),
            per_agent: Mutex::new(HashMap::new()),
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

//! Counters the collector keeps about its ingest, read by the demo, the logs and the tests.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

#[derive(Debug, Default)]
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
    per_agent: Mutex<HashMap<String, AgentIngest>>,
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

//! Counters the agent keeps about itself, shared by every stage (lock-free, cheap to bump on the
//! hot path) and read by the status output, the demo and the tests.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct AgentStats {
    /// Readings the sources produced.
    pub produced: AtomicU64,
    /// Readings durably in the buffer (flushed): from here on they are never lost.
    pub accepted: AtomicU64,
    /// Readings the collector confirmed stored; they have left the buffer.
    pub acked: AtomicU64,
    /// Readings in batches the collector refused for good (reported, then dropped from the buffer).
    pub rejected: AtomicU64,
    /// Readings waiting in the buffer for an ack (including those in flight).
    pub backlog: AtomicU64,
    /// Batches sent, counting every re-send.
    pub batches_sent: AtomicU64,
    /// Batches sent again after a reconnect or an ack timeout.
    pub batches_resent: AtomicU64,
    /// Whether the uplink's MQTT session is up.
    pub uplink_connected: AtomicBool,
}

/// A point-in-time copy of [`AgentStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub produced: u64,
    pub accepted: u64,
    pub acked: u64,
    pub rejected: u64,
    pub backlog: u64,
    pub batches_sent: u64,
    pub batches_resent: u64,
    pub uplink_connected: bool,
}

impl AgentStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            produced: self.produced.load(Relaxed),
            accepted: self.accepted.load(Relaxed),
            acked: self.acked.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            backlog: self.backlog.load(Relaxed),
            batches_sent: self.batches_sent.load(Relaxed),
            batches_resent: self.batches_resent.load(Relaxed),
            uplink_connected: self.uplink_connected.load(Relaxed),
        }
    }
}

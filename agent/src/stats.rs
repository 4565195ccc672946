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
    /// Acks not acted on: for another agent or buffer, for a batch not in flight, or unreadable
    /// (a forgery, or a duplicate answer to a re-send).
    pub acks_ignored: AtomicU64,
    /// Readings waiting in the buffer for an ack (including those in flight).
    pub backlog: AtomicU64,
    /// Batches sent, counting every re-send.
    pub batches_sent: AtomicU64,
    /// Batches sent again after a reconnect or an ack timeout.
    pub batches_resent: AtomicU64,
    /// Whether the uplink's MQTT session is up.
    pub uplink_connected: AtomicBool,
    /// Whether the uplink is up and still sending a backlog from before it came back.
    pub catching_up: AtomicBool,
    /// Accepted readings dropped to make room in a full buffer (this run).
    pub dropped: AtomicU64,
    /// Readings refused by a full buffer under `when_full = "reject_new"` (this run).
    pub refused: AtomicU64,
    /// Events (stale sensors, clock skew, trips) durably in the buffer.
    pub events_accepted: AtomicU64,
    /// Rule actions handed off (a trip command queued, a message published, a program started).
    pub actions_fired: AtomicU64,
    /// Rule actions that could not be handed off or failed (each exec attempt counts).
    pub action_failures: AtomicU64,
    /// Version of the rule set running (1 at start, +1 per accepted hot reload).
    pub rules_version: AtomicU64,
    /// Hot reloads refused (invalid file, or it would drop a latched rule); the old rules kept running.
    pub rules_reload_failures: AtomicU64,
    /// Records the recorder could not keep up with (its queue was full), so not in the recording.
    pub records_not_recorded: AtomicU64,
    /// Signed commands verified and executed successfully (this run).
    pub commands_accepted: AtomicU64,
    /// Commands refused: malformed, commands disabled, bad signature, wrong agent, expired,
    /// replayed, or an action that could not be carried out (this run).
    pub commands_refused: AtomicU64,
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
    pub catching_up: bool,
    pub events_accepted: u64,
    pub dropped: u64,
    pub refused: u64,
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
            catching_up: self.catching_up.load(Relaxed),
            events_accepted: self.events_accepted.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            refused: self.refused.load(Relaxed),
        }
    }
}

/// Counters of one source (a serial port, an MQTT connection, a simulated machine).
#[derive(Debug, Default)]
pub struct SourceCounters {
    /// Frames or messages that decoded.
    pub messages: AtomicU64,
    /// Readings taken from them.
    pub readings: AtomicU64,
    /// Frames with a CRC mismatch (line noise).
    pub crc_errors: AtomicU64,
    /// Frames too short to hold a version and CRC, or not valid COBS (cut in half, noise).
    pub short_frames: AtomicU64,
    /// Frames or payloads over the size limit, dropped whole.
    pub oversized: AtomicU64,
    /// Frames or payloads that arrived intact but do not make a reading (wrong version, unknown
    /// message, unmapped topic, missing JSON field, non-number, invalid sensor id).
    pub malformed: AtomicU64,
    /// Whether the port or connection is up.
    pub up: AtomicBool,
    /// Times the port or connection was (re)opened.
    pub opens: AtomicU64,
}

/// A point-in-time copy of [`SourceCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceSnapshot {
    pub messages: u64,
    pub readings: u64,
    pub crc_errors: u64,
    pub short_frames: u64,
    pub oversized: u64,
    pub malformed: u64,
    pub up: bool,
    pub opens: u64,
}

impl SourceCounters {
    pub fn snapshot(&self) -> SourceSnapshot {
        SourceSnapshot {
            messages: self.messages.load(Relaxed),
            readings: self.readings.load(Relaxed),
            crc_errors: self.crc_errors.load(Relaxed),
            short_frames: self.short_frames.load(Relaxed),
            oversized: self.oversized.load(Relaxed),
            malformed: self.malformed.load(Relaxed),
            up: self.up.load(Relaxed),
            opens: self.opens.load(Relaxed),
        }
    }
}

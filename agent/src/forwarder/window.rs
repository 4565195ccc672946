//! The in-flight window of the forwarder.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use crate::buffer::StoredBatch;

#[derive(Debug)]
struct InFlight {
    /// The identity of the buffer that sealed it: an ack must name the same.
    buffer: u64,
    readings: u32,
    payload: Vec<u8>,
    /// `None`: not sent on the current connection yet.
    sent_at: Option<Instant>,
    sends: u32,
}

/// Batches loaded from the buffer, keyed by sequence number, until their ack arrives.
#[derive(Debug)]
pub struct Window {
    max: usize,
    entries: BTreeMap<u64, InFlight>,
    /// Highest sequence number ever loaded: the next load starts after it.
    cursor: Option<u64>,
}

/// One batch to put on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Send<'a> {
    pub seq: u64,
    pub payload: &'a [u8],
    pub resend: bool,
}

impl Window {
    pub fn new(max: usize) -> Self {
        Self { max: max.max(1), entries: BTreeMap::new(), cursor: None }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many more batches may be loaded.
    pub fn free(&self) -> usize {
        self.max - self.entries.len().min(self.max)
    }

    pub fn cursor(&self) -> Option<u64> {
        self.cursor
    }

    pub fn load(&mut self, batches: Vec<StoredBatch>) {
        for b in batches {
            self.cursor = Some(self.cursor.map_or(b.seq, |c| c.max(b.seq)));
            let f = InFlight { buffer: b.buffer, readings: b.readings, payload: b.payload, sent_at: None, sends: 0 };
            self.entries.insert(b.seq, f);
        }
    }

    /// Batches due now: never sent on this connection, or sent longer than `ack_timeout` ago.
    pub fn due(&self, now: Instant, ack_timeout: Duration) -> Vec<u64> {
        self.entries
            .iter()
            .filter(|(_, f)| f.sent_at.is_none_or(|t| now.duration_since(t) >= ack_timeout))
            .map(|(&seq, _)| seq)
            .collect()
    }

    pub fn get(&self, seq: u64) -> Option<Send<'_>> {
        self.entries.get(&seq).map(|f| Send { seq, payload: &f.payload, resend: f.sends > 0 })
    }

    pub fn mark_sent(&mut self, seq: u64, now: Instant) {
        if let Some(f) = self.entries.get_mut(&seq) {
            f.sent_at = Some(now);
            f.sends += 1;
        }
    }

    /// Batches sent at least once.
    pub fn sent(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.iter().filter(|(_, f)| f.sends > 0).map(|(&seq, _)| seq)
    }

    /// The connection dropped (or came back): whatever was in flight must be sent again.
    pub fn connection_reset(&mut self) {
        for f in self.entries.values_mut() {
            f.sent_at = None;
        }
    }

    /// The collector acknowledged `seq`; returns its reading count if it was in the window.
    pub fn ack(&mut self, seq: u64) -> Option<u32> {
        self.entries.remove(&seq).map(|f| f.readings)
    }

    /// Whether batch `seq` of buffer `buffer` is in the window: only such an ack may remove it.
    pub fn holds(&self, seq: u64, buffer: u64) -> bool {
        self.entries.get(&seq).is_some_and(|f| f.buffer == buffer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(seq: u64) -> StoredBatch {
        StoredBatch { seq, buffer: 1, readings: 10, payload: vec![seq as u8] }
    }

    #[test]
    fn sends_once_then_again_after_timeout_or_reconnect() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(5);
        let mut w = Window::new(2);
        w.load(vec![stored(3), stored(4)]);
        assert_eq!((w.free(), w.cursor()), (0, Some(4)));
        assert_eq!(w.due(t0, timeout), [3, 4]);
        assert!(!w.get(3).unwrap().resend);
        w.mark_sent(3, t0);
        w.mark_sent(4, t0);
        assert!(w.due(t0 + Duration::from_secs(1), timeout).is_empty());
        assert_eq!(w.due(t0 + timeout, timeout), [3, 4], "unacked past the timeout");
        assert_eq!(w.ack(3), Some(10));
        assert_eq!(w.ack(3), None, "a duplicate ack is harmless");
        w.connection_reset();
        assert_eq!(w.due(t0, timeout), [4]);
        assert!(w.get(4).unwrap().resend);
        assert_eq!(w.free(), 1);
    }

    #[test]
    fn holds_only_the_batch_of_the_named_buffer() {
        let mut w = Window::new(2);
        w.load(vec![stored(3)]);
        assert!(w.holds(3, 1));
        assert!(!w.holds(3, 2), "same seq, another buffer");
        assert!(!w.holds(4, 1), "not loaded");
    }
}

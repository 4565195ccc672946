//! Remembers the batches recently stored per agent buffer, so a re-sent batch is acknowledged
//! again without another database write. Only an optimisation: writes are idempotent, so
//! forgetting (a restart, another collector, a sequence number older than the window) costs a
//! rewrite, never a duplicate point.
//!
//! Keyed by `(agent, buffer, seq)`: an agent whose buffer was replaced (a new SD card, a salvaged
//! file) starts again at sequence 0 under a new buffer identity, and its batches must be written,
//! not taken for replays of the old buffer's.

use std::collections::{BTreeSet, HashMap, VecDeque};

/// Buffers remembered per agent: the current one, and the one before it (a salvaged buffer's
/// old batches travel alongside its new ones for a while). An agent cannot grow the map by
/// making up identities.
const BUFFERS_PER_AGENT: usize = 2;

/// One buffer's identity (`None`: a version 2 agent's) and its recent sequence numbers.
type BufferSeen = (Option<u64>, BTreeSet<u64>);

pub struct Dedup {
    window: usize,
    /// Per agent, its recent buffers, newest last.
    agents: HashMap<String, VecDeque<BufferSeen>>,
}

impl Dedup {
    pub fn new(window: usize) -> Self {
        Self { window: window.max(1), agents: HashMap::new() }
    }

    pub fn seen(&self, agent: &str, buffer: Option<u64>, seq: u64) -> bool {
        self.agents
            .get(agent)
            .and_then(|buffers| buffers.iter().find(|(b, _)| *b == buffer))
            .is_some_and(|(_, s)| s.contains(&seq))
    }

    pub fn record(&mut self, agent: &str, buffer: Option<u64>, seq: u64) {
        let buffers = match self.agents.get_mut(agent) {
            Some(b) => b,
            None => self.agents.entry(agent.to_owned()).or_default(),
        };
        let at = match buffers.iter().position(|(b, _)| *b == buffer) {
            Some(at) => at,
            None => {
                if buffers.len() >= BUFFERS_PER_AGENT {
                    buffers.pop_front();
                }
                buffers.push_back((buffer, BTreeSet::new()));
                buffers.len() - 1
            }
        };
        let Some((_, seen)) = buffers.get_mut(at) else { return };
        seen.insert(seq);
        while seen.len() > self.window {
            seen.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_a_bounded_window_per_agent() {
        let mut d = Dedup::new(3);
        for seq in 0..5 {
            d.record("a", Some(1), seq);
        }
        assert!(!d.seen("a", Some(1), 1), "evicted: oldest first");
        assert!(d.seen("a", Some(1), 2) && d.seen("a", Some(1), 4));
        assert!(!d.seen("b", Some(1), 4), "per agent");
    }

    #[test]
    fn a_new_buffer_starting_again_at_zero_is_not_a_replay() {
        let mut d = Dedup::new(100);
        for seq in 0..10 {
            d.record("a", Some(1), seq);
        }
        assert!(!d.seen("a", Some(2), 3), "same agent and seq, another buffer");
        assert!(!d.seen("a", None, 3), "a version 2 agent's batches are their own buffer");
        d.record("a", Some(2), 3);
        assert!(d.seen("a", Some(1), 3) && d.seen("a", Some(2), 3));
        // A third buffer evicts the oldest: an agent cannot grow the map by inventing identities.
        d.record("a", Some(3), 0);
        assert!(!d.seen("a", Some(1), 3));
        assert!(d.seen("a", Some(2), 3) && d.seen("a", Some(3), 0));
    }
}

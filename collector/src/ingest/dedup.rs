//! Remembers the batches recently stored per agent, so a re-sent batch is acknowledged again
//! without another database write. Only an optimisation: writes are idempotent, so forgetting
//! (a restart, another collector, a sequence number older than the window) costs a rewrite, never
//! a duplicate point.

use std::collections::{BTreeSet, HashMap};

pub struct Dedup {
    window: usize,
    agents: HashMap<String, BTreeSet<u64>>,
}

impl Dedup {
    pub fn new(window: usize) -> Self {
        Self { window: window.max(1), agents: HashMap::new() }
    }

    pub fn seen(&self, agent: &str, seq: u64) -> bool {
        self.agents.get(agent).is_some_and(|s| s.contains(&seq))
    }

    pub fn record(&mut self, agent: &str, seq: u64) {
        let seen = match self.agents.get_mut(agent) {
            Some(s) => s,
            None => self.agents.entry(agent.to_owned()).or_default(),
        };
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
            d.record("a", seq);
        }
        assert!(!d.seen("a", 1), "evicted: oldest first");
        assert!(d.seen("a", 2) && d.seen("a", 4));
        assert!(!d.seen("b", 4), "per agent");
    }
}

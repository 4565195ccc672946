//! The fleet registry: every agent the collector has heard of, online or not, with what it last
//! reported about itself (version, sensors, backlog, oldest unsent reading, drops, latched
//! rules) and what the collector has stored from it.
//!
//! Agents publish a retained [`Presence`] on `edgeloop/v1/{agent}/status` every few seconds and
//! leave `Offline` as their MQTT last will, so every collector (each subscribes without sharing)
//! learns the whole fleet, a new one at once from the retained messages. An agent is online
//! while its reports keep coming: three missed reports make it offline even if no last will
//! arrived (a partitioned network). The registry is saved to `state_file` (JSON) so a restarted
//! collector still knows agents that have not reported since.

use std::{collections::BTreeMap, path::PathBuf, sync::Mutex, time::Duration};

use edgeloop_shared::{
    atomic_file::{self, Access},
    clock::now_ns,
    model::{AgentReport, Presence},
};
use serde::{Deserialize, Serialize};

/// One agent as the collector sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetEntry {
    /// When the collector last heard from it (status report or batch), ns since the epoch.
    pub last_seen_ns: i64,
    /// It said goodbye (clean stop) or its last will arrived.
    pub said_offline: bool,
    /// Its last status report.
    pub report: Option<AgentReport>,
    pub points_stored: u64,
    /// Timestamp of the newest reading stored from it.
    pub newest_reading_ns: Option<i64>,
}

/// An agent's entry with its liveness worked out.
#[derive(Debug, Clone, Serialize)]
pub struct AgentView {
    pub agent: String,
    pub online: bool,
    #[serde(flatten)]
    pub entry: FleetEntry,
}

pub struct Fleet {
    agents: Mutex<BTreeMap<String, FleetEntry>>,
    state_file: Option<PathBuf>,
    last_save: Mutex<Option<std::time::Instant>>,
}

/// Reports an agent may miss before it counts as gone.
const MISSED_REPORTS: i64 = 3;

impl Fleet {
    /// Loads the registry from `state_file` when it exists. A file that does not parse is
    /// logged and set aside (renamed `.unreadable`); the collector starts with an empty fleet.
    pub fn load(state_file: Option<PathBuf>) -> Self {
        let mut agents = BTreeMap::new();
        if let Some(path) = &state_file
            && let Ok(text) = std::fs::read_to_string(path)
        {
            match serde_json::from_str(&text) {
                Ok(a) => agents = a,
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "fleet state file does not parse; set aside, starting empty");
                    let _ = std::fs::rename(path, path.with_extension("unreadable"));
                }
            }
        }
        Self { agents: Mutex::new(agents), state_file, last_save: Mutex::new(None) }
    }

    /// A status message from `agent`.
    pub fn on_presence(&self, agent: &str, presence: Presence) {
        let now = now_ns();
        self.update(agent, |e| match presence {
            Presence::Online(report) => {
                e.last_seen_ns = now;
                e.said_offline = false;
                e.report = Some(report);
            }
            Presence::Offline => e.said_offline = true,
        });
    }

    /// A batch from `agent` was stored.
    pub fn on_stored(&self, agent: &str, points: u64, newest_reading_ns: Option<i64>) {
        let now = now_ns();
        // A batch does not undo a goodbye: it may be a late re-send from before it.
        self.update(agent, |e| {
            e.last_seen_ns = now;
            e.points_stored += points;
            e.newest_reading_ns = e.newest_reading_ns.max(newest_reading_ns);
        });
    }

    fn update(&self, agent: &str, f: impl FnOnce(&mut FleetEntry)) {
        if let Ok(mut agents) = self.agents.lock() {
            f(agents.entry(agent.to_owned()).or_default());
        }
        self.save_now_and_then();
    }

    /// Every agent, by id, with its liveness as of now.
    pub fn agents(&self) -> Vec<AgentView> {
        let now = now_ns();
        let agents = self.agents.lock().map(|a| a.clone()).unwrap_or_default();
        agents
            .into_iter()
            .map(|(agent, entry)| {
                let interval = entry.report.as_ref().map_or(10_000, |r| i64::from(r.interval_ms.max(100)));
                let fresh = now - entry.last_seen_ns < MISSED_REPORTS * interval * 1_000_000;
                AgentView { agent, online: fresh && !entry.said_offline, entry }
            })
            .collect()
    }

    /// Saves at most every two seconds (the registry changes with every batch).
    fn save_now_and_then(&self) {
        let Some(path) = &self.state_file else { return };
        let due = self.last_save.lock().map(|mut last| {
            let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(2));
            if due {
                *last = Some(std::time::Instant::now());
            }
            due
        });
        if due.unwrap_or(false) {
            self.save_to(path);
        }
    }

    /// Saves the registry now (also at shutdown).
    pub fn save(&self) {
        if let Some(path) = &self.state_file {
            self.save_to(path);
        }
    }

    fn save_to(&self, path: &std::path::Path) {
        let Ok(agents) = self.agents.lock().map(|a| a.clone()) else { return };
        let written = serde_json::to_vec_pretty(&agents)
            .map_err(std::io::Error::other)
            .and_then(|bytes| atomic_file::write(path, &bytes, Access::Default));
        if let Err(e) = written {
            tracing::warn!(file = %path.display(), error = %e, "cannot save the fleet state");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> AgentReport {
        AgentReport {
            version: "0.1.0".into(),
            sent_ns: 1,
            interval_ms: 100,
            sensors: vec!["t".into()],
            stale_sensors: vec![],
            backlog_readings: 5,
            backlog_bytes: 50,
            oldest_unsent_ns: Some(7),
            accepted_total: 10,
            dropped_total: 0,
            quarantined_total: 0,
            latched: vec![],
        }
    }

    #[test]
    fn online_until_goodbye_or_silence_and_remembered_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fleet.json");
        let fleet = Fleet::load(Some(file.clone()));
        fleet.on_presence("gw-1", Presence::Online(report()));
        fleet.on_stored("gw-2", 100, Some(42));
        let v = fleet.agents();
        assert_eq!(
            v.iter().map(|a| (a.agent.as_str(), a.online)).collect::<Vec<_>>(),
            [("gw-1", true), ("gw-2", true)]
        );
        fleet.on_presence("gw-1", Presence::Offline);
        assert!(!fleet.agents()[0].online, "a goodbye is offline at once");
        std::thread::sleep(Duration::from_millis(350));
        fleet.on_presence("gw-3", Presence::Online(report()));
        let v = fleet.agents();
        assert!(v.iter().find(|a| a.agent == "gw-3").is_some_and(|a| a.online));
        fleet.save();

        let again = Fleet::load(Some(file.clone()));
        let v = again.agents();
        assert_eq!(v.len(), 3, "a restart does not forget the fleet");
        assert_eq!(v[1].entry.points_stored, 100);
        assert_eq!(v[0].entry.report.as_ref().map(|r| r.backlog_readings), Some(5));

        std::fs::write(&file, "{ not json").unwrap();
        assert!(Fleet::load(Some(file.clone())).agents().is_empty());
        assert!(file.with_extension("unreadable").exists(), "the bad file is set aside, not lost");
    }
}

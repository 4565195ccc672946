//! `edgeloop-collector rules test`: a recording (the agent's JSON Lines format) replayed through
//! the fleet rules in simulated time, so an engineer sees which alerts a rule file raises, when,
//! and with what prediction, before it runs on the fleet. The collector's clock is the recording's
//! time here: `for`, grouping and absence all play out as they would have.

use std::collections::BTreeMap;

use edgeloop_shared::{batch::Batch, model::Reading};

use super::{
    alerts::{AlertBook, AlertsConfig},
    engine::{Engine, EngineState, inhibit_rules},
    rules::FleetRules,
};
use crate::model::{AlertState, GroupStatus};

/// Something the replay saw, at a recording time.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayLine {
    pub ts_ns: i64,
    pub text: String,
}

/// Replays `readings` (time-ordered) as agent `agent` of site `site` through `rules`, evaluating
/// the clock-driven rules every simulated second; returns every alert change and notification.
pub fn replay(
    rules: FleetRules,
    agent: &str,
    site: &str,
    readings: &[Reading],
) -> Result<Vec<ReplayLine>, super::alerts::AlertError> {
    let config = AlertsConfig { inhibit: inhibit_rules(&rules), ..AlertsConfig::default() };
    let mut engine = Engine::new(rules, AlertBook::new(config)?, EngineState::default(), None);
    let mut out = Vec::new();
    let mut states: BTreeMap<String, AlertState> = BTreeMap::new();
    let mut seq = 0;
    let mut next_tick = readings.first().map_or(0, |r| r.ts_ns);
    let mut i = 0;
    while i < readings.len() {
        // One simulated second of readings as one batch, then the second's tick.
        let until = next_tick + 1_000_000_000;
        let j = readings[i..].iter().position(|r| r.ts_ns >= until).map_or(readings.len(), |p| i + p);
        if j > i {
            seq += 1;
            let mut batch = Batch::from_readings(agent, seq, &readings[i..j]);
            batch.tags = vec![("site".into(), site.into())];
            engine.on_batch(readings[j - 1].ts_ns, &batch);
        }
        // The fleet registry has nothing to say in a replay: the agent is taken to be online.
        let (notifications, commands) = engine.tick(until, &[]);
        for view in engine.alerts() {
            let a = &view.alert;
            if states.get(&a.fingerprint) != Some(&a.state) {
                states.insert(a.fingerprint.clone(), a.state);
                out.push(ReplayLine {
                    ts_ns: until,
                    text: format!("alert {} {}: {}", a.state.name(), a.rule, a.summary),
                });
            }
        }
        for n in notifications {
            let status = match n.status {
                GroupStatus::Firing => "firing",
                GroupStatus::Resolved => "resolved",
            };
            out.push(ReplayLine {
                ts_ns: until,
                text: format!("notify {status} {} ({} alert(s)) to {:?}", n.group_key, n.alerts.len(), n.receivers),
            });
        }
        for c in commands {
            out.push(ReplayLine {
                ts_ns: until,
                text: format!("command {:?} to {} ({:?} approval) from rule {}", c.action, c.agent, c.approval, c.rule)
                    .to_lowercase(),
            });
        }
        i = j;
        next_tick = until;
        // Skip quiet stretches in one step.
        if let Some(r) = readings.get(i)
            && r.ts_ns >= next_tick + 1_000_000_000
        {
            next_tick = r.ts_ns;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::automation::synthetic::{SyntheticConfig, SyntheticSet};

    #[test]
    fn a_replayed_bearing_fault_raises_the_predictive_alert_before_the_trip() {
        let rules: FleetRules = toml::from_str(
            r#"
[defaults]
group_wait = "0s"
notify = ["chat"]

[rules.bearing_zone_d]
kind = "predict"
sensors = "*.vel_rms"
limit = 4.5
horizon = "96h"
"#,
        )
        .unwrap();
        let set = SyntheticSet::generate(SyntheticConfig { faulty: 1, healthy: 0, ..SyntheticConfig::default() });
        let m = &set.machines[0];
        let readings: Vec<Reading> = m
            .readings(&set.config)
            .filter(|(_, v)| v.is_finite())
            .map(|(ts_ns, value)| Reading { sensor: "press-3.de.vel_rms".into(), ts_ns, value })
            .collect();
        let lines = replay(rules, "gw-1", "plant-a", &readings).unwrap();
        let first = lines.iter().find(|l| l.text.starts_with("alert firing bearing_zone_d")).expect("an alert");
        assert!(first.ts_ns < m.truth_trip_ns.unwrap(), "{lines:?}");
        assert!(first.text.contains("reaches 4.5"), "{first:?}");
        assert!(lines.iter().any(|l| l.text.starts_with("notify firing")), "{lines:?}");
    }
}

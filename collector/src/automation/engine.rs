//! The fleet rules, evaluated: stored batches and the fleet registry in, alert signals to the
//! [`AlertBook`] and command requests out. Pure state driven by explicit times, like the agent's
//! rule engine, so it is tested exactly and replays recordings in simulated time.
//!
//! Two clocks: a reading's own timestamp drives everything about the series (anomaly baselines,
//! trend buckets, the time a prediction is extrapolated from); the collector's clock (`now_ns`)
//! drives the alert lifecycle (`for`, grouping) and absence (`after`: measured from when the
//! collector last *received* data, so a gateway with a wrong clock does not look silent).

use std::collections::{BTreeMap, HashMap, HashSet};

use edgeloop_shared::{batch::Batch, model::EventKind};
use serde::{Deserialize, Serialize};

use super::{
    alerts::{AlertBook, AlertError, AlertView, RoutePolicy, Signal},
    detect::{DetectorConfig, SeriesDetector, Verdict},
    monitor::{IndicatorMonitor, MonitorParams},
    muting::{InhibitRule, MatchOp, Matcher},
    rules::{Approval, CommandKind, FleetRule, FleetRules, RuleKind, glob},
};
use crate::{
    fleet::AgentView,
    model::{AlertState, Notification, Prediction},
};

/// A command an automation rule asks for (the task signs and sends it, or holds it for approval).
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRequest {
    pub rule: String,
    pub agent: String,
    pub action: CommandKind,
    pub approval: Approval,
    pub fingerprint: String,
    pub reason: String,
}

/// One rule's state on one series.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum SeriesRule {
    Threshold { active: bool },
    Anomaly { detector: SeriesDetector, active: bool },
    Predict { monitor: Box<IndicatorMonitor> },
}

/// A series: its rules' states, and when data last arrived (collector clock).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SeriesState {
    last_seen_ns: i64,
    /// (rule id, its state), for every rule whose selectors match this series.
    rules: Vec<(String, SeriesRule)>,
}

/// What the engine persists besides the alert book.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct EngineState {
    /// `agent \u{1f} sensor` → state.
    series: HashMap<String, SeriesState>,
    /// agent → its `site` tag.
    sites: HashMap<String, String>,
    /// agent → when data last arrived.
    agents_seen: HashMap<String, i64>,
    /// Active trips: `agent \u{1f} local rule` → machine.
    trips: BTreeMap<String, String>,
    /// Alerts already turned into a command, by fingerprint and start of that alert's life.
    commanded: HashSet<(String, i64)>,
}

pub struct Engine {
    pub rules: FleetRules,
    /// Each rule with its typed condition, worked out once per rule file (not per reading).
    compiled: HashMap<String, std::sync::Arc<(FleetRule, RuleKind)>>,
    pub book: AlertBook,
    pub state: EngineState,
    dashboard_url: Option<String>,
}

fn key(agent: &str, sensor: &str) -> String {
    format!("{agent}\u{1f}{sensor}")
}

/// The machine a sensor belongs to: its name up to the first dot (`press-3.de.vel_rms` → `press-3`).
pub fn machine_of(sensor: &str) -> &str {
    sensor.split('.').next().unwrap_or(sensor)
}

impl Engine {
    pub fn new(rules: FleetRules, book: AlertBook, state: EngineState, dashboard_url: Option<String>) -> Self {
        let mut engine = Self { rules, compiled: HashMap::new(), book, state, dashboard_url };
        engine.rebind();
        engine
    }

    /// Swaps in a new rule file. A rule whose config is unchanged keeps its per-series state
    /// (learned baselines, trend history); alerts of removed rules resolve.
    pub fn set_rules(&mut self, rules: FleetRules, now_ns: i64) -> Result<(), AlertError> {
        let old = std::mem::replace(&mut self.rules, rules);
        let mut config = self.book.config().clone();
        config.inhibit = inhibit_rules(&self.rules);
        self.book.set_config(config)?;
        // Resolve the alerts of rules that are gone or changed (they would otherwise fire forever).
        let changed: Vec<&String> =
            old.rules.iter().filter(|(id, r)| self.rules.rules.get(*id) != Some(r)).map(|(id, _)| id).collect();
        for view in self.book.alerts() {
            if changed.contains(&&view.alert.rule) && view.alert.state != AlertState::Resolved {
                let rule = old.rules.get(&view.alert.rule).cloned();
                if let Some(rule) = rule {
                    self.signal(
                        now_ns,
                        &view.alert.rule,
                        &rule,
                        view.alert.labels.clone(),
                        false,
                        String::new(),
                        None,
                        None,
                    );
                }
            }
        }
        for series in self.state.series.values_mut() {
            series.rules.retain(|(id, _)| old.rules.get(id).is_some_and(|r| self.rules.rules.get(id) == Some(r)));
        }
        self.rebind();
        Ok(())
    }

    /// Attaches every rule to the series its selectors match (new rules, new series).
    fn rebind(&mut self) {
        self.compiled =
            self.rules.rules.iter().map(|(id, r)| (id.clone(), std::sync::Arc::new((r.clone(), r.spec())))).collect();
        let keys: Vec<String> = self.state.series.keys().cloned().collect();
        for k in keys {
            let (agent, sensor) = k.split_once('\u{1f}').unwrap_or((&k, ""));
            let fresh = self.series_rules(agent, sensor);
            if let Some(series) = self.state.series.get_mut(&k) {
                for (id, rule) in fresh {
                    if !series.rules.iter().any(|(have, _)| *have == id) {
                        series.rules.push((id, rule));
                    }
                }
            }
        }
    }

    /// Fresh states for the rules that watch `agent`'s `sensor`.
    fn series_rules(&self, agent: &str, sensor: &str) -> Vec<(String, SeriesRule)> {
        let mut out = Vec::new();
        for (id, rule) in &self.rules.rules {
            if rule.agents.as_deref().is_some_and(|g| !glob(g, agent)) {
                continue;
            }
            let state = match rule.spec() {
                RuleKind::Threshold { sensors, .. } if glob(&sensors, sensor) => {
                    SeriesRule::Threshold { active: false }
                }
                RuleKind::Anomaly { sensors, .. } if glob(&sensors, sensor) => {
                    SeriesRule::Anomaly { detector: SeriesDetector::new(), active: false }
                }
                RuleKind::Predict { sensors, .. } if glob(&sensors, sensor) => {
                    SeriesRule::Predict { monitor: Box::default() }
                }
                _ => continue,
            };
            out.push((id.clone(), state));
        }
        out
    }

    /// Labels of an alert about `agent` (and `sensor`).
    fn labels(
        &self,
        id: &str,
        rule: &FleetRule,
        agent: Option<&str>,
        sensor: Option<&str>,
    ) -> BTreeMap<String, String> {
        let mut l: BTreeMap<String, String> = rule.labels.clone();
        l.insert("kind".into(), rule.kind.name().into());
        l.insert("severity".into(), rule.severity.name().into());
        l.insert("rule".into(), id.into());
        if let Some(agent) = agent {
            l.insert("agent".into(), agent.into());
            if let Some(site) = self.state.sites.get(agent) {
                l.insert("site".into(), site.clone());
            }
            l.insert("machine".into(), agent.into());
        }
        if let Some(sensor) = sensor {
            l.insert("sensor".into(), sensor.into());
            l.insert("machine".into(), machine_of(sensor).into());
        }
        l
    }

    #[allow(clippy::too_many_arguments)]
    fn signal(
        &mut self,
        now_ns: i64,
        id: &str,
        rule: &FleetRule,
        labels: BTreeMap<String, String>,
        active: bool,
        summary: String,
        value: Option<f64>,
        prediction: Option<Prediction>,
    ) {
        let route = self.rules.route(rule);
        let ns = |d: edgeloop_shared::units::HumanDuration| d.0.as_nanos().min(i64::MAX as u128) as i64;
        let limit = match rule.spec() {
            RuleKind::Threshold { above, below, .. } => above.or(below),
            RuleKind::Predict { limit, .. } => Some(limit),
            _ => None,
        };
        let signal = Signal {
            rule: id.into(),
            severity: rule.severity,
            labels,
            active,
            summary,
            value: value.filter(|v| v.is_finite()),
            limit,
            prediction,
            for_ns: rule.for_.map_or(0, ns),
            policy: RoutePolicy {
                group_by: route.group_by,
                group_wait_ns: ns(route.group_wait),
                group_interval_ns: ns(route.group_interval).max(1),
                repeat_interval_ns: ns(route.repeat_interval).max(1),
                receivers: route.notify,
            },
        };
        if let Err(e) = self.book.observe(now_ns, signal) {
            tracing::warn!(rule = id, error = %e, "alert signal refused");
        }
    }

    /// Takes a stored batch: every reading through the rules that watch its series, every trip
    /// event into a trip alert.
    pub fn on_batch(&mut self, now_ns: i64, batch: &Batch) {
        let agent = batch.agent.as_str();
        if let Some((_, site)) = batch.tags.iter().find(|(k, _)| k == "site")
            && self.state.sites.get(agent) != Some(site)
        {
            self.state.sites.insert(agent.into(), site.clone());
        }
        self.state.agents_seen.insert(agent.into(), now_ns);
        for series in &batch.series {
            let k = key(agent, &series.sensor);
            if !self.state.series.contains_key(&k) {
                let rules = self.series_rules(agent, &series.sensor);
                self.state.series.insert(k.clone(), SeriesState { last_seen_ns: now_ns, rules });
            }
            let Some(mut state) = self.state.series.remove(&k) else { continue };
            state.last_seen_ns = now_ns;
            for (id, rule_state) in &mut state.rules {
                let Some(compiled) = self.compiled.get(id.as_str()).cloned() else { continue };
                let (rule, spec) = &*compiled;
                for p in &series.points {
                    self.evaluate(now_ns, id, rule, spec, rule_state, agent, &series.sensor, p.ts_ns, p.value);
                }
            }
            self.state.series.insert(k, state);
        }
        for e in &batch.events {
            let trip_key = key(agent, &e.subject);
            let active = match e.kind {
                EventKind::Trip => true,
                EventKind::Reset => false,
                _ => continue,
            };
            // The machine: from the sensor that tripped it, when the event names one.
            let machine =
                e.values.first().map(|(sensor, _)| machine_of(sensor).to_owned()).unwrap_or_else(|| agent.to_owned());
            if active {
                self.state.trips.insert(trip_key, machine.clone());
            } else if let Some(m) = self.state.trips.remove(&trip_key) {
                let _ = m;
            }
            let rules: Vec<(String, FleetRule)> = self
                .rules
                .rules
                .iter()
                .filter(|(_, r)| matches!(r.spec(), RuleKind::Trip { rules } if glob(&rules, &e.subject)))
                .filter(|(_, r)| r.agents.as_deref().is_none_or(|g| glob(g, agent)))
                .map(|(id, r)| (id.clone(), r.clone()))
                .collect();
            for (id, rule) in rules {
                let mut labels = self.labels(&id, &rule, Some(agent), None);
                labels.insert("machine".into(), machine.clone());
                labels.insert("trip_rule".into(), e.subject.clone());
                let summary = format!("{machine} tripped by local rule {} on {agent}: {}", e.subject, e.message);
                let value = e.values.first().map(|(_, v)| *v);
                self.signal(now_ns, &id, &rule, labels, active, summary, value, None);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn evaluate(
        &mut self,
        now_ns: i64,
        id: &str,
        rule: &FleetRule,
        spec: &RuleKind,
        state: &mut SeriesRule,
        agent: &str,
        sensor: &str,
        ts_ns: i64,
        value: f64,
    ) {
        match (state, spec) {
            (SeriesRule::Threshold { active }, &RuleKind::Threshold { above, below, .. }) => {
                let high = above.is_some_and(|a| value > a);
                let low = below.is_some_and(|b| value < b);
                let now = high || low;
                if now != *active || now {
                    // While it holds, every reading updates the alert's value (no state change).
                    if now != *active || value.is_finite() {
                        *active = now;
                        let summary = match (high, above, below) {
                            (true, Some(a), _) => format!("{sensor} on {agent} is {value:.3}, above {a}"),
                            (false, _, Some(b)) if low => format!("{sensor} on {agent} is {value:.3}, below {b}"),
                            _ => format!("{sensor} on {agent} is back within limits ({value:.3})"),
                        };
                        let labels = self.labels(id, rule, Some(agent), Some(sensor));
                        self.signal(now_ns, id, rule, labels, now, summary, Some(value), None);
                    }
                }
            }
            (SeriesRule::Anomaly { detector, active }, &RuleKind::Anomaly { z, drift, learn, .. }) => {
                let cfg = DetectorConfig { z_threshold: z, cusum_h: drift, learn_samples: learn, ..Default::default() };
                let verdict = detector.observe(&cfg, ts_ns, value);
                let now = match verdict {
                    Verdict::Ignored(_) => return,
                    v => v.is_anomaly(),
                };
                if now != *active {
                    *active = now;
                    let summary = match verdict {
                        Verdict::Spike { z } => {
                            format!("{sensor} on {agent}: {value:.3} is {z:.1} σ from its baseline")
                        }
                        Verdict::Drift { direction, shift, .. } => format!(
                            "{sensor} on {agent} drifted {direction:?} by {shift:.3} from its baseline {:.3}",
                            detector.mean()
                        )
                        .to_lowercase(),
                        _ => format!("{sensor} on {agent} is back at its baseline"),
                    };
                    let labels = self.labels(id, rule, Some(agent), Some(sensor));
                    self.signal(now_ns, id, rule, labels, now, summary, Some(value), None);
                }
            }
            (
                SeriesRule::Predict { monitor },
                &RuleKind::Predict { limit, horizon_ns, bucket_ns, window_ns, confidence, .. },
            ) => {
                let params = MonitorParams::new(limit, horizon_ns, bucket_ns, window_ns, confidence);
                let Some(change) = monitor.observe(&params, ts_ns, value) else { return };
                let labels = self.labels(id, rule, Some(agent), Some(sensor));
                match change {
                    Some(f) => {
                        let prediction = Prediction {
                            limit,
                            eta_ns: f.eta_ns,
                            low_ns: f.low_ns,
                            high_ns: f.high_ns,
                            from_ns: ts_ns,
                            value_now: f.value_now,
                            rate_per_hour: f.rate_per_hour,
                        };
                        let summary = predict_summary(agent, sensor, limit, ts_ns, &prediction);
                        self.signal(now_ns, id, rule, labels, true, summary, Some(value), Some(prediction));
                    }
                    None => {
                        let summary = format!("{sensor} on {agent} no longer trends towards {limit}");
                        self.signal(now_ns, id, rule, labels, false, summary, Some(value), None);
                    }
                }
            }
            _ => {}
        }
    }

    /// Absence rules against the collector's clock and the fleet registry, then the alert book's
    /// timers. Returns the notifications due and the commands automation rules ask for.
    pub fn tick(&mut self, now_ns: i64, fleet: &[AgentView]) -> (Vec<Notification>, Vec<CommandRequest>) {
        let rules: Vec<(String, FleetRule)> = self.rules.rules.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let online: HashMap<&str, bool> = fleet.iter().map(|a| (a.agent.as_str(), a.online)).collect();
        for (id, rule) in &rules {
            match rule.spec() {
                RuleKind::AgentOffline => {
                    for a in fleet {
                        if rule.agents.as_deref().is_some_and(|g| !glob(g, &a.agent)) {
                            continue;
                        }
                        let labels = self.labels(id, rule, Some(&a.agent), None);
                        let summary = if a.online {
                            format!("{} is online again", a.agent)
                        } else {
                            format!("{} is offline (last seen {})", a.agent, ago(now_ns, Some(a.entry.last_seen_ns)))
                        };
                        self.signal_if_changed(now_ns, id, rule, labels, !a.online, summary);
                    }
                }
                RuleKind::SensorSilent { sensors, after_ns } => {
                    let silent: Vec<(String, String, i64)> = self
                        .state
                        .series
                        .iter()
                        .filter_map(|(k, s)| {
                            let (agent, sensor) = k.split_once('\u{1f}')?;
                            (glob(&sensors, sensor) && rule.agents.as_deref().is_none_or(|g| glob(g, agent)))
                                .then(|| (agent.to_owned(), sensor.to_owned(), s.last_seen_ns))
                        })
                        .collect();
                    for (agent, sensor, seen) in silent {
                        // An offline agent's sensors are that agent's alert, not one alert each.
                        let quiet = now_ns - seen > after_ns && online.get(agent.as_str()).copied().unwrap_or(true);
                        let labels = self.labels(id, rule, Some(&agent), Some(&sensor));
                        let summary = format!("{sensor} on {agent}: no data for {}", ago(now_ns, Some(seen)));
                        self.signal_if_changed(now_ns, id, rule, labels, quiet, summary);
                    }
                }
                RuleKind::SiteSilent { after_ns } => {
                    let mut latest: BTreeMap<String, i64> = BTreeMap::new();
                    for (agent, seen) in &self.state.agents_seen {
                        if let Some(site) = self.state.sites.get(agent) {
                            let e = latest.entry(site.clone()).or_insert(*seen);
                            *e = (*e).max(*seen);
                        }
                    }
                    for (site, seen) in latest {
                        let mut labels = self.labels(id, rule, None, None);
                        labels.insert("site".into(), site.clone());
                        let summary = format!("site {site}: no data from any agent for {}", ago(now_ns, Some(seen)));
                        self.signal_if_changed(now_ns, id, rule, labels, now_ns - seen > after_ns, summary);
                    }
                }
                _ => {}
            }
        }
        let mut notifications = self.book.tick(now_ns);
        if let Some(base) = &self.dashboard_url {
            for n in &mut notifications {
                for a in &mut n.alerts {
                    a.dashboard_url = Some(dashboard_link(base, &a.labels));
                }
            }
        }
        (notifications, self.commands_due())
    }

    /// Absence conditions are re-evaluated every tick; only a change (or a held condition, to keep
    /// its summary fresh) reaches the book, which ignores repeats of the same state anyway.
    fn signal_if_changed(
        &mut self,
        now_ns: i64,
        id: &str,
        rule: &FleetRule,
        labels: BTreeMap<String, String>,
        active: bool,
        summary: String,
    ) {
        let fp = super::fingerprint::fingerprint(id, &labels);
        let known = self.book.state(&fp).is_some_and(|s| s != AlertState::Resolved);
        if active || known {
            self.signal(now_ns, id, rule, labels, active, summary, None, None);
        }
    }

    /// Firing, un-muted alerts of rules with a `command`, once per alert life.
    fn commands_due(&mut self) -> Vec<CommandRequest> {
        let mut out = Vec::new();
        for view in self.book.alerts() {
            let a = &view.alert;
            let Some(rule) = self.rules.rules.get(&a.rule) else { continue };
            let Some(command) = &rule.command else { continue };
            if a.state != AlertState::Firing || view.inhibited || !view.silenced_by.is_empty() {
                continue;
            }
            let Some(agent) = a.labels.get("agent") else { continue };
            if self.state.commanded.insert((a.fingerprint.clone(), a.started_ns)) {
                out.push(CommandRequest {
                    rule: a.rule.clone(),
                    agent: agent.clone(),
                    action: command.action,
                    approval: command.approval,
                    fingerprint: a.fingerprint.clone(),
                    reason: a.summary.clone(),
                });
            }
        }
        // Forget lives that are over.
        let live: HashSet<(String, i64)> =
            self.book.alerts().into_iter().map(|v| (v.alert.fingerprint, v.alert.started_ns)).collect();
        self.state.commanded.retain(|k| live.contains(k));
        out
    }

    /// The alerts with their dashboard links.
    pub fn alerts(&self) -> Vec<AlertView> {
        let mut views = self.book.alerts();
        if let Some(base) = &self.dashboard_url {
            for v in &mut views {
                v.alert.dashboard_url = Some(dashboard_link(base, &v.alert.labels));
            }
        }
        views
    }

    /// Series the engine tracks.
    pub fn series_count(&self) -> usize {
        self.state.series.len()
    }
}

/// The book's inhibit rules from the rule file's `[inhibit.*]`.
pub fn inhibit_rules(rules: &FleetRules) -> Vec<InhibitRule> {
    let matchers = |m: &BTreeMap<String, String>| -> Vec<Matcher> {
        m.iter()
            .map(|(label, value)| Matcher {
                label: label.clone(),
                value: value.clone(),
                op: if value.contains('*') { MatchOp::Glob } else { MatchOp::Equal },
            })
            .collect()
    };
    rules
        .inhibit
        .values()
        .map(|i| InhibitRule { source: matchers(&i.source), target: matchers(&i.target), equal: i.equal.clone() })
        .collect()
}

fn dashboard_link(base: &str, labels: &BTreeMap<String, String>) -> String {
    let base = base.trim_end_matches('/');
    match labels.get("agent") {
        Some(agent) => format!("{base}/#/agents/{agent}"),
        None => format!("{base}/#/alerts"),
    }
}

/// "3 min ago" style, for summaries.
fn ago(now_ns: i64, then: Option<i64>) -> String {
    match then {
        None => "never".into(),
        Some(t) => format!("{} ago", human(now_ns.saturating_sub(t))),
    }
}

/// A duration for people: "45 s", "12 min", "30 h".
pub fn human(ns: i64) -> String {
    let s = ns as f64 / 1e9;
    if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 2.0 * 3600.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.0} h", s / 3600.0)
    }
}

/// "press-3.de.vel_rms on gw-1 reaches 4.5 in about 30 h (20–45 h)".
fn predict_summary(agent: &str, sensor: &str, limit: f64, from_ns: i64, p: &Prediction) -> String {
    let d = |t: i64| human(t.saturating_sub(from_ns).max(0));
    format!(
        "{sensor} on {agent} reaches {limit} in about {} ({}–{}); now {:.2}, rising {:.3}/h",
        d(p.eta_ns),
        d(p.low_ns).trim_end_matches(" h"),
        d(p.high_ns),
        p.value_now,
        p.rate_per_hour
    )
}

//! The fleet rule file: what the collector watches across the whole fleet, how the alerts are
//! grouped and routed, what inhibits what, and which rules may command a machine.
//!
//! Rules are keyed by id (`[rules.bearing_zone_d]`) so every error names the rule; the file is
//! parsed strictly (unknown keys refused with line and column), then validated in full
//! (`edgeloop-collector rules check FILE` lists every problem). The collector re-reads it when it
//! changes; a file with problems is refused and the running rules stay.
//!
//! Sensor and agent selectors are globs where `*` matches any run of characters
//! (`"*.de.vel_rms"`, `"press-*"`).

use std::{collections::BTreeMap, path::Path};

use edgeloop_shared::{
    config::{ConfigError, Problem},
    units::HumanDuration,
};
use serde::Deserialize;

use crate::model::Severity;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetRules {
    /// Routing used by every rule that does not set its own.
    #[serde(default)]
    pub defaults: Route,
    #[serde(default)]
    pub rules: BTreeMap<String, FleetRule>,
    /// Alerts that silence others while they fire (a tripped machine's own vibration alerts).
    #[serde(default)]
    pub inhibit: BTreeMap<String, Inhibit>,
}

/// How a rule's alerts are grouped and whom they reach.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Alerts sharing these labels' values are one notification (`rule`, `site`, `machine`,
    /// `agent`, `sensor`, `severity`, `kind`).
    #[serde(default = "default_group_by")]
    pub group_by: Vec<String>,
    /// How long a new group collects alerts before its first notification.
    #[serde(default = "default_group_wait")]
    pub group_wait: HumanDuration,
    /// Changes to a group already notified are sent at most this often.
    #[serde(default = "default_group_interval")]
    pub group_interval: HumanDuration,
    /// A group still firing, not acknowledged, is notified again after this.
    #[serde(default = "default_repeat_interval")]
    pub repeat_interval: HumanDuration,
    /// Channel ids (`[notify.<id>]` in the collector config).
    #[serde(default)]
    pub notify: Vec<String>,
}

impl Default for Route {
    fn default() -> Self {
        Self {
            group_by: default_group_by(),
            group_wait: default_group_wait(),
            group_interval: default_group_interval(),
            repeat_interval: default_repeat_interval(),
            notify: Vec::new(),
        }
    }
}

fn default_group_by() -> Vec<String> {
    vec!["rule".into(), "site".into()]
}
fn default_group_wait() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
}
fn default_group_interval() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(300))
}
fn default_repeat_interval() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(4 * 3600))
}

/// Route settings a rule may override one by one.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteOverride {
    pub group_by: Option<Vec<String>>,
    pub group_wait: Option<HumanDuration>,
    pub group_interval: Option<HumanDuration>,
    pub repeat_interval: Option<HumanDuration>,
    pub notify: Option<Vec<String>>,
}

/// One rule as written. The fields a kind uses are checked by [`FleetRules::problems`]; the
/// typed view is [`FleetRule::spec`].
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetRule {
    pub kind: Kind,
    /// Sensor glob (threshold, anomaly, predict, sensor_silent).
    pub sensors: Option<String>,
    /// threshold: the level.
    pub above: Option<f64>,
    pub below: Option<f64>,
    /// anomaly: robust z-score that counts as a spike (default 6).
    pub z: Option<f64>,
    /// anomaly: CUSUM decision threshold in robust sigmas (default 8).
    pub drift: Option<f64>,
    /// anomaly: samples a series needs before it is judged (default 120).
    pub learn: Option<u32>,
    /// predict: the limit the trend is extrapolated to.
    pub limit: Option<f64>,
    /// predict: alert when the limit is likely reached within this.
    pub horizon: Option<HumanDuration>,
    /// predict: readings are averaged per bucket before fitting (default 1h).
    pub bucket: Option<HumanDuration>,
    /// predict: how much history the fit looks at (default 48h).
    pub window: Option<HumanDuration>,
    /// predict: confidence of the time-to-limit interval (default 0.9).
    pub confidence: Option<f64>,
    /// sensor_silent, site_silent: how long without data.
    pub after: Option<HumanDuration>,
    /// trip: which of the agents' local rules (glob; all when absent).
    pub rules: Option<String>,
    #[serde(default)]
    pub severity: Severity,
    /// How long the condition must hold before the alert fires.
    #[serde(default, rename = "for")]
    pub for_: Option<HumanDuration>,
    /// Which agents the rule watches (glob; all when absent).
    pub agents: Option<String>,
    /// Extra labels on the rule's alerts (e.g. `team = "maintenance-east"`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub route: RouteOverride,
    /// A command to the machine's agent when the alert fires.
    pub command: Option<CommandRule>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A reading above or below a level.
    Threshold,
    /// A reading far from its series' learned baseline (robust z-score), or a slow drift (CUSUM).
    Anomaly,
    /// A trend fitted to a condition indicator, extrapolated to `limit`.
    Predict,
    /// The agent is offline (its last will, or three missed reports).
    AgentOffline,
    /// A sensor sent nothing for `after`.
    SensorSilent,
    /// No agent of a site (the batches' `site` tag) sent anything for `after`.
    SiteSilent,
    /// A trip reported by an agent's local rule, until it is reset.
    Trip,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Threshold => "threshold",
            Kind::Anomaly => "anomaly",
            Kind::Predict => "predict",
            Kind::AgentOffline => "agent_offline",
            Kind::SensorSilent => "sensor_silent",
            Kind::SiteSilent => "site_silent",
            Kind::Trip => "trip",
        }
    }

    /// The optional fields this kind reads.
    fn fields(self) -> &'static [&'static str] {
        match self {
            Kind::Threshold => &["sensors", "above", "below"],
            Kind::Anomaly => &["sensors", "z", "drift", "learn"],
            Kind::Predict => &["sensors", "limit", "horizon", "bucket", "window", "confidence"],
            Kind::AgentOffline => &[],
            Kind::SensorSilent => &["sensors", "after"],
            Kind::SiteSilent => &["after"],
            Kind::Trip => &["rules"],
        }
    }
}

/// A rule's condition, typed, defaults applied (from a validated rule).
#[derive(Debug, Clone, PartialEq)]
pub enum RuleKind {
    Threshold { sensors: String, above: Option<f64>, below: Option<f64> },
    Anomaly { sensors: String, z: f64, drift: f64, learn: u32 },
    Predict { sensors: String, limit: f64, horizon_ns: i64, bucket_ns: i64, window_ns: i64, confidence: f64 },
    AgentOffline,
    SensorSilent { sensors: String, after_ns: i64 },
    SiteSilent { after_ns: i64 },
    Trip { rules: String },
}

fn ns(d: Option<HumanDuration>, default_s: u64) -> i64 {
    d.map_or(default_s as i64 * 1_000_000_000, |d| d.0.as_nanos().min(i64::MAX as u128) as i64)
}

impl FleetRule {
    /// The typed condition (missing required fields of an invalid rule read as empty/zero; load
    /// rules through [`FleetRules::parse`], which refuses those).
    pub fn spec(&self) -> RuleKind {
        let sensors = self.sensors.clone().unwrap_or_default();
        match self.kind {
            Kind::Threshold => RuleKind::Threshold { sensors, above: self.above, below: self.below },
            Kind::Anomaly => RuleKind::Anomaly {
                sensors,
                z: self.z.unwrap_or(6.0),
                drift: self.drift.unwrap_or(8.0),
                learn: self.learn.unwrap_or(120),
            },
            Kind::Predict => RuleKind::Predict {
                sensors,
                limit: self.limit.unwrap_or(f64::INFINITY),
                horizon_ns: ns(self.horizon, 0),
                bucket_ns: ns(self.bucket, 3600),
                window_ns: ns(self.window, 48 * 3600),
                confidence: self.confidence.unwrap_or(0.9),
            },
            Kind::AgentOffline => RuleKind::AgentOffline,
            Kind::SensorSilent => RuleKind::SensorSilent { sensors, after_ns: ns(self.after, 0) },
            Kind::SiteSilent => RuleKind::SiteSilent { after_ns: ns(self.after, 0) },
            Kind::Trip => RuleKind::Trip { rules: self.rules.clone().unwrap_or_else(|| "*".into()) },
        }
    }

    /// The optional fields that are set, by name.
    fn set_fields(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut f = |name, set: bool| {
            if set {
                out.push(name)
            }
        };
        f("sensors", self.sensors.is_some());
        f("above", self.above.is_some());
        f("below", self.below.is_some());
        f("z", self.z.is_some());
        f("drift", self.drift.is_some());
        f("learn", self.learn.is_some());
        f("limit", self.limit.is_some());
        f("horizon", self.horizon.is_some());
        f("bucket", self.bucket.is_some());
        f("window", self.window.is_some());
        f("confidence", self.confidence.is_some());
        f("after", self.after.is_some());
        f("rules", self.rules.is_some());
        out
    }
}

/// A command an alert sends to its agent.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CommandRule {
    pub action: CommandKind,
    /// `auto` sends it when the alert fires; `required` waits for a person to approve it.
    #[serde(default)]
    pub approval: Approval,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// A controlled stop of the machine behind the agent (its `shutdown_actions`).
    Shutdown,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    Auto,
    #[default]
    Required,
}

/// While an alert matching `source` fires, alerts matching `target` whose `equal` labels have the
/// same values are not notified.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Inhibit {
    /// Label → glob.
    pub source: BTreeMap<String, String>,
    pub target: BTreeMap<String, String>,
    #[serde(default)]
    pub equal: Vec<String>,
}

impl FleetRules {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&edgeloop_shared::config::read(path)?, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        edgeloop_shared::config::parse(text, path, |r: &Self| r.problems(None))
    }

    /// Every problem in the file. `channels`, when known (the collector's `[notify]` ids), is
    /// checked against every rule's `notify`.
    pub fn problems(&self, channels: Option<&[String]>) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut problem = |key: String, message: String| out.push(Problem { key, message });
        let check_route = |key: &str,
                           group_by: Option<&Vec<String>>,
                           notify: Option<&Vec<String>>,
                           p: &mut dyn FnMut(String, String)| {
            for label in group_by.into_iter().flatten() {
                if !KNOWN_LABELS.contains(&label.as_str()) && !label.starts_with("label:") {
                    p(
                        format!("{key}.group_by"),
                        format!("{label:?} is not a label alerts carry; use one of {KNOWN_LABELS:?}"),
                    );
                }
            }
            if let (Some(known), Some(notify)) = (channels, notify) {
                for n in notify {
                    if !known.contains(n) {
                        p(
                            format!("{key}.notify"),
                            format!("no channel [notify.{n}] in the collector config (have {known:?})"),
                        );
                    }
                }
            }
        };
        check_route("defaults", Some(&self.defaults.group_by), Some(&self.defaults.notify), &mut problem);
        for (id, rule) in &self.rules {
            let key = format!("rules.{id}");
            if let Err(e) = edgeloop_shared::id::validate(id) {
                problem(key.clone(), format!("rule id {id:?} is invalid: {e}"));
            }
            check_route(
                &format!("{key}.route"),
                rule.route.group_by.as_ref(),
                rule.route.notify.as_ref(),
                &mut problem,
            );
            for field in rule.set_fields() {
                if !rule.kind.fields().contains(&field) {
                    problem(
                        format!("{key}.{field}"),
                        format!(
                            "a {} rule does not use `{field}` (it reads {:?})",
                            rule.kind.name(),
                            rule.kind.fields()
                        ),
                    );
                }
            }
            let needs_sensors = rule.kind.fields().contains(&"sensors");
            if needs_sensors && rule.sensors.as_deref().is_none_or(str::is_empty) {
                problem(format!("{key}.sensors"), "must name sensors (a glob such as \"*.temp\")".into());
            }
            let positive = |v: Option<f64>| v.is_none_or(|v| v > 0.0 && v.is_finite());
            match rule.kind {
                Kind::Threshold => match (rule.above, rule.below) {
                    (None, None) => problem(key.clone(), "a threshold rule needs `above` or `below`".into()),
                    (Some(a), Some(b)) if a <= b => problem(
                        key.clone(),
                        format!("above = {a} is not above below = {b}: the rule could never be quiet"),
                    ),
                    _ => {}
                },
                Kind::Anomaly => {
                    if !positive(rule.z) {
                        problem(format!("{key}.z"), "must be a positive number of sigmas (e.g. 6)".into());
                    }
                    if !positive(rule.drift) {
                        problem(format!("{key}.drift"), "must be a positive number of sigmas (e.g. 8)".into());
                    }
                    if rule.learn == Some(0) {
                        problem(format!("{key}.learn"), "must be at least 1 sample".into());
                    }
                }
                Kind::Predict => {
                    if !rule.limit.is_some_and(f64::is_finite) {
                        problem(format!("{key}.limit"), "a predict rule needs a finite `limit`".into());
                    }
                    if rule.horizon.is_none_or(|h| h.0.is_zero()) {
                        problem(
                            format!("{key}.horizon"),
                            "a predict rule needs a `horizon` above 0 (e.g. \"72h\")".into(),
                        );
                    }
                    let bucket = rule.bucket.map_or(3600.0, |b| b.0.as_secs_f64());
                    let window = rule.window.map_or(48.0 * 3600.0, |w| w.0.as_secs_f64());
                    if bucket <= 0.0 {
                        problem(format!("{key}.bucket"), "must be longer than 0".into());
                    } else if !(4.0..=1024.0).contains(&(window / bucket)) {
                        problem(
                            format!("{key}.window"),
                            format!(
                                "holds {:.0} buckets; the fit needs 4 to 1024 (change window or bucket)",
                                window / bucket
                            ),
                        );
                    }
                    if rule.confidence.is_some_and(|c| !(0.5..1.0).contains(&c)) {
                        problem(format!("{key}.confidence"), "must be at least 0.5 and below 1 (e.g. 0.9)".into());
                    }
                }
                Kind::SensorSilent | Kind::SiteSilent => {
                    if rule.after.is_none_or(|a| a.0.is_zero()) {
                        problem(format!("{key}.after"), "needs a duration above 0 (e.g. \"5m\")".into());
                    }
                }
                Kind::AgentOffline | Kind::Trip => {}
            }
            if rule.command.is_some() && !matches!(rule.kind, Kind::Threshold | Kind::Predict | Kind::Anomaly) {
                problem(format!("{key}.command"), "only rules on a machine's readings can command it".into());
            }
        }
        for (id, inh) in &self.inhibit {
            let key = format!("inhibit.{id}");
            if inh.source.is_empty() || inh.target.is_empty() {
                problem(key.clone(), "needs at least one `source` and one `target` label".into());
            }
            for label in &inh.equal {
                if !KNOWN_LABELS.contains(&label.as_str()) {
                    problem(
                        format!("{key}.equal"),
                        format!("{label:?} is not a label alerts carry; use one of {KNOWN_LABELS:?}"),
                    );
                }
            }
        }
        out
    }

    /// A rule's route: its own settings over the defaults.
    pub fn route(&self, rule: &FleetRule) -> Route {
        let d = &self.defaults;
        let r = &rule.route;
        Route {
            group_by: r.group_by.clone().unwrap_or_else(|| d.group_by.clone()),
            group_wait: r.group_wait.unwrap_or(d.group_wait),
            group_interval: r.group_interval.unwrap_or(d.group_interval),
            repeat_interval: r.repeat_interval.unwrap_or(d.repeat_interval),
            notify: r.notify.clone().unwrap_or_else(|| d.notify.clone()),
        }
    }
}

/// The labels every alert may carry (a rule's own `labels` come on top).
pub const KNOWN_LABELS: &[&str] = &["rule", "kind", "severity", "agent", "sensor", "site", "machine"];

/// `*` matches any run of characters (also none); everything else matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it is currently taken to cover up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*.de.vel_rms", "press-3.de.vel_rms"));
        assert!(!glob("*.de.vel_rms", "press-3.nde.vel_rms.x"));
        assert!(glob("press-*", "press-"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXbYbZc"));
        assert!(!glob("a*b*c", "aXbYbZ"));
        assert!(glob("exact", "exact") && !glob("exact", "exactly"));
    }

    #[test]
    fn the_example_parses_and_is_valid() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/fleet-rules.example.toml"));
        let rules = FleetRules::load(path).unwrap();
        assert!(rules.rules.len() >= 5, "{rules:?}");
        assert!(rules.inhibit.contains_key("tripped_machine"));
    }

    #[test]
    fn every_problem_is_reported_with_its_rule() {
        let text = r#"
[rules.hot]
kind = "threshold"
sensors = "*.temp"

[rules.bad_predict]
kind = "predict"
sensors = "*.vel"
limit = 4.5
horizon = "0s"
confidence = 1.5

[rules.offline]
kind = "agent_offline"
route = { group_by = ["plant"], notify = ["pager"] }
command = { action = "shutdown" }
"#;
        let rules: FleetRules = toml::from_str(text).unwrap();
        let problems = rules.problems(Some(&["chat".into()]));
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"rules.hot"), "{problems:?}");
        assert!(keys.contains(&"rules.bad_predict.horizon"), "{problems:?}");
        assert!(keys.contains(&"rules.bad_predict.confidence"), "{problems:?}");
        assert!(keys.contains(&"rules.offline.route.group_by"), "{problems:?}");
        assert!(keys.contains(&"rules.offline.route.notify"), "{problems:?}");
        assert!(keys.contains(&"rules.offline.command"), "{problems:?}");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let err = FleetRules::parse(
            "[rules.x]\nkind = \"threshold\"\nsensors = \"*\"\nabove = 1.0\nabvoe = 2\n",
            Path::new("f.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("abvoe") && err.contains("line 5"), "{err}");
    }
}

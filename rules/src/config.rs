//! The rule file an engineer writes: rules and actions keyed by id, strict TOML, then a
//! validation pass that reports every problem by rule id and key (and, for parse errors, line).
//!
//! ```toml
//! [rules.spindle-overtemp]
//! sensor = "press-4.temperature"
//! above = 90.0          # trips when a reading is > 90.0 ...
//! clear = 85.0          # ... and the condition clears only below 85.0 (hysteresis)
//! on_delay = "200ms"    # the condition must hold this long first
//! severity = "trip"     # latches until reset
//! actions = ["stop-press-4"]
//!
//! [actions.stop-press-4]
//! kind = "serial"
//! source = "node-1"     # the serial source whose node opens its relay
//! ```

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use edgeloop_shared::{config::Problem, units::HumanDuration};
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    #[serde(default)]
    pub rules: BTreeMap<String, RuleConfig>,
    #[serde(default)]
    pub actions: BTreeMap<String, ActionConfig>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleSeverity {
    Info,
    #[default]
    Warning,
    /// Latches: stays tripped until reset, across agent restarts.
    Trip,
}

/// What a stale sensor means for a rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StalePolicy {
    /// A silent sensor counts as a bad one (fail-safe).
    #[default]
    Trip,
    /// Report it as an alarm event, but do not count it as bad.
    Alarm,
    /// Keep the sensor's last state.
    Hold,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The sensor, or `sensors` for a voting group.
    pub sensor: Option<String>,
    #[serde(default)]
    pub sensors: Vec<String>,
    /// Voting: `"1oo2"`, `"2oo3"`, ... (`MooN`: M of the N sensors must be bad). Default `1ooN`.
    pub vote: Option<String>,
    /// Bad when a reading is strictly above this.
    pub above: Option<f64>,
    /// Bad when a reading is strictly below this.
    pub below: Option<f64>,
    /// Hysteresis: once bad, the condition clears only when the reading is strictly past this
    /// level (below it for `above`, above it for `below`). Defaults to the threshold itself.
    pub clear: Option<f64>,
    /// Bad when the value changes faster than this many units per second (either direction).
    pub rate_above: Option<f64>,
    /// `[k, n]`: bad when at least k of the last n readings are past the threshold.
    pub k_of_n: Option<[u32; 2]>,
    /// Judge a feature of windows of raw acceleration samples (in g), not single readings.
    pub vibration: Option<VibrationRule>,
    /// The ready-made ISO 10816-3 / 20816-3 rule: bad when the velocity RMS (10–1000 Hz) of a
    /// window reaches `zone` for the machine's group and foundation.
    pub iso10816: Option<IsoRule>,
    #[serde(default)]
    pub on_delay: HumanDuration,
    #[serde(default)]
    pub off_delay: HumanDuration,
    #[serde(default)]
    pub stale: StalePolicy,
    #[serde(default)]
    pub severity: RuleSeverity,
    #[serde(default)]
    pub actions: Vec<String>,
}

/// Which number of a vibration window a rule compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VibrationFeature {
    RmsG,
    PeakG,
    PeakToPeakG,
    Crest,
    Kurtosis,
    VelocityRmsMmS,
    /// Acceleration RMS (g) in `band = [low_hz, high_hz]`, e.g. around a bearing defect frequency.
    BandRmsG,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VibrationRule {
    pub sample_rate_hz: f64,
    /// Samples per window (a power of two); windows do not overlap.
    #[serde(default = "default_window")]
    pub window: usize,
    pub feature: VibrationFeature,
    pub band: Option<[f64; 2]>,
    /// Instead of `band`: the band around a bearing defect frequency, computed from geometry.
    pub bearing: Option<BearingBand>,
}

/// A band around one defect frequency of a rolling bearing at a given shaft speed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BearingBand {
    pub balls: u32,
    pub ball_diameter_mm: f64,
    pub pitch_diameter_mm: f64,
    #[serde(default)]
    pub contact_angle_deg: f64,
    pub shaft_hz: f64,
    pub defect: BearingDefect,
    /// Half-width of the band as a fraction of the defect frequency (default 5 %).
    #[serde(default = "default_bearing_width")]
    pub width: f64,
}

/// Outer race, inner race, ball spin, cage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BearingDefect {
    Bpfo,
    Bpfi,
    Bsf,
    Ftf,
}

fn default_bearing_width() -> f64 {
    0.05
}

impl BearingBand {
    /// `[low_hz, high_hz]` around the defect frequency.
    pub fn band(&self) -> Result<[f64; 2], String> {
        let geometry = crate::features::BearingGeometry {
            balls: self.balls,
            ball_diameter_mm: self.ball_diameter_mm,
            pitch_diameter_mm: self.pitch_diameter_mm,
            contact_angle_deg: self.contact_angle_deg,
        };
        let f = geometry.defect_frequencies(self.shaft_hz).map_err(|e| e.to_string())?;
        let centre = match self.defect {
            BearingDefect::Bpfo => f.bpfo,
            BearingDefect::Bpfi => f.bpfi,
            BearingDefect::Bsf => f.bsf,
            BearingDefect::Ftf => f.ftf,
        };
        if !(self.width > 0.0 && self.width < 1.0) {
            return Err(format!("width {} must be a fraction between 0 and 1, e.g. 0.05", self.width));
        }
        Ok([centre * (1.0 - self.width), centre * (1.0 + self.width)])
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsoRule {
    /// 1: large machines (300 kW–50 MW); 2: medium machines (15–300 kW).
    pub group: u8,
    pub foundation: IsoFoundation,
    /// The zone that makes the condition hold: "B", "C" or "D" (D: damage likely).
    pub zone: IsoZone,
    pub sample_rate_hz: f64,
    #[serde(default = "default_window")]
    pub window: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IsoFoundation {
    Rigid,
    Flexible,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum IsoZone {
    B,
    C,
    D,
}

fn default_window() -> usize {
    4096
}

impl VibrationRule {
    /// The analyzer settings this rule needs.
    pub fn analyzer_config(&self) -> crate::features::VibrationConfig {
        let cfg = crate::features::VibrationConfig::new(self.sample_rate_hz, self.window);
        let band = self.band.or_else(|| self.bearing.as_ref().and_then(|b| b.band().ok()));
        match band {
            Some([low, high]) => cfg.with_band(crate::features::Band::new("band", low, high)),
            None => cfg,
        }
    }
}

impl IsoRule {
    pub fn analyzer_config(&self) -> crate::features::VibrationConfig {
        crate::features::VibrationConfig::new(self.sample_rate_hz, self.window)
    }

    /// The velocity (mm/s RMS) at which `zone` begins for this machine.
    pub fn boundary_mm_s(&self) -> f64 {
        use crate::features::{Foundation, MachineGroup, iso10816::boundaries};
        let group = if self.group == 1 { MachineGroup::Group1 } else { MachineGroup::Group2 };
        let foundation = match self.foundation {
            IsoFoundation::Rigid => Foundation::Rigid,
            IsoFoundation::Flexible => Foundation::Flexible,
        };
        let b = boundaries(group, foundation);
        match self.zone {
            IsoZone::B => b.ab_mm_s,
            IsoZone::C => b.bc_mm_s,
            IsoZone::D => b.cd_mm_s,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ActionConfig {
    /// A trip command down a serial source's port (the node opens its relay).
    Serial(SerialAction),
    /// A message on the gateway's local MQTT broker (a PLC or actuator listens).
    Mqtt(MqttAction),
    /// A program run with a timeout.
    Exec(ExecAction),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialAction {
    pub source: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttAction {
    /// The MQTT source whose broker connection publishes it.
    pub source: String,
    pub topic: String,
    /// `{rule}`, `{sensor}` and `{value}` are replaced.
    #[serde(default = "default_payload")]
    pub payload: String,
    #[serde(default)]
    pub retain: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecAction {
    pub program: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default = "default_exec_timeout")]
    pub timeout: HumanDuration,
}

fn default_payload() -> String {
    r#"{"rule":"{rule}","sensor":"{sensor}","value":{value}}"#.into()
}
fn default_exec_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

/// A rule file that cannot be read, parsed or validated.
pub type RuleFileError = edgeloop_shared::config::ConfigError;

/// What a rule file may refer to outside itself: plain data, built by whoever holds the agent
/// config (the agent's `AgentConfig::rules_context`). Without one (`known` false), the
/// references to sources are not checked.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub known: bool,
    pub serial_sources: Vec<String>,
    pub mqtt_sources: Vec<String>,
    /// The actions the agent config's `commands.shutdown_actions` fires: the file must define them.
    pub shutdown_actions: Vec<String>,
}

impl RuleFile {
    pub fn load(path: &Path, ctx: &Context) -> Result<Self, RuleFileError> {
        Self::parse(&edgeloop_shared::config::read(path)?, path, ctx)
    }

    pub fn parse(text: &str, path: &Path, ctx: &Context) -> Result<Self, RuleFileError> {
        edgeloop_shared::config::parse(text, path, |file: &RuleFile| file.problems(ctx))
    }

    /// Every problem, each naming the rule or action and the key.
    pub fn problems(&self, ctx: &Context) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut problem = |key: String, message: String| out.push(Problem { key, message });
        for (id, r) in &self.rules {
            let key = |k: &str| format!("rules.{id}.{k}");
            if let Err(e) = edgeloop_shared::id::validate(id) {
                problem(format!("rules.{id}"), format!("{id:?} is not a valid rule id: {e}"));
            }
            let sensors = r.sensor_list();
            match (&r.sensor, r.sensors.is_empty()) {
                (None, true) => problem(key("sensor"), "name the sensor (or `sensors` for a voting group)".into()),
                (Some(_), false) => problem(key("sensors"), "use either `sensor` or `sensors`, not both".into()),
                _ => {}
            }
            for s in &sensors {
                if let Err(e) = edgeloop_shared::id::validate(s) {
                    problem(key("sensor"), format!("{s:?}: {e}"));
                }
            }
            match r.vote_threshold() {
                Ok(m) if m as usize > sensors.len() && !sensors.is_empty() => {
                    problem(key("vote"), format!("needs {m} bad sensors but the rule has {}", sensors.len()))
                }
                Err(e) => problem(key("vote"), e),
                _ => {}
            }
            let conditions =
                [r.above.is_some(), r.below.is_some(), r.rate_above.is_some()].iter().filter(|&&b| b).count();
            if r.iso10816.is_some() {
                if conditions != 0 || r.vibration.is_some() {
                    problem(
                        key("iso10816"),
                        "an iso10816 rule sets its own level: drop `above`/`below`/`rate_above`/`vibration`".into(),
                    );
                }
            } else if conditions != 1 {
                problem(key("above"), "set exactly one of `above`, `below` or `rate_above`".into());
            }
            if let Some(v) = &r.vibration {
                if r.rate_above.is_some() {
                    problem(key("vibration"), "a vibration rule compares its feature with `above` or `below`".into());
                }
                let banded = [v.band.is_some(), v.bearing.is_some()].iter().filter(|&&b| b).count();
                if (v.feature == VibrationFeature::BandRmsG) != (banded == 1) {
                    problem(
                        key("vibration.band"),
                        "feature = \"band_rms_g\" takes exactly one of `band = [low_hz, high_hz]` or `bearing = {...}`, and only it does".into(),
                    );
                }
                if let Some(Err(e)) = v.bearing.as_ref().map(BearingBand::band) {
                    problem(key("vibration.bearing"), e);
                }
                if let Err(e) = crate::features::VibrationAnalyzer::new(v.analyzer_config()) {
                    problem(key("vibration"), e.to_string());
                }
            }
            if let Some(iso) = &r.iso10816 {
                if !matches!(iso.group, 1 | 2) {
                    problem(
                        key("iso10816.group"),
                        format!("{} is not an ISO 10816-3 machine group: use 1 or 2", iso.group),
                    );
                }
                if let Err(e) = crate::features::VibrationAnalyzer::new(iso.analyzer_config()) {
                    problem(key("iso10816"), e.to_string());
                }
            }
            for (k, v) in [("above", r.above), ("below", r.below), ("clear", r.clear), ("rate_above", r.rate_above)] {
                if v.is_some_and(|v| !v.is_finite()) {
                    problem(key(k), "must be a finite number".into());
                }
            }
            match (r.above, r.below, r.clear) {
                (Some(a), _, Some(c)) if c > a => problem(
                    key("clear"),
                    format!(
                        "{c} is above the trip level {a}: the clear level of an `above` rule must be at or below it"
                    ),
                ),
                (_, Some(b), Some(c)) if c < b => problem(
                    key("clear"),
                    format!(
                        "{c} is below the trip level {b}: the clear level of a `below` rule must be at or above it"
                    ),
                ),
                (None, None, Some(_)) => problem(key("clear"), "`clear` only goes with `above` or `below`".into()),
                _ => {}
            }
            if let Some([k, n]) = r.k_of_n
                && (k == 0 || n == 0 || k > n || n > 1000)
            {
                problem(key("k_of_n"), format!("[{k}, {n}]: need 1 <= k <= n <= 1000"));
            }
            if r.k_of_n.is_some() && r.rate_above.is_some() {
                problem(key("k_of_n"), "`k_of_n` goes with `above` or `below`".into());
            }
            if r.severity == RuleSeverity::Trip && r.actions.is_empty() {
                problem(key("actions"), "a trip rule needs at least one action, or it stops nothing".into());
            }
            for a in &r.actions {
                if !self.actions.contains_key(a) {
                    problem(key("actions"), format!("action {a:?} is not defined; add [actions.{a}]"));
                }
            }
        }
        for (id, a) in &self.actions {
            let key = |k: &str| format!("actions.{id}.{k}");
            match a {
                ActionConfig::Serial(s) if ctx.known && !ctx.serial_sources.contains(&s.source) => problem(
                    key("source"),
                    format!("{:?} is not a serial source of this agent (have: {:?})", s.source, ctx.serial_sources),
                ),
                ActionConfig::Mqtt(m) => {
                    if ctx.known && !ctx.mqtt_sources.contains(&m.source) {
                        problem(
                            key("source"),
                            format!(
                                "{:?} is not an MQTT source of this agent (have: {:?})",
                                m.source, ctx.mqtt_sources
                            ),
                        );
                    }
                    if m.topic.is_empty() || m.topic.contains(['+', '#']) {
                        problem(key("topic"), format!("{:?} must be a concrete topic (no wildcards)", m.topic));
                    }
                }
                ActionConfig::Exec(e) if e.timeout.0.is_zero() => problem(key("timeout"), "must be above zero".into()),
                _ => {}
            }
        }
        for a in &ctx.shutdown_actions {
            if !self.actions.contains_key(a) {
                problem(
                    format!("actions.{a}"),
                    format!(
                        "the agent config's commands.shutdown_actions fires {a:?}; define [actions.{a}] or remove it there"
                    ),
                );
            }
        }
        out
    }
}

impl RuleConfig {
    pub fn sensor_list(&self) -> Vec<String> {
        match &self.sensor {
            Some(s) => vec![s.clone()],
            None => self.sensors.clone(),
        }
    }

    /// M of `MooN`: how many sensors must be bad.
    pub fn vote_threshold(&self) -> Result<u32, String> {
        let Some(v) = &self.vote else { return Ok(1) };
        let (m, n) = v.split_once("oo").ok_or_else(|| format!("{v:?} is not MooN, e.g. \"2oo3\""))?;
        let (m, n): (u32, u32) = match (m.parse(), n.parse()) {
            (Ok(m), Ok(n)) => (m, n),
            _ => return Err(format!("{v:?} is not MooN, e.g. \"2oo3\"")),
        };
        let have = self.sensor_list().len() as u32;
        if m == 0 || m > n || n != have {
            return Err(format!("{v:?} does not fit {have} sensor(s): need 1 <= M <= N = {have}"));
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            known: true,
            serial_sources: vec!["node-1".into()],
            mqtt_sources: vec!["line".into()],
            ..Default::default()
        }
    }

    #[test]
    fn the_shutdown_actions_of_the_agent_config_must_exist() {
        let text = "[actions.relay]\nkind = \"serial\"\nsource = \"node-1\"\n";
        let ctx = Context { shutdown_actions: vec!["relay".into(), "siren".into()], ..ctx() };
        let Err(RuleFileError::Invalid { problems, .. }) = RuleFile::parse(text, Path::new("r.toml"), &ctx) else {
            panic!("must be invalid")
        };
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "actions.siren");
        assert!(problems[0].message.contains("commands.shutdown_actions"), "{}", problems[0].message);
    }

    #[test]
    fn problems_name_the_rule_and_key() {
        let text = r#"
[rules.hot]
sensor = "t"
above = 90.0
clear = 95.0
severity = "trip"
actions = ["nope"]

[rules.vote]
sensors = ["a", "b", "c"]
vote = "2oo2"
below = 1.0

[actions.x]
kind = "serial"
source = "node-9"
"#;
        let Err(RuleFileError::Invalid { problems, .. }) = RuleFile::parse(text, Path::new("r.toml"), &ctx()) else {
            panic!("must be invalid")
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["rules.hot.clear", "rules.hot.actions", "rules.vote.vote", "actions.x.source"],
            "{problems:?}"
        );
        assert!(problems[1].message.contains("[actions.nope]"));
    }

    #[test]
    fn a_bearing_band_is_computed_from_geometry() {
        // 6205: 9 balls of 7.94 mm on a 39.04 mm pitch, shaft at 29.95 Hz: BPFO = 107.36 Hz.
        let b = BearingBand {
            balls: 9,
            ball_diameter_mm: 7.94,
            pitch_diameter_mm: 39.04,
            contact_angle_deg: 0.0,
            shaft_hz: 29.95,
            defect: BearingDefect::Bpfo,
            width: 0.05,
        };
        let [low, high] = b.band().unwrap();
        assert!((low - 107.364 * 0.95).abs() < 0.01 && (high - 107.364 * 1.05).abs() < 0.01, "{low} {high}");
        let text = "[rules.b]\nsensor = \"acc\"\nabove = 0.1\n\
                    vibration = { sample_rate_hz = 25600.0, feature = \"band_rms_g\", bearing = { balls = 9, ball_diameter_mm = 50.0, pitch_diameter_mm = 39.04, shaft_hz = 29.95, defect = \"bpfo\" } }\n";
        let err = RuleFile::parse(text, Path::new("r.toml"), &ctx()).unwrap_err().to_string();
        assert!(err.contains("rules.b.vibration.bearing"), "{err}");
    }

    #[test]
    fn parse_errors_give_the_line() {
        let err =
            RuleFile::parse("[rules.a]\nsensor = \"t\"\nabove = \"hot\"\n", Path::new("r.toml"), &ctx()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line 3") && msg.contains("above"), "{msg}");
    }
}

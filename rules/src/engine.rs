//! The rule engine: pure state, driven by readings, staleness and explicit time, so every
//! boundary (hysteresis, on-delay, off-delay, k-of-n, voting, latching) is testable exactly.
//!
//! Semantics, per sensor of a rule:
//! * `above = L, clear = C`: a good sensor turns bad on a reading `> L`; a bad one turns good on a
//!   reading `< C` (a reading exactly at `L` is not bad; exactly at `C` is still bad). `below` is
//!   the mirror image. Without `clear`, `C = L`.
//! * `k_of_n = [k, n]`: bad when at least k of the last n readings are past `L`; good again when
//!   fewer than k of the last n are past `C`.
//! * `rate_above = R`: bad when |Δvalue / Δtime| between consecutive readings is `> R` per second.
//! * A stale sensor counts as bad (`stale = "trip"`), raises an alarm (`"alarm"`), or keeps its
//!   last state (`"hold"`).
//!
//! Per rule: the condition holds when at least M of its N sensors are bad (`vote = "MooN"`,
//! default 1ooN). It must hold for `on_delay` (at or after the delay) before the rule fires; it
//! must be clear for `off_delay` before the rule clears. A `trip` rule latches: it stays tripped
//! when the condition clears, and across restarts, until a reset — which is refused while the
//! condition holds, a sensor is stale, or a sensor has not reported since the agent started.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use edgeloop_shared::model::{Event, EventKind, Severity};

use crate::config::{RuleConfig, RuleFile, RuleSeverity, StalePolicy, VibrationFeature};
use crate::features::VibrationAnalyzer;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Condition {
    Above { trip: f64, clear: f64 },
    Below { trip: f64, clear: f64 },
    Rate { limit: f64 },
}

/// A window of raw samples and the analyzer that turns it into one feature value.
struct Window {
    analyzer: VibrationAnalyzer,
    samples: Vec<f64>,
    size: usize,
    feature: VibrationFeature,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Window({:?}, {}/{})", self.feature, self.samples.len(), self.size)
    }
}

impl Window {
    fn new(config: crate::features::VibrationConfig, feature: VibrationFeature) -> Option<Self> {
        let size = config.window;
        // Validation refuses bad settings; if one slips through, the rule cannot see this sensor.
        let analyzer = VibrationAnalyzer::new(config).ok()?;
        Some(Self { analyzer, samples: Vec::with_capacity(size), size, feature })
    }

    /// Adds a sample; returns the feature when the sample completes a window.
    fn push(&mut self, sample: f64) -> Option<f64> {
        self.samples.push(sample);
        if self.samples.len() < self.size {
            return None;
        }
        let value = match self.analyzer.analyze(&self.samples) {
            Ok(f) => Some(match self.feature {
                VibrationFeature::RmsG => f.rms_g,
                VibrationFeature::PeakG => f.peak_g,
                VibrationFeature::PeakToPeakG => f.peak_to_peak_g,
                VibrationFeature::Crest => f.crest_factor,
                VibrationFeature::Kurtosis => f.kurtosis,
                VibrationFeature::VelocityRmsMmS => f.velocity_rms_mm_s,
                VibrationFeature::BandRmsG => f.band_rms_g("band").unwrap_or(0.0),
            }),
            Err(e) => {
                tracing::debug!(error = %e, "vibration window skipped");
                None
            }
        };
        self.samples.clear();
        value
    }
}

#[derive(Debug, Default)]
struct Slot {
    sensor: String,
    window: Option<Window>,
    bad: bool,
    stale: bool,
    seen: bool,
    bad_before_stale: bool,
    trip_hist: VecDeque<bool>,
    clear_hist: VecDeque<bool>,
    last: Option<(i64, f64)>,
}

#[derive(Debug)]
struct Rule {
    id: String,
    /// The config it was built from: a reload keeps the state of rules whose config is unchanged.
    config: RuleConfig,
    condition: Condition,
    k_of_n: Option<(usize, usize)>,
    vote: usize,
    on_delay: Duration,
    off_delay: Duration,
    stale: StalePolicy,
    severity: RuleSeverity,
    actions: Vec<String>,
    slots: Vec<Slot>,
    holds: bool,
    holds_since: Option<Instant>,
    clear_since: Option<Instant>,
    active: bool,
    latched: bool,
    clear_reported: bool,
}

/// Something the caller must do now.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Run these actions (the rule just fired). On the fast path: before anything is written.
    Fire { rule: String, actions: Vec<String>, sensor: String, value: f64 },
    /// Record and send this event (trip, clear, reset, alarm).
    Event(Event),
    /// The rule's latch changed: persist it (`true`: latched).
    Latch { rule: String, latched: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetOutcome {
    Released,
    NotLatched,
    Refused(String),
    UnknownRule,
}

#[derive(Debug, Default)]
pub struct Engine {
    rules: Vec<Rule>,
    by_sensor: HashMap<String, Vec<(usize, usize)>>,
}

impl Rule {
    fn new(id: &str, c: &RuleConfig) -> Self {
        // ISO zones begin *at* their boundary: "above the float just below it" is exactly ">=".
        let iso_level = c.iso10816.as_ref().map(|iso| f64::from_bits(iso.boundary_mm_s().to_bits() - 1));
        let condition = match (c.above.or(iso_level), c.below, c.rate_above) {
            (Some(trip), _, _) => Condition::Above { trip, clear: c.clear.unwrap_or(trip) },
            (_, Some(trip), _) => Condition::Below { trip, clear: c.clear.unwrap_or(trip) },
            (_, _, Some(limit)) => Condition::Rate { limit },
            // Validation refuses this; a rule with no condition simply never fires.
            _ => Condition::Rate { limit: f64::INFINITY },
        };
        Rule {
            id: id.to_owned(),
            config: c.clone(),
            condition,
            k_of_n: c.k_of_n.map(|[k, n]| (k as usize, n as usize)),
            vote: c.vote_threshold().unwrap_or(1).max(1) as usize,
            on_delay: c.on_delay.0,
            off_delay: c.off_delay.0,
            stale: c.stale,
            severity: c.severity,
            actions: c.actions.clone(),
            slots: c
                .sensor_list()
                .into_iter()
                .map(|sensor| {
                    let window = match (&c.vibration, &c.iso10816) {
                        (Some(v), _) => Window::new(v.analyzer_config(), v.feature),
                        (None, Some(iso)) => Window::new(iso.analyzer_config(), VibrationFeature::VelocityRmsMmS),
                        (None, None) => None,
                    };
                    Slot { sensor, window, ..Default::default() }
                })
                .collect(),
            holds: false,
            holds_since: None,
            clear_since: None,
            active: false,
            latched: false,
            clear_reported: false,
        }
    }

    fn severity(&self) -> Severity {
        match self.severity {
            RuleSeverity::Info => Severity::Info,
            RuleSeverity::Warning => Severity::Warning,
            RuleSeverity::Trip => Severity::Trip,
        }
    }

    fn values(&self) -> Vec<(String, f64)> {
        self.slots.iter().filter_map(|s| Some((s.sensor.clone(), s.last?.1))).collect()
    }

    fn event(&self, kind: EventKind, severity: Severity, wall_ns: i64, message: String) -> Outcome {
        Outcome::Event(Event {
            ts_ns: wall_ns,
            kind,
            severity,
            subject: self.id.clone(),
            message,
            values: self.values(),
        })
    }

    fn describe(&self) -> String {
        let what = match self.condition {
            Condition::Above { trip, .. } => format!("> {trip}"),
            Condition::Below { trip, .. } => format!("< {trip}"),
            Condition::Rate { limit } => format!("changing faster than {limit}/s"),
        };
        let values: Vec<String> = self.values().iter().map(|(s, v)| format!("{s} = {v}")).collect();
        format!("{}: {} ({what})", self.id, values.join(", "))
    }

    /// Re-evaluates the voted condition and the rule's state at `now`.
    fn evaluate(&mut self, now: Instant, wall_ns: i64, trigger: Option<(&str, f64)>, out: &mut Vec<Outcome>) {
        let bad = self.slots.iter().filter(|s| s.bad).count();
        let holds = bad >= self.vote;
        if holds != self.holds {
            self.holds = holds;
            if holds {
                self.holds_since = Some(now);
                self.clear_since = None;
            } else {
                self.clear_since = Some(now);
                self.holds_since = None;
            }
        }
        if holds && !self.active && self.holds_since.is_some_and(|t| now.duration_since(t) >= self.on_delay) {
            self.active = true;
            self.clear_reported = false;
            let (sensor, value) = match trigger {
                Some((s, v)) => (s.to_owned(), v),
                None => self.values().into_iter().next().unwrap_or_default(),
            };
            if !self.actions.is_empty() {
                out.push(Outcome::Fire { rule: self.id.clone(), actions: self.actions.clone(), sensor, value });
            }
            if self.severity == RuleSeverity::Trip {
                self.latched = true;
                out.push(Outcome::Latch { rule: self.id.clone(), latched: true });
            }
            out.push(self.event(EventKind::Trip, self.severity(), wall_ns, self.describe()));
        } else if !holds
            && self.active
            && !self.clear_reported
            && self.clear_since.is_some_and(|t| now.duration_since(t) >= self.off_delay)
        {
            self.clear_reported = true;
            if !self.latched {
                self.active = false;
            }
            let msg = if self.latched {
                format!("{}: condition cleared; still latched until reset", self.id)
            } else {
                format!("{}: condition cleared", self.id)
            };
            out.push(self.event(EventKind::Clear, Severity::Info, wall_ns, msg));
        }
    }
}

impl Slot {
    fn observe(&mut self, condition: Condition, k_of_n: Option<(usize, usize)>, ts_ns: i64, value: f64) {
        let (past_trip, past_clear) = match condition {
            Condition::Above { trip, clear } => (value > trip, value >= clear),
            Condition::Below { trip, clear } => (value < trip, value <= clear),
            Condition::Rate { limit } => {
                let fast = self.last.is_some_and(|(t0, v0)| {
                    let dt = (ts_ns - t0) as f64 / 1e9;
                    dt > 0.0 && ((value - v0) / dt).abs() > limit
                });
                (fast, fast)
            }
        };
        self.last = Some((ts_ns, value));
        self.seen = true;
        self.bad = match k_of_n {
            None => {
                if self.bad {
                    past_clear
                } else {
                    past_trip
                }
            }
            Some((k, n)) => {
                for (hist, v) in [(&mut self.trip_hist, past_trip), (&mut self.clear_hist, past_clear)] {
                    hist.push_back(v);
                    while hist.len() > n {
                        hist.pop_front();
                    }
                }
                let count = |h: &VecDeque<bool>| h.iter().filter(|&&b| b).count();
                if self.bad { count(&self.clear_hist) >= k } else { count(&self.trip_hist) >= k }
            }
        };
    }
}

impl Engine {
    pub fn new(file: &RuleFile) -> Self {
        let mut engine = Engine::default();
        for (id, c) in &file.rules {
            let rule = Rule::new(id, c);
            let index = engine.rules.len();
            for (slot, s) in rule.slots.iter().enumerate() {
                engine.by_sensor.entry(s.sensor.clone()).or_default().push((index, slot));
            }
            engine.rules.push(rule);
        }
        engine
    }

    /// Replaces the rule set with `file`'s, atomically (the caller swaps engines). Rules whose
    /// config is unchanged keep all their state (timers, histories, latch); a changed rule starts
    /// fresh but keeps its latch; a latched rule may not be removed.
    ///
    /// # Errors
    /// The ids of latched rules that `file` would remove: reset them first.
    pub fn reload(&mut self, file: &RuleFile) -> Result<(), Vec<String>> {
        let removed_latched: Vec<String> =
            self.rules.iter().filter(|r| r.latched && !file.rules.contains_key(&r.id)).map(|r| r.id.clone()).collect();
        if !removed_latched.is_empty() {
            return Err(removed_latched);
        }
        let mut next = Engine::new(file);
        let mut old: HashMap<String, Rule> = self.rules.drain(..).map(|r| (r.id.clone(), r)).collect();
        for rule in &mut next.rules {
            if let Some(previous) = old.remove(&rule.id) {
                if previous.config == rule.config {
                    *rule = previous;
                } else if previous.latched {
                    rule.latched = true;
                    rule.active = true;
                }
            }
        }
        *self = next;
        Ok(())
    }

    /// A latch that survived a restart: the rule starts tripped (and its actions are re-asserted).
    pub fn restore_latch(&mut self, id: &str, out: &mut Vec<Outcome>) -> bool {
        let Some(rule) = self.rules.iter_mut().find(|r| r.id == id && r.severity == RuleSeverity::Trip) else {
            return false;
        };
        rule.active = true;
        rule.latched = true;
        out.push(Outcome::Latch { rule: rule.id.clone(), latched: true });
        if !rule.actions.is_empty() {
            out.push(Outcome::Fire {
                rule: rule.id.clone(),
                actions: rule.actions.clone(),
                sensor: String::new(),
                value: 0.0,
            });
        }
        true
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Whether the engine watches `sensor` at all (the fast path skips the rest).
    pub fn watches(&self, sensor: &str) -> bool {
        self.by_sensor.contains_key(sensor)
    }

    pub fn on_reading(
        &mut self,
        sensor: &str,
        ts_ns: i64,
        value: f64,
        now: Instant,
        wall_ns: i64,
        out: &mut Vec<Outcome>,
    ) {
        let Some(targets) = self.by_sensor.get(sensor) else { return };
        for &(r, s) in targets {
            let rule = &mut self.rules[r];
            let condition = rule.condition;
            let k_of_n = rule.k_of_n;
            let slot = &mut rule.slots[s];
            if slot.stale {
                // A reading ends staleness even before the recovered event arrives.
                slot.stale = false;
            }
            // A windowed rule judges the window's feature, once per completed window.
            let value = match slot.window.as_mut() {
                Some(w) => match w.push(value) {
                    Some(feature) => feature,
                    None => continue,
                },
                None => value,
            };
            slot.observe(condition, k_of_n, ts_ns, value);
            rule.evaluate(now, wall_ns, Some((sensor, value)), out);
        }
    }

    /// A sensor went stale (`true`) or recovered (`false`).
    pub fn on_stale(&mut self, sensor: &str, stale: bool, now: Instant, wall_ns: i64, out: &mut Vec<Outcome>) {
        let Some(targets) = self.by_sensor.get(sensor) else { return };
        for &(r, s) in targets {
            let rule = &mut self.rules[r];
            let policy = rule.stale;
            let slot = &mut rule.slots[s];
            if slot.stale == stale {
                continue;
            }
            slot.stale = stale;
            match (policy, stale) {
                (StalePolicy::Trip, true) => {
                    slot.bad_before_stale = slot.bad;
                    slot.bad = true;
                }
                (StalePolicy::Trip, false) => slot.bad = slot.bad_before_stale,
                (StalePolicy::Alarm, true) => {
                    let msg = format!("{}: sensor {sensor} is stale; the rule cannot see it", rule.id);
                    out.push(rule.event(EventKind::SensorStale, Severity::Warning, wall_ns, msg));
                }
                (StalePolicy::Alarm, false) | (StalePolicy::Hold, _) => {}
            }
            rule.evaluate(now, wall_ns, None, out);
        }
    }

    /// Advances time: fires rules whose on-delay elapsed and clears those whose off-delay did.
    pub fn tick(&mut self, now: Instant, wall_ns: i64, out: &mut Vec<Outcome>) {
        for rule in &mut self.rules {
            if (rule.holds && !rule.active) || (!rule.holds && rule.active && !rule.clear_reported) {
                rule.evaluate(now, wall_ns, None, out);
            }
        }
    }

    /// How often [`Engine::tick`] must run for delays to be honoured promptly.
    pub fn tick_interval(&self) -> Duration {
        self.rules
            .iter()
            .flat_map(|r| [r.on_delay, r.off_delay])
            .filter(|d| !d.is_zero())
            .min()
            .map_or(Duration::from_millis(100), |d| {
                (d / 10).clamp(Duration::from_millis(1), Duration::from_millis(100))
            })
    }

    /// Releases a latched rule, unless its condition or sensors are still bad.
    pub fn reset(&mut self, id: &str, wall_ns: i64, out: &mut Vec<Outcome>) -> ResetOutcome {
        let Some(rule) = self.rules.iter_mut().find(|r| r.id == id) else { return ResetOutcome::UnknownRule };
        if !rule.latched {
            return ResetOutcome::NotLatched;
        }
        let refuse = if let Some(s) = rule.slots.iter().find(|s| !s.seen) {
            Some(format!("sensor {} has not reported since the agent started", s.sensor))
        } else if let Some(s) = rule.slots.iter().find(|s| s.stale) {
            Some(format!("sensor {} is stale", s.sensor))
        } else if rule.holds {
            Some(format!("the condition still holds: {}", rule.describe()))
        } else {
            None
        };
        if let Some(reason) = refuse {
            let msg = format!("{}: reset refused: {reason}", rule.id);
            out.push(rule.event(EventKind::Reset, Severity::Warning, wall_ns, msg));
            return ResetOutcome::Refused(reason);
        }
        rule.latched = false;
        rule.active = false;
        rule.clear_reported = false;
        out.push(Outcome::Latch { rule: rule.id.clone(), latched: false });
        out.push(rule.event(EventKind::Reset, Severity::Info, wall_ns, format!("{}: latch reset", rule.id)));
        ResetOutcome::Released
    }

    /// Ids of the rules latched right now.
    pub fn latched(&self) -> Vec<String> {
        self.rules.iter().filter(|r| r.latched).map(|r| r.id.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::config::Context;

    fn engine(rules: &str) -> Engine {
        let text = format!("{rules}\n[actions.stop]\nkind = \"exec\"\nprogram = \"/bin/true\"\n");
        Engine::new(&RuleFile::parse(&text, Path::new("t.toml"), &Context::default()).unwrap())
    }

    /// Feeds readings of sensor `s` at 100 ms steps from `t0`; returns the kinds of the events.
    struct Run {
        e: Engine,
        t0: Instant,
        step: u32,
        out: Vec<Outcome>,
    }

    impl Run {
        fn new(e: Engine) -> Self {
            Run { e, t0: Instant::now(), step: 0, out: Vec::new() }
        }
        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }
        fn feed(&mut self, sensor: &str, value: f64) -> Vec<&'static str> {
            self.step += 1;
            let now = self.at(100 * self.step as u64);
            self.out.clear();
            self.e.on_reading(sensor, 100_000_000 * self.step as i64, value, now, 0, &mut self.out);
            self.kinds()
        }
        fn tick_at(&mut self, ms: u64) -> Vec<&'static str> {
            self.out.clear();
            let now = self.at(ms);
            self.e.tick(now, 0, &mut self.out);
            self.kinds()
        }
        fn kinds(&self) -> Vec<&'static str> {
            self.out
                .iter()
                .map(|o| match o {
                    Outcome::Fire { .. } => "fire",
                    Outcome::Latch { latched: true, .. } => "latch",
                    Outcome::Latch { latched: false, .. } => "unlatch",
                    Outcome::Event(e) => e.kind.name(),
                })
                .collect()
        }
    }

    #[test]
    fn hysteresis_boundaries_are_exact() {
        let mut r = Run::new(engine("[rules.hot]\nsensor = \"t\"\nabove = 90.0\nclear = 85.0\nactions = [\"stop\"]"));
        assert_eq!(r.feed("t", 90.0), Vec::<&str>::new(), "exactly at the trip level is not bad");
        assert_eq!(r.feed("t", 90.001), ["fire", "trip"]);
        assert_eq!(r.feed("t", 85.0), Vec::<&str>::new(), "exactly at the clear level is still bad");
        assert_eq!(r.feed("t", 89.0), Vec::<&str>::new(), "between clear and trip: still bad");
        assert_eq!(r.feed("t", 84.999), ["clear"]);
        assert_eq!(r.feed("t", 89.0), Vec::<&str>::new(), "below the trip level after clearing: good");
        assert_eq!(r.feed("t", 91.0), ["fire", "trip"], "fires again: a warning rule does not latch");
    }

    #[test]
    fn on_delay_and_off_delay_at_their_boundaries() {
        let mut r = Run::new(engine(
            "[rules.hot]\nsensor = \"t\"\nabove = 90.0\non_delay = \"250ms\"\noff_delay = \"200ms\"\nactions = [\"stop\"]",
        ));
        assert_eq!(r.feed("t", 95.0), Vec::<&str>::new(), "t=100ms: holds, delay running");
        assert_eq!(r.tick_at(349), Vec::<&str>::new(), "249 ms held: not yet");
        assert_eq!(r.tick_at(350), ["fire", "trip"], "250 ms held: fires exactly at the delay");
        r.step = 3; // next reading at t=400ms
        assert_eq!(r.feed("t", 80.0), Vec::<&str>::new(), "t=400: clear, off-delay running");
        assert_eq!(r.tick_at(599), Vec::<&str>::new());
        assert_eq!(r.tick_at(600), ["clear"]);

        // A condition that drops during the on-delay starts the delay over.
        let mut r =
            Run::new(engine("[rules.hot]\nsensor = \"t\"\nabove = 90.0\non_delay = \"250ms\"\nactions = [\"stop\"]"));
        r.feed("t", 95.0); // t=100
        r.feed("t", 80.0); // t=200
        r.feed("t", 95.0); // t=300
        assert_eq!(r.tick_at(549), Vec::<&str>::new());
        assert_eq!(r.tick_at(550), ["fire", "trip"]);
    }

    #[test]
    fn k_of_n_counts_exactly() {
        let mut r = Run::new(engine(
            "[rules.v]\nsensor = \"v\"\nabove = 10.0\nclear = 8.0\nk_of_n = [3, 5]\nactions = [\"stop\"]",
        ));
        for v in [11.0, 0.0, 11.0, 0.0] {
            assert!(r.feed("v", v).is_empty(), "2 of the last 5: not yet");
        }
        assert_eq!(r.feed("v", 11.0), ["fire", "trip"], "3 of the last 5");
        // Clearing: fewer than 3 of the last 5 at or above the clear level (8.0).
        assert!(r.feed("v", 9.0).is_empty(), "at-or-above-clear flags [0,1,0,1,1]: 3, still bad");
        assert!(r.feed("v", 0.0).is_empty(), "[1,0,1,1,0]: 3, still bad");
        assert_eq!(r.feed("v", 0.0), ["clear"], "[0,1,1,0,0]: 2 of 5, clear");
    }

    #[test]
    fn rate_of_change() {
        let mut r = Run::new(engine("[rules.r]\nsensor = \"p\"\nrate_above = 5.0\nactions = [\"stop\"]"));
        assert!(r.feed("p", 100.0).is_empty(), "no rate from one reading");
        assert!(r.feed("p", 100.5).is_empty(), "5.0/s exactly is not above");
        assert_eq!(r.feed("p", 101.1), ["fire", "trip"], "6/s");
    }

    #[test]
    fn a_trip_latches_and_a_reset_is_refused_while_bad() {
        let mut r = Run::new(engine(
            "[rules.hot]\nsensor = \"t\"\nabove = 90.0\nclear = 85.0\nseverity = \"trip\"\nactions = [\"stop\"]",
        ));
        assert_eq!(r.feed("t", 95.0), ["fire", "latch", "trip"]);
        let mut out = Vec::new();
        assert!(matches!(r.e.reset("hot", 0, &mut out), ResetOutcome::Refused(why) if why.contains("still holds")));
        assert_eq!(r.feed("t", 80.0), ["clear"], "condition cleared...");
        assert_eq!(r.feed("t", 91.0), Vec::<&str>::new(), "...but latched: no second trip while latched");
        r.feed("t", 80.0);
        assert_eq!(r.e.latched(), ["hot"]);
        assert_eq!(r.e.reset("hot", 0, &mut out), ResetOutcome::Released);
        assert_eq!(r.e.reset("hot", 0, &mut out), ResetOutcome::NotLatched);
        assert_eq!(r.e.reset("nope", 0, &mut out), ResetOutcome::UnknownRule);
        assert!(r.e.latched().is_empty());
    }

    #[test]
    fn a_restored_latch_refuses_reset_until_the_sensor_reports_good() {
        let mut e = engine("[rules.hot]\nsensor = \"t\"\nabove = 90.0\nseverity = \"trip\"\nactions = [\"stop\"]");
        let mut out = Vec::new();
        assert!(e.restore_latch("hot", &mut out));
        assert!(out.iter().any(|o| matches!(o, Outcome::Fire { .. })), "the trip is re-asserted at start");
        assert!(matches!(e.reset("hot", 0, &mut out), ResetOutcome::Refused(why) if why.contains("not reported")));
        e.on_reading("t", 1, 20.0, Instant::now(), 0, &mut out);
        assert_eq!(e.reset("hot", 0, &mut out), ResetOutcome::Released);
    }

    #[test]
    fn stale_policies() {
        let rules = "[rules.a]\nsensor = \"t\"\nabove = 90.0\nactions = [\"stop\"]\n\
                     [rules.b]\nsensor = \"t\"\nabove = 90.0\nstale = \"alarm\"\n\
                     [rules.c]\nsensor = \"t\"\nabove = 90.0\nstale = \"hold\"\nactions = [\"stop\"]";
        let mut e = engine(rules);
        let mut out = Vec::new();
        let now = Instant::now();
        e.on_reading("t", 1, 20.0, now, 0, &mut out);
        e.on_stale("t", true, now, 0, &mut out);
        let fired: Vec<&str> = out
            .iter()
            .filter_map(|o| if let Outcome::Fire { rule, .. } = o { Some(rule.as_str()) } else { None })
            .collect();
        assert_eq!(fired, ["a"], "only the fail-safe rule trips on a silent sensor");
        assert!(
            out.iter()
                .any(|o| matches!(o, Outcome::Event(ev) if ev.subject == "b" && ev.kind == EventKind::SensorStale))
        );
    }

    #[test]
    fn reload_keeps_the_state_of_unchanged_rules_and_refuses_to_drop_a_latch() {
        let base = "[rules.a]\nsensor = \"t\"\nabove = 90.0\non_delay = \"1s\"\nactions = [\"stop\"]\n\
                    [rules.b]\nsensor = \"t\"\nabove = 50.0\nseverity = \"trip\"\nactions = [\"stop\"]\n";
        let mut r = Run::new(engine(base));
        assert_eq!(r.feed("t", 95.0), ["fire", "latch", "trip"], "b trips, a's on-delay starts at t=100ms");
        // Change b's level only: a keeps its running on-delay, b keeps its latch.
        let changed = base.replace("above = 50.0", "above = 60.0");
        let file = |text: &str| {
            let text = format!("{text}\n[actions.stop]\nkind = \"exec\"\nprogram = \"/bin/true\"\n");
            RuleFile::parse(&text, Path::new("t.toml"), &Context::default()).unwrap()
        };
        r.e.reload(&file(&changed)).unwrap();
        assert_eq!(r.tick_at(1100), ["fire", "trip"], "a's timer survived the reload");
        assert_eq!(r.e.latched(), ["b"], "b's latch survived its own change");
        // Removing latched b is refused; the engine is untouched.
        let without_b = "[rules.a]\nsensor = \"t\"\nabove = 90.0\non_delay = \"1s\"\nactions = [\"stop\"]\n";
        assert_eq!(r.e.reload(&file(without_b)), Err(vec!["b".to_string()]));
        assert_eq!(r.e.rule_count(), 2);
    }

    fn sine(freq_hz: f64, amplitude_g: f64, rate: f64, n: usize) -> impl Iterator<Item = f64> {
        (0..n).map(move |i| amplitude_g * (2.0 * std::f64::consts::PI * freq_hz * i as f64 / rate).sin())
    }

    #[test]
    fn iso_zone_rule_trips_when_the_velocity_reaches_zone_d() {
        // Group 2, rigid: zone D from 4.5 mm/s RMS. A 100 Hz tone of velocity amplitude V mm/s
        // has acceleration amplitude 2*pi*f*V (mm/s^2), i.e. that / 9806.65 in g; RMS = V/sqrt(2).
        let rules = "[rules.iso]\nsensor = \"acc\"\niso10816 = { group = 2, foundation = \"rigid\", zone = \"D\", sample_rate_hz = 25600.0 }\n\
                     severity = \"trip\"\nactions = [\"stop\"]";
        let mut e = engine(rules);
        let g = |v_rms_mm_s: f64| 2f64.sqrt() * v_rms_mm_s * 2.0 * std::f64::consts::PI * 100.0 / 9806.65;
        let mut out = Vec::new();
        let now = Instant::now();
        for (i, x) in sine(100.0, g(4.0), 25600.0, 4096).enumerate() {
            e.on_reading("acc", i as i64, x, now, 0, &mut out);
        }
        assert!(out.is_empty(), "4.0 mm/s is zone C: no trip: {out:?}");
        for (i, x) in sine(100.0, g(5.0), 25600.0, 4095).enumerate() {
            e.on_reading("acc", i as i64, x, now, 0, &mut out);
        }
        assert!(out.is_empty(), "no verdict before the window is complete");
        e.on_reading("acc", 5000, 0.0, now, 0, &mut out);
        assert!(
            out.iter().any(|o| matches!(o, Outcome::Fire { rule, .. } if rule == "iso")),
            "5 mm/s is zone D: {out:?}"
        );
    }

    #[test]
    fn vibration_feature_rule_on_crest_factor() {
        let rules = "[rules.crest]\nsensor = \"acc\"\nvibration = { sample_rate_hz = 4096.0, window = 1024, feature = \"crest\" }\n\
                     above = 3.0\nactions = [\"stop\"]";
        let mut e = engine(rules);
        let mut out = Vec::new();
        let now = Instant::now();
        for (i, x) in sine(64.0, 1.0, 4096.0, 1024).enumerate() {
            e.on_reading("acc", i as i64, x, now, 0, &mut out);
        }
        assert!(out.is_empty(), "a sine's crest factor is sqrt(2)");
        for i in 0..1024 {
            let x = if i % 64 == 0 { 10.0 } else { 0.1 * ((i % 7) as f64 - 3.0) };
            e.on_reading("acc", 2000 + i, x, now, 0, &mut out);
        }
        assert!(out.iter().any(|o| matches!(o, Outcome::Fire { .. })), "impacts raise the crest factor: {out:?}");
    }

    #[test]
    fn voting_two_out_of_three() {
        let mut r = Run::new(engine(
            "[rules.v]\nsensors = [\"a\", \"b\", \"c\"]\nvote = \"2oo3\"\nabove = 10.0\nseverity = \"trip\"\nactions = [\"stop\"]",
        ));
        assert!(r.feed("a", 11.0).is_empty(), "one sensor alone does not trip a 2oo3 vote");
        assert!(r.feed("c", 5.0).is_empty());
        assert_eq!(r.feed("b", 12.0), ["fire", "latch", "trip"]);
    }
}

//! Replays a recording through the rules, as `edgeloop-agent rules test` does: when each rule
//! would have tripped and cleared, and whether that is what an expectations file says.
//!
//! # Time
//! The engine's clock is synthesised from the recording: a record at `ts_ns` happens at
//! `first_ts_ns + (ts_ns - first_ts_ns)` of simulated time (a record stamped earlier than the one
//! before it is taken to arrive at that one's time, as it would in the agent). Delays are
//! **exact**: besides every record, the engine is ticked at each instant an `on_delay` or
//! `off_delay` could end — a rule's condition only changes on a record of one of its sensors, so
//! those instants are that record's time plus the rule's delays. A huge gap between records costs
//! nothing. The live agent ticks every [`Engine::tick_interval`], so its trips may come up to one
//! interval later than the replay's. The replay ends at the last record: a delay still running
//! then does not fire.
//!
//! # Expectations
//! A TOML file (see `config/rules.example.expect.toml`):
//!
//! ```toml
//! tolerance = "1ms"              # default for every entry below
//!
//! [[trip]]                       # also [[clear]] and [[alarm]] (a `stale = "alarm"` rule's alarm)
//! rule = "spindle-overtemp"
//! at = "+2.2s"                   # offset from the first record, or an RFC 3339 time
//! tolerance = "100ms"            # optional
//! actions = ["node-relay", "plc-stop"]   # optional, [[trip]] only: exactly these actions fire
//!
//! [[no_trip]]                    # the rule must not trip at all
//! rule = "fridge-warm"
//! ```
//!
//! A rule named in a `[[trip]]` or `[[no_trip]]` is checked completely: each of its trips must
//! be listed, and each listed trip must happen. `[[clear]]` and `[[alarm]]` do the same for
//! clears and alarms. Transitions of rules and kinds that the file does not name are not checked.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use edgeloop_shared::{config::Problem, model::EventKind, units::HumanDuration};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::{
    config::RuleFile,
    engine::{Engine, Outcome},
    record::RecordedItem,
};

/// What a rule did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TransitionKind {
    Trip,
    Clear,
    /// A latch was reset (a recording holds no resets today, so a replay shows none).
    Reset,
    /// A `stale = "alarm"` rule lost sight of a sensor.
    Alarm,
}

impl TransitionKind {
    /// As printed in the table: `TRIP`, `CLEAR`, `RESET`, `ALARM`.
    pub const fn label(self) -> &'static str {
        match self {
            TransitionKind::Trip => "TRIP",
            TransitionKind::Clear => "CLEAR",
            TransitionKind::Reset => "RESET",
            TransitionKind::Alarm => "ALARM",
        }
    }

    /// The expectations table that lists this kind, e.g. `trip` for `[[trip]]`.
    pub const fn table(self) -> &'static str {
        match self {
            TransitionKind::Trip => "trip",
            TransitionKind::Clear => "clear",
            TransitionKind::Reset => "reset",
            TransitionKind::Alarm => "alarm",
        }
    }

    const fn verb(self) -> &'static str {
        match self {
            TransitionKind::Trip => "tripped",
            TransitionKind::Clear => "cleared",
            TransitionKind::Reset => "was reset",
            TransitionKind::Alarm => "raised an alarm",
        }
    }
}

/// A rule's trip, clear or alarm during a replay.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// Simulated wall time, nanoseconds since the Unix epoch.
    pub ts_ns: i64,
    /// Since the first record.
    pub offset: Duration,
    pub rule: String,
    pub kind: TransitionKind,
    /// The engine's event message, e.g. `spindle-overtemp: press-4.temperature = 90.5 (> 90)`.
    pub message: String,
    /// The actions fired with a trip (empty for the other kinds).
    pub actions: Vec<String>,
}

/// Runs `records` through a fresh engine for `file` and returns every trip, clear and alarm, in
/// order. See the module docs for how time is simulated.
pub fn replay(file: &RuleFile, records: impl Iterator<Item = RecordedItem>) -> Vec<Transition> {
    let mut engine = Engine::new(file);
    // Per sensor, the delays after which one of its records may make a rule fire or clear.
    let mut delays: HashMap<String, BTreeSet<u64>> = HashMap::new();
    for rule in file.rules.values() {
        for sensor in rule.sensor_list() {
            let entry = delays.entry(sensor).or_default();
            for d in [rule.on_delay.0, rule.off_delay.0] {
                if !d.is_zero() {
                    entry.insert(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                }
            }
        }
    }
    let base = Instant::now();
    let mut first: Option<i64> = None;
    let mut sim = i64::MIN;
    let mut deadlines: BTreeSet<i64> = BTreeSet::new();
    let mut outcomes = Vec::new();
    let mut collector = Collector::default();
    for item in records {
        let first_ns = *first.get_or_insert(item.ts_ns());
        sim = sim.max(item.ts_ns());
        let at = |ns: i64| {
            let since = u64::try_from(ns.saturating_sub(first_ns)).unwrap_or(0);
            // Only a recording spanning centuries could overflow the clock; it then stands still.
            base.checked_add(Duration::from_nanos(since)).unwrap_or(base)
        };
        // Deadlines at this very record's time go first: a condition that held for exactly
        // its on-delay has fired, whatever this record says.
        while let Some(deadline) = deadlines.first().copied().filter(|&d| d <= sim) {
            deadlines.remove(&deadline);
            engine.tick(at(deadline), deadline, &mut outcomes);
            collector.collect(&mut outcomes, first_ns);
        }
        let now = at(sim);
        match &item {
            RecordedItem::Reading { ts_ns, sensor, value } => {
                engine.on_reading(sensor, *ts_ns, *value, now, sim, &mut outcomes)
            }
            RecordedItem::Stale { sensor, .. } => engine.on_stale(sensor, true, now, sim, &mut outcomes),
            RecordedItem::Recovered { sensor, .. } => engine.on_stale(sensor, false, now, sim, &mut outcomes),
        }
        collector.collect(&mut outcomes, first_ns);
        if let Some(ds) = delays.get(item.sensor()) {
            for &d in ds {
                deadlines.insert(sim.saturating_add(i64::try_from(d).unwrap_or(i64::MAX)));
            }
        }
    }
    collector.transitions
}

#[derive(Default)]
struct Collector {
    /// Actions of rules that fired, until their trip event comes (right after, in the same batch).
    fired: HashMap<String, Vec<String>>,
    transitions: Vec<Transition>,
}

impl Collector {
    fn collect(&mut self, outcomes: &mut Vec<Outcome>, first_ns: i64) {
        for o in outcomes.drain(..) {
            match o {
                Outcome::Fire { rule, actions, .. } => {
                    self.fired.insert(rule, actions);
                }
                Outcome::Event(e) => {
                    let kind = match e.kind {
                        EventKind::Trip => TransitionKind::Trip,
                        EventKind::Clear => TransitionKind::Clear,
                        EventKind::Reset => TransitionKind::Reset,
                        EventKind::SensorStale => TransitionKind::Alarm,
                        _ => continue,
                    };
                    let actions = match kind {
                        TransitionKind::Trip => self.fired.remove(&e.subject).unwrap_or_default(),
                        _ => Vec::new(),
                    };
                    self.transitions.push(Transition {
                        ts_ns: e.ts_ns,
                        offset: Duration::from_nanos(u64::try_from(e.ts_ns.saturating_sub(first_ns)).unwrap_or(0)),
                        rule: e.subject,
                        kind,
                        message: e.message,
                        actions,
                    });
                }
                Outcome::Latch { .. } => {}
            }
        }
    }
}

/// The transitions as an aligned table with a header: time (RFC 3339, UTC), offset from the
/// first record, rule, event, message, actions.
pub fn table(transitions: &[Transition]) -> String {
    let rows: Vec<[String; 6]> = transitions
        .iter()
        .map(|t| {
            [
                format_wall(t.ts_ns),
                format_offset(i64::try_from(t.offset.as_nanos()).unwrap_or(i64::MAX)),
                t.rule.clone(),
                t.kind.label().to_owned(),
                t.message.clone(),
                if t.actions.is_empty() { "-".to_owned() } else { t.actions.join(", ") },
            ]
        })
        .collect();
    let header = ["TIME", "OFFSET", "RULE", "EVENT", "MESSAGE", "ACTIONS"].map(str::to_owned);
    let mut widths = [0; 6];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// RFC 3339 in UTC, to the millisecond when that is exact, else to the nanosecond.
pub fn format_wall(ts_ns: i64) -> String {
    // humantime cannot show times before 1970 (and an i64 of nanoseconds ends in 2262).
    let Ok(since) = u64::try_from(ts_ns) else { return format!("{ts_ns}ns") };
    let t = UNIX_EPOCH + Duration::from_nanos(since);
    if ts_ns % 1_000_000 == 0 {
        humantime::format_rfc3339_millis(t).to_string()
    } else {
        humantime::format_rfc3339_nanos(t).to_string()
    }
}

/// `+12.300s`: to the millisecond when that is exact, else to the nanosecond.
pub fn format_offset(ns: i64) -> String {
    let sign = if ns < 0 { '-' } else { '+' };
    let abs = ns.unsigned_abs();
    let (secs, sub) = (abs / 1_000_000_000, abs % 1_000_000_000);
    if sub % 1_000_000 == 0 {
        format!("{sign}{secs}.{:03}s", sub / 1_000_000)
    } else {
        format!("{sign}{secs}.{sub:09}s")
    }
}

/// When an expected transition happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Nanoseconds after the first record: `"+12.3s"`.
    Offset(i64),
    /// Nanoseconds since the Unix epoch: `"2023-11-14T22:13:22.2Z"`.
    Wall(i64),
}

impl When {
    /// Nanoseconds since the Unix epoch, for a recording whose first record is at `first_ts_ns`.
    pub fn resolve(self, first_ts_ns: i64) -> i64 {
        match self {
            When::Offset(o) => first_ts_ns.saturating_add(o),
            When::Wall(w) => w,
        }
    }
}

impl std::str::FromStr for When {
    type Err = String;

    fn from_str(s: &str) -> Result<When, String> {
        let hint = "use an offset from the first record such as \"+12.3s\" or \"+250ms\", \
                    or an RFC 3339 time such as \"2023-11-14T22:13:22.2Z\"";
        if let Some(offset) = s.strip_prefix('+') {
            return parse_offset(offset).map(When::Offset).map_err(|e| format!("{s:?}: {e}; {hint}"));
        }
        let t = humantime::parse_rfc3339_weak(s).map_err(|e| format!("{s:?}: {e}; {hint}"))?;
        let ns = t.duration_since(SystemTime::UNIX_EPOCH).map_err(|_| format!("{s:?} is before 1970"))?.as_nanos();
        i64::try_from(ns).map(When::Wall).map_err(|_| format!("{s:?} is too far in the future"))
    }
}

impl<'de> Deserialize<'de> for When {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// `12.3s` → nanoseconds, exactly (no floating point: `+0.3s` must mean 300 000 000 ns).
fn parse_offset(s: &str) -> Result<i64, String> {
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(end);
    let unit_ns: i128 = match unit.trim() {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" | "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "" => return Err("the offset needs a unit: ns, us, ms, s, m or h".into()),
        _ => return Err("unknown unit; use ns, us, ms, s, m or h".into()),
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let digits = |d: &str| d.is_empty() || d.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) || int.len() > 12 || frac.len() > 9 {
        return Err("not a number".into());
    }
    let value = |d: &str| if d.is_empty() { Ok(0) } else { d.parse::<i128>().map_err(|_| "not a number".to_owned()) };
    let scale = 10_i128.pow(frac.len() as u32);
    let frac_ns = value(frac)? * unit_ns;
    if frac_ns % scale != 0 {
        return Err("finer than a nanosecond".into());
    }
    i64::try_from(value(int)? * unit_ns + frac_ns / scale).map_err(|_| "too large".into())
}

/// One expected trip, clear or alarm.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    pub kind: TransitionKind,
    pub rule: String,
    pub at: When,
    pub tolerance: Duration,
    /// `[[trip]]` only: the actions that must fire, in any order.
    pub actions: Option<Vec<String>>,
    /// Where it is in the expectations file.
    pub line: usize,
}

/// A rule that must not trip.
#[derive(Debug, Clone, PartialEq)]
pub struct NoTrip {
    pub rule: String,
    pub line: usize,
}

/// A parsed and validated expectations file.
#[derive(Debug, Clone)]
pub struct Expectations {
    pub path: PathBuf,
    pub expected: Vec<Expectation>,
    pub no_trip: Vec<NoTrip>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExpectError {
    #[error("cannot read expectations {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectFile {
    #[serde(default = "default_tolerance")]
    tolerance: HumanDuration,
    #[serde(default)]
    trip: Vec<RawTrip>,
    #[serde(default)]
    clear: Vec<RawEvent>,
    #[serde(default)]
    alarm: Vec<RawEvent>,
    #[serde(default)]
    no_trip: Vec<RawNoTrip>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrip {
    rule: Spanned<String>,
    at: When,
    tolerance: Option<HumanDuration>,
    actions: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    rule: Spanned<String>,
    at: When,
    tolerance: Option<HumanDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNoTrip {
    rule: Spanned<String>,
}

fn default_tolerance() -> HumanDuration {
    HumanDuration(Duration::from_millis(1))
}

impl Expectations {
    /// Reads, parses and checks an expectations file against the rule file it tests.
    ///
    /// # Errors
    /// When it cannot be read, does not parse (with the line), or names rules or actions that
    /// `rules` does not have (every such problem, with its line).
    pub fn load(path: &Path, rules: &RuleFile) -> Result<Self, ExpectError> {
        let text = std::fs::read_to_string(path).map_err(|source| ExpectError::Read { path: path.into(), source })?;
        Self::parse(&text, path, rules)
    }

    pub fn parse(text: &str, path: &Path, rules: &RuleFile) -> Result<Self, ExpectError> {
        let file: ExpectFile =
            toml::from_str(text).map_err(|e| ExpectError::Parse { path: path.into(), message: e.to_string() })?;
        let line_of = |rule: &Spanned<String>| text[..rule.span().start.min(text.len())].matches('\n').count() + 1;
        let tolerance = |t: Option<HumanDuration>| t.unwrap_or(file.tolerance).0;
        let mut expected = Vec::new();
        for t in file.trip {
            expected.push(Expectation {
                kind: TransitionKind::Trip,
                line: line_of(&t.rule),
                rule: t.rule.into_inner(),
                at: t.at,
                tolerance: tolerance(t.tolerance),
                actions: t.actions,
            });
        }
        for (kind, list) in [(TransitionKind::Clear, file.clear), (TransitionKind::Alarm, file.alarm)] {
            for e in list {
                expected.push(Expectation {
                    kind,
                    line: line_of(&e.rule),
                    rule: e.rule.into_inner(),
                    at: e.at,
                    tolerance: tolerance(e.tolerance),
                    actions: None,
                });
            }
        }
        let no_trip: Vec<NoTrip> =
            file.no_trip.into_iter().map(|n| NoTrip { line: line_of(&n.rule), rule: n.rule.into_inner() }).collect();
        let expectations = Expectations { path: path.into(), expected, no_trip };
        let problems = expectations.problems(rules);
        if problems.is_empty() { Ok(expectations) } else { Err(ExpectError::Invalid { path: path.into(), problems }) }
    }

    fn problems(&self, rules: &RuleFile) -> Vec<Problem> {
        let mut out = Vec::new();
        let known: Vec<&str> = rules.rules.keys().map(String::as_str).collect();
        let check_rule = |table: &str, rule: &str, line: usize, out: &mut Vec<Problem>| {
            if !rules.rules.contains_key(rule) {
                out.push(Problem {
                    key: format!("line {line}, [[{table}]]"),
                    message: format!("rule {rule:?} is not in the rule file (it has: {})", known.join(", ")),
                });
            }
        };
        for e in &self.expected {
            check_rule(e.kind.table(), &e.rule, e.line, &mut out);
            for a in e.actions.iter().flatten() {
                if !rules.actions.contains_key(a) {
                    out.push(Problem {
                        key: format!("line {}, [[trip]]", e.line),
                        message: format!("action {a:?} is not defined in the rule file"),
                    });
                }
            }
        }
        for n in &self.no_trip {
            check_rule("no_trip", &n.rule, n.line, &mut out);
            if let Some(t) = self.expected.iter().find(|e| e.kind == TransitionKind::Trip && e.rule == n.rule) {
                out.push(Problem {
                    key: format!("line {}, [[no_trip]]", n.line),
                    message: format!("rule {:?} also has a [[trip]] at line {}; keep one of them", n.rule, t.line),
                });
            }
        }
        if self.is_empty() {
            out.push(Problem {
                key: "expectations".into(),
                message: "there are none; add a [[trip]], [[clear]], [[alarm]] or [[no_trip]] table".into(),
            });
        }
        out
    }

    /// How many expectations the file holds.
    pub fn len(&self) -> usize {
        self.expected.len() + self.no_trip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Compares a replay's transitions with the expectations. `first_ts_ns` is the recording's
    /// first timestamp, which offsets count from.
    pub fn check(&self, transitions: &[Transition], first_ts_ns: i64) -> Report {
        let file = self.path.file_name().map_or_else(|| self.path.display().to_string(), |f| f.display().to_string());
        let mut checked: BTreeSet<(TransitionKind, &str)> =
            self.expected.iter().map(|e| (e.kind, e.rule.as_str())).collect();
        checked.extend(self.no_trip.iter().map(|n| (TransitionKind::Trip, n.rule.as_str())));
        let mut report = Report { expectations: self.len(), met: 0, mismatches: Vec::new(), unchecked: 0 };
        let at = |ns: i64| format_offset(ns.saturating_sub(first_ts_ns));
        let expected_at = |e: &Expectation| {
            let when = match e.at {
                When::Offset(_) => at(e.at.resolve(first_ts_ns)),
                When::Wall(w) => format!("{} ({})", format_wall(w), at(w)),
            };
            format!("{when} ±{} ({file} line {})", humantime::format_duration(e.tolerance), e.line)
        };
        for &(kind, rule) in &checked {
            let actual: Vec<&Transition> = transitions.iter().filter(|t| t.kind == kind && t.rule == rule).collect();
            let mut expected: Vec<&Expectation> =
                self.expected.iter().filter(|e| e.kind == kind && e.rule == rule).collect();
            expected.sort_by_key(|e| e.at.resolve(first_ts_ns));
            let mut used = vec![false; actual.len()];
            let mut unmatched = Vec::new();
            for e in expected {
                let want = e.at.resolve(first_ts_ns);
                let tolerance = u64::try_from(e.tolerance.as_nanos()).unwrap_or(u64::MAX);
                let Some(i) = (0..actual.len()).find(|&i| !used[i] && actual[i].ts_ns.abs_diff(want) <= tolerance)
                else {
                    unmatched.push(e);
                    continue;
                };
                used[i] = true;
                let t = actual[i];
                match &e.actions {
                    Some(want) if !same_set(want, &t.actions) => report.mismatch(
                        MismatchKind::WrongActions,
                        rule,
                        format!(
                            "wrong actions: {rule} tripped at {} firing [{}], expected [{}] at {}",
                            at(t.ts_ns),
                            t.actions.join(", "),
                            want.join(", "),
                            expected_at(e)
                        ),
                    ),
                    _ => report.met += 1,
                }
            }
            let extra: Vec<&Transition> = actual.iter().zip(&used).filter(|(_, u)| !**u).map(|(t, _)| *t).collect();
            // A listed transition that happened at another time is one mismatch, not two.
            let pairs = unmatched.len().min(extra.len());
            for (e, t) in unmatched.iter().zip(&extra) {
                let want = e.at.resolve(first_ts_ns);
                let by = humantime::format_duration(Duration::from_nanos(t.ts_ns.abs_diff(want)));
                let late = if t.ts_ns > want { "late" } else { "early" };
                report.mismatch(
                    MismatchKind::WrongTime,
                    rule,
                    format!(
                        "wrong time: {rule} {} at {}, {by} {late}; expected at {}",
                        kind.verb(),
                        at(t.ts_ns),
                        expected_at(e)
                    ),
                );
            }
            for e in &unmatched[pairs..] {
                report.mismatch(
                    MismatchKind::Missing,
                    rule,
                    format!("missing {}: {rule} never {} at {}", kind.table(), kind.verb(), expected_at(e)),
                );
            }
            let no_trip = self.no_trip.iter().find(|n| kind == TransitionKind::Trip && n.rule == rule);
            for t in &extra[pairs..] {
                let why = match no_trip {
                    Some(n) => format!("[[no_trip]] ({file} line {}) says it must not", n.line),
                    None => format!("no [[{}]] expects it", kind.table()),
                };
                report.mismatch(
                    MismatchKind::Unexpected,
                    rule,
                    format!(
                        "unexpected {}: {rule} {} at {} ({}); {why}",
                        kind.table(),
                        kind.verb(),
                        at(t.ts_ns),
                        t.message
                    ),
                );
            }
            if no_trip.is_some() && actual.is_empty() {
                report.met += 1;
            }
        }
        report.unchecked = transitions.iter().filter(|t| !checked.contains(&(t.kind, t.rule.as_str()))).count();
        report
    }
}

fn same_set(a: &[String], b: &[String]) -> bool {
    fn set(v: &[String]) -> BTreeSet<&str> {
        v.iter().map(String::as_str).collect()
    }
    a.len() == b.len() && set(a) == set(b)
}

/// How a replay compared with its expectations.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub expectations: usize,
    pub met: usize,
    pub mismatches: Vec<Mismatch>,
    /// Transitions of rules and kinds that no expectation names.
    pub unchecked: usize,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
    }

    fn mismatch(&mut self, kind: MismatchKind, rule: &str, message: String) {
        self.mismatches.push(Mismatch { kind, rule: rule.to_owned(), message });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MismatchKind {
    /// An expected transition did not happen.
    Missing,
    /// A transition no expectation lists (or one that `[[no_trip]]` forbids).
    Unexpected,
    /// An expected transition happened, outside its tolerance.
    WrongTime,
    /// An expected trip fired other actions.
    WrongActions,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    pub kind: MismatchKind,
    pub rule: String,
    /// A sentence naming the rule, both times and the expectation's line.
    pub message: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Context;

    const T0: i64 = 1_700_000_000_000_000_000;
    const MS: i64 = 1_000_000;

    fn rules(text: &str) -> RuleFile {
        let text = format!("{text}\n[actions.stop]\nkind = \"exec\"\nprogram = \"/bin/true\"\n");
        RuleFile::parse(&text, Path::new("t.toml"), &Context::default()).unwrap()
    }

    fn at(ms: i64, sensor: &str, value: f64) -> RecordedItem {
        RecordedItem::Reading { ts_ns: T0 + ms * MS, sensor: sensor.into(), value }
    }

    fn summary(ts: &[Transition]) -> Vec<(String, &'static str, i64)> {
        ts.iter().map(|t| (t.rule.clone(), t.kind.label(), (t.ts_ns - T0) / 1_000)).collect()
    }

    const HOT: &str = "[rules.hot]\nsensor = \"t\"\nabove = 90.0\nclear = 85.0\non_delay = \"250ms\"\n\
                       off_delay = \"1s\"\nactions = [\"stop\"]";

    #[test]
    fn an_on_delay_trips_exactly_at_first_over_plus_delay_and_clears_after_the_off_delay() {
        // Readings 1 s apart: the trip falls between them, at 10.000 s + 250 ms exactly.
        let records = vec![
            at(0, "t", 20.0),
            at(10_000, "t", 95.0),
            at(11_000, "t", 96.0),
            at(20_000, "t", 80.0),
            at(20_500, "t", 80.0),
            at(600_000, "t", 80.0),
        ];
        let ts = replay(&rules(HOT), records.into_iter());
        assert_eq!(
            summary(&ts),
            [("hot".into(), "TRIP", 10_250_000), ("hot".into(), "CLEAR", 21_000_000)],
            "times in µs from the first record"
        );
        assert_eq!(ts[0].offset, Duration::from_millis(10_250));
        assert_eq!(ts[0].actions, ["stop"]);
        assert_eq!(ts[0].message, "hot: t = 95 (> 90)");
        assert!(ts[1].actions.is_empty());
    }

    #[test]
    fn a_condition_that_drops_before_its_delay_does_not_trip_and_a_delay_running_at_the_end_does_not_fire() {
        let records = vec![at(0, "t", 95.0), at(249, "t", 80.0), at(1_000, "t", 95.0), at(1_100, "t", 95.0)];
        assert!(replay(&rules(HOT), records.into_iter()).is_empty());
        // A reading exactly at the deadline: the condition held for the whole delay, so it fired.
        let records = vec![at(0, "t", 95.0), at(250, "t", 80.0)];
        assert_eq!(summary(&replay(&rules(HOT), records.into_iter())), [("hot".into(), "TRIP", 250_000)]);
    }

    #[test]
    fn a_stale_sensor_trips_a_fail_safe_rule_and_alarms_an_alarm_rule() {
        let file = rules(
            "[rules.safe]\nsensor = \"t\"\nabove = 90.0\nactions = [\"stop\"]\n\
             [rules.watch]\nsensor = \"t\"\nabove = 90.0\nstale = \"alarm\"",
        );
        let records = vec![
            at(0, "t", 20.0),
            RecordedItem::Stale { ts_ns: T0 + 3_000 * MS, sensor: "t".into() },
            RecordedItem::Recovered { ts_ns: T0 + 5_000 * MS, sensor: "t".into() },
        ];
        let ts = replay(&file, records.into_iter());
        assert_eq!(
            summary(&ts),
            [
                ("safe".into(), "TRIP", 3_000_000),
                ("watch".into(), "ALARM", 3_000_000),
                ("safe".into(), "CLEAR", 5_000_000)
            ]
        );
        assert!(ts[1].message.contains("stale"), "{}", ts[1].message);
    }

    #[test]
    fn k_of_n_trips_on_the_kth_reading_past_the_level() {
        let file = rules("[rules.v]\nsensor = \"v\"\nabove = 10.0\nk_of_n = [3, 5]\nactions = [\"stop\"]");
        let values = [11.0, 0.0, 11.0, 0.0, 11.0, 11.0, 0.0, 0.0, 0.0];
        let records = values.iter().enumerate().map(|(i, &v)| at(100 * i as i64, "v", v));
        assert_eq!(
            summary(&replay(&file, records)),
            [("v".into(), "TRIP", 400_000), ("v".into(), "CLEAR", 700_000)],
            "3 of the last 5 at the 5th reading; down to 2 of the last 5 only at the 8th"
        );
    }

    #[test]
    fn a_record_stamped_earlier_than_the_one_before_does_not_turn_time_back() {
        // The late reading clears the condition at 300 ms (when it arrived), not at 100 ms, so
        // the 1 s off-delay ends at 1.3 s.
        let records = vec![at(0, "t", 95.0), at(300, "u", 1.0), at(100, "t", 80.0), at(2_000, "u", 1.0)];
        let ts = replay(&rules(HOT), records.into_iter());
        assert_eq!(summary(&ts), [("hot".into(), "TRIP", 250_000), ("hot".into(), "CLEAR", 1_300_000)]);
    }

    fn transition(rule: &str, kind: TransitionKind, ms: i64, actions: &[&str]) -> Transition {
        Transition {
            ts_ns: T0 + ms * MS,
            offset: Duration::from_millis(ms as u64),
            rule: rule.into(),
            kind,
            message: format!("{rule}: m"),
            actions: actions.iter().map(|a| a.to_string()).collect(),
        }
    }

    const TWO: &str = "[rules.hot]\nsensor = \"t\"\nabove = 90.0\nactions = [\"stop\"]\n\
                       [rules.cold]\nsensor = \"t\"\nbelow = 0.0\nactions = [\"stop\"]";

    fn expect(text: &str) -> Expectations {
        Expectations::parse(text, Path::new("e.toml"), &rules(TWO)).unwrap()
    }

    #[test]
    fn expectations_met() {
        let e = expect(
            "[[trip]]\nrule = \"hot\"\nat = \"+2.2s\"\nactions = [\"stop\"]\n\
             [[clear]]\nrule = \"hot\"\nat = \"2023-11-14T22:13:25.0005Z\"\ntolerance = \"1ms\"\n\
             [[no_trip]]\nrule = \"cold\"\n",
        );
        let ts = [
            transition("hot", TransitionKind::Trip, 2_200, &["stop"]),
            transition("hot", TransitionKind::Clear, 5_000, &[]),
        ];
        let report = e.check(&ts, T0);
        assert!(report.passed(), "{:?}", report.mismatches);
        assert_eq!((report.met, report.expectations, report.unchecked), (3, 3, 0));
    }

    #[test]
    fn a_missing_trip_an_unexpected_trip_and_a_forbidden_trip_are_each_reported() {
        let e = expect("[[trip]]\nrule = \"hot\"\nat = \"+2.2s\"\n\n[[no_trip]]\nrule = \"cold\"\n");
        let report = e.check(&[transition("cold", TransitionKind::Trip, 700, &["stop"])], T0);
        let got: Vec<(MismatchKind, &str)> = report.mismatches.iter().map(|m| (m.kind, m.rule.as_str())).collect();
        assert_eq!(got, [(MismatchKind::Unexpected, "cold"), (MismatchKind::Missing, "hot")]);
        assert_eq!(report.mismatches[1].message, "missing trip: hot never tripped at +2.200s ±1ms (e.toml line 2)");
        assert_eq!(
            report.mismatches[0].message,
            "unexpected trip: cold tripped at +0.700s (cold: m); [[no_trip]] (e.toml line 6) says it must not"
        );

        let e = expect("[[trip]]\nrule = \"hot\"\nat = \"+2.2s\"\n");
        let ts = [
            transition("hot", TransitionKind::Trip, 2_200, &["stop"]),
            transition("hot", TransitionKind::Trip, 9_000, &["stop"]),
        ];
        let report = e.check(&ts, T0);
        assert_eq!(report.met, 1);
        assert_eq!(report.mismatches.len(), 1);
        assert_eq!(
            report.mismatches[0].message,
            "unexpected trip: hot tripped at +9.000s (hot: m); no [[trip]] expects it"
        );
    }

    #[test]
    fn a_trip_outside_its_tolerance_is_a_wrong_time() {
        let e = expect("tolerance = \"50ms\"\n[[trip]]\nrule = \"hot\"\nat = \"+2.2s\"\n");
        assert!(e.check(&[transition("hot", TransitionKind::Trip, 2_250, &["stop"])], T0).passed(), "at the tolerance");
        let report = e.check(&[transition("hot", TransitionKind::Trip, 2_251, &["stop"])], T0);
        assert_eq!(report.mismatches.len(), 1, "one mismatch, not a missing and an unexpected trip");
        assert_eq!(report.mismatches[0].kind, MismatchKind::WrongTime);
        assert_eq!(
            report.mismatches[0].message,
            "wrong time: hot tripped at +2.251s, 51ms late; expected at +2.200s ±50ms (e.toml line 3)"
        );
    }

    #[test]
    fn wrong_actions_are_reported() {
        let e = expect("[[trip]]\nrule = \"hot\"\nat = \"+1s\"\nactions = [\"stop\"]\n");
        let report = e.check(&[transition("hot", TransitionKind::Trip, 1_000, &[])], T0);
        assert_eq!(report.mismatches[0].kind, MismatchKind::WrongActions, "{:?}", report.mismatches);
    }

    #[test]
    fn invalid_expectations_name_the_line() {
        let err = Expectations::parse(
            "[[trip]]\nrule = \"hto\"\nat = \"+1s\"\n\n[[no_trip]]\nrule = \"hot\"\n[[trip]]\nrule = \"hot\"\nat = \"+1s\"\nactions = [\"stpo\"]\n",
            Path::new("e.toml"),
            &rules(TWO),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line 2, [[trip]]: rule \"hto\" is not in the rule file (it has: cold, hot)"), "{msg}");
        assert!(msg.contains("line 8, [[trip]]: action \"stpo\" is not defined"), "{msg}");
        assert!(msg.contains("line 6, [[no_trip]]: rule \"hot\" also has a [[trip]] at line 8"), "{msg}");

        for (text, wanted) in [
            ("[[trip]]\nrule = \"hot\"\nat = \"2.2s\"\n", "line 3"),
            ("[[trip]]\nrule = \"hot\"\nat = \"+2.2\"\n", "needs a unit"),
            ("[[trip]]\nrule = \"hot\"\nat = \"+1s\"\nwhen = 3\n", "unknown field"),
            ("", "there are none"),
        ] {
            let msg = Expectations::parse(text, Path::new("e.toml"), &rules(TWO)).unwrap_err().to_string();
            assert!(msg.contains(wanted), "{text:?}: {msg}");
        }
    }

    #[test]
    fn offsets_are_exact() {
        assert_eq!("+0.3s".parse(), Ok(When::Offset(300_000_000)));
        assert_eq!("+12.300s".parse(), Ok(When::Offset(12_300_000_000)));
        assert_eq!("+250ms".parse(), Ok(When::Offset(250_000_000)));
        assert_eq!("+1.5m".parse(), Ok(When::Offset(90_000_000_000)));
        assert_eq!("+.5us".parse(), Ok(When::Offset(500)));
        assert!("+0.5ns".parse::<When>().is_err());
        assert!("+1.2.3s".parse::<When>().is_err());
        assert_eq!(format_offset(12_300_000_000), "+12.300s");
        assert_eq!(format_offset(1), "+0.000000001s");
        assert_eq!(format_offset(-1_500_000_000), "-1.500s");
        assert_eq!(format_wall(T0 + 2_200 * MS), "2023-11-14T22:13:22.200Z");
        assert_eq!(format_wall(-1), "-1ns");
    }

    #[test]
    fn the_table_lines_up() {
        let t = table(&[
            transition("hot", TransitionKind::Trip, 2_200, &["stop", "siren"]),
            transition("spindle-overtemp", TransitionKind::Clear, 5_000, &[]),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("TIME "));
        assert_eq!(
            lines[1],
            "2023-11-14T22:13:22.200Z  +2.200s  hot               TRIP   hot: m               stop, siren"
        );
        assert_eq!(lines[2], "2023-11-14T22:13:25.000Z  +5.000s  spindle-overtemp  CLEAR  spindle-overtemp: m  -");
    }
}

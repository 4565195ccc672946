//! The alert lifecycle: turns "this rule's condition holds for this key" reports into alerts people
//! can see and acknowledge, and into the few grouped notifications they should receive.
//!
//! The engine is a pure state machine. Every input carries its time (`now_ns`, Unix ns) and nothing
//! here reads a clock, so the same inputs always give the same notifications, tests drive it with
//! explicit timestamps, and a book restored from its JSON continues where it stopped. The semantics
//! follow Prometheus and its Alertmanager wherever they fit.
//!
//! # Lifecycle
//! The automation evaluates its rules and calls [`AlertBook::observe`] with a [`Signal`] per alert
//! key, `active` telling whether the condition holds.
//! - inactive → **pending**: the condition holds, but not yet for the signal's `for_ns`.
//! - pending → **firing**: the condition has held for `for_ns` (at once when `for_ns` is 0). The
//!   alert fires at `started_ns + for_ns`, whether an observe or a tick notices it: a condition
//!   holds until the caller says it cleared.
//! - pending, condition clears: the alert disappears without a trace or a notification.
//! - firing → **resolved**: the condition cleared (`ended_ns`). A resolved alert stays visible for
//!   [`AlertsConfig::resolved_retention_ns`], then is forgotten.
//! - resolved, condition holds again: a new life (new `started_ns`, acknowledgement cleared) once it
//!   has held for `for_ns` again. Until then the resolved alert stays as it is, with
//!   [`AlertView::pending_since_ns`] set, so a resolution already owed to people is still sent.
//!
//! # Fingerprints
//! An alert is identified by [`fingerprint`] of its rule and labels (see there).
//!
//! # Grouping and timing
//! Alerts sharing receivers and the values of their policy's `group_by` labels form a group, and
//! people hear about groups, never single alerts: a site-wide outage of 200 agents is one
//! notification. A group's notification lists all its firing alerts, then those resolved since the
//! last one.
//! - A group opens when its first alert fires, and its first notification waits `group_wait_ns`
//!   from then, so everything failing together arrives together.
//! - Later changes (an alert newly firing, or one people were told about resolving) wait
//!   `group_wait_ns` from when [`AlertBook::tick`] first sees them, to gather their siblings too,
//!   and never go out sooner than `group_interval_ns` after the group's previous notification.
//! - A group with nothing new is re-sent every `repeat_interval_ns` while it has a firing alert,
//!   unless every firing alert in it is acknowledged.
//! - When everything people were told about has resolved, one resolved notification; the group
//!   then closes and a later alert opens a fresh one (with a fresh `group_wait_ns`).
//!
//! A flap inside the same notification interval (firing → resolved → firing) is not news: people
//! were told it fires, and it fires.
//!
//! # Muting: silences, inhibition, flapping
//! Muted alerts keep changing state and stay visible with the reason ([`AlertView`]), but appear in
//! no notification.
//! - A [`Silence`] mutes the alerts all its matchers match, between `starts_ns` and `ends_ns`.
//! - An [`InhibitRule`] mutes its target alerts while a firing source alert has the same values of
//!   its `equal` labels (a tripped machine's own vibration alerts say nothing new). An alert never
//!   inhibits itself.
//! - Silenced or inhibited alerts are dropped from what the group has told people, quietly: a
//!   muted alert that resolves sends nothing, and one still firing when its mute ends is announced
//!   again (as new) at the group's next evaluation.
//! - **Flapping**: each alert counts its state changes (into firing, into resolved) within the
//!   trailing `flap_window_ns`. At `flap_threshold` changes it is flapping, and it stays flapping
//!   until it has gone a whole `flap_window_ns` without a change. Meanwhile its notifications are
//!   held: the group neither announces nor forgets it, and once it is stable its state at that
//!   moment is reported like any other change (resolved if people were told it fired, firing if
//!   they were not). A `flap_threshold` of 0 turns this off.
//!
//! # Acknowledgement
//! [`AlertBook::ack`] records who took an alert. An acknowledged alert still appears in its group's
//! notifications and still gets its resolution, but a group whose firing alerts are all
//! acknowledged is not repeated.
//!
//! # Persistence
//! [`AlertBook`] serialises whole (alerts, group timers, what each group has told people, silences,
//! flap history), so a restored book sends no notification twice and keeps pending timers running
//! from their original start.
//!
//! # Errors
//! Every fallible call returns [`AlertError`], naming the rule, fingerprint, silence or config
//! entry at fault; nothing here panics on input.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{
    fingerprint::{fingerprint, group_key},
    muting::{InhibitRule, Matcher, Silence, SilenceView, all_match},
};
use crate::model::{Alert, AlertState, GroupStatus, Notification, Prediction, Severity};

const HOUR_NS: i64 = 3_600_000_000_000;

/// How a rule's alerts reach people: what they are grouped by, how fast, and to whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutePolicy {
    /// Label names whose values define a group (`["site"]`: one notification per site).
    pub group_by: Vec<String>,
    /// How long a new group gathers alerts before its first notification.
    pub group_wait_ns: i64,
    /// The least time between two notifications of one group about changes.
    pub group_interval_ns: i64,
    /// How often an unchanged, unacknowledged firing group is sent again.
    pub repeat_interval_ns: i64,
    /// Channel ids (`[notify.<id>]`).
    pub receivers: Vec<String>,
}

/// One report from rule evaluation: whether the condition of `rule` holds for the key `labels`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signal {
    pub rule: String,
    pub severity: Severity,
    /// Identity of the alert: must include `agent` (or `site`, for a site-wide alert); `sensor`, `site`, `machine` when known. A
    /// `rule` label is set to `rule`.
    pub labels: BTreeMap<String, String>,
    /// Whether the condition holds now.
    pub active: bool,
    pub summary: String,
    pub value: Option<f64>,
    pub limit: Option<f64>,
    pub prediction: Option<Prediction>,
    /// How long the condition must hold before the alert fires.
    pub for_ns: i64,
    pub policy: RoutePolicy,
}

/// The engine's settings; inhibit rules can be reloaded with [`AlertBook::set_config`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// How long a resolved alert (and an expired silence) stays visible.
    pub resolved_retention_ns: i64,
    /// The trailing window over which state changes are counted for flap detection, and the
    /// quiet time after which a flapping alert counts as stable again.
    pub flap_window_ns: i64,
    /// State changes within the window that make an alert flapping; 0 turns detection off.
    pub flap_threshold: u32,
    pub inhibit: Vec<InhibitRule>,
    /// The longest a silence may last: a longer one is refused, not shortened.
    #[serde(default = "default_max_silence_ns")]
    pub max_silence_ns: i64,
}

fn default_max_silence_ns() -> i64 {
    7 * 24 * HOUR_NS
}

impl Default for AlertsConfig {
    fn default() -> Self {
        // Three fire/resolve cycles in half an hour is flapping; a day of resolved history is
        // enough for a shift change to see what happened overnight.
        Self {
            resolved_retention_ns: 24 * HOUR_NS,
            flap_window_ns: HOUR_NS / 2,
            flap_threshold: 6,
            inhibit: Vec::new(),
            max_silence_ns: default_max_silence_ns(),
        }
    }
}

impl AlertsConfig {
    /// Every problem with this config, each naming its field; empty when it is valid.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.resolved_retention_ns < 0 {
            problems.push(format!("resolved_retention_ns is {}, it must not be negative", self.resolved_retention_ns));
        }
        if self.max_silence_ns <= 0 {
            problems.push(format!("max_silence_ns is {}, it must be positive", self.max_silence_ns));
        }
        if self.flap_threshold > 0 && self.flap_window_ns <= 0 {
            problems.push(format!(
                "flap_window_ns is {} with flap_threshold {}: give a positive window, or set flap_threshold to 0 to \
                 turn flap detection off",
                self.flap_window_ns, self.flap_threshold
            ));
        }
        for (i, rule) in self.inhibit.iter().enumerate() {
            for (side, matchers) in [("source", &rule.source), ("target", &rule.target)] {
                // An empty side would match every alert: one rule could mute the whole fleet.
                if matchers.is_empty() {
                    problems.push(format!("inhibit[{i}].{side} has no matcher: it would match every alert"));
                }
                for (j, m) in matchers.iter().enumerate() {
                    if m.label.trim().is_empty() {
                        problems.push(format!("inhibit[{i}].{side}[{j}] has an empty label name"));
                    }
                }
            }
            for (j, name) in rule.equal.iter().enumerate() {
                if name.trim().is_empty() {
                    problems.push(format!("inhibit[{i}].equal[{j}] is an empty label name"));
                }
            }
        }
        problems
    }
}

/// An alert as the API shows it: the alert plus why it is or is not being notified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertView {
    pub alert: Alert,
    /// Ids of the active silences that match it.
    pub silenced_by: Vec<String>,
    pub inhibited: bool,
    /// Fingerprint of a firing alert that inhibits it.
    pub inhibited_by: Option<String>,
    /// Its notifications are held until it is stable (see the module docs).
    pub flapping: bool,
    /// Set on a resolved alert whose condition holds again, waiting for `for` to fire anew.
    pub pending_since_ns: Option<i64>,
    /// The group its notifications go out in.
    pub group_key: String,
    pub receivers: Vec<String>,
}

/// Everything that can be wrong with a call's input.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AlertError {
    #[error("no alert with fingerprint {fingerprint}")]
    UnknownAlert { fingerprint: String },
    #[error("no silence with id {id}")]
    UnknownSilence { id: String },
    #[error("signal has an empty rule name")]
    EmptyRule,
    #[error("signal of rule {rule}: a label has an empty name")]
    EmptyLabelName { rule: String },
    #[error("signal of rule {rule}: label {label} is missing or empty")]
    MissingLabel { rule: String, label: String },
    #[error("signal of rule {rule}: for_ns is {for_ns}, it must not be negative")]
    NegativeFor { rule: String, for_ns: i64 },
    #[error("signal of rule {rule}: {field} is not a finite number")]
    NotFinite { rule: String, field: &'static str },
    #[error("route policy of rule {rule}: {reason}")]
    BadPolicy { rule: String, reason: String },
    #[error("alert {fingerprint}: an acknowledgement needs the name of who gives it")]
    AnonymousAck { fingerprint: String },
    #[error("silence ends at {ends_ns}, which is not after its start at {starts_ns}")]
    SilenceEndsBeforeStart { starts_ns: i64, ends_ns: i64 },
    #[error("silence has no matcher: it would mute every alert")]
    SilenceWithoutMatchers,
    #[error("silence matches every alert (each matcher also matches an absent label): add a matcher on a label value")]
    SilenceMatchesEverything,
    #[error(
        "silence matches every alert: {matcher} matches every value an alert can have; add a matcher naming a rule, machine or agent"
    )]
    SilenceMatchesEveryAlert { matcher: String },
    #[error("silence lasts {duration_s} s, longer than the {max_s} s allowed (automation max_silence)")]
    SilenceTooLong { duration_s: i64, max_s: i64 },
    #[error("silence needs {field} (who set it and why, for whoever finds it later)")]
    SilenceMissing { field: &'static str },
    #[error("silence matcher {index}: {reason}")]
    BadMatcher { index: usize, reason: String },
    #[error("invalid alerts config: {}", problems.join("; "))]
    InvalidConfig { problems: Vec<String> },
}

/// What the latest active signal said; applied to the alert while it lives, or when a new life
/// starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Latest {
    severity: Severity,
    summary: String,
    value: Option<f64>,
    limit: Option<f64>,
    prediction: Option<Prediction>,
}

impl Latest {
    fn apply(&self, alert: &mut Alert) {
        alert.severity = self.severity;
        alert.summary.clone_from(&self.summary);
        alert.value = self.value;
        alert.limit = self.limit;
        alert.prediction = self.prediction;
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct AlertRecord {
    alert: Alert,
    latest: Latest,
    for_ns: i64,
    policy: RoutePolicy,
    /// Receivers sorted and deduplicated.
    receivers: Vec<String>,
    group_key: String,
    /// When the current life fired.
    fired_ns: Option<i64>,
    /// A resolved alert whose condition holds again since then.
    pending_since_ns: Option<i64>,
    flapping: bool,
    /// Times of the latest state changes, at most `flap_threshold` of them: entering flapping
    /// needs that many within the window, leaving it needs only the last one.
    changes_ns: Vec<i64>,
}

impl AlertRecord {
    fn fire(&mut self, at_ns: i64, config: &AlertsConfig) {
        self.alert.state = AlertState::Firing;
        self.fired_ns = Some(at_ns);
        self.pending_since_ns = None;
        self.note_change(at_ns, config);
    }

    /// A resolved alert whose condition held long enough again: same identity, new life.
    fn relive(&mut self, started_ns: i64, config: &AlertsConfig) {
        self.latest.apply(&mut self.alert);
        self.alert.started_ns = started_ns;
        self.alert.ended_ns = None;
        self.alert.acked_by = None;
        self.alert.acked_ns = None;
        self.fire(started_ns.saturating_add(self.for_ns), config);
    }

    fn resolve(&mut self, now_ns: i64, config: &AlertsConfig) {
        self.alert.state = AlertState::Resolved;
        self.alert.ended_ns = Some(now_ns);
        self.note_change(now_ns, config);
    }

    fn note_change(&mut self, at_ns: i64, config: &AlertsConfig) {
        let threshold = usize::try_from(config.flap_threshold).unwrap_or(usize::MAX);
        if threshold == 0 {
            self.changes_ns.clear();
            self.flapping = false;
            return;
        }
        self.changes_ns.push(at_ns);
        let window_start = at_ns.saturating_sub(config.flap_window_ns);
        self.changes_ns.retain(|t| *t > window_start);
        if self.changes_ns.len() > threshold {
            let excess = self.changes_ns.len() - threshold;
            self.changes_ns.drain(..excess);
        }
        if self.changes_ns.len() >= threshold {
            self.flapping = true;
        }
    }

    /// Leaves flapping after a whole window without a change.
    fn settle(&mut self, now_ns: i64, config: &AlertsConfig) {
        if config.flap_threshold == 0 {
            self.flapping = false;
            self.changes_ns.clear();
            return;
        }
        let window_start = now_ns.saturating_sub(config.flap_window_ns);
        self.changes_ns.retain(|t| *t > window_start);
        if self.changes_ns.is_empty() {
            self.flapping = false;
        }
    }

    /// Fires a pending alert whose `for` has passed (the condition holds until told otherwise).
    fn promote(&mut self, now_ns: i64, config: &AlertsConfig) {
        match self.alert.state {
            AlertState::Pending => {
                let due = self.alert.started_ns.saturating_add(self.for_ns);
                if now_ns >= due {
                    self.fire(due, config);
                }
            }
            AlertState::Resolved => {
                if let Some(since) = self.pending_since_ns
                    && now_ns >= since.saturating_add(self.for_ns)
                {
                    self.relive(since, config);
                }
            }
            AlertState::Firing => {}
        }
    }
}

/// Timing state and memory of one group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Group {
    labels: BTreeMap<String, String>,
    receivers: Vec<String>,
    group_wait_ns: i64,
    group_interval_ns: i64,
    repeat_interval_ns: i64,
    /// When the oldest change people have not been told about was first seen.
    dirty_since_ns: Option<i64>,
    last_sent_ns: Option<i64>,
    /// Fingerprints of the firing alerts the last notification told people about (plus flapping
    /// ones whose news is held).
    notified: BTreeSet<String>,
}

/// Why an alert is muted right now.
#[derive(Debug, Default)]
struct Mute {
    silenced_by: Vec<String>,
    inhibited_by: Option<String>,
}

impl Mute {
    fn is_muted(&self) -> bool {
        !self.silenced_by.is_empty() || self.inhibited_by.is_some()
    }
}

/// All alerts, groups and silences of one collector (the leader); see the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertBook {
    config: AlertsConfig,
    records: BTreeMap<String, AlertRecord>,
    groups: BTreeMap<String, Group>,
    silences: BTreeMap<String, Silence>,
    next_silence: u64,
    /// Book-wide, so a group that closes and opens again never reuses a notification id.
    next_notification: u64,
    /// The latest time passed in; queries without a time ([`AlertBook::alerts`]) answer as of it.
    clock_ns: i64,
}

impl AlertBook {
    /// # Errors
    /// [`AlertError::InvalidConfig`] listing every problem of `config`.
    pub fn new(config: AlertsConfig) -> Result<Self, AlertError> {
        check_config(&config)?;
        Ok(Self {
            config,
            records: BTreeMap::new(),
            groups: BTreeMap::new(),
            silences: BTreeMap::new(),
            next_silence: 0,
            next_notification: 0,
            clock_ns: i64::MIN,
        })
    }

    pub fn config(&self) -> &AlertsConfig {
        &self.config
    }

    /// Replaces the config (hot reload); takes effect at the next tick. On error nothing changes.
    ///
    /// # Errors
    /// [`AlertError::InvalidConfig`] listing every problem of `config`.
    pub fn set_config(&mut self, config: AlertsConfig) -> Result<(), AlertError> {
        check_config(&config)?;
        self.config = config;
        Ok(())
    }

    /// Takes one report of rule evaluation; returns the alert's fingerprint. Notifications come
    /// from [`AlertBook::tick`], which the caller runs next.
    ///
    /// # Errors
    /// The signal's first problem, naming its rule: an empty rule or label name, a missing `agent`
    /// label, a negative `for_ns`, a value that is not finite, or an unusable route policy.
    pub fn observe(&mut self, now_ns: i64, signal: Signal) -> Result<String, AlertError> {
        check_signal(&signal)?;
        self.advance(now_ns);
        let Signal { rule, severity, mut labels, active, summary, value, limit, prediction, for_ns, policy } = signal;
        let fingerprint = fingerprint(&rule, &labels);
        let latest = Latest { severity, summary, value, limit, prediction };
        let config = &self.config;

        let Some(record) = self.records.get_mut(&fingerprint) else {
            if active {
                labels.insert("rule".to_owned(), rule.clone());
                let mut receivers = policy.receivers.clone();
                receivers.sort();
                receivers.dedup();
                let mut alert = Alert {
                    fingerprint: fingerprint.clone(),
                    rule,
                    severity,
                    state: AlertState::Pending,
                    labels,
                    summary: String::new(),
                    value: None,
                    limit: None,
                    prediction: None,
                    started_ns: now_ns,
                    ended_ns: None,
                    acked_by: None,
                    acked_ns: None,
                    dashboard_url: None,
                };
                latest.apply(&mut alert);
                let mut record = AlertRecord {
                    group_key: group_key(&receivers, &policy.group_by, &alert.labels),
                    alert,
                    latest,
                    for_ns,
                    policy,
                    receivers,
                    fired_ns: None,
                    pending_since_ns: None,
                    flapping: false,
                    changes_ns: Vec::new(),
                };
                record.promote(now_ns, config);
                self.records.insert(fingerprint.clone(), record);
            }
            return Ok(fingerprint);
        };

        if active {
            if record.policy != policy {
                let mut receivers = policy.receivers.clone();
                receivers.sort();
                receivers.dedup();
                record.group_key = group_key(&receivers, &policy.group_by, &record.alert.labels);
                record.receivers = receivers;
                record.policy = policy;
            }
            record.for_ns = for_ns;
            record.latest = latest;
            match record.alert.state {
                AlertState::Pending | AlertState::Firing => record.latest.apply(&mut record.alert),
                // The resolved alert keeps what it said when it fired; the new values wait for its
                // new life.
                AlertState::Resolved => {
                    record.pending_since_ns.get_or_insert(now_ns);
                }
            }
            record.promote(now_ns, config);
        } else {
            match record.alert.state {
                AlertState::Pending => {
                    self.records.remove(&fingerprint);
                }
                AlertState::Firing => record.resolve(now_ns, config),
                AlertState::Resolved => record.pending_since_ns = None,
            }
        }
        Ok(fingerprint)
    }

    /// Records who takes care of an alert. A later ack replaces an earlier one.
    ///
    /// # Errors
    /// [`AlertError::UnknownAlert`] for a fingerprint the book does not hold;
    /// [`AlertError::AnonymousAck`] when `by` is empty.
    pub fn ack(&mut self, fingerprint: &str, by: &str, now_ns: i64) -> Result<(), AlertError> {
        let record = self
            .records
            .get_mut(fingerprint)
            .ok_or_else(|| AlertError::UnknownAlert { fingerprint: fingerprint.to_owned() })?;
        if by.trim().is_empty() {
            return Err(AlertError::AnonymousAck { fingerprint: fingerprint.to_owned() });
        }
        record.alert.acked_by = Some(by.to_owned());
        record.alert.acked_ns = Some(now_ns);
        self.advance(now_ns);
        Ok(())
    }

    /// Adds a silence; returns its id.
    ///
    /// # Errors
    /// A silence that does not end after it starts, has no matcher, a matcher with an empty label
    /// name, matchers that would match every alert, or no `created_by` or `comment`.
    pub fn silence(&mut self, silence: Silence) -> Result<String, AlertError> {
        check_silence(&silence)?;
        let duration = silence.ends_ns.saturating_sub(silence.starts_ns);
        if duration > self.config.max_silence_ns {
            let s = |ns: i64| ns / 1_000_000_000;
            return Err(AlertError::SilenceTooLong { duration_s: s(duration), max_s: s(self.config.max_silence_ns) });
        }
        self.next_silence = self.next_silence.saturating_add(1);
        let id = format!("silence-{}", self.next_silence);
        self.silences.insert(id.clone(), silence);
        Ok(id)
    }

    /// Ends a silence now (one not started yet ends before it starts). Expiring an expired
    /// silence changes nothing, so an API retry is harmless.
    ///
    /// # Errors
    /// [`AlertError::UnknownSilence`] for an id the book does not hold.
    pub fn expire_silence(&mut self, id: &str, now_ns: i64) -> Result<(), AlertError> {
        let silence = self.silences.get_mut(id).ok_or_else(|| AlertError::UnknownSilence { id: id.to_owned() })?;
        if silence.ends_ns > now_ns {
            silence.ends_ns = now_ns;
            silence.starts_ns = silence.starts_ns.min(now_ns);
        }
        self.advance(now_ns);
        Ok(())
    }

    /// All silences held (pending, active, and expired ones within the retention), by id.
    pub fn silences(&self, now_ns: i64) -> Vec<SilenceView> {
        self.silences
            .iter()
            .map(|(id, s)| SilenceView { id: id.clone(), state: s.state(now_ns), silence: s.clone() })
            .collect()
    }

    /// Every alert held, by fingerprint, with its mute flags as of the latest time passed in.
    pub fn alerts(&self) -> Vec<AlertView> {
        let mutes = self.mutes(self.clock_ns);
        self.records.values().map(|r| view(r, mutes.get(&r.alert.fingerprint))).collect()
    }

    /// An alert's state, without working out why it is (not) notified: cheap enough to ask for
    /// every series on every tick.
    pub fn state(&self, fingerprint: &str) -> Option<AlertState> {
        self.records.get(fingerprint).map(|r| r.alert.state)
    }

    pub fn get(&self, fingerprint: &str) -> Option<AlertView> {
        let record = self.records.get(fingerprint)?;
        let mutes = self.mutes(self.clock_ns);
        Some(view(record, mutes.get(fingerprint)))
    }

    /// Advances every timer to `now_ns` and returns the notifications due, ordered by group key.
    /// Call it often (every second, and after observes): changes are first seen here.
    pub fn tick(&mut self, now_ns: i64) -> Vec<Notification> {
        self.advance(now_ns);
        let config = &self.config;
        for record in self.records.values_mut() {
            record.promote(now_ns, config);
            record.settle(now_ns, config);
        }
        let retention = self.config.resolved_retention_ns;
        self.records.retain(|_, r| {
            r.alert.state != AlertState::Resolved
                || r.pending_since_ns.is_some()
                || r.alert.ended_ns.is_none_or(|ended| now_ns < ended.saturating_add(retention))
        });
        self.silences.retain(|_, s| now_ns < s.ends_ns.saturating_add(retention));

        let mutes = self.mutes(now_ns);
        let mut members: BTreeMap<&str, Vec<&AlertRecord>> = BTreeMap::new();
        for record in self.records.values() {
            members.entry(record.group_key.as_str()).or_default().push(record);
        }
        // A group opens with its first firing alert; its wait runs from that alert's firing time,
        // not from when a tick noticed it.
        for (key, group_members) in &members {
            if self.groups.contains_key(*key) {
                continue;
            }
            let first_fired =
                group_members.iter().filter(|r| r.alert.state == AlertState::Firing).filter_map(|r| r.fired_ns).min();
            if let (Some(fired), Some(first)) = (first_fired, group_members.first()) {
                self.groups.insert((*key).to_owned(), open_group(first, fired));
            }
        }

        let mut out = Vec::new();
        for (key, group) in &mut self.groups {
            let group_members = members.get(key.as_str()).map_or(&[][..], Vec::as_slice);
            if let Some(first) = group_members.first() {
                // Members normally share one policy; the first by fingerprint decides if not.
                group.group_wait_ns = first.policy.group_wait_ns;
                group.group_interval_ns = first.policy.group_interval_ns;
                group.repeat_interval_ns = first.policy.repeat_interval_ns;
            }
            if let Some((status, alerts)) = evaluate(key, group, group_members, &self.records, &mutes, now_ns) {
                self.next_notification = self.next_notification.saturating_add(1);
                out.push(Notification {
                    id: format!("{key}-{}", self.next_notification),
                    group_key: key.clone(),
                    status,
                    group_labels: group.labels.clone(),
                    alerts,
                    receivers: group.receivers.clone(),
                    created_ns: now_ns,
                });
            }
        }
        self.groups.retain(|key, group| {
            let firing =
                members.get(key.as_str()).is_some_and(|m| m.iter().any(|r| r.alert.state == AlertState::Firing));
            firing || !group.notified.is_empty() || group.dirty_since_ns.is_some()
        });
        out
    }

    fn advance(&mut self, now_ns: i64) {
        self.clock_ns = self.clock_ns.max(now_ns);
    }

    /// Silences and inhibitions of every alert at `now_ns`; alerts that are not muted are absent.
    fn mutes(&self, now_ns: i64) -> BTreeMap<String, Mute> {
        let mut mutes: BTreeMap<String, Mute> = BTreeMap::new();
        for (id, silence) in self.silences.iter().filter(|(_, s)| s.is_active(now_ns)) {
            for record in self.records.values().filter(|r| all_match(&silence.matchers, &r.alert.labels)) {
                mutes.entry(record.alert.fingerprint.clone()).or_default().silenced_by.push(id.clone());
            }
        }
        for rule in &self.config.inhibit {
            // Index the firing sources by their `equal` values, so each target is one lookup
            // instead of a scan of every source.
            let mut sources: BTreeMap<Vec<&str>, Vec<&str>> = BTreeMap::new();
            for record in self.records.values() {
                if record.alert.state == AlertState::Firing && all_match(&rule.source, &record.alert.labels) {
                    let key = equal_values(&rule.equal, &record.alert.labels);
                    sources.entry(key).or_default().push(record.alert.fingerprint.as_str());
                }
            }
            if sources.is_empty() {
                continue;
            }
            for record in self.records.values().filter(|r| all_match(&rule.target, &r.alert.labels)) {
                let fp = record.alert.fingerprint.as_str();
                let key = equal_values(&rule.equal, &record.alert.labels);
                let source = sources.get(&key).and_then(|fps| fps.iter().find(|s| **s != fp));
                if let Some(source) = source {
                    let mute = mutes.entry(fp.to_owned()).or_default();
                    mute.inhibited_by.get_or_insert_with(|| (*source).to_owned());
                }
            }
        }
        mutes
    }
}

fn equal_values<'a>(names: &[String], labels: &'a BTreeMap<String, String>) -> Vec<&'a str> {
    names.iter().map(|n| labels.get(n).map_or("", String::as_str)).collect()
}

fn open_group(first: &AlertRecord, fired_ns: i64) -> Group {
    let labels = first
        .policy
        .group_by
        .iter()
        .filter_map(|name| first.alert.labels.get(name).map(|value| (name.clone(), value.clone())))
        .collect();
    Group {
        labels,
        receivers: first.receivers.clone(),
        group_wait_ns: first.policy.group_wait_ns,
        group_interval_ns: first.policy.group_interval_ns,
        repeat_interval_ns: first.policy.repeat_interval_ns,
        dirty_since_ns: Some(fired_ns),
        last_sent_ns: None,
        notified: BTreeSet::new(),
    }
}

/// Decides whether `group` sends now, and what; updates its memory when it does.
fn evaluate(
    key: &str,
    group: &mut Group,
    members: &[&AlertRecord],
    records: &BTreeMap<String, AlertRecord>,
    mutes: &BTreeMap<String, Mute>,
    now_ns: i64,
) -> Option<(GroupStatus, Vec<Alert>)> {
    let muted = |fp: &str| mutes.get(fp).is_some_and(Mute::is_muted);
    let mut firing: Vec<&Alert> = members
        .iter()
        .filter(|r| r.alert.state == AlertState::Firing && !r.flapping && !muted(&r.alert.fingerprint))
        .map(|r| &r.alert)
        .collect();
    let firing_set: BTreeSet<&str> = firing.iter().map(|a| a.fingerprint.as_str()).collect();

    let mut resolved: Vec<&Alert> = Vec::new();
    let mut held: BTreeSet<String> = BTreeSet::new();
    let mut stale: Vec<String> = Vec::new();
    for fp in group.notified.iter().filter(|fp| !firing_set.contains(fp.as_str())) {
        match records.get(fp) {
            Some(r) if r.group_key == key && r.flapping => {
                held.insert(fp.clone());
            }
            Some(r) if r.group_key == key && r.alert.state == AlertState::Resolved && !muted(fp) => {
                resolved.push(&r.alert);
            }
            // Muted, gone, or moved to another group: forget quietly (see "Muting").
            _ => stale.push(fp.clone()),
        }
    }
    for fp in &stale {
        group.notified.remove(fp);
    }

    let changed = !resolved.is_empty() || firing_set.iter().any(|fp| !group.notified.contains(*fp));
    let send = if changed {
        let since = *group.dirty_since_ns.get_or_insert(now_ns);
        let mut due = since.saturating_add(group.group_wait_ns);
        if let Some(last) = group.last_sent_ns {
            due = due.max(last.saturating_add(group.group_interval_ns));
        }
        now_ns >= due
    } else {
        // Whatever was new has gone again (resolved unseen, muted, flapping) before it was sent.
        group.dirty_since_ns = None;
        !firing.is_empty()
            && firing.iter().any(|a| a.acked_by.is_none())
            && group.last_sent_ns.is_some_and(|last| now_ns >= last.saturating_add(group.repeat_interval_ns))
    };
    if !send {
        return None;
    }

    let status = if firing.is_empty() { GroupStatus::Resolved } else { GroupStatus::Firing };
    // Worst first, then oldest: the line a person reads first is the one that matters most.
    let order = |a: &&Alert, b: &&Alert| {
        b.severity.cmp(&a.severity).then(a.started_ns.cmp(&b.started_ns)).then(a.fingerprint.cmp(&b.fingerprint))
    };
    firing.sort_by(order);
    resolved.sort_by(order);
    group.notified = firing_set.iter().map(|fp| (*fp).to_owned()).chain(held).collect();
    group.last_sent_ns = Some(now_ns);
    group.dirty_since_ns = None;
    let alerts = firing.into_iter().chain(resolved).cloned().collect();
    Some((status, alerts))
}

fn view(record: &AlertRecord, mute: Option<&Mute>) -> AlertView {
    AlertView {
        alert: record.alert.clone(),
        silenced_by: mute.map(|m| m.silenced_by.clone()).unwrap_or_default(),
        inhibited: mute.is_some_and(|m| m.inhibited_by.is_some()),
        inhibited_by: mute.and_then(|m| m.inhibited_by.clone()),
        flapping: record.flapping,
        pending_since_ns: record.pending_since_ns,
        group_key: record.group_key.clone(),
        receivers: record.receivers.clone(),
    }
}

fn check_config(config: &AlertsConfig) -> Result<(), AlertError> {
    let problems = config.problems();
    if problems.is_empty() { Ok(()) } else { Err(AlertError::InvalidConfig { problems }) }
}

fn check_signal(signal: &Signal) -> Result<(), AlertError> {
    let rule = || signal.rule.clone();
    if signal.rule.trim().is_empty() {
        return Err(AlertError::EmptyRule);
    }
    if signal.labels.keys().any(|name| name.trim().is_empty()) {
        return Err(AlertError::EmptyLabelName { rule: rule() });
    }
    // Site-wide alerts (a whole site silent) have a site but no single agent.
    let named = |l: &str| signal.labels.get(l).is_some_and(|v| !v.is_empty());
    if !named("agent") && !named("site") {
        return Err(AlertError::MissingLabel { rule: rule(), label: "agent".to_owned() });
    }
    if signal.for_ns < 0 {
        return Err(AlertError::NegativeFor { rule: rule(), for_ns: signal.for_ns });
    }
    // JSON has no NaN or infinity: one would make the persisted book unreadable.
    let mut numbers = vec![("value", signal.value), ("limit", signal.limit)];
    if let Some(p) = &signal.prediction {
        numbers.extend([
            ("prediction.limit", Some(p.limit)),
            ("prediction.value_now", Some(p.value_now)),
            ("prediction.rate_per_hour", Some(p.rate_per_hour)),
        ]);
    }
    if let Some((field, _)) = numbers.iter().find(|(_, n)| n.is_some_and(|n| !n.is_finite())) {
        return Err(AlertError::NotFinite { rule: rule(), field });
    }
    let policy = &signal.policy;
    let bad_policy = |reason: String| Err(AlertError::BadPolicy { rule: rule(), reason });
    if policy.group_wait_ns < 0 {
        return bad_policy(format!("group_wait_ns is {}, it must not be negative", policy.group_wait_ns));
    }
    // A zero interval would let a busy group notify on every tick: the storm this engine exists
    // to prevent.
    if policy.group_interval_ns <= 0 {
        return bad_policy(format!("group_interval_ns is {}, it must be positive", policy.group_interval_ns));
    }
    if policy.repeat_interval_ns <= 0 {
        return bad_policy(format!("repeat_interval_ns is {}, it must be positive", policy.repeat_interval_ns));
    }
    if policy.group_by.iter().any(|name| name.trim().is_empty()) {
        return bad_policy("group_by has an empty label name".to_owned());
    }
    Ok(())
}

fn check_silence(silence: &Silence) -> Result<(), AlertError> {
    if silence.ends_ns <= silence.starts_ns {
        return Err(AlertError::SilenceEndsBeforeStart { starts_ns: silence.starts_ns, ends_ns: silence.ends_ns });
    }
    if silence.matchers.is_empty() {
        return Err(AlertError::SilenceWithoutMatchers);
    }
    if let Some(index) = silence.matchers.iter().position(|m| m.label.trim().is_empty()) {
        return Err(AlertError::BadMatcher { index, reason: "empty label name".to_owned() });
    }
    // Matchers that each match every value their label can take (`rule != ""`, `rule =~ "*"`)
    // mute every alert, automatic commands included.
    if silence.matchers.iter().all(Matcher::matches_every_alert) {
        let matcher = silence.matchers.iter().map(Matcher::describe).collect::<Vec<_>>().join(", ");
        return Err(AlertError::SilenceMatchesEveryAlert { matcher });
    }
    // Alertmanager's rule: matchers that all match an absent label match alerts without that
    // label too, so such a silence would mute far more than its author meant.
    if all_match(&silence.matchers, &BTreeMap::new()) {
        return Err(AlertError::SilenceMatchesEverything);
    }
    if silence.created_by.trim().is_empty() {
        return Err(AlertError::SilenceMissing { field: "created_by" });
    }
    if silence.comment.trim().is_empty() {
        return Err(AlertError::SilenceMissing { field: "comment" });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::muting::{MatchOp, Matcher, SilenceState};
    use super::*;

    const S: i64 = 1_000_000_000;
    const MIN: i64 = 60 * S;
    const WAIT: i64 = 30 * S;
    const INTERVAL: i64 = 5 * MIN;
    const REPEAT: i64 = 60 * MIN;

    fn policy(group_by: &[&str]) -> RoutePolicy {
        RoutePolicy {
            group_by: group_by.iter().map(|s| (*s).to_owned()).collect(),
            group_wait_ns: WAIT,
            group_interval_ns: INTERVAL,
            repeat_interval_ns: REPEAT,
            receivers: vec!["ops-chat".to_owned()],
        }
    }

    fn signal(rule: &str, labels: &[(&str, &str)], active: bool) -> Signal {
        Signal {
            rule: rule.to_owned(),
            severity: Severity::Warning,
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            active,
            summary: format!("{rule} on {labels:?}"),
            value: Some(1.0),
            limit: Some(0.5),
            prediction: None,
            for_ns: 0,
            policy: policy(&["site"]),
        }
    }

    fn offline(agent: &str, active: bool) -> Signal {
        signal("agent_offline", &[("agent", agent), ("site", "plant-1")], active)
    }

    fn book() -> AlertBook {
        AlertBook::new(AlertsConfig::default()).unwrap()
    }

    /// Ticks every second over `[from, to]` and returns what was sent, with when.
    fn run(book: &mut AlertBook, from: i64, to: i64) -> Vec<Notification> {
        let mut out = Vec::new();
        let mut t = from;
        while t <= to {
            out.extend(book.tick(t));
            t += S;
        }
        out
    }

    fn fps(n: &Notification) -> Vec<&str> {
        n.alerts.iter().map(|a| a.fingerprint.as_str()).collect()
    }

    #[test]
    fn pending_fires_after_for() {
        let mut book = book();
        let mut s = signal("overtemp", &[("agent", "gw-1"), ("sensor", "t1"), ("site", "plant-1")], true);
        s.for_ns = 60 * S;
        let fp = book.observe(0, s.clone()).unwrap();
        assert_eq!(book.get(&fp).unwrap().alert.state, AlertState::Pending);
        book.observe(30 * S, s.clone()).unwrap();
        assert!(book.tick(30 * S).is_empty());
        assert_eq!(book.get(&fp).unwrap().alert.state, AlertState::Pending);
        book.observe(60 * S, s).unwrap();
        let view = book.get(&fp).unwrap();
        assert_eq!(view.alert.state, AlertState::Firing);
        assert_eq!(view.alert.started_ns, 0);
        assert_eq!(view.alert.labels.get("rule").map(String::as_str), Some("overtemp"));
        // First notification group_wait after it fired, not after it started.
        assert!(run(&mut book, 60 * S, 89 * S).is_empty());
        let sent = run(&mut book, 90 * S, 90 * S);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].status, GroupStatus::Firing);
        assert_eq!(fps(&sent[0]), [fp.as_str()]);
        assert_eq!(sent[0].group_labels.get("site").map(String::as_str), Some("plant-1"));
    }

    #[test]
    fn tick_fires_a_pending_alert_without_a_new_observe() {
        let mut book = book();
        let mut s = offline("gw-1", true);
        s.for_ns = 60 * S;
        let fp = book.observe(0, s).unwrap();
        let sent = run(&mut book, 0, 100 * S);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].created_ns, 90 * S);
        assert_eq!(book.get(&fp).unwrap().alert.state, AlertState::Firing);
    }

    #[test]
    fn pending_that_clears_disappears_without_a_notification() {
        let mut book = book();
        let mut s = offline("gw-1", true);
        s.for_ns = 60 * S;
        book.observe(0, s.clone()).unwrap();
        s.active = false;
        book.observe(30 * S, s).unwrap();
        assert!(run(&mut book, 0, 10 * MIN).is_empty());
        assert!(book.alerts().is_empty());
    }

    #[test]
    fn fifty_agents_offline_are_one_notification_and_a_51st_follows_after_group_interval() {
        let mut book = book();
        let mut sent = Vec::new();
        // 50 agents drop within 25 s, observed and ticked as they come.
        for i in 0..50 {
            let t = i * S / 2;
            book.observe(t, offline(&format!("gw-{i:02}"), true)).unwrap();
            sent.extend(book.tick(t));
        }
        sent.extend(run(&mut book, 25 * S, 60 * S));
        assert_eq!(sent.len(), 1, "one notification for the outage");
        assert_eq!(sent[0].created_ns, WAIT);
        assert_eq!(sent[0].alerts.len(), 50);
        assert!(sent[0].alerts.iter().all(|a| a.state == AlertState::Firing));
        let first_id = sent[0].id.clone();
        let key = sent[0].group_key.clone();

        book.observe(61 * S, offline("gw-50", true)).unwrap();
        // Not before group_interval after the first notification...
        assert!(run(&mut book, 61 * S, WAIT + INTERVAL - S).is_empty());
        // ...and then exactly one, with the whole group.
        let follow = run(&mut book, WAIT + INTERVAL, WAIT + INTERVAL + 10 * MIN);
        assert_eq!(follow.len(), 1);
        assert_eq!(follow[0].created_ns, WAIT + INTERVAL);
        assert_eq!(follow[0].alerts.len(), 51);
        assert_eq!(follow[0].group_key, key);
        assert_ne!(follow[0].id, first_id);
    }

    #[test]
    fn repeat_interval_resends_and_ack_stops_repeats_but_not_resolution() {
        let mut book = book();
        let fp = book.observe(0, offline("gw-1", true)).unwrap();
        let first = run(&mut book, 0, WAIT);
        assert_eq!(first.len(), 1);
        assert!(run(&mut book, WAIT + S, WAIT + REPEAT - S).is_empty());
        let repeat = book.tick(WAIT + REPEAT);
        assert_eq!(repeat.len(), 1);
        assert_eq!(repeat[0].group_key, first[0].group_key);

        book.ack(&fp, "maria", WAIT + REPEAT + S).unwrap();
        let view = book.get(&fp).unwrap();
        assert_eq!(view.alert.acked_by.as_deref(), Some("maria"));
        assert_eq!(view.alert.acked_ns, Some(WAIT + REPEAT + S));
        assert!(run(&mut book, WAIT + REPEAT + S, WAIT + 3 * REPEAT).is_empty());

        let end = WAIT + 3 * REPEAT + S;
        book.observe(end, offline("gw-1", false)).unwrap();
        let resolved = run(&mut book, end, end + WAIT);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].status, GroupStatus::Resolved);
        assert_eq!(resolved[0].alerts[0].acked_by.as_deref(), Some("maria"));
    }

    #[test]
    fn ack_of_unknown_alert_or_by_nobody_is_refused() {
        let mut book = book();
        assert_eq!(
            book.ack("0123456789abcdef", "maria", 0),
            Err(AlertError::UnknownAlert { fingerprint: "0123456789abcdef".to_owned() })
        );
        let fp = book.observe(0, offline("gw-1", true)).unwrap();
        assert_eq!(book.ack(&fp, " ", 0), Err(AlertError::AnonymousAck { fingerprint: fp.clone() }));
    }

    #[test]
    fn group_resolving_sends_one_resolved_notification_then_closes() {
        let mut book = book();
        for i in 0..10 {
            book.observe(0, offline(&format!("gw-{i}"), true)).unwrap();
        }
        assert_eq!(run(&mut book, 0, 2 * MIN).len(), 1);
        // They come back one by one within the group wait.
        let mut sent = Vec::new();
        for i in 0..10 {
            let t = 10 * MIN + i * 2 * S;
            book.observe(t, offline(&format!("gw-{i}"), false)).unwrap();
            sent.extend(book.tick(t));
        }
        sent.extend(run(&mut book, 11 * MIN, 30 * MIN));
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].status, GroupStatus::Resolved);
        assert_eq!(sent[0].alerts.len(), 10);
        assert!(sent[0].alerts.iter().all(|a| a.state == AlertState::Resolved && a.ended_ns.is_some()));
        assert!(book.groups.is_empty());
        // Resolved alerts stay visible for the retention, then go.
        assert_eq!(book.alerts().len(), 10);
        book.tick(12 * MIN + 24 * 60 * MIN);
        assert!(book.alerts().is_empty());
    }

    #[test]
    fn partial_resolution_lists_firing_first_then_resolved() {
        let mut book = book();
        book.observe(0, offline("gw-1", true)).unwrap();
        book.observe(0, offline("gw-2", true)).unwrap();
        assert_eq!(run(&mut book, 0, MIN).len(), 1);
        book.observe(2 * MIN, offline("gw-1", false)).unwrap();
        let sent = run(&mut book, 2 * MIN, 20 * MIN);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].created_ns, WAIT + INTERVAL);
        assert_eq!(sent[0].status, GroupStatus::Firing);
        let states: Vec<AlertState> = sent[0].alerts.iter().map(|a| a.state).collect();
        assert_eq!(states, [AlertState::Firing, AlertState::Resolved]);
    }

    #[test]
    fn a_resolved_alert_that_fires_again_starts_a_new_life() {
        let mut book = book();
        let fp = book.observe(0, offline("gw-1", true)).unwrap();
        book.ack(&fp, "maria", S).unwrap();
        run(&mut book, 0, MIN);
        book.observe(2 * MIN, offline("gw-1", false)).unwrap();
        assert_eq!(run(&mut book, 2 * MIN, 10 * MIN).len(), 1);
        book.observe(20 * MIN, offline("gw-1", true)).unwrap();
        let view = book.get(&fp).unwrap();
        assert_eq!(view.alert.state, AlertState::Firing);
        assert_eq!(view.alert.started_ns, 20 * MIN);
        assert_eq!(view.alert.ended_ns, None);
        assert_eq!(view.alert.acked_by, None);
        let sent = run(&mut book, 20 * MIN, 21 * MIN);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].created_ns, 20 * MIN + WAIT);
    }

    #[test]
    fn resolved_alert_pending_again_keeps_its_owed_resolution() {
        let mut book = book();
        let mut s = offline("gw-1", true);
        s.for_ns = 10 * MIN;
        let fp = book.observe(0, s.clone()).unwrap();
        assert_eq!(run(&mut book, 0, 11 * MIN).len(), 1);
        s.active = false;
        book.observe(12 * MIN, s.clone()).unwrap();
        s.active = true;
        book.observe(12 * MIN + S, s.clone()).unwrap();
        let view = book.get(&fp).unwrap();
        assert_eq!(view.alert.state, AlertState::Resolved);
        assert_eq!(view.pending_since_ns, Some(12 * MIN + S));
        let sent = run(&mut book, 12 * MIN + S, 20 * MIN);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].status, GroupStatus::Resolved);
        // The condition kept holding: a new life fires `for` after it started holding again.
        let sent = run(&mut book, 20 * MIN + S, 30 * MIN);
        assert_eq!(sent.len(), 1);
        assert_eq!(book.get(&fp).unwrap().alert.started_ns, 12 * MIN + S);
    }

    fn silence_on(machine: &str, starts_ns: i64, ends_ns: i64) -> Silence {
        Silence {
            matchers: vec![Matcher::equal("machine", machine)],
            starts_ns,
            ends_ns,
            created_by: "maria".to_owned(),
            comment: "bearing swap".to_owned(),
        }
    }

    fn vibration(machine: &str) -> Signal {
        let mut s = signal(
            "vibration_high",
            &[("agent", "gw-1"), ("machine", machine), ("kind", "vibration"), ("site", "plant-1")],
            true,
        );
        s.policy = policy(&["machine"]);
        s
    }

    #[test]
    fn silence_mutes_then_after_expiry_the_still_firing_alert_is_notified() {
        let mut book = book();
        let id = book.silence(silence_on("press-3", 0, 10 * MIN)).unwrap();
        let fp = book.observe(S, vibration("press-3")).unwrap();
        assert!(run(&mut book, S, 10 * MIN - S).is_empty());
        let view = book.get(&fp).unwrap();
        assert_eq!(view.silenced_by, [id]);
        assert_eq!(view.alert.state, AlertState::Firing);
        assert_eq!(book.silences(5 * MIN)[0].state, SilenceState::Active);

        let sent = run(&mut book, 10 * MIN, 20 * MIN);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].created_ns, 10 * MIN + WAIT);
        assert_eq!(fps(&sent[0]), [fp.as_str()]);
        assert!(book.get(&fp).unwrap().silenced_by.is_empty());
        assert_eq!(book.silences(20 * MIN)[0].state, SilenceState::Expired);
    }

    #[test]
    fn silenced_alert_that_resolves_sends_nothing() {
        let mut book = book();
        book.observe(0, vibration("press-3")).unwrap();
        assert_eq!(run(&mut book, 0, MIN).len(), 1);
        book.silence(silence_on("press-3", MIN, 60 * MIN)).unwrap();
        let mut s = vibration("press-3");
        s.active = false;
        book.observe(2 * MIN, s).unwrap();
        assert!(run(&mut book, MIN, 2 * 60 * MIN).is_empty());
    }

    #[test]
    fn expire_silence_early() {
        let mut book = book();
        let id = book.silence(silence_on("press-3", 0, 60 * MIN)).unwrap();
        book.observe(S, vibration("press-3")).unwrap();
        assert!(run(&mut book, S, 2 * MIN).is_empty());
        book.expire_silence(&id, 2 * MIN).unwrap();
        book.expire_silence(&id, 3 * MIN).unwrap();
        let views = book.silences(2 * MIN);
        assert_eq!(views[0].state, SilenceState::Expired);
        assert_eq!(views[0].silence.ends_ns, 2 * MIN);
        let sent = run(&mut book, 2 * MIN, 10 * MIN);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].created_ns, 2 * MIN + WAIT);
        assert_eq!(
            book.expire_silence("silence-99", 0),
            Err(AlertError::UnknownSilence { id: "silence-99".to_owned() })
        );
        // Expired silences are forgotten after the retention.
        book.tick(2 * MIN + 24 * 60 * MIN);
        assert!(book.silences(2 * MIN + 24 * 60 * MIN).is_empty());
    }

    #[test]
    fn glob_silence() {
        let mut book = book();
        book.silence(Silence { matchers: vec![Matcher::glob("machine", "press-*")], ..silence_on("", 0, 60 * MIN) })
            .unwrap();
        book.observe(0, vibration("press-3")).unwrap();
        book.observe(0, vibration("lathe-1")).unwrap();
        let sent = run(&mut book, 0, 5 * MIN);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].group_labels.get("machine").map(String::as_str), Some("lathe-1"));
    }

    #[test]
    fn invalid_silences_are_refused_with_a_clear_error() {
        let mut book = book();
        let err = book.silence(silence_on("press-3", 10, 10)).unwrap_err();
        assert_eq!(err, AlertError::SilenceEndsBeforeStart { starts_ns: 10, ends_ns: 10 });
        assert_eq!(err.to_string(), "silence ends at 10, which is not after its start at 10");
        let no_matchers = Silence { matchers: vec![], ..silence_on("press-3", 0, 10) };
        assert_eq!(book.silence(no_matchers), Err(AlertError::SilenceWithoutMatchers));
        let empty_label = Silence {
            matchers: vec![Matcher::equal("machine", "x"), Matcher::equal(" ", "x")],
            ..silence_on("", 0, 10)
        };
        assert_eq!(
            book.silence(empty_label),
            Err(AlertError::BadMatcher { index: 1, reason: "empty label name".to_owned() })
        );
        let everything = Silence { matchers: vec![Matcher::not_equal("machine", "x")], ..silence_on("", 0, 10) };
        assert_eq!(book.silence(everything), Err(AlertError::SilenceMatchesEverything));
        let not_glob = Matcher { op: MatchOp::NotGlob, ..Matcher::not_equal("rule", "") };
        for (matchers, named) in [
            (vec![Matcher::not_equal("rule", "")], "rule not_equal \"\""),
            (vec![Matcher::glob("rule", "*")], "rule glob \"*\""),
            (vec![Matcher::glob("machine", "*"), not_glob], "machine glob \"*\", rule not_glob \"\""),
        ] {
            let err = book.silence(Silence { matchers, ..silence_on("", 0, 10) }).unwrap_err();
            assert!(matches!(err, AlertError::SilenceMatchesEveryAlert { .. }), "{err}");
            assert!(err.to_string().contains(named), "{err}");
        }
        let week = 7 * 24 * 60 * MIN;
        let too_long = book.silence(silence_on("press-3", 0, week + S)).unwrap_err();
        assert_eq!(too_long, AlertError::SilenceTooLong { duration_s: week / S + 1, max_s: week / S });
        let anonymous = Silence { created_by: String::new(), ..silence_on("press-3", 0, 10) };
        assert_eq!(book.silence(anonymous), Err(AlertError::SilenceMissing { field: "created_by" }));
        assert!(book.silences(0).is_empty());
        assert!(book.silence(silence_on("press-3", 0, week)).is_ok(), "exactly the maximum is allowed");
    }

    fn trip_config() -> AlertsConfig {
        AlertsConfig {
            inhibit: vec![InhibitRule {
                source: vec![Matcher::equal("kind", "trip")],
                target: vec![Matcher::glob("kind", "vibration")],
                equal: vec!["machine".to_owned()],
            }],
            ..AlertsConfig::default()
        }
    }

    #[test]
    fn firing_trip_inhibits_vibration_on_its_machine_only() {
        let mut book = AlertBook::new(trip_config()).unwrap();
        let mut trip = signal("spindle_trip", &[("agent", "gw-1"), ("machine", "press-3"), ("kind", "trip")], true);
        trip.policy = policy(&["machine"]);
        trip.severity = Severity::Critical;
        let trip_fp = book.observe(0, trip.clone()).unwrap();
        let own = book.observe(S, vibration("press-3")).unwrap();
        let other = book.observe(S, vibration("press-4")).unwrap();
        let sent = run(&mut book, 0, 5 * MIN);
        let all: Vec<&str> = sent.iter().flat_map(fps).collect();
        assert_eq!(sent.len(), 2, "one per machine group");
        assert!(all.contains(&trip_fp.as_str()));
        assert!(all.contains(&other.as_str()));
        assert!(!all.contains(&own.as_str()));
        let view = book.get(&own).unwrap();
        assert!(view.inhibited);
        assert_eq!(view.inhibited_by.as_deref(), Some(trip_fp.as_str()));
        assert!(!book.get(&other).unwrap().inhibited);
        assert!(!book.get(&trip_fp).unwrap().inhibited);

        // The machine is reset but still vibrates: now people hear about it.
        trip.active = false;
        book.observe(10 * MIN, trip).unwrap();
        let sent = run(&mut book, 10 * MIN, 20 * MIN);
        assert_eq!(sent.len(), 1);
        let states: Vec<(&str, AlertState)> =
            sent[0].alerts.iter().map(|a| (a.fingerprint.as_str(), a.state)).collect();
        assert_eq!(states, [(own.as_str(), AlertState::Firing), (trip_fp.as_str(), AlertState::Resolved)]);
    }

    #[test]
    fn inhibit_rules_reload() {
        let mut book = book();
        let mut trip = signal("spindle_trip", &[("agent", "gw-1"), ("machine", "press-3"), ("kind", "trip")], true);
        trip.policy = policy(&["machine"]);
        book.observe(0, trip).unwrap();
        let own = book.observe(0, vibration("press-3")).unwrap();
        book.tick(0);
        assert!(!book.get(&own).unwrap().inhibited);
        book.set_config(trip_config()).unwrap();
        book.tick(S);
        assert!(book.get(&own).unwrap().inhibited);
        let bad = AlertsConfig {
            inhibit: vec![InhibitRule { source: vec![], target: vec![], equal: vec![] }],
            ..AlertsConfig::default()
        };
        let err = book.set_config(bad).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid alerts config: inhibit[0].source has no matcher: it would match every alert; inhibit[0].target \
             has no matcher: it would match every alert"
        );
        assert_eq!(book.config(), &trip_config());
    }

    fn flap_book() -> AlertBook {
        AlertBook::new(AlertsConfig { flap_window_ns: 10 * MIN, flap_threshold: 4, ..AlertsConfig::default() }).unwrap()
    }

    #[test]
    fn flapping_alert_is_held_until_stable() {
        let mut book = flap_book();
        let mut sent = Vec::new();
        let mut fp = String::new();
        // Toggles every 5 s: fire, resolve, fire, resolve, fire, then stays firing.
        for i in 0..5 {
            let t = i * 5 * S;
            fp = book.observe(t, offline("gw-1", i % 2 == 0)).unwrap();
            sent.extend(book.tick(t));
        }
        assert!(book.get(&fp).unwrap().flapping);
        sent.extend(run(&mut book, 20 * S, 20 * S + 10 * MIN - S));
        assert!(sent.is_empty(), "held while flapping: {sent:?}");
        assert!(book.get(&fp).unwrap().flapping);

        // Stable for a whole window since the last change at 20 s: announced once.
        let sent = run(&mut book, 20 * S + 10 * MIN, 30 * MIN);
        assert!(!book.get(&fp).unwrap().flapping);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].created_ns, 20 * S + 10 * MIN + WAIT);
        assert_eq!(sent[0].status, GroupStatus::Firing);
    }

    #[test]
    fn notified_alert_that_starts_flapping_is_held_then_resolution_reported() {
        let mut book = flap_book();
        book.observe(0, offline("gw-1", true)).unwrap();
        assert_eq!(run(&mut book, 0, MIN).len(), 1);
        let mut sent = Vec::new();
        // resolve, fire, resolve: with the first firing that is 4 changes within the window.
        for (i, active) in [false, true, false].into_iter().enumerate() {
            let t = 2 * MIN + i64::try_from(i).unwrap() * 10 * S;
            book.observe(t, offline("gw-1", active)).unwrap();
            sent.extend(book.tick(t));
        }
        sent.extend(run(&mut book, 2 * MIN + 20 * S, 12 * MIN + 20 * S - S));
        assert!(sent.is_empty(), "held while flapping: {sent:?}");
        let sent = run(&mut book, 12 * MIN + 20 * S, 30 * MIN);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].status, GroupStatus::Resolved);
    }

    #[test]
    fn restored_book_mid_group_wait_sends_once_and_keeps_pending_timers() {
        let mut book = book();
        for i in 0..10 {
            book.observe(i * S, offline(&format!("gw-{i}"), true)).unwrap();
        }
        let mut slow = offline("gw-slow", true);
        slow.for_ns = 2 * MIN;
        let slow_fp = book.observe(5 * S, slow).unwrap();
        assert!(run(&mut book, 0, 15 * S).is_empty());

        let json = serde_json::to_string(&book).unwrap();
        let mut restored: AlertBook = serde_json::from_str(&json).unwrap();
        assert_eq!(restored, book);
        let sent = run(&mut restored, 16 * S, 60 * S);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].created_ns, WAIT);
        assert_eq!(sent[0].alerts.len(), 10);
        assert_eq!(restored.get(&slow_fp).unwrap().alert.started_ns, 5 * S);

        // Restored again after the notification: nothing is sent twice.
        let json = serde_json::to_string(&restored).unwrap();
        let mut again: AlertBook = serde_json::from_str(&json).unwrap();
        let sent = run(&mut again, 61 * S, 2 * MIN + 4 * S);
        assert!(sent.is_empty());
        // The pending one fires at 5 s + 2 min, as before the restarts; its news waits for the
        // group interval.
        again.tick(2 * MIN + 5 * S);
        assert_eq!(again.get(&slow_fp).unwrap().alert.state, AlertState::Firing);
        let sent = run(&mut again, 2 * MIN + 5 * S, WAIT + INTERVAL);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].created_ns, WAIT + INTERVAL);
        assert_eq!(sent[0].alerts.len(), 11);
    }

    #[test]
    fn notification_ids_are_unique_across_group_lives() {
        let mut book = book();
        let mut ids = BTreeSet::new();
        for life in 0..3 {
            let t0 = life * 60 * MIN;
            book.observe(t0, offline("gw-1", true)).unwrap();
            let mut sent = run(&mut book, t0, t0 + MIN);
            book.observe(t0 + 2 * MIN, offline("gw-1", false)).unwrap();
            sent.extend(run(&mut book, t0 + 2 * MIN, t0 + 10 * MIN));
            assert_eq!(sent.len(), 2);
            for n in sent {
                assert!(ids.insert(n.id));
            }
        }
    }

    #[test]
    fn bad_signals_are_refused_naming_the_rule() {
        let mut book = book();
        assert_eq!(
            book.observe(0, signal("overtemp", &[("sensor", "t1")], true)),
            Err(AlertError::MissingLabel { rule: "overtemp".to_owned(), label: "agent".to_owned() })
        );
        let mut s = offline("gw-1", true);
        s.value = Some(f64::NAN);
        assert_eq!(book.observe(0, s), Err(AlertError::NotFinite { rule: "agent_offline".to_owned(), field: "value" }));
        let mut s = offline("gw-1", true);
        s.policy.group_interval_ns = 0;
        let err = book.observe(0, s).unwrap_err();
        assert_eq!(err.to_string(), "route policy of rule agent_offline: group_interval_ns is 0, it must be positive");
        let mut s = offline("gw-1", true);
        s.for_ns = -1;
        assert_eq!(book.observe(0, s), Err(AlertError::NegativeFor { rule: "agent_offline".to_owned(), for_ns: -1 }));
        assert!(book.alerts().is_empty());
    }
}

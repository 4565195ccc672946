//! What the automation layer's parts hand each other: alerts as people see them, the groups they
//! are notified in, and predictions. Serialised as JSON in the alert state file, in webhook bodies
//! (the documented "generic" format) and by the HTTP API, so field names are part of the contract.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How bad an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    #[default]
    Warning,
    Critical,
}

impl Severity {
    /// The lower-case name (as in JSON, labels and the database).
    pub const fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// The condition holds but not yet for the rule's `for` duration.
    Pending,
    Firing,
    Resolved,
}

impl AlertState {
    /// The lower-case name (as in JSON and the database).
    pub const fn name(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// A fitted trend's answer: when the series reaches `limit`, with an uncertainty interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The limit the trend is extrapolated to (e.g. the ISO 10816 zone D boundary).
    pub limit: f64,
    /// Most likely time the limit is reached (Unix ns).
    pub eta_ns: i64,
    /// Earliest and latest plausible times (the interval's bounds, Unix ns).
    pub low_ns: i64,
    pub high_ns: i64,
    /// The time of the newest reading the forecast is made from (Unix ns): "in about 30 h" counts
    /// from here.
    pub from_ns: i64,
    /// The fitted value now and its rate of change per hour.
    pub value_now: f64,
    pub rate_per_hour: f64,
}

/// One alert as a person (and a notification) sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable id of this alert: a hash of the rule and its labels (16 hex digits).
    pub fingerprint: String,
    pub rule: String,
    pub severity: Severity,
    pub state: AlertState,
    /// `agent`, `sensor` (when there is one), `site`, `machine`, `rule`, `kind`, plus the rule's own.
    pub labels: BTreeMap<String, String>,
    /// One line for a person: "press-3 drive-end bearing reaches zone D in about 30 h (20–45 h)".
    pub summary: String,
    /// The value that made the condition true (the latest one while it holds).
    pub value: Option<f64>,
    /// The threshold or limit the value was compared with.
    pub limit: Option<f64>,
    pub prediction: Option<Prediction>,
    /// When the condition first held (Unix ns), and when it stopped (resolved).
    pub started_ns: i64,
    pub ended_ns: Option<i64>,
    /// Who acknowledged it and when.
    pub acked_by: Option<String>,
    pub acked_ns: Option<i64>,
    /// Link to the machine's page on the dashboard.
    pub dashboard_url: Option<String>,
}

/// Whether a notification announces trouble or its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupStatus {
    Firing,
    Resolved,
}

/// One message to people: a group of alerts sharing the rule's `group_by` labels (a site-wide
/// outage of 200 agents is one notification, not 200).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Unique per notification (group key + a sequence number).
    pub id: String,
    /// Stable per group: receivers deduplicate on it (PagerDuty's `dedup_key`).
    pub group_key: String,
    pub status: GroupStatus,
    /// The labels every alert of the group shares (the rule's `group_by`).
    pub group_labels: BTreeMap<String, String>,
    /// Firing alerts first, then resolved ones.
    pub alerts: Vec<Alert>,
    /// Channel ids (`[notify.<id>]`) this goes to.
    pub receivers: Vec<String>,
    pub created_ns: i64,
}

//! Notification delivery: webhooks (generic JSON, Slack, PagerDuty Events v2, custom templates)
//! and e-mail over SMTP, behind a durable outbox, so a failing channel retries and is reported
//! but never loses an alert.
//!
//! # Layout
//! - config: [`ChannelConfig`] (`[notify.<id>]`, tagged by `kind`), validated by [`Notifier::start`].
//! - rendering: [`render`] turns a [`Notification`] into a channel's body (public for API previews).
//! - outbox: one file per (notification, channel) in `outbox_dir`, written before anything is sent.
//! - delivery: one task per channel, oldest entry first, retried with jittered backoff forever.
//! - transports: HTTP POST (reqwest) and a small SMTP client on a tokio `TcpStream`.
//!
//! # Delivery guarantee
//! [`NotifierHandle::send`] returns `Ok` only once the entry is on disk (temp file, fsync, rename,
//! directory fsync). An entry leaves the outbox only after the receiver accepted it (HTTP 2xx; for
//! SMTP the 250 after DATA) or refused it permanently (HTTP 4xx other than 408/429, 3xx, SMTP 5xx),
//! in which case it is moved to `outbox_dir/failed/` with a `.reason.txt` beside it, counted and
//! logged, never deleted. Delivery is at-least-once: a crash between the receiver's answer and the
//! removal of the file sends the entry again after restart. Receivers deduplicate on `group_key`
//! (PagerDuty's `dedup_key`) and e-mail keeps the same `Message-ID`.
//!
//! Entries hold the notification, not the rendered body: a channel's body is rendered at each
//! attempt from the current config, so fixing a broken template or URL and restarting repairs the
//! entries already queued. Per channel, entries go out in order; a channel that is down delays only
//! itself.
//!
//! # Body formats
//! **Generic webhook** (`kind = "webhook"`, no `template`): `Content-Type: application/json`, the
//! [`Notification`] serialised as in `model.rs` plus `"version": 1`:
//! ```json
//! {"version": 1, "id": "…", "group_key": "…", "status": "firing" | "resolved",
//!  "group_labels": {"rule": "…", "site": "…"}, "receivers": ["…"], "created_ns": 1760000000000000000,
//!  "alerts": [{"fingerprint": "…", "rule": "…", "severity": "info" | "warning" | "critical",
//!              "state": "pending" | "firing" | "resolved", "labels": {"agent": "…", "machine": "…"},
//!              "summary": "…", "value": 7.1, "limit": 4.5,
//!              "prediction": {"limit": 4.5, "eta_ns": 0, "low_ns": 0, "high_ns": 0,
//!                             "from_ns": 0, "value_now": 3.9, "rate_per_hour": 0.02} | null,
//!              "started_ns": 0, "ended_ns": null, "acked_by": null, "acked_ns": null,
//!              "dashboard_url": "https://…" | null}]}
//! ```
//! Keys appear in alphabetical order; consumers must not depend on the order.
//!
//! **Custom template** (`kind = "webhook"`, `template = "…"`): the template with these placeholders
//! replaced (`{{ name }}` with spaces also works; an unknown name is a config error):
//! `{{status}}` (`firing`/`resolved`), `{{group_key}}`, `{{summary}}` (the only alert's summary, or
//! "N alerts: <rule> on <place>"), `{{count}}`, `{{alerts_text}}` (one line per alert: machine or
//! agent, sensor, value and limit, prediction), `{{dashboard_url}}` (the first alert's, or empty),
//! `{{title}}` (as the Slack header), `{{json}}` (the generic JSON above). When `content_type` is
//! JSON (`application/json` or `…+json`) every value is JSON-string-escaped without quotes, so it
//! belongs inside a string (`"text": "{{summary}}"`); the exception is `{{json}}`, which is inserted
//! as is because it already is a JSON value (`"data": {{json}}`). A JSON template is checked at
//! start by rendering an example notification and parsing the result.
//!
//! **Slack** (`kind = "slack"`, an incoming-webhook URL): `{"text": "<title>\n<summary>", "blocks":
//! [header "[FIRING:3] <rule> on <site>/<machine>", one mrkdwn section per alert (summary, machine,
//! sensor, value vs limit, "reaches 4.5 at 2025-10-15 14:00 UTC (in about 30 h, 20–45 h)", dashboard
//! link), and a context block "…and N more alerts" past 40 alerts]}`. Slack allows 50 blocks.
//!
//! **PagerDuty** (`kind = "pagerduty"`, Events API v2): firing →
//! `{"routing_key", "event_action": "trigger", "dedup_key": <group_key>, "client": "edgeloop",
//! "payload": {"summary" (≤ 1024 chars), "source" (the common agent, else the site), "severity"
//! (the worst alert's: critical | warning | info), "timestamp" (RFC 3339, earliest start), "component"
//! (machine), "group" (site), "class" (rule), "custom_details": {"notification_id", "group_labels",
//! "alerts": [{summary, severity, state, labels, value, limit, prediction, started, dashboard_url}]}},
//! "links": [{"href": <dashboard_url>, "text"}]}`; resolved → `{"routing_key", "event_action":
//! "resolve", "dedup_key"}` with the same key. `dedup_key` is cut to PagerDuty's 255 bytes.
//!
//! **E-mail** (`kind = "smtp"`): `Subject: [FIRING:3] <rule> on <place>` / `[RESOLVED] …` (RFC 2047
//! encoded when not ASCII), `Date` (the notification's creation time), `Message-ID` (derived from the
//! notification id, so a re-sent duplicate carries the same one), `References` (derived from the
//! group key, so firing and resolved mails thread together), `MIME-Version: 1.0`,
//! `Content-Type: text/plain; charset=utf-8`, `Content-Transfer-Encoding: quoted-printable`. The body
//! is the title, then per alert its summary and indented lines (machine, sensor, value, prediction,
//! severity and start, dashboard link). Quoted-printable rather than 8bit: this client does not
//! negotiate 8BITMIME, relays without it may mangle non-ASCII machine names, and QP keeps every line
//! under 77 characters, far below SMTP's 998.
//!
//! # SMTP
//! EHLO (HELO when EHLO is not recognised), AUTH PLAIN when `username` is set, MAIL FROM, RCPT TO
//! per recipient, DATA (CRLF line endings, dot-stuffed), QUIT. Every reply code is checked; a
//! failure names the step and quotes the server's reply. 4xx and I/O errors are retried, 5xx is a
//! permanent refusal. A recipient refused with 5xx is skipped and reported while the others still
//! get the mail. There is no STARTTLS or implicit TLS: credentials and alerts cross the network in
//! clear text, so use a relay on the host or a trusted network.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION, RETRY_AFTER, USER_AGENT};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::fleet::now_ns;

use crate::model::{Alert, AlertState, GroupStatus, Notification, Prediction, Severity};
use edgeloop_shared::{backoff::Backoff, units::HumanDuration};

/// The generic JSON's `version` field; bump it when a field changes meaning or disappears.
pub const GENERIC_JSON_VERSION: u32 = 1;

/// PagerDuty's public Events API v2 endpoint.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// The outbox file format's version, checked on read.
const OUTBOX_VERSION: u32 = 1;
/// A server may ask for a long pause with `Retry-After`; past this it is more likely a mistake
/// than a plan, and a channel silent for a day hides alerts.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// How much of an error response body goes into logs and stats.
const ERROR_BODY_LIMIT: usize = 1024;
/// Slack rejects messages with more than 50 blocks; leave room for the header and the "more" line.
const SLACK_MAX_ALERT_SECTIONS: usize = 40;
/// An SMTP reply line is at most 512 octets (RFC 5321); be lenient but bounded.
const SMTP_MAX_LINE: u64 = 4096;
const SMTP_MAX_REPLY_LINES: usize = 100;

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// A credential from config: kept out of `Debug` output so a logged config does not leak it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// One `[notify.<id>]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ChannelConfig {
    Webhook(WebhookConfig),
    Slack(SlackConfig),
    Pagerduty(PagerDutyConfig),
    Smtp(SmtpConfig),
}

/// `kind = "webhook"`: a POST of the generic JSON, or of `template` when set.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// Extra request headers (e.g. `Authorization`); `Content-Type` comes from `content_type`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default = "default_content_type")]
    pub content_type: String,
    /// One attempt's limit, connection included.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Retry delays grow from `retry_min` to `retry_max`, with jitter.
    #[serde(default = "default_retry_min")]
    pub retry_min: HumanDuration,
    #[serde(default = "default_retry_max")]
    pub retry_max: HumanDuration,
}

/// `kind = "slack"`: a Slack incoming webhook (or anything that speaks its format, e.g. Mattermost).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    pub url: String,
    /// One attempt's limit, connection included.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Retry delays grow from `retry_min` to `retry_max`, with jitter.
    #[serde(default = "default_retry_min")]
    pub retry_min: HumanDuration,
    #[serde(default = "default_retry_max")]
    pub retry_max: HumanDuration,
}

/// `kind = "pagerduty"`: PagerDuty Events API v2.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyConfig {
    /// The service integration's routing key.
    pub routing_key: Secret,
    /// Overridable for tests and for PagerDuty's EU endpoint.
    #[serde(default = "default_pagerduty_url")]
    pub url: String,
    /// One attempt's limit, connection included.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Retry delays grow from `retry_min` to `retry_max`, with jitter.
    #[serde(default = "default_retry_min")]
    pub retry_min: HumanDuration,
    #[serde(default = "default_retry_max")]
    pub retry_max: HumanDuration,
}

/// `kind = "smtp"`: plain SMTP (no TLS) to a relay.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    /// The envelope and `From:` address, e.g. `alerts@plant.example`.
    pub from: String,
    pub to: Vec<String>,
    /// With `password`, authenticates with AUTH PLAIN (sent in clear text: there is no TLS).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default = "default_hello_name")]
    pub hello_name: String,
    /// One attempt's limit, connection included.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Retry delays grow from `retry_min` to `retry_max`, with jitter.
    #[serde(default = "default_retry_min")]
    pub retry_min: HumanDuration,
    #[serde(default = "default_retry_max")]
    pub retry_max: HumanDuration,
}

/// Timing shared by every channel kind (`timeout`, `retry_min`, `retry_max` in each table).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Delivery {
    pub timeout: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
}

fn default_content_type() -> String {
    "application/json".to_string()
}
fn default_pagerduty_url() -> String {
    PAGERDUTY_EVENTS_URL.to_string()
}
fn default_smtp_port() -> u16 {
    25
}
fn default_hello_name() -> String {
    "edgeloop".to_string()
}
fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_retry_min() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_retry_max() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

impl ChannelConfig {
    pub fn delivery(&self) -> Delivery {
        let (timeout, retry_min, retry_max) = match self {
            ChannelConfig::Webhook(c) => (c.timeout, c.retry_min, c.retry_max),
            ChannelConfig::Slack(c) => (c.timeout, c.retry_min, c.retry_max),
            ChannelConfig::Pagerduty(c) => (c.timeout, c.retry_min, c.retry_max),
            ChannelConfig::Smtp(c) => (c.timeout, c.retry_min, c.retry_max),
        };
        Delivery { timeout: timeout.0, retry_min: retry_min.0, retry_max: retry_max.0 }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ChannelConfig::Webhook(_) => "webhook",
            ChannelConfig::Slack(_) => "slack",
            ChannelConfig::Pagerduty(_) => "pagerduty",
            ChannelConfig::Smtp(_) => "smtp",
        }
    }
}

/// One problem found in `[notify.<channel>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub channel: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "notify.{}: {}", self.channel, self.message)
    }
}

/// Why the notifier refused to start, or a notification was not (fully) queued.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("invalid notification config: {}", join_problems(.0))]
    Config(Vec<ConfigProblem>),
    #[error("notifications need a tokio runtime; call Notifier::start from within one")]
    NoRuntime,
    #[error("cannot prepare outbox directory {}", path.display())]
    OutboxDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write outbox entry {} for channel {channel}", path.display())]
    Outbox {
        channel: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("notification {notification} names unknown channel(s) {unknown:?}; configured: {known:?}")]
    UnknownChannel { notification: String, unknown: Vec<String>, known: Vec<String> },
    #[error("cannot render notification {notification} for a {kind} channel: {message}")]
    Render { notification: String, kind: &'static str, message: String },
}

fn join_problems(problems: &[ConfigProblem]) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// Checks every channel and reports every problem at once, so one edit fixes them all.
pub fn validate(channels: &BTreeMap<String, ChannelConfig>) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    for (id, config) in channels {
        let mut push = |message: String| problems.push(ConfigProblem { channel: id.clone(), message });
        if let Err(m) = check_channel_id(id) {
            push(m);
        }
        if let Err(ms) = prepare_transport(config) {
            ms.into_iter().for_each(&mut push);
        }
    }
    problems
}

fn check_channel_id(id: &str) -> Result<(), String> {
    // The id is part of outbox file names, so it must be safe in a path on every filesystem.
    let ok =
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!("channel id {id:?} must be 1 to 64 letters, digits, '_' or '-' (e.g. \"ops_slack\")"))
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

/// A channel's rendering of a notification.
#[derive(Debug, Clone, PartialEq)]
pub enum Rendered {
    /// The body of an HTTP POST.
    Http { content_type: String, body: Vec<u8> },
    /// A complete RFC 5322 message with CRLF line endings (not yet dot-stuffed).
    Email { message: String },
}

/// Renders `n` as `channel` would send it. Public so the API can preview a channel.
///
/// # Errors
/// Only when a webhook template names an unknown placeholder (rejected at start already).
pub fn render(channel: &ChannelConfig, n: &Notification) -> Result<Rendered, NotifyError> {
    let render_error =
        |message: String| NotifyError::Render { notification: n.id.clone(), kind: channel.kind(), message };
    match channel {
        ChannelConfig::Webhook(c) => {
            let body = match &c.template {
                None => generic_json(n).to_string(),
                Some(template) => render_template(template, is_json_content_type(&c.content_type), n)
                    .map_err(|name| render_error(format!("unknown placeholder {{{{{name}}}}}")))?,
            };
            Ok(Rendered::Http { content_type: c.content_type.clone(), body: body.into_bytes() })
        }
        ChannelConfig::Slack(_) => Ok(Rendered::Http {
            content_type: "application/json".to_string(),
            body: slack_body(n).to_string().into_bytes(),
        }),
        ChannelConfig::Pagerduty(c) => Ok(Rendered::Http {
            content_type: "application/json".to_string(),
            body: pagerduty_body(c, n).to_string().into_bytes(),
        }),
        ChannelConfig::Smtp(c) => Ok(Rendered::Email { message: email_message(c, n) }),
    }
}

/// The generic JSON: the notification as the model serialises it, plus `"version": 1`.
pub fn generic_json(n: &Notification) -> Value {
    let mut value = serde_json::to_value(n).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("version".to_string(), json!(GENERIC_JSON_VERSION));
    }
    value
}

/// A realistic notification (one firing alert with a prediction) for previews and config checks.
pub fn example_notification() -> Notification {
    let created_ns = 1_760_000_000_000_000_000;
    let hour = 3_600_000_000_000;
    let labels: BTreeMap<String, String> = [
        ("agent", "gw-hall2"),
        ("sensor", "press3_de_velocity"),
        ("site", "plant-a"),
        ("machine", "press-3"),
        ("rule", "bearing_zone_d"),
        ("kind", "trend"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Notification {
        id: "bearing_zone_d/plant-a/press-3#1".to_string(),
        group_key: "bearing_zone_d/plant-a/press-3".to_string(),
        status: GroupStatus::Firing,
        group_labels: labels
            .iter()
            .filter(|(k, _)| ["rule", "site", "machine"].contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        alerts: vec![Alert {
            fingerprint: "9f2c41d07a".to_string(),
            rule: "bearing_zone_d".to_string(),
            severity: Severity::Warning,
            state: AlertState::Firing,
            labels,
            summary: "press-3 drive-end bearing reaches zone D in about 30 h (20–45 h)".to_string(),
            value: Some(3.9),
            limit: Some(4.5),
            prediction: Some(Prediction {
                limit: 4.5,
                eta_ns: created_ns + 30 * hour,
                low_ns: created_ns + 20 * hour,
                high_ns: created_ns + 45 * hour,
                from_ns: created_ns,
                value_now: 3.9,
                rate_per_hour: 0.02,
            }),
            started_ns: created_ns - hour,
            ended_ns: None,
            acked_by: None,
            acked_ns: None,
            dashboard_url: Some("https://edgeloop.example/machines/press-3".to_string()),
        }],
        receivers: Vec::new(),
        created_ns,
    }
}

const TEMPLATE_PLACEHOLDERS: &[&str] =
    &["status", "group_key", "summary", "count", "alerts_text", "dashboard_url", "title", "json"];

/// Fills `{{name}}` placeholders; `Err(name)` for an unknown one. An unclosed `{{` stays literal.
fn render_template(template: &str, json_body: bool, n: &Notification) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some((before, after)) = rest.split_once("{{") {
        out.push_str(before);
        let Some((name, tail)) = after.split_once("}}") else {
            out.push_str("{{");
            rest = after;
            break;
        };
        let name = name.trim();
        let value = match name {
            "status" => status_word(n.status).to_string(),
            "group_key" => n.group_key.clone(),
            "summary" => summary_line(n),
            "count" => n.alerts.len().to_string(),
            "alerts_text" => n.alerts.iter().map(|a| alert_line(a, n.created_ns)).collect::<Vec<_>>().join("\n"),
            "dashboard_url" => first_dashboard_url(n).unwrap_or_default().to_string(),
            "title" => title(n),
            "json" => generic_json(n).to_string(),
            _ => return Err(name.to_string()),
        };
        // `{{json}}` is a JSON value already; escaping it would only make `"data": {{json}}` invalid.
        if json_body && name != "json" {
            json_escape_into(&mut out, &value);
        } else {
            out.push_str(&value);
        }
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

fn is_json_content_type(content_type: &str) -> bool {
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    mime == "application/json" || mime.ends_with("+json")
}

/// JSON string escaping without the surrounding quotes.
fn json_escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

fn status_word(status: GroupStatus) -> &'static str {
    match status {
        GroupStatus::Firing => "firing",
        GroupStatus::Resolved => "resolved",
    }
}

/// A label's value when the group has it or every alert shares it.
fn common_label<'a>(n: &'a Notification, key: &str) -> Option<&'a str> {
    if let Some(v) = n.group_labels.get(key) {
        return Some(v);
    }
    let mut values = n.alerts.iter().map(|a| a.labels.get(key));
    let first = values.next().flatten()?;
    values.all(|v| v == Some(first)).then_some(first.as_str())
}

fn rule_name(n: &Notification) -> String {
    if let Some(rule) = common_label(n, "rule") {
        return rule.to_string();
    }
    let rules: BTreeSet<&str> = n.alerts.iter().map(|a| a.rule.as_str()).collect();
    match rules.len() {
        0 => "alerts".to_string(),
        1 => rules.into_iter().next().unwrap_or_default().to_string(),
        k => format!("{k} rules"),
    }
}

/// "<site>/<machine>", or the parts the alerts share, or the agent.
fn place(n: &Notification) -> String {
    let parts: Vec<&str> = ["site", "machine"].iter().filter_map(|k| common_label(n, k)).collect();
    if !parts.is_empty() {
        return parts.join("/");
    }
    match common_label(n, "agent") {
        Some(agent) => agent.to_string(),
        None if n.alerts.len() > 1 => "several machines".to_string(),
        None => "unknown machine".to_string(),
    }
}

/// "[FIRING:3] <rule> on <place>" or "[RESOLVED] <rule> on <place>" (Alertmanager's convention).
fn title(n: &Notification) -> String {
    let status = match n.status {
        GroupStatus::Firing => {
            let firing = n.alerts.iter().filter(|a| a.state == AlertState::Firing).count();
            format!("[FIRING:{}]", if firing == 0 { n.alerts.len() } else { firing })
        }
        GroupStatus::Resolved => "[RESOLVED]".to_string(),
    };
    format!("{status} {} on {}", rule_name(n), place(n))
}

fn summary_line(n: &Notification) -> String {
    match n.alerts.as_slice() {
        [only] => only.summary.clone(),
        alerts => format!("{} alerts: {} on {}", alerts.len(), rule_name(n), place(n)),
    }
}

fn first_dashboard_url(n: &Notification) -> Option<&str> {
    n.alerts.iter().find_map(|a| a.dashboard_url.as_deref())
}

fn machine_of(a: &Alert) -> &str {
    a.labels.get("machine").or_else(|| a.labels.get("agent")).map_or("unknown machine", String::as_str)
}

fn value_text(a: &Alert) -> Option<String> {
    match (a.value, a.limit) {
        (Some(v), Some(l)) => Some(format!("value {} (limit {})", fmt_num(v), fmt_num(l))),
        (Some(v), None) => Some(format!("value {}", fmt_num(v))),
        (None, Some(l)) => Some(format!("limit {}", fmt_num(l))),
        (None, None) => None,
    }
}

/// "press-3/drive_end: value 3.9 (limit 4.5); reaches 4.5 at … (in about 30 h, 20–45 h)".
fn alert_line(a: &Alert, now_ns: i64) -> String {
    let mut line = machine_of(a).to_string();
    if let Some(sensor) = a.labels.get("sensor") {
        line.push('/');
        line.push_str(sensor);
    }
    let details: Vec<String> =
        [value_text(a), a.prediction.map(|p| prediction_text(&p, now_ns))].into_iter().flatten().collect();
    line.push_str(": ");
    line.push_str(&if details.is_empty() { a.summary.clone() } else { details.join("; ") });
    if a.state == AlertState::Resolved {
        line.push_str(" (resolved)");
    }
    line
}

/// "reaches 4.5 at 2025-10-15 14:00 UTC (in about 30 h, 20–45 h)". Relative to the newest reading
/// the forecast was made from (never the clock at sending, so a retried body is identical to the
/// first attempt's).
fn prediction_text(p: &Prediction, _created_ns: i64) -> String {
    let now_ns = p.from_ns;
    let at = human_time(p.eta_ns);
    let hours = |ns: i64| ns.saturating_sub(now_ns) as f64 / 3.6e12;
    let (eta, low, high) = (hours(p.eta_ns), hours(p.low_ns).max(0.0), hours(p.high_ns).max(0.0));
    if eta <= 0.0 {
        return format!("reached {} at about {at}", fmt_num(p.limit));
    }
    let (per_unit, unit) = if eta < 2.0 {
        (1.0 / 60.0, "min")
    } else if eta < 72.0 {
        (1.0, "h")
    } else {
        (24.0, "d")
    };
    format!(
        "reaches {} at {at} (in about {:.0} {unit}, {:.0}–{:.0} {unit})",
        fmt_num(p.limit),
        eta / per_unit,
        low / per_unit,
        high / per_unit
    )
}

/// At most three decimals, trailing zeros dropped: 4.5, 3.917, 120.
fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".to_string() } else { s.to_string() }
}

/// Cuts `s` to at most `max` characters, marking the cut with "…".
fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Cuts `s` to at most `max` bytes on a char boundary.
fn truncate_bytes(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn slack_body(n: &Notification) -> Value {
    let title = title(n);
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": truncate_chars(&title, 150), "emoji": true},
    })];
    for a in n.alerts.iter().take(SLACK_MAX_ALERT_SECTIONS) {
        let mut text = format!("*{}*", slack_escape(&a.summary));
        if a.state == AlertState::Resolved {
            text.push_str("  _resolved_");
        }
        text.push_str(&format!("\n*Machine:* {}", slack_escape(machine_of(a))));
        if let Some(sensor) = a.labels.get("sensor") {
            text.push_str(&format!("   *Sensor:* `{}`", slack_escape(sensor)));
        }
        match (a.value, a.limit) {
            (Some(v), Some(l)) => text.push_str(&format!("\n*Value:* {} vs limit {}", fmt_num(v), fmt_num(l))),
            (Some(v), None) => text.push_str(&format!("\n*Value:* {}", fmt_num(v))),
            (None, Some(l)) => text.push_str(&format!("\n*Limit:* {}", fmt_num(l))),
            (None, None) => {}
        }
        if let Some(p) = &a.prediction {
            text.push_str(&format!("\n*Prediction:* {}", prediction_text(p, n.created_ns)));
        }
        if let Some(url) = &a.dashboard_url {
            text.push_str(&format!("\n<{}|Open on the dashboard>", slack_escape(url)));
        }
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate_chars(&text, 3000)}}));
    }
    if n.alerts.len() > SLACK_MAX_ALERT_SECTIONS {
        let more = n.alerts.len() - SLACK_MAX_ALERT_SECTIONS;
        blocks.push(
            json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("…and {more} more alerts")}]}),
        );
    }
    json!({"text": format!("{title}\n{}", summary_line(n)), "blocks": blocks})
}

fn pagerduty_severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::Warning => "warning",
        Severity::Info => "info",
    }
}

fn pagerduty_body(c: &PagerDutyConfig, n: &Notification) -> Value {
    // PagerDuty limits dedup_key to 255 characters; trigger and resolve cut it the same way.
    let dedup_key = truncate_bytes(&n.group_key, 255);
    if n.status == GroupStatus::Resolved {
        return json!({"routing_key": c.routing_key.expose(), "event_action": "resolve", "dedup_key": dedup_key});
    }
    let severity = n.alerts.iter().map(|a| a.severity).max().unwrap_or_default();
    let started = n.alerts.iter().map(|a| a.started_ns).min().unwrap_or(n.created_ns);
    let source = common_label(n, "agent").or_else(|| common_label(n, "site")).unwrap_or("edgeloop");
    let mut payload = Map::new();
    payload.insert("summary".into(), json!(truncate_chars(&format!("{}: {}", title(n), summary_line(n)), 1024)));
    payload.insert("source".into(), json!(source));
    payload.insert("severity".into(), json!(pagerduty_severity(severity)));
    payload.insert("timestamp".into(), json!(rfc3339(started)));
    if let Some(machine) = common_label(n, "machine") {
        payload.insert("component".into(), json!(machine));
    }
    if let Some(site) = common_label(n, "site") {
        payload.insert("group".into(), json!(site));
    }
    payload.insert("class".into(), json!(rule_name(n)));
    let alerts: Vec<Value> = n
        .alerts
        .iter()
        .map(|a| {
            json!({
                "summary": a.summary,
                "severity": a.severity,
                "state": a.state,
                "labels": a.labels,
                "value": a.value,
                "limit": a.limit,
                "prediction": a.prediction.map(|p| prediction_text(&p, n.created_ns)),
                "started": rfc3339(a.started_ns),
                "dashboard_url": a.dashboard_url,
            })
        })
        .collect();
    payload.insert(
        "custom_details".into(),
        json!({"notification_id": n.id, "group_labels": n.group_labels, "alerts": alerts}),
    );
    let urls: BTreeSet<(&str, &str)> =
        n.alerts.iter().filter_map(|a| a.dashboard_url.as_deref().map(|u| (u, machine_of(a)))).collect();
    let links: Vec<Value> = urls
        .into_iter()
        .map(|(href, machine)| json!({"href": href, "text": format!("{machine} on the dashboard")}))
        .collect();
    json!({
        "routing_key": c.routing_key.expose(),
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "client": "edgeloop",
        "payload": payload,
        "links": links,
    })
}

/// Keeps a header value on one line: a label with a newline must not inject headers.
fn header_safe(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn email_domain(address: &str) -> &str {
    address.rsplit_once('@').map_or("edgeloop", |(_, d)| d)
}

/// Characters that may appear in a Message-ID's local part without quoting.
fn msgid_safe(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c) { c } else { '_' }).collect()
}

fn email_message(c: &SmtpConfig, n: &Notification) -> String {
    let domain = email_domain(&c.from);
    let subject = truncate_chars(&header_safe(&title(n)), 200);
    let mut body = String::new();
    body.push_str(&title(n));
    body.push_str("\n\n");
    for a in &n.alerts {
        body.push_str(&a.summary);
        body.push('\n');
        let mut where_line = format!("  machine: {}", machine_of(a));
        if let Some(sensor) = a.labels.get("sensor") {
            where_line.push_str(&format!("   sensor: {sensor}"));
        }
        if let Some(agent) = a.labels.get("agent") {
            where_line.push_str(&format!("   agent: {agent}"));
        }
        body.push_str(&where_line);
        body.push('\n');
        if let Some(v) = value_text(a) {
            body.push_str(&format!("  {v}\n"));
        }
        if let Some(p) = &a.prediction {
            body.push_str(&format!("  {}\n", prediction_text(p, n.created_ns)));
        }
        let state = match a.state {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        };
        body.push_str(&format!(
            "  {state}, severity {}, since {}\n",
            pagerduty_severity(a.severity),
            human_time(a.started_ns)
        ));
        if let Some(url) = &a.dashboard_url {
            body.push_str(&format!("  dashboard: {url}\n"));
        }
        body.push('\n');
    }
    body.push_str(&format!("-- \nedgeloop notification {}, group {}\n", n.id, n.group_key));

    let headers = [
        format!("Date: {}", rfc5322_date(n.created_ns)),
        format!("From: {}", c.from),
        format!("To: {}", c.to.join(", ")),
        format!("Subject: {}", encode_header_word(&subject)),
        format!("Message-ID: <{}.edgeloop@{domain}>", msgid_safe(&n.id)),
        format!("References: <{}.group.edgeloop@{domain}>", msgid_safe(&n.group_key)),
        "MIME-Version: 1.0".to_string(),
        "Content-Type: text/plain; charset=utf-8".to_string(),
        "Content-Transfer-Encoding: quoted-printable".to_string(),
        "Auto-Submitted: auto-generated".to_string(),
    ];
    let mut message = headers.join("\r\n");
    message.push_str("\r\n\r\n");
    message.push_str(&quoted_printable(&body));
    message
}

/// RFC 2047 Q-encoded words for a non-ASCII header; ASCII passes unchanged.
fn encode_header_word(s: &str) -> String {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return s.to_string();
    }
    const PREFIX: &str = "=?utf-8?Q?";
    let mut words = Vec::new();
    let mut word = String::new();
    for c in s.chars() {
        let mut encoded = String::new();
        if c == ' ' {
            encoded.push('_');
        } else if c.is_ascii_alphanumeric() || "!*+-/".contains(c) {
            encoded.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                encoded.push_str(&format!("={b:02X}"));
            }
        }
        // An encoded word is at most 75 characters and must not split a character.
        if PREFIX.len() + word.len() + encoded.len() + 2 > 75 && !word.is_empty() {
            words.push(std::mem::take(&mut word));
        }
        word.push_str(&encoded);
    }
    if !word.is_empty() {
        words.push(word);
    }
    words.iter().map(|w| format!("{PREFIX}{w}?=")).collect::<Vec<_>>().join("\r\n ")
}

/// Quoted-printable (RFC 2045) with CRLF line breaks and soft breaks before 76 characters.
fn quoted_printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    let lines: Vec<&str> = text.split('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let bytes = line.as_bytes();
        let mut width = 0;
        for (j, &b) in bytes.iter().enumerate() {
            let last = j + 1 == bytes.len();
            let literal = (b == b' ' || b == b'\t') && !last || (33..=126).contains(&b) && b != b'=';
            let token = if literal { (b as char).to_string() } else { format!("={b:02X}") };
            if width + token.len() > 75 {
                out.push_str("=\r\n");
                width = 0;
            }
            out.push_str(&token);
            width += token.len();
        }
        if i + 1 < lines.len() {
            out.push_str("\r\n");
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------------------------

struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// 0 = Sunday.
    weekday: u32,
}

/// Howard Hinnant's `civil_from_days`: proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_ns(ns: i64) -> Civil {
    let secs = ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        hour: sod / 3600,
        minute: sod / 60 % 60,
        second: sod % 60,
        weekday: (days + 4).rem_euclid(7) as u32,
    }
}

/// The inverse of [`civil_from_ns`] for a date: days since 1970-01-01.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

/// "2025-10-15T14:00:00Z"
fn rfc3339(ns: i64) -> String {
    let c = civil_from_ns(ns);
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", c.year, c.month, c.day, c.hour, c.minute, c.second)
}

/// "2025-10-15 14:00 UTC"
fn human_time(ns: i64) -> String {
    let c = civil_from_ns(ns);
    format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", c.year, c.month, c.day, c.hour, c.minute)
}

/// "Wed, 15 Oct 2025 14:00:00 +0000"
fn rfc5322_date(ns: i64) -> String {
    let c = civil_from_ns(ns);
    let weekday = WEEKDAYS.get(c.weekday as usize).unwrap_or(&"Sun");
    let month = MONTHS.get(c.month.saturating_sub(1) as usize).unwrap_or(&"Jan");
    format!("{weekday}, {:02} {month} {:04} {:02}:{:02}:{:02} +0000", c.day, c.year, c.hour, c.minute, c.second)
}

/// `Retry-After`: delay-seconds or an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT").
fn parse_retry_after(value: &str, now_ns: i64) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(month))? as u32 + 1;
    let (day, year): (u32, i64) = (day.parse().ok()?, year.parse().ok()?);
    let mut hms = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    let at_secs = days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s;
    let wait = at_secs.saturating_sub(now_ns.div_euclid(1_000_000_000));
    Some(Duration::from_secs(u64::try_from(wait).unwrap_or(0)))
}

// ---------------------------------------------------------------------------------------------
// Transports
// ---------------------------------------------------------------------------------------------

/// What one delivery attempt came to.
#[derive(Debug)]
enum Outcome {
    /// Accepted; `warning` reports a partial problem (an SMTP recipient refused).
    Delivered { warning: Option<String> },
    /// Worth trying again (network, timeout, 5xx, 408, 429, SMTP 4xx).
    Retry { error: String, retry_after: Option<Duration> },
    /// Will never succeed as configured: set aside in `failed/`.
    Refused { error: String },
}

enum Transport {
    Http { client: reqwest::Client, url: reqwest::Url, headers: HeaderMap },
    Smtp,
}

/// Checks a channel and builds what delivering to it needs; every problem is reported.
fn prepare_transport(config: &ChannelConfig) -> Result<Transport, Vec<String>> {
    let mut problems = Vec::new();
    let d = config.delivery();
    if d.timeout.is_zero() {
        problems.push("timeout must be more than 0 (e.g. \"10s\")".to_string());
    }
    if d.retry_min.is_zero() {
        problems.push("retry_min must be more than 0 (e.g. \"1s\")".to_string());
    }
    if d.retry_max < d.retry_min {
        problems
            .push(format!("retry_max ({:?}) is less than retry_min ({:?}); raise retry_max", d.retry_max, d.retry_min));
    }
    let (url, extra_headers) = match config {
        ChannelConfig::Webhook(c) => {
            if let Some(template) = &c.template {
                check_template(template, &c.content_type, &mut problems);
            }
            if HeaderValue::from_str(&c.content_type).is_err() {
                problems.push(format!("content_type {:?} is not a valid header value", c.content_type));
            }
            (c.url.as_str(), Some(&c.headers))
        }
        ChannelConfig::Slack(c) => (c.url.as_str(), None),
        ChannelConfig::Pagerduty(c) => {
            if c.routing_key.expose().trim().is_empty() {
                problems.push("routing_key is empty; copy it from the PagerDuty service's integration".to_string());
            }
            (c.url.as_str(), None)
        }
        ChannelConfig::Smtp(c) => {
            check_smtp(c, &mut problems);
            return if problems.is_empty() { Ok(Transport::Smtp) } else { Err(problems) };
        }
    };
    let parsed = match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
        Ok(_) => {
            problems.push("url must be an http:// or https:// address with a host".to_string());
            None
        }
        Err(e) => {
            problems.push(format!("url is not a valid address: {e}"));
            None
        }
    };
    let mut headers = HeaderMap::new();
    for (name, value) in extra_headers.into_iter().flatten() {
        match (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            (Ok(n), _) if n == CONTENT_TYPE => {
                problems.push("headers must not set Content-Type; use content_type".to_string());
            }
            (Ok(n), Ok(v)) => {
                headers.insert(n, v);
            }
            (Err(_), _) => problems.push(format!("header name {name:?} is not a valid HTTP header name")),
            (_, Err(_)) => problems.push(format!("header {name:?} has a value that is not a valid HTTP header value")),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let client = reqwest::Client::builder()
        .timeout(d.timeout)
        .connect_timeout(d.timeout)
        // A 301/302 would turn the POST into a body-less GET that "succeeds": report it instead.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| vec![format!("cannot build the HTTP client: {}", error_chain(&e))])?;
    match parsed {
        Some(url) => Ok(Transport::Http { client, url, headers }),
        None => Err(vec!["url is missing".to_string()]),
    }
}

fn check_template(template: &str, content_type: &str, problems: &mut Vec<String>) {
    let json_body = is_json_content_type(content_type);
    match render_template(template, json_body, &example_notification()) {
        Err(name) => problems.push(format!(
            "template uses unknown placeholder {{{{{name}}}}}; known: {}",
            TEMPLATE_PLACEHOLDERS.join(", ")
        )),
        Ok(body) if json_body => {
            if let Err(e) = serde_json::from_str::<Value>(&body) {
                problems.push(format!(
                    "template does not produce valid JSON ({e}); put placeholders inside strings \
                     (\"{{{{summary}}}}\") or set content_type"
                ));
            }
        }
        Ok(_) => {}
    }
}

fn check_smtp(c: &SmtpConfig, problems: &mut Vec<String>) {
    if c.host.trim().is_empty() {
        problems.push("host is empty".to_string());
    }
    if c.port == 0 {
        problems.push("port must not be 0".to_string());
    }
    if let Err(m) = check_address(&c.from) {
        problems.push(format!("from {:?}: {m}", c.from));
    }
    if c.to.is_empty() {
        problems
            .push("to is empty; list at least one recipient, e.g. to = [\"maintenance@plant.example\"]".to_string());
    }
    for to in &c.to {
        if let Err(m) = check_address(to) {
            problems.push(format!("to {to:?}: {m}"));
        }
    }
    if c.username.is_some() != c.password.is_some() {
        problems.push("username and password must be set together".to_string());
    }
    if c.hello_name.is_empty() || !c.hello_name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
        problems.push(format!("hello_name {:?} must be a host name (letters, digits, '.', '-')", c.hello_name));
    }
}

/// A bare `local@domain`: it goes into SMTP commands and headers unquoted.
fn check_address(address: &str) -> Result<(), &'static str> {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Err("is not an e-mail address (local@domain)");
    };
    let bad = |s: &str| s.is_empty() || s.bytes().any(|b| !b.is_ascii_graphic() || b"<>,;\"".contains(&b));
    if bad(local) || bad(domain) {
        return Err("must be a bare ASCII address without spaces, quotes or <> (e.g. alerts@plant.example)");
    }
    Ok(())
}

/// An error and its causes on one line; reqwest's own message is terse ("error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

async fn deliver_http(
    client: &reqwest::Client,
    url: &reqwest::Url,
    headers: &HeaderMap,
    rendered: Rendered,
) -> Outcome {
    let Rendered::Http { content_type, body } = rendered else {
        return Outcome::Refused { error: "internal: an e-mail rendering for an HTTP channel".to_string() };
    };
    let request = client
        .post(url.clone())
        .headers(headers.clone())
        .header(CONTENT_TYPE, content_type)
        .header(USER_AGENT, "edgeloop-collector")
        .body(body);
    let mut response = match request.send().await {
        Ok(r) => r,
        // Without the URL: a Slack webhook's URL is its credential.
        Err(e) => {
            return Outcome::Retry { error: error_chain(&e.without_url()), retry_after: None };
        }
    };
    let status = response.status();
    if status.is_success() {
        return Outcome::Delivered { warning: None };
    }
    let code = status.as_u16();
    let retry_after = if code == 429 || code == 503 {
        response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| parse_retry_after(v, now_ns()))
    } else {
        None
    };
    let location = response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = body_prefix(&mut response).await;
    let error = format!("HTTP {status}: {body}");
    if code == 408 || code == 429 || status.is_server_error() {
        Outcome::Retry { error, retry_after }
    } else if status.is_redirection() {
        let to = location.unwrap_or_else(|| "an unspecified address".to_string());
        Outcome::Refused {
            error: format!("HTTP {status}: redirected to {to}; set the channel's url to the final address"),
        }
    } else if status.is_client_error() {
        Outcome::Refused { error }
    } else {
        Outcome::Retry { error, retry_after: None }
    }
}

/// The start of an error response, for logs; bounded so a huge error page cannot fill memory.
async fn body_prefix(response: &mut reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < ERROR_BODY_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    buf.truncate(ERROR_BODY_LIMIT);
    let text = String::from_utf8_lossy(&buf);
    let text = text.trim();
    if text.is_empty() { "(empty body)".to_string() } else { text.replace(['\r', '\n'], " ") }
}

/// An SMTP reply: the code and each line's text.
struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, truncate_chars(&self.lines.join(" / "), 300))
    }
}

/// Where an SMTP session failed; 5xx replies are permanent, the rest is retried.
struct SmtpFailure {
    step: String,
    detail: String,
    permanent: bool,
}

struct SmtpSession {
    stream: BufReader<TcpStream>,
}

impl SmtpSession {
    async fn read_reply(&mut self) -> io::Result<Reply> {
        let mut lines = Vec::new();
        loop {
            let mut buf = Vec::new();
            let n = (&mut self.stream).take(SMTP_MAX_LINE).read_until(b'\n', &mut buf).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed by the server"));
            }
            if !buf.ends_with(b"\n") && n as u64 == SMTP_MAX_LINE {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "reply line too long"));
            }
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\r', '\n']);
            let code = line.get(..3).and_then(|c| c.parse::<u16>().ok()).filter(|c| (200..600).contains(c));
            let Some(code) = code else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("not an SMTP reply: {:?}", truncate_chars(line, 100)),
                ));
            };
            lines.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(Reply { code, lines });
            }
            if lines.len() >= SMTP_MAX_REPLY_LINES {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "reply has too many lines"));
            }
        }
    }

    /// Sends `line` (when given), reads the reply and checks its code against `ok`.
    async fn step(&mut self, step: &str, line: Option<&str>, ok: &[u16]) -> Result<Reply, SmtpFailure> {
        let io_failure = |e: io::Error| SmtpFailure { step: step.to_string(), detail: e.to_string(), permanent: false };
        if let Some(line) = line {
            let stream = self.stream.get_mut();
            stream.write_all(line.as_bytes()).await.map_err(io_failure)?;
            stream.write_all(b"\r\n").await.map_err(io_failure)?;
        }
        let reply = self.read_reply().await.map_err(io_failure)?;
        if ok.contains(&reply.code) {
            Ok(reply)
        } else {
            Err(SmtpFailure {
                step: step.to_string(),
                detail: format!("server replied {reply}"),
                permanent: reply.code >= 500,
            })
        }
    }
}

async fn deliver_smtp(c: &SmtpConfig, rendered: Rendered) -> Outcome {
    let Rendered::Email { message } = rendered else {
        return Outcome::Refused { error: "internal: an HTTP rendering for an SMTP channel".to_string() };
    };
    match smtp_send(c, &message).await {
        Ok(warning) => Outcome::Delivered { warning },
        Err(f) => {
            let error = format!("SMTP {} failed: {}", f.step, f.detail);
            if f.permanent { Outcome::Refused { error } } else { Outcome::Retry { error, retry_after: None } }
        }
    }
}

/// One SMTP transaction; `Ok(Some(_))` when some recipients were refused.
async fn smtp_send(c: &SmtpConfig, message: &str) -> Result<Option<String>, SmtpFailure> {
    let stream = TcpStream::connect((c.host.as_str(), c.port)).await.map_err(|e| SmtpFailure {
        step: format!("connect to {}:{}", c.host, c.port),
        detail: e.to_string(),
        permanent: false,
    })?;
    let mut s = SmtpSession { stream: BufReader::new(stream) };
    s.step("greeting", None, &[220]).await?;
    let ehlo = s.step("EHLO", Some(&format!("EHLO {}", c.hello_name)), &[250]).await;
    let extensions = match ehlo {
        Ok(reply) => reply.lines,
        // An old server that does not know EHLO; it offers no extensions, so no AUTH either.
        Err(f) if f.permanent && c.username.is_none() => {
            s.step("HELO", Some(&format!("HELO {}", c.hello_name)), &[250]).await?;
            Vec::new()
        }
        Err(f) => return Err(f),
    };
    if let (Some(user), Some(password)) = (&c.username, &c.password) {
        let offers_plain = extensions.iter().any(|l| {
            let l = l.to_ascii_uppercase();
            l.starts_with("AUTH") && l.split([' ', '=']).any(|m| m == "PLAIN")
        });
        if !offers_plain {
            return Err(SmtpFailure {
                step: "AUTH PLAIN".to_string(),
                detail: format!(
                    "the server does not offer AUTH PLAIN (it offers: {}); servers often offer it only after STARTTLS, \
                     which this client does not speak",
                    extensions.join(", ")
                ),
                permanent: true,
            });
        }
        let token = base64(format!("\0{user}\0{}", password.expose()).as_bytes());
        // The step name, never the command, goes into errors: the command carries the password.
        s.step("AUTH PLAIN", Some(&format!("AUTH PLAIN {token}")), &[235]).await?;
    }
    s.step("MAIL FROM", Some(&format!("MAIL FROM:<{}>", c.from)), &[250]).await?;
    let mut refused = Vec::new();
    for to in &c.to {
        let step = format!("RCPT TO:<{to}>");
        match s.step(&step, Some(&step), &[250, 251]).await {
            Ok(_) => {}
            Err(f) if f.permanent => refused.push(format!("{to}: {}", f.detail)),
            Err(f) => return Err(f),
        }
    }
    if refused.len() == c.to.len() {
        return Err(SmtpFailure {
            step: "RCPT TO".to_string(),
            detail: format!("every recipient was refused: {}", refused.join("; ")),
            permanent: true,
        });
    }
    s.step("DATA", Some("DATA"), &[354]).await?;
    let data = dot_stuff(message);
    s.stream.get_mut().write_all(&data).await.map_err(|e| SmtpFailure {
        step: "DATA".to_string(),
        detail: e.to_string(),
        permanent: false,
    })?;
    s.step("end of DATA", None, &[250]).await?;
    // The message is accepted; a QUIT that goes wrong changes nothing.
    let _ = s.step("QUIT", Some("QUIT"), &[221]).await;
    Ok((!refused.is_empty()).then(|| format!("some recipients were refused: {}", refused.join("; "))))
}

/// The DATA payload: CRLF line endings, a leading "." doubled (RFC 5321 4.5.2), "." to end.
fn dot_stuff(message: &str) -> Vec<u8> {
    let message = message.strip_suffix('\n').unwrap_or(message);
    let message = message.strip_suffix('\r').unwrap_or(message);
    let mut out = Vec::with_capacity(message.len() + 64);
    for line in message.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with('.') {
            out.push(b'.');
        }
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Outbox and delivery tasks
// ---------------------------------------------------------------------------------------------

/// Delivery counters of one channel, for `/metrics` and the API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChannelStats {
    /// Entries the receiver accepted.
    pub delivered: u64,
    /// Attempts that failed and will be retried.
    pub attempts_failed: u64,
    /// Entries refused for good and moved to `failed/`.
    pub refused: u64,
    /// Entries in the outbox, the one being tried included.
    pub pending: u64,
    pub last_error: Option<String>,
    pub last_error_ns: Option<i64>,
    pub last_success_ns: Option<i64>,
}

#[derive(Default)]
struct ChannelState {
    /// Outbox entries by sequence number: the first is the next to deliver.
    pending: BTreeMap<u64, PathBuf>,
    stats: ChannelStats,
}

struct Channel {
    id: String,
    wake: Notify,
    state: Mutex<ChannelState>,
}

/// A poisoned lock only means another thread panicked mid-update of counters; keep going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Inner {
    outbox_dir: PathBuf,
    channels: BTreeMap<String, Arc<Channel>>,
    last_seq: Mutex<u64>,
    tracker: TaskTracker,
}

/// Starts delivery; see [`Notifier::start`].
pub struct Notifier;

/// Queues notifications and reports per-channel stats. Cheap to clone.
#[derive(Clone)]
pub struct NotifierHandle {
    inner: Arc<Inner>,
}

#[derive(Serialize)]
struct EntryOut<'a> {
    version: u32,
    channel: &'a str,
    queued_ns: i64,
    notification: &'a Notification,
}

#[derive(Deserialize)]
struct EntryIn {
    version: u32,
    notification: Notification,
}

/// "<20-digit sequence>-<channel>.json": names sort in delivery order.
fn entry_name(seq: u64, channel: &str) -> String {
    format!("{seq:020}-{channel}.json")
}

fn parse_entry_name(name: &str) -> Option<(u64, &str)> {
    let stem = name.strip_suffix(".json")?;
    let (seq, channel) = stem.split_once('-')?;
    if seq.len() != 20 || channel.is_empty() {
        return None;
    }
    Some((seq.parse().ok()?, channel))
}

/// Makes a rename or removal in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `dir/name` atomically and durably: temp file, fsync, rename, dir fsync.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<PathBuf> {
    let tmp = dir.join(format!(".tmp-{name}"));
    let path = dir.join(name);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| path)
}

impl Notifier {
    /// Validates `channels`, loads the entries left in `outbox_dir` by an earlier run and starts one
    /// delivery task per channel on the current tokio runtime. The tasks stop when `shutdown` is
    /// cancelled (an attempt in flight finishes first, bounded by the channel's `timeout`).
    ///
    /// # Errors
    /// [`NotifyError::Config`] with every problem found, [`NotifyError::OutboxDir`] when the outbox
    /// cannot be created or read, [`NotifyError::NoRuntime`] outside a tokio runtime.
    pub fn start(
        channels: BTreeMap<String, ChannelConfig>,
        outbox_dir: PathBuf,
        shutdown: CancellationToken,
    ) -> Result<NotifierHandle, NotifyError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NotifyError::NoRuntime)?;
        let mut problems = Vec::new();
        let mut transports = BTreeMap::new();
        for (id, config) in &channels {
            if let Err(message) = check_channel_id(id) {
                problems.push(ConfigProblem { channel: id.clone(), message });
            }
            match prepare_transport(config) {
                Ok(t) => {
                    transports.insert(id.clone(), t);
                }
                Err(ms) => {
                    problems.extend(ms.into_iter().map(|message| ConfigProblem { channel: id.clone(), message }))
                }
            }
        }
        if !problems.is_empty() {
            return Err(NotifyError::Config(problems));
        }

        let dir_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| NotifyError::OutboxDir { path, source }
        };
        let failed_dir = outbox_dir.join("failed");
        fs::create_dir_all(&failed_dir).map_err(dir_error(&failed_dir))?;

        let channel_map: BTreeMap<String, Arc<Channel>> = channels
            .keys()
            .map(|id| (id.clone(), Arc::new(Channel { id: id.clone(), wake: Notify::new(), state: Mutex::default() })))
            .collect();
        let mut last_seq = 0;
        for dirent in fs::read_dir(&outbox_dir).map_err(dir_error(&outbox_dir))? {
            let dirent = dirent.map_err(dir_error(&outbox_dir))?;
            let file_name = dirent.file_name();
            let Some(name) = file_name.to_str() else { continue };
            if name.starts_with(".tmp-") {
                // Never renamed into place, so never acknowledged to the caller.
                let _ = fs::remove_file(dirent.path());
                continue;
            }
            let Some((seq, channel)) = parse_entry_name(name) else {
                continue;
            };
            last_seq = last_seq.max(seq);
            match channel_map.get(channel) {
                Some(ch) => {
                    lock(&ch.state).pending.insert(seq, dirent.path());
                }
                None => tracing::warn!(
                    channel,
                    entry = name,
                    "outbox entry for a channel that is no longer configured; kept, not delivered"
                ),
            }
        }

        let tracker = TaskTracker::new();
        for (id, config) in channels {
            let (Some(channel), Some(transport)) = (channel_map.get(&id), transports.remove(&id)) else {
                continue;
            };
            let pending = lock(&channel.state).pending.len();
            if pending > 0 {
                tracing::info!(channel = %id, pending, "delivering notifications left in the outbox");
            }
            if let ChannelConfig::Smtp(c) = &config
                && c.username.is_some()
            {
                tracing::warn!(
                    channel = %id,
                    host = %c.host,
                    "SMTP password is sent without TLS (AUTH PLAIN in clear text)"
                );
            }
            let worker = Worker {
                channel: Arc::clone(channel),
                config,
                transport,
                outbox_dir: outbox_dir.clone(),
                shutdown: shutdown.clone(),
            };
            tracker.spawn_on(worker.run(), &runtime);
        }
        tracker.close();
        Ok(NotifierHandle {
            inner: Arc::new(Inner { outbox_dir, channels: channel_map, last_seq: Mutex::new(last_seq), tracker }),
        })
    }
}

impl NotifierHandle {
    /// Queues `n` for each of its receivers: a durable outbox entry first, then a wake-up for that
    /// channel's task. Blocks for the entries' fsyncs (milliseconds per receiver).
    ///
    /// # Errors
    /// [`NotifyError::Outbox`] when an entry could not be written (that receiver is not queued), or
    /// [`NotifyError::UnknownChannel`] naming receivers that are not configured. Either way every
    /// other receiver is queued, and each problem is logged.
    pub fn send(&self, n: &Notification) -> Result<(), NotifyError> {
        let mut unknown = Vec::new();
        let mut write_error = None;
        let receivers: BTreeSet<&str> = n.receivers.iter().map(String::as_str).collect();
        for id in receivers {
            let Some(channel) = self.inner.channels.get(id) else {
                tracing::error!(
                    channel = id,
                    notification = %n.id,
                    "notification names an unknown channel; not sent there"
                );
                unknown.push(id.to_string());
                continue;
            };
            let seq = self.next_seq();
            let name = entry_name(seq, id);
            let entry = EntryOut { version: OUTBOX_VERSION, channel: id, queued_ns: now_ns(), notification: n };
            let written = serde_json::to_vec(&entry)
                .map_err(io::Error::other)
                .and_then(|bytes| write_durably(&self.inner.outbox_dir, &name, &bytes));
            match written {
                Ok(path) => {
                    lock(&channel.state).pending.insert(seq, path);
                    channel.wake.notify_one();
                }
                Err(e) => {
                    tracing::error!(
                        channel = id,
                        notification = %n.id,
                        error = %e,
                        "cannot write outbox entry; notification not queued"
                    );
                    write_error.get_or_insert(NotifyError::Outbox {
                        channel: id.to_string(),
                        path: self.inner.outbox_dir.join(name),
                        source: e,
                    });
                }
            }
        }
        if let Some(e) = write_error {
            return Err(e);
        }
        if !unknown.is_empty() {
            return Err(NotifyError::UnknownChannel {
                notification: n.id.clone(),
                unknown,
                known: self.inner.channels.keys().cloned().collect(),
            });
        }
        Ok(())
    }

    /// Per channel: delivered, failed attempts, refused, pending, last error and last success.
    pub fn stats(&self) -> BTreeMap<String, ChannelStats> {
        self.inner
            .channels
            .iter()
            .map(|(id, ch)| {
                let state = lock(&ch.state);
                let mut stats = state.stats.clone();
                stats.pending = state.pending.len() as u64;
                (id.clone(), stats)
            })
            .collect()
    }

    /// Waits until every delivery task has stopped (after the shutdown token was cancelled).
    pub async fn stopped(&self) {
        self.inner.tracker.wait().await;
    }

    /// Sequence numbers start at the clock so they keep increasing across restarts, and at least
    /// one past the last one seen so a clock stepped back cannot reorder the outbox.
    fn next_seq(&self) -> u64 {
        let mut last = lock(&self.inner.last_seq);
        let now = u64::try_from(now_ns()).unwrap_or(0);
        *last = now.max(last.saturating_add(1));
        *last
    }
}

struct Worker {
    channel: Arc<Channel>,
    config: ChannelConfig,
    transport: Transport,
    outbox_dir: PathBuf,
    shutdown: CancellationToken,
}

impl Worker {
    async fn run(self) {
        let d = self.config.delivery();
        let mut backoff = Backoff::seeded(d.retry_min, d.retry_max);
        let mut current = None;
        let mut attempt: u64 = 0;
        let id = &self.channel.id;
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let head = lock(&self.channel.state).pending.first_key_value().map(|(s, p)| (*s, p.clone()));
            let Some((seq, path)) = head else {
                tokio::select! {
                    () = self.channel.wake.notified() => continue,
                    () = self.shutdown.cancelled() => return,
                }
            };
            if current != Some(seq) {
                current = Some(seq);
                attempt = 0;
            }
            attempt += 1;
            let entry = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            match self.attempt(&path).await {
                None => {
                    // Removed by someone else (an operator); nothing to send.
                    lock(&self.channel.state).pending.remove(&seq);
                }
                Some(Outcome::Delivered { warning }) => {
                    if let Err(e) = fs::remove_file(&path).and_then(|()| sync_dir(&self.outbox_dir)) {
                        tracing::error!(
                            channel = %id,
                            entry,
                            error = %e,
                            "delivered, but cannot remove the outbox entry; it will be sent again after a restart"
                        );
                    }
                    let mut state = lock(&self.channel.state);
                    state.pending.remove(&seq);
                    state.stats.delivered += 1;
                    state.stats.last_success_ns = Some(now_ns());
                    if let Some(w) = &warning {
                        state.stats.last_error = Some(w.clone());
                        state.stats.last_error_ns = state.stats.last_success_ns;
                    }
                    drop(state);
                    match warning {
                        Some(w) => {
                            tracing::error!(channel = %id, entry, attempt, error = %w, "notification delivered in part")
                        }
                        None => tracing::info!(channel = %id, entry, attempt, "notification delivered"),
                    }
                    backoff.reset();
                }
                Some(Outcome::Refused { error }) => {
                    let moved = self.set_aside(&path, &entry, &error);
                    let mut state = lock(&self.channel.state);
                    state.pending.remove(&seq);
                    state.stats.refused += 1;
                    state.stats.last_error = Some(error.clone());
                    state.stats.last_error_ns = Some(now_ns());
                    drop(state);
                    match moved {
                        Ok(()) => {
                            tracing::error!(
                                channel = %id,
                                entry,
                                attempt,
                                error = %error,
                                "notification refused; moved to failed/ (fix the channel, move it back, restart)"
                            )
                        }
                        Err(e) => {
                            tracing::error!(
                                channel = %id,
                                entry,
                                attempt,
                                error = %error,
                                move_error = %e,
                                "notification refused; cannot move it to failed/, so it is retried after a restart"
                            )
                        }
                    }
                    backoff.reset();
                }
                Some(Outcome::Retry { error, retry_after }) => {
                    let mut delay = backoff.next_delay();
                    if let Some(asked) = retry_after {
                        delay = delay.max(asked.min(MAX_RETRY_AFTER));
                    }
                    {
                        let mut state = lock(&self.channel.state);
                        state.stats.attempts_failed += 1;
                        state.stats.last_error = Some(error.clone());
                        state.stats.last_error_ns = Some(now_ns());
                    }
                    tracing::warn!(
                        channel = %id,
                        entry,
                        attempt,
                        error = %error,
                        retry_in_ms = delay.as_millis() as u64,
                        "notification not delivered; will retry"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// One attempt at the entry in `path`; `None` when the file is gone.
    async fn attempt(&self, path: &Path) -> Option<Outcome> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                let error = format!("cannot read outbox entry {}: {e}", path.display());
                return Some(Outcome::Retry { error, retry_after: None });
            }
        };
        let entry: EntryIn = match serde_json::from_slice(&bytes) {
            Ok(e) => e,
            Err(e) => {
                return Some(Outcome::Refused { error: format!("outbox entry is not a readable notification: {e}") });
            }
        };
        if entry.version != OUTBOX_VERSION {
            let error = format!("outbox entry has version {}, this build reads {OUTBOX_VERSION}", entry.version);
            return Some(Outcome::Refused { error });
        }
        let rendered = match render(&self.config, &entry.notification) {
            Ok(r) => r,
            Err(e) => return Some(Outcome::Refused { error: e.to_string() }),
        };
        let timeout = self.config.delivery().timeout;
        let delivery = async {
            match (&self.transport, &self.config) {
                (Transport::Http { client, url, headers }, _) => deliver_http(client, url, headers, rendered).await,
                (Transport::Smtp, ChannelConfig::Smtp(c)) => deliver_smtp(c, rendered).await,
                (Transport::Smtp, _) => {
                    Outcome::Refused { error: "internal: SMTP transport for an HTTP channel".to_string() }
                }
            }
        };
        Some(match tokio::time::timeout(timeout, delivery).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Retry { error: format!("no answer within {timeout:?}"), retry_after: None },
        })
    }

    /// Moves a refused entry to `failed/` with the reason beside it, so it is kept, not retried.
    fn set_aside(&self, path: &Path, entry: &str, error: &str) -> io::Result<()> {
        let failed = self.outbox_dir.join("failed");
        fs::create_dir_all(&failed)?;
        let _ = fs::write(failed.join(format!("{entry}.reason.txt")), format!("{error}\n"));
        fs::rename(path, failed.join(entry))?;
        sync_dir(&failed)?;
        sync_dir(&self.outbox_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    #[derive(Debug)]
    struct Request {
        path: String,
        headers: BTreeMap<String, String>,
        body: Vec<u8>,
    }

    impl Request {
        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).unwrap()
        }
    }

    /// A scripted answer: status, extra header lines ("Name: value\r\n"), body.
    type Answer = (u16, &'static str, &'static str);

    /// A one-request-per-connection HTTP/1.1 receiver answering with `script` in turn (the last
    /// answer repeats). Records every request.
    async fn http_receiver(script: Vec<Answer>) -> (String, mpsc::UnboundedReceiver<Request>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut served = 0;
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let mut stream = BufReader::new(stream);
                let mut request_line = String::new();
                if stream.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                    continue;
                }
                let mut headers = BTreeMap::new();
                loop {
                    let mut line = String::new();
                    stream.read_line(&mut line).await.unwrap();
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    let (k, v) = line.split_once(':').unwrap();
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
                let len: usize = headers.get("content-length").map_or(0, |v| v.parse().unwrap());
                let mut body = vec![0; len];
                stream.read_exact(&mut body).await.unwrap();
                let path = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
                let _ = tx.send(Request { path, headers, body });
                let (status, extra, reply) = script[served.min(script.len() - 1)];
                served += 1;
                let response = format!(
                    "HTTP/1.1 {status} Scripted\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                    reply.len()
                );
                let _ = stream.get_mut().write_all(response.as_bytes()).await;
                let _ = stream.get_mut().shutdown().await;
            }
        });
        (url, rx)
    }

    /// An address where nothing listens: connections are refused at once.
    async fn dead_url() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        drop(listener);
        url
    }

    fn fast(mut c: ChannelConfig) -> ChannelConfig {
        let (ms10, ms40, s2) = (
            HumanDuration(Duration::from_millis(10)),
            HumanDuration(Duration::from_millis(40)),
            HumanDuration(Duration::from_secs(2)),
        );
        match &mut c {
            ChannelConfig::Webhook(w) => (w.retry_min, w.retry_max, w.timeout) = (ms10, ms40, s2),
            ChannelConfig::Slack(w) => (w.retry_min, w.retry_max, w.timeout) = (ms10, ms40, s2),
            ChannelConfig::Pagerduty(w) => (w.retry_min, w.retry_max, w.timeout) = (ms10, ms40, s2),
            ChannelConfig::Smtp(w) => (w.retry_min, w.retry_max, w.timeout) = (ms10, ms40, s2),
        }
        c
    }

    fn webhook(url: &str) -> ChannelConfig {
        fast(serde_json::from_value(json!({"kind": "webhook", "url": url})).unwrap())
    }

    fn notification(receivers: &[&str]) -> Notification {
        let mut n = example_notification();
        n.receivers = receivers.iter().map(|r| r.to_string()).collect();
        n
    }

    fn start(channels: Vec<(&str, ChannelConfig)>, dir: &Path) -> (NotifierHandle, CancellationToken) {
        let shutdown = CancellationToken::new();
        let channels = channels.into_iter().map(|(id, c)| (id.to_string(), c)).collect();
        let handle = Notifier::start(channels, dir.to_path_buf(), shutdown.clone()).unwrap();
        (handle, shutdown)
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..300 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<Request>) -> Request {
        tokio::time::timeout(Duration::from_secs(3), rx.recv()).await.unwrap().unwrap()
    }

    fn outbox_entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn generic_webhook_gets_the_documented_json() {
        let dir = tempfile::tempdir().unwrap();
        let (url, mut rx) = http_receiver(vec![(200, "", "ok")]).await;
        let mut config = webhook(&url);
        if let ChannelConfig::Webhook(w) = &mut config {
            w.headers.insert("Authorization".into(), "Bearer t0ken".into());
        }
        let (notifier, _shutdown) = start(vec![("hook", config)], dir.path());
        let n = notification(&["hook"]);
        notifier.send(&n).unwrap();

        let request = next(&mut rx).await;
        assert_eq!(request.path, "/hook");
        assert_eq!(request.headers["content-type"], "application/json");
        assert_eq!(request.headers["authorization"], "Bearer t0ken");
        let body = request.json();
        let mut expected = serde_json::to_value(&n).unwrap();
        expected["version"] = json!(1);
        assert_eq!(body, expected);
        assert_eq!(body["status"], "firing");
        assert_eq!(body["alerts"][0]["labels"]["machine"], "press-3");
        assert_eq!(body["alerts"][0]["prediction"]["limit"], 4.5);
        assert_eq!(body["alerts"][0]["dashboard_url"], "https://edgeloop.example/machines/press-3");

        wait_for("delivery", || notifier.stats()["hook"].delivered == 1).await;
        let stats = &notifier.stats()["hook"];
        assert_eq!((stats.pending, stats.attempts_failed, stats.refused), (0, 0, 0));
        assert!(stats.last_success_ns.is_some());
        assert!(outbox_entries(dir.path()).is_empty(), "a delivered entry leaves the outbox");
    }

    #[test]
    fn slack_body_has_a_header_and_a_section_per_alert() {
        let config: ChannelConfig = serde_json::from_value(json!({"kind": "slack", "url": "http://x/y"})).unwrap();
        let Rendered::Http { content_type, body } = render(&config, &example_notification()).unwrap() else {
            panic!("slack renders HTTP")
        };
        assert_eq!(content_type, "application/json");
        let body: Value = serde_json::from_slice(&body).unwrap();
        let title = "[FIRING:1] bearing_zone_d on plant-a/press-3";
        assert!(body["text"].as_str().unwrap().starts_with(title));
        let blocks = body["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["text"], title);
        assert_eq!(blocks[1]["type"], "section");
        let section = blocks[1]["text"]["text"].as_str().unwrap();
        for part in [
            "*Machine:* press-3",
            "*Sensor:* `press3_de_velocity`",
            "*Value:* 3.9 vs limit 4.5",
            "reaches 4.5 at 2025-10-10 14:53 UTC (in about 30 h, 20–45 h)",
            "<https://edgeloop.example/machines/press-3|Open on the dashboard>",
        ] {
            assert!(section.contains(part), "{part:?} missing from {section}");
        }

        // Slack refuses more than 50 blocks: a storm is cut with a "more" line.
        let mut storm = example_notification();
        storm.alerts = vec![storm.alerts[0].clone(); 45];
        let Rendered::Http { body, .. } = render(&config, &storm).unwrap() else { panic!() };
        let body: Value = serde_json::from_slice(&body).unwrap();
        let blocks = body["blocks"].as_array().unwrap();
        assert_eq!(blocks.len(), 1 + SLACK_MAX_ALERT_SECTIONS + 1);
        assert_eq!(blocks[0]["text"]["text"], "[FIRING:45] bearing_zone_d on plant-a/press-3");
        assert!(blocks.last().unwrap()["elements"][0]["text"].as_str().unwrap().contains("5 more alerts"));
    }

    #[tokio::test]
    async fn pagerduty_trigger_then_resolve_share_the_dedup_key() {
        let dir = tempfile::tempdir().unwrap();
        let (url, mut rx) = http_receiver(vec![(202, "", r#"{"status":"success"}"#)]).await;
        let config =
            fast(serde_json::from_value(json!({"kind": "pagerduty", "url": url, "routing_key": "R0UTING"})).unwrap());
        let (notifier, _shutdown) = start(vec![("pd", config)], dir.path());
        let firing = notification(&["pd"]);
        let mut resolved = firing.clone();
        resolved.id.push_str("-resolved");
        resolved.status = GroupStatus::Resolved;
        resolved.alerts[0].state = AlertState::Resolved;
        notifier.send(&firing).unwrap();
        notifier.send(&resolved).unwrap();

        let trigger = next(&mut rx).await.json();
        assert_eq!(trigger["routing_key"], "R0UTING");
        assert_eq!(trigger["event_action"], "trigger");
        assert_eq!(trigger["dedup_key"], firing.group_key);
        let payload = &trigger["payload"];
        assert!(payload["summary"].as_str().unwrap().starts_with("[FIRING:1] bearing_zone_d on plant-a/press-3"));
        assert!(payload["summary"].as_str().unwrap().chars().count() <= 1024);
        assert_eq!(payload["source"], "gw-hall2");
        assert_eq!(payload["severity"], "warning");
        assert_eq!(payload["timestamp"], "2025-10-09T07:53:20Z");
        assert_eq!(payload["component"], "press-3");
        assert_eq!(payload["group"], "plant-a");
        assert_eq!(payload["class"], "bearing_zone_d");
        assert_eq!(payload["custom_details"]["alerts"][0]["value"], 3.9);
        assert_eq!(trigger["links"][0]["href"], "https://edgeloop.example/machines/press-3");

        let resolve = next(&mut rx).await.json();
        assert_eq!(
            resolve,
            json!({"routing_key": "R0UTING", "event_action": "resolve", "dedup_key": firing.group_key})
        );
        wait_for("both delivered", || notifier.stats()["pd"].delivered == 2).await;
    }

    #[test]
    fn custom_template_substitutes_and_escapes() {
        let template = concat!(
            r#"{"text": "{{ summary }}", "status": "{{status}}", "n": {{count}}, "lines": "{{alerts_text}}", "#,
            r#""key": "{{group_key}}", "link": "{{dashboard_url}}", "raw": {{json}}}"#
        );
        let config: ChannelConfig =
            serde_json::from_value(json!({"kind": "webhook", "url": "http://x/", "template": template})).unwrap();
        assert!(validate(&BTreeMap::from([("t".to_string(), config.clone())])).is_empty());
        let mut n = example_notification();
        n.alerts[0].summary = "bearing \"DE\" \\ over\nlimit\t!".to_string();
        let Rendered::Http { content_type, body } = render(&config, &n).unwrap() else { panic!() };
        assert_eq!(content_type, "application/json");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["text"], n.alerts[0].summary.as_str());
        assert_eq!(body["status"], "firing");
        assert_eq!(body["n"], 1);
        assert_eq!(body["key"], n.group_key.as_str());
        assert_eq!(body["link"], "https://edgeloop.example/machines/press-3");
        assert_eq!(
            body["lines"],
            concat!(
                "press-3/press3_de_velocity: value 3.9 (limit 4.5); ",
                "reaches 4.5 at 2025-10-10 14:53 UTC (in about 30 h, 20–45 h)"
            )
        );
        assert_eq!(body["raw"]["version"], 1);
        assert_eq!(body["raw"]["alerts"][0]["summary"], n.alerts[0].summary.as_str());

        // A text body is not escaped.
        let text: ChannelConfig = serde_json::from_value(
            json!({"kind": "webhook", "url": "http://x/", "template": "{{status}}: {{summary}}",
                "content_type": "text/plain"}),
        )
        .unwrap();
        let Rendered::Http { body, .. } = render(&text, &n).unwrap() else { panic!() };
        assert_eq!(String::from_utf8(body).unwrap(), format!("firing: {}", n.alerts[0].summary));
    }

    #[test]
    fn config_is_strict_and_every_problem_is_reported() {
        let hook: ChannelConfig = serde_json::from_value(
            json!({"kind": "webhook", "url": "http://x/", "timeout": "250ms", "retry_max": "1h"}),
        )
        .unwrap();
        assert_eq!(hook.delivery().timeout, Duration::from_millis(250));
        assert_eq!(hook.delivery().retry_min, Duration::from_secs(1));
        assert_eq!(hook.delivery().retry_max, Duration::from_secs(3600));
        let smtp: ChannelConfig =
            serde_json::from_value(json!({"kind": "smtp", "host": "mx", "from": "a@b.c", "to": ["d@e.f"]})).unwrap();
        let ChannelConfig::Smtp(s) = &smtp else { panic!() };
        assert_eq!((s.port, s.hello_name.as_str()), (25, "edgeloop"));
        let pd: ChannelConfig = serde_json::from_value(json!({"kind": "pagerduty", "routing_key": "k"})).unwrap();
        let ChannelConfig::Pagerduty(p) = &pd else { panic!() };
        assert_eq!(p.url, PAGERDUTY_EVENTS_URL);
        assert!(!format!("{pd:?}").contains("\"k\""), "the routing key stays out of Debug output");

        let unknown =
            serde_json::from_value::<ChannelConfig>(json!({"kind": "slack", "url": "http://x/", "chanel": "#ops"}));
        assert!(unknown.unwrap_err().to_string().contains("chanel"));
        assert!(serde_json::from_value::<ChannelConfig>(json!({"kind": "fax", "url": "x"})).is_err());
        let bad_duration =
            serde_json::from_value::<ChannelConfig>(json!({"kind": "slack", "url": "x", "timeout": "10"}));
        assert!(bad_duration.unwrap_err().to_string().contains("unit"));

        let bad = BTreeMap::from([
            ("bad id".to_string(), webhook("ftp://x/")),
            (
                "tpl".to_string(),
                serde_json::from_value(
                    json!({"kind": "webhook", "url": "http://x/", "template": "{\"a\": {{sumary}}}",
                    "retry_min": "10s", "retry_max": "1s"}),
                )
                .unwrap(),
            ),
            (
                "mail".to_string(),
                serde_json::from_value(json!({"kind": "smtp", "host": "", "from": "nobody", "to": []})).unwrap(),
            ),
        ]);
        let problems = validate(&bad);
        let text = join_problems(&problems);
        for part in [
            "notify.bad id: channel id",
            "http:// or https://",
            "{{sumary}}",
            "retry_max",
            "host is empty",
            "nobody",
            "to is empty",
        ] {
            assert!(text.contains(part), "{part:?} not in {text}");
        }
        let shutdown = CancellationToken::new();
        assert!(Notifier::start(bad, PathBuf::from("/nonexistent"), shutdown).is_err());
    }

    #[tokio::test]
    async fn server_errors_are_retried_until_delivered_once() {
        let dir = tempfile::tempdir().unwrap();
        let (url, mut rx) = http_receiver(vec![(500, "", "boom"), (500, "", "boom"), (200, "", "ok")]).await;
        let (notifier, _shutdown) = start(vec![("hook", webhook(&url))], dir.path());
        notifier.send(&notification(&["hook"])).unwrap();
        wait_for("delivery", || notifier.stats()["hook"].delivered == 1).await;
        for _ in 0..3 {
            next(&mut rx).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(rx.try_recv().is_err(), "nothing is sent after the 200");
        let stats = &notifier.stats()["hook"];
        assert_eq!((stats.delivered, stats.attempts_failed, stats.refused, stats.pending), (1, 2, 0, 0));
        assert!(stats.last_error.as_deref().unwrap().contains("500"));
    }

    #[tokio::test]
    async fn retry_after_is_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let (url, mut rx) = http_receiver(vec![(429, "Retry-After: 1\r\n", "slow down"), (200, "", "ok")]).await;
        let (notifier, _shutdown) = start(vec![("hook", webhook(&url))], dir.path());
        notifier.send(&notification(&["hook"])).unwrap();
        next(&mut rx).await;
        let first = tokio::time::Instant::now();
        next(&mut rx).await;
        assert!(first.elapsed() >= Duration::from_millis(900), "retried after {:?}", first.elapsed());
    }

    #[tokio::test]
    async fn a_client_error_is_set_aside_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let (url, mut rx) = http_receiver(vec![(404, "", "no such hook"), (200, "", "ok")]).await;
        let (notifier, _shutdown) = start(vec![("hook", webhook(&url))], dir.path());
        notifier.send(&notification(&["hook"])).unwrap();
        wait_for("refusal", || notifier.stats()["hook"].refused == 1).await;
        next(&mut rx).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(rx.try_recv().is_err(), "a 404 is not retried");
        let stats = &notifier.stats()["hook"];
        assert_eq!((stats.delivered, stats.attempts_failed, stats.pending), (0, 0, 0));
        let error = stats.last_error.as_deref().unwrap();
        assert!(error.contains("404") && error.contains("no such hook"), "{error}");
        assert!(outbox_entries(dir.path()).is_empty());
        let failed = outbox_entries(&dir.path().join("failed"));
        assert_eq!(failed.len(), 1, "{failed:?}");
        let kept: EntryIn =
            serde_json::from_slice(&fs::read(dir.path().join("failed").join(&failed[0])).unwrap()).unwrap();
        assert_eq!(kept.notification, notification(&["hook"]));
        let reason = fs::read_to_string(dir.path().join("failed").join(format!("{}.reason.txt", failed[0]))).unwrap();
        assert!(reason.contains("404"));
    }

    #[tokio::test]
    async fn the_outbox_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (notifier, shutdown) = start(vec![("hook", webhook(&dead_url().await))], dir.path());
        let n = notification(&["hook"]);
        notifier.send(&n).unwrap();
        wait_for("a failed attempt", || notifier.stats()["hook"].attempts_failed >= 1).await;
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(3), notifier.stopped()).await.unwrap();
        assert_eq!(outbox_entries(dir.path()).len(), 1);

        let (url, mut rx) = http_receiver(vec![(200, "", "ok")]).await;
        let (notifier, _shutdown) = start(vec![("hook", webhook(&url))], dir.path());
        assert_eq!(notifier.stats()["hook"].pending, 1);
        let body = next(&mut rx).await.json();
        assert_eq!(body["id"], n.id.as_str());
        wait_for("delivery", || notifier.stats()["hook"].delivered == 1).await;
        assert!(outbox_entries(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn a_hanging_channel_does_not_delay_another() {
        let dir = tempfile::tempdir().unwrap();
        // Accepts connections and never answers.
        let hang = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hang_url = format!("http://{}/", hang.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = hang.accept().await {
                held.push(s);
            }
        });
        let (url, mut rx) = http_receiver(vec![(200, "", "ok")]).await;
        let (notifier, _shutdown) = start(vec![("down", webhook(&hang_url)), ("up", webhook(&url))], dir.path());
        let first = notification(&["down", "up"]);
        let mut second = first.clone();
        second.id.push_str("-2");
        notifier.send(&first).unwrap();
        notifier.send(&second).unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(next(&mut rx).await.json()["id"], first.id.as_str());
        assert_eq!(next(&mut rx).await.json()["id"], second.id.as_str(), "oldest first");
        assert!(started.elapsed() < Duration::from_secs(1));
        wait_for("delivery", || notifier.stats()["up"].delivered == 2).await;
        let stats = notifier.stats();
        assert_eq!((stats["down"].delivered, stats["down"].pending), (0, 2));
    }

    #[tokio::test]
    async fn an_unknown_receiver_is_an_error_but_the_others_are_queued() {
        let dir = tempfile::tempdir().unwrap();
        let (url, mut rx) = http_receiver(vec![(200, "", "ok")]).await;
        let (notifier, _shutdown) = start(vec![("hook", webhook(&url))], dir.path());
        let err = notifier.send(&notification(&["nope", "hook"])).unwrap_err();
        assert!(matches!(&err, NotifyError::UnknownChannel { unknown, .. } if unknown == &["nope"]), "{err}");
        next(&mut rx).await;
    }

    /// A scripted SMTP server; sends the dialogue (client lines) and the raw DATA of each session.
    async fn smtp_receiver(auth_reply: &'static str) -> (u16, mpsc::UnboundedReceiver<(Vec<String>, String)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let mut s = BufReader::new(stream);
                let mut dialogue = Vec::new();
                let mut data = String::new();
                s.get_mut().write_all(b"220 test ESMTP ready\r\n").await.unwrap();
                loop {
                    let mut line = String::new();
                    if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                        break;
                    }
                    let line = line.trim_end_matches("\r\n").to_string();
                    let upper = line.to_ascii_uppercase();
                    let reply: &str = if upper.starts_with("EHLO") {
                        "250-test.local greets you\r\n250-8BITMIME\r\n250 AUTH LOGIN PLAIN\r\n"
                    } else if upper.starts_with("AUTH") {
                        auth_reply
                    } else if upper.starts_with("RCPT") && upper.contains("NOBODY@") {
                        "550 5.1.1 no such user\r\n"
                    } else if upper == "DATA" {
                        s.get_mut().write_all(b"354 go ahead\r\n").await.unwrap();
                        loop {
                            let mut l = String::new();
                            s.read_line(&mut l).await.unwrap();
                            if l == ".\r\n" {
                                break;
                            }
                            data.push_str(&l);
                        }
                        "250 2.0.0 queued as 42\r\n"
                    } else if upper == "QUIT" {
                        "221 bye\r\n"
                    } else {
                        "250 ok\r\n"
                    };
                    dialogue.push(line);
                    s.get_mut().write_all(reply.as_bytes()).await.unwrap();
                    if upper == "QUIT" || reply.starts_with('5') && upper.starts_with("AUTH") {
                        break;
                    }
                }
                let _ = tx.send((dialogue, data));
            }
        });
        (port, rx)
    }

    fn smtp(port: u16, to: &[&str]) -> ChannelConfig {
        fast(
            serde_json::from_value(json!({"kind": "smtp", "host": "127.0.0.1", "port": port,
                "from": "alerts@plant.example", "to": to, "username": "user", "password": "secret"}))
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn smtp_dialogue_with_auth_and_dot_stuffing() {
        let dir = tempfile::tempdir().unwrap();
        let (port, mut rx) = smtp_receiver("235 2.7.0 authenticated\r\n").await;
        let config = smtp(port, &["maint@plant.example", "nobody@plant.example", "lead@plant.example"]);
        let (notifier, _shutdown) = start(vec![("mail", config)], dir.path());
        let mut n = notification(&["mail"]);
        n.alerts[0].summary = ".5 mm/s over the limit on the drive end".to_string();
        notifier.send(&n).unwrap();

        let (dialogue, data) = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await.unwrap().unwrap();
        assert_eq!(
            dialogue,
            [
                "EHLO edgeloop",
                "AUTH PLAIN AHVzZXIAc2VjcmV0",
                "MAIL FROM:<alerts@plant.example>",
                "RCPT TO:<maint@plant.example>",
                "RCPT TO:<nobody@plant.example>",
                "RCPT TO:<lead@plant.example>",
                "DATA",
                "QUIT",
            ]
        );
        let segments: Vec<&str> = data.split('\n').collect();
        assert!(segments[..segments.len() - 1].iter().all(|l| l.ends_with('\r')), "CRLF line endings");
        assert!(data.contains("\r\n..5 mm/s over the limit on the drive end\r\n"), "dot-stuffed: {data}");
        for header in [
            "Subject: [FIRING:1] bearing_zone_d on plant-a/press-3\r\n",
            "Date: Thu, 09 Oct 2025 08:53:20 +0000\r\n",
            "From: alerts@plant.example\r\n",
            "Message-ID: <bearing_zone_d/plant-a/press-3#1.edgeloop@plant.example>\r\n",
            "MIME-Version: 1.0\r\n",
            "Content-Type: text/plain; charset=utf-8\r\n",
            "Content-Transfer-Encoding: quoted-printable\r\n",
        ] {
            assert!(data.contains(header), "{header:?} missing from {data}");
        }
        assert!(data.contains("(in about 30 h, 20=E2=80=9345 h)"), "the en dash is quoted-printable");
        assert!(data.lines().all(|l| l.len() <= 78));

        wait_for("delivery", || notifier.stats()["mail"].delivered == 1).await;
        let stats = &notifier.stats()["mail"];
        assert!(stats.last_error.as_deref().unwrap().contains("nobody@plant.example: server replied 550"));
    }

    #[tokio::test]
    async fn an_smtp_failure_names_the_step_and_the_reply() {
        let dir = tempfile::tempdir().unwrap();
        let (port, _rx) = smtp_receiver("535 5.7.8 bad credentials\r\n").await;
        let (notifier, _shutdown) = start(vec![("mail", smtp(port, &["maint@plant.example"]))], dir.path());
        notifier.send(&notification(&["mail"])).unwrap();
        wait_for("refusal", || notifier.stats()["mail"].refused == 1).await;
        let error = notifier.stats()["mail"].last_error.clone().unwrap();
        assert_eq!(error, "SMTP AUTH PLAIN failed: server replied 535 5.7.8 bad credentials");
        assert!(!error.contains("AHVzZXIAc2VjcmV0"), "no credentials in errors");
    }

    #[test]
    fn encodings() {
        assert_eq!(dot_stuff("a\n.b\r\n..c\n"), b"a\r\n..b\r\n...c\r\n.\r\n");
        assert_eq!(base64(b"\0user\0secret"), "AHVzZXIAc2VjcmV0");
        assert_eq!(base64(b"ab"), "YWI=");
        let qp = quoted_printable(&format!("{} end \nx=1 ümlaut", "y".repeat(100)));
        assert!(qp.split("\r\n").all(|l| l.len() <= 76), "{qp}");
        assert!(qp.contains("end=20\r\nx=3D1 =C3=BCmlaut"), "{qp}");
        assert_eq!(encode_header_word("plain"), "plain");
        assert_eq!(encode_header_word("Lüfter 3"), "=?utf-8?Q?L=C3=BCfter_3?=");
        assert_eq!(header_safe("a\r\nBcc: x"), "a  Bcc: x");
    }

    #[test]
    fn times() {
        let ns = 1_760_000_000 * 1_000_000_000;
        assert_eq!(rfc3339(ns), "2025-10-09T08:53:20Z");
        assert_eq!(rfc5322_date(ns), "Thu, 09 Oct 2025 08:53:20 +0000");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400 * 1_000_000_000), "2000-02-29T00:00:00Z");
        assert_eq!(parse_retry_after("120", 0), Some(Duration::from_secs(120)));
        let at = (days_from_civil(1994, 11, 6) * 86_400 + 8 * 3600 + 49 * 60 + 7) * 1_000_000_000;
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", at), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("soon", 0), None);
        assert_eq!(fmt_num(4.5), "4.5");
        assert_eq!(fmt_num(120.0), "120");
        assert_eq!(fmt_num(3.91749), "3.917");
    }
}

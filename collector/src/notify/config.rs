//! The `[notify.<id>]` tables: one struct per channel kind, strictly parsed, then checked as a
//! whole so that one edit fixes every problem.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use edgeloop_shared::{secret::Secret, units::HumanDuration};
use serde::Deserialize;

use super::{Transport, email, render, webhook};

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

/// `kind = "smtp"`: e-mail through a relay or a mail provider, over TLS unless told otherwise.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    /// Defaults to 25 with `tls = "starttls"` or `"none"` and to 465 with `tls = "tls"`; read it
    /// through [`SmtpConfig::port`].
    #[serde(default)]
    pub port: Option<u16>,
    /// How the connection is encrypted; see [`SmtpTls`].
    #[serde(default)]
    pub tls: SmtpTls,
    /// A PEM file with the CA certificate(s) that signed the server's certificate, for a relay
    /// under a private CA. When set, only these CAs are trusted; otherwise the system's roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The envelope and `From:` address, e.g. `alerts@plant.example`.
    pub from: String,
    pub to: Vec<String>,
    /// With `password`: AUTH (PLAIN, else LOGIN) once the connection is encrypted. Not allowed
    /// with `tls = "none"`, where it would cross the network in clear text.
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

/// `tls` of an SMTP channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connect, then STARTTLS, required: a server that does not offer it gets nothing, not
    /// even the credentials (the attempt fails and is retried).
    #[default]
    Starttls,
    /// TLS from the first byte ("SMTPS", usually port 465).
    Tls,
    /// No encryption, for a relay on the host or a trusted network; no credentials allowed.
    None,
}

impl SmtpConfig {
    /// The port to connect to: `port`, else the usual one for `tls`.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::Tls => 465,
            SmtpTls::Starttls | SmtpTls::None => 25,
        })
    }
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
    super::PAGERDUTY_EVENTS_URL.to_string()
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

pub(super) fn join_problems(problems: &[ConfigProblem]) -> String {
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

pub(super) fn check_channel_id(id: &str) -> Result<(), String> {
    // The id is part of outbox file names, so it must be safe in a path on every filesystem.
    let ok =
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!("channel id {id:?} must be 1 to 64 letters, digits, '_' or '-' (e.g. \"ops_slack\")"))
    }
}

/// Checks a channel and builds what delivering to it needs; every problem is reported.
pub(super) fn prepare_transport(config: &ChannelConfig) -> Result<Transport, Vec<String>> {
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
    let transport = match config {
        ChannelConfig::Webhook(c) => {
            if let Some(template) = &c.template {
                render::check_template(template, &c.content_type, &mut problems);
            }
            webhook::prepare(&c.url, Some(&c.headers), Some(&c.content_type), d.timeout, &mut problems)
                .map(Transport::Http)
        }
        ChannelConfig::Slack(c) => webhook::prepare(&c.url, None, None, d.timeout, &mut problems).map(Transport::Http),
        ChannelConfig::Pagerduty(c) => {
            if c.routing_key.expose().trim().is_empty() {
                problems.push("routing_key is empty; copy it from the PagerDuty service's integration".to_string());
            }
            webhook::prepare(&c.url, None, None, d.timeout, &mut problems).map(Transport::Http)
        }
        ChannelConfig::Smtp(c) => email::prepare(c, &mut problems).map(Transport::Smtp),
    };
    match transport {
        Some(t) if problems.is_empty() => Ok(t),
        _ if problems.is_empty() => Err(vec!["cannot prepare the channel".to_string()]),
        _ => Err(problems),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::testing::webhook;
    use crate::notify::{Notifier, PAGERDUTY_EVENTS_URL};
    use serde_json::json;
    use tokio_util::sync::CancellationToken;

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
        assert_eq!((s.port(), s.hello_name.as_str()), (25, "edgeloop"));
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
}

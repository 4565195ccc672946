//! Notification delivery: webhooks (generic JSON, Slack, PagerDuty Events v2, custom templates)
//! and e-mail over SMTP with TLS, behind a durable outbox, so a failing channel retries and is
//! reported but never loses an alert. A stage after automation: `automation → notify`.
//!
//! # Layout
//! - [`config`]: [`ChannelConfig`] (`[notify.<id>]`, tagged by `kind`) and its validation.
//! - [`render`](mod@render): what every channel shares: titles, summaries, the generic JSON, templates.
//! - [`webhook`]: HTTP delivery (Slack's and PagerDuty's too) and the generic webhook's body.
//! - [`slack`]: Slack's blocks.
//! - [`pagerduty`]: PagerDuty Events v2 trigger and resolve.
//! - [`email`]: the message (lettre's builder) and its SMTP transaction (lettre over rustls).
//! - [`outbox`]: one file per (notification, channel) and one delivery task per channel.
//! - `testing` (tests only): a scripted HTTP receiver and helpers the unit tests share.
//!
//! Here: [`Notifier::start`], [`NotifierHandle`] (send, stats) and [`render()`](fn@render), public
//! for API previews.
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
//! `"N alerts: <rule> on <place>"`), `{{count}}`, `{{alerts_text}}` (one line per alert: machine or
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
//! `Content-Type: text/plain; charset=utf-8`, `Content-Transfer-Encoding: quoted-printable`,
//! `Auto-Submitted: auto-generated`. The body is the title, then per alert its summary and indented
//! lines (machine, sensor, value, prediction, severity and start, dashboard link). Quoted-printable
//! rather than 8bit: the message stays ASCII, so no relay needs 8BITMIME, non-ASCII machine names
//! survive, and every line stays under 77 characters.
//!
//! # SMTP
//! Through lettre's connection, one per attempt. `tls = "starttls"` (the default) connects in
//! plain text, requires STARTTLS and sends nothing else before it: a server that does not offer it
//! gets no AUTH and no mail, and the attempt is retried. `tls = "tls"` speaks TLS from the first
//! byte (port 465). `tls = "none"` sends in clear and is refused at start with credentials. The
//! server's certificate is checked against the system's roots, or only `ca` when set. Then AUTH
//! (PLAIN, else LOGIN) when `username` is set, MAIL FROM, RCPT TO per recipient, DATA (lettre
//! dot-stuffs), QUIT. A failure names the step and quotes the server's reply. 4xx, TLS and I/O
//! errors are retried, 5xx is a permanent refusal. A recipient refused with 5xx is skipped and
//! reported while the others still get the mail (which is why this drives the connection rather
//! than lettre's transport, which gives up on the first refused recipient). lettre always greets
//! with EHLO: a server that only knows HELO (pre-1995) is not supported.

pub mod config;
pub mod email;
pub mod outbox;
pub mod pagerduty;
pub mod render;
pub mod slack;
#[cfg(test)]
mod testing;
pub mod webhook;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::config::{
    ChannelConfig, ConfigProblem, Delivery, PagerDutyConfig, SlackConfig, SmtpConfig, SmtpTls, WebhookConfig, validate,
};
use self::outbox::{Channel, Worker, lock};
pub use self::pagerduty::PAGERDUTY_EVENTS_URL;
pub use self::render::{GENERIC_JSON_VERSION, example_notification, generic_json};
use crate::model::Notification;
use edgeloop_shared::clock::now_ns;

/// Why the notifier refused to start, or a notification was not (fully) queued.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("invalid notification config: {}", config::join_problems(.0))]
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
            let body =
                webhook::body(c, n).map_err(|name| render_error(format!("unknown placeholder {{{{{name}}}}}")))?;
            Ok(Rendered::Http { content_type: c.content_type.clone(), body: body.into_bytes() })
        }
        ChannelConfig::Slack(_) => Ok(Rendered::Http {
            content_type: "application/json".to_string(),
            body: slack::body(n).to_string().into_bytes(),
        }),
        ChannelConfig::Pagerduty(c) => Ok(Rendered::Http {
            content_type: "application/json".to_string(),
            body: pagerduty::body(c, n).to_string().into_bytes(),
        }),
        ChannelConfig::Smtp(c) => Ok(Rendered::Email { message: email::message(c, n).map_err(render_error)? }),
    }
}

/// What one delivery attempt came to.
#[derive(Debug)]
enum Outcome {
    /// Accepted; `warning` reports a partial problem (an SMTP recipient refused).
    Delivered { warning: Option<String> },
    /// Worth trying again (network, timeout, TLS, 5xx, 408, 429, SMTP 4xx).
    Retry { error: String, retry_after: Option<Duration> },
    /// Will never succeed as configured: set aside in `failed/`.
    Refused { error: String },
}

/// What a channel needs for each attempt, built once at start from its checked config.
enum Transport {
    Http(webhook::HttpTransport),
    Smtp(email::SmtpTransport),
}

/// One attempt at delivering `rendered` through `transport`.
async fn deliver(transport: &Transport, config: &ChannelConfig, rendered: Rendered) -> Outcome {
    match (transport, config, rendered) {
        (Transport::Http(t), _, rendered @ Rendered::Http { .. }) => webhook::deliver(t, rendered).await,
        (Transport::Smtp(t), ChannelConfig::Smtp(c), Rendered::Email { message }) => {
            email::deliver(c, t, message.as_bytes()).await
        }
        _ => Outcome::Refused { error: format!("internal: a {} rendering does not fit its transport", config.kind()) },
    }
}

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

/// Writes the channels' delivery counters in the Prometheus text format (`/metrics`): an operator
/// sees a channel that fails or refuses before anyone misses an alert.
pub fn expose(channels: &BTreeMap<String, ChannelStats>, e: &mut edgeloop_shared::http::Exposition) {
    type Field = fn(&ChannelStats) -> f64;
    let families: [(&str, &str, &str, Field); 5] = [
        ("delivered_total", "counter", "Notifications the receiver accepted", |s| s.delivered as f64),
        ("attempts_failed_total", "counter", "Delivery attempts that failed and will be retried", |s| {
            s.attempts_failed as f64
        }),
        ("refused_total", "counter", "Notifications refused for good (moved to failed/)", |s| s.refused as f64),
        ("pending", "gauge", "Notifications waiting in the outbox", |s| s.pending as f64),
        ("last_success_timestamp_seconds", "gauge", "When the channel last delivered (0: never)", |s| {
            s.last_success_ns.map_or(0.0, |ns| ns as f64 / 1e9)
        }),
    ];
    for (name, kind, help, field) in families {
        let name = format!("edgeloop_notify_{name}");
        e.family(&name, kind, help);
        for (id, stats) in channels {
            e.sample(&name, &[("channel", id)], field(stats));
        }
    }
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
            if let Err(message) = config::check_channel_id(id) {
                problems.push(ConfigProblem { channel: id.clone(), message });
            }
            match config::prepare_transport(config) {
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

        let channel_map: BTreeMap<String, Arc<Channel>> =
            channels.keys().map(|id| (id.clone(), Arc::new(Channel::new(id)))).collect();
        let last_seq = outbox::load(&outbox_dir, &channel_map)?;

        let tracker = TaskTracker::new();
        for (id, config) in channels {
            let (Some(channel), Some(transport)) = (channel_map.get(&id), transports.remove(&id)) else {
                continue;
            };
            let pending = lock(&channel.state).pending.len();
            if pending > 0 {
                tracing::info!(channel = %id, pending, "delivering notifications left in the outbox");
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
            match outbox::write_entry(&self.inner.outbox_dir, seq, id, n) {
                Ok(path) => {
                    lock(&channel.state).pending.insert(seq, path);
                    channel.wake.notify_one();
                }
                Err(e) => {
                    tracing::error!(
                        channel = id,
                        notification = %n.id,
                        error = %webhook::error_chain(&e),
                        "cannot write outbox entry; notification not queued"
                    );
                    write_error.get_or_insert(e);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::testing::{http_receiver, next, notification, start, webhook};

    #[tokio::test]
    async fn an_unknown_receiver_is_an_error_but_the_others_are_queued() {
        let dir = tempfile::tempdir().unwrap();
        let (url, mut rx) = http_receiver(vec![(200, "", "ok")]).await;
        let (notifier, _shutdown) = start(vec![("hook", webhook(&url))], dir.path());
        let err = notifier.send(&notification(&["nope", "hook"])).unwrap_err();
        assert!(matches!(&err, NotifyError::UnknownChannel { unknown, .. } if unknown == &["nope"]), "{err}");
        next(&mut rx).await;
    }

    #[test]
    fn channel_counters_are_exposed_per_channel() {
        let mut channels = BTreeMap::new();
        channels.insert(
            "mail".to_string(),
            ChannelStats {
                delivered: 3,
                attempts_failed: 2,
                pending: 1,
                last_success_ns: Some(5_000_000_000),
                ..Default::default()
            },
        );
        channels.insert("pager".to_string(), ChannelStats { refused: 1, ..Default::default() });
        let mut e = edgeloop_shared::http::Exposition::default();
        expose(&channels, &mut e);
        let text = e.finish();
        for line in [
            "# TYPE edgeloop_notify_delivered_total counter",
            "edgeloop_notify_delivered_total{channel=\"mail\"} 3",
            "edgeloop_notify_attempts_failed_total{channel=\"mail\"} 2",
            "edgeloop_notify_refused_total{channel=\"pager\"} 1",
            "edgeloop_notify_pending{channel=\"mail\"} 1",
            "edgeloop_notify_last_success_timestamp_seconds{channel=\"mail\"} 5",
            "edgeloop_notify_last_success_timestamp_seconds{channel=\"pager\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing in\n{text}");
        }
    }
}

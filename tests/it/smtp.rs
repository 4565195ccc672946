//! E-mail notifications against a real SMTP server (aiosmtpd): a predictive alert raised by the
//! real collector's automation arrives over STARTTLS with AUTH after it; a server without TLS
//! never sees the credentials or the alert; a wrong password is a permanent refusal that names
//! the step; a certificate from an unknown CA is retried, with nothing sent.

use std::{path::Path, time::Duration};

use edgeloop_collector::{
    Collector,
    automation::synthetic::{SyntheticConfig, SyntheticSet},
    config::CollectorConfig,
    notify::{Notifier, NotifierHandle, example_notification},
};
use edgeloop_shared::model::Reading;
use tokio_util::sync::CancellationToken;

use crate::automation::{FakeAgent, predict_rules};
use crate::harness::{
    self,
    smtp::{Mode, PASSWORD, SmtpServer, USER},
};

const WAIT: Duration = Duration::from_secs(20);

/// `[notify.mail]` for `server`: STARTTLS (the default), its CA, the one user.
fn mail_channel(server: &SmtpServer, password: &str, ca: bool) -> String {
    let ca = match (&server.ca, ca) {
        (Some(ca), true) => format!("ca = \"{}\"", ca.display()),
        _ => String::new(),
    };
    format!(
        r#"
[notify.mail]
kind = "smtp"
host = "127.0.0.1"
port = {port}
{ca}
from = "alerts@plant.example"
to = ["maint@plant.example"]
username = "{USER}"
password = "{password}"
timeout = "5s"
retry_min = "100ms"
retry_max = "500ms"
"#,
        port = server.port,
    )
}

/// A collector with `[automation]` on the predictive rule and `[notify.mail]`.
async fn collector(dir: &Path, server: &SmtpServer) -> (Collector, CancellationToken) {
    std::fs::write(dir.join("fleet-rules.toml"), predict_rules("mail")).unwrap();
    let text = format!(
        r#"
[broker]
mode = "embedded"
listen = "127.0.0.1:0"

[store]
kind = "local"
path = "{store}"

[fleet]
state_file = "{fleet}"

[api]
listen = "127.0.0.1:0"

[automation]
rules = "{rules}"
state_dir = "{state}"
dashboard_url = "http://dashboard.test"
{mail}"#,
        store = dir.join("store").display(),
        fleet = dir.join("fleet.json").display(),
        rules = dir.join("fleet-rules.toml").display(),
        state = dir.join("automation").display(),
        mail = mail_channel(server, PASSWORD, true),
    );
    let config = CollectorConfig::parse(&text, Path::new("collector.toml")).unwrap();
    let shutdown = CancellationToken::new();
    (edgeloop_collector::start(&config, shutdown.clone()).await.unwrap(), shutdown)
}

/// A notifier alone with `channel` (a `[notify.mail]` table), its outbox in `dir/outbox`.
fn notifier(channel: &str, dir: &Path) -> (NotifierHandle, CancellationToken) {
    // Read through the collector's own config parser, as a deployment would.
    let text = format!(
        "[broker]\nmode = \"embedded\"\nlisten = \"127.0.0.1:0\"\n\n[store]\nkind = \"local\"\npath = \"{}\"\n{channel}",
        dir.join("store").display()
    );
    let config = CollectorConfig::parse(&text, Path::new("collector.toml")).unwrap();
    let shutdown = CancellationToken::new();
    (Notifier::start(config.notify, dir.join("outbox"), shutdown.clone()).unwrap(), shutdown)
}

fn outbox_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| d.filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".json")).count())
        .unwrap_or(0)
}

/// One faulty machine of the reference set streamed until the predictive rule fires; the
/// notifier mails it. The server sees EHLO, STARTTLS, EHLO, AUTH over TLS, then the envelope;
/// the message carries the documented headers and the prediction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_predictive_alert_arrives_by_email_over_starttls() {
    harness::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let server = SmtpServer::start(Mode::Starttls).await;
    let (c, shutdown) = collector(dir.path(), &server).await;
    let set = SyntheticSet::generate(SyntheticConfig::default());
    let machine = &set.machines[2];
    assert!(machine.faulty);
    let mut agent = FakeAgent::connect(c.broker_addr().unwrap(), "gw-press").await;
    let readings: Vec<Reading> = machine
        .readings(&set.config)
        .filter(|(_, v)| v.is_finite())
        .map(|(ts_ns, value)| Reading { sensor: "press-3.de.vel_rms".into(), ts_ns, value })
        .collect();
    let automation = c.automation.clone().unwrap();
    let mut alert = None;
    for (i, chunk) in readings.chunks(36).enumerate() {
        agent.send(chunk, "plant-a").await;
        let a = automation.clone();
        harness::wait_for("the automation to take the batch", WAIT, || {
            let a = a.clone();
            async move { (a.batches_seen() > i as u64).then_some(()) }
        })
        .await;
        alert = automation.alerts().into_iter().find(|v| v.alert.rule == "bearing_zone_d");
        if alert.is_some() {
            break;
        }
    }
    let alert = alert.expect("no predictive alert before the trip").alert;
    assert!(alert.prediction.is_some());

    let message = harness::wait_for("the e-mail", WAIT, || {
        let received = server.messages();
        async move { received.into_iter().next() }
    })
    .await;
    assert_eq!(message.mail_from, "alerts@plant.example");
    assert_eq!(message.rcpt_tos, ["maint@plant.example"]);
    assert!(message.tls && message.authenticated, "{message:?}");
    let (head, body) = message.content.split_once("\r\n\r\n").unwrap();
    let header = |name: &str| {
        head.split("\r\n")
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(": ")))
            .unwrap_or_else(|| panic!("no {name} header in {head}"))
            .to_string()
    };
    assert_eq!(header("Subject"), "[FIRING:1] bearing_zone_d on plant-a/press-3");
    assert_eq!(header("From"), "alerts@plant.example");
    assert_eq!(header("To"), "maint@plant.example");
    // Message-ID from the notification id, References from the group key (both in the signature).
    let signature = body.split("\r\n").find_map(|l| l.strip_prefix("edgeloop notification ")).expect("signature");
    let (id, group) = signature.split_once(", group ").unwrap();
    assert_eq!(header("Message-ID"), format!("<{id}.edgeloop@plant.example>"));
    assert_eq!(header("References"), format!("<{group}.group.edgeloop@plant.example>"));
    let date = header("Date");
    assert!(date.ends_with(" +0000") && date.split(' ').count() == 6, "RFC 5322 date: {date}");
    assert_eq!(header("Content-Type"), "text/plain; charset=utf-8");
    assert_eq!(header("Content-Transfer-Encoding"), "quoted-printable");
    assert!(body.starts_with("[FIRING:1] bearing_zone_d on plant-a/press-3\r\n"), "{body}");
    assert!(body.contains("  machine: press-3   sensor: press-3.de.vel_rms   agent: gw-press\r\n"), "{body}");
    // The prediction line, as on Slack and in templates ("–" is quoted-printable).
    let prediction = body.lines().find(|l| l.starts_with("  reaches 4.5 at ")).expect("the prediction line");
    assert!(prediction.contains(" UTC (in about ") && prediction.contains("=E2=80=93"), "{prediction}");
    assert!(body.contains("  dashboard: http://dashboard.test/#/agents/gw-press\r\n"), "{body}");

    let commands: Vec<(String, bool)> = server.commands().into_iter().map(|s| (s.cmd, s.tls)).collect();
    let expected = [("EHLO", false), ("STARTTLS", false), ("EHLO", true), ("AUTH", true), ("MAIL", true)];
    let expected: Vec<(String, bool)> = expected.iter().map(|(c, t)| (c.to_string(), *t)).collect();
    assert_eq!(commands[..5], expected[..], "{commands:?}");
    let auth = server.commands().into_iter().find(|s| s.cmd == "AUTH").unwrap();
    // AUTH PLAIN with the initial response: base64 of "\0user\0secret".
    assert_eq!(auth.arg, "PLAIN AHVzZXIAc2VjcmV0");

    let outbox = dir.path().join("automation/outbox");
    harness::wait_for("the outbox to empty", WAIT, || {
        let outbox = outbox.clone();
        async move { (outbox_entries(&outbox) == 0).then_some(()) }
    })
    .await;
    // The operator sees the delivery on /metrics, per channel.
    let url = format!("http://{}/metrics", c.api_addr().unwrap());
    harness::wait_for("the delivery on /metrics", WAIT, || {
        let url = url.clone();
        async move {
            let metrics = reqwest::get(url).await.ok()?.text().await.ok()?;
            (metrics.contains("edgeloop_notify_delivered_total{channel=\"mail\"} 1\n")
                && metrics.contains("edgeloop_notify_pending{channel=\"mail\"} 0\n"))
            .then_some(())
        }
    })
    .await;
    shutdown.cancel();
    c.wait().await;
}

/// The channel wants STARTTLS (the default) and the server offers none, only AUTH in the clear:
/// neither the credentials nor the alert leave, the entry stays in the outbox, each attempt counts
/// as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_tls_gets_no_auth_and_no_mail() {
    harness::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let server = SmtpServer::start(Mode::Plain).await;
    let (notifier, shutdown) = notifier(&mail_channel(&server, PASSWORD, false), dir.path());
    let mut n = example_notification();
    n.receivers = vec!["mail".into()];
    notifier.send(&n).unwrap();
    harness::wait_for("two failed attempts", WAIT, || {
        let failed = notifier.stats()["mail"].attempts_failed;
        async move { (failed >= 2).then_some(()) }
    })
    .await;
    let commands = server.commands();
    assert!(commands.iter().all(|s| s.cmd == "EHLO" || s.cmd == "QUIT"), "{commands:?}\n{}", server.log());
    assert!(commands.iter().any(|s| s.cmd == "EHLO"));
    assert!(server.messages().is_empty());
    let stats = &notifier.stats()["mail"];
    assert_eq!((stats.delivered, stats.refused, stats.pending), (0, 0, 1));
    assert!(stats.last_error.as_deref().unwrap().starts_with("SMTP STARTTLS failed"), "{stats:?}");
    assert_eq!(outbox_entries(&dir.path().join("outbox")), 1);
    shutdown.cancel();
    notifier.stopped().await;
}

/// A wrong password: 535 after STARTTLS, refused for good (moved to `failed/`), the error names
/// the step and quotes the reply, and carries no credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_and_named() {
    harness::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let server = SmtpServer::start(Mode::Starttls).await;
    let (notifier, shutdown) = notifier(&mail_channel(&server, "wrong", true), dir.path());
    let mut n = example_notification();
    n.receivers = vec!["mail".into()];
    notifier.send(&n).unwrap();
    harness::wait_for("the refusal", WAIT, || {
        let refused = notifier.stats()["mail"].refused;
        async move { (refused == 1).then_some(()) }
    })
    .await;
    let error = notifier.stats()["mail"].last_error.clone().unwrap();
    assert_eq!(error, "SMTP AUTH PLAIN failed: server replied 535 5.7.8 Authentication credentials invalid");
    assert!(!error.contains("wrong") && !error.contains("AHVzZXIAd3Jvbmc="), "no credentials in errors");
    assert!(server.commands().iter().all(|s| s.cmd != "MAIL"));
    assert_eq!(outbox_entries(&dir.path().join("outbox/failed")), 1);
    shutdown.cancel();
    notifier.stopped().await;
}

/// Without `ca`, the test CA is not among the system's roots: the handshake fails, the attempt is
/// retried, and nothing follows STARTTLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_certificate_authority_is_retried_with_nothing_sent() {
    harness::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let server = SmtpServer::start(Mode::Starttls).await;
    let (notifier, shutdown) = notifier(&mail_channel(&server, PASSWORD, false), dir.path());
    let mut n = example_notification();
    n.receivers = vec!["mail".into()];
    notifier.send(&n).unwrap();
    harness::wait_for("a failed attempt", WAIT, || {
        let failed = notifier.stats()["mail"].attempts_failed;
        async move { (failed >= 1).then_some(()) }
    })
    .await;
    let stats = &notifier.stats()["mail"];
    assert!(stats.last_error.as_deref().unwrap().starts_with("SMTP STARTTLS failed"), "{stats:?}");
    assert_eq!((stats.delivered, stats.refused, stats.pending), (0, 0, 1));
    let commands = server.commands();
    assert!(commands.iter().all(|s| !s.tls), "nothing over the rejected TLS session: {commands:?}");
    assert!(server.messages().is_empty());
    shutdown.cancel();
    notifier.stopped().await;
}

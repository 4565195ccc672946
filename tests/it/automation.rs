//! Central automation through the real collector (embedded broker, local store, the automation
//! task, the notifier) and real agents: predictive alerts on a synthetic run-to-failure bearing,
//! none on healthy machines, a fleet outage as one grouped notification, silences, and signed
//! commands (refused with the wrong key, a pushed rule set running on the agent).

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use edgeloop_collector::{
    Collector,
    automation::{
        commands::generate_key,
        muting::{MatchOp, Matcher, Silence},
        synthetic::{SyntheticConfig, SyntheticSet},
    },
    config::CollectorConfig,
};
use edgeloop_shared::{
    batch::Batch,
    model::{Ack, AgentReport, CommandAction, Presence, Reading, SignedCommand, from_wire, to_wire},
    topic::{self, Channel},
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::harness::{self, webhook::Webhook};

const WAIT: Duration = Duration::from_secs(20);

/// Starts a collector with `[automation]` on `rules` and a webhook channel `hook`.
async fn collector(dir: &Path, rules: &str, hook: &Webhook, signing_key: bool) -> (Collector, CancellationToken) {
    std::fs::write(dir.join("fleet-rules.toml"), rules).unwrap();
    let key = if signing_key {
        generate_key(&dir.join("command.key")).unwrap();
        format!("signing_key = \"{}\"", dir.join("command.key").display())
    } else {
        String::new()
    };
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

[automation]
rules = "{rules}"
state_dir = "{state}"
dashboard_url = "http://dashboard.test"
rules_check_interval = "200ms"
{key}

[notify.hook]
kind = "webhook"
url = "{url}"
retry_min = "100ms"
retry_max = "1s"
"#,
        store = dir.join("store").display(),
        fleet = dir.join("fleet.json").display(),
        rules = dir.join("fleet-rules.toml").display(),
        state = dir.join("automation").display(),
        url = hook.url(),
    );
    let config = CollectorConfig::parse(&text, Path::new("collector.toml")).unwrap();
    let shutdown = CancellationToken::new();
    (edgeloop_collector::start(&config, shutdown.clone()).await.unwrap(), shutdown)
}

/// An agent's uplink, played by a test: publishes batches and waits for each ack.
pub struct FakeAgent {
    id: String,
    client: AsyncClient,
    acks: mpsc::Receiver<Ack>,
    seq: u64,
}

impl FakeAgent {
    pub async fn connect(broker: SocketAddr, id: &str) -> Self {
        let mut opts = MqttOptions::new(id, broker.ip().to_string(), broker.port());
        opts.set_keep_alive(Duration::from_secs(30)).set_max_packet_size(4 << 20, 4 << 20);
        let (client, mut events) = AsyncClient::new(opts, 64);
        client.subscribe(topic::topic(id, Channel::Ack), QoS::AtLeastOnce).await.unwrap();
        let (tx, acks) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(ack) = from_wire::<Ack>(&p.payload) {
                            let _ = tx.send(ack).await;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        FakeAgent { id: id.into(), client, acks, seq: 0 }
    }

    /// Sends readings as one batch tagged `site`, and waits until the collector stored it.
    pub async fn send(&mut self, readings: &[Reading], site: &str) {
        self.send_with(readings, site, Vec::new()).await
    }

    /// The same, with events in the batch.
    pub async fn send_with(&mut self, readings: &[Reading], site: &str, events: Vec<edgeloop_shared::model::Event>) {
        self.seq += 1;
        let mut batch = Batch::from_readings(&self.id, self.seq, readings);
        batch.tags = vec![("site".into(), site.into())];
        batch.events = events;
        let topic = topic::topic(&self.id, Channel::Telemetry);
        self.client.publish(topic, QoS::AtLeastOnce, false, batch.encode().unwrap()).await.unwrap();
        loop {
            let ack = tokio::time::timeout(WAIT, self.acks.recv()).await.expect("no ack").unwrap();
            if ack.seq == self.seq {
                return;
            }
        }
    }

    async fn presence(&self, p: Presence) {
        let topic = topic::topic(&self.id, Channel::Status);
        self.client.publish(topic, QoS::AtLeastOnce, true, to_wire(&p).unwrap()).await.unwrap();
    }
}

fn report(interval_ms: u32) -> AgentReport {
    AgentReport {
        version: "test".into(),
        sent_ns: edgeloop_shared::clock::now_ns(),
        interval_ms,
        sensors: vec![],
        stale_sensors: vec![],
        backlog_readings: 0,
        backlog_bytes: 0,
        oldest_unsent_ns: None,
        accepted_total: 0,
        dropped_total: 0,
        quarantined_total: 0,
        latched: vec![],
    }
}

/// Waits until the automation has evaluated `n` batches.
async fn evaluated(c: &Collector, n: u64) {
    let a = c.automation.clone().unwrap();
    harness::wait_for("the automation to take every batch", WAIT, || {
        let a = a.clone();
        async move { (a.batches_seen() >= n).then_some(()) }
    })
    .await;
}

/// The predictive rule of the example fleet rules (ISO 10816 zone C/D at 4.5 mm/s, 96 h ahead),
/// notifying `channel`; the webhook and the e-mail tests share it.
pub fn predict_rules(channel: &str) -> String {
    format!(
        r#"
[defaults]
notify = ["{channel}"]

[rules.bearing_zone_d]
kind = "predict"
sensors = "*.de.vel_rms"
limit = 4.5
horizon = "96h"
bucket = "1h"
window = "48h"
confidence = 0.9
route = {{ group_by = ["rule", "machine"], group_wait = "0s" }}
"#
    )
}

/// One faulty machine of the reference set, 30 simulated days in 6-hour batches: the predictive
/// alert comes before the trip, its time to limit brackets the true crossing, and the webhook
/// gets the documented JSON with the prediction in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearing_fault_is_predicted_before_the_trip_and_its_interval_brackets_the_truth() {
    harness::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let hook = Webhook::start().await;
    let (c, shutdown) = collector(dir.path(), &predict_rules("hook"), &hook, false).await;
    let set = SyntheticSet::generate(SyntheticConfig::default());
    // Machine 2: a defect growing for days from a 1.5 mm/s baseline (see synthetic.rs).
    let machine = &set.machines[2];
    assert!(machine.faulty);
    let (truth_limit, truth_trip) = (machine.truth_limit_ns.unwrap(), machine.truth_trip_ns.unwrap());
    let mut agent = FakeAgent::connect(c.broker_addr().unwrap(), "gw-press").await;
    let readings: Vec<Reading> = machine
        .readings(&set.config)
        .filter(|(_, v)| v.is_finite())
        .map(|(ts_ns, value)| Reading { sensor: "press-3.de.vel_rms".into(), ts_ns, value })
        .collect();
    let automation = c.automation.clone().unwrap();
    let mut first = None;
    for (i, chunk) in readings.chunks(36).enumerate() {
        agent.send(chunk, "plant-a").await;
        evaluated(&c, i as u64 + 1).await;
        if let Some(a) = automation.alerts().into_iter().find(|v| v.alert.rule == "bearing_zone_d") {
            first = Some(a);
            break;
        }
    }
    let alert = first.expect("no predictive alert before the trip").alert;
    let p = alert.prediction.expect("the alert carries its prediction");
    let hours = |ns: i64| ns as f64 / 3.6e12;
    eprintln!(
        "alert at sim t={:.1} h before the limit: eta {:.1} h, interval {:.1}–{:.1} h, truth {:.1} h, trip {:.1} h",
        hours(truth_limit - p.from_ns),
        hours(p.eta_ns - p.from_ns),
        hours(p.low_ns - p.from_ns),
        hours(p.high_ns - p.from_ns),
        hours(truth_limit - p.from_ns),
        hours(truth_trip - p.from_ns),
    );
    assert!(p.from_ns < truth_trip, "the alert comes before the trip");
    assert!(truth_limit - p.from_ns >= 12 * 3_600_000_000_000, "with a lead worth acting on");
    assert!(p.low_ns <= truth_limit && truth_limit <= p.high_ns, "the interval brackets the truth");
    assert_eq!(alert.labels["machine"], "press-3");
    assert!(alert.summary.contains("reaches 4.5"), "{}", alert.summary);
    // The webhook gets the documented generic JSON.
    let body = harness::wait_for("the webhook notification", WAIT, || {
        let hook = hook.clone();
        async move { hook.bodies().into_iter().next() }
    })
    .await;
    assert_eq!(body["version"], 1);
    assert_eq!(body["status"], "firing");
    assert_eq!(body["receivers"], serde_json::json!(["hook"]));
    let a = &body["alerts"][0];
    assert_eq!(a["rule"], "bearing_zone_d");
    assert_eq!(a["labels"]["agent"], "gw-press");
    assert_eq!(a["labels"]["sensor"], "press-3.de.vel_rms");
    assert_eq!(a["dashboard_url"], "http://dashboard.test/#/agents/gw-press");
    for field in ["limit", "eta_ns", "low_ns", "high_ns", "from_ns", "value_now", "rate_per_hour"] {
        assert!(a["prediction"][field].is_number(), "prediction.{field} in {a}");
    }
    shutdown.cancel();
    c.wait().await;
}

/// Ten healthy machines of the reference set (noise, daily load cycles, glitches, load steps),
/// a simulated month each: no predictive alert, no notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_machines_raise_no_predictive_alert_in_a_month() {
    harness::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let hook = Webhook::start().await;
    let (c, shutdown) = collector(dir.path(), &predict_rules("hook"), &hook, false).await;
    let set = SyntheticSet::generate(SyntheticConfig::default());
    let broker = c.broker_addr().unwrap();
    let mut sent = 0;
    let mut tasks = Vec::new();
    for m in set.machines.iter().filter(|m| !m.faulty).take(10) {
        let readings: Vec<Reading> = m
            .readings(&set.config)
            .filter(|(_, v)| v.is_finite())
            .map(|(ts_ns, value)| Reading { sensor: format!("line-{}.de.vel_rms", m.id), ts_ns, value })
            .collect();
        sent += readings.chunks(72).count() as u64;
        tasks.push(tokio::spawn(async move {
            let mut agent = FakeAgent::connect(broker, &format!("gw-healthy-{}", m_id(&readings))).await;
            for chunk in readings.chunks(72) {
                agent.send(chunk, "plant-b").await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    evaluated(&c, sent).await;
    // Two ticks for anything due to be notified.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let automation = c.automation.clone().unwrap();
    assert!(automation.series_count() >= 10);
    let alerts = automation.alerts();
    assert!(alerts.is_empty(), "{alerts:?}");
    assert!(hook.bodies().is_empty(), "{:?}", hook.bodies());
    shutdown.cancel();
    c.wait().await;
}

fn m_id(readings: &[Reading]) -> String {
    readings[0].sensor.split('.').next().unwrap().to_owned()
}

const OFFLINE_RULES: &str = r#"
[defaults]
group_by = ["rule", "site"]
group_wait = "2s"
group_interval = "1m"
repeat_interval = "1h"
notify = ["hook"]

[rules.gateway_offline]
kind = "agent_offline"
severity = "critical"
"#;

/// 50 agents of one site go offline together: one notification listing all 50, not 50.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_agents_going_offline_are_one_notification() {
    harness::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let hook = Webhook::start().await;
    let (c, shutdown) = collector(dir.path(), OFFLINE_RULES, &hook, false).await;
    let broker = c.broker_addr().unwrap();
    let mut agents = Vec::new();
    for i in 0..50 {
        let mut a = FakeAgent::connect(broker, &format!("gw-site-{i:02}")).await;
        a.presence(Presence::Online(report(60_000))).await;
        a.send(&[Reading { sensor: "m.temp".into(), ts_ns: edgeloop_shared::clock::now_ns(), value: 20.0 }], "plant-a")
            .await;
        agents.push(a);
    }
    let fleet = c.fleet.clone();
    harness::wait_for("50 agents online", WAIT, || {
        let fleet = fleet.clone();
        async move { (fleet.agents().iter().filter(|a| a.online).count() == 50).then_some(()) }
    })
    .await;
    for a in &agents {
        a.presence(Presence::Offline).await;
    }
    let body = harness::wait_for("the outage notification", WAIT, || {
        let hook = hook.clone();
        async move { hook.bodies().into_iter().next() }
    })
    .await;
    assert_eq!(body["alerts"].as_array().unwrap().len(), 50, "all 50 in one notification");
    assert_eq!(body["group_labels"]["site"], "plant-a");
    // Nothing more for the same outage (group_interval is a minute).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(hook.bodies().len(), 1, "{:?}", hook.bodies());
    shutdown.cancel();
    c.wait().await;
}

/// The alert state survives a collector restart: a firing alert is still firing, with the same
/// start, and people are not told about it a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_state_survives_a_restart_without_a_second_notification() {
    harness::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let hook = Webhook::start().await;
    let rules = OFFLINE_RULES.replace("group_wait = \"2s\"", "group_wait = \"0s\"");
    let (c, shutdown) = collector(dir.path(), &rules, &hook, false).await;
    let mut a = FakeAgent::connect(c.broker_addr().unwrap(), "gw-restart").await;
    a.presence(Presence::Online(report(60_000))).await;
    a.send(&[Reading { sensor: "m.temp".into(), ts_ns: edgeloop_shared::clock::now_ns(), value: 20.0 }], "plant-a")
        .await;
    a.presence(Presence::Offline).await;
    harness::wait_for("the outage notification", WAIT, || {
        let hook = hook.clone();
        async move { (hook.bodies().len() == 1).then_some(()) }
    })
    .await;
    let before = c.automation.clone().unwrap().alerts();
    assert_eq!(before.len(), 1);
    shutdown.cancel();
    c.wait().await;
    drop(c);

    std::fs::remove_file(dir.path().join("fleet-rules.toml")).unwrap();
    let (c, shutdown) = collector(dir.path(), &rules, &hook, false).await;
    // Several ticks of the restored book.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = c.automation.clone().unwrap().alerts();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].alert.fingerprint, before[0].alert.fingerprint);
    assert_eq!(after[0].alert.state, edgeloop_collector::model::AlertState::Firing);
    assert_eq!(after[0].alert.started_ns, before[0].alert.started_ns);
    assert_eq!(hook.bodies().len(), 1, "no second notification after the restart: {:?}", hook.bodies());
    shutdown.cancel();
    c.wait().await;
}

/// A silence on one agent keeps its outage quiet until the silence expires; then it is notified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silence_suppresses_then_expires() {
    harness::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let hook = Webhook::start().await;
    let rules = OFFLINE_RULES.replace("group_wait = \"2s\"", "group_wait = \"0s\"");
    let (c, shutdown) = collector(dir.path(), &rules, &hook, false).await;
    let automation = c.automation.clone().unwrap();
    let now = edgeloop_shared::clock::now_ns();
    let id = automation
        .silence(Silence {
            matchers: vec![Matcher { label: "agent".into(), value: "gw-quiet".into(), op: MatchOp::Equal }],
            starts_ns: now,
            ends_ns: now + 5_000_000_000,
            created_by: "maintenance:alice".into(),
            comment: "planned maintenance".into(),
        })
        .unwrap();
    let mut a = FakeAgent::connect(c.broker_addr().unwrap(), "gw-quiet").await;
    a.presence(Presence::Online(report(60_000))).await;
    a.send(&[Reading { sensor: "m.temp".into(), ts_ns: now, value: 20.0 }], "plant-a").await;
    a.presence(Presence::Offline).await;
    harness::wait_for("the alert, silenced", WAIT, || {
        let automation = automation.clone();
        let id = id.clone();
        async move { automation.alerts().into_iter().find(|v| v.silenced_by.contains(&id)).map(|_| ()) }
    })
    .await;
    assert!(hook.bodies().is_empty(), "silenced: {:?}", hook.bodies());
    let body = harness::wait_for("the notification after the silence expired", WAIT, || {
        let hook = hook.clone();
        async move { hook.bodies().into_iter().next() }
    })
    .await;
    assert!(edgeloop_shared::clock::now_ns() >= now + 5_000_000_000, "not before the silence ended");
    assert_eq!(body["alerts"][0]["labels"]["agent"], "gw-quiet");
    shutdown.cancel();
    c.wait().await;
}

/// Commands: signed by the collector, refused (and audited at both ends) by an agent that trusts
/// another key, refused as a bad signature when forged; a rule set pushed from the collector is
/// running on the agent (its `rules_loaded` event names the new version).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_commands_are_verified_audited_and_pushed_rules_run_on_the_agent() {
    harness::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let hook = Webhook::start().await;
    let (c, shutdown) = collector(dir.path(), OFFLINE_RULES, &hook, true).await;
    let automation = c.automation.clone().unwrap();
    let public = automation.public_key_hex().await.unwrap();
    let other = edgeloop_shared::command::SigningKey::generate().unwrap();
    let broker = c.broker_addr().unwrap();
    let agent_stop = CancellationToken::new();
    let trusted = start_agent(dir.path(), "gw-trusted", broker, &public, &agent_stop).await;
    let _stranger = start_agent(dir.path(), "gw-stranger", broker, &other.public_key_hex(), &agent_stop).await;
    let live = c.live.clone();
    harness::wait_for("both agents' first rules_loaded", WAIT, || {
        let live = live.clone();
        async move {
            (live.rules_version("gw-trusted") == Some(1) && live.rules_version("gw-stranger") == Some(1)).then_some(())
        }
    })
    .await;

    // The wrong key: refused by the agent, "failed" in the collector's audit log.
    let id = automation
        .command("gw-stranger", CommandAction::Shutdown { reason: "test".into() }, "token:operator")
        .await
        .unwrap();
    let refused = harness::wait_for("the stranger's refusal in the audit log", WAIT, || {
        let automation = automation.clone();
        async move { automation.audit(20).into_iter().find(|r| r.id == Some(id) && r.verdict == "failed") }
    })
    .await;
    assert!(refused.detail.contains("refused"), "{refused:?}");
    let stranger_audit = std::fs::read_to_string(dir.path().join("gw-stranger/data/audit.jsonl")).unwrap();
    assert!(stranger_audit.contains(&id.to_string()) && stranger_audit.contains("refused"), "{stranger_audit}");

    // A forged command (right key id, wrong signature) straight onto the broker.
    let mut opts = MqttOptions::new("attacker", broker.ip().to_string(), broker.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (attacker, mut events) = AsyncClient::new(opts, 16);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let forged_cmd = edgeloop_shared::model::Command {
        id: 4242,
        agent: "gw-trusted".into(),
        issued_ns: edgeloop_shared::clock::now_ns(),
        expires_ns: edgeloop_shared::clock::now_ns() + 60_000_000_000,
        issuer: "attacker".into(),
        action: CommandAction::Shutdown { reason: "forged".into() },
    };
    let mut forged = other.sign(&forged_cmd).unwrap();
    forged.key_id = edgeloop_shared::command::VerifyingKey::from_hex(&public).unwrap().key_id();
    let wire = to_wire::<SignedCommand>(&forged).unwrap();
    attacker.publish(topic::topic("gw-trusted", Channel::Cmd), QoS::AtLeastOnce, false, wire).await.unwrap();
    let trusted_audit = dir.path().join("gw-trusted/data/audit.jsonl");
    harness::wait_for("the forged command refused and audited by the agent", WAIT, || {
        let path = trusted_audit.clone();
        async move {
            let text = std::fs::read_to_string(path).ok()?;
            text.lines().find(|l| l.contains("4242") && l.contains("bad signature")).map(|_| ())
        }
    })
    .await;

    // A rule set pushed from the collector runs on the agent.
    let rules = "[rules.too_hot]\nsensor = \"machine.temperature\"\nabove = 900.0\nseverity = \"warning\"\n";
    let id = automation
        .command("gw-trusted", CommandAction::PushRules { toml: rules.into() }, "token:engineer")
        .await
        .unwrap();
    let done = harness::wait_for("the push executed", WAIT, || {
        let automation = automation.clone();
        async move { automation.audit(20).into_iter().find(|r| r.id == Some(id) && r.verdict != "sent") }
    })
    .await;
    assert_eq!(done.verdict, "executed", "{done:?}");
    assert_eq!(std::fs::read_to_string(dir.path().join("gw-trusted/rules.toml")).unwrap(), rules);
    harness::wait_for("the agent running rule-set version 2", WAIT, || {
        let live = live.clone();
        async move { (live.rules_version("gw-trusted") == Some(2)).then_some(()) }
    })
    .await;
    assert_eq!(trusted.rules_version(), 2);
    agent_stop.cancel();
    shutdown.cancel();
    c.wait().await;
}

/// A real agent with a rule file and commands trusting `public_key`.
async fn start_agent(
    dir: &Path,
    id: &str,
    broker: SocketAddr,
    public_key: &str,
    stop: &CancellationToken,
) -> Arc<edgeloop_agent::Agent> {
    let home = dir.join(id);
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(
        home.join("rules.toml"),
        "[rules.hot]\nsensor = \"machine.temperature\"\nabove = 1000.0\nseverity = \"warning\"\n",
    )
    .unwrap();
    let text = format!(
        r#"
[agent]
id = "{id}"
data_dir = "{data}"
rules = "{rules}"
rules_check_interval = "100ms"

[uplink]
host = "127.0.0.1"
port = {port}
reconnect_min = "50ms"
reconnect_max = "200ms"

[sources.machine]
kind = "simulated"
period = "100ms"

[commands]
public_key = "{public_key}"
"#,
        data = home.join("data").display(),
        rules = home.join("rules.toml").display(),
        port = broker.port(),
    );
    let config = edgeloop_agent::config::AgentConfig::parse(&text, Path::new("agent.toml")).unwrap();
    Arc::new(edgeloop_agent::start(&config, stop.child_token()).await.unwrap())
}

/// Two collectors split the telemetry through a shared subscription on Mosquitto; the one that
/// runs the automation still evaluates every batch (its whole-stream subscription), so a fleet
/// rule fires for every agent, not only for those whose batches it happened to store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_automation_sees_the_whole_stream_when_collectors_share_it() {
    harness::init_tracing();
    let mosquitto = harness::mosquitto::Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.toml"),
        "[defaults]\ngroup_wait = \"0s\"\n\n[rules.hot]\nkind = \"threshold\"\nsensors = \"*.temp\"\nabove = 50.0\n",
    )
    .unwrap();
    let config = |name: &str, automation: bool| {
        let auto = if automation {
            format!(
                "[automation]\nrules = \"{}\"\nstate_dir = \"{}\"\n",
                dir.path().join("rules.toml").display(),
                dir.path().join(name).join("automation").display()
            )
        } else {
            String::new()
        };
        let text = format!(
            "[broker]\nmode = \"external\"\nhost = \"127.0.0.1\"\nport = {}\nshared_group = \"collectors\"\n\n\
             [ingest]\nclient_id = \"{name}\"\n\n[store]\nkind = \"local\"\npath = \"{}\"\n\n{auto}",
            mosquitto.port,
            dir.path().join(name).join("store").display()
        );
        CollectorConfig::parse(&text, Path::new("collector.toml")).unwrap()
    };
    let stop = CancellationToken::new();
    let a = edgeloop_collector::start(&config("collector-a", true), stop.clone()).await.unwrap();
    let b = edgeloop_collector::start(&config("collector-b", false), stop.clone()).await.unwrap();
    for c in [&a, &b] {
        harness::wait_for("the collector subscribed", WAIT, || async { c.is_consuming().then_some(()) }).await;
    }
    let broker: SocketAddr = ([127, 0, 0, 1], mosquitto.port).into();
    let (agents, per_agent) = (3u64, 40u64);
    let mut tasks = Vec::new();
    for i in 0..agents {
        tasks.push(tokio::spawn(async move {
            let mut agent = FakeAgent::connect(broker, &format!("gw-shared-{i}")).await;
            for n in 0..per_agent {
                let ts_ns = edgeloop_shared::clock::now_ns();
                // The last batch of each agent is over the limit.
                let value = if n + 1 == per_agent { 80.0 } else { 20.0 };
                agent.send(&[Reading { sensor: format!("m{i}.temp"), ts_ns, value }], "plant-a").await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stored_a = a.stats.batches_stored.load(std::sync::atomic::Ordering::Relaxed);
    let stored_b = b.stats.batches_stored.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(stored_a + stored_b, agents * per_agent, "every batch stored once between them");
    assert!(stored_a > 0 && stored_b > 0, "both collectors took a share: {stored_a} / {stored_b}");
    evaluated(&a, agents * per_agent).await;
    let automation = a.automation.clone().unwrap();
    harness::wait_for("a threshold alert for every agent", WAIT, || {
        let automation = automation.clone();
        async move { (automation.alerts().len() as u64 == agents).then_some(()) }
    })
    .await;
    // The collectors spoke MQTT 5 (the default for a site broker), every connection of theirs.
    let log = mosquitto.log();
    for id in ["collector-a", "collector-b", "collector-a-automation"] {
        assert!(log.contains(&format!("as {id} (p5")), "{id} did not connect with MQTT 5:\n{log}");
    }
    stop.cancel();
    a.wait().await;
    b.wait().await;
}

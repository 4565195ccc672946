//! Collectors at fleet scale: several collectors share the agents' batches through an MQTT
//! shared subscription on a real Mosquitto; one is killed mid-stream and the survivor takes over.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use edgeloop_agent::config::SimulatedConfig;
use edgeloop_shared::units::HumanDuration;
use tokio_util::sync::CancellationToken;

use crate::harness::{self, influxdb::Influx1, mosquitto::Mosquitto};

/// Two `edgeloop-collector` binaries in the shared-subscription group `collectors` on Mosquitto,
/// three agents sending 2,000 readings/s each. Collector A is SIGKILLed once readings flow:
/// whatever it held un-acked is re-sent by the agents after their ack timeout and lands on B.
/// InfluxDB ends with every reading exactly once, and all three backlogs drain through B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_share_the_fleet_and_the_survivor_takes_over() {
    harness::init_tracing();
    let mosquitto = Mosquitto::start().await;
    let influx = Influx1::start("edgeloop").await;
    let dir = tempfile::tempdir().unwrap();
    let bin = harness::binary("edgeloop-collector");
    // One collector speaks MQTT 3.1.1, the other MQTT 5: the group is the same to the broker.
    let spawn = |name: &str, protocol: &str| -> Child {
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[broker]\nmode = \"external\"\nhost = \"127.0.0.1\"\nport = {}\nshared_group = \"collectors\"\n\
                 protocol = \"{protocol}\"\n\n\
                 [ingest]\nclient_id = \"{name}\"\nretry_max = \"1s\"\n\n\
                 [store]\nkind = \"influx_v1\"\nurl = \"{}\"\ndatabase = \"edgeloop\"\n",
                mosquitto.port, influx.url
            ),
        )
        .unwrap();
        Command::new(&bin)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut a = spawn("collector-a", "3.1.1");
    let mut b = spawn("collector-b", "5");

    let total = 16_000;
    let stop = CancellationToken::new();
    let mut agents = Vec::new();
    for i in 0..3 {
        let sim =
            SimulatedConfig { period: HumanDuration(Duration::from_millis(1)), realtime: true, limit: Some(total) };
        let id = format!("gw-fleet-{i}");
        let cfg = harness::agent_config(&id, &dir.path().join(&id), ([127, 0, 0, 1], mosquitto.port).into(), sim);
        agents.push(edgeloop_agent::start(&cfg, stop.clone()).await.unwrap());
    }

    harness::wait_for("readings flowing", Duration::from_secs(60), || async {
        (influx.count("edgeloop", "readings", "value").await >= 6_000).then_some(())
    })
    .await;
    let log = mosquitto.log();
    assert!(log.contains("as collector-a (p2") && log.contains("as collector-b (p5"), "protocols:\n{log}");
    a.kill().unwrap(); // SIGKILL, mid-stream
    a.wait().unwrap();
    let at_kill = influx.count("edgeloop", "readings", "value").await;
    assert!(at_kill < 3 * total, "the kill must land mid-stream ({at_kill} stored)");

    harness::wait_for("every backlog drained through the survivor", Duration::from_secs(120), || async {
        agents
            .iter()
            .all(|a| {
                let s = a.stats.snapshot();
                s.acked == total && s.backlog == 0
            })
            .then_some(())
    })
    .await;
    assert_eq!(influx.count("edgeloop", "readings", "value").await, 3 * total);
    let per_agent = influx.query("edgeloop", "SELECT count(value) FROM readings GROUP BY agent").await;
    for series in per_agent["results"][0]["series"].as_array().unwrap() {
        assert_eq!(series["values"][0][1].as_u64(), Some(total), "{series}");
    }
    stop.cancel();
    for a in &agents {
        a.wait().await;
    }
    b.kill().unwrap();
    b.wait().unwrap();
}

/// InfluxDB is killed for a while mid-stream: the collector keeps retrying and stops acking, the
/// agent keeps its batches, and once InfluxDB is back every reading is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influxdb_down_mid_stream_loses_nothing_and_acks_resume() {
    harness::init_tracing();
    let mut influx = Influx1::start("edgeloop").await;
    let dir = tempfile::tempdir().unwrap();
    let store = harness::influxdb::v1_store(&influx.url);
    let mut config = harness::collector_config(([127, 0, 0, 1], 0).into(), store);
    config.ingest.retry_max = HumanDuration(Duration::from_millis(500));
    let stop = CancellationToken::new();
    let collector = edgeloop_collector::start(&config, stop.clone()).await.unwrap();
    let total = 12_000;
    let sim = SimulatedConfig { period: HumanDuration(Duration::from_millis(1)), realtime: true, limit: Some(total) };
    let cfg = harness::agent_config("gw-dbdown", dir.path(), collector.broker_addr().unwrap(), sim);
    let agent = edgeloop_agent::start(&cfg, stop.clone()).await.unwrap();

    harness::wait_for("readings flowing", Duration::from_secs(60), || async {
        (influx.count("edgeloop", "readings", "value").await >= 2_000).then_some(())
    })
    .await;
    influx.kill();
    // With the database gone nothing more is acknowledged: the backlog grows in the agent.
    let acked_at_kill = agent.stats.snapshot().acked;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = agent.stats.snapshot();
    assert!(s.acked <= acked_at_kill + 2_000, "at most the batch in the write when it died: {s:?}");
    assert!(s.backlog > 2_000, "the agent keeps what is not stored: {s:?}");

    influx.restart().await;
    harness::wait_for("every reading acknowledged once InfluxDB is back", Duration::from_secs(120), || async {
        let s = agent.stats.snapshot();
        (s.acked == total && s.backlog == 0).then_some(())
    })
    .await;
    assert_eq!(influx.count("edgeloop", "readings", "value").await, total);
    stop.cancel();
    agent.wait().await;
}

/// One point of a batch that InfluxDB refuses (a field type conflict on an event's field) is
/// isolated and reported with its agent and sensor; the rest of the batch is stored and acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_the_database_refuses_is_isolated_and_the_rest_stored() {
    use edgeloop_shared::{
        batch::Batch,
        model::{Ack, AckStatus, Event, EventKind, Reading, Severity, from_wire},
        topic::{Channel, topic},
    };
    use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
    use std::sync::atomic::Ordering::Relaxed;

    harness::init_tracing();
    let influx = Influx1::start("edgeloop").await;
    // `skew_ms` already exists in `events` as a string: an integer `skew_ms` is a type conflict.
    let resp = reqwest::Client::new()
        .post(format!("{}/write?db=edgeloop", influx.url))
        .body("events,agent=someone,subject=x,kind=clock_skew,severity=warning skew_ms=\"legacy\" 1000\n")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let store = harness::influxdb::v1_store(&influx.url);
    let collector = edgeloop_collector::start(
        &harness::collector_config(([127, 0, 0, 1], 0).into(), store),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let broker = collector.broker_addr().unwrap();

    let mut opts = MqttOptions::new("gw-conflict", broker.ip().to_string(), broker.port());
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 16);
    client.subscribe(topic("gw-conflict", Channel::Ack), QoS::AtLeastOnce).await.unwrap();
    let readings: Vec<Reading> = (0..100)
        .map(|i| Reading {
            sensor: if i % 2 == 0 { "temp".into() } else { "vib".into() },
            ts_ns: 10_000 + i,
            value: 20.5,
        })
        .collect();
    let mut batch = Batch::from_readings("gw-conflict", 1, &readings);
    let event = |kind, subject: &str| Event {
        ts_ns: 20_000,
        kind,
        severity: Severity::Warning,
        subject: subject.into(),
        message: "m".into(),
        values: vec![],
    };
    batch.events.push(event(EventKind::ClockSkew { skew_ms: 7_000 }, "node.temp"));
    batch.events.push(event(EventKind::SensorStale, "vib"));
    client
        .publish(topic("gw-conflict", Channel::Telemetry), QoS::AtLeastOnce, false, batch.encode().unwrap())
        .await
        .unwrap();

    let ack = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let MqttEvent::Incoming(Packet::Publish(p)) = events.poll().await.unwrap() {
                break from_wire::<Ack>(&p.payload).unwrap();
            }
        }
    })
    .await
    .expect("the batch is acknowledged");
    assert_eq!(
        ack,
        Ack { agent: "gw-conflict".into(), buffer: Some(0), seq: 1, status: AckStatus::Stored { points: 100 } }
    );
    assert_eq!(collector.stats.points_rejected.load(Relaxed), 1, "only the conflicting event line");
    assert_eq!(collector.stats.rejected.load(Relaxed), 0, "the batch itself is not refused");
    assert_eq!(influx.count("edgeloop", "readings", "value").await, 100);
    let stale = influx.query("edgeloop", "SELECT count(message) FROM events WHERE agent = 'gw-conflict'").await;
    assert_eq!(
        stale["results"][0]["series"][0]["values"][0][1].as_u64(),
        Some(1),
        "the other event is stored: {stale}"
    );
}

/// The fleet registry: an agent's reports make it online in `/fleet` and `/metrics` (with its
/// sensors, backlog and lag); a clean stop turns it offline at once; a restarted collector
/// still lists it from its state file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_registry_tracks_agents_and_survives_a_restart() {
    harness::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let start_collector = |port: u16| {
        let mut config = harness::collector_config(
            ([127, 0, 0, 1], port).into(),
            edgeloop_collector::config::StoreConfig::Local(edgeloop_collector::config::LocalStoreConfig {
                path: dir.path().join("store"),
            }),
        );
        config.fleet.state_file = Some(dir.path().join("fleet.json"));
        config.api =
            Some(edgeloop_collector::config::ApiConfig { listen: ([127, 0, 0, 1], 0).into(), tokens_file: None });
        config
    };
    let stop = CancellationToken::new();
    let collector = edgeloop_collector::start(&start_collector(0), stop.clone()).await.unwrap();
    let api = collector.api_addr().unwrap();
    let get = |path: &'static str| async move {
        reqwest::get(format!("http://{api}{path}")).await.unwrap().text().await.unwrap()
    };
    let sim = SimulatedConfig { period: HumanDuration(Duration::from_millis(10)), realtime: true, limit: None };
    let agent_stop = CancellationToken::new();
    let cfg = harness::agent_config("gw-reg", &dir.path().join("agent"), collector.broker_addr().unwrap(), sim);
    let agent = edgeloop_agent::start(&cfg, agent_stop.clone()).await.unwrap();

    let fleet = harness::wait_for("the agent online in /fleet", Duration::from_secs(30), || async {
        let fleet: serde_json::Value = serde_json::from_str(&get("/fleet").await).unwrap();
        let a = fleet.as_array()?.iter().find(|a| a["agent"] == "gw-reg")?.clone();
        (a["online"] == true
            && a["report"]["sensors"].as_array().is_some_and(|s| s.len() == 2)
            && a["points_stored"].as_u64()? > 0)
            .then_some(a)
    })
    .await;
    assert_eq!(fleet["report"]["version"], "0.1.0", "{fleet}");
    let metrics = get("/metrics").await;
    for line in [
        "edgeloop_collector_agent_online{agent=\"gw-reg\"} 1",
        "# TYPE edgeloop_collector_event_latency_seconds histogram",
        "# TYPE edgeloop_collector_agent_lag_seconds gauge",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    assert!(
        metrics.lines().any(|l| l.starts_with("edgeloop_collector_points_stored_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // A clean stop says goodbye: offline at once, not after three missed reports.
    agent_stop.cancel();
    agent.wait().await;
    harness::wait_for("the agent offline", Duration::from_secs(5), || async {
        get("/metrics").await.contains("edgeloop_collector_agent_online{agent=\"gw-reg\"} 0").then_some(())
    })
    .await;

    // A new collector on the same state file knows the agent before it reports again.
    let broker_port = collector.broker_addr().unwrap().port();
    collector.shutdown();
    collector.wait().await;
    drop(collector);
    let again = edgeloop_collector::start(&start_collector(broker_port), CancellationToken::new()).await.unwrap();
    let fleet = again.fleet.agents();
    let gw = fleet.iter().find(|a| a.agent == "gw-reg").expect("the restarted collector remembers the agent");
    assert!(!gw.online);
    assert!(gw.entry.points_stored > 0);
    stop.cancel();
}

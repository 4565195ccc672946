//! The walking skeleton: readings travel from a gateway into a real database, exactly once.

use std::{
    process::{Child, Command, Stdio},
    sync::atomic::Ordering::Relaxed,
    time::Duration,
};

use edgeloop_agent::config::SimulatedConfig;
use edgeloop_collector::config::{InfluxV1Config, InfluxV2Config, LocalStoreConfig, StoreConfig};
use edgeloop_shared::{
    batch::Batch,
    model::{Ack, AckStatus, Reading, from_wire},
    topic::{Channel, topic},
    units::HumanDuration,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

use crate::harness::{self, influxdb::Influx1, victoria::Victoria};

fn v1(url: &str, db: &str) -> StoreConfig {
    StoreConfig::InfluxV1(InfluxV1Config {
        url: url.into(),
        database: db.into(),
        retention_policy: None,
        username: None,
        password: None,
        measurement: "readings".into(),
        events_measurement: "events".into(),
        alerts_measurement: "alerts".into(),
        timeout: HumanDuration(Duration::from_secs(10)),
        // The server's gzip path is exercised here (and against VictoriaMetrics below).
        gzip: true,
    })
}

/// Runs one in-process collector and one agent sending `total` simulated readings; returns once
/// the agent has every batch acknowledged.
async fn send_through(
    store: StoreConfig,
    total: u64,
    period: Duration,
) -> (edgeloop_collector::Collector, edgeloop_agent::Agent, tempfile::TempDir) {
    harness::init_tracing();
    let stop = CancellationToken::new();
    let collector =
        edgeloop_collector::start(&harness::collector_config(([127, 0, 0, 1], 0).into(), store), stop.clone())
            .await
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let agent_cfg =
        harness::agent_config("gw-1", dir.path(), collector.broker_addr().unwrap(), harness::fast(total, period));
    let agent = edgeloop_agent::start(&agent_cfg, stop.child_token()).await.unwrap();
    harness::wait_for("every reading to be acknowledged", Duration::from_secs(180), || async {
        let s = agent.stats.snapshot();
        (s.acked == total && s.backlog == 0).then_some(())
    })
    .await;
    let s = agent.stats.snapshot();
    assert_eq!((s.produced, s.accepted, s.acked, s.rejected), (total, total, total, 0));
    assert_eq!(collector.stats.malformed.load(Relaxed), 0);
    (collector, agent, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influxdb_1_6_stores_exactly_100k_readings() {
    let influx = Influx1::start("edgeloop").await;
    let (collector, _agent, _dir) = send_through(v1(&influx.url, "edgeloop"), 100_000, Duration::from_millis(1)).await;
    assert_eq!(influx.count("edgeloop", "readings", "value").await, 100_000);
    let per_sensor = influx.query("edgeloop", "SELECT count(value) FROM readings GROUP BY sensor, agent, site").await;
    let series = per_sensor["results"][0]["series"].as_array().unwrap();
    assert_eq!(series.len(), 2, "two sensors of one agent: {per_sensor}");
    assert_eq!(series[0]["tags"]["agent"], "gw-1");
    assert_eq!(series[0]["tags"]["site"], "test-plant", "the agent's configured tags are stored");
    assert_eq!(collector.stats.points_stored.load(Relaxed), 100_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn victoria_metrics_through_the_v2_api_stores_exactly_100k_readings() {
    let vm = Victoria::start().await;
    let store = StoreConfig::InfluxV2(InfluxV2Config {
        url: vm.url.clone(),
        org: "plant".into(),
        bucket: "edgeloop".into(),
        token: Some("not-checked-by-victoria".into()),
        measurement: "readings".into(),
        events_measurement: "events".into(),
        alerts_measurement: "alerts".into(),
        timeout: HumanDuration(Duration::from_secs(10)),
        // Compressed bodies through the v2 API.
        gzip: true,
    });
    // VictoriaMetrics keeps milliseconds: readings of one sensor must be at least 1 ms apart.
    let (_collector, _agent, _dir) = send_through(store, 100_000, Duration::from_millis(2)).await;
    let count = harness::wait_for("VictoriaMetrics to show 100,000 samples", Duration::from_secs(30), || async {
        let n = vm.count("readings_value").await;
        (n >= 100_000).then_some(n)
    })
    .await;
    assert_eq!(count, 100_000);
}

/// The real collector binary, killed with SIGKILL mid-stream and started again on the same port:
/// its embedded broker loses whatever was in flight; the agent's re-send and the idempotent
/// write must still leave every reading stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_killed_mid_stream_loses_and_duplicates_nothing() {
    harness::init_tracing();
    let influx = Influx1::start("edgeloop").await;
    let dir = tempfile::tempdir().unwrap();
    let port = harness::free_port();
    let config_path = dir.path().join("collector.toml");
    std::fs::write(
        &config_path,
        format!(
            "[broker]\nmode = \"embedded\"\nlisten = \"127.0.0.1:{port}\"\n\n[ingest]\nretry_max = \"1s\"\n\n\
             [store]\nkind = \"influx_v1\"\nurl = \"{}\"\ndatabase = \"edgeloop\"\n",
            influx.url
        ),
    )
    .unwrap();
    let bin = harness::binary("edgeloop-collector");
    let spawn = || -> Child {
        Command::new(&bin)
            .args(["run", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "warn,rumqttd=off")
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut collector = spawn();

    // 2,000 readings/s in real time for ~10 s, so the kill lands mid-stream.
    let total = 20_000;
    let sim = SimulatedConfig { period: HumanDuration(Duration::from_millis(1)), realtime: true, limit: Some(total) };
    let agent_cfg = harness::agent_config("gw-kill", &dir.path().join("agent"), ([127, 0, 0, 1], port).into(), sim);
    let stop = CancellationToken::new();
    let agent = edgeloop_agent::start(&agent_cfg, stop.clone()).await.unwrap();

    harness::wait_for("the first readings in InfluxDB", Duration::from_secs(60), || async {
        (influx.count("edgeloop", "readings", "value").await >= 3_000).then_some(())
    })
    .await;
    collector.kill().unwrap(); // SIGKILL
    collector.wait().unwrap();
    let stored_at_kill = influx.count("edgeloop", "readings", "value").await;
    assert!(stored_at_kill < total, "the kill must land mid-stream ({stored_at_kill} stored)");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!agent.stats.snapshot().uplink_connected, "the agent noticed the collector died");

    let mut collector = spawn();
    harness::wait_for("every reading acknowledged after the restart", Duration::from_secs(120), || async {
        let s = agent.stats.snapshot();
        (s.acked == total && s.backlog == 0).then_some(())
    })
    .await;
    assert_eq!(influx.count("edgeloop", "readings", "value").await, total);
    assert!(agent.stats.snapshot().batches_resent > 0 || stored_at_kill == 0, "in-flight batches were re-sent");
    stop.cancel();
    agent.wait().await;
    collector.kill().unwrap();
    collector.wait().unwrap();
}

/// Garbage, a batch claiming another agent's id and a batch with a non-finite value are each
/// refused and counted; a good batch after them is stored and acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_batches_are_counted_and_the_stream_goes_on() {
    harness::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let store = StoreConfig::Local(LocalStoreConfig { path: dir.path().join("store") });
    let collector = edgeloop_collector::start(
        &harness::collector_config(([127, 0, 0, 1], 0).into(), store),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let broker = collector.broker_addr().unwrap();

    let mut opts = MqttOptions::new("gw-bad", broker.ip().to_string(), broker.port());
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 16);
    client.subscribe(topic("gw-bad", Channel::Ack), QoS::AtLeastOnce).await.unwrap();
    let telemetry = topic("gw-bad", Channel::Telemetry);
    let readings: Vec<Reading> =
        (0..10).map(|i| Reading { sensor: "temp".into(), ts_ns: 1_000 + i, value: 20.0 }).collect();

    let spoofed = Batch::from_readings("gw-other", 1, &readings).encode().unwrap();
    let mut nan = Batch::from_readings("gw-bad", 2, &readings);
    nan.series[0].points[3].value = f64::NAN;
    let good = Batch::from_readings("gw-bad", 3, &readings).encode().unwrap();
    for payload in [vec![0xde, 0xad, 0xbe, 0xef], vec![], spoofed, nan.encode().unwrap(), good] {
        client.publish(&telemetry, QoS::AtLeastOnce, false, payload).await.unwrap();
    }

    let ack = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = events.poll().await.unwrap() {
                break from_wire::<Ack>(&p.payload).unwrap();
            }
        }
    })
    .await
    .expect("the good batch is acknowledged");
    assert_eq!(ack, Ack { agent: "gw-bad".into(), buffer: Some(0), seq: 3, status: AckStatus::Stored { points: 10 } });
    assert_eq!(collector.stats.malformed.load(Relaxed), 3, "garbage, empty and NaN");
    assert_eq!(collector.stats.spoofed.load(Relaxed), 1);
    assert_eq!(collector.store.local().unwrap().count_for("gw-bad"), 10);
    assert_eq!(collector.store.local().unwrap().count_for("gw-other"), 0);
}

/// The binaries refuse a bad config with a message that names the file, the key and the line.
#[test]
fn bad_config_is_refused_with_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, "[agent]\nid = \"gw-1\"\ndata_dir = \"/tmp/x\"\n\n[uplink]\nport = \"eighty\"\n").unwrap();
    let out = Command::new(harness::binary("edgeloop-agent")).arg("check").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("agent.toml") && err.contains("line 6") && err.contains("port"), "{err}");

    std::fs::write(&path, "[agent]\nid = \"gw 1\"\ndata_dir = \"\"\n").unwrap();
    let out = Command::new(harness::binary("edgeloop-agent")).arg("check").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("agent.id") && err.contains("agent.data_dir") && err.contains("sources"), "{err}");

    let path = dir.path().join("collector.toml");
    std::fs::write(&path, "[store]\nkind = \"influx_v1\"\nurl = \"http://x\"\n").unwrap();
    let out = Command::new(harness::binary("edgeloop-collector")).arg("check").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("database") && err.contains("line 1"), "{err}");
}

/// `edgeloop demo`, shortened: every reading its gateways produce (simulated, MQTT and serial
/// sources alike) is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_stores_every_reading_it_produces() {
    harness::init_tracing();
    let opts = edgeloop::DemoOptions {
        gateways: 2,
        period: Duration::from_millis(5),
        report_every: Duration::from_secs(1),
        duration: Some(Duration::from_secs(3)),
        influx_url: None,
        influx_db: "edgeloop".into(),
        outage: Some((Duration::from_secs(1), Duration::from_secs(1))),
        api_listen: ([127, 0, 0, 1], 0).into(),
    };
    let mut out = Vec::new();
    let totals = edgeloop::run(opts, &mut out, CancellationToken::new()).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("dashboard: http://127.0.0.1:"), "{text}");
    assert!(text.contains("viewer token: el_"), "{text}");
    assert_eq!(totals.len(), 5, "2 simulated machines, the MQTT gateway, the serial gateway, the press");
    for t in &totals {
        // The press's vibration transmitter sends 12 readings a second, the others far more.
        assert!(t.produced > 20, "{t:?}\n{text}");
        assert_eq!((t.accepted, t.acked, t.stored), (t.produced, t.produced, t.produced), "{text}");
    }
    assert!(text.contains("stored exactly once"), "{text}");
    assert!(text.contains("gateway-1: uplink cut") && text.contains("gateway-1: uplink restored"), "{text}");
}

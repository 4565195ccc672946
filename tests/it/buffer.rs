//! Store and forward: the real agent binary killed at random moments, an uplink down until the
//! buffer is full, a damaged buffer file. Every outcome is counted in a real InfluxDB.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use edgeloop_agent::{
    buffer::{Buffer, BufferSettings, Totals, WhenFull},
    config::{CatchUp, SimulatedConfig},
};
use edgeloop_collector::config::StoreConfig;
use edgeloop_shared::{
    batch::Batch,
    topic::{Channel, topic},
    units::{ByteSize, HumanDuration},
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

use crate::harness::{self, influxdb::Influx1};

fn v1(url: &str) -> StoreConfig {
    crate::harness::influxdb::v1_store(url)
}

/// The buffer's totals, read from its file once the agent has stopped.
fn totals(data_dir: &Path) -> Totals {
    let settings = BufferSettings {
        agent: "inspect".into(),
        tags: vec![],
        max_bytes: u64::MAX,
        when_full: WhenFull::DropOldest,
        cache_bytes: 1 << 20,
        verify_on_open: true,
        drop_report_interval: Duration::from_secs(10),
    };
    Buffer::open(data_dir, settings).unwrap().0.totals()
}

/// A tiny xorshift, so the kill moments differ run to run but a failure prints its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

struct Collector {
    bin: PathBuf,
    config: PathBuf,
    child: Option<Child>,
}

impl Collector {
    fn start(&mut self) {
        let child = Command::new(&self.bin)
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "warn,rumqttd=off")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The real `edgeloop-agent` binary is SIGKILLed at 20 random moments while it takes 2,000
/// readings/s; the collector binary is killed and restarted now and then as well. Afterwards
/// the agent drains its buffer, and InfluxDB holds exactly the readings the agent's buffer says
/// it accepted: none lost, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_twenty_times_stores_every_accepted_reading_exactly_once() {
    harness::init_tracing();
    let influx = Influx1::start("edgeloop").await;
    let dir = tempfile::tempdir().unwrap();
    let port = harness::free_port();
    let collector_config = dir.path().join("collector.toml");
    std::fs::write(
        &collector_config,
        format!(
            "[broker]\nmode = \"embedded\"\nlisten = \"127.0.0.1:{port}\"\n\n[ingest]\nretry_max = \"1s\"\n\n\
             [store]\nkind = \"influx_v1\"\nurl = \"{}\"\ndatabase = \"edgeloop\"\n",
            influx.url
        ),
    )
    .unwrap();
    let mut collector = Collector { bin: harness::binary("edgeloop-collector"), config: collector_config, child: None };
    collector.start();

    let data_dir = dir.path().join("agent-data");
    let agent_config = |limit: &str| {
        format!(
            "[agent]\nid = \"gw-crash\"\ndata_dir = \"{}\"\n\n\
             [uplink]\nport = {port}\nack_timeout = \"2s\"\nreconnect_min = \"50ms\"\nreconnect_max = \"500ms\"\n\n\
             [sources.press]\nkind = \"simulated\"\nperiod = \"1ms\"\nrealtime = true\n{limit}",
            data_dir.display()
        )
    };
    let running = dir.path().join("agent.toml");
    std::fs::write(&running, agent_config("")).unwrap();
    let agent_bin = harness::binary("edgeloop-agent");
    let spawn_agent = |config: &Path| {
        Command::new(&agent_bin)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };

    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("kill schedule seed {seed}");
    let mut rng = Rng(seed);
    for round in 0..20 {
        let mut agent = spawn_agent(&running);
        tokio::time::sleep(Duration::from_millis(rng.between(300, 1200))).await;
        if round % 5 == 2 {
            collector.kill(); // the uplink goes down under the agent's feet
        }
        tokio::time::sleep(Duration::from_millis(rng.between(0, 400))).await;
        agent.kill().unwrap(); // SIGKILL
        agent.wait().unwrap();
        if collector.child.is_none() && round % 5 == 3 {
            collector.start();
        }
    }
    if collector.child.is_none() {
        collector.start();
    }
    let accepted_while_killing = totals(&data_dir).accepted_readings;
    assert!(accepted_while_killing > 10_000, "readings flowed: {accepted_while_killing}");

    // One last run that takes a single reading, then drains everything.
    let draining = dir.path().join("drain.toml");
    std::fs::write(&draining, agent_config("limit = 1\n")).unwrap();
    let mut agent = spawn_agent(&draining);
    let accepted = accepted_while_killing + 1;
    let stored = harness::wait_for("the whole backlog in InfluxDB", Duration::from_secs(180), || async {
        let n = influx.count("edgeloop", "readings", "value").await;
        (n >= accepted).then_some(n)
    })
    .await;
    // Give a duplicate (if any) the time to show up as an extra point, then stop cleanly.
    tokio::time::sleep(Duration::from_secs(1)).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    agent.wait().unwrap();
    let t = totals(&data_dir);
    assert_eq!(t.accepted_readings, accepted, "{t:?}");
    assert_eq!((t.dropped_readings, t.refused_readings, t.quarantined_batches), (0, 0, 0), "{t:?}");
    assert_eq!(stored, accepted);
    assert_eq!(influx.count("edgeloop", "readings", "value").await, accepted, "a reading stored twice");
}

/// The uplink is down until the buffer passes its byte limit: the oldest telemetry is dropped,
/// the drop is counted and reported as an event, and when the collector comes up the events go
/// first and the rest drains oldest first; InfluxDB ends up with exactly what was kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_drops_the_oldest_reports_it_and_drains_events_first() {
    harness::init_tracing();
    let influx = Influx1::start("edgeloop").await;
    let dir = tempfile::tempdir().unwrap();
    let port = harness::free_port();
    let total = 600_000;
    let mut cfg = harness::agent_config(
        "gw-full",
        dir.path(),
        ([127, 0, 0, 1], port).into(),
        harness::fast(total, Duration::from_millis(10)),
    );
    cfg.buffer.max_bytes = ByteSize(1 << 20);
    cfg.uplink.catch_up = CatchUp::OldestFirst;
    let stop = CancellationToken::new();
    let agent = edgeloop_agent::start(&cfg, stop.clone()).await.unwrap();
    harness::wait_for("every reading through the buffer", Duration::from_secs(120), || async {
        let t = agent.buffer();
        (t.accepted_readings + t.refused_readings == total).then_some(())
    })
    .await;
    let before = agent.buffer();
    assert!(before.dropped_readings > 0, "the limit was reached: {before:?}");
    assert!(before.held_bytes <= (1 << 20) + 4096, "telemetry stays under the limit: {before:?}");
    assert!(!agent.stats.snapshot().uplink_connected);

    // A subscriber on the collector's broker sees the order batches arrive in.
    let collector = edgeloop_collector::start(
        &harness::collector_config(([127, 0, 0, 1], port).into(), v1(&influx.url)),
        stop.clone(),
    )
    .await
    .unwrap();
    let mut opts = MqttOptions::new("order-watch", "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 64);
    client.subscribe(topic("gw-full", Channel::Telemetry), QoS::AtLeastOnce).await.unwrap();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(e) = events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = e
                && let Ok(b) = Batch::decode(&p.payload)
            {
                let first_ts = b.series.first().and_then(|s| s.points.first()).map(|p| p.ts_ns);
                let _ = seen_tx.send((b.seq, b.events.len(), first_ts));
            }
        }
    });

    let kept = before.accepted_readings - before.dropped_readings;
    harness::wait_for("the kept readings in InfluxDB", Duration::from_secs(120), || async {
        (influx.count("edgeloop", "readings", "value").await >= kept).then_some(())
    })
    .await;
    assert_eq!(influx.count("edgeloop", "readings", "value").await, kept);
    // Drops are reported at most every 10 s, so the last report may come a little later.
    harness::wait_for("every dropped reading reported", Duration::from_secs(40), || async {
        let q = "SELECT sum(dropped_readings) FROM events WHERE kind = 'dropped'";
        let reported = influx.query("edgeloop", q).await;
        let sum = reported["results"][0]["series"][0]["values"][0][1].as_u64();
        (sum == Some(before.dropped_readings)).then_some(())
    })
    .await;
    let mut order = Vec::new();
    while let Ok(s) = seen.try_recv() {
        order.push(s);
    }
    let first_telemetry = order.iter().position(|(_, events, _)| *events == 0).unwrap();
    assert!(order[..first_telemetry].iter().all(|(_, e, _)| *e > 0), "events first: {:?}", &order[..5]);
    let mut firsts: Vec<i64> = Vec::new();
    let mut sent = std::collections::BTreeSet::new();
    for (seq, _, ts) in &order {
        if let Some(ts) = ts
            && sent.insert(*seq)
        {
            firsts.push(*ts);
        }
    }
    assert!(firsts.windows(2).all(|w| w[0] <= w[1]), "the backlog drains oldest first");
    stop.cancel();
    agent.wait().await;
    drop(collector);
}

/// Bytes of the buffer file are damaged while the agent is stopped: it starts anyway, sets aside
/// what it cannot read, reports it, and sends everything that is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_buffer_is_quarantined_reported_and_the_rest_sent() {
    harness::init_tracing();
    let influx = Influx1::start("edgeloop").await;
    let dir = tempfile::tempdir().unwrap();
    let port = harness::free_port();
    let total = 50_000;
    let cfg = harness::agent_config(
        "gw-damaged",
        dir.path(),
        ([127, 0, 0, 1], port).into(),
        harness::fast(total, Duration::from_millis(10)),
    );
    let stop = CancellationToken::new();
    let agent = edgeloop_agent::start(&cfg, stop.clone()).await.unwrap();
    harness::wait_for("every reading in the buffer", Duration::from_secs(60), || async {
        (agent.stats.snapshot().accepted == total).then_some(())
    })
    .await;
    stop.cancel();
    agent.wait().await;
    drop(agent);

    // Damage one stored batch in the middle of the backlog, as a bad sector under the data
    // would. Every batch carries the agent id, so its occurrences mark where batches lie; bytes
    // at a random offset could hit the table's root page instead, after which nothing can be
    // read back at all (a B-tree's limit, not the agent's), and the test would be a lottery.
    let file = dir.path().join(edgeloop_agent::buffer::redb::FILE);
    let mut bytes = std::fs::read(&file).unwrap();
    let marks: Vec<usize> = bytes.windows(10).enumerate().filter(|(_, w)| w == b"gw-damaged").map(|(i, _)| i).collect();
    assert!(marks.len() > 10, "batches found in the file: {}", marks.len());
    let at = marks[marks.len() / 2] + 16;
    for b in &mut bytes[at..at + 64] {
        *b ^= 0xa5;
    }
    std::fs::write(&file, &bytes).unwrap();

    let stop = CancellationToken::new();
    let mut cfg = cfg.clone();
    cfg.sources.clear();
    cfg.sources.insert(
        "machine".into(),
        edgeloop_agent::config::SourceConfig::Simulated(SimulatedConfig {
            period: HumanDuration(Duration::from_secs(3600)),
            realtime: true,
            limit: Some(0),
        }),
    );
    let agent = edgeloop_agent::start(&cfg, stop.clone()).await.unwrap();
    let _collector = edgeloop_collector::start(
        &harness::collector_config(([127, 0, 0, 1], port).into(), v1(&influx.url)),
        stop.clone(),
    )
    .await
    .unwrap();
    harness::wait_for("the buffer to drain", Duration::from_secs(60), || async {
        (agent.buffer().held_batches == 0).then_some(())
    })
    .await;
    let t = agent.buffer();
    assert!(t.quarantined_batches > 0, "the damage was noticed: {t:?}");
    let stored = influx.count("edgeloop", "readings", "value").await;
    assert!(stored > 0 && stored < total, "the intact readings were sent: {stored}");
    let reported = influx.query("edgeloop", "SELECT count(message) FROM events WHERE kind = 'quarantined'").await;
    assert!(
        reported["results"][0]["series"][0]["values"][0][1].as_u64().unwrap_or(0) >= 1,
        "the quarantine is reported: {reported}"
    );
    stop.cancel();
    agent.wait().await;
}

/// The uplink over TLS with per-agent credentials: the agent that logs in as itself is stored;
/// a wrong password, or another agent's name, gets nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_uplink_runs_over_tls_and_each_agent_logs_in_as_itself() {
    harness::init_tracing();
    let influx = Influx1::start("edgeloop").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = harness::tls::TestPki::create(dir.path());
    let stop = CancellationToken::new();
    let mut config = harness::collector_config(([127, 0, 0, 1], 0).into(), v1(&influx.url));
    let edgeloop_collector::config::BrokerConfig::Embedded(broker) = &mut config.broker else { unreachable!() };
    broker.tls = Some(edgeloop_shared::broker::BrokerTls { cert: pki.cert.clone(), key: pki.key.clone() });
    broker.users = [("gw-tls".to_string(), "s3cret".into()), ("gw-other".to_string(), "other".into())].into();
    let collector = edgeloop_collector::start(&config, stop.clone()).await.unwrap();
    let port = collector.broker_addr().unwrap().port();

    let agent_with = |id: &str, user: &str, pass: &str, data: &str| {
        let mut cfg = harness::agent_config(
            id,
            &dir.path().join(data),
            ([127, 0, 0, 1], port).into(),
            harness::fast(5_000, Duration::from_millis(10)),
        );
        cfg.uplink.host = "localhost".into();
        cfg.uplink.username = Some(user.into());
        cfg.uplink.password = Some(pass.into());
        cfg.uplink.tls = Some(edgeloop_agent::config::TlsConfig { ca: pki.ca.clone(), cert: None, key: None });
        cfg
    };
    let good = edgeloop_agent::start(&agent_with("gw-tls", "gw-tls", "s3cret", "good"), stop.clone()).await.unwrap();
    let wrong_password =
        edgeloop_agent::start(&agent_with("gw-tls2", "gw-tls", "guess", "bad-pass"), stop.clone()).await.unwrap();
    let impostor =
        edgeloop_agent::start(&agent_with("gw-evil", "gw-other", "other", "impostor"), stop.clone()).await.unwrap();
    harness::wait_for("the TLS agent's readings stored", Duration::from_secs(60), || async {
        (good.stats.snapshot().acked == 5_000).then_some(())
    })
    .await;
    assert_eq!(influx.count("edgeloop", "readings", "value").await, 5_000);
    for refused in [&wrong_password, &impostor] {
        let s = refused.stats.snapshot();
        assert!(!s.uplink_connected && s.acked == 0 && s.backlog == 5_000, "{s:?}");
    }
    stop.cancel();
    for a in [good, wrong_password, impostor] {
        a.wait().await;
    }
}

/// With per-agent logins, an agent publishes only under its own topics: a logged-in agent that
/// sends a batch on another agent's topic, or forges that agent's ack, gets nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_write_as_another_or_forge_its_acks() {
    use edgeloop_shared::{
        model::{Ack, AckStatus, Reading, to_wire},
        topic::topic,
    };
    harness::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let store = StoreConfig::Local(edgeloop_collector::config::LocalStoreConfig { path: dir.path().join("store") });
    let mut config = harness::collector_config(([127, 0, 0, 1], 0).into(), store);
    let edgeloop_collector::config::BrokerConfig::Embedded(broker) = &mut config.broker else { unreachable!() };
    broker.users = [("gw-victim".to_string(), "v".into()), ("gw-evil".to_string(), "e".into())].into();
    let collector = edgeloop_collector::start(&config, CancellationToken::new()).await.unwrap();
    let addr = collector.broker_addr().unwrap();
    let client = |id: &str, pass: &str| {
        let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        opts.set_credentials(id, pass).set_max_packet_size(1 << 20, 1 << 20);
        AsyncClient::new(opts, 16)
    };
    // The victim listens to its ack topic.
    let (victim, mut victim_events) = client("gw-victim", "v");
    victim.subscribe(topic("gw-victim", Channel::Ack), QoS::AtLeastOnce).await.unwrap();
    let (acks_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(e) = victim_events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = e {
                let _ = acks_tx.send(p.payload.to_vec());
            }
        }
    });
    let (evil, mut evil_events) = client("gw-evil", "e");
    // It also tries to listen to the victim's acks, and to everything.
    evil.subscribe(topic("gw-victim", Channel::Ack), QoS::AtLeastOnce).await.unwrap();
    evil.subscribe("edgeloop/#", QoS::AtLeastOnce).await.unwrap();
    let (overheard_tx, mut overheard) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(e) = evil_events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = e {
                let _ = overheard_tx.send(p.topic.clone());
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let readings: Vec<Reading> =
        (0..10).map(|i| Reading { sensor: "temp".into(), ts_ns: 1_000 + i, value: 1.0 }).collect();
    let forged = Batch::from_readings("gw-victim", 1, &readings).encode().unwrap();
    evil.publish(topic("gw-victim", Channel::Telemetry), QoS::AtLeastOnce, false, forged).await.unwrap();
    let fake_ack = to_wire(&Ack {
        agent: "gw-victim".into(),
        buffer: Some(0),
        seq: 7,
        status: AckStatus::Stored { points: 2000 },
    })
    .unwrap();
    evil.publish(topic("gw-victim", Channel::Ack), QoS::AtLeastOnce, false, fake_ack).await.unwrap();
    // Its own topic still works.
    let own = Batch::from_readings("gw-evil", 1, &readings).encode().unwrap();
    evil.publish(topic("gw-evil", Channel::Telemetry), QoS::AtLeastOnce, false, own).await.unwrap();
    harness::wait_for("gw-evil's own batch stored", Duration::from_secs(10), || async {
        (collector.store.local().unwrap().count_for("gw-evil") == 10).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(collector.store.local().unwrap().count_for("gw-victim"), 0, "nothing stored in the victim's name");
    assert!(acks.try_recv().is_err(), "no forged ack reached the victim");

    // The victim's own batch is stored and acknowledged to it, and to nobody else.
    let mine = Batch::from_readings("gw-victim", 2, &readings).encode().unwrap();
    victim.publish(topic("gw-victim", Channel::Telemetry), QoS::AtLeastOnce, false, mine).await.unwrap();
    let ack = tokio::time::timeout(Duration::from_secs(10), acks.recv()).await.unwrap().unwrap();
    assert!(!ack.is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut heard = Vec::new();
    while let Ok(t) = overheard.try_recv() {
        heard.push(t);
    }
    assert!(heard.iter().all(|t| t.starts_with("edgeloop/v1/gw-evil/")), "gw-evil overheard {heard:?}");
}

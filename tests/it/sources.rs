//! Agent sources on real parts: serial over real pseudo-terminal pairs, MQTT sensors through the
//! embedded broker and a real Mosquitto with the real `mosquitto_pub` client.

use std::{path::Path, sync::atomic::Ordering::Relaxed, time::Duration};

use edgeloop_agent::{Agent, config::AgentConfig};
use edgeloop_collector::{
    Collector,
    config::{LocalStoreConfig, StoreConfig},
};
use edgeloop_shared::frame::{self, FrameDecoder, GatewayMessage, NodeMessage};
use tokio_util::sync::CancellationToken;

use crate::harness::{self, mosquitto, pty::Pty};

/// A collector with the local store, and an agent built from `sources` (TOML) that sends to it.
async fn fleet_of_one(agent_id: &str, dir: &Path, sources: &str) -> (Collector, Agent) {
    harness::init_tracing();
    let store = StoreConfig::Local(LocalStoreConfig { path: dir.join("store") });
    let collector = edgeloop_collector::start(
        &harness::collector_config(([127, 0, 0, 1], 0).into(), store),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let broker = collector.broker_addr().unwrap();
    let text = format!(
        "[agent]\nid = \"{agent_id}\"\ndata_dir = \"{}\"\n\n[uplink]\nhost = \"127.0.0.1\"\nport = {}\nack_timeout = \"3s\"\n\n[buffer]\nflush_interval = \"5ms\"\n\n{sources}",
        dir.join("agent").display(),
        broker.port()
    );
    let config = AgentConfig::parse(&text, Path::new("test-agent.toml")).unwrap();
    let agent = edgeloop_agent::start(&config, CancellationToken::new()).await.unwrap();
    (collector, agent)
}

fn frame(msg: &NodeMessage) -> Vec<u8> {
    frame::encode_to_vec(msg).unwrap()
}

fn reading(channel: u16, seq: u32) -> NodeMessage {
    NodeMessage::Reading { channel, seq, ts_us: None, value: 20.0 + seq as f32 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_node_over_a_real_pty_with_noise_unplug_and_commands() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyNODE");
    let mut pty = Pty::open(&link);
    let sources = format!(
        "[sources.node]\nkind = \"serial\"\npath = \"{}\"\nbaud = 921600\nprefix = \"press-1\"\nchannels = {{ 0 = \"temperature\", 1 = \"vibration\" }}\n\
         period = \"50ms\"\nstale_after = \"400ms\"\nreopen_min = \"20ms\"\nreopen_max = \"200ms\"\n",
        link.display()
    );
    let (collector, agent) = fleet_of_one("gw-serial", dir.path(), &sources).await;
    let counters = || agent.source("node").unwrap().snapshot();
    harness::wait_for("the port to open", Duration::from_secs(10), || async { counters().up.then_some(()) }).await;

    let mut stream = Vec::new();
    for seq in 0..10 {
        stream.extend(frame(&reading(0, seq)));
    }
    stream.extend([0x13, 0x37, 0xff, 0x00]); // line noise, then a delimiter: one bad frame
    let mut corrupt = frame(&reading(0, 100));
    corrupt[2] = corrupt[2].wrapping_add(1).max(1);
    stream.extend(corrupt); // a flipped byte: CRC or COBS failure
    let cut = frame(&reading(0, 101));
    stream.extend(&cut[..cut.len() / 2]);
    stream.push(0); // a frame cut in half
    for seq in 10..20 {
        stream.extend(frame(&reading(1, seq)));
    }
    pty.write(&stream);
    harness::wait_for("20 good readings", Duration::from_secs(10), || async {
        (counters().readings == 20).then_some(())
    })
    .await;
    let c = counters();
    assert_eq!(c.crc_errors + c.short_frames + c.malformed, 3, "three bad frames counted: {c:?}");
    assert!(c.crc_errors >= 1, "{c:?}");

    // Commands go back down the same port.
    agent.serial("node").unwrap().send(GatewayMessage::Trip { rule: 7 }).unwrap();
    let bytes = pty.read(4, Duration::from_secs(5));
    let mut decoder = FrameDecoder::<{ frame::MAX_WIRE_FRAME }>::new();
    let mut got = Vec::new();
    decoder.feed::<GatewayMessage>(&bytes, |r| got.push(r));
    assert_eq!(got, vec![Ok(GatewayMessage::Trip { rule: 7 })]);

    // Unplug: the port is reported down; replug at the same path: it is reopened by itself.
    drop(pty);
    harness::wait_for("the port to be reported down", Duration::from_secs(10), || async {
        (!counters().up).then_some(())
    })
    .await;
    let mut pty = Pty::open(&link);
    harness::wait_for("the port to be reopened", Duration::from_secs(10), || async {
        (counters().up && counters().opens == 2).then_some(())
    })
    .await;
    let mut stream = Vec::new();
    for seq in 20..25 {
        stream.extend(frame(&reading(0, seq)));
    }
    pty.write(&stream);
    let store = collector.store.local().unwrap();
    harness::wait_for("25 readings stored by the collector", Duration::from_secs(20), || async {
        (store.count_for("gw-serial") == 25).then_some(())
    })
    .await;
    assert_eq!(store.count_sensor("gw-serial", "press-1.temperature"), 15);
    assert_eq!(store.count_sensor("gw-serial", "press-1.vibration"), 10);

    // Silence: both sensors go stale, and the events reach the collector like readings do.
    harness::wait_for("both sensors stale in the agent's health", Duration::from_secs(20), || async {
        let h = agent.health();
        let stale = |name: &str| h.iter().any(|s| s.sensor == name && s.stale);
        (stale("press-1.temperature") && stale("press-1.vibration")).then_some(())
    })
    .await;
    let health = agent.health();
    let temp = health.iter().find(|h| h.sensor == "press-1.temperature").unwrap();
    assert_eq!((temp.readings, temp.errors), (15, 0), "{temp:?}");
    let count = |events: &[String], prefix: &str| events.iter().filter(|e| e.starts_with(prefix)).count();
    let events = harness::wait_for("stale events at the collector", Duration::from_secs(20), || async {
        let e = store.events_for("gw-serial");
        (count(&e, "sensor_stale press-1.temperature") >= 1 && count(&e, "sensor_stale press-1.vibration") >= 1)
            .then_some(e)
    })
    .await;
    assert!(events.iter().all(|e| !e.contains("press-1.ch")), "named channels only: {events:?}");

    // And back: the next reading recovers the sensor.
    let recovered_before = count(&events, "sensor_recovered press-1.temperature");
    pty.write(&frame(&reading(0, 30)));
    harness::wait_for("the recovered event", Duration::from_secs(20), || async {
        (count(&store.events_for("gw-serial"), "sensor_recovered press-1.temperature") > recovered_before).then_some(())
    })
    .await;
}

const MQTT_TOPICS: &str = r#"
[sources.sensors.topics.zigbee]
filter = "zigbee2mqtt/{device}"
sensor = "{device}"
format = "json"
fields = { temperature = "temperature", humidity = "humidity" }

[sources.sensors.topics.plain]
filter = "sensors/{machine}/{sensor}"
sensor = "{machine}.{sensor}"
format = "number"

[sources.sensors.topics.tasmota]
filter = "tele/{plug}/SENSOR"
sensor = "{plug}.power"
format = "json"
value = "ENERGY.Power"
timestamp = "Time"
"#;

/// The messages both MQTT tests publish, and what must come of them.
fn publish_the_fleet(port: u16) {
    mosquitto::publish(port, "zigbee2mqtt/fridge", r#"{"temperature":4.5,"humidity":40,"linkquality":99}"#);
    mosquitto::publish(port, "sensors/press-3/temp", "21.5");
    let now = humantime::format_rfc3339(std::time::SystemTime::now()).to_string();
    let now = now.trim_end_matches('Z');
    mosquitto::publish(
        port,
        "tele/plug-7/SENSOR",
        &format!(r#"{{"Time":"{now}","ENERGY":{{"Power":45,"Total":1.5}}}}"#),
    );
    mosquitto::publish(port, "sensors/press-3/temp", "warm"); // not a number
    mosquitto::publish(port, "zigbee2mqtt/fridge", r#"{"temperature":4.5"#); // truncated JSON
    mosquitto::publish(port, "sensors/press-3/temp", &"9".repeat(2_000)); // over max_payload
}

async fn expect_the_fleet(collector: &Collector, agent: &Agent) {
    let counters = || agent.source("sensors").unwrap().snapshot();
    harness::wait_for("2 bad and 1 oversized payload counted", Duration::from_secs(10), || async {
        let c = counters();
        (c.malformed == 2 && c.oversized == 1).then_some(())
    })
    .await;
    let store = collector.store.local().unwrap();
    harness::wait_for("4 readings stored", Duration::from_secs(20), || async {
        (store.count_for("gw-mqtt") == 4).then_some(())
    })
    .await;
    for sensor in ["fridge.temperature", "fridge.humidity", "press-3.temp", "plug-7.power"] {
        assert_eq!(store.count_sensor("gw-mqtt", sensor), 1, "{sensor}");
    }
    assert_eq!(counters().readings, 4);
    assert_eq!(collector.stats.malformed.load(Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_into_the_embedded_sensor_broker() {
    let dir = tempfile::tempdir().unwrap();
    let sources =
        format!("[sources.sensors]\nkind = \"mqtt\"\nlisten = \"127.0.0.1:0\"\nmax_payload = \"1KiB\"\n{MQTT_TOPICS}");
    let (collector, agent) = fleet_of_one("gw-mqtt", dir.path(), &sources).await;
    let broker = agent.sensor_broker("sensors").unwrap();
    harness::wait_for("the sensor subscription", Duration::from_secs(10), || async {
        agent.source("sensors").unwrap().snapshot().up.then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await; // the SUBACK follows the CONNACK
    publish_the_fleet(broker.port());
    expect_the_fleet(&collector, &agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribing_to_the_sites_mosquitto() {
    let site = mosquitto::Mosquitto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sources = format!(
        "[sources.sensors]\nkind = \"mqtt\"\nbroker = \"external\"\nhost = \"127.0.0.1\"\nport = {}\nmax_payload = \"1KiB\"\n{MQTT_TOPICS}",
        site.port
    );
    let (collector, agent) = fleet_of_one("gw-mqtt", dir.path(), &sources).await;
    harness::wait_for("the sensor subscription", Duration::from_secs(10), || async {
        agent.source("sensors").unwrap().snapshot().up.then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish_the_fleet(site.port);
    expect_the_fleet(&collector, &agent).await;
}

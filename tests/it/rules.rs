//! Local safety rules through the real agent: a reading over a limit trips the machine through a
//! real pty or the local MQTT broker, a silent sensor trips, and a latch survives a restart.

use std::{path::Path, time::Duration};

use edgeloop_agent::{Agent, config::AgentConfig};
use edgeloop_rules::engine::ResetOutcome;
use edgeloop_shared::frame::{self, FrameDecoder, GatewayMessage, NodeMessage};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

use crate::harness::{self, mosquitto, pty::Pty};

/// An agent with `sources` and the rule file `rules`, uplink to nowhere (the rules need none).
async fn agent(dir: &Path, sources: &str, rules: &str) -> Agent {
    agent_with(dir, sources, rules, "").await
}

/// As [`agent`], with extra keys for the `[agent]` table.
async fn agent_with(dir: &Path, sources: &str, rules: &str, agent_extra: &str) -> Agent {
    harness::init_tracing();
    let rules_path = dir.join("rules.toml");
    std::fs::write(&rules_path, rules).unwrap();
    let text = format!(
        "[agent]\nid = \"gw-rules\"\ndata_dir = \"{}\"\nrules = \"{}\"\n{agent_extra}\n[uplink]\nport = {}\nreconnect_min = \"1s\"\n{sources}",
        dir.join("agent").display(),
        rules_path.display(),
        harness::free_port()
    );
    let config = AgentConfig::parse(&text, Path::new("rules-agent.toml")).unwrap();
    edgeloop_agent::start(&config, CancellationToken::new()).await.unwrap()
}

fn reading(channel: u16, seq: u32, value: f32) -> Vec<u8> {
    frame::encode_to_vec(&NodeMessage::Reading { channel, seq, ts_us: None, value }).unwrap()
}

fn commands(bytes: &[u8]) -> Vec<GatewayMessage> {
    let mut d = FrameDecoder::<{ frame::MAX_WIRE_FRAME }>::new();
    let mut out = Vec::new();
    d.feed::<GatewayMessage>(bytes, |r| out.push(r.unwrap()));
    out
}

const SERIAL_RULES: &str = r#"
[rules.spindle-overtemp]
sensor = "press-1.temperature"
above = 90.0
clear = 85.0
severity = "trip"
actions = ["relay"]

[rules.vibration-silent]
sensor = "press-1.vibration"
above = 1000.0
stale = "trip"
severity = "warning"
actions = ["relay"]

[actions.relay]
kind = "serial"
source = "node"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pty_node_over_the_limit_is_tripped_and_the_latch_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyNODE");
    let mut pty = Pty::open(&link);
    let sources = format!(
        "[sources.node]\nkind = \"serial\"\npath = \"{}\"\nprefix = \"press-1\"\nchannels = {{ 0 = \"temperature\", 1 = \"vibration\" }}\n\
         period = \"100ms\"\nstale_after = \"300ms\"\nreopen_min = \"20ms\"\nreopen_max = \"100ms\"\n",
        link.display()
    );
    let a = agent(dir.path(), &sources, SERIAL_RULES).await;
    harness::wait_for("the port to open", Duration::from_secs(10), || async {
        a.source("node").unwrap().snapshot().up.then_some(())
    })
    .await;

    // Below the limit: nothing comes back. Over it: the trip command, at once.
    pty.write(&[reading(0, 1, 80.0), reading(1, 1, 0.5)].concat());
    assert!(pty.read(1, Duration::from_millis(200)).is_empty(), "no command while healthy");
    let sent = std::time::Instant::now();
    pty.write(&[reading(0, 2, 95.0), reading(1, 2, 0.5)].concat());
    let got = pty.read(4, Duration::from_secs(5));
    let latency = sent.elapsed();
    let rule = edgeloop_agent::actions::wire_rule_id("spindle-overtemp");
    assert_eq!(commands(&got), [GatewayMessage::Trip { rule }], "the trip command on the wire");
    eprintln!("pty frame -> trip command read back: {latency:?}");

    // Latched: a reset while still hot is refused; cooled down, it still stays latched.
    assert!(matches!(a.reset("spindle-overtemp").await, ResetOutcome::Refused(why) if why.contains("still holds")));
    pty.write(&[reading(0, 3, 70.0), reading(1, 3, 0.5)].concat());
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Restart the agent: the latch is still there and the trip is re-asserted on the port.
    a.shutdown();
    a.wait().await;
    drop(a);
    let _ = pty.read(64, Duration::from_millis(100)); // whatever was in flight
    let a = agent(dir.path(), &sources, SERIAL_RULES).await;
    let got = pty.read(4, Duration::from_secs(5));
    assert!(commands(&got).contains(&GatewayMessage::Trip { rule }), "trip re-asserted after the restart: {got:?}");
    assert!(
        matches!(a.reset("spindle-overtemp").await, ResetOutcome::Refused(why) if why.contains("not reported")),
        "no reading since the restart: refused"
    );
    pty.write(&[reading(0, 4, 70.0), reading(1, 4, 0.5)].concat());
    let released = harness::wait_for("the reset to be accepted", Duration::from_secs(5), || async {
        match a.reset("spindle-overtemp").await {
            ResetOutcome::Released => Some(true),
            _ => None,
        }
    })
    .await;
    assert!(released);

    // A silent sensor is itself a condition: the vibration channel stops, the stale rule trips.
    let _ = pty.read(64, Duration::from_millis(50));
    pty.write(&reading(0, 5, 70.0));
    let got = pty.read(4, Duration::from_secs(5));
    let stale_rule = edgeloop_agent::actions::wire_rule_id("vibration-silent");
    assert!(commands(&got).contains(&GatewayMessage::Trip { rule: stale_rule }), "stale sensor tripped: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_over_the_limit_publishes_the_shutdown_to_the_actuator_topic() {
    let dir = tempfile::tempdir().unwrap();
    let sources = "[sources.line]\nkind = \"mqtt\"\nlisten = \"127.0.0.1:0\"\n\
                   [sources.line.topics.plain]\nfilter = \"sensors/{machine}/{sensor}\"\nsensor = \"{machine}.{sensor}\"\nformat = \"number\"\n";
    let rules = r#"
[rules.pressure-high]
sensor = "press-3.pressure"
above = 250.0
severity = "trip"
actions = ["plc-stop"]

[actions.plc-stop]
kind = "mqtt"
source = "line"
topic = "plc/press-3/stop"
payload = '{"stop":true,"rule":"{rule}","value":{value}}'
"#;
    let recording = dir.path().join("recording.jsonl");
    let a = agent_with(dir.path(), sources, rules, &format!("record = \"{}\"", recording.display())).await;
    let broker = a.sensor_broker("line").unwrap();
    harness::wait_for("the sensor subscription", Duration::from_secs(10), || async {
        a.source("line").unwrap().snapshot().up.then_some(())
    })
    .await;

    // The PLC listens on the gateway's broker.
    let (plc, mut plc_events) = AsyncClient::new(MqttOptions::new("plc", broker.ip().to_string(), broker.port()), 16);
    plc.subscribe("plc/press-3/stop", QoS::AtLeastOnce).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = plc_events.poll().await.unwrap() {
                break;
            }
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    mosquitto::publish(broker.port(), "sensors/press-3/pressure", "120.0");
    mosquitto::publish(broker.port(), "sensors/press-3/pressure", "262.5");
    let payload = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = plc_events.poll().await.unwrap() {
                break String::from_utf8(p.payload.to_vec()).unwrap();
            }
        }
    })
    .await
    .expect("the shutdown message reaches the actuator topic");
    assert_eq!(payload, r#"{"stop":true,"rule":"pressure-high","value":262.5}"#);

    // The agent recorded what the rules saw; replaying the recording reproduces the trip.
    a.shutdown();
    a.wait().await;
    let items = harness::wait_for("the recording on disk", Duration::from_secs(10), || async {
        let items = edgeloop_rules::record::read_recording(&recording).ok()?;
        (items.len() >= 2).then_some(items)
    })
    .await;
    let file = edgeloop_rules::config::RuleFile::load(&dir.path().join("rules.toml"), &Default::default()).unwrap();
    let transitions = edgeloop_rules::replay::replay(&file, items.into_iter());
    assert_eq!(transitions.len(), 1, "{transitions:?}");
    assert_eq!(transitions[0].rule, "pressure-high");
}

/// Hot reload: a broken file is refused and the old rules keep tripping; a good one is swapped in
/// (new version, new limit) without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_refuses_a_broken_file_and_applies_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let sources = "[sources.line]\nkind = \"mqtt\"\nlisten = \"127.0.0.1:0\"\n\
                   [sources.line.topics.plain]\nfilter = \"sensors/{machine}/{sensor}\"\nsensor = \"{machine}.{sensor}\"\nformat = \"number\"\n";
    let rules = |level: &str| {
        format!(
            "[rules.hot]\nsensor = \"m.t\"\nabove = {level}\nseverity = \"warning\"\nactions = [\"say\"]\n\n\
             [actions.say]\nkind = \"mqtt\"\nsource = \"line\"\ntopic = \"alarms\"\npayload = \"{{rule}} {{value}}\"\n"
        )
    };
    let a = agent(dir.path(), sources, &rules("100.0")).await;
    let broker = a.sensor_broker("line").unwrap();
    harness::wait_for("the sensor subscription", Duration::from_secs(10), || async {
        a.source("line").unwrap().snapshot().up.then_some(())
    })
    .await;
    harness::wait_for("rule set version 1", Duration::from_secs(10), || async {
        (a.rules_version() == 1).then_some(())
    })
    .await;
    let (listener, mut events) =
        AsyncClient::new(MqttOptions::new("alarm-listener", broker.ip().to_string(), broker.port()), 16);
    listener.subscribe("alarms", QoS::AtLeastOnce).await.unwrap();
    let mut alarms = Vec::new();
    let next_alarm = async |events: &mut rumqttc::EventLoop| {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Event::Incoming(Packet::Publish(p)) = events.poll().await.unwrap() {
                    break String::from_utf8(p.payload.to_vec()).unwrap();
                }
            }
        })
        .await
        .expect("an alarm on the actuator topic")
    };
    // Drive the listener until its subscription is acknowledged.
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = events.poll().await.unwrap() {
                break;
            }
        }
    })
    .await
    .unwrap();

    // A broken file: refused, version unchanged, the old limit (100) still applies.
    let rules_path = dir.path().join("rules.toml");
    std::fs::write(&rules_path, "[rules.hot]\nsensor = \"m.t\"\nabove = \"very\"\n").unwrap();
    harness::wait_for("the broken file to be refused", Duration::from_secs(10), || async {
        (a.stats.rules_reload_failures.load(std::sync::atomic::Ordering::Relaxed) >= 1).then_some(())
    })
    .await;
    assert_eq!(a.rules_version(), 1);
    mosquitto::publish(broker.port(), "sensors/m/t", "150");
    alarms.push(next_alarm(&mut events).await);
    assert_eq!(alarms, ["hot 150"], "the old rule set still runs");

    // A good file: version 2, and the new limit (200) applies: 150 is fine now, 250 is not.
    std::fs::write(&rules_path, rules("200.0")).unwrap();
    harness::wait_for("the reload", Duration::from_secs(10), || async { (a.rules_version() == 2).then_some(()) }).await;
    // The changed rule starts fresh (its old state belonged to the old limit).
    mosquitto::publish(broker.port(), "sensors/m/t", "150");
    mosquitto::publish(broker.port(), "sensors/m/t", "250");
    alarms.push(next_alarm(&mut events).await);
    assert_eq!(alarms, ["hot 150", "hot 250"]);
}

/// A trip while the uplink is down waits behind a telemetry backlog on disk; when the uplink
/// returns, the event batch goes first, then the backlog drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trip_events_jump_ahead_of_the_telemetry_backlog() {
    harness::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let port = harness::free_port();
    let rules_path = dir.path().join("rules.toml");
    std::fs::write(
        &rules_path,
        "[rules.running-warm]\nsensor = \"machine.temperature\"\nabove = 0.0\nseverity = \"trip\"\nactions = [\"log\"]\n\
         [actions.log]\nkind = \"exec\"\nprogram = \"/bin/true\"\n",
    )
    .unwrap();
    let total = 20_000u64;
    let text = format!(
        "[agent]\nid = \"gw-prio\"\ndata_dir = \"{}\"\nrules = \"{}\"\n[uplink]\nport = {port}\nreconnect_min = \"50ms\"\nreconnect_max = \"200ms\"\n\
         [sources.machine]\nkind = \"simulated\"\nperiod = \"1ms\"\nrealtime = false\nlimit = {total}\n",
        dir.path().join("agent").display(),
        rules_path.display()
    );
    let a =
        edgeloop_agent::start(&AgentConfig::parse(&text, Path::new("prio.toml")).unwrap(), CancellationToken::new())
            .await
            .unwrap();
    harness::wait_for("the backlog on disk", Duration::from_secs(60), || async {
        (a.stats.snapshot().accepted == total && a.stats.snapshot().events_accepted >= 2).then_some(())
    })
    .await;
    assert_eq!(a.latched(), ["running-warm"]);
    // The gateway restarts while still offline: the backlog is streamed from disk after it.
    a.shutdown();
    a.wait().await;
    drop(a);

    // The collector comes up; a raw subscriber watches the order batches arrive in.
    let store = edgeloop_collector::config::StoreConfig::Local(edgeloop_collector::config::LocalStoreConfig {
        path: dir.path().join("store"),
    });
    let collector = edgeloop_collector::start(
        &harness::collector_config(([127, 0, 0, 1], port).into(), store),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let mut opts = MqttOptions::new("order-watcher", "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (watcher, mut events) = AsyncClient::new(opts, 64);
    watcher.subscribe("edgeloop/v1/gw-prio/telemetry", QoS::AtLeastOnce).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = events.poll().await.unwrap() {
                break;
            }
        }
    })
    .await
    .unwrap();
    // The restarted gateway's machine is idle: everything it sends comes from the buffer on disk.
    let idle = text.replace(&format!("limit = {total}"), "limit = 0");
    let a =
        edgeloop_agent::start(&AgentConfig::parse(&idle, Path::new("prio.toml")).unwrap(), CancellationToken::new())
            .await
            .unwrap();
    // Keep the watcher's session moving (an unread QoS 1 subscriber would stall the broker).
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let watch = tokio::spawn(async move {
        while let Ok(ev) = events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = ev
                && let Ok(b) = edgeloop_shared::batch::Batch::decode(&p.payload)
            {
                let _ = seen_tx.send((b.events.len(), b.point_count()));
            }
        }
    });
    let mut order = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while order.len() < 4 {
            order.push(seen.recv().await.unwrap());
        }
    })
    .await
    .expect("batches after the reconnect");
    assert!(order[0].0 >= 1 && order[0].1 == 0, "the first batch up is the events batch: {order:?}");
    harness::wait_for("the backlog to drain", Duration::from_secs(60), || async {
        let s = a.stats.snapshot();
        (s.backlog == 0 && s.acked == total).then_some(())
    })
    .await;
    let store = collector.store.local().unwrap();
    assert_eq!(store.count_for("gw-prio"), total);
    assert!(store.events_for("gw-prio").iter().any(|e| e.starts_with("trip running-warm")));
    watch.abort();
}

//! Hostile and careless peers against the real collector and agent: a gateway with valid
//! credentials trying to act for another, a replaced data directory, a silence over everything,
//! a pushed rule file that would run programs. Each outcome is counted in the store.

use std::{sync::atomic::Ordering::Relaxed, time::Duration};

use edgeloop_collector::config::{BrokerConfig, ExternalBroker, LocalStoreConfig, MqttVersion, StoreConfig};
use edgeloop_shared::{
    batch::Batch,
    model::{Reading, to_wire},
    topic::{Channel, topic},
};
use rumqttc::{AsyncClient, ConnectionError, Event, LastWill, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

use crate::harness;

fn readings(n: i64) -> Vec<Reading> {
    (0..n).map(|i| Reading { sensor: "temp".into(), ts_ns: 1_000 + i, value: 1.0 }).collect()
}

/// A gateway with valid credentials leaves a last will on another agent's topics (a forged
/// batch, a forged ack) and drops its connection: the broker must refuse the connection at
/// CONNECT instead of publishing the will later without the ACL's check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_cannot_publish_as_another_agent() {
    harness::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let store = StoreConfig::Local(LocalStoreConfig { path: dir.path().join("store") });
    let mut config = harness::collector_config(([127, 0, 0, 1], 0).into(), store);
    let BrokerConfig::Embedded(broker) = &mut config.broker else { unreachable!() };
    broker.users = [("gw-victim".to_string(), "v".into()), ("gw-evil".to_string(), "e".into())].into();
    let collector = edgeloop_collector::start(&config, CancellationToken::new()).await.unwrap();
    let addr = collector.broker_addr().unwrap();
    let options = |id: &str, pass: &str| {
        let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        opts.set_credentials(id, pass).set_max_packet_size(1 << 20, 1 << 20);
        opts
    };
    // The victim listens to its ack topic.
    let (victim, mut victim_events) = AsyncClient::new(options("gw-victim", "v"), 16);
    victim.subscribe(topic("gw-victim", Channel::Ack), QoS::AtLeastOnce).await.unwrap();
    let (acks_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(e) = victim_events.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = e {
                let _ = acks_tx.send(p.payload.to_vec());
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let forged_batch = Batch::from_readings("gw-victim", 1, &readings(10)).encode().unwrap();
    let forged_ack = forged_ack_payload();
    let wills = [(Channel::Telemetry, forged_batch), (Channel::Ack, forged_ack)];
    for (channel, payload) in wills {
        let mut opts = options("gw-evil", "e");
        opts.set_last_will(LastWill::new(topic("gw-victim", channel), payload, QoS::AtLeastOnce, false));
        let (_evil, mut evil_events) = AsyncClient::new(opts, 16);
        let outcome = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match evil_events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        })
        .await
        .unwrap();
        // Dropping the event loop closes the socket without DISCONNECT: the will would fire.
        drop(evil_events);
        assert!(
            matches!(outcome, Err(ConnectionError::ConnectionRefused(_))),
            "a will on gw-victim's {channel:?} topic must refuse the connection, got {outcome:?}"
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(collector.store.local().unwrap().count_for("gw-victim"), 0, "nothing stored in the victim's name");
    assert!(acks.try_recv().is_err(), "no forged ack reached the victim");
    let refused = collector.stats.broker_acl.get().unwrap().wills.load(Relaxed);
    assert_eq!(refused, 2, "both refusals counted");

    // The evil gateway may still connect with a will on its own status topic.
    let mut opts = options("gw-evil", "e");
    opts.set_last_will(LastWill::new(topic("gw-evil", Channel::Status), vec![1], QoS::AtLeastOnce, true));
    let (_evil, mut evil_events) = AsyncClient::new(opts, 16);
    let connected = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = evil_events.poll().await.unwrap() {
                break;
            }
        }
    })
    .await;
    assert!(connected.is_ok(), "a will on the client's own topic is allowed");
}

/// While nothing acknowledges the victim's batches (its collector is away), a peer on the broker
/// publishes acks on the victim's ack topic: in the layout the agent used to accept, naming
/// another agent, naming a made-up buffer. The agent keeps every batch, counts the forgeries, and
/// once a collector consumes, every reading is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_acks_delete_nothing_from_an_agents_buffer() {
    use edgeloop_shared::{
        broker::{self, EmbeddedBroker},
        model::{Ack, AckStatus},
    };
    harness::init_tracing();
    let broker = broker::start(&EmbeddedBroker { listen: ([127, 0, 0, 1], 0).into(), ..Default::default() }, None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let total = 20_000;
    let mut cfg =
        harness::agent_config("gw-victim", dir.path(), broker.addr, harness::fast(total, Duration::from_micros(1)));
    cfg.uplink.batch_max_readings = 500;
    let stop = CancellationToken::new();
    let agent = edgeloop_agent::start(&cfg, stop.clone()).await.unwrap();
    harness::wait_for("every reading in the buffer, the uplink up", Duration::from_secs(60), || async {
        let s = agent.stats.snapshot();
        (s.accepted == total && s.uplink_connected).then_some(())
    })
    .await;
    let held = agent.buffer().held_batches;
    assert!(held >= 40, "batches waiting: {held}");

    let mut opts = MqttOptions::new("mallory", broker.addr.ip().to_string(), broker.addr.port());
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (evil, mut evil_events) = AsyncClient::new(opts, 1024);
    tokio::spawn(async move { while evil_events.poll().await.is_ok() {} });
    let stored = AckStatus::Stored { points: 500 };
    let forge = |agent: &str, buffer: Option<u64>, seq: u64| {
        Ack { agent: agent.into(), buffer, seq, status: stored.clone() }.encode().unwrap()
    };
    let ack_topic = topic("gw-victim", Channel::Ack);
    let mut forged = 0u64;
    for seq in 0..held + 5 {
        // The previous layout (`seq`, `status`): what the agent acted on before acks named anyone.
        for payload in
            [forge("gw-victim", None, seq), forge("gw-other", Some(0), seq), forge("gw-victim", Some(seq), seq)]
        {
            evil.publish(&ack_topic, QoS::AtLeastOnce, false, payload).await.unwrap();
            forged += 1;
        }
    }
    harness::wait_for("every forged ack seen", Duration::from_secs(30), || async {
        (agent.stats.acks_ignored.load(Relaxed) >= forged).then_some(())
    })
    .await;
    assert_eq!(agent.buffer().held_readings, total, "no batch removed by a forged ack");
    assert_eq!(agent.stats.snapshot().acked, 0);

    // A collector comes and consumes from the same broker: everything is stored.
    let store_dir = tempfile::tempdir().unwrap();
    let mut config = harness::collector_config(
        ([127, 0, 0, 1], 0).into(),
        StoreConfig::Local(LocalStoreConfig { path: store_dir.path().join("store") }),
    );
    config.broker = BrokerConfig::External(ExternalBroker {
        host: "127.0.0.1".into(),
        port: broker.addr.port(),
        username: None,
        password: None,
        protocol: MqttVersion::V311,
        shared_group: None,
    });
    let collector = edgeloop_collector::start(&config, stop.clone()).await.unwrap();
    harness::wait_for("every reading stored", Duration::from_secs(60), || async {
        (collector.store.local().unwrap().count_for("gw-victim") == total && agent.buffer().held_batches == 0)
            .then_some(())
    })
    .await;
    stop.cancel();
    agent.wait().await;
}

/// An agent's data directory is replaced (a new SD card) and it starts again with the same id:
/// its new buffer counts from sequence 0 again, and every reading of it is stored, none taken
/// for a replay of the old buffer's batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_data_directory_is_not_mistaken_for_replays() {
    harness::init_tracing();
    let store_dir = tempfile::tempdir().unwrap();
    let store = StoreConfig::Local(LocalStoreConfig { path: store_dir.path().join("store") });
    let stop = CancellationToken::new();
    let collector =
        edgeloop_collector::start(&harness::collector_config(([127, 0, 0, 1], 0).into(), store), stop.clone())
            .await
            .unwrap();
    let addr = collector.broker_addr().unwrap();
    let data = tempfile::tempdir().unwrap();
    let per_run = 10_000;
    let mut stored = 0;
    for run in 0..2 {
        let mut cfg =
            harness::agent_config("gw-sd", data.path(), addr, harness::fast(per_run, Duration::from_micros(1)));
        cfg.uplink.batch_max_readings = 500;
        let agent_stop = CancellationToken::new();
        let agent = edgeloop_agent::start(&cfg, agent_stop.clone()).await.unwrap();
        stored += per_run;
        harness::wait_for(&format!("run {run}: every reading stored"), Duration::from_secs(60), || async {
            (collector.store.local().unwrap().count_for("gw-sd") >= stored && agent.buffer().held_batches == 0)
                .then_some(())
        })
        .await;
        agent_stop.cancel();
        agent.wait().await;
        drop(agent);
        // The new SD card.
        std::fs::remove_dir_all(data.path()).unwrap();
    }
    assert_eq!(collector.store.local().unwrap().count_for("gw-sd"), 2 * per_run);
    assert_eq!(collector.stats.duplicates.load(Relaxed), 0, "nothing taken for a replay");
    stop.cancel();
}

fn forged_ack_payload() -> Vec<u8> {
    use edgeloop_shared::model::{Ack, AckStatus};
    to_wire(&Ack { agent: "gw-victim".into(), buffer: Some(0), seq: 7, status: AckStatus::Stored { points: 2000 } })
        .unwrap()
}

/// An engineer token pushes a rule file that would run a program on the gateway: a new `exec`
/// action firing at once, then the running file's `exec` action pointed at another program. The
/// agent's own config does not allow pushed programs, so both pushes are refused and audited, no
/// program runs, and the rule file on disk stays as it was; a push that leaves the `exec` action
/// as it is still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_rule_file_cannot_run_programs_on_a_gateway() {
    use edgeloop_shared::model::CommandAction;
    harness::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let path = |p: &str| dir.path().join(p).display().to_string();
    std::fs::write(dir.path().join("fleet-rules.toml"), "").unwrap();
    edgeloop_collector::automation::commands::generate_key(&dir.path().join("command.key")).unwrap();
    let text = format!(
        "[broker]\nmode = \"embedded\"\nlisten = \"127.0.0.1:0\"\n\n[store]\nkind = \"local\"\npath = \"{}\"\n\n\
         [automation]\nrules = \"{}\"\nstate_dir = \"{}\"\nsigning_key = \"{}\"\n",
        path("store"),
        path("fleet-rules.toml"),
        path("automation"),
        path("command.key"),
    );
    let config = edgeloop_collector::config::CollectorConfig::parse(&text, std::path::Path::new("c.toml")).unwrap();
    let stop = CancellationToken::new();
    let collector = edgeloop_collector::start(&config, stop.clone()).await.unwrap();
    let automation = collector.automation.clone().unwrap();
    let public = automation.public_key_hex().await.unwrap();

    let original = "[rules.hot]\nsensor = \"machine.temperature\"\nabove = 1000.0\nactions = [\"log\"]\n\n\
                    [actions.log]\nkind = \"exec\"\nprogram = \"/bin/true\"\n";
    std::fs::write(dir.path().join("rules.toml"), original).unwrap();
    let agent_text = format!(
        "[agent]\nid = \"gw-exec\"\ndata_dir = \"{}\"\nrules = \"{}\"\nrules_check_interval = \"100ms\"\n\n\
         [uplink]\nhost = \"127.0.0.1\"\nport = {}\nreconnect_min = \"50ms\"\nreconnect_max = \"200ms\"\n\n\
         [sources.machine]\nkind = \"simulated\"\nperiod = \"20ms\"\n\n[commands]\npublic_key = \"{public}\"\n",
        path("data"),
        path("rules.toml"),
        collector.broker_addr().unwrap().port(),
    );
    let agent_config = edgeloop_agent::config::AgentConfig::parse(&agent_text, std::path::Path::new("a.toml")).unwrap();
    let agent = edgeloop_agent::start(&agent_config, stop.child_token()).await.unwrap();
    let live = collector.live.clone();
    harness::wait_for("the agent's rules loaded", Duration::from_secs(20), || {
        let live = live.clone();
        async move { (live.rules_version("gw-exec") == Some(1)).then_some(()) }
    })
    .await;

    let marker = dir.path().join("marker");
    let touch = |action: &str| {
        format!(
            "[actions.{action}]\nkind = \"exec\"\nprogram = \"/bin/sh\"\nargs = [\"-c\", \"touch {}\"]\n",
            marker.display()
        )
    };
    let added = format!(
        "[rules.hot]\nsensor = \"machine.temperature\"\nabove = -1000.0\nactions = [\"log\", \"mark\"]\n\n\
         [actions.log]\nkind = \"exec\"\nprogram = \"/bin/true\"\n\n{}",
        touch("mark")
    );
    let changed = format!(
        "[rules.hot]\nsensor = \"machine.temperature\"\nabove = -1000.0\nactions = [\"log\"]\n\n{}",
        touch("log")
    );
    for (what, rules) in [("a new exec action", added), ("a changed exec action", changed)] {
        let id =
            automation.command("gw-exec", CommandAction::PushRules { toml: rules }, "token:engineer").await.unwrap();
        let done = harness::wait_for(&format!("{what}: the agent's answer"), Duration::from_secs(20), || {
            let automation = automation.clone();
            async move { automation.audit(20).into_iter().find(|r| r.id == Some(id) && r.verdict != "sent") }
        })
        .await;
        assert_eq!(done.verdict, "failed", "{what}: {done:?}");
        assert!(done.detail.contains("allow_pushed_exec"), "{what}: {done:?}");
        let agent_audit = std::fs::read_to_string(dir.path().join("data/audit.jsonl")).unwrap();
        let line = agent_audit.lines().find(|l| l.contains(&format!("\"id\":{id},"))).unwrap();
        assert!(line.contains("\"verdict\":\"refused\"") && line.contains("allow_pushed_exec"), "{line}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!marker.exists(), "no pushed program ran");
    assert_eq!(std::fs::read_to_string(dir.path().join("rules.toml")).unwrap(), original);
    assert_eq!(agent.rules_version(), 1);

    // The exec action left as it runs: the push goes through.
    let kept = original.replace("above = 1000.0", "above = 900.0");
    let id =
        automation.command("gw-exec", CommandAction::PushRules { toml: kept.clone() }, "token:engineer").await.unwrap();
    let done = harness::wait_for("the harmless push executed", Duration::from_secs(20), || {
        let automation = automation.clone();
        async move { automation.audit(20).into_iter().find(|r| r.id == Some(id) && r.verdict != "sent") }
    })
    .await;
    assert_eq!(done.verdict, "executed", "{done:?}");
    assert_eq!(std::fs::read_to_string(dir.path().join("rules.toml")).unwrap(), kept);
    stop.cancel();
    agent.wait().await;
}

/// A collector whose embedded broker would take anonymous clients from the network does not
/// start, and `check` says why; on loopback, with logins, or when the config says so, it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_broker_on_the_network_is_refused_unless_the_config_says_so() {
    harness::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let port = harness::free_port();
    let text = |extra: &str| {
        format!(
            "[broker]\nmode = \"embedded\"\nlisten = \"0.0.0.0:{port}\"\n{extra}\n[store]\nkind = \"local\"\npath = \"{}\"\n",
            dir.path().join("store").display()
        )
    };
    let path = dir.path().join("collector.toml");
    std::fs::write(&path, text("")).unwrap();
    let out =
        std::process::Command::new(harness::binary("edgeloop-collector")).arg("check").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("allow_anonymous") && err.contains("[broker.users]"), "{err}");
    let config = edgeloop_collector::config::CollectorConfig::parse(&text(""), &path).unwrap();
    let refused = edgeloop_collector::start(&config, CancellationToken::new()).await.err().unwrap();
    assert!(matches!(refused, edgeloop_collector::StartError::AnonymousBroker { .. }), "{refused}");

    for extra in ["allow_anonymous = true\n", "[broker.users]\ngw-1 = \"secret\"\n"] {
        std::fs::write(&path, text(extra)).unwrap();
        let out =
            std::process::Command::new(harness::binary("edgeloop-collector")).arg("check").arg(&path).output().unwrap();
        assert!(out.status.success(), "{extra}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let config = edgeloop_collector::config::CollectorConfig::parse(&text("allow_anonymous = true\n"), &path).unwrap();
    let stop = CancellationToken::new();
    let started = edgeloop_collector::start(&config, stop.clone()).await;
    assert!(started.is_ok(), "allowed by the config");
    stop.cancel();
}

//! Hostile and careless peers against the real collector and agent: a gateway with valid
//! credentials trying to act for another, a replaced data directory, a silence over everything,
//! a pushed rule file that would run programs. Each outcome is counted in the store.

use std::{sync::atomic::Ordering::Relaxed, time::Duration};

use edgeloop_collector::config::{BrokerConfig, LocalStoreConfig, StoreConfig};
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

fn forged_ack_payload() -> Vec<u8> {
    use edgeloop_shared::model::{Ack, AckStatus};
    to_wire(&Ack { seq: 7, status: AckStatus::Stored { points: 2000 } }).unwrap()
}

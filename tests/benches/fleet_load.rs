//! The collector's delivery into a real InfluxDB 1.6 at fleet load, side by side with the
//! ceiling: the same line protocol posted straight to the same `influxd` by a plain HTTP client.
//!
//! 20 agents (rumqttc clients, each keeping 8 batches in flight and waiting for the collector's
//! end-to-end acks) send 25 batches of 2,000 readings each (1,000,000 points) through the
//! collector's embedded broker; the collector (in this process, release build, default ingest
//! settings) writes them to InfluxDB. The ceiling posts the same points, encoded beforehand, from
//! one keep-alive connection (sequential) and from 4 at once. Each round runs all three on fresh
//! timestamps; 3 rounds; medians. After each collector run InfluxDB's `count()` must equal the
//! points sent. BENCHMARKS.md has the figures.
//!
//! Run: `cargo bench -p edgeloop-tests --bench fleet_load` (needs Debian's `influxdb`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
#[path = "../it/harness/mod.rs"]
mod harness;

use std::{net::SocketAddr, time::Instant};

use edgeloop_collector::store::line_protocol;
use edgeloop_shared::{
    batch::Batch,
    model::{Ack, AckStatus, Reading, from_wire},
    topic::{self, Channel},
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const AGENTS: usize = 20;
const BATCHES: usize = 25;
const READINGS: usize = 2_000;
const WINDOW: usize = 8;
const ROUNDS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Every agent's batches for one round; `round` shifts the timestamps so no round overwrites
/// another's points.
fn make_fleet(round: usize) -> Vec<Vec<Batch>> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ round as u64;
    let t0 = 1_790_000_000_000_000_000i64 + round as i64 * 86_400_000_000_000;
    (0..AGENTS)
        .map(|a| {
            (0..BATCHES)
                .map(|b| {
                    let readings: Vec<Reading> = (0..READINGS)
                        .map(|i| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            let k = b * READINGS + i;
                            Reading {
                                sensor: format!("press-{}.temp", k % 8),
                                ts_ns: t0 + (k / 8) as i64 * 10_000_000 + (x % 100_000) as i64,
                                value: (2150 + (x >> 40) as i64 % 7) as f64 / 100.0,
                            }
                        })
                        .collect();
                    Batch::from_readings(&format!("gw-{a:02}"), b as u64 + 1, &readings)
                })
                .collect()
        })
        .collect()
}

/// Each batch's line protocol, as the collector would write it.
fn line_protocol_of(fleet: &[Vec<Batch>]) -> Vec<String> {
    fleet
        .iter()
        .flatten()
        .map(|b| {
            let mut body = String::new();
            line_protocol::encode_batch(&mut body, "readings", "events", b);
            body
        })
        .collect()
}

/// Posts every batch's line protocol to `db` over `connections` keep-alive connections.
async fn plain(url: &str, db: &str, bodies: &[String], connections: usize) -> f64 {
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let mine: Vec<String> = bodies.iter().skip(c).step_by(connections).cloned().collect();
        let (http, url, db) = (http.clone(), url.to_owned(), db.to_owned());
        tasks.push(tokio::spawn(async move {
            for body in mine {
                let r = http.post(format!("{url}/write")).query(&[("db", &db), ("precision", &"ns".into())]);
                let resp = r.body(body).send().await.unwrap();
                assert!(resp.status().is_success(), "{}", resp.status());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (AGENTS * BATCHES * READINGS) as f64 / started.elapsed().as_secs_f64()
}

/// One agent: keeps `WINDOW` batches in flight, each leaving only on the collector's ack.
async fn agent(broker: SocketAddr, id: String, wire: Vec<Vec<u8>>) {
    let mut opts = MqttOptions::new(id.clone(), broker.ip().to_string(), broker.port());
    opts.set_max_packet_size(8 << 20, 8 << 20).set_inflight(64);
    let (client, mut events) = AsyncClient::new(opts, 64);
    client.subscribe(topic::topic(&id, Channel::Ack), QoS::AtLeastOnce).await.unwrap();
    let telemetry = topic::topic(&id, Channel::Telemetry);
    let (mut next, mut acked) = (0, 0);
    while acked < wire.len() {
        while next < wire.len() && next - acked < WINDOW {
            client.publish(&telemetry, QoS::AtLeastOnce, false, wire[next].clone()).await.unwrap();
            next += 1;
        }
        if let Event::Incoming(Packet::Publish(p)) = events.poll().await.unwrap() {
            let ack: Ack = from_wire(&p.payload).unwrap();
            assert!(matches!(ack.status, AckStatus::Stored { .. }), "{ack:?}");
            acked += 1;
        }
    }
}

/// The whole fleet through a fresh collector into `edgeloop`; points/s from the first publish
/// to the last ack.
async fn collector(influx: &harness::influxdb::Influx1, fleet: &[Vec<Batch>]) -> f64 {
    let listen: SocketAddr = format!("127.0.0.1:{}", harness::free_port()).parse().unwrap();
    let mut config = harness::collector_config(listen, harness::influxdb::v1_store(&influx.url));
    if let edgeloop_collector::config::BrokerConfig::Embedded(b) = &mut config.broker {
        b.max_payload = edgeloop_shared::units::ByteSize(8 << 20);
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    let c = edgeloop_collector::start(&config, shutdown.clone()).await.unwrap();
    let broker = c.broker_addr().unwrap();
    let wires: Vec<(String, Vec<Vec<u8>>)> =
        fleet.iter().map(|bs| (bs[0].agent.clone(), bs.iter().map(|b| b.encode().unwrap()).collect())).collect();
    let started = Instant::now();
    let tasks: Vec<_> = wires.into_iter().map(|(id, w)| tokio::spawn(agent(broker, id, w))).collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = (AGENTS * BATCHES * READINGS) as f64 / started.elapsed().as_secs_f64();
    c.shutdown();
    c.wait().await;
    rate
}

#[tokio::main]
async fn main() {
    let influx = harness::influxdb::Influx1::start("edgeloop").await;
    influx.query("plain", "CREATE DATABASE plain").await;
    let (mut seq, mut four, mut coll) = (Vec::new(), Vec::new(), Vec::new());
    let total = (AGENTS * BATCHES * READINGS) as u64;
    for round in 0..ROUNDS {
        let fleet = make_fleet(round);
        seq.push(plain(&influx.url, "plain", &line_protocol_of(&fleet), 1).await);
        let bodies4 = line_protocol_of(&make_fleet(round + 100));
        four.push(plain(&influx.url, "plain", &bodies4, 4).await);
        coll.push(collector(&influx, &fleet).await);
        let stored = influx.count("edgeloop", "readings", "value").await;
        assert_eq!(stored, total * (round as u64 + 1), "every point sent is stored once");
        println!(
            "round {round}: plain sequential {:>9.0} · plain 4 connections {:>9.0} · collector {:>9.0} points/s",
            seq[round], four[round], coll[round]
        );
    }
    let (s, f, c) = (median(seq), median(four), median(coll));
    println!("median of {ROUNDS}: plain sequential {s:.0} · plain 4 connections {f:.0} · collector {c:.0} points/s");
    println!("collector / sequential ceiling {:.0} % · / 4-connection ceiling {:.0} %", 100.0 * c / s, 100.0 * c / f);
}

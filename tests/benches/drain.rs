//! Draining after an outage (issue 21): how fast two agents' million-reading backlogs reach a real
//! InfluxDB 1.6 once it is back, against the ceiling measured beside it in the same run.
//!
//! One run: a fresh `influxd`, the collector (in this process, release build, embedded broker,
//! default ingest settings), InfluxDB killed (SIGKILL), then two agents (in this process, default
//! uplink settings) each with two simulated sources: `backlog`, which puts `BACKLOG` readings into
//! the buffer as fast as it takes them (timestamps in the past), and `machine`, live readings at
//! `LIVE_PER_S` per agent that keep arriving through the whole run. Once every backlog is built
//! InfluxDB is restarted on its data, and the bench measures
//!
//! * the time from InfluxDB answering `/ping` to the first point stored (`count()` > 0);
//! * the drain rate: readings acknowledged end to end (stored) per second, from InfluxDB's return
//!   until every agent's backlog is under one second of live readings;
//! * the ceiling: with agents and collector stopped, `CEILING_POINTS` points of the same shape,
//!   encoded beforehand as 5,000-line bodies, posted by reqwest over 4 connections at once into a
//!   second database of the same `influxd`.
//!
//! `RUNS` runs, medians. Every run checks that InfluxDB holds at least what the agents saw acked
//! and no more than they accepted.
//!
//! Run: `cargo bench -p edgeloop-tests --bench drain` (needs Debian's `influxdb`). Knobs, for
//! finding a bottleneck without a rebuild: `DRAIN_BACKLOG` (readings per agent), `DRAIN_RUNS`,
//! `DRAIN_OUTAGE` (extra seconds the database stays dead after the backlogs are built, the live
//! readings piling up), `DRAIN_BATCH` (agent `uplink.batch_max_readings`: 20 builds the backlog
//! in the batches a real outage leaves at 1,000 readings/s, one per 20 ms flush), `DRAIN_IN_FLIGHT`
//! (agent `uplink.in_flight`), `DRAIN_WRITE_CONCURRENCY`, `DRAIN_WRITE_MAX_BATCHES`,
//! `DRAIN_WRITE_MAX_POINTS`, `DRAIN_MAX_IN_FLIGHT` (collector `ingest.*`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
#[path = "../it/harness/mod.rs"]
mod harness;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use edgeloop_agent::config::{SimulatedConfig, SourceConfig, UplinkConfig};
use edgeloop_collector::store::line_protocol;
use edgeloop_shared::{batch::Batch, model::Reading, units::HumanDuration};
use tokio_util::sync::CancellationToken;

const AGENTS: usize = 2;
/// One reading every 2 ms of each of the machine's two sensors.
const LIVE_PERIOD: Duration = Duration::from_millis(2);
const LIVE_PER_S: u64 = 1_000;
const CEILING_POINTS: usize = 2_000_000;
const CEILING_BODY: usize = 5_000;
const CEILING_CONNECTIONS: usize = 4;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Run {
    /// Readings held by all agents when the database came back.
    held: u64,
    fill: Duration,
    first_point: Duration,
    drained: Duration,
    drain_rate: f64,
    ceiling: f64,
}

/// Bodies of `CEILING_BODY` lines shaped like the agents' (agent and sensor tags, one value),
/// timestamps on `round`'s own day so no run overwrites another's points.
fn ceiling_bodies(round: usize) -> Vec<String> {
    let t0 = 1_790_000_000_000_000_000i64 + round as i64 * 86_400_000_000_000;
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ round as u64;
    (0..CEILING_POINTS / CEILING_BODY)
        .map(|b| {
            let readings: Vec<Reading> = (0..CEILING_BODY)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let k = b * CEILING_BODY + i;
                    Reading {
                        sensor: format!("machine.{}", ["temperature", "vibration"][k % 2]),
                        ts_ns: t0 + (k / 2) as i64 * 1_000_000,
                        value: (x >> 11) as f64 / (1u64 << 53) as f64,
                    }
                })
                .collect();
            let batch = Batch::from_readings(&format!("gw-ceiling-{}", b % AGENTS), b as u64 + 1, &readings);
            let mut body = String::new();
            line_protocol::encode_batch(&mut body, "readings", "events", &batch);
            body
        })
        .collect()
}

/// Posts `bodies` to `db` over `CEILING_CONNECTIONS` keep-alive connections; points/s.
async fn ceiling(url: &str, db: &str, bodies: Vec<String>) -> f64 {
    let http = reqwest::Client::new();
    let mut shares: Vec<Vec<String>> = vec![Vec::new(); CEILING_CONNECTIONS];
    for (i, b) in bodies.into_iter().enumerate() {
        shares[i % CEILING_CONNECTIONS].push(b);
    }
    let started = Instant::now();
    let tasks: Vec<_> = shares
        .into_iter()
        .map(|mine| {
            let (http, url, db) = (http.clone(), url.to_owned(), db.to_owned());
            tokio::spawn(async move {
                for body in mine {
                    let r = http.post(format!("{url}/write")).query(&[("db", db.as_str()), ("precision", "ns")]);
                    let resp = r.body(body).send().await.unwrap();
                    assert!(resp.status().is_success(), "{}", resp.status());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    CEILING_POINTS as f64 / started.elapsed().as_secs_f64()
}

async fn run(round: usize, backlog: u64, outage: Duration) -> Run {
    let mut influx = harness::influxdb::Influx1::start("edgeloop").await;
    influx.query("plain", "CREATE DATABASE plain").await;
    let bodies = ceiling_bodies(round);
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();

    let listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut config = harness::collector_config(listen, harness::influxdb::v1_store(&influx.url));
    let ingest = &mut config.ingest;
    ingest.write_concurrency = env("DRAIN_WRITE_CONCURRENCY", ingest.write_concurrency);
    ingest.write_max_points = env("DRAIN_WRITE_MAX_POINTS", ingest.write_max_points);
    ingest.write_max_batches = env("DRAIN_WRITE_MAX_BATCHES", ingest.write_max_batches);
    ingest.max_in_flight = env("DRAIN_MAX_IN_FLIGHT", ingest.max_in_flight);
    let collector = edgeloop_collector::start(&config, stop.clone()).await.unwrap();
    influx.kill();

    let fill_started = Instant::now();
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let id = format!("gw-drain-{i}");
        let live = SimulatedConfig { period: HumanDuration(LIVE_PERIOD), realtime: true, limit: None };
        let mut cfg = harness::agent_config(&id, &dir.path().join(&id), collector.broker_addr().unwrap(), live);
        // The agents' defaults, as a site runs them (the harness shortens the ack timeout).
        let defaults = UplinkConfig::default();
        cfg.uplink.ack_timeout = defaults.ack_timeout;
        cfg.uplink.in_flight = env("DRAIN_IN_FLIGHT", defaults.in_flight);
        cfg.uplink.batch_max_readings = env("DRAIN_BATCH", defaults.batch_max_readings);
        let fast = harness::fast(backlog, Duration::from_millis(1));
        cfg.sources.insert("backlog".into(), SourceConfig::Simulated(fast));
        agents.push(edgeloop_agent::start(&cfg, stop.clone()).await.unwrap());
    }
    harness::wait_for("the backlogs built", Duration::from_secs(600), || async {
        agents.iter().all(|a| a.stats.snapshot().backlog >= backlog).then_some(())
    })
    .await;
    let fill = fill_started.elapsed();
    tokio::time::sleep(outage).await;

    let held = agents.iter().map(|a| a.stats.snapshot().backlog).sum();
    influx.restart().await;
    let back = Instant::now();
    let acked = || agents.iter().map(|a| a.stats.snapshot().acked).sum::<u64>();
    let acked_at_return = acked();
    let first_point = harness::wait_for("the first point stored", Duration::from_secs(120), || async {
        (influx.count("edgeloop", "readings", "value").await > 0).then(|| back.elapsed())
    })
    .await;
    let drained = harness::wait_for("every backlog drained", Duration::from_secs(600), || async {
        agents.iter().all(|a| a.stats.snapshot().backlog < LIVE_PER_S).then(|| back.elapsed())
    })
    .await;
    let drain_rate = (acked() - acked_at_return) as f64 / drained.as_secs_f64();

    stop.cancel();
    for a in &agents {
        a.wait().await;
    }
    collector.wait().await;
    let (acked, accepted): (u64, u64) = agents.iter().fold((0, 0), |(k, c), a| {
        let s = a.stats.snapshot();
        (k + s.acked, c + s.accepted)
    });
    let stored = influx.count("edgeloop", "readings", "value").await;
    assert!((acked..=accepted).contains(&stored), "stored {stored}, acked {acked}, accepted {accepted}");

    let ceiling = ceiling(&influx.url, "plain", bodies).await;
    assert_eq!(influx.count("plain", "readings", "value").await, CEILING_POINTS as u64);
    Run { held, fill, first_point, drained, drain_rate, ceiling }
}

#[tokio::main]
async fn main() {
    harness::init_tracing();
    let backlog = env("DRAIN_BACKLOG", 1_000_000u64);
    let runs = env("DRAIN_RUNS", 3usize);
    let outage = Duration::from_secs(env("DRAIN_OUTAGE", 0u64));
    println!(
        "{AGENTS} agents, backlog {backlog} readings each (+{} live readings/s each), extra outage {outage:?}",
        LIVE_PER_S
    );
    let mut results = Vec::new();
    for round in 0..runs {
        let r = run(round, backlog, outage).await;
        println!(
            "run {round}: {} readings held, built in {:.1?} · first point stored {:.2?} after the return · drained in {:.1?} \
             at {:.0} readings/s · ceiling {:.0} points/s · {:.0} %",
            r.held,
            r.fill,
            r.first_point,
            r.drained,
            r.drain_rate,
            r.ceiling,
            100.0 * r.drain_rate / r.ceiling
        );
        results.push(r);
    }
    let first = median(results.iter().map(|r| r.first_point.as_secs_f64()).collect());
    let drained = median(results.iter().map(|r| r.drained.as_secs_f64()).collect());
    let rate = median(results.iter().map(|r| r.drain_rate).collect());
    let ceiling = median(results.iter().map(|r| r.ceiling).collect());
    let ratio = median(results.iter().map(|r| r.drain_rate / r.ceiling).collect());
    println!(
        "median of {runs}: first point {first:.2} s · drained in {drained:.1} s · drain {rate:.0} readings/s · \
         ceiling {ceiling:.0} points/s · ratio {:.0} %",
        100.0 * ratio
    );
}

//! The dashboard's fleet page at fleet scale, in a real headless Chromium against the real
//! collector (embedded broker, local store, the HTTP API and its event stream).
//!
//! 1,000 agents with 10 sensors each (10,000 sensors) are simulated by 10 MQTT clients through
//! the collector's embedded broker: every agent publishes its retained status report every 2 s
//! and a batch of one reading per sensor every second (10,000 readings/s into the collector,
//! which streams them on to the page's EventSource). With that load running, each of 5 runs opens
//! a fresh tab on the fleet page and measures:
//! - first render: from navigation start to the first rows of the full 1,000-agent list
//!   painted (`window.__edgeloop.firstRenderMs`, recorded by the page one frame after it put the
//!   rows in the DOM);
//! - over 10 s of the live stream: `agents` events applied per second, reading events received per
//!   second, the page's frame times (median and p95 of `requestAnimationFrame` intervals), and
//!   the cost of applying one 1,000-agent `agents` event (apply + render of the visible rows);
//! - the page's ceiling: for 3 s, a changed 1,000-agent list applied every frame (as an `agents`
//!   event would be), counting the updates rendered per second.
//!
//! Medians of the 5 runs are printed. BENCHMARKS.md ("Dashboard (issue 8)") has the figures.
//!
//! Run: `cargo bench -p edgeloop-tests --bench dashboard` (needs Debian's `chromium`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
#[path = "../it/harness/mod.rs"]
mod harness;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use edgeloop_collector::config::CollectorConfig;
use edgeloop_shared::{
    batch::Batch,
    model::{AgentReport, Presence, Reading, to_wire},
    topic::{Channel, topic},
};
use harness::chromium::Browser;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const AGENTS: usize = 1_000;
const SENSORS: usize = 10;
const CLIENTS: usize = 10;
const RUNS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn sha256_hex(s: &str) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One MQTT client speaking for `agents`: status every 2 s, a reading per sensor every second.
async fn simulate(broker: std::net::SocketAddr, client_no: usize, agents: Vec<String>, stop: Arc<AtomicBool>) {
    let mut opts = MqttOptions::new(format!("bench-sim-{client_no}"), broker.ip().to_string(), broker.port());
    opts.set_max_packet_size(1 << 20, 1 << 20);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(opts, 1024);
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let sensors: Vec<String> = (0..SENSORS).map(|s| format!("machine.s{s:02}")).collect();
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        round += 1;
        seq += 1;
        let ts = edgeloop_shared::clock::now_ns();
        for (i, agent) in agents.iter().enumerate() {
            if round % 2 == (i % 2) as u64 || round == 1 {
                let report = AgentReport {
                    version: "0.1.0".into(),
                    sent_ns: ts,
                    interval_ms: 2_000,
                    sensors: sensors.clone(),
                    stale_sensors: vec![],
                    backlog_readings: (i as u64 * 7 + round) % 500,
                    backlog_bytes: 0,
                    oldest_unsent_ns: None,
                    accepted_total: round * SENSORS as u64,
                    dropped_total: 0,
                    quarantined_total: 0,
                    latched: vec![],
                };
                let payload = to_wire(&Presence::Online(report)).unwrap();
                let _ = client.publish(topic(agent, Channel::Status), QoS::AtLeastOnce, true, payload).await;
            }
            let readings: Vec<Reading> = sensors
                .iter()
                .enumerate()
                .map(|(k, s)| Reading {
                    sensor: s.clone(),
                    ts_ns: ts,
                    value: 20.0 + ((round as f64 + k as f64 + i as f64) * 0.3).sin(),
                })
                .collect();
            let mut batch = Batch::from_readings(agent, seq, &readings);
            batch.tags.push(("site".into(), format!("plant-{}", i % 10)));
            let _ = client
                .publish(topic(agent, Channel::Telemetry), QoS::AtLeastOnce, false, batch.encode().unwrap())
                .await;
        }
    }
}

#[tokio::main]
async fn main() {
    harness::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let admin = format!("el_{}", sha256_hex(&format!("bench-{}", edgeloop_shared::clock::now_ns())));
    let tokens = serde_json::json!({ "tokens": [
        { "name": "bench", "role": "admin", "sha256": sha256_hex(&admin), "created_ns": edgeloop_shared::clock::now_ns() }
    ]});
    std::fs::write(d.join("tokens.json"), tokens.to_string()).unwrap();
    let toml = format!(
        "[broker]\nmode = \"embedded\"\nlisten = \"127.0.0.1:0\"\nmax_connections = 100\n\n\
         [store]\nkind = \"local\"\npath = {:?}\n\n\
         [api]\nlisten = \"127.0.0.1:0\"\ntokens_file = {:?}\n",
        d.join("store"),
        d.join("tokens.json"),
    );
    let config = CollectorConfig::parse(&toml, &d.join("collector.toml")).unwrap_or_else(|e| panic!("{e}"));
    let shutdown = CancellationToken::new();
    let collector = edgeloop_collector::start(&config, shutdown.clone()).await.unwrap();
    let base = format!("http://{}", collector.api_addr().unwrap());
    let broker = collector.broker_addr().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let ids: Vec<String> = (0..AGENTS).map(|i| format!("gw-{i:04}")).collect();
    let mut sims = Vec::new();
    for c in 0..CLIENTS {
        let mine: Vec<String> = ids.iter().skip(c).step_by(CLIENTS).cloned().collect();
        sims.push(tokio::spawn(simulate(broker, c, mine, stop.clone())));
    }

    let http = reqwest::Client::new();
    let online = || async {
        let r = http.get(format!("{base}/api/v1/agents")).bearer_auth(&admin).send().await.ok()?;
        let list: Value = serde_json::from_str(&r.text().await.ok()?).ok()?;
        let list = list.as_array()?;
        let online = list.iter().filter(|a| a["online"] == true).count();
        let sensors: usize = list.iter().map(|a| a["sensors"].as_array().map_or(0, Vec::len)).sum();
        (online == AGENTS && sensors == AGENTS * SENSORS).then_some(())
    };
    harness::wait_for("1,000 agents online with 10,000 sensors", Duration::from_secs(180), online).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // the readings' stream at its steady rate
    println!("{AGENTS} agents, {} sensors, {} readings/s into the collector", AGENTS * SENSORS, AGENTS * SENSORS);

    let browser = Browser::start().await;
    let (mut first, mut agents_rate, mut readings_rate, mut frame_med, mut frame_p95) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut apply_ms, mut ceiling, mut ceiling_ms) = (vec![], vec![], vec![]);
    for run in 0..RUNS {
        let page = browser.new_page(&format!("bench-{run}")).await;
        page.goto(&format!("{base}/")).await;
        page.eval(&format!("localStorage.setItem('edgeloop.token', {})", harness::chromium::js_str(&admin))).await;
        page.reload().await;
        page.wait_for(
            "window.__edgeloop && window.__edgeloop.firstRenderMs !== null && \
             document.querySelectorAll('[data-testid^=\"agent-row-\"]').length > 0",
            Duration::from_secs(60),
        )
        .await;
        let fr = page.eval("window.__edgeloop.firstRenderMs").await.as_f64().unwrap();
        let listed = page.eval("window.__edgeloop.agentsList().length").await.as_u64().unwrap();
        assert_eq!(listed, AGENTS as u64, "the page holds the whole fleet");
        first.push(fr);
        if run == 0 {
            page.screenshot("fleet-1000").await;
        }

        // The live stream, 10 s.
        page.wait_for("window.__edgeloop.agentsEvents > 0", Duration::from_secs(20)).await;
        let before = page.eval("({ a: window.__edgeloop.agentsEvents, r: window.__edgeloop.readings, ms: window.__edgeloop.agentsApplyMs, rm: window.__edgeloop.renderMs, n: window.__edgeloop.renders, t: performance.now() })").await;
        page.eval("window.__edgeloop.startFrameProbe()").await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let frames = page.eval("window.__edgeloop.stopFrameProbe()").await;
        let after = page.eval("({ a: window.__edgeloop.agentsEvents, r: window.__edgeloop.readings, ms: window.__edgeloop.agentsApplyMs, rm: window.__edgeloop.renderMs, n: window.__edgeloop.renders, t: performance.now() })").await;
        let f = |v: &Value, k: &str| v[k].as_f64().unwrap();
        let secs = (f(&after, "t") - f(&before, "t")) / 1000.0;
        let events = f(&after, "a") - f(&before, "a");
        agents_rate.push(events / secs);
        readings_rate.push((f(&after, "r") - f(&before, "r")) / secs);
        frame_med.push(f(&frames, "median"));
        frame_p95.push(f(&frames, "p95"));
        // Apply cost per event: the map update plus the renders it caused (the 1 s ticks render
        // too; counted in, so this is an upper bound).
        let renders = f(&after, "n") - f(&before, "n");
        let per_render = (f(&after, "rm") - f(&before, "rm")) / renders.max(1.0);
        apply_ms.push((f(&after, "ms") - f(&before, "ms")) / events.max(1.0) + per_render);

        // The ceiling: a changed 1,000-agent list every frame for 3 s.
        let stress = page
            .eval(
                "new Promise((resolve) => {
                   const p = window.__edgeloop, base = p.agentsList();
                   const t0 = performance.now(), r0 = p.renders, rm0 = p.renderMs, am0 = p.agentsApplyMs;
                   let n = 0;
                   const step = () => {
                     const now = performance.now();
                     if (now - t0 >= 3000) {
                       const renders = p.renders - r0;
                       return resolve({ perSec: renders / ((now - t0) / 1000),
                                        msPerUpdate: (p.renderMs - rm0 + p.agentsApplyMs - am0) / Math.max(1, n) });
                     }
                     const ns = Date.now() * 1e6;
                     p.applyAgents(base.map((a, i) => Object.assign({}, a, { backlog_readings: (a.backlog_readings + n + i) % 997, last_seen_ns: ns })));
                     n++;
                     requestAnimationFrame(step);
                   };
                   requestAnimationFrame(step);
                 })",
            )
            .await;
        ceiling.push(f(&stress, "perSec"));
        ceiling_ms.push(f(&stress, "msPerUpdate"));
        println!(
            "run {run}: first render {fr:.0} ms; agents events {:.2}/s, readings {:.0}/s, frame median {:.1} ms p95 {:.1} ms, \
             apply+render {:.2} ms/event; ceiling {:.0} updates/s at {:.2} ms each",
            agents_rate[run],
            readings_rate[run],
            frame_med[run],
            frame_p95[run],
            apply_ms[run],
            ceiling[run],
            ceiling_ms[run]
        );
        page.close().await;
    }
    println!("\nmedians of {RUNS} runs ({AGENTS} agents, {} sensors streaming):", AGENTS * SENSORS);
    println!("  time to first render of the fleet list: {:.0} ms", median(first));
    println!("  `agents` events applied: {:.2}/s (the collector sends one every 2 s)", median(agents_rate));
    println!("  reading events received by the page: {:.0}/s", median(readings_rate));
    println!("  frame time while streaming: median {:.1} ms, p95 {:.1} ms", median(frame_med), median(frame_p95));
    println!("  cost of one 1,000-agent update (apply + render): {:.2} ms", median(apply_ms));
    println!("  ceiling: {:.0} full-fleet updates/s rendered, {:.2} ms each", median(ceiling), median(ceiling_ms));

    stop.store(true, Ordering::Relaxed);
    for s in sims {
        let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
    }
    drop(browser);
    collector.shutdown();
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), collector.wait()).await;
}

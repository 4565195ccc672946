//! Rule engine throughput and trip latency, printed as figures (see BENCHMARKS.md for the method
//! and results):
//!
//! 1. `Engine::on_reading` alone: 100 rules over 100 sensors, rule evaluations per second on one
//!    thread;
//! 2. trip latency through the real agent while 10,000 other readings/s flow: a reading over the
//!    limit written into a real pty until the `Trip` command is read back from it, and the same
//!    through the embedded MQTT broker to an actuator topic;
//! 3. the share of that latency spent inside the agent, estimated from outside: the same
//!    measurement with no agent in between (an echo thread on the pty slave; an echo client on
//!    the same broker for MQTT), subtracted percentile by percentile. The agent has no internal
//!    trip timestamps; this needs none.
//!
//! Run: `cargo bench -p edgeloop-agent --bench rules` (part 1 is one thread; the latency parts
//! use both cores: the agent's runtime, the writer/publisher and the reader/subscriber threads).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs::File,
    io::{Read, Write},
    path::Path,
    sync::mpsc as std_mpsc,
    time::{Duration, Instant},
};

use edgeloop_agent::config::AgentConfig;
use edgeloop_rules::{
    config::{Context, RuleFile},
    engine::{Engine, Outcome},
};
use edgeloop_shared::frame::{self, FrameDecoder, GatewayMessage, MAX_WIRE_FRAME, NodeMessage};
use tokio_util::sync::CancellationToken;

const RUNS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Deterministic numbers (PCG-style LCG), so every run sees the same stream.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    /// In [0, 1).
    fn unit(&mut self) -> f64 {
        self.next() as f64 / (1u64 << 31) as f64
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Rule evaluations per second
// ---------------------------------------------------------------------------------------------

const RULES: usize = 100;
const SENSORS: usize = 100;
/// The synthetic clock: one reading every 100 µs (each sensor every 10 ms), for delays and rates.
const STEP_NS: u64 = 100_000;
const RUN_TIME: Duration = Duration::from_secs(2);

fn sensor_name(j: usize) -> String {
    format!("m{}.s{}", j / 10, j % 10)
}

/// 100 rules, rule i on sensor i: 40 above/clear, 20 k_of_n, 10 rate_above, 20 with on/off
/// delays, 10 2oo3 votes (on sensors i, i+1, i+2).
fn hundred_rules() -> String {
    let mut t = String::new();
    for i in 0..RULES {
        let s = sensor_name(i);
        let level = "above = 90.0\nclear = 85.0\nseverity = \"warning\"\nactions = [\"note\"]";
        let body = match i % 10 {
            0..=3 => format!("sensor = \"{s}\"\n{level}"),
            4 | 5 => format!("sensor = \"{s}\"\n{level}\nk_of_n = [3, 5]"),
            6 => format!("sensor = \"{s}\"\nrate_above = 1000.0\nseverity = \"info\""),
            7 | 8 => format!("sensor = \"{s}\"\n{level}\non_delay = \"50ms\"\noff_delay = \"20ms\""),
            _ => format!(
                "sensors = [\"{s}\", \"{}\", \"{}\"]\nvote = \"2oo3\"\n{level}",
                sensor_name((i + 1) % SENSORS),
                sensor_name((i + 2) % SENSORS)
            ),
        };
        writeln!(t, "[rules.r{i:03}]\n{body}\n").unwrap();
    }
    t.push_str("[actions.note]\nkind = \"exec\"\nprogram = \"/bin/true\"\n");
    t
}

/// The readings: the 100 sensors in a fixed shuffled order, round after round; values healthy
/// (50 ± 1) except for rare episodes of 8 readings at 95..96 (a crossing, then a clear).
fn reading_stream(len: usize) -> Vec<(u16, f64)> {
    let mut rng = Lcg(0x5eed);
    let mut order: Vec<usize> = (0..SENSORS).collect();
    for i in (1..SENSORS).rev() {
        order.swap(i, rng.next() as usize % (i + 1));
    }
    let mut hot = [0u8; SENSORS];
    let mut stream = Vec::with_capacity(len);
    for n in 0..len {
        let j = order[n % SENSORS];
        if hot[j] == 0 && rng.next().is_multiple_of(2000) {
            hot[j] = 8;
        }
        let v = if hot[j] > 0 {
            hot[j] -= 1;
            95.0 + rng.unit()
        } else {
            49.0 + 2.0 * rng.unit()
        };
        stream.push((j as u16, v));
    }
    stream
}

fn rule_evaluations() {
    let file = RuleFile::parse(&hundred_rules(), Path::new("bench-rules.toml"), &Context::default()).unwrap();
    assert_eq!(file.rules.len(), RULES);
    let names: Vec<String> = (0..SENSORS).map(sensor_name).collect();
    // How many rules watch each sensor: Engine::on_reading calls Rule::evaluate once per
    // (rule, sensor slot) that watches the reading's sensor.
    let watchers: Vec<u64> = names
        .iter()
        .map(|s| file.rules.values().map(|r| r.sensor_list().iter().filter(|x| *x == s).count() as u64).sum())
        .collect();
    let stream = reading_stream(1_000_000);
    let hot = stream.iter().filter(|(_, v)| *v > 90.0).count() as f64 / stream.len() as f64;
    let per_reading = stream.iter().map(|&(j, _)| watchers[j as usize]).sum::<u64>() as f64 / stream.len() as f64;

    let mut eval_rates = Vec::new();
    let mut reading_rates = Vec::new();
    let mut fires_per_s = Vec::new();
    for _ in 0..RUNS {
        let mut engine = Engine::new(&file);
        let mut out = Vec::new();
        let base = Instant::now();
        let (mut idx, mut evals, mut fires) = (0u64, 0u64, 0u64);
        let count_fires = |out: &mut Vec<Outcome>| {
            let n = out.iter().filter(|o| matches!(o, Outcome::Fire { .. })).count() as u64;
            out.clear();
            n
        };
        let t = Instant::now();
        'run: loop {
            for chunk in stream.chunks(4096) {
                for &(j, v) in chunk {
                    let ts = (idx * STEP_NS) as i64;
                    let now = base + Duration::from_nanos(idx * STEP_NS);
                    engine.on_reading(&names[j as usize], ts, v, now, ts, &mut out);
                    evals += watchers[j as usize];
                    if !out.is_empty() {
                        fires += count_fires(&mut out);
                    }
                    idx += 1;
                    // The stage's tick (every 5 ms of the synthetic clock: the 50 ms delays / 10).
                    if idx % 50 == 0 {
                        engine.tick(now, ts, &mut out);
                        fires += count_fires(&mut out);
                    }
                }
                if t.elapsed() >= RUN_TIME {
                    break 'run;
                }
            }
        }
        let secs = t.elapsed().as_secs_f64();
        eval_rates.push(evals as f64 / secs);
        reading_rates.push(idx as f64 / secs);
        fires_per_s.push(fires as f64 / (idx as f64 * STEP_NS as f64 / 1e9));
    }
    println!(
        "rules: {:.1} M rule evaluations/s, {:.1} M readings/s on one thread (Engine::on_reading; 100 rules on 100 sensors: 40 above/clear, 20 k_of_n [3,5], 10 rate_above, 20 on_delay 50ms/off_delay 20ms, 10 2oo3 votes; evaluations counted as the rules watching each reading's sensor = Rule::evaluate calls, {per_reading:.2} per reading; {:.2}% of readings past the trip level, {:.0} fires per synthetic second; tick every 5 ms of the synthetic clock; median of {RUNS} runs of {} s)",
        median(eval_rates) / 1e6,
        median(reading_rates) / 1e6,
        hot * 100.0,
        median(fires_per_s),
        RUN_TIME.as_secs()
    );
}

// ---------------------------------------------------------------------------------------------
// Latency helpers
// ---------------------------------------------------------------------------------------------

/// Crossings per latency run; the first `WARMUP` are not counted.
const CYCLES: usize = 625;
const WARMUP: usize = 25;
/// One crossing per cycle; the clearing reading half a cycle later.
const CYCLE: Duration = Duration::from_millis(20);
const BACKGROUND_PER_S: f64 = 10_000.0;

struct Percentiles {
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

/// Nearest-rank percentiles of latencies in seconds, reported in µs.
fn percentiles(latencies: &[f64]) -> Percentiles {
    let mut v: Vec<f64> = latencies.iter().map(|s| s * 1e6).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
    Percentiles { n: v.len(), p50: rank(0.50), p99: rank(0.99), max: v[v.len() - 1] }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs ({} samples)", self.p50, self.p99, self.max, self.n)
    }
}

/// The 4 slots of a cycle (5 ms apart): crossing, probe (MQTT only), clear, nothing.
#[derive(Clone, Copy, PartialEq)]
enum Slot {
    Cross,
    Probe,
    Clear,
    Idle,
}

fn slot(n: usize) -> Slot {
    [Slot::Cross, Slot::Probe, Slot::Clear, Slot::Idle][n % 4]
}

fn slot_time(start: Instant, n: usize) -> Instant {
    start + CYCLE * n as u32 / 4
}

// ---------------------------------------------------------------------------------------------
// 2a. Through a real pty
// ---------------------------------------------------------------------------------------------

const TRIP_CHANNEL: u16 = 0;
const BACKGROUND_CHANNELS: u16 = 8;

fn reading_frame(channel: u16, seq: u32, value: f32) -> Vec<u8> {
    frame::encode_to_vec(&NodeMessage::Reading { channel, seq, ts_us: None, value }).unwrap()
}

fn raw_pty() -> (File, File, std::path::PathBuf) {
    use nix::{
        pty::openpty,
        sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr},
        unistd::ttyname,
    };
    let pair = openpty(None, None).unwrap();
    let mut t = tcgetattr(&pair.slave).unwrap();
    cfmakeraw(&mut t);
    tcsetattr(&pair.slave, SetArg::TCSANOW, &t).unwrap();
    let path = ttyname(&pair.slave).unwrap();
    (File::from(pair.master), File::from(pair.slave), path)
}

/// Plays the sensor node on a pty master: 10,000 background readings/s on the other channels,
/// written every millisecond, and once per cycle a crossing reading on the trip channel, cleared
/// half a cycle later. A reader thread blocks in `read()` on the master (it returns the moment
/// bytes arrive, like poll) and stamps each `Trip` frame; `wake` makes the far side send a `Ping`,
/// which ends the reader. Returns the write → read latencies.
fn drive_pty(mut master: File, wake: impl FnOnce()) -> Vec<f64> {
    let mut reader_fd = master.try_clone().unwrap();
    let (done_tx, done_rx) = std_mpsc::channel();
    std::thread::spawn(move || {
        let mut decoder = FrameDecoder::<MAX_WIRE_FRAME>::new();
        let mut buf = [0u8; 256];
        let mut arrivals = Vec::with_capacity(CYCLES);
        let mut woken = false;
        while !woken {
            let Ok(n @ 1..) = reader_fd.read(&mut buf) else { break };
            let at = Instant::now();
            decoder.feed::<GatewayMessage>(&buf[..n], |m| match m {
                Ok(GatewayMessage::Trip { .. }) => arrivals.push(at),
                Ok(GatewayMessage::Ping { .. }) => woken = true,
                _ => {}
            });
        }
        done_tx.send(arrivals).unwrap();
    });

    let background: Vec<u16> = (1..=BACKGROUND_CHANNELS).collect();
    let start = Instant::now() + Duration::from_millis(20);
    let (mut sent, mut seq, mut n) = (0u64, 0u32, 0usize);
    let mut crossings = Vec::with_capacity(CYCLES);
    let mut frames = Vec::new();
    while n < 4 * CYCLES {
        let now = Instant::now();
        let due = if now > start { (now.duration_since(start).as_secs_f64() * BACKGROUND_PER_S) as u64 } else { 0 };
        frames.clear();
        while sent < due {
            seq = seq.wrapping_add(1);
            let ch = background[sent as usize % background.len()];
            frames.extend(reading_frame(ch, seq, 20.0 + (sent % 100) as f32 * 0.01));
            sent += 1;
        }
        if !frames.is_empty() {
            master.write_all(&frames).unwrap();
        }
        if Instant::now() >= slot_time(start, n) {
            seq = seq.wrapping_add(1);
            match slot(n) {
                Slot::Cross => {
                    let bytes = reading_frame(TRIP_CHANNEL, seq, 95.0);
                    let at = Instant::now();
                    master.write_all(&bytes).unwrap();
                    crossings.push(at);
                }
                Slot::Clear => master.write_all(&reading_frame(TRIP_CHANNEL, seq, 70.0)).unwrap(),
                Slot::Probe | Slot::Idle => {}
            }
            n += 1;
        }
        let next = slot_time(start, n).min(Instant::now() + Duration::from_millis(1));
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    std::thread::sleep(Duration::from_millis(100));
    wake();
    let arrivals = done_rx.recv_timeout(Duration::from_secs(10)).expect("the reader saw the closing Ping");
    assert_eq!(arrivals.len(), crossings.len(), "one Trip command per crossing");
    let latencies: Vec<f64> =
        crossings.iter().zip(&arrivals).map(|(w, r)| r.duration_since(*w).as_secs_f64()).collect();
    assert!(
        latencies.iter().all(|&l| l > 0.0 && l < CYCLE.as_secs_f64() / 2.0),
        "every Trip arrives after its crossing and before the clear"
    );
    latencies[WARMUP..].to_vec()
}

/// What the agent's serial path does, with no agent: a thread reading the raw slave, decoding
/// frames, answering a crossing on the trip channel with a `Trip` frame (same hysteresis).
fn pty_echo_round_trip() -> Vec<f64> {
    let (master, mut slave, _path) = raw_pty();
    let rule = edgeloop_agent::actions::wire_rule_id("overtemp");
    let mut waker = slave.try_clone().unwrap();
    let echo = std::thread::spawn(move || {
        let mut decoder = FrameDecoder::<MAX_WIRE_FRAME>::new();
        let mut buf = [0u8; 4096];
        let mut out = [0u8; MAX_WIRE_FRAME];
        let mut tripped = false;
        let mut answers = Vec::new();
        // Blocking reads (raw mode, VMIN 1): returns as soon as a byte arrives; EIO once the
        // master is closed.
        while let Ok(n @ 1..) = slave.read(&mut buf) {
            decoder.feed::<NodeMessage>(&buf[..n], |m| {
                if let Ok(NodeMessage::Reading { channel: TRIP_CHANNEL, value, .. }) = m {
                    if !tripped && value > 90.0 {
                        tripped = true;
                        let len = frame::encode(&GatewayMessage::Trip { rule }, &mut out).unwrap();
                        answers.push(out[..len].to_vec());
                    } else if value < 85.0 {
                        tripped = false;
                    }
                }
            });
            for a in answers.drain(..) {
                slave.write_all(&a).unwrap();
            }
        }
    });
    let latencies = drive_pty(master, move || {
        waker.write_all(&frame::encode_to_vec(&GatewayMessage::Ping { seq: 0 }).unwrap()).unwrap()
    });
    echo.join().unwrap();
    latencies
}

async fn agent_with(dir: &Path, sources: &str, rules: &str) -> edgeloop_agent::Agent {
    let rules_path = dir.join("rules.toml");
    std::fs::write(&rules_path, rules).unwrap();
    let text = format!(
        "[agent]\nid = \"bench\"\ndata_dir = \"{}\"\nrules = \"{}\"\n[uplink]\nport = 1\nreconnect_min = \"1s\"\nreconnect_max = \"10s\"\n{sources}",
        dir.join("agent").display(),
        rules_path.display()
    );
    let config = AgentConfig::parse(&text, Path::new("bench.toml")).unwrap();
    edgeloop_agent::start(&config, CancellationToken::new()).await.unwrap()
}

/// The trip rule (a warning with hysteresis: it fires again on each crossing after a clear) and
/// one never-firing rule per background sensor, so those readings are evaluated too.
fn latency_rules(trip_sensor: &str, background: &[String], action: &str) -> String {
    let mut t = format!(
        "[rules.overtemp]\nsensor = \"{trip_sensor}\"\nabove = 90.0\nclear = 85.0\nstale = \"hold\"\nseverity = \"warning\"\nactions = [\"trip\"]\n\n"
    );
    for (i, s) in background.iter().enumerate() {
        writeln!(t, "[rules.bg-{i}]\nsensor = \"{s}\"\nabove = 1000.0\nstale = \"hold\"\nseverity = \"info\"\n")
            .unwrap();
    }
    t.push_str(action);
    t
}

fn serial_trip_latency(rt: &tokio::runtime::Runtime) -> (Percentiles, f64) {
    let dir = tempfile::tempdir().unwrap();
    let (master, slave, path) = raw_pty();
    let mut channels = format!("{TRIP_CHANNEL} = \"temperature\"");
    let mut background = Vec::new();
    for ch in 1..=BACKGROUND_CHANNELS {
        write!(channels, ", {ch} = \"b{ch}\"").unwrap();
        background.push(format!("node.b{ch}"));
    }
    let sources = format!(
        "[sources.node]\nkind = \"serial\"\npath = \"{}\"\nbaud = 921600\nperiod = \"10ms\"\nchannels = {{ {channels} }}\n",
        path.display()
    );
    let rules =
        latency_rules("node.temperature", &background, "[actions.trip]\nkind = \"serial\"\nsource = \"node\"\n");
    let agent = rt.block_on(agent_with(dir.path(), &sources, &rules));
    while !agent.source("node").unwrap().snapshot().up {
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = (agent.stats.snapshot().accepted, Instant::now());
    let latencies = drive_pty(master, || agent.serial("node").unwrap().send(GatewayMessage::Ping { seq: 0 }).unwrap());
    let rate = (agent.stats.snapshot().accepted - before.0) as f64 / before.1.elapsed().as_secs_f64();
    rt.block_on(async {
        agent.shutdown();
        agent.wait().await;
    });
    drop(slave);
    (percentiles(&latencies), rate)
}

// ---------------------------------------------------------------------------------------------
// 2b. Through the embedded MQTT broker
// ---------------------------------------------------------------------------------------------

const ACTUATOR_TOPIC: &str = "plc/press/stop";
const PROBE_TOPIC: &str = "bench/probe";

fn client(id: &str, broker: std::net::SocketAddr) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
    let opts = rumqttc::MqttOptions::new(id, broker.ip().to_string(), broker.port());
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 4096);
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    events.set_network_options(net);
    (client, events)
}

fn crossing_value(k: usize) -> String {
    format!("{:.2}", 91.0 + k as f64 * 0.01)
}

/// A received message: the crossing (or probe) number it answers and when it arrived.
enum Received {
    Trip(usize, Instant),
    Probe(usize, Instant),
}

/// The actuator (a PLC) on its own thread and runtime: subscribes to the actuator topic and the
/// probe topic, and stamps each message as rumqttc hands it over.
fn subscriber(broker: std::net::SocketAddr) -> (std::thread::JoinHandle<Vec<Received>>, std_mpsc::Receiver<()>) {
    let (ready_tx, ready_rx) = std_mpsc::channel();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            use rumqttc::{Event, Packet, QoS};
            let (plc, mut events) = client("bench-plc", broker);
            plc.subscribe(ACTUATOR_TOPIC, QoS::AtLeastOnce).await.unwrap();
            plc.subscribe(PROBE_TOPIC, QoS::AtLeastOnce).await.unwrap();
            let mut got = Vec::with_capacity(2 * CYCLES);
            let mut subacks = 0;
            let deadline = tokio::time::Instant::now() + CYCLE * CYCLES as u32 + Duration::from_secs(15);
            while got.len() < 2 * CYCLES {
                let event = tokio::select! {
                    e = events.poll() => e.unwrap(),
                    _ = tokio::time::sleep_until(deadline) => break,
                };
                match event {
                    Event::Incoming(Packet::Publish(p)) => {
                        let at = Instant::now();
                        if p.topic == PROBE_TOPIC {
                            got.push(Received::Probe(std::str::from_utf8(&p.payload).unwrap().parse().unwrap(), at));
                        } else {
                            let body: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                            let v = body["value"].as_f64().unwrap();
                            got.push(Received::Trip(((v - 91.0) * 100.0).round() as usize, at));
                        }
                    }
                    Event::Incoming(Packet::SubAck(_)) => {
                        subacks += 1;
                        if subacks == 2 {
                            ready_tx.send(()).unwrap();
                        }
                    }
                    _ => {}
                }
            }
            got
        })
    });
    (handle, ready_rx)
}

/// The sensors, on their own thread and runtime: 10,000 background readings/s (QoS 1, 10 every
/// millisecond) and per cycle a crossing, a probe 5 ms later and a clear 10 ms later. Returns
/// when each crossing and probe was handed to `publish`.
fn publisher(broker: std::net::SocketAddr) -> std::thread::JoinHandle<(Vec<Instant>, Vec<Instant>)> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            use rumqttc::QoS;
            let (sensors, mut events) = client("bench-sensors", broker);
            tokio::spawn(async move { while events.poll().await.is_ok() {} });
            let start = Instant::now() + Duration::from_millis(50);
            let (mut sent, mut n) = (0u64, 0usize);
            let (mut crossings, mut probes) = (Vec::with_capacity(CYCLES), Vec::with_capacity(CYCLES));
            while n < 4 * CYCLES {
                let now = Instant::now();
                let due =
                    if now > start { (now.duration_since(start).as_secs_f64() * BACKGROUND_PER_S) as u64 } else { 0 };
                while sent < due {
                    let topic = format!("sensors/m/b{}", 1 + sent % BACKGROUND_CHANNELS as u64);
                    let value = format!("{:.2}", 20.0 + (sent % 100) as f64 * 0.01);
                    sensors.publish(topic, QoS::AtLeastOnce, false, value).await.unwrap();
                    sent += 1;
                }
                if Instant::now() >= slot_time(start, n) {
                    let k = n / 4;
                    match slot(n) {
                        Slot::Cross => {
                            let value = crossing_value(k);
                            crossings.push(Instant::now());
                            sensors.publish("sensors/m/temperature", QoS::AtLeastOnce, false, value).await.unwrap();
                        }
                        Slot::Probe => {
                            probes.push(Instant::now());
                            sensors.publish(PROBE_TOPIC, QoS::AtLeastOnce, false, k.to_string()).await.unwrap();
                        }
                        Slot::Clear => {
                            sensors.publish("sensors/m/temperature", QoS::AtLeastOnce, false, "70.0").await.unwrap();
                        }
                        Slot::Idle => {}
                    }
                    n += 1;
                }
                let next = slot_time(start, n).min(Instant::now() + Duration::from_millis(1));
                tokio::time::sleep_until(next.into()).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            (crossings, probes)
        })
    })
}

/// In the agent's place (`mqtt_trip_latency` with `echo`), shaped like it: one connection
/// subscribed to every sensor topic, and a second one that publishes the crossing to the actuator
/// topic (same hysteresis, same payload). Returns how many sensor messages it received.
fn echo_client(
    broker: std::net::SocketAddr,
) -> (std::thread::JoinHandle<u64>, std_mpsc::Receiver<()>, tokio::sync::oneshot::Sender<()>) {
    let (ready_tx, ready_rx) = std_mpsc::channel();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            use rumqttc::{Event, Packet, QoS};
            let (sensors, mut events) = client("bench-echo-in", broker);
            let (actuator, mut actuator_events) = client("bench-echo-out", broker);
            tokio::spawn(async move { while actuator_events.poll().await.is_ok() {} });
            sensors.subscribe("sensors/+/+", QoS::AtLeastOnce).await.unwrap();
            let (mut tripped, mut seen) = (false, 0u64);
            loop {
                let event = tokio::select! {
                    e = events.poll() => e.unwrap(),
                    _ = &mut stop_rx => break,
                };
                match event {
                    Event::Incoming(Packet::Publish(p)) => {
                        seen += 1;
                        if p.topic != "sensors/m/temperature" {
                            continue;
                        }
                        let v: f64 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
                        if !tripped && v > 90.0 {
                            tripped = true;
                            let body = format!(r#"{{"rule":"overtemp","sensor":"m.temperature","value":{v}}}"#);
                            actuator.try_publish(ACTUATOR_TOPIC, QoS::AtLeastOnce, false, body).unwrap();
                        } else if v < 85.0 {
                            tripped = false;
                        }
                    }
                    Event::Incoming(Packet::SubAck(_)) => ready_tx.send(()).unwrap(),
                    _ => {}
                }
            }
            seen
        })
    });
    (handle, ready_rx, stop_tx)
}

/// Publisher → embedded broker → agent (or, with `echo`, an echo client in its place) → broker →
/// actuator. Returns the end-to-end latencies, the one-hop probe latencies, and the sensor
/// readings/s the agent (or the echo client) took in during the run.
fn mqtt_trip_latency(rt: &tokio::runtime::Runtime, echo: bool) -> (Percentiles, Percentiles, f64) {
    let dir = tempfile::tempdir().unwrap();
    // With `echo`, the agent only runs the broker (same settings): its source listens elsewhere.
    let filter = if echo { "idle/{machine}/{sensor}" } else { "sensors/{machine}/{sensor}" };
    let sources = format!(
        "[sources.line]\nkind = \"mqtt\"\nlisten = \"127.0.0.1:0\"\nperiod = \"10ms\"\n\
         [sources.line.topics.plain]\nfilter = \"{filter}\"\nsensor = \"{{machine}}.{{sensor}}\"\nformat = \"number\"\n"
    );
    let background: Vec<String> = (1..=BACKGROUND_CHANNELS).map(|ch| format!("m.b{ch}")).collect();
    let action = format!("[actions.trip]\nkind = \"mqtt\"\nsource = \"line\"\ntopic = \"{ACTUATOR_TOPIC}\"\n");
    let rules = latency_rules("m.temperature", &background, &action);
    let agent = rt.block_on(agent_with(dir.path(), &sources, &rules));
    let broker = agent.sensor_broker("line").unwrap();
    while !agent.source("line").unwrap().snapshot().up {
        std::thread::sleep(Duration::from_millis(5));
    }
    let echo = echo.then(|| {
        let (handle, ready, stop) = echo_client(broker);
        ready.recv_timeout(Duration::from_secs(10)).expect("the echo client's subscription is acknowledged");
        (handle, stop)
    });
    let (plc, ready) = subscriber(broker);
    ready.recv_timeout(Duration::from_secs(10)).expect("the actuator's subscriptions are acknowledged");
    std::thread::sleep(Duration::from_millis(300)); // the agent's actuator client connects too
    let before = (agent.stats.snapshot().accepted, Instant::now());
    let (crossings, probes) = publisher(broker).join().unwrap();
    let secs = before.1.elapsed().as_secs_f64();
    let received = plc.join().unwrap();
    let rate = match echo {
        Some((handle, stop)) => {
            stop.send(()).unwrap();
            handle.join().unwrap() as f64 / secs
        }
        None => (agent.stats.snapshot().accepted - before.0) as f64 / secs,
    };
    rt.block_on(async {
        agent.shutdown();
        agent.wait().await;
    });

    let mut trips: HashMap<usize, Instant> = HashMap::new();
    let mut probe_at: HashMap<usize, Instant> = HashMap::new();
    for r in received {
        match r {
            Received::Trip(k, at) => assert!(trips.insert(k, at).is_none(), "one trip per crossing ({k})"),
            Received::Probe(k, at) => _ = probe_at.insert(k, at),
        }
    }
    assert_eq!(trips.len(), CYCLES, "every crossing reached the actuator");
    assert_eq!(probe_at.len(), CYCLES, "every probe reached the subscriber");
    let e2e: Vec<f64> = (WARMUP..CYCLES).map(|k| trips[&k].duration_since(crossings[k]).as_secs_f64()).collect();
    let hop: Vec<f64> = (WARMUP..CYCLES).map(|k| probe_at[&k].duration_since(probes[k]).as_secs_f64()).collect();
    (percentiles(&e2e), percentiles(&hop), rate)
}

fn main() {
    rule_evaluations();

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let method = format!(
        "{} crossings 20 ms apart (first {WARMUP} not counted) while 10,000 other readings/s flow",
        CYCLES - WARMUP
    );
    let (pty, rate) = serial_trip_latency(&rt);
    println!(
        "trip latency (pty): end to end {pty}; real agent, serial source on a raw pty, warning rule above 90/clear 85 -> serial Trip command; from write() of the crossing frame on the master to read() (blocking reader thread) of the Trip frame; {method} ({rate:.0} readings/s accepted into the buffer during the run)"
    );
    let echo = percentiles(&pty_echo_round_trip());
    println!(
        "trip latency (pty): no agent, {echo}; the same writer and reader, an echo thread on the slave decodes the frames and answers the crossing with a Trip frame: the pty and thread wake-up cost"
    );
    println!(
        "trip latency (pty): inside the agent ~ p50 {:.0} µs, p99 {:.0} µs (end to end minus the no-agent round trip, percentile by percentile: serial read -> decode -> normalise -> rules -> serial write)",
        pty.p50 - echo.p50,
        pty.p99 - echo.p99
    );

    let (e2e, hop, rate) = mqtt_trip_latency(&rt, false);
    println!(
        "trip latency (mqtt): end to end {e2e}; real agent, MQTT source on its embedded rumqttd, warning rule above 90/clear 85 -> MQTT action (QoS 1) on an actuator topic; from publish() of the crossing (QoS 1) to the actuator's subscriber receiving the action; clients with TCP_NODELAY, the broker's accepted sockets without; {method} ({rate:.0} readings/s accepted into the buffer during the run)"
    );
    println!(
        "trip latency (mqtt): one broker hop, {hop}; publisher -> embedded rumqttd -> the actuator's subscriber, probes 5 ms after each crossing in the same run"
    );
    let (echo, echo_hop, echo_rate) = mqtt_trip_latency(&rt, true);
    println!(
        "trip latency (mqtt): no agent, {echo}; the same broker, publisher and actuator, an echo in the agent's place (one connection subscribed to sensors/+/+, {echo_rate:.0} messages/s; a second one publishing the crossing to the actuator topic, as the agent does) (one broker hop in the same run: {echo_hop})"
    );
    println!(
        "trip latency (mqtt): inside the agent ~ p50 {:.0} µs, p99 {:.0} µs (end to end minus the no-agent round trip, percentile by percentile: MQTT source -> normalise -> rules -> action client)",
        e2e.p50 - echo.p50,
        e2e.p99 - echo.p99
    );
}

//! Source throughput, printed as figures (see BENCHMARKS.md for the method and results):
//!
//! 1. the serial frame decoder alone, in memory;
//! 2. the real agent reading a flood of frames from a real pty (serial source → normalise →
//!    durable buffer), against what a 921600-baud link can carry;
//! 3. the real agent's MQTT source, fed by a publisher through its embedded broker.
//!
//! Run: `cargo bench -p edgeloop-agent --bench sources` (add `taskset -c 0` for one core).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    io::Write,
    path::Path,
    sync::atomic::{AtomicBool, Ordering::Relaxed},
    time::{Duration, Instant},
};

use edgeloop_agent::config::AgentConfig;
use edgeloop_shared::frame::{self, FrameDecoder, MAX_WIRE_FRAME, NodeMessage};
use tokio_util::sync::CancellationToken;

const RUNS: usize = 5;
const LINK_BAUD: f64 = 921_600.0;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn reading(seq: u32) -> NodeMessage {
    NodeMessage::Reading { channel: (seq % 4) as u16, seq, ts_us: None, value: 20.0 + (seq % 100) as f32 * 0.01 }
}

fn decoder_in_memory() {
    let n = 1_000_000u32;
    let mut wire = Vec::new();
    for i in 0..n {
        wire.extend(frame::encode_to_vec(&reading(i)).unwrap());
    }
    let frame_len = wire.len() as f64 / n as f64;
    let mut rates = Vec::new();
    for _ in 0..RUNS {
        let mut d = FrameDecoder::<MAX_WIRE_FRAME>::new();
        let mut ok = 0u32;
        let t = Instant::now();
        for chunk in wire.chunks(4096) {
            d.feed::<NodeMessage>(chunk, |r| ok += r.is_ok() as u32);
        }
        let secs = t.elapsed().as_secs_f64();
        assert_eq!(ok, n);
        rates.push(n as f64 / secs);
    }
    let rate = median(rates);
    let link = LINK_BAUD / 10.0 / frame_len;
    println!(
        "decoder, in memory: {:.2} M frames/s ({:.0} MB/s), {frame_len:.1} bytes/frame; a 921600-baud link carries {link:.0} frames/s -> {:.0}x headroom",
        rate / 1e6,
        rate * frame_len / 1e6,
        rate / link
    );
}

async fn agent(dir: &Path, sources: &str) -> edgeloop_agent::Agent {
    let text = format!(
        "[agent]\nid = \"bench\"\ndata_dir = \"{}\"\n[uplink]\nport = 1\nreconnect_min = \"1s\"\nreconnect_max = \"10s\"\n{sources}",
        dir.join("agent").display()
    );
    let config = AgentConfig::parse(&text, Path::new("bench.toml")).unwrap();
    edgeloop_agent::start(&config, CancellationToken::new()).await.unwrap()
}

async fn serial_through_a_pty() {
    use nix::{
        pty::openpty,
        sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr},
        unistd::ttyname,
    };
    let n = 400_000u32;
    let mut wire = Vec::new();
    for i in 0..n {
        wire.extend(frame::encode_to_vec(&reading(i)).unwrap());
    }
    let frame_len = wire.len() as f64 / n as f64;
    let mut rates = Vec::new();
    for _ in 0..RUNS {
        let dir = tempfile::tempdir().unwrap();
        let pair = openpty(None, None).unwrap();
        let mut t = tcgetattr(&pair.slave).unwrap();
        cfmakeraw(&mut t);
        tcsetattr(&pair.slave, SetArg::TCSANOW, &t).unwrap();
        let path = ttyname(&pair.slave).unwrap();
        let sources = format!(
            "[sources.node]\nkind = \"serial\"\npath = \"{}\"\nbaud = 921600\nchannels = {{ 0 = \"a\", 1 = \"b\", 2 = \"c\", 3 = \"d\" }}\n",
            path.display()
        );
        let agent = agent(dir.path(), &sources).await;
        while !agent.source("node").unwrap().snapshot().up {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut master = std::fs::File::from(pair.master);
        let bytes = wire.clone();
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let writer_done = done.clone();
        let t0 = Instant::now();
        let writer = std::thread::spawn(move || {
            master.write_all(&bytes).unwrap();
            writer_done.store(true, Relaxed);
            master // keep the master open until the reader is done
        });
        // Timed until every reading is durably in the buffer (accepted), not just decoded.
        let deadline = Instant::now() + Duration::from_secs(60);
        while agent.stats.snapshot().accepted < n as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let secs = t0.elapsed().as_secs_f64();
        assert_eq!(agent.stats.snapshot().accepted, n as u64, "every frame accepted");
        rates.push(n as f64 / secs);
        let _master = writer.join().unwrap();
        agent.shutdown();
        agent.wait().await;
        drop(pair.slave);
    }
    let rate = median(rates);
    let link = LINK_BAUD / 10.0 / frame_len;
    println!(
        "serial source, real pty -> normalise -> sled buffer: {rate:.0} frames/s; a 921600-baud 8N1 link carries {link:.0} frames/s of {frame_len:.1} bytes -> valid frames can use {:.0}% of the link",
        (rate / link * 100.0).min(100.0)
    );
}

async fn mqtt_source() {
    use rumqttc::{AsyncClient, MqttOptions, QoS};
    let n = 200_000u64;
    let mut rates = Vec::new();
    for _ in 0..RUNS {
        let dir = tempfile::tempdir().unwrap();
        let sources = "[sources.mq]\nkind = \"mqtt\"\nlisten = \"127.0.0.1:0\"\n[sources.mq.topics.z]\nfilter = \"z/{device}\"\nsensor = \"{device}\"\nformat = \"json\"\nfields = { temperature = \"temperature\", humidity = \"humidity\" }\n";
        let agent = agent(dir.path(), sources).await;
        let broker = agent.sensor_broker("mq").unwrap();
        while !agent.source("mq").unwrap().snapshot().up {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut opts = MqttOptions::new("bench-pub", broker.ip().to_string(), broker.port());
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(opts, 1024);
        tokio::spawn(async move { while events.poll().await.is_ok() {} });
        let t0 = Instant::now();
        let publisher = tokio::spawn(async move {
            for i in 0..n / 2 {
                let payload = format!(r#"{{"temperature":{}.5,"humidity":{},"linkquality":120}}"#, i % 40, i % 100);
                client.publish(format!("z/dev-{}", i % 50), QoS::AtLeastOnce, false, payload).await.unwrap();
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        while agent.stats.snapshot().accepted < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let got = agent.stats.snapshot().accepted;
        let secs = t0.elapsed().as_secs_f64();
        publisher.await.unwrap();
        assert_eq!(got, n, "every reading accepted into the buffer");
        rates.push(n as f64 / secs);
        agent.shutdown();
        agent.wait().await;
    }
    println!(
        "mqtt source, publisher -> embedded broker -> JSON mapping -> normalise -> sled buffer: {:.0} readings/s ({} readings, 2 per message)",
        median(rates),
        n
    );
}

fn main() {
    decoder_in_memory();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(serial_through_a_pty());
    rt.block_on(mqtt_source());
}

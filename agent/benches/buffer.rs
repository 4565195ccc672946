//! The durable buffer, printed as figures (BENCHMARKS.md has the method and results):
//!
//! 1. readings/s accepted into the buffer on one thread: group commits as the intake makes them
//!    (the default 20 ms flush interval at 500,000 readings/s is 10,000 readings a group),
//!    sealed into batches of 2,000, each commit fsynced;
//! 2. bytes per reading on the wire for a realistic slowly varying sensor (0.01 °C, 1 s), and
//!    for noisy full-precision floats, next to line protocol for the same points;
//! 3. disk used against bytes held, after filling and after draining half.
//!
//! `cargo bench -p edgeloop-agent --bench buffer` runs all three. `... -- fill <dir> <GiB>`
//! fills a data dir with a backlog of that size (for the RSS measurement with the real binary).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{path::Path, time::Instant};

use edgeloop_agent::buffer::{Buffer, BufferSettings, Lane, WhenFull};
use edgeloop_shared::{batch::Batch, model::Reading};

const RUNS: usize = 5;
const GROUP: usize = 10_000;
const PER_BATCH: usize = 2_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn settings(max_bytes: u64) -> BufferSettings {
    BufferSettings {
        agent: "bench-gw".into(),
        tags: vec![("site".into(), "plant-a".into())],
        max_bytes,
        when_full: WhenFull::DropOldest,
        cache_bytes: 16 << 20,
        verify_on_open: true,
        drop_report_interval: std::time::Duration::from_secs(10),
    }
}

/// `n` readings of 8 temperature sensors at 1 Hz: 0.01 °C resolution, a slow drift plus a few
/// counts of sensor noise, and ±50 µs of jitter on the timestamps (a gateway's clock).
fn temperatures(start: u64, n: usize) -> Vec<Reading> {
    let mut x = start.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n as u64)
        .map(|i| {
            let k = start + i;
            let (sensor, tick) = (k % 8, k / 8);
            let drift = ((tick as f64) / 600.0 + sensor as f64).sin() * 300.0;
            let counts = (rnd() % 7) as f64 - 3.0;
            let jitter = (rnd() % 100_001) as i64 - 50_000;
            Reading {
                sensor: format!("press-{sensor}.temp"),
                ts_ns: 1_790_000_000_000_000_000 + tick as i64 * 1_000_000_000 + jitter,
                value: (2150.0 + drift.round() + counts) / 100.0,
            }
        })
        .collect()
}

/// Full-precision noise: the worst case for the codec.
fn noise(start: u64, n: usize) -> Vec<Reading> {
    let mut x = start.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n as u64)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = start + i;
            Reading {
                sensor: format!("vib-{}.rms", k % 8),
                ts_ns: 1_790_000_000_000_000_000 + (k / 8) as i64 * 1_000_000,
                value: (x >> 11) as f64 / (1u64 << 53) as f64 * 10.0,
            }
        })
        .collect()
}

fn accept_rate() {
    let mut rates = Vec::new();
    let total = 2_000_000;
    for _ in 0..RUNS {
        let dir = tempfile::tempdir().unwrap();
        let (buf, _) = Buffer::open(dir.path(), settings(u64::MAX)).unwrap();
        let groups: Vec<Vec<Reading>> = (0..total / GROUP).map(|g| temperatures((g * GROUP) as u64, GROUP)).collect();
        let t0 = Instant::now();
        for g in &groups {
            buf.append_blocking(g, vec![], PER_BATCH).unwrap();
        }
        rates.push(total as f64 / t0.elapsed().as_secs_f64());
    }
    println!(
        "accept: {:.0} readings/s into the buffer on one thread (median of {RUNS}; {total} readings, groups of {GROUP}, batches of {PER_BATCH}, fsync per group; runs: {})",
        median(rates.clone()),
        rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ")
    );
}

fn wire_bytes() {
    for (name, readings) in
        [("slowly varying 0.01 °C at 1 s", temperatures(0, 200_000)), ("full-precision noise", noise(0, 200_000))]
    {
        let mut wire = 0;
        let mut line = 0;
        for (i, chunk) in readings.chunks(PER_BATCH).enumerate() {
            let mut b = Batch::from_readings("bench-gw", i as u64, chunk);
            b.tags = vec![("site".into(), "plant-a".into())];
            wire += b.encode().unwrap().len();
            // What the collector writes for the same points.
            line += chunk
                .iter()
                .map(|r| {
                    format!(
                        "readings,agent=bench-gw,sensor={},site=plant-a value={:?} {}\n",
                        r.sensor, r.value, r.ts_ns
                    )
                    .len()
                })
                .sum::<usize>();
        }
        let n = readings.len() as f64;
        println!(
            "wire: {name}: {:.2} bytes/reading in batches of {PER_BATCH} (line protocol: {:.1} bytes/reading)",
            wire as f64 / n,
            line as f64 / n
        );
    }
}

fn disk_use() {
    let dir = tempfile::tempdir().unwrap();
    let (buf, _) = Buffer::open(dir.path(), settings(u64::MAX)).unwrap();
    let total = 4_000_000;
    for g in 0..total / GROUP {
        buf.append_blocking(&noise((g * GROUP) as u64, GROUP), vec![], PER_BATCH).unwrap();
    }
    let t = buf.totals();
    println!(
        "disk: {} readings held in {:.1} MiB of batches, file {:.1} MiB ({:.2}x)",
        t.held_readings,
        t.held_bytes as f64 / 1048576.0,
        buf.disk_bytes() as f64 / 1048576.0,
        buf.disk_bytes() as f64 / t.held_bytes as f64
    );
    let half: Vec<u64> = (0..t.held_batches / 2).collect();
    for chunk in half.chunks(256) {
        buf.remove_blocking(chunk).unwrap();
    }
    for g in 0..total / GROUP / 4 {
        buf.append_blocking(&noise((total + g * GROUP) as u64, GROUP), vec![], PER_BATCH).unwrap();
    }
    let t = buf.totals();
    println!(
        "disk: after acking half and writing a quarter more: {:.1} MiB held, file {:.1} MiB (space is reused, not returned)",
        t.held_bytes as f64 / 1048576.0,
        buf.disk_bytes() as f64 / 1048576.0
    );
}

fn fill(dir: &Path, gib: f64) {
    let (buf, _) = Buffer::open(dir, settings(u64::MAX)).unwrap();
    let target = (gib * (1u64 << 30) as f64) as u64;
    let t0 = Instant::now();
    let mut g = 0u64;
    while buf.totals().held_bytes < target {
        buf.append_blocking(&noise(g * GROUP as u64, GROUP), vec![], PER_BATCH).unwrap();
        g += 1;
    }
    let t = buf.totals();
    println!(
        "filled {}: {} readings, {:.2} GiB of batches, file {:.2} GiB, in {:.0} s",
        dir.display(),
        t.held_readings,
        t.held_bytes as f64 / (1u64 << 30) as f64,
        buf.disk_bytes() as f64 / (1u64 << 30) as f64,
        t0.elapsed().as_secs_f64()
    );
    let first = buf.next_after_blocking(Lane::Telemetry, None, 1).unwrap();
    assert_eq!(first.len(), 1);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.first().map(String::as_str) == Some("fill") {
        fill(Path::new(&args[1]), args[2].parse().unwrap());
        return;
    }
    wire_bytes();
    accept_rate();
    disk_use();
}

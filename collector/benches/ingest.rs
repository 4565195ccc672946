//! The collector's own CPU per point: decoding a batch off the wire (version byte, postcard,
//! codec columns, validation) and encoding its line protocol for InfluxDB, on one thread.
//! BENCHMARKS.md has the figures. Run: `cargo bench -p edgeloop-collector --bench ingest`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use edgeloop_collector::store::line_protocol;
use edgeloop_shared::{batch::Batch, model::Reading};

const RUNS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// 500 batches of 2,000 readings from 8 noisy 0.01 °C sensors, as agents send them.
fn batches() -> Vec<Vec<u8>> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..500u64)
        .map(|b| {
            let readings: Vec<Reading> = (0..2000u64)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let k = b * 2000 + i;
                    Reading {
                        sensor: format!("press-{}.temp", k % 8),
                        ts_ns: 1_790_000_000_000_000_000 + (k / 8) as i64 * 1_000_000_000 + (x % 100_000) as i64,
                        value: (2150 + (x >> 40) as i64 % 7) as f64 / 100.0,
                    }
                })
                .collect();
            let mut batch = Batch::from_readings("bench-gw", b, &readings);
            batch.tags = vec![("site".into(), "plant-a".into())];
            batch.encode().unwrap()
        })
        .collect()
}

fn main() {
    let wire = batches();
    let points = wire.len() as f64 * 2000.0;
    let (mut decode, mut both) = (Vec::new(), Vec::new());
    let mut body = String::with_capacity(2000 * 100);
    for _ in 0..RUNS {
        let t0 = Instant::now();
        for w in &wire {
            std::hint::black_box(Batch::decode(w).unwrap());
        }
        decode.push(points / t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        for w in &wire {
            let batch = Batch::decode(w).unwrap();
            body.clear();
            line_protocol::encode_batch(&mut body, "readings", "events", &batch);
            std::hint::black_box(&body);
        }
        both.push(points / t0.elapsed().as_secs_f64());
    }
    let fmt = |v: &[f64]| v.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ");
    println!("decode: {:.0} points/s (median of {RUNS}: {})", median(decode.clone()), fmt(&decode));
    println!(
        "decode + line protocol: {:.0} points/s on one thread = {:.2} s of CPU per million points (median of {RUNS}: {})",
        median(both.clone()),
        1e6 / median(both.clone()),
        fmt(&both)
    );
}

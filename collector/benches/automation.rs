//! Throughput of the automation engines and their scores on the synthetic run-to-failure set.
//!
//! Run with `cargo bench --bench automation`. Timings are the median of 5 runs; each run feeds one reading to
//! every series (round-robin), looking the series up in a `HashMap<u64, _>` as the collector does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use edgeloop_collector::automation::{
    alerts::{AlertBook, AlertsConfig},
    engine::{Engine, EngineState},
};
use edgeloop_shared::{batch::Batch, model::Reading};
use std::hint::black_box;
use std::time::Instant;

use edgeloop_collector::automation::detect::{DetectorConfig, SeriesDetector};
use edgeloop_collector::automation::monitor;
use edgeloop_collector::automation::predict::{Observed, TrendConfig, TrendEstimator};
use edgeloop_collector::automation::synthetic::{self, AlertPolicy, SplitMix64, SyntheticConfig, SyntheticSet};

const SEC: i64 = 1_000_000_000;
const RUNS: usize = 5;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// ns per reading, median of `RUNS` rounds over all series.
fn time_rounds(n: u64, mut round: impl FnMut(i64)) -> f64 {
    let mut ts = 1_700_000_000 * SEC;
    // One warm-up round (page faults, caches).
    ts += SEC;
    round(ts);
    let runs = (0..RUNS)
        .map(|_| {
            ts += SEC;
            let t = Instant::now();
            round(ts);
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    median(runs)
}

fn main() {
    let dcfg = DetectorConfig { learn_samples: 1, ..DetectorConfig::default() };
    let tcfg = TrendConfig::default();
    let mut rng = SplitMix64::new(1);
    let values: Vec<f64> = (0..4096).map(|_| 2.0 + 0.1 * rng.gaussian()).collect();

    // (a1) detect only, 1,000,000 series.
    let n_detect: u64 = 1_000_000;
    let mut detectors: HashMap<u64, SeriesDetector> = HashMap::with_capacity(n_detect as usize);
    for id in 0..n_detect {
        detectors.insert(id, SeriesDetector::new());
    }
    let ns_detect = time_rounds(n_detect, |ts| {
        for id in 0..n_detect {
            let d = detectors.get_mut(&id).unwrap();
            black_box(d.observe(&dcfg, ts, values[(id & 4095) as usize]));
        }
    });

    // (a2) detect + trend observe, 200,000 condition-indicator series.
    let n_ci: u64 = 200_000;
    let mut both: HashMap<u64, (SeriesDetector, TrendEstimator)> = HashMap::with_capacity(n_ci as usize);
    for id in 0..n_ci {
        both.insert(id, (SeriesDetector::new(), TrendEstimator::new()));
    }
    let ns_both = time_rounds(n_ci, |ts| {
        for id in 0..n_ci {
            let (d, t) = both.get_mut(&id).unwrap();
            let v = values[(id & 4095) as usize];
            black_box(d.observe(&dcfg, ts, v));
            black_box(t.observe(&tcfg, ts, v));
        }
    });

    // (a3) predict on full 48-bucket windows (once per closed bucket per series: amortised over 3600 readings at
    // 1 reading/s with 1 h buckets).
    let n_pred: u64 = 20_000;
    let mut ests: Vec<TrendEstimator> = Vec::with_capacity(n_pred as usize);
    let hour = 3600 * SEC;
    for i in 0..n_pred {
        let mut e = TrendEstimator::new();
        let mut r = SplitMix64::new(i);
        for k in 0..49 * 6 {
            let ts = k * 600 * SEC;
            let t_h = ts as f64 / hour as f64;
            let observed = e.observe(&tcfg, ts, 2.0 + 0.02 * t_h + 0.1 * r.gaussian());
            black_box(observed == Observed::ClosedBucket);
        }
        ests.push(e);
    }
    let now = 49 * hour;
    let mut given = 0u64;
    let ns_predict = {
        let mut runs = Vec::new();
        for _ in 0..RUNS {
            let t = Instant::now();
            given = 0;
            for e in &ests {
                if black_box(e.predict(&tcfg, now, 4.5)).is_some() {
                    given += 1;
                }
            }
            runs.push(t.elapsed().as_nanos() as f64 / n_pred as f64);
        }
        median(runs)
    };
    let ns_ci = ns_both + ns_predict / 3600.0;

    println!("## Throughput (median of {RUNS} runs, one core)");
    println!();
    println!("| path | series | ns/reading | series/core at 1 reading/s |");
    println!("|---|---:|---:|---:|");
    println!("| detect observe + HashMap lookup | {n_detect} | {ns_detect:.1} | {:.0} |", 1e9 / ns_detect);
    println!("| detect + trend observe + lookup | {n_ci} | {ns_both:.1} | {:.0} |", 1e9 / ns_both);
    println!("| predict (48 buckets, Auto), per call | {n_pred} ({given} forecasts) | {ns_predict:.0} per call | - |");
    println!("| detect + trend + predict/3600 (1 h buckets) | - | {ns_ci:.1} | {:.0} |", 1e9 / ns_ci);
    println!();
    println!(
        "state sizes: SeriesDetector {} B, TrendEstimator {} B + up to {} buckets x 32 B on the heap",
        std::mem::size_of::<SeriesDetector>(),
        std::mem::size_of::<TrendEstimator>(),
        tcfg.window_buckets
    );
    println!();

    // (a3) the whole engine as the collector runs it: batches in (one per agent, one reading per
    // series), every series under an anomaly rule, a tenth also under a predict rule, labels,
    // string-keyed state, the alert book. 2,000 agents x 100 sensors = 200,000 series.
    let rules = edgeloop_collector::automation::rules::FleetRules::parse(
        r#"
[rules.anomaly]
kind = "anomaly"
sensors = "*"

[rules.bearing]
kind = "predict"
sensors = "*.vel_rms"
limit = 4.5
horizon = "96h"
"#,
        std::path::Path::new("bench.toml"),
    )
    .unwrap();
    let mut engine = Engine::new(rules, AlertBook::new(AlertsConfig::default()).unwrap(), EngineState::default(), None);
    let (agents, sensors) = (2_000usize, 100usize);
    let names: Vec<String> =
        (0..sensors).map(|s| if s % 10 == 0 { format!("m{s}.vel_rms") } else { format!("m{s}.temp") }).collect();
    let n_engine = (agents * sensors) as u64;
    let mut seq = 0u64;
    let ns_engine = time_rounds(n_engine, |ts| {
        for a in 0..agents {
            seq += 1;
            let readings: Vec<Reading> = names
                .iter()
                .enumerate()
                .map(|(i, s)| Reading { sensor: s.clone(), ts_ns: ts, value: values[(a * sensors + i) & 4095] })
                .collect();
            let batch = Batch::from_readings(&format!("gw-{a}"), seq, &readings);
            engine.on_batch(ts, &batch);
        }
    });
    println!("## The engine, end to end (median of {RUNS} runs, one core)");
    println!();
    println!("| path | series | ns/reading | series/core at 1 reading/s |");
    println!("|---|---:|---:|---:|");
    println!(
        "| Engine::on_batch: anomaly on every series, predict on 1 in 10, batch building included | {n_engine} | \
         {ns_engine:.1} | {:.0} |",
        1e9 / ns_engine
    );
    println!();

    // (b) synthetic set.
    let cfg = SyntheticConfig::default();
    let t = Instant::now();
    let set = SyntheticSet::generate(cfg);
    let eval =
        synthetic::evaluate(&set, &monitor::detector_config(), &monitor::trend_config(), &AlertPolicy::default());
    let elapsed = t.elapsed();
    let h = |ns: Option<i64>| ns.map_or("-".to_string(), |v| format!("{:.1} h", v as f64 / 3.6e12));
    println!(
        "## Synthetic run-to-failure set ({} faulty + {} healthy, 30 days, 10 min sampling, seed {})",
        eval.faulty, eval.healthy, cfg.seed
    );
    println!();
    println!("| figure | value |");
    println!("|---|---:|");
    println!("| median lead of first predictive alert before 4.5 mm/s | {} |", h(eval.median_lead_ns));
    println!("| min lead | {} |", h(eval.min_lead_ns));
    println!("| first-alert interval brackets truth_limit | {:.0} % |", 100.0 * eval.bracketed_fraction);
    println!("| false predictive alerts / 1000 machine-h | {:.3} |", eval.false_predictive_per_1000h);
    println!("| false drift (anomaly) alerts / 1000 machine-h | {:.3} |", eval.false_drift_per_1000h);
    println!("| exposure (machine-h where an alert is false) | {:.0} |", eval.exposure_hours);
    println!("| missed (no alert before trip) | {} |", eval.missed);
    println!("| missed by the predictive alert | {} |", eval.missed_predictive);
    println!("| evaluation wall time | {:.0} ms |", elapsed.as_secs_f64() * 1e3);
    println!();
    println!("| machine | onset->limit | lead | bracketed | first drift alert before limit |");
    println!("|---:|---:|---:|:---:|---:|");
    for (m, o) in set.machines.iter().zip(&eval.machines).filter(|(m, _)| m.faulty) {
        let onset_to_limit = m.truth_limit_ns.zip(m.onset_ns).map(|(l, o)| l - o);
        let drift_lead = o.first_drift_ns.zip(m.truth_limit_ns).map(|(d, l)| l - d);
        println!(
            "| {} | {} | {} | {} | {} |",
            m.id,
            h(onset_to_limit),
            h(o.lead_ns),
            o.bracketed.map_or("-", |b| if b { "yes" } else { "no" }),
            h(drift_lead)
        );
    }
}

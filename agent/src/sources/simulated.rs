//! A simulated machine: spindle temperature warming up towards its running level, and a
//! vibration signal (shaft-rate sine plus noise). Deterministic per source id, so runs repeat.

use std::{sync::atomic::Ordering::Relaxed, time::Duration};

use edgeloop_shared::{clock::now_ns, model::Reading};

use super::SourceContext;
use crate::{config::SimulatedConfig, pipeline::ObservationKind};

/// The signal model, separate from the task so it can be tested without time.
pub struct Machine {
    temperature: String,
    vibration: String,
    rng: u64,
    step: u64,
    period_s: f64,
}

impl Machine {
    pub fn new(source_id: &str, period: Duration) -> Self {
        // FNV-1a of the id: a stable, non-zero seed per source.
        let seed =
            source_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        Self {
            temperature: format!("{source_id}.temperature"),
            vibration: format!("{source_id}.vibration"),
            rng: seed | 1,
            step: 0,
            period_s: period.as_secs_f64(),
        }
    }

    /// Sensor ids this machine produces.
    pub fn sensors(&self) -> [&str; 2] {
        [&self.temperature, &self.vibration]
    }

    fn noise(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }

    /// The readings of one period, stamped `ts_ns`.
    pub fn sample(&mut self, ts_ns: i64) -> [Reading; 2] {
        let t = self.step as f64 * self.period_s;
        self.step += 1;
        let temperature = 22.0 + 38.0 * (1.0 - (-t / 600.0).exp()) + 0.2 * self.noise();
        // 24.7 Hz shaft rate, 3.5 mm/s-class amplitude in g, plus broadband noise.
        let vibration = 0.35 * (2.0 * std::f64::consts::PI * 24.7 * t).sin() + 0.05 * self.noise();
        [
            Reading { sensor: self.temperature.clone(), ts_ns, value: temperature },
            Reading { sensor: self.vibration.clone(), ts_ns, value: vibration },
        ]
    }
}

/// Runs the machine until its limit or shutdown. Readings carry their own (synthetic) timestamps.
pub async fn run(ctx: SourceContext, cfg: SimulatedConfig) {
    let period = cfg.period.0;
    let period_ns = period.as_nanos() as i64;
    let mut machine = Machine::new(&ctx.id, period);
    let limit = cfg.limit.unwrap_or(u64::MAX);
    // Fast mode ends its timestamps "now", so nothing is in the future and every timestamp of a
    // sensor is distinct (the database identifies a point by agent, sensor and timestamp).
    let steps = limit.div_ceil(2);
    let mut ts = if cfg.realtime || cfg.limit.is_none() {
        now_ns()
    } else {
        now_ns().saturating_sub(period_ns.saturating_mul(steps.min(i64::MAX as u64) as i64))
    };
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    ctx.counters.up.store(true, Relaxed);
    tracing::info!(source = %ctx.id, sensors = ?machine.sensors(), ?period, realtime = cfg.realtime, "simulated source started");
    'run: while sent < limit {
        if cfg.realtime {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = ctx.shutdown.cancelled() => break,
            }
            ts = now_ns().max(ts + 1);
        } else {
            ts += period_ns;
        }
        ctx.counters.messages.fetch_add(1, Relaxed);
        for reading in machine.sample(ts) {
            if sent == limit {
                break;
            }
            let kind = ObservationKind::Value { value: reading.value, device_ts_ns: Some(ts), received_ns: ts };
            if !ctx.emit(reading.sensor, kind).await {
                break 'run;
            }
            sent += 1;
        }
    }
    ctx.counters.up.store(false, Relaxed);
    tracing::info!(source = %ctx.id, sent, "simulated source finished");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_warms_up_and_vibration_oscillates() {
        let mut m = Machine::new("press-3", Duration::from_millis(10));
        let first = m.sample(1);
        assert_eq!(first[0].sensor, "press-3.temperature");
        assert!((first[0].value - 22.0).abs() < 0.2);
        let mut vib = Vec::new();
        let mut last_temp = 0.0;
        for i in 0..100_000 {
            let [t, v] = m.sample(i);
            vib.push(v.value);
            last_temp = t.value;
        }
        assert!(last_temp > 50.0, "after 1000 s the spindle runs warm: {last_temp}");
        let rms = (vib.iter().map(|v| v * v).sum::<f64>() / vib.len() as f64).sqrt();
        assert!((rms - 0.35 / 2f64.sqrt()).abs() < 0.02, "vibration RMS {rms}");
    }
}

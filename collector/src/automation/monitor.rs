//! One condition indicator (velocity RMS, band energy, a temperature) watched the way the collector
//! watches it: every reading through the anomaly detector, glitches kept out of the trend, level
//! steps (a drift the detector confirms) taken out of the trend's history, and at every closed
//! bucket a forecast to the limit that must hold for `confirmations` buckets in a row before the
//! predictive alert fires. The engine runs one per predict rule and series; the synthetic
//! evaluation (`synthetic::evaluate`) runs the very same code with the very same tuning
//! ([`detector_config`], [`trend_config`]), so the figures in BENCHMARKS.md are the product's.

use serde::{Deserialize, Serialize};

use super::{
    detect::{DetectorConfig, SeriesDetector, Verdict},
    predict::{Forecast, Observed, TrendConfig, TrendEstimator},
};

/// The detector a predict rule runs on its condition indicator, tuned for readings every ~10
/// minutes (velocity RMS, band energy): `alpha = 0.1` (~100 min memory) follows the daily load
/// cycle closely enough that it does not read as a drift; one day of learning (144 readings)
/// covers a full cycle; `min_sigma = 0.01 mm/s` is a typical sensor resolution.
pub fn detector_config() -> DetectorConfig {
    DetectorConfig { alpha: 0.1, learn_samples: 144, min_sigma: 0.01, ..DetectorConfig::default() }
}

/// The trend tuning the synthetic evaluation scores: the [`TrendConfig`] defaults (1 h buckets,
/// 48 h window, 24 buckets minimum, Auto, 0.9 confidence, 0.995 significance). A predict rule
/// sets its own bucket, window and confidence over them ([`MonitorParams::new`]).
pub fn trend_config() -> TrendConfig {
    TrendConfig::default()
}

/// How a predict rule turns forecasts into an alert.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MonitorParams {
    pub detector: DetectorConfig,
    pub trend: TrendConfig,
    /// The level the forecast aims at.
    pub limit: f64,
    /// Alert when the forecast's latest plausible crossing (`high_ns`) is within this of the reading.
    pub horizon_ns: i64,
    /// Bucket closes in a row the condition must hold for.
    pub confirmations: u32,
}

impl MonitorParams {
    /// A predict rule's parameters over the tuned defaults ([`detector_config`]).
    pub fn new(limit: f64, horizon_ns: i64, bucket_ns: i64, window_ns: i64, confidence: f64) -> Self {
        let window_buckets = (window_ns / bucket_ns.max(1)).clamp(4, 1024) as u32;
        Self {
            detector: detector_config(),
            trend: TrendConfig {
                bucket_ns,
                window_buckets,
                min_buckets: (window_buckets / 2).max(4),
                confidence,
                // The healthy level's memory: a week at hourly buckets, the same 168 buckets at any scale.
                baseline_tau_ns: bucket_ns.saturating_mul(168),
                ..TrendConfig::default()
            },
            limit,
            horizon_ns,
            confirmations: 2,
        }
    }
}

/// What one reading did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub verdict: Verdict,
    /// At a closed bucket: `Some(Some(forecast))` when the predictive alert holds (confirmed),
    /// `Some(None)` when it does not; `None` between bucket closes.
    pub predictive: Option<Option<Forecast>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IndicatorMonitor {
    detector: SeriesDetector,
    trend: TrendEstimator,
    streak: u32,
}

impl IndicatorMonitor {
    pub fn step(&mut self, p: &MonitorParams, ts_ns: i64, value: f64) -> Step {
        let verdict = self.detector.observe(&p.detector, ts_ns, value);
        match verdict {
            // A glitch is not the machine: keep it out of the trend.
            Verdict::Ignored(_) | Verdict::Spike { .. } => return Step { verdict, predictive: None },
            // A level step (new product, new load) is not wear: move the history with it. But a rise inside a
            // window that already rises is the wear itself, and moving the history would erase it.
            Verdict::Drift { shift, .. } if !self.trend.is_rising(&p.trend, ts_ns) => self.trend.shift_level(shift),
            _ => {}
        }
        if self.trend.observe(&p.trend, ts_ns, value) != Observed::ClosedBucket {
            return Step { verdict, predictive: None };
        }
        let forecast =
            self.trend.predict(&p.trend, ts_ns, p.limit).filter(|f| f.high_ns.saturating_sub(ts_ns) <= p.horizon_ns);
        let confirmed = match forecast {
            Some(f) => {
                self.streak = self.streak.saturating_add(1);
                (self.streak >= p.confirmations.max(1)).then_some(f)
            }
            None => {
                self.streak = 0;
                None
            }
        };
        Step { verdict, predictive: Some(confirmed) }
    }

    /// Whether the series' baseline is at or above `level` (an upward drift worth an alert).
    pub fn baseline(&self) -> f64 {
        self.detector.mean()
    }

    /// The engine's view: `Some(change)` at a closed bucket (see [`Step::predictive`]).
    pub fn observe(&mut self, p: &MonitorParams, ts_ns: i64, value: f64) -> Option<Option<Forecast>> {
        self.step(p, ts_ns, value).predictive
    }
}

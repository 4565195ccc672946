//! Features computed from a window of raw samples, for rules that cannot judge one reading alone.
//!
//! Vibration is the first: a sensor streams acceleration at kHz rates, and what a rule needs is
//! a handful of numbers per window (RMS, crest factor, kurtosis, velocity RMS, energy in bands
//! around bearing defect frequencies) and where the velocity stands against ISO 10816-3. Every
//! function here is pure and synchronous; the analyzer owns its scratch buffers so that a source
//! can run it per window without allocating.
//!
//! # Layout
//! - [`vibration`]: [`VibrationConfig`] and the reusable [`VibrationAnalyzer`] → [`VibrationFeatures`].
//! - [`fft`]: the radix-2 real FFT the analyzer uses.
//! - [`bearing`]: bearing defect frequencies (BPFO, BPFI, BSF, FTF) from geometry, and bands around them.
//! - [`iso10816`]: ISO 10816-3 / 20816-3 evaluation zones A–D from velocity RMS.

pub mod bearing;
pub mod fft;
pub mod iso10816;
pub mod vibration;

pub use bearing::{BearingGeometry, DefectFrequencies};
pub use iso10816::{Foundation, MachineGroup, Zone, ZoneBoundaries};
pub use vibration::{Band, BandLevel, VibrationAnalyzer, VibrationConfig, VibrationFeatures};

/// Why a feature could not be set up or computed. Each variant carries the value at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FeatureError {
    #[error("sample rate {0} Hz is not a positive finite number")]
    SampleRate(f64),
    #[error("window of {0} samples is not a power of two of at least 2")]
    WindowSize(usize),
    #[error("window takes {expected} samples but {found} were given")]
    WindowLength { expected: usize, found: usize },
    #[error("sample {index} is {value}, not a finite number")]
    NonFinite { index: usize, value: f64 },
    #[error("band {name:?} [{low_hz}, {high_hz}) Hz is not a range of finite frequencies with 0 <= low < high")]
    BandRange { name: String, low_hz: f64, high_hz: f64 },
    #[error(
        "band {name:?} reaches {high_hz} Hz, above the Nyquist frequency {nyquist_hz} Hz; lower it or sample faster"
    )]
    BeyondNyquist { name: String, high_hz: f64, nyquist_hz: f64 },
    #[error(
        "band {name:?} [{low_hz}, {high_hz}) Hz holds no FFT bin at {resolution_hz} Hz spacing; widen it or lengthen the window"
    )]
    EmptyBand { name: String, low_hz: f64, high_hz: f64, resolution_hz: f64 },
    #[error("band {0:?} is configured twice")]
    DuplicateBand(String),
    #[error(
        "velocity band starts at {0} Hz; integrating to velocity divides by frequency, so it must start above 0 Hz"
    )]
    VelocityFromDc(f64),
    #[error("bearing has no rolling elements")]
    NoBalls,
    #[error("bearing ball diameter {ball_mm} mm must be positive and below the pitch diameter {pitch_mm} mm")]
    BearingDiameters { ball_mm: f64, pitch_mm: f64 },
    #[error("bearing contact angle {0}° is outside [0°, 90°)")]
    ContactAngle(f64),
    #[error("shaft speed {0} Hz is not a positive finite number")]
    ShaftSpeed(f64),
}

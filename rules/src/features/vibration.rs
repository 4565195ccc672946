//! Vibration features of one window of acceleration samples (in g).
//!
//! Time domain, after removing the mean (the sensor's DC offset and gravity on its axis):
//! RMS, peak, peak-to-peak, crest factor and kurtosis. Frequency domain, from one Hann-windowed
//! FFT of the same de-meaned window: velocity RMS over [`VibrationConfig::velocity_band_hz`]
//! (ISO 10816-3 uses 10–1000 Hz) and acceleration RMS in each configured [`Band`].
//!
//! # Spectral scaling
//! The one-sided power of bin `k` is `c·|X[k]|² / (N·Σw²)` with `c = 2` except at DC, where `w` is
//! the Hann window. Dividing by `Σw²` (rather than `(Σw)²`, the amplitude correction) makes the sum
//! of bins over a band the band's mean square, whatever the leakage spreads a tone over: a tone
//! fully inside a band reads its true RMS, and the sum over all bins reads the time-domain RMS.
//! Velocity integrates per bin, dividing bin `k`'s acceleration by `2π·f_k`. Because leakage puts
//! a tone's energy in the neighbouring bins at `f ± Δf`, and those are weighted by `1/f²`, a tone
//! only a few bins above DC reads high: +0.8 % at 8 bins, +3.4 % at 4 bins (`Δf = rate / window`).
//! And the leakage of a tone within a bin or two of the band's lower edge partly falls below it:
//! at 25.6 kHz with 4096 samples (`Δf` = 6.25 Hz) a 12 Hz tone reads 19 % low, a 20 Hz one 6 %
//! high. For machines whose running speed is near ISO 10816's 10 Hz edge, use a longer window
//! (16384 samples gives `Δf` = 1.56 Hz).
//!
//! # Band edges
//! A band `[low, high)` holds the bins with `low <= f_k < high`; the Nyquist bin is never in a
//! band, since a band may reach the Nyquist frequency but not include it.

use std::ops::Range;

use super::{FeatureError, fft::RealFft};

/// Standard gravity, to turn g into m/s².
pub const STANDARD_GRAVITY_M_S2: f64 = 9.80665;

/// A frequency band `[low_hz, high_hz)` whose acceleration RMS is reported under `name`.
#[derive(Debug, Clone, PartialEq)]
pub struct Band {
    pub name: String,
    pub low_hz: f64,
    pub high_hz: f64,
}

impl Band {
    pub fn new(name: impl Into<String>, low_hz: f64, high_hz: f64) -> Self {
        Self { name: name.into(), low_hz, high_hz }
    }
}

/// How to analyse a vibration channel.
#[derive(Debug, Clone, PartialEq)]
pub struct VibrationConfig {
    pub sample_rate_hz: f64,
    /// Samples per window; a power of two. The frequency resolution is `sample_rate_hz / window`.
    pub window: usize,
    /// Band `[low, high)` of the velocity RMS, in Hz.
    pub velocity_band_hz: (f64, f64),
    pub bands: Vec<Band>,
}

impl VibrationConfig {
    /// ISO 10816-3's measurement band for machines running above 600 rpm (below it the standard
    /// uses 2–1000 Hz).
    pub const DEFAULT_VELOCITY_BAND_HZ: (f64, f64) = (10.0, 1000.0);

    /// The default velocity band and no extra bands.
    pub fn new(sample_rate_hz: f64, window: usize) -> Self {
        Self { sample_rate_hz, window, velocity_band_hz: Self::DEFAULT_VELOCITY_BAND_HZ, bands: Vec::new() }
    }

    pub fn with_band(mut self, band: Band) -> Self {
        self.bands.push(band);
        self
    }

    pub fn with_bands(mut self, bands: impl IntoIterator<Item = Band>) -> Self {
        self.bands.extend(bands);
        self
    }
}

/// One configured band's level in the last window.
#[derive(Debug, Clone, PartialEq)]
pub struct BandLevel {
    pub name: String,
    pub rms_g: f64,
}

/// The features of one window. `bands` borrows the analyzer's buffer, in configuration order;
/// copy what you keep before analysing the next window.
///
/// A window whose samples are all equal (a stuck or disconnected sensor) has no shape: every
/// field is then 0, including `crest_factor` and `kurtosis`, rather than NaN that would poison
/// whatever compares against it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VibrationFeatures<'a> {
    /// RMS acceleration about the mean, in g.
    pub rms_g: f64,
    /// The same in m/s² (standard gravity).
    pub rms_m_s2: f64,
    /// Largest distance from the mean, in g.
    pub peak_g: f64,
    /// Largest sample minus smallest, in g.
    pub peak_to_peak_g: f64,
    /// `peak_g / rms_g`: √2 for a sine, rising with impacts.
    pub crest_factor: f64,
    /// Plain (Pearson, not excess) kurtosis `m4 / m2²` with population moments: 1.5 for a sine,
    /// 3 for Gaussian noise, well above 3 with bearing impacts.
    pub kurtosis: f64,
    /// Velocity RMS in mm/s over the velocity band, integrated in the frequency domain.
    pub velocity_rms_mm_s: f64,
    pub bands: &'a [BandLevel],
}

impl VibrationFeatures<'_> {
    /// The acceleration RMS in g of the band named `name`.
    pub fn band_rms_g(&self, name: &str) -> Option<f64> {
        self.bands.iter().find(|b| b.name == name).map(|b| b.rms_g)
    }
}

/// Analyses windows of one channel. Planned once from a [`VibrationConfig`]; after that,
/// [`analyze`](Self::analyze) reuses its buffers and allocates nothing.
#[derive(Debug, Clone)]
pub struct VibrationAnalyzer {
    config: VibrationConfig,
    fft: RealFft,
    hann: Vec<f64>,
    windowed: Vec<f64>,
    /// `1 / (N·Σw²)`: turns `|X[k]|²` into mean square (see the module docs).
    power_scale: f64,
    velocity_bins: Range<usize>,
    /// `(1000·g / 2πf_k)²` per velocity bin: g² → (mm/s)².
    velocity_weights: Vec<f64>,
    band_bins: Vec<Range<usize>>,
    levels: Vec<BandLevel>,
}

impl VibrationAnalyzer {
    /// Checks `config` and plans the analysis.
    ///
    /// # Errors
    /// A sample rate that is not positive and finite, a window that is not a power of two, a
    /// velocity band starting at 0 Hz, or a band (named in the error) that is not an increasing
    /// finite range, reaches above Nyquist, holds no FFT bin, or repeats another band's name.
    pub fn new(config: VibrationConfig) -> Result<Self, FeatureError> {
        let rate = config.sample_rate_hz;
        if !(rate.is_finite() && rate > 0.0) {
            return Err(FeatureError::SampleRate(rate));
        }
        let fft = RealFft::new(config.window)?;
        let n = config.window;
        let (v_low, v_high) = config.velocity_band_hz;
        if v_low == 0.0 {
            return Err(FeatureError::VelocityFromDc(v_low));
        }
        let velocity_bins = bins(&Band::new("velocity", v_low, v_high), rate, n)?;
        let velocity_weights = velocity_bins
            .clone()
            .map(|k| {
                let omega = 2.0 * std::f64::consts::PI * bin_hz(k, rate, n);
                let mm_s_per_g = 1000.0 * STANDARD_GRAVITY_M_S2 / omega;
                mm_s_per_g * mm_s_per_g
            })
            .collect();
        let mut band_bins = Vec::with_capacity(config.bands.len());
        for (i, band) in config.bands.iter().enumerate() {
            if config.bands[..i].iter().any(|b| b.name == band.name) {
                return Err(FeatureError::DuplicateBand(band.name.clone()));
            }
            band_bins.push(bins(band, rate, n)?);
        }
        // Periodic Hann (denominator N, not N-1): the DFT sees it as exactly three bins wide.
        let hann: Vec<f64> =
            (0..n).map(|j| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * j as f64 / n as f64).cos()).collect();
        let energy: f64 = hann.iter().map(|w| w * w).sum();
        let levels = config.bands.iter().map(|b| BandLevel { name: b.name.clone(), rms_g: 0.0 }).collect();
        Ok(Self {
            fft,
            hann,
            windowed: vec![0.0; n],
            power_scale: 1.0 / (n as f64 * energy),
            velocity_bins,
            velocity_weights,
            band_bins,
            levels,
            config,
        })
    }

    pub fn config(&self) -> &VibrationConfig {
        &self.config
    }

    /// The spacing of FFT bins, in Hz.
    pub fn resolution_hz(&self) -> f64 {
        self.config.sample_rate_hz / self.config.window as f64
    }

    /// Computes the features of one window of acceleration samples in g (`f32` or `f64`).
    ///
    /// # Errors
    /// [`FeatureError::WindowLength`] when `samples_g` is not exactly one window long, and
    /// [`FeatureError::NonFinite`] (with its index) for the first NaN or infinite sample.
    pub fn analyze<S: Copy + Into<f64>>(&mut self, samples_g: &[S]) -> Result<VibrationFeatures<'_>, FeatureError> {
        let n = self.config.window;
        if samples_g.len() != n {
            return Err(FeatureError::WindowLength { expected: n, found: samples_g.len() });
        }
        let (mut sum, mut min, mut max) = (0.0, f64::INFINITY, f64::NEG_INFINITY);
        for (index, &s) in samples_g.iter().enumerate() {
            let value: f64 = s.into();
            if !value.is_finite() {
                return Err(FeatureError::NonFinite { index, value });
            }
            sum += value;
            min = min.min(value);
            max = max.max(value);
        }
        let mean = sum / n as f64;

        // A second pass about the mean, rather than raw power sums, keeps the moments exact when
        // a 1 g gravity offset dwarfs a milli-g vibration.
        let (mut m2, mut m4) = (0.0, 0.0);
        for ((out, &s), &w) in self.windowed.iter_mut().zip(samples_g).zip(&self.hann) {
            let d = s.into() - mean;
            let d2 = d * d;
            m2 += d2;
            m4 += d2 * d2;
            *out = d * w;
        }
        m2 /= n as f64;
        m4 /= n as f64;
        let rms = m2.sqrt();
        // Equal samples still leave rounding residue about the computed mean; treat anything at
        // that scale as a flat line rather than report the shape of rounding noise.
        if rms <= FLAT_RELATIVE * mean.abs() || rms == 0.0 {
            for level in &mut self.levels {
                level.rms_g = 0.0;
            }
            return Ok(VibrationFeatures {
                rms_g: 0.0,
                rms_m_s2: 0.0,
                peak_g: 0.0,
                peak_to_peak_g: 0.0,
                crest_factor: 0.0,
                kurtosis: 0.0,
                velocity_rms_mm_s: 0.0,
                bands: &self.levels,
            });
        }
        let peak = (max - mean).max(mean - min);

        let spectrum = self.fft.process(&self.windowed)?;
        let one_sided = 2.0 * self.power_scale;
        let velocity_ms: f64 = spectrum
            .get(self.velocity_bins.clone())
            .unwrap_or_default()
            .iter()
            .zip(&self.velocity_weights)
            .map(|(x, weight)| x.norm_sqr() * weight)
            .sum::<f64>()
            * one_sided;
        for (level, range) in self.levels.iter_mut().zip(&self.band_bins) {
            let bins = spectrum.get(range.clone()).unwrap_or_default();
            let mut power = bins.iter().map(|x| x.norm_sqr()).sum::<f64>() * one_sided;
            // DC has no mirror image in the negative frequencies, so it counts once.
            if range.start == 0
                && let Some(dc) = bins.first()
            {
                power -= dc.norm_sqr() * self.power_scale;
            }
            level.rms_g = power.max(0.0).sqrt();
        }

        Ok(VibrationFeatures {
            rms_g: rms,
            rms_m_s2: rms * STANDARD_GRAVITY_M_S2,
            peak_g: peak,
            peak_to_peak_g: max - min,
            crest_factor: peak / rms,
            kurtosis: m4 / (m2 * m2),
            velocity_rms_mm_s: velocity_ms.sqrt(),
            bands: &self.levels,
        })
    }
}

/// Relative spread below which a window counts as a flat line; far above the rounding of a mean
/// over a large window (~window·ε), far below any real sensor's noise floor.
const FLAT_RELATIVE: f64 = 1e-9;

fn bin_hz(k: usize, rate: f64, n: usize) -> f64 {
    k as f64 * rate / n as f64
}

/// The bins `k` with `low <= f_k < high`, after checking the band fits the spectrum.
fn bins(band: &Band, rate: f64, n: usize) -> Result<Range<usize>, FeatureError> {
    let Band { name, low_hz: low, high_hz: high } = band;
    let (low, high) = (*low, *high);
    if !(low.is_finite() && high.is_finite() && low >= 0.0 && low < high) {
        return Err(FeatureError::BandRange { name: name.clone(), low_hz: low, high_hz: high });
    }
    let nyquist = rate / 2.0;
    if high > nyquist {
        return Err(FeatureError::BeyondNyquist { name: name.clone(), high_hz: high, nyquist_hz: nyquist });
    }
    let in_band = |k: &usize| {
        let f = bin_hz(*k, rate, n);
        f >= low && f < high
    };
    let first = (0..=n / 2).find(in_band);
    let last = (0..=n / 2).rev().find(in_band);
    match (first, last) {
        (Some(first), Some(last)) => Ok(first..last + 1),
        _ => Err(FeatureError::EmptyBand {
            name: name.clone(),
            low_hz: low,
            high_hz: high,
            resolution_hz: rate / n as f64,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::f64::consts::{PI, SQRT_2};

    use super::*;

    const RATE: f64 = 25_600.0;
    const N: usize = 4096;

    fn sine(amplitude: f64, hz: f64, n: usize, rate: f64) -> Vec<f64> {
        (0..n).map(|j| amplitude * (2.0 * PI * hz * j as f64 / rate).sin()).collect()
    }

    /// SplitMix64: deterministic, so the statistical tests give the same answer every run.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in (0, 1]: never 0, so the logarithm below is finite.
        fn uniform(&mut self) -> f64 {
            ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
        }

        /// Box–Muller.
        fn gaussian(&mut self) -> f64 {
            let (u1, u2) = (self.uniform(), self.uniform());
            (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
        }
    }

    fn analyzer(config: VibrationConfig) -> VibrationAnalyzer {
        VibrationAnalyzer::new(config).unwrap()
    }

    fn close(got: f64, want: f64, rel: f64) -> bool {
        (got - want).abs() <= rel * want.abs()
    }

    #[test]
    fn a_sine_has_the_textbook_shape() {
        // 100 Hz at 25.6 kHz: 256 samples per cycle, 16 whole cycles, a sample on each crest.
        let a = 2.0;
        let mut an = analyzer(VibrationConfig::new(RATE, N));
        let f = an.analyze(&sine(a, 100.0, N, RATE)).unwrap();
        assert!(close(f.rms_g, a / SQRT_2, 1e-9), "rms {}", f.rms_g);
        assert!(close(f.rms_m_s2, a / SQRT_2 * 9.80665, 1e-9), "rms m/s² {}", f.rms_m_s2);
        assert!(close(f.peak_g, a, 1e-9), "peak {}", f.peak_g);
        assert!(close(f.peak_to_peak_g, 2.0 * a, 1e-9), "p-p {}", f.peak_to_peak_g);
        assert!(close(f.crest_factor, SQRT_2, 1e-9), "crest {}", f.crest_factor);
        assert!(close(f.kurtosis, 1.5, 1e-9), "kurtosis {}", f.kurtosis);
    }

    #[test]
    fn the_mean_is_removed_before_anything_else() {
        let mut an = analyzer(VibrationConfig::new(RATE, N).with_band(Band::new("low", 0.0, 50.0)));
        let plain = sine(0.5, 100.0, N, RATE);
        let offset: Vec<f64> = plain.iter().map(|x| x + 1.0).collect();
        let (rms, peak, v) = {
            let f = an.analyze(&plain).unwrap();
            (f.rms_g, f.peak_g, f.velocity_rms_mm_s)
        };
        let f = an.analyze(&offset).unwrap();
        assert!(close(f.rms_g, rms, 1e-9) && close(f.peak_g, peak, 1e-9), "{f:?}");
        assert!(close(f.velocity_rms_mm_s, v, 1e-6), "{f:?}");
        // Gravity on the axis must not show up as low-frequency energy.
        assert!(f.band_rms_g("low").unwrap() < 1e-9, "{f:?}");
    }

    #[test]
    fn f32_samples_give_the_f64_answer() {
        let x = sine(1.0, 250.0, N, RATE);
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let mut an = analyzer(VibrationConfig::new(RATE, N));
        let want = an.analyze(&x).unwrap().velocity_rms_mm_s;
        let got = an.analyze(&x32).unwrap().velocity_rms_mm_s;
        assert!(close(got, want, 1e-6), "{got} vs {want}");
    }

    /// Acceleration in g of a sine whose velocity amplitude is `v_mm_s` at `hz`.
    fn velocity_sine(v_mm_s: f64, hz: f64) -> Vec<f64> {
        let accel_g = 2.0 * PI * hz * v_mm_s / 1000.0 / STANDARD_GRAVITY_M_S2;
        sine(accel_g, hz, N, RATE)
    }

    #[test]
    fn velocity_of_a_bin_centred_tone_is_within_2_percent() {
        let mut an = analyzer(VibrationConfig::new(RATE, N));
        let df = an.resolution_hz();
        for bin in [8.0, 16.0, 29.0, 80.0, 150.0] {
            let hz = bin * df;
            let v = 4.5;
            let got = an.analyze(&velocity_sine(v, hz)).unwrap().velocity_rms_mm_s;
            assert!(close(got, v / SQRT_2, 0.02), "{hz} Hz: {got} mm/s, want {}", v / SQRT_2);
        }
    }

    #[test]
    fn velocity_of_an_off_bin_tone_is_within_5_percent() {
        let mut an = analyzer(VibrationConfig::new(RATE, N));
        for hz in [53.1, 117.3, 333.3, 777.7, 990.0] {
            let v = 7.1;
            let got = an.analyze(&velocity_sine(v, hz)).unwrap().velocity_rms_mm_s;
            assert!(close(got, v / SQRT_2, 0.05), "{hz} Hz: {got} mm/s, want {}", v / SQRT_2);
        }
    }

    #[test]
    fn velocity_ignores_tones_outside_its_band() {
        let mut an = analyzer(VibrationConfig::new(RATE, N));
        let inside = an.analyze(&velocity_sine(1.0, 200.0)).unwrap().velocity_rms_mm_s;
        let above = an.analyze(&velocity_sine(1.0, 3000.0)).unwrap().velocity_rms_mm_s;
        assert!(above < 0.01 * inside, "3 kHz tone read {above} mm/s against {inside} in band");
    }

    #[test]
    fn two_tones_land_in_their_own_bands() {
        let config = VibrationConfig::new(RATE, N).with_bands([
            Band::new("low", 80.0, 130.0),
            Band::new("high", 900.0, 1100.0),
            Band::new("empty", 3000.0, 4000.0),
        ]);
        let mut an = analyzer(config);
        let (a_low, a_high) = (1.0, 0.25);
        let x: Vec<f64> =
            sine(a_low, 103.3, N, RATE).iter().zip(sine(a_high, 1000.0, N, RATE)).map(|(a, b)| a + b).collect();
        let f = an.analyze(&x).unwrap();
        let (low, high, empty) =
            (f.band_rms_g("low").unwrap(), f.band_rms_g("high").unwrap(), f.band_rms_g("empty").unwrap());
        assert!(close(low, a_low / SQRT_2, 0.02), "low band {low}");
        assert!(close(high, a_high / SQRT_2, 0.02), "high band {high}");
        assert!(empty < 1e-4, "empty band {empty}");

        // Each tone alone: the other band sees (almost) nothing of it.
        let f = an.analyze(&sine(a_low, 103.3, N, RATE)).unwrap();
        assert!(f.band_rms_g("high").unwrap() < 1e-3 * a_low, "{:?}", f.bands);
        let f = an.analyze(&sine(a_high, 1000.0, N, RATE)).unwrap();
        assert!(f.band_rms_g("low").unwrap() < 1e-3 * a_high, "{:?}", f.bands);
    }

    #[test]
    fn a_band_over_the_whole_spectrum_reads_the_time_domain_rms() {
        let mut rng = Rng(42);
        let x: Vec<f64> = (0..N).map(|_| 0.3 * rng.gaussian()).collect();
        let mut an = analyzer(VibrationConfig::new(RATE, N).with_band(Band::new("all", 0.0, RATE / 2.0)));
        let f = an.analyze(&x).unwrap();
        let all = f.band_rms_g("all").unwrap();
        assert!(close(all, f.rms_g, 0.03), "spectrum {all} vs time domain {}", f.rms_g);
    }

    #[test]
    fn gaussian_noise_has_kurtosis_near_3() {
        // 16384 samples: the estimator's standard error is about √(24/n) = 0.04, so ±0.2 is 5σ.
        let n = 16_384;
        let mut rng = Rng(7);
        let x: Vec<f64> = (0..n).map(|_| 0.1 * rng.gaussian()).collect();
        let mut an = analyzer(VibrationConfig::new(RATE, n));
        let f = an.analyze(&x).unwrap();
        assert!((f.kurtosis - 3.0).abs() < 0.2, "kurtosis {}", f.kurtosis);
        assert!(close(f.rms_g, 0.1, 0.03), "rms {}", f.rms_g);
    }

    #[test]
    fn sparse_impacts_raise_kurtosis_and_crest_factor() {
        let mut rng = Rng(3);
        let mut x: Vec<f64> = (0..N).map(|_| 0.05 * rng.gaussian()).collect();
        for hit in x.iter_mut().step_by(512) {
            *hit += 2.0;
        }
        let mut an = analyzer(VibrationConfig::new(RATE, N));
        let f = an.analyze(&x).unwrap();
        assert!(f.kurtosis > 30.0, "kurtosis {}", f.kurtosis);
        assert!(f.crest_factor > 10.0, "crest {}", f.crest_factor);
    }

    #[test]
    fn a_flat_line_reads_zero_not_nan() {
        let mut an = analyzer(VibrationConfig::new(RATE, N).with_band(Band::new("b", 100.0, 200.0)));
        for level in [0.0, 1.0, -0.987_654_321] {
            let f = an.analyze(&vec![level; N]).unwrap();
            let b = f.band_rms_g("b").unwrap();
            for v in [f.rms_g, f.peak_g, f.peak_to_peak_g, f.crest_factor, f.kurtosis, f.velocity_rms_mm_s, b] {
                assert_eq!(v, 0.0, "{level} g: {f:?}");
            }
        }
    }

    #[test]
    fn bad_windows_are_refused_by_what_is_wrong() {
        let mut an = analyzer(VibrationConfig::new(RATE, N));
        assert_eq!(an.analyze(&[0.0f64; 100]).unwrap_err(), FeatureError::WindowLength { expected: N, found: 100 });
        let mut x = sine(1.0, 100.0, N, RATE);
        x[17] = f64::NAN;
        x[20] = f64::INFINITY;
        let err = an.analyze(&x).unwrap_err();
        assert!(matches!(err, FeatureError::NonFinite { index: 17, value } if value.is_nan()), "{err}");
        assert_eq!(err.to_string(), "sample 17 is NaN, not a finite number");
        x[17] = 0.0;
        assert_eq!(an.analyze(&x).unwrap_err(), FeatureError::NonFinite { index: 20, value: f64::INFINITY });
    }

    #[test]
    fn bad_configs_are_refused_by_what_is_wrong() {
        let err = |c: VibrationConfig| VibrationAnalyzer::new(c).unwrap_err();
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(err(VibrationConfig::new(rate, N)), FeatureError::SampleRate(_)), "{rate}");
        }
        assert_eq!(err(VibrationConfig::new(RATE, 4000)), FeatureError::WindowSize(4000));
        assert_eq!(err(VibrationConfig::new(RATE, 0)), FeatureError::WindowSize(0));

        let e = err(VibrationConfig::new(RATE, N).with_band(Band::new("bpfo", 100.0, 13_000.0)));
        assert_eq!(e, FeatureError::BeyondNyquist { name: "bpfo".into(), high_hz: 13_000.0, nyquist_hz: 12_800.0 });
        assert!(e.to_string().contains("\"bpfo\"") && e.to_string().contains("12800"), "{e}");

        for (low, high) in [(200.0, 100.0), (100.0, 100.0), (-5.0, 10.0), (f64::NAN, 10.0)] {
            let e = err(VibrationConfig::new(RATE, N).with_band(Band::new("x", low, high)));
            assert!(matches!(e, FeatureError::BandRange { ref name, .. } if name == "x"), "{low}..{high}: {e}");
        }

        // 101–104 Hz falls between the 100 and 106.25 Hz bins.
        let e = err(VibrationConfig::new(RATE, N).with_band(Band::new("narrow", 101.0, 104.0)));
        assert!(
            matches!(e, FeatureError::EmptyBand { ref name, resolution_hz, .. } if name == "narrow" && resolution_hz == 6.25),
            "{e}"
        );

        let twice = VibrationConfig::new(RATE, N).with_bands([Band::new("a", 1.0, 50.0), Band::new("a", 50.0, 90.0)]);
        assert_eq!(err(twice), FeatureError::DuplicateBand("a".into()));

        let mut c = VibrationConfig::new(RATE, N);
        c.velocity_band_hz = (0.0, 1000.0);
        assert_eq!(err(c.clone()), FeatureError::VelocityFromDc(0.0));
        c.velocity_band_hz = (10.0, 20_000.0);
        assert!(matches!(err(c), FeatureError::BeyondNyquist { ref name, .. } if name == "velocity"));
    }

    #[test]
    fn band_edges_are_half_open() {
        let mut an = analyzer(VibrationConfig::new(RATE, N).with_bands([
            Band::new("up_to_100", 50.0, 100.0),
            Band::new("from_100", 100.0, 150.0),
            Band::new("to_nyquist", 12_000.0, 12_800.0),
        ]));
        // A 100 Hz tone sits on bin 16 exactly; its Hann leakage reaches bins 15 and 17 only.
        let f = an.analyze(&sine(1.0, 100.0, N, RATE)).unwrap();
        let (below, at) = (f.band_rms_g("up_to_100").unwrap(), f.band_rms_g("from_100").unwrap());
        // Bin 15 holds (1/4)² / (3/8) of the tone's power (1/6).
        assert!(close(below, (1.0 / 6.0f64).sqrt() / SQRT_2, 1e-6), "{below}");
        assert!(close(at, (5.0 / 6.0f64).sqrt() / SQRT_2, 1e-6), "{at}");
    }
}

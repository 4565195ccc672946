//! Features of a window of samples: RMS, peak, peak-to-peak and crest factor.
//!
//! A window's features are what the node sends in place of its samples, and what its interlock
//! compares with the vibration limit. No heap: every function reads a slice.

/// The features of one window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Features {
    /// Root mean square.
    pub rms: f32,
    /// Largest absolute value.
    pub peak: f32,
    /// Largest value minus smallest value.
    pub peak_to_peak: f32,
    /// `peak / rms`, 0 when the RMS is 0. Impacts (bearing damage, loose parts) raise it before
    /// they raise the RMS.
    pub crest: f32,
}

impl Features {
    /// The features of `samples` as they are. An empty window has all features 0; a non-finite
    /// sample makes the RMS non-finite, which the interlock treats as a sensor fault.
    pub fn of(samples: &[f32]) -> Self {
        Self::around(samples, 0.0)
    }

    /// The features of `samples` minus their mean. An accelerometer's mean is mostly gravity
    /// (1 g on the vertical axis), which would otherwise swamp the vibration RMS.
    pub fn of_ac(samples: &[f32]) -> Self {
        Self::around(samples, mean(samples))
    }

    fn around(samples: &[f32], offset: f32) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut sum_sq = 0.0f32;
        let mut peak = 0.0f32;
        let mut min = f32::INFINITY;
        let mut max = f32::NEG_INFINITY;
        for &s in samples {
            let v = s - offset;
            sum_sq += v * v;
            peak = peak.max(libm::fabsf(v));
            min = min.min(v);
            max = max.max(v);
        }
        let rms = libm::sqrtf(sum_sq / samples.len() as f32);
        let crest = if rms > 0.0 { peak / rms } else { 0.0 };
        Self { rms, peak, peak_to_peak: max - min, crest }
    }
}

/// The arithmetic mean of `samples`, 0 for an empty slice.
pub fn mean(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.iter().sum::<f32>() / samples.len() as f32
}

#[cfg(test)]
mod tests {
    use core::f32::consts::{PI, SQRT_2};

    use super::*;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-4 * b.abs().max(1.0)
    }

    /// Whole periods, so the sampled sine's mean is 0 and its RMS is exactly A/√2.
    fn sine(amplitude: f32, offset: f32) -> Vec<f32> {
        let per_period = 64;
        (0..per_period * 4).map(|i| offset + amplitude * (2.0 * PI * i as f32 / per_period as f32).sin()).collect()
    }

    #[test]
    fn a_pure_sine_has_rms_a_over_sqrt2_and_crest_sqrt2() {
        let f = Features::of(&sine(3.0, 0.0));
        assert!(close(f.rms, 3.0 / SQRT_2), "{f:?}");
        assert!(close(f.peak, 3.0), "{f:?}");
        assert!(close(f.peak_to_peak, 6.0), "{f:?}");
        assert!(close(f.crest, SQRT_2), "{f:?}");
    }

    #[test]
    fn the_ac_features_ignore_a_constant_offset_like_gravity() {
        let with_gravity = sine(0.5, 1.0);
        let raw = Features::of(&with_gravity);
        assert!(close(raw.rms, (1.0f32 + 0.125).sqrt()), "gravity dominates the raw RMS: {raw:?}");
        let ac = Features::of_ac(&with_gravity);
        assert!(close(ac.rms, 0.5 / SQRT_2), "{ac:?}");
        assert!(close(ac.peak, 0.5), "{ac:?}");
        assert!(close(ac.peak_to_peak, 1.0), "{ac:?}");
        assert!(close(ac.crest, SQRT_2), "{ac:?}");
        assert!(close(mean(&with_gravity), 1.0));
    }

    #[test]
    fn a_square_wave_has_crest_one() {
        let square: Vec<f32> = (0..100).map(|i| if i % 2 == 0 { 2.0 } else { -2.0 }).collect();
        let f = Features::of(&square);
        assert_eq!(f, Features { rms: 2.0, peak: 2.0, peak_to_peak: 4.0, crest: 1.0 });
    }

    #[test]
    fn an_impulse_raises_the_crest_not_the_rms() {
        let mut window = vec![0.0f32; 100];
        window[40] = 10.0;
        let f = Features::of(&window);
        assert!(close(f.rms, 1.0), "{f:?}");
        assert!(close(f.crest, 10.0), "{f:?}");
        assert_eq!(f.peak_to_peak, 10.0);
    }

    #[test]
    fn silence_and_empty_windows_are_all_zero() {
        assert_eq!(Features::of(&[0.0; 32]), Features::default());
        assert_eq!(Features::of_ac(&[4.0; 32]), Features::default());
        assert_eq!(Features::of(&[]), Features::default());
        assert_eq!(Features::of_ac(&[]), Features::default());
        assert_eq!(mean(&[]), 0.0);
    }

    #[test]
    fn a_nan_sample_shows_in_the_rms() {
        let f = Features::of_ac(&[1.0, f32::NAN, -1.0]);
        assert!(f.rms.is_nan(), "{f:?}");
    }
}

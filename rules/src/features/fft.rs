//! A radix-2 FFT for real input, sized once and reused so a window's transform allocates nothing.
//!
//! A real signal of `n` samples is packed into a complex signal of `n / 2` points (even samples
//! as the real part, odd as the imaginary), transformed by an iterative decimation-in-time FFT,
//! then split back into the `n / 2 + 1` one-sided bins: half the work of a complex transform of
//! `n` points, with no dependency on an FFT crate for the one size the analyzer uses.

use std::{
    f64::consts::PI,
    ops::{Add, Mul, Sub},
};

use super::FeatureError;

/// A complex number, only as much of one as the FFT needs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Complex {
    pub re: f64,
    pub im: f64,
}

impl Complex {
    pub const ZERO: Self = Self { re: 0.0, im: 0.0 };

    pub const fn new(re: f64, im: f64) -> Self {
        Self { re, im }
    }

    /// `e^(i·theta)`, computed directly rather than by recurrence so that large sizes keep
    /// full precision in their last twiddles.
    fn unit(theta: f64) -> Self {
        Self::new(theta.cos(), theta.sin())
    }

    pub fn norm_sqr(self) -> f64 {
        self.re * self.re + self.im * self.im
    }

    pub fn conj(self) -> Self {
        Self::new(self.re, -self.im)
    }

    fn half(self) -> Self {
        Self::new(0.5 * self.re, 0.5 * self.im)
    }

    /// `self / (2i)`.
    fn div_2i(self) -> Self {
        Self::new(0.5 * self.im, -0.5 * self.re)
    }
}

impl Add for Complex {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self::new(self.re + o.re, self.im + o.im)
    }
}

impl Sub for Complex {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self::new(self.re - o.re, self.im - o.im)
    }
}

impl Mul for Complex {
    type Output = Self;
    fn mul(self, o: Self) -> Self {
        Self::new(self.re * o.re - self.im * o.im, self.re * o.im + self.im * o.re)
    }
}

/// The forward DFT `X[k] = Σ x[j]·e^(-2πi·jk/n)` of `n` real samples (`n` a power of two), for
/// `k` in `0..=n/2`. Unnormalised: a bin holds the plain sum, so Parseval reads
/// `Σ|X|² (both sides) = n·Σx²`.
#[derive(Debug, Clone)]
pub struct RealFft {
    n: usize,
    /// Where packed point `j` goes so the butterflies can run in place in natural order.
    bit_reverse: Vec<usize>,
    /// `e^(-2πi·j/m)` for `j < m/2`, `m = n/2`: every stage strides through the same table.
    twiddles: Vec<Complex>,
    /// `e^(-2πi·k/n)` for `k ≤ m`: un-mixes the even and odd halves.
    split: Vec<Complex>,
    scratch: Vec<Complex>,
    spectrum: Vec<Complex>,
}

impl RealFft {
    /// Plans a transform of `n` samples.
    ///
    /// # Errors
    /// [`FeatureError::WindowSize`] unless `n` is a power of two of at least 2.
    pub fn new(n: usize) -> Result<Self, FeatureError> {
        if n < 2 || !n.is_power_of_two() {
            return Err(FeatureError::WindowSize(n));
        }
        let m = n / 2;
        let bits = m.trailing_zeros();
        let bit_reverse = (0..m).map(|j| j.reverse_bits().checked_shr(usize::BITS - bits).unwrap_or(0)).collect();
        let twiddles = (0..m / 2).map(|j| Complex::unit(-2.0 * PI * j as f64 / m as f64)).collect();
        let split = (0..=m).map(|k| Complex::unit(-2.0 * PI * k as f64 / n as f64)).collect();
        Ok(Self {
            n,
            bit_reverse,
            twiddles,
            split,
            scratch: vec![Complex::ZERO; m],
            spectrum: vec![Complex::ZERO; m + 1],
        })
    }

    /// How many real samples one transform takes.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Always false: a plan has at least two samples. Here because clippy pairs it with `len`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Transforms `input` and returns bins `0..=n/2`; bin `k` is at `k·sample_rate/n` Hz.
    ///
    /// # Errors
    /// [`FeatureError::WindowLength`] when `input` is not `n` samples long.
    pub fn process(&mut self, input: &[f64]) -> Result<&[Complex], FeatureError> {
        if input.len() != self.n {
            return Err(FeatureError::WindowLength { expected: self.n, found: input.len() });
        }
        let m = self.n / 2;
        for (pair, &to) in input.chunks_exact(2).zip(&self.bit_reverse) {
            self.scratch[to] = Complex::new(pair[0], pair[1]);
        }
        let mut len = 2;
        while len <= m {
            let half = len / 2;
            let stride = m / len;
            for block in self.scratch.chunks_exact_mut(len) {
                let (lo, hi) = block.split_at_mut(half);
                for ((a, b), &w) in lo.iter_mut().zip(hi.iter_mut()).zip(self.twiddles.iter().step_by(stride)) {
                    let t = *b * w;
                    *b = *a - t;
                    *a = *a + t;
                }
            }
            len *= 2;
        }
        // With Z the packed transform, E[k] = (Z[k] + conj Z[m-k]) / 2 is the even samples'
        // spectrum, O[k] = (Z[k] - conj Z[m-k]) / 2i the odd samples', and X[k] = E[k] + W^k·O[k].
        // Z is periodic in m, so k = m reads Z[0] on both sides.
        for (k, (out, &w)) in self.spectrum.iter_mut().zip(&self.split).enumerate() {
            let z = self.scratch[k % m];
            let zc = self.scratch[(m - k) % m].conj();
            let even = (z + zc).half();
            let odd = (z - zc).div_2i();
            *out = even + w * odd;
        }
        Ok(&self.spectrum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f64]) -> Vec<Complex> {
        let n = x.len();
        (0..=n / 2)
            .map(|k| {
                x.iter().enumerate().fold(Complex::ZERO, |acc, (j, &v)| {
                    let theta = -2.0 * PI * ((j * k) % n) as f64 / n as f64;
                    acc + Complex::unit(theta) * Complex::new(v, 0.0)
                })
            })
            .collect()
    }

    fn noise(n: usize, mut state: u64) -> Vec<f64> {
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect()
    }

    #[test]
    fn matches_a_naive_dft_at_every_size() {
        for bits in 1..=10 {
            let n = 1usize << bits;
            let x = noise(n, bits as u64);
            let mut fft = RealFft::new(n).unwrap();
            let got = fft.process(&x).unwrap().to_vec();
            let want = naive(&x);
            assert_eq!(got.len(), n / 2 + 1);
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                let err = (*g - *w).norm_sqr().sqrt();
                assert!(err < 1e-10 * n as f64, "n = {n}, bin {k}: got {g:?}, want {w:?}");
            }
        }
    }

    #[test]
    fn a_reused_plan_gives_the_same_answer() {
        let x = noise(512, 7);
        let y = noise(512, 8);
        let mut fft = RealFft::new(512).unwrap();
        let first = fft.process(&x).unwrap().to_vec();
        fft.process(&y).unwrap();
        assert_eq!(fft.process(&x).unwrap(), &first[..]);
    }

    #[test]
    fn a_cosine_on_a_bin_lands_in_that_bin_only() {
        let n = 256;
        let x: Vec<f64> = (0..n).map(|j| (2.0 * PI * 10.0 * j as f64 / n as f64).cos()).collect();
        let mut fft = RealFft::new(n).unwrap();
        let spectrum = fft.process(&x).unwrap();
        for (k, bin) in spectrum.iter().enumerate() {
            let want = if k == 10 { n as f64 / 2.0 } else { 0.0 };
            assert!((bin.norm_sqr().sqrt() - want).abs() < 1e-9, "bin {k}: {bin:?}");
        }
    }

    #[test]
    fn refuses_sizes_that_are_not_powers_of_two_and_wrong_lengths() {
        for n in [0, 1, 3, 1000] {
            assert!(matches!(RealFft::new(n), Err(FeatureError::WindowSize(got)) if got == n));
        }
        let mut fft = RealFft::new(8).unwrap();
        assert!(matches!(fft.process(&[0.0; 7]), Err(FeatureError::WindowLength { expected: 8, found: 7 })));
    }
}

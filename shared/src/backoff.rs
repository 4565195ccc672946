//! Exponential reconnect backoff with full jitter, so a fleet that lost its broker at the same
//! moment does not reconnect in lockstep.

use core::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
    rng: u64,
}

impl Backoff {
    /// `seed` spreads the jitter of different clients; any value works, distinct ones are better.
    pub fn new(min: Duration, max: Duration, seed: u64) -> Self {
        Self { min, max: max.max(min), current: min, rng: seed | 1 }
    }

    /// A backoff seeded from the clock and the process id.
    #[cfg(feature = "std")]
    pub fn seeded(min: Duration, max: Duration) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x2545_f491, |d| d.subsec_nanos() as u64);
        Self::new(min, max, nanos ^ (std::process::id() as u64) << 32)
    }

    /// The next delay: uniformly random in `[min, current]`, then `current` doubles up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let span = self.current.saturating_sub(self.min).as_nanos() as u64;
        let jitter = if span == 0 { 0 } else { self.rng % (span + 1) };
        let delay = self.min + Duration::from_nanos(jitter);
        self.current = (self.current * 2).min(self.max);
        delay
    }

    /// After a success, start again from the minimum.
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_within_bounds_and_resets() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut b = Backoff::new(min, max, 7);
        let mut ceiling = min;
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d >= min && d <= ceiling, "{d:?} outside [{min:?}, {ceiling:?}]");
            ceiling = (ceiling * 2).min(max);
        }
        b.reset();
        assert_eq!(b.next_delay(), min);
    }
}

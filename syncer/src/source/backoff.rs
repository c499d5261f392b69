//! How long a source waits before it tries again after a failure.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff: `first`, doubled after each failed attempt, at most `max`, each delay
/// scaled by a random factor in `1 ± jitter` (0: none). `reset` after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    jitter: f64,
    attempt: u32,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration, jitter: f64) -> Backoff {
        Backoff { first, max, jitter, attempt: 0 }
    }

    /// The delay before the next try, without jitter.
    fn base(&self) -> Duration {
        self.first.saturating_mul(2u32.saturating_pow(self.attempt)).min(self.max)
    }

    /// Counts a failed attempt and returns how long to wait before the next one.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.base();
        self.attempt = self.attempt.saturating_add(1);
        if self.jitter > 0.0 {
            base.mul_f64(rand::thread_rng().gen_range(1.0 - self.jitter..1.0 + self.jitter))
        } else {
            base
        }
    }

    /// The last attempt succeeded: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_up_to_the_cap_and_starts_over_after_reset() {
        let mut b = Backoff::new(ms(200), ms(1600), 0.0);
        let delays: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        assert_eq!(delays, [ms(200), ms(400), ms(800), ms(1600), ms(1600), ms(1600)]);
        b.reset();
        assert_eq!(b.next_delay(), ms(200));
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let mut b = Backoff::new(ms(100), Duration::from_secs(2), 0.0);
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.next_delay(), Duration::from_secs(2));
    }

    #[test]
    fn jitter_stays_within_its_factor() {
        let mut b = Backoff::new(ms(100), Duration::from_secs(2), 0.5);
        for expected in [100, 200, 400, 800, 1600, 2000, 2000] {
            let d = b.next_delay();
            assert!(d >= ms(expected) / 2 && d <= ms(expected) * 3 / 2, "{d:?} is not within 50% of {expected} ms");
        }
    }
}

//! Per-object exponential backoff for failed reconciles.
//!
//! Each object has its own failure count, reset by a success, so one broken object backs off
//! without slowing the others, and a flood of failures cannot turn into a hot loop.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records a failure of `key` and returns how long to wait before its next attempt:
    /// base · 2^(failures−1), capped, with up to 10% jitter derived from the key so that many
    /// objects failing together do not retry in lockstep.
    pub fn next_delay(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().expect("backoff lock poisoned");
        let count = failures.entry(key.to_string()).or_insert(0);
        *count = count.saturating_add(1);
        let exponent = (*count - 1).min(20);
        let delay = self.base.saturating_mul(1u32 << exponent).min(self.max);
        let jitter_permille = key
            .bytes()
            .fold(*count, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
            % 100;
        delay + delay * jitter_permille / 1000
    }

    /// Forgets `key`'s failures after a success.
    pub fn reset(&self, key: &str) {
        self.failures
            .lock()
            .expect("backoff lock poisoned")
            .remove(key);
    }

    pub fn failures(&self, key: &str) -> u32 {
        self.failures
            .lock()
            .expect("backoff lock poisoned")
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_per_failure_up_to_the_cap_and_resets() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay("a")).collect();
        for (i, d) in delays.iter().enumerate() {
            let nominal = Duration::from_secs(1 << i).min(Duration::from_secs(60));
            assert!(*d >= nominal && *d <= nominal + nominal / 10, "{i}: {d:?}");
        }
        assert_eq!(b.failures("a"), 8);
        // Another object is unaffected.
        assert!(b.next_delay("b") < Duration::from_millis(1100));
        b.reset("a");
        assert!(b.next_delay("a") < Duration::from_millis(1100));
    }
}

//! Per-object exponential backoff for failed reconciles.
//!
//! Each object has its own schedule of delays (backon's exponential backoff with jitter), reset
//! by a success and forgotten when the object goes, so one broken object backs off without
//! slowing the others, a flood of failures cannot turn into a hot loop, and the map holds only
//! objects that exist and are failing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

#[derive(Debug)]
pub struct Backoff {
    policy: ExponentialBuilder,
    max: Duration,
    schedules: Mutex<HashMap<String, ExponentialBackoff>>,
}

/// The key of one controller's object in the backoff map.
pub fn key(controller: &str, name: &str) -> String {
    format!("{controller}/{name}")
}

impl Backoff {
    /// Delays start at `base` and double per failure up to `max`; each gets a random jitter of
    /// up to itself, so that many objects failing together do not retry in lockstep.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            policy: ExponentialBuilder::new()
                .with_min_delay(base)
                .with_max_delay(max)
                .with_jitter()
                .without_max_times(),
            max,
            schedules: Mutex::new(HashMap::new()),
        }
    }

    /// Records a failure of `key` and returns how long to wait before its next attempt.
    pub fn next_delay(&self, key: &str) -> Duration {
        let mut schedules = self.schedules.lock().expect("backoff lock poisoned");
        schedules
            .entry(key.to_string())
            .or_insert_with(|| self.policy.build())
            .next()
            // Never reached: the schedule has no limit on attempts.
            .unwrap_or(self.max)
    }

    /// Forgets `key`'s failures: after a success, or when its object is gone.
    pub fn forget(&self, key: &str) {
        self.schedules
            .lock()
            .expect("backoff lock poisoned")
            .remove(key);
    }

    /// How many objects have failures on record.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.schedules.lock().expect("backoff lock poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_per_failure_up_to_the_cap_with_jitter_and_resets() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let delays: Vec<Duration> = (0..9).map(|_| b.next_delay("a")).collect();
        for (i, d) in delays.iter().enumerate() {
            let nominal = Duration::from_secs(1 << i).min(Duration::from_secs(60));
            assert!(*d >= nominal && *d <= nominal * 2, "{i}: {d:?}");
        }
        // Another object is unaffected.
        assert!(b.next_delay("b") <= Duration::from_secs(2));
        assert_eq!(b.tracked(), 2);
        b.forget("a");
        assert!(b.next_delay("a") <= Duration::from_secs(2));
        b.forget("a");
        b.forget("b");
        assert_eq!(b.tracked(), 0, "nothing is kept for objects that went");
    }
}

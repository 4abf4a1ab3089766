//! Uptime as the network measures it (DESIGN §7), pure: time is cut into slots of the governed
//! heartbeat interval, and a provider's uptime is the share of the slots of the governed window
//! (or since it registered, when later) in which a heartbeat of its arrived. Slots are counted
//! per hour, so a record stays small: at most one entry per hour of the window.

use serde::{Deserialize, Serialize};

const HOUR: i64 = 3600;
/// Uptime when every slot had its heartbeat.
pub const FULL: u32 = 10_000;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uptime {
    /// The last slot that counted: a second heartbeat in one slot counts once.
    pub last_slot: i64,
    /// Slots seen per hour since the epoch, oldest first, no older than the window.
    pub hours: Vec<(i64, u32)>,
}

impl Uptime {
    /// Counts a heartbeat at `now`.
    pub fn heartbeat(&mut self, now: i64, interval: u32, window: u32) {
        let slot = now / i64::from(interval.max(1));
        if slot <= self.last_slot && !self.hours.is_empty() {
            return;
        }
        self.last_slot = slot;
        let hour = now.div_euclid(HOUR);
        match self.hours.last_mut() {
            Some((h, seen)) if *h == hour => *seen += 1,
            _ => self.hours.push((hour, 1)),
        }
        let oldest = (now - i64::from(window)).div_euclid(HOUR);
        self.hours.retain(|(h, _)| *h >= oldest);
    }

    /// Uptime at `now` in basis points, for a provider registered at `since`.
    pub fn basis_points(&self, since: i64, now: i64, interval: u32, window: u32) -> u32 {
        let interval = i64::from(interval.max(1));
        let start = since.max(now - i64::from(window));
        let expected = (now - start) / interval + 1;
        let oldest = start.div_euclid(HOUR);
        let seen: i64 = self
            .hours
            .iter()
            .filter(|(h, _)| *h >= oldest)
            .map(|(_, n)| i64::from(*n))
            .sum();
        let share = (seen.min(expected) * i64::from(FULL)) / expected.max(1);
        u32::try_from(share).unwrap_or(FULL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_800_000_000;

    #[test]
    fn every_slot_seen_is_full_uptime_and_repeats_count_once() {
        let mut u = Uptime::default();
        for s in 0..=360 {
            u.heartbeat(T + s * 10, 10, 86_400);
            u.heartbeat(T + s * 10 + 1, 10, 86_400);
        }
        assert_eq!(u.basis_points(T, T + 3600, 10, 86_400), FULL);
        assert!(u.hours.len() <= 2, "{:?}", u.hours);
    }

    #[test]
    fn silence_lowers_uptime_in_proportion() {
        let mut u = Uptime::default();
        // Heartbeats for the first half hour of an hour, then silence.
        for s in 0..180 {
            u.heartbeat(T + s * 10, 10, 86_400);
        }
        let half = u.basis_points(T, T + 3590, 10, 86_400);
        assert_eq!(half, 5_000);
        assert_eq!(Uptime::default().basis_points(T, T + 100, 10, 86_400), 0);
    }

    #[test]
    fn the_window_forgets_old_hours() {
        let mut u = Uptime::default();
        for s in 0..360 {
            u.heartbeat(T + s * 10, 10, 7_200);
        }
        // Three hours later, with one heartbeat: the first hour is out of the window.
        u.heartbeat(T + 3 * 3600, 10, 7_200);
        assert!(
            u.hours
                .iter()
                .all(|(h, _)| *h >= (T + 3600).div_euclid(3600))
        );
        assert!(u.basis_points(T, T + 3 * 3600, 10, 7_200) < 100);
    }
}

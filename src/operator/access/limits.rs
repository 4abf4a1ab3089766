//! Per lease, what its calls hold open and carry: the open calls against its offer's limit, the
//! bytes and calls counted for its status (and, through the meter, its receipts), and the pace
//! its offer's bandwidth allows.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::crd::{AccessPolicy, LeaseAccess};
use crate::wire::{MAX_CHUNK_BYTES, Rejection};
use crate::workload::{ATTEST_CONTAINER, METER_CONTAINER, PROBE_CONTAINER, WORKLOAD_CONTAINER};

use super::LeaseView;

/// An offer's access limits, as they apply to one lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseLimits {
    /// Calls (connections and log streams) open at once.
    pub max_connections: u32,
    /// A connection with no byte either way for this long is closed.
    pub idle_timeout_seconds: u32,
    /// Bytes per second all of the lease's calls may carry, both ways together.
    pub max_bytes_per_second: Option<u32>,
}

impl From<&AccessPolicy> for LeaseLimits {
    fn from(policy: &AccessPolicy) -> LeaseLimits {
        LeaseLimits {
            max_connections: policy.max_connections,
            idle_timeout_seconds: policy.idle_timeout_seconds,
            max_bytes_per_second: policy.max_bytes_per_second,
        }
    }
}

/// The containers whose logs a buyer may read: the workload's, and the sidecars' where the
/// provider allows.
pub fn log_containers(policy: &AccessPolicy) -> Vec<String> {
    let mut containers = vec![WORKLOAD_CONTAINER.to_string()];
    if policy.sidecar_logs {
        containers.extend([PROBE_CONTAINER, METER_CONTAINER, ATTEST_CONTAINER].map(String::from));
    }
    containers
}

/// What kind of call holds a place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    Logs,
    Connection,
}

/// Which way bytes went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    ToWorkload,
    FromWorkload,
}

/// The pace one lease's calls share.
struct Pace {
    bytes_per_second: u32,
    limiter: DefaultDirectRateLimiter,
}

impl Pace {
    fn new(bytes_per_second: u32) -> Option<Arc<Pace>> {
        let rate = NonZeroU32::new(bytes_per_second)?;
        // A chunk must fit in one burst, or it could never pass.
        let burst = NonZeroU32::new(bytes_per_second.max(MAX_CHUNK_BYTES as u32))?;
        Some(Arc::new(Pace {
            bytes_per_second,
            limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
        }))
    }
}

#[derive(Default)]
struct LeaseTally {
    open: u32,
    counted: LeaseAccess,
    /// Whether `counted` is on the lease's status (or being written there).
    recorded: bool,
    pace: Option<Arc<Pace>>,
}

/// Every lease's tally.
#[derive(Default)]
pub struct Limits {
    leases: Arc<Mutex<HashMap<String, LeaseTally>>>,
}

/// One open call; dropping it frees its place.
pub struct Held {
    leases: Arc<Mutex<HashMap<String, LeaseTally>>>,
    lease_id: String,
    pace: Option<Arc<Pace>>,
}

fn at_least(counted: &mut LeaseAccess, recorded: &LeaseAccess) {
    counted.bytes_to_workload = counted.bytes_to_workload.max(recorded.bytes_to_workload);
    counted.bytes_from_workload = counted
        .bytes_from_workload
        .max(recorded.bytes_from_workload);
    counted.connections = counted.connections.max(recorded.connections);
    counted.log_streams = counted.log_streams.max(recorded.log_streams);
}

impl Limits {
    /// A place for one more call of `lease`, or why not. The call is counted from here on, on
    /// top of what the lease's status already records.
    pub fn hold(&self, lease: &LeaseView, kind: CallKind) -> Result<Held, Rejection> {
        let mut leases = self.leases.lock().expect("limits lock");
        let tally = leases.entry(lease.lease_id.clone()).or_default();
        if tally.open >= lease.limits.max_connections {
            return Err(Rejection::TooLarge(format!(
                "lease {} has {} connections open, the most its offer allows",
                lease.lease_id, lease.limits.max_connections
            )));
        }
        tally.open += 1;
        // Another leader may have counted before this one: never count below the status.
        at_least(&mut tally.counted, &lease.access);
        match kind {
            CallKind::Logs => tally.counted.log_streams += 1,
            CallKind::Connection => tally.counted.connections += 1,
        }
        tally.recorded = false;
        let limit = lease.limits.max_bytes_per_second;
        if tally.pace.as_ref().map(|p| p.bytes_per_second) != limit {
            tally.pace = limit.and_then(Pace::new);
        }
        Ok(Held {
            leases: self.leases.clone(),
            lease_id: lease.lease_id.clone(),
            pace: tally.pace.clone(),
        })
    }

    /// The tallies not yet recorded on their leases' statuses, now taken as recorded; leases
    /// with nothing open and nothing to record are forgotten (a later call starts again from
    /// the status). Called by the one task that records, between its writes.
    pub fn unrecorded(&self) -> Vec<(String, LeaseAccess)> {
        let mut leases = self.leases.lock().expect("limits lock");
        leases.retain(|_, tally| tally.open > 0 || !tally.recorded);
        let mut due: Vec<(String, LeaseAccess)> = leases
            .iter_mut()
            .filter(|(_, tally)| !tally.recorded)
            .map(|(id, tally)| {
                tally.recorded = true;
                (id.clone(), tally.counted)
            })
            .collect();
        due.sort_by(|a, b| a.0.cmp(&b.0));
        due
    }

    /// A record that failed: the lease's tally is due again.
    pub fn not_recorded(&self, lease_id: &str) {
        if let Some(tally) = self.leases.lock().expect("limits lock").get_mut(lease_id) {
            tally.recorded = false;
        }
    }

    /// Forgets a lease that is gone.
    pub fn forget(&self, lease_id: &str) {
        self.leases.lock().expect("limits lock").remove(lease_id);
    }

    /// Calls open for `lease_id`.
    #[cfg(test)]
    pub fn open(&self, lease_id: &str) -> u32 {
        let leases = self.leases.lock().expect("limits lock");
        leases.get(lease_id).map_or(0, |t| t.open)
    }
}

impl Held {
    /// Waits until the lease's bandwidth allows `bytes` more (at most one chunk).
    pub async fn pace(&self, bytes: usize) {
        let (Some(pace), Some(n)) = (&self.pace, NonZeroU32::new(bytes as u32)) else {
            return;
        };
        // A chunk never exceeds the burst (see `Pace::new`), so this cannot be refused.
        let _ = pace.limiter.until_n_ready(n).await;
    }

    /// Counts `bytes` carried one way.
    pub fn carried(&self, direction: Direction, bytes: usize) {
        let mut leases = self.leases.lock().expect("limits lock");
        if let Some(tally) = leases.get_mut(&self.lease_id) {
            let figure = match direction {
                Direction::ToWorkload => &mut tally.counted.bytes_to_workload,
                Direction::FromWorkload => &mut tally.counted.bytes_from_workload,
            };
            *figure = figure.saturating_add(bytes as u64);
            tally.recorded = false;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut leases = self.leases.lock().expect("limits lock");
        if let Some(tally) = leases.get_mut(&self.lease_id) {
            tally.open = tally.open.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;

    fn lease(id: &str, max_connections: u32) -> LeaseView {
        LeaseView {
            lease_id: id.into(),
            buyer: SigningKey::from_bytes(&[1; 32]).verifying_key(),
            ports: vec![8000],
            running: true,
            log_containers: vec!["workload".into()],
            limits: LeaseLimits {
                max_connections,
                idle_timeout_seconds: 60,
                max_bytes_per_second: None,
            },
            access: LeaseAccess::default(),
        }
    }

    #[test]
    fn a_lease_holds_at_most_its_offers_connections_and_each_close_frees_one() {
        let limits = Limits::default();
        let (a, b) = (lease("a", 2), lease("b", 1));
        let first = limits.hold(&a, CallKind::Connection).unwrap();
        let _second = limits.hold(&a, CallKind::Connection).unwrap();
        let refused = limits.hold(&a, CallKind::Logs).err().unwrap();
        assert_eq!(refused.kind(), "too_large");
        assert!(
            refused
                .to_string()
                .contains("lease a has 2 connections open")
        );
        // Another lease has its own count.
        let only = limits.hold(&b, CallKind::Connection).unwrap();
        assert!(limits.hold(&b, CallKind::Connection).is_err());
        drop(first);
        assert_eq!(limits.open("a"), 1);
        limits.hold(&a, CallKind::Connection).unwrap();
        drop(only);
        assert_eq!(limits.open("b"), 0);
        // No connection at all where the offer allows none.
        assert!(limits.hold(&lease("c", 0), CallKind::Connection).is_err());
    }

    #[test]
    fn calls_and_bytes_are_counted_on_top_of_the_status_and_recorded_once() {
        let limits = Limits::default();
        let mut a = lease("a", 8);
        // What an earlier leader recorded.
        a.access = LeaseAccess {
            bytes_to_workload: 100,
            bytes_from_workload: 1_000,
            connections: 4,
            log_streams: 1,
        };
        let connection = limits.hold(&a, CallKind::Connection).unwrap();
        connection.carried(Direction::ToWorkload, 10);
        connection.carried(Direction::FromWorkload, 500);
        let log = limits.hold(&a, CallKind::Logs).unwrap();
        log.carried(Direction::FromWorkload, 20);
        let counted = LeaseAccess {
            bytes_to_workload: 110,
            bytes_from_workload: 1_520,
            connections: 5,
            log_streams: 2,
        };
        assert_eq!(limits.unrecorded(), vec![("a".to_string(), counted)]);
        // Nothing new: nothing to record.
        assert_eq!(limits.unrecorded(), vec![]);
        // A failed write is due again.
        limits.not_recorded("a");
        assert_eq!(limits.unrecorded(), vec![("a".to_string(), counted)]);
        // Closed and recorded: forgotten, and the next call starts from the status again.
        drop((connection, log));
        assert_eq!(limits.unrecorded(), vec![]);
        assert_eq!(limits.open("a"), 0);
        let mut later = lease("a", 8);
        later.access = counted;
        let _again = limits.hold(&later, CallKind::Logs).unwrap();
        assert_eq!(
            limits.unrecorded(),
            vec![(
                "a".to_string(),
                LeaseAccess {
                    log_streams: 3,
                    ..counted
                }
            )]
        );
    }

    #[test]
    fn the_sidecars_logs_are_the_providers_unless_the_offer_shares_them() {
        let mut policy = AccessPolicy::default();
        assert_eq!(log_containers(&policy), vec!["workload"]);
        policy.sidecar_logs = true;
        assert_eq!(
            log_containers(&policy),
            vec!["workload", "probe", "meter", "attest"]
        );
    }

    #[tokio::test]
    async fn a_lease_with_a_bandwidth_limit_is_paced_across_its_calls() {
        let limits = Limits::default();
        let mut a = lease("a", 8);
        a.limits.max_bytes_per_second = Some(MAX_CHUNK_BYTES as u32);
        let (first, second) = (
            limits.hold(&a, CallKind::Connection).unwrap(),
            limits.hold(&a, CallKind::Connection).unwrap(),
        );
        let started = std::time::Instant::now();
        // One burst passes at once; the two calls share the rest of the pace.
        first.pace(MAX_CHUNK_BYTES).await;
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
        second.pace(MAX_CHUNK_BYTES / 4).await;
        let waited = started.elapsed();
        assert!(
            waited >= std::time::Duration::from_millis(200),
            "a quarter second's bytes past the burst waited only {waited:?}"
        );
        // Without a limit nothing waits.
        let free = limits.hold(&lease("b", 8), CallKind::Connection).unwrap();
        let started = std::time::Instant::now();
        for _ in 0..100 {
            free.pace(MAX_CHUNK_BYTES).await;
        }
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
    }
}

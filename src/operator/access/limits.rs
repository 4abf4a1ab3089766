//! What each lease holds open through the relay, against what its offer allows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::crd::AccessPolicy;
use crate::wire::Rejection;

use super::LeaseView;

/// An offer's access limits, as they apply to one lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseLimits {
    /// Calls (connections and log streams) open at once.
    pub max_connections: u32,
    /// A connection with no byte either way for this long is closed.
    pub idle_timeout_seconds: u32,
}

impl From<&AccessPolicy> for LeaseLimits {
    fn from(policy: &AccessPolicy) -> LeaseLimits {
        LeaseLimits {
            max_connections: policy.max_connections,
            idle_timeout_seconds: policy.idle_timeout_seconds,
        }
    }
}

/// Open calls per lease.
#[derive(Default)]
pub struct Limits {
    open: Arc<Mutex<HashMap<String, u32>>>,
}

/// One open call; dropping it frees its place.
pub struct Held {
    open: Arc<Mutex<HashMap<String, u32>>>,
    lease_id: String,
}

impl Limits {
    /// A place for one more call of `lease`, or why not.
    pub fn hold(&self, lease: &LeaseView) -> Result<Held, Rejection> {
        let mut open = self.open.lock().expect("limits lock");
        let count = open.entry(lease.lease_id.clone()).or_default();
        if *count >= lease.limits.max_connections {
            return Err(Rejection::TooLarge(format!(
                "lease {} has {} connections open, the most its offer allows",
                lease.lease_id, lease.limits.max_connections
            )));
        }
        *count += 1;
        Ok(Held {
            open: self.open.clone(),
            lease_id: lease.lease_id.clone(),
        })
    }

    /// Calls open for `lease_id`.
    #[cfg(test)]
    pub fn open(&self, lease_id: &str) -> u32 {
        let open = self.open.lock().expect("limits lock");
        open.get(lease_id).copied().unwrap_or(0)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("limits lock");
        if let Some(count) = open.get_mut(&self.lease_id) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.lease_id);
            }
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
            },
        }
    }

    #[test]
    fn a_lease_holds_at_most_its_offers_connections_and_each_close_frees_one() {
        let limits = Limits::default();
        let (a, b) = (lease("a", 2), lease("b", 1));
        let first = limits.hold(&a).unwrap();
        let _second = limits.hold(&a).unwrap();
        let refused = limits.hold(&a).err().unwrap();
        assert_eq!(refused.kind(), "too_large");
        assert!(
            refused
                .to_string()
                .contains("lease a has 2 connections open")
        );
        // Another lease has its own count.
        let only = limits.hold(&b).unwrap();
        assert!(limits.hold(&b).is_err());
        drop(first);
        assert_eq!(limits.open("a"), 1);
        limits.hold(&a).unwrap();
        drop(only);
        assert_eq!(limits.open("b"), 0);
        // No connection at all where the offer allows none.
        assert!(limits.hold(&lease("c", 0)).is_err());
    }
}

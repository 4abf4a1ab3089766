//! Whether intake may accept leases now that the provider's cluster may not hold their boxes.
//! Pure; the operator keeps one behind a lock.
//!
//! Two things close it. The operator lacking a permission the box needs (checked with access
//! reviews at start and every minute): closed until the permission is there. And the cluster
//! refusing a lease's box (an admission policy, a missing PriorityClass): a circuit breaker,
//! closed for a cooldown that doubles with each refusal in a row, then open to try again; a box
//! created resets it. A lease accepted meanwhile would only end at once with a refund.

/// The first cooldown after a refused box, and the longest.
pub const FIRST_COOLDOWN_MS: i64 = 60_000;
pub const MAX_COOLDOWN_MS: i64 = 30 * 60_000;

/// What the operator must be allowed for a lease box, as (API group, resource, verb), cluster
/// wide: lease namespaces are created at run time.
pub const BOX_PERMISSIONS: &[(&str, &str, &str)] = &[
    ("", "namespaces", "create"),
    ("", "namespaces", "patch"),
    ("networking.k8s.io", "networkpolicies", "create"),
    ("networking.k8s.io", "networkpolicies", "patch"),
    ("", "resourcequotas", "create"),
    ("", "resourcequotas", "patch"),
    ("", "limitranges", "create"),
    ("", "limitranges", "patch"),
    ("", "secrets", "create"),
    ("", "pods", "create"),
    ("gpubridge.dev", "computeleases", "create"),
];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BoxGate {
    missing: Vec<String>,
    refused: Option<Refused>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Refused {
    reason: String,
    until_ms: i64,
    cooldown_ms: i64,
}

impl BoxGate {
    /// `Ok` when a lease may be accepted at `now_ms`, else why not, for the network and the
    /// buyer.
    pub fn admits(&self, now_ms: i64) -> Result<(), String> {
        if !self.missing.is_empty() {
            return Err(format!(
                "the provider's operator may not build lease boxes: it lacks {}",
                self.missing.join(", ")
            ));
        }
        match &self.refused {
            Some(r) if now_ms < r.until_ms => Err(format!(
                "the provider's cluster refused the last lease pod ({}); leases are refused for \
                 {} s more",
                r.reason,
                (r.until_ms - now_ms + 999) / 1000
            )),
            _ => Ok(()),
        }
    }

    /// The permissions access reviews found missing, as "verb group/resource"; empty when none.
    pub fn set_missing(&mut self, missing: Vec<String>) {
        self.missing = missing;
    }

    /// The cluster refused a lease's box at `now_ms`.
    pub fn box_refused(&mut self, reason: String, now_ms: i64) {
        let cooldown_ms = self.refused.as_ref().map_or(FIRST_COOLDOWN_MS, |r| {
            (r.cooldown_ms * 2).min(MAX_COOLDOWN_MS)
        });
        self.refused = Some(Refused {
            reason,
            until_ms: now_ms + cooldown_ms,
            cooldown_ms,
        });
    }

    /// A lease's box was created: the cluster holds boxes again.
    pub fn box_created(&mut self) {
        self.refused = None;
    }
}

/// A permission as a message names it: "create pods", "patch networking.k8s.io/networkpolicies".
pub fn permission_name(group: &str, resource: &str, verb: &str) -> String {
    if group.is_empty() {
        format!("{verb} {resource}")
    } else {
        format!("{verb} {group}/{resource}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_box_closes_intake_for_a_cooldown_that_doubles_until_a_box_is_created() {
        let mut gate = BoxGate::default();
        assert_eq!(gate.admits(0), Ok(()));
        gate.box_refused("pods is forbidden".into(), 1_000);
        let closed = gate.admits(1_000).unwrap_err();
        assert!(
            closed.contains("refused the last lease pod (pods is forbidden)"),
            "{closed}"
        );
        assert!(closed.contains("for 60 s more"), "{closed}");
        assert_eq!(
            gate.admits(1_000 + FIRST_COOLDOWN_MS),
            Ok(()),
            "open again to try"
        );

        // Refused again in a row: twice as long.
        gate.box_refused("pods is forbidden".into(), 70_000);
        assert!(gate.admits(70_000 + FIRST_COOLDOWN_MS).is_err());
        assert_eq!(gate.admits(70_000 + 2 * FIRST_COOLDOWN_MS), Ok(()));
        for _ in 0..10 {
            gate.box_refused("x".into(), 0);
        }
        assert!(gate.admits(MAX_COOLDOWN_MS - 1).is_err());
        assert_eq!(gate.admits(MAX_COOLDOWN_MS), Ok(()), "capped");

        gate.box_created();
        assert_eq!(gate.admits(0), Ok(()));
        gate.box_refused("x".into(), 0);
        assert_eq!(
            gate.admits(FIRST_COOLDOWN_MS),
            Ok(()),
            "the cooldown starts over"
        );
    }

    #[test]
    fn a_missing_permission_closes_intake_until_it_is_granted() {
        let mut gate = BoxGate::default();
        gate.set_missing(vec![permission_name("", "pods", "create")]);
        let closed = gate.admits(i64::MAX).unwrap_err();
        assert_eq!(
            closed,
            "the provider's operator may not build lease boxes: it lacks create pods"
        );
        gate.set_missing(vec![]);
        assert_eq!(gate.admits(0), Ok(()));
        assert_eq!(
            permission_name("networking.k8s.io", "networkpolicies", "patch"),
            "patch networking.k8s.io/networkpolicies"
        );
    }
}

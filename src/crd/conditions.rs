//! metav1.Condition bookkeeping shared by both controllers.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition as it should be now; its lastTransitionTime is kept from `previous` when its
/// status did not change, so that rewriting the same state changes nothing.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let t0: Timestamp = "2027-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2027-01-01T01:00:00Z".parse().unwrap();
        let first = condition(&[], "Ready", true, "Computed", "", Some(1), t0);
        assert_eq!(first.last_transition_time, Time(t0));
        let same = condition(
            std::slice::from_ref(&first),
            "Ready",
            true,
            "Computed",
            "x",
            Some(2),
            t1,
        );
        assert_eq!(same.last_transition_time, Time(t0));
        let flipped = condition(&[first], "Ready", false, "InvalidSpec", "", Some(2), t1);
        assert_eq!(flipped.last_transition_time, Time(t1));
    }
}

//! When a lease's end is reported to the network, and what the report says. Pure.

use std::time::Duration;

use crate::crd::{ComputeLease, Fault};
use crate::wire::proto::LeaseEndBody;

/// DESIGN §3.4: the end is reported after the meter's final receipt, which pays the last
/// window; a meter that never sends one (killed, or never started) is waited for `grace` after
/// the lease finished. Pure.
pub fn awaiting_final_receipt(lease: &ComputeLease, now: jiff::Timestamp, grace: Duration) -> bool {
    let Some(status) = &lease.status else {
        return false;
    };
    let final_received = status.usage.as_ref().is_some_and(|u| u.final_received);
    !final_received && status.finished_within(now, grace)
}

/// The end report of a lease from the network that ended and was not reported yet. Pure.
pub fn end_report(lease: &ComputeLease, now: jiff::Timestamp) -> Option<LeaseEndBody> {
    lease.spec.signed_order.as_ref()?;
    let status = lease.status.as_ref()?;
    if !status.phase.is_terminal() || status.reported_at.is_some() {
        return None;
    }
    let termination = status.termination.as_ref();
    let started = status.started_at.as_ref().map(|t| t.0.as_second());
    let ended = status
        .finished_at
        .as_ref()
        .map_or_else(|| now.as_second(), |t| t.0.as_second());
    let ran = started.map_or(0, |s| (ended - s).max(0) as u64);
    let fault = match termination.map(|t| t.fault) {
        Some(Fault::Tenant) => "tenant",
        Some(Fault::Provider) => "provider",
        Some(Fault::Network) => "network",
        Some(Fault::None) | None => "none",
    };
    Some(LeaseEndBody {
        header: None,
        lease_id: lease.spec.lease_id.clone(),
        phase: status.phase.as_str().to_string(),
        reason: termination
            .map(|t| t.reason.as_str())
            .unwrap_or_default()
            .to_string(),
        fault: fault.to_string(),
        started_at: started.unwrap_or(ended),
        ended_at: ended,
        gpu_seconds: ran
            .min(lease.spec.duration_seconds)
            .saturating_mul(u64::from(lease.spec.gpus)),
    })
}

/// Why a lease that ran has nothing metered, once its end is reported: it started and ended and
/// not one receipt of its meter was accepted, so nothing was charged for it. `None` for a lease
/// that never started (nothing to meter) or has receipts. Pure.
pub fn unmetered(lease: &ComputeLease) -> Option<String> {
    let status = lease.status.as_ref()?;
    let started = status.started_at.as_ref()?;
    if !status.phase.is_terminal()
        || status
            .usage
            .as_ref()
            .is_some_and(|u| u.receipts_accepted > 0)
    {
        return None;
    }
    Some(format!(
        "the lease ran from {} but ended {} with no accepted receipt: nothing was metered, so \
         nothing was charged; check that its meter sidecar reached the collector",
        started.0,
        status.phase.as_str()
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jiff::{Timestamp, ToSpan};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::awaiting_final_receipt;
    use crate::crd::{ComputeLease, ComputeLeaseStatus, LeasePhase, LeaseUsage};

    #[test]
    fn an_end_waits_for_the_final_receipt_within_the_grace() {
        let spec =
            serde_yaml::from_str(include_str!("../../tests/fixtures/lease-spec.yaml")).unwrap();
        let mut lease = ComputeLease::new("l", spec);
        let now = Timestamp::from_second(1_000_000).unwrap();
        let grace = Duration::from_secs(120);
        assert!(!awaiting_final_receipt(&lease, now, grace), "no status yet");
        lease.status = Some(ComputeLeaseStatus {
            phase: LeasePhase::Expired,
            finished_at: Some(Time(now - 60.seconds())),
            ..Default::default()
        });
        assert!(
            awaiting_final_receipt(&lease, now, grace),
            "no receipt at all yet"
        );
        assert!(
            !awaiting_final_receipt(&lease, now + 60.seconds(), grace),
            "a meter that never sends one is waited for only the grace"
        );
        lease.status.as_mut().unwrap().usage = Some(LeaseUsage {
            receipts_accepted: 9,
            ..Default::default()
        });
        assert!(awaiting_final_receipt(&lease, now, grace));
        lease
            .status
            .as_mut()
            .unwrap()
            .usage
            .as_mut()
            .unwrap()
            .final_received = true;
        assert!(
            !awaiting_final_receipt(&lease, now, grace),
            "the final receipt is in"
        );
    }

    #[test]
    fn a_lease_that_ran_without_one_receipt_is_unmetered() {
        let spec =
            serde_yaml::from_str(include_str!("../../tests/fixtures/lease-spec.yaml")).unwrap();
        let mut lease = ComputeLease::new("l", spec);
        let at = |s: i64| Some(Time(Timestamp::from_second(s).unwrap()));
        let ended = |started, receipts: Option<u64>| ComputeLeaseStatus {
            phase: LeasePhase::Expired,
            started_at: started,
            finished_at: at(1_900_000_600),
            usage: receipts.map(|n| LeaseUsage {
                receipts_accepted: n,
                ..Default::default()
            }),
            ..Default::default()
        };
        lease.status = Some(ended(at(1_900_000_000), None));
        let why = super::unmetered(&lease).expect("ran, no usage at all");
        assert!(
            why.contains("ended Expired with no accepted receipt"),
            "{why}"
        );
        lease.status = Some(ended(at(1_900_000_000), Some(0)));
        assert!(super::unmetered(&lease).is_some(), "usage with no receipt");
        lease.status = Some(ended(at(1_900_000_000), Some(3)));
        assert_eq!(super::unmetered(&lease), None, "metered");
        lease.status = Some(ended(None, None));
        assert_eq!(
            super::unmetered(&lease),
            None,
            "never started: nothing to meter"
        );
        let mut running = ended(at(1_900_000_000), None);
        running.phase = LeasePhase::Running;
        lease.status = Some(running);
        assert_eq!(super::unmetered(&lease), None, "not ended");
    }
}

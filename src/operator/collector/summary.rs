//! What the collector writes into `ComputeLease.status`, and when. Pure.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::attestation::TrustTier;
use crate::crd::{ComputeLeaseStatus, LeaseAccess, LeaseAttestation, LeaseUsage};
use crate::metering::ChainHead;
use crate::wire::Rejection;
use crate::wire::amount::{self, Amount};
use crate::wire::proto::{AccessUsage, ProbeReply, ReceiptsReply};

/// When the lease's metering may start, by the rule the network applies, from what the network
/// recorded and the collector wrote into the status.
pub fn metering_from_status(attestation: &LeaseAttestation) -> Option<i64> {
    crate::metering::metering_start(
        attestation
            .probe_passed_at
            .as_ref()
            .map(|t| t.0.as_second()),
        attestation
            .hardware_attested_since
            .as_ref()
            .map(|t| t.0.as_second()),
    )
}

/// A time the network recorded, Unix seconds; none for 0.
pub fn seconds(at: i64) -> Option<Time> {
    (at > 0)
        .then(|| Timestamp::from_second(at).ok())
        .flatten()
        .map(Time)
}

/// The lease's attestation with the probe's verdict: what it matched, and for the probe at
/// acceptance its pass time and the tier it earned unless the evidence earned more. A re-probe
/// moves neither: metering started at the first pass, and a failed re-probe ends the lease.
pub fn with_probe(existing: Option<LeaseAttestation>, reply: &ProbeReply) -> LeaseAttestation {
    let passed = seconds(reply.passed_at);
    let mut attestation = existing.unwrap_or(LeaseAttestation {
        trust_tier: TrustTier::SelfReported.as_str().into(),
        last_verified: None,
        evidence_digest: None,
        image_digest: None,
        probe_passed_at: None,
        probe: None,
        hardware_attested_since: None,
    });
    if reply.reprobe == 0 {
        attestation.trust_tier = TrustTier::parse(&attestation.trust_tier)
            .unwrap_or_default()
            .with_probe(passed.is_some())
            .as_str()
            .into();
        attestation.probe_passed_at = passed;
    }
    attestation.probe = Some(format!("{}: {}", reply.state, reply.detail));
    attestation
}

/// The lease's usage as the network's verdict on its receipts states it; `charged` is the
/// reply's charge, parsed by [`Served::of_reply`].
pub fn usage_from(reply: &ReceiptsReply, charged: Amount) -> LeaseUsage {
    LeaseUsage {
        gpu_seconds: reply.allocated_gpu_millis / 1000,
        energy_joules: reply.energy_millijoules / 1000,
        utilization_percent: reply.utilization_percent,
        receipts_accepted: reply.accepted_through,
        chain_head: (!reply.head_hash.is_empty()).then(|| hex::encode(&reply.head_hash)),
        metered_through: Timestamp::from_millisecond(reply.metered_through_ms)
            .ok()
            .filter(|_| reply.metered_through_ms > 0)
            .map(Time),
        charged: Some(charged),
        final_received: reply.final_received,
        access: reply
            .access
            .filter(crate::metering::access::any)
            .map(lease_access),
    }
}

/// Access figures as the lease status states them.
pub fn lease_access(usage: AccessUsage) -> LeaseAccess {
    LeaseAccess {
        bytes_to_workload: usage.bytes_to_workload,
        bytes_from_workload: usage.bytes_from_workload,
        connections: usage.connections,
        log_streams: usage.log_streams,
    }
}

/// The operator's access count for a lease, from its status: what the meter asks for.
pub fn access_count(status: Option<&ComputeLeaseStatus>) -> AccessUsage {
    let access = status.and_then(|s| s.access).unwrap_or_default();
    AccessUsage {
        bytes_to_workload: access.bytes_to_workload,
        bytes_from_workload: access.bytes_from_workload,
        connections: access.connections,
        log_streams: access.log_streams,
    }
}

/// A lease's cumulative served figures: what the network has accepted and paid for so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    pub gpu_millis: u64,
    pub charged: Amount,
}

impl Served {
    /// The network's figures; a charge that is not an amount is refused, not read as none.
    pub fn of_reply(reply: &ReceiptsReply) -> Result<Served, Rejection> {
        Ok(Served {
            gpu_millis: reply.allocated_gpu_millis,
            charged: amount::parse("charged", &reply.charged)?,
        })
    }

    /// The figures some replica last wrote into the lease's status (whole GPU-seconds there).
    pub fn of_usage(usage: &LeaseUsage) -> Served {
        Served {
            gpu_millis: usage.gpu_seconds.saturating_mul(1000),
            // Absent before the first settled receipt: nothing charged yet.
            charged: usage.charged.unwrap_or(Amount::ZERO),
        }
    }

    /// The later of two sightings of the same cumulative figures.
    pub fn max(self, other: Served) -> Served {
        Served {
            gpu_millis: self.gpu_millis.max(other.gpu_millis),
            charged: self.charged.max(other.charged),
        }
    }

    /// What `now` adds to these figures; nothing where it is behind them (a reply that another
    /// replica's later one already counted).
    pub fn added_by(self, now: Served) -> Served {
        Served {
            gpu_millis: now.gpu_millis.saturating_sub(self.gpu_millis),
            charged: now.charged.saturating_sub(self.charged),
        }
    }
}

/// What the collector remembers of one lease between requests.
#[derive(Default, Debug)]
pub struct LeaseProgress {
    /// The chain head the network last confirmed; none yet after a restart.
    confirmed: Option<ChainHead>,
    /// When its usage was last written into the lease's status.
    last_written: Option<Instant>,
    /// The cumulative figures already counted in the served metrics; none yet after a restart.
    served: Option<Served>,
}

/// What one answer from the network adds, and whether to write the lease's status now.
#[derive(Debug, PartialEq, Eq)]
pub struct Recorded {
    pub newly_accepted: u64,
    pub newly_served: Served,
    pub write_status: bool,
}

impl LeaseProgress {
    /// Records the network's `reply` to a batch (`forwarded` with its parsed figures when the
    /// batch reached the network), against what this replica knew of the lease or, after a
    /// restart, what its status shows.
    pub fn record(
        &mut self,
        usage_in_status: Option<&LeaseUsage>,
        reply: &ReceiptsReply,
        forwarded: Option<Served>,
        now: Instant,
        interval: Duration,
    ) -> Recorded {
        let confirmed_in_status = usage_in_status.map_or(0, |u| u.receipts_accepted);
        let served_in_status = usage_in_status.map(Served::of_usage).unwrap_or_default();
        let before = self
            .confirmed
            .as_ref()
            .map_or(confirmed_in_status, |h| h.sequence);
        let served_before = self
            .served
            .map_or(served_in_status, |known| known.max(served_in_status));
        let (newly_accepted, newly_served) = match forwarded {
            Some(served) => {
                self.served = Some(served_before.max(served));
                self.confirmed = Some(ChainHead {
                    sequence: reply.accepted_through,
                    hash: reply.head_hash.clone(),
                    window_end_ms: (reply.metered_through_ms > 0)
                        .then_some(reply.metered_through_ms),
                    final_received: reply.final_received,
                });
                (
                    reply.accepted_through.saturating_sub(before),
                    served_before.added_by(served),
                )
            }
            None => (0, Served::default()),
        };
        let urgent = reply.final_received || reply.rejection.is_some();
        let write_status = (forwarded.is_some()
            && write_due(self.last_written, now, interval, urgent))
            || reply.rejection.is_some();
        if write_status {
            self.last_written = Some(now);
        }
        Recorded {
            newly_accepted,
            newly_served,
            write_status,
        }
    }

    /// The chain head the network last confirmed, as far as this replica knows.
    pub fn confirmed(&self) -> Option<&ChainHead> {
        self.confirmed.as_ref()
    }

    /// Nothing was written for it for `limit`, as of `now`.
    pub fn silent_for(&self, limit: Duration, now: Instant) -> bool {
        self.last_written
            .is_some_and(|t| now.saturating_duration_since(t) >= limit)
    }
}

/// Whether to write a lease's usage now: at most once per `interval`, except that the first
/// summary, the final receipt and a refusal are written at once.
fn write_due(
    last_written: Option<Instant>,
    now: Instant,
    interval: Duration,
    urgent: bool,
) -> bool {
    urgent || last_written.is_none_or(|t| now.duration_since(t) >= interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_each_accepted_receipt_once_and_spaces_status_writes() {
        let interval = Duration::from_secs(10);
        let t0 = Instant::now();
        let reply = |accepted, charged: &str| ReceiptsReply {
            accepted_through: accepted,
            allocated_gpu_millis: accepted * 1_000,
            charged: charged.into(),
            ..Default::default()
        };
        let served = |r: &ReceiptsReply| Some(Served::of_reply(r).unwrap());
        // After a restart, what the status shows is the baseline.
        let status = LeaseUsage {
            receipts_accepted: 3,
            gpu_seconds: 3,
            charged: Some(Amount::from_atto(30)),
            ..Default::default()
        };
        let mut p = LeaseProgress::default();
        let r5 = reply(5, "50");
        let first = p.record(Some(&status), &r5, served(&r5), t0, interval);
        assert_eq!(first.newly_accepted, 2);
        assert_eq!(first.newly_served.charged, Amount::from_atto(20));
        assert!(first.write_status, "the first summary is written at once");
        // The same answer again (another replica forwarded it) adds nothing and is not due.
        let again = p.record(
            Some(&status),
            &r5,
            served(&r5),
            t0 + Duration::from_secs(1),
            interval,
        );
        assert_eq!((again.newly_accepted, again.write_status), (0, false));
        assert_eq!(again.newly_served, Served::default());
        // A refusal is written at once, even with nothing forwarded.
        let mut refused = reply(5, "50");
        refused.rejection = Some(crate::wire::proto::ReceiptRejection::default());
        assert!(
            p.record(None, &refused, None, t0 + Duration::from_secs(2), interval)
                .write_status
        );
        assert!(!p.silent_for(Duration::from_secs(60), t0 + Duration::from_secs(30)));
        assert!(p.silent_for(Duration::from_secs(60), t0 + Duration::from_secs(62)));
    }

    #[test]
    fn served_counts_only_what_is_new_since_the_best_known_figures() {
        let reply = |millis, charged: &str| crate::wire::proto::ReceiptsReply {
            allocated_gpu_millis: millis,
            charged: charged.into(),
            ..Default::default()
        };
        let status = Served::of_usage(&crate::crd::LeaseUsage {
            gpu_seconds: 20,
            charged: Some(Amount::from_atto(500)),
            ..Default::default()
        });
        assert_eq!(
            status,
            Served {
                gpu_millis: 20_000,
                charged: Amount::from_atto(500)
            }
        );
        // After a restart the status is the baseline: what it already shows is not counted again.
        let now = Served::of_reply(&reply(30_000, "800")).unwrap();
        assert_eq!(
            status.added_by(now),
            Served {
                gpu_millis: 10_000,
                charged: Amount::from_atto(300)
            }
        );
        // A reply behind what is known (another replica counted further) adds nothing.
        let behind = Served::of_reply(&reply(25_000, "600")).unwrap();
        assert_eq!(now.added_by(behind), Served::default());
        assert_eq!(now.max(behind), now);
        // An unreadable charge is refused, naming the field, never counted as none.
        let refused = Served::of_reply(&reply(1, "x")).unwrap_err();
        assert!(refused.to_string().starts_with("charged: "), "{refused}");
    }

    #[test]
    fn usage_is_the_networks_verdict_in_whole_units() {
        let reply = ReceiptsReply {
            accepted_through: 7,
            head_hash: vec![0xab, 0x01],
            metered_through_ms: 1_700_000_000_500,
            allocated_gpu_millis: 20_999,
            energy_millijoules: 3_999,
            utilization_percent: 42,
            charged: "123".into(),
            final_received: true,
            rejection: None,
            access: Some(AccessUsage {
                bytes_to_workload: 10,
                bytes_from_workload: 20,
                connections: 3,
                log_streams: 1,
            }),
        };
        let usage = usage_from(&reply, Served::of_reply(&reply).unwrap().charged);
        assert_eq!(
            usage.access,
            Some(LeaseAccess {
                bytes_to_workload: 10,
                bytes_from_workload: 20,
                connections: 3,
                log_streams: 1,
            })
        );
        assert_eq!(usage.gpu_seconds, 20);
        assert_eq!(usage.energy_joules, 3);
        assert_eq!(usage.receipts_accepted, 7);
        assert_eq!(usage.chain_head.as_deref(), Some("ab01"));
        assert_eq!(
            usage.metered_through.unwrap().0.as_millisecond(),
            1_700_000_000_500
        );
        assert_eq!(usage.charged, Some(Amount::from_atto(123)));
        assert!(usage.final_received);
        let empty = usage_from(&ReceiptsReply::default(), Amount::ZERO);
        assert_eq!((empty.chain_head, empty.metered_through), (None, None));
        // Access that added up to nothing is left out of the status.
        let idle = ReceiptsReply {
            access: Some(AccessUsage::default()),
            ..ReceiptsReply::default()
        };
        assert_eq!(usage_from(&idle, Amount::ZERO).access, None);
    }

    #[test]
    fn writes_are_spaced_unless_urgent() {
        let t0 = Instant::now();
        let interval = Duration::from_secs(10);
        assert!(write_due(None, t0, interval, false));
        assert!(!write_due(
            Some(t0),
            t0 + Duration::from_secs(9),
            interval,
            false
        ));
        assert!(write_due(
            Some(t0),
            t0 + Duration::from_secs(9),
            interval,
            true
        ));
        assert!(write_due(Some(t0), t0 + interval, interval, false));
    }

    #[test]
    fn a_probes_verdict_sets_the_pass_and_the_tier_without_lowering_the_evidences() {
        let passed = ProbeReply {
            state: "passed".into(),
            detail: "39 tiles".into(),
            passed_at: 1_800_000_000,
            ..Default::default()
        };
        let fresh = with_probe(None, &passed);
        assert_eq!(fresh.trust_tier, "challenge-verified");
        assert_eq!(fresh.probe.as_deref(), Some("passed: 39 tiles"));
        assert_eq!(metering_from_status(&fresh), Some(1_800_000_000_000));
        // Evidence verified first and earlier: the tier stays, metering starts at the earlier.
        let attested = LeaseAttestation {
            trust_tier: "hardware-attested".into(),
            hardware_attested_since: seconds(1_799_999_990),
            ..fresh.clone()
        };
        let both = with_probe(Some(attested), &passed);
        assert_eq!(both.trust_tier, "hardware-attested");
        assert_eq!(metering_from_status(&both), Some(1_799_999_990_000));
        // A failed probe records why and sets no pass.
        let failed = ProbeReply {
            state: "failed".into(),
            detail: "Freivalds: …".into(),
            ..Default::default()
        };
        let after = with_probe(None, &failed);
        assert_eq!(after.trust_tier, "self-reported");
        assert_eq!(after.probe_passed_at, None);
        assert_eq!(metering_from_status(&after), None);
        assert_eq!(seconds(0), None);
        // A re-probe's pass is recorded in words; metering still starts at the first pass.
        let reprobed = ProbeReply {
            passed_at: 1_800_003_600,
            detail: "re-probe 1: 9 tiles".into(),
            reprobe: 1,
            ..passed.clone()
        };
        let later = with_probe(Some(fresh.clone()), &reprobed);
        assert_eq!(later.probe.as_deref(), Some("passed: re-probe 1: 9 tiles"));
        assert_eq!(metering_from_status(&later), Some(1_800_000_000_000));
        assert_eq!(later.trust_tier, "challenge-verified");
    }
}

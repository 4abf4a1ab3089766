//! What the collector writes into `ComputeLease.status`, and when. Pure.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::LeaseUsage;
use crate::network::proto::ReceiptsReply;

/// Conditions the collector owns on a ComputeLease.
pub const METERED_CONDITION: &str = "Metered";
pub const ATTESTED_CONDITION: &str = "Attested";

/// The lease's usage as the network's verdict on its receipts states it.
pub fn usage_from(reply: &ReceiptsReply) -> LeaseUsage {
    LeaseUsage {
        gpu_seconds: reply.allocated_gpu_millis / 1000,
        energy_joules: reply.energy_millijoules / 1000,
        utilization_percent: reply.utilization_percent,
        receipts_accepted: reply.accepted_through,
        chain_head: (!reply.head_hash.is_empty()).then(|| hex(&reply.head_hash)),
        metered_through: Timestamp::from_millisecond(reply.metered_through_ms)
            .ok()
            .filter(|_| reply.metered_through_ms > 0)
            .map(Time),
        charged: Some(reply.charged.clone()),
        final_received: reply.final_received,
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether to write a lease's usage now: at most once per `interval`, except that the first
/// summary, the final receipt and a refusal are written at once.
pub fn write_due(
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
        };
        let usage = usage_from(&reply);
        assert_eq!(usage.gpu_seconds, 20);
        assert_eq!(usage.energy_joules, 3);
        assert_eq!(usage.receipts_accepted, 7);
        assert_eq!(usage.chain_head.as_deref(), Some("ab01"));
        assert_eq!(
            usage.metered_through.unwrap().0.as_millisecond(),
            1_700_000_000_500
        );
        assert_eq!(usage.charged.as_deref(), Some("123"));
        assert!(usage.final_received);
        let empty = usage_from(&ReceiptsReply::default());
        assert_eq!((empty.chain_head, empty.metered_through), (None, None));
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
}

//! Buyer access in receipts (DESIGN §9): the operator keeps a running count per lease; each
//! receipt carries what the count added since the receipts before it. Pure.

use crate::wire::proto::AccessUsage;

/// `sum` plus `more`, each figure saturating.
pub fn add(sum: &AccessUsage, more: &AccessUsage) -> AccessUsage {
    AccessUsage {
        bytes_to_workload: sum.bytes_to_workload.saturating_add(more.bytes_to_workload),
        bytes_from_workload: sum
            .bytes_from_workload
            .saturating_add(more.bytes_from_workload),
        connections: sum.connections.saturating_add(more.connections),
        log_streams: sum.log_streams.saturating_add(more.log_streams),
    }
}

/// What the operator's running `count` adds to what earlier receipts already `carried`, figure by
/// figure. A count below what was carried (an operator that stopped before it recorded its last
/// bytes) adds nothing until it passes that again, so nothing is counted twice.
pub fn increment(count: &AccessUsage, carried: &AccessUsage) -> AccessUsage {
    AccessUsage {
        bytes_to_workload: count
            .bytes_to_workload
            .saturating_sub(carried.bytes_to_workload),
        bytes_from_workload: count
            .bytes_from_workload
            .saturating_sub(carried.bytes_from_workload),
        connections: count.connections.saturating_sub(carried.connections),
        log_streams: count.log_streams.saturating_sub(carried.log_streams),
    }
}

/// Whether any figure is non-zero: a receipt carries access only then.
pub fn any(usage: &AccessUsage) -> bool {
    *usage != AccessUsage::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(to: u64, from: u64, connections: u64, logs: u64) -> AccessUsage {
        AccessUsage {
            bytes_to_workload: to,
            bytes_from_workload: from,
            connections,
            log_streams: logs,
        }
    }

    #[test]
    fn receipts_carry_what_the_count_added_and_sum_back_to_it() {
        let counts = [
            usage(10, 100, 1, 0),
            usage(10, 150, 2, 1),
            usage(40, 150, 2, 1),
        ];
        let mut carried = AccessUsage::default();
        let mut increments = vec![];
        for count in &counts {
            let step = increment(count, &carried);
            carried = add(&carried, &step);
            increments.push(step);
        }
        assert_eq!(
            increments,
            vec![usage(10, 100, 1, 0), usage(0, 50, 1, 1), usage(30, 0, 0, 0)]
        );
        assert_eq!(carried, counts[2]);
        assert!(any(&increments[2]));
        assert!(!any(&AccessUsage::default()));
    }

    #[test]
    fn a_count_that_fell_back_adds_nothing_until_it_passes_what_was_carried() {
        let carried = usage(1000, 5000, 10, 2);
        // The operator lost its last unrecorded bytes: its count is lower than the receipts'.
        assert_eq!(
            increment(&usage(900, 4000, 9, 2), &carried),
            AccessUsage::default()
        );
        // Figures move on independently: only those past what was carried count.
        assert_eq!(
            increment(&usage(1200, 4500, 12, 2), &carried),
            usage(200, 0, 2, 0)
        );
    }

    #[test]
    fn sums_saturate_rather_than_wrap() {
        let big = usage(u64::MAX - 1, 1, 0, 0);
        assert_eq!(add(&big, &usage(5, 1, 1, 1)), usage(u64::MAX, 2, 1, 1));
    }
}

//! The reservation ledger: GPUs intake has promised, on a chosen node, by creating a
//! ComputeLease that an inventory may not count yet. Pure.
//!
//! The ledger is shared by every replica that takes leases: it is kept in one API object that
//! each intake reads, changes here and writes back under optimistic concurrency, so of two
//! replicas that both believe they lead, the second writer fails and decides again against the
//! first one's promise. Each replica subtracts from what its own inventory advertises only the
//! reservations that inventory does not count yet; a reservation stays on record for a while
//! after it is counted, for replicas whose watches lag.

use serde::{Deserialize, Serialize};

use crate::capacity::blocks::best_fit;

/// How long a reservation stays on record once the deciding inventory counts its lease.
pub const COUNTED_KEEP_MS: i64 = 60_000;
/// How long a reservation no inventory counts stays on record: its lease was never created (a
/// crash between the promise and the create). A lease that goes releases its own on the way out.
pub const UNCOUNTED_KEEP_MS: i64 = 300_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Reservation {
    lease: String,
    offer: String,
    node: String,
    gpus: u32,
    reserved_at_ms: i64,
}

/// Why a lease does not fit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "not enough idle GPUs: the lease needs {gpus} on one node and offer {offer}'s largest free block is {largest_block} ({pending} GPUs are promised to leases being created)"
)]
pub struct Shortfall {
    pub offer: String,
    pub gpus: u32,
    pub largest_block: u32,
    pub pending: u32,
}

/// A number of GPUs on one node: free ones (a block to place a lease in), or ones promised to
/// leases being created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeBlock {
    pub node: String,
    pub gpus: u32,
}

/// Reservations on record, in the order they were made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservations {
    pending: Vec<Reservation>,
}

impl Reservations {
    /// Drops what no replica needs any more: reservations `counted` by this inventory for
    /// [`COUNTED_KEEP_MS`], and any older than [`UNCOUNTED_KEEP_MS`].
    pub fn prune(&mut self, now_ms: i64, counted: impl Fn(&str) -> bool) {
        self.pending.retain(|r| {
            let age = now_ms.saturating_sub(r.reserved_at_ms);
            let keep_for = if counted(&r.lease) {
                COUNTED_KEEP_MS
            } else {
                UNCOUNTED_KEEP_MS
            };
            age < keep_for
        });
    }

    /// What is reserved for `offer` per node and not yet `counted` by the inventory at hand.
    pub fn pending_for(&self, offer: &str, counted: impl Fn(&str) -> bool) -> Vec<NodeBlock> {
        self.pending
            .iter()
            .filter(|r| r.offer == offer && !counted(&r.lease))
            .map(|r| NodeBlock {
                node: r.node.clone(),
                gpus: r.gpus,
            })
            .collect()
    }

    /// Reserves `gpus` of `offer` for `lease` on the node whose block fits it best, among
    /// `blocks` (advertised GPUs per node, from an inventory) less what is reserved there and
    /// not yet `counted` by that inventory, and returns that node. A lease already reserved
    /// keeps its node.
    pub fn reserve(
        &mut self,
        lease: &str,
        offer: &str,
        blocks: &[NodeBlock],
        gpus: u32,
        counted: impl Fn(&str) -> bool,
        now_ms: i64,
    ) -> Result<String, Shortfall> {
        if let Some(r) = self.pending.iter().find(|r| r.lease == lease) {
            return Ok(r.node.clone());
        }
        let pending = self.pending_for(offer, counted);
        let left = free_after(blocks, &pending);
        let free: Vec<u32> = left.iter().map(|b| b.gpus).collect();
        let Some(i) = best_fit(&free, gpus) else {
            return Err(Shortfall {
                offer: offer.to_string(),
                gpus,
                largest_block: free.iter().copied().max().unwrap_or(0),
                pending: pending.iter().map(|b| b.gpus).sum(),
            });
        };
        let node = left[i].node.clone();
        self.pending.push(Reservation {
            lease: lease.to_string(),
            offer: offer.to_string(),
            node: node.clone(),
            gpus,
            reserved_at_ms: now_ms,
        });
        Ok(node)
    }

    /// Drops a reservation whose lease was not created after all.
    pub fn release(&mut self, lease: &str) {
        self.pending.retain(|r| r.lease != lease);
    }
}

/// `blocks` less `pending` on the same nodes.
pub fn free_after(blocks: &[NodeBlock], pending: &[NodeBlock]) -> Vec<NodeBlock> {
    blocks
        .iter()
        .map(|b| NodeBlock {
            node: b.node.clone(),
            gpus: pending
                .iter()
                .filter(|p| p.node == b.node)
                .fold(b.gpus, |free, p| free.saturating_sub(p.gpus)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn blocks(free: &[u32]) -> Vec<NodeBlock> {
        free.iter()
            .enumerate()
            .map(|(i, f)| NodeBlock {
                node: format!("n{i}"),
                gpus: *f,
            })
            .collect()
    }

    fn none(_: &str) -> bool {
        false
    }

    fn pending(r: &Reservations, offer: &str) -> u32 {
        r.pending_for(offer, none).iter().map(|b| b.gpus).sum()
    }

    #[test]
    fn each_lease_gets_the_best_fitting_node_after_what_is_pending() {
        let mut r = Reservations::default();
        let nodes = blocks(&[8, 4]);
        assert_eq!(r.reserve("a", "o", &nodes, 4, none, 0).unwrap(), "n1");
        assert_eq!(r.reserve("b", "o", &nodes, 8, none, 0).unwrap(), "n0");
        let short = r.reserve("c", "o", &nodes, 1, none, 0).unwrap_err();
        assert_eq!((short.largest_block, short.pending), (0, 12));
        assert!(short.to_string().contains("needs 1 on one node"), "{short}");
        // Another offer's reservations do not count against this one.
        assert_eq!(
            r.reserve("d", "other", &blocks(&[2]), 2, none, 0).unwrap(),
            "n0"
        );
        // Once the inventory counts "a", its GPUs are out of the blocks instead.
        let a_counted = |lease: &str| lease == "a";
        assert_eq!(
            r.reserve("c", "o", &blocks(&[8, 1]), 1, a_counted, 0)
                .unwrap(),
            "n1"
        );
        assert_eq!(
            r.pending_for("o", a_counted)
                .iter()
                .map(|b| b.gpus)
                .sum::<u32>(),
            9
        );
        assert_eq!(
            pending(&r, "o"),
            13,
            "still on record for replicas that lag"
        );
    }

    #[test]
    fn reserving_twice_for_one_lease_counts_once() {
        let mut r = Reservations::default();
        assert_eq!(
            r.reserve("a", "o", &blocks(&[4]), 4, none, 0).unwrap(),
            "n0"
        );
        assert_eq!(
            r.reserve("a", "o", &blocks(&[4]), 4, none, 0).unwrap(),
            "n0"
        );
        assert_eq!(pending(&r, "o"), 4);
        r.release("a");
        assert_eq!(pending(&r, "o"), 0);
    }

    #[test]
    fn records_are_kept_while_a_lagging_replica_may_need_them() {
        let mut r = Reservations::default();
        let nodes = blocks(&[8, 8]);
        r.reserve("counted", "o", &nodes, 1, none, 0).unwrap();
        r.reserve("never-created", "o", &nodes, 1, none, 0).unwrap();
        let counted = |lease: &str| lease == "counted";
        for (now, left) in [
            (COUNTED_KEEP_MS - 1, 2),
            (COUNTED_KEEP_MS, 1),
            (UNCOUNTED_KEEP_MS - 1, 1),
            (UNCOUNTED_KEEP_MS, 0),
        ] {
            r.prune(now, counted);
            assert_eq!(r.pending.len(), left, "at {now} ms");
        }
    }

    #[test]
    fn the_record_round_trips_through_json() {
        let mut r = Reservations::default();
        r.reserve("a", "o", &blocks(&[8]), 2, none, 1_700_000_000_000)
            .unwrap();
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""reservedAtMs":1700000000000"#), "{json}");
        assert_eq!(serde_json::from_str::<Reservations>(&json).unwrap(), r);
    }

    proptest! {
        /// Whatever arrives, no node is promised more than it has.
        #[test]
        fn never_promises_a_node_more_than_it_has(
            free in proptest::collection::vec(0u32..=8, 0..6),
            asks in proptest::collection::vec(1u32..=8, 0..40),
        ) {
            let nodes = blocks(&free);
            let mut r = Reservations::default();
            for (i, gpus) in asks.iter().enumerate() {
                let _ = r.reserve(&format!("l{i}"), "o", &nodes, *gpus, none, 0);
            }
            for node in &nodes {
                let promised: u32 = r.pending_for("o", none).iter().filter(|p| p.node == node.node).map(|p| p.gpus).sum();
                prop_assert!(promised <= node.gpus, "{} promised {promised} of {}", node.node, node.gpus);
            }
        }
    }
}

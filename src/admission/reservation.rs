//! The reservation ledger: GPUs intake has promised, on a chosen node, by creating a
//! ComputeLease that the inventory does not count yet. Intake is the one writer (one task, on the
//! leader only), so a decision made against "advertised per node minus what is pending there"
//! can never promise a GPU twice, however fast leases arrive. Pure.

use crate::capacity::blocks::best_fit;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Reservation {
    lease: String,
    offer: String,
    node: String,
    gpus: u32,
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

/// Free GPUs on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeBlock {
    pub node: String,
    pub free: u32,
}

/// Pending reservations, in the order they were made.
#[derive(Clone, Debug, Default)]
pub struct Reservations {
    pending: Vec<Reservation>,
}

impl Reservations {
    /// Forgets the reservations of leases the inventory now counts (`counted` says which).
    pub fn settle(&mut self, counted: impl Fn(&str) -> bool) {
        self.pending.retain(|r| !counted(&r.lease));
    }

    /// GPUs pending for `offer`.
    pub fn pending(&self, offer: &str) -> u32 {
        self.pending_for(offer).iter().map(|b| b.free).sum()
    }

    /// What is pending for `offer`, per node.
    pub fn pending_for(&self, offer: &str) -> Vec<NodeBlock> {
        self.pending
            .iter()
            .filter(|r| r.offer == offer)
            .map(|r| NodeBlock {
                node: r.node.clone(),
                free: r.gpus,
            })
            .collect()
    }

    /// Reserves `gpus` of `offer` for `lease` on the node whose block fits it best, among
    /// `blocks` (advertised GPUs per node, from the inventory) less what is pending there, and
    /// returns that node. A lease already reserved keeps its node.
    pub fn reserve(
        &mut self,
        lease: &str,
        offer: &str,
        blocks: &[NodeBlock],
        gpus: u32,
    ) -> Result<String, Shortfall> {
        if let Some(r) = self.pending.iter().find(|r| r.lease == lease) {
            return Ok(r.node.clone());
        }
        let left = free_after(blocks, &self.pending_for(offer));
        let free: Vec<u32> = left.iter().map(|b| b.free).collect();
        let Some(i) = best_fit(&free, gpus) else {
            return Err(Shortfall {
                offer: offer.to_string(),
                gpus,
                largest_block: free.iter().copied().max().unwrap_or(0),
                pending: self.pending(offer),
            });
        };
        let node = left[i].node.clone();
        self.pending.push(Reservation {
            lease: lease.to_string(),
            offer: offer.to_string(),
            node: node.clone(),
            gpus,
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
            free: pending
                .iter()
                .filter(|p| p.node == b.node)
                .fold(b.free, |free, p| free.saturating_sub(p.free)),
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
                free: *f,
            })
            .collect()
    }

    #[test]
    fn each_lease_gets_the_best_fitting_node_after_what_is_pending() {
        let mut r = Reservations::default();
        let nodes = blocks(&[8, 4]);
        assert_eq!(r.reserve("a", "o", &nodes, 4).unwrap(), "n1");
        assert_eq!(r.reserve("b", "o", &nodes, 8).unwrap(), "n0");
        let short = r.reserve("c", "o", &nodes, 1).unwrap_err();
        assert_eq!((short.largest_block, short.pending), (0, 12));
        assert!(short.to_string().contains("needs 1 on one node"), "{short}");
        // Another offer's reservations do not count against this one.
        assert_eq!(r.reserve("d", "other", &blocks(&[2]), 2).unwrap(), "n0");
        // Once the inventory counts "a", its GPUs are out of the blocks instead.
        r.settle(|lease| lease == "a");
        assert_eq!(r.reserve("c", "o", &blocks(&[8, 1]), 1).unwrap(), "n1");
        assert_eq!(r.pending("o"), 9);
    }

    #[test]
    fn reserving_twice_for_one_lease_counts_once() {
        let mut r = Reservations::default();
        assert_eq!(r.reserve("a", "o", &blocks(&[4]), 4).unwrap(), "n0");
        assert_eq!(r.reserve("a", "o", &blocks(&[4]), 4).unwrap(), "n0");
        assert_eq!(r.pending("o"), 4);
        r.release("a");
        assert_eq!(r.pending("o"), 0);
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
                let _ = r.reserve(&format!("l{i}"), "o", &nodes, *gpus);
            }
            for node in &nodes {
                let promised: u32 = r.pending_for("o").iter().filter(|p| p.node == node.node).map(|p| p.free).sum();
                prop_assert!(promised <= node.free, "{} promised {promised} of {}", node.node, node.free);
            }
        }
    }
}

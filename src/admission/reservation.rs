//! The reservation ledger: GPUs intake has promised by creating a ComputeLease that the
//! inventory does not show yet. Intake is the one writer (one task, on the leader only), so a
//! decision made against "advertised per node minus what is pending" can never promise a GPU
//! twice, however fast leases arrive. Pure.

use crate::capacity::blocks::{best_fit, place_all};

#[derive(Clone, Debug, PartialEq, Eq)]
struct Reservation {
    lease: String,
    offer: String,
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

/// Pending reservations in the order they were made, which is the order they are placed in.
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
        self.pending_leases(offer).sum()
    }

    /// GPUs of each pending lease of `offer`, in the order they were reserved.
    pub fn pending_for(&self, offer: &str) -> Vec<u32> {
        self.pending_leases(offer).collect()
    }

    fn pending_leases<'a>(&'a self, offer: &'a str) -> impl Iterator<Item = u32> + 'a {
        self.pending
            .iter()
            .filter(move |r| r.offer == offer)
            .map(|r| r.gpus)
    }

    /// Reserves `gpus` of `offer` for `lease` when they fit on one node of `blocks` (advertised
    /// GPUs per node, from the inventory) after every pending reservation of the offer. A lease
    /// already reserved is not counted twice.
    pub fn reserve(
        &mut self,
        lease: &str,
        offer: &str,
        blocks: &[u32],
        gpus: u32,
    ) -> Result<(), Shortfall> {
        if self.pending.iter().any(|r| r.lease == lease) {
            return Ok(());
        }
        let left = place_all(blocks, self.pending_leases(offer)).unwrap_or_default();
        if best_fit(&left, gpus).is_none() {
            return Err(Shortfall {
                offer: offer.to_string(),
                gpus,
                largest_block: left.iter().copied().max().unwrap_or(0),
                pending: self.pending(offer),
            });
        }
        self.pending.push(Reservation {
            lease: lease.to_string(),
            offer: offer.to_string(),
            gpus,
        });
        Ok(())
    }

    /// Drops a reservation whose lease was not created after all.
    pub fn release(&mut self, lease: &str) {
        self.pending.retain(|r| r.lease != lease);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn pending_leases_are_placed_before_the_new_one() {
        let mut r = Reservations::default();
        r.reserve("a", "o", &[8, 4], 4).unwrap();
        r.reserve("b", "o", &[8, 4], 8).unwrap();
        let short = r.reserve("c", "o", &[8, 4], 1).unwrap_err();
        assert_eq!((short.largest_block, short.pending), (0, 12));
        assert!(short.to_string().contains("needs 1 on one node"), "{short}");
        // Another offer's reservations do not count against this one.
        r.reserve("d", "other", &[2], 2).unwrap();
        // Once the inventory counts "a", its GPUs are in the blocks instead.
        r.settle(|lease| lease == "a");
        r.reserve("c", "o", &[8, 4], 0).unwrap();
        assert_eq!(r.pending("o"), 8);
    }

    #[test]
    fn reserving_twice_for_one_lease_counts_once() {
        let mut r = Reservations::default();
        r.reserve("a", "o", &[4], 4).unwrap();
        r.reserve("a", "o", &[4], 4).unwrap();
        assert_eq!(r.pending("o"), 4);
        r.release("a");
        assert_eq!(r.pending("o"), 0);
    }

    proptest! {
        /// Whatever arrives, reserved GPUs never exceed the blocks, and each block holds what
        /// was placed in it.
        #[test]
        fn never_promises_more_than_the_blocks(
            blocks in proptest::collection::vec(0u32..=8, 0..6),
            asks in proptest::collection::vec(1u32..=8, 0..40),
        ) {
            let mut r = Reservations::default();
            for (i, gpus) in asks.iter().enumerate() {
                let _ = r.reserve(&format!("l{i}"), "o", &blocks, *gpus);
            }
            prop_assert!(r.pending("o") <= blocks.iter().sum::<u32>());
            prop_assert!(place_all(&blocks, r.pending_leases("o")).is_some());
        }
    }
}

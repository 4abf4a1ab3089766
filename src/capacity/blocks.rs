//! Free GPUs as per-node blocks: a lease lands on one node, so what fits is decided block by
//! block. Shared by the network's matching and the operator's intake. Pure.

/// The smallest block that holds `gpus`, so large blocks stay whole for large leases.
pub fn best_fit(blocks: &[u32], gpus: u32) -> Option<usize> {
    blocks
        .iter()
        .enumerate()
        .filter(|(_, free)| **free >= gpus)
        .min_by_key(|(i, free)| (**free, *i))
        .map(|(i, _)| i)
}

/// Places `leases` one after another, best fit, and returns what is left of `blocks`; `None`
/// when one of them does not fit.
pub fn place_all(blocks: &[u32], leases: impl IntoIterator<Item = u32>) -> Option<Vec<u32>> {
    let mut left = blocks.to_vec();
    for gpus in leases {
        let i = best_fit(&left, gpus)?;
        left[i] -= gpus;
    }
    Some(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_fit_keeps_big_blocks_whole() {
        assert_eq!(best_fit(&[8, 2, 4, 2], 2), Some(1));
        assert_eq!(best_fit(&[8, 2, 4], 3), Some(2));
        assert_eq!(best_fit(&[8, 2, 4], 9), None);
        assert_eq!(best_fit(&[], 1), None);
        assert_eq!(best_fit(&[0, 0], 0), Some(0));
    }

    #[test]
    fn placing_in_sequence() {
        assert_eq!(place_all(&[8, 4], [4, 4, 2]), Some(vec![2, 0]));
        assert_eq!(place_all(&[8, 4], [8, 4, 1]), None);
        assert_eq!(place_all(&[3], []), Some(vec![3]));
    }
}

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
}

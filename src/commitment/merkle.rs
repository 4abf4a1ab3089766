//! The RFC 6962 Merkle tree CometBFT uses, over any leaves: a leaf is SHA-256(0x00 ‖ bytes), a
//! node SHA-256(0x01 ‖ left ‖ right), split at the largest power of two below the count, and no
//! leaves hash to SHA-256 of nothing. Block results are proven with it, and so are the rows a
//! GPU challenge commits to.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// The hash of a leaf holding `bytes`.
pub fn leaf(bytes: &[u8]) -> Hash {
    Sha256::new()
        .chain_update([0u8])
        .chain_update(bytes)
        .finalize()
        .into()
}

/// The hash of an inner node over its two children.
pub fn inner(left: &Hash, right: &Hash) -> Hash {
    Sha256::new()
        .chain_update([1u8])
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

/// The largest power of two below `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    let power = n.next_power_of_two();
    if power == n { n / 2 } else { power / 2 }
}

/// The root over leaf hashes, in order.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let (left, right) = leaves.split_at(split(n as u64) as usize);
            inner(&root(left), &root(right))
        }
    }
}

/// Every leaf's aunts (sibling hashes from the leaf up), in one pass: O(n log n) hashes.
pub fn all_aunts(leaves: &[Hash]) -> Vec<Vec<Hash>> {
    if leaves.is_empty() {
        return Vec::new();
    }
    subtree(leaves).1
}

/// The root of `leaves` (at least one) and each leaf's aunts within it, leaf up.
fn subtree(leaves: &[Hash]) -> (Hash, Vec<Vec<Hash>>) {
    if let [only] = leaves {
        return (*only, vec![Vec::new()]);
    }
    let (left, right) = leaves.split_at(split(leaves.len() as u64) as usize);
    let (left_root, mut left_aunts) = subtree(left);
    let (right_root, right_aunts) = subtree(right);
    for aunts in &mut left_aunts {
        aunts.push(right_root);
    }
    left_aunts.extend(right_aunts.into_iter().map(|mut aunts| {
        aunts.push(left_root);
        aunts
    }));
    (inner(&left_root, &right_root), left_aunts)
}

/// One leaf's aunts, leaf up: O(n) hashes and no more memory than the leaves.
pub fn aunts(leaves: &[Hash], index: usize) -> Vec<Hash> {
    let mut path = Vec::new();
    let (mut lo, mut hi, mut stack) = (0, leaves.len(), Vec::new());
    while hi - lo > 1 {
        let mid = lo + split((hi - lo) as u64) as usize;
        if index < mid {
            stack.push(root(&leaves[mid..hi]));
            hi = mid;
        } else {
            stack.push(root(&leaves[lo..mid]));
            lo = mid;
        }
    }
    while let Some(aunt) = stack.pop() {
        path.push(aunt);
    }
    path
}

/// How many aunts the leaf at `index` of `total` has.
pub fn depth(index: u64, total: u64) -> usize {
    if total <= 1 {
        return 0;
    }
    let k = split(total);
    1 + if index < k {
        depth(index, k)
    } else {
        depth(index - k, total - k)
    }
}

/// The root from a leaf's hash and its aunts, leaf up (CometBFT's `computeHashFromAunts`);
/// `None` unless `index < total` and there are exactly [`depth`] aunts.
pub fn root_from_aunts(index: u64, total: u64, leaf_hash: Hash, aunts: &[Hash]) -> Option<Hash> {
    if index >= total || aunts.len() != depth(index, total) {
        return None;
    }
    if total == 1 {
        return Some(leaf_hash);
    }
    let k = split(total);
    let (last, rest) = aunts.split_last()?;
    Some(if index < k {
        inner(&root_from_aunts(index, k, leaf_hash, rest)?, last)
    } else {
        inner(
            last,
            &root_from_aunts(index - k, total - k, leaf_hash, rest)?,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_leafs_aunts_are_those_of_the_whole_pass_and_lead_to_the_root() {
        for n in 1..=33usize {
            let leaves: Vec<Hash> = (0..n).map(|i| leaf(&i.to_le_bytes())).collect();
            let all = all_aunts(&leaves);
            for (i, path) in all.iter().enumerate() {
                assert_eq!(&aunts(&leaves, i), path, "leaf {i} of {n}");
                assert_eq!(path.len(), depth(i as u64, n as u64));
                assert_eq!(
                    root_from_aunts(i as u64, n as u64, leaves[i], path),
                    Some(root(&leaves))
                );
                assert_eq!(root_from_aunts(n as u64, n as u64, leaves[i], path), None);
            }
        }
    }
}

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
    path(leaves.len(), index, |lo, hi| root(&leaves[lo..hi]))
}

/// The aunts of leaf `index` of `count`, leaf up, from the root of any range of leaves.
fn path(count: usize, index: usize, root_of: impl Fn(usize, usize) -> Hash) -> Vec<Hash> {
    let (mut lo, mut hi, mut stack) = (0, count, Vec::new());
    while hi - lo > 1 {
        let mid = lo + split((hi - lo) as u64) as usize;
        if index < mid {
            stack.push(root_of(mid, hi));
            hi = mid;
        } else {
            stack.push(root_of(lo, mid));
            lo = mid;
        }
    }
    stack.reverse();
    stack
}

/// A tree over many leaves (a GPU probe commits to hundreds of millions of rows) that gives its
/// root and any leaf's aunts without hashing every leaf again: it keeps the root of every
/// aligned block of 2^[`Tree::BLOCK_BITS`] leaves and of every aligned pair above, a 128th of
/// the leaves' memory, and hashes at most a block's leaves for a path.
pub struct Tree {
    leaves: Vec<Hash>,
    /// `blocks[j][i]`: the root of leaves i·2^(B+j) .. (i+1)·2^(B+j), for whole blocks only.
    blocks: Vec<Vec<Hash>>,
}

impl Tree {
    pub const BLOCK_BITS: u32 = 8;

    /// Hashes the blocks on every core: a GPU's probe commits to ~10⁸ rows.
    pub fn new(leaves: Vec<Hash>) -> Tree {
        let mut blocks = Vec::new();
        let mut level = block_roots(&leaves);
        while !level.is_empty() {
            let above = level
                .chunks_exact(2)
                .map(|pair| inner(&pair[0], &pair[1]))
                .collect();
            blocks.push(std::mem::replace(&mut level, above));
        }
        Tree { leaves, blocks }
    }

    /// The root of leaves `lo..hi`, as [`root`] gives it. A range of the tree's own splits
    /// that is a whole power of two starts at a multiple of it, so whole blocks are looked up.
    fn root_of(&self, lo: usize, hi: usize) -> Hash {
        let size = hi - lo;
        let bits = size.trailing_zeros();
        if size.is_power_of_two() && bits >= Tree::BLOCK_BITS && lo.is_multiple_of(size) {
            return self.blocks[(bits - Tree::BLOCK_BITS) as usize][lo >> bits];
        }
        if size <= 1 << Tree::BLOCK_BITS {
            return root(&self.leaves[lo..hi]);
        }
        let mid = lo + split(size as u64) as usize;
        inner(&self.root_of(lo, mid), &self.root_of(mid, hi))
    }

    pub fn root(&self) -> Hash {
        self.root_of(0, self.leaves.len())
    }

    /// Leaf `index`'s aunts, leaf up, as [`aunts`] gives them.
    pub fn aunts(&self, index: usize) -> Vec<Hash> {
        path(self.leaves.len(), index, |lo, hi| self.root_of(lo, hi))
    }
}

/// The root of every whole block of 2^[`Tree::BLOCK_BITS`] leaves, in order, shared out among
/// the cores in runs of whole blocks.
fn block_roots(leaves: &[Hash]) -> Vec<Hash> {
    let block = 1 << Tree::BLOCK_BITS;
    let blocks = leaves.len() / block;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let run = blocks.div_ceil(threads).max(1) * block;
    std::thread::scope(|scope| {
        let running: Vec<_> = leaves[..blocks * block]
            .chunks(run)
            .map(|part| scope.spawn(move || part.chunks_exact(block).map(root).collect::<Vec<_>>()))
            .collect();
        running
            .into_iter()
            .flat_map(|t| t.join().expect("a hashing thread panicked"))
            .collect()
    })
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

    #[test]
    fn a_tree_gives_the_root_and_aunts_the_leaves_give() {
        let block = 1usize << Tree::BLOCK_BITS;
        for n in [
            0,
            1,
            2,
            3,
            block - 1,
            block,
            block + 1,
            300,
            2 * block - 1,
            2 * block,
        ]
        .into_iter()
        .chain([
            2 * block + 1,
            3 * block,
            4 * block + 7,
            8 * block,
            8 * block + 1,
            37 * block + 5, // shared unevenly among the cores
        ]) {
            let leaves: Vec<Hash> = (0..n).map(|i| leaf(&i.to_le_bytes())).collect();
            let tree = Tree::new(leaves.clone());
            assert_eq!(tree.root(), root(&leaves), "{n} leaves");
            for i in [0, 1, block - 1, block, n / 2, n.saturating_sub(1)] {
                if i < n {
                    assert_eq!(tree.aunts(i), aunts(&leaves, i), "leaf {i} of {n}");
                }
            }
        }
    }
}

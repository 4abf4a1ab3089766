//! What a block header commits to about its previous block's transaction results: the
//! `LastResultsHash` CometBFT computes, and a Merkle proof that one result is among them. This is
//! how a client checks a lease against a header the validators signed, rather than trust the
//! gateway that sent it.
//!
//! CometBFT hashes each result as the protobuf encoding of its deterministic fields (`code`,
//! `data`, `gas_wanted`, `gas_used`; never the log) in an RFC 6962 tree: a leaf is
//! SHA-256(0x00 ‖ bytes), a node SHA-256(0x01 ‖ left ‖ right), split at the largest power of
//! two below the count, and no leaves hash to SHA-256 of nothing.

use prost::Message;
use sha2::{Digest, Sha256};
use tendermint_proto::v0_38::abci::ExecTxResult;

/// What one transaction of a block did: `code` 0 and the encoded [`TxOutcome`](crate::wire::proto::TxOutcome) when applied;
/// otherwise the gRPC status code of the refusal and its reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxResult {
    pub code: u32,
    pub data: Vec<u8>,
    pub log: String,
}

/// A result's place among its block's results, and the sibling hashes from its leaf up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultProof {
    pub total: u64,
    pub index: u64,
    pub aunts: Vec<[u8; 32]>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofError {
    #[error("proof.index: {index} is not below proof.total {total}")]
    Index { index: u64, total: u64 },
    #[error("proof.aunts: {got} given, a tree of {total} leaves needs {needed} at index {index}")]
    Aunts {
        got: usize,
        needed: usize,
        index: u64,
        total: u64,
    },
    #[error("proof.outcome: at its place, does not hash to the header's LastResultsHash")]
    Mismatch,
}

/// The bytes CometBFT hashes for one result.
pub fn result_bytes(result: &TxResult) -> Vec<u8> {
    ExecTxResult {
        code: result.code,
        data: result.data.clone().into(),
        ..Default::default()
    }
    .encode_to_vec()
}

fn leaf(bytes: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update([0u8])
        .chain_update(bytes)
        .finalize()
        .into()
}

fn inner(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    Sha256::new()
        .chain_update([1u8])
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

/// The largest power of two below `n` (n ≥ 2).
fn split(n: usize) -> usize {
    let power = n.next_power_of_two();
    if power == n { n / 2 } else { power / 2 }
}

fn root(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let (left, right) = leaves.split_at(split(n));
            inner(&root(left), &root(right))
        }
    }
}

/// The `LastResultsHash` of the next block's header, over `results` in block order.
pub fn results_hash(results: &[TxResult]) -> [u8; 32] {
    let leaves: Vec<_> = results.iter().map(|r| leaf(&result_bytes(r))).collect();
    root(&leaves)
}

/// The proof of each of `results`, in order: one pass over the tree, so a block's proofs cost
/// O(n log n) hashes, not a tree per result.
pub fn prove_all(results: &[TxResult]) -> Vec<ResultProof> {
    let leaves: Vec<_> = results.iter().map(|r| leaf(&result_bytes(r))).collect();
    if leaves.is_empty() {
        return Vec::new();
    }
    let total = leaves.len() as u64;
    let (_, aunts) = subtree(&leaves);
    aunts
        .into_iter()
        .enumerate()
        .map(|(index, aunts)| ResultProof {
            total,
            index: index as u64,
            aunts,
        })
        .collect()
}

/// The root of `leaves` (at least one) and each leaf's aunts within it, leaf up.
fn subtree(leaves: &[[u8; 32]]) -> ([u8; 32], Vec<Vec<[u8; 32]>>) {
    if let [only] = leaves {
        return (*only, vec![Vec::new()]);
    }
    let (left, right) = leaves.split_at(split(leaves.len()));
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

/// Checks that `result` is the `proof.index`th of the results `root` commits to.
pub fn verify(
    root_hash: &[u8; 32],
    result: &TxResult,
    proof: &ResultProof,
) -> Result<(), ProofError> {
    let (index, total) = (proof.index, proof.total);
    if index >= total {
        return Err(ProofError::Index { index, total });
    }
    let computed = from_aunts(index, total, leaf(&result_bytes(result)), &proof.aunts)?;
    if &computed == root_hash {
        Ok(())
    } else {
        Err(ProofError::Mismatch)
    }
}

/// The root from a leaf's hash and its aunts, leaf up (CometBFT's `computeHashFromAunts`).
fn from_aunts(
    index: u64,
    total: u64,
    leaf_hash: [u8; 32],
    aunts: &[[u8; 32]],
) -> Result<[u8; 32], ProofError> {
    let needed = depth(index, total);
    if aunts.len() != needed {
        return Err(ProofError::Aunts {
            got: aunts.len(),
            needed,
            index,
            total,
        });
    }
    if total == 1 {
        return Ok(leaf_hash);
    }
    let k = split(total as usize) as u64;
    let (last, rest) = aunts.split_last().expect("depth ≥ 1 for total ≥ 2");
    Ok(if index < k {
        inner(&from_aunts(index, k, leaf_hash, rest)?, last)
    } else {
        inner(last, &from_aunts(index - k, total - k, leaf_hash, rest)?)
    })
}

/// How many aunts the leaf at `index` of `total` has.
fn depth(index: u64, total: u64) -> usize {
    if total <= 1 {
        return 0;
    }
    let k = split(total as usize) as u64;
    1 + if index < k {
        depth(index, k)
    } else {
        depth(index - k, total - k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results(n: usize) -> Vec<TxResult> {
        (0..n)
            .map(|i| TxResult {
                code: (i % 3) as u32,
                data: vec![i as u8; i],
                log: format!("not hashed {i}"),
            })
            .collect()
    }

    #[test]
    fn the_tree_is_rfc_6962_as_cometbft_builds_it() {
        assert_eq!(
            hex::encode(results_hash(&[])),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let one = results(1);
        assert_eq!(results_hash(&one), leaf(&result_bytes(&one[0])));
        let three = results(3);
        let leaves: Vec<_> = three.iter().map(|r| leaf(&result_bytes(r))).collect();
        assert_eq!(
            results_hash(&three),
            inner(&inner(&leaves[0], &leaves[1]), &leaves[2]),
            "split at the largest power of two below the count"
        );
        let mut logged = three.clone();
        logged[1].log = "another reason".into();
        assert_eq!(
            results_hash(&logged),
            results_hash(&three),
            "the log is not hashed"
        );
    }

    #[test]
    fn every_result_of_every_block_size_proves_and_nothing_else_does() {
        assert_eq!(prove_all(&[]), []);
        for n in 1..=17 {
            let all = results(n);
            let root = results_hash(&all);
            let proofs = prove_all(&all);
            assert_eq!(proofs.len(), n);
            for i in 0..n {
                let proof = proofs[i].clone();
                assert_eq!(verify(&root, &all[i], &proof), Ok(()), "{i} of {n}");
                let mut forged = all[i].clone();
                forged.data.push(0xff);
                assert_eq!(verify(&root, &forged, &proof), Err(ProofError::Mismatch));
                if n > 1 {
                    let other = &all[(i + 1) % n];
                    assert!(verify(&root, other, &proof).is_err(), "{i} of {n}");
                }
                let mut short = proof.clone();
                if short.aunts.pop().is_some() {
                    assert!(matches!(
                        verify(&root, &all[i], &short),
                        Err(ProofError::Aunts { .. })
                    ));
                }
            }
            let past = ResultProof {
                total: n as u64,
                index: n as u64,
                aunts: vec![],
            };
            assert_eq!(
                verify(&root, &all[0], &past).unwrap_err().to_string(),
                format!("proof.index: {n} is not below proof.total {n}")
            );
        }
    }
}

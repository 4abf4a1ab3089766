//! What a block header commits to about its previous block's transaction results: the
//! `LastResultsHash` CometBFT computes, and a Merkle proof that one result is among them. This is
//! how a client checks a lease against a header the validators signed, rather than trust the
//! gateway that sent it.
//!
//! CometBFT hashes each result as the protobuf encoding of its deterministic fields (`code`,
//! `data`, `gas_wanted`, `gas_used`; never the log) in its RFC 6962 tree ([`merkle`]).

use prost::Message;
use tendermint_proto::v0_38::abci::ExecTxResult;

use super::merkle::{self, leaf};

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

/// The `LastResultsHash` of the next block's header, over `results` in block order.
pub fn results_hash(results: &[TxResult]) -> [u8; 32] {
    let leaves: Vec<_> = results.iter().map(|r| leaf(&result_bytes(r))).collect();
    merkle::root(&leaves)
}

/// The proof of each of `results`, in order: one pass over the tree, so a block's proofs cost
/// O(n log n) hashes, not a tree per result.
pub fn prove_all(results: &[TxResult]) -> Vec<ResultProof> {
    let leaves: Vec<_> = results.iter().map(|r| leaf(&result_bytes(r))).collect();
    let total = leaves.len() as u64;
    merkle::all_aunts(&leaves)
        .into_iter()
        .enumerate()
        .map(|(index, aunts)| ResultProof {
            total,
            index: index as u64,
            aunts,
        })
        .collect()
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
    let needed = merkle::depth(index, total);
    let computed = merkle::root_from_aunts(index, total, leaf(&result_bytes(result)), &proof.aunts)
        .ok_or(ProofError::Aunts {
            got: proof.aunts.len(),
            needed,
            index,
            total,
        })?;
    if &computed == root_hash {
        Ok(())
    } else {
        Err(ProofError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::merkle::inner;
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

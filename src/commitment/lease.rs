//! A lease the provider can trust without trusting the node that sent it: the lease must be in
//! a transaction result of block h (an order's match, or the leases waiting for the provider),
//! that result must be among those the header of block h+1 commits to, and that header must be
//! signed by more than 2/3 of the voting power of the validators pinned at install.

use prost::Message;

use super::header::{HeaderError, PinnedNetwork};
use super::results::{self, ProofError, ResultProof, TxResult};
use crate::wire::proto::{LeaseProof, TxOutcome, tx_outcome};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseProofError {
    #[error("proof: a lease from a validator must carry the proof it was committed")]
    Missing,
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error(
        "proof.height: the result is of block {claimed}, so the header must be of block {expected}, not {got}"
    )]
    Height {
        claimed: i64,
        expected: i64,
        got: u64,
    },
    #[error("proof.aunts[{0}]: must be 32 bytes")]
    Aunt(usize),
    #[error("proof.signedHeader.header.lastResultsHash: the header commits to no results")]
    NoResults,
    #[error(transparent)]
    Result(#[from] ProofError),
    #[error("proof.outcome: is not a transaction outcome: {0}")]
    Outcome(String),
    #[error("proof.outcome: the committed result does not hold this lease")]
    NotInOutcome,
}

/// Checks that `lease_body` (the encoded LeaseBody as received) was committed by the pinned
/// validators, as `proof` shows; the height of the block that committed it.
pub fn verify_committed_lease(
    pinned: &PinnedNetwork,
    lease_body: &[u8],
    proof: Option<&LeaseProof>,
) -> Result<i64, LeaseProofError> {
    let proof = proof.ok_or(LeaseProofError::Missing)?;
    let header = pinned.verify(&proof.signed_header)?.header;
    let expected = proof.height.saturating_add(1);
    if i64::try_from(header.height.value()) != Ok(expected) {
        return Err(LeaseProofError::Height {
            claimed: proof.height,
            expected,
            got: header.height.value(),
        });
    }
    let aunts = proof
        .aunts
        .iter()
        .enumerate()
        .map(|(i, aunt)| {
            <[u8; 32]>::try_from(aunt.as_slice()).map_err(|_| LeaseProofError::Aunt(i))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let root: [u8; 32] = match header.last_results_hash {
        Some(tendermint::Hash::Sha256(root)) => root,
        _ => return Err(LeaseProofError::NoResults),
    };
    let result = TxResult {
        code: 0,
        data: proof.outcome.clone(),
        log: String::new(),
    };
    let place = ResultProof {
        total: proof.total,
        index: proof.index,
        aunts,
    };
    results::verify(&root, &result, &place)?;
    let outcome = TxOutcome::decode(proof.outcome.as_slice())
        .map_err(|e| LeaseProofError::Outcome(e.to_string()))?;
    let held = match outcome.kind {
        // A gateway's batch: the lease is in what one of its applied requests answered.
        Some(tx_outcome::Kind::Batch(batch)) => batch.items.iter().any(|item| {
            item.code == 0
                && TxOutcome::decode(item.outcome.as_slice())
                    .is_ok_and(|inner| holds(inner.kind, lease_body))
        }),
        kind => holds(kind, lease_body),
    };
    if held {
        Ok(proof.height)
    } else {
        Err(LeaseProofError::NotInOutcome)
    }
}

/// Whether the outcome of one request holds the lease: the `ordered` outcome of its order, or
/// the `waiting` list of its provider.
fn holds(outcome: Option<tx_outcome::Kind>, lease_body: &[u8]) -> bool {
    let holds = |lease: &crate::wire::proto::LeaseBody| lease.encode_to_vec() == lease_body;
    match outcome {
        Some(tx_outcome::Kind::Ordered(placed)) => placed.lease.as_ref().is_some_and(holds),
        Some(tx_outcome::Kind::Waiting(waiting)) => waiting.waiting.iter().any(holds),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commitment::results::{prove_all, results_hash};
    use crate::commitment::testchain::{TestChain, encode};
    use crate::wire::proto::{LeaseBody, Placed, WaitingLeases};

    fn lease(id: &str) -> LeaseBody {
        LeaseBody {
            lease_id: id.into(),
            provider: vec![7; 32],
            offer_name: "a100".into(),
            gpus: 2,
            price_per_gpu_hour: "1000".into(),
            denomination: "usd".into(),
            duration_seconds: 3600,
            matched_at: 1_796_000_000,
            answer_by: 1_796_000_030,
            ..Default::default()
        }
    }

    fn outcome(kind: tx_outcome::Kind) -> Vec<u8> {
        TxOutcome { kind: Some(kind) }.encode_to_vec()
    }

    /// A block at `height` whose results are `outcomes` (with a refusal first), and the proof
    /// of result `index`, signed by `signers` of `chain`.
    fn proof_of(
        chain: &TestChain,
        height: i64,
        outcomes: &[Vec<u8>],
        index: usize,
        signers: &[usize],
    ) -> LeaseProof {
        let mut results = vec![TxResult {
            code: 3,
            data: vec![],
            log: "refused".into(),
        }];
        results.extend(outcomes.iter().map(|data| TxResult {
            code: 0,
            data: data.clone(),
            log: String::new(),
        }));
        let place = prove_all(&results).swap_remove(index + 1);
        let header = chain.signed_header(height as u64 + 1, results_hash(&results), signers, None);
        LeaseProof {
            height,
            outcome: outcomes[index].clone(),
            index: place.index,
            total: place.total,
            aunts: place.aunts.iter().map(|a| a.to_vec()).collect(),
            signed_header: encode(header),
        }
    }

    fn setting() -> (TestChain, PinnedNetwork, Vec<Vec<u8>>) {
        let chain = TestChain::new("gpubridge-test", 4, 1);
        let pinned = PinnedNetwork::from_genesis(&chain.genesis()).unwrap();
        let outcomes = vec![
            outcome(tx_outcome::Kind::Ordered(Placed {
                order: None,
                provider: "p".into(),
                lease: Some(lease("ordered")),
            })),
            outcome(tx_outcome::Kind::Waiting(WaitingLeases {
                provider: "p".into(),
                waiting: vec![lease("first"), lease("second")],
            })),
        ];
        (chain, pinned, outcomes)
    }

    #[test]
    fn a_lease_in_a_committed_result_is_proven() {
        let (chain, pinned, outcomes) = setting();
        let ordered = proof_of(&chain, 41, &outcomes, 0, &[0, 1, 2]);
        let body = lease("ordered").encode_to_vec();
        assert_eq!(
            verify_committed_lease(&pinned, &body, Some(&ordered)),
            Ok(41)
        );
        let waiting = proof_of(&chain, 41, &outcomes, 1, &[0, 1, 2, 3]);
        for id in ["first", "second"] {
            let body = lease(id).encode_to_vec();
            assert_eq!(
                verify_committed_lease(&pinned, &body, Some(&waiting)),
                Ok(41)
            );
        }
    }

    #[test]
    fn a_lease_the_validators_did_not_commit_is_refused() {
        let (chain, pinned, outcomes) = setting();
        let body = lease("ordered").encode_to_vec();
        let proof = proof_of(&chain, 41, &outcomes, 0, &[0, 1, 2]);
        let check =
            |body: &[u8], proof: &LeaseProof| verify_committed_lease(&pinned, body, Some(proof));

        assert_eq!(
            verify_committed_lease(&pinned, &body, None),
            Err(LeaseProofError::Missing)
        );

        // A gateway that changes the lease it relays (a lower price, another lease id).
        let mut cheaper = lease("ordered");
        cheaper.price_per_gpu_hour = "1".into();
        assert_eq!(
            check(&cheaper.encode_to_vec(), &proof),
            Err(LeaseProofError::NotInOutcome)
        );
        assert_eq!(
            check(&lease("invented").encode_to_vec(), &proof),
            Err(LeaseProofError::NotInOutcome)
        );

        // ...or the outcome, to hold the lease it invents.
        let mut forged = proof.clone();
        forged.outcome = outcome(tx_outcome::Kind::Ordered(Placed {
            order: None,
            provider: "p".into(),
            lease: Some(lease("invented")),
        }));
        assert_eq!(
            check(&lease("invented").encode_to_vec(), &forged),
            Err(LeaseProofError::Result(ProofError::Mismatch))
        );

        // The proof of another result of the block.
        let mut elsewhere = proof.clone();
        elsewhere.index = 2;
        assert!(matches!(
            check(&body, &elsewhere),
            Err(LeaseProofError::Result(_))
        ));

        // A result claimed for another height than the header commits.
        let mut later = proof.clone();
        later.height = 42;
        assert_eq!(
            check(&body, &later).unwrap_err().to_string(),
            "proof.height: the result is of block 42, so the header must be of block 43, not 42"
        );

        let mut short = proof.clone();
        short.aunts[0].pop();
        assert_eq!(check(&body, &short), Err(LeaseProofError::Aunt(0)));

        // Too few validators signed; validators of another network signed.
        let weak = proof_of(&chain, 41, &outcomes, 0, &[0, 1]);
        assert!(matches!(
            check(&body, &weak),
            Err(LeaseProofError::Header(HeaderError::NotEnoughPower {
                signed: 20,
                total: 40
            }))
        ));
        let impostors = TestChain::new("gpubridge-test", 4, 100);
        let foreign = proof_of(&impostors, 41, &outcomes, 0, &[0, 1, 2, 3]);
        assert!(matches!(
            check(&body, &foreign),
            Err(LeaseProofError::Header(HeaderError::ValidatorSet { .. }))
        ));

        // A committed result that is not a lease's.
        let done = vec![outcome(tx_outcome::Kind::Done(crate::wire::proto::Ack {}))];
        let ack = proof_of(&chain, 41, &done, 0, &[0, 1, 2, 3]);
        assert_eq!(check(&body, &ack), Err(LeaseProofError::NotInOutcome));
    }

    #[test]
    fn a_lease_in_what_a_batch_applied_is_proven_and_nowhere_else_in_it() {
        use crate::wire::proto::{BatchItem, BatchOutcome};
        let (chain, pinned, outcomes) = setting();
        let item = |code: u32, outcome: &[u8]| BatchItem {
            code,
            outcome: outcome.to_vec(),
            reason: String::new(),
        };
        // A refused request whose (forged) outcome names a lease, then the applied ones.
        let batch = outcome(tx_outcome::Kind::Batch(BatchOutcome {
            items: vec![
                item(
                    9,
                    &outcome(tx_outcome::Kind::Ordered(Placed {
                        order: None,
                        provider: "p".into(),
                        lease: Some(lease("refused")),
                    })),
                ),
                item(0, &outcomes[0]),
                item(0, &outcomes[1]),
            ],
        }));
        let nested = outcome(tx_outcome::Kind::Batch(BatchOutcome {
            items: vec![item(0, &batch)],
        }));
        let results = [batch, nested];
        let check = |id: &str, index: usize| {
            let proof = proof_of(&chain, 41, &results, index, &[0, 1, 2]);
            verify_committed_lease(&pinned, &lease(id).encode_to_vec(), Some(&proof))
        };
        for id in ["ordered", "first", "second"] {
            assert_eq!(check(id, 0), Ok(41), "{id}");
        }
        assert_eq!(
            check("refused", 0),
            Err(LeaseProofError::NotInOutcome),
            "a refused request made no lease"
        );
        assert_eq!(
            check("ordered", 1),
            Err(LeaseProofError::NotInOutcome),
            "a batch holds no batch"
        );
    }
}

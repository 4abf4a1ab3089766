//! The network's state machine as an ABCI 2.0 application, without the socket: what each of
//! CometBFT's requests does to the [`Store`], in plain types. The socket server ([`super::abci`])
//! only translates CometBFT's messages to these calls.
//!
//! Consensus requests come strictly in order on one connection: InitChain once, then for each
//! block FinalizeBlock (apply it, answer each transaction's result and the app hash) and Commit
//! (persist it with its height). `Info` answers the height and hash persisted last, from which a
//! restarted CometBFT replays the blocks the application has not seen.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::node::state::{Block, NonceUse, Outcome, Params, StateError, Tx};
use crate::node::store::{HubError, Store};
use crate::wire::Rejection;
use crate::wire::proto::LeaseBody;

use super::codec::{self, Carried};
use crate::commitment::TxResult;

/// The application's part of CometBFT's `genesis.json`: `app_state`.
#[derive(Debug, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppState {
    /// The network's parameters at genesis; the defaults when `app_state` is empty.
    pub params: Params,
}

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error(
        "genesis app_state: {0} (expected {{\"params\": {{…}}}}, as `gpubridge network --print-app-state` prints)"
    )]
    Genesis(serde_json::Error),
    #[error(transparent)]
    Store(#[from] HubError),
}

/// A block as FinalizeBlock delivers it, after the socket's types are gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecidedBlock {
    pub height: u64,
    /// Seconds since the epoch of the block's (BFT) time.
    pub time: i64,
    /// The block's hash: the same on every validator, unknown before the block was proposed.
    pub hash: Vec<u8>,
    pub txs: Vec<Vec<u8>>,
}

/// What a decided block did.
#[derive(Clone, Debug, PartialEq)]
pub struct Finalized {
    /// One per transaction, in the block's order: what the next header commits to.
    pub results: Vec<TxResult>,
    /// What each request did, by its hash ([`codec::request_hash`]; a transaction that did not
    /// decode by the SHA-256 of its bytes): one per request of a batch, in the block's order.
    pub answers: Vec<([u8; 32], TxResult)>,
    /// The state's hash after the block: the app hash the next block's header commits to.
    pub app_hash: [u8; 32],
    /// The block's height.
    pub height: u64,
    /// Each applied request's outcome with the index of its transaction's result, for the
    /// gateway to deliver leases from and prove them by.
    pub applied: Vec<(usize, Outcome)>,
    /// Leases the block's upkeep made for standing orders, with their providers' keys.
    pub matched: Vec<(String, LeaseBody)>,
}

pub struct Chain {
    store: Arc<Store>,
}

impl Chain {
    pub fn new(store: Arc<Store>) -> Chain {
        Chain { store }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// InitChain: the genesis state from `app_state`; its hash.
    pub fn init_chain(&self, app_state: &[u8]) -> Result<[u8; 32], ChainError> {
        let genesis: AppState = if app_state.iter().all(u8::is_ascii_whitespace) {
            AppState::default()
        } else {
            serde_json::from_slice(app_state).map_err(ChainError::Genesis)?
        };
        Ok(self.store.init_chain(genesis.params)?)
    }

    /// Info: the last height persisted and the state's hash then.
    pub fn info(&self) -> (u64, [u8; 32]) {
        self.store.chain_head()
    }

    /// CheckTx, before a transaction enters the mempool: it decodes, its request is signed by
    /// its signer over the received bytes and fresh at `now` (the node's clock: the mempool is
    /// not consensus), and its nonce was not used in a block applied before. CometBFT rechecks
    /// the mempool after each Commit (`recheck`), so a replay waiting there is dropped too; the
    /// signature it verified when the bytes came in is not verified again. A batch is admitted
    /// only when every request in it would be, and no two use one nonce.
    /// What the state says of it otherwise is decided in its block.
    pub fn check_tx(&self, bytes: &[u8], now: i64, recheck: bool) -> TxResult {
        let checked = codec::decode_carried(bytes).and_then(|carried| match carried {
            Carried::One(tx) => self.check_request(&tx, now, recheck).map(drop),
            Carried::Batch(txs) => {
                let mut nonces = BTreeSet::new();
                txs.iter().enumerate().try_for_each(|(i, tx)| {
                    let used = self
                        .check_request(tx, now, recheck)
                        .map_err(|r| r.within(&format!("transactions[{i}]")))?;
                    match nonces.insert((used.signer.to_bytes(), used.nonce)) {
                        true => Ok(()),
                        false => Err(Rejection::Duplicate(format!(
                            "transactions[{i}]: header.nonce: an earlier request of the batch \
                             has it (replay)"
                        ))),
                    }
                })
            }
        });
        match checked {
            Ok(()) => TxResult::default(),
            Err(rejection) => codec::refused(&rejection),
        }
    }

    /// One request's part of [`Chain::check_tx`]: its nonce once admitted.
    fn check_request(&self, tx: &Tx, now: i64, recheck: bool) -> Result<NonceUse, Rejection> {
        let used = if recheck {
            codec::recheck_envelope(tx, now)
        } else {
            codec::verify_envelope(tx, now)
        }?;
        match self.store.nonce_seen(&used) {
            false => Ok(used),
            true => Err(Rejection::Duplicate(
                "header.nonce: this request was already received (replay)".into(),
            )),
        }
    }

    /// FinalizeBlock: applies the block's upkeep and each of its requests in order, those of a
    /// batch one after the other in its place. A transaction that does not decode is refused in
    /// its place; the others are applied.
    pub fn finalize_block(&self, block: &DecidedBlock) -> Result<Finalized, ChainError> {
        let decoded: Vec<_> = block.txs.iter().map(|b| codec::decode_carried(b)).collect();
        let requests: Vec<Tx> = decoded
            .iter()
            .flatten()
            .flat_map(|carried| carried.requests().iter().cloned())
            .collect();
        let ((swept, outcomes), app_hash) = self.store.decide(
            &Block {
                height: block.height,
                time: block.time,
                entropy: entropy(&block.hash),
            },
            &requests,
        )?;
        let mut outcomes = outcomes.into_iter();
        let mut results = Vec::with_capacity(block.txs.len());
        let mut answers = Vec::with_capacity(requests.len());
        let mut applied = Vec::new();
        for (index, (carried, bytes)) in decoded.into_iter().zip(&block.txs).enumerate() {
            let carried = match carried {
                Err(rejection) => {
                    let refused = codec::refused(&rejection);
                    answers.push((Sha256::digest(bytes).into(), refused.clone()));
                    results.push(refused);
                    continue;
                }
                Ok(carried) => carried,
            };
            let mut items = Vec::with_capacity(carried.requests().len());
            let alone = matches!(carried, Carried::One(_));
            for tx in carried.requests() {
                let outcome = outcomes.next().ok_or_else(|| {
                    HubError::State(StateError::Inconsistent(
                        "fewer outcomes than requests".into(),
                    ))
                })?;
                let result = codec::result_of(&outcome);
                // Alone, a request is known by CometBFT's hash of the bytes received.
                let hash = match alone {
                    true => Sha256::digest(bytes).into(),
                    false => codec::request_hash(tx),
                };
                answers.push((hash, result.clone()));
                items.push(result);
                if let Ok(outcome) = outcome {
                    applied.push((index, outcome));
                }
            }
            results.push(match carried {
                Carried::One(_) => items.swap_remove(0),
                Carried::Batch(_) => codec::batch_result(&items),
            });
        }
        Ok(Finalized {
            height: block.height,
            results,
            answers,
            app_hash,
            applied,
            matched: swept.matched,
        })
    }

    /// Commit: persists the block finalized last; its height.
    pub fn commit(&self) -> Result<u64, ChainError> {
        Ok(self.store.commit_decided()?)
    }
}

/// A block's randomness from its hash: 32 bytes, whatever the hash's length.
fn entropy(hash: &[u8]) -> [u8; 32] {
    match hash.try_into() {
        Ok(bytes) => bytes,
        Err(_) => Sha256::digest(hash).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::generate_key;
    use crate::wire::envelope::seal;
    use crate::wire::proto::DepositBody;

    fn chain(dir: &tempfile::TempDir) -> Chain {
        let store = Store::open(
            &dir.path().join("network.redb"),
            generate_key(),
            Params::default(),
        )
        .unwrap();
        Chain::new(Arc::new(store))
    }

    fn deposit_tx(key: &ed25519_dalek::SigningKey, now: i64) -> Tx {
        let body = DepositBody {
            header: None,
            amount: "5".into(),
            denomination: "USDC".into(),
        };
        Tx::Deposit(seal(key, body, now))
    }

    fn deposit(key: &ed25519_dalek::SigningKey, now: i64) -> Vec<u8> {
        codec::encode_tx(&deposit_tx(key, now))
    }

    fn block(height: u64, time: i64, txs: Vec<Vec<u8>>) -> DecidedBlock {
        DecidedBlock {
            height,
            time,
            hash: Sha256::digest(height.to_be_bytes()).to_vec(),
            txs,
        }
    }

    #[test]
    fn genesis_parameters_come_from_app_state_and_a_bad_one_names_the_rule() {
        let dir = tempfile::tempdir().unwrap();
        let chain = chain(&dir);
        let error = chain
            .init_chain(br#"{"params": {"answer_seconds": 7}}"#)
            .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("genesis app_state: missing field"),
            "{error}"
        );
        let params = Params {
            answer_seconds: 7,
            ..Params::default()
        };
        let app_state = serde_json::to_vec(&AppState {
            params: params.clone(),
        })
        .unwrap();
        let hash = chain.init_chain(&app_state).unwrap();
        assert_eq!(chain.info(), (0, hash));
        assert_eq!(chain.store().params().unwrap(), params);
        // Killed before its first block, a validator is asked again; the genesis decides.
        let defaults = chain.init_chain(b" ").unwrap();
        assert_ne!(defaults, hash);
        assert_eq!(chain.store().params().unwrap(), Params::default());
        chain
            .finalize_block(&block(1, 1_800_000_000, vec![]))
            .unwrap();
        chain.commit().unwrap();
        let error = chain.init_chain(&app_state).unwrap_err();
        assert!(error.to_string().contains("started once"), "{error}");
    }

    #[test]
    fn an_embedded_networks_database_is_never_reset_to_a_genesis() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_800_000_000;
        let store = Store::open(
            &dir.path().join("network.redb"),
            generate_key(),
            Params::default(),
        )
        .unwrap();
        let tx = deposit_tx(&generate_key(), now);
        store.apply(&tx, now).unwrap();
        let before = store.head().unwrap();
        let chain = Chain::new(Arc::new(store));
        let error = chain.init_chain(b"").unwrap_err();
        assert!(error.to_string().contains("new --data-dir"), "{error}");
        assert_eq!(chain.store().head().unwrap(), before, "nothing was lost");
    }

    #[test]
    fn a_block_is_answered_in_order_and_persisted_only_at_commit() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_800_000_000;
        let (alice, bob) = (generate_key(), generate_key());
        let genesis = {
            let chain = chain(&dir);
            let genesis = chain.init_chain(b"").unwrap();
            let replayed = deposit(&alice, now);
            let txs = vec![
                replayed.clone(),
                b"garbage".to_vec(),
                replayed,
                deposit(&bob, now),
            ];
            let done = chain.finalize_block(&block(1, now, txs)).unwrap();
            let codes: Vec<u32> = done.results.iter().map(|r| r.code).collect();
            assert_eq!(
                codes,
                [
                    0,
                    tonic::Code::InvalidArgument as u32,
                    tonic::Code::AlreadyExists as u32,
                    0
                ]
            );
            let indices: Vec<usize> = done.applied.iter().map(|(i, _)| *i).collect();
            assert_eq!(indices, [0, 3], "each outcome with its result's place");
            assert_ne!(done.app_hash, genesis);
            assert_eq!(
                chain.info(),
                (0, done.app_hash),
                "decided, not yet persisted"
            );
            assert!(
                chain.finalize_block(&block(2, now, vec![])).is_err(),
                "no block before the last is committed"
            );
            genesis
        };
        // Killed before Commit: the block is CometBFT's to replay.
        let chain = chain(&dir);
        assert_eq!(chain.info(), (0, genesis));
        let txs = vec![deposit(&alice, now), deposit(&bob, now)];
        let done = chain.finalize_block(&block(1, now, txs)).unwrap();
        assert_eq!(chain.commit().unwrap(), 1);
        assert!(chain.commit().is_err(), "one Commit per block");
        drop(chain);
        let reopened = self::chain(&dir);
        assert_eq!(reopened.info(), (1, done.app_hash));
        let error = reopened.finalize_block(&block(3, now, vec![])).unwrap_err();
        assert!(
            error.to_string().contains("block 3 decided after 1"),
            "{error}"
        );
    }

    #[test]
    fn a_batch_enters_the_mempool_only_when_each_of_its_requests_would() {
        let dir = tempfile::tempdir().unwrap();
        let chain = chain(&dir);
        let now = 1_800_000_000;
        let (a, b) = (
            deposit_tx(&generate_key(), now),
            deposit_tx(&generate_key(), now),
        );
        let batch = codec::encode_batch(&[a.clone(), b.clone()]);
        assert_eq!(chain.check_tx(&batch, now, false).code, 0);
        assert_eq!(chain.check_tx(&batch, now, true).code, 0);

        let Tx::Deposit(mut forged) = b.clone() else {
            unreachable!()
        };
        forged.signature[0] ^= 1;
        let refused = chain.check_tx(
            &codec::encode_batch(&[a.clone(), Tx::Deposit(forged)]),
            now,
            false,
        );
        assert_eq!(refused.code, tonic::Code::Unauthenticated as u32);
        assert!(
            refused.log.starts_with("transactions[1]: signature"),
            "{}",
            refused.log
        );
        let twice = chain.check_tx(&codec::encode_batch(&[a.clone(), a.clone()]), now, false);
        assert_eq!(twice.code, tonic::Code::AlreadyExists as u32);
        assert!(
            twice.log.starts_with("transactions[1]: header.nonce"),
            "{}",
            twice.log
        );
        let stale = chain.check_tx(&batch, now + 3_600, true);
        assert_eq!(stale.code, tonic::Code::FailedPrecondition as u32);
        assert!(stale.log.starts_with("transactions[0]: "), "{}", stale.log);

        // Once one of them is in a block, the batch is a replay.
        chain.init_chain(b"").unwrap();
        chain
            .finalize_block(&block(1, now, vec![codec::encode_tx(&b)]))
            .unwrap();
        chain.commit().unwrap();
        let replay = chain.check_tx(&batch, now, true);
        assert_eq!(replay.code, tonic::Code::AlreadyExists as u32);
        assert!(
            replay.log.starts_with("transactions[1]: "),
            "{}",
            replay.log
        );
    }

    #[test]
    fn a_batch_in_a_block_does_what_its_requests_would_each_in_its_place() {
        let now = 1_800_000_000;
        let keys: Vec<_> = (0..3).map(|_| generate_key()).collect();
        let a = deposit_tx(&keys[0], now);
        let b = deposit_tx(&keys[1], now);
        let c = deposit_tx(&keys[2], now);
        let Tx::Deposit(mut forged) = deposit_tx(&keys[2], now) else {
            unreachable!()
        };
        forged.signature[0] ^= 1;
        let forged = Tx::Deposit(forged);
        let (one, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (alone, batched) = (chain(&one), chain(&other));
        let genesis = alone.init_chain(b"").unwrap();
        assert_eq!(batched.init_chain(b"").unwrap(), genesis);

        let requests = [a.clone(), forged.clone(), b.clone(), c.clone()];
        let one_by_one = alone
            .finalize_block(&block(
                1,
                now,
                requests.iter().map(codec::encode_tx).collect(),
            ))
            .unwrap();
        let in_batch = batched
            .finalize_block(&block(
                1,
                now,
                vec![
                    codec::encode_batch(&[a, forged, b]),
                    b"garbage".to_vec(),
                    codec::encode_tx(&c),
                ],
            ))
            .unwrap();
        assert_eq!(in_batch.app_hash, one_by_one.app_hash, "the same state");
        // One result per transaction of the block: the batch's lists its three.
        assert_eq!(in_batch.results.len(), 3);
        assert_eq!(
            in_batch.results[0],
            codec::batch_result(&one_by_one.results[..3])
        );
        assert_eq!(in_batch.results[2], one_by_one.results[3]);
        // Each client's answer, by its request's hash, is the one it would have had alone.
        let request_answers: Vec<_> = in_batch
            .answers
            .iter()
            .filter(|(hash, _)| *hash != <[u8; 32]>::from(Sha256::digest(b"garbage")))
            .cloned()
            .collect();
        assert_eq!(request_answers, one_by_one.answers);
        assert_eq!(
            in_batch.answers[3].1.code,
            tonic::Code::InvalidArgument as u32
        );
        // The applied requests point at their transaction's result, for their leases' proofs.
        let places: Vec<usize> = in_batch.applied.iter().map(|(i, _)| *i).collect();
        assert_eq!(places, [0, 0, 2]);
        alone.commit().unwrap();
        batched.commit().unwrap();
        assert_eq!(alone.info(), batched.info());
    }

    #[test]
    fn the_mempool_takes_only_signed_fresh_transactions_and_rechecks_what_may_have_changed() {
        let dir = tempfile::tempdir().unwrap();
        let chain = chain(&dir);
        let now = 1_800_000_000;
        let key = generate_key();
        let fresh = deposit(&key, now);
        assert_eq!(chain.check_tx(&fresh, now, false).code, 0);
        chain.init_chain(b"").unwrap();
        chain
            .finalize_block(&block(1, now, vec![fresh.clone()]))
            .unwrap();
        chain.commit().unwrap();
        // A replay waiting in the mempool when its twin was committed: dropped on recheck.
        for recheck in [false, true] {
            let replay = chain.check_tx(&fresh, now, recheck);
            assert_eq!(
                replay.code,
                tonic::Code::AlreadyExists as u32,
                "{}",
                replay.log
            );
        }
        // A transaction admitted fresh and still waiting when it went stale: dropped on recheck.
        let waiting = deposit(&generate_key(), now);
        assert_eq!(chain.check_tx(&waiting, now, false).code, 0);
        for recheck in [false, true] {
            let stale = chain.check_tx(&waiting, now + 3_600, recheck);
            assert_eq!(
                stale.code,
                tonic::Code::FailedPrecondition as u32,
                "{}",
                stale.log
            );
        }
        let mut forged = deposit(&generate_key(), now);
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert_eq!(
            chain.check_tx(&forged, now, false).code,
            tonic::Code::Unauthenticated as u32
        );
        // Only a recheck skips the signature: CometBFT rechecks only bytes CheckTx admitted.
        assert_eq!(chain.check_tx(&forged, now, true).code, 0);
        // And a block does not take the mempool's word: the state verifies every signature.
        let decided = chain.finalize_block(&block(2, now, vec![forged])).unwrap();
        assert_eq!(
            decided.results[0].code,
            tonic::Code::Unauthenticated as u32,
            "{:?}",
            decided.results[0]
        );
        assert_eq!(
            chain.check_tx(b"\x0a", now, false).code,
            tonic::Code::InvalidArgument as u32
        );
    }
}

//! The network's state machine as an ABCI 2.0 application, without the socket: what each of
//! CometBFT's requests does to the [`Store`], in plain types. The socket server ([`super::abci`])
//! only translates CometBFT's messages to these calls.
//!
//! Consensus requests come strictly in order on one connection: InitChain once, then for each
//! block FinalizeBlock (apply it, answer each transaction's result and the app hash) and Commit
//! (persist it with its height). `Info` answers the height and hash persisted last, from which a
//! restarted CometBFT replays the blocks the application has not seen.

use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::node::state::{Block, Outcome, Params, StateError, Tx};
use crate::node::store::{HubError, Store};
use crate::wire::Rejection;
use crate::wire::proto::LeaseBody;

use super::codec;
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
    /// One per transaction, in the block's order.
    pub results: Vec<TxResult>,
    /// The SHA-256 of each transaction's bytes (CometBFT's transaction hash), in the same order.
    pub tx_hashes: Vec<[u8; 32]>,
    /// The state's hash after the block: the app hash the next block's header commits to.
    pub app_hash: [u8; 32],
    /// The block's height.
    pub height: u64,
    /// Each applied transaction's outcome with the index of its result, for the gateway to
    /// deliver leases from and prove them by.
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
    /// signature it verified when the bytes came in is not verified again.
    /// What the state says of it otherwise is decided in its block.
    pub fn check_tx(&self, bytes: &[u8], now: i64, recheck: bool) -> TxResult {
        let checked = codec::decode_tx(bytes)
            .and_then(|tx| {
                if recheck {
                    codec::recheck_envelope(&tx, now)
                } else {
                    codec::verify_envelope(&tx, now)
                }
            })
            .and_then(|used| match self.store.nonce_seen(&used) {
                false => Ok(()),
                true => Err(Rejection::Duplicate(
                    "header.nonce: this request was already received (replay)".into(),
                )),
            });
        match checked {
            Ok(()) => TxResult::default(),
            Err(rejection) => codec::refused(&rejection),
        }
    }

    /// FinalizeBlock: applies the block's upkeep and each of its transactions in order. A
    /// transaction that does not decode is refused in its place; the others are applied.
    pub fn finalize_block(&self, block: &DecidedBlock) -> Result<Finalized, ChainError> {
        let decoded: Vec<_> = block.txs.iter().map(|b| codec::decode_tx(b)).collect();
        let txs: Vec<Tx> = decoded.iter().filter_map(|d| d.clone().ok()).collect();
        let ((swept, outcomes), app_hash) = self.store.decide(
            &Block {
                height: block.height,
                time: block.time,
                entropy: entropy(&block.hash),
            },
            &txs,
        )?;
        let mut outcomes = outcomes.into_iter();
        let mut results = Vec::with_capacity(block.txs.len());
        let mut applied = Vec::new();
        for d in decoded {
            match d {
                Err(rejection) => results.push(codec::refused(&rejection)),
                Ok(_) => {
                    let outcome = outcomes.next().ok_or_else(|| {
                        HubError::State(StateError::Inconsistent(
                            "fewer outcomes than transactions".into(),
                        ))
                    })?;
                    results.push(codec::result_of(&outcome));
                    if let Ok(outcome) = outcome {
                        applied.push((results.len() - 1, outcome));
                    }
                }
            }
        }
        Ok(Finalized {
            height: block.height,
            results,
            tx_hashes: block
                .txs
                .iter()
                .map(|tx| Sha256::digest(tx).into())
                .collect(),
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

    fn deposit(key: &ed25519_dalek::SigningKey, now: i64) -> Vec<u8> {
        let body = DepositBody {
            header: None,
            amount: "5".into(),
            denomination: "USDC".into(),
        };
        codec::encode_tx(&Tx::Deposit(seal(key, body, now)))
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
        let tx = codec::decode_tx(&deposit(&generate_key(), now)).unwrap();
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

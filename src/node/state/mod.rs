//! The network's rules as one deterministic state machine (DESIGN §7), pure: every change is a
//! signed transaction applied with its block's height and time, never the wall clock; records
//! live in one ordered map ([`kv`]) iterated only in key order; money is integer atto units; and
//! the whole state has a hash. A driver orders the transactions into blocks and persists what
//! each block changed: the embedded node ([`crate::node::store`]) today.
//!
//! A refused transaction changes nothing: [`State::apply`] rolls it back whole.

pub mod kv;

mod accounts;
mod governance;
mod leases;
mod manifests;
mod metering;
mod offers;
mod orders;
mod params;
mod probe;
mod stake;

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::wire::amount;
use crate::wire::proto::{
    BalanceReply, EvidenceReply, LeaseBody, LeaseEndReply, OrderView, ProbeReply, ProposalView,
    PublishOfferReply, ReceiptsReply, RimReply, Signed, StakeReply,
};
use crate::wire::{Opened, Rejection};

pub use accounts::{Audit, AuditError};
use kv::Kv;
pub use leases::Swept;
pub use params::Params;

/// A table: the prefix of its keys in the one map. No prefix is a prefix of another's.
#[derive(Clone, Copy, Debug)]
struct Table(&'static str);

const PROVIDERS: Table = Table("providers/");
const OFFERS: Table = Table("offers/");
const ORDERS: Table = Table("orders/");
const LEASES: Table = Table("leases/");
/// `<buyer>/<order id>` → created_at, for listing one buyer's orders.
const BUYER_ORDERS: Table = Table("buyer-orders/");
/// `<issued_at, 20 digits>/<signer hex>/<nonce hex>` → nothing: requests applied within the
/// freshness window, oldest first, so that forgetting them reads only what is forgotten.
const NONCES: Table = Table("nonces/");
/// Posting sequence, 20 digits → the posting.
const POSTINGS: Table = Table("postings/");
/// Account key → balance.
const BALANCES: Table = Table("balances/");
const COUNTERS: Table = Table("counters/");
/// `<lease id>/<sequence, 20 digits>` → SHA-256 of the accepted receipt's body, hex.
const RECEIPTS: Table = Table("receipts/");
/// `<provider>/<release_at, 20 digits>/<sequence, 20 digits>` → stake unbonding.
const UNBONDING: Table = Table("unbonding/");
/// `<lease id>/<sequence, 20 digits>` → the hash of a second receipt signed for that sequence.
const FORKS: Table = Table("forks/");
/// `<provider>/<sequence, 20 digits>` → a slash and its evidence.
const SLASHES: Table = Table("slashes/");
/// `<due, 20 digits>/<lease id>` → nothing: when the block upkeep is next due to look at a
/// lease (`leases::due_at`); a lease no rule can apply to until it changes is not here.
const LEASE_DUE: Table = Table("lease-due/");
/// `<provider>/<lease id>` → nothing: the leases waiting for their provider's answer.
const AWAITING: Table = Table("awaiting/");
/// `<provider>` → GPUs in its matched and running leases.
const COMMITTED: Table = Table("committed/");
/// Order sequence, 20 digits → a standing order waiting for an offer.
const WAITING: Table = Table("waiting/");
/// Proposal id, 20 digits → the proposal.
const PROPOSALS: Table = Table("proposals/");
/// `<proposal id, 20 digits>/<voter>` → yes.
const VOTES: Table = Table("votes/");
/// `<chip>/<version>` → a verified NVIDIA reference integrity manifest.
const MANIFESTS: Table = Table("manifests/");
/// `current` → the parameters in force.
const PARAMS: Table = Table("params/");
/// `height`, `time`: the last block that changed the state; `format`: [`STATE_FORMAT`].
const META: Table = Table("meta/");

const POSTING_SEQ: &str = "posting_seq";
const OFFER_SEQ: &str = "offer_seq";
const ORDER_SEQ: &str = "order_seq";
const STAKE_SEQ: &str = "stake_seq";
const PROPOSAL_SEQ: &str = "proposal_seq";

/// The block a transaction is applied in: the only clock and the only randomness the rules see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub height: u64,
    /// Seconds since the epoch, as the block says.
    pub time: i64,
    /// Unpredictable before the block: what the driver draws it from (the embedded node's
    /// random source, a consensus block's hash) is the driver's.
    pub entropy: [u8; 32],
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("a stored record is unreadable: {0}")]
    Record(#[from] serde_json::Error),
    #[error("a stored lease is unreadable: {0}")]
    StoredLease(#[from] prost::DecodeError),
    /// Records that should refer to each other do not: a broken invariant.
    #[error("the state is inconsistent: {0}")]
    Inconsistent(String),
    /// Money arithmetic left its 128 bits: a broken invariant, refused rather than guessed.
    #[error(transparent)]
    Money(#[from] amount::Overflow),
    /// Persisted by a gpubridge whose state this one does not read.
    #[error(
        "the stored state is of format {found}; this gpubridge reads format {STATE_FORMAT}, \
         whose leases and nonces are indexed by time and whose hash is kept by chunks. Start \
         the node with a new --data-dir"
    )]
    Format { found: u32 },
}

/// The layout of the state's map: 2 added the time-ordered lease and nonce indexes (1, the
/// first single-table state, has no `meta/format`); 3 hashes the state by chunks
/// ([`kv`]), so a state of 2 would not hash to what its chain committed.
const STATE_FORMAT: u32 = 3;

type Result<T> = std::result::Result<T, StateError>;

/// What a block's upkeep did, and each of its transactions' outcome in order.
pub type Applied = (Swept, Vec<Result<Outcome>>);

/// A state-changing request, as a block carries it: the signed envelope, verified when applied.
#[derive(Clone, Debug, PartialEq)]
pub enum Tx {
    Register(Signed),
    PublishOffer(Signed),
    WithdrawOffer(Signed),
    Heartbeat(Signed),
    /// A provider opens its lease stream: recorded so that a replayed opening is refused.
    OpenLeaseStream(Signed),
    DecideLease(Signed),
    ReportLeaseEnd(Signed),
    Deposit(Signed),
    SubmitOrder(Signed),
    CancelOrder(Signed),
    SubmitReceipts(Signed),
    SubmitEvidence(Signed),
    Bond(Signed),
    Unbond(Signed),
    Propose(Signed),
    Vote(Signed),
    SubmitProbe(Signed),
    SubmitRim(Signed),
}

/// The outcome of a submitted order: how it stands, and the lease to send its provider.
#[derive(Clone, Debug, PartialEq)]
pub struct Placed {
    pub order: OrderView,
    /// The provider's public key and the lease made for it.
    pub lease: Option<(String, LeaseBody)>,
}

/// What an applied transaction answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Done,
    Published(PublishOfferReply),
    /// A provider's stream opened or its heartbeat arrived: who it is, and its leases still
    /// waiting for an answer (what a validator's gateway can prove a lease by).
    Waiting(String, Vec<LeaseBody>),
    Ended(LeaseEndReply),
    Balance(BalanceReply),
    Ordered(Box<Placed>),
    Order(Box<OrderView>),
    Receipts(ReceiptsReply),
    Evidence(EvidenceReply),
    Stake(StakeReply),
    Proposal(ProposalView),
    Probe(ProbeReply),
    Rim(RimReply),
}

/// The network's state. Built empty by [`State::genesis`] or from persisted entries by
/// [`State::restore`].
#[derive(Clone, Debug, Default)]
pub struct State {
    kv: Kv,
    /// Records read, decoded, by key: matching reads every live offer and its provider for
    /// each order, and decoding their JSON each time was a fifth of a validator's work. Not
    /// state: a key leaves it when written or deleted, and it is emptied when a savepoint is
    /// rolled back or it grows past [`DECODED_KEPT`].
    decoded: std::cell::RefCell<BTreeMap<String, Arc<dyn Any + Send + Sync>>>,
}

/// Decoded records kept at most: thousands of offers and providers, a few tens of MB at most.
const DECODED_KEPT: usize = 1 << 14;

impl State {
    /// A new network with `params`.
    pub fn genesis(params: Params) -> Result<State> {
        let mut state = State::default();
        state.put(META, "format", &STATE_FORMAT)?;
        state.put(PARAMS, "current", &params)?;
        state.kv.settle();
        Ok(state)
    }

    /// The state holding `entries`, as a driver persisted them.
    pub fn restore(entries: impl IntoIterator<Item = (String, Vec<u8>)>) -> Result<State> {
        let state = State {
            kv: Kv::restore(entries),
            ..State::default()
        };
        let found = state.get::<u32>(META, "format")?.unwrap_or(1);
        if found != STATE_FORMAT {
            return Err(StateError::Format { found });
        }
        state.params()?;
        Ok(state)
    }

    pub fn params(&self) -> Result<Params> {
        self.get(PARAMS, "current")?
            .ok_or_else(|| StateError::Inconsistent("the state has no parameters".into()))
    }

    /// Height of the last block that changed the state; 0 before any.
    pub fn height(&self) -> Result<u64> {
        Ok(self.get(META, "height")?.unwrap_or(0))
    }

    /// Time of the last block that changed the state.
    pub fn time(&self) -> Result<i64> {
        Ok(self.get(META, "time")?.unwrap_or(0))
    }

    pub fn hash(&self) -> [u8; 32] {
        self.kv.hash()
    }

    /// Every entry, as a driver persists a new state.
    pub fn snapshot(&self) -> Vec<kv::Change> {
        self.kv.snapshot()
    }

    /// Applies one transaction in `block`, whole or not at all.
    pub fn apply(&mut self, tx: &Tx, block: &Block) -> Result<Outcome> {
        let savepoint = self.kv.savepoint();
        let outcome = self.dispatch(tx, block);
        if outcome.is_err() {
            self.rollback(savepoint);
        }
        outcome
    }

    /// Applies a whole block: the upkeep of [`State::sweep`] when `upkeep`, then each
    /// transaction in order, each whole or refused. What the upkeep did, and each transaction's
    /// outcome. An error of the upkeep is a broken invariant and fails the block.
    pub fn finalize(&mut self, block: &Block, upkeep: bool, txs: &[Tx]) -> Result<Applied> {
        let swept = if upkeep {
            self.sweep(block)?
        } else {
            Swept::default()
        };
        let outcomes = txs.iter().map(|tx| self.apply(tx, block)).collect();
        Ok((swept, outcomes))
    }

    fn dispatch(&mut self, tx: &Tx, block: &Block) -> Result<Outcome> {
        Ok(match tx {
            Tx::Register(s) => self.register(s, block).map(|()| Outcome::Done)?,
            Tx::PublishOffer(s) => Outcome::Published(self.publish(s, block)?),
            Tx::WithdrawOffer(s) => self.withdraw(s, block).map(|()| Outcome::Done)?,
            Tx::Heartbeat(s) => {
                let provider = self.heartbeat(s, block)?;
                Outcome::Waiting(provider.clone(), self.waiting_for(&provider)?)
            }
            Tx::OpenLeaseStream(s) => {
                let provider = self.open_lease_stream(s, block)?;
                Outcome::Waiting(provider.clone(), self.waiting_for(&provider)?)
            }
            Tx::DecideLease(s) => self.decide_lease(s, block).map(|()| Outcome::Done)?,
            Tx::ReportLeaseEnd(s) => Outcome::Ended(self.report_end(s, block)?),
            Tx::Deposit(s) => Outcome::Balance(self.deposit(s, block)?),
            Tx::SubmitOrder(s) => Outcome::Ordered(Box::new(self.submit_order(s, block)?)),
            Tx::CancelOrder(s) => Outcome::Order(Box::new(self.cancel(s, block)?)),
            Tx::SubmitReceipts(s) => Outcome::Receipts(self.submit_receipts(s, block)?),
            Tx::SubmitEvidence(s) => Outcome::Evidence(self.submit_evidence(s, block)?),
            Tx::Bond(s) => Outcome::Stake(self.bond(s, block)?),
            Tx::Unbond(s) => Outcome::Stake(self.unbond(s, block)?),
            Tx::Propose(s) => Outcome::Proposal(self.propose(s, block)?),
            Tx::Vote(s) => Outcome::Proposal(self.vote(s, block)?),
            Tx::SubmitProbe(s) => Outcome::Probe(self.submit_probe(s, block)?),
            Tx::SubmitRim(s) => Outcome::Rim(self.submit_rim(s, block)?),
        })
    }

    /// Ends a block: records its height and time when it changed anything, and returns the
    /// changes for the driver to persist. They stay undoable by [`State::abort_block`] until
    /// [`State::settle_block`].
    pub fn end_block(&mut self, block: &Block) -> Result<Vec<kv::Change>> {
        if self.kv.changed() {
            self.put(META, "height", &block.height)?;
            self.put(META, "time", &block.time)?;
        }
        Ok(self.kv.changes())
    }

    /// The block's changes are persisted: they are final.
    pub fn settle_block(&mut self) {
        self.kv.settle();
    }

    /// Undoes the whole block (its changes could not be persisted).
    pub fn abort_block(&mut self) {
        self.rollback(kv::Savepoint::START);
    }

    /// Undoes everything since `savepoint`.
    fn rollback(&mut self, savepoint: kv::Savepoint) {
        self.kv.rollback(savepoint);
        self.decoded.get_mut().clear();
    }

    /// The record under `key` holding `bytes`, decoded once and shared: matching reads every
    /// live offer and its provider for each order, and copies them only to change them.
    fn decode<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
        key: &str,
        bytes: &[u8],
    ) -> Result<Arc<T>> {
        let kept = self.decoded.borrow().get(key).cloned();
        if let Some(value) = kept.and_then(|v| v.downcast::<T>().ok()) {
            return Ok(value);
        }
        let value: Arc<T> = Arc::new(serde_json::from_slice(bytes)?);
        let mut decoded = self.decoded.borrow_mut();
        if decoded.len() >= DECODED_KEPT {
            decoded.clear();
        }
        decoded.insert(key.to_string(), value.clone());
        Ok(value)
    }

    fn key(table: Table, key: &str) -> String {
        format!("{}{key}", table.0)
    }

    fn get<T: DeserializeOwned + Clone + Send + Sync + 'static>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<T>> {
        Ok(self.get_shared(table, key)?.map(|v| T::clone(&v)))
    }

    fn get_shared<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<Arc<T>>> {
        let key = Self::key(table, key);
        match self.kv.get(&key) {
            Some(bytes) => Ok(Some(self.decode(&key, bytes)?)),
            None => Ok(None),
        }
    }

    fn put<T: Serialize>(&mut self, table: Table, key: &str, value: &T) -> Result<()> {
        let key = Self::key(table, key);
        self.decoded.get_mut().remove(&key);
        self.kv.put(&key, serde_json::to_vec(value)?);
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &str) -> bool {
        let key = Self::key(table, key);
        self.decoded.get_mut().remove(&key);
        self.kv.remove(&key)
    }

    /// Records of `table` whose key starts with `prefix`, in key order, each with the rest of
    /// its key.
    fn scan<T: DeserializeOwned + Clone + Send + Sync + 'static>(
        &self,
        table: Table,
        prefix: &str,
    ) -> Result<Vec<(String, T)>> {
        Ok(self
            .scan_shared(table, prefix)?
            .into_iter()
            .map(|(key, v)| (key, T::clone(&v)))
            .collect())
    }

    fn scan_shared<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
        table: Table,
        prefix: &str,
    ) -> Result<Vec<(String, Arc<T>)>> {
        let full = Self::key(table, prefix);
        self.kv
            .scan(&full)
            .map(|(rest, bytes)| {
                let value = self.decode(&format!("{full}{rest}"), bytes)?;
                Ok((format!("{prefix}{rest}"), value))
            })
            .collect()
    }

    /// Every record of `table`, in key order.
    fn all<T: DeserializeOwned + Clone + Send + Sync + 'static>(
        &self,
        table: Table,
    ) -> Result<Vec<T>> {
        Ok(self.scan(table, "")?.into_iter().map(|(_, v)| v).collect())
    }

    /// The keys of `table`, in order.
    fn keys(&self, table: Table) -> Vec<String> {
        self.kv.scan(table.0).map(|(k, _)| k.to_string()).collect()
    }

    fn count(&self, table: Table) -> usize {
        self.kv.scan(table.0).count()
    }

    fn next_seq(&mut self, counter: &str) -> Result<u64> {
        let value = self.get::<u64>(COUNTERS, counter)?.unwrap_or(0) + 1;
        self.put(COUNTERS, counter, &value)?;
        Ok(value)
    }

    /// Whether a request applied before had `signer`'s `nonce` in a header issued at
    /// `issued_at`: a replay carries its original's signed header, so all three are the same.
    pub fn nonce_seen(&self, used: &NonceUse) -> bool {
        self.kv.get(&Self::key(NONCES, &used.key())).is_some()
    }

    /// Refuses a request whose nonce was seen before; records it otherwise.
    fn consume_nonce<M>(&mut self, opened: &Opened<M>) -> Result<()> {
        let used = NonceUse::of(opened);
        if self.nonce_seen(&used) {
            return Err(Rejection::Duplicate(
                "header.nonce: this request was already received (replay)".into(),
            )
            .into());
        }
        self.put(NONCES, &used.key(), &())
    }

    /// Forgets the nonces of requests issued before `horizon`: a replay of one is no longer
    /// fresh, so it is refused for that.
    fn forget_nonces_before(&mut self, horizon: i64) {
        let stale: Vec<String> = self
            .kv
            .scan(NONCES.0)
            .map_while(|(key, _)| {
                let (issued_at, _) = key.split_once('/')?;
                (issued_at.parse::<i64>().ok()? < horizon).then(|| key.to_string())
            })
            .collect();
        for key in &stale {
            self.delete(NONCES, key);
        }
    }
}

/// A request's signer, issue time and nonce: what makes it once-only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NonceUse {
    pub signer: ed25519_dalek::VerifyingKey,
    pub issued_at: i64,
    pub nonce: Vec<u8>,
}

impl NonceUse {
    pub fn of<M>(opened: &Opened<M>) -> NonceUse {
        NonceUse {
            signer: opened.signer,
            issued_at: opened.issued_at,
            nonce: opened.nonce.clone(),
        }
    }

    /// Its key in [`NONCES`]: oldest first (fresh requests are issued after the epoch); the
    /// signer in hex, not base58, whose encoding was 3 % of a validator's application in a
    /// check every transaction takes.
    fn key(&self) -> String {
        format!(
            "{:020}/{}/{}",
            self.issued_at.max(0),
            hex::encode(self.signer.as_bytes()),
            hex::encode(&self.nonce)
        )
    }
}

#[cfg(test)]
mod tests;

//! The embedded driver of the network's state machine: one process orders the transactions it
//! receives, each a block of its own stamped with the host's clock, and persists what each block
//! changed in an embedded database (redb) before it answers.
//!
//! A block's changes are one write transaction that commits durably (fsync) before the reply is
//! sent: a `kill -9` at any moment leaves either all of a request's effects or none, and never
//! loses one that was acknowledged. The nonce of a state-changing request is part of the same
//! block as its effects, so a replay is refused even across a restart.
//!
//! The network's lease is signed here, with the node's key, as it leaves: the state machine
//! holds no key (every replica of it must compute the same state).
//!
//! The consensus driver ([`crate::node::chain`]) persists through the same store, in two steps:
//! [`Store::decide`] applies a block consensus decided, and [`Store::commit_decided`] persists
//! it with the chain's height when CometBFT says Commit.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use ed25519_dalek::SigningKey;
use rand_core::{OsRng, RngCore};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use crate::node::records::LeaseRecord;
use crate::node::state::{
    self, Applied, Audit, AuditError, Block, NonceUse, Outcome, Params, State, StateError, Tx,
};
use crate::wire::Rejection;
use crate::wire::envelope::sign_body;
use crate::wire::proto::{
    BalanceReply, ChallengeReply, LeaseBody, OfferView, OrderView, ParamsReply, ReceiptsReply,
    Signed, StakeReply,
};

/// The state machine's map, key → value, as it stands after the last persisted block.
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
/// `height` → the last block of the chain this state is the result of (consensus driver only).
const CHAIN: TableDefinition<&str, u64> = TableDefinition::new("chain");
/// Tables of the database format before the state machine (one table per record kind).
const EARLIER_FORMAT: &[&str] = &["providers", "offers", "orders", "leases", "postings"];

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("database: {0}")]
    Database(#[from] redb::Error),
    #[error(
        "{path}: written by an earlier gpubridge, which kept one table per record kind; this \
         version keeps the network's state machine as one ordered table. Start the node with a \
         new --data-dir"
    )]
    EarlierFormat { path: String },
}

/// redb's errors, each as the one `redb::Error` they all convert into.
macro_rules! database_errors {
    ($($error:ty),*) => {$(
        impl From<$error> for HubError {
            fn from(e: $error) -> HubError { HubError::Database(e.into()) }
        }
    )*};
}
database_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<Rejection> for HubError {
    fn from(r: Rejection) -> HubError {
        HubError::State(r.into())
    }
}

impl From<HubError> for tonic::Status {
    fn from(e: HubError) -> tonic::Status {
        match e {
            HubError::State(StateError::Rejected(r)) => r.into(),
            other => tonic::Status::internal(other.to_string()),
        }
    }
}

type Result<T> = std::result::Result<T, HubError>;

/// A lease to send: its provider's key, and the lease signed by this node.
pub type Delivery = (String, Signed);

/// The outcome of a submitted order: how it stands, and the lease to send its provider.
pub struct Submitted {
    pub order: OrderView,
    pub lease: Option<Delivery>,
}

pub struct Store {
    db: Database,
    key: SigningKey,
    state: Mutex<State>,
    chain: Mutex<Chain>,
}

/// Where the consensus driver stands: the last committed height, and the block decided since,
/// whose changes wait for Commit.
#[derive(Default)]
struct Chain {
    height: u64,
    decided: Option<(u64, Vec<state::kv::Change>)>,
}

impl Store {
    /// Opens (or creates) the database at `path`. `params` are those of a new network; an
    /// existing one keeps its own, which only governance changes.
    pub fn open(path: &Path, key: SigningKey, params: Params) -> Result<Store> {
        let db = Database::create(path)?;
        let read = db.begin_read()?;
        let tables: Vec<String> = read
            .list_tables()
            .map_err(redb::Error::from)?
            .map(|t| t.name().to_string())
            .collect();
        if tables.iter().any(|t| EARLIER_FORMAT.contains(&t.as_str())) {
            return Err(HubError::EarlierFormat {
                path: path.display().to_string(),
            });
        }
        let existing = tables.iter().any(|t| t == STATE.name());
        let height = if tables.iter().any(|t| t == CHAIN.name()) {
            read.open_table(CHAIN)?
                .get("height")?
                .map_or(0, |h| h.value())
        } else {
            0
        };
        let state = if existing {
            let table = read.open_table(STATE)?;
            let mut entries = Vec::new();
            for entry in table.iter()? {
                let (k, v) = entry?;
                entries.push((k.value().to_string(), v.value().to_vec()));
            }
            State::restore(entries)?
        } else {
            State::genesis(params.clone())?
        };
        drop(read);
        let store = Store {
            db,
            key,
            state: Mutex::new(state),
            chain: Mutex::new(Chain {
                height,
                decided: None,
            }),
        };
        if !existing {
            store.persist(&store.lock().snapshot(), None)?;
        }
        Ok(store)
    }

    pub fn network_key(&self) -> ed25519_dalek::VerifyingKey {
        self.key.verifying_key()
    }

    pub fn params(&self) -> Result<Params> {
        Ok(self.lock().params()?)
    }

    /// The state's hash and the height of the last block that changed it.
    pub fn head(&self) -> Result<(u64, [u8; 32])> {
        let state = self.lock();
        Ok((state.height()?, state.hash()))
    }

    /// Whether a request applied before used this nonce ([`State::nonce_seen`]).
    pub fn nonce_seen(&self, used: &NonceUse) -> bool {
        self.lock().nonce_seen(used)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(state) => state,
            // A block panicked before it was persisted: what it changed is undone, so the next
            // block neither sees nor persists it.
            Err(poisoned) => {
                let mut state = poisoned.into_inner();
                state.abort_block();
                self.state.clear_poison();
                state
            }
        }
    }

    /// Runs `change` as one block at `now`, persists what it changed, and only then answers;
    /// a refusal, or a failure to persist, leaves the state as it was.
    fn commit<T>(
        &self,
        now: i64,
        change: impl FnOnce(&mut State, &Block) -> std::result::Result<T, StateError>,
    ) -> Result<T> {
        let mut entropy = [0u8; 32];
        OsRng.fill_bytes(&mut entropy);
        let block = |height| Block {
            height,
            time: now,
            entropy,
        };
        self.commit_block(block, change)
    }

    /// Runs `change` as the block `block` makes of the next height, persists what it changed,
    /// and only then answers.
    fn commit_block<T>(
        &self,
        block: impl FnOnce(u64) -> Block,
        change: impl FnOnce(&mut State, &Block) -> std::result::Result<T, StateError>,
    ) -> Result<T> {
        let mut state = self.lock();
        let block = block(state.height()? + 1);
        let out = match change(&mut state, &block) {
            Ok(out) => out,
            Err(e) => {
                state.abort_block();
                return Err(e.into());
            }
        };
        match state
            .end_block(&block)
            .map_err(HubError::from)
            .and_then(|changes| self.persist(&changes, None))
        {
            Ok(()) => {
                state.settle_block();
                Ok(out)
            }
            Err(e) => {
                state.abort_block();
                Err(e)
            }
        }
    }

    /// Writes `changes`, and the chain's height when given, in one durable transaction.
    fn persist(&self, changes: &[state::kv::Change], chain_height: Option<u64>) -> Result<()> {
        if changes.is_empty() && chain_height.is_none() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(STATE)?;
            for (key, value) in changes {
                match value {
                    Some(value) => table.insert(key.as_str(), value.as_slice())?,
                    None => table.remove(key.as_str())?,
                };
            }
            if let Some(height) = chain_height {
                txn.open_table(CHAIN)?.insert("height", height)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn chain(&self) -> MutexGuard<'_, Chain> {
        // Nothing is left half done under this lock: a panic leaves it as it was.
        self.chain.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last height of the chain persisted, and the state's hash: what a restarted
    /// validator's CometBFT replays from.
    pub fn chain_head(&self) -> (u64, [u8; 32]) {
        let chain = self.chain();
        (chain.height, self.lock().hash())
    }

    /// Starts the chain with `params`, at height 0, before any block; the state's hash.
    pub fn init_chain(&self, params: Params) -> Result<[u8; 32]> {
        let chain = self.chain();
        if chain.height != 0 || chain.decided.is_some() {
            return Err(StateError::Inconsistent(format!(
                "InitChain at height {}: a chain is started once, before its first block",
                chain.height
            ))
            .into());
        }
        let genesis = State::genesis(params)?;
        let hash = genesis.hash();
        let mut state = self.lock();
        let embedded = state.height()?;
        if embedded > 0 {
            return Err(StateError::Inconsistent(format!(
                "InitChain: this database holds an embedded network's state (block {embedded}); \
                 a validator starts from the genesis, with a new --data-dir"
            ))
            .into());
        }
        let mut changes = genesis.snapshot();
        // Whatever the node was opened with goes: the genesis decides.
        let kept: std::collections::BTreeSet<String> =
            changes.iter().map(|(key, _)| key.clone()).collect();
        let gone: Vec<_> = state
            .snapshot()
            .into_iter()
            .filter(|(key, _)| !kept.contains(key))
            .map(|(key, _)| (key, None))
            .collect();
        changes.extend(gone);
        self.persist(&changes, Some(0))?;
        *state = genesis;
        Ok(hash)
    }

    /// Applies a block consensus decided: its upkeep, then each transaction; keeps its changes
    /// for [`Store::commit_decided`]. What it did, and the state's hash after it.
    pub fn decide(&self, block: &Block, txs: &[Tx]) -> Result<(Applied, [u8; 32])> {
        let mut chain = self.chain();
        if block.height != chain.height + 1 || chain.decided.is_some() {
            return Err(StateError::Inconsistent(format!(
                "block {} decided after {} (and {:?} not committed)",
                block.height,
                chain.height,
                chain.decided.as_ref().map(|(h, _)| h)
            ))
            .into());
        }
        let mut state = self.lock();
        let outcomes = match state
            .finalize(block, true, txs)
            .and_then(|outcomes| Ok((outcomes, state.end_block(block)?)))
        {
            Ok(done) => done,
            Err(e) => {
                state.abort_block();
                return Err(e.into());
            }
        };
        let (outcomes, changes) = outcomes;
        chain.decided = Some((block.height, changes));
        Ok((outcomes, state.hash()))
    }

    /// Persists the block decided last, with its height; its height.
    pub fn commit_decided(&self) -> Result<u64> {
        let mut chain = self.chain();
        let Some((height, changes)) = chain.decided.take() else {
            return Err(StateError::Inconsistent("Commit without a decided block".into()).into());
        };
        let mut state = self.lock();
        if let Err(e) = self.persist(&changes, Some(height)) {
            state.abort_block();
            return Err(e);
        }
        state.settle_block();
        chain.height = height;
        Ok(height)
    }

    /// Applies a whole block whose time and entropy are given (not drawn here): its upkeep when
    /// `upkeep`, then each transaction; persists it once. What it did.
    pub fn finalize(&self, block: &Block, upkeep: bool, txs: &[Tx]) -> Result<Applied> {
        self.commit_block(
            |_| *block,
            |state, block| state.finalize(block, upkeep, txs),
        )
    }

    /// Applies one transaction as a block at `now`.
    pub fn apply(&self, tx: &Tx, now: i64) -> Result<Outcome> {
        self.commit(now, |state, block| state.apply(tx, block))
    }

    /// The upkeep of [`State::sweep`], as a block at `now`: the lapsed lease ids, and the
    /// leases made for standing orders, signed, with their providers.
    pub fn sweep(&self, now: i64) -> Result<(Vec<String>, Vec<Delivery>)> {
        let swept = self.commit(now, |state, block| state.sweep(block))?;
        let matched = swept
            .matched
            .iter()
            .map(|(provider, lease)| (provider.clone(), self.sign_lease(lease)))
            .collect();
        Ok((swept.lapsed, matched))
    }

    /// The network's lease as it leaves this node, signed with the node's key.
    pub fn sign_lease(&self, lease: &LeaseBody) -> Signed {
        sign_body(&self.key, lease)
    }

    pub fn submit_order(&self, signed: &Signed, now: i64) -> Result<Submitted> {
        match self.apply(&Tx::SubmitOrder(signed.clone()), now)? {
            Outcome::Ordered(placed) => Ok(Submitted {
                order: placed.order,
                lease: placed
                    .lease
                    .map(|(provider, lease)| (provider, self.sign_lease(&lease))),
            }),
            other => Err(unexpected("SubmitOrder", &other)),
        }
    }

    pub fn submit_receipts(&self, signed: &Signed, now: i64) -> Result<ReceiptsReply> {
        match self.apply(&Tx::SubmitReceipts(signed.clone()), now)? {
            Outcome::Receipts(reply) => Ok(reply),
            other => Err(unexpected("SubmitReceipts", &other)),
        }
    }

    pub fn params_view(&self) -> Result<ParamsReply> {
        Ok(self.lock().params_view()?)
    }

    pub fn stake(&self, signed: &Signed, now: i64) -> Result<StakeReply> {
        let (provider, _) = State::query(signed, now)?;
        Ok(self.lock().stake_of(&provider)?)
    }

    pub fn lease_challenge(&self, signed: &Signed, now: i64) -> Result<ChallengeReply> {
        Ok(self.lock().lease_challenge(signed, now)?)
    }

    pub fn list_offers(&self, now: i64) -> Result<Vec<OfferView>> {
        Ok(self.lock().list_offers(now)?)
    }

    pub fn list_orders(&self, signed: &Signed, now: i64) -> Result<Vec<OrderView>> {
        let (buyer, _) = State::query(signed, now)?;
        Ok(self.lock().list_orders(&buyer)?)
    }

    pub fn order_status(&self, signed: &Signed, now: i64) -> Result<OrderView> {
        let (buyer, body) = State::query(signed, now)?;
        Ok(self.lock().order_status(&buyer, &body.order_id)?)
    }

    pub fn balance(&self, signed: &Signed, now: i64) -> Result<BalanceReply> {
        let (key, _) = State::query(signed, now)?;
        self.balances_of(&key)
    }

    pub fn balances_of(&self, key: &str) -> Result<BalanceReply> {
        Ok(self.lock().balances_of(key)?)
    }

    /// Every order, for tests and the crash check.
    pub fn orders(&self) -> Result<Vec<OrderView>> {
        Ok(self.lock().orders()?)
    }

    /// Every lease, for tests and the crash check.
    pub fn leases(&self) -> Result<Vec<LeaseRecord>> {
        Ok(self.lock().leases()?)
    }

    /// One lease, as committed.
    pub fn lease(&self, lease_id: &str) -> Result<Option<LeaseRecord>> {
        Ok(self.lock().lease(lease_id)?)
    }

    pub fn audit(&self) -> std::result::Result<Audit, AuditError> {
        self.lock().audit()
    }
}

/// A transaction answered with another kind's outcome: a broken invariant of `State::apply`.
fn unexpected(call: &str, outcome: &Outcome) -> HubError {
    StateError::Inconsistent(format!("{call} was answered with {outcome:?}")).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::generate_key;

    #[test]
    fn a_database_of_the_earlier_format_is_refused_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("network.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            let old: TableDefinition<&str, &[u8]> = TableDefinition::new("orders");
            txn.open_table(old)
                .unwrap()
                .insert("o1", &b"{}"[..])
                .unwrap();
            txn.commit().unwrap();
        }
        let error = Store::open(&path, generate_key(), Params::default())
            .err()
            .expect("the earlier format is refused");
        assert!(matches!(error, HubError::EarlierFormat { .. }), "{error}");
        assert!(error.to_string().contains("new --data-dir"), "{error}");
        let db = Database::create(&path).unwrap();
        let read = db.begin_read().unwrap();
        assert!(read.open_table(STATE).is_err(), "nothing was written");
    }

    #[test]
    fn a_state_without_the_time_indexes_is_refused_not_swept_wrongly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("network.redb");
        drop(Store::open(&path, generate_key(), Params::default()).unwrap());
        {
            // What an earlier gpubridge wrote: the same map, no format.
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            assert!(
                txn.open_table(STATE)
                    .unwrap()
                    .remove("meta/format")
                    .unwrap()
                    .is_some()
            );
            txn.commit().unwrap();
        }
        let error = Store::open(&path, generate_key(), Params::default())
            .err()
            .expect("the earlier state is refused");
        assert!(
            matches!(error, HubError::State(StateError::Format { found: 1 })),
            "{error}"
        );
        assert!(error.to_string().contains("new --data-dir"), "{error}");
    }

    #[test]
    fn a_block_that_panics_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("network.redb");
        let store = Store::open(&path, generate_key(), Params::default()).unwrap();
        let now = jiff::Timestamp::now().as_second();
        let deposit = |key: &SigningKey| {
            let body = crate::wire::proto::DepositBody {
                header: None,
                amount: "5".into(),
                denomination: "USDC".into(),
            };
            Tx::Deposit(crate::wire::envelope::seal(key, body, now))
        };
        let (lost, kept) = (generate_key(), generate_key());
        let before = store.head().unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _: Result<()> = store.commit(now, |state, block| {
                state.apply(&deposit(&lost), block)?;
                panic!("a bug in the middle of a block");
            });
        }));
        assert!(panicked.is_err());
        assert_eq!(store.head().unwrap(), before, "the half block is undone");
        store.apply(&deposit(&kept), now).unwrap();
        drop(store);
        let reopened = Store::open(&path, generate_key(), Params::default()).unwrap();
        let balance = |key: &SigningKey| {
            reopened
                .balances_of(&crate::identity::public_key_base58(&key.verifying_key()))
                .unwrap()
                .balances
                .len()
        };
        assert_eq!((balance(&lost), balance(&kept)), (0, 1), "never persisted");
    }

    #[test]
    fn parameters_are_fixed_at_genesis_and_flags_do_not_override_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("network.redb");
        let key = generate_key();
        let first = Params {
            answer_seconds: 7,
            ..Params::default()
        };
        let store = Store::open(&path, key.clone(), first.clone()).unwrap();
        assert_eq!(store.params().unwrap(), first);
        assert_eq!(store.head().unwrap().0, 0, "a new network is at height 0");
        drop(store);
        let store = Store::open(&path, key.clone(), first.clone()).unwrap();
        assert_eq!(store.head().unwrap().0, 0, "the same flags change nothing");
        drop(store);
        let second = Params {
            answer_seconds: 9,
            ..first.clone()
        };
        let store = Store::open(&path, key, second).unwrap();
        assert_eq!(
            store.params().unwrap(),
            first,
            "only governance changes them"
        );
        assert_eq!(store.head().unwrap().0, 0);
    }
}

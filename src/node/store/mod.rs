//! The network node's state and every change to it, on an embedded database (redb).
//!
//! Each request is verified first, then applied in one write transaction that commits durably
//! (fsync) before the reply is sent: a `kill -9` at any moment leaves either all of a request's
//! effects or none, and never loses one that was acknowledged. The nonce of a state-changing
//! request is recorded in the same transaction as its effects, so a replay is refused even
//! across a restart.

use std::collections::BTreeMap;
use std::path::Path;

use ed25519_dalek::SigningKey;
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::identity::public_key_base58;
use crate::node::records::OrderState;
use crate::wire::amount;
use crate::wire::proto::{OrderView, Signed};
use crate::wire::{Opened, Rejection};

mod accounts;
mod leases;
mod metering;
mod offers;
mod orders;

type JsonTable = TableDefinition<'static, &'static str, &'static [u8]>;
const PROVIDERS: JsonTable = TableDefinition::new("providers");
const OFFERS: JsonTable = TableDefinition::new("offers");
const ORDERS: JsonTable = TableDefinition::new("orders");
const LEASES: JsonTable = TableDefinition::new("leases");
/// `<buyer>/<order id>` → created_at, for listing one buyer's orders.
const BUYER_ORDERS: TableDefinition<&str, i64> = TableDefinition::new("buyer_orders");
/// `<signer>/<nonce hex>` → issued_at.
const NONCES: TableDefinition<&str, i64> = TableDefinition::new("nonces");
const POSTINGS: TableDefinition<u64, &[u8]> = TableDefinition::new("postings");
const BALANCES: TableDefinition<&str, i128> = TableDefinition::new("balances");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// `<lease id>/<sequence, 20 digits>` → SHA-256 of the accepted receipt's body.
const RECEIPTS: TableDefinition<&str, &[u8]> = TableDefinition::new("receipts");

const POSTING_SEQ: &str = "posting_seq";
const OFFER_SEQ: &str = "offer_seq";
const ORDER_SEQ: &str = "order_seq";

/// Timings of the network node.
#[derive(Clone, Copy, Debug)]
pub struct HubSettings {
    /// Longest an offer lives without being published again.
    pub offer_ttl_seconds: u32,
    /// A provider silent this long has its offers dropped from matching.
    pub heartbeat_timeout_seconds: u32,
    /// How long a provider has to answer a lease.
    pub answer_seconds: u32,
    /// How often an accepted lease is challenged for fresh attestation evidence.
    pub challenge_seconds: u32,
}

impl Default for HubSettings {
    fn default() -> Self {
        HubSettings {
            offer_ttl_seconds: 120,
            heartbeat_timeout_seconds: 30,
            answer_seconds: 30,
            challenge_seconds: 300,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("database: {0}")]
    Database(#[from] redb::Error),
    #[error("a stored record is unreadable: {0}")]
    Record(#[from] serde_json::Error),
    #[error("a stored lease is unreadable: {0}")]
    StoredLease(#[from] prost::DecodeError),
    /// Records that should refer to each other do not: a broken invariant.
    #[error("the store is inconsistent: {0}")]
    Inconsistent(String),
    /// Money arithmetic left its 128 bits: a broken invariant, refused rather than guessed.
    #[error(transparent)]
    Money(#[from] amount::Overflow),
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

impl From<HubError> for tonic::Status {
    fn from(e: HubError) -> tonic::Status {
        match e {
            HubError::Rejected(r) => r.into(),
            other => tonic::Status::internal(other.to_string()),
        }
    }
}

/// What an audit of the books found wrong.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] HubError),
    #[error(
        "stored balances differ from the postings: stored {stored:?}, postings imply {implied:?}"
    )]
    Balances {
        stored: BTreeMap<String, i128>,
        implied: BTreeMap<String, i128>,
    },
    #[error("balances sum to {0}, not zero")]
    Sum(i128),
    #[error("order {order} is {state:?} and holds {holds} in escrow, expected {expected}")]
    Escrow {
        order: String,
        state: OrderState,
        holds: i128,
        expected: i128,
    },
    #[error(transparent)]
    Money(#[from] amount::Overflow),
}

type Result<T> = std::result::Result<T, HubError>;

/// The outcome of a submitted order: how it stands, and the lease to send its provider.
pub struct Submitted {
    pub order: OrderView,
    pub lease: Option<(String, Signed)>,
}

/// What `audit` found: totals, or the first inconsistency.
#[derive(Debug, PartialEq, Eq)]
pub struct Audit {
    pub postings: u64,
    pub accounts: usize,
    pub orders: usize,
    pub leases: usize,
}

pub struct Store {
    db: Database,
    key: SigningKey,
    pub settings: HubSettings,
}

fn read_json<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>> {
    match table.get(key)? {
        Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
        None => Ok(None),
    }
}

fn all_json<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (_, v) = entry?;
        out.push(serde_json::from_slice(v.value())?);
    }
    Ok(out)
}

fn get<T: DeserializeOwned>(
    txn: &WriteTransaction,
    def: JsonTable,
    key: &str,
) -> Result<Option<T>> {
    read_json(&txn.open_table(def)?, key)
}

fn put<T: Serialize>(txn: &WriteTransaction, def: JsonTable, key: &str, value: &T) -> Result<()> {
    txn.open_table(def)?
        .insert(key, serde_json::to_vec(value)?.as_slice())?;
    Ok(())
}

fn next(txn: &WriteTransaction, counter: &str) -> Result<u64> {
    let mut table = txn.open_table(COUNTERS)?;
    let value = table.get(counter)?.map_or(0, |v| v.value()) + 1;
    table.insert(counter, value)?;
    Ok(value)
}

/// Refuses a (signer, nonce) pair seen before; records it otherwise.
fn consume_nonce<M>(txn: &WriteTransaction, opened: &Opened<M>) -> Result<()> {
    let key = format!(
        "{}/{}",
        public_key_base58(&opened.signer),
        hex::encode(&opened.nonce)
    );
    let mut nonces = txn.open_table(NONCES)?;
    if nonces.get(key.as_str())?.is_some() {
        return Err(Rejection::Duplicate(
            "header.nonce: this request was already received (replay)".into(),
        )
        .into());
    }
    nonces.insert(key.as_str(), opened.issued_at)?;
    Ok(())
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path, key: SigningKey, settings: HubSettings) -> Result<Store> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        for def in [PROVIDERS, OFFERS, ORDERS, LEASES] {
            txn.open_table(def)?;
        }
        txn.open_table(BUYER_ORDERS)?;
        txn.open_table(NONCES)?;
        txn.open_table(POSTINGS)?;
        txn.open_table(BALANCES)?;
        txn.open_table(COUNTERS)?;
        txn.commit()?;
        Ok(Store { db, key, settings })
    }

    pub fn network_key(&self) -> ed25519_dalek::VerifyingKey {
        self.key.verifying_key()
    }

    /// Runs `change` in one write transaction and commits it durably; any error aborts it whole.
    fn write<T>(&self, change: impl FnOnce(&WriteTransaction) -> Result<T>) -> Result<T> {
        let txn = self.db.begin_write()?;
        let out = change(&txn)?;
        txn.commit()?;
        Ok(out)
    }

    fn read(&self) -> Result<ReadTransaction> {
        Ok(self.db.begin_read()?)
    }
}

//! The network node's state and every change to it, on an embedded database (redb).
//!
//! Each request is verified first, then applied in one write transaction that commits durably
//! (fsync) before the reply is sent: a `kill -9` at any moment leaves either all of a request's
//! effects or none, and never loses one that was acknowledged. The nonce of a state-changing
//! request is recorded in the same transaction as its effects, so a replay is refused even
//! across a restart.

use std::collections::BTreeMap;
use std::path::Path;

use rand_core::{OsRng, RngCore};

use ed25519_dalek::SigningKey;
use prost::Message;
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::attestation::{EvidenceRejection, verify_evidence};
use crate::identity::{public_key_base58, public_key_from_base58, verify_lease_certificate};
use crate::metering::chain::MAX_RECEIPTS_PER_BATCH;
use crate::metering::{ChainHead, LeaseTerms, ReceiptRejection, Step, Totals, check_next};
use crate::node::ledger::{self, Account, Posting};
use crate::node::matching::{self, OrderTerms};
use crate::node::records::{
    AttestationRecord, ChallengeRecord, LeaseEnd, LeaseRecord, LeaseState, OfferRecord,
    OrderRecord, OrderState, ProviderRecord,
};
use crate::wire::amount::{self, Amount};
use crate::wire::envelope::{self, open, sign_body};
use crate::wire::proto::{
    Balance, BalanceReply, CancelBody, ChallengeBody, ChallengeReply, DepositBody, EvidenceReply,
    EvidenceSubmitBody, HeartbeatBody, LeaseBody, LeaseDecisionBody, LeaseEndBody, LeaseEndReply,
    LeaseStreamBody, OfferBody, OfferView, OrderBody, OrderView, PublishOfferReply, QueryBody,
    ReceiptRejection as WireRejection, ReceiptsBody, ReceiptsReply, RegisterBody, Signed,
    WithdrawBody,
};
use crate::wire::{Opened, Rejection, validate};

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

/// Moves `amount` between two accounts: one posting, both balances. A buyer or escrow account
/// never goes below zero.
fn post(
    txn: &WriteTransaction,
    now: i64,
    from: Account,
    to: Account,
    amount: Amount,
    denomination: &str,
    memo: String,
) -> Result<()> {
    if amount == Amount::ZERO {
        return Ok(());
    }
    let signed = amount
        .signed("amount")
        .map_err(|_| Rejection::invalid("amount", "must be below 2^127 atto units"))?;
    let (from_key, to_key) = (from.key(denomination), to.key(denomination));
    {
        let mut balances = txn.open_table(BALANCES)?;
        let from_balance = balances.get(from_key.as_str())?.map_or(0, |v| v.value());
        if from != Account::External && from_balance < signed {
            return Err(Rejection::Precondition(format!(
                "insufficient funds: {memo} needs {amount} atto {denomination}, {} available",
                from_balance.max(0)
            ))
            .into());
        }
        let to_balance = balances.get(to_key.as_str())?.map_or(0, |v| v.value());
        let new_to = to_balance
            .checked_add(signed)
            .ok_or_else(|| Rejection::invalid("amount", "balance would overflow"))?;
        balances.insert(from_key.as_str(), from_balance - signed)?;
        balances.insert(to_key.as_str(), new_to)?;
    }
    let seq = next(txn, POSTING_SEQ)?;
    let posting = Posting {
        seq,
        at: now,
        from,
        to,
        amount,
        denomination: denomination.to_string(),
        memo,
    };
    txn.open_table(POSTINGS)?
        .insert(seq, serde_json::to_vec(&posting)?.as_slice())?;
    Ok(())
}

/// Gives a lease's GPUs back to its offer, when the offer was not published again since.
fn release_capacity(txn: &WriteTransaction, lease: &LeaseRecord) -> Result<()> {
    if let Some(mut offer) = get::<OfferRecord>(txn, OFFERS, &lease.offer_id)?
        && offer.published_seq == lease.offer_seq
    {
        if let Some(block) = offer.free_blocks.get_mut(lease.block) {
            *block += lease.gpus;
        }
        put(txn, OFFERS, &lease.offer_id, &offer)?;
    }
    Ok(())
}

/// Returns a lease's whole hold to its buyer and closes its order with `state` and `reason`.
fn refund_and_close(
    txn: &WriteTransaction,
    now: i64,
    lease: &mut LeaseRecord,
    lease_state: LeaseState,
    order_state: OrderState,
    reason: String,
) -> Result<OrderRecord> {
    let mut order: OrderRecord = get(txn, ORDERS, &lease.order_id)?
        .ok_or_else(|| HubError::Inconsistent(format!("lease {} has no order", lease.lease_id)))?;
    let held = order.held;
    post(
        txn,
        now,
        Account::Escrow(order.order_id.clone()),
        Account::Buyer(order.buyer.clone()),
        held,
        &order.denomination,
        format!("refund {}", order.order_id),
    )?;
    release_capacity(txn, lease)?;
    lease.state = lease_state;
    put(txn, LEASES, &lease.lease_id.clone(), lease)?;
    order.state = order_state;
    order.reason = reason;
    order.refunded = held;
    order.updated_at = now;
    put(txn, ORDERS, &order.order_id.clone(), &order)?;
    Ok(order)
}

fn owned_lease(txn: &WriteTransaction, lease_id: &str, provider: &str) -> Result<LeaseRecord> {
    let lease: LeaseRecord = get(txn, LEASES, lease_id)?
        .ok_or_else(|| Rejection::NotFound(format!("lease {lease_id} does not exist")))?;
    if lease.provider != provider {
        return Err(Rejection::PermissionDenied(format!(
            "lease {lease_id} belongs to another provider"
        ))
        .into());
    }
    Ok(lease)
}

/// Evidence refusals as protocol errors; the kind leads the message so a forwarder can tell.
fn evidence_rejection(e: EvidenceRejection) -> HubError {
    let message = format!("{}: {e}", e.kind());
    match e {
        EvidenceRejection::BadSignature => Rejection::Unauthenticated(message),
        EvidenceRejection::WrongLease { .. } | EvidenceRejection::WrongPlacement { .. } => {
            Rejection::PermissionDenied(message)
        }
        EvidenceRejection::ReplayedNonce => Rejection::Duplicate(message),
        EvidenceRejection::WrongNonce | EvidenceRejection::Stale { .. } => {
            Rejection::Precondition(message)
        }
        EvidenceRejection::Malformed(_) => Rejection::invalid("evidence", &message),
    }
    .into()
}

/// Where a lease's receipts stand, as the network answers.
fn receipts_reply(lease: &LeaseRecord, rejection: Option<ReceiptRejection>) -> ReceiptsReply {
    ReceiptsReply {
        accepted_through: lease.chain.sequence,
        head_hash: lease.chain.hash.clone(),
        metered_through_ms: lease.chain.window_end_ms.unwrap_or(0),
        allocated_gpu_millis: lease.totals.allocated_gpu_millis,
        energy_millijoules: lease.totals.energy_millijoules,
        utilization_percent: lease.totals.utilization_percent(),
        charged: lease.charged.to_string(),
        final_received: lease.chain.final_received,
        rejection: rejection.map(|r| WireRejection {
            sequence: r.sequence(),
            kind: r.kind().to_string(),
            message: r.to_string(),
        }),
    }
}

/// A new attestation challenge: 32 random bytes.
fn fresh_challenge(now: i64) -> ChallengeRecord {
    let mut nonce = vec![0u8; 32];
    OsRng.fill_bytes(&mut nonce);
    ChallengeRecord {
        nonce,
        issued_at: now,
        answered: false,
    }
}

fn receipt_key(lease_id: &str, sequence: u64) -> String {
    format!("{lease_id}/{sequence:020}")
}

/// The lease's certificate, checked against the provider that owns the lease.
fn lease_terms(lease: &LeaseRecord, certificate: &[u8], now: i64) -> Result<LeaseTerms> {
    let provider = public_key_from_base58(&lease.provider)
        .map_err(|e| HubError::Inconsistent(format!("stored provider key: {e}")))?;
    let cert = verify_lease_certificate(certificate, &provider, now)
        .map_err(|e| Rejection::Unauthenticated(format!("certificate: {e}")))?;
    if cert.lease_id != lease.lease_id {
        return Err(Rejection::PermissionDenied(format!(
            "certificate: issued for lease {}, not {}",
            cert.lease_id, lease.lease_id
        ))
        .into());
    }
    let lease_key = ed25519_dalek::VerifyingKey::try_from(cert.lease_public_key.as_slice())
        .map_err(|e| Rejection::invalid("certificate.leasePublicKey", &e.to_string()))?;
    Ok(LeaseTerms {
        lease_id: lease.lease_id.clone(),
        gpus: lease.gpus,
        lease_key,
        not_before_ms: lease.matched_at.saturating_mul(1000),
    })
}

fn state_name<T: std::fmt::Debug>(state: T) -> String {
    format!("{state:?}").to_lowercase()
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

    fn registered(txn: &WriteTransaction, provider: &str) -> Result<ProviderRecord> {
        get(txn, PROVIDERS, provider)?.ok_or_else(|| {
            Rejection::PermissionDenied(format!(
                "provider {provider} is not registered: call Register first"
            ))
            .into()
        })
    }

    pub fn register(&self, signed: &Signed, now: i64) -> Result<()> {
        let opened: Opened<RegisterBody> = open(signed, now)?;
        validate::name("register.name", &opened.body.name)?;
        validate::region("register.region", &opened.body.region)?;
        let key = public_key_base58(&opened.signer);
        self.write(|txn| {
            consume_nonce(txn, &opened)?;
            let registered_at =
                get::<ProviderRecord>(txn, PROVIDERS, &key)?.map_or(now, |p| p.registered_at);
            let record = ProviderRecord {
                key: key.clone(),
                name: opened.body.name.clone(),
                region: opened.body.region.clone(),
                registered_at,
                last_heartbeat: now,
            };
            put(txn, PROVIDERS, &key, &record)
        })
    }

    pub fn publish(&self, signed: &Signed, now: i64) -> Result<PublishOfferReply> {
        let opened: Opened<OfferBody> = open(signed, now)?;
        let checked = validate::offer(&opened.body, now)?;
        let body = &opened.body;
        let provider = public_key_base58(&opened.signer);
        let offer_id = format!("{provider}/{}", body.offer_name);
        let expires_at = body
            .expires_at
            .min(now + i64::from(self.settings.offer_ttl_seconds));
        self.write(|txn| {
            consume_nonce(txn, &opened)?;
            Self::registered(txn, &provider)?;
            let mut free_blocks = body.free_blocks.clone();
            free_blocks.sort_unstable_by(|a, b| b.cmp(a));
            free_blocks.retain(|b| *b > 0);
            let record = OfferRecord {
                offer_id: offer_id.clone(),
                provider: provider.clone(),
                offer_name: body.offer_name.clone(),
                model: body.model.clone(),
                resource_name: body.resource_name.clone(),
                free_blocks,
                price: checked.price,
                denomination: body.denomination.clone(),
                min_duration_seconds: body.min_duration_seconds,
                max_duration_seconds: body.max_duration_seconds,
                max_gpus_per_lease: body.max_gpus_per_lease,
                allowed_registries: body.allowed_registries.clone(),
                region: body.region.clone(),
                attributes: checked.attributes.clone(),
                expires_at,
                published_seq: next(txn, OFFER_SEQ)?,
            };
            put(txn, OFFERS, &offer_id, &record)
        })?;
        Ok(PublishOfferReply {
            offer_id,
            expires_at,
        })
    }

    pub fn withdraw(&self, signed: &Signed, now: i64) -> Result<()> {
        let opened: Opened<WithdrawBody> = open(signed, now)?;
        validate::dns_subdomain("withdraw.offerName", &opened.body.offer_name)?;
        let offer_id = format!(
            "{}/{}",
            public_key_base58(&opened.signer),
            opened.body.offer_name
        );
        self.write(|txn| {
            consume_nonce(txn, &opened)?;
            match txn.open_table(OFFERS)?.remove(offer_id.as_str())? {
                Some(_) => Ok(()),
                None => {
                    Err(Rejection::NotFound(format!("offer {offer_id} is not published")).into())
                }
            }
        })
    }

    pub fn heartbeat(&self, signed: &Signed, now: i64) -> Result<()> {
        let opened: Opened<HeartbeatBody> = open(signed, now)?;
        let provider = public_key_base58(&opened.signer);
        self.write(|txn| {
            consume_nonce(txn, &opened)?;
            let mut record = Self::registered(txn, &provider)?;
            record.last_heartbeat = now;
            put(txn, PROVIDERS, &provider, &record)
        })
    }

    /// Opens a provider's lease stream: who it is, and every lease still waiting for its answer.
    pub fn open_lease_stream(&self, signed: &Signed, now: i64) -> Result<(String, Vec<Signed>)> {
        let opened: Opened<LeaseStreamBody> = open(signed, now)?;
        let provider = public_key_base58(&opened.signer);
        let waiting = self.write(|txn| {
            consume_nonce(txn, &opened)?;
            Self::registered(txn, &provider)?;
            let leases: Vec<LeaseRecord> = all_json(&txn.open_table(LEASES)?)?;
            Ok(leases
                .into_iter()
                .filter(|l| l.provider == provider && l.state == LeaseState::Offered)
                .collect::<Vec<_>>())
        })?;
        let signed = waiting
            .iter()
            .map(|l| Signed::decode(l.signed.as_slice()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok((provider, signed))
    }

    /// Offers that can be matched now, each with its provider: unexpired, from a provider that
    /// heartbeat within the timeout. The one rule for matching, the book and the sweep.
    fn live_offers(
        &self,
        offers: &impl ReadableTable<&'static str, &'static [u8]>,
        providers: &impl ReadableTable<&'static str, &'static [u8]>,
        now: i64,
    ) -> Result<Vec<(OfferRecord, ProviderRecord)>> {
        let providers: Vec<ProviderRecord> = all_json(providers)?;
        let offers: Vec<OfferRecord> = all_json(offers)?;
        let timeout = i64::from(self.settings.heartbeat_timeout_seconds);
        Ok(offers
            .into_iter()
            .filter(|o| o.expires_at > now)
            .filter_map(|o| {
                let provider = providers.iter().find(|p| p.key == o.provider)?;
                (now - provider.last_heartbeat <= timeout).then(|| (o, provider.clone()))
            })
            .collect())
    }

    pub fn submit_order(&self, signed: &Signed, now: i64) -> Result<Submitted> {
        let opened: Opened<OrderBody> = open(signed, now)?;
        let checked = validate::order(&opened.body)?;
        let body = &opened.body;
        let buyer = public_key_base58(&opened.signer);
        let order_id = hex::encode(&Sha256::digest(&signed.body)[..16]);
        let image = body
            .workload
            .as_ref()
            .map(|w| w.image.clone())
            .unwrap_or_default();
        let terms = OrderTerms {
            gpus: body.gpus,
            model: body.model.clone(),
            duration_seconds: body.duration_seconds,
            max_price: checked.max_price,
            denomination: body.denomination.clone(),
            region: body.region.clone(),
            attributes: checked.attributes,
            image: image.clone(),
        };
        self.write(|txn| {
            consume_nonce(txn, &opened)?;
            let mut order = OrderRecord {
                order_id: order_id.clone(),
                buyer: buyer.clone(),
                gpus: body.gpus,
                model: body.model.clone(),
                duration_seconds: body.duration_seconds,
                max_price: checked.max_price,
                denomination: body.denomination.clone(),
                image,
                state: OrderState::Rejected,
                reason: String::new(),
                lease_id: None,
                offer_id: None,
                price: None,
                held: Amount::ZERO,
                charged: Amount::ZERO,
                refunded: Amount::ZERO,
                created_at: now,
                updated_at: now,
            };
            let offers: Vec<OfferRecord> = self
                .live_offers(&txn.open_table(OFFERS)?, &txn.open_table(PROVIDERS)?, now)?
                .into_iter()
                .map(|(offer, _)| offer)
                .collect();
            let book: Vec<_> = offers.iter().map(OfferRecord::to_book).collect();
            let mut lease_out = None;
            match matching::best_offer(&terms, &book) {
                Err(no_match) => order.reason = no_match.to_string(),
                Ok(found) => {
                    let mut offer = offers[found.offer].clone();
                    let price = offer.price;
                    let hold = ledger::hold_amount(price, body.gpus, body.duration_seconds)
                        .map_err(|e| Rejection::invalid("order", &e.to_string()))?;
                    post(
                        txn,
                        now,
                        Account::Buyer(buyer.clone()),
                        Account::Escrow(order_id.clone()),
                        hold,
                        &body.denomination,
                        format!("hold {order_id}"),
                    )?;
                    offer.free_blocks[found.block] -= body.gpus;
                    put(txn, OFFERS, &offer.offer_id.clone(), &offer)?;
                    let lease_id = hex::encode(&Sha256::digest(format!("lease\0{order_id}"))[..12]);
                    let lease_body = LeaseBody {
                        lease_id: lease_id.clone(),
                        provider: crate::identity::public_key_from_base58(&offer.provider)
                            .map(|k| k.as_bytes().to_vec())
                            .unwrap_or_default(),
                        offer_name: offer.offer_name.clone(),
                        order: Some(signed.clone()),
                        gpus: body.gpus,
                        price_per_gpu_hour: price.to_string(),
                        denomination: body.denomination.clone(),
                        duration_seconds: body.duration_seconds,
                        matched_at: now,
                        answer_by: now + i64::from(self.settings.answer_seconds),
                    };
                    let signed_lease = sign_body(&self.key, &lease_body);
                    let record = LeaseRecord {
                        lease_id: lease_id.clone(),
                        order_id: order_id.clone(),
                        buyer: buyer.clone(),
                        provider: offer.provider.clone(),
                        offer_id: offer.offer_id.clone(),
                        offer_seq: offer.published_seq,
                        block: found.block,
                        gpus: body.gpus,
                        price,
                        denomination: body.denomination.clone(),
                        duration_seconds: body.duration_seconds,
                        state: LeaseState::Offered,
                        signed: signed_lease.encode_to_vec(),
                        matched_at: now,
                        answer_by: lease_body.answer_by,
                        end: None,
                        chain: ChainHead::default(),
                        totals: Totals::default(),
                        charged: Amount::ZERO,
                        challenge: None,
                        attestation: None,
                    };
                    put(txn, LEASES, &lease_id, &record)?;
                    order.state = OrderState::Matched;
                    order.lease_id = Some(lease_id);
                    order.offer_id = Some(offer.offer_id.clone());
                    order.price = Some(price);
                    order.held = hold;
                    lease_out = Some((offer.provider.clone(), signed_lease));
                }
            }
            put(txn, ORDERS, &order_id, &order)?;
            txn.open_table(BUYER_ORDERS)?
                .insert(format!("{buyer}/{order_id}").as_str(), now)?;
            Ok(Submitted {
                order: order.to_view(),
                lease: lease_out,
            })
        })
    }

    pub fn decide_lease(&self, signed: &Signed, now: i64) -> Result<()> {
        let opened: Opened<LeaseDecisionBody> = open(signed, now)?;
        let body = &opened.body;
        validate::object_id("decision.leaseId", &body.lease_id)?;
        validate::reason("decision.reason", &body.reason)?;
        if !body.accept && body.reason.is_empty() {
            return Err(Rejection::invalid("decision.reason", "is required when rejecting").into());
        }
        let provider = public_key_base58(&opened.signer);
        self.write(|txn| {
            consume_nonce(txn, &opened)?;
            let mut lease = owned_lease(txn, &body.lease_id, &provider)?;
            match (lease.state, body.accept) {
                (LeaseState::Offered, true) => {
                    lease.state = LeaseState::Accepted;
                    lease.challenge = Some(fresh_challenge(now));
                    put(txn, LEASES, &body.lease_id, &lease)?;
                    let mut order: OrderRecord = get(txn, ORDERS, &lease.order_id)?
                        .ok_or_else(|| HubError::Inconsistent("lease without order".into()))?;
                    order.state = OrderState::Leased;
                    order.updated_at = now;
                    put(txn, ORDERS, &lease.order_id, &order)
                }
                (LeaseState::Offered, false) => refund_and_close(
                    txn,
                    now,
                    &mut lease,
                    LeaseState::Rejected,
                    OrderState::Rejected,
                    format!("the provider rejected the lease: {}", body.reason),
                )
                .map(drop),
                (LeaseState::Accepted, true) | (LeaseState::Rejected, false) => Ok(()),
                (state, _) => Err(Rejection::Precondition(format!(
                    "lease {} is {} and can no longer be answered",
                    body.lease_id,
                    state_name(state)
                ))
                .into()),
            }
        })
    }

    pub fn report_end(&self, signed: &Signed, now: i64) -> Result<LeaseEndReply> {
        let opened: Opened<LeaseEndBody> = open(signed, now)?;
        let body = &opened.body;
        validate::object_id("end.leaseId", &body.lease_id)?;
        if !["Succeeded", "Failed", "Expired", "Terminated"].contains(&body.phase.as_str()) {
            return Err(Rejection::invalid(
                "end.phase",
                "must be Succeeded, Failed, Expired or Terminated",
            )
            .into());
        }
        if !["tenant", "provider", "network", "none"].contains(&body.fault.as_str()) {
            return Err(Rejection::invalid(
                "end.fault",
                "must be tenant, provider, network or none",
            )
            .into());
        }
        validate::reason("end.reason", &body.reason)?;
        if body.ended_at < body.started_at {
            return Err(Rejection::invalid("end.endedAt", "must not be before startedAt").into());
        }
        let provider = public_key_base58(&opened.signer);
        self.write(|txn| {
            consume_nonce(txn, &opened)?;
            let mut lease = owned_lease(txn, &body.lease_id, &provider)?;
            if let (LeaseState::Ended, Some(end)) = (lease.state, &lease.end) {
                return Ok(LeaseEndReply {
                    charged: end.charged.to_string(),
                    refunded: end.refunded.to_string(),
                });
            }
            if lease.state != LeaseState::Accepted {
                return Err(Rejection::Precondition(format!(
                    "lease {} is {}: only an accepted lease can end",
                    body.lease_id,
                    state_name(lease.state)
                ))
                .into());
            }
            let mut order: OrderRecord = get(txn, ORDERS, &lease.order_id)?
                .ok_or_else(|| HubError::Inconsistent("lease without order".into()))?;
            // The provider was paid per accepted receipt; the end returns the rest to the buyer.
            let charge = lease.charged;
            let refund = order
                .held
                .checked_sub(charge, "the refund (hold less what was charged)")?;
            let gpu_seconds = body
                .gpu_seconds
                .min(u64::from(lease.gpus).saturating_mul(lease.duration_seconds));
            post(
                txn,
                now,
                Account::Escrow(order.order_id.clone()),
                Account::Buyer(order.buyer.clone()),
                refund,
                &order.denomination,
                format!("refund {}", order.order_id),
            )?;
            release_capacity(txn, &lease)?;
            let end = LeaseEnd {
                phase: body.phase.clone(),
                reason: body.reason.clone(),
                fault: body.fault.clone(),
                started_at: body.started_at,
                ended_at: body.ended_at,
                gpu_seconds,
                charged: charge,
                refunded: refund,
            };
            lease.state = LeaseState::Ended;
            lease.end = Some(end);
            put(txn, LEASES, &body.lease_id, &lease)?;
            order.state = OrderState::Ended;
            order.reason = format!(
                "lease ended {}: {} (fault: {})",
                body.phase, body.reason, body.fault
            );
            order.charged = charge;
            order.refunded = refund;
            order.updated_at = now;
            put(txn, ORDERS, &lease.order_id, &order)?;
            Ok(LeaseEndReply {
                charged: charge.to_string(),
                refunded: refund.to_string(),
            })
        })
    }

    /// Verifies and settles a batch of receipts (DESIGN §6): each accepted receipt pays the
    /// provider what the lease's cumulative allocated time is worth, less what was paid before,
    /// so the payments add up to exactly ⌊Σ GPU-ms × price / 3 600 000⌋ whatever the batching.
    /// A refused receipt stops the batch; those before it stay accepted.
    pub fn submit_receipts(&self, signed: &Signed, now: i64) -> Result<ReceiptsReply> {
        let opened: Opened<ReceiptsBody> = open(signed, now)?;
        let body = &opened.body;
        validate::object_id("receipts.leaseId", &body.lease_id)?;
        if body.receipts.is_empty() || body.receipts.len() > MAX_RECEIPTS_PER_BATCH {
            return Err(Rejection::invalid(
                "receipts.receipts",
                &format!("must hold 1 to {MAX_RECEIPTS_PER_BATCH} receipts"),
            )
            .into());
        }
        let provider = public_key_base58(&opened.signer);
        self.write(|txn| {
            consume_nonce(txn, &opened)?;
            let mut lease = owned_lease(txn, &body.lease_id, &provider)?;
            let terms = lease_terms(&lease, &body.certificate, now)?;
            let mut order: OrderRecord = get(txn, ORDERS, &lease.order_id)?
                .ok_or_else(|| HubError::Inconsistent("lease without order".into()))?;
            let (held, price) = (order.held, lease.price);
            let mut rejection = None;
            let mut hashes = txn.open_table(RECEIPTS)?;
            for receipt in &body.receipts {
                let step = check_next(&terms, &lease.chain, receipt, now.saturating_mul(1000));
                match step {
                    Ok(Step::Earlier { sequence, hash }) => {
                        let stored = hashes
                            .get(receipt_key(&lease.lease_id, sequence).as_str())?
                            .map(|v| v.value().to_vec());
                        if stored.as_deref() != Some(hash.as_slice()) {
                            rejection = Some(ReceiptRejection::Fork { sequence });
                            break;
                        }
                    }
                    Ok(Step::Next { .. }) if lease.state != LeaseState::Accepted => {
                        rejection = Some(ReceiptRejection::LeaseClosed {
                            sequence: lease.chain.sequence + 1,
                            state: state_name(lease.state),
                        });
                        break;
                    }
                    Ok(Step::Next { receipt, hash }) => {
                        hashes.insert(
                            receipt_key(&lease.lease_id, receipt.sequence).as_str(),
                            hash.as_slice(),
                        )?;
                        lease.chain = lease.chain.advance(&receipt, hash);
                        lease.totals.add(&receipt);
                        let owed =
                            ledger::charge_for(held, price, lease.totals.allocated_gpu_millis)?;
                        let paid = lease.charged;
                        post(
                            txn,
                            now,
                            Account::Escrow(order.order_id.clone()),
                            Account::Provider(provider.clone()),
                            owed.checked_sub(paid.min(owed), "a charge")?,
                            &order.denomination,
                            format!("charge {} receipt {}", order.order_id, receipt.sequence),
                        )?;
                        lease.charged = owed.max(paid);
                    }
                    Err(e) => {
                        rejection = Some(e);
                        break;
                    }
                }
            }
            drop(hashes);
            put(txn, LEASES, &lease.lease_id.clone(), &lease)?;
            if order.charged != lease.charged && lease.state == LeaseState::Accepted {
                order.charged = lease.charged;
                order.updated_at = now;
                put(txn, ORDERS, &order.order_id.clone(), &order)?;
            }
            Ok(receipts_reply(&lease, rejection))
        })
    }

    /// The lease's outstanding attestation challenge.
    pub fn lease_challenge(&self, signed: &Signed, now: i64) -> Result<ChallengeReply> {
        let opened: Opened<ChallengeBody> = open(signed, now)?;
        validate::object_id("challenge.leaseId", &opened.body.lease_id)?;
        let provider = public_key_base58(&opened.signer);
        let txn = self.read()?;
        let lease: LeaseRecord = read_json(&txn.open_table(LEASES)?, &opened.body.lease_id)?
            .ok_or_else(|| {
                Rejection::NotFound(format!("lease {} does not exist", opened.body.lease_id))
            })?;
        if lease.provider != provider {
            return Err(Rejection::PermissionDenied(format!(
                "lease {} belongs to another provider",
                lease.lease_id
            ))
            .into());
        }
        match (&lease.challenge, lease.state) {
            (Some(c), LeaseState::Accepted) => Ok(ChallengeReply {
                nonce: c.nonce.clone(),
                issued_at: c.issued_at,
                answered: c.answered,
            }),
            _ => Err(Rejection::Precondition(format!(
                "lease {} is {} and is not challenged",
                lease.lease_id,
                state_name(lease.state)
            ))
            .into()),
        }
    }

    /// Accepts evidence that answers the lease's outstanding challenge, once.
    pub fn submit_evidence(&self, signed: &Signed, now: i64) -> Result<EvidenceReply> {
        let opened: Opened<EvidenceSubmitBody> = open(signed, now)?;
        let body = &opened.body;
        validate::object_id("evidence.leaseId", &body.lease_id)?;
        let evidence = body
            .evidence
            .as_ref()
            .ok_or_else(|| Rejection::invalid("evidence.evidence", "is required"))?;
        let provider = public_key_base58(&opened.signer);
        self.write(|txn| {
            consume_nonce(txn, &opened)?;
            let mut lease = owned_lease(txn, &body.lease_id, &provider)?;
            let terms = lease_terms(&lease, &body.certificate, now)?;
            let verified = verify_evidence(&terms.lease_key, &lease.lease_id, evidence, now)
                .map_err(evidence_rejection)?;
            let challenge = lease
                .challenge
                .as_mut()
                .filter(|_| lease.state == LeaseState::Accepted)
                .ok_or_else(|| {
                    Rejection::Precondition(format!("lease {} is not challenged", body.lease_id))
                })?;
            if challenge.nonce != verified.evidence.nonce {
                return Err(evidence_rejection(EvidenceRejection::WrongNonce));
            }
            if challenge.answered {
                return Err(evidence_rejection(EvidenceRejection::ReplayedNonce));
            }
            challenge.answered = true;
            let record = AttestationRecord {
                trust_tier: verified.tier.as_str().to_string(),
                digest: verified.digest.to_vec(),
                verified_at: now,
            };
            lease.attestation = Some(record.clone());
            put(txn, LEASES, &lease.lease_id.clone(), &lease)?;
            Ok(EvidenceReply {
                trust_tier: record.trust_tier,
                digest: record.digest,
                verified_at: now,
            })
        })
    }

    pub fn deposit(&self, signed: &Signed, now: i64) -> Result<BalanceReply> {
        let opened: Opened<DepositBody> = open(signed, now)?;
        let value = amount::parse_positive("deposit.amount", &opened.body.amount)?;
        validate::denomination("deposit.denomination", &opened.body.denomination)?;
        let buyer = public_key_base58(&opened.signer);
        self.write(|txn| {
            consume_nonce(txn, &opened)?;
            post(
                txn,
                now,
                Account::External,
                Account::Buyer(buyer.clone()),
                value,
                &opened.body.denomination,
                "deposit".into(),
            )
        })?;
        self.balances_of(&buyer)
    }

    pub fn cancel(&self, signed: &Signed, now: i64) -> Result<OrderView> {
        let opened: Opened<CancelBody> = open(signed, now)?;
        validate::object_id("cancel.orderId", &opened.body.order_id)?;
        let buyer = public_key_base58(&opened.signer);
        self.write(|txn| {
            consume_nonce(txn, &opened)?;
            let order = Self::owned_order(&txn.open_table(ORDERS)?, &opened.body.order_id, &buyer)?;
            match (order.state, &order.lease_id) {
                (OrderState::Matched, Some(lease_id)) => {
                    let mut lease: LeaseRecord = get(txn, LEASES, lease_id)?
                        .ok_or_else(|| HubError::Inconsistent("order without lease".into()))?;
                    let order = refund_and_close(
                        txn,
                        now,
                        &mut lease,
                        LeaseState::Cancelled,
                        OrderState::Cancelled,
                        "cancelled by the buyer before the provider accepted".into(),
                    )?;
                    Ok(order.to_view())
                }
                (OrderState::Leased, _) => Err(Rejection::Precondition(format!(
                    "order {} is leased: the provider accepted it and it runs until its end",
                    order.order_id
                ))
                .into()),
                (state, _) => Err(Rejection::Precondition(format!(
                    "order {} is {} and cannot be cancelled",
                    order.order_id,
                    state_name(state)
                ))
                .into()),
            }
        })
    }

    fn owned_order(
        orders: &impl ReadableTable<&'static str, &'static [u8]>,
        order_id: &str,
        buyer: &str,
    ) -> Result<OrderRecord> {
        match read_json::<OrderRecord>(orders, order_id)? {
            Some(order) if order.buyer == buyer => Ok(order),
            // Another buyer's order is reported as absent: ids reveal nothing.
            _ => Err(Rejection::NotFound(format!("order {order_id} does not exist")).into()),
        }
    }

    /// Queries are read-only, so they are checked for signature and freshness but their nonce is
    /// not recorded: a replay within the freshness window shows only what was already shown.
    fn query(&self, signed: &Signed, now: i64) -> Result<(String, QueryBody)> {
        let opened: Opened<QueryBody> = open(signed, now)?;
        Ok((public_key_base58(&opened.signer), opened.body))
    }

    pub fn list_orders(&self, signed: &Signed, now: i64) -> Result<Vec<OrderView>> {
        let (buyer, _) = self.query(signed, now)?;
        let txn = self.read()?;
        let index = txn.open_table(BUYER_ORDERS)?;
        let orders = txn.open_table(ORDERS)?;
        let prefix = format!("{buyer}/");
        let mut out: Vec<OrderRecord> = Vec::new();
        for entry in index.range(prefix.as_str()..)? {
            let (key, _) = entry?;
            let Some(order_id) = key.value().strip_prefix(&prefix) else {
                break;
            };
            if let Some(order) = read_json::<OrderRecord>(&orders, order_id)? {
                out.push(order);
            }
        }
        out.sort_by(|a, b| (b.created_at, &b.order_id).cmp(&(a.created_at, &a.order_id)));
        Ok(out.iter().map(OrderRecord::to_view).collect())
    }

    pub fn order_status(&self, signed: &Signed, now: i64) -> Result<OrderView> {
        let (buyer, body) = self.query(signed, now)?;
        validate::object_id("query.orderId", &body.order_id)?;
        let txn = self.read()?;
        Ok(Self::owned_order(&txn.open_table(ORDERS)?, &body.order_id, &buyer)?.to_view())
    }

    pub fn balance(&self, signed: &Signed, now: i64) -> Result<BalanceReply> {
        let (key, _) = self.query(signed, now)?;
        self.balances_of(&key)
    }

    /// A party's balances per denomination: spendable, in escrow for its open orders, earned.
    pub fn balances_of(&self, key: &str) -> Result<BalanceReply> {
        use std::collections::BTreeMap;
        let txn = self.read()?;
        let balances = txn.open_table(BALANCES)?;
        let mut by_denomination: BTreeMap<String, (i128, i128, i128)> = BTreeMap::new();
        for (kind, slot) in [("buyer", 0), ("provider", 2)] {
            let prefix = format!("{kind}/{key}/");
            for entry in balances.range(prefix.as_str()..)? {
                let (k, v) = entry?;
                let Some(denomination) = k.value().strip_prefix(&prefix).map(str::to_string) else {
                    break;
                };
                let row = by_denomination.entry(denomination).or_default();
                match slot {
                    0 => row.0 = v.value(),
                    _ => row.2 = v.value(),
                }
            }
        }
        drop(balances);
        let orders = txn.open_table(ORDERS)?;
        let index = txn.open_table(BUYER_ORDERS)?;
        let prefix = format!("{key}/");
        for entry in index.range(prefix.as_str()..)? {
            let (k, _) = entry?;
            let Some(order_id) = k.value().strip_prefix(&prefix) else {
                break;
            };
            if let Some(order) = read_json::<OrderRecord>(&orders, order_id)?
                && matches!(order.state, OrderState::Matched | OrderState::Leased)
            {
                let row = by_denomination.entry(order.denomination).or_default();
                row.1 += order.held.signed("held").map_err(HubError::Money)?;
            }
        }
        Ok(BalanceReply {
            balances: by_denomination
                .into_iter()
                .map(|(denomination, (available, held, earned))| Balance {
                    denomination,
                    available: available.to_string(),
                    held: held.to_string(),
                    earned: earned.to_string(),
                })
                .collect(),
        })
    }

    pub fn list_offers(&self, now: i64) -> Result<Vec<OfferView>> {
        let txn = self.read()?;
        let live = self.live_offers(&txn.open_table(OFFERS)?, &txn.open_table(PROVIDERS)?, now)?;
        Ok(live
            .iter()
            .map(|(offer, provider)| offer.to_view(&provider.name))
            .collect())
    }

    /// Periodic upkeep: leases not answered in time lapse (the buyer is refunded), expired offers
    /// and those of silent providers are dropped, nonces past the freshness window are forgotten.
    /// Returns the lapsed lease ids.
    pub fn sweep(&self, now: i64) -> Result<Vec<String>> {
        self.write(|txn| {
            let leases: Vec<LeaseRecord> = all_json(&txn.open_table(LEASES)?)?;
            let mut lapsed = Vec::new();
            for mut lease in leases
                .into_iter()
                .filter(|l| l.state == LeaseState::Offered && l.answer_by < now)
            {
                let reason = format!(
                    "the provider did not answer by {}; the hold was refunded",
                    lease.answer_by
                );
                refund_and_close(
                    txn,
                    now,
                    &mut lease,
                    LeaseState::Lapsed,
                    OrderState::Rejected,
                    reason,
                )?;
                lapsed.push(lease.lease_id);
            }
            let mut offers = txn.open_table(OFFERS)?;
            let live: std::collections::BTreeSet<String> = self
                .live_offers(&offers, &txn.open_table(PROVIDERS)?, now)?
                .into_iter()
                .map(|(offer, _)| offer.offer_id)
                .collect();
            offers.retain(|offer_id, _| live.contains(offer_id))?;
            drop(offers);
            let leases: Vec<LeaseRecord> = all_json(&txn.open_table(LEASES)?)?;
            for mut lease in leases.into_iter().filter(|l| {
                l.state == LeaseState::Accepted
                    && l.challenge.as_ref().is_some_and(|c| {
                        c.answered
                            && now - c.issued_at >= i64::from(self.settings.challenge_seconds)
                    })
            }) {
                lease.challenge = Some(fresh_challenge(now));
                put(txn, LEASES, &lease.lease_id.clone(), &lease)?;
            }
            let horizon = now - 2 * envelope::FRESHNESS_SECONDS;
            txn.open_table(NONCES)?
                .retain(|_, issued_at| issued_at >= horizon)?;
            Ok(lapsed)
        })
    }

    /// Checks the books: every balance equals the sum of its postings, all balances sum to zero,
    /// and each order's escrow holds exactly what the order says is held.
    pub fn audit(&self) -> std::result::Result<Audit, AuditError> {
        let txn = self.read()?;
        let postings_table = txn.open_table(POSTINGS).map_err(HubError::from)?;
        let mut postings = Vec::new();
        for entry in postings_table.iter().map_err(HubError::from)? {
            let (_, v) = entry.map_err(HubError::from)?;
            let posting: Posting = serde_json::from_slice(v.value()).map_err(HubError::from)?;
            postings.push(posting);
        }
        let implied = ledger::balances_from(&postings)?;
        let balances = txn.open_table(BALANCES).map_err(HubError::from)?;
        let mut stored = BTreeMap::new();
        for entry in balances.iter().map_err(HubError::from)? {
            let (k, v) = entry.map_err(HubError::from)?;
            stored.insert(k.value().to_string(), v.value());
        }
        stored.retain(|_, v| *v != 0);
        let mut implied_nonzero = implied.clone();
        implied_nonzero.retain(|_, v| *v != 0);
        if stored != implied_nonzero {
            return Err(AuditError::Balances {
                stored,
                implied: implied_nonzero,
            });
        }
        let total: i128 = implied.values().sum();
        if total != 0 {
            return Err(AuditError::Sum(total));
        }
        let orders: Vec<OrderRecord> = all_json(&txn.open_table(ORDERS).map_err(HubError::from)?)?;
        for order in &orders {
            let holds = implied
                .get(&Account::Escrow(order.order_id.clone()).key(&order.denomination))
                .copied()
                .unwrap_or(0);
            let expected = match order.state {
                OrderState::Matched | OrderState::Leased => order
                    .held
                    .checked_sub(order.charged, "escrow (held less charged)")?
                    .signed("escrow")?,
                _ => 0,
            };
            if holds != expected {
                return Err(AuditError::Escrow {
                    order: order.order_id.clone(),
                    state: order.state,
                    holds,
                    expected,
                });
            }
        }
        let leases = txn.open_table(LEASES).map_err(HubError::from)?;
        Ok(Audit {
            postings: postings.len() as u64,
            accounts: implied.len(),
            orders: orders.len(),
            leases: leases.len().map_err(HubError::from)? as usize,
        })
    }

    /// Every order, for tests and the crash check.
    pub fn orders(&self) -> Result<Vec<OrderView>> {
        let txn = self.read()?;
        let orders: Vec<OrderRecord> = all_json(&txn.open_table(ORDERS)?)?;
        Ok(orders.iter().map(OrderRecord::to_view).collect())
    }

    /// Every lease, for tests and the crash check.
    pub fn leases(&self) -> Result<Vec<LeaseRecord>> {
        let txn = self.read()?;
        all_json(&txn.open_table(LEASES)?)
    }
}

//! The books: postings between accounts, deposits, balances, and the audit.

use std::collections::BTreeMap;

use redb::{ReadableTable, ReadableTableMetadata, WriteTransaction};

use crate::identity::public_key_base58;
use crate::node::ledger::{self, Account, Posting};
use crate::node::records::OrderRecord;
use crate::node::transitions;
use crate::wire::amount::{self, Amount};
use crate::wire::envelope::open;
use crate::wire::proto::{Balance, BalanceReply, DepositBody, Signed};
use crate::wire::{Opened, Rejection, validate};

use super::{
    Audit, AuditError, BALANCES, BUYER_ORDERS, HubError, LEASES, ORDERS, POSTING_SEQ, POSTINGS,
    Result, Store, all_json, consume_nonce, next, read_json,
};

/// Moves `amount` between two accounts: one posting, both balances. A buyer or escrow account
/// never goes below zero.
pub(super) fn post(
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
                "insufficient funds: {memo} needs {} {denomination}, {} available",
                amount.to_decimal_units(),
                Amount::from_atto(from_balance.max(0).unsigned_abs()).to_decimal_units()
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

impl Store {
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
                && transitions::holds_escrow(order.state)
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
            let expected = if transitions::holds_escrow(order.state) {
                order
                    .held
                    .checked_sub(order.charged, "escrow (held less charged)")?
                    .signed("escrow")?
            } else {
                0
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
}

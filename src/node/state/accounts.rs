//! The books: postings between accounts, deposits, balances, and the audit.

use std::collections::BTreeMap;

use crate::identity::public_key_base58;
use crate::node::ledger::{self, Account, Posting};
use crate::node::records::{OrderRecord, OrderState};
use crate::node::transitions;
use crate::wire::amount::{self, Amount};
use crate::wire::envelope::open;
use crate::wire::proto::{Balance, BalanceReply, DepositBody, Signed};
use crate::wire::{Opened, Rejection, validate};

use super::{
    BALANCES, BUYER_ORDERS, Block, LEASES, ORDERS, POSTING_SEQ, POSTINGS, Result, State, StateError,
};

/// What an audit of the books found wrong.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    State(#[from] StateError),
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
    #[error("the lease indexes differ from the leases: missing {missing:?}, not implied {extra:?}")]
    LeaseIndexes {
        missing: Vec<String>,
        extra: Vec<String>,
    },
    #[error(transparent)]
    Money(#[from] amount::Overflow),
}

/// What `audit` found: totals, or the first inconsistency.
#[derive(Debug, PartialEq, Eq)]
pub struct Audit {
    pub postings: u64,
    pub accounts: usize,
    pub orders: usize,
    pub leases: usize,
}

impl State {
    /// Moves `amount` between two accounts: one posting, both balances. A buyer or escrow
    /// account never goes below zero.
    pub(super) fn post(
        &mut self,
        block: &Block,
        (from, to): (Account, Account),
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
        let from_balance: i128 = self.get(BALANCES, &from_key)?.unwrap_or(0);
        if from != Account::External && from_balance < signed {
            return Err(Rejection::Precondition(format!(
                "insufficient funds: {memo} needs {} {denomination}, {} available",
                amount.to_decimal_units(),
                Amount::from_atto(from_balance.max(0).unsigned_abs()).to_decimal_units()
            ))
            .into());
        }
        self.put(BALANCES, &from_key, &(from_balance - signed))?;
        let to_balance: i128 = self.get(BALANCES, &to_key)?.unwrap_or(0);
        let new_to = to_balance
            .checked_add(signed)
            .ok_or_else(|| Rejection::invalid("amount", "balance would overflow"))?;
        self.put(BALANCES, &to_key, &new_to)?;
        let seq = self.next_seq(POSTING_SEQ)?;
        let posting = Posting {
            seq,
            at: block.time,
            from,
            to,
            amount,
            denomination: denomination.to_string(),
            memo,
        };
        self.put(POSTINGS, &format!("{seq:020}"), &posting)
    }

    pub(super) fn deposit(&mut self, signed: &Signed, block: &Block) -> Result<BalanceReply> {
        let opened: Opened<DepositBody> = open(signed, block.time)?;
        let value = amount::parse_positive("deposit.amount", &opened.body.amount)?;
        validate::denomination("deposit.denomination", &opened.body.denomination)?;
        let buyer = public_key_base58(&opened.signer);
        self.consume_nonce(&opened)?;
        self.post(
            block,
            (Account::External, Account::Buyer(buyer.clone())),
            value,
            &opened.body.denomination,
            "deposit".into(),
        )?;
        self.balances_of(&buyer)
    }

    /// A party's balances per denomination: spendable, in escrow for its open orders, earned.
    pub fn balances_of(&self, key: &str) -> Result<BalanceReply> {
        let mut by_denomination: BTreeMap<String, (i128, i128, i128)> = BTreeMap::new();
        for (account, earned) in [
            (Account::Buyer(key.to_string()), false),
            (Account::Provider(key.to_string()), true),
        ] {
            for (denomination, balance) in self.scan::<i128>(BALANCES, &account.key(""))? {
                let denomination = denomination[account.key("").len()..].to_string();
                let row = by_denomination.entry(denomination).or_default();
                match earned {
                    false => row.0 = balance,
                    true => row.2 = balance,
                }
            }
        }
        for (index_key, _) in self.scan::<i64>(BUYER_ORDERS, &format!("{key}/"))? {
            let order_id = &index_key[key.len() + 1..];
            if let Some(order) = self.get::<OrderRecord>(ORDERS, order_id)?
                && transitions::holds_escrow(order.state)
            {
                let row = by_denomination.entry(order.denomination).or_default();
                row.1 += order.held.signed("held")?;
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

    /// Checks the books: every balance equals the sum of its postings, all balances sum to
    /// zero, and each order's escrow holds exactly what the order says is held; and that the
    /// lease indexes say what the leases do.
    pub fn audit(&self) -> std::result::Result<Audit, AuditError> {
        let postings: Vec<Posting> = self.all(POSTINGS)?;
        let implied = ledger::balances_from(&postings)?;
        let mut stored: BTreeMap<String, i128> = self.scan(BALANCES, "")?.into_iter().collect();
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
        let orders: Vec<OrderRecord> = self.all(ORDERS)?;
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
        let (missing, extra) = self.lease_index_differences()?;
        if !missing.is_empty() || !extra.is_empty() {
            return Err(AuditError::LeaseIndexes { missing, extra });
        }
        Ok(Audit {
            postings: postings.len() as u64,
            accounts: implied.len(),
            orders: orders.len(),
            leases: self.count(LEASES),
        })
    }
}

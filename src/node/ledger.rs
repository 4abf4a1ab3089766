//! The escrow ledger (DESIGN §6): double-entry postings of integer atto amounts. Every posting
//! moves one amount from one account to another, so all balances always sum to zero and each
//! balance is the sum of its postings. Pure: the store persists postings and balances together.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::wire::amount::{Amount, Overflow};

/// An account of one denomination.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Account {
    /// Where deposits come from and withdrawals go: its balance is minus all money inside.
    External,
    /// A buyer's spendable funds, by public key.
    Buyer(String),
    /// Funds held for one order until its lease settles.
    Escrow(String),
    /// A provider's earnings, by public key.
    Provider(String),
    /// A provider's bonded stake, by public key: slashable, covers its leases' GPUs.
    Bond(String),
    /// Stake a provider unbonds, until its release: still slashable.
    Unbonding(String),
    /// A proposal's deposit, by proposal id, until its vote ends.
    Proposal(String),
}

impl Account {
    /// The account's key in the store: kind, owner, then denomination, so one owner's
    /// accounts are one key range.
    pub fn key(&self, denomination: &str) -> String {
        match self {
            Account::External => format!("external/{denomination}"),
            Account::Buyer(k) => format!("buyer/{k}/{denomination}"),
            Account::Escrow(o) => format!("escrow/{o}/{denomination}"),
            Account::Provider(k) => format!("provider/{k}/{denomination}"),
            Account::Bond(k) => format!("bond/{k}/{denomination}"),
            Account::Unbonding(k) => format!("unbonding/{k}/{denomination}"),
            Account::Proposal(id) => format!("proposal/{id}/{denomination}"),
        }
    }
}

/// One movement of money: `amount` leaves `from` and enters `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    pub seq: u64,
    pub at: i64,
    pub from: Account,
    pub to: Account,
    pub amount: Amount,
    pub denomination: String,
    /// What it is for: "deposit", "hold", "charge", "refund", with the order id.
    pub memo: String,
}

/// Escrow held at match: price × GPUs × duration, rounded up to a whole atto unit.
pub fn hold_amount(
    price_per_gpu_hour: Amount,
    gpus: u32,
    duration_seconds: u64,
) -> Result<Amount, Overflow> {
    let total = price_per_gpu_hour
        .atto()
        .checked_mul(u128::from(gpus))
        .and_then(|v| v.checked_mul(u128::from(duration_seconds)))
        .ok_or(Overflow("the hold (price × GPUs × seconds)"))?;
    Ok(Amount::from_atto(total.div_ceil(3600)))
}

/// What `allocated_gpu_millis` of GPU time is worth at `price_per_gpu_hour`, rounded down,
/// never above the hold. A product past 128 bits is an error, not a charge.
pub fn charge_for(
    hold: Amount,
    price_per_gpu_hour: Amount,
    allocated_gpu_millis: u64,
) -> Result<Amount, Overflow> {
    let worth = price_per_gpu_hour
        .atto()
        .checked_mul(u128::from(allocated_gpu_millis))
        .ok_or(Overflow("the charge (price × GPU-milliseconds)"))?
        / 3_600_000;
    Ok(Amount::from_atto(worth).min(hold))
}

/// Balances implied by `postings`, by account key: credits minus debits.
pub fn balances_from<'a>(
    postings: impl IntoIterator<Item = &'a Posting>,
) -> Result<BTreeMap<String, i128>, Overflow> {
    let mut balances = BTreeMap::new();
    for p in postings {
        let amount = p.amount.signed("a posting")?;
        let from = balances.entry(p.from.key(&p.denomination)).or_insert(0i128);
        *from = from.checked_sub(amount).ok_or(Overflow("a balance"))?;
        let to = balances.entry(p.to.key(&p.denomination)).or_insert(0i128);
        *to = to.checked_add(amount).ok_or(Overflow("a balance"))?;
    }
    Ok(balances)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_round_up_and_charges_round_down() {
        // 1 atto per GPU-hour for one GPU-second is 1/3600 of an atto.
        let a = Amount::from_atto;
        assert_eq!(hold_amount(a(1), 1, 1), Ok(a(1)));
        assert_eq!(hold_amount(a(3600), 2, 3600), Ok(a(7200)));
        assert_eq!(charge_for(a(7200), a(3600), 3_599_000), Ok(a(3599)));
        assert_eq!(charge_for(a(7200), a(3600), 3_599_999), Ok(a(3599)));
        assert_eq!(charge_for(a(7200), a(3600), 7_200_000), Ok(a(7200)));
        // More GPU time than was held is capped at the hold.
        assert_eq!(charge_for(a(7200), a(3600), 1_000_000_000), Ok(a(7200)));
        assert_eq!(charge_for(a(1), a(1), 1_000), Ok(a(0)));
        // Overflow is an error, never "charge the whole hold".
        assert!(charge_for(a(10), a(u128::MAX), 2).is_err());
        assert!(hold_amount(a(u128::MAX), 2, 1).is_err());
    }

    #[test]
    fn postings_balance_to_zero() {
        let post = |seq, from, to, amount: u128| Posting {
            seq,
            at: 0,
            from,
            to,
            amount: Amount::from_atto(amount),
            denomination: "USDC".into(),
            memo: String::new(),
        };
        let postings = vec![
            post(1, Account::External, Account::Buyer("b".into()), 100),
            post(
                2,
                Account::Buyer("b".into()),
                Account::Escrow("o".into()),
                60,
            ),
            post(
                3,
                Account::Escrow("o".into()),
                Account::Provider("p".into()),
                45,
            ),
            post(
                4,
                Account::Escrow("o".into()),
                Account::Buyer("b".into()),
                15,
            ),
        ];
        let balances = balances_from(&postings).unwrap();
        assert_eq!(balances["buyer/b/USDC"], 55);
        assert_eq!(balances["escrow/o/USDC"], 0);
        assert_eq!(balances["provider/p/USDC"], 45);
        assert_eq!(balances["external/USDC"], -100);
        assert_eq!(balances.values().sum::<i128>(), 0);
        let too_much = [post(
            5,
            Account::External,
            Account::Buyer("b".into()),
            u128::MAX,
        )];
        assert!(
            balances_from(&too_much).is_err(),
            "no stand-in for an unrepresentable amount"
        );
    }
}

//! Stake (DESIGN §7): a provider bonds stake, which bounds the GPUs its leases may hold;
//! unbonding takes the network's period, during which the stake can still be slashed; a slash
//! takes a share of the stake on machine-checkable evidence only and pays it to the harmed
//! buyer. The evidence this module acts on is the state's own: an accepted lease with no receipt
//! by its start deadline.

use serde::{Deserialize, Serialize};

use crate::identity::public_key_base58;
use crate::node::ledger::Account;
use crate::node::records::{LeaseEnd, LeaseRecord};
use crate::node::transitions::{self, Event, Step};
use crate::wire::amount::{self, Amount};
use crate::wire::envelope::open;
use crate::wire::proto::{BondBody, Signed, SlashView, StakeReply, UnbondBody, Unbonding};
use crate::wire::{Opened, Rejection};

use super::{
    BALANCES, Block, COMMITTED, Params, Result, SLASHES, STAKE_SEQ, State, StateError, UNBONDING,
};

/// A slash, as recorded with its evidence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlashRecord {
    pub lease_id: String,
    pub buyer: String,
    pub kind: String,
    pub amount: Amount,
    pub at: i64,
    pub evidence: String,
}

/// GPUs `bonded` covers at `per_gpu`; `None` when the network asks no bond.
pub fn covered_gpus(bonded: Amount, per_gpu: Amount) -> Option<u64> {
    (per_gpu != Amount::ZERO)
        .then(|| u64::try_from(bonded.atto() / per_gpu.atto()).unwrap_or(u64::MAX))
}

/// What one slash of `basis_points` takes from `stake`, rounded down.
pub fn slash_amount(stake: Amount, basis_points: u32) -> Amount {
    // In two parts, so that no stake below 2^128 overflows.
    let atto = stake.atto();
    let bp = u128::from(basis_points.min(10_000));
    Amount::from_atto(atto / 10_000 * bp + atto % 10_000 * bp / 10_000)
}

impl State {
    pub(super) fn balance(&self, account: &Account, denomination: &str) -> Result<Amount> {
        let atto: i128 = self.get(BALANCES, &account.key(denomination))?.unwrap_or(0);
        Ok(Amount::from_atto(atto.max(0).unsigned_abs()))
    }

    /// GPUs in `provider`'s matched and running leases.
    pub(super) fn committed_gpus(&self, provider: &str) -> Result<u64> {
        Ok(self.get(COMMITTED, provider)?.unwrap_or(0))
    }

    /// Adds (a lease matched) or takes away (a lease closed) `gpus` of `provider`'s leases.
    pub(super) fn commit_gpus(&mut self, provider: &str, gpus: u32, add: bool) -> Result<()> {
        let now = self.committed_gpus(provider)?;
        let next = if add {
            now + u64::from(gpus)
        } else {
            now.checked_sub(u64::from(gpus)).ok_or_else(|| {
                StateError::Inconsistent(format!(
                    "provider {provider} releases {gpus} GPUs of {now} committed"
                ))
            })?
        };
        self.put(COMMITTED, provider, &next)
    }

    /// GPUs `provider`'s bond still covers for new leases; `None` when the network asks no
    /// bond.
    pub(super) fn uncommitted_cover(&self, provider: &str, params: &Params) -> Result<Option<u64>> {
        let bonded = self.balance(
            &Account::Bond(provider.to_string()),
            &params.stake_denomination,
        )?;
        let committed = self.committed_gpus(provider)?;
        Ok(covered_gpus(bonded, params.bond_per_gpu).map(|c| c.saturating_sub(committed)))
    }

    pub(super) fn bond(&mut self, signed: &Signed, block: &Block) -> Result<StakeReply> {
        let opened: Opened<BondBody> = open(signed, block.time)?;
        let value = amount::parse_positive("bond.amount", &opened.body.amount)?;
        let provider = public_key_base58(&opened.signer);
        let from = match opened.body.source.as_str() {
            "available" => Account::Buyer(provider.clone()),
            "earnings" => Account::Provider(provider.clone()),
            _ => {
                return Err(
                    Rejection::invalid("bond.source", "must be available or earnings").into(),
                );
            }
        };
        self.consume_nonce(&opened)?;
        self.registered(&provider)?;
        let denomination = self.params()?.stake_denomination;
        self.post(
            block,
            (from, Account::Bond(provider.clone())),
            value,
            &denomination,
            "bond".into(),
        )?;
        self.stake_of(&provider)
    }

    pub(super) fn unbond(&mut self, signed: &Signed, block: &Block) -> Result<StakeReply> {
        let opened: Opened<UnbondBody> = open(signed, block.time)?;
        let value = amount::parse_positive("unbond.amount", &opened.body.amount)?;
        let provider = public_key_base58(&opened.signer);
        self.consume_nonce(&opened)?;
        let params = self.params()?;
        let denomination = &params.stake_denomination;
        let bonded = self.balance(&Account::Bond(provider.clone()), denomination)?;
        let left = bonded.checked_sub(value, "the bond").map_err(|_| {
            Rejection::Precondition(format!(
                "unbond.amount: {} {denomination} is more than the {} bonded",
                value.to_decimal_units(),
                bonded.to_decimal_units()
            ))
        })?;
        let committed = self.committed_gpus(&provider)?;
        if covered_gpus(left, params.bond_per_gpu).is_some_and(|c| c < committed) {
            return Err(Rejection::Precondition(format!(
                "unbond.amount: would leave {} {denomination} bonded, less than the {committed} \
                 GPUs of the provider's matched and running leases need at {} per GPU",
                left.to_decimal_units(),
                params.bond_per_gpu.to_decimal_units()
            ))
            .into());
        }
        self.post(
            block,
            (
                Account::Bond(provider.clone()),
                Account::Unbonding(provider.clone()),
            ),
            value,
            denomination,
            "unbond".into(),
        )?;
        let release_at = block.time + i64::from(params.unbonding_seconds);
        let seq = self.next_seq(STAKE_SEQ)?;
        self.put(
            UNBONDING,
            &format!("{provider}/{release_at:020}/{seq:020}"),
            &value,
        )?;
        self.stake_of(&provider)
    }

    /// `provider`'s stake, what it covers, and the slashes it took.
    pub fn stake_of(&self, provider: &str) -> Result<StakeReply> {
        let params = self.params()?;
        let denomination = &params.stake_denomination;
        let bonded = self.balance(&Account::Bond(provider.to_string()), denomination)?;
        let unbonding = self
            .scan::<Amount>(UNBONDING, &format!("{provider}/"))?
            .into_iter()
            .map(|(key, amount)| Unbonding {
                amount: amount.to_string(),
                release_at: release_time(&key),
            })
            .collect();
        let slashes = self
            .scan::<SlashRecord>(SLASHES, &format!("{provider}/"))?
            .into_iter()
            .map(|(_, s)| SlashView {
                lease_id: s.lease_id,
                kind: s.kind,
                amount: s.amount.to_string(),
                at: s.at,
                evidence: s.evidence,
                buyer: s.buyer,
            })
            .collect();
        Ok(StakeReply {
            denomination: denomination.clone(),
            bonded: bonded.to_string(),
            unbonding,
            covered_gpus: covered_gpus(bonded, params.bond_per_gpu),
            committed_gpus: self.committed_gpus(provider)?,
            slashes,
        })
    }

    /// Pays back unbonding stake whose release time has come.
    pub(super) fn release_unbonded(&mut self, block: &Block) -> Result<()> {
        let denomination = self.params()?.stake_denomination;
        for (key, amount) in self.scan::<Amount>(UNBONDING, "")? {
            if release_time(&key) > block.time {
                continue;
            }
            let provider = key.split('/').next().unwrap_or_default().to_string();
            self.post(
                block,
                (
                    Account::Unbonding(provider.clone()),
                    Account::Buyer(provider),
                ),
                amount,
                &denomination,
                "unbonded".into(),
            )?;
            self.delete(UNBONDING, &key);
        }
        Ok(())
    }

    /// Takes the network's share of `lease`'s provider's stake, bond first and then unbonding
    /// stake (oldest release first), pays it to the lease's buyer, and records it with
    /// `evidence`. The amount taken.
    pub(super) fn slash(
        &mut self,
        block: &Block,
        lease: &LeaseRecord,
        kind: &str,
        evidence: String,
    ) -> Result<Amount> {
        let params = self.params()?;
        let denomination = &params.stake_denomination;
        let provider = &lease.provider;
        let bonded = self.balance(&Account::Bond(provider.clone()), denomination)?;
        let entries = self.scan::<Amount>(UNBONDING, &format!("{provider}/"))?;
        let mut stake = bonded;
        for (_, amount) in &entries {
            stake = stake.checked_add(*amount, "the stake")?;
        }
        let take = slash_amount(stake, params.slash_basis_points);
        let memo = format!("slash {} {kind}", lease.lease_id);
        let buyer = Account::Buyer(lease.buyer.clone());
        let from_bond = take.min(bonded);
        self.post(
            block,
            (Account::Bond(provider.clone()), buyer.clone()),
            from_bond,
            denomination,
            memo.clone(),
        )?;
        let mut rest = take.checked_sub(from_bond, "the slash")?;
        for (key, amount) in entries {
            if rest == Amount::ZERO {
                break;
            }
            let part = rest.min(amount);
            self.post(
                block,
                (Account::Unbonding(provider.clone()), buyer.clone()),
                part,
                denomination,
                memo.clone(),
            )?;
            rest = rest.checked_sub(part, "the slash")?;
            match amount.checked_sub(part, "an unbonding")? {
                left if left == Amount::ZERO => {
                    self.delete(UNBONDING, &key);
                }
                left => self.put(UNBONDING, &key, &left)?,
            }
        }
        let seq = self.next_seq(STAKE_SEQ)?;
        let record = SlashRecord {
            lease_id: lease.lease_id.clone(),
            buyer: lease.buyer.clone(),
            kind: kind.to_string(),
            amount: take,
            at: block.time,
            evidence,
        };
        self.put(SLASHES, &format!("{provider}/{seq:020}"), &record)?;
        Ok(take)
    }

    /// When an accepted lease that has sent no receipt is past its start deadline.
    pub(super) fn start_deadline(lease: &LeaseRecord, deadline_seconds: u32) -> Option<i64> {
        if deadline_seconds == 0 || !transitions::meters(lease.state) || lease.chain.sequence != 0 {
            return None;
        }
        Some(lease.accepted_at? + i64::from(deadline_seconds))
    }

    /// Ends an accepted lease that never started: the buyer gets the whole hold back and the
    /// slash, the provider the fault.
    pub(super) fn end_never_started(&mut self, block: &Block, lease: LeaseRecord) -> Result<()> {
        let deadline = self.params()?.start_deadline_seconds;
        let accepted_at = lease.accepted_at.unwrap_or(lease.matched_at);
        let evidence = format!(
            "accepted at {accepted_at}; no receipt by {} ({deadline} s later)",
            accepted_at + i64::from(deadline)
        );
        self.end_by_network(
            block,
            lease,
            "NeverStarted",
            evidence,
            Some("never-started"),
        )
    }

    /// Ends an accepted lease on the network's own word (`reason`, because of `evidence`): what
    /// its receipts charged stands and the buyer gets the rest of the hold back. With a `slash`
    /// kind the end is the provider's fault and the buyer also gets the slash; without, it is
    /// nobody's.
    pub(super) fn end_by_network(
        &mut self,
        block: &Block,
        mut lease: LeaseRecord,
        reason: &str,
        evidence: String,
        slash: Option<&str>,
    ) -> Result<()> {
        let mut order = self.order_of(&lease)?;
        let Step::Moves {
            order: order_state,
            lease: lease_state,
            ..
        } = transitions::next(order.state, Some(lease.state), Event::End).map_err(|refused| {
            StateError::Inconsistent(format!("lease {} {refused}", lease.lease_id))
        })?
        else {
            return Ok(());
        };
        let charged = lease.charged;
        let end = LeaseEnd {
            phase: "Failed".into(),
            reason: reason.into(),
            fault: if slash.is_some() { "provider" } else { "none" }.into(),
            started_at: lease.accepted_at.unwrap_or(lease.matched_at),
            ended_at: block.time,
            gpu_seconds: lease.totals.allocated_gpu_millis / 1000,
            charged,
            refunded: order
                .held
                .checked_sub(charged, "the refund (hold less what was charged)")?,
        };
        self.settle_end(
            block,
            &mut lease,
            &mut order,
            end,
            (order_state, lease_state),
        )?;
        let Some(kind) = slash else {
            order.reason = format!("{}: {evidence}", order.reason);
            return self.put(super::ORDERS, &order.order_id, &order);
        };
        let slashed = self.slash(block, &lease, kind, evidence.clone())?;
        order.reason = format!(
            "{}: {evidence}; the provider was slashed {} {}, paid to the buyer",
            order.reason,
            slashed.to_decimal_units(),
            self.params()?.stake_denomination
        );
        self.put(super::ORDERS, &order.order_id, &order)
    }
}

/// The release time in an unbonding key `<provider>/<release_at>/<seq>`.
fn release_time(key: &str) -> i64 {
    key.split('/')
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bond_covers_whole_gpus_and_no_bond_is_asked_at_zero() {
        let unit = Amount::from_atto(10);
        assert_eq!(covered_gpus(Amount::from_atto(35), unit), Some(3));
        assert_eq!(covered_gpus(Amount::ZERO, unit), Some(0));
        assert_eq!(covered_gpus(Amount::from_atto(35), Amount::ZERO), None);
    }

    #[test]
    fn a_slash_is_its_share_rounded_down_without_overflow() {
        assert_eq!(
            slash_amount(Amount::from_atto(1000), 1000),
            Amount::from_atto(100)
        );
        assert_eq!(
            slash_amount(Amount::from_atto(999), 1000),
            Amount::from_atto(99)
        );
        assert_eq!(
            slash_amount(Amount::from_atto(1000), 10_000),
            Amount::from_atto(1000)
        );
        assert_eq!(
            slash_amount(Amount::from_atto(1000), 20_000),
            Amount::from_atto(1000)
        );
        let max = Amount::from_atto(i128::MAX as u128);
        assert_eq!(slash_amount(max, 10_000), max);
        assert!(slash_amount(max, 5_000) <= max);
    }
}

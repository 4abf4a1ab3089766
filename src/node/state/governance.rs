//! Governance (DESIGN §7): anyone may propose parameter changes by putting down a deposit;
//! bonded stake votes; at the vote's end the tally counts each voter's bond as it then stands,
//! against the quorum and threshold fixed at genesis; a passed proposal takes effect at the
//! height it announced. No key changes a parameter any other way.

use serde::{Deserialize, Serialize};

use crate::identity::public_key_base58;
use crate::node::ledger::Account;
use crate::wire::amount::{self, Amount};
use crate::wire::envelope::open;
use crate::wire::proto::{ParamChange, ParamsReply, ProposalView, ProposeBody, Signed, VoteBody};
use crate::wire::{Opened, Rejection};

use super::{BALANCES, Block, PARAMS, PROPOSAL_SEQ, PROPOSALS, Params, Result, State, VOTES};

/// Changes one proposal may make.
const MAX_CHANGES: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProposalStatus {
    Voting,
    /// Passed, waiting for its height.
    Passed,
    Applied,
    Rejected,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalRecord {
    pub id: u64,
    pub proposer: String,
    pub changes: Vec<(String, String)>,
    pub deposit: Amount,
    pub submitted_height: u64,
    pub voting_end_height: u64,
    pub effective_height: u64,
    pub status: ProposalStatus,
    /// Why it was rejected, or the tally that passed it.
    pub outcome: String,
}

/// A tally: the bonded stake that voted yes and no, and all bonded stake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tally {
    pub yes: Amount,
    pub no: Amount,
    pub bonded: Amount,
}

/// What a tally decides under `rules`: `Ok` with the tally in words when it passes, `Err` with
/// the reason when not, and whether the deposit goes back (the vote reached quorum).
pub fn decide(tally: Tally, rules: &Params) -> (std::result::Result<String, String>, bool) {
    let voted = tally.yes.atto().saturating_add(tally.no.atto());
    // Basis points of `part` (never more than `of`); none of nothing. Both are first cut to
    // 100 bits, so that no product overflows.
    let share = |part: u128, of: u128| -> u128 {
        let shift = (128 - of.leading_zeros()).saturating_sub(100);
        let (part, of) = (part >> shift, of >> shift);
        part.checked_div(of)
            .map_or(0, |whole| whole * 10_000 + part % of * 10_000 / of)
    };
    let turnout = share(voted, tally.bonded.atto());
    if tally.bonded == Amount::ZERO || turnout < u128::from(rules.quorum_basis_points) {
        return (
            Err(format!(
                "no quorum: {turnout} basis points of bonded stake voted, {} needed",
                rules.quorum_basis_points
            )),
            false,
        );
    }
    let yes = share(tally.yes.atto(), voted);
    if yes <= u128::from(rules.threshold_basis_points) {
        return (
            Err(format!(
                "voted down: {yes} basis points of the stake that voted said yes, more than {} needed",
                rules.threshold_basis_points
            )),
            true,
        );
    }
    (
        Ok(format!(
            "passed: {yes} basis points yes, {turnout} basis points of bonded stake voted"
        )),
        true,
    )
}

impl State {
    fn proposal(&self, id: u64) -> Result<ProposalRecord> {
        self.get(PROPOSALS, &format!("{id:020}"))?
            .ok_or_else(|| Rejection::NotFound(format!("proposal {id} does not exist")).into())
    }

    pub(super) fn propose(&mut self, signed: &Signed, block: &Block) -> Result<ProposalView> {
        let opened: Opened<ProposeBody> = open(signed, block.time)?;
        let body = &opened.body;
        if body.changes.is_empty() || body.changes.len() > MAX_CHANGES {
            return Err(Rejection::invalid(
                "propose.changes",
                &format!("must hold 1 to {MAX_CHANGES} changes"),
            )
            .into());
        }
        let mut params = self.params()?;
        for change in &body.changes {
            params = params.with_change(&change.name, &change.value)?;
        }
        let rules = self.params()?;
        let deposit = amount::parse_positive("propose.deposit", &body.deposit)?;
        if deposit < rules.min_deposit {
            return Err(Rejection::invalid(
                "propose.deposit",
                &format!("must be at least {} atto units", rules.min_deposit),
            )
            .into());
        }
        let voting_end_height = block.height + rules.voting_blocks;
        if body.effective_height <= voting_end_height {
            return Err(Rejection::invalid(
                "propose.effectiveHeight",
                &format!("must be after the vote ends at height {voting_end_height}"),
            )
            .into());
        }
        let proposer = public_key_base58(&opened.signer);
        self.consume_nonce(&opened)?;
        let id = self.next_seq(PROPOSAL_SEQ)?;
        self.post(
            block,
            (
                Account::Buyer(proposer.clone()),
                Account::Proposal(id.to_string()),
            ),
            deposit,
            &self.params()?.stake_denomination,
            format!("deposit proposal {id}"),
        )?;
        let record = ProposalRecord {
            id,
            proposer,
            changes: body
                .changes
                .iter()
                .map(|c| (c.name.clone(), c.value.clone()))
                .collect(),
            deposit,
            submitted_height: block.height,
            voting_end_height,
            effective_height: body.effective_height,
            status: ProposalStatus::Voting,
            outcome: String::new(),
        };
        self.put(PROPOSALS, &format!("{id:020}"), &record)?;
        self.proposal_view(&record)
    }

    pub(super) fn vote(&mut self, signed: &Signed, block: &Block) -> Result<ProposalView> {
        let opened: Opened<VoteBody> = open(signed, block.time)?;
        let voter = public_key_base58(&opened.signer);
        self.consume_nonce(&opened)?;
        let proposal = self.proposal(opened.body.proposal_id)?;
        if proposal.status != ProposalStatus::Voting || block.height > proposal.voting_end_height {
            return Err(Rejection::Precondition(format!(
                "proposal {}: its vote ended at height {}",
                proposal.id, proposal.voting_end_height
            ))
            .into());
        }
        if self.bonded(&voter)? == Amount::ZERO {
            return Err(Rejection::PermissionDenied(
                "vote: only bonded stake votes, and the signer has none bonded".into(),
            )
            .into());
        }
        self.put(
            VOTES,
            &format!("{:020}/{voter}", proposal.id),
            &opened.body.yes,
        )?;
        self.proposal_view(&proposal)
    }

    fn bonded(&self, who: &str) -> Result<Amount> {
        let denomination = self.params()?.stake_denomination;
        self.balance(&Account::Bond(who.to_string()), &denomination)
    }

    /// The tally of proposal `id` as bonds stand now.
    fn tally(&self, id: u64) -> Result<Tally> {
        let (mut yes, mut no) = (Amount::ZERO, Amount::ZERO);
        let prefix = format!("{id:020}/");
        for (key, said_yes) in self.scan::<bool>(VOTES, &prefix)? {
            let voter = &key[prefix.len()..];
            let power = self.bonded(voter)?;
            if said_yes {
                yes = yes.checked_add(power, "the yes votes")?;
            } else {
                no = no.checked_add(power, "the no votes")?;
            }
        }
        let suffix = format!("/{}", self.params()?.stake_denomination);
        let mut bonded = Amount::ZERO;
        for (key, balance) in self.scan::<i128>(BALANCES, "bond/")? {
            if key.ends_with(&suffix) {
                let balance = Amount::from_atto(balance.max(0).unsigned_abs());
                bonded = bonded.checked_add(balance, "the bonded stake")?;
            }
        }
        Ok(Tally { yes, no, bonded })
    }

    /// The governance upkeep of a block: proposals whose vote ended are tallied (the deposit
    /// goes back when the vote reached quorum), and passed proposals whose height came apply.
    pub(super) fn govern(&mut self, block: &Block) -> Result<()> {
        let rules = self.params()?;
        for (key, mut proposal) in self.scan::<ProposalRecord>(PROPOSALS, "")? {
            match proposal.status {
                ProposalStatus::Voting if block.height > proposal.voting_end_height => {
                    let (decision, refund) = decide(self.tally(proposal.id)?, &rules);
                    let account = Account::Proposal(proposal.id.to_string());
                    let to = if refund {
                        Account::Buyer(proposal.proposer.clone())
                    } else {
                        Account::External
                    };
                    let memo = if refund { "returned" } else { "kept" };
                    self.post(
                        block,
                        (account, to),
                        proposal.deposit,
                        &self.params()?.stake_denomination,
                        format!("deposit proposal {} {memo}", proposal.id),
                    )?;
                    (proposal.status, proposal.outcome) = match decision {
                        Ok(tally) => (ProposalStatus::Passed, tally),
                        Err(reason) => (ProposalStatus::Rejected, reason),
                    };
                    self.put(PROPOSALS, &key, &proposal)?;
                }
                ProposalStatus::Passed if block.height >= proposal.effective_height => {
                    let before = self.params()?;
                    let mut params = before.clone();
                    for (name, value) in &proposal.changes {
                        params = params.with_change(name, value)?;
                    }
                    self.put(PARAMS, "current", &params)?;
                    self.reindex_leases(&before, &params)?;
                    proposal.status = ProposalStatus::Applied;
                    self.put(PROPOSALS, &key, &proposal)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn proposal_view(&self, p: &ProposalRecord) -> Result<ProposalView> {
        let tally = self.tally(p.id)?;
        Ok(ProposalView {
            id: p.id,
            proposer: p.proposer.clone(),
            changes: p
                .changes
                .iter()
                .map(|(name, value)| ParamChange {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            deposit: p.deposit.to_string(),
            submitted_height: p.submitted_height,
            voting_end_height: p.voting_end_height,
            effective_height: p.effective_height,
            status: format!("{:?}", p.status).to_lowercase(),
            outcome: p.outcome.clone(),
            yes: tally.yes.to_string(),
            no: tally.no.to_string(),
        })
    }

    /// The parameters in force, the rules, the height, and every proposal.
    pub fn params_view(&self) -> Result<ParamsReply> {
        let proposals = self
            .scan::<ProposalRecord>(PROPOSALS, "")?
            .iter()
            .map(|(_, p)| self.proposal_view(p))
            .collect::<Result<Vec<_>>>()?;
        Ok(ParamsReply {
            params: self
                .params()?
                .listed()
                .into_iter()
                .map(|(name, value)| ParamChange { name, value })
                .collect(),
            height: self.height()?,
            proposals,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(yes: u128, no: u128, bonded: u128) -> Tally {
        Tally {
            yes: Amount::from_atto(yes),
            no: Amount::from_atto(no),
            bonded: Amount::from_atto(bonded),
        }
    }

    #[test]
    fn quorum_then_threshold_decide_and_only_quorum_returns_the_deposit() {
        let rules = Params {
            quorum_basis_points: 4_000,
            threshold_basis_points: 5_000,
            ..Params::default()
        };
        type Row = (u128, u128, u128, bool, bool);
        let table: [Row; 8] = [
            // yes, no, bonded → passes, deposit back
            (40, 0, 100, true, true),
            (39, 0, 100, false, false),
            (20, 20, 100, false, true),
            (21, 20, 100, true, true),
            (0, 100, 100, false, true),
            (0, 0, 0, false, false),
            (u128::MAX / 4, 0, u128::MAX / 4, true, true),
            (
                u128::MAX / 3,
                u128::MAX / 3,
                u128::MAX / 3 * 2 + 1,
                false,
                true,
            ),
        ];
        for (yes, no, bonded, passes, refund) in table {
            let (decision, back) = decide(tally(yes, no, bonded), &rules);
            assert_eq!(
                (decision.is_ok(), back),
                (passes, refund),
                "{yes}/{no} of {bonded}: {decision:?}"
            );
        }
        let (decision, _) = decide(tally(39, 0, 100), &rules);
        assert_eq!(
            decision.unwrap_err(),
            "no quorum: 3900 basis points of bonded stake voted, 4000 needed"
        );
    }
}

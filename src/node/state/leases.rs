//! Leases: the provider's stream and answers, end reports, lapses (the sweep).

use std::collections::BTreeSet;

use prost::Message;

use crate::identity::public_key_base58;
use crate::node::ledger::Account;
use crate::node::records::{LeaseEnd, LeaseRecord, LeaseState, OrderRecord, OrderState};
use crate::node::transitions::{self, Event, Step};
use crate::wire::envelope::{self, open};
use crate::wire::proto::{
    LeaseBody, LeaseDecisionBody, LeaseEndBody, LeaseEndReply, LeaseStreamBody, Signed,
};
use crate::wire::{Opened, Rejection, validate};

use super::params::Params;
use super::probe;
use super::{
    AWAITING, Block, LEASE_DUE, LEASES, OFFERS, ORDERS, PROVIDERS, Result, State, StateError, Table,
};

/// What a block's upkeep did that its driver tells others.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Swept {
    /// Leases whose provider did not answer in time.
    pub lapsed: Vec<String>,
    /// Leases made for standing orders, with their providers' keys.
    pub matched: Vec<(String, LeaseBody)>,
}

/// The state machine's step for `event` on `lease` and its order, or the refusal. An order
/// with a lease never closes as one without.
fn step(lease: &LeaseRecord, order: &OrderRecord, event: Event) -> Result<Step> {
    match transitions::next(order.state, Some(lease.state), event) {
        Ok(Step::Unmatched(_)) => Err(StateError::Inconsistent(format!(
            "order {} has lease {} but closed as unmatched",
            order.order_id, lease.lease_id
        ))),
        Ok(step) => Ok(step),
        Err(refused) => {
            Err(Rejection::Precondition(format!("lease {} {refused}", lease.lease_id)).into())
        }
    }
}

/// How a lease ended, as the buyer reads it: "Expired at its end; no fault", "Failed
/// (ImagePullFailed); the workload's fault".
fn end_sentence(phase: &str, reason: &str, fault: &str) -> String {
    let how = match (phase, reason) {
        ("Expired", "Expired") => "Expired at its end".to_string(),
        (phase, reason) if reason.is_empty() || reason == phase => phase.to_string(),
        (phase, reason) => format!("{phase} ({reason})"),
    };
    let whose = match fault {
        "none" => "no fault",
        "tenant" => "the workload's fault",
        "provider" => "the provider's fault",
        "network" => "the network's fault",
        other => other,
    };
    format!("{how}; {whose}")
}

impl State {
    pub(super) fn owned_lease(&self, lease_id: &str, provider: &str) -> Result<LeaseRecord> {
        let lease: LeaseRecord = self
            .get(LEASES, lease_id)?
            .ok_or_else(|| Rejection::NotFound(format!("lease {lease_id} does not exist")))?;
        if lease.provider != provider {
            return Err(Rejection::PermissionDenied(format!(
                "lease {lease_id} belongs to another provider"
            ))
            .into());
        }
        Ok(lease)
    }

    /// The order a lease was made for.
    pub(super) fn order_of(&self, lease: &LeaseRecord) -> Result<OrderRecord> {
        self.get(ORDERS, &lease.order_id)?.ok_or_else(|| {
            StateError::Inconsistent(format!("lease {} has no order", lease.lease_id))
        })
    }

    /// Opens a provider's lease stream; who it is.
    pub(super) fn open_lease_stream(&mut self, signed: &Signed, block: &Block) -> Result<String> {
        let opened: Opened<LeaseStreamBody> = open(signed, block.time)?;
        let provider = public_key_base58(&opened.signer);
        self.consume_nonce(&opened)?;
        self.registered(&provider)?;
        Ok(provider)
    }

    /// Every lease of `provider` still waiting for its answer, in lease id order.
    pub(super) fn waiting_for(&self, provider: &str) -> Result<Vec<LeaseBody>> {
        let prefix = format!("{}{provider}/", AWAITING.0);
        let lease_ids: Vec<String> = self
            .kv
            .scan(&prefix)
            .map(|(id, _)| id.to_string())
            .collect();
        lease_ids
            .iter()
            .map(|lease_id| {
                let lease: LeaseRecord = self.get(LEASES, lease_id)?.ok_or_else(|| {
                    StateError::Inconsistent(format!("lease {lease_id} awaits but does not exist"))
                })?;
                Ok(LeaseBody::decode(lease.body.as_slice())?)
            })
            .collect()
    }

    pub(super) fn decide_lease(&mut self, signed: &Signed, block: &Block) -> Result<()> {
        let opened: Opened<LeaseDecisionBody> = open(signed, block.time)?;
        let body = &opened.body;
        validate::object_id("decision.leaseId", &body.lease_id)?;
        validate::reason("decision.reason", &body.reason)?;
        if !body.accept && body.reason.is_empty() {
            return Err(Rejection::invalid("decision.reason", "is required when rejecting").into());
        }
        let provider = public_key_base58(&opened.signer);
        self.consume_nonce(&opened)?;
        let mut lease = self.owned_lease(&body.lease_id, &provider)?;
        let mut order = self.order_of(&lease)?;
        let event = if body.accept {
            Event::Accept
        } else {
            Event::Reject
        };
        match step(&lease, &order, event)? {
            Step::Again | Step::Unmatched(_) => Ok(()),
            Step::Moves {
                order: order_state,
                lease: lease_state,
                refund_hold: true,
            } => self
                .refund_and_close(
                    block,
                    &mut lease,
                    order,
                    (order_state, lease_state),
                    format!("the provider rejected the lease: {}", body.reason),
                )
                .map(drop),
            Step::Moves {
                order: order_state,
                lease: lease_state,
                refund_hold: false,
            } => {
                lease.state = lease_state;
                lease.accepted_at = Some(block.time);
                let challenge = Self::fresh_challenge(block, &lease.lease_id);
                let rules = self.params()?.probe_rules();
                lease.probe = Some(probe::issue(&rules, &lease, challenge.nonce.clone(), block));
                lease.challenge = Some(challenge);
                self.put_lease(&lease)?;
                order.state = order_state;
                order.updated_at = block.time;
                self.put(ORDERS, &lease.order_id, &order)
            }
        }
    }

    pub(super) fn report_end(&mut self, signed: &Signed, block: &Block) -> Result<LeaseEndReply> {
        let opened: Opened<LeaseEndBody> = open(signed, block.time)?;
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
        self.consume_nonce(&opened)?;
        let mut lease = self.owned_lease(&body.lease_id, &provider)?;
        let mut order = self.order_of(&lease)?;
        let (order_state, lease_state) = match step(&lease, &order, Event::End)? {
            // A retried report gets the first one's answer.
            Step::Again => {
                let end = lease.end.as_ref().ok_or_else(|| {
                    StateError::Inconsistent(format!(
                        "lease {} ended without an end",
                        lease.lease_id
                    ))
                })?;
                return Ok(LeaseEndReply {
                    charged: end.charged.to_string(),
                    refunded: end.refunded.to_string(),
                });
            }
            Step::Moves { order, lease, .. } => (order, lease),
            Step::Unmatched(_) => return Err(StateError::Inconsistent("unmatched end".into())),
        };
        // The provider was paid per accepted receipt; the end returns the rest to the buyer.
        let charge = lease.charged;
        let refund = order
            .held
            .checked_sub(charge, "the refund (hold less what was charged)")?;
        let end = LeaseEnd {
            phase: body.phase.clone(),
            reason: body.reason.clone(),
            fault: body.fault.clone(),
            started_at: body.started_at,
            ended_at: body.ended_at,
            gpu_seconds: body
                .gpu_seconds
                .min(u64::from(lease.gpus).saturating_mul(lease.duration_seconds)),
            charged: charge,
            refunded: refund,
        };
        self.settle_end(
            block,
            &mut lease,
            &mut order,
            end,
            (order_state, lease_state),
        )?;
        // The provider's own signed report that the lease ended by its fault is the evidence.
        if body.fault == "provider" {
            let evidence = format!(
                "the provider reported the end ({}, {}) as its fault",
                body.phase, body.reason
            );
            self.slash(block, &lease, "provider-fault", evidence)?;
        }
        Ok(LeaseEndReply {
            charged: charge.to_string(),
            refunded: refund.to_string(),
        })
    }

    /// Closes an accepted lease with `end`: what was not charged goes back to the buyer, the
    /// GPUs to the offer, and both records take the end's states.
    pub(super) fn settle_end(
        &mut self,
        block: &Block,
        lease: &mut LeaseRecord,
        order: &mut OrderRecord,
        end: LeaseEnd,
        (order_state, lease_state): (OrderState, LeaseState),
    ) -> Result<()> {
        self.post(
            block,
            (
                Account::Escrow(order.order_id.clone()),
                Account::Buyer(order.buyer.clone()),
            ),
            end.refunded,
            &order.denomination,
            format!("refund {}", order.order_id),
        )?;
        self.release_capacity(lease)?;
        let mut provider = self.registered(&lease.provider)?;
        if end.fault == "provider" {
            provider.provider_fault_ends += 1;
        } else {
            provider.completed_leases += 1;
        }
        self.put(PROVIDERS, &lease.provider, &provider)?;
        order.state = order_state;
        order.reason = end_sentence(&end.phase, &end.reason, &end.fault);
        order.charged = end.charged;
        order.refunded = end.refunded;
        order.updated_at = block.time;
        lease.state = lease_state;
        lease.end = Some(end);
        self.put_lease(lease)?;
        self.put(ORDERS, &order.order_id, order)
    }

    /// The upkeep every block begins with: leases not answered in time lapse (the buyer is
    /// refunded), accepted leases that never started or left their probe's checks unanswered
    /// end and their provider is slashed, running leases due a re-probe get one and those whose
    /// re-probe lapsed end,
    /// unbonding stake due is paid back, proposals are tallied and applied, standing orders are
    /// matched or closed at their deadline, expired offers and those of silent providers are dropped, answered challenges
    /// that are due are renewed, nonces past the freshness window are forgotten.
    pub fn sweep(&mut self, block: &Block) -> Result<Swept> {
        let now = block.time;
        let params = self.params()?;
        let mut lapsed = Vec::new();
        for lease_id in self.leases_due(now) {
            let mut lease: LeaseRecord = self.get(LEASES, &lease_id)?.ok_or_else(|| {
                StateError::Inconsistent(format!("lease {lease_id} is due but does not exist"))
            })?;
            match upkeep(&lease, &params, now) {
                None => {}
                Some(Upkeep::NeverStarted) => self.end_never_started(block, lease)?,
                Some(Upkeep::ProbeUnanswered) => {
                    self.fail_unanswered(block, lease, params.probe_answer_seconds)?
                }
                Some(Upkeep::ReprobeLapsed(why)) => self.end_unproven(block, lease, why)?,
                Some(Upkeep::Reprobe) => {
                    lease.reprobe = Some(probe::issue_reprobe(&params, &lease, block));
                    self.put_lease(&lease)?;
                }
                Some(Upkeep::Lapse) => {
                    let order = self.order_of(&lease)?;
                    let Step::Moves {
                        order: order_state,
                        lease: lease_state,
                        ..
                    } = step(&lease, &order, Event::Lapse)?
                    else {
                        continue;
                    };
                    let reason = format!(
                        "the provider did not answer by {}; the hold was refunded",
                        lease.answer_by
                    );
                    self.refund_and_close(
                        block,
                        &mut lease,
                        order,
                        (order_state, lease_state),
                        reason,
                    )?;
                    lapsed.push(lease.lease_id);
                }
                Some(Upkeep::RenewChallenge) => {
                    lease.challenge = Some(Self::fresh_challenge(block, &lease.lease_id));
                    self.put_lease(&lease)?;
                }
            }
        }
        let live: BTreeSet<String> = self
            .live_offers(now)?
            .into_iter()
            .map(|(offer, _)| offer.offer_id.clone())
            .collect();
        self.release_unbonded(block)?;
        self.govern(block)?;
        let matched = self.match_waiting(block)?;
        for offer_id in self.keys(OFFERS).iter().filter(|id| !live.contains(*id)) {
            self.delete(OFFERS, offer_id);
        }
        self.forget_nonces_before(now - 2 * envelope::FRESHNESS_SECONDS);
        Ok(Swept { lapsed, matched })
    }

    /// The leases the upkeep has something to do for at `now`, in lease id order (the order it
    /// has always taken them in): read from [`LEASE_DUE`], so a block's upkeep costs what is
    /// due, not every lease the network ever made.
    fn leases_due(&self, now: i64) -> Vec<String> {
        let mut due: Vec<String> = self
            .kv
            .scan(LEASE_DUE.0)
            .map_while(|(key, _)| {
                let (at, lease_id) = key.split_once('/')?;
                (at.parse::<i64>().ok()? <= now).then(|| lease_id.to_string())
            })
            .collect();
        due.sort_unstable();
        due
    }

    /// Writes `lease` and keeps its indexes: when the upkeep is next due to look at it
    /// ([`due_at`]), and whether it waits for its provider's answer. Every write of a lease
    /// goes through here.
    pub(super) fn put_lease(&mut self, lease: &LeaseRecord) -> Result<()> {
        let params = self.params()?;
        if let Some(old) = self.get::<LeaseRecord>(LEASES, &lease.lease_id)? {
            for (table, key) in lease_index_keys(&old, &params) {
                self.delete(table, &key);
            }
        }
        self.put(LEASES, &lease.lease_id, lease)?;
        for (table, key) in lease_index_keys(lease, &params) {
            self.put(table, &key, &())?;
        }
        Ok(())
    }

    /// Moves every lease's due time from what `before` made it to what `after` does: a
    /// governance change of the deadlines applies to the leases already running.
    pub(super) fn reindex_leases(&mut self, before: &Params, after: &Params) -> Result<()> {
        for lease in self.all::<LeaseRecord>(LEASES)? {
            let (old, new) = (due_key(&lease, before), due_key(&lease, after));
            if old != new {
                if let Some(key) = old {
                    self.delete(LEASE_DUE, &key);
                }
                if let Some(key) = new {
                    self.put(LEASE_DUE, &key, &())?;
                }
            }
        }
        Ok(())
    }

    /// Where the lease indexes differ from what the leases imply: the keys missing, and those
    /// no lease implies (the audit's check).
    pub(super) fn lease_index_differences(&self) -> Result<(Vec<String>, Vec<String>)> {
        let params = self.params()?;
        let implied: BTreeSet<String> = self
            .all::<LeaseRecord>(LEASES)?
            .iter()
            .flat_map(|lease| lease_index_keys(lease, &params))
            .map(|(table, key)| format!("{}{key}", table.0))
            .collect();
        let present: BTreeSet<String> = [LEASE_DUE, AWAITING]
            .iter()
            .flat_map(|table| {
                self.keys(*table)
                    .into_iter()
                    .map(|k| format!("{}{k}", table.0))
            })
            .collect();
        Ok((
            implied.difference(&present).cloned().collect(),
            present.difference(&implied).cloned().collect(),
        ))
    }

    /// Every lease, for tests and the crash check.
    pub fn leases(&self) -> Result<Vec<LeaseRecord>> {
        self.all(LEASES)
    }

    /// One lease, as committed.
    pub fn lease(&self, lease_id: &str) -> Result<Option<LeaseRecord>> {
        self.get(LEASES, lease_id)
    }
}

/// What the block upkeep does for one lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Upkeep {
    /// Accepted, no receipt by the start deadline: it ends and its provider is slashed.
    NeverStarted,
    /// Its probe was committed and the checks were not answered in time: the probe fails.
    ProbeUnanswered,
    /// Its re-probe was not committed or answered in time: it ends, no one at fault.
    ReprobeLapsed(String),
    /// It is due a re-probe.
    Reprobe,
    /// Its provider did not answer in time: the buyer is refunded.
    Lapse,
    /// Its answered challenge is due a fresh one.
    RenewChallenge,
}

/// What the upkeep does for `lease` at `now` under `params`: the first of its rules that
/// applies, in this order, or nothing. Each rule applies from a moment on ([`due_at`]).
pub(super) fn upkeep(lease: &LeaseRecord, params: &Params, now: i64) -> Option<Upkeep> {
    let reached = |at: Option<i64>| at.is_some_and(|at| at <= now);
    if reached(State::start_deadline(lease, params.start_deadline_seconds)) {
        Some(Upkeep::NeverStarted)
    } else if reached(probe::unanswered_at(lease, params.probe_answer_seconds)) {
        Some(Upkeep::ProbeUnanswered)
    } else if let Some(why) = probe::reprobe_lapsed(lease, params.probe_answer_seconds, now) {
        Some(Upkeep::ReprobeLapsed(why))
    } else if reached(probe::reprobe_due_at(lease, params.reprobe_seconds)) {
        Some(Upkeep::Reprobe)
    } else if reached(transitions::lapses_at(lease.state, lease.answer_by)) {
        Some(Upkeep::Lapse)
    } else if reached(challenge_renewal_at(lease, params.challenge_seconds)) {
        Some(Upkeep::RenewChallenge)
    } else {
        None
    }
}

/// When the upkeep is next due to look at `lease` under `params`: the earliest of the moments
/// one of its rules applies from (each stays true until the lease changes); `None` when no
/// rule can apply before the lease changes.
pub(super) fn due_at(lease: &LeaseRecord, params: &Params) -> Option<i64> {
    [
        State::start_deadline(lease, params.start_deadline_seconds),
        probe::unanswered_at(lease, params.probe_answer_seconds),
        probe::reprobe_lapses_at(lease, params.probe_answer_seconds),
        probe::reprobe_due_at(lease, params.reprobe_seconds),
        transitions::lapses_at(lease.state, lease.answer_by),
        challenge_renewal_at(lease, params.challenge_seconds),
    ]
    .into_iter()
    .flatten()
    .min()
}

/// When a running lease's answered challenge is renewed: `challenge_seconds` after its issue.
fn challenge_renewal_at(lease: &LeaseRecord, challenge_seconds: u32) -> Option<i64> {
    let challenge = lease
        .challenge
        .as_ref()
        .filter(|c| transitions::meters(lease.state) && c.answered)?;
    Some(challenge.issued_at + i64::from(challenge_seconds))
}

/// The lease's key in [`LEASE_DUE`]: its due time, 20 digits (block times are after the
/// epoch), and its id.
fn due_key(lease: &LeaseRecord, params: &Params) -> Option<String> {
    due_at(lease, params).map(|at| format!("{:020}/{}", at.max(0), lease.lease_id))
}

/// The index entries `lease` has under `params`.
fn lease_index_keys(lease: &LeaseRecord, params: &Params) -> Vec<(Table, String)> {
    let due = due_key(lease, params).map(|key| (LEASE_DUE, key));
    let awaiting = transitions::awaits_answer(lease.state)
        .then(|| (AWAITING, format!("{}/{}", lease.provider, lease.lease_id)));
    due.into_iter().chain(awaiting).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metering::chain::ChainHead;
    use crate::node::records::{ChallengeRecord, ProbeRecord};

    #[test]
    fn a_lease_end_reads_as_a_sentence() {
        assert_eq!(
            end_sentence("Expired", "Expired", "none"),
            "Expired at its end; no fault"
        );
        assert_eq!(
            end_sentence("Failed", "ImagePullFailed", "tenant"),
            "Failed (ImagePullFailed); the workload's fault"
        );
        assert_eq!(
            end_sentence("Failed", "BoxRejected", "provider"),
            "Failed (BoxRejected); the provider's fault"
        );
        assert_eq!(end_sentence("Succeeded", "", "none"), "Succeeded; no fault");
    }

    fn lease(state: LeaseState) -> LeaseRecord {
        LeaseRecord {
            lease_id: "lease-a".into(),
            gpus: 2,
            state,
            matched_at: 900,
            answer_by: 1_000,
            ..LeaseRecord::default()
        }
    }

    fn probe(issued_at: i64, committed_at: Option<i64>, passed_at: Option<i64>) -> ProbeRecord {
        ProbeRecord {
            model: "NVIDIA-H100-80GB-HBM3".into(),
            nonce: vec![7; 32],
            size: 16,
            tiles: 1,
            rounds: 4,
            rows: 2,
            issued_at,
            roots: Vec::new(),
            kernel_ms: 0,
            committed_at,
            checks: None,
            answered: vec![false; 2],
            passed_at,
            failed_at: None,
            detail: String::new(),
            reprobe: 1,
        }
    }

    /// An accepted lease at 1,000 that started (a receipt) and whose first probe passed at 1,100.
    fn running() -> LeaseRecord {
        LeaseRecord {
            accepted_at: Some(1_000),
            chain: ChainHead {
                sequence: 3,
                ..ChainHead::default()
            },
            probe: Some(probe(1_000, Some(1_050), Some(1_100))),
            probe_proven_at: Some(1_100),
            ..lease(LeaseState::Accepted)
        }
    }

    /// Each rule, on a lease it applies to: `due_at` is the first second the upkeep acts, and
    /// it does nothing a second before; a lease no rule can reach is never due.
    #[test]
    fn a_lease_is_due_exactly_when_the_upkeep_first_acts_on_it() {
        let params = Params {
            start_deadline_seconds: 300,
            probe_answer_seconds: 120,
            reprobe_seconds: 3_600,
            challenge_seconds: 600,
            ..Params::default()
        };
        let unstarted = LeaseRecord {
            chain: ChainHead::default(),
            probe: Some(probe(1_000, None, None)),
            probe_proven_at: None,
            ..running()
        };
        let uncommitted_reprobe = LeaseRecord {
            reprobed: true,
            reprobe: Some(probe(4_700, None, None)),
            ..running()
        };
        let cases = [
            (
                "offered, not answered",
                lease(LeaseState::Offered),
                1_001,
                Upkeep::Lapse,
            ),
            (
                "accepted, no receipt",
                unstarted,
                1_300,
                Upkeep::NeverStarted,
            ),
            (
                "probe committed, not answered",
                LeaseRecord {
                    probe: Some(probe(1_000, Some(1_050), None)),
                    probe_proven_at: None,
                    ..running()
                },
                1_170,
                Upkeep::ProbeUnanswered,
            ),
            (
                "re-probed offer, last pass at 1,100",
                LeaseRecord {
                    reprobed: true,
                    ..running()
                },
                4_700,
                Upkeep::Reprobe,
            ),
            (
                "re-probe issued, not committed",
                uncommitted_reprobe.clone(),
                4_820,
                Upkeep::ReprobeLapsed(
                    "re-probe 1 issued at 4700 was not committed within 120 s".into(),
                ),
            ),
            (
                "re-probe committed, not answered",
                LeaseRecord {
                    reprobe: Some(probe(4_700, Some(4_750), None)),
                    ..uncommitted_reprobe
                },
                4_870,
                Upkeep::ReprobeLapsed(
                    "re-probe 1's checks were not answered within 120 s of its commitment at 4750"
                        .into(),
                ),
            ),
            (
                "challenge answered",
                LeaseRecord {
                    challenge: Some(ChallengeRecord {
                        nonce: vec![1; 32],
                        issued_at: 1_500,
                        answered: true,
                    }),
                    ..running()
                },
                2_100,
                Upkeep::RenewChallenge,
            ),
        ];
        for (case, lease, due, upkeep_then) in cases {
            assert_eq!(due_at(&lease, &params), Some(due), "{case}");
            assert_eq!(upkeep(&lease, &params, due - 1), None, "{case}");
            assert_eq!(upkeep(&lease, &params, due), Some(upkeep_then), "{case}");
        }
        let never = [
            ("running, unchallenged, not re-probed", running()),
            (
                "running, challenge unanswered",
                LeaseRecord {
                    challenge: Some(ChallengeRecord {
                        nonce: vec![1; 32],
                        issued_at: 1_500,
                        answered: false,
                    }),
                    ..running()
                },
            ),
            ("ended", lease(LeaseState::Ended)),
            ("lapsed", lease(LeaseState::Lapsed)),
        ];
        for (case, lease) in never {
            assert_eq!(due_at(&lease, &params), None, "{case}");
            assert_eq!(upkeep(&lease, &params, i64::MAX / 2), None, "{case}");
        }
        // Governance moving a deadline moves the due time with it.
        let longer = Params {
            start_deadline_seconds: 600,
            ..params.clone()
        };
        let unstarted = LeaseRecord {
            chain: ChainHead::default(),
            ..running()
        };
        assert_eq!(due_at(&unstarted, &params), Some(1_300));
        assert_eq!(due_at(&unstarted, &longer), Some(1_600));
    }
}

//! Leases: the provider's stream and answers, end reports, lapses (the sweep).

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

use super::probe;
use super::{Block, LEASES, NONCES, OFFERS, ORDERS, PROVIDERS, Result, State, StateError};

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

    /// Every lease of `provider` still waiting for its answer.
    pub(super) fn waiting_for(&self, provider: &str) -> Result<Vec<LeaseBody>> {
        let mut waiting = Vec::new();
        for lease in self.all::<LeaseRecord>(LEASES)? {
            if lease.provider == provider && transitions::awaits_answer(lease.state) {
                waiting.push(LeaseBody::decode(lease.body.as_slice())?);
            }
        }
        Ok(waiting)
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
                self.put(LEASES, &body.lease_id, &lease)?;
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
        self.put(LEASES, &lease.lease_id, lease)?;
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
        let challenge_seconds = i64::from(params.challenge_seconds);
        let mut lapsed = Vec::new();
        for mut lease in self.all::<LeaseRecord>(LEASES)? {
            if Self::never_started(&lease, params.start_deadline_seconds, now) {
                self.end_never_started(block, lease)?;
            } else if probe::unanswered(&lease, params.probe_answer_seconds, now) {
                self.fail_unanswered(block, lease, params.probe_answer_seconds)?;
            } else if let Some(why) =
                probe::reprobe_lapsed(&lease, params.probe_answer_seconds, now)
            {
                self.end_unproven(block, lease, why)?;
            } else if probe::reprobe_due(&lease, params.reprobe_seconds, now) {
                lease.reprobe = Some(probe::issue_reprobe(&params, &lease, block));
                self.put(LEASES, &lease.lease_id, &lease)?;
            } else if transitions::lapses(lease.state, lease.answer_by, now) {
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
            } else if transitions::meters(lease.state)
                && lease
                    .challenge
                    .as_ref()
                    .is_some_and(|c| c.answered && now - c.issued_at >= challenge_seconds)
            {
                lease.challenge = Some(Self::fresh_challenge(block, &lease.lease_id));
                self.put(LEASES, &lease.lease_id, &lease)?;
            }
        }
        let live: std::collections::BTreeSet<String> = self
            .live_offers(now)?
            .into_iter()
            .map(|(offer, _)| offer.offer_id)
            .collect();
        self.release_unbonded(block)?;
        self.govern(block)?;
        let matched = self.match_waiting(block)?;
        for offer_id in self.keys(OFFERS).iter().filter(|id| !live.contains(*id)) {
            self.delete(OFFERS, offer_id);
        }
        let horizon = now - 2 * envelope::FRESHNESS_SECONDS;
        let stale: Vec<String> = self
            .scan::<i64>(NONCES, "")?
            .into_iter()
            .filter(|(_, issued_at)| *issued_at < horizon)
            .map(|(key, _)| key)
            .collect();
        for key in &stale {
            self.delete(NONCES, key);
        }
        Ok(Swept { lapsed, matched })
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

#[cfg(test)]
mod tests {
    use super::end_sentence;

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
}

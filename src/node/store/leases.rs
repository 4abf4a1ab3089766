//! Leases: the provider's stream and answers, end reports, lapses (the sweep).

use prost::Message;
use redb::WriteTransaction;

use crate::identity::public_key_base58;
use crate::node::ledger::Account;
use crate::node::records::{LeaseEnd, LeaseRecord, OrderRecord};
use crate::node::transitions::{self, Event, Step};
use crate::wire::envelope::{self, open};
use crate::wire::proto::{LeaseDecisionBody, LeaseEndBody, LeaseEndReply, LeaseStreamBody, Signed};
use crate::wire::{Opened, Rejection, validate};

use super::accounts::post;
use super::metering::fresh_challenge;
use super::offers::release_capacity;
use super::orders::refund_and_close;
use super::{
    HubError, LEASES, NONCES, OFFERS, ORDERS, PROVIDERS, Result, Store, all_json, consume_nonce,
    get, put,
};

pub(super) fn owned_lease(
    txn: &WriteTransaction,
    lease_id: &str,
    provider: &str,
) -> Result<LeaseRecord> {
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

/// The order a lease was made for.
pub(super) fn order_of(txn: &WriteTransaction, lease: &LeaseRecord) -> Result<OrderRecord> {
    get(txn, ORDERS, &lease.order_id)?
        .ok_or_else(|| HubError::Inconsistent(format!("lease {} has no order", lease.lease_id)))
}

/// The state machine's step for `event` on `lease` and its order, or the refusal.
fn step(lease: &LeaseRecord, order: &OrderRecord, event: Event) -> Result<Step> {
    transitions::next(order.state, Some(lease.state), event).map_err(|refused| {
        Rejection::Precondition(format!("lease {} {refused}", lease.lease_id)).into()
    })
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

impl Store {
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
                .filter(|l| l.provider == provider && transitions::awaits_answer(l.state))
                .collect::<Vec<_>>())
        })?;
        let signed = waiting
            .iter()
            .map(|l| Signed::decode(l.signed.as_slice()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok((provider, signed))
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
            let mut order = order_of(txn, &lease)?;
            let event = if body.accept {
                Event::Accept
            } else {
                Event::Reject
            };
            match step(&lease, &order, event)? {
                Step::Again => Ok(()),
                Step::Moves {
                    order: order_state,
                    lease: lease_state,
                    refund_hold: true,
                } => refund_and_close(
                    txn,
                    now,
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
                    lease.accepted_at = Some(now);
                    lease.challenge = Some(fresh_challenge(now));
                    put(txn, LEASES, &body.lease_id, &lease)?;
                    order.state = order_state;
                    order.updated_at = now;
                    put(txn, ORDERS, &lease.order_id, &order)
                }
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
            let mut order = order_of(txn, &lease)?;
            let (order_state, lease_state) = match step(&lease, &order, Event::End)? {
                // A retried report gets the first one's answer.
                Step::Again => {
                    let end = lease.end.as_ref().ok_or_else(|| {
                        HubError::Inconsistent(format!(
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
            };
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
            lease.state = lease_state;
            lease.end = Some(end);
            put(txn, LEASES, &body.lease_id, &lease)?;
            order.state = order_state;
            order.reason = end_sentence(&body.phase, &body.reason, &body.fault);
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

    /// Periodic upkeep: leases not answered in time lapse (the buyer is refunded), expired offers
    /// and those of silent providers are dropped, nonces past the freshness window are forgotten.
    /// Returns the lapsed lease ids.
    pub fn sweep(&self, now: i64) -> Result<Vec<String>> {
        self.write(|txn| {
            let leases: Vec<LeaseRecord> = all_json(&txn.open_table(LEASES)?)?;
            let mut lapsed = Vec::new();
            for mut lease in leases
                .into_iter()
                .filter(|l| transitions::lapses(l.state, l.answer_by, now))
            {
                let order = order_of(txn, &lease)?;
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
                refund_and_close(
                    txn,
                    now,
                    &mut lease,
                    order,
                    (order_state, lease_state),
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
                transitions::meters(l.state)
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

    /// Every lease, for tests and the crash check.
    pub fn leases(&self) -> Result<Vec<LeaseRecord>> {
        let txn = self.read()?;
        all_json(&txn.open_table(LEASES)?)
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

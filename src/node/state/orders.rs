//! Orders: submission and matching, cancellation, the buyer's queries.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::attestation::TrustTier;
use crate::identity::public_key_base58;
use crate::node::ledger::{self, Account};
use crate::node::matching::{self, OrderTerms};
use crate::node::records::{LeaseRecord, LeaseState, OrderRecord, OrderState, ProviderRecord};
use crate::node::transitions::{self, Event, Step};
use crate::wire::amount::Amount;
use crate::wire::envelope::open;
use crate::wire::proto::{CancelBody, LeaseBody, OrderBody, OrderView, QueryBody, Signed};
use crate::wire::{Opened, Rejection, validate};

use super::{
    BUYER_ORDERS, Block, LEASES, OFFERS, ORDER_SEQ, ORDERS, PROVIDERS, Placed, Result, State,
    StateError, WAITING,
};

/// The longest a standing order waits for an offer.
const MAX_WAIT: i64 = 7 * 24 * 3600;

/// A standing order, as the upkeep matches it: its signed bytes, kept to make its lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct WaitingOrder {
    order_id: String,
    wait_until: i64,
    /// The signed order, protobuf, hex.
    signed: String,
    /// Why no offer fitted when it was submitted.
    unmatched: String,
}

/// The image an order's workload runs.
fn image_of(body: &OrderBody) -> String {
    body.workload
        .as_ref()
        .map(|w| w.image.clone())
        .unwrap_or_default()
}

/// The least trust tier an order asks of its provider.
fn min_trust_tier(body: &OrderBody) -> Result<TrustTier> {
    TrustTier::parse(&body.min_trust_tier).ok_or_else(|| {
        Rejection::invalid(
            "order.minTrustTier",
            "must be empty, \"self-reported\" or \"hardware-attested\"",
        )
        .into()
    })
}

impl State {
    /// Returns a lease's whole hold to its buyer and closes the order and the lease with the
    /// states of the step that closed them, and `reason`.
    pub(super) fn refund_and_close(
        &mut self,
        block: &Block,
        lease: &mut LeaseRecord,
        mut order: OrderRecord,
        (order_state, lease_state): (OrderState, LeaseState),
        reason: String,
    ) -> Result<OrderRecord> {
        let held = order.held;
        self.post(
            block,
            (
                Account::Escrow(order.order_id.clone()),
                Account::Buyer(order.buyer.clone()),
            ),
            held,
            &order.denomination,
            format!("refund {}", order.order_id),
        )?;
        self.release_capacity(lease)?;
        lease.state = lease_state;
        self.put_lease(lease)?;
        order.state = order_state;
        order.reason = reason;
        order.refunded = held;
        order.updated_at = block.time;
        self.put(ORDERS, &order.order_id, &order)?;
        Ok(order)
    }

    pub(super) fn submit_order(&mut self, signed: &Signed, block: &Block) -> Result<Placed> {
        let now = block.time;
        let opened: Opened<OrderBody> = open(signed, now)?;
        let checked = validate::order(&opened.body)?;
        let body = &opened.body;
        min_trust_tier(body)?;
        if body.wait_until != 0 && !(now < body.wait_until && body.wait_until <= now + MAX_WAIT) {
            return Err(Rejection::invalid(
                "order.waitUntil",
                &format!("must be 0, or later than now ({now}) and at most 7 days ahead"),
            )
            .into());
        }
        let buyer = public_key_base58(&opened.signer);
        let order_id = hex::encode(&Sha256::digest(&signed.body)[..16]);
        self.consume_nonce(&opened)?;
        let mut order = OrderRecord {
            order_id: order_id.clone(),
            buyer: buyer.clone(),
            gpus: body.gpus,
            resource_name: validate::ordered_resource(body).to_string(),
            model: body.model.clone(),
            duration_seconds: body.duration_seconds,
            max_price: checked.max_price,
            denomination: body.denomination.clone(),
            image: image_of(body),
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
            sequence: self.next_seq(ORDER_SEQ)?,
        };
        let lease = self.place(&mut order, body, checked, signed, block)?;
        if lease.is_none() && body.wait_until != 0 {
            let waiting = WaitingOrder {
                order_id: order_id.clone(),
                wait_until: body.wait_until,
                signed: hex::encode(prost::Message::encode_to_vec(signed)),
                unmatched: order.reason.clone(),
            };
            order.state = OrderState::Waiting;
            order.reason = format!(
                "waiting for an offer until {}: {}",
                body.wait_until, waiting.unmatched
            );
            self.put(WAITING, &format!("{:020}", order.sequence), &waiting)?;
        }
        self.put(ORDERS, &order_id, &order)?;
        self.put(BUYER_ORDERS, &format!("{buyer}/{order_id}"), &now)?;
        Ok(Placed {
            order: order.to_view(),
            lease,
        })
    }

    /// Matches `order` against the live book and, when an offer fits, holds the escrow, takes
    /// the GPUs and makes the lease; otherwise says why in the order's reason.
    fn place(
        &mut self,
        order: &mut OrderRecord,
        body: &OrderBody,
        checked: validate::CheckedOrder,
        signed: &Signed,
        block: &Block,
    ) -> Result<Option<(String, LeaseBody)>> {
        let now = block.time;
        let terms = OrderTerms {
            gpus: body.gpus,
            resource: order.resource_name.clone(),
            model: body.model.clone(),
            duration_seconds: body.duration_seconds,
            max_price: checked.max_price,
            denomination: body.denomination.clone(),
            region: body.region.clone(),
            attributes: checked.attributes,
            image: order.image.clone(),
            provider: body.provider.clone(),
            min_uptime_basis_points: body.min_uptime_basis_points,
            min_trust_tier: min_trust_tier(body)?,
        };
        // Each offer as matching sees it: with its provider's uptime and trust tier, and the
        // GPUs its provider's bond still covers.
        let params = self.params()?;
        let mut offers = Vec::new();
        let mut book = Vec::new();
        for (offer, provider) in self.live_offers(now)? {
            let covers = self.uncommitted_cover(&provider.key, &params)?;
            book.push(offer.to_book(covers, self.uptime_of(&provider, now)?, &provider));
            offers.push(offer);
        }
        let found = match matching::best_offer(&terms, &book) {
            Err(no_match) => {
                order.reason = no_match.to_string();
                return Ok(None);
            }
            Ok(found) => found,
        };
        let order_id = order.order_id.clone();
        let mut offer = (*offers[found.offer]).clone();
        let price = offer.price;
        let hold = ledger::hold_amount(price, body.gpus, body.duration_seconds)
            .map_err(|e| Rejection::invalid("order", &e.to_string()))?;
        self.post(
            block,
            (
                Account::Buyer(order.buyer.clone()),
                Account::Escrow(order_id.clone()),
            ),
            hold,
            &body.denomination,
            format!("hold {order_id}"),
        )?;
        offer.free_blocks[found.block] -= body.gpus;
        self.put(OFFERS, &offer.offer_id, &offer)?;
        self.commit_gpus(&offer.provider, body.gpus, true)?;
        let lease_id = hex::encode(&Sha256::digest(format!("lease\0{order_id}"))[..12]);
        let provider_key = crate::identity::public_key_from_base58(&offer.provider)
            .map_err(|e| StateError::Inconsistent(format!("stored provider key: {e}")))?;
        let lease_body = LeaseBody {
            lease_id: lease_id.clone(),
            provider: provider_key.as_bytes().to_vec(),
            offer_name: offer.offer_name.clone(),
            order: Some(signed.clone()),
            gpus: body.gpus,
            price_per_gpu_hour: price.to_string(),
            denomination: body.denomination.clone(),
            duration_seconds: body.duration_seconds,
            matched_at: now,
            answer_by: now + i64::from(params.answer_seconds),
        };
        let record = LeaseRecord {
            lease_id: lease_id.clone(),
            order_id,
            buyer: order.buyer.clone(),
            provider: offer.provider.clone(),
            offer_id: offer.offer_id.clone(),
            offer_seq: offer.published_seq,
            block: found.block,
            model: offer.model.clone(),
            gpus: body.gpus,
            price,
            denomination: body.denomination.clone(),
            duration_seconds: body.duration_seconds,
            state: LeaseState::Offered,
            body: prost::Message::encode_to_vec(&lease_body),
            matched_at: now,
            answer_by: lease_body.answer_by,
            reprobed: offer.attributes.contains(&validate::reprobed_attribute()),
            ..LeaseRecord::default()
        };
        self.put_lease(&record)?;
        order.state = OrderState::Matched;
        order.reason = String::new();
        order.lease_id = Some(lease_id);
        order.offer_id = Some(offer.offer_id.clone());
        order.price = Some(price);
        order.held = hold;
        order.updated_at = now;
        Ok(Some((offer.provider.clone(), lease_body)))
    }

    /// Standing orders, oldest first, at the block's upkeep: each matched when an offer now
    /// fits (or rejected when its buyer cannot pay the hold), or closed at its deadline. The
    /// leases made, for their providers.
    pub(super) fn match_waiting(&mut self, block: &Block) -> Result<Vec<(String, LeaseBody)>> {
        let mut leases = Vec::new();
        for (key, waiting) in self.scan::<WaitingOrder>(WAITING, "")? {
            let mut order: OrderRecord = self.get(ORDERS, &waiting.order_id)?.ok_or_else(|| {
                StateError::Inconsistent(format!("waiting order {} is missing", waiting.order_id))
            })?;
            let bytes = hex::decode(&waiting.signed)
                .map_err(|e| StateError::Inconsistent(format!("waiting order bytes: {e}")))?;
            let signed = <Signed as prost::Message>::decode(bytes.as_slice())?;
            // Verified when it was submitted: these are the state's own bytes.
            let body = <OrderBody as prost::Message>::decode(signed.body.as_slice())?;
            let checked = validate::order(&body)?;
            if waiting.wait_until < block.time {
                let Ok(Step::Unmatched(state)) = transitions::next(order.state, None, Event::Lapse)
                else {
                    return Err(StateError::Inconsistent(format!(
                        "waiting order {} cannot lapse",
                        order.order_id
                    )));
                };
                order.state = state;
                order.reason = format!(
                    "no offer matched by {}: {}",
                    waiting.wait_until, waiting.unmatched
                );
                order.updated_at = block.time;
            } else {
                let savepoint = self.kv.savepoint();
                match self.place(&mut order, &body, checked, &signed, block) {
                    Ok(Some(lease)) => leases.push(lease),
                    Ok(None) => continue,
                    Err(StateError::Rejected(why)) => {
                        self.rollback(savepoint);
                        order.state = OrderState::Rejected;
                        order.reason = format!("an offer fitted, but {why}");
                        order.updated_at = block.time;
                    }
                    Err(other) => return Err(other),
                }
            }
            self.delete(WAITING, &key);
            self.put(ORDERS, &order.order_id, &order)?;
        }
        Ok(leases)
    }

    pub(super) fn cancel(&mut self, signed: &Signed, block: &Block) -> Result<OrderView> {
        let opened: Opened<CancelBody> = open(signed, block.time)?;
        validate::object_id("cancel.orderId", &opened.body.order_id)?;
        let buyer = public_key_base58(&opened.signer);
        self.consume_nonce(&opened)?;
        let order = self.owned_order(&opened.body.order_id, &buyer)?;
        let mut lease: Option<LeaseRecord> = match &order.lease_id {
            Some(lease_id) => Some(self.get(LEASES, lease_id)?.ok_or_else(|| {
                StateError::Inconsistent(format!("order {} has no lease", order.order_id))
            })?),
            None => None,
        };
        let step = transitions::next(order.state, lease.as_ref().map(|l| l.state), Event::Cancel)
            .map_err(|refused| {
            Rejection::Precondition(format!("order {} {refused}", order.order_id))
        })?;
        match (step, lease.as_mut()) {
            (
                Step::Moves {
                    order: order_state,
                    lease: lease_state,
                    ..
                },
                Some(lease),
            ) => Ok(self
                .refund_and_close(
                    block,
                    lease,
                    order,
                    (order_state, lease_state),
                    "cancelled by the buyer before the provider accepted".into(),
                )?
                .to_view()),
            (Step::Unmatched(state), None) => {
                self.delete(WAITING, &format!("{:020}", order.sequence));
                let mut order = order;
                order.state = state;
                order.reason = "cancelled by the buyer while it waited for an offer".into();
                order.updated_at = block.time;
                self.put(ORDERS, &order.order_id, &order)?;
                Ok(order.to_view())
            }
            _ => Ok(order.to_view()),
        }
    }

    fn owned_order(&self, order_id: &str, buyer: &str) -> Result<OrderRecord> {
        match self.get::<OrderRecord>(ORDERS, order_id)? {
            Some(order) if order.buyer == buyer => Ok(order),
            // Another buyer's order is reported as absent: ids reveal nothing.
            _ => Err(Rejection::NotFound(format!("order {order_id} does not exist")).into()),
        }
    }

    /// Queries are read-only, so they are checked for signature and freshness but their nonce
    /// is not recorded: a replay within the freshness window shows only what was already shown.
    pub fn query(signed: &Signed, now: i64) -> Result<(String, QueryBody)> {
        let opened: Opened<QueryBody> = open(signed, now)?;
        Ok((public_key_base58(&opened.signer), opened.body))
    }

    /// The orders of `buyer`, newest first.
    pub fn list_orders(&self, buyer: &str) -> Result<Vec<OrderView>> {
        let mut out: Vec<OrderRecord> = Vec::new();
        for (index_key, _) in self.scan::<i64>(BUYER_ORDERS, &format!("{buyer}/"))? {
            if let Some(order) = self.get::<OrderRecord>(ORDERS, &index_key[buyer.len() + 1..])? {
                out.push(order);
            }
        }
        out.sort_by(|a, b| {
            (b.created_at, b.sequence, &b.order_id).cmp(&(a.created_at, a.sequence, &a.order_id))
        });
        Ok(out.iter().map(OrderRecord::to_view).collect())
    }

    /// One order of `buyer`, with its lease.
    pub fn order_status(&self, buyer: &str, order_id: &str) -> Result<OrderView> {
        validate::object_id("query.orderId", order_id)?;
        let order = self.owned_order(order_id, buyer)?;
        let mut view = order.to_view();
        if let Some(lease_id) = &order.lease_id {
            let lease: LeaseRecord = self.get(LEASES, lease_id)?.ok_or_else(|| {
                StateError::Inconsistent(format!("order {} has no lease", order.order_id))
            })?;
            let provider: Option<ProviderRecord> = self.get(PROVIDERS, &lease.provider)?;
            view.lease = Some(lease.to_view(provider.as_ref()));
        }
        Ok(view)
    }

    /// Every order, for tests and the crash check.
    pub fn orders(&self) -> Result<Vec<OrderView>> {
        let orders: Vec<OrderRecord> = self.all(ORDERS)?;
        Ok(orders.iter().map(OrderRecord::to_view).collect())
    }
}

//! Orders: submission and matching, cancellation, the buyer's queries.

use prost::Message;
use redb::{ReadableTable, WriteTransaction};
use sha2::{Digest, Sha256};

use crate::identity::public_key_base58;
use crate::metering::{ChainHead, Totals};
use crate::node::ledger::{self, Account};
use crate::node::matching::{self, OrderTerms};
use crate::node::records::{
    LeaseRecord, LeaseState, OfferRecord, OrderRecord, OrderState, ProviderRecord,
};
use crate::node::transitions::{self, Event, Step};
use crate::wire::amount::Amount;
use crate::wire::envelope::{open, sign_body};
use crate::wire::proto::{CancelBody, LeaseBody, OrderBody, OrderView, QueryBody, Signed};
use crate::wire::{Opened, Rejection, validate};

use super::accounts::post;
use super::offers::release_capacity;
use super::{
    BUYER_ORDERS, HubError, LEASES, OFFERS, ORDER_SEQ, ORDERS, PROVIDERS, Result, Store, Submitted,
    all_json, consume_nonce, get, next, put, read_json,
};

/// Returns a lease's whole hold to its buyer and closes the order and the lease with the states
/// of the step that closed them, and `reason`.
pub(super) fn refund_and_close(
    txn: &WriteTransaction,
    now: i64,
    lease: &mut LeaseRecord,
    mut order: OrderRecord,
    (order_state, lease_state): (OrderState, LeaseState),
    reason: String,
) -> Result<OrderRecord> {
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

impl Store {
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
        let resource = validate::ordered_resource(body).to_string();
        let terms = OrderTerms {
            gpus: body.gpus,
            resource: resource.clone(),
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
                resource_name: resource,
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
                sequence: next(txn, ORDER_SEQ)?,
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
                        accepted_at: None,
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

    pub fn cancel(&self, signed: &Signed, now: i64) -> Result<OrderView> {
        let opened: Opened<CancelBody> = open(signed, now)?;
        validate::object_id("cancel.orderId", &opened.body.order_id)?;
        let buyer = public_key_base58(&opened.signer);
        self.write(|txn| {
            consume_nonce(txn, &opened)?;
            let order = Self::owned_order(&txn.open_table(ORDERS)?, &opened.body.order_id, &buyer)?;
            let mut lease: Option<LeaseRecord> = match &order.lease_id {
                Some(lease_id) => Some(get(txn, LEASES, lease_id)?.ok_or_else(|| {
                    HubError::Inconsistent(format!("order {} has no lease", order.order_id))
                })?),
                None => None,
            };
            let step =
                transitions::next(order.state, lease.as_ref().map(|l| l.state), Event::Cancel)
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
                ) => Ok(refund_and_close(
                    txn,
                    now,
                    lease,
                    order,
                    (order_state, lease_state),
                    "cancelled by the buyer before the provider accepted".into(),
                )?
                .to_view()),
                _ => Ok(order.to_view()),
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
    pub(super) fn query(&self, signed: &Signed, now: i64) -> Result<(String, QueryBody)> {
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
        out.sort_by(|a, b| {
            (b.created_at, b.sequence, &b.order_id).cmp(&(a.created_at, a.sequence, &a.order_id))
        });
        Ok(out.iter().map(OrderRecord::to_view).collect())
    }

    pub fn order_status(&self, signed: &Signed, now: i64) -> Result<OrderView> {
        let (buyer, body) = self.query(signed, now)?;
        validate::object_id("query.orderId", &body.order_id)?;
        let txn = self.read()?;
        let order = Self::owned_order(&txn.open_table(ORDERS)?, &body.order_id, &buyer)?;
        let mut view = order.to_view();
        if let Some(lease_id) = &order.lease_id {
            let lease: LeaseRecord =
                read_json(&txn.open_table(LEASES)?, lease_id)?.ok_or_else(|| {
                    HubError::Inconsistent(format!("order {} has no lease", order.order_id))
                })?;
            let provider: Option<ProviderRecord> =
                read_json(&txn.open_table(PROVIDERS)?, &lease.provider)?;
            view.lease = Some(lease.to_view(provider.as_ref()));
        }
        Ok(view)
    }

    /// Every order, for tests and the crash check.
    pub fn orders(&self) -> Result<Vec<OrderView>> {
        let txn = self.read()?;
        let orders: Vec<OrderRecord> = all_json(&txn.open_table(ORDERS)?)?;
        Ok(orders.iter().map(OrderRecord::to_view).collect())
    }
}

//! The GpuOffer controller: idle capacity → offer status.
//!
//! Reconciles run when the offer changes, when a node, pod or lease change touches the offer's
//! nodes (see `watch`), and on a slow timer as a safety net.

use std::sync::Arc;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;

use crate::capacity::{self, OfferCapacity, OfferFacts};
use crate::crd::conditions::condition;
use crate::crd::{FIELD_MANAGER, GpuOffer, GpuOfferStatus, NodeCapacity};
use crate::operator::controller::context::Context;
use crate::operator::controller::error::Result;
use crate::operator::status::apply_status;

/// Per-node rows kept in status; the rest are counted in nodesOmitted.
pub const MAX_NODE_ROWS: usize = 256;

pub async fn reconcile(offer: Arc<GpuOffer>, ctx: Arc<Context>) -> Result<Action> {
    let offers = ctx.offer_facts();
    let facts = OfferFacts::from_offer(&offer);
    let cap = {
        let inventory = ctx.inventory.read().expect("inventory lock poisoned");
        capacity::compute(&inventory, &facts, &offers)
    };
    let status = desired_status(&offer, cap, Timestamp::now());
    if offer.status.as_ref() != Some(&status) {
        // offerId and lastAdvertised are the network session's, under its own field manager.
        let (capacity, _) = status.into_parts();
        apply_status::<GpuOffer>(
            &ctx.client,
            &offer.name_any(),
            FIELD_MANAGER,
            None,
            &capacity,
        )
        .await?;
    }
    Ok(Action::requeue(ctx.settings.offer_resync))
}

/// The status an offer should have for its computed capacity. Pure.
pub fn desired_status(offer: &GpuOffer, cap: OfferCapacity, now: Timestamp) -> GpuOfferStatus {
    let previous = offer.status.clone().unwrap_or_default();
    let generation = offer.metadata.generation;
    let prev = &previous.conditions;

    let ready = match &cap.invalid_selector {
        Some(why) => condition(
            prev,
            "Ready",
            false,
            "InvalidSpec",
            why.clone(),
            generation,
            now,
        ),
        None => condition(
            prev,
            "Ready",
            true,
            "CapacityComputed",
            ready_message(&cap),
            generation,
            now,
        ),
    };
    let advertised = if offer.spec.paused {
        condition(
            prev,
            "Advertised",
            false,
            "Paused",
            "spec.paused is true",
            generation,
            now,
        )
    } else if previous.offer_id.is_some() {
        // Kept as the network session last set it.
        prev.iter()
            .find(|c| c.type_ == "Advertised")
            .cloned()
            .unwrap_or_else(|| {
                condition(prev, "Advertised", true, "Published", "", generation, now)
            })
    } else {
        condition(
            prev,
            "Advertised",
            false,
            "NotPublished",
            "no network session has published this offer",
            generation,
            now,
        )
    };
    let degraded = if let Some(why) = &cap.invalid_selector {
        condition(
            prev,
            "Degraded",
            true,
            "InvalidSpec",
            why.clone(),
            generation,
            now,
        )
    } else if cap.overlapping_nodes > 0 {
        condition(
            prev,
            "Degraded",
            true,
            "OverlappingOffer",
            format!(
                "{} node(s) selected by this offer belong to an older offer selling {}; they contribute nothing here",
                cap.overlapping_nodes, offer.spec.resource_name
            ),
            generation,
            now,
        )
    } else {
        condition(prev, "Degraded", false, "AsExpected", "", generation, now)
    };

    let contributing_models: Vec<&str> = cap
        .models
        .iter()
        .filter(|m| m.idle_gpus > 0 || m.advertised_gpus > 0)
        .map(|m| m.model.as_str())
        .collect();
    let mut nodes: Vec<NodeCapacity> = cap.nodes;
    let omitted = nodes.len().saturating_sub(MAX_NODE_ROWS);
    nodes.truncate(MAX_NODE_ROWS);
    GpuOfferStatus {
        observed_generation: generation,
        model: (!contributing_models.is_empty()).then(|| contributing_models.join(",")),
        idle_gpus: cap.idle,
        advertised_gpus: cap.advertised,
        leased_gpus: cap.leased,
        largest_block: cap.largest_block,
        models: cap.models,
        nodes,
        nodes_omitted: omitted as u32,
        offer_id: previous.offer_id,
        last_advertised: previous.last_advertised,
        conditions: vec![ready, advertised, degraded],
    }
}

fn ready_message(cap: &OfferCapacity) -> String {
    format!(
        "{} idle, {} advertised, {} leased, largest block {}",
        cap.idle, cap.advertised, cap.leased, cap.largest_block
    )
}

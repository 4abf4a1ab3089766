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

/// Per-node rows kept in status; the rest are counted in nodesOmitted. Every recompute applies
/// the whole list and every watcher of offers receives it: on the e2e control plane a
/// server-side apply of 256 rows took 15 ms at p50 against 7 ms for 32, so the list stays short
/// enough that the write costs about what a small object's does.
pub const MAX_NODE_ROWS: usize = 64;

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
    } else if let Some(offer_id) = &previous.offer_id {
        // The session writes offerId when the network's book takes the offer and clears it when
        // the offer is withdrawn: the condition follows it.
        condition(
            prev,
            "Advertised",
            true,
            "Published",
            format!("in the network's book as {offer_id}"),
            generation,
            now,
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::NodeExclusion;

    fn offer(paused: bool) -> GpuOffer {
        let mut spec: crate::crd::GpuOfferSpec =
            serde_yaml::from_str(include_str!("../../../tests/fixtures/offer-spec.yaml")).unwrap();
        spec.paused = paused;
        GpuOffer::new("h100-public", spec)
    }

    fn rows(n: usize) -> Vec<NodeCapacity> {
        (0..n)
            .map(|i| NodeCapacity {
                name: format!("node-{i:04}"),
                model: Some("H100".into()),
                allocatable: 8,
                free: 8,
                advertised: if i < n / 2 { 8 } else { 0 },
                reason: (i >= n / 2).then_some(NodeExclusion::CapReached),
            })
            .collect()
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    fn advertised(status: &GpuOfferStatus) -> (&str, &str) {
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Advertised")
            .unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn status_keeps_the_first_rows_and_counts_the_rest() {
        for (nodes, kept, omitted) in [
            (0, 0, 0),
            (MAX_NODE_ROWS, MAX_NODE_ROWS, 0),
            (MAX_NODE_ROWS + 1, MAX_NODE_ROWS, 1),
            (5_000, MAX_NODE_ROWS, 5_000 - MAX_NODE_ROWS),
        ] {
            let cap = OfferCapacity {
                nodes: rows(nodes),
                ..Default::default()
            };
            let status = desired_status(&offer(false), cap, at(1));
            assert_eq!(status.nodes.len(), kept, "{nodes} nodes");
            assert_eq!(status.nodes_omitted as usize, omitted, "{nodes} nodes");
            // The rows kept are the capacity's first: contributing nodes lead.
            assert_eq!(status.nodes, rows(nodes)[..kept].to_vec());
        }
    }

    #[test]
    fn advertised_says_paused_unpublished_or_what_the_session_set() {
        let cap = || OfferCapacity::default();
        let fresh = desired_status(&offer(false), cap(), at(1));
        assert_eq!(advertised(&fresh), ("False", "NotPublished"));
        assert_eq!(
            advertised(&desired_status(&offer(true), cap(), at(1))),
            ("False", "Paused")
        );
        let mut published = offer(false);
        let mut status = fresh.clone();
        status.offer_id = Some("offer-1".into());
        status.conditions = vec![condition(
            &[],
            "Advertised",
            true,
            "Published",
            "",
            None,
            at(2),
        )];
        published.status = Some(status);
        let kept = desired_status(&published, cap(), at(3));
        assert_eq!(advertised(&kept), ("True", "Published"));
        assert_eq!(kept.offer_id.as_deref(), Some("offer-1"));
    }

    /// A paused offer is withdrawn and its condition says so; once unpaused, the session
    /// publishes it again and writes only offerId: the condition must turn True, not keep the
    /// NotPublished it had before (the bug: it was carried forward once an offerId existed).
    #[test]
    fn advertised_turns_true_when_the_session_publishes_after_a_pause() {
        let cap = || OfferCapacity::default();
        let mut offer = offer(true);
        offer.status = Some(desired_status(&offer, cap(), at(1)));
        assert_eq!(
            advertised(offer.status.as_ref().unwrap()),
            ("False", "Paused")
        );

        offer.spec.paused = false;
        offer.status = Some(desired_status(&offer, cap(), at(2)));
        assert_eq!(
            advertised(offer.status.as_ref().unwrap()),
            ("False", "NotPublished")
        );

        // The session publishes it: only offerId changes.
        offer.status.as_mut().unwrap().offer_id = Some("provider/h100-public".into());
        let status = desired_status(&offer, cap(), at(3));
        assert_eq!(advertised(&status), ("True", "Published"));
        let condition = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Advertised")
            .unwrap();
        assert!(
            condition.message.contains("provider/h100-public"),
            "{}",
            condition.message
        );

        // Withdrawn (the session clears offerId): False again.
        offer.status = Some(status);
        offer.status.as_mut().unwrap().offer_id = None;
        assert_eq!(
            advertised(&desired_status(&offer, cap(), at(4))),
            ("False", "NotPublished")
        );
    }
}

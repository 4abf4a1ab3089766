//! The GpuOffer controller: idle capacity → offer status.
//!
//! Reconciles run when the offer changes, when a node, pod or lease change touches the offer's
//! nodes (see `watch`), and on a slow timer as a safety net.

use std::sync::Arc;

use jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use crate::capacity::{self, OfferCapacity, OfferFacts};
use crate::crd::conditions::condition;
use crate::crd::{FIELD_MANAGER, GpuOffer, GpuOfferStatus, NodeCapacity, OfferState, Price};
use crate::operator::controller::context::Context;
use crate::operator::controller::error::Result;
use crate::operator::publication::withheld;
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
        // Recorded after the status is written: a failed write is retried, not announced twice.
        let events = offer_events(offer.status.as_ref(), &status);
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
        for event in events {
            publish_event(&ctx, &offer, event).await;
        }
    }
    Ok(Action::requeue(ctx.settings.offer_resync))
}

/// Records an offer Event and logs it; a failure to record is logged, never retried: the
/// status says the same.
async fn publish_event(ctx: &Context, offer: &GpuOffer, event: OfferEvent) {
    let name = offer.name_any();
    if event.warning {
        warn!(offer = %name, reason = event.reason, "{}", event.note);
    } else {
        info!(offer = %name, reason = event.reason, "{}", event.note);
    }
    let recorded = Event {
        type_: if event.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: event.reason.into(),
        note: Some(event.note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx
        .recorder
        .publish(&recorded, &offer.object_ref(&()))
        .await
    {
        warn!(offer = %name, error = %e, "could not record an Event on the offer");
    }
}

/// What an offer is doing, from its spec, what the capacity computation found and whether the
/// network session has it in the book; with the sentence that says why. Pure.
pub fn offer_state(offer: &GpuOffer, cap: &OfferCapacity) -> (OfferState, String) {
    let published = offer.status.as_ref().and_then(|s| s.offer_id.as_deref());
    if let Some(why) = &cap.invalid_selector {
        return (OfferState::Invalid, why.clone());
    }
    if offer.spec.paused {
        return (
            OfferState::Paused,
            "spec.paused is true: withdrawn from the network's book; running leases go on".into(),
        );
    }
    if let Some(why) = withheld(&offer.spec) {
        return (OfferState::NoRegistries, why.into());
    }
    if let Some(why) = overlap(offer, cap) {
        return (OfferState::Degraded, why);
    }
    match published {
        Some(offer_id) => (
            OfferState::Advertised,
            format!(
                "in the network's book as {offer_id}; {}",
                capacity_summary(cap)
            ),
        ),
        None => (
            OfferState::NotPublished,
            format!(
                "no network session has published it yet; {}",
                capacity_summary(cap)
            ),
        ),
    }
}

/// What overlapping an older offer costs this one, when it does.
fn overlap(offer: &GpuOffer, cap: &OfferCapacity) -> Option<String> {
    (cap.overlapping_nodes > 0).then(|| {
        format!(
            "{} of its nodes belong to an older offer selling {}; they contribute nothing here",
            cap.overlapping_nodes,
            offer.spec.sold_resource()
        )
    })
}

/// The status an offer should have for its computed capacity. Pure.
pub fn desired_status(offer: &GpuOffer, cap: OfferCapacity, now: Timestamp) -> GpuOfferStatus {
    let previous = offer.status.clone().unwrap_or_default();
    let generation = offer.metadata.generation;
    let prev = &previous.conditions;
    let (state, why) = offer_state(offer, &cap);
    let ready = condition(
        prev,
        "Ready",
        matches!(state, OfferState::Advertised | OfferState::NotPublished),
        state.as_str(),
        why.clone(),
        generation,
        now,
    );
    // The session writes offerId when the network's book takes the offer and clears it when the
    // offer is withdrawn: the condition follows it.
    let advertised = match &previous.offer_id {
        Some(offer_id) => condition(
            prev,
            "Advertised",
            true,
            "Published",
            format!("in the network's book as {offer_id}"),
            generation,
            now,
        ),
        None if state == OfferState::NotPublished => condition(
            prev,
            "Advertised",
            false,
            "NotPublished",
            "no network session has published it yet",
            generation,
            now,
        ),
        None => condition(
            prev,
            "Advertised",
            false,
            state.as_str(),
            why.clone(),
            generation,
            now,
        ),
    };
    // Degraded is a fact of its own: an offer may be paused or withheld and overlap too.
    let degraded = match (&cap.invalid_selector, overlap(offer, &cap)) {
        (Some(why), _) => condition(
            prev,
            "Degraded",
            true,
            "InvalidSpec",
            why.clone(),
            generation,
            now,
        ),
        (None, Some(why)) => condition(
            prev,
            "Degraded",
            true,
            "OverlappingOffer",
            why,
            generation,
            now,
        ),
        (None, None) => condition(
            prev,
            "Degraded",
            false,
            "AsExpected",
            "every selected node can contribute",
            generation,
            now,
        ),
    };

    // Every model of the offer's nodes, also those fully leased, so that the column stays.
    let models: Vec<&str> = cap.models.iter().map(|m| m.model.as_str()).collect();
    let mut nodes: Vec<NodeCapacity> = cap.nodes;
    let omitted = nodes.len().saturating_sub(MAX_NODE_ROWS);
    nodes.truncate(MAX_NODE_ROWS);
    GpuOfferStatus {
        observed_generation: generation,
        state: Some(state),
        price: Some(price_label(&offer.spec.price)),
        model: (!models.is_empty()).then(|| models.join(",")),
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

/// A price as people read it: "2.4 USDC"; the amount as written when it is not one.
fn price_label(price: &Price) -> String {
    let amount = price
        .atto_units()
        .map_or_else(|| price.amount.clone(), |a| a.to_decimal_units());
    format!("{amount} {}", price.denomination)
}

fn capacity_summary(cap: &OfferCapacity) -> String {
    format!(
        "{} idle, {} advertised, {} leased, largest block {}",
        cap.idle, cap.advertised, cap.leased, cap.largest_block
    )
}

/// An Event an offer's change of status is worth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// The Events that going from `previous` to `next` is worth: the offer counted for the first
/// time, published, withdrawn, paused, refusing every lease, degraded, invalid, repriced. Pure;
/// the same status twice is worth none.
pub fn offer_events(previous: Option<&GpuOfferStatus>, next: &GpuOfferStatus) -> Vec<OfferEvent> {
    let mut events = Vec::new();
    let normal = |reason, note: String| OfferEvent {
        warning: false,
        reason,
        note,
    };
    let warning = |reason, note: String| OfferEvent {
        warning: true,
        reason,
        note,
    };
    let why = next
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    let before = previous.and_then(|p| p.state);
    if before.is_none() {
        events.push(normal(
            "Created",
            format!(
                "counting the idle {} of its nodes",
                next.model.as_deref().unwrap_or("GPUs")
            ),
        ));
    }
    if before != next.state {
        match next.state {
            Some(OfferState::Advertised) => events.push(normal("Published", why)),
            Some(OfferState::NotPublished) if before == Some(OfferState::Advertised) => {
                events.push(normal("Withdrawn", why))
            }
            Some(OfferState::Paused) => events.push(normal("Paused", why)),
            Some(OfferState::NoRegistries) => events.push(warning("NoRegistries", why)),
            Some(OfferState::Degraded) => events.push(warning("Degraded", why)),
            Some(OfferState::Invalid) => events.push(warning("InvalidSpec", why)),
            Some(OfferState::NotPublished) | None => {}
        }
    }
    if let (Some(was), Some(now)) = (previous.and_then(|p| p.price.as_ref()), &next.price)
        && was != now
    {
        events.push(normal("Repriced", format!("{was} → {now} per GPU-hour")));
    }
    events
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

    fn condition_of<'a>(status: &'a GpuOfferStatus, type_: &str) -> (&'a str, &'a str) {
        let c = status.conditions.iter().find(|c| c.type_ == type_).unwrap();
        assert!(!c.message.is_empty(), "{type_} has a message");
        (c.status.as_str(), c.reason.as_str())
    }

    /// Each state from what is observed, with READY and ADVERTISED as kubectl shows them: a
    /// paused, withheld, degraded or invalid offer is never Ready.
    #[test]
    fn the_state_says_what_the_offer_is_doing_and_ready_agrees() {
        type Edit = fn(&mut GpuOffer, &mut OfferCapacity);
        /// (case, edit, state, Ready's status, Advertised's (status, reason))
        type Case = (
            &'static str,
            Edit,
            OfferState,
            &'static str,
            (&'static str, &'static str),
        );
        let cases: Vec<Case> = vec![
            (
                "fresh",
                |_, _| {},
                OfferState::NotPublished,
                "True",
                ("False", "NotPublished"),
            ),
            (
                "published",
                |o, _| o.status.as_mut().unwrap().offer_id = Some("p/h100".into()),
                OfferState::Advertised,
                "True",
                ("True", "Published"),
            ),
            (
                "paused",
                |o, _| o.spec.paused = true,
                OfferState::Paused,
                "False",
                ("False", "Paused"),
            ),
            (
                "no registries",
                |o, _| o.spec.workload.allowed_registries.clear(),
                OfferState::NoRegistries,
                "False",
                ("False", "NoRegistries"),
            ),
            (
                "overlapping, still published",
                |o, c| {
                    c.overlapping_nodes = 2;
                    o.status.as_mut().unwrap().offer_id = Some("p/h100".into());
                },
                OfferState::Degraded,
                "False",
                ("True", "Published"),
            ),
            (
                "invalid selector",
                |_, c| c.invalid_selector = Some("spec.nodeSelector: bad".into()),
                OfferState::Invalid,
                "False",
                ("False", "Invalid"),
            ),
        ];
        for (name, edit, state, ready, advertised) in cases {
            let mut o = offer(false);
            o.status = Some(GpuOfferStatus::default());
            let mut cap = OfferCapacity::default();
            edit(&mut o, &mut cap);
            let status = desired_status(&o, cap, at(1));
            assert_eq!(status.state, Some(state), "{name}");
            assert_eq!(
                condition_of(&status, "Ready"),
                (ready, state.as_str()),
                "{name}"
            );
            assert_eq!(condition_of(&status, "Advertised"), advertised, "{name}");
            let degraded = matches!(state, OfferState::Degraded | OfferState::Invalid);
            assert_eq!(
                condition_of(&status, "Degraded").0,
                if degraded { "True" } else { "False" },
                "{name}"
            );
            assert_eq!(status.price.as_deref(), Some("2.4 USDC"), "{name}");
        }
    }

    /// The MODEL column stays when every GPU is leased: a model with nothing idle is still the
    /// offer's.
    #[test]
    fn the_model_stays_when_fully_leased() {
        let cap = OfferCapacity {
            models: vec![crate::crd::ModelCapacity {
                model: "H100".into(),
                idle_gpus: 0,
                advertised_gpus: 0,
                largest_block: 0,
            }],
            leased: 8,
            ..Default::default()
        };
        let status = desired_status(&offer(false), cap, at(1));
        assert_eq!(status.model.as_deref(), Some("H100"));
    }

    #[test]
    fn events_mark_each_change_of_state_and_price_once() {
        let reasons = |events: Vec<OfferEvent>| -> Vec<(&'static str, bool)> {
            events.iter().map(|e| (e.reason, e.warning)).collect()
        };
        let mut o = offer(false);
        let first = desired_status(&o, OfferCapacity::default(), at(1));
        assert_eq!(
            reasons(offer_events(None, &first)),
            vec![("Created", false)]
        );
        assert_eq!(
            reasons(offer_events(Some(&first), &first)),
            vec![],
            "no change, no event"
        );

        o.status = Some(first.clone());
        o.status.as_mut().unwrap().offer_id = Some("p/h100-public".into());
        let published = desired_status(&o, OfferCapacity::default(), at(2));
        let events = offer_events(Some(&first), &published);
        assert_eq!(reasons(events.clone()), vec![("Published", false)]);
        assert!(
            events[0].note.contains("p/h100-public"),
            "{}",
            events[0].note
        );

        o.status = Some(published.clone());
        o.spec.paused = true;
        o.spec.price.amount = "2.6".into();
        let paused = desired_status(&o, OfferCapacity::default(), at(3));
        let events = offer_events(Some(&published), &paused);
        assert_eq!(
            reasons(events.clone()),
            vec![("Paused", false), ("Repriced", false)]
        );
        assert_eq!(events[1].note, "2.4 USDC → 2.6 USDC per GPU-hour");

        o.spec.paused = false;
        o.status.as_mut().unwrap().offer_id = None;
        o.spec.workload.allowed_registries.clear();
        let withheld = desired_status(&o, OfferCapacity::default(), at(4));
        assert_eq!(
            reasons(offer_events(Some(&paused), &withheld)),
            vec![("NoRegistries", true)]
        );

        let degraded = desired_status(
            &offer(false),
            OfferCapacity {
                overlapping_nodes: 1,
                ..Default::default()
            },
            at(5),
        );
        assert_eq!(
            reasons(offer_events(Some(&published), &degraded)),
            vec![("Degraded", true)]
        );
        let withdrawn = desired_status(&offer(false), OfferCapacity::default(), at(6));
        assert_eq!(
            reasons(offer_events(Some(&published), &withdrawn)),
            vec![("Withdrawn", false)]
        );
    }
}

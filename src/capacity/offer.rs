//! The idle-capacity formula of an offer (DESIGN §2), over an [`Inventory`].
//!
//! For every node the offer selects:
//! `free = allocatable − Σ effective requests of bound non-terminal pods − holds of admitted
//! leases whose pod is not bound yet`, and
//! `advertised = clamp(Σ free − reserveGpus, 0, maxGpus − leasedGpus)`, per node, so that the
//! largest block (a lease lands on one node) is known exactly.

use std::collections::BTreeMap;

use super::facts::{NodeFacts, OfferFacts};
use super::inventory::Inventory;
use crate::crd::{ModelCapacity, NodeCapacity, NodeExclusion};

/// Everything the formula says of one offer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OfferCapacity {
    /// Σ free over contributing nodes.
    pub idle: u32,
    pub advertised: u32,
    /// GPUs of the offer's active leases.
    pub leased: u32,
    /// GPUs of active leases whose pod is not bound yet, held against free capacity.
    pub pending_holds: u32,
    pub largest_block: u32,
    pub models: Vec<ModelCapacity>,
    /// Every node the offer selects, contributing nodes first. Nodes outside its selector are
    /// none of its business and are not listed (at 5,000 nodes they would be noise).
    pub nodes: Vec<NodeCapacity>,
    /// Nodes this offer selects that an older offer selling the same resource owns.
    pub overlapping_nodes: u32,
    /// Why the offer's nodeSelector is invalid; the offer then selects nothing.
    pub invalid_selector: Option<String>,
}

/// Why `node`, which `offer` selects, can take none of its lease pods regardless of what runs
/// on it; `None` when it can.
pub fn static_exclusion(
    inventory: &Inventory,
    node: &NodeFacts,
    offer: &OfferFacts,
    offers: &[OfferFacts],
) -> Option<NodeExclusion> {
    let claimed_by_older = offers.iter().any(|other| {
        other.name != offer.name
            && other.resource == offer.resource
            && other.age_rank < offer.age_rank
            && other.selects(node)
    });
    if claimed_by_older {
        return Some(NodeExclusion::ClaimedByOtherOffer);
    }
    if inventory.capacity_for(node, offer) == 0 {
        return Some(NodeExclusion::NoGpus);
    }
    if !node.ready {
        return Some(NodeExclusion::NotReady);
    }
    if node.unschedulable {
        return Some(NodeExclusion::Cordoned);
    }
    if offer.is_tainted_against(node) {
        return Some(NodeExclusion::Tainted);
    }
    None
}

/// Nodes a lease of `gpus` GPUs (of `model`, when given) under `offer` may be scheduled on: every
/// node it selects that passes [`static_exclusion`] with at least `gpus` allocatable. Whether one is free
/// right now is the scheduler's call; admission already checked the capacity.
pub fn eligible_nodes(
    inventory: &Inventory,
    offer: &OfferFacts,
    offers: &[OfferFacts],
    gpus: u32,
    model: Option<&str>,
) -> Vec<String> {
    let mut names: Vec<String> = inventory
        .nodes()
        .filter(|n| offer.selects(n))
        .filter(|n| inventory.capacity_for(n, offer) >= gpus)
        .filter(|n| model.is_none_or(|m| inventory.model_of(n) == Some(m)))
        .filter(|n| static_exclusion(inventory, n, offer, offers).is_none())
        .map(|n| n.name.clone())
        .collect();
    names.sort();
    names
}

struct Candidate<'a> {
    node: &'a NodeFacts,
    capacity: u32,
    free: u32,
    reserved: u32,
    advertised: u32,
}

/// Computes the offer's capacity. `offers` is every offer, `offer` included, for overlap.
pub fn compute(inventory: &Inventory, offer: &OfferFacts, offers: &[OfferFacts]) -> OfferCapacity {
    let resource = offer.resource.as_str();
    let mut out = OfferCapacity {
        invalid_selector: offer.selector.as_ref().err().cloned(),
        ..Default::default()
    };

    let mut candidates: Vec<Candidate> = Vec::new();
    for node in inventory.nodes().filter(|n| offer.selects(n)) {
        let capacity = inventory.capacity_for(node, offer);
        match static_exclusion(inventory, node, offer, offers) {
            None => candidates.push(Candidate {
                node,
                capacity,
                free: capacity.saturating_sub(inventory.in_use_for(node, offer)),
                reserved: 0,
                advertised: 0,
            }),
            Some(reason) => {
                if reason == NodeExclusion::ClaimedByOtherOffer {
                    out.overlapping_nodes += 1;
                }
                out.nodes
                    .push(row(inventory, node, capacity, 0, 0, Some(reason)));
            }
        }
    }
    // One deterministic order for every rule below: name.
    candidates.sort_by(|a, b| a.node.name.cmp(&b.node.name));

    let mut holds: Vec<u32> = Vec::new();
    for lease in inventory
        .leases()
        .filter(|l| l.active() && l.offer == offer.name)
    {
        out.leased = out.leased.saturating_add(lease.gpus);
        if lease.resource == resource && !inventory.has_bound_pod(&lease.name) {
            // A lease intake placed holds on its node; only one without a node is placed here.
            let placed = lease
                .node
                .as_deref()
                .and_then(|n| candidates.iter_mut().find(|c| c.node.name == n))
                .filter(|c| c.free >= lease.gpus);
            match placed {
                Some(c) => {
                    c.free -= lease.gpus;
                    out.pending_holds = out.pending_holds.saturating_add(lease.gpus);
                }
                None => holds.push(lease.gpus),
            }
        }
    }
    out.pending_holds = holds
        .iter()
        .copied()
        .fold(out.pending_holds, u32::saturating_add);
    place_holds(&mut candidates, holds);

    out.idle = candidates
        .iter()
        .map(|c| c.free)
        .fold(0, u32::saturating_add);

    if !offer.paused {
        // The reserve is kept back on the smallest free blocks first, so that the blocks left to
        // advertise are as large as they can be.
        let mut reserve_left = offer.reserve_gpus;
        let mut by_free_ascending: Vec<usize> = (0..candidates.len()).collect();
        by_free_ascending.sort_by_key(|&i| candidates[i].free);
        for i in by_free_ascending {
            let take = reserve_left.min(candidates[i].free);
            candidates[i].reserved = take;
            reserve_left -= take;
        }
        // The cap is spent on the largest blocks first, for the same reason.
        let mut cap_left = offer.max_gpus.saturating_sub(out.leased);
        let mut by_available_descending: Vec<usize> = (0..candidates.len()).collect();
        by_available_descending.sort_by_key(|&i| std::cmp::Reverse(available(&candidates[i])));
        for i in by_available_descending {
            let give = cap_left.min(available(&candidates[i]));
            candidates[i].advertised = give;
            cap_left -= give;
        }
    }

    let mut models: BTreeMap<String, ModelCapacity> = BTreeMap::new();
    for c in &candidates {
        out.advertised += c.advertised;
        out.largest_block = out.largest_block.max(c.advertised);
        let model_name = inventory.model_of(c.node).unwrap_or("unknown").to_string();
        let model = models
            .entry(model_name.clone())
            .or_insert_with(|| ModelCapacity {
                model: model_name,
                ..Default::default()
            });
        model.idle_gpus += c.free;
        model.advertised_gpus += c.advertised;
        model.largest_block = model.largest_block.max(c.advertised);
        let reason = if c.advertised > 0 {
            None
        } else if c.free == 0 {
            Some(NodeExclusion::FullyUsed)
        } else if offer.paused {
            Some(NodeExclusion::Paused)
        } else if available(c) == 0 {
            Some(NodeExclusion::Reserved)
        } else {
            Some(NodeExclusion::CapReached)
        };
        out.nodes.push(row(
            inventory,
            c.node,
            c.capacity,
            c.free,
            c.advertised,
            reason,
        ));
    }
    out.models = models.into_values().collect();
    // Contributing nodes first (most advertised first), then the others by reason; name breaks ties.
    out.nodes.sort_by(|a, b| {
        (a.reason, std::cmp::Reverse(a.advertised), &a.name).cmp(&(
            b.reason,
            std::cmp::Reverse(b.advertised),
            &b.name,
        ))
    });
    out
}

fn available(c: &Candidate) -> u32 {
    c.free - c.reserved
}

/// Holds of leases whose pod is not bound yet have no node. Each is placed where the scheduler
/// can put it (best fit: the smallest block that takes it whole); a hold that fits nowhere whole
/// is taken from the largest blocks, so that the total stays exact either way.
fn place_holds(candidates: &mut [Candidate], mut holds: Vec<u32>) {
    holds.sort_unstable_by(|a, b| b.cmp(a));
    for hold in holds {
        let best_fit = candidates
            .iter_mut()
            .filter(|c| c.free >= hold)
            .min_by_key(|c| c.free);
        if let Some(c) = best_fit {
            c.free -= hold;
            continue;
        }
        let mut left = hold;
        let mut order: Vec<&mut Candidate> = candidates.iter_mut().collect();
        order.sort_by_key(|c| std::cmp::Reverse(c.free));
        for c in order {
            let take = left.min(c.free);
            c.free -= take;
            left -= take;
            if left == 0 {
                break;
            }
        }
    }
}

fn row(
    inventory: &Inventory,
    node: &NodeFacts,
    capacity: u32,
    free: u32,
    advertised: u32,
    reason: Option<NodeExclusion>,
) -> NodeCapacity {
    NodeCapacity {
        name: node.name.clone(),
        model: inventory.model_of(node).map(str::to_string),
        allocatable: capacity,
        free,
        advertised,
        reason,
    }
}

//! What the operator publishes for an offer, and when (DESIGN §6). Pure.

use std::time::Duration;

use crate::admission::{NodeBlock, free_after};
use crate::capacity::OfferCapacity;
use crate::crd::{EgressPolicy, GpuOffer, GpuOfferSpec, PodSecurityLevel};
use crate::wire::proto::{Attribute, OfferBody};
use crate::wire::validate;

/// Why an offer is not put in the network's book although its spec is valid and it is not
/// paused: its policy would refuse every lease. `None` when it may be published.
pub fn withheld(spec: &GpuOfferSpec) -> Option<&'static str> {
    spec.workload.allowed_registries.is_empty().then_some(
        "spec.workload.allowedRegistries is empty, so every lease would be refused: it is not \
         advertised until it names the registries lease images may come from",
    )
}

/// Whether an offer goes in the network's book at all: not when paused or withheld.
pub fn publishable(spec: &GpuOfferSpec) -> bool {
    !spec.paused && withheld(spec).is_none()
}

/// The offer as published, without its header and expiry, to tell a change from a refresh;
/// `None` for an offer that is not published (paused, withheld, or with a malformed price).
pub fn offer_body(
    offer: &GpuOffer,
    capacity: &OfferCapacity,
    pending: &[NodeBlock],
    region: &str,
) -> Option<OfferBody> {
    let spec = &offer.spec;
    if !publishable(spec) {
        return None;
    }
    let price = spec.price.atto_units()?;
    // GPUs promised to leases that are being created are not for sale again.
    let mut free_blocks: Vec<u32> = free_after(&advertised_blocks(capacity, None), pending)
        .into_iter()
        .map(|b| b.gpus)
        .filter(|free| *free > 0)
        .collect();
    free_blocks.sort_unstable_by(|a, b| b.cmp(a));
    let model = match capacity.models.as_slice() {
        [one] => one.model.clone(),
        _ => String::new(),
    };
    let egress = match spec.workload.egress {
        EgressPolicy::Internet => "internet",
        EgressPolicy::None => "none",
    };
    let pod_security = match spec.workload.pod_security_level {
        PodSecurityLevel::Restricted => "restricted",
        PodSecurityLevel::Baseline => "baseline",
    };
    Some(OfferBody {
        header: None,
        offer_name: offer.metadata.name.clone()?,
        model,
        resource_name: spec.resource_name.clone(),
        free_blocks,
        price_per_gpu_hour: price.to_string(),
        denomination: spec.price.denomination.clone(),
        min_duration_seconds: spec.lease.min_duration_seconds,
        max_duration_seconds: spec.lease.max_duration_seconds,
        max_gpus_per_lease: spec.lease.max_gpus_per_lease,
        allowed_registries: spec.workload.allowed_registries.clone(),
        region: region.to_string(),
        attributes: vec![
            Attribute {
                key: "egress".into(),
                value: egress.into(),
            },
            Attribute {
                key: "podSecurity".into(),
                value: pod_security.into(),
            },
            // Only DRA devices can be probed again beside the workload (one shared claim).
            Attribute {
                key: validate::REPROBED.0.into(),
                value: spec.dynamic_resources.is_some().to_string(),
            },
        ],
        expires_at: 0,
    })
}

/// GPUs advertised per contributing node (of `model`, when given).
pub fn advertised_blocks(capacity: &OfferCapacity, model: Option<&str>) -> Vec<NodeBlock> {
    capacity
        .nodes
        .iter()
        .filter(|n| n.reason.is_none())
        .filter(|n| model.is_none_or(|m| n.model.as_deref() == Some(m)))
        .map(|n| NodeBlock {
            node: n.name.clone(),
            gpus: n.advertised,
        })
        .collect()
}

/// The last publication of an offer.
#[derive(Clone, Debug, PartialEq)]
pub struct Published {
    pub body: OfferBody,
    pub at: Duration,
}

/// Whether to publish `body` now (`now` on any monotonic clock): when it changed, or when a
/// third of the offer's time to live has passed, so it never expires while the session is up.
pub fn due(last: Option<&Published>, body: &OfferBody, now: Duration, ttl: Duration) -> bool {
    match last {
        None => true,
        Some(last) => last.body != *body || now >= last.at + ttl / 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ModelCapacity, NodeCapacity, NodeExclusion};

    fn offer() -> GpuOffer {
        let spec =
            serde_yaml::from_str(include_str!("../../tests/fixtures/offer-spec.yaml")).unwrap();
        GpuOffer::new("h100-public", spec)
    }

    fn node(name: &str, advertised: u32, reason: Option<NodeExclusion>) -> NodeCapacity {
        NodeCapacity {
            name: name.into(),
            model: Some("H100".into()),
            allocatable: 8,
            free: advertised,
            advertised,
            reason,
        }
    }

    #[test]
    fn blocks_are_advertised_nodes_minus_pending_largest_first() {
        let capacity = OfferCapacity {
            nodes: vec![
                node("a", 4, None),
                node("b", 8, None),
                node("c", 0, None),
                node("d", 8, Some(NodeExclusion::Cordoned)),
            ],
            models: vec![ModelCapacity {
                model: "H100".into(),
                idle_gpus: 12,
                advertised_gpus: 12,
                largest_block: 8,
            }],
            ..Default::default()
        };
        let pending = [NodeBlock {
            node: "a".into(),
            gpus: 2,
        }];
        let body = offer_body(&offer(), &capacity, &pending, "eu-west").unwrap();
        assert_eq!(body.free_blocks, vec![8, 2]);
        assert_eq!(advertised_blocks(&capacity, Some("A100")), vec![]);
        assert_eq!(body.model, "H100");
        assert_eq!(body.region, "eu-west");
        assert_eq!(body.offer_name, "h100-public");
        assert!(body.price_per_gpu_hour.parse::<u128>().unwrap() > 0);
        // Everything promised: nothing for sale, but the offer is still published.
        let all = [
            NodeBlock {
                node: "a".into(),
                gpus: 4,
            },
            NodeBlock {
                node: "b".into(),
                gpus: 8,
            },
        ];
        let none = offer_body(&offer(), &capacity, &all, "").unwrap();
        assert!(none.free_blocks.is_empty());
    }

    /// A paused offer, and one whose policy refuses every lease, are not published.
    #[test]
    fn paused_and_withheld_offers_are_not_published() {
        let capacity = OfferCapacity::default();
        assert!(offer_body(&offer(), &capacity, &[], "").is_some());
        let mut paused = offer();
        paused.spec.paused = true;
        assert!(offer_body(&paused, &capacity, &[], "").is_none());
        let mut no_registries = offer();
        no_registries.spec.workload.allowed_registries.clear();
        assert!(withheld(&no_registries.spec).is_some());
        assert!(offer_body(&no_registries, &capacity, &[], "").is_none());
    }

    #[test]
    fn publishes_on_change_and_refreshes_before_expiry() {
        let body = offer_body(&offer(), &OfferCapacity::default(), &[], "").unwrap();
        let ttl = Duration::from_secs(120);
        let last = Published {
            body: body.clone(),
            at: Duration::from_secs(100),
        };
        assert!(due(None, &body, Duration::ZERO, ttl));
        assert!(!due(Some(&last), &body, Duration::from_secs(139), ttl));
        assert!(due(Some(&last), &body, Duration::from_secs(140), ttl));
        let changed = OfferBody {
            free_blocks: vec![1],
            ..body
        };
        assert!(due(Some(&last), &changed, Duration::from_secs(101), ttl));
    }
}

//! Each field manager's part of a status, as the one typed value it server-side applies.
//!
//! A part holds exactly the fields its manager owns; every part is cut from the whole status by
//! a destructuring that names every field, so a new status field does not compile until it is
//! given to one manager (instead of silently joining whichever serialized the whole status).
//! Conditions are a list-map keyed by type: each manager applies only the types it owns.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde::Serialize;

use super::{
    ComputeLeaseStatus, GpuOfferStatus, LeaseAccess, LeaseAttestation, LeasePhase, LeaseUsage,
    ModelCapacity, NodeCapacity, OfferState, Termination,
};

/// The lease condition the collector writes with the usage it reports.
pub const METERED_CONDITION: &str = "Metered";
/// The lease condition the collector writes with the attestation it verified.
pub const ATTESTED_CONDITION: &str = "Attested";

/// What the offer controller writes of an offer's status: the capacity it computed.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OfferCapacityPart {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<OfferState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub idle_gpus: u32,
    pub advertised_gpus: u32,
    pub leased_gpus: u32,
    pub largest_block: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelCapacity>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeCapacity>,
    #[serde(skip_serializing_if = "super::offer::is_zero")]
    pub nodes_omitted: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// What the network session writes of an offer's status: where it is published. Empty when
/// the offer is withdrawn, which gives both fields up.
#[derive(Serialize, Debug, Clone, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OfferPublicationPart {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offer_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_advertised: Option<Time>,
}

impl GpuOfferStatus {
    /// The status cut into its managers' parts.
    pub fn into_parts(self) -> (OfferCapacityPart, OfferPublicationPart) {
        let GpuOfferStatus {
            observed_generation,
            state,
            price,
            model,
            idle_gpus,
            advertised_gpus,
            leased_gpus,
            largest_block,
            models,
            nodes,
            nodes_omitted,
            offer_id,
            last_advertised,
            conditions,
        } = self;
        (
            OfferCapacityPart {
                observed_generation,
                state,
                price,
                model,
                idle_gpus,
                advertised_gpus,
                leased_gpus,
                largest_block,
                models,
                nodes,
                nodes_omitted,
                conditions,
            },
            OfferPublicationPart {
                offer_id,
                last_advertised,
            },
        )
    }
}

/// What the lease controller writes of a lease's status: its phases, and every condition but
/// the collector's.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LeasePhasePart {
    pub phase: LeasePhase,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination: Option<Termination>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// What the collector writes of a lease's metering: the usage and the Metered condition.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LeaseMeteringPart {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<LeaseUsage>,
    pub conditions: [Condition; 1],
}

/// What the collector writes of a lease's attestation: the evidence and the Attested condition.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LeaseAttestationPart {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attestation: Option<LeaseAttestation>,
    pub conditions: [Condition; 1],
}

/// What the operator's relay writes of a lease's status: the access it counted.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LeaseAccessPart {
    pub access: LeaseAccess,
}

/// What the network session writes of a lease's status: when its end was reported.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LeaseReportPart {
    pub reported_at: Time,
    /// `Metered` False when the lease ran with no accepted receipt.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl ComputeLeaseStatus {
    /// The lease controller's part; the other managers' fields are theirs to write.
    pub fn phase_part(&self) -> LeasePhasePart {
        let ComputeLeaseStatus {
            phase,
            namespace,
            pod,
            node,
            started_at,
            ends_at,
            finished_at,
            termination,
            // The collector's (LeaseMeteringPart, LeaseAttestationPart), the session's
            // (LeaseReportPart) and the relay's (LeaseAccessPart).
            usage: _,
            access: _,
            attestation: _,
            reported_at: _,
            conditions,
        } = self;
        LeasePhasePart {
            phase: *phase,
            namespace: namespace.clone(),
            pod: pod.clone(),
            node: node.clone(),
            started_at: started_at.clone(),
            ends_at: ends_at.clone(),
            finished_at: finished_at.clone(),
            termination: termination.clone(),
            conditions: conditions
                .iter()
                .filter(|c| !matches!(c.type_.as_str(), METERED_CONDITION | ATTESTED_CONDITION))
                .cloned()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn keys(value: impl Serialize) -> BTreeSet<String> {
        serde_json::to_value(value)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    fn condition(type_: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: "True".into(),
            reason: "R".into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: Time("2027-01-01T00:00:00Z".parse().unwrap()),
        }
    }

    fn time() -> Option<Time> {
        Some(Time("2027-01-01T00:00:00Z".parse().unwrap()))
    }

    /// Every field of a fully written offer status is written by exactly one manager.
    #[test]
    fn the_offer_parts_partition_the_status() {
        let status: GpuOfferStatus = serde_yaml::from_str(
            r#"
observedGeneration: 2
model: NVIDIA-H100-80GB-HBM3
idleGpus: 8
advertisedGpus: 8
leasedGpus: 1
largestBlock: 8
models: [{model: NVIDIA-H100-80GB-HBM3, idleGpus: 8, advertisedGpus: 8, largestBlock: 8}]
nodes: [{name: n1, allocatable: 8, free: 8, advertised: 8}]
nodesOmitted: 3
offerId: provider/offer
lastAdvertised: "2027-01-01T00:00:00Z"
conditions: [{type: Ready, status: "True", reason: R, message: "", lastTransitionTime: "2027-01-01T00:00:00Z"}]
"#,
        )
        .unwrap();
        let whole = keys(&status);
        let (capacity, publication) = status.into_parts();
        let (capacity, publication) = (keys(capacity), keys(publication));
        assert!(capacity.is_disjoint(&publication));
        assert_eq!(&capacity | &publication, whole);
        assert_eq!(
            publication,
            BTreeSet::from(["offerId".into(), "lastAdvertised".into()])
        );
    }

    /// The lease controller writes all but the collector's and the session's fields, and none of
    /// their conditions.
    #[test]
    fn the_lease_controller_part_leaves_the_others_theirs() {
        let status = ComputeLeaseStatus {
            phase: LeasePhase::Running,
            namespace: Some("lease-a".into()),
            pod: Some("workload".into()),
            node: Some("n1".into()),
            started_at: time(),
            ends_at: time(),
            finished_at: time(),
            termination: None,
            usage: Some(LeaseUsage::default()),
            access: Some(LeaseAccess::default()),
            attestation: Some(LeaseAttestation {
                trust_tier: "self-reported".into(),
                last_verified: time(),
                evidence_digest: None,
                image_digest: None,
                probe_passed_at: None,
                probe: None,
                hardware_attested_since: None,
            }),
            reported_at: time(),
            conditions: vec![
                condition("Ready"),
                condition(METERED_CONDITION),
                condition(ATTESTED_CONDITION),
            ],
        };
        let part = status.phase_part();
        let written = keys(&part);
        for theirs in ["usage", "access", "attestation", "reportedAt"] {
            assert!(!written.contains(theirs), "{theirs}");
        }
        assert!(written.contains("startedAt") && written.contains("conditions"));
        let types: Vec<&str> = part.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Ready"]);
    }
}

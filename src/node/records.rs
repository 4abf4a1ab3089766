//! What the network node persists, one JSON record per key, and how records are shown.

use serde::{Deserialize, Serialize};

use crate::attestation::TrustTier;
use crate::metering::{ChainHead, Totals};
use crate::node::matching::BookOffer;
use crate::node::uptime::Uptime;
use crate::wire::amount::Amount;
use crate::wire::proto::{
    Attribute, LeaseView, OfferView, OrderState as WireOrderState, OrderView,
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderRecord {
    /// Public key, base58.
    pub key: String,
    pub name: String,
    pub region: String,
    pub registered_at: i64,
    pub last_heartbeat: i64,
    /// Heartbeats the network counted, for the provider's uptime.
    #[serde(default)]
    pub uptime: Uptime,
    /// Its leases that ended without its fault, and those that ended by it.
    #[serde(default)]
    pub completed_leases: u64,
    #[serde(default)]
    pub provider_fault_ends: u64,
    /// The tier its last verified evidence reached; self-reported until any.
    #[serde(default)]
    pub trust_tier: TrustTier,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferRecord {
    pub offer_id: String,
    pub provider: String,
    pub offer_name: String,
    pub model: String,
    pub resource_name: String,
    /// Free GPUs per node as published, minus what was matched since.
    pub free_blocks: Vec<u32>,
    pub price: Amount,
    pub denomination: String,
    pub min_duration_seconds: u64,
    pub max_duration_seconds: u64,
    pub max_gpus_per_lease: u32,
    pub allowed_registries: Vec<String>,
    pub region: String,
    pub attributes: Vec<(String, String)>,
    pub expires_at: i64,
    /// Network-wide publication counter at the last publish.
    pub published_seq: u64,
}

impl OfferRecord {
    /// The offer as matching sees it, with what the network knows of its provider.
    pub fn to_book(
        &self,
        bond_covers: Option<u64>,
        uptime_basis_points: u32,
        provider: &ProviderRecord,
    ) -> BookOffer {
        BookOffer {
            trust_tier: provider.trust_tier,
            offer_id: self.offer_id.clone(),
            provider: self.provider.clone(),
            bond_covers,
            uptime_basis_points,
            resource: self.resource_name.clone(),
            model: self.model.clone(),
            region: self.region.clone(),
            attributes: self.attributes.clone(),
            free_blocks: self.free_blocks.clone(),
            price: self.price,
            denomination: self.denomination.clone(),
            min_duration_seconds: self.min_duration_seconds,
            max_duration_seconds: self.max_duration_seconds,
            max_gpus_per_lease: self.max_gpus_per_lease,
            allowed_registries: self.allowed_registries.clone(),
            published_seq: self.published_seq,
        }
    }

    pub fn to_view(&self, provider_name: &str) -> OfferView {
        OfferView {
            offer_id: self.offer_id.clone(),
            provider_name: provider_name.to_string(),
            model: self.model.clone(),
            resource_name: self.resource_name.clone(),
            available_gpus: self.free_blocks.iter().sum(),
            largest_block: self.free_blocks.iter().copied().max().unwrap_or(0),
            price_per_gpu_hour: self.price.to_string(),
            denomination: self.denomination.clone(),
            min_duration_seconds: self.min_duration_seconds,
            max_duration_seconds: self.max_duration_seconds,
            region: self.region.clone(),
            expires_at: self.expires_at,
            bonded: String::new(),
            provider: String::new(),
            uptime_basis_points: 0,
            completed_leases: 0,
            provider_fault_ends: 0,
            trust_tier: String::new(),
            attributes: self
                .attributes
                .iter()
                .map(|(key, value)| Attribute {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderState {
    Matched,
    Leased,
    Ended,
    Rejected,
    Cancelled,
    /// A standing order no offer fits yet.
    Waiting,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    pub order_id: String,
    pub buyer: String,
    pub gpus: u32,
    /// Whole GPUs or a MIG profile; records from before it was recorded were whole GPUs.
    #[serde(default = "whole_gpu")]
    pub resource_name: String,
    pub model: String,
    pub duration_seconds: u64,
    pub max_price: Amount,
    pub denomination: String,
    pub image: String,
    pub state: OrderState,
    pub reason: String,
    pub lease_id: Option<String>,
    pub offer_id: Option<String>,
    pub price: Option<Amount>,
    pub held: Amount,
    pub charged: Amount,
    pub refunded: Amount,
    pub created_at: i64,
    pub updated_at: i64,
    /// Network-wide submission counter: orders of the same second keep their order.
    #[serde(default)]
    pub sequence: u64,
}

impl OrderRecord {
    pub fn to_view(&self) -> OrderView {
        OrderView {
            order_id: self.order_id.clone(),
            buyer: self.buyer.clone(),
            state: match self.state {
                OrderState::Matched => WireOrderState::Matched,
                OrderState::Leased => WireOrderState::Leased,
                OrderState::Ended => WireOrderState::Ended,
                OrderState::Rejected => WireOrderState::Rejected,
                OrderState::Cancelled => WireOrderState::Cancelled,
                OrderState::Waiting => WireOrderState::Waiting,
            } as i32,
            reason: self.reason.clone(),
            gpus: self.gpus,
            model: self.model.clone(),
            duration_seconds: self.duration_seconds,
            max_price_per_gpu_hour: self.max_price.to_string(),
            denomination: self.denomination.clone(),
            lease_id: self.lease_id.clone().unwrap_or_default(),
            offer_id: self.offer_id.clone().unwrap_or_default(),
            price_per_gpu_hour: self.price.map(|p| p.to_string()).unwrap_or_default(),
            held: self.held.to_string(),
            charged: self.charged.to_string(),
            refunded: self.refunded.to_string(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            image: self.image.clone(),
            resource_name: self.resource_name.clone(),
            lease: None,
        }
    }
}

fn whole_gpu() -> String {
    crate::wire::validate::WHOLE_GPU.to_string()
}

/// A new lease is offered to its provider.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseState {
    /// Sent to the provider; waiting for its answer.
    #[default]
    Offered,
    Accepted,
    Ended,
    Rejected,
    /// The provider did not answer in time.
    Lapsed,
    Cancelled,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseEnd {
    pub phase: String,
    pub reason: String,
    pub fault: String,
    pub started_at: i64,
    pub ended_at: i64,
    pub gpu_seconds: u64,
    pub charged: Amount,
    pub refunded: Amount,
}

/// Its `Default` is an offered lease with nothing yet: what matching fills in is named, the
/// progress left as it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub lease_id: String,
    pub order_id: String,
    pub buyer: String,
    pub provider: String,
    pub offer_id: String,
    /// The offer publication it was matched against, and the node-block it took there.
    pub offer_seq: u64,
    pub block: usize,
    /// The GPU model the offer names.
    #[serde(default)]
    pub model: String,
    pub gpus: u32,
    pub price: Amount,
    pub denomination: String,
    pub duration_seconds: u64,
    pub state: LeaseState,
    /// The lease as the network made it, protobuf `LeaseBody`, resent on every new provider
    /// stream.
    pub body: Vec<u8>,
    pub matched_at: i64,
    pub answer_by: i64,
    /// When the provider accepted it.
    #[serde(default)]
    pub accepted_at: Option<i64>,
    pub end: Option<LeaseEnd>,
    /// Where the lease's receipt chain stands, and what its accepted receipts add up to.
    #[serde(default)]
    pub chain: ChainHead,
    #[serde(default)]
    pub totals: Totals,
    /// Paid to the provider from escrow so far, from accepted receipts, atto units.
    #[serde(default)]
    pub charged: Amount,
    /// The outstanding attestation challenge.
    #[serde(default)]
    pub challenge: Option<ChallengeRecord>,
    /// The last evidence accepted.
    #[serde(default)]
    pub attestation: Option<AttestationRecord>,
    /// The lease key the first accepted certificate named; no other is accepted after it.
    #[serde(default)]
    pub lease_key: Option<Vec<u8>>,
    /// The GPU probe issued at acceptance.
    #[serde(default)]
    pub probe: Option<ProbeRecord>,
    /// When evidence first verified the lease's GPUs as hardware-attested.
    #[serde(default)]
    pub hardware_attested_since: Option<i64>,
    /// Whether the lease is probed again while it runs: its offer published
    /// [`REPROBED`](crate::wire::validate::REPROBED), as the operator does for DRA devices,
    /// whose one claim the sidecars share with the workload.
    #[serde(default)]
    pub reprobed: bool,
    /// The latest probe after the first, while the lease runs (DESIGN §8).
    #[serde(default)]
    pub reprobe: Option<ProbeRecord>,
    /// When the lease's GPUs last passed a probe, the first or a re-probe.
    #[serde(default)]
    pub probe_proven_at: Option<i64>,
}

impl LeaseRecord {
    /// The tier the lease reached: its hardware evidence's, or its GPU probe's, whichever is
    /// stronger.
    pub fn tier(&self) -> TrustTier {
        self.attestation
            .as_ref()
            .and_then(|a| TrustTier::parse(&a.trust_tier))
            .unwrap_or_default()
            .with_probe(
                self.probe.as_ref().is_some_and(|p| p.passed_at.is_some())
                    && self.reprobe.as_ref().is_none_or(|p| p.failed_at.is_none()),
            )
    }

    /// Re-probes passed so far: one is issued only once the one before it passed, and a failed
    /// or lapsed one ends the lease.
    pub fn reprobes_passed(&self) -> u32 {
        self.reprobe.as_ref().map_or(0, |p| match p.passed_at {
            Some(_) => p.reprobe,
            None => p.reprobe - 1,
        })
    }

    /// The buyer's view of the lease; `provider` is its provider's record, when it has one.
    pub fn to_view(&self, provider: Option<&ProviderRecord>) -> LeaseView {
        let end = self.end.as_ref();
        LeaseView {
            lease_id: self.lease_id.clone(),
            provider: self.provider.clone(),
            provider_name: provider.map(|p| p.name.clone()).unwrap_or_default(),
            region: provider.map(|p| p.region.clone()).unwrap_or_default(),
            node_block: u32::try_from(self.block).unwrap_or(u32::MAX),
            state: match self.state {
                LeaseState::Offered => "offered",
                LeaseState::Accepted => "accepted",
                LeaseState::Ended => "ended",
                LeaseState::Rejected => "rejected",
                LeaseState::Lapsed => "lapsed",
                LeaseState::Cancelled => "cancelled",
            }
            .to_string(),
            matched_at: self.matched_at,
            accepted_at: self.accepted_at.unwrap_or(0),
            started_at: end.map_or(0, |e| e.started_at),
            ended_at: end.map_or(0, |e| e.ended_at),
            receipts: self.chain.sequence,
            metered_gpu_seconds: self.totals.allocated_gpu_millis / 1000,
            energy_joules: self.totals.energy_millijoules / 1000,
            utilization_percent: (self.totals.utilization_weight > 0)
                .then(|| self.totals.utilization_percent()),
            charged: self.charged.to_string(),
            trust_tier: self.tier().as_str().to_string(),
            end_phase: end.map(|e| e.phase.clone()).unwrap_or_default(),
            end_reason: end.map(|e| e.reason.clone()).unwrap_or_default(),
            fault: end.map(|e| e.fault.clone()).unwrap_or_default(),
            access: Some(self.totals.access.into()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeRecord {
    pub nonce: Vec<u8>,
    pub issued_at: i64,
    pub answered: bool,
}

/// A lease's GPU probe (DESIGN §8), fixed when issued so that governance changing the rules
/// later does not move a probe under way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeRecord {
    /// The GPU model the lease's offer names, whose calibration band applies.
    pub model: String,
    /// Seeds every GPU's matrices.
    pub nonce: Vec<u8>,
    pub size: u32,
    pub tiles: u32,
    pub rounds: u32,
    pub rows: u32,
    pub issued_at: i64,
    /// Each GPU's Merkle root, once committed.
    pub roots: Vec<[u8; 32]>,
    pub kernel_ms: u64,
    pub committed_at: Option<i64>,
    /// Drawn from the entropy of the block that took the commitment.
    pub checks: Option<[u8; 32]>,
    /// Per GPU: whether its answers verified.
    pub answered: Vec<bool>,
    pub passed_at: Option<i64>,
    pub failed_at: Option<i64>,
    /// What passed (the band matched) or why it failed.
    pub detail: String,
    /// 0 for the probe at acceptance, n for the lease's n-th re-probe.
    #[serde(default)]
    pub reprobe: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationRecord {
    pub trust_tier: String,
    /// What the verification checked, or why the evidence earned no more than its tier.
    #[serde(default)]
    pub detail: String,
    /// The workload image's digest the provider reported with the evidence.
    #[serde(default)]
    pub image_digest: String,
    pub digest: Vec<u8>,
    pub verified_at: i64,
}

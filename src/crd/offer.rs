//! `GpuOffer`: these nodes' spare GPUs are for sale, on these terms.

// Each printcolumn(...) repeats `type_ = ...`, which clippy takes for a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{DEFAULT_GPU_RESOURCE, Price};

/// Spec of a GpuOffer.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "gpubridge.dev",
    doc = "A set of nodes whose spare GPUs are for sale on the network, and the terms of sale.",
    version = "v1alpha1",
    kind = "GpuOffer",
    plural = "gpuoffers",
    shortname = "gpuo",
    category = "gpubridge",
    status = "GpuOfferStatus",
    printcolumn(name = "Model", type_ = "string", json_path = ".status.model"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Idle", type_ = "integer", json_path = ".status.idleGpus"),
    printcolumn(
        name = "Advertised",
        type_ = "integer",
        json_path = ".status.advertisedGpus"
    ),
    printcolumn(name = "Leased", type_ = "integer", json_path = ".status.leasedGpus"),
    printcolumn(name = "Price", type_ = "string", json_path = ".status.price"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
// Messages are built with format(): the apiserver's cost estimate of string(int) concatenated
// is unbounded and refuses the CRD. A rule between two fields judges only fields that are valid on their own: one mistake, one
// message.
#[x_kube(validation = Rule::new("self.maxGpus < 1 || self.reserveGpus <= self.maxGpus").message(Message::Expression("'spec.reserveGpus (%d) must not exceed spec.maxGpus (%d)'.format([self.reserveGpus, self.maxGpus])".into())))]
#[x_kube(validation = Rule::new("self.maxGpus < 1 || self.lease.maxGpusPerLease <= self.maxGpus").message(Message::Expression("'spec.lease.maxGpusPerLease (%d) must not exceed spec.maxGpus (%d)'.format([self.lease.maxGpusPerLease, self.maxGpus])".into())))]
pub struct GpuOfferSpec {
    /// The nodes whose GPUs this offer sells. A node matched by two offers selling the same
    /// resource belongs to the older offer; the newer one reports Degraded.
    pub node_selector: LabelSelector,
    /// The extended resource that counts the GPUs: "nvidia.com/gpu" for whole GPUs, or a MIG
    /// profile such as "nvidia.com/mig-1g.10gb" for slices. An order for whole GPUs never gets
    /// slices. Defaults to "nvidia.com/gpu".
    #[serde(default = "default_resource_name")]
    #[schemars(regex(pattern = r"^nvidia\.com/(gpu|mig-[1-7]g\.[0-9]+gb(\.[a-z0-9]+)?)$"))]
    pub resource_name: String,
    /// The most GPUs this offer may have leased out at once.
    #[schemars(range(min = 1, max = 100000))]
    pub max_gpus: u32,
    /// GPUs kept back for the enterprise's own workloads; they are never advertised. Defaults
    /// to 0.
    #[serde(default)]
    #[schemars(range(max = 100000))]
    pub reserve_gpus: u32,
    /// The price per GPU-hour.
    pub price: Price,
    /// The bounds every lease under this offer must keep.
    pub lease: LeaseBounds,
    /// What lease workloads may run and how they are confined. Defaults to no allowed
    /// registries (every lease refused), Internet egress and the restricted Pod Security level.
    #[serde(default)]
    pub workload: WorkloadPolicy,
    /// Tolerations lease pods get, so that they can land on GPU nodes tainted for dedicated use.
    /// A node tainted against lease pods (a NoSchedule or NoExecute taint not tolerated here)
    /// contributes nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// When true, nothing is advertised and no new lease is taken; running leases go on.
    /// Defaults to false.
    #[serde(default)]
    pub paused: bool,
    /// Sell devices a Dynamic Resource Allocation driver publishes in ResourceSlices instead of
    /// the extended resource: lease pods then claim their GPUs through one ResourceClaim that the
    /// workload and the sidecars share, so the sidecars see exactly the lease's GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic_resources: Option<DynamicResources>,
}

impl GpuOfferSpec {
    /// What this offer's GPUs are counted in, and what its leases record as their resource.
    pub fn sold_resource(&self) -> String {
        match &self.dynamic_resources {
            Some(d) => dra_resource(&d.device_class_name),
            None => self.resource_name.clone(),
        }
    }
}

/// The resource name a lease of a DRA offer counts in: the quota name Kubernetes gives the
/// devices of a DeviceClass.
pub fn dra_resource(device_class: &str) -> String {
    format!("{device_class}{DRA_RESOURCE_SUFFIX}")
}

const DRA_RESOURCE_SUFFIX: &str = ".deviceclass.resource.k8s.io/devices";

/// The DeviceClass a lease's resource name stands for, when it is a DRA one.
pub fn device_class_of(resource: &str) -> Option<&str> {
    resource.strip_suffix(DRA_RESOURCE_SUFFIX)
}

/// Where the devices of an offer of DRA devices come from.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DynamicResources {
    /// DeviceClass lease pods claim their GPUs from.
    #[schemars(regex(pattern = r"^[a-z0-9]([a-z0-9.-]{0,200}[a-z0-9])?$"))]
    pub device_class_name: String,
    /// Driver that publishes the class's devices in ResourceSlices: devices of this driver on a
    /// selected node are its GPUs.
    #[schemars(regex(pattern = r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$"))]
    pub driver: String,
}

fn default_resource_name() -> String {
    DEFAULT_GPU_RESOURCE.to_string()
}

/// Duration and size bounds of a lease.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minDurationSeconds <= self.maxDurationSeconds").message(Message::Expression("'spec.lease.minDurationSeconds (%d) must not exceed spec.lease.maxDurationSeconds (%d)'.format([self.minDurationSeconds, self.maxDurationSeconds])".into())))]
pub struct LeaseBounds {
    /// The shortest lease accepted, in seconds (at least 60).
    #[schemars(range(min = 60, max = 31536000))]
    pub min_duration_seconds: u64,
    /// The longest lease accepted, in seconds (at most one year).
    #[schemars(range(min = 60, max = 31536000))]
    pub max_duration_seconds: u64,
    /// The most GPUs one lease may take. A lease always lands on one node.
    #[schemars(range(min = 1, max = 64))]
    pub max_gpus_per_lease: u32,
}

/// Policy for what lease workloads may run, and the box they run in.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadPolicy {
    /// Registries lease images may come from, as host names with an optional path prefix
    /// (for example "ghcr.io/acme" or "nvcr.io"). Defaults to none, which refuses every lease:
    /// such an offer is not advertised.
    #[serde(default)]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9._-]+)*$"))
    )]
    pub allowed_registries: Vec<String>,
    /// The RuntimeClass lease pods run with, for example a gVisor or Kata class. Defaults to the
    /// cluster's default runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<String>,
    /// The PriorityClass of lease pods. Use a class below the enterprise's own workloads so that
    /// they preempt leases, never the reverse. Defaults to the cluster's default priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// The outbound network access of lease pods. Defaults to Internet.
    #[serde(default)]
    pub egress: EgressPolicy,
    /// The Pod Security Standard enforced in lease namespaces. Defaults to restricted.
    #[serde(default)]
    pub pod_security_level: PodSecurityLevel,
    /// How buyers reach their leases' logs and declared ports through the operator. Defaults to
    /// 64 connections per lease and a 300 s idle timeout.
    #[serde(default)]
    pub access: AccessPolicy,
}

/// Limits on buyers' access to a lease (`gpubridge order logs` and `connect`), which the
/// operator relays from the network to the lease pod.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessPolicy {
    /// Connections and log streams one lease may have open at once; 0 allows none. Defaults
    /// to 64.
    #[serde(default = "default_max_connections")]
    #[schemars(range(max = 4096))]
    pub max_connections: u32,
    /// Seconds after which a connection with no byte either way is closed. Defaults to 300.
    #[serde(default = "default_idle_timeout_seconds")]
    #[schemars(range(min = 10, max = 86400))]
    pub idle_timeout_seconds: u32,
    /// Bytes per second one lease's connections and log streams may carry, both ways together;
    /// unlimited when unset. At least 65536 (one relayed chunk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 65536))]
    pub max_bytes_per_second: Option<u32>,
    /// Whether buyers may read the logs of the lease pod's sidecars (probe, meter, attest) as well
    /// as their workload's: those are the provider's. Defaults to false.
    #[serde(default)]
    pub sidecar_logs: bool,
}

impl Default for AccessPolicy {
    fn default() -> AccessPolicy {
        AccessPolicy {
            max_connections: default_max_connections(),
            idle_timeout_seconds: default_idle_timeout_seconds(),
            max_bytes_per_second: None,
            sidecar_logs: false,
        }
    }
}

fn default_max_connections() -> u32 {
    64
}

fn default_idle_timeout_seconds() -> u32 {
    300
}

/// Outbound network access of lease pods.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum EgressPolicy {
    /// Public internet and cluster DNS; never private, link-local or metadata addresses.
    #[default]
    Internet,
    /// No outbound traffic at all.
    None,
}

/// Pod Security Standard level of lease namespaces. Privileged is not offered.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PodSecurityLevel {
    /// The restricted profile: non-root, no privilege escalation, all capabilities dropped.
    #[default]
    Restricted,
    /// The baseline profile, for images that cannot run as non-root.
    Baseline,
}

impl PodSecurityLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            PodSecurityLevel::Restricted => "restricted",
            PodSecurityLevel::Baseline => "baseline",
        }
    }
}

/// What the operator last observed and advertised for an offer.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuOfferStatus {
    /// The spec generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// What the offer is doing now, in one word; the Ready condition's message says more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<OfferState>,
    /// The price per GPU-hour with its denomination, for example "2.4 USDC".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<String>,
    /// The GPU models of the offer's nodes, comma-separated; kept while every GPU is leased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// GPUs free on the offer's nodes now, before the reserve and caps.
    #[serde(default)]
    pub idle_gpus: u32,
    /// GPUs advertised to the network: idle minus reserve, capped by maxGpus minus leased.
    #[serde(default)]
    pub advertised_gpus: u32,
    /// GPUs held by this offer's leases that have not ended.
    #[serde(default)]
    pub leased_gpus: u32,
    /// Most advertised GPUs on a single node: the largest lease that fits now.
    #[serde(default)]
    pub largest_block: u32,
    /// Capacity per GPU model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelCapacity>,
    /// Per-node breakdown, contributing nodes first, at most 64 entries (see nodesOmitted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeCapacity>,
    /// Nodes left out of `nodes` to keep the status small.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nodes_omitted: u32,
    /// The network's id for this offer, once published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer_id: Option<String>,
    /// When the offer was last published to the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_advertised: Option<Time>,
    /// Ready (the offer works as its spec says: True when Advertised or NotPublished),
    /// Advertised (it is in the network's book) and Degraded (part of it cannot be sold).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// What an offer is doing, in one word.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum OfferState {
    /// In the network's book: its advertised GPUs are for sale.
    Advertised,
    /// Not yet in the network's book: no network session has published it.
    NotPublished,
    /// spec.paused is true: withdrawn from the book, no new lease taken.
    Paused,
    /// spec.workload.allowedRegistries is empty: every lease would be refused, so it is not
    /// advertised.
    NoRegistries,
    /// Some of its nodes belong to an older offer selling the same resource; the rest sells.
    Degraded,
    /// The spec cannot be used (for example an invalid node selector).
    Invalid,
}

impl OfferState {
    pub fn as_str(self) -> &'static str {
        match self {
            OfferState::Advertised => "Advertised",
            OfferState::NotPublished => "NotPublished",
            OfferState::Paused => "Paused",
            OfferState::NoRegistries => "NoRegistries",
            OfferState::Degraded => "Degraded",
            OfferState::Invalid => "Invalid",
        }
    }
}

pub(super) fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Capacity of one GPU model within an offer.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelCapacity {
    /// GPU product name: the node label nvidia.com/gpu.product, or the productName attribute of
    /// the node's DRA devices.
    pub model: String,
    /// GPUs of this model free now.
    pub idle_gpus: u32,
    /// GPUs of this model advertised.
    pub advertised_gpus: u32,
    /// Most advertised GPUs of this model on one node.
    pub largest_block: u32,
}

/// One node's contribution to an offer.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCapacity {
    /// Node name.
    pub name: String,
    /// GPU product name, when the node is labelled with one or its DRA devices name one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Allocatable GPUs of the offer's resource.
    pub allocatable: u32,
    /// GPUs free: allocatable minus pod requests minus pending lease holds.
    pub free: u32,
    /// GPUs of this node advertised.
    pub advertised: u32,
    /// Why this node advertises nothing; absent when it advertises GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<NodeExclusion>,
}

/// Why a node advertises no GPU for an offer.
#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum NodeExclusion {
    /// The node's Ready condition is not True.
    NotReady,
    /// The node is cordoned (spec.unschedulable).
    Cordoned,
    /// The node has a NoSchedule or NoExecute taint the offer does not tolerate.
    Tainted,
    /// An older offer selling the same resource selects this node.
    ClaimedByOtherOffer,
    /// The node has none of the offer's GPU resource allocatable.
    NoGpus,
    /// Every GPU of the node is requested by pods or held by admitted leases.
    FullyUsed,
    /// The node's free GPUs are kept back by the offer's reserveGpus.
    Reserved,
    /// The offer's maxGpus, minus what is leased, is already advertised on other nodes.
    CapReached,
    /// The offer is paused.
    Paused,
}

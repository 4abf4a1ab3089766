//! `ComputeLease`: one lease from the network, running here.

// Each printcolumn(...) repeats `type_ = ...`, which clippy takes for a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::Price;

/// Spec of a ComputeLease. Immutable once created: the terms were agreed with the buyer.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "gpubridge.dev",
    doc = "A lease taken from the network, run here as a boxed GPU pod in its own namespace.",
    version = "v1alpha1",
    kind = "ComputeLease",
    plural = "computeleases",
    shortname = "cl",
    category = "gpubridge",
    status = "ComputeLeaseStatus",
    validation = Rule::new("size(self.metadata.name) <= 52").message("metadata.name must be at most 52 characters: the lease namespace is named after it"),
    printcolumn(name = "Offer", type_ = "string", json_path = ".spec.offerName"),
    printcolumn(name = "GPUs", type_ = "integer", json_path = ".spec.gpus"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Node", type_ = "string", json_path = ".status.node"),
    printcolumn(name = "Ends", type_ = "string", json_path = ".status.endsAt"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.termination.reason", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec is immutable: a lease's terms cannot change after it is created"))]
pub struct ComputeLeaseSpec {
    /// The network's id for this lease.
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"))]
    pub lease_id: String,
    /// Name of the GpuOffer this lease was taken under.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"))]
    pub offer_name: String,
    /// The buyer's ed25519 public key, base58.
    #[schemars(regex(pattern = r"^[1-9A-HJ-NP-Za-km-z]{32,44}$"))]
    pub buyer_public_key: String,
    /// GPUs leased, all on one node.
    #[schemars(range(min = 1, max = 64))]
    pub gpus: u32,
    /// Resource the GPUs are counted in: the offer's extended resourceName, or
    /// "<deviceClassName>.deviceclass.resource.k8s.io/devices" for an offer of DRA devices.
    #[schemars(regex(
        pattern = r"^(nvidia\.com/(gpu|mig-[1-7]g\.[0-9]+gb(\.[a-z0-9]+)?)|[a-z0-9]([a-z0-9.-]{0,200}[a-z0-9])?\.deviceclass\.resource\.k8s\.io/devices)$"
    ))]
    pub resource_name: String,
    /// GPU model the buyer asked for, when it asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub gpu_model: Option<String>,
    /// Lease length in seconds, counted from the moment the workload runs.
    #[schemars(range(min = 60, max = 31536000))]
    pub duration_seconds: u64,
    /// Agreed price per GPU-hour.
    pub price: Price,
    /// The buyer's workload.
    pub workload: LeaseWorkload,
    /// The buyer's order exactly as the network delivered it, with the signatures that authorise it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_order: Option<SignedOrder>,
}

/// The buyer's container.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LeaseWorkload {
    /// Container image, including its registry, for example "ghcr.io/acme/train:1.2" or a digest.
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?/')").message("workload.image must name its registry host, for example ghcr.io/org/image:tag"))]
    pub image: String,
    /// Entrypoint; the image's own when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 4096)))]
    pub command: Vec<String>,
    /// Arguments to the entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 4096)))]
    pub args: Vec<String>,
    /// Environment variables. Plain values only: a lease can reference no Secret or ConfigMap.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub env: Vec<EnvVar>,
    /// Ports the workload listens on. Only the operator's pods reach them (TCP), to relay the
    /// buyer's `order connect`; nothing else enters a lease namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub ports: Vec<ContainerPort>,
    /// CPU for the workload container, a Kubernetes quantity such as "8" or "7500m".
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message("workload.cpu must be a positive quantity such as 8 or 7500m"))]
    #[schemars(length(max = 32))]
    pub cpu: String,
    /// Memory for the workload container, a Kubernetes quantity such as "64Gi".
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message("workload.memory must be a positive quantity such as 64Gi"))]
    #[schemars(length(max = 32))]
    pub memory: String,
}

/// One environment variable with a literal value.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    /// Variable name, a C identifier.
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"))]
    pub name: String,
    /// The literal value. Defaults to the empty string.
    #[serde(default)]
    #[schemars(length(max = 32768))]
    pub value: String,
}

/// A port the workload listens on.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    /// Port name, an IANA service name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$"))]
    pub name: Option<String>,
    /// Port number.
    #[schemars(range(min = 1, max = 65535))]
    pub container_port: u16,
    /// The protocol: TCP, UDP or SCTP. Defaults to TCP.
    #[serde(default)]
    pub protocol: PortProtocol,
}

/// Transport protocol of a port.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum PortProtocol {
    #[default]
    TCP,
    UDP,
    SCTP,
}

/// The order as the network delivered it: the signed bytes and their signatures.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignedOrder {
    /// The lease as the network signed it (protobuf `LeaseBody`, which carries the buyer's
    /// signed order), base64.
    #[schemars(length(max = 131072))]
    pub body: String,
    /// The buyer's ed25519 signature over the order inside the body, base58.
    #[schemars(length(max = 128))]
    pub buyer_signature: String,
    /// The network's ed25519 signature over the body, base58.
    #[schemars(length(max = 128))]
    pub network_signature: String,
}

/// Where a lease is in its life.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, JsonSchema)]
pub enum LeasePhase {
    /// Accepted; the namespace and pod are being created.
    #[default]
    Pending,
    /// The pod exists and waits for a node or its containers.
    Scheduling,
    /// The workload runs.
    Running,
    /// The workload finished successfully.
    Succeeded,
    /// The workload or the node under it failed.
    Failed,
    /// The lease reached its end time.
    Expired,
    /// The lease was ended early, by the network or the provider.
    Terminated,
}

impl LeasePhase {
    pub const ALL: [LeasePhase; 7] = [
        LeasePhase::Pending,
        LeasePhase::Scheduling,
        LeasePhase::Running,
        LeasePhase::Succeeded,
        LeasePhase::Failed,
        LeasePhase::Expired,
        LeasePhase::Terminated,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            LeasePhase::Succeeded
                | LeasePhase::Failed
                | LeasePhase::Expired
                | LeasePhase::Terminated
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LeasePhase::Pending => "Pending",
            LeasePhase::Scheduling => "Scheduling",
            LeasePhase::Running => "Running",
            LeasePhase::Succeeded => "Succeeded",
            LeasePhase::Failed => "Failed",
            LeasePhase::Expired => "Expired",
            LeasePhase::Terminated => "Terminated",
        }
    }
}

/// Whose fault a lease's end was.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Fault {
    /// Nobody's: the workload completed or the lease ran its full time.
    None,
    /// The buyer's workload.
    Tenant,
    /// The cluster that hosts the lease.
    Provider,
    /// The network, or the terms it delivered.
    Network,
}

/// Why a lease ended.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum TerminationReason {
    /// The workload exited successfully.
    Completed,
    /// The lease ran for its whole duration.
    Expired,
    /// The workload exited with an error.
    WorkloadFailed,
    /// The workload's image could not be pulled.
    ImagePullFailed,
    /// The workload's container could not be created from its spec or image.
    WorkloadInvalid,
    /// The lease pod was preempted by a higher-priority workload of the provider.
    Preempted,
    /// The node under the lease pod became NotReady or unreachable.
    NodeLost,
    /// The lease pod was evicted or deleted by someone other than the operator.
    PodLost,
    /// No node could run the lease pod before the scheduling deadline.
    SchedulingTimeout,
    /// The API refused part of the lease's box (an admission policy, RBAC, a missing
    /// PriorityClass or RuntimeClass): the provider's set-up cannot run the lease.
    BoxRejected,
    /// The offer the lease was taken under no longer exists.
    OfferGone,
    /// The lease's terms are outside its offer's terms.
    TermsViolated,
    /// The network ended the lease on its own deadlines (a lapsed re-probe, for one) and
    /// refuses its receipts as closed.
    CancelledByNetwork,
    /// The provider deleted the ComputeLease before it ended.
    DeletedByProvider,
}

impl TerminationReason {
    /// Whose fault an end for this reason is.
    pub fn fault(self) -> Fault {
        use TerminationReason::*;
        match self {
            Completed | Expired => Fault::None,
            WorkloadFailed | ImagePullFailed | WorkloadInvalid => Fault::Tenant,
            Preempted | NodeLost | PodLost | SchedulingTimeout | BoxRejected | OfferGone
            | DeletedByProvider => Fault::Provider,
            TermsViolated | CancelledByNetwork => Fault::Network,
        }
    }

    /// The phase a lease ending for this reason lands in.
    pub fn phase(self) -> LeasePhase {
        use TerminationReason::*;
        match self {
            Completed => LeasePhase::Succeeded,
            Expired => LeasePhase::Expired,
            CancelledByNetwork | DeletedByProvider => LeasePhase::Terminated,
            WorkloadFailed | ImagePullFailed | WorkloadInvalid | Preempted | NodeLost | PodLost
            | SchedulingTimeout | BoxRejected | OfferGone | TermsViolated => LeasePhase::Failed,
        }
    }

    pub fn as_str(self) -> &'static str {
        use TerminationReason::*;
        match self {
            Completed => "Completed",
            Expired => "Expired",
            WorkloadFailed => "WorkloadFailed",
            ImagePullFailed => "ImagePullFailed",
            WorkloadInvalid => "WorkloadInvalid",
            Preempted => "Preempted",
            NodeLost => "NodeLost",
            PodLost => "PodLost",
            SchedulingTimeout => "SchedulingTimeout",
            BoxRejected => "BoxRejected",
            OfferGone => "OfferGone",
            TermsViolated => "TermsViolated",
            CancelledByNetwork => "CancelledByNetwork",
            DeletedByProvider => "DeletedByProvider",
        }
    }
}

/// How and why a lease ended.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Termination {
    /// Why the lease ended.
    pub reason: TerminationReason,
    /// Whose fault the end was.
    pub fault: Fault,
    /// Details for a person.
    #[serde(default)]
    pub message: String,
}

impl Termination {
    pub fn new(reason: TerminationReason, message: impl Into<String>) -> Self {
        Termination {
            reason,
            fault: reason.fault(),
            message: message.into(),
        }
    }
}

/// What the lease has used, from accepted meter receipts.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeaseUsage {
    /// Allocated GPU-seconds covered by accepted receipts.
    pub gpu_seconds: u64,
    /// Energy drawn by the lease's GPUs, in joules.
    pub energy_joules: u64,
    /// Mean GPU utilization over the accepted receipts, in percent.
    pub utilization_percent: u32,
    /// Receipts accepted so far.
    pub receipts_accepted: u64,
    /// Hash of the last accepted receipt, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_head: Option<String>,
    /// End of the last accepted receipt's window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metered_through: Option<Time>,
    /// Paid to the provider from the buyer's escrow so far, in the smallest unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charged: Option<crate::wire::amount::Amount>,
    /// The meter's final receipt was accepted: nothing more will be metered.
    #[serde(default)]
    pub final_received: bool,
    /// Buyer access over the accepted receipts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<LeaseAccess>,
}

/// Buyer access relayed to a lease's workload.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeaseAccess {
    /// Bytes from the buyer to the workload's ports.
    pub bytes_to_workload: u64,
    /// Bytes from the workload's ports to the buyer.
    pub bytes_from_workload: u64,
    /// Connections opened to the workload's ports.
    pub connections: u64,
    /// Log streams read.
    pub log_streams: u64,
}

/// What the attestation sidecar proved about where the lease runs.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LeaseAttestation {
    /// "hardware-attested", "challenge-verified" or "self-reported": the stronger of what the
    /// evidence and the GPU probe earned.
    pub trust_tier: String,
    /// When evidence was last verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verified: Option<Time>,
    /// SHA-256 of the last verified evidence, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_digest: Option<String>,
    /// The image the kubelet ran for the workload, as the pod's status names it
    /// (`repository@sha256:…`), recorded by the network with the evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// When the network recorded the GPU probe passed: metering starts no earlier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_passed_at: Option<Time>,
    /// What the probe passed (the calibration band matched) or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
    /// When evidence first verified the GPUs as hardware-attested: metering starts no earlier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_attested_since: Option<Time>,
}

/// What the operator observed of a lease.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputeLeaseStatus {
    /// Where the lease is in its life.
    #[serde(default)]
    pub phase: LeasePhase,
    /// The lease's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The lease pod's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The node the lease pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// When the workload started running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the lease ends: startedAt plus the duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<Time>,
    /// When the lease ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// Why the lease ended, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination: Option<Termination>,
    /// Usage from accepted meter receipts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<LeaseUsage>,
    /// Buyer access relayed to the lease so far, as the operator counts it; the meter carries it
    /// into its receipts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<LeaseAccess>,
    /// Attestation of where the lease runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<LeaseAttestation>,
    /// When the end of the lease was reported to the network, which settles its escrow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_at: Option<Time>,
    /// Ready (the lease's phase), Metered and Attested (its sidecars' receipts and evidence).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

impl ComputeLeaseStatus {
    /// True until `grace` has passed since the lease finished (and while it has not).
    pub fn finished_within(&self, now: jiff::Timestamp, grace: std::time::Duration) -> bool {
        self.finished_at
            .as_ref()
            .is_none_or(|t| now.duration_since(t.0).unsigned_abs() < grace)
    }
}

impl ComputeLease {
    /// One of the lease's conditions as it should be now, keeping its transition time when its
    /// status is unchanged.
    pub fn condition(
        &self,
        type_: &str,
        ok: bool,
        reason: &str,
        message: &str,
        now: jiff::Timestamp,
    ) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        let previous = self
            .status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default();
        super::conditions::condition(
            previous,
            type_,
            ok,
            reason,
            message,
            self.metadata.generation,
            now,
        )
    }

    /// The lease's phase, Pending before any status was written.
    pub fn phase(&self) -> LeasePhase {
        self.status.as_ref().map(|s| s.phase).unwrap_or_default()
    }
}

//! Builders of everything a lease runs in (DESIGN §3 step 3). Pure: they never touch the API.
//!
//! A lease gets its own namespace, and in it a default-deny NetworkPolicy (but for the
//! operator's pods, to the workload's declared ports), a ResourceQuota and a LimitRange that keep
//! it to what it bought, a Secret with its own key and certificate, the operator's right to read
//! its log, for an offer of DRA devices a ResourceClaim, and one Pod: the buyer's container plus
//! the meter and attest native sidecars.

mod access;
mod claim;
mod namespace;
mod pod;
mod policy;
mod secret;

pub use access::{LOG_READER_BINDING, LogReader, log_reader_binding};
pub use claim::{CLAIM_NAME, claim};
pub use namespace::namespace;
pub use pod::{
    ATTEST_CONTAINER, METER_CONTAINER, POD_NAME, PROBE_CONTAINER, WORKLOAD_CONTAINER,
    parse_sidecar_env, pod,
};
pub use policy::{
    NODE_LOCAL_DNS, PRIVATE_IPV4_RANGES, ipv6_internet, limit_range, network_policy, resource_quota,
};
pub use secret::{IDENTITY_SECRET, LeaseIdentity, secret};

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use sha2::{Digest, Sha256};

use crate::crd::{ComputeLeaseSpec, LEASE_LABEL, WorkloadPolicy};

/// Annotation with the hash of the desired state an object was last written from.
pub const SPEC_HASH_ANNOTATION: &str = "gpubridge.dev/spec-hash";

/// Labels of the operator's pods: lease pods may reach them on the collector port, nothing else.
pub const OPERATOR_POD_LABELS: [(&str, &str); 2] = [
    ("app.kubernetes.io/name", "gpubridge"),
    ("app.kubernetes.io/component", "operator"),
];

/// Where a lease's sidecars deliver receipts and evidence: the operator's collector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectorEndpoint {
    /// `http://host:port` as the sidecars dial it.
    pub url: String,
    /// The operator's namespace and the collector's port, for the lease's NetworkPolicy.
    pub namespace: String,
    pub port: u16,
}

/// Everything the builders need to know about one lease. Assembled by the lease controller from
/// the ComputeLease, its offer and the capacity engine.
#[derive(Clone, Debug)]
pub struct LeaseBox<'a> {
    /// The ComputeLease's name.
    pub lease_name: &'a str,
    pub spec: &'a ComputeLeaseSpec,
    /// The controller owner reference to the ComputeLease: deleting it deletes all of this.
    pub owner: OwnerReference,
    pub policy: &'a WorkloadPolicy,
    pub tolerations: &'a [k8s_openapi::api::core::v1::Toleration],
    /// Nodes the pod may land on, from the capacity engine.
    pub eligible_nodes: &'a [String],
    /// Image of the operator, whose binary the sidecars run.
    pub sidecar_image: &'a str,
    /// Environment the provider gives the sidecars (`--sidecar-env`).
    pub sidecar_env: &'a [k8s_openapi::api::core::v1::EnvVar],
    pub collector: &'a CollectorEndpoint,
    /// How the operator reads the lease pod's log, when it may.
    pub log_reader: Option<&'a LogReader>,
    /// Seconds the pod may wait for a node and its images before the lease fails.
    pub scheduling_timeout_seconds: u64,
}

impl LeaseBox<'_> {
    /// The lease's namespace: `lease-` and the ComputeLease's name (at most 52 characters, by
    /// the CRD's rule, so that the result is a valid namespace name).
    pub fn namespace(&self) -> String {
        namespace_for(self.lease_name)
    }

    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LEASE_LABEL.to_string(), self.lease_name.to_string()),
            (
                "app.kubernetes.io/managed-by".to_string(),
                "gpubridge".to_string(),
            ),
            (
                "app.kubernetes.io/part-of".to_string(),
                "gpubridge".to_string(),
            ),
        ])
    }

    /// Metadata of an object named `name` in the lease namespace, owned by the lease.
    fn metadata(&self, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.namespace()),
            labels: Some(self.labels()),
            owner_references: Some(vec![self.owner.clone()]),
            ..Default::default()
        }
    }
}

/// The namespace a ComputeLease named `lease_name` runs in.
pub fn namespace_for(lease_name: &str) -> String {
    format!("lease-{lease_name}")
}

/// Stamps an object with the hash of its desired state, so that a reconcile can tell whether the
/// live object was written from the same desired state without comparing server-defaulted fields.
fn stamped<K: Resource + serde::Serialize>(mut object: K) -> K {
    let json = serde_json::to_vec(&object).expect("Kubernetes objects serialize to JSON");
    let hash = hex::encode(&Sha256::digest(&json)[..8]);
    object
        .meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(SPEC_HASH_ANNOTATION.to_string(), hash);
    object
}

/// The desired-state hash an object was stamped with, if any.
pub fn spec_hash_of<K: Resource>(object: &K) -> Option<&str> {
    object
        .meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(SPEC_HASH_ANNOTATION))
        .map(String::as_str)
}

#[cfg(test)]
mod tests;

//! What buyers' access needs inside the box (DESIGN §9): the operator's right to read the lease
//! pod's log, granted in the lease namespace only.

use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};

use super::LeaseBox;

/// Name of the RoleBinding that lets the operator read logs in a lease namespace.
pub const LOG_READER_BINDING: &str = "gpubridge-log-reader";

/// How the operator reads lease pods' logs: the ClusterRole granting `pods/log` (bound in no
/// namespace but lease ones) and the operator's service account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogReader {
    pub cluster_role: String,
    pub service_account: String,
}

/// Binds the log reader's ClusterRole to the operator's service account in the lease's
/// namespace, so that `pods/log` is the operator's there and nowhere else; none when the
/// operator was given no such role. Created once and never changed, like the identity.
pub fn log_reader_binding(b: &LeaseBox) -> Option<RoleBinding> {
    let reader = b.log_reader?;
    Some(RoleBinding {
        metadata: b.metadata(LOG_READER_BINDING),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_string()),
            kind: "ClusterRole".to_string(),
            name: reader.cluster_role.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_string(),
            name: reader.service_account.clone(),
            namespace: Some(b.collector.namespace.clone()),
            api_group: None,
        }]),
    })
}

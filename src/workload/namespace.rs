//! The lease namespace, labelled for Pod Security admission.

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{LeaseBox, stamped};

pub fn namespace(b: &LeaseBox) -> Namespace {
    let level = b.policy.pod_security_level.as_str();
    let mut labels = b.labels();
    for mode in ["enforce", "audit", "warn"] {
        labels.insert(
            format!("pod-security.kubernetes.io/{mode}"),
            level.to_string(),
        );
        labels.insert(
            format!("pod-security.kubernetes.io/{mode}-version"),
            "latest".to_string(),
        );
    }
    stamped(Namespace {
        metadata: ObjectMeta {
            name: Some(b.namespace()),
            labels: Some(labels),
            owner_references: Some(vec![b.owner.clone()]),
            ..Default::default()
        },
        ..Default::default()
    })
}

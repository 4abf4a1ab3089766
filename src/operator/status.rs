//! Every status write of the operator: one field manager's part (`crd::status_parts`),
//! server-side applied with apiVersion and kind taken from the type.

use std::fmt::Debug;

use kube::api::{Patch, PatchParams};
use kube::core::ClusterResourceScope;
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Applies `part` as `manager`'s share of cluster-scoped `name`'s status. With
/// `resource_version`, the write fails (409) when the object changed since that version was
/// read: a decision made from a stale read is never written.
pub async fn apply_status<K>(
    client: &Client,
    name: &str,
    manager: &str,
    resource_version: Option<&str>,
    part: &(impl Serialize + Debug),
) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = (), Scope = ClusterResourceScope> + Clone + Debug + DeserializeOwned,
{
    let patch = status_patch::<K, _>(resource_version, part);
    Api::<K>::all(client.clone())
        .patch_status(
            name,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(&patch),
        )
        .await
}

fn status_patch<'a, K: Resource<DynamicType = ()>, S>(
    resource_version: Option<&'a str>,
    status: &'a S,
) -> StatusPatch<'a, S> {
    StatusPatch {
        api_version: K::api_version(&()),
        kind: K::kind(&()),
        metadata: Metadata { resource_version },
        status,
    }
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct StatusPatch<'a, S> {
    api_version: std::borrow::Cow<'static, str>,
    kind: std::borrow::Cow<'static, str>,
    metadata: Metadata<'a>,
    status: &'a S,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Metadata<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    resource_version: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ComputeLease, GpuOffer, LeaseReportPart};

    #[test]
    fn the_patch_names_the_type_and_carries_the_version_read() {
        let part = LeaseReportPart {
            reported_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2027-01-01T00:00:00Z".parse().unwrap(),
            ),
            conditions: vec![],
        };
        let patch = status_patch::<ComputeLease, _>(Some("7"), &part);
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            serde_json::json!({
                "apiVersion": "gpubridge.dev/v1alpha1",
                "kind": "ComputeLease",
                "metadata": {"resourceVersion": "7"},
                "status": {"reportedAt": "2027-01-01T00:00:00Z"},
            })
        );
        let offer = serde_json::to_value(status_patch::<GpuOffer, _>(None, &part)).unwrap();
        assert_eq!(offer["kind"], "GpuOffer");
        assert!(offer["metadata"].get("resourceVersion").is_none());
    }
}

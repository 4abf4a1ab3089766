//! The second inventory source (DESIGN §2): Dynamic Resource Allocation. A node's devices are
//! those its driver publishes in ResourceSlices; those in use are the ones allocated to
//! ResourceClaims. Reduced to the few fields the formula reads, as they arrive.

use std::collections::BTreeMap;

use k8s_openapi::api::resource::v1::{DeviceAttribute, ResourceClaim, ResourceSlice};
use kube::ResourceExt;

pub use crate::crd::{device_class_of, dra_resource};

/// One device of a slice, with its attributes as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceFacts {
    pub name: String,
    pub attributes: BTreeMap<String, String>,
}

/// A node-local ResourceSlice: whose devices, on which node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceFacts {
    pub name: String,
    pub node: String,
    pub driver: String,
    pub pool: String,
    pub devices: Vec<DeviceFacts>,
}

fn attribute_text(a: &DeviceAttribute) -> Option<String> {
    a.string
        .clone()
        .or_else(|| a.version.clone())
        .or_else(|| a.int.map(|i| i.to_string()))
        .or_else(|| a.bool.map(|b| b.to_string()))
}

impl SliceFacts {
    /// `None` for slices not bound to one node (network-attached devices): a lease lands on one
    /// node, so only node-local devices can be offered.
    pub fn from_slice(slice: &ResourceSlice) -> Option<SliceFacts> {
        let node = slice.spec.node_name.clone()?;
        let devices = slice
            .spec
            .devices
            .iter()
            .flatten()
            .map(|d| DeviceFacts {
                name: d.name.clone(),
                attributes: d
                    .attributes
                    .iter()
                    .flatten()
                    .filter_map(|(k, v)| attribute_text(v).map(|t| (k.clone(), t)))
                    .collect(),
            })
            .collect();
        Some(SliceFacts {
            name: slice.name_any(),
            node,
            driver: slice.spec.driver.clone(),
            pool: slice.spec.pool.name.clone(),
            devices,
        })
    }
}

/// A device allocated to a claim.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceRef {
    pub driver: String,
    pub pool: String,
    pub device: String,
}

/// The devices allocated to a ResourceClaim; none until the scheduler allocates it.
pub fn allocated_devices(claim: &ResourceClaim) -> Vec<DeviceRef> {
    claim
        .status
        .as_ref()
        .and_then(|s| s.allocation.as_ref())
        .and_then(|a| a.devices.as_ref())
        .and_then(|d| d.results.as_ref())
        .map(|results| {
            results
                .iter()
                .map(|r| DeviceRef {
                    driver: r.driver.clone(),
                    pool: r.pool.clone(),
                    device: r.device.clone(),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_local_slice_keeps_its_devices_and_their_attributes() {
        let slice: ResourceSlice = serde_yaml::from_str(
            r#"
metadata: {name: n1-gpu}
spec:
  driver: gpu.example.com
  nodeName: n1
  pool: {name: n1, generation: 1, resourceSliceCount: 1}
  devices:
  - name: gpu-0
    attributes:
      productName: {string: NVIDIA H100}
      driverVersion: {version: 580.1.0}
      index: {int: 0}
  - name: gpu-1
"#,
        )
        .unwrap();
        let facts = SliceFacts::from_slice(&slice).unwrap();
        assert_eq!((facts.node.as_str(), facts.pool.as_str()), ("n1", "n1"));
        assert_eq!(facts.devices.len(), 2);
        assert_eq!(facts.devices[0].attributes["productName"], "NVIDIA H100");
        assert_eq!(facts.devices[0].attributes["driverVersion"], "580.1.0");
        assert_eq!(facts.devices[0].attributes["index"], "0");
        let shared: ResourceSlice = serde_yaml::from_str(
            "{metadata: {name: s}, spec: {driver: d, allNodes: true, pool: {name: p, generation: 1, resourceSliceCount: 1}}}",
        )
        .unwrap();
        assert_eq!(SliceFacts::from_slice(&shared), None);
    }

    #[test]
    fn a_claim_holds_devices_only_once_allocated() {
        let pending: ResourceClaim =
            serde_yaml::from_str("{metadata: {name: c, namespace: ns}, spec: {}}").unwrap();
        assert!(allocated_devices(&pending).is_empty());
        let allocated: ResourceClaim = serde_yaml::from_str(
            r#"
metadata: {name: c, namespace: ns}
spec: {}
status:
  allocation:
    devices:
      results:
      - {request: gpus, driver: gpu.example.com, pool: n1, device: gpu-1}
"#,
        )
        .unwrap();
        assert_eq!(
            allocated_devices(&allocated),
            vec![DeviceRef {
                driver: "gpu.example.com".into(),
                pool: "n1".into(),
                device: "gpu-1".into()
            }]
        );
    }

    #[test]
    fn resource_names_round_trip_to_their_device_class() {
        let resource = dra_resource("gpu.example.com");
        assert_eq!(
            resource,
            "gpu.example.com.deviceclass.resource.k8s.io/devices"
        );
        assert_eq!(device_class_of(&resource), Some("gpu.example.com"));
        assert_eq!(device_class_of("nvidia.com/gpu"), None);
    }
}

//! A kubelet device plugin (the kubelet's `deviceplugin/v1beta1` API) for nodes without GPUs,
//! such as the test bed's real node: it advertises the simulated GPU source's GPUs as
//! `nvidia.com/gpu`, their stable UUIDs as device ids, and gives each container the GPUs the
//! kubelet allocated to it in `NVIDIA_VISIBLE_DEVICES`, as NVIDIA's plugin does with its envvar
//! strategy, so that the simulated source inside the container sees exactly those.
//!
//! `allocate` decides (pure, table-tested); `service` speaks gRPC over the kubelet's sockets.

use std::collections::{BTreeMap, BTreeSet};

pub mod service;

/// Generated from `proto/k8s/deviceplugin/v1beta1/api.proto`.
#[allow(clippy::all, missing_docs)]
pub mod api {
    tonic::include_proto!("v1beta1");
}

/// The extended resource lease pods request.
pub const RESOURCE_NAME: &str = "nvidia.com/gpu";
/// The variable NVIDIA's container runtime, and the simulated source, read.
pub const VISIBLE_DEVICES: &str = "NVIDIA_VISIBLE_DEVICES";

/// Why an allocation request is refused; the kubelet then fails the container's start.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocateError {
    #[error(
        "container_requests[{container}].devices_ids: {id:?} is not a device this plugin advertises"
    )]
    Unknown { container: usize, id: String },
    #[error("container_requests[{container}].devices_ids: {id:?} is requested twice")]
    Duplicate { container: usize, id: String },
    #[error("container_requests[{container}].devices_ids: empty; there is nothing to allocate")]
    Empty { container: usize },
}

/// The environment of each container in `requests` (one list of device ids each, as the
/// kubelet chose them from `advertised`): its GPUs in `NVIDIA_VISIBLE_DEVICES`, in the order
/// the kubelet gave them.
pub fn allocate(
    advertised: &[String],
    requests: &[Vec<String>],
) -> Result<Vec<BTreeMap<String, String>>, AllocateError> {
    requests
        .iter()
        .enumerate()
        .map(|(container, ids)| {
            if ids.is_empty() {
                return Err(AllocateError::Empty { container });
            }
            let mut seen = BTreeSet::new();
            for id in ids {
                if !advertised.contains(id) {
                    return Err(AllocateError::Unknown {
                        container,
                        id: id.clone(),
                    });
                }
                if !seen.insert(id) {
                    return Err(AllocateError::Duplicate {
                        container,
                        id: id.clone(),
                    });
                }
            }
            Ok(BTreeMap::from([(
                VISIBLE_DEVICES.to_string(),
                ids.join(","),
            )]))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    type Allocation = Result<Vec<BTreeMap<String, String>>, AllocateError>;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn each_container_sees_exactly_its_devices_or_the_request_is_refused() {
        let advertised = ids(&["GPU-a", "GPU-b", "GPU-c"]);
        let env = |list: &str| BTreeMap::from([(VISIBLE_DEVICES.to_string(), list.to_string())]);
        let cases: &[(&[&[&str]], Allocation)] = &[
            (&[&["GPU-b"]], Ok(vec![env("GPU-b")])),
            (
                &[&["GPU-c", "GPU-a"], &["GPU-b"]],
                Ok(vec![env("GPU-c,GPU-a"), env("GPU-b")]),
            ),
            (&[], Ok(vec![])),
            (
                &[&["GPU-a"], &["GPU-z"]],
                Err(AllocateError::Unknown {
                    container: 1,
                    id: "GPU-z".into(),
                }),
            ),
            (
                &[&["GPU-a", "GPU-a"]],
                Err(AllocateError::Duplicate {
                    container: 0,
                    id: "GPU-a".into(),
                }),
            ),
            (&[&[]], Err(AllocateError::Empty { container: 0 })),
        ];
        for (requests, expected) in cases {
            let requests: Vec<Vec<String>> = requests.iter().map(|r| ids(r)).collect();
            assert_eq!(&allocate(&advertised, &requests), expected, "{requests:?}");
        }
        assert_eq!(
            allocate(&advertised, &[ids(&["GPU-z"])])
                .unwrap_err()
                .to_string(),
            "container_requests[0].devices_ids: \"GPU-z\" is not a device this plugin advertises"
        );
    }
}

//! The lease's ResourceClaim, for an offer of DRA devices: the workload and both sidecars
//! reference it, so the sidecars see exactly the lease's GPUs.

use k8s_openapi::api::resource::v1::{
    DeviceClaim, DeviceRequest, ExactDeviceRequest, ResourceClaim, ResourceClaimSpec,
};

use super::LeaseBox;
use crate::capacity::dra::device_class_of;

/// Name of the claim, and of its entry in the pod's `resourceClaims`.
pub const CLAIM_NAME: &str = "gpus";

/// The lease's claim, when its GPUs come from a DeviceClass. Its spec never changes, so it is
/// created once and not stamped.
pub fn claim(b: &LeaseBox) -> Option<ResourceClaim> {
    let device_class = device_class_of(&b.spec.resource_name)?;
    Some(ResourceClaim {
        metadata: b.metadata(CLAIM_NAME),
        spec: ResourceClaimSpec {
            devices: Some(DeviceClaim {
                requests: Some(vec![DeviceRequest {
                    name: CLAIM_NAME.to_string(),
                    exactly: Some(ExactDeviceRequest {
                        device_class_name: device_class.to_string(),
                        allocation_mode: Some("ExactCount".to_string()),
                        count: Some(i64::from(b.spec.gpus)),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
        .into(),
        status: None,
    })
}

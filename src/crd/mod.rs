//! The operator's resources, `GpuOffer` and `ComputeLease`, and their schema-level validation.
//!
//! Validation a person meets at `kubectl apply` lives in the schema: patterns, ranges and CEL
//! rules (`x-kubernetes-validations`). `crds/` holds the YAML generated from these types.

mod common;
mod lease;
mod offer;

pub use common::*;
pub use lease::*;
pub use offer::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Every CRD of the operator with the file it is written to under `crds/`.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("gpuoffers.gpubridge.dev.yaml", GpuOffer::crd()),
        ("computeleases.gpubridge.dev.yaml", ComputeLease::crd()),
    ]
}

/// One CRD as the YAML document written to `crds/`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(crd)
}

/// Every CRD as one multi-document YAML stream, for `gpubridge crdgen | kubectl apply -f -`.
pub fn all_as_yaml_stream() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for (_, crd) in all() {
        out.push_str("---\n");
        out.push_str(&to_yaml(&crd)?);
    }
    Ok(out)
}

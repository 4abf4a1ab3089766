//! The operator's resources, `GpuOffer` and `ComputeLease`, and their schema-level validation.
//!
//! Validation a person meets at `kubectl apply` lives in the schema: patterns, ranges and CEL
//! rules (`x-kubernetes-validations`). `crds/` holds the YAML generated from these types.

mod common;
pub mod conditions;
mod lease;
mod offer;
mod status_parts;

pub use common::*;
pub use lease::*;
pub use offer::*;
pub use status_parts::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Every CRD of the operator with the file it is written to under `crds/`.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        (
            "gpuoffers.gpubridge.dev.yaml",
            without_unsigned_formats(GpuOffer::crd()),
        ),
        (
            "computeleases.gpubridge.dev.yaml",
            without_unsigned_formats(ComputeLease::crd()),
        ),
    ]
}

/// schemars marks unsigned integers with formats ("uint32", …) the apiserver does not know and
/// warns about on every apply; their bounds are already in the schema's minimum and maximum.
fn without_unsigned_formats(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn strip(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                if map
                    .get("format")
                    .and_then(|f| f.as_str())
                    .is_some_and(|f| f.starts_with("uint"))
                {
                    map.remove("format");
                    map.entry("minimum").or_insert(serde_json::json!(0.0));
                }
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(crd).expect("CRDs serialize");
    strip(&mut value);
    serde_json::from_value(value).expect("a CRD with fewer formats is still a CRD")
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

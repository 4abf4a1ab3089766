//! A pod's effective request of a resource, by Kubernetes' own rule
//! (`k8s.io/component-helpers/resource.PodRequests`):
//!
//! - app containers and restartable init containers (native sidecars) run together, so their
//!   requests add up;
//! - each ordinary init container runs alone, next to the sidecars started before it;
//! - the pod needs the larger of the two, plus its RuntimeClass overhead.

use k8s_openapi::api::core::v1::{Container, PodSpec};

use super::quantity::{Rounding, parse_count};

/// Effective request of `resource` by a pod with this spec, in whole devices.
pub fn effective_request(spec: &PodSpec, resource: &str) -> u32 {
    let mut running_together: u32 = spec
        .containers
        .iter()
        .map(|c| container_request(c, resource))
        .fold(0, u32::saturating_add);
    let mut sidecars_so_far: u32 = 0;
    let mut init_peak: u32 = 0;
    for init in spec.init_containers.iter().flatten() {
        let request = container_request(init, resource);
        let at_this_step = if is_restartable(init) {
            sidecars_so_far = sidecars_so_far.saturating_add(request);
            running_together = running_together.saturating_add(request);
            sidecars_so_far
        } else {
            request.saturating_add(sidecars_so_far)
        };
        init_peak = init_peak.max(at_this_step);
    }
    let overhead = spec
        .overhead
        .as_ref()
        .and_then(|o| o.get(resource))
        .and_then(|q| parse_count(&q.0, Rounding::Up))
        .unwrap_or(0);
    running_together.max(init_peak).saturating_add(overhead)
}

/// A container's request, falling back to its limit as the apiserver does for extended resources.
fn container_request(container: &Container, resource: &str) -> u32 {
    let Some(resources) = container.resources.as_ref() else {
        return 0;
    };
    resources
        .requests
        .as_ref()
        .and_then(|r| r.get(resource))
        .or_else(|| resources.limits.as_ref().and_then(|l| l.get(resource)))
        .and_then(|q| parse_count(&q.0, Rounding::Up))
        .unwrap_or(0)
}

fn is_restartable(container: &Container) -> bool {
    container.restart_policy.as_deref() == Some("Always")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    const GPU: &str = "nvidia.com/gpu";

    fn spec(yaml: &str) -> PodSpec {
        let pod: Pod = serde_yaml::from_str(yaml).expect("fixture parses");
        pod.spec.expect("fixture has a spec")
    }

    #[test]
    fn table() {
        let cases: &[(&str, u32, &str)] = &[
            ("no resources at all", 0, "spec: {containers: [{name: a}]}"),
            (
                "containers add up",
                3,
                r#"spec: {containers: [
                    {name: a, resources: {requests: {nvidia.com/gpu: "1"}}},
                    {name: b, resources: {requests: {nvidia.com/gpu: "2"}}}]}"#,
            ),
            (
                "limit stands in for a missing request",
                4,
                r#"spec: {containers: [{name: a, resources: {limits: {nvidia.com/gpu: "4"}}}]}"#,
            ),
            (
                "an ordinary init container larger than the app wins",
                8,
                r#"spec: {
                    initContainers: [{name: i, resources: {requests: {nvidia.com/gpu: "8"}}}],
                    containers: [{name: a, resources: {requests: {nvidia.com/gpu: "2"}}}]}"#,
            ),
            (
                "an ordinary init container smaller than the app does not add",
                2,
                r#"spec: {
                    initContainers: [{name: i, resources: {requests: {nvidia.com/gpu: "1"}}}],
                    containers: [{name: a, resources: {requests: {nvidia.com/gpu: "2"}}}]}"#,
            ),
            (
                "a native sidecar adds to the app containers",
                3,
                r#"spec: {
                    initContainers: [{name: s, restartPolicy: Always, resources: {requests: {nvidia.com/gpu: "1"}}}],
                    containers: [{name: a, resources: {requests: {nvidia.com/gpu: "2"}}}]}"#,
            ),
            (
                "an init container after a sidecar runs beside it",
                5,
                r#"spec: {
                    initContainers: [
                      {name: s, restartPolicy: Always, resources: {requests: {nvidia.com/gpu: "1"}}},
                      {name: i, resources: {requests: {nvidia.com/gpu: "4"}}}],
                    containers: [{name: a, resources: {requests: {nvidia.com/gpu: "2"}}}]}"#,
            ),
            (
                "an init container before a sidecar does not run beside it",
                4,
                r#"spec: {
                    initContainers: [
                      {name: i, resources: {requests: {nvidia.com/gpu: "4"}}},
                      {name: s, restartPolicy: Always, resources: {requests: {nvidia.com/gpu: "1"}}}],
                    containers: [{name: a, resources: {requests: {nvidia.com/gpu: "2"}}}]}"#,
            ),
            (
                "pod overhead is added",
                3,
                r#"spec: {overhead: {nvidia.com/gpu: "1"},
                    containers: [{name: a, resources: {requests: {nvidia.com/gpu: "2"}}}]}"#,
            ),
            (
                "other resources are not counted",
                0,
                r#"spec: {containers: [{name: a, resources: {requests: {nvidia.com/mig-1g.10gb: "2", cpu: "4"}}}]}"#,
            ),
        ];
        for (name, want, yaml) in cases {
            assert_eq!(effective_request(&spec(yaml), GPU), *want, "{name}");
        }
    }

    #[test]
    fn mig_resources_are_counted_by_their_own_name() {
        let s = spec(
            r#"spec: {containers: [{name: a, resources: {requests: {nvidia.com/mig-1g.10gb: "3"}}}]}"#,
        );
        assert_eq!(effective_request(&s, "nvidia.com/mig-1g.10gb"), 3);
        assert_eq!(effective_request(&s, GPU), 0);
    }
}

//! The few facts of Nodes, Pods, ComputeLeases and GpuOffers the formula needs.
//!
//! Watch streams are reduced to these as they arrive, so the operator never holds whole pods
//! (env, volumes, managed fields, annotations) for a 100,000-pod cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

use super::quantity::{Rounding, parse_count};
use super::requests::effective_request;
use crate::crd::{
    ComputeLease, GPU_PRODUCT_LABEL, GpuOffer, LEASE_LABEL, LeasePhase, NODE_ANNOTATION,
};

/// Extended resources an offer may sell all share this prefix; others are not tracked.
const GPU_RESOURCE_PREFIX: &str = "nvidia.com/";

/// What the formula needs of a Node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeFacts {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Allocatable GPU resources, whole devices.
    pub allocatable: BTreeMap<String, u32>,
    pub ready: bool,
    pub unschedulable: bool,
    /// NoSchedule and NoExecute taints; PreferNoSchedule never keeps a pod off a node.
    pub taints: Vec<Taint>,
}

impl NodeFacts {
    pub fn from_node(node: &Node) -> NodeFacts {
        let allocatable = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref())
            .map(|alloc| {
                alloc
                    .iter()
                    .filter(|(name, _)| name.starts_with(GPU_RESOURCE_PREFIX))
                    .filter_map(|(name, q)| {
                        parse_count(&q.0, Rounding::Down).map(|n| (name.clone(), n))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        let spec = node.spec.as_ref();
        NodeFacts {
            name: node.name_any(),
            labels: node.labels().clone(),
            allocatable,
            ready,
            unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
            taints: spec
                .and_then(|s| s.taints.as_ref())
                .map(|ts| {
                    ts.iter()
                        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    pub fn model(&self) -> Option<&str> {
        self.labels.get(GPU_PRODUCT_LABEL).map(String::as_str)
    }

    pub fn allocatable(&self, resource: &str) -> u32 {
        self.allocatable.get(resource).copied().unwrap_or(0)
    }
}

/// What the formula needs of a Pod: where it is bound and the GPUs it holds there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFacts {
    pub node: String,
    /// Effective requests of GPU resources; resources requested at zero are left out.
    pub requests: BTreeMap<String, u32>,
    /// The ComputeLease this pod runs, from its lease label.
    pub lease: Option<String>,
}

impl PodFacts {
    /// `None` when the pod holds nothing: not bound to a node yet, or Succeeded/Failed.
    /// A bound pod counts from the moment it has `spec.nodeName`, Pending included.
    pub fn from_pod(pod: &Pod) -> Option<PodFacts> {
        let spec = pod.spec.as_ref()?;
        let node = spec.node_name.as_ref().filter(|n| !n.is_empty())?;
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return None;
        }
        let mut resources: Vec<&String> = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .filter_map(|c| c.resources.as_ref())
            .flat_map(|r| r.requests.iter().flatten().chain(r.limits.iter().flatten()))
            .map(|(name, _)| name)
            .chain(spec.overhead.iter().flatten().map(|(name, _)| name))
            .filter(|name| name.starts_with(GPU_RESOURCE_PREFIX))
            .collect();
        resources.sort();
        resources.dedup();
        let requests = resources
            .into_iter()
            .map(|r| (r.clone(), effective_request(spec, r)))
            .filter(|(_, n)| *n > 0)
            .collect();
        Some(PodFacts {
            node: node.clone(),
            requests,
            lease: pod.labels().get(LEASE_LABEL).cloned(),
        })
    }
}

/// What the formula needs of a ComputeLease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseFacts {
    pub name: String,
    pub offer: String,
    pub resource: String,
    pub gpus: u32,
    pub phase: LeasePhase,
    /// The node intake promised the GPUs on, when intake placed it.
    pub node: Option<String>,
    /// The GPU model the lease was sold as, when the order named one.
    pub model: Option<String>,
}

impl LeaseFacts {
    pub fn from_lease(lease: &ComputeLease) -> LeaseFacts {
        LeaseFacts {
            name: lease.name_any(),
            offer: lease.spec.offer_name.clone(),
            resource: lease.spec.resource_name.clone(),
            gpus: lease.spec.gpus,
            phase: lease.phase(),
            node: lease.annotations().get(NODE_ANNOTATION).cloned(),
            model: lease.spec.gpu_model.clone(),
        }
    }

    /// Not yet Succeeded, Failed, Expired or Terminated: it holds its GPUs.
    pub fn active(&self) -> bool {
        !self.phase.is_terminal()
    }
}

/// What the formula needs of a GpuOffer.
#[derive(Clone, Debug)]
pub struct OfferFacts {
    pub name: String,
    /// Older offers win a node both select; creation time, then name, orders them.
    pub age_rank: (i64, String),
    /// `Err` holds why the offer's nodeSelector is invalid.
    pub selector: Result<Selector, String>,
    /// What the offer's GPUs are counted in (see `GpuOfferSpec::sold_resource`).
    pub resource: String,
    /// The DRA driver whose devices the offer sells; `None` for an extended resource.
    pub driver: Option<String>,
    pub max_gpus: u32,
    pub reserve_gpus: u32,
    pub paused: bool,
    pub tolerations: Vec<Toleration>,
}

impl OfferFacts {
    pub fn from_offer(offer: &GpuOffer) -> OfferFacts {
        let created = offer
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(i64::MAX);
        OfferFacts {
            name: offer.name_any(),
            age_rank: (created, offer.name_any()),
            selector: Selector::try_from(offer.spec.node_selector.clone())
                .map_err(|e| format!("spec.nodeSelector is invalid: {}", e.0)),
            resource: offer.spec.sold_resource(),
            driver: offer
                .spec
                .dynamic_resources
                .as_ref()
                .map(|d| d.driver.clone()),
            max_gpus: offer.spec.max_gpus,
            reserve_gpus: offer.spec.reserve_gpus,
            paused: offer.spec.paused,
            tolerations: offer.spec.tolerations.clone(),
        }
    }

    pub fn selects(&self, node: &NodeFacts) -> bool {
        self.selector
            .as_ref()
            .is_ok_and(|s| s.matches(&node.labels))
    }

    /// True when a NoSchedule or NoExecute taint of the node is not tolerated by this offer.
    pub fn is_tainted_against(&self, node: &NodeFacts) -> bool {
        node.taints
            .iter()
            .any(|taint| !self.tolerations.iter().any(|t| tolerates(t, taint)))
    }
}

/// Kubernetes' rule for whether a toleration tolerates a taint.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = toleration.effect.as_deref().filter(|e| !e.is_empty())
        && effect != taint.effect
    {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        // An empty key with Exists tolerates everything.
        "Exists" => true,
        "Equal" => {
            !key.is_empty()
                && toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: Some(value.into()),
            effect: effect.into(),
            time_added: None,
        }
    }

    fn toleration(yaml: &str) -> Toleration {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn toleration_rule_table() {
        let gpu = taint("nvidia.com/gpu", "present", "NoSchedule");
        let cases = [
            ("{key: nvidia.com/gpu, operator: Exists}", true),
            (
                "{key: nvidia.com/gpu, operator: Equal, value: present}",
                true,
            ),
            ("{key: nvidia.com/gpu, value: present}", true),
            (
                "{key: nvidia.com/gpu, operator: Equal, value: other}",
                false,
            ),
            (
                "{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}",
                true,
            ),
            (
                "{key: nvidia.com/gpu, operator: Exists, effect: NoExecute}",
                false,
            ),
            ("{operator: Exists}", true),
            ("{key: other, operator: Exists}", false),
            ("{operator: Equal, value: present}", false),
        ];
        for (t, want) in cases {
            assert_eq!(tolerates(&toleration(t), &gpu), want, "{t}");
        }
    }

    #[test]
    fn node_facts_keep_only_gpu_resources_and_blocking_taints() {
        let node: Node = serde_yaml::from_str(
            r#"
metadata: {name: n1, labels: {nvidia.com/gpu.product: H100}, annotations: {big: x}}
spec:
  unschedulable: true
  taints:
  - {key: a, effect: PreferNoSchedule}
  - {key: b, effect: NoExecute}
status:
  allocatable: {cpu: "96", memory: 1Ti, nvidia.com/gpu: "8", nvidia.com/mig-1g.10gb: "7"}
  conditions: [{type: Ready, status: "True"}]
"#,
        )
        .unwrap();
        let facts = NodeFacts::from_node(&node);
        assert_eq!(facts.allocatable.len(), 2);
        assert_eq!(facts.allocatable("nvidia.com/gpu"), 8);
        assert_eq!(facts.allocatable("nvidia.com/mig-1g.10gb"), 7);
        assert_eq!(facts.allocatable("cpu"), 0);
        assert!(facts.ready && facts.unschedulable);
        assert_eq!(facts.taints.len(), 1);
        assert_eq!(facts.model(), Some("H100"));
    }

    #[test]
    fn pod_facts_count_bound_non_terminal_pods_only() {
        let pod = |node: &str, phase: &str| -> Pod {
            serde_yaml::from_str(&format!(
                r#"
metadata: {{name: p, namespace: ns, labels: {{gpubridge.dev/lease: l1}}}}
spec:
  nodeName: "{node}"
  containers: [{{name: a, resources: {{requests: {{nvidia.com/gpu: "2", cpu: "1"}}}}}}]
status: {{phase: {phase}}}
"#
            ))
            .unwrap()
        };
        let bound = PodFacts::from_pod(&pod("n1", "Pending")).expect("bound pending pod counts");
        assert_eq!(bound.node, "n1");
        assert_eq!(
            bound.requests,
            BTreeMap::from([("nvidia.com/gpu".to_string(), 2)])
        );
        assert_eq!(bound.lease.as_deref(), Some("l1"));
        assert!(PodFacts::from_pod(&pod("n1", "Running")).is_some());
        assert!(PodFacts::from_pod(&pod("", "Pending")).is_none(), "unbound");
        assert!(
            PodFacts::from_pod(&pod("n1", "Succeeded")).is_none(),
            "terminal"
        );
        assert!(
            PodFacts::from_pod(&pod("n1", "Failed")).is_none(),
            "terminal"
        );
    }
}

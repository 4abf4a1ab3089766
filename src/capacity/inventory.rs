//! The incremental index the formula reads: node facts, GPUs used per node, lease holds.
//!
//! Pod events update one node's usage in O(1), so an event on a 100,000-pod cluster costs a
//! hash update and the recompute of the offers that select that node, never a pass over pods.

use std::collections::{BTreeMap, HashMap};

use super::dra::{DeviceRef, SliceFacts};
use super::facts::{LeaseFacts, NodeFacts, OfferFacts, PodFacts};

/// Node facts, per-node GPU usage by bound pods, and ComputeLeases.
#[derive(Default, Debug, Clone)]
pub struct Inventory {
    nodes: HashMap<String, NodeFacts>,
    /// node → resource → GPUs requested by bound, non-terminal pods. Kept for nodes not seen yet
    /// too: pod and node watches are not ordered with respect to each other.
    used: HashMap<String, BTreeMap<String, u32>>,
    /// "namespace/name" → the pod's facts.
    pods: HashMap<String, PodFacts>,
    /// lease name → bound pods carrying its label.
    bound_lease_pods: HashMap<String, u32>,
    leases: HashMap<String, LeaseFacts>,
    /// lease name → DisruptionTarget reason last seen on its pod. Kept here because the same pod
    /// watch sees it, and a preempted pod can be gone before the lease controller reads it.
    lease_disruptions: HashMap<String, String>,
    /// DRA: node-local ResourceSlices by name, and the devices allocated to each ResourceClaim
    /// ("namespace/name").
    slices: HashMap<String, SliceFacts>,
    claims: HashMap<String, Vec<DeviceRef>>,
    /// (node, driver) → devices published, and → devices allocated. Rebuilt on every DRA change:
    /// a claim may name a pool before its slice arrives, and slices change rarely.
    dra_devices: HashMap<(String, String), u32>,
    dra_allocated: HashMap<(String, String), u32>,
}

impl Inventory {
    pub fn upsert_node(&mut self, facts: NodeFacts) {
        self.nodes.insert(facts.name.clone(), facts);
    }

    pub fn remove_node(&mut self, name: &str) {
        self.nodes.remove(name);
    }

    /// Replaces every node, as after a watch re-list.
    pub fn replace_nodes(&mut self, nodes: impl IntoIterator<Item = NodeFacts>) {
        self.nodes = nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
    }

    /// Records a pod's current state; `None` facts mean it holds nothing (unbound or terminal).
    /// Returns the nodes whose usage changed: none when the pod holds what it held.
    pub fn upsert_pod(&mut self, key: &str, facts: Option<PodFacts>) -> Vec<String> {
        if self.pods.get(key) == facts.as_ref() {
            return Vec::new();
        }
        let mut touched = Vec::with_capacity(2);
        if let Some(old) = self.pods.remove(key) {
            self.release(&old);
            touched.push(old.node);
        }
        if let Some(new) = facts {
            self.hold(&new);
            if !touched.contains(&new.node) {
                touched.push(new.node.clone());
            }
            self.pods.insert(key.to_string(), new);
        }
        touched
    }

    /// Forgets a pod. Returns the node whose usage changed.
    pub fn remove_pod(&mut self, key: &str) -> Option<String> {
        let old = self.pods.remove(key)?;
        self.release(&old);
        Some(old.node)
    }

    /// Replaces every pod, as after a watch re-list.
    pub fn replace_pods(&mut self, pods: impl IntoIterator<Item = (String, PodFacts)>) {
        self.pods.clear();
        self.used.clear();
        self.bound_lease_pods.clear();
        for (key, facts) in pods {
            self.hold(&facts);
            self.pods.insert(key, facts);
        }
    }

    pub fn upsert_lease(&mut self, facts: LeaseFacts) {
        self.leases.insert(facts.name.clone(), facts);
    }

    pub fn remove_lease(&mut self, name: &str) -> Option<LeaseFacts> {
        self.lease_disruptions.remove(name);
        self.leases.remove(name)
    }

    pub fn record_disruption(&mut self, lease: &str, reason: &str) {
        self.lease_disruptions
            .insert(lease.to_string(), reason.to_string());
    }

    /// The DisruptionTarget reason last seen on the lease's pod.
    pub fn last_disruption(&self, lease: &str) -> Option<&str> {
        self.lease_disruptions.get(lease).map(String::as_str)
    }

    /// Replaces every lease, as after a watch re-list.
    pub fn replace_leases(&mut self, leases: impl IntoIterator<Item = LeaseFacts>) {
        self.leases = leases.into_iter().map(|l| (l.name.clone(), l)).collect();
    }

    fn hold(&mut self, pod: &PodFacts) {
        let used = self.used.entry(pod.node.clone()).or_default();
        for (resource, n) in &pod.requests {
            let slot = used.entry(resource.clone()).or_default();
            *slot = slot.saturating_add(*n);
        }
        if let Some(lease) = &pod.lease {
            *self.bound_lease_pods.entry(lease.clone()).or_default() += 1;
        }
    }

    fn release(&mut self, pod: &PodFacts) {
        if let Some(used) = self.used.get_mut(&pod.node) {
            for (resource, n) in &pod.requests {
                if let Some(slot) = used.get_mut(resource) {
                    *slot = slot.saturating_sub(*n);
                    if *slot == 0 {
                        used.remove(resource);
                    }
                }
            }
            if used.is_empty() {
                self.used.remove(&pod.node);
            }
        }
        if let Some(lease) = &pod.lease
            && let Some(count) = self.bound_lease_pods.get_mut(lease)
        {
            *count -= 1;
            if *count == 0 {
                self.bound_lease_pods.remove(lease);
            }
        }
    }

    /// Records a node-local ResourceSlice (or forgets it, with `None`). Returns its node.
    pub fn upsert_slice(&mut self, name: &str, facts: Option<SliceFacts>) -> Option<String> {
        let node = match facts {
            Some(f) => {
                let node = f.node.clone();
                self.slices.insert(name.to_string(), f);
                Some(node)
            }
            None => self.slices.remove(name).map(|f| f.node),
        };
        self.reindex_dra();
        node
    }

    pub fn replace_slices(&mut self, slices: impl IntoIterator<Item = SliceFacts>) {
        self.slices = slices.into_iter().map(|s| (s.name.clone(), s)).collect();
        self.reindex_dra();
    }

    /// Records the devices allocated to a claim (none: forgotten). Returns the nodes whose
    /// allocations changed.
    pub fn upsert_claim(&mut self, key: &str, devices: Vec<DeviceRef>) -> Vec<String> {
        let old = if devices.is_empty() {
            self.claims.remove(key)
        } else {
            self.claims.insert(key.to_string(), devices.clone())
        }
        .unwrap_or_default();
        if old == devices {
            return Vec::new();
        }
        self.reindex_dra();
        let mut nodes: Vec<String> = old
            .iter()
            .chain(&devices)
            .filter_map(|d| self.node_of(d))
            .collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    pub fn replace_claims(&mut self, claims: impl IntoIterator<Item = (String, Vec<DeviceRef>)>) {
        self.claims = claims.into_iter().filter(|(_, d)| !d.is_empty()).collect();
        self.reindex_dra();
    }

    fn node_of(&self, device: &DeviceRef) -> Option<String> {
        self.slices
            .values()
            .find(|s| s.driver == device.driver && s.pool == device.pool)
            .map(|s| s.node.clone())
    }

    fn reindex_dra(&mut self) {
        self.dra_devices.clear();
        let mut pools: HashMap<(&str, &str), &str> = HashMap::new();
        for s in self.slices.values() {
            *self
                .dra_devices
                .entry((s.node.clone(), s.driver.clone()))
                .or_default() += s.devices.len() as u32;
            pools.insert((s.driver.as_str(), s.pool.as_str()), s.node.as_str());
        }
        self.dra_allocated.clear();
        for d in self.claims.values().flatten() {
            if let Some(node) = pools.get(&(d.driver.as_str(), d.pool.as_str())) {
                *self
                    .dra_allocated
                    .entry((node.to_string(), d.driver.clone()))
                    .or_default() += 1;
            }
        }
    }

    /// GPUs `node` has for `offer`: its allocatable extended resource, or the devices its DRA
    /// driver publishes.
    pub fn capacity_for(&self, node: &NodeFacts, offer: &OfferFacts) -> u32 {
        match &offer.driver {
            Some(driver) => self
                .dra_devices
                .get(&(node.name.clone(), driver.clone()))
                .copied()
                .unwrap_or(0),
            None => node.allocatable(&offer.resource),
        }
    }

    /// GPUs of `node` in use for `offer`'s resource: requested by bound pods, or allocated to
    /// ResourceClaims.
    pub fn in_use_for(&self, node: &NodeFacts, offer: &OfferFacts) -> u32 {
        match &offer.driver {
            Some(driver) => self
                .dra_allocated
                .get(&(node.name.clone(), driver.clone()))
                .copied()
                .unwrap_or(0),
            None => self.used(&node.name, &offer.resource),
        }
    }

    /// The model of a node's GPUs: its GPU product label, or the product name its DRA devices
    /// carry.
    pub fn model_of<'a>(&'a self, node: &'a NodeFacts) -> Option<&'a str> {
        node.model().or_else(|| {
            self.slices
                .values()
                .filter(|s| s.node == node.name)
                .flat_map(|s| &s.devices)
                .find_map(|d| d.attributes.get("productName"))
                .map(String::as_str)
        })
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeFacts> {
        self.nodes.values()
    }

    pub fn node(&self, name: &str) -> Option<&NodeFacts> {
        self.nodes.get(name)
    }

    /// GPUs of `resource` requested on `node` by bound, non-terminal pods.
    pub fn used(&self, node: &str, resource: &str) -> u32 {
        self.used
            .get(node)
            .and_then(|u| u.get(resource))
            .copied()
            .unwrap_or(0)
    }

    pub fn leases(&self) -> impl Iterator<Item = &LeaseFacts> {
        self.leases.values()
    }

    pub fn lease(&self, name: &str) -> Option<&LeaseFacts> {
        self.leases.get(name)
    }

    /// True when a bound, non-terminal pod runs this lease: its GPUs are counted on its node.
    pub fn has_bound_pod(&self, lease: &str) -> bool {
        self.bound_lease_pods.contains_key(lease)
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    pub fn pod_node(&self, key: &str) -> Option<&str> {
        self.pods.get(key).map(|p| p.node.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GPU: &str = "nvidia.com/gpu";

    fn pod(node: &str, gpus: u32, lease: Option<&str>) -> PodFacts {
        PodFacts {
            node: node.into(),
            requests: BTreeMap::from([(GPU.to_string(), gpus)]),
            lease: lease.map(Into::into),
        }
    }

    #[test]
    fn pod_moves_and_deletes_keep_usage_exact() {
        let mut inv = Inventory::default();
        assert_eq!(inv.upsert_pod("ns/a", Some(pod("n1", 2, None))), vec!["n1"]);
        inv.upsert_pod("ns/b", Some(pod("n1", 3, Some("l1"))));
        assert_eq!(inv.used("n1", GPU), 5);
        assert!(inv.has_bound_pod("l1"));
        // The same pod seen again is not counted twice, and changes nothing.
        assert!(
            inv.upsert_pod("ns/b", Some(pod("n1", 3, Some("l1"))))
                .is_empty()
        );
        assert_eq!(inv.used("n1", GPU), 5);
        // Terminal: it holds nothing any more.
        assert_eq!(inv.upsert_pod("ns/b", None), vec!["n1"]);
        assert_eq!(inv.used("n1", GPU), 2);
        assert!(!inv.has_bound_pod("l1"));
        assert_eq!(inv.remove_pod("ns/a").as_deref(), Some("n1"));
        assert_eq!(inv.used("n1", GPU), 0);
        assert_eq!(inv.remove_pod("ns/a"), None);
        assert_eq!(inv.pod_count(), 0);
    }

    #[test]
    fn relist_replaces_everything() {
        let mut inv = Inventory::default();
        inv.upsert_pod("ns/a", Some(pod("n1", 2, Some("l1"))));
        inv.replace_pods([("ns/c".to_string(), pod("n2", 1, None))]);
        assert_eq!(inv.used("n1", GPU), 0);
        assert_eq!(inv.used("n2", GPU), 1);
        assert!(!inv.has_bound_pod("l1"));
        assert_eq!(inv.pod_node("ns/c"), Some("n2"));
    }
}

//! Watches of Nodes, Pods and ComputeLeases that feed the capacity inventory, and the triggers
//! they send to the offer controller: each change recomputes only the offers it touches.

use std::collections::BTreeSet;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::Notify;
use tracing::warn;

use super::OFFER_CONTROLLER;
use super::backoff::{self, Backoff};
use super::boxes::BoxWriters;
use crate::capacity::dra::{DeviceRef, SliceFacts, allocated_devices};
use crate::capacity::{Inventory, LeaseFacts, NodeFacts, OfferFacts, PodFacts};
use crate::crd::{ComputeLease, GpuOffer, LEASE_LABEL, NODE_ANNOTATION};
use crate::lifecycle::PodObservation;

/// Only pods that hold GPUs matter: bound to a node and not finished. The apiserver filters the
/// rest out, and a pod that finishes leaves the watch as a deletion.
pub const POD_FIELD_SELECTOR: &str = "spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed";

/// Which offers a change touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    Nothing,
    /// Offers selecting any of these nodes.
    Nodes(Vec<String>),
    /// One offer by name.
    Offer(String),
    /// Every offer (a node's labels or a re-list may change which offers select what).
    All,
}

/// Offers a change touches, by name.
pub fn touched_offers(
    touched: &Touched,
    inventory: &Inventory,
    offers: &[OfferFacts],
) -> Vec<String> {
    match touched {
        Touched::Nothing => vec![],
        Touched::Offer(name) => vec![name.clone()],
        Touched::All => offers.iter().map(|o| o.name.clone()).collect(),
        Touched::Nodes(nodes) => offers
            .iter()
            .filter(|o| {
                nodes
                    .iter()
                    .any(|n| inventory.node(n).is_some_and(|n| o.selects(n)))
            })
            .map(|o| o.name.clone())
            .collect(),
    }
}

/// One kind of object the inventory counts: how a watch event of it changes the inventory, and
/// which offers that touches. One generic path ([`on_event`]) buffers re-lists for every kind,
/// so a re-list reaches the inventory whole, at its end, and the inventory never holds half of
/// one.
pub trait Watched: kube::Resource + Sized {
    /// What the inventory keeps of a listed object; `None` when it counts nothing.
    type Facts;
    fn facts(object: &Self) -> Option<Self::Facts>;
    /// Replaces every object of this kind with a re-list's.
    fn replace(inventory: &mut Inventory, listed: Vec<Self::Facts>);
    fn apply(inventory: &mut Inventory, object: &Self) -> Touched;
    fn delete(inventory: &mut Inventory, object: &Self) -> Touched;
    /// Sees every event before it is applied or buffered.
    fn observe(_inventory: &mut Inventory, _event: &watcher::Event<Self>) {}
}

/// Applies one watch event of any watched kind to the inventory.
pub fn on_event<K: Watched>(
    inventory: &mut Inventory,
    relist: &mut Option<Vec<K::Facts>>,
    event: watcher::Event<K>,
) -> Touched {
    K::observe(inventory, &event);
    match event {
        watcher::Event::Init => {
            *relist = Some(Vec::new());
            Touched::Nothing
        }
        watcher::Event::InitApply(object) => {
            if let Some(f) = K::facts(&object) {
                relist.get_or_insert_with(Vec::new).push(f);
            }
            Touched::Nothing
        }
        watcher::Event::InitDone => {
            K::replace(inventory, relist.take().unwrap_or_default());
            Touched::All
        }
        watcher::Event::Apply(object) => K::apply(inventory, &object),
        watcher::Event::Delete(object) => K::delete(inventory, &object),
    }
}

fn nodes_or_nothing(nodes: Vec<String>) -> Touched {
    if nodes.is_empty() {
        Touched::Nothing
    } else {
        Touched::Nodes(nodes)
    }
}

fn namespaced_key<K: kube::Resource>(object: &K) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

impl Watched for Node {
    type Facts = NodeFacts;
    fn facts(node: &Node) -> Option<NodeFacts> {
        Some(NodeFacts::from_node(node))
    }
    fn replace(inventory: &mut Inventory, listed: Vec<NodeFacts>) {
        inventory.replace_nodes(listed);
    }
    fn apply(inventory: &mut Inventory, node: &Node) -> Touched {
        let facts = NodeFacts::from_node(node);
        match inventory.node(&facts.name) {
            // Heartbeats and other changes the formula does not read touch nothing.
            Some(old) if *old == facts => Touched::Nothing,
            Some(old) if old.labels != facts.labels => {
                inventory.upsert_node(facts);
                Touched::All
            }
            _ => {
                let name = facts.name.clone();
                inventory.upsert_node(facts);
                Touched::Nodes(vec![name])
            }
        }
    }
    fn delete(inventory: &mut Inventory, node: &Node) -> Touched {
        inventory.remove_node(&node.name_any());
        Touched::All
    }
}

impl Watched for Pod {
    type Facts = (String, PodFacts);
    fn facts(pod: &Pod) -> Option<(String, PodFacts)> {
        PodFacts::from_pod(pod).map(|f| (namespaced_key(pod), f))
    }
    fn replace(inventory: &mut Inventory, listed: Vec<(String, PodFacts)>) {
        inventory.replace_pods(listed);
    }
    fn apply(inventory: &mut Inventory, pod: &Pod) -> Touched {
        nodes_or_nothing(inventory.upsert_pod(&namespaced_key(pod), PodFacts::from_pod(pod)))
    }
    fn delete(inventory: &mut Inventory, pod: &Pod) -> Touched {
        nodes_or_nothing(
            inventory
                .remove_pod(&namespaced_key(pod))
                .into_iter()
                .collect(),
        )
    }
    /// A disruption seen on a lease pod is remembered, even once the pod is gone.
    fn observe(inventory: &mut Inventory, event: &watcher::Event<Pod>) {
        if let watcher::Event::Apply(pod)
        | watcher::Event::InitApply(pod)
        | watcher::Event::Delete(pod) = event
            && let Some(lease) = pod.labels().get(LEASE_LABEL)
            && let Some(disruption) = PodObservation::from_pod(pod).disruption
        {
            inventory.record_disruption(lease, &disruption);
        }
    }
}

impl Watched for ComputeLease {
    type Facts = LeaseFacts;
    fn facts(lease: &ComputeLease) -> Option<LeaseFacts> {
        Some(LeaseFacts::from_lease(lease))
    }
    fn replace(inventory: &mut Inventory, listed: Vec<LeaseFacts>) {
        inventory.replace_leases(listed);
    }
    fn apply(inventory: &mut Inventory, lease: &ComputeLease) -> Touched {
        let facts = LeaseFacts::from_lease(lease);
        if inventory.lease(&facts.name) == Some(&facts) {
            return Touched::Nothing;
        }
        let offer = facts.offer.clone();
        inventory.upsert_lease(facts);
        Touched::Offer(offer)
    }
    fn delete(inventory: &mut Inventory, lease: &ComputeLease) -> Touched {
        match inventory.remove_lease(&lease.name_any()) {
            Some(facts) => Touched::Offer(facts.offer),
            None => Touched::Nothing,
        }
    }
}

impl Watched for ResourceSlice {
    type Facts = SliceFacts;
    fn facts(slice: &ResourceSlice) -> Option<SliceFacts> {
        SliceFacts::from_slice(slice)
    }
    fn replace(inventory: &mut Inventory, listed: Vec<SliceFacts>) {
        inventory.replace_slices(listed);
    }
    fn apply(inventory: &mut Inventory, slice: &ResourceSlice) -> Touched {
        let facts = SliceFacts::from_slice(slice);
        let new_node = facts.as_ref().map(|f| f.node.clone());
        let old_node = inventory.upsert_slice(&slice.name_any(), facts);
        Touched::Nodes(old_node.into_iter().chain(new_node).collect())
    }
    fn delete(inventory: &mut Inventory, slice: &ResourceSlice) -> Touched {
        nodes_or_nothing(
            inventory
                .upsert_slice(&slice.name_any(), None)
                .into_iter()
                .collect(),
        )
    }
}

impl Watched for ResourceClaim {
    type Facts = (String, Vec<DeviceRef>);
    fn facts(claim: &ResourceClaim) -> Option<(String, Vec<DeviceRef>)> {
        Some((namespaced_key(claim), allocated_devices(claim)))
    }
    fn replace(inventory: &mut Inventory, listed: Vec<(String, Vec<DeviceRef>)>) {
        inventory.replace_claims(listed);
    }
    fn apply(inventory: &mut Inventory, claim: &ResourceClaim) -> Touched {
        nodes_or_nothing(inventory.upsert_claim(&namespaced_key(claim), allocated_devices(claim)))
    }
    fn delete(inventory: &mut Inventory, claim: &ResourceClaim) -> Touched {
        nodes_or_nothing(inventory.upsert_claim(&namespaced_key(claim), Vec::new()))
    }
}

/// Objects of kind `K` (cluster-scoped) waiting to be reconciled. A set, not a queue: however
/// many events arrive before the controller drains it (or while this replica waits to lead, and
/// nothing drains it), it holds each object at most once, and the sender never waits.
pub struct Triggers<K> {
    pending: Arc<Mutex<BTreeSet<String>>>,
    notify: Arc<Notify>,
    kind: PhantomData<fn() -> K>,
}

/// Offers to recompute.
pub type OfferTriggers = Triggers<GpuOffer>;
/// Leases to reconcile.
pub type LeaseTriggers = Triggers<ComputeLease>;

impl<K> Clone for Triggers<K> {
    fn clone(&self) -> Self {
        Triggers {
            pending: self.pending.clone(),
            notify: self.notify.clone(),
            kind: PhantomData,
        }
    }
}

impl<K> Default for Triggers<K> {
    fn default() -> Self {
        Triggers {
            pending: Arc::default(),
            notify: Arc::default(),
            kind: PhantomData,
        }
    }
}

impl<K: kube::Resource<DynamicType = ()> + 'static> Triggers<K> {
    pub fn touch(&self, name: String) {
        self.pending
            .lock()
            .expect("trigger lock poisoned")
            .insert(name);
        // Stores a permit when nobody waits, so a touch is never lost.
        self.notify.notify_one();
    }

    /// The pending objects as a controller's `reconcile_on` stream.
    pub fn stream(self) -> impl Stream<Item = ObjectRef<K>> + Send {
        futures::stream::unfold(self, |triggers| async move {
            loop {
                let drained =
                    std::mem::take(&mut *triggers.pending.lock().expect("trigger lock poisoned"));
                if !drained.is_empty() {
                    let refs = drained.into_iter().map(|name| ObjectRef::new(&name));
                    return Some((futures::stream::iter(refs), triggers));
                }
                triggers.notify.notified().await;
            }
        })
        .flatten()
    }
}

/// Whether an offer event may change what other offers own: a new offer, a changed spec (its
/// generation moves against the `cached` copy; status writes do not) or a deleted one. Overlap
/// between offers is decided by age, so every offer is then recomputed.
pub fn offer_event_moves_ownership(
    cached: Option<&GpuOffer>,
    event: &watcher::Event<GpuOffer>,
) -> bool {
    match event {
        watcher::Event::Apply(offer) | watcher::Event::InitApply(offer) => {
            cached.map(|c| c.metadata.generation) != Some(offer.metadata.generation)
        }
        watcher::Event::Delete(_) | watcher::Event::InitDone => true,
        watcher::Event::Init => false,
    }
}

/// Whether an offer's change can change the status computed for it: a new offer, a new
/// generation (its spec), or the network session's part of its status, which the Advertised
/// condition follows. The offer controller's own status write coming back changes none of these,
/// so it is not computed again for it (inventory changes trigger it on their own).
pub fn changes_offer_inputs(cached: Option<&GpuOffer>, offer: &GpuOffer) -> bool {
    let Some(cached) = cached else {
        return true;
    };
    let publication = |o: &GpuOffer| {
        o.status.as_ref().map_or((None, None), |s| {
            (s.offer_id.clone(), s.last_advertised.clone())
        })
    };
    cached.metadata.generation != offer.metadata.generation
        || publication(cached) != publication(offer)
}

/// Watches GpuOffers into `writer`'s store (the one cache of offers: the offer controller and
/// intake read it), triggers each changed offer, and every offer when one of them changes what
/// the others may own, and forgets a deleted offer's backoff. (A lease's is forgotten by the
/// successful reconcile that removes its finalizer.)
pub async fn run_offers(
    client: Client,
    mut writer: Writer<GpuOffer>,
    triggers: OfferTriggers,
    backoff: Arc<Backoff>,
) {
    let reader = writer.as_reader();
    let mut stream = std::pin::pin!(events(
        watcher(Api::<GpuOffer>::all(client), watcher::Config::default())
            .default_backoff()
            .modify(|offer| offer.managed_fields_mut().clear())
    ));
    while let Some(event) = stream.next().await {
        // The store's copy from before this event: what the event changes is judged against it.
        let cached = match &event {
            watcher::Event::Apply(offer) | watcher::Event::InitApply(offer) => {
                reader.get(&ObjectRef::from_obj(offer))
            }
            _ => None,
        };
        let changed = match &event {
            watcher::Event::Apply(offer) => changes_offer_inputs(cached.as_deref(), offer),
            watcher::Event::InitApply(_) => true,
            _ => false,
        };
        let moves_ownership = offer_event_moves_ownership(cached.as_deref(), &event);
        writer.apply_watcher_event(&event);
        match &event {
            watcher::Event::Apply(offer) | watcher::Event::InitApply(offer) if changed => {
                triggers.touch(offer.name_any())
            }
            watcher::Event::Delete(offer) => {
                backoff.forget(&backoff::key(OFFER_CONTROLLER, &offer.name_any()))
            }
            _ => {}
        }
        if moves_ownership {
            for offer in reader.state() {
                triggers.touch(offer.name_any());
            }
        }
    }
}

/// Whether every watch has listed its objects: then the inventory is complete.
#[derive(Clone)]
pub struct Synced {
    listed: Arc<AtomicUsize>,
    watches: usize,
}

impl Synced {
    /// For the watches [`run`] starts: five, or three without `dynamic_resources`.
    pub fn new(dynamic_resources: bool) -> Synced {
        Synced {
            listed: Arc::default(),
            watches: if dynamic_resources { 5 } else { 3 },
        }
    }

    pub fn all(&self) -> bool {
        self.listed.load(Ordering::Relaxed) >= self.watches
    }

    fn one_listed(&self) {
        self.listed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs the watches until the process ends, keeping `inventory` current and sending the offers
/// each change touches to `triggers`. The ComputeLease watch is the only one of leases: it also
/// keeps `leases` (the lease controller's cache, without managed fields, annotations other than
/// the promised node, or the signed order's bytes) and triggers each changed lease. Without
/// `dynamic_resources` (a cluster that does not serve resource.k8s.io/v1), ResourceSlices and
/// ResourceClaims are not watched.
pub async fn run(
    client: Client,
    shared: Shared,
    mut leases: Writer<ComputeLease>,
    lease_triggers: LeaseTriggers,
    dynamic_resources: bool,
) {
    let all = || watcher::Config::default();
    let dra = async {
        if dynamic_resources {
            tokio::join!(
                drive::<ResourceSlice>(watch_all(&client, all()), &shared, |_| {}),
                drive::<ResourceClaim>(watch_all(&client, all()), &shared, |_| {}),
            );
        }
    };
    let lease_stream = watch_all::<ComputeLease>(&client, all()).modify(slim_lease);
    tokio::join!(
        drive::<Node>(watch_all(&client, all()), &shared, |_| {}),
        drive::<Pod>(
            watch_all(&client, all().fields(POD_FIELD_SELECTOR)),
            &shared,
            |_| {}
        ),
        drive::<ComputeLease>(lease_stream, &shared, |event| {
            leases.apply_watcher_event(event);
            if let watcher::Event::Apply(lease) | watcher::Event::InitApply(lease) = event {
                lease_triggers.touch(lease.name_any());
            }
        }),
        dra,
    );
}

/// Keeps the lease boxes' policy objects (metadata only, lease-labelled only) in the lease
/// controller's [`BoxCache`], and reconciles the lease whose policy changed or went.
pub async fn run_boxes(client: Client, writers: BoxWriters, triggers: LeaseTriggers) {
    let BoxWriters {
        namespaces,
        network_policies,
        quotas,
        limit_ranges,
    } = writers;
    tokio::join!(
        drive_box(&client, namespaces, &triggers),
        drive_box(&client, network_policies, &triggers),
        drive_box(&client, quotas, &triggers),
        drive_box(&client, limit_ranges, &triggers),
    );
}

async fn drive_box<K>(
    client: &Client,
    mut writer: Writer<PartialObjectMeta<K>>,
    triggers: &LeaseTriggers,
) where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + 'static,
{
    let mut stream = std::pin::pin!(events(
        // An `Api` of `PartialObjectMeta` lists and watches metadata only.
        watcher(
            Api::<PartialObjectMeta<K>>::all(client.clone()),
            watcher::Config::default().labels(LEASE_LABEL)
        )
        .default_backoff()
        .modify(|object| object.managed_fields_mut().clear())
    ));
    while let Some(event) = stream.next().await {
        writer.apply_watcher_event(&event);
        if let watcher::Event::Apply(object) | watcher::Event::Delete(object) = &event
            && let Some(lease) = object.labels().get(LEASE_LABEL)
        {
            triggers.touch(lease.clone());
        }
    }
}

/// A watch's events. Its errors are logged and skipped: the watcher retries them with backoff.
fn events<K: kube::Resource<DynamicType = ()>>(
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
) -> impl Stream<Item = watcher::Event<K>> {
    stream.filter_map(|event| async move {
        event
            .inspect_err(
                |e| warn!(error = %e, kind = %K::kind(&()), "watch failed; retrying with backoff"),
            )
            .ok()
    })
}

/// What a cached ComputeLease keeps: everything the controllers and the inventory read, and not
/// the managed fields, other annotations, or the signed order's bytes (up to 64 KiB a lease;
/// whoever needs them reads the lease from the API).
pub fn slim_lease(lease: &mut ComputeLease) {
    lease.managed_fields_mut().clear();
    lease
        .annotations_mut()
        .retain(|key, _| key == NODE_ANNOTATION);
    if let Some(order) = &mut lease.spec.signed_order {
        order.body.clear();
    }
}

fn watch_all<K>(
    client: &Client,
    config: watcher::Config,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
{
    watcher(Api::<K>::all(client.clone()), config).default_backoff()
}

/// What every watch feeds.
pub struct Shared {
    pub inventory: Arc<RwLock<Inventory>>,
    pub offers: Store<GpuOffer>,
    pub triggers: OfferTriggers,
    pub synced: Synced,
}

/// Applies every event of a watch of `K` to the inventory (after `also` sees it), triggering
/// the offers each change touches.
async fn drive<K: Watched + kube::Resource<DynamicType = ()>>(
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    shared: &Shared,
    mut also: impl FnMut(&watcher::Event<K>),
) {
    let mut relist = None;
    let mut listed = false;
    let mut stream = std::pin::pin!(events(stream));
    while let Some(event) = stream.next().await {
        also(&event);
        let done = matches!(event, watcher::Event::InitDone);
        let names = {
            let mut inventory = shared.inventory.write().expect("inventory lock poisoned");
            match on_event(&mut inventory, &mut relist, event) {
                // Most events (a heartbeat, a pod without GPUs) touch nothing: no offer facts.
                Touched::Nothing => Vec::new(),
                touched => {
                    let offer_facts: Vec<OfferFacts> = shared
                        .offers
                        .state()
                        .iter()
                        .map(|o| OfferFacts::from_offer(o))
                        .collect();
                    touched_offers(&touched, &inventory, &offer_facts)
                }
            }
        };
        if done && !listed {
            listed = true;
            shared.synced.one_listed();
        }
        for name in names {
            shared.triggers.touch(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, pool: &str, gpus: u32, heartbeat: &str) -> Node {
        serde_yaml::from_str(&format!(
            r#"
metadata: {{name: {name}, labels: {{pool: {pool}}}}}
status:
  allocatable: {{nvidia.com/gpu: "{gpus}"}}
  conditions: [{{type: Ready, status: "True", lastHeartbeatTime: "{heartbeat}"}}]
"#
        ))
        .unwrap()
    }

    fn pod(name: &str, node: &str, gpus: u32) -> Pod {
        serde_yaml::from_str(&format!(
            r#"
metadata: {{name: {name}, namespace: ns}}
spec: {{nodeName: {node}, containers: [{{name: a, resources: {{limits: {{nvidia.com/gpu: "{gpus}"}}}}}}]}}
status: {{phase: Running}}
"#
        ))
        .unwrap()
    }

    fn offer(name: &str, pool: &str) -> OfferFacts {
        OfferFacts {
            name: name.into(),
            age_rank: (0, name.into()),
            selector: Ok(kube::core::Selector::from_iter([(
                "pool".to_string(),
                pool.to_string(),
            )])),
            resource: "nvidia.com/gpu".into(),
            driver: None,
            max_gpus: 100,
            reserve_gpus: 0,
            paused: false,
            tolerations: vec![],
        }
    }

    #[test]
    fn a_disruption_seen_on_a_lease_pod_is_remembered_after_the_pod_is_gone() {
        let pod: Pod = serde_yaml::from_str(
            r#"
metadata: {name: workload, namespace: lease-a, labels: {gpubridge.dev/lease: a}}
spec: {nodeName: n1, containers: [{name: workload}]}
status:
  phase: Running
  conditions: [{type: DisruptionTarget, status: "True", reason: PreemptionByScheduler}]
"#,
        )
        .unwrap();
        let mut inv = Inventory::default();
        on_event::<Pod>(&mut inv, &mut None, watcher::Event::Delete(pod));
        assert_eq!(inv.last_disruption("a"), Some("PreemptionByScheduler"));
        assert_eq!(inv.last_disruption("b"), None);
    }

    #[test]
    fn the_inventory_is_complete_once_every_started_watch_listed() {
        for (dynamic_resources, watches) in [(false, 3), (true, 5)] {
            let synced = Synced::new(dynamic_resources);
            for _ in 1..watches {
                synced.one_listed();
            }
            assert!(!synced.all(), "{watches} watches, one still listing");
            synced.one_listed();
            assert!(synced.all());
        }
    }

    #[test]
    fn a_cached_lease_keeps_what_is_read_and_drops_the_rest() {
        let mut lease = ComputeLease::new(
            "l",
            serde_yaml::from_str(include_str!("../../../tests/fixtures/lease-spec.yaml")).unwrap(),
        );
        lease.annotations_mut().extend([
            (NODE_ANNOTATION.to_string(), "n1".to_string()),
            (
                "kubectl.kubernetes.io/last-applied-configuration".into(),
                "x".repeat(4096),
            ),
        ]);
        lease.managed_fields_mut().push(Default::default());
        lease.spec.signed_order = Some(crate::crd::SignedOrder {
            body: "b".repeat(65536),
            buyer_signature: "s".into(),
            network_signature: "n".into(),
        });
        let before = LeaseFacts::from_lease(&lease);
        slim_lease(&mut lease);
        assert_eq!(
            LeaseFacts::from_lease(&lease),
            before,
            "the inventory reads the same"
        );
        assert_eq!(lease.annotations().len(), 1);
        assert!(lease.managed_fields().is_empty());
        let order = lease.spec.signed_order.as_ref().unwrap();
        assert!(
            order.body.is_empty(),
            "a lease from the network is still one"
        );
        assert_eq!(order.network_signature, "n");
    }

    #[test]
    fn a_lease_event_touches_its_offer_once() {
        let lease = ComputeLease::new(
            "l",
            serde_yaml::from_str(include_str!("../../../tests/fixtures/lease-spec.yaml")).unwrap(),
        );
        let offer = lease.spec.offer_name.clone();
        let mut inv = Inventory::default();
        let mut relist = None;
        assert_eq!(
            on_event(&mut inv, &mut relist, watcher::Event::Apply(lease.clone())),
            Touched::Offer(offer.clone())
        );
        assert_eq!(
            on_event(&mut inv, &mut relist, watcher::Event::Apply(lease.clone())),
            Touched::Nothing,
            "the same facts again"
        );
        assert_eq!(
            on_event(&mut inv, &mut relist, watcher::Event::Delete(lease)),
            Touched::Offer(offer)
        );
        assert!(inv.lease("l").is_none());
    }

    #[tokio::test]
    async fn triggers_coalesce_per_offer() {
        let triggers = OfferTriggers::default();
        for _ in 0..1000 {
            triggers.touch("a".into());
        }
        triggers.touch("b".into());
        let mut stream = std::pin::pin!(triggers.clone().stream());
        let first: Vec<String> = vec![
            stream.next().await.unwrap().name,
            stream.next().await.unwrap().name,
        ];
        assert_eq!(first, ["a", "b"], "1001 touches, two recomputes");
        triggers.touch("a".into());
        assert_eq!(
            stream.next().await.unwrap().name,
            "a",
            "a later touch wakes the stream"
        );
    }

    #[test]
    fn only_spec_changes_and_deletions_of_offers_move_ownership() {
        let offer = |generation: i64| -> GpuOffer {
            let mut o = GpuOffer::new(
                "a",
                serde_yaml::from_str(include_str!("../../../tests/fixtures/offer-spec.yaml"))
                    .unwrap(),
            );
            o.metadata.generation = Some(generation);
            o
        };
        assert!(
            offer_event_moves_ownership(None, &watcher::Event::Apply(offer(1))),
            "new"
        );
        assert!(
            !offer_event_moves_ownership(Some(&offer(1)), &watcher::Event::Apply(offer(1))),
            "status write"
        );
        assert!(
            offer_event_moves_ownership(Some(&offer(1)), &watcher::Event::Apply(offer(2))),
            "spec change"
        );
        assert!(
            offer_event_moves_ownership(Some(&offer(2)), &watcher::Event::Delete(offer(2))),
            "deleted"
        );
    }

    #[test]
    fn only_a_spec_or_publication_change_recomputes_an_offer_not_its_own_status_write() {
        let cached = {
            let mut o = GpuOffer::new(
                "a",
                serde_yaml::from_str(include_str!("../../../tests/fixtures/offer-spec.yaml"))
                    .unwrap(),
            );
            o.metadata.generation = Some(1);
            o
        };
        assert!(changes_offer_inputs(None, &cached), "new");

        let mut written = cached.clone();
        written.status = Some(crate::crd::GpuOfferStatus {
            idle_gpus: 7,
            advertised_gpus: 7,
            ..Default::default()
        });
        assert!(
            !changes_offer_inputs(Some(&cached), &written),
            "the offer controller's own capacity write"
        );

        let mut respec = written.clone();
        respec.metadata.generation = Some(2);
        assert!(changes_offer_inputs(Some(&written), &respec), "spec change");

        let mut published = written.clone();
        published.status.as_mut().unwrap().offer_id = Some("p/a".into());
        assert!(
            changes_offer_inputs(Some(&written), &published),
            "published"
        );

        let mut republished = published.clone();
        republished.status.as_mut().unwrap().last_advertised =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::from_second(1).unwrap(),
            ));
        assert!(
            changes_offer_inputs(Some(&published), &republished),
            "republished"
        );
    }

    #[test]
    fn relist_replaces_and_touches_everything() {
        let mut inv = Inventory::default();
        let mut relist = None;
        assert_eq!(
            on_event::<Node>(&mut inv, &mut relist, watcher::Event::Init),
            Touched::Nothing
        );
        on_event::<Node>(
            &mut inv,
            &mut relist,
            watcher::Event::InitApply(node("n1", "a", 8, "2027-01-01T00:00:00Z")),
        );
        assert!(
            inv.node("n1").is_none(),
            "not visible before the list is complete"
        );
        assert_eq!(
            on_event::<Node>(&mut inv, &mut relist, watcher::Event::InitDone),
            Touched::All
        );
        assert_eq!(inv.node("n1").unwrap().allocatable("nvidia.com/gpu"), 8);
    }

    #[test]
    fn node_heartbeats_touch_nothing_but_capacity_changes_do() {
        let mut inv = Inventory::default();
        let mut relist = None;
        on_event::<Node>(
            &mut inv,
            &mut relist,
            watcher::Event::Apply(node("n1", "a", 8, "2027-01-01T00:00:00Z")),
        );
        assert_eq!(
            on_event::<Node>(
                &mut inv,
                &mut relist,
                watcher::Event::Apply(node("n1", "a", 8, "2027-01-01T00:00:10Z"))
            ),
            Touched::Nothing
        );
        assert_eq!(
            on_event::<Node>(
                &mut inv,
                &mut relist,
                watcher::Event::Apply(node("n1", "a", 4, "2027-01-01T00:00:20Z"))
            ),
            Touched::Nodes(vec!["n1".into()])
        );
        assert_eq!(
            on_event::<Node>(
                &mut inv,
                &mut relist,
                watcher::Event::Apply(node("n1", "b", 4, "2027-01-01T00:00:20Z"))
            ),
            Touched::All
        );
    }

    #[test]
    fn pod_events_touch_only_offers_selecting_their_node() {
        let mut inv = Inventory::default();
        let mut nodes = None;
        on_event::<Node>(
            &mut inv,
            &mut nodes,
            watcher::Event::Apply(node("n1", "a", 8, "2027-01-01T00:00:00Z")),
        );
        on_event::<Node>(
            &mut inv,
            &mut nodes,
            watcher::Event::Apply(node("n2", "b", 8, "2027-01-01T00:00:00Z")),
        );
        let offers = vec![offer("offer-a", "a"), offer("offer-b", "b")];
        let mut pods = None;
        let touched = on_event::<Pod>(
            &mut inv,
            &mut pods,
            watcher::Event::Apply(pod("p", "n1", 2)),
        );
        assert_eq!(touched_offers(&touched, &inv, &offers), vec!["offer-a"]);
        assert_eq!(inv.used("n1", "nvidia.com/gpu"), 2);
        // The same pod again (a status update) touches nothing.
        assert_eq!(
            on_event::<Pod>(
                &mut inv,
                &mut pods,
                watcher::Event::Apply(pod("p", "n1", 2))
            ),
            Touched::Nothing
        );
        let touched = on_event::<Pod>(
            &mut inv,
            &mut pods,
            watcher::Event::Delete(pod("p", "n1", 2)),
        );
        assert_eq!(touched_offers(&touched, &inv, &offers), vec!["offer-a"]);
        assert_eq!(inv.used("n1", "nvidia.com/gpu"), 0);
    }
}

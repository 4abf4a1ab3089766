//! Watches of Nodes, Pods and ComputeLeases that feed the capacity inventory, and the triggers
//! they send to the offer controller: each change recomputes only the offers it touches.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::Notify;
use tracing::warn;

use super::OFFER_CONTROLLER;
use super::backoff::{self, Backoff};
use crate::capacity::dra::{DeviceRef, SliceFacts, allocated_devices};
use crate::capacity::{Inventory, LeaseFacts, NodeFacts, OfferFacts, PodFacts};
use crate::crd::{ComputeLease, GpuOffer, LEASE_LABEL};
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

/// A watch event with re-lists buffered: a re-list reaches the inventory whole, at its end, so the
/// inventory never holds half of one.
enum Change<K, F> {
    Buffered,
    Relisted(Vec<F>),
    Apply(K),
    Delete(K),
}

fn buffer_relist<K, F>(
    relist: &mut Option<Vec<F>>,
    event: watcher::Event<K>,
    facts: impl FnOnce(&K) -> Option<F>,
) -> Change<K, F> {
    match event {
        watcher::Event::Init => {
            *relist = Some(Vec::new());
            Change::Buffered
        }
        watcher::Event::InitApply(object) => {
            if let Some(f) = facts(&object) {
                relist.get_or_insert_with(Vec::new).push(f);
            }
            Change::Buffered
        }
        watcher::Event::InitDone => Change::Relisted(relist.take().unwrap_or_default()),
        watcher::Event::Apply(object) => Change::Apply(object),
        watcher::Event::Delete(object) => Change::Delete(object),
    }
}

/// Applies one node watch event to the inventory.
pub fn on_node_event(
    inventory: &mut Inventory,
    relist: &mut Option<Vec<NodeFacts>>,
    event: watcher::Event<Node>,
) -> Touched {
    match buffer_relist(relist, event, |node| Some(NodeFacts::from_node(node))) {
        Change::Buffered => Touched::Nothing,
        Change::Relisted(nodes) => {
            inventory.replace_nodes(nodes);
            Touched::All
        }
        Change::Apply(node) => {
            let facts = NodeFacts::from_node(&node);
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
        Change::Delete(node) => {
            inventory.remove_node(&node.name_any());
            Touched::All
        }
    }
}

/// Applies one pod watch event to the inventory.
pub fn on_pod_event(
    inventory: &mut Inventory,
    relist: &mut Option<Vec<(String, PodFacts)>>,
    event: watcher::Event<Pod>,
) -> Touched {
    let key = |pod: &Pod| format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    if let watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) | watcher::Event::Delete(pod) =
        &event
        && let Some(lease) = pod.labels().get(LEASE_LABEL)
        && let Some(disruption) = PodObservation::from_pod(pod).disruption
    {
        inventory.record_disruption(lease, &disruption);
    }
    match buffer_relist(relist, event, |pod| {
        PodFacts::from_pod(pod).map(|f| (key(pod), f))
    }) {
        Change::Buffered => Touched::Nothing,
        Change::Relisted(pods) => {
            inventory.replace_pods(pods);
            Touched::All
        }
        Change::Apply(pod) => {
            let touched = inventory.upsert_pod(&key(&pod), PodFacts::from_pod(&pod));
            if touched.is_empty() {
                Touched::Nothing
            } else {
                Touched::Nodes(touched)
            }
        }
        Change::Delete(pod) => match inventory.remove_pod(&key(&pod)) {
            Some(node) => Touched::Nodes(vec![node]),
            None => Touched::Nothing,
        },
    }
}

/// Applies one ComputeLease watch event to the inventory.
pub fn on_lease_event(
    inventory: &mut Inventory,
    relist: &mut Option<Vec<LeaseFacts>>,
    event: watcher::Event<ComputeLease>,
) -> Touched {
    match buffer_relist(relist, event, |lease| Some(LeaseFacts::from_lease(lease))) {
        Change::Buffered => Touched::Nothing,
        Change::Relisted(leases) => {
            inventory.replace_leases(leases);
            Touched::All
        }
        Change::Apply(lease) => {
            let facts = LeaseFacts::from_lease(&lease);
            if inventory.lease(&facts.name) == Some(&facts) {
                return Touched::Nothing;
            }
            let offer = facts.offer.clone();
            inventory.upsert_lease(facts);
            Touched::Offer(offer)
        }
        Change::Delete(lease) => match inventory.remove_lease(&lease.name_any()) {
            Some(facts) => Touched::Offer(facts.offer),
            None => Touched::Nothing,
        },
    }
}

/// Applies one ResourceSlice watch event to the inventory.
pub fn on_slice_event(
    inventory: &mut Inventory,
    relist: &mut Option<Vec<SliceFacts>>,
    event: watcher::Event<ResourceSlice>,
) -> Touched {
    match buffer_relist(relist, event, SliceFacts::from_slice) {
        Change::Buffered => Touched::Nothing,
        Change::Relisted(slices) => {
            inventory.replace_slices(slices);
            Touched::All
        }
        Change::Apply(slice) => {
            let name = slice.name_any();
            let facts = SliceFacts::from_slice(&slice);
            let new_node = facts.as_ref().map(|f| f.node.clone());
            let old_node = inventory.upsert_slice(&name, facts);
            Touched::Nodes(old_node.into_iter().chain(new_node).collect())
        }
        Change::Delete(slice) => match inventory.upsert_slice(&slice.name_any(), None) {
            Some(node) => Touched::Nodes(vec![node]),
            None => Touched::Nothing,
        },
    }
}

/// Applies one ResourceClaim watch event to the inventory.
pub fn on_claim_event(
    inventory: &mut Inventory,
    relist: &mut Option<Vec<(String, Vec<DeviceRef>)>>,
    event: watcher::Event<ResourceClaim>,
) -> Touched {
    let key = |c: &ResourceClaim| format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any());
    match buffer_relist(relist, event, |c| Some((key(c), allocated_devices(c)))) {
        Change::Buffered => Touched::Nothing,
        Change::Relisted(claims) => {
            inventory.replace_claims(claims);
            Touched::All
        }
        Change::Apply(claim) => {
            let nodes = inventory.upsert_claim(&key(&claim), allocated_devices(&claim));
            if nodes.is_empty() {
                Touched::Nothing
            } else {
                Touched::Nodes(nodes)
            }
        }
        Change::Delete(claim) => {
            let nodes = inventory.upsert_claim(&key(&claim), Vec::new());
            if nodes.is_empty() {
                Touched::Nothing
            } else {
                Touched::Nodes(nodes)
            }
        }
    }
}

/// Offers waiting to be recomputed. A set, not a queue: however many events arrive before the
/// offer controller drains it (or while this replica waits to lead, and nothing drains it), it
/// holds each offer at most once.
#[derive(Clone, Default)]
pub struct OfferTriggers {
    pending: Arc<Mutex<BTreeSet<String>>>,
    notify: Arc<Notify>,
}

impl OfferTriggers {
    pub fn touch(&self, offer: String) {
        self.pending
            .lock()
            .expect("trigger lock poisoned")
            .insert(offer);
        // Stores a permit when nobody waits, so a touch is never lost.
        self.notify.notify_one();
    }

    /// The pending offers as the offer controller's `reconcile_on` stream.
    pub fn stream(self) -> impl Stream<Item = ObjectRef<GpuOffer>> + Send {
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
/// generation moves; status writes do not) or a deleted one. Overlap between offers is decided
/// by age, so every offer is then recomputed.
pub fn offer_event_moves_ownership(
    generations: &mut HashMap<String, Option<i64>>,
    event: &watcher::Event<GpuOffer>,
) -> bool {
    match event {
        watcher::Event::Apply(offer) | watcher::Event::InitApply(offer) => {
            let generation = offer.metadata.generation;
            generations.insert(offer.name_any(), generation) != Some(generation)
        }
        watcher::Event::Delete(offer) => {
            generations.remove(&offer.name_any());
            true
        }
        watcher::Event::Init => false,
        watcher::Event::InitDone => true,
    }
}

/// Watches GpuOffers into `writer`'s store, triggers every offer when one of them changes what
/// the others may own, and forgets a deleted offer's backoff. (A lease's is forgotten by the
/// successful reconcile that removes its finalizer.)
pub async fn run_offers(
    client: Client,
    mut writer: Writer<GpuOffer>,
    triggers: OfferTriggers,
    backoff: Arc<Backoff>,
) {
    let reader = writer.as_reader();
    let mut generations = HashMap::new();
    let mut stream = std::pin::pin!(
        watcher(Api::<GpuOffer>::all(client), watcher::Config::default()).default_backoff()
    );
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                warn!(error = %e, "offer watch failed; retrying with backoff");
                continue;
            }
        };
        writer.apply_watcher_event(&event);
        if let watcher::Event::Delete(offer) = &event {
            backoff.forget(&backoff::key(OFFER_CONTROLLER, &offer.name_any()));
        }
        if offer_event_moves_ownership(&mut generations, &event) {
            for offer in reader.state() {
                triggers.touch(offer.name_any());
            }
        }
    }
}

/// Set once every watch has listed its objects: the inventory is complete.
#[derive(Clone, Default)]
pub struct Synced {
    nodes: Arc<AtomicBool>,
    pods: Arc<AtomicBool>,
    leases: Arc<AtomicBool>,
    slices: Arc<AtomicBool>,
    claims: Arc<AtomicBool>,
}

impl Synced {
    pub fn all(&self) -> bool {
        [
            &self.nodes,
            &self.pods,
            &self.leases,
            &self.slices,
            &self.claims,
        ]
        .iter()
        .all(|f| f.load(Ordering::Relaxed))
    }
}

/// Runs the watches until the process ends, keeping `inventory` current and sending the offers
/// each change touches to `triggers`. Without `dynamic_resources` (a cluster that does not serve
/// resource.k8s.io/v1), ResourceSlices and ResourceClaims are not watched and count as synced.
pub async fn run(
    client: Client,
    inventory: Arc<RwLock<Inventory>>,
    offers: Store<GpuOffer>,
    triggers: OfferTriggers,
    synced: Synced,
    dynamic_resources: bool,
) {
    let nodes = watcher(Api::<Node>::all(client.clone()), watcher::Config::default());
    let pods = watcher(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields(POD_FIELD_SELECTOR),
    );
    let leases = watcher(
        Api::<ComputeLease>::all(client.clone()),
        watcher::Config::default(),
    );
    let shared = || (inventory.clone(), offers.clone(), triggers.clone());
    let dra = async {
        if !dynamic_resources {
            synced.slices.store(true, Ordering::Relaxed);
            synced.claims.store(true, Ordering::Relaxed);
            return;
        }
        let slices = watcher(
            Api::<ResourceSlice>::all(client.clone()),
            watcher::Config::default(),
        );
        let claims = watcher(
            Api::<ResourceClaim>::all(client.clone()),
            watcher::Config::default(),
        );
        tokio::join!(
            drive(slices, on_slice_event, synced.slices.clone(), shared()),
            drive(claims, on_claim_event, synced.claims.clone(), shared()),
        );
    };
    tokio::join!(
        drive(nodes, on_node_event, synced.nodes.clone(), shared()),
        drive(pods, on_pod_event, synced.pods.clone(), shared()),
        drive(leases, on_lease_event, synced.leases.clone(), shared()),
        dra,
    );
}

type Handler<K, F> = fn(&mut Inventory, &mut Option<Vec<F>>, watcher::Event<K>) -> Touched;

type Shared = (Arc<RwLock<Inventory>>, Store<GpuOffer>, OfferTriggers);

async fn drive<K, F>(
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    handler: Handler<K, F>,
    synced: Arc<AtomicBool>,
    (inventory, offers, triggers): Shared,
) {
    let mut relist = None;
    let mut stream = std::pin::pin!(stream.default_backoff());
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                warn!(error = %e, "watch failed; retrying with backoff");
                continue;
            }
        };
        let done = matches!(event, watcher::Event::InitDone);
        let names = {
            let mut inventory = inventory.write().expect("inventory lock poisoned");
            let touched = handler(&mut inventory, &mut relist, event);
            let offer_facts: Vec<OfferFacts> = offers
                .state()
                .iter()
                .map(|o| OfferFacts::from_offer(o))
                .collect();
            touched_offers(&touched, &inventory, &offer_facts)
        };
        if done {
            synced.store(true, Ordering::Relaxed);
        }
        for name in names {
            triggers.touch(name);
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
        on_pod_event(&mut inv, &mut None, watcher::Event::Delete(pod));
        assert_eq!(inv.last_disruption("a"), Some("PreemptionByScheduler"));
        assert_eq!(inv.last_disruption("b"), None);
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
        let mut generations = HashMap::new();
        assert!(
            offer_event_moves_ownership(&mut generations, &watcher::Event::Apply(offer(1))),
            "new"
        );
        assert!(
            !offer_event_moves_ownership(&mut generations, &watcher::Event::Apply(offer(1))),
            "status write"
        );
        assert!(
            offer_event_moves_ownership(&mut generations, &watcher::Event::Apply(offer(2))),
            "spec change"
        );
        assert!(
            offer_event_moves_ownership(&mut generations, &watcher::Event::Delete(offer(2))),
            "deleted"
        );
        assert!(generations.is_empty());
    }

    #[test]
    fn relist_replaces_and_touches_everything() {
        let mut inv = Inventory::default();
        let mut relist = None;
        assert_eq!(
            on_node_event(&mut inv, &mut relist, watcher::Event::Init),
            Touched::Nothing
        );
        on_node_event(
            &mut inv,
            &mut relist,
            watcher::Event::InitApply(node("n1", "a", 8, "2027-01-01T00:00:00Z")),
        );
        assert!(
            inv.node("n1").is_none(),
            "not visible before the list is complete"
        );
        assert_eq!(
            on_node_event(&mut inv, &mut relist, watcher::Event::InitDone),
            Touched::All
        );
        assert_eq!(inv.node("n1").unwrap().allocatable("nvidia.com/gpu"), 8);
    }

    #[test]
    fn node_heartbeats_touch_nothing_but_capacity_changes_do() {
        let mut inv = Inventory::default();
        let mut relist = None;
        on_node_event(
            &mut inv,
            &mut relist,
            watcher::Event::Apply(node("n1", "a", 8, "2027-01-01T00:00:00Z")),
        );
        assert_eq!(
            on_node_event(
                &mut inv,
                &mut relist,
                watcher::Event::Apply(node("n1", "a", 8, "2027-01-01T00:00:10Z"))
            ),
            Touched::Nothing
        );
        assert_eq!(
            on_node_event(
                &mut inv,
                &mut relist,
                watcher::Event::Apply(node("n1", "a", 4, "2027-01-01T00:00:20Z"))
            ),
            Touched::Nodes(vec!["n1".into()])
        );
        assert_eq!(
            on_node_event(
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
        on_node_event(
            &mut inv,
            &mut nodes,
            watcher::Event::Apply(node("n1", "a", 8, "2027-01-01T00:00:00Z")),
        );
        on_node_event(
            &mut inv,
            &mut nodes,
            watcher::Event::Apply(node("n2", "b", 8, "2027-01-01T00:00:00Z")),
        );
        let offers = vec![offer("offer-a", "a"), offer("offer-b", "b")];
        let mut pods = None;
        let touched = on_pod_event(
            &mut inv,
            &mut pods,
            watcher::Event::Apply(pod("p", "n1", 2)),
        );
        assert_eq!(touched_offers(&touched, &inv, &offers), vec!["offer-a"]);
        assert_eq!(inv.used("n1", "nvidia.com/gpu"), 2);
        // The same pod again (a status update) touches nothing.
        assert_eq!(
            on_pod_event(
                &mut inv,
                &mut pods,
                watcher::Event::Apply(pod("p", "n1", 2))
            ),
            Touched::Nothing
        );
        let touched = on_pod_event(
            &mut inv,
            &mut pods,
            watcher::Event::Delete(pod("p", "n1", 2)),
        );
        assert_eq!(touched_offers(&touched, &inv, &offers), vec!["offer-a"]);
        assert_eq!(inv.used("n1", "nvidia.com/gpu"), 0);
    }
}

//! Table-driven tests for every rule of the formula, and its properties.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::Selector;
use proptest::prelude::*;

use super::*;
use crate::crd::{LeasePhase, NodeExclusion};

const GPU: &str = "nvidia.com/gpu";
const MIG: &str = "nvidia.com/mig-1g.10gb";

fn node(name: &str, model: &str, gpus: u32) -> NodeFacts {
    NodeFacts {
        name: name.into(),
        labels: BTreeMap::from([
            ("pool".to_string(), "gpu".to_string()),
            ("nvidia.com/gpu.product".to_string(), model.to_string()),
        ]),
        allocatable: BTreeMap::from([(GPU.to_string(), gpus)]),
        ready: true,
        unschedulable: false,
        taints: vec![],
    }
}

fn offer(name: &str, created: i64) -> OfferFacts {
    OfferFacts {
        name: name.into(),
        age_rank: (created, name.into()),
        selector: Ok(Selector::from_iter([("pool", "gpu")])),
        resource: GPU.into(),
        driver: None,
        max_gpus: 1000,
        reserve_gpus: 0,
        paused: false,
        tolerations: vec![],
    }
}

fn pod_on(node: &str, resource: &str, gpus: u32) -> PodFacts {
    PodFacts {
        node: node.into(),
        requests: BTreeMap::from([(resource.to_string(), gpus)]),
        lease: None,
    }
}

fn lease(name: &str, offer: &str, gpus: u32, active: bool) -> LeaseFacts {
    LeaseFacts {
        name: name.into(),
        offer: offer.into(),
        resource: GPU.into(),
        gpus,
        phase: if active {
            LeasePhase::Running
        } else {
            LeasePhase::Succeeded
        },
        node: None,
        model: None,
    }
}

fn inventory(nodes: Vec<NodeFacts>, pods: Vec<PodFacts>) -> Inventory {
    let mut inv = Inventory::default();
    for n in nodes {
        inv.upsert_node(n);
    }
    for (i, p) in pods.into_iter().enumerate() {
        inv.upsert_pod(&format!("ns/p{i}"), Some(p));
    }
    inv
}

fn reason_of(cap: &OfferCapacity, node: &str) -> Option<NodeExclusion> {
    cap.nodes
        .iter()
        .find(|n| n.name == node)
        .expect("node is listed")
        .reason
}

#[test]
fn empty_cluster_advertises_nothing() {
    let o = offer("a", 1);
    let cap = compute(&Inventory::default(), &o, std::slice::from_ref(&o));
    assert_eq!(cap, OfferCapacity::default());
}

#[test]
fn free_is_allocatable_minus_bound_pod_requests() {
    let inv = inventory(
        vec![node("n1", "H100", 8), node("n2", "H100", 8)],
        vec![pod_on("n1", GPU, 3), pod_on("n1", GPU, 1)],
    );
    let o = offer("a", 1);
    let cap = compute(&inv, &o, std::slice::from_ref(&o));
    assert_eq!(cap.idle, 12);
    assert_eq!(cap.advertised, 12);
    assert_eq!(cap.largest_block, 8);
    let n1 = cap.nodes.iter().find(|n| n.name == "n1").unwrap();
    assert_eq!((n1.allocatable, n1.free, n1.advertised), (8, 4, 4));
}

#[test]
fn pods_of_other_resources_do_not_count() {
    let inv = inventory(vec![node("n1", "H100", 8)], vec![pod_on("n1", MIG, 3)]);
    let o = offer("a", 1);
    assert_eq!(compute(&inv, &o, std::slice::from_ref(&o)).idle, 8);
}

#[test]
fn overcommitted_node_is_zero_not_negative() {
    let inv = inventory(vec![node("n1", "H100", 2)], vec![pod_on("n1", GPU, 5)]);
    let o = offer("a", 1);
    let cap = compute(&inv, &o, std::slice::from_ref(&o));
    assert_eq!(cap.idle, 0);
    assert_eq!(reason_of(&cap, "n1"), Some(NodeExclusion::FullyUsed));
}

#[test]
fn pending_bound_pods_count_and_terminal_pods_do_not() {
    // PodFacts::from_pod yields facts for bound Pending pods and none for terminal ones (tested
    // in facts.rs); here: a pod turning terminal releases its GPUs.
    let mut inv = inventory(vec![node("n1", "H100", 8)], vec![]);
    inv.upsert_pod("ns/p", Some(pod_on("n1", GPU, 8)));
    let o = offer("a", 1);
    assert_eq!(compute(&inv, &o, std::slice::from_ref(&o)).idle, 0);
    inv.upsert_pod("ns/p", None);
    assert_eq!(compute(&inv, &o, std::slice::from_ref(&o)).idle, 8);
}

#[test]
fn unusable_nodes_contribute_nothing_with_their_reason() {
    let mut not_ready = node("not-ready", "H100", 8);
    not_ready.ready = false;
    let mut cordoned = node("cordoned", "H100", 8);
    cordoned.unschedulable = true;
    let mut tainted = node("tainted", "H100", 8);
    tainted.taints = vec![Taint {
        key: "dedicated".into(),
        value: Some("training".into()),
        effect: "NoSchedule".into(),
        time_added: None,
    }];
    let mut outside = node("outside", "H100", 8);
    outside.labels.insert("pool".into(), "other".into());
    let mut cpu_only = node("cpu-only", "none", 0);
    cpu_only.labels.insert("pool".into(), "other".into());
    let no_gpus = node("no-gpus", "H100", 0);
    let inv = inventory(
        vec![
            not_ready,
            cordoned,
            tainted,
            outside,
            cpu_only,
            no_gpus,
            node("ok", "H100", 8),
        ],
        vec![],
    );
    let o = offer("a", 1);
    let cap = compute(&inv, &o, std::slice::from_ref(&o));
    assert_eq!(cap.idle, 8);
    assert_eq!(cap.advertised, 8);
    assert_eq!(reason_of(&cap, "not-ready"), Some(NodeExclusion::NotReady));
    assert_eq!(reason_of(&cap, "cordoned"), Some(NodeExclusion::Cordoned));
    assert_eq!(reason_of(&cap, "tainted"), Some(NodeExclusion::Tainted));
    assert_eq!(reason_of(&cap, "no-gpus"), Some(NodeExclusion::NoGpus));
    assert_eq!(reason_of(&cap, "ok"), None);
    assert!(
        cap.nodes
            .iter()
            .all(|n| n.name != "cpu-only" && n.name != "outside"),
        "nodes outside the selector are not listed, with GPUs or without"
    );
    assert_eq!(cap.nodes[0].name, "ok", "contributing nodes come first");
}

#[test]
fn a_tolerated_taint_does_not_exclude() {
    let mut tainted = node("tainted", "H100", 8);
    tainted.taints = vec![Taint {
        key: "nvidia.com/gpu".into(),
        value: None,
        effect: "NoExecute".into(),
        time_added: None,
    }];
    let inv = inventory(vec![tainted], vec![]);
    let mut o = offer("a", 1);
    o.tolerations = vec![Toleration {
        key: Some("nvidia.com/gpu".into()),
        operator: Some("Exists".into()),
        ..Default::default()
    }];
    assert_eq!(compute(&inv, &o, std::slice::from_ref(&o)).advertised, 8);
}

#[test]
fn overlapping_offers_the_older_owns_the_node() {
    let inv = inventory(vec![node("n1", "H100", 8)], vec![]);
    let older = offer("older", 1);
    let newer = offer("newer", 2);
    let all = vec![newer.clone(), older.clone()];
    let cap_old = compute(&inv, &older, &all);
    let cap_new = compute(&inv, &newer, &all);
    assert_eq!(cap_old.advertised, 8);
    assert_eq!(cap_old.overlapping_nodes, 0);
    assert_eq!(cap_new.advertised, 0);
    assert_eq!(cap_new.overlapping_nodes, 1);
    assert_eq!(
        reason_of(&cap_new, "n1"),
        Some(NodeExclusion::ClaimedByOtherOffer)
    );
}

#[test]
fn same_age_offers_are_ordered_by_name() {
    let inv = inventory(vec![node("n1", "H100", 8)], vec![]);
    let (a, b) = (offer("a", 1), offer("b", 1));
    let all = vec![a.clone(), b.clone()];
    assert_eq!(compute(&inv, &a, &all).advertised, 8);
    assert_eq!(compute(&inv, &b, &all).advertised, 0);
}

#[test]
fn offers_of_different_resources_do_not_overlap() {
    let mut n = node("n1", "A100", 4);
    n.allocatable.insert(MIG.into(), 7);
    let inv = inventory(vec![n], vec![]);
    let whole = offer("whole", 1);
    let mut mig = offer("mig", 2);
    mig.resource = MIG.into();
    let all = vec![whole.clone(), mig.clone()];
    assert_eq!(compute(&inv, &whole, &all).advertised, 4);
    assert_eq!(compute(&inv, &mig, &all).advertised, 7);
}

#[test]
fn mig_slices_are_counted_under_their_resource_name() {
    let mut n = node("n1", "A100", 0);
    n.allocatable = BTreeMap::from([(MIG.to_string(), 7)]);
    let inv = inventory(vec![n], vec![pod_on("n1", MIG, 2), pod_on("n1", GPU, 1)]);
    let mut o = offer("mig", 1);
    o.resource = MIG.into();
    let cap = compute(&inv, &o, std::slice::from_ref(&o));
    assert_eq!((cap.idle, cap.advertised, cap.largest_block), (5, 5, 5));
}

#[test]
fn reserve_is_kept_back_on_the_smallest_blocks() {
    let inv = inventory(
        vec![node("big", "H100", 8), node("small", "H100", 2)],
        vec![],
    );
    let mut o = offer("a", 1);
    o.reserve_gpus = 3;
    let cap = compute(&inv, &o, std::slice::from_ref(&o));
    assert_eq!(cap.idle, 10);
    assert_eq!(cap.advertised, 7);
    assert_eq!(cap.largest_block, 7);
    assert_eq!(reason_of(&cap, "small"), Some(NodeExclusion::Reserved));
}

#[test]
fn reserve_larger_than_free_advertises_zero() {
    let inv = inventory(vec![node("n1", "H100", 4)], vec![]);
    let mut o = offer("a", 1);
    o.reserve_gpus = 10;
    let cap = compute(&inv, &o, std::slice::from_ref(&o));
    assert_eq!((cap.idle, cap.advertised, cap.largest_block), (4, 0, 0));
}

#[test]
fn max_gpus_minus_leased_caps_what_is_advertised() {
    let inv = inventory(
        vec![node("n1", "H100", 8), node("n2", "H100", 8)],
        vec![PodFacts {
            lease: Some("l1".into()),
            ..pod_on("n1", GPU, 2)
        }],
    );
    let mut inv = inv;
    inv.upsert_lease(lease("l1", "a", 2, true));
    let mut o = offer("a", 1);
    o.max_gpus = 9;
    let cap = compute(&inv, &o, std::slice::from_ref(&o));
    assert_eq!(cap.leased, 2);
    assert_eq!(cap.idle, 14);
    assert_eq!(cap.advertised, 7, "maxGpus 9 minus 2 leased");
    assert_eq!(
        cap.largest_block, 7,
        "the cap is spent on the largest block first"
    );
    assert_eq!(reason_of(&cap, "n1"), Some(NodeExclusion::CapReached));
}

#[test]
fn fully_leased_offer_advertises_nothing() {
    let mut inv = inventory(vec![node("n1", "H100", 8)], vec![]);
    inv.upsert_lease(lease("l1", "a", 4, true));
    let mut o = offer("a", 1);
    o.max_gpus = 4;
    let cap = compute(&inv, &o, std::slice::from_ref(&o));
    assert_eq!(cap.advertised, 0);
}

#[test]
fn admitted_lease_without_a_bound_pod_holds_its_gpus() {
    let mut inv = inventory(vec![node("n1", "H100", 8), node("n2", "H100", 4)], vec![]);
    inv.upsert_lease(lease("l1", "a", 4, true));
    let o = offer("a", 1);
    let cap = compute(&inv, &o, std::slice::from_ref(&o));
    assert_eq!(cap.pending_holds, 4);
    assert_eq!(cap.idle, 8);
    assert_eq!(
        cap.largest_block, 8,
        "best fit: the hold lands on the 4-GPU node"
    );
    // Once its pod is bound, the pod's request counts instead of the hold: never both.
    inv.upsert_pod(
        "lease-l1/workload",
        Some(PodFacts {
            lease: Some("l1".into()),
            ..pod_on("n1", GPU, 4)
        }),
    );
    let cap = compute(&inv, &o, std::slice::from_ref(&o));
    assert_eq!(cap.pending_holds, 0);
    assert_eq!(cap.idle, 8);
}

#[test]
fn a_lease_placed_by_intake_holds_on_its_node() {
    let mut inv = inventory(vec![node("n1", "H100", 8), node("n2", "H100", 4)], vec![]);
    inv.upsert_lease(LeaseFacts {
        node: Some("n1".into()),
        ..lease("l1", "a", 4, true)
    });
    let o = offer("a", 1);
    let cap = compute(&inv, &o, std::slice::from_ref(&o));
    assert_eq!((cap.pending_holds, cap.idle), (4, 8));
    assert_eq!(
        cap.largest_block, 4,
        "the hold is on n1, where its pod will be pinned"
    );
    // A node that cannot take it (gone, or too full) falls back to best fit.
    inv.upsert_lease(LeaseFacts {
        node: Some("gone".into()),
        ..lease("l1", "a", 4, true)
    });
    let cap = compute(&inv, &o, std::slice::from_ref(&o));
    assert_eq!((cap.pending_holds, cap.largest_block), (4, 8));
}

#[test]
fn a_hold_that_fits_nowhere_whole_still_counts() {
    let mut inv = inventory(vec![node("n1", "H100", 2), node("n2", "H100", 2)], vec![]);
    inv.upsert_lease(lease("l1", "a", 3, true));
    let o = offer("a", 1);
    let cap = compute(&inv, &o, std::slice::from_ref(&o));
    assert_eq!(cap.idle, 1);
}

#[test]
fn ended_leases_and_other_offers_leases_hold_nothing() {
    let mut inv = inventory(vec![node("n1", "H100", 8)], vec![]);
    inv.upsert_lease(lease("done", "a", 4, false));
    inv.upsert_lease(lease("other", "b", 4, true));
    let o = offer("a", 1);
    let cap = compute(&inv, &o, std::slice::from_ref(&o));
    assert_eq!((cap.idle, cap.leased, cap.pending_holds), (8, 0, 0));
}

#[test]
fn paused_offer_shows_idle_but_advertises_nothing() {
    let inv = inventory(vec![node("n1", "H100", 8)], vec![]);
    let mut o = offer("a", 1);
    o.paused = true;
    let cap = compute(&inv, &o, std::slice::from_ref(&o));
    assert_eq!((cap.idle, cap.advertised, cap.largest_block), (8, 0, 0));
    assert_eq!(reason_of(&cap, "n1"), Some(NodeExclusion::Paused));
}

#[test]
fn one_gpu_is_never_truncated_to_zero() {
    let inv = inventory(vec![node("n1", "RTX-4090", 1)], vec![]);
    let o = offer("a", 1);
    assert_eq!(compute(&inv, &o, std::slice::from_ref(&o)).advertised, 1);
}

#[test]
fn capacity_is_reported_per_model() {
    let inv = inventory(
        vec![
            node("h1", "H100", 8),
            node("h2", "H100", 8),
            node("a1", "A100", 4),
        ],
        vec![pod_on("h1", GPU, 6)],
    );
    let o = offer("a", 1);
    let cap = compute(&inv, &o, std::slice::from_ref(&o));
    let by_model: BTreeMap<_, _> = cap.models.iter().map(|m| (m.model.as_str(), m)).collect();
    assert_eq!(by_model["H100"].idle_gpus, 10);
    assert_eq!(by_model["H100"].largest_block, 8);
    assert_eq!(by_model["A100"].advertised_gpus, 4);
    assert_eq!(cap.largest_block, 8);
}

#[test]
fn invalid_selector_selects_nothing_and_says_why() {
    let inv = inventory(vec![node("n1", "H100", 8)], vec![]);
    let mut o = offer("a", 1);
    o.selector = Selector::try_from(LabelSelector {
        match_expressions: Some(vec![Default::default()]),
        ..Default::default()
    })
    .map_err(|e| e.0);
    let cap = compute(&inv, &o, std::slice::from_ref(&o));
    assert_eq!(cap.advertised, 0);
    assert!(cap.invalid_selector.is_some());
}

#[test]
fn eligible_nodes_for_a_lease() {
    let mut cordoned = node("cordoned", "H100", 8);
    cordoned.unschedulable = true;
    let inv = inventory(
        vec![
            node("h1", "H100", 8),
            node("small", "H100", 2),
            node("a1", "A100", 8),
            cordoned,
        ],
        vec![],
    );
    let o = offer("a", 1);
    let all = std::slice::from_ref(&o);
    assert_eq!(eligible_nodes(&inv, &o, all, 4, None), vec!["a1", "h1"]);
    assert_eq!(eligible_nodes(&inv, &o, all, 4, Some("H100")), vec!["h1"]);
    assert!(eligible_nodes(&inv, &o, all, 16, None).is_empty());
}

// Properties over random clusters: free stays within [0, allocatable], and no GPU is advertised
// by two offers.

#[derive(Debug, Clone)]
struct Cluster {
    nodes: Vec<(u32, bool, bool, u8)>,
    pods: Vec<(usize, u32)>,
    offers: Vec<(u8, u32, u32, bool)>,
    leases: Vec<(usize, u32, bool)>,
}

fn cluster() -> impl Strategy<Value = Cluster> {
    (
        prop::collection::vec((0u32..=8, any::<bool>(), any::<bool>(), 0u8..3), 1..20),
        prop::collection::vec((0usize..20, 0u32..5), 0..60),
        prop::collection::vec((0u8..3, 0u32..40, 1u32..60, any::<bool>()), 1..4),
        prop::collection::vec((0usize..4, 1u32..8, any::<bool>()), 0..6),
    )
        .prop_map(|(nodes, pods, offers, leases)| Cluster {
            nodes,
            pods,
            offers,
            leases,
        })
}

fn build(c: &Cluster) -> (Inventory, Vec<OfferFacts>) {
    let mut inv = Inventory::default();
    for (i, (gpus, ready, cordoned, pool)) in c.nodes.iter().enumerate() {
        let mut n = node(&format!("n{i}"), "H100", *gpus);
        n.ready = *ready || i % 2 == 0;
        n.unschedulable = *cordoned && i % 3 == 0;
        n.labels.insert("pool".into(), format!("p{pool}"));
        inv.upsert_node(n);
    }
    for (i, (n, gpus)) in c.pods.iter().enumerate() {
        inv.upsert_pod(
            &format!("ns/p{i}"),
            Some(pod_on(&format!("n{}", n % c.nodes.len()), GPU, *gpus)),
        );
    }
    let offers: Vec<OfferFacts> = c
        .offers
        .iter()
        .enumerate()
        .map(|(i, (pool, reserve, max, paused))| OfferFacts {
            selector: Ok(Selector::from_iter([(
                "pool".to_string(),
                format!("p{pool}"),
            )])),
            reserve_gpus: *reserve,
            max_gpus: *max,
            paused: *paused,
            ..offer(&format!("o{i}"), i as i64)
        })
        .collect();
    for (i, (o, gpus, active)) in c.leases.iter().enumerate() {
        inv.upsert_lease(lease(
            &format!("l{i}"),
            &format!("o{}", o % offers.len()),
            *gpus,
            *active,
        ));
    }
    (inv, offers)
}

proptest! {
    #[test]
    fn free_is_within_zero_and_allocatable(c in cluster()) {
        let (inv, offers) = build(&c);
        for o in &offers {
            let cap = compute(&inv, o, &offers);
            for n in &cap.nodes {
                prop_assert!(n.free <= n.allocatable, "{n:?}");
                prop_assert!(n.advertised <= n.free, "{n:?}");
            }
            prop_assert!(cap.advertised <= cap.idle);
            prop_assert!(cap.advertised <= o.max_gpus.saturating_sub(cap.leased));
            prop_assert!(cap.largest_block <= cap.advertised);
        }
    }

    #[test]
    fn advertised_over_all_offers_never_exceeds_free(c in cluster()) {
        let (inv, offers) = build(&c);
        let total_free: u32 = inv
            .nodes()
            .filter(|n| n.ready && !n.unschedulable)
            .map(|n| n.allocatable(GPU).saturating_sub(inv.used(&n.name, GPU)))
            .sum();
        let total_advertised: u32 = offers.iter().map(|o| compute(&inv, o, &offers).advertised).sum();
        prop_assert!(total_advertised <= total_free, "{total_advertised} > {total_free}");
        // And no node is advertised by two offers.
        let mut seen = std::collections::HashSet::new();
        for o in &offers {
            for n in compute(&inv, o, &offers).nodes.iter().filter(|n| n.advertised > 0) {
                prop_assert!(seen.insert(n.name.clone()), "{} advertised twice", n.name);
            }
        }
    }
}

mod dynamic_resources {
    use super::*;
    use crate::capacity::dra::{DeviceFacts, DeviceRef, SliceFacts, dra_resource};

    const DRIVER: &str = "gpu.example.com";

    fn dra_offer() -> OfferFacts {
        OfferFacts {
            resource: dra_resource("gpu.example.com"),
            driver: Some(DRIVER.into()),
            ..offer("dra", 1)
        }
    }

    /// A node with no extended resource, its GPUs published by the DRA driver instead.
    fn dra_node(name: &str) -> NodeFacts {
        NodeFacts {
            allocatable: BTreeMap::new(),
            labels: BTreeMap::from([("pool".to_string(), "gpu".to_string())]),
            ..node(name, "", 0)
        }
    }

    fn slice(node: &str, driver: &str, devices: usize) -> SliceFacts {
        SliceFacts {
            name: format!("{node}-{driver}"),
            node: node.into(),
            driver: driver.into(),
            pool: node.into(),
            devices: (0..devices)
                .map(|i| DeviceFacts {
                    name: format!("gpu-{i}"),
                    attributes: BTreeMap::from([(
                        "productName".to_string(),
                        "NVIDIA H200".to_string(),
                    )]),
                })
                .collect(),
        }
    }

    fn allocated(pool: &str, devices: &[usize]) -> Vec<DeviceRef> {
        devices
            .iter()
            .map(|i| DeviceRef {
                driver: DRIVER.into(),
                pool: pool.into(),
                device: format!("gpu-{i}"),
            })
            .collect()
    }

    #[test]
    fn free_devices_are_published_minus_allocated_per_node() {
        let mut inv = inventory(vec![dra_node("d1"), dra_node("d2")], vec![]);
        // A claim seen before its slice: counted once the slice names its pool's node.
        assert!(
            inv.upsert_claim("ns/early", allocated("d1", &[0]))
                .is_empty()
        );
        inv.upsert_slice("d1-gpu", Some(slice("d1", DRIVER, 4)));
        inv.upsert_slice("d2-gpu", Some(slice("d2", DRIVER, 8)));
        // Another driver's devices are not this offer's.
        inv.upsert_slice("d2-nic", Some(slice("d2", "nic.example.com", 2)));
        assert_eq!(
            inv.upsert_claim("ns/a", allocated("d2", &[0, 1, 2])),
            vec!["d2".to_string()]
        );
        let o = dra_offer();
        let cap = compute(&inv, &o, std::slice::from_ref(&o));
        assert_eq!((cap.idle, cap.advertised, cap.largest_block), (3 + 5, 8, 5));
        let d2 = cap.nodes.iter().find(|n| n.name == "d2").unwrap();
        assert_eq!((d2.allocatable, d2.free), (8, 5));
        assert_eq!(
            d2.model.as_deref(),
            Some("NVIDIA H200"),
            "model from the devices"
        );
        assert_eq!(cap.models[0].model, "NVIDIA H200");

        // Released claims give devices back; a deleted slice takes its node's devices away.
        inv.upsert_claim("ns/a", vec![]);
        inv.upsert_slice("d1-gpu", None);
        let cap = compute(&inv, &o, std::slice::from_ref(&o));
        assert_eq!(cap.idle, 8);
        assert_eq!(reason_of(&cap, "d1"), Some(NodeExclusion::NoGpus));
        assert_eq!(
            eligible_nodes(&inv, &o, std::slice::from_ref(&o), 8, None),
            vec!["d2"]
        );
        assert_eq!(
            eligible_nodes(&inv, &o, std::slice::from_ref(&o), 8, Some("NVIDIA H200")),
            vec!["d2"]
        );
        assert!(eligible_nodes(&inv, &o, std::slice::from_ref(&o), 9, None).is_empty());
    }

    #[test]
    fn extended_resource_offers_ignore_dra_devices_and_the_reverse() {
        let mut inv = inventory(vec![node("h1", "H100", 8)], vec![pod_on("h1", GPU, 2)]);
        inv.upsert_slice("h1-gpu", Some(slice("h1", DRIVER, 4)));
        inv.upsert_claim("ns/a", allocated("h1", &[0]));
        let plain = offer("plain", 0);
        let dra = dra_offer();
        let both = [plain.clone(), dra.clone()];
        assert_eq!(compute(&inv, &plain, &both).idle, 6);
        // Different resources: the same node is not an overlap.
        assert_eq!(compute(&inv, &dra, &both).idle, 3);
    }

    #[test]
    fn a_relist_replaces_slices_and_claims_whole() {
        let mut inv = inventory(vec![dra_node("d1")], vec![]);
        inv.upsert_slice("old", Some(slice("d1", DRIVER, 2)));
        inv.replace_slices([slice("d1", DRIVER, 6)]);
        inv.replace_claims([
            ("ns/a".to_string(), allocated("d1", &[0, 1])),
            ("ns/pending".to_string(), vec![]),
        ]);
        let o = dra_offer();
        assert_eq!(compute(&inv, &o, std::slice::from_ref(&o)).idle, 4);
    }
}

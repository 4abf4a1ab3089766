//! Capacity recompute at scale: 5,000 GPU nodes and 100,000 pods, and the cost of one
//! incremental pod event. Run with `make bench`.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use gpubridge::capacity::{self, Inventory, NodeFacts, OfferFacts, PodFacts};
use gpubridge::operator::controller::watch::{Touched, touched_offers};
use k8s_openapi::api::core::v1::Pod;
use kube::core::Selector;

const NODES: usize = 5_000;
const PODS: usize = 100_000;
const POOLS: usize = 10;
const GPU: &str = "nvidia.com/gpu";

fn node(i: usize) -> NodeFacts {
    NodeFacts {
        name: format!("gpu-{i:05}"),
        labels: BTreeMap::from([
            ("pool".to_string(), format!("p{}", i % POOLS)),
            (
                "nvidia.com/gpu.product".to_string(),
                if i.is_multiple_of(3) { "A100" } else { "H100" }.to_string(),
            ),
            ("kubernetes.io/hostname".to_string(), format!("gpu-{i:05}")),
        ]),
        allocatable: BTreeMap::from([(GPU.to_string(), 8)]),
        ready: !i.is_multiple_of(97),
        unschedulable: i.is_multiple_of(101),
        taints: vec![],
    }
}

/// Pod `i`: a fifth of pods hold one GPU, the rest none (system and CPU pods).
fn pod(i: usize) -> (String, PodFacts) {
    let requests = if i.is_multiple_of(5) {
        BTreeMap::from([(GPU.to_string(), 1)])
    } else {
        BTreeMap::new()
    };
    (
        format!("ns-{}/pod-{i}", i % 500),
        PodFacts {
            node: format!("gpu-{:05}", i % NODES),
            requests,
            lease: None,
        },
    )
}

fn offers() -> Vec<OfferFacts> {
    (0..POOLS)
        .map(|p| OfferFacts {
            name: format!("offer-{p}"),
            age_rank: (p as i64, format!("offer-{p}")),
            selector: Ok(Selector::from_iter([("pool".to_string(), format!("p{p}"))])),
            resource: GPU.to_string(),
            driver: None,
            max_gpus: 4_000,
            reserve_gpus: 16,
            paused: false,
            tolerations: vec![],
        })
        .collect()
}

fn cluster() -> Inventory {
    let mut inventory = Inventory::default();
    inventory.replace_nodes((0..NODES).map(node));
    inventory.replace_pods((0..PODS).map(pod));
    inventory
}

fn benches(c: &mut Criterion) {
    let offers = offers();
    let mut inventory = cluster();

    c.bench_function("index 5k nodes + 100k pods (re-list)", |b| {
        b.iter(|| {
            let mut inv = Inventory::default();
            inv.replace_nodes((0..NODES).map(node));
            inv.replace_pods((0..PODS).map(pod));
            black_box(inv.pod_count())
        })
    });

    c.bench_function("recompute all 10 offers over 5k nodes", |b| {
        b.iter(|| {
            for o in &offers {
                black_box(capacity::compute(&inventory, o, &offers));
            }
        })
    });

    // One pod on one node starts or stops holding a GPU: update the index, find the offers it
    // touches, and recompute them.
    let mut holds = false;
    c.bench_function(
        "incremental pod event (index + touched offer recompute)",
        |b| {
            b.iter(|| {
                holds = !holds;
                let facts = PodFacts {
                    node: "gpu-00042".to_string(),
                    requests: if holds {
                        BTreeMap::from([(GPU.to_string(), 2)])
                    } else {
                        BTreeMap::new()
                    },
                    lease: None,
                };
                let touched = Touched::Nodes(inventory.upsert_pod("bench/event", Some(facts)));
                for name in touched_offers(&touched, &inventory, &offers) {
                    let offer = offers.iter().find(|o| o.name == name).unwrap();
                    black_box(capacity::compute(&inventory, offer, &offers));
                }
            })
        },
    );

    let mut full_pod: Pod =
        serde_yaml::from_str(include_str!("../tests/fixtures/golden/pod.yaml")).unwrap();
    full_pod.spec.as_mut().unwrap().node_name = Some("gpu-00042".to_string());
    c.bench_function("reduce one full lease pod to its facts", |b| {
        b.iter(|| black_box(PodFacts::from_pod(black_box(&full_pod))))
    });
}

criterion_group! {
    name = capacity;
    config = Criterion::default().sample_size(20);
    targets = benches
}
criterion_main!(capacity);

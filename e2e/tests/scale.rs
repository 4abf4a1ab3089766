//! `make bench-scale`: the operator on the kwok control plane at 5,000 fake 8-GPU nodes and
//! 100,000 pods (most without GPUs, with the env, labels and annotations real pods carry), one
//! offer over all of them. Prints figures, asserts only that the status is exact; not a test.
//!
//! Reaction is measured side by side with its floor in the same run: for each sample pod, the
//! floor is the time until a bare watch of the bench's own sees the pod plus one write (a
//! ConfigMap) that another bare watch sees; the operator's reaction is the time until the
//! offer's status shows the change.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use gpubridge::crd::GpuOffer;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;

use crate::install_crds;
use crate::sidecars::status_kib;
use crate::support::{
    Operator, apply_yaml, cluster, eventually, http_get, metric, percentile, wait_http_ok,
};

const NODES: usize = 5_000;
const PODS: usize = 100_000;
const GPUS_PER_NODE: u32 = 8;
/// The first NODES pods hold one GPU each, one per node; the rest hold none.
const EXPECTED_IDLE: u32 = NODES as u32 * (GPUS_PER_NODE - 1);
/// 100, so that p99 is not simply the slowest sample.
const SAMPLES: usize = 100;
const SAMPLE_GPUS: u32 = 2;
const IN_FLIGHT: usize = 48;
const NAMESPACE: &str = "scale";

fn node(i: usize) -> Node {
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("scale-{i:04}"),
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": format!("scale-{i:04}"),
                "type": "kwok",
                "gpubridge.dev/pool": "scale",
                "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
                "nvidia.com/gpu.count": "8",
                "topology.kubernetes.io/zone": format!("zone-{}", i % 3),
            }
        },
        "status": {
            "allocatable": {"cpu": "192", "memory": "2Ti", "pods": "110", "nvidia.com/gpu": "8"},
            "capacity": {"cpu": "192", "memory": "2Ti", "pods": "110", "nvidia.com/gpu": "8"}
        }
    }))
    .unwrap()
}

/// A pod as a real one looks to the API: labels of its workload, annotations, a dozen env vars.
fn pod(name: &str, node: &str, gpus: u32, labels: BTreeMap<&str, String>) -> Pod {
    let env: Vec<_> = (0..12)
        .map(|k| json!({"name": format!("APP_SETTING_{k}"), "value": format!("value-{k}-{name}")}))
        .collect();
    let mut limits = json!({"cpu": "500m", "memory": "512Mi"});
    if gpus > 0 {
        limits["nvidia.com/gpu"] = json!(gpus.to_string());
    }
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "9090",
                "kubectl.kubernetes.io/default-container": "app",
            }
        },
        "spec": {
            "nodeName": node,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{
                "name": "app",
                "image": "registry.example.com/team/app:1.42.0",
                "env": env,
                "resources": {"requests": limits.clone(), "limits": limits}
            }]
        }
    }))
    .unwrap()
}

fn load_pod(i: usize) -> Pod {
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name", format!("app-{}", i % 50)),
        ("app.kubernetes.io/instance", format!("inst-{}", i % 500)),
        ("app.kubernetes.io/part-of", "platform".to_string()),
        ("team", format!("team-{}", i % 20)),
        ("pod-template-hash", format!("{:010x}", i / 10)),
    ]);
    let gpus = u32::from(i < NODES);
    pod(
        &format!("load-{i:06}"),
        &format!("scale-{:04}", i % NODES),
        gpus,
        labels,
    )
}

async fn create_all<K>(api: &Api<K>, objects: impl Iterator<Item = K>) -> Duration
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let started = Instant::now();
    futures::stream::iter(objects)
        .map(|object| async move {
            match api.create(&PostParams::default(), &object).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                Err(e) => Err(e),
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
    started.elapsed()
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Watches that report when they see what a sample waits for.
struct Watches {
    pods: mpsc::UnboundedReceiver<(String, bool, Instant)>,
    writes: mpsc::UnboundedReceiver<(String, Instant)>,
    idle: mpsc::UnboundedReceiver<(u32, Instant)>,
}

fn start_watches(client: &Client) -> Watches {
    let (pod_tx, pods) = mpsc::unbounded_channel();
    let (write_tx, writes) = mpsc::unbounded_channel();
    let (idle_tx, idle) = mpsc::unbounded_channel();
    let sample_pods = watcher(
        Api::<Pod>::namespaced(client.clone(), NAMESPACE),
        watcher::Config::default().labels("bench=sample"),
    );
    tokio::spawn(async move {
        let mut events = std::pin::pin!(sample_pods.default_backoff());
        while let Some(Ok(event)) = events.next().await {
            match event {
                watcher::Event::Apply(p) => {
                    let _ = pod_tx.send((p.name_any(), true, Instant::now()));
                }
                watcher::Event::Delete(p) => {
                    let _ = pod_tx.send((p.name_any(), false, Instant::now()));
                }
                _ => {}
            }
        }
    });
    let config_maps = watcher(
        Api::<ConfigMap>::namespaced(client.clone(), NAMESPACE),
        watcher::Config::default().fields("metadata.name=bench-floor"),
    );
    tokio::spawn(async move {
        let mut events = std::pin::pin!(config_maps.applied_objects().default_backoff());
        while let Some(Ok(cm)) = events.next().await {
            if let Some(mark) = cm.data.and_then(|d| d.get("mark").cloned()) {
                let _ = write_tx.send((mark, Instant::now()));
            }
        }
    });
    let offers = watcher(
        Api::<GpuOffer>::all(client.clone()),
        watcher::Config::default().fields("metadata.name=scale"),
    );
    tokio::spawn(async move {
        let mut events = std::pin::pin!(offers.applied_objects().default_backoff());
        while let Some(Ok(offer)) = events.next().await {
            if let Some(status) = offer.status {
                let _ = idle_tx.send((status.idle_gpus, Instant::now()));
            }
        }
    });
    Watches { pods, writes, idle }
}

async fn pod_seen(
    pods: &mut mpsc::UnboundedReceiver<(String, bool, Instant)>,
    name: &str,
    present: bool,
) -> Instant {
    loop {
        let (seen, applied, at) = pods.recv().await.unwrap();
        if seen == name && applied == present {
            return at;
        }
    }
}

async fn write_seen(
    writes: &mut mpsc::UnboundedReceiver<(String, Instant)>,
    mark: &str,
) -> Instant {
    loop {
        let (seen, at) = writes.recv().await.unwrap();
        if seen == mark {
            return at;
        }
    }
}

async fn idle_is(idle: &mut mpsc::UnboundedReceiver<(u32, Instant)>, wanted: u32) -> Instant {
    loop {
        let (seen, at) = idle.recv().await.unwrap();
        if seen == wanted {
            return at;
        }
    }
}

/// One change and its timings: (floor, operator reaction).
async fn sample(
    client: &Client,
    watches: &mut Watches,
    name: &str,
    node: &str,
    create: bool,
) -> (Duration, Duration) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let started = Instant::now();
    if create {
        let labels = BTreeMap::from([("bench", "sample".to_string())]);
        pods.create(
            &PostParams::default(),
            &pod(name, node, SAMPLE_GPUS, labels),
        )
        .await
        .unwrap();
    } else {
        pods.delete(name, &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
    }
    let mark = format!("{name}-{create}");
    let Watches { pods, writes, idle } = watches;
    let (floor, reaction) = tokio::join!(
        async {
            pod_seen(pods, name, create).await;
            config_maps
                .patch(
                    "bench-floor",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {"mark": mark}})),
                )
                .await
                .unwrap();
            write_seen(writes, &mark).await - started
        },
        async {
            let wanted = if create {
                EXPECTED_IDLE - SAMPLE_GPUS
            } else {
                EXPECTED_IDLE
            };
            idle_is(idle, wanted).await - started
        }
    );
    (floor, reaction)
}

#[tokio::test]
#[ignore = "a benchmark at scale: `make bench-scale` runs it on the e2e control plane"]
async fn the_operator_at_5000_nodes_and_100000_pods() {
    let Some(c) = cluster("scale").await else {
        return;
    };
    install_crds(&c.client).await;
    let namespaces: Api<Namespace> = Api::all(c.client.clone());
    let _ = namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}})).unwrap(),
        )
        .await;
    apply_yaml(
        &c.client,
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: bench-floor, namespace: {NAMESPACE}}}\ndata: {{mark: none}}\n"
        ),
    )
    .await;

    let nodes: Api<Node> = Api::all(c.client.clone());
    let took = create_all(&nodes, (0..NODES).map(node)).await;
    println!("scale: {NODES} nodes created in {took:.1?}");
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NAMESPACE);
    let took = create_all(&pods, (0..PODS).map(load_pod)).await;
    println!("scale: {PODS} pods created in {took:.1?}");

    // The control plane settles first: kwok marks the nodes Ready and the node lifecycle
    // controller lifts their not-ready taints at its own rate-limited pace (minutes at this
    // size). Measured before that, "the first exact status" would time the control plane.
    let settled = Instant::now();
    eventually(
        "every node Ready and untainted",
        Duration::from_secs(1200),
        || async {
            let listed = nodes
                .list(&kube::api::ListParams::default().labels("gpubridge.dev/pool=scale"))
                .await
                .map_err(|e| e.to_string())?;
            let waiting = listed
                .items
                .iter()
                .filter(|n| {
                    n.spec
                        .as_ref()
                        .and_then(|s| s.taints.as_ref())
                        .is_some_and(|t| !t.is_empty())
                })
                .count();
            if waiting == 0 {
                Ok(())
            } else {
                Err(format!("{waiting} nodes still tainted"))
            }
        },
    )
    .await;
    println!(
        "scale: control plane settled {:.1?} after the load",
        settled.elapsed()
    );

    let operator = Operator::start_with(&c, "scale", &["--dynamic-resources=false".into()]);
    let started = Instant::now();
    // Listing 100,000 pods and 5,000 nodes takes longer than the usual readiness wait.
    wait_http_ok(
        "the operator's caches to sync",
        &format!("{}/readyz", operator.http),
        Duration::from_secs(600),
    )
    .await;
    let synced_in = started.elapsed();
    operator.wait_leader().await;
    let pid = operator.pid().unwrap();
    let rss_synced = status_kib(pid, "VmRSS:").unwrap();

    let mut watches = start_watches(&c.client);
    let offer_created = Instant::now();
    apply_yaml(
        &c.client,
        r#"
apiVersion: gpubridge.dev/v1alpha1
kind: GpuOffer
metadata: {name: scale}
spec:
  nodeSelector: {matchLabels: {gpubridge.dev/pool: scale}}
  maxGpus: 100000
  price: {amount: "2.00", denomination: USDC}
  lease: {minDurationSeconds: 60, maxDurationSeconds: 3600, maxGpusPerLease: 8}
  workload: {allowedRegistries: [ghcr.io]}
"#,
    )
    .await;
    // kwok marks the nodes Ready at its own pace: the first exact status is the first that
    // counts every node, which the offer's watch reports.
    let exact_at = tokio::time::timeout(
        Duration::from_secs(900),
        idle_is(&mut watches.idle, EXPECTED_IDLE),
    )
    .await
    .expect("the offer's status counts every node within 15 minutes");
    let first_exact = exact_at - offer_created;

    let reconciles_before = offer_reconciles(&operator.http).await;
    let mut create = (Vec::new(), Vec::new());
    let mut delete = (Vec::new(), Vec::new());
    for k in 0..SAMPLES {
        let name = format!("sample-{k:02}");
        let node = format!("scale-{:04}", (k * 997) % NODES);
        let (floor, reaction) = sample(&c.client, &mut watches, &name, &node, true).await;
        create.0.push(floor);
        create.1.push(reaction);
        let (floor, reaction) = sample(&c.client, &mut watches, &name, &node, false).await;
        delete.0.push(floor);
        delete.1.push(reaction);
    }
    let rss_loaded = status_kib(pid, "VmRSS:").unwrap();
    let reconciles_after = offer_reconciles(&operator.http).await;
    let (runs, seconds) = (
        reconciles_after.0 - reconciles_before.0,
        reconciles_after.1 - reconciles_before.1,
    );
    let idle = Api::<GpuOffer>::all(c.client.clone())
        .get("scale")
        .await
        .unwrap()
        .status
        .unwrap()
        .idle_gpus;

    println!(
        "scale: {NODES} nodes × {GPUS_PER_NODE} GPUs, {PODS} pods ({NODES} holding one GPU each), one offer over all"
    );
    println!(
        "scale: operator ready (caches synced) {synced_in:.1?} after start; RSS {:.1} MiB after sync, {:.1} MiB after the samples",
        rss_synced as f64 / 1024.0,
        rss_loaded as f64 / 1024.0
    );
    println!("scale: offer created → first exact status {first_exact:.1?}");
    println!("scale: idle GPUs {idle}, expected {EXPECTED_IDLE} from the pods created");
    println!(
        "scale: during the samples the offer was reconciled {runs} times, {:.1} ms each on average (the capacity formula over every node and the status write)",
        seconds * 1000.0 / runs.max(1) as f64
    );
    for (what, (mut floor, mut reaction)) in [("pod create", create), ("pod delete", delete)] {
        floor.sort();
        reaction.sort();
        println!(
            "scale: {what} ({SAMPLES} samples): operator p50 {} p99 {} | floor (bare watch + one write) p50 {} p99 {} | p99 ratio {:.2}",
            ms(percentile(&reaction, 50.0)),
            ms(percentile(&reaction, 99.0)),
            ms(percentile(&floor, 50.0)),
            ms(percentile(&floor, 99.0)),
            percentile(&reaction, 99.0).as_secs_f64() / percentile(&floor, 99.0).as_secs_f64()
        );
    }
    assert_eq!(idle, EXPECTED_IDLE, "the status is exact");
    drop(operator);
}

/// The offer controller's reconciles so far and the seconds they took, from its metrics.
async fn offer_reconciles(http: &str) -> (u64, f64) {
    let (_, body) = http_get(&format!("{http}/metrics")).await.unwrap();
    let read = |series: &str| {
        metric(&body, series).unwrap_or_else(|| panic!("{series} is not in the operator's metrics"))
    };
    (
        read("gpubridge_reconcile_duration_seconds_count{controller=\"offer\"}") as u64,
        read("gpubridge_reconcile_duration_seconds_sum{controller=\"offer\"}"),
    )
}

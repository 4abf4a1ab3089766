//! On the real node of `e2e/node.sh`: containers that run under containerd and runc, the CNI
//! bridge, kube-proxy's Services, CoreDNS, and NetworkPolicy enforced by kube-router's firewall,
//! proven by packets sent from inside pods. Pods report what they saw in their termination
//! message, which the kubelet writes into the pod's status, so that a probe's verdict lives as
//! long as its pod does.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use crate::support::{Cluster, cluster, eventually, repo};

pub(crate) const REAL_NODE: &str = "gpubridge-node";
/// The test workload image `e2e/node-images.sh` loads: Debian's static busybox.
pub(crate) const BUSYBOX: &str = "gpubridge.test/busybox:e2e";
/// Addresses of the outside world `e2e/node.sh` serves, and of the node itself.
const METADATA: &str = "169.254.169.254";
const PRIVATE_TARGET: &str = "10.99.0.10";
const PUBLIC_TARGET: &str = "203.0.113.10";
const NODE_ADDRESS: &str = "10.88.0.2";
/// The `kubernetes` Service, in front of the API server.
const API_SERVICE: &str = "10.0.0.1";

/// The e2e cluster (`None` where `cluster` skips), failing unless its real node is up and
/// Ready: `make e2e` brings it up.
pub(crate) async fn real_node_cluster(test: &str) -> Option<Cluster> {
    let cluster = cluster(test).await?;
    let node = Api::<Node>::all(cluster.client.clone())
        .get_opt(REAL_NODE)
        .await
        .expect("read the real node");
    let ready = node
        .as_ref()
        .and_then(|n| n.status.as_ref()?.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    assert!(
        ready,
        "the real node {REAL_NODE} is not Ready: run `make node-up` (or `make e2e`)"
    );
    Some(cluster)
}

/// Deletes an object (if there is one) and waits until it is gone.
async fn delete_and_wait<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let _ = api.delete(name, &DeleteParams::foreground()).await;
    eventually(
        &format!("{name} is deleted"),
        Duration::from_secs(120),
        || async {
            match api.get_opt(name).await.unwrap() {
                None => Ok(()),
                Some(_) => Err("it is terminating".to_string()),
            }
        },
    )
    .await;
}

/// A namespace created afresh (an earlier run's is deleted first), with Pod Security
/// `restricted` enforced, as the operator's lease namespaces have it, and `labels`.
pub(crate) async fn fresh_namespace(client: &Client, name: &str, labels: &[(&str, &str)]) {
    let namespaces = Api::<Namespace>::all(client.clone());
    delete_and_wait(&namespaces, name).await;
    let mut labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    labels.insert(
        "pod-security.kubernetes.io/enforce".to_string(),
        json!("restricted"),
    );
    let namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
    }))
    .unwrap();
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
}

/// A busybox pod on the real node running `script` under the restricted profile, without a
/// service-account token and with its memory request equal to its limit, as the lease-pod
/// admission policy asks of pods in lease namespaces.
fn busybox_pod(name: &str, labels: serde_json::Value, script: &str, restart: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeSelector": {"gpubridge.dev/real-node": "true"},
            "restartPolicy": restart,
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": false,
            "securityContext": {
                "runAsNonRoot": true, "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": "main",
                "image": BUSYBOX,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", script],
                "resources": {
                    "requests": {"cpu": "10m", "memory": "16Mi"},
                    "limits": {"memory": "16Mi"},
                },
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]},
                },
            }],
        },
    }))
    .unwrap()
}

/// Starts a pod that answers TCP on each port; returns its IP once it runs.
async fn listener(
    client: &Client,
    namespace: &str,
    name: &str,
    labels: serde_json::Value,
    ports: &[u16],
) -> String {
    let script: String = ports
        .iter()
        .map(|p| format!("nc -ll -p {p} -e echo {name}:{p} & "))
        .chain(std::iter::once("wait".to_string()))
        .collect();
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    pods.create(
        &PostParams::default(),
        &busybox_pod(name, labels, &script, "Always"),
    )
    .await
    .unwrap();
    eventually(
        &format!("{namespace}/{name} runs"),
        Duration::from_secs(60),
        || async {
            let status = pods.get(name).await.unwrap().status.unwrap_or_default();
            match (status.phase.as_deref(), status.pod_ip) {
                (Some("Running"), Some(ip)) => Ok(ip),
                (phase, _) => Err(format!("phase {phase:?}")),
            }
        },
    )
    .await
}

/// Runs a command inside the real node's namespaces (`e2e/node.sh exec`); its stdout.
pub(crate) fn on_node(command: &str) -> String {
    node_sh(&["exec", "sh", "-c", command])
}

/// Runs `e2e/node.sh` with `args`; its stdout.
pub(crate) fn node_sh(args: &[&str]) -> String {
    let out = std::process::Command::new("bash")
        .arg(repo().join("e2e/node.sh"))
        .args(args)
        .output()
        .expect("e2e/node.sh runs");
    assert!(
        out.status.success(),
        "e2e/node.sh {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `script` in a new pod created by `client` and returns what it wrote to its termination
/// message. The script
/// starts only once kube-router has programmed the pod's firewall chain: the firewall learns a
/// pod's address after the pod starts, and a probe that raced it would see the network before
/// its policy. The gate is a file the test writes into the pod's emptyDir from the node.
pub(crate) async fn probe(client: &Client, namespace: &str, name: &str, script: &str) -> String {
    probe_with_gpus(client, namespace, name, script, 0).await
}

/// `probe`, in a container that requests `gpus` of the node's `nvidia.com/gpu`.
async fn probe_with_gpus(
    client: &Client,
    namespace: &str,
    name: &str,
    script: &str,
    gpus: u32,
) -> String {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    delete_and_wait(&pods, name).await;
    let script = format!(
        "until [ -e /gate/open ]; do sleep 0.1; done; {{ {script} ; }} > /dev/termination-log 2>&1"
    );
    let mut pod = busybox_pod(name, json!({"role": "probe"}), &script, "Never");
    let spec = pod.spec.as_mut().unwrap();
    if gpus > 0 {
        let resources = spec.containers[0].resources.as_mut().unwrap();
        resources
            .limits
            .as_mut()
            .unwrap()
            .insert("nvidia.com/gpu".to_string(), Quantity(gpus.to_string()));
    }
    spec.volumes = Some(vec![
        serde_json::from_value(json!({"name": "gate", "emptyDir": {}})).unwrap(),
    ]);
    spec.containers[0].volume_mounts = Some(vec![
        serde_json::from_value(json!({"name": "gate", "mountPath": "/gate"})).unwrap(),
    ]);
    let uid = pods
        .create(&PostParams::default(), &pod)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let chain = format!("POD name:{name} namespace: {namespace} ");
    eventually(
        &format!("kube-router programs {namespace}/{name}"),
        Duration::from_secs(60),
        || async {
            let rules = on_node("iptables-save -t filter");
            match rules.contains(&chain) {
                true => Ok(()),
                false => Err("no chain for the pod yet".to_string()),
            }
        },
    )
    .await;
    on_node(&format!(
        "touch /var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~empty-dir/gate/open"
    ));
    eventually(
        &format!("{namespace}/{name} finishes"),
        Duration::from_secs(120),
        || async {
            let status = pods.get(name).await.unwrap().status.unwrap_or_default();
            let terminated = status
                .container_statuses
                .as_deref()
                .and_then(|s| s.first()?.state.as_ref()?.terminated.clone());
            match terminated {
                Some(t) => Ok(t.message.unwrap_or_default()),
                None => Err(format!("phase {:?}", status.phase)),
            }
        },
    )
    .await
}

/// `name open` or `name closed` for a TCP connection to host:port, two seconds at most.
pub(crate) fn connect(name: &str, host: &str, port: u16) -> String {
    format!(
        "if nc -w 2 {host} {port} </dev/null >/dev/null 2>&1; then echo '{name} open'; \
         else echo '{name} closed'; fi"
    )
}

/// The lines a probe of the same targets should print, in its order.
pub(crate) fn expect(lines: &[(&str, bool)]) -> String {
    lines
        .iter()
        .map(|(name, open)| format!("{name} {}\n", if *open { "open" } else { "closed" }))
        .collect()
}

#[tokio::test]
async fn a_pod_on_the_real_node_runs_under_containerd_with_cluster_dns_and_services() {
    let Some(cluster) = real_node_cluster("real_node_pod").await else {
        return;
    };
    let client = &cluster.client;
    let namespace = "e2e-real-node";
    fresh_namespace(client, namespace, &[]).await;
    let message = probe(
        client,
        namespace,
        "hello",
        // The container's own view (its user, its read-only root), a name served by CoreDNS
        // through the kube-dns Service, and the outside world's public target.
        "echo uid=$(id -u); touch /x 2>/dev/null && echo root-writable || echo root-read-only; \
         nslookup kube-dns.kube-system.svc.cluster.local | grep -c 'Address: 10.0.0.10'; \
         printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 203.0.113.10 80 | grep hello",
    )
    .await;
    assert_eq!(
        message, "uid=65532\nroot-read-only\n1\nhello from 203.0.113.10\n",
        "what the pod saw"
    );
}

#[tokio::test]
async fn the_device_plugin_gives_a_container_exactly_the_gpus_it_was_allocated() {
    let Some(cluster) = real_node_cluster("real_node_gpus").await else {
        return;
    };
    let client = &cluster.client;
    // The plugin advertises the simulated source's GPUs, seeded with the node's name.
    let simulated = gpubridge::gpu::SimulatedSettings {
        simulated_gpus: 8,
        simulated_model: String::new(),
        simulated_cc_mode: false,
        simulated_mig: false,
        simulated_seed: REAL_NODE.to_string(),
        simulated_visible_devices: None,
    };
    let node_gpus = gpubridge::gpu::SimulatedSource::new(simulated).all_uuids();
    let node = Api::<Node>::all(client.clone())
        .get(REAL_NODE)
        .await
        .unwrap();
    let allocatable = node.status.unwrap().allocatable.unwrap();
    assert_eq!(allocatable["nvidia.com/gpu"].0, "8");

    let namespace = "e2e-real-node-gpus";
    fresh_namespace(client, namespace, &[]).await;
    let seen = probe_with_gpus(client, namespace, "two", "echo $NVIDIA_VISIBLE_DEVICES", 2).await;
    let ids: Vec<&str> = seen.trim().split(',').collect();
    assert_eq!(ids.len(), 2, "{seen:?}");
    assert_ne!(ids[0], ids[1], "{seen:?}");
    assert!(
        ids.iter().all(|id| node_gpus.iter().any(|gpu| gpu == id)),
        "{seen:?} are not among the node's GPUs {node_gpus:?}"
    );
    // A container without a GPU request gets none.
    let none = probe(
        client,
        namespace,
        "none",
        "echo \"[${NVIDIA_VISIBLE_DEVICES:-}]\"",
    )
    .await;
    assert_eq!(none, "[]\n");
}

/// The lease box's NetworkPolicy, exactly as the builder makes it (the golden fixture the
/// builder's unit test guards), with its collector namespace pointed at `collector_namespace`.
pub(crate) async fn apply_lease_policy(
    client: &Client,
    namespace: &str,
    collector_namespace: &str,
) {
    let golden = std::fs::read_to_string(repo().join("tests/fixtures/golden/network-policy.yaml"))
        .expect("the golden NetworkPolicy");
    let mut policy: NetworkPolicy = serde_yaml::from_str(&golden).unwrap();
    policy.metadata.namespace = Some(namespace.to_string());
    policy.metadata.owner_references = None;
    let spec = policy.spec.as_mut().unwrap();
    let collector = &mut spec.egress.as_mut().unwrap()[0].to.as_mut().unwrap()[0];
    collector
        .namespace_selector
        .as_mut()
        .unwrap()
        .match_labels
        .as_mut()
        .unwrap()
        .insert(
            "kubernetes.io/metadata.name".to_string(),
            collector_namespace.to_string(),
        );
    Api::<NetworkPolicy>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_lease_network_policy_holds_for_real_packets() {
    let Some(cluster) = real_node_cluster("real_node_network_policy").await else {
        return;
    };
    let client = &cluster.client;
    let (lease, other_lease, collector_ns, open_ns) = (
        "e2e-lease-a",
        "e2e-lease-b",
        "e2e-collector",
        "e2e-no-policy",
    );
    for namespace in [lease, other_lease, collector_ns, open_ns] {
        fresh_namespace(client, namespace, &[]).await;
    }
    apply_lease_policy(client, lease, collector_ns).await;
    apply_lease_policy(client, other_lease, collector_ns).await;
    // A stand-in for the operator's pod: its labels, the collector's port and a metrics port.
    let operator_labels = json!({
        "app.kubernetes.io/name": "gpubridge",
        "app.kubernetes.io/component": "operator",
    });
    let collector = listener(
        client,
        collector_ns,
        "collector",
        operator_labels,
        &[7400, 9090],
    )
    .await;
    let neighbour = listener(
        client,
        other_lease,
        "workload",
        json!({"role": "workload"}),
        &[8080],
    )
    .await;

    let targets = [
        connect("collector", &collector, 7400),
        connect("operator-metrics", &collector, 9090),
        connect("public", PUBLIC_TARGET, 80),
        "nslookup kube-dns.kube-system.svc.cluster.local >/dev/null 2>&1 \
         && echo 'dns open' || echo 'dns closed'"
            .to_string(),
        connect("metadata", METADATA, 80),
        connect("private", PRIVATE_TARGET, 80),
        connect("api-server", API_SERVICE, 443),
        connect("kubelet", NODE_ADDRESS, 10250),
        connect("other-lease", &neighbour, 8080),
    ]
    .join("; ");

    // Without a policy every target answers but the other lease, whose policy denies all
    // ingress: the closed answers below are the lease policy's doing, not a broken network.
    let open = probe(client, open_ns, "probe", &targets).await;
    assert_eq!(
        open,
        expect(&[
            ("collector", true),
            ("operator-metrics", true),
            ("public", true),
            ("dns", true),
            ("metadata", true),
            ("private", true),
            ("api-server", true),
            ("kubelet", true),
            ("other-lease", false),
        ]),
        "from a namespace without a policy"
    );
    let boxed = expect(&[
        ("collector", true),
        ("operator-metrics", false),
        ("public", true),
        ("dns", true),
        ("metadata", false),
        ("private", false),
        ("api-server", false),
        ("kubelet", false),
        ("other-lease", false),
    ]);
    let inside = probe(client, lease, "probe", &targets).await;
    assert_eq!(inside, boxed, "from inside a lease namespace");
}

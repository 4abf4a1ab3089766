//! The operator as the chart runs it in production: two pods of the image `make image-build`
//! built (loaded into the real node's containerd, never pulled), under the restricted Pod
//! Security profile, with in-cluster credentials, probes, leader election and `helm test`; and a
//! lease from the network that runs on the real node with its meter and attest sidecars as
//! containers and settles exactly what the meter logged.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gpubridge::crd::{ComputeLease, LEASE_LABEL, LeasePhase};
use gpubridge::identity::generate_key;
use gpubridge::sidecar::receipt_log::ReceiptLog;
use gpubridge::wire::amount::Amount;
use gpubridge::wire::proto::{OrderBody, OrderState, Workload};
use gpubridge::workload::{
    ATTEST_CONTAINER, METER_CONTAINER, POD_NAME, PROBE_CONTAINER, namespace_for,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt};

use crate::network::{
    UNIT, metered_from_the_probes_pass, order_reaches, settled_exactly, wait_published,
};
use crate::real_node::{
    BUSYBOX, REAL_NODE, apply_lease_policy, connect, expect, fresh_namespace, node_sh, probe,
    real_node_cluster,
};
use crate::support::{
    Cluster, NetworkNode, RELEASE, RELEASE_NAMESPACE, apply_yaml, cache_dir, eventually, repo,
};
use crate::{SECOND, delete_lease, install_crds, kubectl, wait_phase};

const IMAGE: &str = "gpubridge.test/gpubridge";
const VALUES: &str = "e2e/real-node-values.yaml";
/// Where the node's pods reach the network node that runs on the host (`e2e/node.sh expose`).
const NETWORK_ADDRESS: &str = "203.0.113.30:7300";
const OFFER: &str = "real-node";
/// The port the lease's workload serves its page on.
const WORKLOAD_PORT: u32 = 8000;
/// The offer's price per GPU-hour (e2e/real-node-offer.yaml), in atto units of its denomination.
const PRICE: u128 = 2 * UNIT;

/// The OCI layout `make image-build` writes: $CARGO_TARGET_DIR/image/oci.
fn image_layout() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    let layout = target.join("image/oci");
    assert!(
        layout.join("index.json").exists(),
        "no image at {}: run `make image-build` first (`make test` does)",
        layout.display()
    );
    layout
}

/// The suite's release as it was (the operator out of the cluster), whatever the test did.
struct RestoreRelease<'a>(&'a Cluster);

impl Drop for RestoreRelease<'_> {
    fn drop(&mut self) {
        self.0.install_release(&["--wait", "--timeout", "120s"]);
    }
}

/// The operator's pods that are ready and not being deleted.
async fn ready_operator_pods(client: &Client) -> Result<Vec<Pod>, String> {
    let selector = format!(
        "app.kubernetes.io/name=gpubridge,app.kubernetes.io/component=operator,app.kubernetes.io/instance={RELEASE}"
    );
    let list = Api::<Pod>::namespaced(client.clone(), RELEASE_NAMESPACE)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| e.to_string())?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect())
}

/// Both replicas ready, and the leader Lease held by one of them other than `former`: the
/// replicas and the leader's name.
async fn replicas_and_leader(client: &Client, former: Option<&str>) -> (Vec<Pod>, String) {
    let leases = Api::<Lease>::namespaced(client.clone(), RELEASE_NAMESPACE);
    eventually("two ready replicas, one leading", 120 * SECOND, || async {
        let pods = ready_operator_pods(client).await?;
        let holder = leases
            .get("gpubridge-operator")
            .await
            .map_err(|e| e.to_string())?
            .spec
            .and_then(|s| s.holder_identity);
        let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
        match holder {
            Some(h) if names.len() == 2 && names.contains(&h) && Some(h.as_str()) != former => {
                Ok((pods, h))
            }
            other => Err(format!("ready {names:?}, lease held by {other:?}")),
        }
    })
    .await
}

/// Copies the meter's receipt log out of the lease pod's emptyDir (the node's /var is an
/// overlay whose upper layer the host can read) every 100 ms, keeping the latest copy that
/// reads whole: the pod and its volume go once the lease has ended and settled.
fn follow_receipts(pod_uid: &str) -> (tokio::task::JoinHandle<()>, tempfile::TempDir) {
    let source = cache_dir().join(format!(
        "node/var-upper/lib/kubelet/pods/{pod_uid}/volumes/kubernetes.io~empty-dir/receipts"
    ));
    let kept = tempfile::tempdir().unwrap();
    let target = kept.path().to_path_buf();
    let task = tokio::spawn(async move {
        let staging = tempfile::tempdir().unwrap();
        loop {
            if copy_dir(&source, staging.path()).is_ok()
                && let Ok(copied) = ReceiptLog::read_all(staging.path())
                && copied.len() >= ReceiptLog::read_all(&target).map_or(0, |r| r.len())
            {
                let _ = copy_dir(staging.path(), &target);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (task, kept)
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

/// The lease pod once its sidecars have started and its workload runs.
async fn running_lease_pod(client: &Client, lease: &str) -> Pod {
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace_for(lease));
    eventually("the lease pod to run", 120 * SECOND, || async {
        let pod = pods.get(POD_NAME).await.map_err(|e| e.to_string())?;
        let status = pod.status.clone().unwrap_or_default();
        let sidecars_started = [METER_CONTAINER, ATTEST_CONTAINER].iter().all(|name| {
            status
                .init_container_statuses
                .iter()
                .flatten()
                .any(|c| &c.name == name && c.started == Some(true))
        });
        let workload_runs = status
            .container_statuses
            .iter()
            .flatten()
            .any(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()));
        match (sidecars_started, workload_runs) {
            (true, true) => Ok(pod),
            _ => Err(format!(
                "phase {:?}, sidecars {:?}",
                status.phase, status.init_container_statuses
            )),
        }
    })
    .await
}

/// The buyer's relay client at the network's gateway, and its tokens for the lease.
fn buyer_relay(
    network_url: &str,
    buyer: &ed25519_dalek::SigningKey,
    lease_id: &str,
) -> (
    gpubridge::wire::proto::relay_client::RelayClient<tonic::transport::Channel>,
    gpubridge::cli::order::access::Tokens,
) {
    let target = gpubridge::wire::client::Target {
        url: network_url.to_string(),
        ca_file: None,
    };
    let channel = gpubridge::wire::client::channel(&target).unwrap();
    let tokens = gpubridge::cli::order::access::Tokens {
        key: buyer.clone(),
        lease_id: lease_id.to_string(),
    };
    (gpubridge::cli::order::access::relay_client(channel), tokens)
}

/// GETs the workload's page through `order connect`'s forwarder, retrying while the workload
/// starts its server; the whole response.
async fn call_through_the_relay(
    network_url: &str,
    buyer: &ed25519_dalek::SigningKey,
    lease_id: &str,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    let (relay, tokens) = buyer_relay(network_url, buyer, lease_id);
    let forwarder = tokio::spawn(gpubridge::cli::order::access::forward(
        relay,
        tokens,
        WORKLOAD_PORT,
        listener,
    ));
    let page = eventually(
        "the workload's page through the relay",
        30 * SECOND,
        || async {
            let mut socket = tokio::net::TcpStream::connect(local)
                .await
                .map_err(|e| e.to_string())?;
            socket
                .write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
                .await
                .map_err(|e| e.to_string())?;
            let mut response = String::new();
            socket
                .read_to_string(&mut response)
                .await
                .map_err(|e| e.to_string())?;
            // busybox httpd answers an HTTP/1.0 request as HTTP/1.1.
            match response.starts_with("HTTP/1.1 200 OK") {
                true => Ok(response),
                false => Err(format!("answered {response:?}")),
            }
        },
    )
    .await;
    forwarder.abort();
    page
}

/// What `order logs --follow` has printed so far.
#[derive(Clone, Default)]
struct Printed(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Printed {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Printed {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Follows the workload's log as `order logs --follow` does, into `printed`, until the
/// workload ends.
fn follow_log_through_the_relay(
    network_url: &str,
    buyer: &ed25519_dalek::SigningKey,
    lease_id: &str,
    printed: Printed,
) -> tokio::task::JoinHandle<()> {
    use gpubridge::cli::order::access::logs;
    let (relay, tokens) = buyer_relay(network_url, buyer, lease_id);
    let options = gpubridge::wire::proto::LogOptions {
        follow: true,
        ..Default::default()
    };
    tokio::spawn(async move {
        tokio::time::timeout(120 * SECOND, logs(relay, &tokens, options, false, printed))
            .await
            .expect("the log ends with the workload")
            .unwrap();
    })
}

/// Opens a Tunnel call with `token` to `port` through the gateway: its refusal (a call that
/// opens fails the test).
async fn tunnel_refused(
    network_url: &str,
    token: gpubridge::wire::proto::Signed,
    port: u32,
) -> tonic::Status {
    use gpubridge::wire::proto::{Chunk, ConnectRequest, chunk};
    let (relay, _) = buyer_relay(network_url, &generate_key(), "");
    let (to_relay, outgoing) = tokio::sync::mpsc::channel(1);
    to_relay
        .try_send(Chunk {
            kind: Some(chunk::Kind::Open(ConnectRequest {
                token: Some(token),
                port,
            })),
        })
        .unwrap();
    match relay
        .clone()
        .tunnel(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
    {
        Ok(_) => panic!("a tunnel to port {port} opened"),
        Err(status) => status,
    }
}

/// What no buyer reaches through the relay on the real node: the lease with another buyer's
/// token or an expired one, and any port the workload did not declare — the API server's and
/// the kubelet's among them (a call names only a port; the operator dials only the lease's pod).
async fn refusals_on_the_real_node(
    network_url: &str,
    buyer: &ed25519_dalek::SigningKey,
    lease_id: &str,
) {
    use gpubridge::access::Scope;
    use gpubridge::cli::order::access::Tokens;
    use tonic::Code;
    let tokens = |key: &ed25519_dalek::SigningKey| Tokens {
        key: key.clone(),
        lease_id: lease_id.to_string(),
    };
    let stranger = tokens(&generate_key()).sign(Scope::Connect, &[WORKLOAD_PORT]);
    let refused = tunnel_refused(network_url, stranger, WORKLOAD_PORT).await;
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("did not order lease"),
        "{refused:?}"
    );

    let now = jiff::Timestamp::now().as_second();
    let expired = gpubridge::wire::envelope::seal(
        buyer,
        gpubridge::wire::proto::AccessTokenBody {
            header: None,
            lease_id: lease_id.to_string(),
            scopes: vec!["connect".into()],
            ports: vec![WORKLOAD_PORT],
            expires_at: now - 60,
        },
        now - 120,
    );
    let refused = tunnel_refused(network_url, expired, WORKLOAD_PORT).await;
    assert!(refused.message().contains("expired"), "{refused:?}");

    for port in [22, 443, 6443, 10250] {
        let token = tokens(buyer).sign(Scope::Connect, &[port]);
        let refused = tunnel_refused(network_url, token, port).await;
        assert_eq!(
            refused.code(),
            Code::PermissionDenied,
            "port {port}: {refused:?}"
        );
        assert!(
            refused
                .message()
                .contains(&format!("declares no port {port}")),
            "port {port}: {refused:?}"
        );
    }
}

fn order(seconds: u64) -> OrderBody {
    OrderBody {
        header: None,
        resource_name: String::new(),
        provider: String::new(),
        min_uptime_basis_points: 0,
        min_trust_tier: String::new(),
        wait_until: 0,
        gpus: 1,
        model: "NVIDIA-H100-80GB-HBM3".into(),
        duration_seconds: seconds,
        max_price_per_gpu_hour: (3 * UNIT).to_string(),
        denomination: "USDC".into(),
        region: String::new(),
        attributes: vec![],
        workload: Some(Workload {
            image: BUSYBOX.into(),
            command: vec!["sh".into(), "-c".into()],
            // A real command: it prints, serves a page on its declared port for 40 s and exits;
            // the kubelet then stops the sidecars (SIGTERM) and the meter seals its final
            // receipt.
            args: vec![format!(
                "echo \"hello from $GPUBRIDGE_LEASE_ID on $NVIDIA_VISIBLE_DEVICES\"; \
                 httpd -p {WORKLOAD_PORT} -h /www; sleep 40; echo done"
            )],
            env: vec![],
            cpu: "100m".into(),
            memory: "32Mi".into(),
            ports: vec![WORKLOAD_PORT],
        }),
    }
}

#[tokio::test]
async fn the_operator_runs_from_its_image_on_the_real_node_and_a_lease_there_settles_exactly() {
    let Some(c) = real_node_cluster("in_cluster").await else {
        return;
    };
    install_crds(&c.client).await;
    node_sh(&["load-image", image_layout().to_str().unwrap(), IMAGE]);
    let network = NetworkNode::start("in-cluster");
    let port = network.url.rsplit(':').next().unwrap().to_string();
    node_sh(&["expose", &port, NETWORK_ADDRESS]);
    // The release's namespace enforces the restricted profile: the operator's pods are admitted
    // as the chart builds them.
    kubectl(
        &c,
        &[
            "label",
            "namespace",
            RELEASE_NAMESPACE,
            "--overwrite",
            "pod-security.kubernetes.io/enforce=restricted",
        ],
        b"",
    );
    let _restore = RestoreRelease(&c);
    let url = format!("network.url=http://{NETWORK_ADDRESS}");
    let key = format!("network.key={}", network.key);
    c.install_release(&[
        "--values",
        VALUES,
        "--set",
        &url,
        "--set",
        &key,
        "--wait",
        "--timeout",
        "180s",
    ]);

    // Two replicas of the built image, ready on the real node; one leads.
    let (pods, leader) = replicas_and_leader(&c.client, None).await;
    for pod in &pods {
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some(REAL_NODE));
        assert_eq!(
            spec.containers[0].image.as_deref(),
            Some(format!("{IMAGE}:latest").as_str())
        );
    }

    // `helm test`: a pod reaches the operator's /readyz through its Service.
    let test = c.helm(&[
        "test",
        RELEASE,
        "--namespace",
        RELEASE_NAMESPACE,
        "--timeout",
        "120s",
    ]);
    assert!(
        test.status.success(),
        "helm test: {}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );

    // The leader's pod goes: another replica takes over.
    Api::<Pod>::namespaced(c.client.clone(), RELEASE_NAMESPACE)
        .delete(&leader, &DeleteParams::default())
        .await
        .unwrap();
    let (pods, leader) = replicas_and_leader(&c.client, Some(&leader)).await;

    // The chart's operator NetworkPolicy, by packets to the real replicas: the collector
    // answers pods of lease namespaces only; the metrics port answers any namespace but a
    // lease's, whose own policy lets it reach the collector and nothing else of the operator's.
    let collector = format!("gpubridge-collector.{RELEASE_NAMESPACE}.svc");
    let metrics_ip = pods[0].status.as_ref().unwrap().pod_ip.clone().unwrap();
    let targets = [
        connect("collector", &collector, 7400),
        connect("metrics", &metrics_ip, 8080),
    ]
    .join("; ");
    let (lease_ns, other_ns) = ("e2e-in-cluster-lease", "e2e-in-cluster-other");
    fresh_namespace(&c.client, lease_ns, &[(LEASE_LABEL, "e2e")]).await;
    apply_lease_policy(&c.client, lease_ns, RELEASE_NAMESPACE).await;
    fresh_namespace(&c.client, other_ns, &[]).await;
    // Only the operator creates pods in lease namespaces (the admission policy): the probe there
    // is created with its identity.
    assert_eq!(
        probe(&c.operator_client().await, lease_ns, "probe", &targets).await,
        expect(&[("collector", true), ("metrics", false)]),
        "from a lease namespace"
    );
    assert_eq!(
        probe(&c.client, other_ns, "probe", &targets).await,
        expect(&[("collector", false), ("metrics", true)]),
        "from another namespace"
    );

    // A lease from the network on the real node's GPUs.
    let offer = std::fs::read_to_string(repo().join("e2e/real-node-offer.yaml")).unwrap();
    apply_yaml(&c.client, &offer).await;
    let buyer_key = generate_key();
    let buyer = network.client(buyer_key.clone()).await;
    wait_published(&buyer, OFFER, 2).await;
    buyer
        .deposit(Amount::from_atto(10 * UNIT), "USDC")
        .await
        .unwrap();
    let placed = buyer.submit(order(60)).await.unwrap();
    assert_eq!(placed.state(), OrderState::Matched, "{}", placed.reason);
    let lease_id = placed.lease_id.clone();
    wait_phase(&c.client, &lease_id, LeasePhase::Running, 120 * SECOND).await;
    let pod = running_lease_pod(&c.client, &lease_id).await;
    assert_eq!(
        pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some(REAL_NODE)
    );
    let uid = pod.uid().unwrap();
    let (follower, receipts) = follow_receipts(&uid);
    // The GPU probe ran first, in its own container on the lease's GPUs, and passed.
    let probe = pod
        .status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|statuses| statuses.iter().find(|c| c.name == PROBE_CONTAINER))
        .and_then(|c| c.state.as_ref()?.terminated.clone())
        .expect("the probe container ended before the sidecars started");
    assert_eq!(probe.exit_code, 0, "{probe:?}");

    // The buyer calls the workload (`order connect`): a local port, through the network's
    // gateway and the operator's outbound relay stream, to the pod's declared port.
    let asked = std::time::Instant::now();
    let page = call_through_the_relay(&network.url, &buyer_key, &lease_id).await;
    println!(
        "the workload's page through the relay, in {:?}",
        asked.elapsed()
    );
    assert!(page.contains("hello from the lease"), "{page}");
    // Nothing else reaches that port: a pod of another namespace is refused by the lease's
    // NetworkPolicy (only the operator's pods are admitted, to declared ports only).
    let pod_ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
    assert_eq!(
        super::real_node::probe(
            &c.client,
            other_ns,
            "probe-workload",
            &connect("workload", &pod_ip, WORKLOAD_PORT as u16)
        )
        .await,
        expect(&[("workload", false)]),
        "the workload's port from another namespace"
    );

    refusals_on_the_real_node(&network.url, &buyer_key, &lease_id).await;

    // The workload's own output as its buyer reads it (`order logs --follow`): the operator
    // reads the pod's log through the API server and relays it until the workload ends. The
    // leading replica goes mid-stream; the other takes over, and the buyer's CLI resumes after
    // the last line it printed.
    let printed = Printed::default();
    let follow = follow_log_through_the_relay(&network.url, &buyer_key, &lease_id, printed.clone());
    eventually("the log's first line", 30 * SECOND, || async {
        match printed.text().lines().count() {
            0 => Err("nothing yet".to_string()),
            _ => Ok(()),
        }
    })
    .await;
    Api::<Pod>::namespaced(c.client.clone(), RELEASE_NAMESPACE)
        .delete(&leader, &DeleteParams::default())
        .await
        .unwrap();
    follow.await.unwrap();
    let said = printed.text();
    assert!(
        said.starts_with(&format!("hello from {lease_id} on GPU-")) && said.ends_with("\ndone\n"),
        "{said}"
    );
    assert_eq!(said.lines().count(), 2, "no line lost or repeated: {said}");
    println!("the workload said: {said}");

    // The workload ends before the lease would: the kubelet stops the sidecars, the meter
    // seals its final receipt, and the network charges exactly what the meter logged, less than
    // the hold, and refunds the rest.
    wait_phase(&c.client, &lease_id, LeasePhase::Succeeded, 120 * SECOND).await;
    let ended = order_reaches(&buyer, &placed.order_id, OrderState::Ended, 90 * SECOND).await;
    follower.abort();
    let logged = ReceiptLog::read_all(receipts.path()).unwrap();
    let lease = Api::<ComputeLease>::all(c.client.clone())
        .get(&lease_id)
        .await
        .unwrap();
    settled_exactly(&lease, &ended, &logged, PRICE);
    metered_from_the_probes_pass(&lease, &logged);
    // The relay counted the buyer's calls on the lease, and the meter's receipts carried them
    // to the network: the page's connection (and the probes for the relay coming up), and the
    // followed log.
    let access = lease
        .status
        .as_ref()
        .and_then(|s| s.usage.as_ref()?.access)
        .expect("the receipts carried the buyer's access");
    assert!(
        access.connections >= 1 && access.log_streams >= 1 && access.bytes_from_workload > 0,
        "{access:?}"
    );
    println!("metered access: {access:?}");
    assert!(
        ended.charged.parse::<u128>().unwrap() < ended.held.parse::<u128>().unwrap(),
        "a 40 s workload is charged less than a minute's hold: {ended:?}"
    );
    assert!(logged.len() >= 2, "{} receipts in 40 s", logged.len());

    delete_lease(&c.client, &lease_id).await;
    Api::<gpubridge::crd::GpuOffer>::all(c.client.clone())
        .delete(OFFER, &DeleteParams::default())
        .await
        .unwrap();
}

//! The network side end to end: the reference network node as a process, operators connected to
//! it through their outbound session, buyers ordering through the gateway.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use gpubridge::crd::{ComputeLease, LeaseAccess, LeaseAccessPart, LeasePhase, NODE_ANNOTATION};
use gpubridge::identity::generate_key;
use gpubridge::operator::collector::summary::lease_access;
use gpubridge::sidecar::receipt_log::ReceiptLog;
use gpubridge::wire::amount::Amount;
use gpubridge::wire::client::NetworkClient;
use gpubridge::wire::proto::{AccessUsage, EnvVar, OrderBody, OrderState, OrderView, Workload};
use k8s_openapi::api::core::v1::Node;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt};

use crate::sidecars::{Sidecars, footprint, status_kib};
use crate::support::{
    Cluster, NetworkNode, Operator, Prometheus, apply_yaml, cluster, eventually, http_get,
    now_unix, percentile, promtool_check_metrics,
};
use crate::{
    SECOND, delete_lease, install_crds, kubectl, offer_status, wait_phase, workstation_offer,
};

pub(crate) const UNIT: u128 = 1_000_000_000_000_000_000;

pub(crate) fn order(gpus: u32, model: &str, seconds: u64, max_price: u128) -> OrderBody {
    OrderBody {
        header: None,
        resource_name: String::new(),
        provider: String::new(),
        min_uptime_basis_points: 0,
        min_trust_tier: String::new(),
        wait_until: 0,
        gpus,
        model: model.into(),
        duration_seconds: seconds,
        max_price_per_gpu_hour: max_price.to_string(),
        denomination: "USDC".into(),
        region: String::new(),
        attributes: vec![],
        workload: Some(Workload {
            image: "ghcr.io/acme/render:2".into(),
            command: vec!["blender".into()],
            args: vec!["--render".into()],
            env: vec![EnvVar {
                name: "SCENE".into(),
                value: "city.blend".into(),
            }],
            cpu: "4".into(),
            memory: "16Gi".into(),
            ports: vec![],
        }),
    }
}

pub(crate) async fn wait_published(
    buyer: &gpubridge::wire::client::NetworkClient,
    offer: &str,
    gpus: u32,
) {
    wait_published_by(buyer, offer, gpus, 1).await;
}

/// Waits until `providers` providers publish `offer` with `gpus` GPUs.
async fn wait_published_by(
    buyer: &gpubridge::wire::client::NetworkClient,
    offer: &str,
    gpus: u32,
    providers: usize,
) {
    eventually(
        &format!(
            "offer {offer} with {gpus} GPUs in the network's book, from {providers} providers"
        ),
        30 * SECOND,
        || async {
            let offers = buyer.list_offers().await.map_err(|e| e.to_string())?;
            let published: Vec<u32> = offers
                .iter()
                .filter(|o| o.offer_id.ends_with(&format!("/{offer}")))
                .map(|o| o.available_gpus)
                .collect();
            if published.iter().filter(|g| **g == gpus).count() == providers {
                Ok(())
            } else {
                Err(format!("published: {published:?}"))
            }
        },
    )
    .await;
}

/// A network node, an operator connected to it with the workstation offer published, and a
/// buyer's order for its RTX 4090 for `seconds`, matched.
async fn workstation_lease(
    c: &Cluster,
    name: &str,
    seconds: u64,
) -> (NetworkNode, Operator, NetworkClient, OrderView) {
    workstation_lease_as(c, name, seconds, &c.operator_kubeconfig).await
}

/// The same, with the operator under the identity of `kubeconfig`.
async fn workstation_lease_as(
    c: &Cluster,
    name: &str,
    seconds: u64,
    kubeconfig: &std::path::Path,
) -> (NetworkNode, Operator, NetworkClient, OrderView) {
    install_crds(&c.client).await;
    let network = NetworkNode::start(name);
    let operator = Operator::start_as(name, &network.operator_flags(), kubeconfig);
    apply_yaml(&c.client, &workstation_offer()).await;
    operator.wait_ready().await;
    let buyer = network.client(generate_key()).await;
    wait_published(&buyer, "rtx-workstation", 2).await;
    buyer
        .deposit(Amount::from_atto(10 * UNIT), "USDC")
        .await
        .unwrap();
    let placed = buyer
        .submit(order(1, "NVIDIA-GeForce-RTX-4090", seconds, 12 * UNIT / 10))
        .await
        .unwrap();
    assert_eq!(placed.state(), OrderState::Matched, "{}", placed.reason);
    (network, operator, buyer, placed)
}

/// Some moment in `0..max_ms` milliseconds, from the OS's randomness: crashes land at a
/// different point of the meter's cycle on each run.
fn random_ms(max_ms: u64) -> Duration {
    use rand_core::RngCore;
    Duration::from_millis(rand_core::OsRng.next_u64() % max_ms)
}

#[tokio::test]
async fn a_metered_lease_survives_crashes_of_everything_and_settles_exactly() {
    let Some(c) = cluster("network-lease").await else {
        return;
    };
    let since = now_unix();
    let (mut network, mut operator, buyer, placed) =
        workstation_lease(&c, "network-lease", 90).await;
    // Prometheus scrapes the operator through the whole lease, restarts included, for the
    // dashboard's check at the end.
    let prometheus =
        Prometheus::start(&[operator.http.trim_start_matches("http://").to_string()]).await;
    let lease_id = placed.lease_id.clone();
    // Intake verified it and created the ComputeLease named after the lease id, pinned to a node.
    let running = wait_phase(&c.client, &lease_id, LeasePhase::Running, 60 * SECOND).await;
    assert_eq!(
        running
            .annotations()
            .get(NODE_ANNOTATION)
            .map(String::as_str),
        Some("gpu-4090-0")
    );
    assert!(running.spec.signed_order.is_some());
    let mut sidecars = Sidecars::probed(&c.client, &lease_id, 1).await;
    an_early_window_is_refused(&c.client, &operator, &sidecars, &lease_id).await;
    sidecars.start_sidecars();
    let leases: Api<ComputeLease> = Api::all(c.client.clone());
    let usage = |lease: &ComputeLease| lease.status.as_ref().and_then(|s| s.usage.clone());
    eventually("receipts to be settled", 20 * SECOND, || async {
        let lease = leases.get(&lease_id).await.map_err(|e| e.to_string())?;
        match usage(&lease) {
            Some(u) if u.receipts_accepted >= 2 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // The buyer's calls, as the operator's relay records them on the lease (its own e2e is
    // the real node's): the meter carries them into its receipts, across every crash below.
    let calls = |bytes_to_workload, bytes_from_workload, connections, log_streams| LeaseAccess {
        bytes_to_workload,
        bytes_from_workload,
        connections,
        log_streams,
    };
    record_access(&c.client, &lease_id, calls(1_000, 250_000, 3, 1)).await;

    // Crashes at random moments: the meter, the network node, the operator, the meter again.
    tokio::time::sleep(random_ms(3_000)).await;
    sidecars.kill_meter();
    tokio::time::sleep(random_ms(2_000)).await;
    sidecars.start_meter();
    tokio::time::sleep(random_ms(3_000)).await;
    network.kill();
    tokio::time::sleep(2 * SECOND + random_ms(2_000)).await;
    network.restart();
    tokio::time::sleep(random_ms(3_000)).await;
    operator.crash_and_restart();
    tokio::time::sleep(random_ms(3_000)).await;
    sidecars.kill_meter();
    sidecars.start_meter();
    operator.wait_ready().await;
    let all_calls = calls(5_000, 900_000, 7, 2);
    record_access(&c.client, &lease_id, all_calls).await;

    // Refusals, each visible on the lease while the meter is down (it would clear them).
    eventually("the restarted meter to catch up", 30 * SECOND, || async {
        let lease = leases.get(&lease_id).await.map_err(|e| e.to_string())?;
        let accepted = usage(&lease).map_or(0, |u| u.receipts_accepted);
        let logged = ReceiptLog::read_all(&sidecars.receipts_dir()).map_err(|e| e.to_string())?;
        if accepted >= 3 && accepted + 2 >= logged.len() as u64 {
            Ok(())
        } else {
            Err(format!("{accepted} of {}", logged.len()))
        }
    })
    .await;
    sidecars.kill_meter();
    forgeries_are_refused_and_shown(&c.client, &operator, &sidecars, &lease_id).await;
    sidecars.start_meter();

    wait_phase(&c.client, &lease_id, LeasePhase::Expired, 120 * SECOND).await;
    // The kubelet stops the sidecars with the pod: the meter seals its final receipt.
    sidecars.stop_meter();
    let ended = order_reaches(&buyer, &placed.order_id, OrderState::Ended, 60 * SECOND).await;

    let logged = ReceiptLog::read_all(&sidecars.receipts_dir()).unwrap();
    let lease = end_reported(&c.client, &lease_id, 30 * SECOND).await;
    settled_exactly(&lease, &ended, &logged, 9 * UNIT / 10);
    metered_from_the_probes_pass(&lease, &logged);
    assert_eq!(
        lease.status.as_ref().and_then(|s| s.usage.as_ref()?.access),
        Some(all_calls),
        "every call recorded reached the receipts once, across the crashes"
    );

    // What the operator exports passes promtool's checks, and every dashboard panel has data.
    let scrape = http_get(&format!("{}/metrics", operator.http))
        .await
        .unwrap()
        .1;
    if let Err(said) = promtool_check_metrics(&scrape) {
        panic!("promtool check metrics:\n{said}\non\n{scrape}");
    }
    prometheus.wait_scraped_after(now_unix()).await;
    crate::dashboard::every_panel_shows_data(&prometheus, since).await;

    delete_lease(&c.client, &lease_id).await;
    Api::<gpubridge::crd::GpuOffer>::all(c.client.clone())
        .delete("rtx-workstation", &DeleteParams::default())
        .await
        .unwrap();
}

/// Writes `access` onto the lease's status as the operator's relay does.
async fn record_access(client: &Client, lease_id: &str, access: LeaseAccess) {
    gpubridge::operator::status::apply_status::<ComputeLease>(
        client,
        lease_id,
        gpubridge::operator::access::kube::ACCESS_FIELD_MANAGER,
        None,
        &LeaseAccessPart { access },
    )
    .await
    .unwrap();
}

/// The lease once the operator recorded its end report: the network settles the end first, and
/// the operator records that it reported it just after.
pub(crate) async fn end_reported(
    client: &Client,
    lease_id: &str,
    timeout: Duration,
) -> ComputeLease {
    let leases: Api<ComputeLease> = Api::all(client.clone());
    eventually("the end report recorded on the lease", timeout, || async {
        let lease = leases.get(lease_id).await.map_err(|e| e.to_string())?;
        match lease.status.as_ref().and_then(|s| s.reported_at.as_ref()) {
            Some(_) => Ok(lease),
            None => Err("status.reportedAt unset".to_string()),
        }
    })
    .await
}

/// The lease's probe passed (its simulated GPU's evidence is self-reported and the model has no
/// band): it is challenge-verified, and its first logged window starts no earlier than the pass
/// the network recorded.
pub(crate) fn metered_from_the_probes_pass(
    lease: &ComputeLease,
    logged: &[gpubridge::wire::proto::Receipt],
) {
    let attestation = lease.status.as_ref().unwrap().attestation.clone().unwrap();
    assert_eq!(attestation.trust_tier, "challenge-verified");
    let passed = attestation
        .probe_passed_at
        .expect("the probe's pass is recorded");
    assert!(
        attestation
            .probe
            .as_deref()
            .unwrap()
            .starts_with("passed: passed at "),
        "{:?}",
        attestation.probe
    );
    assert!(
        logged[0].window_start_ms >= passed.0.as_millisecond(),
        "metered from the pass"
    );
}

/// The meter's log and the network's ledger agree: every logged receipt accepted once, the
/// final one last, and the buyer charged exactly their allocated time at `price` per GPU-hour
/// (atto units), the rest of the hold refunded.
pub(crate) fn settled_exactly(
    lease: &ComputeLease,
    ended: &OrderView,
    logged: &[gpubridge::wire::proto::Receipt],
    price: u128,
) {
    let sequences: Vec<u64> = logged.iter().map(|r| r.sequence).collect();
    assert_eq!(sequences, (1..=logged.len() as u64).collect::<Vec<_>>());
    assert!(logged.last().expect("receipts were logged").r#final);
    assert_eq!(logged.iter().filter(|r| r.r#final).count(), 1);
    let settled = lease.status.as_ref().and_then(|s| s.usage.clone()).unwrap();
    assert_eq!(
        settled.receipts_accepted,
        logged.len() as u64,
        "no receipt lost or doubled"
    );
    assert!(settled.final_received);
    let allocated: u128 = logged
        .iter()
        .map(|r| u128::from(r.allocated_gpu_millis))
        .sum();
    let hold: u128 = ended.held.parse().unwrap();
    let expected = (price * allocated / 3_600_000).min(hold);
    assert_eq!(
        ended.charged,
        expected.to_string(),
        "{allocated} GPU-ms at {price}"
    );
    assert_eq!(ended.refunded, (hold - expected).to_string());
    assert_eq!(
        settled.charged.map(|c| c.to_string()).as_deref(),
        Some(ended.charged.as_str())
    );
    // Buyer access: what the receipts carried is what the network summed, for the operator's
    // status and the buyer's view alike.
    let carried = logged
        .iter()
        .filter_map(|r| r.access)
        .fold(AccessUsage::default(), |sum, more| {
            gpubridge::metering::access::add(&sum, &more)
        });
    assert_eq!(
        settled.access,
        gpubridge::metering::access::any(&carried).then(|| lease_access(carried)),
        "the network's sum of the access the receipts carried"
    );
    assert_eq!(
        ended.lease.as_ref().and_then(|l| l.access),
        Some(carried),
        "the buyer sees the access the receipts carried"
    );
    println!(
        "settled: {} receipts, {allocated} GPU-ms, charged {} of {hold} held",
        logged.len(),
        ended.charged
    );
}

/// The lease's condition `type_` once it reads `status` with `reason`.
async fn wait_condition(client: &Client, lease: &str, type_: &str, status: &str, reason: &str) {
    let leases: Api<ComputeLease> = Api::all(client.clone());
    eventually(
        &format!("{type_}={status} ({reason}) on {lease}"),
        20 * SECOND,
        || async {
            let l = leases.get(lease).await.map_err(|e| e.to_string())?;
            let found = l
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_).cloned());
            match found {
                Some(c) if c.status == status && c.reason == reason => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

/// Once the lease's probe passed and before its meter started: the provider signs, with the
/// lease key, a first window from acceptance, billing the time before the GPUs proved
/// themselves. The collector refuses it by the network's rule, and the lease shows why.
async fn an_early_window_is_refused(
    client: &Client,
    operator: &Operator,
    sidecars: &Sidecars,
    lease_id: &str,
) {
    use gpubridge::identity::lease_files;
    use gpubridge::sidecar::client::SidecarClient;
    use gpubridge::wire::envelope::sign_body;
    use gpubridge::wire::proto::Receipt;

    let lease = Api::<ComputeLease>::all(client.clone())
        .get(lease_id)
        .await
        .unwrap();
    let status = lease.status.as_ref().unwrap();
    let attestation = status.attestation.as_ref().expect("the probe's verdict");
    assert_eq!(attestation.trust_tier, "challenge-verified");
    let passed = attestation
        .probe_passed_at
        .as_ref()
        .unwrap()
        .0
        .as_millisecond();
    let accepted = lease
        .metadata
        .creation_timestamp
        .as_ref()
        .unwrap()
        .0
        .as_millisecond();
    assert!(
        accepted < passed,
        "the lease was made before its probe passed"
    );
    let credentials = lease_files::load(&sidecars.identity_dir(), lease_id, now_unix()).unwrap();
    let sidecar = SidecarClient::new(&operator.collector_url, credentials.clone()).unwrap();
    let end = now_unix() * 1000;
    let early = Receipt {
        lease_id: lease_id.into(),
        sequence: 1,
        previous_hash: gpubridge::metering::chain::GENESIS_HASH.to_vec(),
        window_start_ms: accepted,
        window_end_ms: end,
        allocated_gpu_millis: (end - accepted) as u64,
        gpus: vec![],
        attribution: gpubridge::wire::proto::Attribution::AllocationOnly as i32,
        r#final: false,
        access: None,
    };
    let reply = sidecar
        .submit_receipts(vec![sign_body(&credentials.key, &early)])
        .await
        .unwrap();
    let rejection = reply.rejection.expect("an early window is refused");
    assert_eq!(
        (rejection.kind.as_str(), reply.accepted_through),
        ("BadWindow", 0)
    );
    assert!(
        rejection.message.contains(&format!(
            "must not start before the lease passed its challenge ({passed})"
        )),
        "{}",
        rejection.message
    );
    wait_condition(client, lease_id, "Metered", "False", "BadWindow").await;
}

/// Forged receipts, a broken chain, a wrong lease key and a replayed nonce, sent the way a
/// sidecar would: each refused, counted, and shown on the lease.
async fn forgeries_are_refused_and_shown(
    client: &Client,
    operator: &Operator,
    sidecars: &Sidecars,
    lease_id: &str,
) {
    use gpubridge::identity::lease_files;
    use gpubridge::sidecar::client::SidecarClient;
    use gpubridge::wire::envelope::sign_body;
    use gpubridge::wire::proto::Receipt;

    let credentials = lease_files::load(&sidecars.identity_dir(), lease_id, now_unix()).unwrap();
    let sidecar = SidecarClient::new(&operator.collector_url, credentials.clone()).unwrap();
    let log = ReceiptLog::open(&sidecars.receipts_dir()).unwrap();
    let head = log.head.clone();
    // The meter was killed with receipts perhaps logged but not yet delivered: deliver them as
    // it would have (the same bytes: signing is deterministic), so the chain the forgeries
    // follow is the log's.
    let logged: Vec<_> = ReceiptLog::read_all(&sidecars.receipts_dir())
        .unwrap()
        .iter()
        .map(|r| sign_body(&credentials.key, r))
        .collect();
    let standing = sidecar.submit_receipts(logged).await.unwrap();
    assert!(standing.rejection.is_none(), "{:?}", standing.rejection);
    assert_eq!(standing.accepted_through, head.sequence);
    let next = Receipt {
        lease_id: lease_id.into(),
        sequence: head.sequence + 1,
        previous_hash: head.hash.clone(),
        window_start_ms: head.window_end_ms.unwrap(),
        window_end_ms: head.window_end_ms.unwrap() + 1,
        allocated_gpu_millis: 1,
        gpus: vec![],
        attribution: gpubridge::wire::proto::Attribution::AllocationOnly as i32,
        r#final: false,
        access: None,
    };

    let mut forged = sign_body(&credentials.key, &next);
    forged.body[2] ^= 1;
    let reply = sidecar.submit_receipts(vec![forged]).await.unwrap();
    assert_eq!(reply.rejection.unwrap().kind, "BadSignature");
    wait_condition(client, lease_id, "Metered", "False", "BadSignature").await;

    let broken = sign_body(
        &credentials.key,
        &Receipt {
            previous_hash: vec![9; 32],
            ..next.clone()
        },
    );
    let reply = sidecar.submit_receipts(vec![broken]).await.unwrap();
    let rejection = reply.rejection.unwrap();
    assert_eq!(rejection.kind, "BrokenChain", "{}", rejection.message);
    wait_condition(client, lease_id, "Metered", "False", "BrokenChain").await;

    let impostor = SidecarClient::new(
        &operator.collector_url,
        gpubridge::identity::LeaseCredentials {
            key: generate_key(),
            certificate: credentials.certificate.clone(),
        },
    )
    .unwrap();
    let status = impostor
        .submit_receipts(vec![sign_body(&credentials.key, &next)])
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    wait_condition(client, lease_id, "Metered", "False", "WrongLeaseKey").await;

    // The attest sidecar answered the challenge; answering it again is a replay.
    wait_condition(client, lease_id, "Attested", "True", "ChallengeVerified").await;
    let challenge = sidecar.challenge().await.unwrap();
    assert!(challenge.answered);
    let pod = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(
        client.clone(),
        &gpubridge::workload::namespace_for(lease_id),
    )
    .get(gpubridge::workload::POD_NAME)
    .await
    .unwrap();
    let evidence = gpubridge::attestation::build_evidence(
        lease_id,
        &challenge.nonce,
        &[],
        pod.spec.as_ref().unwrap().node_name.as_deref().unwrap(),
        pod.metadata.uid.as_deref().unwrap(),
        "ghcr.io/acme/render:2",
        now_unix(),
    );
    let status = sidecar
        .submit_evidence(sign_body(&credentials.key, &evidence))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
    wait_condition(client, lease_id, "Attested", "False", "ReplayedNonce").await;

    let metrics = crate::support::http_get(&format!("{}/metrics", operator.http))
        .await
        .unwrap()
        .1;
    for line in [
        r#"gpubridge_verification_failures_total{reason="BadSignature",subject="receipt"}"#,
        r#"gpubridge_verification_failures_total{reason="BrokenChain",subject="receipt"}"#,
        r#"gpubridge_verification_failures_total{reason="WrongLeaseKey",subject="sidecar"}"#,
        r#"gpubridge_verification_failures_total{reason="ReplayedNonce",subject="evidence"}"#,
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(line)),
            "{line} in\n{metrics}"
        );
    }
}

const BURST_NODES: usize = 5;
const BURST_MODEL: &str = "NVIDIA-H200";

fn burst_nodes() -> String {
    (0..BURST_NODES)
        .map(|i| {
            format!(
                r#"---
apiVersion: v1
kind: Node
metadata:
  name: gpu-burst-{i}
  annotations: {{kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}}
  labels:
    kubernetes.io/hostname: gpu-burst-{i}
    type: kwok
    gpubridge.dev/pool: burst
    nvidia.com/gpu.product: {BURST_MODEL}
    nvidia.com/gpu.count: "8"
status:
  allocatable: {{cpu: "192", memory: 2Ti, pods: "110", nvidia.com/gpu: "8"}}
  capacity: {{cpu: "192", memory: 2Ti, pods: "110", nvidia.com/gpu: "8"}}
"#
            )
        })
        .collect()
}

const BURST_OFFER: &str = r#"
apiVersion: gpubridge.dev/v1alpha1
kind: GpuOffer
metadata: {name: burst}
spec:
  nodeSelector: {matchLabels: {gpubridge.dev/pool: burst}}
  maxGpus: 40
  price: {amount: "2.00", denomination: USDC}
  lease: {minDurationSeconds: 60, maxDurationSeconds: 3600, maxGpusPerLease: 8}
  workload: {allowedRegistries: [ghcr.io]}
"#;

/// GPUs of the burst offer's leases that are not over, at this instant.
async fn leased_now(client: &Client) -> u32 {
    let leases = Api::<ComputeLease>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    leases
        .items
        .iter()
        .filter(|l| l.spec.offer_name == "burst" && !l.phase().is_terminal())
        .map(|l| l.spec.gpus)
        .sum()
}

#[tokio::test]
async fn two_replicas_and_200_concurrent_orders_never_promise_a_gpu_twice() {
    let Some(c) = cluster("burst").await else {
        return;
    };
    install_crds(&c.client).await;
    apply_yaml(&c.client, &burst_nodes()).await;
    let network = NetworkNode::start("burst");
    let flags = network.operator_flags();
    let a = Operator::start_with(&c, "burst-a", &flags);
    let b = Operator::start_with(&c, "burst-b", &flags);
    apply_yaml(&c.client, BURST_OFFER).await;
    a.wait_ready_or_standby().await;
    b.wait_ready_or_standby().await;
    two_hundred_orders_fit_the_pool(&c, &network, 1).await;
    remove_burst_pool(&c.client).await;
    drop((a, b));
}

/// Two operators that both act on the same pool, as two replicas that both believe they lead
/// would (a partition, a paused process): leader election is off on both. Each has a provider
/// key of its own, so the network streams leases to both at once and its own capacity guard is
/// out of play: it sees two providers offering the pool's 40 GPUs each, 80 in all. Only the
/// reservation record, written under optimistic concurrency, keeps them to the 40 there are.
/// Both run as the chart's ServiceAccount (only its lease pods are admitted); the second is let
/// read one more Secret, its own provider key, by a Role this test adds.
#[tokio::test]
async fn two_operators_acting_at_once_never_promise_a_gpu_twice() {
    let Some(c) = cluster("twins").await else {
        return;
    };
    install_crds(&c.client).await;
    apply_yaml(&c.client, &burst_nodes()).await;
    let network = NetworkNode::start("twins");
    let mut flags = network.operator_flags();
    flags.push("--leader-election=false".into());
    let a = Operator::start_with(&c, "twin-a", &flags);
    flags.extend(["--provider-key-secret".into(), "twin-b-provider-key".into()]);
    apply_yaml(&c.client, TWIN_B_KEY_ACCESS).await;
    let b = Operator::start_as("twin-b", &flags, &c.operator_kubeconfig);
    apply_yaml(&c.client, BURST_OFFER).await;
    a.wait_ready().await;
    b.wait_ready().await;
    two_hundred_orders_fit_the_pool(&c, &network, 2).await;
    // Both took leases: the record, not one of them standing by, kept the promise.
    for operator in [&a, &b] {
        operator
            .wait_metric_at_least(
                r#"gpubridge_intake_leases_total{decision="accepted",reason="none"}"#,
                1,
                SECOND,
            )
            .await;
    }
    remove_burst_pool(&c.client).await;
    let _ =
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(c.client.clone(), "gpubridge-system")
            .delete("twin-b-provider-key", &DeleteParams::default())
            .await;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let key_access = "e2e-twin-b-provider-key";
    let _ = Api::<RoleBinding>::namespaced(c.client.clone(), "gpubridge-system")
        .delete(key_access, &DeleteParams::default())
        .await;
    let _ = Api::<Role>::namespaced(c.client.clone(), "gpubridge-system")
        .delete(key_access, &DeleteParams::default())
        .await;
    drop((a, b));
}

/// Lets the chart's ServiceAccount read the second operator's provider key as well.
const TWIN_B_KEY_ACCESS: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: e2e-twin-b-provider-key, namespace: gpubridge-system}
rules:
- apiGroups: [""]
  resources: [secrets]
  resourceNames: [twin-b-provider-key]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: e2e-twin-b-provider-key, namespace: gpubridge-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: e2e-twin-b-provider-key}
subjects:
- {kind: ServiceAccount, name: gpubridge, namespace: gpubridge-system}
"#;

/// 200 orders of 1 to 8 GPUs, wanting far more than the burst pool's 40, sent at once to the
/// network, where `providers` providers publish the pool: never more than 40 GPUs are leased at
/// any sampled instant, every accepted lease runs where intake promised, and every rejection
/// names its reason.
async fn two_hundred_orders_fit_the_pool(c: &Cluster, network: &NetworkNode, providers: usize) {
    let buyers: Vec<_> =
        futures::future::join_all((0..10).map(|_| network.client(generate_key()))).await;
    for buyer in &buyers {
        buyer
            .deposit(Amount::from_atto(10_000 * UNIT), "USDC")
            .await
            .unwrap();
    }
    wait_published_by(&buyers[0], "burst", 40, providers).await;

    // Sample the leased GPUs while the orders land.
    let (stop, peak, samples) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU32::new(0)),
        Arc::new(AtomicU32::new(0)),
    );
    let sampler = {
        let (client, stop, peak, samples) = (
            c.client.clone(),
            stop.clone(),
            peak.clone(),
            samples.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let now = leased_now(&client).await;
                peak.fetch_max(now, Ordering::Relaxed);
                samples.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // 200 orders of 1, 2, 4 or 8 GPUs want ~600 GPUs of the 40; all sent at once.
    let sizes = [1u32, 2, 4, 8, 3];
    let sends = (0..200).map(|i| {
        let buyer = &buyers[i % buyers.len()];
        let gpus = sizes[(i * 7) % sizes.len()];
        async move {
            buyer
                .submit(order(gpus, BURST_MODEL, 600, 3 * UNIT))
                .await
                .unwrap_or_else(|e| panic!("order {i}: {e}"))
        }
    });
    let placed: Vec<OrderView> = futures::future::join_all(sends).await;
    let wanted: u32 = placed.iter().map(|o| o.gpus).sum();
    assert!(
        wanted > 400,
        "the orders want far more than 40 GPUs: {wanted}"
    );

    // Every order is answered: leased, or rejected with a reason.
    let answered = eventually("every order to be answered", 90 * SECOND, || async {
        let mut all = Vec::new();
        for buyer in &buyers {
            all.extend(buyer.list_orders().await.map_err(|e| e.to_string())?);
        }
        let open = all
            .iter()
            .filter(|o| o.state() == OrderState::Matched)
            .count();
        if open == 0 {
            Ok(all)
        } else {
            Err(format!("{open} still waiting"))
        }
    })
    .await;
    // Every accepted lease runs: its pod is bound where intake promised.
    let leases = eventually("every accepted lease to run", 60 * SECOND, || async {
        let leases = Api::<ComputeLease>::all(c.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let burst: Vec<ComputeLease> = leases
            .items
            .into_iter()
            .filter(|l| l.spec.offer_name == "burst")
            .collect();
        let waiting = burst
            .iter()
            .filter(|l| l.phase() != LeasePhase::Running)
            .count();
        if waiting == 0 {
            Ok(burst)
        } else {
            Err(format!("{waiting} not running"))
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();

    let leased: Vec<&OrderView> = answered
        .iter()
        .filter(|o| o.state() == OrderState::Leased)
        .collect();
    let rejected: Vec<&OrderView> = answered
        .iter()
        .filter(|o| o.state() == OrderState::Rejected)
        .collect();
    assert_eq!(leased.len() + rejected.len(), 200);
    let accepted_gpus: u32 = leased.iter().map(|o| o.gpus).sum();
    let peak = peak.load(Ordering::Relaxed);
    assert!(accepted_gpus <= 40, "accepted {accepted_gpus} GPUs of 40");
    assert!(peak <= 40, "at one sampled instant {peak} GPUs were leased");
    // What was accepted is exactly what runs: one ComputeLease per leased order, none for others.
    let mut lease_ids: Vec<&str> = leases.iter().map(|l| l.spec.lease_id.as_str()).collect();
    let mut leased_ids: Vec<&str> = leased.iter().map(|o| o.lease_id.as_str()).collect();
    lease_ids.sort_unstable();
    leased_ids.sort_unstable();
    assert_eq!(lease_ids, leased_ids);
    // Every pod runs on the node intake promised, and no node holds more than it has.
    let mut per_node: BTreeMap<String, u32> = BTreeMap::new();
    for lease in &leases {
        let node = lease.status.as_ref().and_then(|s| s.node.clone()).unwrap();
        assert_eq!(lease.annotations().get(NODE_ANNOTATION), Some(&node));
        *per_node.entry(node).or_default() += lease.spec.gpus;
    }
    assert!(per_node.values().all(|g| *g <= 8), "{per_node:?}");
    // With one provider, exactly what fits was accepted: each order rejected for capacity wanted
    // more GPUs than any node has free now (free only shrank while the orders landed). Two
    // providers on one pool each have an optimistic book: a lease one operator refuses (the other
    // took its GPUs) holds its provider's book until the refusal lands, and an order arriving in
    // that window is refused though a GPU is free. What they must never do is promise a GPU
    // twice, which the counts above check.
    let largest_free = (0..BURST_NODES)
        .map(|i| {
            8 - per_node
                .get(&format!("gpu-burst-{i}"))
                .copied()
                .unwrap_or(0)
        })
        .max()
        .unwrap();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for order in &rejected {
        assert!(
            !order.reason.is_empty(),
            "order {} rejected without a reason",
            order.order_id
        );
        let capacity = order.reason.contains("no node with that many free GPUs")
            || order.reason.contains("not enough idle GPUs");
        assert!(capacity, "order {}: {}", order.order_id, order.reason);
        assert!(
            providers > 1 || order.gpus > largest_free,
            "order {} for {} GPUs was rejected ({}) but a node still has {largest_free} free",
            order.order_id,
            order.gpus,
            order.reason
        );
        let kind = order
            .reason
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        *reasons.entry(kind).or_default() += 1;
    }
    println!(
        "200 orders wanting {wanted} GPUs: {} accepted ({accepted_gpus} GPUs), {} rejected {reasons:?}; \
         peak leased {peak} over {} samples; largest free block left {largest_free}",
        leased.len(),
        rejected.len(),
        samples.load(Ordering::Relaxed)
    );
}

/// Deletes the burst offer's leases, the offer and its nodes.
async fn remove_burst_pool(client: &Client) {
    let leases = Api::<ComputeLease>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    // All at once: each waits out the end report's grace for a final receipt (no meter runs
    // on kwok), so one after another would take minutes.
    futures::future::join_all(
        leases
            .items
            .iter()
            .filter(|l| l.spec.offer_name == "burst")
            .map(|l| async move { delete_lease(client, &l.name_any()).await }),
    )
    .await;
    let _ = Api::<gpubridge::crd::GpuOffer>::all(client.clone())
        .delete("burst", &DeleteParams::default())
        .await;
    let nodes: Api<Node> = Api::all(client.clone());
    for i in 0..BURST_NODES {
        let _ = nodes
            .delete(&format!("gpu-burst-{i}"), &DeleteParams::default())
            .await;
    }
}

/// Intake latency on the real control plane: from an order submitted to the network, to its
/// ComputeLease created by intake, to the lease pod bound by the scheduler. Orders are sent one
/// at a time, so each figure is one lease's path with nothing queued ahead of it; 39 are counted
/// after one warm-up.
#[tokio::test]
#[ignore = "a benchmark: `make bench` runs it on the e2e control plane"]
async fn intake_latency_benchmark() {
    let Some(c) = cluster("intake-latency").await else {
        return;
    };
    install_crds(&c.client).await;
    apply_yaml(&c.client, &burst_nodes()).await;
    let network = NetworkNode::start("latency");
    let operator = Operator::start_with(&c, "latency", &network.operator_flags());
    apply_yaml(&c.client, BURST_OFFER).await;
    operator.wait_ready().await;
    let buyer = network.client(generate_key()).await;
    buyer
        .deposit(Amount::from_atto(10_000 * UNIT), "USDC")
        .await
        .unwrap();
    wait_published(&buyer, "burst", 40).await;

    let leases: Api<ComputeLease> = Api::all(c.client.clone());
    let (mut created, mut bound) = (Vec::new(), Vec::new());
    // The first order is a warm-up and not counted: it took 2 s in the first run against a median
    // of 15 ms, the cost of a cold start (first create after the CRDs were installed, first
    // connections) rather than of intake.
    for i in 0..=39 {
        let started = std::time::Instant::now();
        let placed = buyer
            .submit(order(1, BURST_MODEL, 600, 3 * UNIT))
            .await
            .unwrap();
        assert_eq!(
            placed.state(),
            OrderState::Matched,
            "order {i}: {}",
            placed.reason
        );
        let pods: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(c.client.clone(), &format!("lease-{}", placed.lease_id));
        let mut seen_lease = None;
        loop {
            if seen_lease.is_none() && leases.get_opt(&placed.lease_id).await.unwrap().is_some() {
                seen_lease = Some(started.elapsed());
            }
            if seen_lease.is_some()
                && let Some(pod) = pods.get_opt("workload").await.unwrap()
                && pod.spec.and_then(|s| s.node_name).is_some()
            {
                if i > 0 {
                    created.push(seen_lease.unwrap());
                    bound.push(started.elapsed());
                }
                break;
            }
            assert!(
                started.elapsed() < 30 * SECOND,
                "order {i} was not bound in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    created.sort();
    bound.sort();
    println!(
        "intake latency over {} orders (polled every 5 ms): submitted → ComputeLease created p50 {:?} p99 {:?}; → pod bound p50 {:?} p99 {:?}",
        created.len(),
        percentile(&created, 50.0),
        percentile(&created, 99.0),
        percentile(&bound, 50.0),
        percentile(&bound, 99.0),
    );

    remove_burst_pool(&c.client).await;
}

async fn in_book(buyer: &gpubridge::wire::client::NetworkClient, offer: &str) -> bool {
    buyer
        .list_offers()
        .await
        .map(|offers| {
            offers
                .iter()
                .any(|o| o.offer_id.ends_with(&format!("/{offer}")))
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn the_session_refuses_a_wrong_network_key_withdraws_paused_offers_and_reconnects() {
    let Some(c) = cluster("session").await else {
        return;
    };
    install_crds(&c.client).await;
    let mut network = NetworkNode::start("session");
    apply_yaml(&c.client, &workstation_offer()).await;
    let buyer = network.client(generate_key()).await;

    // Pinned to another key: the operator does not talk to this network.
    let mut wrong = network.operator_flags();
    wrong[3] = gpubridge::identity::public_key_base58(&generate_key().verifying_key());
    let impostor = Operator::start_with(&c, "session-wrong-key", &wrong);
    impostor.wait_ready().await;
    // It tried, was refused for the key, and is not connected.
    impostor
        .wait_metric_at_least(
            r#"gpubridge_network_session_failures_total{reason="wrong_network_key"}"#,
            1,
            30 * SECOND,
        )
        .await;
    impostor
        .wait_metric("gpubridge_network_session_up 0", SECOND)
        .await;
    assert!(
        !in_book(&buyer, "rtx-workstation").await,
        "nothing was published"
    );
    drop(impostor);

    let operator = Operator::start_with(&c, "session", &network.operator_flags());
    operator.wait_ready().await;
    operator
        .wait_metric("gpubridge_network_session_up 1", 30 * SECOND)
        .await;
    wait_published(&buyer, "rtx-workstation", 2).await;

    // Paused: withdrawn from the book and its network id cleared; unpaused: back.
    let offers: Api<gpubridge::crd::GpuOffer> = Api::all(c.client.clone());
    let pause = |paused: bool| {
        let offers = offers.clone();
        async move {
            offers
                .patch(
                    "rtx-workstation",
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(serde_json::json!({"spec": {"paused": paused}})),
                )
                .await
                .unwrap();
        }
    };
    pause(true).await;
    eventually(
        "the paused offer to leave the book",
        15 * SECOND,
        || async {
            let status = offer_status(&c.client, "rtx-workstation").await?;
            let advertised = advertised_condition(&status);
            match (
                in_book(&buyer, "rtx-workstation").await,
                status.offer_id,
                advertised.as_ref().map(|(s, r)| (s.as_str(), r.as_str())),
            ) {
                (false, None, Some(("False", "Paused"))) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    pause(false).await;
    wait_published(&buyer, "rtx-workstation", 2).await;
    // Back in the book: the condition says so (it stayed NotPublished before the fix).
    eventually("Advertised True once republished", 15 * SECOND, || async {
        let status = offer_status(&c.client, "rtx-workstation").await?;
        match advertised_condition(&status) {
            Some((s, r)) if s == "True" && r == "Published" && status.offer_id.is_some() => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // The network node crashes and comes back on the same database: the session reconnects,
    // republishes, and takes leases again.
    network.kill();
    operator
        .wait_metric("gpubridge_network_session_up 0", 30 * SECOND)
        .await;
    network.restart();
    operator
        .wait_metric("gpubridge_network_session_up 1", 90 * SECOND)
        .await;
    wait_published(&buyer, "rtx-workstation", 2).await;
    buyer
        .deposit(Amount::from_atto(10 * UNIT), "USDC")
        .await
        .unwrap();
    let placed = buyer
        .submit(order(2, "NVIDIA-GeForce-RTX-4090", 120, 12 * UNIT / 10))
        .await
        .unwrap();
    assert_eq!(placed.state(), OrderState::Matched, "{}", placed.reason);
    wait_phase(
        &c.client,
        &placed.lease_id,
        LeasePhase::Running,
        60 * SECOND,
    )
    .await;

    delete_lease(&c.client, &placed.lease_id).await;
    offers
        .delete("rtx-workstation", &DeleteParams::default())
        .await
        .unwrap();
    // A deleted offer is withdrawn too.
    eventually(
        "the deleted offer to leave the book",
        15 * SECOND,
        || async {
            if in_book(&buyer, "rtx-workstation").await {
                Err("still published".into())
            } else {
                Ok(())
            }
        },
    )
    .await;
}

#[tokio::test]
#[ignore = "a benchmark: `make bench` runs it on the e2e control plane"]
async fn meter_footprint_benchmark() {
    let Some(c) = cluster("meter-footprint").await else {
        return;
    };
    let (_network, operator, _buyer, placed) = workstation_lease(&c, "footprint", 600).await;
    wait_phase(
        &c.client,
        &placed.lease_id,
        LeasePhase::Running,
        60 * SECOND,
    )
    .await;
    // The meter as it runs in a pod: a sample a second, a receipt every ten seconds.
    let sidecars = Sidecars::start(&c.client, &placed.lease_id, 10).await;
    let pid = sidecars.meter_pid().unwrap();
    tokio::time::sleep(15 * SECOND).await;
    let (_, ticks_before) = footprint(pid).unwrap();
    let mut peak_rss = 0;
    const SECONDS: u64 = 60;
    for _ in 0..SECONDS / 5 {
        tokio::time::sleep(5 * SECOND).await;
        peak_rss = peak_rss.max(footprint(pid).unwrap().0);
    }
    let (_, ticks_after) = footprint(pid).unwrap();
    let receipts = ReceiptLog::read_all(&sidecars.receipts_dir())
        .unwrap()
        .len();
    // Clock ticks are 1/100 s: ticks / (SECONDS × 100) of one core.
    let cpu = (ticks_after - ticks_before) as f64 / SECONDS as f64;
    let binary = std::fs::metadata(env!("CARGO_BIN_EXE_gpubridge-sidecar"))
        .unwrap()
        .len();
    println!(
        "meter at 1 Hz over {SECONDS} s: peak RSS {peak_rss} KiB ({:.1} MiB; now {} KiB anonymous, {} KiB file-backed), CPU {cpu:.2} % of a core, {receipts} receipts sealed; gpubridge-sidecar is {:.1} MB",
        peak_rss as f64 / 1024.0,
        status_kib(pid, "RssAnon:").unwrap_or(0),
        status_kib(pid, "RssFile:").unwrap_or(0),
        binary as f64 / 1e6,
    );
    let metrics = http_get(&format!("{}/metrics", operator.http))
        .await
        .unwrap()
        .1;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gpubridge_receipts_accepted_total "))
    );
}

/// The offer's Advertised condition: (status, reason).
fn advertised_condition(status: &gpubridge::crd::GpuOfferStatus) -> Option<(String, String)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Advertised")
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// The order once the network shows it in `state`.
pub(crate) async fn order_reaches(
    buyer: &NetworkClient,
    order_id: &str,
    state: OrderState,
    timeout: Duration,
) -> OrderView {
    eventually(
        &format!("order {order_id} to be {state:?}"),
        timeout,
        || async {
            let o = buyer
                .order_status(order_id)
                .await
                .map_err(|e| e.to_string())?;
            if o.state() == state {
                Ok(o)
            } else {
                Err(format!("{:?}: {}", o.state(), o.reason))
            }
        },
    )
    .await
}

/// The first hour's bug 2: an operator the admission policy does not let create lease pods (run
/// here as the cluster's admin, not the chart's ServiceAccount) ends its first lease at once as
/// the provider's fault with a warning Event and a whole refund, and refuses the next lease with
/// the reason instead of accepting what its cluster cannot hold.
#[tokio::test]
async fn an_operator_whose_lease_pods_are_refused_refuses_leases_until_it_can_run_them() {
    let Some(c) = cluster("refused-box").await else {
        return;
    };
    let (_network, operator, buyer, first) =
        workstation_lease_as(&c, "refused-box", 600, &c.kubeconfig).await;
    let lease = wait_phase(&c.client, &first.lease_id, LeasePhase::Failed, 30 * SECOND).await;
    let termination = lease.status.unwrap().termination.unwrap();
    assert_eq!(termination.reason.as_str(), "BoxRejected");
    assert!(
        termination.message.contains("only the gpubridge operator"),
        "{}",
        termination.message
    );

    // The next lease is refused by intake, saying why.
    let second = buyer
        .submit(order(1, "NVIDIA-GeForce-RTX-4090", 600, 12 * UNIT / 10))
        .await
        .unwrap();
    assert_eq!(second.state(), OrderState::Matched, "{}", second.reason);
    let refused = order_reaches(&buyer, &second.order_id, OrderState::Rejected, 30 * SECOND).await;
    assert!(
        refused
            .reason
            .contains("the provider's cluster refused the last lease pod (")
            && refused.reason.contains("only the gpubridge operator"),
        "{}",
        refused.reason
    );
    assert_eq!(refused.refunded, refused.held, "the second hold went back");

    // The first ends as the provider's fault: the whole hold goes back, and the lease has a
    // warning Event.
    let ended = order_reaches(&buyer, &first.order_id, OrderState::Ended, 60 * SECOND).await;
    assert_eq!(ended.reason, "Failed (BoxRejected); the provider's fault");
    assert_eq!(
        (ended.charged.as_str(), &ended.refunded),
        ("0", &ended.held)
    );
    let events = kubectl(
        &c,
        &[
            "get",
            "events",
            &format!(
                "--field-selector=involvedObject.kind=ComputeLease,involvedObject.name={}",
                first.lease_id
            ),
            "-o",
            "jsonpath={range .items[*]}{.type}/{.reason} {end}",
        ],
        b"",
    );
    assert!(events.contains("Warning/Failed"), "{events}");
    operator
        .wait_metric_at_least(
            r#"gpubridge_intake_leases_total{decision="rejected",reason="box"}"#,
            1,
            SECOND,
        )
        .await;

    delete_lease(&c.client, &first.lease_id).await;
    Api::<gpubridge::crd::GpuOffer>::all(c.client.clone())
        .delete("rtx-workstation", &DeleteParams::default())
        .await
        .unwrap();
}

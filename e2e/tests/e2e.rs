//! End to end, against the real control plane of `e2e/cluster.sh` (kube-apiserver, etcd,
//! kube-controller-manager, kube-scheduler and kwok): schemas and CEL rules, server-side apply,
//! owner references and garbage collection, the scheduler's GPU fit and preemption are all the
//! real ones. Run with `make e2e`, which brings the cluster up and down.

mod chart;
mod consensus;
mod dashboard;
mod dra;
mod in_cluster;
mod network;
mod real_node;
mod scale;
mod sidecars;
mod support;

use std::time::{Duration, Instant};

use gpubridge::crd::{
    ComputeLease, GpuOffer, LeasePhase, NodeExclusion, OfferState, TerminationReason,
};
use k8s_openapi::api::core::v1::{LimitRange, Namespace, Node, Pod, ResourceQuota, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use support::{Operator, apply_yaml, cluster, eventually, repo};

const SECOND: Duration = Duration::from_secs(1);

/// Installs the CRDs with server-side apply and waits until they are served.
async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, crd) in gpubridge::crd::all() {
        crds.patch(
            &crd.name_any(),
            &PatchParams::apply(support::FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .expect("CRD applies");
    }
    for (_, crd) in gpubridge::crd::all() {
        let name = crd.name_any();
        eventually(
            &format!("{name} to be established"),
            30 * SECOND,
            || async {
                let crd = crds.get(&name).await.map_err(|e| e.to_string())?;
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                if established {
                    Ok(())
                } else {
                    Err("not established".into())
                }
            },
        )
        .await;
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns =
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gpubridge-system"}});
    namespaces
        .patch(
            "gpubridge-system",
            &PatchParams::apply(support::FIELD_MANAGER),
            &Patch::Apply(&ns),
        )
        .await
        .unwrap();
}

/// Deletes the CRDs and waits until they are gone, clearing lease finalizers first.
async fn uninstall_crds(client: &Client) {
    let leases: Api<ComputeLease> = Api::all(client.clone());
    if let Ok(list) = leases.list(&ListParams::default()).await {
        for l in list {
            let clear = json!({"metadata": {"finalizers": null}});
            let _ = leases
                .patch(
                    &l.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&clear),
                )
                .await;
        }
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, crd) in gpubridge::crd::all() {
        let _ = crds.delete(&crd.name_any(), &DeleteParams::default()).await;
    }
    eventually("the CRDs to be gone", 60 * SECOND, || async {
        let left = crds
            .list(&ListParams::default().fields("metadata.name=gpuoffers.gpubridge.dev"))
            .await
            .map_err(|e| e.to_string())?
            .items
            .len()
            + crds
                .list(&ListParams::default().fields("metadata.name=computeleases.gpubridge.dev"))
                .await
                .map_err(|e| e.to_string())?
                .items
                .len();
        if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} left"))
        }
    })
    .await;
}

async fn offer_status(
    client: &Client,
    name: &str,
) -> Result<gpubridge::crd::GpuOfferStatus, String> {
    let offer = Api::<GpuOffer>::all(client.clone())
        .get(name)
        .await
        .map_err(|e| e.to_string())?;
    if offer.status.as_ref().and_then(|s| s.observed_generation) != offer.metadata.generation {
        return Err("status not computed for this generation yet".into());
    }
    offer.status.ok_or_else(|| "no status yet".into())
}

async fn idle_of(client: &Client, offer: &str) -> Result<u32, String> {
    Ok(offer_status(client, offer).await?.idle_gpus)
}

/// The offer leases in these tests run under: the RTX 4090 workstation node, one-minute leases.
fn workstation_offer() -> String {
    std::fs::read_to_string(repo().join("manifests/samples/rtx-workstation.yaml")).unwrap()
}

/// The CRDs installed, an operator started as `identity`, the workstation offer declared, and
/// the operator ready and leading.
async fn operator_with_workstation_offer(c: &support::Cluster, identity: &str) -> Operator {
    install_crds(&c.client).await;
    let operator = Operator::start(c, identity);
    apply_yaml(&c.client, &workstation_offer()).await;
    operator.wait_ready().await;
    operator
}

fn lease_yaml(name: &str, duration_seconds: u64) -> String {
    format!(
        r#"
apiVersion: gpubridge.dev/v1alpha1
kind: ComputeLease
metadata: {{name: {name}}}
spec:
  leaseId: {name}
  offerName: rtx-workstation
  buyerPublicKey: 7Np41oeYqPefeNQEHSv1UDhYrehxin3NStELsSKCT4K2
  gpus: 1
  resourceName: nvidia.com/gpu
  durationSeconds: {duration_seconds}
  price: {{amount: "0.90", denomination: USDC}}
  workload: {{image: "ghcr.io/acme/render:2", cpu: "4", memory: 16Gi}}
"#
    )
}

async fn lease(client: &Client, name: &str) -> Result<ComputeLease, String> {
    Api::<ComputeLease>::all(client.clone())
        .get(name)
        .await
        .map_err(|e| e.to_string())
}

async fn wait_phase(
    client: &Client,
    name: &str,
    phase: LeasePhase,
    timeout: Duration,
) -> ComputeLease {
    eventually(
        &format!("lease {name} to be {phase:?}"),
        timeout,
        || async {
            let l = lease(client, name).await?;
            if l.phase() == phase {
                Ok(l)
            } else {
                Err(format!("phase {:?}, status {:?}", l.phase(), l.status))
            }
        },
    )
    .await
}

/// Deletes a lease and waits until it and its namespace are gone. Pods on a node without a
/// kubelet never finish terminating, so they are force-deleted, as an administrator would.
async fn delete_lease(client: &Client, name: &str) {
    let leases: Api<ComputeLease> = Api::all(client.clone());
    let _ = leases.delete(name, &DeleteParams::default()).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &format!("lease-{name}"));
    eventually(
        &format!("lease {name} and its namespace to be gone"),
        90 * SECOND,
        || async {
            if let Ok(Some(pod)) = pods.get_opt("workload").await
                && pod.metadata.deletion_timestamp.is_some()
            {
                let _ = pods
                    .delete(
                        "workload",
                        &DeleteParams {
                            grace_period_seconds: Some(0),
                            ..Default::default()
                        },
                    )
                    .await;
            }
            let lease_left = leases
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())?
                .is_some();
            let ns = Api::<Namespace>::all(client.clone())
                .get_opt(&format!("lease-{name}"))
                .await
                .map_err(|e| e.to_string())?;
            match (lease_left, ns) {
                (false, None) => Ok(()),
                (l, ns) => Err(format!(
                    "lease left: {l}, namespace: {:?}",
                    ns.and_then(|n| n.status).and_then(|s| s.phase)
                )),
            }
        },
    )
    .await
}

#[tokio::test]
async fn crds_install_and_the_apiserver_rejects_invalid_objects() {
    let Some(c) = cluster("crds").await else {
        return;
    };
    // What a person runs first, on a cluster without the CRDs:
    // `gpubridge crdgen | kubectl apply --dry-run=client -f -`. Earlier tests installed them, so
    // they go first (with whatever instances are left; no operator runs to finalize leases).
    uninstall_crds(&c.client).await;
    let crdgen = std::process::Command::new(env!("CARGO_BIN_EXE_gpubridge"))
        .arg("crdgen")
        .output()
        .unwrap();
    assert!(crdgen.status.success());
    let dry_run = kubectl(
        &c,
        &["apply", "--dry-run=client", "-f", "-"],
        &crdgen.stdout,
    );
    assert!(
        dry_run.contains("gpuoffers.gpubridge.dev created (dry run)"),
        "{dry_run}"
    );
    assert!(
        dry_run.contains("computeleases.gpubridge.dev created (dry run)"),
        "{dry_run}"
    );
    install_crds(&c.client).await;
    let dir = repo().join("tests/fixtures/crd/invalid");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .expect("# expect: line");
        let object: kube::api::DynamicObject = serde_yaml::from_str(&text).unwrap();
        let (api, _) = support::dynamic_api(&c.client, &object).await;
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => panic!("{}: the apiserver accepted it", path.display()),
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{}: {status:?}", path.display());
                assert!(
                    status.message.contains(expect),
                    "{}: {:?} lacks {expect:?}",
                    path.display(),
                    status.message
                );
                println!(
                    "rejected {}: {}",
                    path.file_name().unwrap().to_string_lossy(),
                    status.message
                );
            }
            Err(e) => panic!("{}: {e}", path.display()),
        }
        checked += 1;
    }
    assert!(checked >= 10, "{checked} invalid objects checked");
    // A lease's terms cannot change once it exists.
    apply_yaml(&c.client, &lease_yaml("immutable", 600)).await;
    let leases: Api<ComputeLease> = Api::all(c.client.clone());
    let err = leases
        .patch(
            "immutable",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"gpus": 2}})),
        )
        .await
        .expect_err("spec change refused");
    assert!(err.to_string().contains("spec is immutable"), "{err}");
    leases
        .delete("immutable", &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn operator_brings_the_sample_offers_to_what_the_fixtures_imply() {
    let Some(c) = cluster("offers").await else {
        return;
    };
    install_crds(&c.client).await;
    let operator = Operator::start(&c, "offers");
    for sample in ["h100-public.yaml", "a100-mig.yaml"] {
        apply_yaml(
            &c.client,
            &std::fs::read_to_string(repo().join("manifests/samples").join(sample)).unwrap(),
        )
        .await;
    }
    operator.wait_ready().await;

    let h100 = eventually("h100-public status", 30 * SECOND, || async {
        let s = offer_status(&c.client, "h100-public").await?;
        if s.idle_gpus == 32 {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    // Four Ready H100 nodes of 8; the cordoned, NotReady and tainted ones add nothing.
    assert_eq!(
        (
            h100.idle_gpus,
            h100.advertised_gpus,
            h100.leased_gpus,
            h100.largest_block
        ),
        (32, 24, 0, 8)
    );
    assert_eq!(h100.model.as_deref(), Some("NVIDIA-H100-80GB-HBM3"));
    let reason = |name: &str| {
        h100.nodes
            .iter()
            .find(|n| n.name == name)
            .and_then(|n| n.reason)
    };
    assert_eq!(reason("gpu-h100-cordoned"), Some(NodeExclusion::Cordoned));
    assert_eq!(reason("gpu-h100-notready"), Some(NodeExclusion::NotReady));
    assert_eq!(reason("gpu-h100-tainted"), Some(NodeExclusion::Tainted));
    assert_eq!(
        reason("gpu-h100-0"),
        Some(NodeExclusion::Reserved),
        "reserveGpus 8 keeps one node back"
    );
    assert!(
        h100.nodes.iter().all(|n| n.name != "gpu-a100-0"),
        "a node outside the selector is not listed"
    );
    assert_eq!(reason("gpu-h100-1"), None);
    let ready = h100.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.status, "True");

    let mig = offer_status(&c.client, "a100-mig-1g").await.unwrap();
    assert_eq!(
        (mig.idle_gpus, mig.advertised_gpus, mig.largest_block),
        (7, 7, 7),
        "MIG slices: {mig:?}"
    );
    assert_eq!(
        mig.nodes
            .iter()
            .find(|n| n.name == "gpu-a100-0")
            .and_then(|n| n.reason),
        Some(NodeExclusion::NoGpus),
        "A100s without MIG slices sell none"
    );

    // A newer offer over the same nodes gets nothing and says why. Creation times have second
    // precision (offers created in the same second are ordered by name), so it comes a second
    // later.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    apply_yaml(
        &c.client,
        r#"
apiVersion: gpubridge.dev/v1alpha1
kind: GpuOffer
metadata: {name: e2e-overlap}
spec:
  nodeSelector: {matchLabels: {gpubridge.dev/pool: public}}
  maxGpus: 8
  price: {amount: "9.99", denomination: USDC}
  lease: {minDurationSeconds: 60, maxDurationSeconds: 600, maxGpusPerLease: 8}
"#,
    )
    .await;
    let overlap = eventually(
        "the overlapping offer to be Degraded",
        30 * SECOND,
        || async {
            let s = offer_status(&c.client, "e2e-overlap").await?;
            match s.conditions.iter().find(|c| c.type_ == "Degraded") {
                Some(d) if d.status == "True" => Ok(s),
                _ => Err(format!("{:?}", s.conditions)),
            }
        },
    )
    .await;
    assert_eq!(overlap.advertised_gpus, 0);
    // It names no registries, so it refuses every lease: not Ready, and a warning Event says why.
    assert_eq!(overlap.state, Some(OfferState::NoRegistries));
    let ready = overlap
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "NoRegistries")
    );
    let reasons = eventually("the overlapping offer's Events", 30 * SECOND, || async {
        let out = kubectl(
            &c,
            &[
                "get",
                "events",
                "--field-selector=involvedObject.kind=GpuOffer,involvedObject.name=e2e-overlap",
                "-o",
                "jsonpath={range .items[*]}{.type}/{.reason} {end}",
            ],
            b"",
        );
        if out.contains("Warning/NoRegistries") && out.contains("Normal/Created") {
            Ok(out)
        } else {
            Err(out)
        }
    })
    .await;
    println!("e2e-overlap events: {reasons}");
    Api::<GpuOffer>::all(c.client.clone())
        .delete("e2e-overlap", &DeleteParams::default())
        .await
        .unwrap();

    // The printer columns a person sees.
    let table = kubectl(&c, &["get", "gpuoffers"], b"");
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "MODEL",
            "STATE",
            "IDLE",
            "ADVERTISED",
            "LEASED",
            "PRICE",
            "READY",
            "AGE"
        ],
        "{table}"
    );
    assert!(
        table.lines().any(|l| l.starts_with("h100-public")
            && l.contains("NVIDIA-H100-80GB-HBM3")
            && l.contains("NotPublished")
            && l.contains("2.4 USDC")
            && l.contains("True")),
        "{table}"
    );
    println!("{table}");
}

#[tokio::test]
async fn scheduled_gpu_pods_lower_idle_capacity_and_freeing_them_raises_it() {
    let Some(c) = cluster("pods").await else {
        return;
    };
    install_crds(&c.client).await;
    let operator = Operator::start(&c, "pods");
    apply_yaml(
        &c.client,
        &std::fs::read_to_string(repo().join("manifests/samples/h100-public.yaml")).unwrap(),
    )
    .await;
    operator.wait_ready().await;
    eventually("idle 32", 30 * SECOND, || async {
        match idle_of(&c.client, "h100-public").await? {
            32 => Ok(()),
            n => Err(format!("idle {n}")),
        }
    })
    .await;

    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "trainer", "namespace": "default"},
        "spec": {
            "nodeSelector": {"gpubridge.dev/pool": "public"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "containers": [{"name": "t", "image": "nvcr.io/nvidia/pytorch:25.01",
                            "resources": {"limits": {"nvidia.com/gpu": "4"}}}]
        }
    }))
    .unwrap();
    let started = Instant::now();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    eventually("idle to drop by 4", 10 * SECOND, || async {
        match idle_of(&c.client, "h100-public").await? {
            28 => Ok(()),
            n => {
                let pod = pods.get("trainer").await.map_err(|e| e.to_string())?;
                Err(format!(
                    "idle {n}; pod on {:?}, {:?}",
                    pod.spec.and_then(|s| s.node_name),
                    pod.status.and_then(|s| s.conditions)
                ))
            }
        }
    })
    .await;
    let bound = pods
        .get("trainer")
        .await
        .unwrap()
        .spec
        .unwrap()
        .node_name
        .unwrap();
    println!(
        "a 4-GPU pod bound by kube-scheduler to {bound} lowered idle 32 → 28 in {:?}",
        started.elapsed()
    );
    assert!(
        bound.starts_with("gpu-h100-")
            && !bound.ends_with("cordoned")
            && !bound.ends_with("notready")
    );

    let started = Instant::now();
    pods.delete(
        "trainer",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    eventually("idle to rise back", 10 * SECOND, || async {
        match idle_of(&c.client, "h100-public").await? {
            32 => Ok(()),
            n => Err(format!("idle {n}")),
        }
    })
    .await;
    println!(
        "deleting it raised idle back to 32 in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_lease_gets_its_box_runs_on_an_offered_node_expires_and_is_cleaned_up() {
    let Some(c) = cluster("lease").await else {
        return;
    };
    let _operator = operator_with_workstation_offer(&c, "lease").await;
    eventually("the workstation offer", 30 * SECOND, || async {
        idle_of(&c.client, "rtx-workstation").await
    })
    .await;

    // Created with kubectl, as a person would.
    let applied = kubectl(
        &c,
        &["apply", "-f", "-"],
        lease_yaml("e2e-expiry", 60).as_bytes(),
    );
    assert!(
        applied.contains("computelease.gpubridge.dev/e2e-expiry created"),
        "{applied}"
    );

    let running = wait_phase(&c.client, "e2e-expiry", LeasePhase::Running, 60 * SECOND).await;
    let status = running.status.unwrap();
    assert_eq!(
        status.node.as_deref(),
        Some("gpu-4090-0"),
        "bound to the offer's only node"
    );
    let ns = "lease-e2e-expiry";
    let client = &c.client;
    let labels = Api::<Namespace>::all(client.clone())
        .get(ns)
        .await
        .unwrap()
        .labels()
        .clone();
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
    assert!(
        Api::<NetworkPolicy>::namespaced(client.clone(), ns)
            .get("lease-box")
            .await
            .is_ok()
    );
    assert!(
        Api::<ResourceQuota>::namespaced(client.clone(), ns)
            .get("lease-quota")
            .await
            .is_ok()
    );
    assert!(
        Api::<LimitRange>::namespaced(client.clone(), ns)
            .get("lease-limits")
            .await
            .is_ok()
    );
    assert!(
        Api::<Secret>::namespaced(client.clone(), ns)
            .get("lease-identity")
            .await
            .is_ok()
    );
    // Someone deletes the lease's default-deny policy: the operator's watch of the box sees it
    // and puts it back at once, not at the lease's next periodic reconcile (its expiry).
    let policies = Api::<NetworkPolicy>::namespaced(client.clone(), ns);
    policies
        .delete("lease-box", &Default::default())
        .await
        .unwrap();
    let deleted = std::time::Instant::now();
    eventually(
        "the deleted NetworkPolicy put back",
        10 * SECOND,
        || async {
            policies
                .get("lease-box")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
    .await;
    println!(
        "a deleted NetworkPolicy was put back in {:?}",
        deleted.elapsed()
    );
    let pod = Api::<Pod>::namespaced(client.clone(), ns)
        .get("workload")
        .await
        .unwrap();
    assert_eq!(
        pod.status.unwrap().phase.as_deref(),
        Some("Running"),
        "kwok runs it"
    );
    assert_eq!(
        pod.spec.unwrap().automount_service_account_token,
        Some(false)
    );
    eventually(
        "the leased GPU to be taken from idle",
        10 * SECOND,
        || async {
            let s = offer_status(client, "rtx-workstation").await?;
            if (s.idle_gpus, s.leased_gpus) == (1, 1) {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        },
    )
    .await;

    let expired = wait_phase(client, "e2e-expiry", LeasePhase::Expired, 90 * SECOND).await;
    let termination = expired.status.unwrap().termination.unwrap();
    assert_eq!(termination.reason, TerminationReason::Expired);
    eventually("the GPU to be free again", 30 * SECOND, || async {
        match idle_of(client, "rtx-workstation").await? {
            2 => Ok(()),
            n => Err(format!("idle {n}")),
        }
    })
    .await;

    delete_lease(client, "e2e-expiry").await;
}

#[tokio::test]
async fn an_operator_killed_mid_lease_creates_no_second_pod_and_loses_no_status() {
    let Some(c) = cluster("restart").await else {
        return;
    };
    let first = operator_with_workstation_offer(&c, "restart-1").await;
    apply_yaml(&c.client, &lease_yaml("e2e-restart", 600)).await;
    let before = wait_phase(&c.client, "e2e-restart", LeasePhase::Running, 60 * SECOND)
        .await
        .status
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "lease-e2e-restart");
    let pod_uid = pods.get("workload").await.unwrap().uid();

    first.kill();
    let second = Operator::start(&c, "restart-2");
    // The new replica leads once the killed one's Lease expires (it could not release it),
    // then reconciles the lease it finds.
    second.wait_ready().await;
    second.wait_leader().await;
    second
        .wait_metric_at_least(
            r#"gpubridge_reconciles_total{controller="lease"}"#,
            1,
            60 * SECOND,
        )
        .await;
    let after = lease(&c.client, "e2e-restart")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(after.phase, LeasePhase::Running);
    assert_eq!(
        after.started_at, before.started_at,
        "the lease clock was not restarted"
    );
    assert_eq!(after.ends_at, before.ends_at);
    let all = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), 1, "no second pod");
    assert_eq!(all.items[0].uid(), pod_uid, "the same pod");
    delete_lease(&c.client, "e2e-restart").await;
}

#[tokio::test]
async fn a_preempted_lease_and_a_lease_on_a_lost_node_end_with_provider_faults() {
    let Some(c) = cluster("faults").await else {
        return;
    };
    let _operator = operator_with_workstation_offer(&c, "faults").await;

    // Preemption: the enterprise's own job needs the whole node.
    apply_yaml(&c.client, &lease_yaml("e2e-preempted", 600)).await;
    wait_phase(&c.client, "e2e-preempted", LeasePhase::Running, 60 * SECOND).await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let job: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "production-render", "namespace": "default"},
        "spec": {
            "priorityClassName": "production",
            "nodeSelector": {"kubernetes.io/hostname": "gpu-4090-0"},
            "containers": [{"name": "r", "image": "ghcr.io/acme/render:2",
                            "resources": {"limits": {"nvidia.com/gpu": "2"}}}]
        }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &job).await.unwrap();
    let ended = wait_phase(&c.client, "e2e-preempted", LeasePhase::Failed, 60 * SECOND).await;
    let t = ended.status.unwrap().termination.unwrap();
    assert_eq!(
        (t.reason, t.fault),
        (
            TerminationReason::Preempted,
            gpubridge::crd::Fault::Provider
        ),
        "{t:?}"
    );
    pods.delete(
        "production-render",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    delete_lease(&c.client, "e2e-preempted").await;

    // Node loss: the node stops answering (kwok lets go of it and it reports NotReady); the
    // node lifecycle controller taints it and evicts the lease pod.
    apply_yaml(&c.client, &lease_yaml("e2e-node-lost", 600)).await;
    wait_phase(&c.client, "e2e-node-lost", LeasePhase::Running, 60 * SECOND).await;
    let nodes: Api<Node> = Api::all(c.client.clone());
    nodes
        .patch(
            "gpu-4090-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"kwok.x-k8s.io/node": null}}})),
        )
        .await
        .unwrap();
    let ready_false = json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady", "message": "e2e: node lost"}]}});
    nodes
        .patch_status(
            "gpu-4090-0",
            &PatchParams::default(),
            &Patch::Strategic(ready_false),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let ended = wait_phase(&c.client, "e2e-node-lost", LeasePhase::Failed, 180 * SECOND).await;
    let t = ended.status.unwrap().termination.unwrap();
    println!(
        "node lost → lease ended {:?} after {:?}",
        t.reason,
        started.elapsed()
    );
    assert_eq!(
        (t.reason, t.fault),
        (TerminationReason::NodeLost, gpubridge::crd::Fault::Provider),
        "{t:?}"
    );

    // The node comes back.
    nodes
        .patch(
            "gpu-4090-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"kwok.x-k8s.io/node": "fake"}}})),
        )
        .await
        .unwrap();
    delete_lease(&c.client, "e2e-node-lost").await;
    eventually("gpu-4090-0 to be Ready again", 60 * SECOND, || async {
        let node = nodes.get("gpu-4090-0").await.map_err(|e| e.to_string())?;
        let ready = node
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if ready {
            Ok(())
        } else {
            Err("NotReady".into())
        }
    })
    .await;
}

/// Runs the e2e kubectl (from `e2e/cluster.sh bin`) against the cluster with `stdin`; returns
/// what it printed, and fails the test when it fails.
fn kubectl(c: &support::Cluster, args: &[&str], stdin: &[u8]) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(support::bin_dir().join("kubectl"))
        .args(args)
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

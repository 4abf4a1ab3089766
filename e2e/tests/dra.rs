//! Dynamic Resource Allocation end to end: a small fake driver publishes ResourceSlices for two
//! fake nodes, an offer sells that driver's devices, and the real scheduler allocates the
//! lease's ResourceClaim, which the workload and both sidecars share.

use gpubridge::crd::{GpuOffer, LeasePhase};
use gpubridge::workload::{CLAIM_NAME, POD_NAME};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaim, ResourceSlice};
use kube::Api;
use kube::api::{DeleteParams, PostParams};

use crate::support::{Operator, apply_yaml, cluster, eventually};
use crate::{SECOND, delete_lease, install_crds, offer_status, wait_phase};

const DRIVER: &str = "gpu.fake.gpubridge.dev";
const DEVICES_PER_NODE: usize = 4;
const NODES: [&str; 2] = ["gpu-dra-0", "gpu-dra-1"];

/// The fake driver: a DeviceClass selecting its devices, and one ResourceSlice per node with
/// four GPUs, as a real DRA driver's kubelet plugin publishes them.
async fn fake_driver(client: &kube::Client) {
    let class: DeviceClass = serde_yaml::from_str(&format!(
        r#"
metadata: {{name: {DRIVER}}}
spec:
  selectors:
  - cel: {{expression: 'device.driver == "{DRIVER}"'}}
"#
    ))
    .unwrap();
    let _ = Api::<DeviceClass>::all(client.clone())
        .create(&PostParams::default(), &class)
        .await;
    for node in NODES {
        let devices: String = (0..DEVICES_PER_NODE)
            .map(|i| {
                format!(
                    "\n  - name: gpu-{i}\n    attributes:\n      productName: {{string: NVIDIA-H200-DRA}}\n      uuid: {{string: GPU-{node}-{i}}}"
                )
            })
            .collect();
        let slice: ResourceSlice = serde_yaml::from_str(&format!(
            r#"
metadata: {{name: {node}-gpus}}
spec:
  driver: {DRIVER}
  nodeName: {node}
  pool: {{name: {node}, generation: 1, resourceSliceCount: 1}}
  devices:{devices}
"#
        ))
        .unwrap();
        Api::<ResourceSlice>::all(client.clone())
            .create(&PostParams::default(), &slice)
            .await
            .expect("the fake driver publishes its slice");
    }
}

fn nodes_yaml() -> String {
    NODES
        .iter()
        .map(|name| {
            format!(
                r#"---
apiVersion: v1
kind: Node
metadata:
  name: {name}
  annotations: {{kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}}
  labels: {{kubernetes.io/hostname: {name}, type: kwok, gpubridge.dev/pool: dra}}
status:
  allocatable: {{cpu: "64", memory: 512Gi, pods: "110"}}
  capacity: {{cpu: "64", memory: 512Gi, pods: "110"}}
"#
            )
        })
        .collect()
}

const OFFER: &str = r#"
apiVersion: gpubridge.dev/v1alpha1
kind: GpuOffer
metadata: {name: dra}
spec:
  nodeSelector: {matchLabels: {gpubridge.dev/pool: dra}}
  dynamicResources: {deviceClassName: gpu.fake.gpubridge.dev, driver: gpu.fake.gpubridge.dev}
  maxGpus: 8
  price: {amount: "3.10", denomination: USDC}
  lease: {minDurationSeconds: 60, maxDurationSeconds: 3600, maxGpusPerLease: 4}
  workload: {allowedRegistries: [ghcr.io]}
"#;

const LEASE: &str = r#"
apiVersion: gpubridge.dev/v1alpha1
kind: ComputeLease
metadata: {name: e2e-dra}
spec:
  leaseId: e2e-dra
  offerName: dra
  buyerPublicKey: 7Np41oeYqPefeNQEHSv1UDhYrehxin3NStELsSKCT4K2
  gpus: 3
  resourceName: gpu.fake.gpubridge.dev.deviceclass.resource.k8s.io/devices
  durationSeconds: 600
  price: {amount: "3.10", denomination: USDC}
  workload: {image: "ghcr.io/acme/train:1", cpu: "4", memory: 16Gi}
"#;

async fn idle_and_block(client: &kube::Client) -> Result<(u32, u32), String> {
    let s = offer_status(client, "dra").await?;
    Ok((s.idle_gpus, s.largest_block))
}

#[tokio::test]
async fn dra_devices_are_offered_and_a_lease_claims_them_through_the_scheduler() {
    let Some(c) = cluster("dra").await else {
        return;
    };
    install_crds(&c.client).await;
    apply_yaml(&c.client, &nodes_yaml()).await;
    fake_driver(&c.client).await;
    let operator = Operator::start(&c, "dra");
    apply_yaml(&c.client, OFFER).await;
    operator.wait_ready().await;

    // Idle capacity from the slices: 2 nodes × 4 devices, a lease fits 4 on one node.
    eventually(
        "the DRA offer to count the slices' devices",
        30 * SECOND,
        || async {
            match idle_and_block(&c.client).await? {
                (8, 4) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let status = offer_status(&c.client, "dra").await.unwrap();
    assert_eq!(
        status.models[0].model, "NVIDIA-H200-DRA",
        "model from the devices"
    );

    apply_yaml(&c.client, LEASE).await;
    let running = wait_phase(&c.client, "e2e-dra", LeasePhase::Running, 60 * SECOND).await;
    let node = running.status.unwrap().node.unwrap();

    // The real scheduler allocated the claim: three devices of the pod's node.
    let claims: Api<ResourceClaim> = Api::namespaced(c.client.clone(), "lease-e2e-dra");
    let claim = claims.get(CLAIM_NAME).await.unwrap();
    let results = claim
        .status
        .and_then(|s| s.allocation)
        .and_then(|a| a.devices)
        .and_then(|d| d.results)
        .expect("the claim is allocated");
    assert_eq!(results.len(), 3);
    assert!(
        results.iter().all(|r| r.driver == DRIVER && r.pool == node),
        "{results:?}"
    );
    let pod = Api::<Pod>::namespaced(c.client.clone(), "lease-e2e-dra")
        .get(POD_NAME)
        .await
        .unwrap();
    let spec = pod.spec.unwrap();
    assert_eq!(
        spec.resource_claims.unwrap()[0]
            .resource_claim_name
            .as_deref(),
        Some(CLAIM_NAME)
    );
    for container in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let claims = container.resources.as_ref().and_then(|r| r.claims.as_ref());
        assert_eq!(
            claims.map(|c| c[0].name.as_str()),
            Some(CLAIM_NAME),
            "{} shares the lease's claim",
            container.name
        );
    }

    // The allocation is what the formula now subtracts: 8 − 3.
    eventually(
        "the allocated devices to leave the idle count",
        30 * SECOND,
        || async {
            match idle_and_block(&c.client).await? {
                (5, 4) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;

    delete_lease(&c.client, "e2e-dra").await;
    eventually(
        "the claim's devices to be free again",
        30 * SECOND,
        || async {
            match idle_and_block(&c.client).await? {
                (8, 4) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    Api::<GpuOffer>::all(c.client.clone())
        .delete("dra", &DeleteParams::default())
        .await
        .unwrap();
}

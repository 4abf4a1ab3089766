//! The lease pod: the GPU probe, then two native sidecars and the buyer's container, boxed in.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, NodeAffinity,
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodResourceClaim,
    PodSecurityContext, PodSpec, ResourceClaim, ResourceRequirements, SeccompProfile,
    SecretVolumeSource, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::claim::CLAIM_NAME;
use super::secret::IDENTITY_SECRET;
use super::{LeaseBox, stamped};
use crate::capacity::dra::device_class_of;
use crate::crd::PodSecurityLevel;

pub const POD_NAME: &str = "workload";
pub const WORKLOAD_CONTAINER: &str = "workload";
pub const METER_CONTAINER: &str = "meter";
pub const ATTEST_CONTAINER: &str = "attest";
pub const PROBE_CONTAINER: &str = "probe";

/// The unprivileged user sidecars (and restricted workloads) run as.
const NONROOT_UID: i64 = 65532;
/// Where the sidecar image keeps the sidecars' binary (the Dockerfile puts it there).
const SIDECAR_BINARY: &str = "/usr/local/bin/gpubridge-sidecar";
/// The meter's requests and limits.
pub(super) const METER_CPU: &str = "50m";
pub(super) const METER_MEMORY: &str = "64Mi";
/// The attest sidecar's requests and limits (cpu, memory). With DRA devices it also runs the
/// lease's re-probes on the GPUs it shares: room for a CUDA context, NVRTC's compile of the
/// kernels and the checked tiles it fetches. A size chosen, not measured: no GPU was in reach.
const ATTEST_SIZE: (&str, &str) = ("20m", "32Mi");
const REPROBING_ATTEST_SIZE: (&str, &str) = ("500m", "1Gi");

/// The attest sidecar's size for the lease.
pub(super) fn attest_size(b: &LeaseBox) -> (&'static str, &'static str) {
    match claims(b) {
        Some(_) => REPROBING_ATTEST_SIZE,
        None => ATTEST_SIZE,
    }
}

/// What the pod tells its sidecars about itself (the attest sidecar reads them).
const POD_UID_ENV: &str = "GPUBRIDGE_POD_UID";
const NODE_NAME_ENV: &str = "GPUBRIDGE_NODE_NAME";
const IDENTITY_DIR: &str = "/var/run/gpubridge/identity";
const RECEIPTS_DIR: &str = "/var/lib/gpubridge/receipts";
/// How long a lease pod stays on a node that stopped answering before it is evicted, so that a
/// lost node ends the lease promptly instead of after the default five minutes.
const NODE_LOSS_TOLERATION_SECONDS: i64 = 60;

pub fn pod(b: &LeaseBox) -> Pod {
    let (attest_cpu, attest_memory) = attest_size(b);
    let restricted = b.policy.pod_security_level == PodSecurityLevel::Restricted;
    let mut tolerations: Vec<Toleration> = b.tolerations.to_vec();
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        tolerations.push(Toleration {
            key: Some(key.to_string()),
            operator: Some("Exists".to_string()),
            effect: Some("NoExecute".to_string()),
            toleration_seconds: Some(NODE_LOSS_TOLERATION_SECONDS),
            value: None,
        });
    }
    let mut metadata = b.metadata(POD_NAME);
    metadata.annotations = Some(BTreeMap::from([(
        "kubectl.kubernetes.io/default-container".to_string(),
        WORKLOAD_CONTAINER.to_string(),
    )]));
    stamped(Pod {
        metadata,
        spec: Some(PodSpec {
            // A stranger's code gets no credentials to this cluster's API.
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            host_network: Some(false),
            host_pid: Some(false),
            host_ipc: Some(false),
            restart_policy: Some("Never".to_string()),
            // Backstop for the controller's own expiry: the kubelet kills the pod even if the
            // operator is down. The clock starts when the pod does, so scheduling time is added.
            active_deadline_seconds: Some(
                (b.spec.duration_seconds + b.scheduling_timeout_seconds) as i64,
            ),
            termination_grace_period_seconds: Some(30),
            runtime_class_name: b.policy.runtime_class_name.clone(),
            priority_class_name: b.policy.priority_class_name.clone(),
            tolerations: Some(tolerations),
            affinity: Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    // A field selector on metadata.name takes one value, so one term per node;
                    // terms are ORed.
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: b
                            .eligible_nodes
                            .iter()
                            .map(|node| NodeSelectorTerm {
                                match_fields: Some(vec![NodeSelectorRequirement {
                                    key: "metadata.name".to_string(),
                                    operator: "In".to_string(),
                                    values: Some(vec![node.clone()]),
                                }]),
                                match_expressions: None,
                            })
                            .collect(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            security_context: Some(PodSecurityContext {
                run_as_non_root: restricted.then_some(true),
                run_as_user: restricted.then_some(NONROOT_UID),
                run_as_group: restricted.then_some(NONROOT_UID),
                fs_group: Some(NONROOT_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_string(),
                    localhost_profile: None,
                }),
                ..Default::default()
            }),
            init_containers: Some(vec![
                probe(b),
                meter(b),
                sidecar(
                    b,
                    ATTEST_CONTAINER,
                    attest_cpu,
                    attest_memory,
                    vec![format!("--image={}", b.spec.workload.image)],
                ),
            ]),
            containers: vec![workload_container(b)],
            resource_claims: claims(b).map(|_| {
                vec![PodResourceClaim {
                    name: CLAIM_NAME.to_string(),
                    resource_claim_name: Some(CLAIM_NAME.to_string()),
                    resource_claim_template_name: None,
                }]
            }),
            volumes: Some(vec![
                Volume {
                    name: "identity".to_string(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(IDENTITY_SECRET.to_string()),
                        default_mode: Some(0o440),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Volume {
                    name: "receipts".to_string(),
                    empty_dir: Some(EmptyDirVolumeSource {
                        size_limit: Some(Quantity("64Mi".to_string())),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        status: None,
    })
}

/// The claim every container of a DRA lease references; none for an extended resource.
fn claims(b: &LeaseBox) -> Option<Vec<ResourceClaim>> {
    device_class_of(&b.spec.resource_name).map(|_| {
        vec![ResourceClaim {
            name: CLAIM_NAME.to_string(),
            request: None,
        }]
    })
}

/// What the lease bought: its CPU, memory and GPUs. Requests equal limits: the pod is
/// Guaranteed and the quota sees exactly what was leased.
fn leased_resources(b: &LeaseBox) -> ResourceRequirements {
    let w = &b.spec.workload;
    let mut resources = BTreeMap::from([
        ("cpu".to_string(), Quantity(w.cpu.clone())),
        ("memory".to_string(), Quantity(w.memory.clone())),
    ]);
    if device_class_of(&b.spec.resource_name).is_none() {
        resources.insert(
            b.spec.resource_name.clone(),
            Quantity(b.spec.gpus.to_string()),
        );
    }
    ResourceRequirements {
        requests: Some(resources.clone()),
        limits: Some(resources),
        claims: claims(b),
    }
}

/// The GPU probe (DESIGN §8): a plain init container and the first, so that it runs to its end
/// on the lease's GPUs before the sidecars and the workload start; the devices it is given are
/// the ones the workload gets. It takes what the lease bought, which the pod's total already
/// counts (an init container's requests are not added to the containers').
fn probe(b: &LeaseBox) -> Container {
    let mut probe = sidecar(b, PROBE_CONTAINER, "0", "0", vec![]);
    probe.restart_policy = None;
    probe.resources = Some(leased_resources(b));
    probe
}

fn workload_container(b: &LeaseBox) -> Container {
    let w = &b.spec.workload;
    let mut env: Vec<EnvVar> = w
        .env
        .iter()
        .map(|e| EnvVar {
            name: e.name.clone(),
            value: Some(e.value.clone()),
            value_from: None,
        })
        .collect();
    env.push(EnvVar {
        name: "GPUBRIDGE_LEASE_ID".to_string(),
        value: Some(b.spec.lease_id.clone()),
        value_from: None,
    });
    Container {
        name: WORKLOAD_CONTAINER.to_string(),
        image: Some(w.image.clone()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        command: (!w.command.is_empty()).then(|| w.command.clone()),
        args: (!w.args.is_empty()).then(|| w.args.clone()),
        env: Some(env),
        ports: (!w.ports.is_empty()).then(|| {
            w.ports
                .iter()
                .map(|p| ContainerPort {
                    name: p.name.clone(),
                    container_port: i32::from(p.container_port),
                    protocol: Some(format!("{:?}", p.protocol)),
                    ..Default::default()
                })
                .collect()
        }),
        resources: Some(leased_resources(b)),
        security_context: Some(confined(false)),
        ..Default::default()
    }
}

/// The meter: the only sidecar that writes receipts, so the only one with their volume.
fn meter(b: &LeaseBox) -> Container {
    let mut meter = sidecar(
        b,
        METER_CONTAINER,
        METER_CPU,
        METER_MEMORY,
        vec![
            format!("--receipts-dir={RECEIPTS_DIR}"),
            format!("--gpus={}", b.spec.gpus),
        ],
    );
    meter
        .volume_mounts
        .get_or_insert_with(Vec::new)
        .push(VolumeMount {
            name: "receipts".to_string(),
            mount_path: RECEIPTS_DIR.to_string(),
            ..Default::default()
        });
    meter
}

/// A native sidecar (an init container that restarts always) running the sidecars' binary.
fn sidecar(
    b: &LeaseBox,
    subcommand: &str,
    cpu: &str,
    memory: &str,
    extra_args: Vec<String>,
) -> Container {
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity(cpu.to_string())),
        ("memory".to_string(), Quantity(memory.to_string())),
    ]);
    Container {
        name: subcommand.to_string(),
        image: Some(b.sidecar_image.to_string()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        restart_policy: Some("Always".to_string()),
        command: Some(vec![SIDECAR_BINARY.to_string()]),
        args: Some(
            [
                subcommand.to_string(),
                format!("--lease-id={}", b.spec.lease_id),
                format!("--identity-dir={IDENTITY_DIR}"),
                format!("--collector-url={}", b.collector.url),
            ]
            .into_iter()
            .chain(extra_args)
            .collect(),
        ),
        env: Some(
            [
                field_env(POD_UID_ENV, "metadata.uid"),
                field_env(NODE_NAME_ENV, "spec.nodeName"),
            ]
            .into_iter()
            .chain(b.sidecar_env.iter().cloned())
            .collect(),
        ),
        // With DRA the sidecars share the lease's claim: NVML in them sees its GPUs, no others.
        resources: Some(ResourceRequirements {
            requests: Some(resources.clone()),
            limits: Some(resources),
            claims: claims(b),
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(NONROOT_UID),
            ..confined(true)
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "identity".to_string(),
            mount_path: IDENTITY_DIR.to_string(),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// `NAME=VALUE` of the operator's `--sidecar-env`: NAME is a C identifier (what a process can
/// read) and not a variable the pod itself gives the sidecars.
pub fn parse_sidecar_env(arg: &str) -> Result<EnvVar, String> {
    let (name, value) = arg
        .split_once('=')
        .ok_or_else(|| format!("`{arg}` is not NAME=VALUE"))?;
    let identifier = name
        .chars()
        .enumerate()
        .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
    if name.is_empty() || !identifier {
        return Err(format!(
            "`{name}` is not a variable name (letters, digits and _, not starting with a digit)"
        ));
    }
    if [POD_UID_ENV, NODE_NAME_ENV].contains(&name) {
        return Err(format!("`{name}` is set by the lease pod itself"));
    }
    Ok(EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        value_from: None,
    })
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(k8s_openapi::api::core::v1::EnvVarSource {
            field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                field_path: path.to_string(),
                api_version: None,
            }),
            ..Default::default()
        }),
    }
}

/// No privilege, no escalation, no capabilities.
fn confined(read_only_root: bool) -> SecurityContext {
    SecurityContext {
        privileged: Some(false),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(read_only_root),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            add: None,
        }),
        ..Default::default()
    }
}

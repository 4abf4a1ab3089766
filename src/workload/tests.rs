//! The builders, from YAML fixtures: targeted assertions on what keeps a lease boxed in, and
//! golden files that show any change to what is built (`UPDATE_GOLDEN=1 cargo test` rewrites).

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::*;
use crate::crd::{ComputeLeaseSpec, EgressPolicy, GpuOfferSpec, PodSecurityLevel};

fn offer() -> GpuOfferSpec {
    serde_yaml::from_str(include_str!("../../tests/fixtures/offer-spec.yaml")).unwrap()
}

fn lease() -> ComputeLeaseSpec {
    serde_yaml::from_str(include_str!("../../tests/fixtures/lease-spec.yaml")).unwrap()
}

fn owner() -> OwnerReference {
    OwnerReference {
        api_version: "gpubridge.dev/v1alpha1".into(),
        kind: "ComputeLease".into(),
        name: "l-01hzx4".into(),
        uid: "6f1c2d4e-0000-4000-8000-000000000001".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

const NODES: &[&str] = &["gpu-h100-0", "gpu-h100-1"];

fn with_box<R>(
    offer: &GpuOfferSpec,
    lease: &ComputeLeaseSpec,
    f: impl FnOnce(&LeaseBox) -> R,
) -> R {
    with_box_and_sidecar_env(offer, lease, &[], f)
}

fn with_box_and_sidecar_env<R>(
    offer: &GpuOfferSpec,
    lease: &ComputeLeaseSpec,
    sidecar_env: &[k8s_openapi::api::core::v1::EnvVar],
    f: impl FnOnce(&LeaseBox) -> R,
) -> R {
    let nodes: Vec<String> = NODES.iter().map(|s| s.to_string()).collect();
    let collector = CollectorEndpoint {
        url: "http://gpubridge-collector.gpubridge-system.svc:7400".into(),
        namespace: "gpubridge-system".into(),
        port: 7400,
    };
    let reader = LogReader {
        cluster_role: "gpubridge-lease-logs".into(),
        service_account: "gpubridge".into(),
    };
    let b = LeaseBox {
        collector: &collector,
        log_reader: Some(&reader),
        lease_name: "l-01hzx4",
        spec: lease,
        owner: owner(),
        policy: &offer.workload,
        tolerations: &offer.tolerations,
        eligible_nodes: &nodes,
        sidecar_image: "ghcr.io/gpubridge/gpubridge:0.1.0",
        sidecar_env,
        scheduling_timeout_seconds: 600,
    };
    f(&b)
}

fn identity() -> LeaseIdentity {
    LeaseIdentity {
        lease_key: vec![7; 32],
        certificate: vec![1, 2, 3],
        provider_public_key: "ProviderKey".into(),
    }
}

fn golden<T: serde::Serialize>(name: &str, object: &T) {
    let path = format!(
        "{}/tests/fixtures/golden/{name}.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let actual = serde_yaml::to_string(object).unwrap();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(std::path::Path::new(&path).parent().unwrap()).unwrap();
        std::fs::write(&path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        actual, expected,
        "{path} differs; rerun with UPDATE_GOLDEN=1 if the change is intended"
    );
}

#[test]
fn golden_objects() {
    let (o, l) = (offer(), lease());
    with_box(&o, &l, |b| {
        golden("namespace", &namespace(b));
        golden("network-policy", &network_policy(b));
        golden("resource-quota", &resource_quota(b));
        golden("limit-range", &limit_range(b));
        golden("pod", &pod(b));
        golden("log-reader-binding", &log_reader_binding(b).unwrap());
        assert!(
            claim(b).is_none(),
            "an extended-resource lease claims nothing"
        );
    });
    let dra = ComputeLeaseSpec {
        resource_name: "gpu.example.com.deviceclass.resource.k8s.io/devices".into(),
        ..l
    };
    with_box(&o, &dra, |b| {
        golden("dra-resource-claim", &claim(b).unwrap());
        golden("dra-pod", &pod(b));
    });
}

#[test]
fn a_dra_lease_shares_one_claim_between_the_workload_the_probe_and_both_sidecars() {
    let o = offer();
    let l = ComputeLeaseSpec {
        resource_name: "gpu.example.com.deviceclass.resource.k8s.io/devices".into(),
        ..lease()
    };
    with_box(&o, &l, |b| {
        let claim = claim(b).unwrap();
        assert_eq!(claim.metadata.name.as_deref(), Some(CLAIM_NAME));
        assert_eq!(claim.metadata.namespace.as_deref(), Some("lease-l-01hzx4"));
        let request = &claim
            .spec
            .as_ref()
            .unwrap()
            .devices
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()[0];
        let exactly = request.exactly.as_ref().unwrap();
        assert_eq!(exactly.device_class_name, "gpu.example.com");
        assert_eq!(exactly.count, Some(i64::from(l.gpus)));
        assert_eq!(exactly.allocation_mode.as_deref(), Some("ExactCount"));

        let spec = pod(b).spec.unwrap();
        let pod_claims = spec.resource_claims.unwrap();
        assert_eq!(pod_claims.len(), 1);
        assert_eq!(
            pod_claims[0].resource_claim_name.as_deref(),
            Some(CLAIM_NAME)
        );
        let containers: Vec<_> = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .collect();
        assert_eq!(containers.len(), 4);
        for c in containers {
            let r = c.resources.as_ref().unwrap();
            assert_eq!(r.claims.as_ref().unwrap()[0].name, CLAIM_NAME, "{}", c.name);
            assert!(
                r.limits
                    .as_ref()
                    .unwrap()
                    .keys()
                    .all(|k| k == "cpu" || k == "memory"),
                "{}: no extended resource",
                c.name
            );
        }
        let hard = resource_quota(b).spec.unwrap().hard.unwrap();
        assert_eq!(
            hard["gpu.example.com.deviceclass.resource.k8s.io/devices"].0,
            l.gpus.to_string()
        );
        assert!(
            !hard
                .keys()
                .any(|k| k.starts_with("requests.gpu.example.com"))
        );
    });
}

#[test]
fn every_object_is_owned_by_the_lease_and_labelled() {
    let (o, l) = (offer(), lease());
    with_box(&o, &l, |b| {
        let metas = [
            namespace(b).metadata,
            network_policy(b).metadata,
            resource_quota(b).metadata,
            limit_range(b).metadata,
            secret(b, &identity()).metadata,
            pod(b).metadata,
        ];
        for m in metas {
            assert_eq!(m.owner_references, Some(vec![owner()]), "{:?}", m.name);
            assert_eq!(m.labels.unwrap()[crate::crd::LEASE_LABEL], "l-01hzx4");
            if m.name.as_deref() != Some("lease-l-01hzx4") {
                assert_eq!(m.namespace.as_deref(), Some("lease-l-01hzx4"));
            }
        }
    });
}

#[test]
fn namespace_enforces_the_offers_pod_security_level() {
    let mut o = offer();
    for level in [PodSecurityLevel::Restricted, PodSecurityLevel::Baseline] {
        o.workload.pod_security_level = level;
        let ns = with_box(&o, &lease(), namespace);
        let labels = ns.metadata.labels.unwrap();
        assert_eq!(labels["pod-security.kubernetes.io/enforce"], level.as_str());
        assert_eq!(labels["pod-security.kubernetes.io/warn"], level.as_str());
    }
}

#[test]
fn pod_is_boxed_in() {
    let (o, l) = (offer(), lease());
    let p: Pod = with_box(&o, &l, pod);
    let spec = p.spec.unwrap();
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(spec.enable_service_links, Some(false));
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(spec.active_deadline_seconds, Some(3600 + 600));
    assert_eq!(spec.runtime_class_name.as_deref(), Some("gvisor"));
    assert_eq!(spec.priority_class_name.as_deref(), Some("gpubridge-lease"));
    assert!(
        spec.host_network != Some(true)
            && spec.host_pid != Some(true)
            && spec.host_ipc != Some(true)
    );
    let tolerations = spec.tolerations.unwrap();
    assert!(
        tolerations
            .iter()
            .any(|t| t.key.as_deref() == Some("nvidia.com/gpu"))
    );
    assert!(tolerations.iter().any(
        |t| t.key.as_deref() == Some("node.kubernetes.io/unreachable")
            && t.toleration_seconds == Some(60)
    ));

    let terms = spec
        .affinity
        .unwrap()
        .node_affinity
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .unwrap()
        .node_selector_terms;
    let pinned: Vec<Vec<String>> = terms
        .iter()
        .map(|t| {
            let fields = t.match_fields.as_ref().unwrap();
            assert_eq!(fields.len(), 1);
            assert_eq!(
                (fields[0].key.as_str(), fields[0].operator.as_str()),
                ("metadata.name", "In")
            );
            fields[0].values.clone().unwrap()
        })
        .collect();
    // The apiserver allows one value per metadata.name field selector: one term per node.
    assert_eq!(
        pinned,
        [
            vec!["gpu-h100-0".to_string()],
            vec!["gpu-h100-1".to_string()]
        ]
    );

    for v in spec.volumes.iter().flatten() {
        assert!(
            v.host_path.is_none() && v.persistent_volume_claim.is_none(),
            "{}",
            v.name
        );
    }

    let workload = &spec.containers[0];
    assert_eq!(spec.containers.len(), 1);
    let resources = workload.resources.as_ref().unwrap();
    assert_eq!(
        resources.requests, resources.limits,
        "Guaranteed: requests equal limits"
    );
    assert_eq!(resources.limits.as_ref().unwrap()["nvidia.com/gpu"].0, "2");
    assert!(
        workload.volume_mounts.is_none(),
        "the workload never sees the lease key"
    );
    assert!(
        workload
            .env
            .as_ref()
            .unwrap()
            .iter()
            .all(|e| e.value_from.is_none())
    );

    let mut init = spec.init_containers.unwrap();
    assert_eq!(
        init.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        [PROBE_CONTAINER, METER_CONTAINER, ATTEST_CONTAINER]
    );
    // The probe runs first and to its end, on what the lease bought: the workload's GPUs.
    let probe = init.remove(0);
    assert_eq!(probe.restart_policy, None, "a plain init container");
    assert_eq!(probe.resources, workload.resources);
    assert_eq!(probe.image, init[0].image, "the sidecars' image");
    assert_eq!(probe.args.as_ref().unwrap()[0], "probe");
    assert_eq!(
        probe.security_context.as_ref().unwrap().run_as_non_root,
        Some(true)
    );
    let sidecars = init;
    for c in sidecars.iter().chain([workload, &probe]) {
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.privileged, Some(false), "{}", c.name);
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        assert!(sc.capabilities.as_ref().unwrap().add.is_none());
    }
    for s in &sidecars {
        assert_eq!(
            s.restart_policy.as_deref(),
            Some("Always"),
            "native sidecar"
        );
        assert_eq!(
            s.image.as_deref(),
            Some("ghcr.io/gpubridge/gpubridge:0.1.0")
        );
        assert_eq!(
            s.command.as_deref(),
            Some(&["/usr/local/bin/gpubridge-sidecar".to_string()][..]),
            "{} runs the sidecars' binary, not the operator's",
            s.name
        );
        assert_eq!(
            s.args.as_ref().unwrap()[0],
            s.name,
            "runs `gpubridge-sidecar {}`",
            s.name
        );
        let r = s.resources.as_ref().unwrap();
        assert!(r.limits.as_ref().unwrap().get("nvidia.com/gpu").is_none());
        assert!(
            s.args.as_ref().unwrap().iter().any(
                |a| a == "--collector-url=http://gpubridge-collector.gpubridge-system.svc:7400"
            ),
            "{} dials the collector",
            s.name
        );
    }
    let psc = spec.security_context.unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
}

#[test]
fn the_providers_sidecar_environment_reaches_both_sidecars_and_never_the_workload() {
    let env = [parse_sidecar_env("GPUBRIDGE_GPU_SOURCE=simulated").unwrap()];
    let spec = with_box_and_sidecar_env(&offer(), &lease(), &env, pod)
        .spec
        .unwrap();
    let names = |c: &k8s_openapi::api::core::v1::Container| -> Vec<String> {
        c.env.iter().flatten().map(|e| e.name.clone()).collect()
    };
    for sidecar in spec.init_containers.as_ref().unwrap() {
        assert_eq!(
            names(sidecar),
            [
                "GPUBRIDGE_POD_UID",
                "GPUBRIDGE_NODE_NAME",
                "GPUBRIDGE_GPU_SOURCE"
            ],
            "{}",
            sidecar.name
        );
    }
    assert!(!names(&spec.containers[0]).contains(&"GPUBRIDGE_GPU_SOURCE".to_string()));
}

#[test]
fn a_sidecar_variable_is_name_equals_value_and_never_one_the_pod_sets() {
    let parsed =
        parse_sidecar_env("GPUBRIDGE_NVML_LIBRARY=/opt/nvidia/libnvidia-ml.so.1=x").unwrap();
    assert_eq!(
        (parsed.name.as_str(), parsed.value.as_deref()),
        (
            "GPUBRIDGE_NVML_LIBRARY",
            Some("/opt/nvidia/libnvidia-ml.so.1=x")
        )
    );
    assert_eq!(
        parse_sidecar_env("EMPTY=").unwrap().value.as_deref(),
        Some("")
    );
    for (arg, rule) in [
        ("NO_VALUE", "is not NAME=VALUE"),
        ("=x", "is not a variable name"),
        ("1ST=x", "is not a variable name"),
        ("A-B=x", "is not a variable name"),
        ("GPUBRIDGE_POD_UID=forged", "is set by the lease pod itself"),
        (
            "GPUBRIDGE_NODE_NAME=elsewhere",
            "is set by the lease pod itself",
        ),
    ] {
        let error = parse_sidecar_env(arg).unwrap_err();
        assert!(error.contains(rule), "{arg}: {error}");
    }
}

#[test]
fn the_image_puts_the_sidecars_binary_where_lease_pods_run_it() {
    let dockerfile = include_str!("../../Dockerfile");
    let copy = dockerfile
        .lines()
        .find(|l| l.starts_with("COPY --from=build"))
        .expect("the runtime stage copies the binaries");
    assert!(
        copy.contains("/out/gpubridge-sidecar") && copy.ends_with(" /usr/local/bin/"),
        "{copy}"
    );
}

#[test]
fn baseline_workloads_may_run_as_root_but_sidecars_never() {
    let mut o = offer();
    o.workload.pod_security_level = PodSecurityLevel::Baseline;
    let spec = with_box(&o, &lease(), pod).spec.unwrap();
    assert_eq!(spec.security_context.unwrap().run_as_non_root, None);
    for s in spec.init_containers.unwrap() {
        assert_eq!(s.security_context.unwrap().run_as_non_root, Some(true));
    }
}

#[test]
fn network_policy_admits_the_operator_to_declared_ports_and_denies_private_egress() {
    let (o, mut l) = (offer(), lease());
    let spec = with_box(&o, &l, network_policy).spec.unwrap();
    assert_eq!(
        spec.pod_selector,
        Some(Default::default()),
        "selects every pod"
    );
    assert_eq!(spec.policy_types.unwrap(), ["Ingress", "Egress"]);
    // Ingress: one rule, from the operator's pods only, to the declared TCP port only.
    let ingress = spec.ingress.unwrap();
    assert_eq!(ingress.len(), 1, "{ingress:?}");
    let from = ingress[0].from.as_ref().unwrap();
    assert_eq!(from.len(), 1);
    assert_eq!(
        from[0].namespace_selector.as_ref().unwrap().match_labels,
        Some(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_string(),
            "gpubridge-system".to_string()
        )]))
    );
    assert_eq!(
        from[0].pod_selector.as_ref().unwrap().match_labels,
        Some(
            OPERATOR_POD_LABELS
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        )
    );
    let ports = ingress[0].ports.as_ref().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].port, Some(IntOrString::Int(9100)));
    assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
    // A workload that declares no TCP port gets no ingress rule at all (a rule without ports
    // would admit every port).
    l.workload.ports[0].protocol = crate::crd::PortProtocol::UDP;
    let spec = with_box(&o, &l, network_policy).spec.unwrap();
    assert_eq!(spec.ingress, Some(vec![]), "no ingress without a TCP port");
    l.workload.ports.clear();
    let spec = with_box(&o, &l, network_policy).spec.unwrap();
    assert_eq!(
        spec.ingress,
        Some(vec![]),
        "no ingress without a declared port"
    );
    let egress = spec.egress.unwrap();
    // Each destination, as a packet to it would fare: allowed only where a rule's address block
    // holds it, outside that block's exceptions, on the rule's ports.
    for (address, port, allowed) in [
        ("203.0.113.7", 443, true),
        ("8.8.8.8", 53, true),
        ("169.254.169.254", 80, false),
        ("10.1.2.3", 443, false),
        ("172.20.0.1", 443, false),
        ("192.168.1.1", 443, false),
        ("100.64.0.1", 443, false),
        ("127.0.0.1", 443, false),
        ("169.254.20.10", 53, true),
        ("169.254.20.10", 80, false),
        ("2001:4860:4860::8888", 443, true),
        ("64:ff9b::808:808", 443, true),
        ("64:ff9b::a9fe:a9fe", 80, false),
        ("64:ff9b::a01:203", 443, false),
        ("::ffff:169.254.169.254", 80, false),
        ("::ffff:8.8.8.8", 443, false),
        ("64:ff9b:1::a01:203", 443, false),
        ("2002:a01:203::1", 443, false),
        ("2001::1", 443, false),
        ("2001:db8::1", 443, false),
        ("fd00:ec2::254", 80, false),
        ("fe80::1", 443, false),
        ("::1", 443, false),
        ("ff02::1", 443, false),
    ] {
        assert_eq!(
            reaches(&egress, address.parse().unwrap(), port),
            allowed,
            "{address} port {port}"
        );
    }
    // In the cluster: DNS on port 53, and the operator's collector on its port, nothing else.
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let in_cluster: Vec<_> = egress.iter().filter(|r| r.ports.is_some()).collect();
    assert_eq!(in_cluster.len(), 2);
    assert_eq!(in_cluster[0], &collector_rule(&egress));
    assert!(
        in_cluster[1]
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .all(|p| p.port == Some(IntOrString::Int(53)))
    );

    let mut closed = offer();
    closed.workload.egress = EgressPolicy::None;
    let spec = with_box(&closed, &l, network_policy).spec.unwrap();
    let egress = spec.egress.unwrap();
    assert_eq!(egress.len(), 1, "only the collector: {egress:?}");
    collector_rule(&egress);
}

/// Whether an egress rule's address blocks let a packet to `address`:`port` out. Pod and
/// namespace selectors name pods, not addresses: they are left to the apiserver-level tests.
fn reaches(
    egress: &[k8s_openapi::api::networking::v1::NetworkPolicyEgressRule],
    address: std::net::IpAddr,
    port: i32,
) -> bool {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    fn contains(cidr: &str, address: std::net::IpAddr) -> bool {
        let (net, prefix) = cidr.split_once('/').unwrap();
        let prefix: u32 = prefix.parse().unwrap();
        match (net.parse::<std::net::IpAddr>().unwrap(), address) {
            (std::net::IpAddr::V4(n), std::net::IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (std::net::IpAddr::V6(n), std::net::IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
    egress.iter().any(|rule| {
        let port_ok = rule
            .ports
            .as_ref()
            .is_none_or(|ports| ports.iter().any(|p| p.port == Some(IntOrString::Int(port))));
        port_ok
            && rule
                .to
                .iter()
                .flatten()
                .filter_map(|peer| peer.ip_block.as_ref())
                .any(|block| {
                    contains(&block.cidr, address)
                        && !block.except.iter().flatten().any(|e| contains(e, address))
                })
    })
}

/// The egress rule to the collector: the operator's pods in its namespace, TCP 7400 only.
fn collector_rule(
    egress: &[k8s_openapi::api::networking::v1::NetworkPolicyEgressRule],
) -> k8s_openapi::api::networking::v1::NetworkPolicyEgressRule {
    let rule = egress[0].clone();
    let peer = &rule.to.as_ref().unwrap()[0];
    assert_eq!(
        peer.namespace_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["kubernetes.io/metadata.name"],
        "gpubridge-system"
    );
    let pods = peer
        .pod_selector
        .as_ref()
        .unwrap()
        .match_labels
        .as_ref()
        .unwrap();
    assert_eq!(pods["app.kubernetes.io/component"], "operator");
    assert!(peer.ip_block.is_none());
    let ports = rule.ports.as_ref().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(
        ports[0].port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(7400))
    );
    assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
    rule
}

#[test]
fn quota_holds_one_pod_and_the_leased_gpus() {
    let (o, l) = (offer(), lease());
    let hard = with_box(&o, &l, resource_quota).spec.unwrap().hard.unwrap();
    assert_eq!(hard["pods"].0, "1");
    assert_eq!(hard["requests.nvidia.com/gpu"].0, "2");
    assert_eq!(hard["services"].0, "0");
    assert_eq!(hard["persistentvolumeclaims"].0, "0");
    let limits = with_box(&o, &l, limit_range).spec.unwrap().limits;
    assert_eq!(limits[0].max.as_ref().unwrap()["memory"].0, "64Gi");
}

#[test]
fn a_lease_smaller_than_its_sidecars_gets_a_limit_range_the_api_and_its_pod_pass() {
    use crate::capacity::quantity::compare;
    use std::cmp::Ordering::Greater;
    let o = offer();
    let mut small = lease();
    (small.workload.cpu, small.workload.memory) = ("10m".into(), "16Mi".into());
    // The meter is the largest sidecar of a lease of whole GPUs; with DRA devices the attest
    // sidecar, which runs the re-probes, is.
    let dra = ComputeLeaseSpec {
        resource_name: "gpu.example.com.deviceclass.resource.k8s.io/devices".into(),
        ..small.clone()
    };
    for (l, largest) in [(small, ("50m", "64Mi")), (dra, ("500m", "1Gi"))] {
        let item = with_box(&o, &l, limit_range).spec.unwrap().limits.remove(0);
        let max = item.max.unwrap();
        assert_eq!((max["cpu"].0.as_str(), max["memory"].0.as_str()), largest);
        for defaults in [item.default.unwrap(), item.default_request.unwrap()] {
            for (resource, value) in &defaults {
                assert_ne!(
                    compare(&value.0, &max[resource].0),
                    Some(Greater),
                    "{resource}"
                );
            }
        }
        let spec = with_box(&o, &l, pod).spec.unwrap();
        for c in spec.init_containers.unwrap().iter().chain(&spec.containers) {
            for (resource, value) in c.resources.as_ref().unwrap().limits.as_ref().unwrap() {
                if let Some(most) = max.get(resource) {
                    assert_ne!(
                        compare(&value.0, &most.0),
                        Some(Greater),
                        "{}: {resource}",
                        c.name
                    );
                }
            }
        }
    }
}

#[test]
fn secret_is_immutable_and_holds_only_the_lease_identity() {
    let (o, l) = (offer(), lease());
    let s = with_box(&o, &l, |b| secret(b, &identity()));
    assert_eq!(s.immutable, Some(true));
    let data = s.data.unwrap();
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["lease.crt", "lease.key", "provider.pub"]
    );
    assert!(
        s.metadata.annotations.is_none(),
        "no digest of key material is published"
    );
}

#[test]
fn spec_hash_changes_with_the_desired_state() {
    let (o, l) = (offer(), lease());
    let a = with_box(&o, &l, resource_quota);
    let mut l2 = lease();
    l2.gpus = 4;
    let b = with_box(&o, &l2, resource_quota);
    assert!(spec_hash_of(&a).is_some());
    assert_ne!(spec_hash_of(&a), spec_hash_of(&b));
    assert_eq!(
        spec_hash_of(&a),
        spec_hash_of(&with_box(&o, &l, resource_quota))
    );
}

#[test]
fn the_log_reader_is_bound_in_the_lease_namespace_only_and_only_when_configured() {
    let (o, l) = (offer(), lease());
    with_box(&o, &l, |b| {
        let binding = log_reader_binding(b).unwrap();
        assert_eq!(
            binding.metadata.namespace.as_deref(),
            Some("lease-l-01hzx4")
        );
        assert_eq!(binding.metadata.owner_references, Some(vec![owner()]));
        assert_eq!(binding.role_ref.kind, "ClusterRole");
        assert_eq!(binding.role_ref.name, "gpubridge-lease-logs");
        let subjects = binding.subjects.unwrap();
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(subjects[0].name, "gpubridge");
        assert_eq!(subjects[0].namespace.as_deref(), Some("gpubridge-system"));
        let without = LeaseBox {
            log_reader: None,
            ..b.clone()
        };
        assert!(log_reader_binding(&without).is_none());
    });
}

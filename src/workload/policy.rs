//! The box around a lease: default-deny networking, a quota, and per-container limits.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, ResourceQuota, ResourceQuotaSpec,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{LeaseBox, OPERATOR_POD_LABELS, stamped};
use crate::capacity::dra::device_class_of;
use crate::crd::EgressPolicy;

/// IPv4 ranges lease pods never reach: private (RFC 1918), carrier-grade NAT, loopback,
/// link-local (cloud metadata at 169.254.169.254), "this network", multicast and reserved.
pub const PRIVATE_IPV4_RANGES: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// IPv6 ranges lease pods never reach: loopback, unique-local, link-local and multicast
/// (which also holds the fd00:ec2::254 style metadata endpoints).
pub const PRIVATE_IPV6_RANGES: &[&str] = &["::1/128", "fc00::/7", "fe80::/10", "ff00::/8"];

/// Deny all ingress; egress to the operator's collector, and to the public internet and cluster
/// DNS or nothing else at all.
pub fn network_policy(b: &LeaseBox) -> NetworkPolicy {
    let collector = NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_string(),
                    b.collector.namespace.clone(),
                )])),
                ..Default::default()
            }),
            pod_selector: Some(LabelSelector {
                match_labels: Some(
                    OPERATOR_POD_LABELS
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ports: Some(vec![NetworkPolicyPort {
            port: Some(IntOrString::Int(i32::from(b.collector.port))),
            protocol: Some("TCP".to_string()),
            end_port: None,
        }]),
    };
    let mut egress = match b.policy.egress {
        EgressPolicy::None => vec![],
        EgressPolicy::Internet => {
            let internet = |cidr: &str, except: &[&str]| NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: cidr.to_string(),
                    except: Some(except.iter().map(|s| s.to_string()).collect()),
                }),
                ..Default::default()
            };
            let dns_port = |protocol: &str| NetworkPolicyPort {
                port: Some(IntOrString::Int(53)),
                protocol: Some(protocol.to_string()),
                end_port: None,
            };
            vec![
                NetworkPolicyEgressRule {
                    to: Some(vec![NetworkPolicyPeer {
                        namespace_selector: Some(LabelSelector {
                            match_labels: Some(BTreeMap::from([(
                                "kubernetes.io/metadata.name".to_string(),
                                "kube-system".to_string(),
                            )])),
                            ..Default::default()
                        }),
                        pod_selector: Some(LabelSelector {
                            match_labels: Some(BTreeMap::from([(
                                "k8s-app".to_string(),
                                "kube-dns".to_string(),
                            )])),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ports: Some(vec![dns_port("UDP"), dns_port("TCP")]),
                },
                NetworkPolicyEgressRule {
                    to: Some(vec![
                        internet("0.0.0.0/0", PRIVATE_IPV4_RANGES),
                        internet("::/0", PRIVATE_IPV6_RANGES),
                    ]),
                    ports: None,
                },
            ]
        }
    };
    egress.insert(0, collector);
    stamped(NetworkPolicy {
        metadata: b.metadata("lease-box"),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".to_string(), "Egress".to_string()]),
            ingress: Some(vec![]),
            egress: Some(egress),
        }),
    })
}

/// One pod, the leased GPUs and no Services, volumes claims or load balancers.
pub fn resource_quota(b: &LeaseBox) -> ResourceQuota {
    let q = |s: &str| Quantity(s.to_string());
    let hard = BTreeMap::from([
        ("pods".to_string(), q("1")),
        (
            // DRA device counts are quota'd under their own name; extended resources as requests.
            match device_class_of(&b.spec.resource_name) {
                Some(_) => b.spec.resource_name.clone(),
                None => format!("requests.{}", b.spec.resource_name),
            },
            q(&b.spec.gpus.to_string()),
        ),
        ("services".to_string(), q("0")),
        ("services.loadbalancers".to_string(), q("0")),
        ("services.nodeports".to_string(), q("0")),
        ("persistentvolumeclaims".to_string(), q("0")),
        ("count/deployments.apps".to_string(), q("0")),
        ("count/jobs.batch".to_string(), q("0")),
    ]);
    stamped(ResourceQuota {
        metadata: b.metadata("lease-quota"),
        spec: Some(ResourceQuotaSpec {
            hard: Some(hard),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// No container above what the lease bought; small defaults for any container that names none.
pub fn limit_range(b: &LeaseBox) -> LimitRange {
    let q = |s: &str| Quantity(s.to_string());
    let cpu_memory = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_string(), q(cpu)),
            ("memory".to_string(), q(memory)),
        ])
    };
    stamped(LimitRange {
        metadata: b.metadata("lease-limits"),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".to_string(),
                max: Some(cpu_memory(&b.spec.workload.cpu, &b.spec.workload.memory)),
                default: Some(cpu_memory("100m", "128Mi")),
                default_request: Some(cpu_memory("100m", "128Mi")),
                ..Default::default()
            }],
        }),
    })
}

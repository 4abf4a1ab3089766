//! The box around a lease: default-deny networking, a quota, and per-container limits.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, ResourceQuota, ResourceQuotaSpec,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::pod::{METER_CPU, METER_MEMORY, attest_size};
use super::{LeaseBox, OPERATOR_POD_LABELS, stamped};
use crate::capacity::dra::device_class_of;
use crate::capacity::quantity;
use crate::crd::{EgressPolicy, PortProtocol};

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

/// NodeLocal DNSCache's address: lease pods may reach it, for DNS only, where a cluster runs it
/// (it is link-local, which is otherwise closed).
pub const NODE_LOCAL_DNS: &str = "169.254.20.10/32";

/// The IPv6 internet lease pods may reach, as (allowed range, ranges excepted): global unicast
/// less the ranges inside it that lead elsewhere (IETF assignments with Teredo, documentation,
/// 6to4, which embed IPv4 addresses), and the well-known NAT64 prefix less every private IPv4
/// range embedded in it. Everything else — loopback, unique-local, link-local, multicast,
/// IPv4-mapped (::ffff:0:0/96, which Kubernetes cannot except from ::/0) and local-use NAT64 —
/// is closed by not being allowed at all.
pub fn ipv6_internet() -> Vec<(String, Vec<String>)> {
    let nat64 = PRIVATE_IPV4_RANGES
        .iter()
        .map(|range| {
            let (address, prefix) = range.split_once('/').expect("a CIDR");
            let v4: std::net::Ipv4Addr = address.parse().expect("an IPv4 address");
            let prefix: u8 = prefix.parse().expect("a prefix length");
            let embedded =
                std::net::Ipv6Addr::from((0x0064_ff9b_u128 << 96) | u128::from(u32::from(v4)));
            format!("{embedded}/{}", 96 + prefix)
        })
        .collect();
    vec![
        (
            "2000::/3".to_string(),
            vec![
                "2001::/23".into(),
                "2001:db8::/32".into(),
                "2002::/16".into(),
            ],
        ),
        ("64:ff9b::/96".to_string(), nat64),
    ]
}

/// Ingress only from the operator's pods (the buyer's `connect`, DESIGN §9) and only to the
/// workload's declared TCP ports; egress to the operator's collector, and to the public internet
/// and cluster DNS (the kube-dns pods, NodeLocal DNSCache) or nothing else at all.
pub fn network_policy(b: &LeaseBox) -> NetworkPolicy {
    let operator_pods = NetworkPolicyPeer {
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
    };
    let tcp = |port: u16| NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(port))),
        protocol: Some("TCP".to_string()),
        end_port: None,
    };
    let declared: Vec<NetworkPolicyPort> = b
        .spec
        .workload
        .ports
        .iter()
        .filter(|p| p.protocol == PortProtocol::TCP)
        .map(|p| tcp(p.container_port))
        .collect();
    // No declared port, no rule: an ingress rule without ports would admit every port.
    let ingress = if declared.is_empty() {
        vec![]
    } else {
        vec![NetworkPolicyIngressRule {
            from: Some(vec![operator_pods.clone()]),
            ports: Some(declared),
        }]
    };
    let collector = NetworkPolicyEgressRule {
        to: Some(vec![operator_pods]),
        ports: Some(vec![tcp(b.collector.port)]),
    };
    let mut egress = match b.policy.egress {
        EgressPolicy::None => vec![],
        EgressPolicy::Internet => {
            let internet = |cidr: &str, except: Vec<String>| NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: cidr.to_string(),
                    except: Some(except),
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
                    to: Some(vec![
                        NetworkPolicyPeer {
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
                        },
                        NetworkPolicyPeer {
                            ip_block: Some(IPBlock {
                                cidr: NODE_LOCAL_DNS.to_string(),
                                except: None,
                            }),
                            ..Default::default()
                        },
                    ]),
                    ports: Some(vec![dns_port("UDP"), dns_port("TCP")]),
                },
                NetworkPolicyEgressRule {
                    to: Some(
                        std::iter::once(internet(
                            "0.0.0.0/0",
                            PRIVATE_IPV4_RANGES.iter().map(|r| r.to_string()).collect(),
                        ))
                        .chain(
                            ipv6_internet()
                                .into_iter()
                                .map(|(cidr, except)| internet(&cidr, except)),
                        )
                        .collect(),
                    ),
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
            ingress: Some(ingress),
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

/// The larger (`Ordering::Greater`) or smaller (`Ordering::Less`) of two quantities; `a` when
/// they are equal or cannot be compared.
fn pick(a: &str, b: &str, want: Ordering) -> String {
    match quantity::compare(b, a) {
        Some(order) if order == want => b.to_string(),
        _ => a.to_string(),
    }
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
    // Every container fits under the max, the sidecars too, and the API refuses a default
    // above the max.
    let (attest_cpu, attest_memory) = attest_size(b);
    let larger =
        |x: &str, y: &str, z: &str| pick(&pick(x, y, Ordering::Greater), z, Ordering::Greater);
    let max_cpu = larger(&b.spec.workload.cpu, METER_CPU, attest_cpu);
    let max_memory = larger(&b.spec.workload.memory, METER_MEMORY, attest_memory);
    let defaults = cpu_memory(
        &pick("100m", &max_cpu, Ordering::Less),
        &pick("128Mi", &max_memory, Ordering::Less),
    );
    stamped(LimitRange {
        metadata: b.metadata("lease-limits"),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".to_string(),
                max: Some(cpu_memory(&max_cpu, &max_memory)),
                default: Some(defaults.clone()),
                default_request: Some(defaults),
                ..Default::default()
            }],
        }),
    })
}

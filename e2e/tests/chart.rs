//! The chart on the real control plane: lint and rendering, the strict values schema, the
//! operator's least-privilege RBAC, the admission policy that keeps lease pods in their box,
//! and helm upgrade and uninstall keeping the CRDs and running leases. Every other e2e test runs
//! the operator with the chart ServiceAccount's identity (support::Cluster::operator_kubeconfig).

use gpubridge::crd::LeasePhase;
use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use crate::support::{
    Cluster, NetworkNode, Operator, RELEASE, RELEASE_NAMESPACE, apply_yaml, cluster, repo,
};
use crate::{SECOND, delete_lease, lease_yaml, wait_phase};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn the_chart_lints_renders_the_committed_install_manifest_and_refuses_bad_values() {
    let Some(c) = cluster("chart-render").await else {
        return;
    };
    let lint = c.helm(&["lint", "--strict", "charts/gpubridge"]);
    assert!(
        lint.status.success(),
        "helm lint: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        stderr(&lint)
    );

    let rendered = c
        .command("bash")
        .arg("charts/render-install.sh")
        .output()
        .unwrap();
    assert!(rendered.status.success(), "{}", stderr(&rendered));
    let committed = std::fs::read_to_string(repo().join("manifests/install.yaml")).unwrap();
    assert!(
        String::from_utf8(rendered.stdout).unwrap() == committed,
        "manifests/install.yaml drifted from the chart: run `make manifests`"
    );

    // The ServiceMonitor only where its API is served; the disruption budget only with a spare.
    let kinds = |extra: &[&str]| {
        let mut args = vec![
            "template",
            "gpubridge",
            "charts/gpubridge",
            "--namespace",
            "gpubridge-system",
            "--set",
            "networkPolicy.apiServer.cidrs={10.96.0.1/32}",
        ];
        args.extend_from_slice(extra);
        let out = c.helm(&args);
        assert!(
            out.status.success(),
            "helm template {extra:?}: {}",
            stderr(&out)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let defaults = kinds(&[]);
    assert!(!defaults.contains("kind: ServiceMonitor"));
    assert!(defaults.contains("kind: PodDisruptionBudget"));
    assert!(defaults.contains("kind: ValidatingAdmissionPolicy"));
    assert!(
        kinds(&["--api-versions", "monitoring.coreos.com/v1/ServiceMonitor"])
            .contains("kind: ServiceMonitor")
    );
    assert!(!kinds(&["--set", "replicas=1"]).contains("kind: PodDisruptionBudget"));
    // A network of validators: every gateway, and the genesis that pins them, mounted read-only.
    let validators = kinds(&[
        "--set",
        "network.url=https://v0:7300\\,https://v1:7300",
        "--set",
        "networkPolicy.network.cidrs={10.0.0.0/24}",
        "--set",
        "network.genesisConfigMap=network-genesis",
        "--set",
        "network.ocspResponder=http://ocsp.ndis.nvidia.com/",
        "--set",
        "networkPolicy.ocspResponder.cidrs={192.0.2.1/32}",
    ]);
    for expected in [
        "- --network-url=https://v0:7300,https://v1:7300",
        "- --ocsp-responder=http://ocsp.ndis.nvidia.com/",
        "cidr: 192.0.2.1/32\n    ports:\n    - port: 80",
        "- --network-genesis=/etc/gpubridge/network-genesis/genesis.json",
        "name: network-genesis\n          mountPath: /etc/gpubridge/network-genesis\n          readOnly: true",
        "configMap:\n          name: network-genesis",
    ] {
        assert!(validators.contains(expected), "{expected}: {validators}");
    }

    // The operator's NetworkPolicy names every destination it lets the operator reach: the API
    // server as the cluster's EndpointSlice gives it (looked up by an install), the network's
    // gateways as given; a render that cannot know them fails, naming the value to give.
    let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
        Api::namespaced(c.client.clone(), "default")
            .get("kubernetes")
            .await
            .unwrap();
    let api_server =
        &slice.endpoints.expect("the API server has endpoints")[0].addresses[0].clone();
    // `template --dry-run=server` looks up as an install does, and creates nothing.
    let installed = c.helm(&[
        "template",
        "gpubridge",
        "charts/gpubridge",
        "--namespace",
        "gpubridge-system",
        "--dry-run=server",
        "--set",
        "network.url=https://127.0.0.1:7300",
        "--set",
        "networkPolicy.network.cidrs={127.0.0.1/32}",
    ]);
    assert!(installed.status.success(), "{}", stderr(&installed));
    let manifest = String::from_utf8(installed.stdout).unwrap();
    let policy: Value = manifest
        .split("\n---")
        .filter_map(|doc| serde_yaml::from_str::<Value>(doc).ok())
        .find(|doc| doc["kind"] == "NetworkPolicy")
        .expect("the operator's NetworkPolicy");
    let egress = policy["spec"]["egress"].as_array().unwrap();
    assert!(
        egress
            .iter()
            .all(|rule| rule["to"].as_array().is_some_and(|to| !to.is_empty())),
        "every egress rule names its destinations: {egress:#?}"
    );
    let cidrs: Vec<&str> = egress
        .iter()
        .flat_map(|rule| rule["to"].as_array().unwrap())
        .filter_map(|peer| peer["ipBlock"]["cidr"].as_str())
        .collect();
    assert!(
        cidrs.contains(&format!("{api_server}/32").as_str()),
        "{cidrs:?}"
    );
    assert!(
        cidrs.contains(&"127.0.0.1/32") && cidrs.contains(&"169.254.20.10/32"),
        "{cidrs:?}"
    );
    for (set, says) in [
        (
            vec![],
            "networkPolicy.apiServer.cidrs: give the Kubernetes API server's addresses",
        ),
        (
            vec![
                "--set",
                "networkPolicy.apiServer.cidrs={10.96.0.1/32}",
                "--set",
                "network.url=https://n:7300",
            ],
            "networkPolicy.network.cidrs: give the addresses of network.url's gateways",
        ),
        (
            vec![
                "--set",
                "networkPolicy.apiServer.cidrs={10.96.0.1/32}",
                "--set",
                "network.key=4vJ9JU1bJJE96FWSJKvHsmmFADCg4gpZQff4P3bkLKi",
                "--set",
                "network.genesisConfigMap=network-genesis",
            ],
            "network.key and network.genesisConfigMap: set one",
        ),
        (
            vec![
                "--set",
                "networkPolicy.apiServer.cidrs={10.96.0.1/32}",
                "--set",
                "network.ocspResponder=http://ocsp.ndis.nvidia.com/",
            ],
            "networkPolicy.ocspResponder.cidrs: give the addresses of network.ocspResponder",
        ),
    ] {
        let mut args = vec!["template", "gpubridge", "charts/gpubridge"];
        args.extend(set.iter());
        let out = c.helm(&args);
        assert!(!out.status.success(), "{set:?} rendered");
        assert!(stderr(&out).contains(says), "{set:?}: {}", stderr(&out));
    }

    // A misspelt key, a value out of range, a malformed network key and a sidecar variable the
    // pod sets itself each fail the install, naming the field; nothing is installed.
    for (set, field) in [
        ("replcias=2", "additional properties 'replcias' not allowed"),
        ("replicas=-1", "at '/replicas': minimum"),
        ("network.key=not-base58-0OIl", "at '/network/key'"),
        ("operator.logFormat=xml", "at '/operator/logFormat'"),
        (
            "sidecarEnv[0].name=GPUBRIDGE_POD_UID,sidecarEnv[0].value=forged",
            "at '/sidecarEnv/0/name'",
        ),
    ] {
        let out = c.helm(&[
            "install",
            "gpubridge-typo",
            "charts/gpubridge",
            "--namespace",
            "gpubridge-typo",
            "--dry-run=server",
            "--set",
            set,
        ]);
        assert!(!out.status.success(), "--set {set} was accepted");
        let why = stderr(&out);
        assert!(
            why.contains("values don't meet the specifications of the schema")
                && why.contains(field),
            "--set {set}: {why}"
        );
    }
}

/// Checkov's findings on `files` (Kubernetes manifests and Dockerfiles, relative to the
/// repository): the failed and the skipped checks, each as "CHECK resource", sorted.
fn checkov(files: &[&std::path::Path]) -> (Vec<String>, Vec<String>) {
    let mut command = std::process::Command::new(crate::support::bin_dir().join("checkov"));
    command.current_dir(repo()).args([
        "--framework",
        "kubernetes",
        "dockerfile",
        "--skip-download",
        "--output",
        "json",
    ]);
    for file in files {
        command.arg("--file").arg(file);
    }
    let out = command.output().expect("checkov runs");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("checkov's report: {e}: {}", stderr(&out)));
    let reports = match report {
        Value::Array(reports) => reports,
        one => vec![one],
    };
    let findings = |kind: &str| -> Vec<String> {
        let mut found: Vec<String> = reports
            .iter()
            .flat_map(|r| r["results"][kind].as_array().cloned().unwrap_or_default())
            .map(|c| {
                format!(
                    "{} {}",
                    c["check_id"].as_str().unwrap(),
                    c["resource"].as_str().unwrap()
                )
            })
            .collect();
        found.sort();
        found
    };
    let parsed = reports.iter().all(|r| {
        r["summary"]["parsing_errors"] == 0 && r["summary"]["resource_count"].as_u64() > Some(0)
    });
    assert!(
        parsed,
        "checkov could not parse {files:?}: {report_summary:?}",
        report_summary = reports.iter().map(|r| &r["summary"]).collect::<Vec<_>>()
    );
    (findings("failed_checks"), findings("skipped_checks"))
}

#[tokio::test]
async fn the_manifests_and_the_dockerfile_pass_checkov_with_each_deliberate_choice_annotated() {
    let Some(c) = cluster("chart-checkov").await else {
        return;
    };
    let (failed, skipped) = checkov(&[
        std::path::Path::new("manifests/install.yaml"),
        std::path::Path::new("Dockerfile"),
    ]);
    assert_eq!(failed, Vec::<String>::new(), "checkov's findings");
    // Exactly the deliberate choices, each annotated with its reason where it is made.
    assert_eq!(
        skipped,
        [
            "CKV_DOCKER_2 Dockerfile.",
            "CKV_K8S_11 Deployment.gpubridge-system.gpubridge",
            "CKV_K8S_15 Deployment.gpubridge-system.gpubridge",
            "CKV_K8S_21 Role.default.gpubridge-operator-events",
            "CKV_K8S_21 RoleBinding.default.gpubridge-operator-events",
            "CKV_K8S_38 Deployment.gpubridge-system.gpubridge",
            "CKV_K8S_43 Deployment.gpubridge-system.gpubridge",
        ]
    );
    // The scan can fail: a writable root filesystem is found; a pinned digest needs no excuse.
    let rendered = c.helm(&[
        "template",
        "gpubridge",
        "charts/gpubridge",
        "--namespace",
        "gpubridge-system",
        "--skip-tests",
        "--set",
        "networkPolicy.apiServer.cidrs={10.0.0.1/32}",
        "--set",
        "securityContext.readOnlyRootFilesystem=false",
        "--set",
        "image.digest=sha256:0000000000000000000000000000000000000000000000000000000000000000",
    ]);
    assert!(
        rendered.status.success(),
        "helm template: {}",
        stderr(&rendered)
    );
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(file.path(), &rendered.stdout).unwrap();
    let (failed, skipped) = checkov(&[file.path()]);
    assert_eq!(failed, ["CKV_K8S_22 Deployment.gpubridge-system.gpubridge"]);
    assert!(
        !skipped.iter().any(|s| s.starts_with("CKV_K8S_43 ")),
        "{skipped:?}"
    );
}

/// A pod that passes every rule of the admission policy, in `namespace`.
fn boxed_pod(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            // Admitted, never scheduled: no GPU is taken from the other tests.
            "nodeSelector": {"gpubridge.dev/e2e": "nowhere"},
            "automountServiceAccountToken": false,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "workload",
                "image": "ghcr.io/acme/render:2",
                "resources": {
                    "requests": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"},
                    "limits": {"memory": "1Gi", "nvidia.com/gpu": "1"}
                },
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}
            }]
        }
    })
}

/// Creating `pod` as `client` is refused by the lease-pods policy with a message containing
/// `rule`.
async fn refused(client: &Client, pod: &Value, rule: &str) {
    let namespace = pod["metadata"]["namespace"].as_str().unwrap();
    let pod: Pod = serde_json::from_value(pod.clone()).unwrap();
    let err = Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &pod)
        .await
        .expect_err(rule);
    let message = err.to_string();
    assert!(
        message.contains("gpubridge-lease-pods") && message.contains(rule),
        "expected a refusal by gpubridge-lease-pods saying {rule:?}, got: {message}"
    );
}

fn namespace(name: &str, labels: Value) -> Namespace {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})).unwrap()
}

#[tokio::test]
async fn the_apiserver_keeps_lease_pods_in_their_box_whoever_asks() {
    let Some(c) = cluster("admission-policy").await else {
        return;
    };
    let admin = c.client.clone();
    let operator = c.operator_client().await;
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    for ns in ["lease-e2e-box", "not-a-lease"] {
        let _ = namespaces.delete(ns, &DeleteParams::default()).await;
    }
    crate::support::eventually("old test namespaces to be gone", 60 * SECOND, || async {
        for ns in ["lease-e2e-box", "not-a-lease"] {
            if namespaces
                .get_opt(ns)
                .await
                .map_err(|e| e.to_string())?
                .is_some()
            {
                return Err(format!("{ns} left"));
            }
        }
        Ok(())
    })
    .await;

    // RBAC: the operator reads no Secret outside its own namespace, not even to check one exists.
    let err = Api::<Secret>::namespaced(operator.clone(), "kube-system")
        .list(&Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err}"
    );

    // Namespaces: the operator creates only lease namespaces, and touches no other.
    let op_namespaces: Api<Namespace> = Api::all(operator.clone());
    let err = op_namespaces
        .create(&PostParams::default(), &namespace("not-a-lease", json!({})))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("gpubridge-lease-namespaces"),
        "{err}"
    );
    namespaces
        .create(&PostParams::default(), &namespace("not-a-lease", json!({})))
        .await
        .unwrap();
    let err = op_namespaces
        .delete("not-a-lease", &DeleteParams::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("changes or deletes only lease namespaces"),
        "{err}"
    );
    // A lease namespace without Pod Security enforcement is not one the operator may create...
    let err = op_namespaces
        .create(
            &PostParams::default(),
            &namespace("lease-e2e-box", json!({"gpubridge.dev/lease": "e2e-box"})),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("pod-security.kubernetes.io/enforce"),
        "{err}"
    );
    // ...so an administrator makes one without it: what is refused below is the policy's doing,
    // not Pod Security's.
    namespaces
        .create(
            &PostParams::default(),
            &namespace("lease-e2e-box", json!({"gpubridge.dev/lease": "e2e-box"})),
        )
        .await
        .unwrap();

    // Pods: only the operator creates them in a lease namespace, and only inside the box.
    let ns = "lease-e2e-box";
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(admin.clone(), ns);
    crate::support::eventually(
        "the namespace's default ServiceAccount",
        30 * SECOND,
        || async {
            match accounts.get_opt("default").await {
                Ok(Some(_)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    refused(
        &admin,
        &boxed_pod(ns, "by-admin"),
        "only the gpubridge operator",
    )
    .await;
    refused(
        &operator,
        &boxed_pod("default", "outside"),
        "only in lease namespaces",
    )
    .await;
    let mut privileged = boxed_pod(ns, "privileged");
    privileged["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
    refused(&operator, &privileged, "no privileged container").await;
    let mut host = boxed_pod(ns, "host-network");
    host["spec"]["hostNetwork"] = json!(true);
    refused(&operator, &host, "no host namespace").await;
    let mut host_path = boxed_pod(ns, "host-path");
    host_path["spec"]["volumes"] = json!([{"name": "root", "hostPath": {"path": "/"}}]);
    refused(&operator, &host_path, "no hostPath").await;
    let mut caps = boxed_pod(ns, "net-admin");
    caps["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = json!(["NET_ADMIN"]);
    refused(&operator, &caps, "add no capability").await;
    let mut token = boxed_pod(ns, "token");
    token["spec"]["automountServiceAccountToken"] = Value::Null;
    refused(&operator, &token, "no service-account token").await;
    let mut projected = boxed_pod(ns, "projected-token");
    projected["spec"]["volumes"] = json!([{"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}]);
    refused(&operator, &projected, "project no service-account token").await;
    let mut memory = boxed_pod(ns, "burstable-memory");
    memory["spec"]["containers"][0]["resources"]["requests"]["memory"] = json!("512Mi");
    refused(&operator, &memory, "requests exactly its memory limit").await;
    let mut sidecar = boxed_pod(ns, "sidecar-without-limit");
    sidecar["spec"]["initContainers"] = json!([{
        "name": "meter", "image": "ghcr.io/gpubridge/gpubridge:e2e", "restartPolicy": "Always",
        "resources": {"requests": {"memory": "64Mi"}}
    }]);
    refused(&operator, &sidecar, "requests exactly its memory limit").await;

    // What passes every rule is admitted; a way into it afterwards is not.
    let good: Pod = serde_json::from_value(boxed_pod(ns, "boxed")).unwrap();
    let pods: Api<Pod> = Api::namespaced(operator.clone(), ns);
    pods.create(&PostParams::default(), &good).await.unwrap();
    let debug = json!({"spec": {"ephemeralContainers": [{"name": "debug", "image": "busybox", "stdin": true}]}});
    let err = Api::<Pod>::namespaced(admin.clone(), ns)
        .patch_subresource(
            "ephemeralcontainers",
            "boxed",
            &PatchParams::default(),
            &Patch::Strategic(&debug),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no ephemeral containers"), "{err}");

    // Logs: the operator binds the lease log reader to itself in a lease namespace, and nothing
    // else anywhere; it then reads logs there and nowhere else.
    let reader = |subject: &str, role: &str| -> RoleBinding {
        serde_json::from_value(json!({
            "metadata": {"name": "gpubridge-log-reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": subject, "namespace": "gpubridge-system"}],
        }))
        .unwrap()
    };
    let bindings = |ns: &str| Api::<RoleBinding>::namespaced(operator.clone(), ns);
    let err = bindings("not-a-lease")
        .create(
            &PostParams::default(),
            &reader("gpubridge", "gpubridge-lease-logs"),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("binds roles only in lease namespaces"),
        "{err}"
    );
    let err = bindings(ns)
        .create(
            &PostParams::default(),
            &reader("default", "gpubridge-lease-logs"),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("to its own service account"),
        "{err}"
    );
    // Another role: refused by RBAC (no `bind` on it) before the policy is asked.
    let err = bindings(ns)
        .create(
            &PostParams::default(),
            &reader("gpubridge", "cluster-admin"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err}"
    );
    let may_read_logs = |ns: &'static str| {
        let operator = operator.clone();
        async move {
            let review: SelfSubjectAccessReview = serde_json::from_value(json!({
                "spec": {"resourceAttributes": {
                    "namespace": ns, "verb": "get", "resource": "pods", "subresource": "log"
                }}
            }))
            .unwrap();
            Api::<SelfSubjectAccessReview>::all(operator)
                .create(&PostParams::default(), &review)
                .await
                .unwrap()
                .status
                .is_some_and(|s| s.allowed)
        }
    };
    assert!(
        !may_read_logs("lease-e2e-box").await,
        "no logs before the binding"
    );
    bindings(ns)
        .create(
            &PostParams::default(),
            &reader("gpubridge", "gpubridge-lease-logs"),
        )
        .await
        .unwrap();
    // The apiserver's RBAC authorizer reads bindings from its informer cache, so a new
    // binding takes effect moments after it is created, not at once.
    crate::support::eventually(
        "the binding to allow logs in the lease namespace",
        30 * SECOND,
        || async {
            may_read_logs("lease-e2e-box")
                .await
                .then_some(())
                .ok_or_else(|| "not allowed yet".to_string())
        },
    )
    .await;
    assert!(!may_read_logs("not-a-lease").await, "no logs elsewhere");
    assert!(!may_read_logs("kube-system").await, "no logs elsewhere");

    for ns in ["lease-e2e-box", "not-a-lease"] {
        namespaces
            .delete(ns, &DeleteParams::default())
            .await
            .unwrap();
    }
}

/// Runs the shell block of the README's install step `step` ("**N. …**") as written, with
/// `values` for the `NAME=<…>` lines that stand for what a reader fills in; returns what it
/// printed, and fails the test when any command fails.
fn readme_step(c: &Cluster, step: u32, values: &[(&str, &str)]) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = &readme[readme
        .find(&format!("**{step}. "))
        .unwrap_or_else(|| panic!("README has install step {step}"))..];
    let body = &section[section.find("```sh\n").expect("a sh block") + 6..];
    let block = &body[..body.find("```").unwrap()];
    // Lines such as `LEASE=<lease id>` stand for what the reader fills in: `values` does here.
    let placeholder = |line: &str| {
        line.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty() && name.chars().all(|ch| ch.is_ascii_uppercase() || ch == '_')
        })
    };
    let script: String = block
        .lines()
        .filter(|line| !placeholder(line))
        .map(|line| format!("{line}\n"))
        .collect();
    let mut command = c.command("bash");
    command.args(["-euo", "pipefail", "-c", &script]);
    for (name, value) in values {
        command.env(name, value);
    }
    let out = command.output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "README step {step}:\n{script}\nprinted:\n{printed}\n{}",
        stderr(&out)
    );
    printed
}

async fn crd_annotations(client: &Client) -> Vec<Option<String>> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut found = Vec::new();
    for name in ["gpuoffers.gpubridge.dev", "computeleases.gpubridge.dev"] {
        let crd = crds.get(name).await.unwrap();
        found.push(crd.annotations().get("helm.sh/resource-policy").cloned());
    }
    found
}

#[tokio::test]
async fn helm_upgrade_and_uninstall_keep_the_crds_and_running_leases() {
    let Some(c) = cluster("chart-lifecycle").await else {
        return;
    };
    let operator = crate::operator_with_workstation_offer(&c, "chart-lifecycle").await;
    apply_yaml(&c.client, &lease_yaml("chart-lease", 600)).await;
    wait_phase(&c.client, "chart-lease", LeasePhase::Running, 60 * SECOND).await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "lease-chart-lease");
    let uid = pods.get("workload").await.unwrap().metadata.uid;

    // An upgrade that takes the CRDs over (they were applied without helm) and changes the
    // operator's settings: the CRDs carry the keep policy, the lease runs on, its pod untouched.
    c.install_release(&[
        "--set",
        "crds.install=true",
        "--set",
        "operator.concurrency=4",
        "--take-ownership",
    ]);
    assert_eq!(
        crd_annotations(&c.client).await,
        vec![Some("keep".into()); 2]
    );
    wait_phase(&c.client, "chart-lease", LeasePhase::Running, 10 * SECOND).await;
    assert_eq!(pods.get("workload").await.unwrap().metadata.uid, uid);

    // Uninstall: the operator goes (as its Deployment would), its RBAC with it; the CRDs, the
    // lease and its pod stay.
    drop(operator);
    let out = c.helm(&[
        "uninstall",
        RELEASE,
        "--namespace",
        RELEASE_NAMESPACE,
        "--wait",
    ]);
    assert!(out.status.success(), "helm uninstall: {}", stderr(&out));
    let roles: Api<ClusterRole> = Api::all(c.client.clone());
    assert!(
        roles.get_opt("gpubridge-operator").await.unwrap().is_none(),
        "the release is gone"
    );
    assert_eq!(
        crd_annotations(&c.client).await,
        vec![Some("keep".into()); 2]
    );
    let lease = crate::lease(&c.client, "chart-lease").await.unwrap();
    assert_eq!(lease.phase(), LeasePhase::Running);
    assert_eq!(pods.get("workload").await.unwrap().metadata.uid, uid);

    // Installed again as the README says (its defaults: two replicas, kwok "runs" their pods),
    // then set back to the suite's values; the operator picks the lease up where it was.
    let network = NetworkNode::start("chart-readme");
    let installed = readme_step(
        &c,
        1,
        &[
            ("NETWORK_URL", network.url.as_str()),
            ("NETWORK_KEY", network.key.as_str()),
            ("NETWORK_CIDRS", "127.0.0.1/32"),
        ],
    );
    assert!(installed.contains("STATUS: deployed"), "{installed}");
    c.install_release(&[]);
    let operator = Operator::start(&c, "chart-lifecycle");
    operator.wait_ready().await;
    wait_phase(&c.client, "chart-lease", LeasePhase::Running, 30 * SECOND).await;
    assert_eq!(pods.get("workload").await.unwrap().metadata.uid, uid);

    // The README's other steps, as written, on this lease.
    let offers = readme_step(&c, 2, &[]);
    assert!(
        offers.contains("h100-public") && offers.contains("rtx-workstation"),
        "{offers}"
    );
    let watched = readme_step(&c, 3, &[("LEASE", "chart-lease")]);
    assert!(watched.contains("Running gpu-4090-0"), "{watched}");
    assert!(watched.contains("workload"), "{watched}");
    readme_step(&c, 5, &[("LEASE", "chart-lease")]);
    Api::<gpubridge::crd::GpuOffer>::all(c.client.clone())
        .delete("h100-public", &DeleteParams::default())
        .await
        .unwrap();
    delete_lease(&c.client, "chart-lease").await;
    Api::<gpubridge::crd::GpuOffer>::all(c.client.clone())
        .delete("rtx-workstation", &DeleteParams::default())
        .await
        .unwrap();
}

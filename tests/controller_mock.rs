//! The reconcilers against a mocked Kubernetes API (the tower-test pattern of kube-rs'
//! controller-rs): every request a reconcile makes is checked, in order, against a script.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use gpubridge::admission::{NodeBlock, Reservations};
use gpubridge::capacity::{Inventory, NodeFacts};
use gpubridge::crd::{ComputeLease, GpuOffer, LeasePhase, TerminationReason};
use gpubridge::identity::generate_key;
use gpubridge::operator::controller::backoff::Backoff;
use gpubridge::operator::controller::boxes::BoxCache;
use gpubridge::operator::controller::{
    self, Context, Error, LEASE_CONTROLLER, Settings, lease, offer,
};
use gpubridge::operator::metrics::Metrics;
use gpubridge::operator::reservations::ReservationRecord;
use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::client::Body;
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::watcher;
use kube::{Client, Resource};
use serde_json::{Value, json};

/// One expected request and the answer to it.
struct Step {
    method: Method,
    /// The request path (query string excluded) must end with this.
    path: String,
    reply: Reply,
}

enum Reply {
    /// 200 with the request body sent back, as the apiserver returns the written object.
    Echo,
    Json(Value),
    Error(u16, &'static str),
}

fn step(method: Method, path: &str, reply: Reply) -> Step {
    Step {
        method,
        path: path.to_string(),
        reply,
    }
}

/// What the script saw: every request's method, path and JSON body.
type Seen = Arc<RwLock<Vec<(Method, String, Value)>>>;

fn mock(script: Vec<Step>) -> (Client, Seen, tokio::task::JoinHandle<()>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let server = tokio::spawn(async move {
        for expected in script {
            let (request, send) = handle
                .next_request()
                .await
                .expect("the reconcile made the expected request");
            let method = request.method().clone();
            let path = request.uri().path().to_string();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            assert_eq!(
                (&method, path.ends_with(&expected.path)),
                (&expected.method, true),
                "request {method} {path}, expected {} …{}",
                expected.method,
                expected.path
            );
            record.write().unwrap().push((method, path, body.clone()));
            let response = match expected.reply {
                Reply::Echo => Response::builder()
                    .status(200)
                    .body(Body::from(serde_json::to_vec(&body).unwrap())),
                Reply::Json(v) => Response::builder()
                    .status(200)
                    .body(Body::from(serde_json::to_vec(&v).unwrap())),
                Reply::Error(code, reason) => Response::builder().status(code).body(Body::from(
                    serde_json::to_vec(&json!({
                        "kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": reason, "message": reason, "code": code
                    }))
                    .unwrap(),
                )),
            };
            send.send_response(response.unwrap());
        }
    });
    (Client::new(service, "default"), seen, server)
}

/// Waits for the script to be played out, and fails on any request beyond it.
async fn finish(server: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the script was played out")
        .expect("every request matched the script");
}

fn fixture<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
    serde_yaml::from_str(yaml).unwrap()
}

fn offer_object() -> GpuOffer {
    let mut o = GpuOffer::new(
        "h100-public",
        fixture(include_str!("fixtures/offer-spec.yaml")),
    );
    o.metadata.uid = Some("offer-uid".into());
    o.metadata.generation = Some(1);
    o.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2027-01-01T00:00:00Z".parse().unwrap(),
    ));
    o
}

fn lease_object(finalized: bool) -> ComputeLease {
    let mut l = ComputeLease::new(
        "l-01hzx4",
        fixture(include_str!("fixtures/lease-spec.yaml")),
    );
    l.metadata.uid = Some("lease-uid".into());
    l.metadata.resource_version = Some("100".into());
    l.metadata.generation = Some(1);
    if finalized {
        l.metadata.finalizers = Some(vec![lease::FINALIZER.to_string()]);
    }
    l
}

fn gpu_node(name: &str) -> NodeFacts {
    let node: Node = fixture(&format!(
        r#"
metadata: {{name: {name}, labels: {{gpubridge.dev/pool: public, nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}}}}
status:
  allocatable: {{nvidia.com/gpu: "8"}}
  conditions: [{{type: Ready, status: "True"}}]
"#
    ));
    NodeFacts::from_node(&node)
}

fn context(client: Client, offers: Vec<GpuOffer>) -> Arc<Context> {
    context_watching(client, offers, &[])
}

/// A context whose box cache has watched `objects` (paths and bodies of the lease's namespace,
/// NetworkPolicy, ResourceQuota and LimitRange).
fn context_watching(
    client: Client,
    offers: Vec<GpuOffer>,
    objects: &[(String, Value)],
) -> Arc<Context> {
    let (boxes, mut writers) = BoxCache::new();
    for (path, object) in objects {
        let metadata: ObjectMeta = serde_json::from_value(object["metadata"].clone()).unwrap();
        match path.as_str() {
            NS => writers
                .namespaces
                .apply_watcher_event(&watcher::Event::Apply(PartialObjectMeta {
                    metadata,
                    ..Default::default()
                })),
            NETPOL => writers
                .network_policies
                .apply_watcher_event(&watcher::Event::Apply(PartialObjectMeta {
                    metadata,
                    ..Default::default()
                })),
            QUOTA => {
                writers
                    .quotas
                    .apply_watcher_event(&watcher::Event::Apply(PartialObjectMeta {
                        metadata,
                        ..Default::default()
                    }))
            }
            LIMITS => writers
                .limit_ranges
                .apply_watcher_event(&watcher::Event::Apply(PartialObjectMeta {
                    metadata,
                    ..Default::default()
                })),
            _ => {}
        }
    }
    let (reader, mut writer) = reflector::store::<GpuOffer>();
    for o in offers {
        writer.apply_watcher_event(&watcher::Event::Apply(o));
    }
    let mut inventory = Inventory::default();
    inventory.upsert_node(gpu_node("gpu-h100-0"));
    inventory.upsert_node(gpu_node("gpu-h100-1"));
    Arc::new(Context {
        client: client.clone(),
        inventory: Arc::new(RwLock::new(inventory)),
        offers: reader,
        boxes,
        settings: Settings {
            sidecar_image: "ghcr.io/gpubridge/gpubridge:test".into(),
            sidecar_env: Vec::new(),
            scheduling_timeout: Duration::from_secs(600),
            offer_resync: Duration::from_secs(300),
            reports_to_network: false,
            final_receipt_grace: Duration::from_secs(120),
            collector: collector(),
            log_reader: None,
        },
        metrics: Metrics::new(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "gpubridge-test".into(),
                instance: None,
            },
        ),
        backoff: Arc::new(Backoff::new(
            Duration::from_secs(1),
            Duration::from_secs(60),
        )),
        reservations: ReservationRecord::new(client, "gpubridge-system"),
        box_gate: Default::default(),
        provider_key: generate_key(),
    })
}

const LEASE: &str = "/apis/gpubridge.dev/v1alpha1/computeleases/l-01hzx4";
const NS: &str = "/api/v1/namespaces/lease-l-01hzx4";
const POD: &str = "/api/v1/namespaces/lease-l-01hzx4/pods/workload";
const NETPOL: &str =
    "/apis/networking.k8s.io/v1/namespaces/lease-l-01hzx4/networkpolicies/lease-box";
const QUOTA: &str = "/api/v1/namespaces/lease-l-01hzx4/resourcequotas/lease-quota";
const LIMITS: &str = "/api/v1/namespaces/lease-l-01hzx4/limitranges/lease-limits";

fn not_found() -> Reply {
    Reply::Error(404, "NotFound")
}

/// The lease's status written (the reply is the lease as the API returns it).
fn status_write() -> Step {
    step(
        Method::PATCH,
        &format!("{LEASE}/status"),
        Reply::Json(serde_json::to_value(lease_object(true)).unwrap()),
    )
}

/// A new lease's first reconcile up to its pod: no pod yet, the namespace and its policies
/// applied, the identity secret created; then the pod's creation answered with `pod`, and
/// `rest`.
fn box_created_then(pod: Reply, rest: Vec<Step>) -> Vec<Step> {
    let mut script = vec![
        step(Method::GET, POD, not_found()),
        step(Method::PATCH, NS, Reply::Echo),
        step(Method::PATCH, NETPOL, Reply::Echo),
        step(Method::PATCH, QUOTA, Reply::Echo),
        step(Method::PATCH, LIMITS, Reply::Echo),
        step(
            Method::POST,
            "/api/v1/namespaces/lease-l-01hzx4/secrets",
            Reply::Echo,
        ),
        step(Method::POST, "/api/v1/namespaces/lease-l-01hzx4/pods", pod),
    ];
    script.extend(rest);
    script
}

/// The offer's status written with server-side apply.
fn offer_status_written() -> Step {
    step(
        Method::PATCH,
        "/apis/gpubridge.dev/v1alpha1/gpuoffers/h100-public/status",
        Reply::Json(serde_json::to_value(offer_object()).unwrap()),
    )
}

/// A Kubernetes Event recorded for the lease or the offer.
fn event_recorded() -> Step {
    step(
        Method::POST,
        "/events",
        Reply::Json(
            json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "eventTime": null}),
        ),
    )
}

#[tokio::test]
async fn first_reconcile_adds_the_finalizer() {
    let (client, seen, server) = mock(vec![step(
        Method::PATCH,
        LEASE,
        Reply::Json(serde_json::to_value(lease_object(true)).unwrap()),
    )]);
    let ctx = context(client, vec![offer_object()]);
    lease::reconcile(Arc::new(lease_object(false)), ctx)
        .await
        .unwrap();
    finish(server).await;
    let body = &seen.read().unwrap()[0].2;
    assert!(body.to_string().contains(lease::FINALIZER), "{body}");
}

#[tokio::test]
async fn new_lease_creates_its_box_in_order_then_writes_status() {
    let (client, seen, server) = mock(box_created_then(
        Reply::Echo,
        vec![status_write(), event_recorded()],
    ));
    let ctx = context(client, vec![offer_object()]);
    let action = lease::reconcile(Arc::new(lease_object(true)), ctx)
        .await
        .unwrap();
    finish(server).await;
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(600))
    );

    let seen = seen.read().unwrap();
    assert!(
        !seen
            .iter()
            .any(|(m, p, _)| m == Method::GET && p.contains("/secrets")),
        "secrets are created, never read"
    );
    assert!(
        !seen.iter().any(|(m, p, _)| m == Method::GET && p != POD),
        "the box's policies are compared with the watched copies, never read"
    );
    let pod = &seen[6].2;
    assert_eq!(pod["spec"]["automountServiceAccountToken"], json!(false));
    let terms = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    assert_eq!(terms[0]["matchFields"][0]["values"], json!(["gpu-h100-0"]));
    assert_eq!(terms[1]["matchFields"][0]["values"], json!(["gpu-h100-1"]));
    let secret = &seen[5].2;
    assert_eq!(secret["immutable"], json!(true));
    let status = &seen[7].2;
    assert_eq!(status["status"]["phase"], json!("Scheduling"));
    assert_eq!(status["status"]["namespace"], json!("lease-l-01hzx4"));
    assert_eq!(
        status["metadata"]["resourceVersion"],
        json!("100"),
        "written over the version it was decided from"
    );
    assert_eq!(status["status"]["conditions"][0]["type"], json!("Ready"));
}

/// The admission policy (or RBAC, or a missing PriorityClass) refuses the lease pod: the lease
/// ends at once as the provider's fault, with a warning Event, instead of retrying until its
/// scheduling deadline while the buyer sees it leased.
#[tokio::test]
async fn a_refused_lease_pod_fails_the_lease_at_once_with_an_event() {
    let (client, seen, server) = mock(box_created_then(
        Reply::Error(
            403,
            "only the gpubridge operator creates pods in lease namespaces",
        ),
        vec![status_write(), event_recorded()],
    ));
    let ctx = context(client, vec![offer_object()]);
    let action = lease::reconcile(Arc::new(lease_object(true)), ctx.clone())
        .await
        .unwrap();
    finish(server).await;
    // Intake refuses leases now, saying why, instead of accepting what the box cannot hold.
    let gate = ctx
        .box_gate
        .lock()
        .unwrap()
        .admits(jiff::Timestamp::now().as_millisecond());
    assert!(
        gate.as_ref()
            .unwrap_err()
            .contains("refused the last lease pod (only the gpubridge operator"),
        "{gate:?}"
    );
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    let seen = seen.read().unwrap();
    let status = &seen[7].2["status"];
    assert_eq!(status["phase"], json!("Failed"));
    assert_eq!(status["termination"]["reason"], json!("BoxRejected"));
    assert_eq!(status["termination"]["fault"], json!("Provider"));
    assert!(
        status["termination"]["message"]
            .as_str()
            .unwrap()
            .contains("only the gpubridge operator"),
        "{status}"
    );
    let event = &seen[8].2;
    assert_eq!(event["type"], json!("Warning"), "{event}");
    assert_eq!(event["reason"], json!("Failed"), "{event}");
}

/// The lease as the first reconcile left it, and the objects it created, as the API returns them.
fn created_state() -> (ComputeLease, Vec<(String, Value)>) {
    let mut lease = lease_object(true);
    lease.status = Some(gpubridge::crd::ComputeLeaseStatus {
        phase: LeasePhase::Scheduling,
        namespace: Some("lease-l-01hzx4".into()),
        pod: Some("workload".into()),
        conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: "Scheduling".into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::now(),
            ),
        }],
        ..Default::default()
    });
    let offer = offer_object();
    let owner = lease.controller_owner_ref(&()).unwrap();
    let nodes = vec!["gpu-h100-0".to_string(), "gpu-h100-1".to_string()];
    let collector = collector();
    let b = gpubridge::workload::LeaseBox {
        collector: &collector,
        log_reader: None,
        lease_name: "l-01hzx4",
        spec: &lease.spec,
        owner,
        policy: &offer.spec.workload,
        tolerations: &offer.spec.tolerations,
        eligible_nodes: &nodes,
        sidecar_image: "ghcr.io/gpubridge/gpubridge:test",
        sidecar_env: &[],
        scheduling_timeout_seconds: 600,
    };
    let mut pod = serde_json::to_value(gpubridge::workload::pod(&b)).unwrap();
    pod["metadata"]["creationTimestamp"] = json!(jiff::Timestamp::now().to_string());
    pod["status"] = json!({"phase": "Pending"});
    let objects = vec![
        (POD.to_string(), pod),
        (
            NS.to_string(),
            serde_json::to_value(gpubridge::workload::namespace(&b)).unwrap(),
        ),
        (
            NETPOL.to_string(),
            serde_json::to_value(gpubridge::workload::network_policy(&b)).unwrap(),
        ),
        (
            QUOTA.to_string(),
            serde_json::to_value(gpubridge::workload::resource_quota(&b)).unwrap(),
        ),
        (
            LIMITS.to_string(),
            serde_json::to_value(gpubridge::workload::limit_range(&b)).unwrap(),
        ),
    ];
    (lease, objects)
}

#[tokio::test]
async fn second_reconcile_of_the_same_state_writes_nothing() {
    let (lease, objects) = created_state();
    // One read, of the pod; the policies are as the watch last showed them.
    let (client, seen, server) = mock(vec![step(
        Method::GET,
        POD,
        Reply::Json(objects[0].1.clone()),
    )]);
    let ctx = context_watching(client, vec![offer_object()], &objects);
    lease::reconcile(Arc::new(lease), ctx).await.unwrap();
    finish(server).await;
    assert_eq!(seen.read().unwrap().len(), 1, "only the pod is read");
}

#[tokio::test]
async fn a_changed_or_deleted_policy_is_put_back() {
    let (lease, mut objects) = created_state();
    objects[2].1["metadata"]["annotations"]["gpubridge.dev/spec-hash"] = json!("edited-by-someone");
    // The quota was deleted: the watch no longer shows it.
    let deleted = objects.remove(3);
    let (client, _seen, server) = mock(vec![
        step(Method::GET, POD, Reply::Json(objects[0].1.clone())),
        step(Method::PATCH, NETPOL, Reply::Echo),
        step(Method::PATCH, &deleted.0, Reply::Echo),
    ]);
    lease::reconcile(
        Arc::new(lease),
        context_watching(client, vec![offer_object()], &objects),
    )
    .await
    .unwrap();
    finish(server).await;
}

#[tokio::test]
async fn a_status_conflict_is_retried_on_a_fresh_read() {
    let mut lease = lease_object(true);
    lease.status = Some(gpubridge::crd::ComputeLeaseStatus {
        phase: LeasePhase::Running,
        started_at: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2020-01-01T00:00:00Z".parse().unwrap(),
        )),
        ..Default::default()
    });
    let (_, objects) = created_state();
    let mut running_pod = objects[0].1.clone();
    running_pod["status"] = json!({"phase": "Running"});
    let mut fresh = lease.clone();
    fresh.metadata.resource_version = Some("101".into());
    let (client, seen, server) = mock(vec![
        // A first look finds no pod (another replica was recreating it, say): its decision, the
        // pod lost, is written over a stale version and refused.
        step(Method::GET, POD, not_found()),
        step(
            Method::PATCH,
            &format!("{LEASE}/status"),
            Reply::Error(409, "Conflict"),
        ),
        step(
            Method::GET,
            LEASE,
            Reply::Json(serde_json::to_value(&fresh).unwrap()),
        ),
        // The retry looks at the pod again instead of deciding from the first look.
        step(Method::GET, POD, Reply::Json(running_pod)),
        step(
            Method::PATCH,
            &format!("{LEASE}/status"),
            Reply::Json(serde_json::to_value(&fresh).unwrap()),
        ),
        event_recorded(),
        step(
            Method::DELETE,
            POD,
            Reply::Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})),
        ),
    ]);
    lease::reconcile(Arc::new(lease), context(client, vec![offer_object()]))
        .await
        .unwrap();
    finish(server).await;
    let seen = seen.read().unwrap();
    assert_eq!(
        seen[1].2["status"]["phase"],
        json!("Failed"),
        "the stale look"
    );
    assert_eq!(
        seen[4].2["metadata"]["resourceVersion"],
        json!("101"),
        "the retry writes over the fresh version"
    );
    assert_eq!(
        seen[4].2["status"]["phase"],
        json!("Expired"),
        "decided from the pod as it is now, not as it was"
    );
}

#[tokio::test]
async fn a_lease_outside_its_offers_terms_fails_with_a_reason_and_creates_nothing() {
    let mut lease = lease_object(true);
    lease.spec.workload.image = "docker.io/evil/miner:1".into();
    let (client, seen, server) = mock(vec![
        step(Method::GET, POD, not_found()),
        status_write(),
        event_recorded(),
    ]);
    let action = lease::reconcile(Arc::new(lease), context(client, vec![offer_object()]))
        .await
        .unwrap();
    finish(server).await;
    assert_eq!(
        action,
        kube::runtime::controller::Action::await_change(),
        "no retry storm"
    );
    let status = &seen.read().unwrap()[1].2["status"];
    assert_eq!(status["phase"], json!("Failed"));
    assert_eq!(
        status["termination"]["reason"],
        json!(TerminationReason::TermsViolated.as_str())
    );
    assert_eq!(status["termination"]["fault"], json!("Network"));
    assert!(
        status["termination"]["message"]
            .as_str()
            .unwrap()
            .contains("spec.workload.image")
    );
}

#[tokio::test]
async fn deleting_a_live_lease_ends_it_stops_the_pod_and_waits() {
    let (mut lease, objects) = created_state();
    lease.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::now(),
    ));
    let (client, seen, server) = mock(vec![
        status_write(),
        event_recorded(),
        step(Method::GET, POD, Reply::Json(objects[0].1.clone())),
        step(
            Method::DELETE,
            POD,
            Reply::Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})),
        ),
    ]);
    let err = lease::reconcile(Arc::new(lease), context(client, vec![offer_object()]))
        .await
        .unwrap_err();
    finish(server).await;
    assert!(
        err.waiting_for().is_some(),
        "the finalizer stays until the pod is gone: {err}"
    );
    let status = &seen.read().unwrap()[0].2["status"];
    assert_eq!(status["phase"], json!("Terminated"));
    assert_eq!(status["termination"]["reason"], json!("DeletedByProvider"));
}

#[tokio::test]
async fn once_the_pod_is_gone_cleanup_removes_the_namespace_and_the_finalizer() {
    let (mut lease, _) = created_state();
    lease.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::now(),
    ));
    let status = lease.status.as_mut().unwrap();
    status.phase = LeasePhase::Terminated;
    // The lease's reservation is still on record: it goes before the lease does.
    let mut record = Reservations::default();
    record
        .reserve("l-01hzx4", "h100-public", &one_node(8), 1, |_| false, 0)
        .unwrap();
    let (client, seen, server) = mock(vec![
        step(Method::GET, POD, not_found()),
        step(
            Method::GET,
            RECORD,
            Reply::Json(record_object("3", &record)),
        ),
        step(Method::PUT, RECORD, Reply::Echo),
        step(
            Method::DELETE,
            NS,
            Reply::Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})),
        ),
        step(
            Method::PATCH,
            LEASE,
            Reply::Json(serde_json::to_value(lease_object(false)).unwrap()),
        ),
    ]);
    lease::reconcile(Arc::new(lease), context(client, vec![offer_object()]))
        .await
        .unwrap();
    finish(server).await;
    let released = seen.read().unwrap()[2].2["data"]["reservations.json"].clone();
    assert_eq!(
        released,
        json!(r#"{"pending":[]}"#),
        "the reservation is gone"
    );
    let patch = &seen.read().unwrap()[4].2;
    assert!(
        patch.to_string().contains("remove"),
        "finalizer removed: {patch}"
    );
}

#[tokio::test]
async fn offer_status_is_written_once_and_not_rewritten() {
    let (client, seen, server) = mock(vec![offer_status_written(), event_recorded()]);
    let ctx = context(client, vec![offer_object()]);
    offer::reconcile(Arc::new(offer_object()), ctx.clone())
        .await
        .unwrap();
    finish(server).await;
    let written = seen.read().unwrap()[0].2.clone();
    let status = &written["status"];
    assert_eq!(status["idleGpus"], json!(16));
    assert_eq!(
        status["advertisedGpus"],
        json!(14),
        "16 idle minus 2 reserved"
    );
    assert_eq!(status["largestBlock"], json!(8));
    assert_eq!(status["model"], json!("NVIDIA-H100-80GB-HBM3"));
    assert!(
        status.get("offerId").is_none(),
        "fields of the network session are left alone"
    );
    assert_eq!(status["state"], json!("NotPublished"));
    assert_eq!(status["price"], json!("2.4 USDC"));
    let event = seen.read().unwrap()[1].2.clone();
    assert_eq!(event["reason"], json!("Created"), "{event}");

    // The offer as the API now returns it: reconciling it again writes nothing.
    let mut offer = offer_object();
    offer.status = Some(serde_json::from_value(status.clone()).unwrap());
    let (client, seen, server) = mock(vec![]);
    let ctx = Arc::new(Context {
        client,
        ..Arc::try_unwrap(ctx).ok().expect("sole owner")
    });
    offer::reconcile(Arc::new(offer), ctx).await.unwrap();
    finish(server).await;
    assert!(seen.read().unwrap().is_empty());
}

#[tokio::test]
async fn an_offer_with_a_bad_selector_gets_a_condition_not_an_error() {
    let mut bad = offer_object();
    bad.spec.node_selector.match_expressions = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
            key: "pool".into(),
            operator: "Near".into(),
            values: None,
        },
    ]);
    let (client, seen, server) = mock(vec![
        offer_status_written(),
        event_recorded(),
        event_recorded(),
    ]);
    let result = offer::reconcile(Arc::new(bad.clone()), context(client, vec![bad])).await;
    finish(server).await;
    assert!(
        result.is_ok(),
        "a permanent spec error is reported, not retried: {result:?}"
    );
    let conditions = seen.read().unwrap()[0].2["status"]["conditions"].clone();
    let ready = conditions
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], json!("False"));
    assert_eq!(ready["reason"], json!("Invalid"));
    let warning = &seen.read().unwrap()[2].2;
    assert_eq!(
        (&warning["type"], &warning["reason"]),
        (&json!("Warning"), &json!("InvalidSpec")),
        "{warning}"
    );
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("spec.nodeSelector")
    );
}

#[tokio::test]
async fn api_failures_back_off_per_object() {
    let (client, _seen, server) = mock(vec![step(
        Method::GET,
        POD,
        Reply::Error(500, "InternalError"),
    )]);
    let ctx = context(client, vec![offer_object()]);
    let err = lease::reconcile(Arc::new(lease_object(true)), ctx.clone())
        .await
        .unwrap_err();
    finish(server).await;
    assert!(matches!(&err, Error::Finalizer(_)));
    assert!(err.waiting_for().is_none());
    assert_eq!(err.metric_label(), "kube");
    // What the controller's error policy waits: growing per failure of this object, counted.
    let delay = |name: &str| controller::retry_delay(LEASE_CONTROLLER, name, &err, &ctx);
    let first = delay("l-01hzx4");
    let second = delay("l-01hzx4");
    let third = delay("l-01hzx4");
    assert!(first <= Duration::from_secs(2), "{first:?}");
    assert!(second >= Duration::from_secs(2) && third >= Duration::from_secs(4));
    assert!(
        delay("another") <= Duration::from_secs(2),
        "another object starts over"
    );
    let failures = ctx
        .metrics
        .reconcile_errors
        .with_label_values(&[LEASE_CONTROLLER, "kube"])
        .get();
    assert_eq!(failures, 4);
}

fn collector() -> gpubridge::workload::CollectorEndpoint {
    gpubridge::workload::CollectorEndpoint {
        url: "http://gpubridge-collector.gpubridge-system.svc:7400".into(),
        namespace: "gpubridge-system".into(),
        port: 7400,
    }
}

const RECORD: &str = "/api/v1/namespaces/gpubridge-system/configmaps/gpubridge-reservations";

fn record_object(resource_version: &str, record: &Reservations) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": "gpubridge-reservations", "namespace": "gpubridge-system",
            "resourceVersion": resource_version
        },
        "data": {"reservations.json": serde_json::to_string(record).unwrap()}
    })
}

fn one_node(gpus: u32) -> Vec<NodeBlock> {
    vec![NodeBlock {
        node: "n0".into(),
        gpus,
    }]
}

/// Another replica wrote the record between this one's read and write: the write carries the
/// version it decided from, fails, and the decision is made again against the newer record, in
/// which the other replica's promise leaves too little.
#[tokio::test]
async fn a_reservation_decided_on_a_stale_record_is_decided_again() {
    let mut theirs = Reservations::default();
    theirs
        .reserve("their-lease", "o", &one_node(8), 6, |_| false, 0)
        .unwrap();
    let (client, seen, server) = mock(vec![
        step(
            Method::GET,
            RECORD,
            Reply::Json(record_object("1", &Reservations::default())),
        ),
        step(Method::PUT, RECORD, Reply::Error(409, "Conflict")),
        step(
            Method::GET,
            RECORD,
            Reply::Json(record_object("2", &theirs)),
        ),
    ]);
    let record = ReservationRecord::new(client, "gpubridge-system");
    let mut decisions = 0;
    let answer = record
        .update(|r| {
            decisions += 1;
            r.reserve("our-lease", "o", &one_node(8), 4, |_| false, 0)
        })
        .await
        .unwrap();
    finish(server).await;
    assert_eq!(decisions, 2, "decided again after the conflict");
    let short = answer.unwrap_err();
    assert_eq!((short.largest_block, short.pending), (2, 6), "{short}");
    let seen = seen.read().unwrap();
    let put = &seen[1].2;
    assert_eq!(
        put["metadata"]["resourceVersion"], "1",
        "the write carried its version"
    );
    assert!(
        put["data"]["reservations.json"]
            .as_str()
            .unwrap()
            .contains("our-lease")
    );
    // Nothing changed the second time, so nothing more was written.
    assert_eq!(seen.len(), 3);
}

/// The first reservation creates the record; a second replica creating it at the same moment
/// loses with 409 and decides against what the first wrote.
#[tokio::test]
async fn the_first_reservation_creates_the_record() {
    let (client, seen, server) = mock(vec![
        step(Method::GET, RECORD, Reply::Error(404, "NotFound")),
        step(
            Method::POST,
            "/api/v1/namespaces/gpubridge-system/configmaps",
            Reply::Echo,
        ),
    ]);
    let record = ReservationRecord::new(client, "gpubridge-system");
    let node = record
        .update(|r| r.reserve("our-lease", "o", &one_node(8), 4, |_| false, 0))
        .await
        .unwrap()
        .unwrap();
    finish(server).await;
    assert_eq!(node, "n0");
    assert_eq!(record.pending_for("o", |_| false).len(), 1);
    let created = &seen.read().unwrap()[1].2;
    assert_eq!(created["metadata"]["name"], "gpubridge-reservations");
}

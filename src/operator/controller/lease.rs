//! The ComputeLease controller: a lease → its boxed namespace and pod, and phases that follow
//! the pod. What to do is decided by `lifecycle::decide`; this module observes and carries out.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, Pod, ResourceQuota, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, Resource, ResourceExt};
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use crate::admission::check_terms;
use crate::capacity::{self, OfferFacts};
use crate::crd::conditions::condition;
use crate::crd::{
    ComputeLease, ComputeLeaseStatus, FIELD_MANAGER, Fault, GpuOffer, LeasePhase, NODE_ANNOTATION,
    TerminationReason,
};
use crate::identity::{generate_key, issue_lease_certificate, public_key_base58};
use crate::lifecycle::{self, Observation, PodObservation};
use crate::operator::controller::boxes::BoxPart;
use crate::operator::controller::context::Context;
use crate::operator::controller::error::{Error, Result, is_conflict, is_not_found};
use crate::operator::status::apply_status;
use crate::workload::{self, LeaseBox, LeaseIdentity, POD_NAME, namespace_for};
use k8s_openapi::api::resource::v1::ResourceClaim;

pub const FINALIZER: &str = "gpubridge.dev/lease-cleanup";

/// Status writes retried on a conflict before the reconcile gives up and backs off.
const STATUS_WRITE_ATTEMPTS: usize = 3;
/// How often cleanup looks again while the lease pod terminates.
const CLEANUP_POLL: Duration = Duration::from_secs(2);
/// How often a lease that no node can take looks again.
const NO_NODE_POLL: Duration = Duration::from_secs(10);
/// A lease certificate outlives its lease by this much, for the final receipt.
const CERTIFICATE_GRACE_SECONDS: i64 = 3600;

pub async fn reconcile(lease: Arc<ComputeLease>, ctx: Arc<Context>) -> Result<Action> {
    let api: Api<ComputeLease> = Api::all(ctx.client.clone());
    finalizer(&api, FINALIZER, lease, |event| async {
        match event {
            Finalizer::Apply(lease) => apply(&lease, &ctx).await,
            Finalizer::Cleanup(lease) => cleanup(&lease, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

async fn apply(lease: &ComputeLease, ctx: &Context) -> Result<Action> {
    let name = lease.name_any();
    let namespace = namespace_for(&name);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let offer = ctx.offers.get(&kube::runtime::reflector::ObjectRef::new(
        &lease.spec.offer_name,
    ));

    let last_disruption = ctx
        .inventory
        .read()
        .expect("inventory lock poisoned")
        .last_disruption(&name)
        .map(str::to_string);
    let mut current = lease.clone();
    for attempt in 1..=STATUS_WRITE_ATTEMPTS {
        // Read on every attempt: after a conflict the pod may be one another replica created
        // (or stopped) meanwhile, and a decision from the older look would call it lost.
        let pod = pods.get_opt(POD_NAME).await?;
        let observed_pod = pod.as_ref().map(PodObservation::from_pod);
        let status = current.status.clone().unwrap_or_default();
        let mut decision = lifecycle::decide(&Observation {
            spec: &current.spec,
            status: &status,
            pod: observed_pod.as_ref(),
            admissible: admissible(&current, offer.as_deref()),
            created_at: current.metadata.creation_timestamp.as_ref().map(|t| t.0),
            now: Timestamp::now(),
            scheduling_timeout: ctx.settings.scheduling_timeout,
            last_disruption: last_disruption.as_deref(),
        });
        debug!(lease = %name, pod = ?observed_pod.as_ref().map(|p| &p.phase), ?decision, "decided");
        if decision.create {
            let offer = offer.as_deref().ok_or(Error::MissingField("offer"))?;
            match ensure_box(&current, offer, ctx, true).await {
                Ok(()) => {
                    ctx.box_gate
                        .lock()
                        .expect("box gate lock poisoned")
                        .box_created();
                    decision.status.namespace = Some(namespace.clone());
                    decision.status.pod = Some(POD_NAME.to_string());
                }
                Err(e) => match refusal(&e) {
                    // Nothing of the lease can run until the provider mends its set-up: the
                    // lease ends now (a refund for the buyer) instead of at its deadline, and
                    // intake refuses leases for a while (`admission::BoxGate`).
                    Some(message) => {
                        warn!(lease = %name, %message, "the API refused the lease's box");
                        ctx.box_gate
                            .lock()
                            .expect("box gate lock poisoned")
                            .box_refused(message.clone(), Timestamp::now().as_millisecond());
                        decision = lifecycle::box_refused(&status, message, Timestamp::now());
                    }
                    None => return Err(e),
                },
            }
        }
        let mut next = decision.status;
        if !decision.create
            && !next.phase.is_terminal()
            && let Some(offer) = offer.as_deref()
        {
            // Level-based: policies someone deleted or changed are put back while the lease lives.
            ensure_box(&current, offer, ctx, false).await?;
        }
        next.conditions = lease_conditions(&current, &next);
        match write_status(ctx, &current, &next).await {
            Ok(()) => {}
            Err(Error::Kube(e)) if is_conflict(&e) && attempt < STATUS_WRITE_ATTEMPTS => {
                let api: Api<ComputeLease> = Api::all(ctx.client.clone());
                current = api.get(&name).await?;
                continue;
            }
            Err(Error::Kube(e)) if is_conflict(&e) => {
                return Err(Error::Conflict {
                    what: "ComputeLease status",
                });
            }
            Err(e) => return Err(e),
        }
        record_transition(ctx, &current, &status, &next).await;
        if decision.delete_pod && pod.is_some() {
            delete_ignoring_absent(&pods, POD_NAME).await?;
        }
        return Ok(decision
            .requeue_after
            .map(Action::requeue)
            .unwrap_or_else(Action::await_change));
    }
    unreachable!("the loop returns on its last attempt")
}

/// The API's refusal of part of a lease's box (an admission policy, RBAC, a missing
/// PriorityClass or RuntimeClass), as its message; `None` for what may pass on a retry (a
/// conflict, throttling, a server or connection error). The lease's own quota admits exactly
/// its one pod, so "exceeded quota" means that pod already exists (another replica created it
/// first; quota admission answers before the name's uniqueness does): not a refusal either.
fn refusal(error: &Error) -> Option<String> {
    match error {
        Error::Kube(kube::Error::Api(status))
            if (400..500).contains(&status.code)
                && ![404, 409, 429].contains(&status.code)
                && !status.message.contains("exceeded quota") =>
        {
            Some(status.message.clone())
        }
        _ => None,
    }
}

/// Whether the lease may start: its offer exists and its terms are within the offer's.
fn admissible(
    lease: &ComputeLease,
    offer: Option<&GpuOffer>,
) -> Result<(), (TerminationReason, String)> {
    let offer = offer.ok_or_else(|| {
        (
            TerminationReason::OfferGone,
            format!("GpuOffer {} does not exist", lease.spec.offer_name),
        )
    })?;
    check_terms(&offer.spec, &lease.spec)
        .map_err(|v| (TerminationReason::TermsViolated, v.to_string()))
}

/// Creates what the lease runs in, in the order that keeps it boxed: the namespace, its network
/// policy, quota and limits, then the identity secret, then the pod. With `with_pod` false only
/// the namespace and policies are checked.
async fn ensure_box(
    lease: &ComputeLease,
    offer: &GpuOffer,
    ctx: &Context,
    with_pod: bool,
) -> Result<()> {
    let name = lease.name_any();
    let owner = lease
        .controller_owner_ref(&())
        .ok_or(Error::MissingField("metadata.uid"))?;
    let eligible = if with_pod {
        let offers = ctx.offer_facts();
        let inventory = ctx.inventory.read().expect("inventory lock poisoned");
        let eligible = capacity::eligible_nodes(
            &inventory,
            &OfferFacts::from_offer(offer),
            &offers,
            lease.spec.gpus,
            lease.spec.gpu_model.as_deref(),
        );
        pinned_to_promised_node(eligible, lease.annotations().get(NODE_ANNOTATION))
    } else {
        Vec::new()
    };
    let b = LeaseBox {
        lease_name: &name,
        spec: &lease.spec,
        owner,
        policy: &offer.spec.workload,
        tolerations: &offer.spec.tolerations,
        eligible_nodes: &eligible,
        sidecar_image: &ctx.settings.sidecar_image,
        sidecar_env: &ctx.settings.sidecar_env,
        collector: &ctx.settings.collector,
        log_reader: ctx.settings.log_reader.as_ref(),
        scheduling_timeout_seconds: ctx.settings.scheduling_timeout.as_secs(),
    };
    let namespace = b.namespace();
    apply_if_changed(
        ctx,
        Api::<Namespace>::all(ctx.client.clone()),
        workload::namespace(&b),
    )
    .await?;
    let client = || ctx.client.clone();
    apply_if_changed(
        ctx,
        Api::<NetworkPolicy>::namespaced(client(), &namespace),
        workload::network_policy(&b),
    )
    .await?;
    apply_if_changed(
        ctx,
        Api::<ResourceQuota>::namespaced(client(), &namespace),
        workload::resource_quota(&b),
    )
    .await?;
    apply_if_changed(
        ctx,
        Api::<LimitRange>::namespaced(client(), &namespace),
        workload::limit_range(&b),
    )
    .await?;
    if !with_pod {
        return Ok(());
    }
    if let Some(binding) = workload::log_reader_binding(&b) {
        create_ignoring_existing(
            &Api::<RoleBinding>::namespaced(client(), &namespace),
            &binding,
        )
        .await?;
    }
    // Created, never read back: the operator may create Secrets in lease namespaces but not read
    // them (least privilege), and an existing identity is never replaced.
    let identity = lease_identity(ctx, lease);
    create_ignoring_existing(
        &Api::<Secret>::namespaced(client(), &namespace),
        &workload::secret(&b, &identity),
    )
    .await?;
    if let Some(claim) = workload::claim(&b) {
        create_ignoring_existing(
            &Api::<ResourceClaim>::namespaced(client(), &namespace),
            &claim,
        )
        .await?;
    }
    if eligible.is_empty() {
        // A pod pinned to no node could never run, even once a node frees up: wait instead,
        // until the scheduling deadline ends the lease.
        return Err(Error::Waiting {
            reason: format!(
                "no node of offer {} can take {} GPUs now",
                offer.name_any(),
                lease.spec.gpus
            ),
            retry_after: NO_NODE_POLL,
        });
    }
    create_ignoring_existing(
        &Api::<Pod>::namespaced(client(), &namespace),
        &workload::pod(&b),
    )
    .await?;
    Ok(())
}

/// A fresh key for the lease and the provider's certificate for it.
fn lease_identity(ctx: &Context, lease: &ComputeLease) -> LeaseIdentity {
    let key = generate_key();
    let not_after = Timestamp::now().as_second()
        + lease.spec.duration_seconds as i64
        + ctx.settings.scheduling_timeout.as_secs() as i64
        + CERTIFICATE_GRACE_SECONDS;
    let certificate = issue_lease_certificate(
        &ctx.provider_key,
        &lease.spec.lease_id,
        &key.verifying_key(),
        not_after,
    );
    LeaseIdentity {
        lease_key: key.to_bytes().to_vec(),
        certificate: certificate.encode_to_vec(),
        provider_public_key: public_key_base58(&ctx.provider_key.verifying_key()),
    }
}

/// Server-side applies `desired` unless the watched copy carries the same desired-state hash.
/// A copy the watch has not caught up with yet is applied again, which changes nothing.
async fn apply_if_changed<K>(ctx: &Context, api: Api<K>, desired: K) -> Result<()>
where
    K: BoxPart + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    if ctx.boxes.holds(&desired) {
        return Ok(());
    }
    api.patch(
        &desired.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await?;
    Ok(())
}

async fn create_ignoring_existing<K>(api: &Api<K>, object: &K) -> Result<()>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn delete_ignoring_absent<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Writes the status fields this controller owns, only when they changed, and only over the
/// version it was decided from (optimistic concurrency: a stale decision is never written).
async fn write_status(
    ctx: &Context,
    lease: &ComputeLease,
    next: &ComputeLeaseStatus,
) -> Result<()> {
    if lease.status.as_ref() == Some(next) {
        return Ok(());
    }
    let version = lease.resource_version();
    apply_status::<ComputeLease>(
        &ctx.client,
        &lease.name_any(),
        FIELD_MANAGER,
        version.as_deref(),
        &next.phase_part(),
    )
    .await?;
    Ok(())
}

fn lease_conditions(
    lease: &ComputeLease,
    next: &ComputeLeaseStatus,
) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    let previous = lease
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let now = Timestamp::now();
    let generation = lease.metadata.generation;
    let ready = match (&next.termination, next.phase) {
        (Some(t), _) => condition(
            &previous,
            "Ready",
            false,
            t.reason.as_str(),
            t.message.clone(),
            generation,
            now,
        ),
        (None, LeasePhase::Running) => condition(
            &previous,
            "Ready",
            true,
            "Running",
            "the workload runs",
            generation,
            now,
        ),
        (None, phase) => condition(
            &previous,
            "Ready",
            false,
            phase.as_str(),
            "",
            generation,
            now,
        ),
    };
    let mut conditions: Vec<_> = previous
        .into_iter()
        .filter(|c| c.type_ != "Ready")
        .collect();
    conditions.insert(0, ready);
    conditions
}

/// A Kubernetes Event, and metrics, for every phase change.
async fn record_transition(
    ctx: &Context,
    lease: &ComputeLease,
    before: &ComputeLeaseStatus,
    after: &ComputeLeaseStatus,
) {
    if before.phase == after.phase {
        return;
    }
    let (type_, note) = match &after.termination {
        Some(t) if after.phase.is_terminal() => {
            ctx.metrics
                .lease_ends
                .with_label_values(&[t.reason.as_str(), &format!("{:?}", t.fault)])
                .inc();
            match t.fault {
                Fault::None => (
                    EventType::Normal,
                    format!("{}: {}", t.reason.as_str(), t.message),
                ),
                fault => (
                    EventType::Warning,
                    format!("{} ({fault:?} fault): {}", t.reason.as_str(), t.message),
                ),
            }
        }
        _ => (
            EventType::Normal,
            format!("{} → {}", before.phase.as_str(), after.phase.as_str()),
        ),
    };
    info!(lease = %lease.name_any(), from = before.phase.as_str(), to = after.phase.as_str(), "lease phase changed");
    let event = Event {
        type_,
        reason: after.phase.as_str().to_string(),
        note: Some(note),
        action: "Reconcile".to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &lease.object_ref(&())).await {
        warn!(error = %e, "could not record event");
    }
}

/// The lease is being deleted: end it if it still lives, stop its pod and wait until the pod is
/// gone, then let the namespace go. Only then is the finalizer removed.
async fn cleanup(lease: &ComputeLease, ctx: &Context) -> Result<Action> {
    let name = lease.name_any();
    let namespace = namespace_for(&name);
    if !lease.phase().is_terminal() {
        let mut ended = lease.status.clone().unwrap_or_default();
        ended.phase = TerminationReason::DeletedByProvider.phase();
        ended.finished_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            Timestamp::now(),
        ));
        ended.termination = Some(crate::crd::Termination::new(
            TerminationReason::DeletedByProvider,
            "the ComputeLease was deleted before the lease ended",
        ));
        ended.conditions = lease_conditions(lease, &ended);
        write_status(ctx, lease, &ended).await?;
        record_transition(
            ctx,
            lease,
            &lease.status.clone().unwrap_or_default(),
            &ended,
        )
        .await;
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    if let Some(pod) = pods.get_opt(POD_NAME).await? {
        if pod.metadata.deletion_timestamp.is_none() {
            delete_ignoring_absent(&pods, POD_NAME).await?;
        }
        return Err(Error::Waiting {
            reason: format!("lease pod {namespace}/{POD_NAME} is terminating"),
            retry_after: CLEANUP_POLL,
        });
    }
    if awaiting_end_report(lease, ctx.settings.reports_to_network, Timestamp::now()) {
        return Err(Error::Waiting {
            reason: "the lease's end is not reported to the network yet".into(),
            retry_after: CLEANUP_POLL,
        });
    }
    // Its GPUs are no longer promised: a replica whose watch has not seen the lease yet would
    // otherwise keep them reserved after it is gone.
    ctx.reservations.release(&name).await?;
    delete_ignoring_absent(&Api::<Namespace>::all(ctx.client.clone()), &namespace).await?;
    Ok(Action::await_change())
}

/// How long a deleted lease waits for its end to be reported before it goes anyway: a network
/// that is down must not keep a namespace forever; the network then lapses nothing and the
/// buyer's hold stays until the network hears of the end some other way.
const END_REPORT_GRACE: std::time::Duration = std::time::Duration::from_secs(600);

/// DESIGN §3.4: the end is reported to the network before the namespace goes. Pure.
fn awaiting_end_report(lease: &ComputeLease, reports_to_network: bool, now: Timestamp) -> bool {
    let Some(status) = &lease.status else {
        return false;
    };
    let from_network = lease.spec.signed_order.is_some();
    reports_to_network
        && from_network
        && status.reported_at.is_none()
        && status.finished_within(now, END_REPORT_GRACE)
}

/// The pod goes to the node intake promised the GPUs on, while that node can take it; a lease
/// created without a promise (by hand), or whose node has gone, may go to any eligible node.
fn pinned_to_promised_node(eligible: Vec<String>, promised: Option<&String>) -> Vec<String> {
    match promised {
        Some(node) if eligible.contains(node) => vec![node.clone()],
        _ => eligible,
    }
}

#[cfg(test)]
mod tests {
    use super::{Error, awaiting_end_report, pinned_to_promised_node, refusal};
    use crate::crd::{ComputeLease, ComputeLeaseStatus, LeasePhase, SignedOrder};
    use jiff::{Timestamp, ToSpan};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn a_network_lease_waits_for_its_end_report_within_the_grace() {
        let spec =
            serde_yaml::from_str(include_str!("../../../tests/fixtures/lease-spec.yaml")).unwrap();
        let mut lease = ComputeLease::new("l", spec);
        let now = Timestamp::from_second(1_000_000).unwrap();
        lease.status = Some(ComputeLeaseStatus {
            phase: LeasePhase::Expired,
            finished_at: Some(Time(now - 60.seconds())),
            ..Default::default()
        });
        assert!(
            !awaiting_end_report(&lease, true, now),
            "a lease made by hand reports nothing"
        );
        lease.spec.signed_order = Some(SignedOrder {
            body: String::new(),
            buyer_signature: String::new(),
            network_signature: String::new(),
        });
        assert!(awaiting_end_report(&lease, true, now));
        assert!(
            !awaiting_end_report(&lease, false, now),
            "no session, nobody to report to"
        );
        assert!(
            !awaiting_end_report(&lease, true, now + 600.seconds()),
            "the grace passed"
        );
        lease.status.as_mut().unwrap().reported_at = Some(Time(now));
        assert!(!awaiting_end_report(&lease, true, now));
    }

    #[test]
    fn only_refusals_that_stay_end_a_lease() {
        let api = |code: u16, message: &str| {
            Error::Kube(kube::Error::Api(Box::new(
                kube::core::Status::failure(message, "Forbidden").with_code(code),
            )))
        };
        let policy = "pods \"workload\" is forbidden: ValidatingAdmissionPolicy denied request";
        assert_eq!(refusal(&api(403, policy)).as_deref(), Some(policy));
        assert!(refusal(&api(422, "spec.priorityClassName: not found")).is_some());
        for passing in [
            api(
                403,
                "pods \"workload\" is forbidden: exceeded quota: lease-quota, used: pods=1",
            ),
            api(404, "namespaces \"lease-x\" not found"),
            api(409, "already exists"),
            api(429, "too many requests"),
            api(500, "etcd timeout"),
        ] {
            assert_eq!(refusal(&passing), None, "{passing}");
        }
    }

    #[test]
    fn a_promised_node_pins_the_pod_while_it_is_eligible() {
        let eligible = vec!["a".to_string(), "b".to_string()];
        assert_eq!(
            pinned_to_promised_node(eligible.clone(), Some(&"b".to_string())),
            vec!["b"]
        );
        assert_eq!(
            pinned_to_promised_node(eligible.clone(), Some(&"c".to_string())),
            eligible
        );
        assert_eq!(pinned_to_promised_node(eligible.clone(), None), eligible);
    }
}

//! The operator's outbound session with the network (DESIGN §3, §6), run by the leader only:
//! connect (TLS optional, network key pinned), register, open the lease stream, heartbeat,
//! publish offers when they change and before they expire, withdraw paused or deleted ones,
//! take leases through intake, and report the end of every lease. Any failure drops the session
//! and reconnects with backoff and jitter; everything it does is level-based, so a reconnect
//! (or a new leader) picks up where the last one stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use prost::Message;
use rand_core::{OsRng, RngCore};
use tonic::{Code, Status};
use tracing::{info, warn};

use crate::admission::check_terms;
use crate::capacity::{OfferFacts, compute};
use crate::crd::{
    ComputeLease, Fault, GpuOffer, LeaseReportPart, NODE_ANNOTATION, OfferPublicationPart,
};
use crate::identity::public_key_base58;
use crate::operator::controller::Context;
use crate::operator::intake::{lease_spec, verify_lease};
use crate::operator::publication::{Published, advertised_blocks, due, offer_body};
use crate::operator::reservations::ReservationRecord;
use crate::operator::status::apply_status;
use crate::wire::client::{self, NetworkClient, Target};
use crate::wire::envelope::verifying_key;
use crate::wire::proto::{LeaseBody, LeaseEndBody, Signed, lease_event};

/// Field manager of the status fields the session writes (offerId, lastAdvertised, reportedAt).
pub const SESSION_FIELD_MANAGER: &str = "gpubridge-network-session";

/// Settings of the session, from the operator's flags.
#[derive(Clone, Debug)]
pub struct SessionSettings {
    pub target: Target,
    /// The network's public key; the session refuses a network that presents another.
    pub pinned_key: Option<VerifyingKey>,
    pub provider_name: String,
    pub region: String,
    /// The operator's namespace, where intake's reservation record lives.
    pub namespace: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Connect(#[from] client::ConnectError),
    #[error("network call failed: {0}")]
    Call(#[from] Status),
    #[error("the network presents key {found}, not the pinned {pinned}")]
    WrongNetworkKey { pinned: String, found: String },
    #[error("the network's key is invalid: {0}")]
    BadNetworkKey(String),
    #[error("the lease stream ended")]
    StreamEnded,
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl SessionError {
    /// The `reason` label of `gpubridge_network_session_failures_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SessionError::Connect(_) => "connect",
            SessionError::Call(_) => "call",
            SessionError::WrongNetworkKey { .. } => "wrong_network_key",
            SessionError::BadNetworkKey(_) => "bad_network_key",
            SessionError::StreamEnded => "stream_ended",
            SessionError::Kube(_) => "kube",
        }
    }
}

fn now_unix() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn now_unix_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Runs sessions until `shutdown`, reconnecting after each failure.
pub async fn run(
    ctx: Arc<Context>,
    settings: SessionSettings,
    shutdown: impl Future<Output = ()> + Clone,
) {
    let reservations = Arc::new(ReservationRecord::new(
        ctx.client.clone(),
        &settings.namespace,
    ));
    tokio::select! {
        _ = shutdown.clone() => return,
        _ = catch_up(&ctx) => {}
    }
    let mut failures: u32 = 0;
    loop {
        let started = Instant::now();
        let session = session(&ctx, &settings, &reservations);
        let result = tokio::select! {
            _ = shutdown.clone() => return,
            result = session => result,
        };
        ctx.metrics.network_session_up.set(0);
        if started.elapsed() > Duration::from_secs(60) {
            // It worked for a while: this is a new outage, not the same one.
            failures = 0;
        }
        failures = failures.saturating_add(1);
        let delay = reconnect_delay(failures);
        let Err(e) = result;
        ctx.metrics
            .network_session_failures
            .with_label_values(&[e.metric_label()])
            .inc();
        warn!(error = %e, retry_in = ?delay, "network session lost");
        tokio::select! {
            _ = shutdown.clone() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// A new leader's caches may lag what the previous leader created. Before taking any lease, read
/// every ComputeLease from the API (a quorum read) and wait until the inventory counts them all,
/// so intake never decides against a picture older than the last promise.
async fn catch_up(ctx: &Context) {
    let api: Api<ComputeLease> = Api::all(ctx.client.clone());
    loop {
        match api.list(&ListParams::default()).await {
            Ok(list) => {
                let names: Vec<String> = list.items.iter().map(|l| l.name_any()).collect();
                // A lease deleted since the list never shows up: list again after a while.
                for _ in 0..50 {
                    let missing = {
                        let inventory = ctx.inventory.read().expect("inventory lock poisoned");
                        names
                            .iter()
                            .filter(|n| inventory.lease(n).is_none())
                            .count()
                    };
                    if missing == 0 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot list ComputeLeases before intake; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// 1 s doubling to 60 s, with up to 50% random jitter so providers do not reconnect in lockstep
/// after a network restart.
fn reconnect_delay(failures: u32) -> Duration {
    let base = Duration::from_secs(1 << failures.clamp(1, 7).saturating_sub(1))
        .min(Duration::from_secs(60));
    base + base.mul_f64(f64::from(OsRng.next_u32() % 500) / 1000.0)
}

async fn session(
    ctx: &Arc<Context>,
    settings: &SessionSettings,
    reservations: &Arc<ReservationRecord>,
) -> Result<Infallible, SessionError> {
    let channel = client::channel(&settings.target)?;
    let client = NetworkClient::new(channel, ctx.provider_key.clone());
    let info = client.info().await?;
    let network_key = verifying_key("networkKey", &info.network_key)
        .map_err(|e| SessionError::BadNetworkKey(e.to_string()))?;
    match &settings.pinned_key {
        Some(pinned) if pinned != &network_key => {
            return Err(SessionError::WrongNetworkKey {
                pinned: public_key_base58(pinned),
                found: public_key_base58(&network_key),
            });
        }
        Some(_) => {}
        None => warn!(
            network = %public_key_base58(&network_key),
            "no --network-key: trusting the key this network presents; pin it in production"
        ),
    }
    let registered = client
        .register(&settings.provider_name, &settings.region)
        .await?;
    let stream = client.leases().await?;
    ctx.metrics.network_session_up.set(1);
    info!(
        network = %public_key_base58(&network_key),
        url = %settings.target.url,
        "network session established"
    );
    let ttl = Duration::from_secs(u64::from(registered.offer_ttl_seconds.max(3)));
    let heartbeat = Duration::from_secs(u64::from(registered.heartbeat_timeout_seconds.max(3)) / 3);
    tokio::select! {
        r = take_leases(ctx, &client, stream, &network_key, reservations) => r,
        r = keep_alive(&client, heartbeat) => r,
        r = publish_offers(ctx, &client, settings, reservations, ttl) => r,
        r = report_ends(ctx, &client) => r,
    }
}

async fn keep_alive(client: &NetworkClient, every: Duration) -> Result<Infallible, SessionError> {
    loop {
        tokio::time::sleep(every).await;
        client.heartbeat().await?;
    }
}

async fn take_leases(
    ctx: &Arc<Context>,
    client: &NetworkClient,
    mut stream: tonic::Streaming<crate::wire::proto::LeaseEvent>,
    network_key: &VerifyingKey,
    reservations: &Arc<ReservationRecord>,
) -> Result<Infallible, SessionError> {
    while let Some(event) = stream.message().await? {
        let Some(lease_event::Event::Lease(signed)) = event.event else {
            continue;
        };
        // The id is read before the lease is trusted only to address the answer; the network
        // accepts an answer only from the provider the lease is for.
        let lease_id = LeaseBody::decode(signed.body.as_slice())
            .map(|l| l.lease_id)
            .unwrap_or_default();
        let decision = intake(ctx, &signed, network_key, reservations).await;
        let (accept, reason, kind) = match &decision {
            Ok(_) => (true, String::new(), "none"),
            Err((kind, reason)) => (false, reason.clone(), *kind),
        };
        ctx.metrics
            .intake
            .with_label_values(&[if accept { "accepted" } else { "rejected" }, kind])
            .inc();
        if lease_id.is_empty() {
            warn!(%reason, "refused a lease without a readable id");
            continue;
        }
        match client.decide(&lease_id, accept, &reason).await {
            Ok(()) => info!(lease = %lease_id, accept, %reason, "answered the network"),
            Err(status) if accept && status.code() == Code::FailedPrecondition => {
                // The lease lapsed or the buyer cancelled it before the answer arrived: the buyer
                // was refunded, so what was created for it goes.
                warn!(lease = %lease_id, error = %status, "accepted too late; removing the lease");
                if let Ok(name) = decision {
                    let api: Api<ComputeLease> = Api::all(ctx.client.clone());
                    let _ = api.delete(&name, &Default::default()).await;
                    release(reservations, &name).await;
                }
            }
            Err(status) => return Err(status.into()),
        }
    }
    Err(SessionError::StreamEnded)
}

/// DESIGN §3 steps 1–2 for one lease: verify, check the offer's terms and capacity, create the
/// ComputeLease (named after the lease id, so a redelivery is a no-op). Returns the lease name
/// when accepted, else a bounded reason kind and the reason for the buyer.
async fn intake(
    ctx: &Arc<Context>,
    signed: &Signed,
    network_key: &VerifyingKey,
    reservations: &Arc<ReservationRecord>,
) -> Result<String, (&'static str, String)> {
    let provider = ctx.provider_key.verifying_key();
    let verified = verify_lease(signed, network_key, &provider, now_unix())
        .map_err(|r| (r.kind(), r.to_string()))?;
    let name = verified.lease.lease_id.clone();
    let api: Api<ComputeLease> = Api::all(ctx.client.clone());
    if let Some(existing) = api.get_opt(&name).await.map_err(|e| {
        (
            "api",
            format!("the provider could not read its leases: {e}"),
        )
    })? {
        return same_lease(&existing, &verified.lease.lease_id).map(|()| name);
    }
    let offer = ctx
        .offers
        .get(&ObjectRef::<GpuOffer>::new(&verified.lease.offer_name))
        .ok_or_else(|| {
            (
                "offer",
                format!(
                    "offer {} is not offered by this provider",
                    verified.lease.offer_name
                ),
            )
        })?;
    if offer.spec.paused {
        return Err((
            "offer",
            format!("offer {} is paused", verified.lease.offer_name),
        ));
    }
    let spec = lease_spec(&verified, &offer.spec);
    check_terms(&offer.spec, &spec).map_err(|v| ("terms", v.to_string()))?;
    let node = reserve(
        ctx,
        reservations,
        &offer,
        &name,
        spec.gpus,
        spec.gpu_model.as_deref(),
    )
    .await?;
    let lease = ComputeLease {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            annotations: Some(BTreeMap::from([(NODE_ANNOTATION.to_string(), node)])),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "gpubridge".to_string(),
            )])),
            ..Default::default()
        },
        spec,
        status: None,
    };
    let params = PostParams {
        field_manager: Some(crate::crd::FIELD_MANAGER.into()),
        ..Default::default()
    };
    let created = match api.create(&params, &lease).await {
        Ok(_) => Ok(name.clone()),
        Err(kube::Error::Api(s)) if s.code == 409 => match api.get(&name).await {
            Ok(existing) => same_lease(&existing, &verified.lease.lease_id).map(|()| name.clone()),
            Err(e) => Err((
                "api",
                format!("the provider could not read its leases: {e}"),
            )),
        },
        Err(kube::Error::Api(s)) => Err((
            "api",
            format!("the provider's cluster refused the lease: {}", s.message),
        )),
        Err(e) => Err((
            "api",
            format!("the provider could not create the lease: {e}"),
        )),
    };
    if created.is_err() {
        release(reservations, &name).await;
    }
    created
}

fn same_lease(existing: &ComputeLease, lease_id: &str) -> Result<(), (&'static str, String)> {
    if existing.spec.lease_id == lease_id {
        Ok(())
    } else {
        Err((
            "conflict",
            format!("another lease already has the name {}", existing.name_any()),
        ))
    }
}

/// Reserves the lease's GPUs on one node of the offer's advertised blocks (nodes of the
/// requested model only) minus what any replica already promised, through the shared record,
/// and returns the node.
async fn reserve(
    ctx: &Context,
    reservations: &ReservationRecord,
    offer: &GpuOffer,
    lease: &str,
    gpus: u32,
    model: Option<&str>,
) -> Result<String, (&'static str, String)> {
    let facts = OfferFacts::from_offer(offer);
    let all = ctx.offer_facts();
    let decided = reservations
        .update(|record| {
            // Decided afresh against each version of the record read.
            let inventory = ctx.inventory.read().expect("inventory lock poisoned");
            let counted = |name: &str| inventory.lease(name).is_some();
            let now = now_unix_ms();
            record.prune(now, counted);
            let blocks = advertised_blocks(&compute(&inventory, &facts, &all), model);
            record.reserve(lease, &facts.name, &blocks, gpus, counted, now)
        })
        .await;
    match decided {
        Ok(Ok(node)) => Ok(node),
        Ok(Err(short)) => Err(("capacity", short.to_string())),
        Err(e) => Err((
            "api",
            format!("the provider could not record the reservation: {e}"),
        )),
    }
}

/// Takes back the reservation of a lease that was not created after all; when that fails the
/// record drops it on its own after a while (`admission::UNCOUNTED_KEEP_MS`).
async fn release(reservations: &ReservationRecord, lease: &str) {
    let released = reservations
        .update(|record| {
            record.release(lease);
            Ok::<(), ()>(())
        })
        .await;
    if let Err(e) = released {
        warn!(%lease, error = %e, "could not release a reservation");
    }
}

async fn publish_offers(
    ctx: &Arc<Context>,
    client: &NetworkClient,
    settings: &SessionSettings,
    reservations: &Arc<ReservationRecord>,
    ttl: Duration,
) -> Result<Infallible, SessionError> {
    let started = Instant::now();
    let mut published: BTreeMap<String, Published> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let all = ctx.offer_facts();
        let mut desired = BTreeMap::new();
        for offer in ctx.offers.state() {
            if offer.spec.paused {
                continue;
            }
            let facts = OfferFacts::from_offer(&offer);
            let capacity = {
                let inventory = ctx.inventory.read().expect("inventory lock poisoned");
                compute(&inventory, &facts, &all)
            };
            let pending = {
                let inventory = ctx.inventory.read().expect("inventory lock poisoned");
                reservations.pending_for(&facts.name, |name| inventory.lease(name).is_some())
            };
            if let Some(body) = offer_body(&offer, &capacity, &pending, &settings.region) {
                desired.insert(facts.name.clone(), body);
            }
        }
        let now = started.elapsed();
        for (name, body) in &desired {
            if !due(published.get(name), body, now, ttl) {
                continue;
            }
            let mut sent = body.clone();
            sent.expires_at = now_unix() + ttl.as_secs() as i64;
            let reply = client.publish(sent).await?;
            set_offer_advertised(ctx, name, Some(&reply.offer_id)).await;
            published.insert(
                name.clone(),
                Published {
                    body: body.clone(),
                    at: now,
                },
            );
        }
        let gone: Vec<String> = published
            .keys()
            .filter(|name| !desired.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            match client.withdraw(&name).await {
                Ok(()) => {}
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => return Err(s.into()),
            }
            info!(offer = %name, "withdrew the offer");
            set_offer_advertised(ctx, &name, None).await;
            published.remove(&name);
        }
    }
}

/// Records the publication on the offer's status (offerId, lastAdvertised), or clears it.
async fn set_offer_advertised(ctx: &Context, name: &str, offer_id: Option<&str>) {
    let part = match offer_id {
        Some(id) => OfferPublicationPart {
            offer_id: Some(id.to_string()),
            last_advertised: Some(Time(jiff::Timestamp::now())),
        },
        None => OfferPublicationPart::default(),
    };
    if let Err(e) =
        apply_status::<GpuOffer>(&ctx.client, name, SESSION_FIELD_MANAGER, None, &part).await
    {
        warn!(offer = %name, error = %e, "could not record the publication on the offer");
    }
}

/// Reports every ended lease from the network that was not reported yet; level-based, so an end
/// missed while disconnected is reported after the next connect. The inventory says which leases
/// ended (no list of whole objects); each is read once, and remembered as settled until deleted.
async fn report_ends(
    ctx: &Arc<Context>,
    client: &NetworkClient,
) -> Result<Infallible, SessionError> {
    let api: Api<ComputeLease> = Api::all(ctx.client.clone());
    let mut settled: BTreeSet<String> = BTreeSet::new();
    loop {
        let ended: Vec<String> = {
            let inventory = ctx.inventory.read().expect("inventory lock poisoned");
            settled.retain(|name| inventory.lease(name).is_some());
            inventory
                .leases()
                .filter(|l| !l.active() && !settled.contains(&l.name))
                .map(|l| l.name.clone())
                .collect()
        };
        for name in ended {
            let lease = api.get_opt(&name).await?;
            let grace = ctx.settings.final_receipt_grace;
            if let Some(lease) = &lease
                && awaiting_final_receipt(lease, jiff::Timestamp::now(), grace)
            {
                continue;
            }
            if let Some(body) = lease.as_ref().and_then(end_report) {
                report_end(client, &ctx.client, &name, body).await?;
            }
            settled.insert(name);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Reports one end and records it on the lease (`status.reportedAt`).
async fn report_end(
    client: &NetworkClient,
    kube: &kube::Client,
    name: &str,
    body: LeaseEndBody,
) -> Result<(), SessionError> {
    match client.report_end(body).await {
        Ok(reply) => info!(
            lease = %name,
            charged = %reply.charged,
            refunded = %reply.refunded,
            "reported the lease's end"
        ),
        Err(s)
            if matches!(
                s.code(),
                Code::FailedPrecondition | Code::NotFound | Code::PermissionDenied
            ) =>
        {
            // The network never leased it to us (it lapsed or was cancelled before our answer):
            // nothing to settle, and asking again will not change that.
            warn!(lease = %name, error = %s, "the network does not settle this lease");
        }
        Err(s) => return Err(s.into()),
    }
    let part = LeaseReportPart {
        reported_at: Time(jiff::Timestamp::now()),
    };
    apply_status::<ComputeLease>(kube, name, SESSION_FIELD_MANAGER, None, &part).await?;
    Ok(())
}

/// DESIGN §3.4: the end is reported after the meter's final receipt, which pays the last
/// window; a meter that never sends one (killed, or never started) is waited for `grace` after
/// the lease finished. Pure.
pub fn awaiting_final_receipt(lease: &ComputeLease, now: jiff::Timestamp, grace: Duration) -> bool {
    let Some(status) = &lease.status else {
        return false;
    };
    let final_received = status.usage.as_ref().is_some_and(|u| u.final_received);
    !final_received && status.finished_within(now, grace)
}

/// The end report of a lease from the network that ended and was not reported yet. Pure.
pub fn end_report(lease: &ComputeLease) -> Option<LeaseEndBody> {
    lease.spec.signed_order.as_ref()?;
    let status = lease.status.as_ref()?;
    if !status.phase.is_terminal() || status.reported_at.is_some() {
        return None;
    }
    let termination = status.termination.as_ref();
    let started = status.started_at.as_ref().map(|t| t.0.as_second());
    let ended = status
        .finished_at
        .as_ref()
        .map_or_else(now_unix, |t| t.0.as_second());
    let ran = started.map_or(0, |s| (ended - s).max(0) as u64);
    let fault = match termination.map(|t| t.fault) {
        Some(Fault::Tenant) => "tenant",
        Some(Fault::Provider) => "provider",
        Some(Fault::Network) => "network",
        Some(Fault::None) | None => "none",
    };
    Some(LeaseEndBody {
        header: None,
        lease_id: lease.spec.lease_id.clone(),
        phase: status.phase.as_str().to_string(),
        reason: termination
            .map(|t| t.reason.as_str())
            .unwrap_or_default()
            .to_string(),
        fault: fault.to_string(),
        started_at: started.unwrap_or(ended),
        ended_at: ended,
        gpu_seconds: ran
            .min(lease.spec.duration_seconds)
            .saturating_mul(u64::from(lease.spec.gpus)),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jiff::{Timestamp, ToSpan};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::awaiting_final_receipt;
    use crate::crd::{ComputeLease, ComputeLeaseStatus, LeasePhase, LeaseUsage};

    #[test]
    fn an_end_waits_for_the_final_receipt_within_the_grace() {
        let spec =
            serde_yaml::from_str(include_str!("../../tests/fixtures/lease-spec.yaml")).unwrap();
        let mut lease = ComputeLease::new("l", spec);
        let now = Timestamp::from_second(1_000_000).unwrap();
        let grace = Duration::from_secs(120);
        assert!(!awaiting_final_receipt(&lease, now, grace), "no status yet");
        lease.status = Some(ComputeLeaseStatus {
            phase: LeasePhase::Expired,
            finished_at: Some(Time(now - 60.seconds())),
            ..Default::default()
        });
        assert!(
            awaiting_final_receipt(&lease, now, grace),
            "no receipt at all yet"
        );
        assert!(
            !awaiting_final_receipt(&lease, now + 60.seconds(), grace),
            "a meter that never sends one is waited for only the grace"
        );
        lease.status.as_mut().unwrap().usage = Some(LeaseUsage {
            receipts_accepted: 9,
            ..Default::default()
        });
        assert!(awaiting_final_receipt(&lease, now, grace));
        lease
            .status
            .as_mut()
            .unwrap()
            .usage
            .as_mut()
            .unwrap()
            .final_received = true;
        assert!(
            !awaiting_final_receipt(&lease, now, grace),
            "the final receipt is in"
        );
    }
}

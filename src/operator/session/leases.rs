//! Takes the leases the network streams: verifies each, checks its offer's terms, promises its
//! GPUs through the shared reservation record, creates its ComputeLease, and answers.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use prost::Message;
use tonic::Code;
use tracing::{info, warn};

use super::{SessionError, now_unix, now_unix_ms};
use crate::admission::check_terms;
use crate::capacity::{OfferFacts, compute};
use crate::commitment::{PinnedNetwork, verify_committed_lease};
use crate::crd::{ComputeLease, GpuOffer, NODE_ANNOTATION};
use crate::operator::controller::Context;
use crate::operator::intake::{Refusal, check_resource, lease_spec, verify_lease};
use crate::operator::publication::advertised_blocks;
use crate::wire::client::NetworkClient;
use crate::wire::proto::{LeaseBody, Signed, lease_event};

/// How a session checks the leases its gateway sends.
pub(super) struct LeaseCheck<'a> {
    /// The key of the gateway the session is connected to, which signs the leases it sends.
    pub gateway: VerifyingKey,
    /// On a network of validators, the validators whose commit every lease must prove.
    pub validators: Option<&'a PinnedNetwork>,
}

pub(super) async fn take_leases(
    ctx: &Arc<Context>,
    client: &NetworkClient,
    mut stream: tonic::Streaming<crate::wire::proto::LeaseEvent>,
    check: &LeaseCheck<'_>,
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
        if let Some(validators) = check.validators
            && let Err(e) = verify_committed_lease(validators, &signed.body, event.proof.as_ref())
        {
            // Not known to be a lease at all: nothing is answered about it, and a gateway that
            // sends such things is left for another.
            ctx.metrics
                .intake
                .with_label_values(&["rejected", "uncommitted"])
                .inc();
            return Err(SessionError::Uncommitted {
                lease: lease_id,
                reason: e.to_string(),
            });
        }
        let decision = intake(ctx, &signed, &check.gateway).await;
        let (accept, reason, kind) = match &decision {
            Ok(_) => (true, String::new(), "none"),
            Err(refusal) => (false, refusal.to_string(), refusal.kind()),
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
            Ok(()) if accept => info!(lease = %lease_id, "accepted the lease"),
            Ok(()) => info!(lease = %lease_id, %reason, "refused the lease"),
            Err(status) if accept && status.code() == Code::FailedPrecondition => {
                // The lease lapsed or the buyer cancelled it before the answer arrived: the buyer
                // was refunded, so what was created for it goes.
                warn!(lease = %lease_id, error = %status, "accepted too late; removing the lease");
                if let Ok(name) = decision {
                    let api: Api<ComputeLease> = Api::all(ctx.client.clone());
                    let _ = api.delete(&name, &Default::default()).await;
                    release(ctx, &name).await;
                }
            }
            Err(status) => return Err(status.into()),
        }
    }
    Err(SessionError::StreamEnded)
}

/// DESIGN §3 steps 1–2 for one lease: verify, check the offer's terms and capacity, create the
/// ComputeLease (named after the lease id, so a redelivery is a no-op). Returns the lease name
/// when accepted, else why not.
async fn intake(
    ctx: &Arc<Context>,
    signed: &Signed,
    network_key: &VerifyingKey,
) -> Result<String, Refusal> {
    let provider = ctx.provider_key.verifying_key();
    let verified = verify_lease(signed, network_key, &provider, now_unix())?;
    let name = verified.lease.lease_id.clone();
    let api: Api<ComputeLease> = Api::all(ctx.client.clone());
    if let Some(existing) = api
        .get_opt(&name)
        .await
        .map_err(|e| Refusal::Cluster(format!("the provider could not read its leases: {e}")))?
    {
        return same_lease(&existing, &verified.lease.lease_id).map(|()| name);
    }
    // A lease already created is answered as before; a new one only while the cluster can hold
    // its box.
    ctx.box_gate
        .lock()
        .expect("box gate lock poisoned")
        .admits(now_unix_ms())
        .map_err(Refusal::BoxUnavailable)?;
    let offer = ctx
        .offers
        .get(&ObjectRef::<GpuOffer>::new(&verified.lease.offer_name))
        .ok_or_else(|| Refusal::NotOffered(verified.lease.offer_name.clone()))?;
    if offer.spec.paused {
        return Err(Refusal::Paused(verified.lease.offer_name.clone()));
    }
    check_resource(&verified, &offer.spec)?;
    let spec = lease_spec(&verified, &offer.spec);
    check_terms(&offer.spec, &spec)?;
    let node = reserve(ctx, &offer, &name, spec.gpus, spec.gpu_model.as_deref()).await?;
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
            Err(e) => Err(Refusal::Cluster(format!(
                "the provider could not read its leases: {e}"
            ))),
        },
        Err(kube::Error::Api(s)) => Err(Refusal::Cluster(format!(
            "the provider's cluster refused the lease: {}",
            s.message
        ))),
        Err(e) => Err(Refusal::Cluster(format!(
            "the provider could not create the lease: {e}"
        ))),
    };
    if created.is_err() {
        release(ctx, &name).await;
    }
    created
}

fn same_lease(existing: &ComputeLease, lease_id: &str) -> Result<(), Refusal> {
    if existing.spec.lease_id == lease_id {
        Ok(())
    } else {
        Err(Refusal::NameTaken(existing.name_any()))
    }
}

/// Reserves the lease's GPUs on one node of the offer's advertised blocks (nodes of the
/// requested model only) minus what any replica already promised, through the shared record,
/// and returns the node.
async fn reserve(
    ctx: &Context,
    offer: &GpuOffer,
    lease: &str,
    gpus: u32,
    model: Option<&str>,
) -> Result<String, Refusal> {
    let facts = OfferFacts::from_offer(offer);
    let all = ctx.offer_facts();
    let decided = ctx
        .reservations
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
        Ok(decision) => Ok(decision?),
        Err(e) => Err(Refusal::Cluster(format!(
            "the provider could not record the reservation: {e}"
        ))),
    }
}

/// Takes back the reservation of a lease that was not created after all; when that fails the
/// record drops it on its own after a while (`admission::UNCOUNTED_KEEP_MS`).
async fn release(ctx: &Context, lease: &str) {
    if let Err(e) = ctx.reservations.release(lease).await {
        warn!(%lease, error = %e, "could not release a reservation");
    }
}

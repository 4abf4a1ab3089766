//! Keeps this provider's offers in the network's book: publishes them when they change and before
//! they expire, withdraws paused or deleted ones, and records the publication on each offer.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tonic::Code;
use tracing::{debug, info, warn};

use super::{SESSION_FIELD_MANAGER, SessionError, SessionSettings, now_unix};
use crate::capacity::{OfferFacts, compute};
use crate::crd::{GpuOffer, OfferPublicationPart};
use crate::operator::controller::Context;
use crate::operator::publication::{Published, due, offer_body, publishable};
use crate::operator::status::apply_status;
use crate::wire::amount::in_units;
use crate::wire::client::NetworkClient;

pub(super) async fn publish_offers(
    ctx: &Arc<Context>,
    client: &NetworkClient,
    settings: &SessionSettings,
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
            if !publishable(&offer.spec) {
                continue;
            }
            let facts = OfferFacts::from_offer(&offer);
            let capacity = {
                let inventory = ctx.inventory.read().expect("inventory lock poisoned");
                compute(&inventory, &facts, &all)
            };
            let pending = {
                let inventory = ctx.inventory.read().expect("inventory lock poisoned");
                ctx.reservations
                    .pending_for(&facts.name, |name| inventory.lease(name).is_some())
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
            let gpus: u32 = body.free_blocks.iter().sum();
            let price = in_units(&body.price_per_gpu_hour, &body.denomination);
            match published.get(name) {
                Some(last) if last.body == *body => {
                    debug!(offer = %name, offer_id = %reply.offer_id, "republished the offer before it expires");
                }
                _ => {
                    info!(offer = %name, offer_id = %reply.offer_id, gpus, price = %price, "published the offer")
                }
            }
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

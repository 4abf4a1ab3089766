//! Providers and their offers: registration, heartbeats, publication, withdrawal, the book.

use std::sync::Arc;

use crate::attestation::TrustTier;
use crate::identity::public_key_base58;
use crate::node::ledger::Account;
use crate::node::records::{LeaseRecord, OfferRecord, ProviderRecord};
use crate::node::uptime::Uptime;
use crate::wire::envelope::open;
use crate::wire::proto::{
    HeartbeatBody, OfferBody, OfferView, PublishOfferReply, RegisterBody, Signed, WithdrawBody,
};
use crate::wire::{Opened, Rejection, validate};

use super::{Block, OFFER_SEQ, OFFERS, PROVIDERS, Result, State};

/// A live offer and its provider, as decoded once and shared.
pub(super) type LiveOffer = (Arc<OfferRecord>, Arc<ProviderRecord>);

impl State {
    /// Gives a lease's GPUs back: to its provider's bond, and to its offer when the offer was
    /// not published again since.
    pub(super) fn release_capacity(&mut self, lease: &LeaseRecord) -> Result<()> {
        self.commit_gpus(&lease.provider, lease.gpus, false)?;
        if let Some(mut offer) = self.get::<OfferRecord>(OFFERS, &lease.offer_id)?
            && offer.published_seq == lease.offer_seq
        {
            if let Some(block) = offer.free_blocks.get_mut(lease.block) {
                *block += lease.gpus;
            }
            self.put(OFFERS, &lease.offer_id, &offer)?;
        }
        Ok(())
    }

    pub(super) fn registered(&self, provider: &str) -> Result<ProviderRecord> {
        self.get(PROVIDERS, provider)?.ok_or_else(|| {
            Rejection::PermissionDenied(format!(
                "provider {provider} is not registered: call Register first"
            ))
            .into()
        })
    }

    pub(super) fn register(&mut self, signed: &Signed, block: &Block) -> Result<()> {
        let opened: Opened<RegisterBody> = open(signed, block.time)?;
        validate::name("register.name", &opened.body.name)?;
        validate::region("register.region", &opened.body.region)?;
        let key = public_key_base58(&opened.signer);
        self.consume_nonce(&opened)?;
        let mut record = match self.get::<ProviderRecord>(PROVIDERS, &key)? {
            Some(known) => known,
            None => ProviderRecord {
                key: key.clone(),
                name: String::new(),
                region: String::new(),
                registered_at: block.time,
                last_heartbeat: block.time,
                uptime: Uptime::default(),
                completed_leases: 0,
                provider_fault_ends: 0,
                trust_tier: TrustTier::SelfReported,
            },
        };
        record.name = opened.body.name.clone();
        record.region = opened.body.region.clone();
        self.beat(&mut record, block.time)?;
        self.put(PROVIDERS, &key, &record)
    }

    pub(super) fn publish(&mut self, signed: &Signed, block: &Block) -> Result<PublishOfferReply> {
        let now = block.time;
        let opened: Opened<OfferBody> = open(signed, now)?;
        let checked = validate::offer(&opened.body, now)?;
        let body = &opened.body;
        let provider = public_key_base58(&opened.signer);
        let offer_id = format!("{provider}/{}", body.offer_name);
        let expires_at = body
            .expires_at
            .min(now + i64::from(self.params()?.offer_ttl_seconds));
        self.consume_nonce(&opened)?;
        self.registered(&provider)?;
        let mut free_blocks = body.free_blocks.clone();
        free_blocks.sort_unstable_by(|a, b| b.cmp(a));
        free_blocks.retain(|b| *b > 0);
        let record = OfferRecord {
            offer_id: offer_id.clone(),
            provider: provider.clone(),
            offer_name: body.offer_name.clone(),
            model: body.model.clone(),
            resource_name: body.resource_name.clone(),
            free_blocks,
            price: checked.price,
            denomination: body.denomination.clone(),
            min_duration_seconds: body.min_duration_seconds,
            max_duration_seconds: body.max_duration_seconds,
            max_gpus_per_lease: body.max_gpus_per_lease,
            allowed_registries: body.allowed_registries.clone(),
            region: body.region.clone(),
            attributes: checked.attributes.clone(),
            expires_at,
            published_seq: self.next_seq(OFFER_SEQ)?,
        };
        self.put(OFFERS, &offer_id, &record)?;
        Ok(PublishOfferReply {
            offer_id,
            expires_at,
        })
    }

    pub(super) fn withdraw(&mut self, signed: &Signed, block: &Block) -> Result<()> {
        let opened: Opened<WithdrawBody> = open(signed, block.time)?;
        validate::dns_subdomain("withdraw.offerName", &opened.body.offer_name)?;
        let offer_id = format!(
            "{}/{}",
            public_key_base58(&opened.signer),
            opened.body.offer_name
        );
        self.consume_nonce(&opened)?;
        if self.delete(OFFERS, &offer_id) {
            Ok(())
        } else {
            Err(Rejection::NotFound(format!("offer {offer_id} is not published")).into())
        }
    }

    /// A provider's heartbeat; who it is.
    pub(super) fn heartbeat(&mut self, signed: &Signed, block: &Block) -> Result<String> {
        let opened: Opened<HeartbeatBody> = open(signed, block.time)?;
        let provider = public_key_base58(&opened.signer);
        self.consume_nonce(&opened)?;
        let mut record = self.registered(&provider)?;
        self.beat(&mut record, block.time)?;
        self.put(PROVIDERS, &provider, &record)?;
        Ok(provider)
    }

    /// A sign of life from `provider` at `now`: registering counts as one.
    fn beat(&self, provider: &mut ProviderRecord, now: i64) -> Result<()> {
        let params = self.params()?;
        provider.last_heartbeat = now;
        provider.uptime.heartbeat(
            now,
            params.heartbeat_interval_seconds,
            params.uptime_window_seconds,
        );
        Ok(())
    }

    /// `provider`'s uptime at `now`, basis points.
    pub(super) fn uptime_of(&self, provider: &ProviderRecord, now: i64) -> Result<u32> {
        let params = self.params()?;
        Ok(provider.uptime.basis_points(
            provider.registered_at,
            now,
            params.heartbeat_interval_seconds,
            params.uptime_window_seconds,
        ))
    }

    /// Offers that can be matched at `now`, each with its provider: unexpired, from a provider
    /// that heartbeat within the timeout. The one rule for matching, the book and the sweep.
    pub(super) fn live_offers(&self, now: i64) -> Result<Vec<LiveOffer>> {
        let timeout = i64::from(self.params()?.heartbeat_timeout_seconds);
        let mut live = Vec::new();
        for (_, offer) in self.scan_shared::<OfferRecord>(OFFERS, "")? {
            if offer.expires_at <= now {
                continue;
            }
            if let Some(provider) = self.get_shared::<ProviderRecord>(PROVIDERS, &offer.provider)?
                && now - provider.last_heartbeat <= timeout
            {
                live.push((offer, provider));
            }
        }
        Ok(live)
    }

    /// The offer book at `now`.
    pub fn list_offers(&self, now: i64) -> Result<Vec<OfferView>> {
        let denomination = self.params()?.stake_denomination;
        self.live_offers(now)?
            .iter()
            .map(|(offer, provider)| {
                let mut view = offer.to_view(&provider.name);
                view.bonded = self
                    .balance(&Account::Bond(provider.key.clone()), &denomination)?
                    .to_string();
                view.provider = provider.key.clone();
                view.uptime_basis_points = self.uptime_of(provider, now)?;
                view.completed_leases = provider.completed_leases;
                view.provider_fault_ends = provider.provider_fault_ends;
                view.trust_tier = provider.trust_tier.as_str().to_string();
                Ok(view)
            })
            .collect()
    }
}

//! Providers and their offers: registration, heartbeats, publication, withdrawal, the book.

use redb::{ReadableTable, WriteTransaction};

use crate::identity::public_key_base58;
use crate::node::records::{LeaseRecord, OfferRecord, ProviderRecord};
use crate::wire::envelope::open;
use crate::wire::proto::{
    HeartbeatBody, OfferBody, OfferView, PublishOfferReply, RegisterBody, Signed, WithdrawBody,
};
use crate::wire::{Opened, Rejection, validate};

use super::{OFFER_SEQ, OFFERS, PROVIDERS, Result, Store, all_json, consume_nonce, get, next, put};

/// Gives a lease's GPUs back to its offer, when the offer was not published again since.
pub(super) fn release_capacity(txn: &WriteTransaction, lease: &LeaseRecord) -> Result<()> {
    if let Some(mut offer) = get::<OfferRecord>(txn, OFFERS, &lease.offer_id)?
        && offer.published_seq == lease.offer_seq
    {
        if let Some(block) = offer.free_blocks.get_mut(lease.block) {
            *block += lease.gpus;
        }
        put(txn, OFFERS, &lease.offer_id, &offer)?;
    }
    Ok(())
}

impl Store {
    pub(super) fn registered(txn: &WriteTransaction, provider: &str) -> Result<ProviderRecord> {
        get(txn, PROVIDERS, provider)?.ok_or_else(|| {
            Rejection::PermissionDenied(format!(
                "provider {provider} is not registered: call Register first"
            ))
            .into()
        })
    }

    pub fn register(&self, signed: &Signed, now: i64) -> Result<()> {
        let opened: Opened<RegisterBody> = open(signed, now)?;
        validate::name("register.name", &opened.body.name)?;
        validate::region("register.region", &opened.body.region)?;
        let key = public_key_base58(&opened.signer);
        self.write(|txn| {
            consume_nonce(txn, &opened)?;
            let registered_at =
                get::<ProviderRecord>(txn, PROVIDERS, &key)?.map_or(now, |p| p.registered_at);
            let record = ProviderRecord {
                key: key.clone(),
                name: opened.body.name.clone(),
                region: opened.body.region.clone(),
                registered_at,
                last_heartbeat: now,
            };
            put(txn, PROVIDERS, &key, &record)
        })
    }

    pub fn publish(&self, signed: &Signed, now: i64) -> Result<PublishOfferReply> {
        let opened: Opened<OfferBody> = open(signed, now)?;
        let checked = validate::offer(&opened.body, now)?;
        let body = &opened.body;
        let provider = public_key_base58(&opened.signer);
        let offer_id = format!("{provider}/{}", body.offer_name);
        let expires_at = body
            .expires_at
            .min(now + i64::from(self.settings.offer_ttl_seconds));
        self.write(|txn| {
            consume_nonce(txn, &opened)?;
            Self::registered(txn, &provider)?;
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
                published_seq: next(txn, OFFER_SEQ)?,
            };
            put(txn, OFFERS, &offer_id, &record)
        })?;
        Ok(PublishOfferReply {
            offer_id,
            expires_at,
        })
    }

    pub fn withdraw(&self, signed: &Signed, now: i64) -> Result<()> {
        let opened: Opened<WithdrawBody> = open(signed, now)?;
        validate::dns_subdomain("withdraw.offerName", &opened.body.offer_name)?;
        let offer_id = format!(
            "{}/{}",
            public_key_base58(&opened.signer),
            opened.body.offer_name
        );
        self.write(|txn| {
            consume_nonce(txn, &opened)?;
            match txn.open_table(OFFERS)?.remove(offer_id.as_str())? {
                Some(_) => Ok(()),
                None => {
                    Err(Rejection::NotFound(format!("offer {offer_id} is not published")).into())
                }
            }
        })
    }

    pub fn heartbeat(&self, signed: &Signed, now: i64) -> Result<()> {
        let opened: Opened<HeartbeatBody> = open(signed, now)?;
        let provider = public_key_base58(&opened.signer);
        self.write(|txn| {
            consume_nonce(txn, &opened)?;
            let mut record = Self::registered(txn, &provider)?;
            record.last_heartbeat = now;
            put(txn, PROVIDERS, &provider, &record)
        })
    }

    /// Offers that can be matched now, each with its provider: unexpired, from a provider that
    /// heartbeat within the timeout. The one rule for matching, the book and the sweep.
    pub(super) fn live_offers(
        &self,
        offers: &impl ReadableTable<&'static str, &'static [u8]>,
        providers: &impl ReadableTable<&'static str, &'static [u8]>,
        now: i64,
    ) -> Result<Vec<(OfferRecord, ProviderRecord)>> {
        let providers: Vec<ProviderRecord> = all_json(providers)?;
        let offers: Vec<OfferRecord> = all_json(offers)?;
        let timeout = i64::from(self.settings.heartbeat_timeout_seconds);
        Ok(offers
            .into_iter()
            .filter(|o| o.expires_at > now)
            .filter_map(|o| {
                let provider = providers.iter().find(|p| p.key == o.provider)?;
                (now - provider.last_heartbeat <= timeout).then(|| (o, provider.clone()))
            })
            .collect())
    }

    pub fn list_offers(&self, now: i64) -> Result<Vec<OfferView>> {
        let txn = self.read()?;
        let live = self.live_offers(&txn.open_table(OFFERS)?, &txn.open_table(PROVIDERS)?, now)?;
        Ok(live
            .iter()
            .map(|(offer, provider)| offer.to_view(&provider.name))
            .collect())
    }
}

//! Lease intake, the decisions (DESIGN §3 steps 1–2): verify a lease the network sent — the
//! network's signature, the buyer's, freshness, consistency with the order — and turn it into a
//! ComputeLease spec. Pure; the session applies the capacity check and writes.

use base64::Engine;
use ed25519_dalek::VerifyingKey;
use prost::Message;

use crate::admission::{Shortfall, TermsViolation};
use crate::crd::{
    ComputeLeaseSpec, ContainerPort, EnvVar, GpuOfferSpec, LeaseWorkload, PortProtocol, Price,
    SignedOrder,
};
use crate::identity::public_key_base58;
use crate::wire::amount::Amount;
use crate::wire::envelope::{FRESHNESS_SECONDS, open_from, verifying_key};
use crate::wire::proto::{LeaseBody, OrderBody, Signed};
use crate::wire::{Rejection, validate};

/// Why intake refuses a lease: the reason the buyer reads, and a bounded kind for metrics.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The lease itself fails verification (signatures, freshness, fields).
    #[error(transparent)]
    Invalid(#[from] Rejection),
    #[error("offer {0} is not offered by this provider")]
    NotOffered(String),
    #[error("offer {0} is paused")]
    Paused(String),
    #[error(transparent)]
    Terms(#[from] TermsViolation),
    #[error(transparent)]
    Capacity(#[from] Shortfall),
    #[error("the order asks for {ordered}; offer {offer} sells {sold}")]
    Resource {
        ordered: String,
        offer: String,
        sold: String,
    },
    #[error("another lease already has the name {0}")]
    NameTaken(String),
    /// The provider's own cluster could not do its part; the text says which.
    #[error("{0}")]
    Cluster(String),
    /// The provider's cluster cannot hold lease boxes now (`admission::BoxGate`).
    #[error("{0}")]
    BoxUnavailable(String),
}

impl Refusal {
    /// The `reason` label of `gpubridge_intake_leases_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::Invalid(r) => r.kind(),
            Refusal::NotOffered(_) | Refusal::Paused(_) => "offer",
            Refusal::Terms(_) | Refusal::Resource { .. } => "terms",
            Refusal::Capacity(_) => "capacity",
            Refusal::NameTaken(_) => "conflict",
            Refusal::Cluster(_) => "api",
            Refusal::BoxUnavailable(_) => "box",
        }
    }
}

/// A lease whose every signature and field was checked.
#[derive(Clone, Debug)]
pub struct VerifiedLease {
    pub lease: LeaseBody,
    pub order: OrderBody,
    pub buyer: VerifyingKey,
    /// The lease as received, for the ComputeLease's record.
    pub signed: Signed,
    pub price: Amount,
}

/// Verifies a lease from the network for `provider` at time `now`.
pub fn verify_lease(
    signed: &Signed,
    network: &VerifyingKey,
    provider: &VerifyingKey,
    now: i64,
) -> Result<VerifiedLease, Rejection> {
    let lease: LeaseBody = open_from(signed, network)?;
    let price = validate::lease(&lease)?;
    if lease.provider != provider.as_bytes() {
        return Err(Rejection::PermissionDenied(format!(
            "lease.provider: the lease is for provider {}, not this one",
            bs58::encode(&lease.provider).into_string()
        )));
    }
    if now > lease.answer_by {
        return Err(Rejection::Precondition(format!(
            "lease.answerBy: the lease had to be answered by {}",
            lease.answer_by
        )));
    }
    let signed_order = lease
        .order
        .as_ref()
        .expect("validate::lease requires the order");
    let unverified = OrderBody::decode(signed_order.body.as_slice()).map_err(|e| {
        Rejection::invalid("lease.order.body", &format!("is not a valid order: {e}"))
    })?;
    let header = unverified
        .header
        .as_ref()
        .ok_or_else(|| Rejection::invalid("lease.order.header", "is required"))?;
    let buyer = verifying_key("lease.order.header.signer", &header.signer)?;
    let order: OrderBody = open_from(signed_order, &buyer)?;
    let checked = validate::order(&order)?;
    let issued_at = header.issued_at;
    if (lease.matched_at - issued_at).abs() > FRESHNESS_SECONDS {
        return Err(Rejection::Precondition(format!(
            "lease.order: signed at {issued_at} but matched at {}; the network must match fresh orders",
            lease.matched_at
        )));
    }
    let mismatch =
        |field: &str| Rejection::invalid(&format!("lease.{field}"), "must equal the order's");
    if lease.gpus != order.gpus {
        return Err(mismatch("gpus"));
    }
    if lease.duration_seconds != order.duration_seconds {
        return Err(mismatch("durationSeconds"));
    }
    if lease.denomination != order.denomination {
        return Err(mismatch("denomination"));
    }
    if price > checked.max_price {
        return Err(Rejection::invalid(
            "lease.pricePerGpuHour",
            "must not exceed the order's maxPricePerGpuHour",
        ));
    }
    Ok(VerifiedLease {
        lease,
        order,
        buyer,
        signed: signed.clone(),
        price,
    })
}

/// Whether the offer sells what the order asks for: whole GPUs, or the one MIG profile it names.
/// The provider checks it itself rather than trust the network's match.
pub fn check_resource(verified: &VerifiedLease, offer: &GpuOfferSpec) -> Result<(), Refusal> {
    let ordered = validate::ordered_resource(&verified.order);
    if ordered == offer.resource_name {
        return Ok(());
    }
    Err(Refusal::Resource {
        ordered: ordered.to_string(),
        offer: verified.lease.offer_name.clone(),
        sold: offer.resource_name.clone(),
    })
}

/// The ComputeLease spec for a verified lease under `offer`.
pub fn lease_spec(verified: &VerifiedLease, offer: &GpuOfferSpec) -> ComputeLeaseSpec {
    let (lease, order) = (&verified.lease, &verified.order);
    let workload = order.workload.clone().unwrap_or_default();
    let buyer_signature = lease
        .order
        .as_ref()
        .map(|o| bs58::encode(&o.signature).into_string())
        .unwrap_or_default();
    ComputeLeaseSpec {
        lease_id: lease.lease_id.clone(),
        offer_name: lease.offer_name.clone(),
        buyer_public_key: public_key_base58(&verified.buyer),
        gpus: lease.gpus,
        resource_name: offer.sold_resource(),
        gpu_model: (!order.model.is_empty()).then(|| order.model.clone()),
        duration_seconds: lease.duration_seconds,
        price: Price {
            amount: verified.price.to_decimal_units(),
            denomination: lease.denomination.clone(),
        },
        workload: LeaseWorkload {
            image: workload.image,
            command: workload.command,
            args: workload.args,
            env: workload
                .env
                .into_iter()
                .map(|e| EnvVar {
                    name: e.name,
                    value: e.value,
                })
                .collect(),
            ports: workload
                .ports
                .iter()
                .filter_map(|p| u16::try_from(*p).ok())
                .map(|port| ContainerPort {
                    name: None,
                    container_port: port,
                    protocol: PortProtocol::TCP,
                })
                .collect(),
            cpu: workload.cpu,
            memory: workload.memory,
        },
        signed_order: Some(SignedOrder {
            body: base64::engine::general_purpose::STANDARD.encode(&verified.signed.body),
            buyer_signature,
            network_signature: bs58::encode(&verified.signed.signature).into_string(),
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::identity::generate_key;
    use crate::wire::envelope::{seal, sign_body};

    #[test]
    fn every_refusal_has_a_bounded_kind_and_a_reason_for_the_buyer() {
        let cases: Vec<(Refusal, &str, &str)> = vec![
            (
                Rejection::invalid("lease.gpus", "must be 1 to 64").into(),
                "invalid",
                "lease.gpus: must be 1 to 64",
            ),
            (
                Refusal::NotOffered("a".into()),
                "offer",
                "offer a is not offered by this provider",
            ),
            (Refusal::Paused("a".into()), "offer", "offer a is paused"),
            (
                TermsViolation::TooManyGpus { gpus: 9, max: 8 }.into(),
                "terms",
                "spec.gpus 9 exceeds the offer's lease.maxGpusPerLease 8",
            ),
            (
                Shortfall {
                    offer: "a".into(),
                    gpus: 4,
                    largest_block: 2,
                    pending: 6,
                }
                .into(),
                "capacity",
                "not enough idle GPUs: the lease needs 4 on one node",
            ),
            (
                Refusal::NameTaken("l".into()),
                "conflict",
                "another lease already has the name l",
            ),
            (
                Refusal::Cluster("the provider could not read its leases: x".into()),
                "api",
                "the provider could not read its leases",
            ),
        ];
        for (refusal, kind, reason) in cases {
            assert_eq!(refusal.kind(), kind, "{refusal}");
            assert!(refusal.to_string().starts_with(reason), "{refusal}");
        }
    }
    use crate::wire::proto::{EnvVar as WireEnv, Workload};
    use ed25519_dalek::SigningKey;

    pub(crate) fn order_body() -> OrderBody {
        OrderBody {
            header: None,
            gpus: 2,
            model: "NVIDIA-H100-80GB-HBM3".into(),
            duration_seconds: 600,
            max_price_per_gpu_hour: "3000000000000000000".into(),
            denomination: "USDC".into(),
            region: String::new(),
            attributes: vec![],
            resource_name: String::new(),
            provider: String::new(),
            min_uptime_basis_points: 0,
            wait_until: 0,
            min_trust_tier: String::new(),
            workload: Some(Workload {
                image: "ghcr.io/acme/train:1".into(),
                command: vec!["python".into(), "train.py".into()],
                args: vec![],
                env: vec![WireEnv {
                    name: "EPOCHS".into(),
                    value: "3".into(),
                }],
                cpu: "4".into(),
                memory: "16Gi".into(),
                ports: vec![],
            }),
        }
    }

    pub(crate) struct Parties {
        pub network: SigningKey,
        pub provider: SigningKey,
        pub buyer: SigningKey,
    }

    pub(crate) fn parties() -> Parties {
        Parties {
            network: generate_key(),
            provider: generate_key(),
            buyer: generate_key(),
        }
    }

    pub(crate) fn lease_body(p: &Parties, order: Signed, now: i64) -> LeaseBody {
        LeaseBody {
            lease_id: "abc123".into(),
            provider: p.provider.verifying_key().as_bytes().to_vec(),
            offer_name: "h100-public".into(),
            order: Some(order),
            gpus: 2,
            price_per_gpu_hour: "2500000000000000000".into(),
            denomination: "USDC".into(),
            duration_seconds: 600,
            matched_at: now,
            answer_by: now + 30,
        }
    }

    fn verify(p: &Parties, lease: &LeaseBody, now: i64) -> Result<VerifiedLease, Rejection> {
        let signed = sign_body(&p.network, lease);
        verify_lease(
            &signed,
            &p.network.verifying_key(),
            &p.provider.verifying_key(),
            now,
        )
    }

    #[test]
    fn a_well_formed_lease_verifies_and_becomes_a_spec() {
        let p = parties();
        let order = seal(&p.buyer, order_body(), 1_000);
        let verified = verify(&p, &lease_body(&p, order, 1_001), 1_002).unwrap();
        assert_eq!(verified.buyer, p.buyer.verifying_key());
        let offer: GpuOfferSpec =
            serde_yaml::from_str(include_str!("../../tests/fixtures/offer-spec.yaml")).unwrap();
        let spec = lease_spec(&verified, &offer);
        assert_eq!(spec.lease_id, "abc123");
        assert_eq!(spec.price.amount, "2.5");
        assert_eq!(spec.gpus, 2);
        assert_eq!(spec.workload.env[0].name, "EPOCHS");
        assert_eq!(
            spec.buyer_public_key,
            public_key_base58(&p.buyer.verifying_key())
        );
        let record = spec.signed_order.unwrap();
        let body = base64::engine::general_purpose::STANDARD
            .decode(record.body)
            .unwrap();
        assert_eq!(body, verified.signed.body);
    }

    /// The network matched an order for whole GPUs to an offer of MIG slices (or the other way):
    /// the provider refuses it rather than trust the match.
    #[test]
    fn a_lease_for_other_gpus_than_the_offer_sells_is_refused() {
        let p = parties();
        let mut offer: GpuOfferSpec =
            serde_yaml::from_str(include_str!("../../tests/fixtures/offer-spec.yaml")).unwrap();
        let whole = seal(&p.buyer, order_body(), 1_000);
        let verified = verify(&p, &lease_body(&p, whole, 1_001), 1_002).unwrap();
        assert!(
            check_resource(&verified, &offer).is_ok(),
            "whole GPUs, sold whole"
        );

        offer.resource_name = "nvidia.com/mig-1g.10gb".into();
        let refusal = check_resource(&verified, &offer).unwrap_err();
        assert_eq!(refusal.kind(), "terms");
        assert_eq!(
            refusal.to_string(),
            "the order asks for nvidia.com/gpu; offer h100-public sells nvidia.com/mig-1g.10gb"
        );

        let mut sliced = order_body();
        sliced.resource_name = "nvidia.com/mig-1g.10gb".into();
        let sliced = seal(&p.buyer, sliced, 1_000);
        let verified = verify(&p, &lease_body(&p, sliced, 1_001), 1_002).unwrap();
        assert!(
            check_resource(&verified, &offer).is_ok(),
            "the profile it sells"
        );
    }

    #[test]
    fn each_broken_lease_is_refused_with_its_reason() {
        let p = parties();
        let good_order = seal(&p.buyer, order_body(), 1_000);
        type Edit = Box<dyn Fn(&Parties, &mut LeaseBody)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|_, l| l.gpus = 3),
                "lease.gpus: must equal the order's",
            ),
            (
                Box::new(|_, l| l.duration_seconds = 601),
                "lease.durationSeconds",
            ),
            (
                Box::new(|_, l| l.denomination = "EUR".into()),
                "lease.denomination",
            ),
            (
                Box::new(|_, l| l.price_per_gpu_hour = "4000000000000000000".into()),
                "maxPricePerGpuHour",
            ),
            (Box::new(|_, l| l.answer_by = 1_001), "lease.answerBy"),
            (
                Box::new(|_, l| l.matched_at = 1_100),
                "must match fresh orders",
            ),
            (Box::new(|_, l| l.provider = vec![7; 32]), "not this one"),
            (
                Box::new(|_, l| l.lease_id = "Bad-Id".into()),
                "lease.leaseId",
            ),
            (Box::new(|_, l| l.order = None), "lease.order: is required"),
            (
                Box::new(|p, l| {
                    // Signed by someone other than the buyer named in it.
                    let mut order = order_body();
                    order.header = Some(crate::wire::envelope::header(&p.buyer, 1_000));
                    l.order = Some(sign_body(&p.network, &order));
                }),
                "signature",
            ),
            (
                Box::new(|p, l| {
                    let mut order = order_body();
                    order.gpus = 0;
                    l.order = Some(seal(&p.buyer, order, 1_000));
                }),
                "order.gpus",
            ),
        ];
        for (edit, expected) in cases {
            let mut lease = lease_body(&p, good_order.clone(), 1_000);
            edit(&p, &mut lease);
            let err = verify(&p, &lease, 1_010).unwrap_err();
            assert!(err.to_string().contains(expected), "{expected}: {err}");
        }
        // Signed by a key other than the network's.
        let lease = lease_body(&p, good_order, 1_000);
        let forged = sign_body(&p.buyer, &lease);
        let err = verify_lease(
            &forged,
            &p.network.verifying_key(),
            &p.provider.verifying_key(),
            1_000,
        )
        .unwrap_err();
        assert_eq!(err.kind(), "unauthenticated");
    }
}

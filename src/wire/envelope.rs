//! Signed envelopes (DESIGN §5): `signature = ed25519(domain ‖ 0x00 ‖ body)`, verified over the
//! bytes received before anything in the body is trusted, then checked for freshness.

use ed25519_dalek::{SigningKey, VerifyingKey};
use prost::Message;
use rand_core::{OsRng, RngCore};

use crate::identity;
use crate::wire::Rejection;
use crate::wire::proto::{
    CancelBody, ChallengeBody, DepositBody, EvidenceSubmitBody, HeartbeatBody, LeaseDecisionBody,
    LeaseEndBody, LeaseStreamBody, OfferBody, OrderBody, QueryBody, ReceiptsBody, RegisterBody,
    RequestHeader, SidecarChallengeBody, SidecarEvidenceBody, SidecarReceiptsBody, Signed,
    WithdrawBody,
};

/// Domain-separation prefixes, one per signed body type.
pub mod domain {
    pub const REGISTER: &str = "gpubridge/v1/register";
    pub const OFFER: &str = "gpubridge/v1/offer";
    pub const WITHDRAW: &str = "gpubridge/v1/withdraw";
    pub const HEARTBEAT: &str = "gpubridge/v1/heartbeat";
    pub const LEASE_STREAM: &str = "gpubridge/v1/lease-stream";
    pub const LEASE: &str = "gpubridge/v1/lease";
    pub const LEASE_DECISION: &str = "gpubridge/v1/lease-decision";
    pub const LEASE_END: &str = "gpubridge/v1/lease-end";
    pub const DEPOSIT: &str = "gpubridge/v1/deposit";
    pub const ORDER: &str = "gpubridge/v1/order";
    pub const CANCEL: &str = "gpubridge/v1/cancel";
    pub const QUERY: &str = "gpubridge/v1/query";
    /// A meter receipt, signed by the lease key.
    pub const RECEIPT: &str = "gpubridge/v1/receipt";
    /// Attestation evidence, signed by the lease key.
    pub const EVIDENCE: &str = "gpubridge/v1/evidence";
    /// Provider → network: receipts, challenge queries and evidence it forwards.
    pub const RECEIPTS: &str = "gpubridge/v1/receipts";
    pub const CHALLENGE: &str = "gpubridge/v1/challenge";
    pub const EVIDENCE_SUBMIT: &str = "gpubridge/v1/evidence-submit";
    /// Sidecar → collector, signed by the lease key.
    pub const SIDECAR_RECEIPTS: &str = "gpubridge/v1/sidecar-receipts";
    pub const SIDECAR_CHALLENGE: &str = "gpubridge/v1/sidecar-challenge";
    pub const SIDECAR_EVIDENCE: &str = "gpubridge/v1/sidecar-evidence";
}

/// Largest signed body accepted: an order with a long command and environment fits easily.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How far a request's `issued_at` may be from the receiver's clock.
pub const FRESHNESS_SECONDS: i64 = 60;

/// Request bodies that carry a [`RequestHeader`].
pub trait HasHeader {
    fn header(&self) -> Option<&RequestHeader>;
    fn header_mut(&mut self) -> &mut Option<RequestHeader>;
}

macro_rules! has_header {
    ($($body:ty),* $(,)?) => {$(
        impl HasHeader for $body {
            fn header(&self) -> Option<&RequestHeader> { self.header.as_ref() }
            fn header_mut(&mut self) -> &mut Option<RequestHeader> { &mut self.header }
        }
    )*};
}
has_header!(
    RegisterBody,
    OfferBody,
    WithdrawBody,
    HeartbeatBody,
    LeaseStreamBody,
    LeaseDecisionBody,
    LeaseEndBody,
    DepositBody,
    OrderBody,
    CancelBody,
    QueryBody,
    ReceiptsBody,
    ChallengeBody,
    EvidenceSubmitBody,
    SidecarReceiptsBody,
    SidecarChallengeBody,
    SidecarEvidenceBody,
);

/// A verified request: the body, its signer, and the envelope it came in.
#[derive(Debug, Clone)]
pub struct Opened<M> {
    pub body: M,
    pub signer: VerifyingKey,
    pub issued_at: i64,
    pub nonce: Vec<u8>,
}

/// A fresh header for `key`.
pub fn header(key: &SigningKey, now: i64) -> RequestHeader {
    let mut nonce = vec![0u8; 16];
    OsRng.fill_bytes(&mut nonce);
    RequestHeader {
        signer: key.verifying_key().as_bytes().to_vec(),
        issued_at: now,
        nonce,
    }
}

/// Stamps `body` with a fresh header and signs it for `domain`.
pub fn seal<M: Message + HasHeader>(
    key: &SigningKey,
    domain: &str,
    mut body: M,
    now: i64,
) -> Signed {
    *body.header_mut() = Some(header(key, now));
    sign_body(key, domain, &body)
}

/// Signs an already complete body (one without a request header, such as a lease).
pub fn sign_body<M: Message>(key: &SigningKey, domain: &str, body: &M) -> Signed {
    let body = body.encode_to_vec();
    let signature = identity::sign(key, domain, &body).to_bytes().to_vec();
    Signed { body, signature }
}

/// Largest body of a request that carries many signed items: a batch of receipts, or evidence
/// with each GPU's attestation report and certificate chain.
pub const MAX_BATCH_BODY_BYTES: usize = 192 * 1024;

/// The body size limit of `domain`.
pub fn body_limit(domain: &str) -> usize {
    match domain {
        domain::RECEIPTS
        | domain::EVIDENCE_SUBMIT
        | domain::SIDECAR_RECEIPTS
        | domain::SIDECAR_EVIDENCE => MAX_BATCH_BODY_BYTES,
        _ => MAX_BODY_BYTES,
    }
}

/// Size and signature shape checks, before any decoding.
fn check_envelope(signed: &Signed, domain: &str) -> Result<(), Rejection> {
    let limit = body_limit(domain);
    if signed.body.len() > limit {
        return Err(Rejection::TooLarge(format!(
            "body: {} bytes is over the limit of {limit}",
            signed.body.len()
        )));
    }
    if signed.signature.len() != 64 {
        return Err(Rejection::invalid(
            "signature",
            "must be 64 bytes of ed25519 signature",
        ));
    }
    Ok(())
}

/// Verifies and decodes a signed request: its size, its signer's signature over the received
/// bytes, and its freshness. Replay (the nonce) is the receiver's to check against what it
/// has seen.
pub fn open<M: Message + Default + HasHeader>(
    signed: &Signed,
    domain: &str,
    now: i64,
) -> Result<Opened<M>, Rejection> {
    check_envelope(signed, domain)?;
    let body = M::decode(signed.body.as_slice())
        .map_err(|e| Rejection::invalid("body", &format!("is not a valid message: {e}")))?;
    let header = body
        .header()
        .ok_or_else(|| Rejection::invalid("header", "is required"))?;
    let signer = verifying_key("header.signer", &header.signer)?;
    identity::verify(&signer, domain, &signed.body, &signed.signature)
        .map_err(|e| Rejection::Unauthenticated(format!("signature: {e} (domain {domain})")))?;
    if !(16..=32).contains(&header.nonce.len()) {
        return Err(Rejection::invalid("header.nonce", "must be 16 to 32 bytes"));
    }
    if (header.issued_at - now).abs() > FRESHNESS_SECONDS {
        return Err(Rejection::Precondition(format!(
            "header.issued_at: {} is more than {FRESHNESS_SECONDS} s from the receiver's clock ({now})",
            header.issued_at
        )));
    }
    let (issued_at, nonce) = (header.issued_at, header.nonce.clone());
    Ok(Opened {
        body,
        signer,
        issued_at,
        nonce,
    })
}

/// Verifies a body signed by a known key (a lease by the network, an order by its buyer) and
/// decodes it.
pub fn open_from<M: Message + Default>(
    signed: &Signed,
    domain: &str,
    key: &VerifyingKey,
) -> Result<M, Rejection> {
    check_envelope(signed, domain)?;
    identity::verify(key, domain, &signed.body, &signed.signature)
        .map_err(|e| Rejection::Unauthenticated(format!("signature: {e} (domain {domain})")))?;
    M::decode(signed.body.as_slice())
        .map_err(|e| Rejection::invalid("body", &format!("is not a valid message: {e}")))
}

/// Decodes a 32-byte ed25519 public key field.
pub fn verifying_key(field: &str, bytes: &[u8]) -> Result<VerifyingKey, Rejection> {
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| Rejection::invalid(field, "must be a 32-byte ed25519 public key"))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|_| Rejection::invalid(field, "is not a valid ed25519 public key"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::generate_key;

    #[test]
    fn sealed_bodies_open_and_tampering_is_caught() {
        let key = generate_key();
        let sealed = seal(&key, domain::HEARTBEAT, HeartbeatBody::default(), 1_000);
        let opened: Opened<HeartbeatBody> = open(&sealed, domain::HEARTBEAT, 1_010).unwrap();
        assert_eq!(opened.signer, key.verifying_key());
        assert_eq!(opened.nonce.len(), 16);

        let wrong_domain = open::<HeartbeatBody>(&sealed, domain::QUERY, 1_000).unwrap_err();
        assert_eq!(wrong_domain.kind(), "unauthenticated");

        let mut flipped = sealed.clone();
        *flipped.body.last_mut().unwrap() ^= 1;
        assert!(open::<HeartbeatBody>(&flipped, domain::HEARTBEAT, 1_000).is_err());

        let stale = open::<HeartbeatBody>(&sealed, domain::HEARTBEAT, 1_061).unwrap_err();
        assert!(stale.to_string().contains("header.issued_at"), "{stale}");

        let mut short = sealed.clone();
        short.signature.truncate(10);
        assert_eq!(
            open::<HeartbeatBody>(&short, domain::HEARTBEAT, 1_000).unwrap_err(),
            Rejection::invalid("signature", "must be 64 bytes of ed25519 signature")
        );
        let big = Signed {
            body: vec![0; MAX_BODY_BYTES + 1],
            signature: vec![0; 64],
        };
        assert_eq!(
            open::<HeartbeatBody>(&big, domain::HEARTBEAT, 0)
                .unwrap_err()
                .kind(),
            "too_large"
        );
    }
}

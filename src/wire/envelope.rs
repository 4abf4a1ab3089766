//! Signed envelopes (DESIGN §5): `signature = ed25519(domain ‖ 0x00 ‖ body)`, verified over the
//! bytes received before anything in the body is trusted, then checked for freshness.

use ed25519_dalek::{SigningKey, VerifyingKey};
use prost::Message;
use rand_core::{OsRng, RngCore};

use crate::identity;
use crate::wire::Rejection;
use crate::wire::proto::{
    AccessTokenBody, AttachBody, BondBody, CancelBody, ChallengeBody, DepositBody, Evidence,
    EvidenceSubmitBody, HeartbeatBody, LeaseBody, LeaseDecisionBody, LeaseEndBody, LeaseStreamBody,
    OfferBody, OrderBody, ProbeBody, ProposeBody, QueryBody, Receipt, ReceiptsBody, RegisterBody,
    RelayCallsBody, RequestHeader, RimBody, SidecarAccessBody, SidecarChallengeBody,
    SidecarEvidenceBody, SidecarProbeBody, SidecarReceiptsBody, Signed, UnbondBody, VoteBody,
    WithdrawBody,
};

/// Largest signed body accepted: an order with a long command and environment fits easily.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest body of a request that carries many signed items: a batch of receipts, or evidence
/// with each GPU's attestation report and certificate chain.
pub const MAX_BATCH_BODY_BYTES: usize = 192 * 1024;
/// How far a request's `issued_at` may be from the receiver's clock.
pub const FRESHNESS_SECONDS: i64 = 60;

/// A body that travels signed. Its domain-separation prefix and its size limit belong to its
/// type, so a body can only be signed and opened under its own domain: bytes signed as one type
/// never verify as another.
pub trait Signable: Message {
    const DOMAIN: &'static str;
    const MAX_BYTES: usize = MAX_BODY_BYTES;
}

macro_rules! signable {
    ($($body:ty => $domain:literal $(, $max:expr)?;)*) => {
        $(impl Signable for $body {
            const DOMAIN: &'static str = $domain;
            $(const MAX_BYTES: usize = $max;)?
        })*

        /// Every signed body type's domain, for the test that they are distinct.
        #[cfg(test)]
        const DOMAINS: &[&str] = &[$($domain),*];
    };
}
signable! {
    RegisterBody => "gpubridge/v1/register";
    OfferBody => "gpubridge/v1/offer";
    WithdrawBody => "gpubridge/v1/withdraw";
    HeartbeatBody => "gpubridge/v1/heartbeat";
    LeaseStreamBody => "gpubridge/v1/lease-stream";
    // Signed by the network; the operator opens it with the network's key.
    LeaseBody => "gpubridge/v1/lease";
    LeaseDecisionBody => "gpubridge/v1/lease-decision";
    LeaseEndBody => "gpubridge/v1/lease-end";
    DepositBody => "gpubridge/v1/deposit";
    OrderBody => "gpubridge/v1/order";
    CancelBody => "gpubridge/v1/cancel";
    QueryBody => "gpubridge/v1/query";
    BondBody => "gpubridge/v1/bond";
    ProposeBody => "gpubridge/v1/propose";
    VoteBody => "gpubridge/v1/vote";
    UnbondBody => "gpubridge/v1/unbond";
    // A meter receipt and attestation evidence, signed by the lease key.
    Receipt => "gpubridge/v1/receipt";
    Evidence => "gpubridge/v1/evidence", MAX_BATCH_BODY_BYTES;
    // Provider → network: receipts, challenge queries and evidence it forwards.
    ReceiptsBody => "gpubridge/v1/receipts", MAX_BATCH_BODY_BYTES;
    ChallengeBody => "gpubridge/v1/challenge";
    EvidenceSubmitBody => "gpubridge/v1/evidence-submit", MAX_BATCH_BODY_BYTES;
    ProbeBody => "gpubridge/v1/probe", MAX_BATCH_BODY_BYTES;
    // Anyone → network: one of NVIDIA's manifests, up to 128 KiB.
    RimBody => "gpubridge/v1/rim", MAX_BATCH_BODY_BYTES;
    // Sidecar → collector, signed by the lease key.
    SidecarReceiptsBody => "gpubridge/v1/sidecar-receipts", MAX_BATCH_BODY_BYTES;
    SidecarChallengeBody => "gpubridge/v1/sidecar-challenge";
    SidecarEvidenceBody => "gpubridge/v1/sidecar-evidence", MAX_BATCH_BODY_BYTES;
    SidecarProbeBody => "gpubridge/v1/sidecar-probe", MAX_BATCH_BODY_BYTES;
    SidecarAccessBody => "gpubridge/v1/sidecar-access";
    // Buyer access (relay.proto): the buyer's token, the provider's relay streams.
    AccessTokenBody => "gpubridge/v1/access-token";
    RelayCallsBody => "gpubridge/v1/relay-calls";
    AttachBody => "gpubridge/v1/relay-attach";
}

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
    BondBody,
    UnbondBody,
    ProposeBody,
    VoteBody,
    ReceiptsBody,
    ChallengeBody,
    EvidenceSubmitBody,
    ProbeBody,
    RimBody,
    SidecarReceiptsBody,
    SidecarChallengeBody,
    SidecarEvidenceBody,
    SidecarProbeBody,
    SidecarAccessBody,
    AccessTokenBody,
    RelayCallsBody,
    AttachBody,
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

/// Stamps `body` with a fresh header and signs it under its type's domain.
pub fn seal<M: Signable + HasHeader>(key: &SigningKey, mut body: M, now: i64) -> Signed {
    *body.header_mut() = Some(header(key, now));
    sign_body(key, &body)
}

/// Signs an already complete body (one without a request header, such as a lease) under its
/// type's domain.
pub fn sign_body<M: Signable>(key: &SigningKey, body: &M) -> Signed {
    let body = body.encode_to_vec();
    let signature = identity::sign(key, M::DOMAIN, &body).to_bytes().to_vec();
    Signed { body, signature }
}

/// Size and signature shape checks, before any decoding.
fn check_envelope<M: Signable>(signed: &Signed) -> Result<(), Rejection> {
    let limit = M::MAX_BYTES;
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
pub fn open<M: Signable + Default + HasHeader>(
    signed: &Signed,
    now: i64,
) -> Result<Opened<M>, Rejection> {
    open_checking::<M>(signed, now, true)
}

/// [`open`] without the signature check, for bytes this process opened before: CometBFT
/// rechecks every transaction left in its mempool after each block, and only freshness can
/// have changed since.
pub fn reopen<M: Signable + Default + HasHeader>(
    signed: &Signed,
    now: i64,
) -> Result<Opened<M>, Rejection> {
    open_checking::<M>(signed, now, false)
}

fn open_checking<M: Signable + Default + HasHeader>(
    signed: &Signed,
    now: i64,
    verify: bool,
) -> Result<Opened<M>, Rejection> {
    let opened = open_at_any_time::<M>(signed, verify)?;
    if (opened.issued_at - now).abs() > FRESHNESS_SECONDS {
        return Err(Rejection::Precondition(format!(
            "header.issued_at: {} is more than {FRESHNESS_SECONDS} s from the receiver's clock ({now})",
            opened.issued_at
        )));
    }
    Ok(opened)
}

/// [`open`] without the freshness check, for a body that states its own validity (an access
/// token's expiry), which the caller checks.
pub fn open_signed<M: Signable + Default + HasHeader>(
    signed: &Signed,
) -> Result<Opened<M>, Rejection> {
    open_at_any_time::<M>(signed, true)
}

fn open_at_any_time<M: Signable + Default + HasHeader>(
    signed: &Signed,
    verify: bool,
) -> Result<Opened<M>, Rejection> {
    check_envelope::<M>(signed)?;
    let body = M::decode(signed.body.as_slice())
        .map_err(|e| Rejection::invalid("body", &format!("is not a valid message: {e}")))?;
    let header = body
        .header()
        .ok_or_else(|| Rejection::invalid("header", "is required"))?;
    let signer = verifying_key("header.signer", &header.signer)?;
    if verify {
        verify_signature::<M>(signed, &signer)?;
    }
    if !(16..=32).contains(&header.nonce.len()) {
        return Err(Rejection::invalid("header.nonce", "must be 16 to 32 bytes"));
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
pub fn open_from<M: Signable + Default>(
    signed: &Signed,
    key: &VerifyingKey,
) -> Result<M, Rejection> {
    check_envelope::<M>(signed)?;
    verify_signature::<M>(signed, key)?;
    M::decode(signed.body.as_slice())
        .map_err(|e| Rejection::invalid("body", &format!("is not a valid message: {e}")))
}

fn verify_signature<M: Signable>(signed: &Signed, key: &VerifyingKey) -> Result<(), Rejection> {
    let memo = Verified::digest(M::DOMAIN, key, signed);
    if VERIFIED.lock().expect("the memo's lock").contains(&memo) {
        return Ok(());
    }
    identity::verify(key, M::DOMAIN, &signed.body, &signed.signature).map_err(|e| {
        Rejection::Unauthenticated(format!("signature: {e} (domain {})", M::DOMAIN))
    })?;
    VERIFIED.lock().expect("the memo's lock").insert(memo);
    Ok(())
}

/// Signatures this process verified, by digest of what was verified: the same bytes verify
/// the same way every time, so a validator that verified a transaction when it entered its
/// mempool does not verify it again when the transaction's block is applied (nor when the
/// gateway that received it opened it first). Only successes are kept, at most
/// [`Verified::CAPACITY`], the oldest forgotten first; a forgotten one is verified again.
static VERIFIED: std::sync::Mutex<Verified> = std::sync::Mutex::new(Verified {
    kept: std::collections::BTreeSet::new(),
    order: std::collections::VecDeque::new(),
});

struct Verified {
    kept: std::collections::BTreeSet<[u8; 32]>,
    order: std::collections::VecDeque<[u8; 32]>,
}

impl Verified {
    const CAPACITY: usize = 1 << 16;

    /// SHA-256 over the domain, the key, the signature and the body: what a verification
    /// depends on, and nothing else.
    fn digest(domain: &str, key: &VerifyingKey, signed: &Signed) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        Sha256::new()
            .chain_update(domain.as_bytes())
            .chain_update([0])
            .chain_update(key.as_bytes())
            .chain_update(&signed.signature)
            .chain_update(&signed.body)
            .finalize()
            .into()
    }

    fn contains(&self, digest: &[u8; 32]) -> bool {
        self.kept.contains(digest)
    }

    fn insert(&mut self, digest: [u8; 32]) {
        if self.kept.insert(digest) {
            self.order.push_back(digest);
        }
        while self.order.len() > Verified::CAPACITY {
            if let Some(oldest) = self.order.pop_front() {
                self.kept.remove(&oldest);
            }
        }
    }
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
    fn a_signature_verified_once_is_remembered_and_nothing_else_rides_on_it() {
        let key = generate_key();
        let sealed = seal(&key, HeartbeatBody::default(), 1_000);
        // Verified, then opened again: the second time from the memo, with the same answer.
        for _ in 0..2 {
            assert!(open::<HeartbeatBody>(&sealed, 1_000).is_ok());
        }
        let digest = Verified::digest(HeartbeatBody::DOMAIN, &key.verifying_key(), &sealed);
        assert!(VERIFIED.lock().unwrap().contains(&digest));
        // The remembered body under another signature, key or domain is verified for real.
        let mut forged = sealed.clone();
        forged.signature[0] ^= 1;
        assert_eq!(
            open::<HeartbeatBody>(&forged, 1_000).unwrap_err().kind(),
            "unauthenticated"
        );
        let other = generate_key();
        assert!(verify_signature::<HeartbeatBody>(&sealed, &other.verifying_key()).is_err());
        assert!(verify_signature::<QueryBody>(&sealed, &key.verifying_key()).is_err());
    }

    #[test]
    fn the_memo_forgets_its_oldest_past_its_capacity() {
        let mut memo = Verified {
            kept: Default::default(),
            order: Default::default(),
        };
        for i in 0..=Verified::CAPACITY as u32 {
            let mut digest = [0; 32];
            digest[..4].copy_from_slice(&i.to_be_bytes());
            memo.insert(digest);
        }
        assert_eq!(memo.kept.len(), Verified::CAPACITY);
        assert!(!memo.contains(&[0; 32]), "the oldest is forgotten");
        let mut newest = [0; 32];
        newest[..4].copy_from_slice(&(Verified::CAPACITY as u32).to_be_bytes());
        assert!(memo.contains(&newest));
    }

    #[test]
    fn sealed_bodies_open_and_tampering_is_caught() {
        let key = generate_key();
        let sealed = seal(&key, HeartbeatBody::default(), 1_000);
        let opened: Opened<HeartbeatBody> = open(&sealed, 1_010).unwrap();
        assert_eq!(opened.signer, key.verifying_key());
        assert_eq!(opened.nonce.len(), 16);

        // The same bytes opened as another type are checked under that type's domain. Both
        // bodies decode from them (header only), so only the domain tells them apart.
        let wrong_domain = open::<QueryBody>(&sealed, 1_000).unwrap_err();
        assert_eq!(wrong_domain.kind(), "unauthenticated");
        assert!(
            wrong_domain.to_string().contains(QueryBody::DOMAIN),
            "{wrong_domain}"
        );

        let mut flipped = sealed.clone();
        *flipped.body.last_mut().unwrap() ^= 1;
        assert!(open::<HeartbeatBody>(&flipped, 1_000).is_err());

        let stale = open::<HeartbeatBody>(&sealed, 1_061).unwrap_err();
        assert!(stale.to_string().contains("header.issued_at"), "{stale}");

        let mut short = sealed.clone();
        short.signature.truncate(10);
        assert_eq!(
            open::<HeartbeatBody>(&short, 1_000).unwrap_err(),
            Rejection::invalid("signature", "must be 64 bytes of ed25519 signature")
        );
        let big = Signed {
            body: vec![0; MAX_BODY_BYTES + 1],
            signature: vec![0; 64],
        };
        assert_eq!(
            open::<HeartbeatBody>(&big, 0).unwrap_err().kind(),
            "too_large"
        );
        // A batch type's limit is its own.
        let batch = Signed {
            body: vec![0; MAX_BODY_BYTES + 1],
            signature: vec![0; 64],
        };
        assert_ne!(
            open::<ReceiptsBody>(&batch, 0).unwrap_err().kind(),
            "too_large"
        );
    }

    #[test]
    fn every_body_type_signs_under_a_domain_of_its_own() {
        let mut seen = std::collections::BTreeSet::new();
        for domain in DOMAINS {
            assert!(domain.starts_with("gpubridge/v1/"), "{domain}");
            assert!(seen.insert(domain), "{domain} is used twice");
        }
        assert!(!seen.contains(&crate::identity::domain::LEASE_CERTIFICATE));
    }
}

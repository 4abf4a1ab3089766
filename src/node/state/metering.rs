//! A running lease's receipts and attestation challenges.

use sha2::{Digest, Sha256};

use crate::attestation::nvidia::PinnedRoot;
use crate::attestation::{EvidenceRejection, TrustTier, attest, check_ocsp, verify_evidence};
use crate::identity::{public_key_base58, public_key_from_base58, verify_lease_certificate};
use crate::metering::chain::MAX_RECEIPTS_PER_BATCH;
use crate::metering::{LeaseTerms, ReceiptRejection, Step, check_next, metering_start};
use crate::node::ledger::{self, Account};
use crate::node::records::{AttestationRecord, ChallengeRecord, LeaseRecord, OrderRecord};
use crate::node::transitions;
use crate::wire::envelope::open;
use crate::wire::proto::{
    ChallengeBody, ChallengeReply, EvidenceReply, EvidenceSubmitBody,
    ReceiptRejection as WireRejection, ReceiptsBody, ReceiptsReply, Signed,
};
use crate::wire::{Opened, Rejection, validate};

use super::params::Params;
use super::probe::{metered_until, probe_reply};
use super::{Block, FORKS, LEASES, ORDERS, PROVIDERS, RECEIPTS, Result, State, StateError};

/// The root every GPU's device certificate chain must end in, parsed once.
static NVIDIA_ROOT: std::sync::LazyLock<PinnedRoot> =
    std::sync::LazyLock::new(PinnedRoot::nvidia_device);

/// Evidence refusals as protocol errors; the kind leads the message so a forwarder can tell.
fn evidence_rejection(e: EvidenceRejection) -> StateError {
    let message = format!("{}: {e}", e.kind());
    match e {
        EvidenceRejection::BadSignature => Rejection::Unauthenticated(message),
        EvidenceRejection::WrongLease { .. } | EvidenceRejection::WrongPlacement { .. } => {
            Rejection::PermissionDenied(message)
        }
        EvidenceRejection::ReplayedNonce => Rejection::Duplicate(message),
        EvidenceRejection::WrongNonce | EvidenceRejection::Stale { .. } => {
            Rejection::Precondition(message)
        }
        EvidenceRejection::Malformed(_) => Rejection::invalid("evidence", &message),
    }
    .into()
}

/// The image digest a provider reports with evidence: empty (the container has not started),
/// or a content digest as the kubelet names it, `[repository@]sha256:` and 64 hex digits.
fn checked_image_digest(reported: &str) -> Result<String> {
    let digest = reported.rsplit('@').next().unwrap_or_default();
    let well_formed = digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    let plain = !reported
        .chars()
        .any(|c| c.is_whitespace() || c.is_control());
    if reported.is_empty() || (well_formed && plain && reported.len() <= validate::MAX_IMAGE_CHARS)
    {
        Ok(reported.to_string())
    } else {
        Err(Rejection::invalid(
            "evidence.imageDigest",
            "must be empty or [repository@]sha256: and 64 hex digits, as the pod status names it",
        )
        .into())
    }
}

/// Where a lease's receipts stand, as the network answers.
fn receipts_reply(lease: &LeaseRecord, rejection: Option<ReceiptRejection>) -> ReceiptsReply {
    ReceiptsReply {
        accepted_through: lease.chain.sequence,
        head_hash: lease.chain.hash.clone(),
        metered_through_ms: lease.chain.window_end_ms.unwrap_or(0),
        allocated_gpu_millis: lease.totals.allocated_gpu_millis,
        energy_millijoules: lease.totals.energy_millijoules,
        utilization_percent: lease.totals.utilization_percent(),
        charged: lease.charged.to_string(),
        final_received: lease.chain.final_received,
        access: Some(lease.totals.access.into()),
        rejection: rejection.map(|r| WireRejection {
            sequence: r.sequence(),
            kind: r.kind().to_string(),
            message: r.to_string(),
        }),
    }
}

fn receipt_key(lease_id: &str, sequence: u64) -> String {
    format!("{lease_id}/{sequence:020}")
}

/// The lease's certificate, checked against the provider that owns the lease and against the
/// lease key its first accepted certificate pinned (pinned here when none was): a provider holds
/// its own key, so it could certify a second lease key and sign a second history with it.
pub(super) fn lease_terms(
    lease: &mut LeaseRecord,
    certificate: &[u8],
    now: i64,
    params: &Params,
) -> Result<LeaseTerms> {
    let provider = public_key_from_base58(&lease.provider)
        .map_err(|e| StateError::Inconsistent(format!("stored provider key: {e}")))?;
    let cert = verify_lease_certificate(certificate, &provider, now)
        .map_err(|e| Rejection::Unauthenticated(format!("certificate: {e}")))?;
    if cert.lease_id != lease.lease_id {
        return Err(Rejection::PermissionDenied(format!(
            "certificate: issued for lease {}, not {}",
            cert.lease_id, lease.lease_id
        ))
        .into());
    }
    let lease_key = ed25519_dalek::VerifyingKey::try_from(cert.lease_public_key.as_slice())
        .map_err(|e| Rejection::invalid("certificate.leasePublicKey", &e.to_string()))?;
    match &lease.lease_key {
        None => lease.lease_key = Some(cert.lease_public_key.clone()),
        Some(pinned) if *pinned == cert.lease_public_key => {}
        Some(_) => {
            return Err(Rejection::PermissionDenied(format!(
                "certificate.leasePublicKey: lease {} is metered under the key its first accepted certificate named; a certificate for another key is refused",
                lease.lease_id
            ))
            .into());
        }
    }
    Ok(LeaseTerms {
        lease_id: lease.lease_id.clone(),
        gpus: lease.gpus,
        lease_key,
        metering_from_ms: metering_start(
            lease.probe.as_ref().and_then(|p| p.passed_at),
            lease.hardware_attested_since,
        ),
        metering_until_ms: metered_until(lease, params),
    })
}

impl State {
    /// A new attestation challenge for `lease_id`: 32 bytes nobody knew before the block,
    /// derived from its entropy so that every replica draws the same.
    pub(super) fn fresh_challenge(block: &Block, lease_id: &str) -> ChallengeRecord {
        let mut hasher = Sha256::new();
        hasher.update(b"gpubridge/v1/challenge-nonce\0");
        hasher.update(block.entropy);
        hasher.update(lease_id.as_bytes());
        ChallengeRecord {
            nonce: hasher.finalize().to_vec(),
            issued_at: block.time,
            answered: false,
        }
    }

    /// Verifies and settles a batch of receipts (DESIGN §6): each accepted receipt pays the
    /// provider what the lease's cumulative allocated time is worth, less what was paid before,
    /// so the payments add up to exactly ⌊Σ GPU-ms × price / 3 600 000⌋ whatever the batching.
    /// A refused receipt stops the batch; those before it stay accepted.
    pub(super) fn submit_receipts(
        &mut self,
        signed: &Signed,
        block: &Block,
    ) -> Result<ReceiptsReply> {
        let now = block.time;
        let opened: Opened<ReceiptsBody> = open(signed, now)?;
        let body = &opened.body;
        validate::object_id("receipts.leaseId", &body.lease_id)?;
        if body.receipts.is_empty() || body.receipts.len() > MAX_RECEIPTS_PER_BATCH {
            return Err(Rejection::invalid(
                "receipts.receipts",
                &format!("must hold 1 to {MAX_RECEIPTS_PER_BATCH} receipts"),
            )
            .into());
        }
        let provider = public_key_base58(&opened.signer);
        self.consume_nonce(&opened)?;
        let mut lease = self.owned_lease(&body.lease_id, &provider)?;
        let terms = lease_terms(&mut lease, &body.certificate, now, &self.params()?)?;
        let mut order: OrderRecord = self.order_of(&lease)?;
        let (held, price) = (order.held, lease.price);
        let mut rejection = None;
        for receipt in &body.receipts {
            let step = check_next(&terms, &lease.chain, receipt, now.saturating_mul(1000));
            match step {
                Ok(Step::Earlier { sequence, hash }) => {
                    let stored: Option<String> =
                        self.get(RECEIPTS, &receipt_key(&lease.lease_id, sequence))?;
                    if stored != Some(hex::encode(hash)) {
                        if let Some(accepted) = stored {
                            self.slash_fork(block, &lease, sequence, &accepted, hash)?;
                        }
                        rejection = Some(ReceiptRejection::Fork { sequence });
                        break;
                    }
                }
                Ok(Step::Next { .. }) if !transitions::meters(lease.state) => {
                    rejection = Some(ReceiptRejection::LeaseClosed {
                        sequence: lease.chain.sequence + 1,
                        state: transitions::name(lease.state),
                    });
                    break;
                }
                Ok(Step::Next { receipt, hash }) => {
                    self.put(
                        RECEIPTS,
                        &receipt_key(&lease.lease_id, receipt.sequence),
                        &hex::encode(hash),
                    )?;
                    lease.chain = lease.chain.advance(&receipt, hash);
                    lease.totals.add(&receipt);
                    let owed = ledger::charge_for(held, price, lease.totals.allocated_gpu_millis)?;
                    let paid = lease.charged;
                    self.post(
                        block,
                        (
                            Account::Escrow(order.order_id.clone()),
                            Account::Provider(provider.clone()),
                        ),
                        owed.checked_sub(paid.min(owed), "a charge")?,
                        &order.denomination,
                        format!("charge {} receipt {}", order.order_id, receipt.sequence),
                    )?;
                    lease.charged = owed.max(paid);
                }
                Err(e) => {
                    rejection = Some(e);
                    break;
                }
            }
        }
        self.put_lease(&lease)?;
        if order.charged != lease.charged && transitions::meters(lease.state) {
            order.charged = lease.charged;
            order.updated_at = now;
            self.put(ORDERS, &order.order_id, &order)?;
        }
        Ok(receipts_reply(&lease, rejection))
    }

    /// A second receipt signed by a lease's key for a sequence whose receipt was accepted: the
    /// key signed two histories of one lease, which no honest meter does (it re-sends what it
    /// logged). The provider is slashed to the buyer, once per forked sequence.
    fn slash_fork(
        &mut self,
        block: &Block,
        lease: &LeaseRecord,
        sequence: u64,
        accepted: &str,
        second: [u8; 32],
    ) -> Result<()> {
        let key = receipt_key(&lease.lease_id, sequence);
        if self.get::<String>(FORKS, &key)?.is_some() {
            return Ok(());
        }
        let second = hex::encode(second);
        self.put(FORKS, &key, &second)?;
        let evidence = format!(
            "receipt {sequence} signed twice by the lease key: {accepted} accepted, then {second}"
        );
        self.slash(block, lease, "fork", evidence).map(drop)
    }

    /// The lease's outstanding attestation challenge, asked by its provider.
    pub fn lease_challenge(&self, signed: &Signed, now: i64) -> Result<ChallengeReply> {
        let opened: Opened<ChallengeBody> = open(signed, now)?;
        validate::object_id("challenge.leaseId", &opened.body.lease_id)?;
        let provider = public_key_base58(&opened.signer);
        let lease: LeaseRecord = self.get(LEASES, &opened.body.lease_id)?.ok_or_else(|| {
            Rejection::NotFound(format!("lease {} does not exist", opened.body.lease_id))
        })?;
        if lease.provider != provider {
            return Err(Rejection::PermissionDenied(format!(
                "lease {} belongs to another provider",
                lease.lease_id
            ))
            .into());
        }
        match &lease.challenge {
            Some(c) if transitions::meters(lease.state) => Ok(ChallengeReply {
                nonce: c.nonce.clone(),
                issued_at: c.issued_at,
                answered: c.answered,
                probe: lease.probe.as_ref().map(probe_reply),
                reprobe: lease.reprobe.as_ref().map(probe_reply),
            }),
            _ => Err(Rejection::Precondition(format!(
                "lease {} is {} and is not challenged",
                lease.lease_id,
                transitions::name(lease.state)
            ))
            .into()),
        }
    }

    /// Accepts evidence that answers the lease's outstanding challenge, once.
    pub(super) fn submit_evidence(
        &mut self,
        signed: &Signed,
        block: &Block,
    ) -> Result<EvidenceReply> {
        let now = block.time;
        let opened: Opened<EvidenceSubmitBody> = open(signed, now)?;
        let body = &opened.body;
        validate::object_id("evidence.leaseId", &body.lease_id)?;
        let evidence = body
            .evidence
            .as_ref()
            .ok_or_else(|| Rejection::invalid("evidence.evidence", "is required"))?;
        let image_digest = checked_image_digest(&body.image_digest)?;
        let provider = public_key_base58(&opened.signer);
        self.consume_nonce(&opened)?;
        let mut lease = self.owned_lease(&body.lease_id, &provider)?;
        let terms = lease_terms(&mut lease, &body.certificate, now, &self.params()?)?;
        let verified = verify_evidence(&terms.lease_key, &lease.lease_id, evidence, now)
            .map_err(evidence_rejection)?;
        check_ocsp(&verified.evidence, &body.ocsp).map_err(evidence_rejection)?;
        let challenge = lease
            .challenge
            .as_mut()
            .filter(|_| transitions::meters(lease.state))
            .ok_or_else(|| {
                Rejection::Precondition(format!("lease {} is not challenged", body.lease_id))
            })?;
        if challenge.nonce != verified.evidence.nonce {
            return Err(evidence_rejection(EvidenceRejection::WrongNonce));
        }
        if challenge.answered {
            return Err(evidence_rejection(EvidenceRejection::ReplayedNonce));
        }
        challenge.answered = true;
        // The challenge answered: now the CC evidence, against NVIDIA's root, the OCSP responses
        // supplied and the manifests held, at block time.
        let attestation = attest(
            &verified.evidence,
            &body.ocsp,
            &NVIDIA_ROOT,
            &self.manifests()?,
            now,
        );
        let record = AttestationRecord {
            trust_tier: attestation.tier.as_str().to_string(),
            detail: attestation.detail,
            image_digest,
            digest: verified.digest.to_vec(),
            verified_at: now,
        };
        lease.attestation = Some(record.clone());
        if attestation.tier == TrustTier::HardwareAttested {
            lease.hardware_attested_since.get_or_insert(now);
        }
        self.put_lease(&lease)?;
        // The offer book shows, and orders may ask for, the tier the provider's last lease
        // reached: earned again with every challenge, lost with the first that falls short.
        let mut registered = self.registered(&provider)?;
        registered.trust_tier = lease.tier();
        self.put(PROVIDERS, &provider, &registered)?;
        Ok(EvidenceReply {
            trust_tier: registered.trust_tier.as_str().to_string(),
            digest: record.digest,
            verified_at: now,
            detail: record.detail,
            image_digest: record.image_digest,
            hardware_attested_since: lease.hardware_attested_since.unwrap_or(0),
        })
    }
}

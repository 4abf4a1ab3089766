//! Building, sealing and verifying evidence. Pure, shared by the attest sidecar, the collector
//! and the network node.

use ed25519_dalek::VerifyingKey;
use prost::Message;

use crate::gpu::{DeviceInfo, HardwareAttestation};
use crate::identity;
use crate::metering::digest;
use crate::wire::envelope::{FRESHNESS_SECONDS, Signable};
use crate::wire::proto::{Evidence, GpuIdentity, Signed};

const MAX_GPUS: usize = 64;
const MAX_TEXT_CHARS: usize = 256;
/// NVML's attestation report is at most 8 KiB and its certificate chain at most 5 KiB.
const MAX_REPORT_BYTES: usize = 16 * 1024;

/// How much a buyer can trust where the lease runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrustTier {
    /// Every GPU is in confidential-computing mode and its report and chain are included.
    HardwareAttested,
    /// The provider's own word, signed with the lease key.
    SelfReported,
}

impl TrustTier {
    pub fn as_str(self) -> &'static str {
        match self {
            TrustTier::HardwareAttested => "hardware-attested",
            TrustTier::SelfReported => "self-reported",
        }
    }
}

pub fn trust_tier(evidence: &Evidence) -> TrustTier {
    let attested = !evidence.gpus.is_empty()
        && evidence.gpus.iter().all(|g| {
            g.cc_mode && !g.attestation_report.is_empty() && !g.certificate_chain.is_empty()
        });
    if attested {
        TrustTier::HardwareAttested
    } else {
        TrustTier::SelfReported
    }
}

/// Evidence for `lease_id` answering `nonce`, from the GPUs seen and their attestations.
pub fn build_evidence(
    lease_id: &str,
    nonce: &[u8],
    gpus: &[(DeviceInfo, Option<HardwareAttestation>)],
    node: &str,
    pod_uid: &str,
    image: &str,
    now: i64,
) -> Evidence {
    Evidence {
        lease_id: lease_id.to_string(),
        nonce: nonce.to_vec(),
        gpus: gpus
            .iter()
            .map(|(d, attestation)| GpuIdentity {
                uuid: d.uuid.clone(),
                serial: d.serial.clone(),
                model: d.model.clone(),
                vbios: d.vbios.clone(),
                driver: d.driver.clone(),
                cc_mode: d.cc_mode,
                attestation_report: attestation
                    .as_ref()
                    .map(|a| a.report.clone())
                    .unwrap_or_default(),
                certificate_chain: attestation
                    .as_ref()
                    .map(|a| a.certificate_chain.clone())
                    .unwrap_or_default(),
            })
            .collect(),
        node: node.to_string(),
        pod_uid: pod_uid.to_string(),
        image: image.to_string(),
        issued_at: now,
    }
}

/// Why evidence was refused. `kind` is a stable word for metrics and conditions.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceRejection {
    #[error("evidence is malformed: {0}")]
    Malformed(String),
    #[error("evidence signature does not verify against the lease key")]
    BadSignature,
    #[error("evidence is for lease {found}, not {expected}")]
    WrongLease { expected: String, found: String },
    #[error("evidence answers a nonce that is not the lease's outstanding challenge")]
    WrongNonce,
    #[error("the challenge nonce was already answered (replay)")]
    ReplayedNonce,
    #[error("evidence was issued at {issued_at}, more than {FRESHNESS_SECONDS} s from now")]
    Stale { issued_at: i64 },
    #[error("evidence names {field} {found}, but the lease runs in {expected}")]
    WrongPlacement {
        field: &'static str,
        expected: String,
        found: String,
    },
}

impl EvidenceRejection {
    pub fn kind(&self) -> &'static str {
        match self {
            EvidenceRejection::Malformed(_) => "Malformed",
            EvidenceRejection::BadSignature => "BadSignature",
            EvidenceRejection::WrongLease { .. } => "WrongLease",
            EvidenceRejection::WrongNonce => "WrongNonce",
            EvidenceRejection::ReplayedNonce => "ReplayedNonce",
            EvidenceRejection::Stale { .. } => "Stale",
            EvidenceRejection::WrongPlacement { .. } => "WrongPlacement",
        }
    }
}

/// Evidence that verified.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedEvidence {
    pub evidence: Evidence,
    /// SHA-256 of the evidence body.
    pub digest: [u8; 32],
    pub tier: TrustTier,
}

/// Verifies evidence signed by `lease_key` for `lease_id`: signature first, then shape and
/// freshness. Whether its nonce is the outstanding challenge is the caller's to check, as only
/// the network knows it.
pub fn verify_evidence(
    lease_key: &VerifyingKey,
    lease_id: &str,
    signed: &Signed,
    now: i64,
) -> Result<VerifiedEvidence, EvidenceRejection> {
    if signed.body.len() > Evidence::MAX_BYTES {
        return Err(EvidenceRejection::Malformed(format!(
            "body is over the limit of {} bytes",
            Evidence::MAX_BYTES
        )));
    }
    identity::verify(lease_key, Evidence::DOMAIN, &signed.body, &signed.signature)
        .map_err(|_| EvidenceRejection::BadSignature)?;
    let evidence = Evidence::decode(signed.body.as_slice())
        .map_err(|e| EvidenceRejection::Malformed(format!("body: {e}")))?;
    if evidence.lease_id != lease_id {
        return Err(EvidenceRejection::WrongLease {
            expected: lease_id.to_string(),
            found: evidence.lease_id,
        });
    }
    check_shape(&evidence)?;
    if (evidence.issued_at - now).abs() > FRESHNESS_SECONDS {
        return Err(EvidenceRejection::Stale {
            issued_at: evidence.issued_at,
        });
    }
    Ok(VerifiedEvidence {
        digest: digest(&signed.body),
        tier: trust_tier(&evidence),
        evidence,
    })
}

fn check_shape(evidence: &Evidence) -> Result<(), EvidenceRejection> {
    let malformed = |rule: String| Err(EvidenceRejection::Malformed(rule));
    if evidence.nonce.len() != 32 {
        return malformed("nonce: must be the challenge's 32 bytes".into());
    }
    if evidence.gpus.len() > MAX_GPUS {
        return malformed(format!("gpus: at most {MAX_GPUS} entries"));
    }
    let texts = [
        ("node", &evidence.node),
        ("podUid", &evidence.pod_uid),
        ("image", &evidence.image),
    ];
    for (field, value) in texts {
        if value.chars().count() > MAX_TEXT_CHARS {
            return malformed(format!("{field}: at most {MAX_TEXT_CHARS} characters"));
        }
    }
    for (i, g) in evidence.gpus.iter().enumerate() {
        for (field, value) in [
            ("uuid", &g.uuid),
            ("serial", &g.serial),
            ("model", &g.model),
            ("vbios", &g.vbios),
            ("driver", &g.driver),
        ] {
            if value.chars().count() > MAX_TEXT_CHARS {
                return malformed(format!(
                    "gpus[{i}].{field}: at most {MAX_TEXT_CHARS} characters"
                ));
            }
        }
        if g.attestation_report.len() > MAX_REPORT_BYTES
            || g.certificate_chain.len() > MAX_REPORT_BYTES
        {
            return malformed(format!(
                "gpus[{i}]: attestation report and certificate chain at most {MAX_REPORT_BYTES} bytes each"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::generate_key;
    use crate::wire::envelope::sign_body;
    use crate::wire::proto::Receipt;

    fn device(cc_mode: bool) -> DeviceInfo {
        DeviceInfo {
            uuid: "GPU-1".into(),
            serial: "1320".into(),
            model: "NVIDIA H100".into(),
            vbios: "96.00".into(),
            driver: "580".into(),
            cc_mode,
            shared: false,
        }
    }

    fn report() -> Option<HardwareAttestation> {
        Some(HardwareAttestation {
            report: vec![1; 100],
            certificate_chain: vec![2; 100],
        })
    }

    #[test]
    fn the_tier_is_hardware_attested_only_with_cc_mode_report_and_chain_on_every_gpu() {
        let build = |gpus: &[(DeviceInfo, Option<HardwareAttestation>)]| {
            trust_tier(&build_evidence("l", &[0; 32], gpus, "n", "p", "i", 0))
        };
        assert_eq!(
            build(&[(device(true), report())]),
            TrustTier::HardwareAttested
        );
        assert_eq!(build(&[]), TrustTier::SelfReported);
        assert_eq!(build(&[(device(false), report())]), TrustTier::SelfReported);
        assert_eq!(build(&[(device(true), None)]), TrustTier::SelfReported);
        assert_eq!(
            build(&[(device(true), report()), (device(true), None)]),
            TrustTier::SelfReported
        );
        let no_chain = HardwareAttestation {
            certificate_chain: vec![],
            ..report().unwrap()
        };
        assert_eq!(
            build(&[(device(true), Some(no_chain))]),
            TrustTier::SelfReported
        );
    }

    #[test]
    fn evidence_verifies_and_each_fault_has_its_rejection() {
        let key = generate_key();
        let vk = key.verifying_key();
        let evidence = build_evidence(
            "lease-1",
            &[9; 32],
            &[(device(true), report())],
            "node-a",
            "uid",
            "img",
            1_000,
        );
        let signed = sign_body(&key, &evidence);
        let verified = verify_evidence(&vk, "lease-1", &signed, 1_010).unwrap();
        assert_eq!(verified.tier, TrustTier::HardwareAttested);
        assert_eq!(verified.digest, digest(&signed.body));

        let kind = |signed: &Signed, lease: &str, now: i64| {
            verify_evidence(&vk, lease, signed, now).unwrap_err().kind()
        };
        let forged = sign_body(&generate_key(), &evidence);
        assert_eq!(kind(&forged, "lease-1", 1_000), "BadSignature");
        let as_receipt = Signed {
            signature: crate::identity::sign(&key, Receipt::DOMAIN, &signed.body)
                .to_bytes()
                .to_vec(),
            ..signed.clone()
        };
        assert_eq!(kind(&as_receipt, "lease-1", 1_000), "BadSignature");
        assert_eq!(kind(&signed, "lease-2", 1_000), "WrongLease");
        assert_eq!(
            kind(&signed, "lease-1", 1_000 + FRESHNESS_SECONDS + 1),
            "Stale"
        );
        let short_nonce = sign_body(
            &key,
            &Evidence {
                nonce: vec![1; 8],
                ..evidence.clone()
            },
        );
        assert_eq!(kind(&short_nonce, "lease-1", 1_000), "Malformed");
        let long_node = sign_body(
            &key,
            &Evidence {
                node: "n".repeat(300),
                ..evidence.clone()
            },
        );
        assert_eq!(kind(&long_node, "lease-1", 1_000), "Malformed");
        let mut big = evidence.clone();
        big.gpus[0].attestation_report = vec![0; MAX_REPORT_BYTES + 1];
        assert_eq!(kind(&sign_body(&key, &big), "lease-1", 1_000), "Malformed");
    }
}

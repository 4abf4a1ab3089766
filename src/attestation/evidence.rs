//! Building, sealing and verifying evidence. Pure, shared by the attest sidecar, the collector
//! and the network node.

use std::collections::BTreeSet;

use ed25519_dalek::VerifyingKey;
use prost::Message;

use super::nvidia::{AttestedGpu, Claimed, PinnedRoot, verify_gpu};
use super::ocsp::{MAX_RESPONSE_BYTES, MAX_RESPONSES};
use super::rim::{ManifestBook, compare};
use crate::gpu::{DeviceInfo, HardwareAttestation};
use crate::identity;
use crate::metering::digest;
use crate::wire::envelope::{FRESHNESS_SECONDS, Signable};
use crate::wire::proto::{Evidence, GpuIdentity, GpuOcsp, Signed};

const MAX_GPUS: usize = 64;
const MAX_TEXT_CHARS: usize = 256;
/// NVML's attestation report is at most 8 KiB and its certificate chain at most 5 KiB.
const MAX_REPORT_BYTES: usize = 16 * 1024;

/// How much a buyer can trust where the lease runs, weakest first.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum TrustTier {
    /// The provider's own word, signed with the lease key.
    #[default]
    SelfReported,
    /// Every GPU of the lease passed the network's probe ([`crate::probe`]): it multiplied the
    /// nonce's matrices, committed before the checks were drawn, and answered them, in the time
    /// its model's calibration band allows where the model has one.
    ChallengeVerified,
    /// Every GPU's confidential-computing evidence verified ([`verify_gpu`]): each is a
    /// distinct genuine NVIDIA GPU in CC mode that signed the network's nonce.
    HardwareAttested,
}

impl TrustTier {
    pub const ALL: [TrustTier; 3] = [
        TrustTier::SelfReported,
        TrustTier::ChallengeVerified,
        TrustTier::HardwareAttested,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TrustTier::HardwareAttested => "hardware-attested",
            TrustTier::ChallengeVerified => "challenge-verified",
            TrustTier::SelfReported => "self-reported",
        }
    }

    /// This tier, or `challenge-verified` when the lease's GPU probe passed and this is weaker.
    pub fn with_probe(self, passed: bool) -> TrustTier {
        if passed {
            self.max(TrustTier::ChallengeVerified)
        } else {
            self
        }
    }

    /// The tier a name gives; an empty name is the weakest (no requirement).
    pub fn parse(name: &str) -> Option<TrustTier> {
        if name.is_empty() {
            return Some(TrustTier::SelfReported);
        }
        TrustTier::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// The tier evidence earns, and in words what was checked or why it fell short.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attestation {
    pub tier: TrustTier,
    pub detail: String,
}

/// Verifies each GPU's CC evidence against the evidence's nonce and `root` at `now`, its chain's
/// revocation against the OCSP responses supplied for it (`ocsp`, by GPU, [`check_ocsp`]), and
/// its measurements against the manifests held for its driver and VBIOS. Any GPU without
/// verified evidence, with a revoked certificate or a measurement its manifests do not list, or
/// two GPUs presenting one chip, make the whole lease self-reported: a lease is only as
/// attested as its least attested GPU.
pub fn attest(
    evidence: &Evidence,
    ocsp: &[GpuOcsp],
    root: &PinnedRoot,
    manifests: &ManifestBook,
    now: i64,
) -> Attestation {
    let self_reported = |detail: String| Attestation {
        tier: TrustTier::SelfReported,
        detail,
    };
    if evidence.gpus.is_empty() {
        return self_reported("the evidence names no GPU".into());
    }
    let mut attested: Vec<AttestedGpu> = Vec::with_capacity(evidence.gpus.len());
    let mut checked = Vec::with_capacity(evidence.gpus.len());
    // (chip, component, version) no manifest is held for, each named once.
    let mut unchecked = BTreeSet::new();
    for (i, gpu) in evidence.gpus.iter().enumerate() {
        if !gpu.cc_mode || gpu.attestation_report.is_empty() || gpu.certificate_chain.is_empty() {
            return self_reported(format!(
                "gpus[{i}] ({}): no confidential-computing report and certificate chain",
                gpu.uuid
            ));
        }
        let claimed = Claimed {
            nonce: &evidence.nonce,
            driver: &gpu.driver,
            vbios: &gpu.vbios,
            ocsp: ocsp.get(i).map_or(&[][..], |o| o.responses.as_slice()),
        };
        match verify_gpu(
            &gpu.attestation_report,
            &gpu.certificate_chain,
            &claimed,
            root,
            now,
        ) {
            Ok(verified) => {
                if let Some(j) = attested.iter().position(|a| a.device == verified.device) {
                    return self_reported(format!(
                        "gpus[{i}] ({}): presents the evidence of device {}, as gpus[{j}] does; one chip cannot be two GPUs",
                        gpu.uuid, verified.device
                    ));
                }
                let (driver, vbios) = manifests.for_gpu(&verified);
                match compare(&verified, driver, vbios) {
                    Ok(matched) => {
                        checked.push(if matched.compared.is_empty() {
                            format!("gpus[{i}] {verified}")
                        } else {
                            format!("gpus[{i}] {verified}, {matched}")
                        });
                        for (component, version) in matched.missing {
                            unchecked.insert((verified.chip.clone(), component, version));
                        }
                    }
                    Err(mismatch) => {
                        return self_reported(format!(
                            "gpus[{i}] ({}): CC evidence refused (MeasurementMismatch): {mismatch}",
                            gpu.uuid
                        ));
                    }
                }
                attested.push(verified);
            }
            Err(rejection) => {
                return self_reported(format!(
                    "gpus[{i}] ({}): CC evidence refused ({}): {rejection}",
                    gpu.uuid,
                    rejection.kind()
                ));
            }
        }
    }
    // What was not checked, said every time: revocation needs responses someone supplied, the
    // measurements manifests someone handed the network.
    let mut not_checked = Vec::new();
    let unrevoked: Vec<String> = attested
        .iter()
        .enumerate()
        .filter(|(_, a)| a.revocation_checked.is_none())
        .map(|(i, _)| i.to_string())
        .collect();
    if unrevoked.len() == attested.len() {
        not_checked.push("certificate revocation (OCSP)".to_string());
    } else if !unrevoked.is_empty() {
        not_checked.push(format!(
            "certificate revocation (OCSP) of gpus[{}]",
            unrevoked.join(", ")
        ));
    }
    if !unchecked.is_empty() {
        let missing: Vec<String> = unchecked
            .iter()
            .map(|(chip, component, version)| format!("{chip} {component} {version}"))
            .collect();
        not_checked.push(format!(
            "measurements against NVIDIA's RIMs for {} (none held)",
            missing.join(", ")
        ));
    }
    let mut detail = checked.join("; ");
    if !not_checked.is_empty() {
        detail.push_str(&format!("; not checked: {}", not_checked.join(", ")));
    }
    Attestation {
        tier: TrustTier::HardwareAttested,
        detail,
    }
}

/// The OCSP responses supplied with evidence, refused when they cannot be what they say: more
/// lists than GPUs, or more or larger responses than a chain needs.
pub fn check_ocsp(evidence: &Evidence, ocsp: &[GpuOcsp]) -> Result<(), EvidenceRejection> {
    if ocsp.len() > evidence.gpus.len() {
        return Err(EvidenceRejection::Malformed(format!(
            "ocsp: {} lists for {} GPUs",
            ocsp.len(),
            evidence.gpus.len()
        )));
    }
    for (i, gpu) in ocsp.iter().enumerate() {
        if gpu.responses.len() > MAX_RESPONSES
            || gpu.responses.iter().any(|r| r.len() > MAX_RESPONSE_BYTES)
        {
            return Err(EvidenceRejection::Malformed(format!(
                "ocsp[{i}]: at most {MAX_RESPONSES} responses, each at most {MAX_RESPONSE_BYTES} bytes"
            )));
        }
    }
    Ok(())
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
}

/// Verifies evidence signed by `lease_key` for `lease_id`: signature first, then shape and
/// freshness. Whether its nonce is the outstanding challenge is the caller's to check, as only
/// the network knows it; only then is the GPUs' CC evidence worth verifying ([`attest`]), which
/// costs a few milliseconds a GPU.
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
    use crate::attestation::nvidia::tests::{
        NOW, SAMPLE_CHAIN, SAMPLE_DRIVER, SAMPLE_NONCE, SAMPLE_VBIOS, sample_report,
    };
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

    fn sample_gpu(uuid: &str) -> GpuIdentity {
        GpuIdentity {
            uuid: uuid.into(),
            model: "NVIDIA H100".into(),
            driver: SAMPLE_DRIVER.into(),
            vbios: SAMPLE_VBIOS.into(),
            cc_mode: true,
            attestation_report: sample_report(),
            certificate_chain: SAMPLE_CHAIN.to_vec(),
            ..Default::default()
        }
    }

    fn sample_evidence(gpus: Vec<GpuIdentity>) -> Evidence {
        Evidence {
            lease_id: "l".into(),
            nonce: SAMPLE_NONCE.to_vec(),
            gpus,
            ..Default::default()
        }
    }

    #[test]
    fn nvidias_sample_evidence_earns_hardware_attested_and_says_what_it_checked() {
        let root = PinnedRoot::nvidia_device();
        let attested = attest(
            &sample_evidence(vec![sample_gpu("GPU-a")]),
            &[],
            &root,
            &ManifestBook::default(),
            NOW,
        );
        assert_eq!(attested.tier, TrustTier::HardwareAttested, "{attested:?}");
        assert!(
            attested.detail.contains("device 41431D480FE5E87274"),
            "{attested:?}"
        );
        // No manifest is held for its driver and VBIOS, and the verdict says so.
        assert!(
            attested.detail.ends_with(
                "not checked: certificate revocation (OCSP), measurements against NVIDIA's RIMs \
                 for GH100 VBIOS 96.00.9f.00.01, GH100 driver 550.90.07 (none held)"
            ),
            "{attested:?}"
        );
    }

    #[test]
    fn a_gpus_measurements_are_held_against_the_manifests_for_its_driver_and_vbios() {
        use crate::attestation::rim::tests::{
            CHAIN, DRIVER_RIM, NONCE, SIGNED_AT, VBIOS_RIM, VBIOS_RIM_PROD, report,
        };
        use crate::attestation::rim::verify_rim;
        let evidence = Evidence {
            lease_id: "l".into(),
            nonce: hex::decode(NONCE).unwrap(),
            gpus: vec![GpuIdentity {
                uuid: "GPU-a".into(),
                driver: "545.00".into(),
                vbios: "96.00.5e.00.01".into(),
                cc_mode: true,
                attestation_report: report(),
                certificate_chain: CHAIN.to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let book = |manifests: &[&[u8]]| {
            let mut book = ManifestBook::default();
            for xml in manifests {
                book.insert(verify_rim(xml, &PinnedRoot::nvidia_rim(), SIGNED_AT).unwrap());
            }
            book
        };
        let root = PinnedRoot::nvidia_device();
        let matched = attest(
            &evidence,
            &[],
            &root,
            &book(&[DRIVER_RIM, VBIOS_RIM]),
            SIGNED_AT,
        );
        assert_eq!(matched.tier, TrustTier::HardwareAttested, "{matched:?}");
        assert!(
            matched.detail.ends_with(
                "20 measurements match NVIDIA's driver RIM 545.00, 12 measurements match \
                 NVIDIA's VBIOS RIM 96.00.5e.00.01; not checked: certificate revocation (OCSP)"
            ),
            "{matched:?}"
        );
        // A manifest its measurements contradict: not hardware-attested, and why.
        let contradicted = attest(
            &evidence,
            &[],
            &root,
            &book(&[DRIVER_RIM, VBIOS_RIM_PROD]),
            SIGNED_AT,
        );
        assert_eq!(
            contradicted.tier,
            TrustTier::SelfReported,
            "{contradicted:?}"
        );
        assert!(
            contradicted.detail.starts_with(
                "gpus[0] (GPU-a): CC evidence refused (MeasurementMismatch): measurement 1 \
                 (HashedMeasurement_1_FSP)"
            ),
            "{contradicted:?}"
        );
        // The driver's manifest only: the VBIOS is named as not checked.
        let half = attest(&evidence, &[], &root, &book(&[DRIVER_RIM]), SIGNED_AT);
        assert_eq!(half.tier, TrustTier::HardwareAttested, "{half:?}");
        assert!(
            half.detail.ends_with(
                "20 measurements match NVIDIA's driver RIM 545.00; not checked: certificate \
                 revocation (OCSP), measurements against NVIDIA's RIMs for GH100 VBIOS \
                 96.00.5e.00.01 (none held)"
            ),
            "{half:?}"
        );
    }

    #[test]
    fn a_lease_is_only_as_attested_as_its_least_attested_gpu() {
        let root = PinnedRoot::nvidia_device();
        let tier = |gpus: Vec<GpuIdentity>| {
            attest(
                &sample_evidence(gpus),
                &[],
                &root,
                &ManifestBook::default(),
                NOW,
            )
        };
        let refused = |gpus: Vec<GpuIdentity>, why: &str| {
            let a = tier(gpus);
            assert_eq!(a.tier, TrustTier::SelfReported, "{a:?}");
            assert!(a.detail.contains(why), "{why}: {a:?}");
        };
        refused(vec![], "names no GPU");
        let off = GpuIdentity {
            cc_mode: false,
            ..sample_gpu("GPU-a")
        };
        refused(vec![off], "no confidential-computing report");
        // Revocation responses that are not what they claim refuse the GPU.
        let junk = [GpuOcsp {
            responses: vec![b"junk".to_vec()],
        }];
        let a = attest(
            &sample_evidence(vec![sample_gpu("GPU-a")]),
            &junk,
            &root,
            &ManifestBook::default(),
            NOW,
        );
        assert_eq!(a.tier, TrustTier::SelfReported, "{a:?}");
        assert!(
            a.detail.contains(
                "CC evidence refused (Revocation): ocspResponses[0]: is not an OCSPResponse"
            ),
            "{a:?}"
        );
        let evidence = sample_evidence(vec![sample_gpu("GPU-a")]);
        assert!(check_ocsp(&evidence, &junk).is_ok());
        let refused_shape = |ocsp: &[GpuOcsp], rule: &str| {
            let error = check_ocsp(&evidence, ocsp).unwrap_err().to_string();
            assert!(error.contains(rule), "{error}");
        };
        refused_shape(
            &[GpuOcsp::default(), GpuOcsp::default()],
            "ocsp: 2 lists for 1 GPUs",
        );
        refused_shape(
            &[GpuOcsp {
                responses: vec![vec![]; 9],
            }],
            "ocsp[0]: at most 8 responses",
        );
        refused_shape(
            &[GpuOcsp {
                responses: vec![vec![0; 8 * 1024 + 1]],
            }],
            "each at most 8192 bytes",
        );
        // What the old tier accepted: any non-empty report and chain.
        let made_up = GpuIdentity {
            attestation_report: vec![1; 64],
            certificate_chain: vec![2; 64],
            ..sample_gpu("GPU-a")
        };
        refused(
            vec![sample_gpu("GPU-a"), made_up],
            "gpus[1] (GPU-a): CC evidence refused (BadChain)",
        );
        // One genuine report presented for two GPUs.
        refused(
            vec![sample_gpu("GPU-a"), sample_gpu("GPU-b")],
            "presents the evidence of device 41431D480FE5E87274, as gpus[0] does",
        );
        let wrong_driver = GpuIdentity {
            driver: "560.35.03".into(),
            ..sample_gpu("GPU-a")
        };
        refused(
            vec![wrong_driver],
            "driver version is 550.90.07, but the GPU states 560.35.03",
        );
        let mut other_nonce = sample_evidence(vec![sample_gpu("GPU-a")]);
        other_nonce.nonce = vec![7; 32];
        let a = attest(&other_nonce, &[], &root, &ManifestBook::default(), NOW);
        assert!(a.detail.contains("(WrongNonce)"), "{a:?}");
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
        assert_eq!(verified.evidence, evidence);
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

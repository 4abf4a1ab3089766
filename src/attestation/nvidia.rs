//! NVIDIA confidential-computing evidence, verified without taking the provider's word. Pure:
//! the attest sidecar's collector and the network node both call [`verify_gpu`].
//!
//! A GPU in CC mode answers a nonce with an SPDM attestation report signed by its attestation
//! key, and a certificate chain for that key: the leaf (the GSP firmware's key, carrying the
//! firmware's FWID), the device certificate (the chip's identity, burnt in at manufacture), NVIDIA's
//! provisioning and product CAs, and NVIDIA's Device Identity CA, which is pinned here. The report
//! is accepted when, in order:
//! 1. the chain verifies link by link, in order, to the pinned root, each certificate valid at
//!    `now` and each issuer a CA (ECDSA P-384 with SHA-384 throughout);
//! 2. the report parses and its request carries the network's nonce;
//! 3. the report's signature verifies with the leaf's key (so the report comes from that chip);
//! 4. the report's FWID is the leaf's, and its driver and VBIOS versions are those the GPU's
//!    identity states.
//!
//! Where OCSP responses were supplied for the chain, none of its certificates is revoked
//! ([`super::ocsp`]). The report's measurements are compared with NVIDIA's reference integrity
//! manifests where the network holds them ([`super::rim`]). Each verdict names what it could not
//! check for want of either.

use std::collections::BTreeMap;
use std::fmt;

use ring::signature::{ECDSA_P384_SHA384_ASN1, ECDSA_P384_SHA384_FIXED, UnparsedPublicKey};
use sha2::{Digest, Sha256};
use x509_cert::Certificate;
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode, Reader, SliceReader};
use x509_cert::ext::pkix::BasicConstraints;

use super::ocsp::{OcspRejection, check_revocation};
use super::spdm::{
    self, NVDEC_DISABLED, OPAQUE_DRIVER_VERSION, OPAQUE_FWID, OPAQUE_NVDEC0_STATUS,
    OPAQUE_VBIOS_VERSION,
};

/// NVIDIA's Device Identity CA, the root of every NVIDIA GPU's device certificate chain
/// (published in `NVIDIA/nvtrust` as `verifier_device_root.pem`).
const NVIDIA_DEVICE_ROOT_PEM: &str = include_str!("nvidia_device_identity_ca.pem");
/// Its SHA-256 fingerprint, as the README prints it.
pub const NVIDIA_DEVICE_ROOT_SHA256: &str =
    "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48";
/// NVIDIA's CoRIM signing Root CA, the root of the certificates that sign its reference
/// integrity manifests (published in `NVIDIA/nvtrust` as `verifier_RIM_root.pem`).
const NVIDIA_RIM_ROOT_PEM: &str = include_str!("nvidia_corim_signing_root_ca.pem");
pub const NVIDIA_RIM_ROOT_SHA256: &str =
    "12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1";

const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const SERIAL_NUMBER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.5");
const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
/// TCG DICE's FWID extension: the measurement of the firmware that holds the leaf's key.
const TCG_DICE_FWID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.5.4.1");
const FWID_BYTES: usize = 48;
/// A GPU chain is 5 certificates; anything much longer is not one.
const MAX_CHAIN: usize = 8;

/// The root a chain must end in, pinned in the binary.
#[derive(Clone, Debug)]
pub struct PinnedRoot {
    name: &'static str,
    der: Vec<u8>,
}

impl PinnedRoot {
    /// NVIDIA's Device Identity CA: GPUs' certificate chains.
    pub fn nvidia_device() -> PinnedRoot {
        PinnedRoot::from_pem(
            "NVIDIA's Device Identity CA",
            NVIDIA_DEVICE_ROOT_PEM.as_bytes(),
        )
        .expect("the pinned NVIDIA root is one PEM certificate")
    }

    /// NVIDIA's CoRIM signing Root CA: the signers of reference integrity manifests.
    pub fn nvidia_rim() -> PinnedRoot {
        PinnedRoot::from_pem(
            "NVIDIA's CoRIM signing Root CA",
            NVIDIA_RIM_ROOT_PEM.as_bytes(),
        )
        .expect("the pinned NVIDIA root is one PEM certificate")
    }

    pub fn from_pem(name: &'static str, pem: &[u8]) -> Result<PinnedRoot, CcRejection> {
        match pem_certificates(pem)?.as_slice() {
            [der] => Ok(PinnedRoot {
                name,
                der: der.clone(),
            }),
            other => Err(CcRejection::Chain(format!(
                "a root is one certificate, not {}",
                other.len()
            ))),
        }
    }

    /// SHA-256 of the root's DER, hex.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(&self.der))
    }
}

/// What the GPU's own identity (as NVML reported it to the sidecar) says, to compare with the
/// report.
#[derive(Clone, Copy, Debug)]
pub struct Claimed<'a> {
    /// The network's challenge nonce the report must answer.
    pub nonce: &'a [u8],
    pub driver: &'a str,
    pub vbios: &'a str,
    /// OCSP responses for its chain, where someone supplied them ([`super::ocsp`]).
    pub ocsp: &'a [Vec<u8>],
}

/// A GPU whose CC evidence verified, and what that established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttestedGpu {
    /// The chip's identity: the serial number of its device certificate.
    pub device: String,
    /// The chip's kind as its device certificate names it (`GH100`): which RIMs apply.
    pub chip: String,
    /// The firmware measurement in the leaf certificate, hex, when the report carries one (it
    /// then matched).
    pub fwid: Option<String>,
    pub driver: String,
    pub vbios: String,
    /// The signed report's measurements by block index.
    pub measurements: BTreeMap<u8, Vec<u8>>,
    /// Whether the report says NVDEC0 is disabled, which leaves one measurement undefined.
    pub nvdec_disabled: bool,
    /// How many certificates of its chain (its device certificate and the CAs above it) the
    /// supplied OCSP responses showed good; `None` when none were supplied, so revocation was
    /// not checked.
    pub revocation_checked: Option<usize>,
}

impl fmt::Display for AttestedGpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "device {}: report over the nonce signed by a key certified to NVIDIA's Device \
             Identity CA, {} measurements, driver {} and VBIOS {} as stated",
            self.device,
            self.measurements.len(),
            self.driver,
            self.vbios
        )?;
        if self.fwid.is_some() {
            write!(f, ", firmware ID matches its certificate")?;
        }
        if let Some(good) = self.revocation_checked {
            write!(
                f,
                ", its device certificate and the CAs above it not revoked ({good} OCSP responses)"
            )?;
        }
        Ok(())
    }
}

/// Why CC evidence was refused. `kind` is a stable word for metrics and conditions.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CcRejection {
    #[error("certificateChain: {0}")]
    Chain(String),
    #[error("certificateChain: ends in {found} (sha256), not {root} ({expected})")]
    UnknownRoot {
        root: &'static str,
        expected: String,
        found: String,
    },
    #[error("certificateChain[{index}]: {rule}")]
    Validity { index: usize, rule: String },
    #[error("certificateChain[{index}]: its signature does not verify with its issuer's key")]
    ChainSignature { index: usize },
    #[error(transparent)]
    Report(#[from] spdm::ReportError),
    #[error(transparent)]
    Revocation(#[from] OcspRejection),
    #[error("attestationReport.request.nonce: is {found}, not the network's challenge")]
    WrongNonce { found: String },
    #[error(
        "attestationReport.signature: does not verify with the leaf certificate's key (a report from another GPU, or altered)"
    )]
    ReportSignature,
    #[error("attestationReport: {field} is {report}, but the GPU states {claimed}")]
    Mismatch {
        field: &'static str,
        report: String,
        claimed: String,
    },
}

impl CcRejection {
    pub fn kind(&self) -> &'static str {
        match self {
            CcRejection::Chain(_) => "BadChain",
            CcRejection::UnknownRoot { .. } => "UnknownRoot",
            CcRejection::Validity { .. } => "CertificateNotValid",
            CcRejection::ChainSignature { .. } => "ChainSignature",
            CcRejection::Report(_) => "MalformedReport",
            CcRejection::Revocation(_) => "Revocation",
            CcRejection::WrongNonce { .. } => "WrongNonce",
            CcRejection::ReportSignature => "ReportSignature",
            CcRejection::Mismatch { .. } => "Mismatch",
        }
    }
}

/// Verifies one GPU's report and chain against `root` at `now` (seconds since the epoch).
pub fn verify_gpu(
    report: &[u8],
    chain: &[u8],
    claimed: &Claimed<'_>,
    root: &PinnedRoot,
    now: i64,
) -> Result<AttestedGpu, CcRejection> {
    let chain = verify_chain(pem_certificates(chain)?, root, now)?;
    let revocation_checked = match claimed.ocsp {
        [] => None,
        responses => Some(check_revocation(&chain, responses, now)?),
    };
    Ok(AttestedGpu {
        revocation_checked,
        ..verify_report(&chain, report, claimed)?
    })
}

/// The report's checks, against a chain [`verify_chain`] accepted.
fn verify_report(
    chain: &[(Vec<u8>, Certificate)],
    report: &[u8],
    claimed: &Claimed<'_>,
) -> Result<AttestedGpu, CcRejection> {
    let leaf = &chain[0].1;
    let device = device_identity(&chain[1].1)?;
    let chip = chip_kind(&chain[1].1)?;
    let parsed = spdm::parse(report)?;
    if parsed.request_nonce.as_slice() != claimed.nonce {
        return Err(CcRejection::WrongNonce {
            found: hex::encode(parsed.request_nonce),
        });
    }
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, public_key(leaf))
        .verify(parsed.signed, parsed.signature)
        .map_err(|_| CcRejection::ReportSignature)?;

    let fwid = match parsed.opaque.get(&OPAQUE_FWID) {
        None => None,
        Some(in_report) => {
            let in_leaf = leaf_fwid(leaf)?;
            if *in_report != in_leaf.as_slice() {
                return Err(CcRejection::Mismatch {
                    field: "firmware ID",
                    report: hex::encode(in_report),
                    claimed: format!("{} in the leaf certificate", hex::encode(in_leaf)),
                });
            }
            Some(hex::encode(in_report))
        }
    };
    let driver = parsed
        .opaque
        .get(&OPAQUE_DRIVER_VERSION)
        .map(|v| spdm::text(v))
        .unwrap_or_default();
    let vbios = parsed
        .opaque
        .get(&OPAQUE_VBIOS_VERSION)
        .map(|v| spdm::vbios_version(v))
        .unwrap_or_default();
    for (field, report, claimed) in [
        ("driver version", &driver, claimed.driver),
        ("VBIOS version", &vbios, claimed.vbios),
    ] {
        if !report.eq_ignore_ascii_case(claimed) {
            return Err(CcRejection::Mismatch {
                field,
                report: report.clone(),
                claimed: claimed.to_string(),
            });
        }
    }
    Ok(AttestedGpu {
        device,
        chip,
        fwid,
        driver,
        vbios,
        measurements: parsed
            .measurements
            .iter()
            .map(|(&index, value)| (index, value.to_vec()))
            .collect(),
        nvdec_disabled: parsed.opaque.get(&OPAQUE_NVDEC0_STATUS) == Some(&&[NVDEC_DISABLED][..]),
        revocation_checked: None,
    })
}

/// Each certificate of a PEM chain as DER, in order.
pub(super) fn pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, CcRejection> {
    const END: &[u8] = b"-----END CERTIFICATE-----";
    let mut certificates = Vec::new();
    let mut rest = pem;
    while let Some(at) = rest.windows(END.len()).position(|w| w == END) {
        let block = &rest[..at + END.len()];
        let start = block
            .windows(11)
            .position(|w| w == b"-----BEGIN ")
            .unwrap_or(0);
        let (label, der) = x509_cert::der::pem::decode_vec(&block[start..]).map_err(|e| {
            CcRejection::Chain(format!(
                "certificate {} is not PEM: {e}",
                certificates.len()
            ))
        })?;
        if label != "CERTIFICATE" {
            return Err(CcRejection::Chain(format!(
                "block {} is a {label}, not a CERTIFICATE",
                certificates.len()
            )));
        }
        certificates.push(der);
        rest = &rest[at + END.len()..];
        if certificates.len() > MAX_CHAIN {
            return Err(CcRejection::Chain(format!(
                "more than {MAX_CHAIN} certificates"
            )));
        }
    }
    if !rest.iter().all(u8::is_ascii_whitespace) {
        return Err(CcRejection::Chain("text after the last certificate".into()));
    }
    Ok(certificates)
}

/// A chain of DER certificates, leaf first, verified to `root`: each certificate with its DER.
pub(super) fn verify_chain(
    ders: Vec<Vec<u8>>,
    root: &PinnedRoot,
    now: i64,
) -> Result<Vec<(Vec<u8>, Certificate)>, CcRejection> {
    if ders.len() > MAX_CHAIN {
        return Err(CcRejection::Chain(format!(
            "more than {MAX_CHAIN} certificates"
        )));
    }
    if ders.len() < 3 {
        return Err(CcRejection::Chain(format!(
            "holds {} certificates; a GPU's chain runs leaf, device certificate, …, root",
            ders.len()
        )));
    }
    let last = ders.last().map(|d| hex::encode(Sha256::digest(d)));
    if ders.last() != Some(&root.der) {
        return Err(CcRejection::UnknownRoot {
            root: root.name,
            expected: root.fingerprint(),
            found: last.unwrap_or_default(),
        });
    }
    let certificates = ders
        .into_iter()
        .enumerate()
        .map(|(index, der)| {
            Certificate::from_der(&der)
                .map(|c| (der, c))
                .map_err(|e| CcRejection::Chain(format!("certificate {index} is not X.509: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (index, (_, certificate)) in certificates.iter().enumerate() {
        check_validity(index, certificate, now)?;
        check_key(index, certificate)?;
    }
    for index in 0..certificates.len() {
        let (der, certificate) = &certificates[index];
        // The root signs itself.
        let issuer = &certificates[(index + 1).min(certificates.len() - 1)].1;
        if certificate.tbs_certificate.issuer != issuer.tbs_certificate.subject {
            return Err(CcRejection::Chain(format!(
                "certificate {index} is issued by {}, but the next certificate is {} (the chain must run leaf to root, in order)",
                certificate.tbs_certificate.issuer, issuer.tbs_certificate.subject
            )));
        }
        let is_ca = issuer
            .tbs_certificate
            .get::<BasicConstraints>()
            .ok()
            .flatten()
            .is_some_and(|(_, constraints)| constraints.ca);
        if !is_ca {
            return Err(CcRejection::Chain(format!(
                "the issuer of certificate {index} is not a CA"
            )));
        }
        if certificate.signature_algorithm.oid != ECDSA_WITH_SHA384 {
            return Err(CcRejection::Chain(format!(
                "certificate {index} is signed with {}, not ecdsa-with-SHA384",
                certificate.signature_algorithm.oid
            )));
        }
        let tbs = first_element(der)
            .map_err(|e| CcRejection::Chain(format!("certificate {index}: {e}")))?;
        if !signed_by(issuer, tbs, certificate.signature.raw_bytes()) {
            return Err(CcRejection::ChainSignature { index });
        }
    }
    Ok(certificates)
}

/// Whether `signature` (ECDSA P-384 with SHA-384, DER) over `signed` is `signer`'s.
pub(super) fn signed_by(signer: &Certificate, signed: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_ASN1, public_key(signer))
        .verify(signed, signature)
        .is_ok()
}

/// The certificate's public key: an uncompressed P-384 point, as [`check_key`] required.
pub(super) fn public_key(certificate: &Certificate) -> &[u8] {
    certificate
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes()
}

/// The first element of a DER sequence exactly as received, what its signature covers: a
/// certificate's or an OCSP response's signed part (re-encoding a parsed one could differ).
pub(super) fn first_element(der: &[u8]) -> Result<&[u8], x509_cert::der::Error> {
    let mut reader = SliceReader::new(der)?;
    reader.sequence(|sequence| {
        let first = sequence.tlv_bytes()?;
        // The rest (signature algorithm, signature, …): read, as a sequence must be read whole.
        while !sequence.is_finished() {
            sequence.tlv_bytes()?;
        }
        Ok(first)
    })
}

pub(super) fn check_validity(
    index: usize,
    certificate: &Certificate,
    now: i64,
) -> Result<(), CcRejection> {
    let validity = &certificate.tbs_certificate.validity;
    let seconds = |t: x509_cert::time::Time| {
        i64::try_from(t.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
    };
    let (from, until) = (seconds(validity.not_before), seconds(validity.not_after));
    if now < from {
        return Err(CcRejection::Validity {
            index,
            rule: format!("is not valid before {} (now {now})", validity.not_before),
        });
    }
    if now > until {
        return Err(CcRejection::Validity {
            index,
            rule: format!("expired at {} (now {now})", validity.not_after),
        });
    }
    Ok(())
}

fn check_key(index: usize, certificate: &Certificate) -> Result<(), CcRejection> {
    let spki = &certificate.tbs_certificate.subject_public_key_info;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    if spki.algorithm.oid != EC_PUBLIC_KEY || curve != Some(SECP384R1) {
        return Err(CcRejection::Chain(format!(
            "certificate {index}'s key is not an ECDSA P-384 key"
        )));
    }
    Ok(())
}

/// The first word of the device certificate's common name (`GH100 A01 GSP BROM`): the kind
/// of chip, as NVIDIA's RIMs name it.
fn chip_kind(device: &Certificate) -> Result<String, CcRejection> {
    attribute(device, COMMON_NAME)
        .and_then(|name| name.split_whitespace().next().map(str::to_string))
        .ok_or_else(|| {
            CcRejection::Chain("certificate 1 (the device certificate) has no common name".into())
        })
}

/// A subject attribute of `certificate` as text.
fn attribute(certificate: &Certificate, oid: ObjectIdentifier) -> Option<&str> {
    certificate
        .tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == oid)
        .and_then(|atv| std::str::from_utf8(atv.value.value()).ok())
}

/// The device certificate's serial number: the chip's identity.
fn device_identity(device: &Certificate) -> Result<String, CcRejection> {
    attribute(device, SERIAL_NUMBER)
        .map(str::to_string)
        .ok_or_else(|| {
            CcRejection::Chain(
                "certificate 1 (the device certificate) names no serialNumber, the chip's identity"
                    .into(),
            )
        })
}

/// The last 48 bytes of the leaf's FWID extension: the firmware's SHA-384 measurement.
fn leaf_fwid(leaf: &Certificate) -> Result<Vec<u8>, CcRejection> {
    leaf.tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == TCG_DICE_FWID)
        .map(|e| e.extn_value.as_bytes())
        .filter(|v| v.len() >= FWID_BYTES)
        .map(|v| v[v.len() - FWID_BYTES..].to_vec())
        .ok_or_else(|| {
            CcRejection::Chain(
                "certificate 0 has no firmware ID (TCG DICE FWID) to compare with the report's"
                    .into(),
            )
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
    use x509_cert::TbsCertificate;
    use x509_cert::der::Encode;
    use x509_cert::der::asn1::{BitString, UtcTime};
    use x509_cert::der::pem::LineEnding;

    /// NVIDIA's published H100 sample (see `testdata/README.md`).
    pub const SAMPLE_CHAIN: &[u8] = include_bytes!("testdata/hopperCertChain.txt");
    const OTHER_GPU_CHAIN: &[u8] = include_bytes!("testdata/gpuAkCertChain.txt");
    pub const SAMPLE_NONCE: [u8; 32] = [
        0x93, 0x1d, 0x8d, 0xd0, 0xad, 0xd2, 0x03, 0xac, 0x3d, 0x8b, 0x4f, 0xbd, 0xe7, 0x5e, 0x11,
        0x52, 0x78, 0xee, 0xfc, 0xdc, 0xea, 0xc5, 0xb8, 0x76, 0x71, 0xa7, 0x48, 0xf3, 0x23, 0x64,
        0xdf, 0xcb,
    ];
    pub const SAMPLE_DRIVER: &str = "550.90.07";
    pub const SAMPLE_VBIOS: &str = "96.00.9F.00.01";
    /// 2026-12-01: within every sample certificate's validity.
    pub const NOW: i64 = 1_796_083_200;

    pub fn sample_report() -> Vec<u8> {
        hex::decode(include_str!("testdata/hopperAttestationReport.txt").trim()).unwrap()
    }

    fn claimed() -> Claimed<'static> {
        Claimed {
            nonce: &SAMPLE_NONCE,
            driver: SAMPLE_DRIVER,
            vbios: SAMPLE_VBIOS,
            ocsp: &[],
        }
    }

    fn verify(report: &[u8], chain: &[u8]) -> Result<AttestedGpu, CcRejection> {
        verify_gpu(report, chain, &claimed(), &PinnedRoot::nvidia_device(), NOW)
    }

    fn kind(result: Result<AttestedGpu, CcRejection>) -> &'static str {
        result.expect_err("must be refused").kind()
    }

    #[test]
    fn the_pinned_root_is_nvidias_device_identity_ca_with_the_readmes_fingerprint() {
        assert_eq!(
            PinnedRoot::nvidia_device().fingerprint(),
            NVIDIA_DEVICE_ROOT_SHA256
        );
        let readme = include_str!("../../README.md");
        assert!(readme.contains(NVIDIA_DEVICE_ROOT_SHA256));
    }

    #[test]
    fn nvidias_sample_h100_evidence_verifies() {
        let gpu = verify(&sample_report(), SAMPLE_CHAIN).unwrap();
        assert_eq!(gpu.measurements.len(), 64);
        assert_eq!(gpu.measurements.keys().next(), Some(&1));
        assert!(gpu.measurements.values().all(|m| m.len() == 48));
        assert_eq!(
            gpu,
            AttestedGpu {
                device: "41431D480FE5E87274".into(),
                chip: "GH100".into(),
                fwid: Some(
                    "f5c384aebb579217a2c66b17ed0f28e6a9b8d639041acd7b4721cec004f7275494ba94bb5cdfdb3055ee051762b1f75d"
                        .into()
                ),
                driver: SAMPLE_DRIVER.into(),
                vbios: SAMPLE_VBIOS.into(),
                measurements: gpu.measurements.clone(),
                nvdec_disabled: true,
                revocation_checked: None,
            }
        );
    }

    #[test]
    fn every_flipped_bit_of_the_report_is_refused() {
        let report = sample_report();
        // The chain once; then the report's checks, which see every flip.
        let chain = verify_chain(
            pem_certificates(SAMPLE_CHAIN).unwrap(),
            &PinnedRoot::nvidia_device(),
            NOW,
        )
        .unwrap();
        assert!(verify_report(&chain, &report, &claimed()).is_ok());
        for at in 0..report.len() {
            let mut flipped = report.clone();
            flipped[at] ^= 0x01;
            let refused = verify_report(&chain, &flipped, &claimed());
            assert!(refused.is_err(), "a flipped bit at byte {at} verified");
        }
        // Where it lands decides the reason: the nonce, then the signed bytes, then the signature.
        let flip = |at: usize| {
            let mut flipped = report.clone();
            flipped[at] ^= 0x80;
            kind(verify(&flipped, SAMPLE_CHAIN))
        };
        assert_eq!(flip(10), "WrongNonce");
        assert_eq!(flip(37 + 100), "ReportSignature");
        assert_eq!(flip(report.len() - 1), "ReportSignature");
        assert_eq!(flip(1), "MalformedReport");
    }

    #[test]
    fn a_report_cut_short_or_padded_is_refused_naming_its_field() {
        let report = sample_report();
        let error = verify(&report[..report.len() - 1], SAMPLE_CHAIN).unwrap_err();
        assert_eq!(
            error.to_string(),
            "attestationReport.response.signature: needs 96 bytes at offset 4021, the report has 4116"
        );
        let mut padded = report.clone();
        padded.push(0);
        assert!(
            verify(&padded, SAMPLE_CHAIN)
                .unwrap_err()
                .to_string()
                .contains("is followed by 1 bytes")
        );
        assert_eq!(kind(verify(&report[..30], SAMPLE_CHAIN)), "MalformedReport");
    }

    #[test]
    fn a_report_over_another_nonce_is_refused() {
        let other = [7; 32];
        let refused = verify_gpu(
            &sample_report(),
            SAMPLE_CHAIN,
            &Claimed {
                nonce: &other,
                ..claimed()
            },
            &PinnedRoot::nvidia_device(),
            NOW,
        );
        assert_eq!(kind(refused), "WrongNonce");
    }

    #[test]
    fn a_report_presented_with_another_gpus_chain_is_refused() {
        // The other chain is genuine (it verifies to NVIDIA's root), but its key did not sign.
        assert_eq!(
            kind(verify(&sample_report(), OTHER_GPU_CHAIN)),
            "ReportSignature"
        );
    }

    #[test]
    fn a_chain_out_of_order_short_or_not_pem_is_refused() {
        let pems = pem_certificates(SAMPLE_CHAIN).unwrap();
        let chain = |order: &[usize]| pem_chain(order.iter().map(|&i| &pems[i]));
        let reordered = verify(&sample_report(), &chain(&[0, 2, 1, 3, 4])).unwrap_err();
        assert_eq!(reordered.kind(), "BadChain");
        assert!(
            reordered
                .to_string()
                .contains("must run leaf to root, in order"),
            "{reordered}"
        );
        // Without the leaf, the device certificate would be taken for it.
        assert_eq!(
            kind(verify(&sample_report(), &chain(&[1, 2, 3, 4]))),
            "BadChain"
        );
        assert_eq!(kind(verify(&sample_report(), &chain(&[0, 4]))), "BadChain");
        assert_eq!(
            kind(verify(&sample_report(), &chain(&[0, 1, 2, 3]))),
            "UnknownRoot"
        );
        assert_eq!(kind(verify(&sample_report(), b"not a chain")), "BadChain");
        let garbage = b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
        assert_eq!(kind(verify(&sample_report(), garbage)), "BadChain");
    }

    #[test]
    fn a_chain_is_valid_only_between_its_dates() {
        // 2017: before NVIDIA issued the chain.
        let early = verify_gpu(
            &sample_report(),
            SAMPLE_CHAIN,
            &claimed(),
            &PinnedRoot::nvidia_device(),
            1_500_000_000,
        )
        .unwrap_err();
        assert_eq!(early.kind(), "CertificateNotValid");
        assert!(early.to_string().contains("is not valid before"), "{early}");

        // An expired leaf, in a chain of our own making (NVIDIA's never expire before 9999).
        let (chain, root) = forged_chain(|index, tbs| {
            if index == 0 {
                tbs.validity.not_after = x509_cert::time::Time::UtcTime(
                    UtcTime::from_unix_duration(std::time::Duration::from_secs(1_700_000_000))
                        .unwrap(),
                );
            }
        });
        let expired = verify_gpu(&sample_report(), &chain, &claimed(), &root, NOW).unwrap_err();
        assert_eq!(expired.kind(), "CertificateNotValid");
        assert!(
            expired
                .to_string()
                .starts_with("certificateChain[0]: expired at"),
            "{expired}"
        );
    }

    #[test]
    fn a_chain_to_another_root_or_with_a_link_re_signed_is_refused() {
        // A complete chain with NVIDIA's names under a root of our own: well formed, and
        // verified link by link against its own root, but not NVIDIA's.
        let (forged, own_root) = forged_chain(|_, _| {});
        let refused = verify(&sample_report(), &forged).unwrap_err();
        assert_eq!(refused.kind(), "UnknownRoot");
        assert!(
            refused.to_string().contains(NVIDIA_DEVICE_ROOT_SHA256),
            "{refused}"
        );
        // Against its own root the chain passes and the report, signed by NVIDIA's leaf key,
        // does not verify with the forged leaf's.
        let against_own = verify_gpu(&sample_report(), &forged, &claimed(), &own_root, NOW);
        assert_eq!(kind(against_own), "ReportSignature");

        // NVIDIA's root kept, the device certificate replaced by one signed with another key.
        let mut pems = pem_certificates(SAMPLE_CHAIN).unwrap();
        let forged = pem_certificates(&forged_chain(|_, _| {}).0).unwrap();
        pems[1] = forged[1].clone();
        // The genuine leaf no longer verifies under the substituted device key.
        let refused = verify(&sample_report(), &pem_chain(&pems)).unwrap_err();
        assert_eq!(refused, CcRejection::ChainSignature { index: 0 });
    }

    pub fn key() -> EcdsaKeyPair {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, &rng).unwrap();
        EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap()
    }

    /// NVIDIA's sample chain with every key replaced by one of ours and every certificate
    /// re-signed by the next (the root by itself), after `tweak`: the chain and its root.
    fn forged_chain(tweak: impl Fn(usize, &mut TbsCertificate)) -> (Vec<u8>, PinnedRoot) {
        let (ders, _) = forged_ders(tweak);
        let root = PinnedRoot::from_pem("a test root", &pem_chain(ders.last())).unwrap();
        (pem_chain(&ders), root)
    }

    /// [`forged_chain`]'s certificates as DER, with the key of each.
    pub fn forged_ders(
        tweak: impl Fn(usize, &mut TbsCertificate),
    ) -> (Vec<Vec<u8>>, Vec<EcdsaKeyPair>) {
        let rng = SystemRandom::new();
        let certificates: Vec<Certificate> = pem_certificates(SAMPLE_CHAIN)
            .unwrap()
            .iter()
            .map(|d| Certificate::from_der(d).unwrap())
            .collect();
        let keys: Vec<EcdsaKeyPair> = certificates.iter().map(|_| key()).collect();
        let ders: Vec<Vec<u8>> = certificates
            .iter()
            .enumerate()
            .map(|(index, certificate)| {
                let mut tbs = certificate.tbs_certificate.clone();
                tbs.subject_public_key_info.subject_public_key =
                    BitString::from_bytes(keys[index].public_key().as_ref()).unwrap();
                tweak(index, &mut tbs);
                let signer = &keys[(index + 1).min(keys.len() - 1)];
                let signature = signer.sign(&rng, &tbs.to_der().unwrap()).unwrap();
                Certificate {
                    tbs_certificate: tbs,
                    signature_algorithm: certificate.signature_algorithm.clone(),
                    signature: BitString::from_bytes(signature.as_ref()).unwrap(),
                }
                .to_der()
                .unwrap()
            })
            .collect();
        (ders, keys)
    }

    /// Certificates as one PEM text, in order.
    pub fn pem_chain<'a>(ders: impl IntoIterator<Item = &'a Vec<u8>>) -> Vec<u8> {
        ders.into_iter()
            .map(|der| {
                x509_cert::der::pem::encode_string("CERTIFICATE", LineEnding::LF, der).unwrap()
            })
            .collect::<String>()
            .into_bytes()
    }
}

//! NVIDIA's reference integrity manifests (RIMs): the measurements a genuine driver or VBIOS
//! produces, published by NVIDIA as SWID tags signed with XML-DSig. Pure: [`verify_rim`] checks a
//! manifest's signature and certificates to the pinned CoRIM root at a given time, and
//! [`compare`] holds a verified GPU's measurements against the manifests for its driver and
//! VBIOS.
//!
//! A manifest is a public document, the same for every GPU of one chip and version, and it
//! authenticates itself: whoever hands one over (a provider, a buyer, a validator operator) is
//! not trusted, only NVIDIA's signature is.
//!
//! The signature is checked as NVIDIA makes it and no other way: one enveloped signature, child
//! of the root, over the whole document (`URI=""`), inclusive C14N 1.1 (or 1.0, identical for
//! what [`c14n::parse`] accepts), SHA-384 and ECDSA P-384. Anything else is refused.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{ECDSA_P384_SHA384_FIXED, UnparsedPublicKey};
use roxmltree::Node;
use sha2::{Digest, Sha384};
use x509_cert::ext::pkix::KeyUsage;

use super::c14n;
use super::nvidia::{AttestedGpu, CcRejection, PinnedRoot, public_key, verify_chain};

const SWID: &str = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd";
const DSIG: &str = "http://www.w3.org/2000/09/xmldsig#";
const HASH_SHA384: &str = "http://www.w3.org/2001/04/xmlenc#sha384";
const C14N_11: &str = "http://www.w3.org/2006/12/xml-c14n11";
const C14N_10: &str = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315";
const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
const ECDSA_SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384";
const DIGEST_SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#sha384";
/// NVIDIA's manifests are about 20 KiB.
pub const MAX_RIM_BYTES: usize = 128 * 1024;
/// SHA-384: every measurement NVIDIA's Hopper GPUs report.
const MEASUREMENT_BYTES: usize = 48;
const MAX_ALTERNATIVES: usize = 16;
/// The measurement a report leaves undefined while NVDEC0 is disabled.
const NVDEC_MEASUREMENT: u8 = 35;

/// A manifest whose signature verified: its golden measurements by index (NVIDIA's, from 0;
/// the report's block index is one more).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReferenceManifest {
    /// The chip it is for (`GH100`).
    pub chip: String,
    /// The driver or VBIOS version it describes, lowercase (`545.00`, `96.00.5e.00.01`).
    pub version: String,
    /// The active measurements only: an inactive one is not compared.
    pub golden: BTreeMap<u8, Golden>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Golden {
    pub name: String,
    /// Each value a genuine component may measure, hex.
    pub alternatives: Vec<String>,
}

/// Why a manifest was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RimRejection {
    #[error("rim: {0}")]
    Malformed(String),
    #[error("rim.Signature: {0}")]
    Signature(String),
    #[error("rim.Signature.KeyInfo: {0}")]
    Chain(#[from] CcRejection),
}

impl RimRejection {
    pub fn kind(&self) -> &'static str {
        match self {
            RimRejection::Malformed(_) => "MalformedRim",
            RimRejection::Signature(_) => "RimSignature",
            RimRejection::Chain(_) => "RimCertificate",
        }
    }
}

fn malformed(rule: impl Into<String>) -> RimRejection {
    RimRejection::Malformed(rule.into())
}

fn signature(rule: impl Into<String>) -> RimRejection {
    RimRejection::Signature(rule.into())
}

/// Verifies a manifest's signature and certificates to `root` at `now` (seconds since the
/// epoch), then reads it.
pub fn verify_rim(
    xml: &[u8],
    root: &PinnedRoot,
    now: i64,
) -> Result<ReferenceManifest, RimRejection> {
    if xml.len() > MAX_RIM_BYTES {
        return Err(malformed(format!(
            "{} bytes is over the limit of {MAX_RIM_BYTES}",
            xml.len()
        )));
    }
    let text = std::str::from_utf8(xml).map_err(|_| malformed("is not UTF-8"))?;
    let document = c14n::parse(text).map_err(|e| malformed(e.0))?;
    let identity = document.root_element();
    if !is(identity, SWID, "SoftwareIdentity") {
        return Err(malformed("the root is not a SWID SoftwareIdentity"));
    }
    let signatures: Vec<Node<'_, '_>> = document
        .descendants()
        .filter(|n| is(*n, DSIG, "Signature"))
        .collect();
    let sig = match signatures.as_slice() {
        [only] if only.parent() == Some(identity) => *only,
        [_] => {
            return Err(signature(
                "is not a child of SoftwareIdentity (not enveloped)",
            ));
        }
        other => {
            return Err(signature(format!(
                "{} signatures; a RIM has one",
                other.len()
            )));
        }
    };
    let signed_info = signature_child(sig, "SignedInfo")?;
    let [method, algorithm, reference] = children::<3>(signed_info, "SignedInfo")?;
    expect_algorithm(method, "CanonicalizationMethod", &[C14N_11, C14N_10])?;
    expect_algorithm(algorithm, "SignatureMethod", &[ECDSA_SHA384])?;
    if !is(reference, DSIG, "Reference") || reference.attribute("URI") != Some("") {
        return Err(signature(
            "SignedInfo holds one Reference, to the whole document (URI=\"\")",
        ));
    }
    let [transforms, digest_method, digest_value] = children::<3>(reference, "Reference")?;
    let [enveloped, canonical] = children::<2>(transforms, "Transforms")?;
    expect_algorithm(enveloped, "Transform", &[ENVELOPED])?;
    expect_algorithm(canonical, "Transform", &[C14N_11, C14N_10])?;
    expect_algorithm(digest_method, "DigestMethod", &[DIGEST_SHA384])?;
    let expected_digest = base64_of(digest_value, "DigestValue")?;

    // The reference first: the document as signed, without its signature.
    let document_bytes = c14n::canonicalize(text, identity, Some(sig));
    if Sha384::digest(&document_bytes).as_slice() != expected_digest.as_slice() {
        return Err(signature(
            "the document's SHA-384 is not the signed DigestValue (altered after signing)",
        ));
    }
    let certificates: Vec<Vec<u8>> = signature_child(signature_child(sig, "KeyInfo")?, "X509Data")?
        .children()
        .filter(|n| is(*n, DSIG, "X509Certificate"))
        .map(|n| base64_of(n, "X509Certificate"))
        .collect::<Result<_, _>>()?;
    let chain = verify_chain(certificates, root, now)?;
    let may_sign = chain[0]
        .1
        .tbs_certificate
        .get::<KeyUsage>()
        .ok()
        .flatten()
        .is_some_and(|(_, usage)| usage.digital_signature());
    if !may_sign {
        return Err(signature(
            "the signing certificate's key usage does not include digitalSignature",
        ));
    }
    let value = base64_of(signature_child(sig, "SignatureValue")?, "SignatureValue")?;
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, public_key(&chain[0].1))
        .verify(&c14n::canonicalize(text, signed_info, None), &value)
        .map_err(|_| signature("SignatureValue does not verify with the signing certificate"))?;

    read_manifest(identity)
}

/// The manifest's version and active measurements, from a signature-checked document.
fn read_manifest(identity: Node<'_, '_>) -> Result<ReferenceManifest, RimRejection> {
    let meta = swid_child(identity, "Meta")?;
    let version = meta
        .attribute("colloquialVersion")
        .filter(|v| !v.is_empty() && v.len() <= 64)
        .ok_or_else(|| malformed("Meta.colloquialVersion is required, at most 64 characters"))?
        .to_ascii_lowercase();
    let chip = meta
        .attribute("product")
        .filter(|v| !v.is_empty() && v.len() <= 64)
        .ok_or_else(|| malformed("Meta.product is required, at most 64 characters"))?
        .to_string();
    let mut golden = BTreeMap::new();
    let mut indices = std::collections::BTreeSet::new();
    for resource in swid_child(identity, "Payload")?
        .children()
        .filter(Node::is_element)
    {
        let field = |name: &str| {
            resource
                .attribute(name)
                .ok_or_else(|| malformed(format!("Payload.Resource.{name} is required")))
        };
        let index: u8 = field("index")?
            .parse()
            .map_err(|_| malformed("Payload.Resource.index is a number from 0 to 255"))?;
        let active = match field("active")? {
            "True" => true,
            "False" => false,
            other => {
                return Err(malformed(format!(
                    "Payload.Resource[{index}].active is True or False, not {other}"
                )));
            }
        };
        let count: usize = field("alternatives")?
            .parse()
            .ok()
            .filter(|n| (1..=MAX_ALTERNATIVES).contains(n))
            .ok_or_else(|| {
                malformed(format!(
                    "Payload.Resource[{index}].alternatives is 1 to {MAX_ALTERNATIVES}"
                ))
            })?;
        if field("size")? != MEASUREMENT_BYTES.to_string() {
            return Err(malformed(format!(
                "Payload.Resource[{index}].size is {MEASUREMENT_BYTES} (SHA-384)"
            )));
        }
        let alternatives = (0..count)
            .map(|k| {
                resource
                    .attribute((HASH_SHA384, format!("Hash{k}").as_str()))
                    .filter(|h| h.len() == 2 * MEASUREMENT_BYTES && hex::decode(h).is_ok())
                    .map(str::to_ascii_lowercase)
                    .ok_or_else(|| {
                        malformed(format!(
                            "Payload.Resource[{index}].Hash{k} is {MEASUREMENT_BYTES} bytes of hex"
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let entry = Golden {
            name: field("name")?.chars().take(64).collect(),
            alternatives,
        };
        if !indices.insert(index) {
            return Err(malformed(format!(
                "Payload.Resource index {index} is repeated"
            )));
        }
        if active {
            golden.insert(index, entry);
        }
    }
    if golden.is_empty() {
        return Err(malformed("Payload holds no active measurement"));
    }
    Ok(ReferenceManifest {
        chip,
        version,
        golden,
    })
}

/// Which measurements matched which manifests, for the verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RimMatch {
    /// (component, version, measurements compared) for each manifest held against the report.
    pub compared: Vec<(&'static str, String, usize)>,
    /// The components no manifest was supplied for.
    pub missing: Vec<(&'static str, String)>,
}

impl fmt::Display for RimMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let compared: Vec<String> = self
            .compared
            .iter()
            .map(|(component, version, n)| {
                format!("{n} measurements match NVIDIA's {component} RIM {version}")
            })
            .collect();
        write!(f, "{}", compared.join(", "))
    }
}

/// Why a GPU's measurements do not match its manifests.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MeasurementMismatch {
    #[error(
        "measurement {index} ({name}) is {found}, which NVIDIA's {component} RIM {version} does not list"
    )]
    Differs {
        component: &'static str,
        version: String,
        index: u8,
        name: String,
        found: String,
    },
    #[error(
        "measurement {index} ({name}) of NVIDIA's {component} RIM {version} is not in the report"
    )]
    Missing {
        component: &'static str,
        version: String,
        index: u8,
        name: String,
    },
    #[error("the driver RIM and the VBIOS RIM both define measurement {index}")]
    Conflict { index: u8 },
}

/// Holds `gpu`'s measurements against the manifests for its driver and VBIOS, where supplied
/// (each must be for the GPU's chip and version; [`ManifestBook::for_gpu`] picks them).
pub fn compare(
    gpu: &AttestedGpu,
    driver: Option<&ReferenceManifest>,
    vbios: Option<&ReferenceManifest>,
) -> Result<RimMatch, MeasurementMismatch> {
    let mut result = RimMatch {
        compared: Vec::new(),
        missing: Vec::new(),
    };
    let mut seen = std::collections::BTreeSet::new();
    for (component, version, manifest) in [
        ("driver", &gpu.driver, driver),
        ("VBIOS", &gpu.vbios, vbios),
    ] {
        let Some(manifest) = manifest else {
            result
                .missing
                .push((component, version.to_ascii_lowercase()));
            continue;
        };
        let mut compared = 0;
        for (&index, golden) in &manifest.golden {
            if !seen.insert(index) {
                return Err(MeasurementMismatch::Conflict { index });
            }
            if index == NVDEC_MEASUREMENT && gpu.nvdec_disabled {
                continue;
            }
            let found = index
                .checked_add(1)
                .and_then(|block| gpu.measurements.get(&block))
                .ok_or_else(|| MeasurementMismatch::Missing {
                    component,
                    version: manifest.version.clone(),
                    index,
                    name: golden.name.clone(),
                })?;
            let found = hex::encode(found);
            if !golden.alternatives.contains(&found) {
                return Err(MeasurementMismatch::Differs {
                    component,
                    version: manifest.version.clone(),
                    index,
                    name: golden.name.clone(),
                    found,
                });
            }
            compared += 1;
        }
        result
            .compared
            .push((component, manifest.version.clone(), compared));
    }
    Ok(result)
}

/// Verified manifests by chip and version.
#[derive(Clone, Debug, Default)]
pub struct ManifestBook {
    by_key: BTreeMap<(String, String), ReferenceManifest>,
}

impl ManifestBook {
    pub fn insert(&mut self, manifest: ReferenceManifest) {
        self.by_key
            .insert((manifest.chip.clone(), manifest.version.clone()), manifest);
    }

    pub fn get(&self, chip: &str, version: &str) -> Option<&ReferenceManifest> {
        self.by_key
            .get(&(chip.to_string(), version.to_ascii_lowercase()))
    }

    /// The driver and VBIOS manifests for `gpu`, those there are.
    pub fn for_gpu(
        &self,
        gpu: &AttestedGpu,
    ) -> (Option<&ReferenceManifest>, Option<&ReferenceManifest>) {
        (
            self.get(&gpu.chip, &gpu.driver),
            self.get(&gpu.chip, &gpu.vbios),
        )
    }
}

fn is(node: Node<'_, '_>, namespace: &str, name: &str) -> bool {
    node.is_element()
        && node.tag_name().namespace() == Some(namespace)
        && node.tag_name().name() == name
}

/// The one child of `parent` named `name` in `namespace`, if there is exactly one.
fn only_child<'a, 'i>(parent: Node<'a, 'i>, namespace: &str, name: &str) -> Option<Node<'a, 'i>> {
    let mut found = parent.children().filter(|n| is(*n, namespace, name));
    match (found.next(), found.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    }
}

/// A signature's one child `name`.
fn signature_child<'a, 'i>(parent: Node<'a, 'i>, name: &str) -> Result<Node<'a, 'i>, RimRejection> {
    only_child(parent, DSIG, name)
        .ok_or_else(|| signature(format!("{} holds one {name}", parent.tag_name().name())))
}

/// The manifest's one child `name`.
fn swid_child<'a, 'i>(parent: Node<'a, 'i>, name: &str) -> Result<Node<'a, 'i>, RimRejection> {
    only_child(parent, SWID, name)
        .ok_or_else(|| malformed(format!("SoftwareIdentity holds one {name}")))
}

/// Exactly `N` element children, in order.
fn children<'a, 'i, const N: usize>(
    parent: Node<'a, 'i>,
    what: &str,
) -> Result<[Node<'a, 'i>; N], RimRejection> {
    let elements: Vec<Node<'a, 'i>> = parent.children().filter(Node::is_element).collect();
    elements.try_into().map_err(|found: Vec<_>| {
        signature(format!("{what} holds {} elements, not {N}", found.len()))
    })
}

fn expect_algorithm(node: Node<'_, '_>, name: &str, allowed: &[&str]) -> Result<(), RimRejection> {
    let algorithm = node.attribute("Algorithm").unwrap_or("");
    if !is(node, DSIG, name) || !allowed.contains(&algorithm) {
        return Err(signature(format!(
            "{name} is {}, not one of {}",
            if algorithm.is_empty() {
                node.tag_name().name()
            } else {
                algorithm
            },
            allowed.join(", ")
        )));
    }
    Ok(())
}

fn base64_of(node: Node<'_, '_>, what: &str) -> Result<Vec<u8>, RimRejection> {
    let text: String = node
        .text()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    STANDARD
        .decode(text)
        .map_err(|e| signature(format!("{what} is not base64: {e}")))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::attestation::nvidia::{Claimed, verify_gpu};

    /// NVIDIA's published test set (see `testdata/README.md`): one H100's report and chain
    /// with the driver and VBIOS manifests for it.
    pub const DRIVER_RIM: &[u8] = include_bytes!("testdata/Driver_RIM_test_no_gpu.swidtag");
    pub const VBIOS_RIM: &[u8] =
        include_bytes!("testdata/1010_0200_882_96005E0001_test_no_gpu.swidtag");
    /// NVIDIA's production manifest for the same VBIOS version.
    pub const VBIOS_RIM_PROD: &[u8] =
        include_bytes!("testdata/1010_0200_882_96005E0001_PROD.swidtag");
    pub const CHAIN: &[u8] = include_bytes!("testdata/gpuAkCertChain.txt");
    pub const NONCE: &str = "4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e";
    /// 2024-06-01: within the manifests' signing certificates' validity (to June 2025).
    pub const SIGNED_AT: i64 = 1_717_200_000;

    pub fn report() -> Vec<u8> {
        hex::decode(include_str!("testdata/testNoGpuAttestationReport.txt").trim()).unwrap()
    }

    fn gpu() -> AttestedGpu {
        let nonce = hex::decode(NONCE).unwrap();
        let claimed = Claimed {
            nonce: &nonce,
            driver: "545.00",
            vbios: "96.00.5e.00.01",
            ocsp: &[],
        };
        verify_gpu(
            &report(),
            CHAIN,
            &claimed,
            &PinnedRoot::nvidia_device(),
            SIGNED_AT,
        )
        .unwrap()
    }

    fn verify(xml: &[u8]) -> Result<ReferenceManifest, RimRejection> {
        verify_rim(xml, &PinnedRoot::nvidia_rim(), SIGNED_AT)
    }

    #[test]
    fn nvidias_manifests_verify_and_the_sample_gpu_matches_them() {
        let driver = verify(DRIVER_RIM).unwrap();
        let vbios = verify(VBIOS_RIM).unwrap();
        assert_eq!(
            (driver.chip.as_str(), driver.version.as_str()),
            ("GH100", "545.00")
        );
        assert_eq!(
            (vbios.chip.as_str(), vbios.version.as_str()),
            ("GH100", "96.00.5e.00.01")
        );
        assert_eq!((driver.golden.len(), vbios.golden.len()), (21, 12));
        let gpu = gpu();
        assert_eq!(gpu.chip, "GH100");
        // The report says NVDEC0 is disabled, so the driver's measurement 35 is not compared.
        assert!(gpu.nvdec_disabled);
        assert!(driver.golden.contains_key(&NVDEC_MEASUREMENT));
        let mut book = ManifestBook::default();
        book.insert(driver.clone());
        book.insert(vbios.clone());
        let (d, v) = book.for_gpu(&gpu);
        let matched = compare(&gpu, d, v).unwrap();
        assert_eq!(
            matched.compared,
            vec![
                ("driver", "545.00".to_string(), 20),
                ("VBIOS", "96.00.5e.00.01".to_string(), 12)
            ]
        );
        assert!(matched.missing.is_empty());
        assert_eq!(
            matched.to_string(),
            "20 measurements match NVIDIA's driver RIM 545.00, 12 measurements match NVIDIA's \
             VBIOS RIM 96.00.5e.00.01"
        );
        // Only the driver's: the VBIOS is named as not checked.
        let half = compare(&gpu, Some(&driver), None).unwrap();
        assert_eq!(half.missing, vec![("VBIOS", "96.00.5e.00.01".to_string())]);
    }

    #[test]
    fn a_gpu_whose_firmware_is_not_the_published_one_is_refused() {
        // NVIDIA's production manifest for the same VBIOS version lists other values than the
        // test GPU measured: the GPU runs firmware that manifest does not describe.
        let prod = verify(VBIOS_RIM_PROD).unwrap();
        assert_eq!(prod.version, "96.00.5e.00.01");
        let driver = verify(DRIVER_RIM).unwrap();
        let refused = compare(&gpu(), Some(&driver), Some(&prod)).unwrap_err();
        assert!(
            matches!(
                refused,
                MeasurementMismatch::Differs {
                    component: "VBIOS",
                    index: 1,
                    ..
                }
            ),
            "{refused}"
        );
        assert!(
            refused.to_string().contains("HashedMeasurement_1_FSP"),
            "{refused}"
        );
        // A measurement the report lacks, and two manifests claiming one index.
        let mut gpu = gpu();
        gpu.measurements.remove(&2);
        let vbios = verify(VBIOS_RIM).unwrap();
        let missing = compare(&gpu, None, Some(&vbios)).unwrap_err();
        assert!(
            matches!(missing, MeasurementMismatch::Missing { index: 1, .. }),
            "{missing}"
        );
        let conflict = compare(&gpu, Some(&driver), Some(&driver)).unwrap_err();
        assert!(
            matches!(conflict, MeasurementMismatch::Conflict { .. }),
            "{conflict}"
        );
    }

    #[test]
    fn a_manifest_is_looked_up_by_chip_and_version_only() {
        let mut book = ManifestBook::default();
        book.insert(verify(DRIVER_RIM).unwrap());
        book.insert(verify(VBIOS_RIM).unwrap());
        let mut other = gpu();
        other.driver = "550.90.07".into();
        assert!(matches!(book.for_gpu(&other), (None, Some(_))));
        other.chip = "GB100".into();
        assert!(matches!(book.for_gpu(&other), (None, None)));
        let matched = compare(&other, None, None).unwrap();
        assert!(matched.compared.is_empty());
        assert_eq!(matched.missing.len(), 2);
    }

    fn text() -> String {
        String::from_utf8(DRIVER_RIM.to_vec()).unwrap()
    }

    /// `text()` with `from` (which must occur) replaced by `to`, once.
    fn altered(from: &str, to: &str) -> Vec<u8> {
        let text = text();
        assert!(text.contains(from), "{from}");
        text.replacen(from, to, 1).into_bytes()
    }

    /// `altered(from, to)` with its DigestValue (`digest`) made again over the altered
    /// document: what a forger who cannot sign would try.
    fn redigested(from: &str, to: &str, digest: &str) -> Vec<u8> {
        let changed = String::from_utf8(altered(from, to)).unwrap();
        let document = c14n::parse(&changed).unwrap();
        let identity = document.root_element();
        let sig = identity.children().find(|n| is(*n, DSIG, "Signature"));
        let again = STANDARD.encode(Sha384::digest(c14n::canonicalize(&changed, identity, sig)));
        changed.replacen(digest, &again, 1).into_bytes()
    }

    #[test]
    fn every_altered_or_misplaced_manifest_is_refused_with_its_reason() {
        let text = text();
        let signature_start = text.find("<ds:Signature ").unwrap();
        let signature_end = text.find("</ds:Signature>").unwrap() + "</ds:Signature>".len();
        let whole_signature = &text[signature_start..signature_end];
        let digest = text
            .split("<ds:DigestValue>")
            .nth(1)
            .unwrap()
            .split('<')
            .next()
            .unwrap();
        let value = text
            .split("<ds:SignatureValue>")
            .nth(1)
            .unwrap()
            .split('<')
            .next()
            .unwrap();
        let first_certificate = text
            .split("<ds:X509Certificate>")
            .nth(1)
            .unwrap()
            .split("</")
            .next()
            .unwrap();
        let second_certificate = text
            .split("<ds:X509Certificate>")
            .nth(2)
            .unwrap()
            .split("</")
            .next()
            .unwrap();
        let mut flipped_value = value.to_string();
        flipped_value.replace_range(10..11, if &value[10..11] == "A" { "B" } else { "A" });
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "a golden value changed",
                altered("ns2:Hash0=\"0e0ee161", "ns2:Hash0=\"1e0ee161"),
                "altered after signing",
            ),
            (
                "the version changed",
                altered(
                    "colloquialVersion=\"545.00\"",
                    "colloquialVersion=\"550.90.07\"",
                ),
                "altered after signing",
            ),
            (
                "a measurement switched off",
                altered("active=\"True\"", "active=\"False\""),
                "altered after signing",
            ),
            (
                "a golden value changed and the digest made again",
                redigested("ns2:Hash0=\"0e0ee161", "ns2:Hash0=\"1e0ee161", digest),
                "SignatureValue does not verify",
            ),
            (
                "the signature value altered",
                altered(value, &flipped_value),
                "does not verify",
            ),
            ("no signature", altered(whole_signature, ""), "0 signatures"),
            (
                "two signatures",
                altered(
                    whole_signature,
                    &format!("{whole_signature}{whole_signature}"),
                ),
                "2 signatures",
            ),
            (
                "the signature moved into the payload",
                altered(whole_signature, "")
                    .into_iter()
                    .map(char::from)
                    .collect::<String>()
                    .replacen(
                        "</ns0:Payload>",
                        &format!("{whole_signature}</ns0:Payload>"),
                        1,
                    )
                    .into_bytes(),
                "not enveloped",
            ),
            (
                "another signature algorithm",
                altered("xmldsig-more#ecdsa-sha384", "xmldsig-more#rsa-sha256"),
                "SignatureMethod",
            ),
            (
                "a reference to part of the document",
                altered("<ds:Reference URI=\"\">", "<ds:Reference URI=\"#payload\">"),
                "one Reference",
            ),
            (
                "the certificates reordered",
                altered(first_certificate, "SWAP")
                    .into_iter()
                    .map(char::from)
                    .collect::<String>()
                    .replacen(second_certificate, first_certificate, 1)
                    .replacen("SWAP", second_certificate, 1)
                    .into_bytes(),
                "in order",
            ),
            (
                "an entity declared",
                format!("<!DOCTYPE SoftwareIdentity [<!ENTITY x \"y\">]>{text}").into_bytes(),
                "well-formed",
            ),
            ("not UTF-8", [DRIVER_RIM, &[0xff]].concat(), "UTF-8"),
            ("too large", vec![b' '; MAX_RIM_BYTES + 1], "over the limit"),
        ];
        for (what, xml, reason) in cases {
            let refused = verify(&xml).expect_err(what);
            assert!(refused.to_string().contains(reason), "{what}: {refused}");
        }
    }

    #[test]
    fn a_manifest_is_refused_from_another_root_or_once_its_signer_expired() {
        let other_root = verify_rim(DRIVER_RIM, &PinnedRoot::nvidia_device(), SIGNED_AT);
        assert_eq!(other_root.unwrap_err().kind(), "RimCertificate");
        // 2026-12-01: the signing certificate expired in June 2025.
        let expired = verify_rim(DRIVER_RIM, &PinnedRoot::nvidia_rim(), 1_796_083_200);
        let expired = expired.unwrap_err();
        assert!(
            expired.to_string().contains("certificateChain[0]: expired"),
            "{expired}"
        );
    }

    #[test]
    fn the_pinned_rim_root_is_the_one_the_readme_names() {
        assert_eq!(
            PinnedRoot::nvidia_rim().fingerprint(),
            crate::attestation::nvidia::NVIDIA_RIM_ROOT_SHA256
        );
        let readme = include_str!("../../README.md");
        assert!(readme.contains(crate::attestation::nvidia::NVIDIA_RIM_ROOT_SHA256));
    }
}

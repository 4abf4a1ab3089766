//! Certificate revocation of a GPU's certificate chain, from OCSP responses (RFC 6960) supplied
//! with the evidence. Pure. Only the responder's signature is trusted, not whoever supplied the
//! responses: each must be signed by a CA above the certificate it speaks for (its issuer or
//! higher), or by a responder one of them certified for OCSP signing, and be current at the
//! block's time.
//!
//! What is asked about, as NVIDIA's own verifier does: the device certificate and every CA up
//! to the root, not the leaf, which the GPU's firmware makes at boot and no responder knows.
//!
//! Responses are an optional input (fetching them needs NVIDIA's responder on the internet):
//! none supplied leaves revocation unchecked, and the verdict says so; any supplied must cover
//! every certificate asked about and say each is good.

use sha2::{Digest, Sha384};
use x509_cert::Certificate;
use x509_cert::der::asn1::OctetString;
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode, Encode};
use x509_cert::ext::pkix::ExtendedKeyUsage;
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspRequest, OcspResponse, OcspResponseStatus, Request,
    TbsRequest, Version,
};

use super::nvidia::{
    CcRejection, check_validity, first_element, pem_certificates, public_key, signed_by,
};

const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const OCSP_BASIC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
const OCSP_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.9");
/// A response is a few hundred bytes, a kilobyte or two with its responder's certificate.
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024;
/// One response per certificate below the root, and a little room.
pub const MAX_RESPONSES: usize = 8;
/// How long a response without a `nextUpdate` counts as current.
const MAX_AGE_SECONDS: i64 = 7 * 24 * 3600;
/// How far a response may be dated after the block's time (responders date it on their clock).
const SKEW_SECONDS: i64 = 300;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OcspRejection {
    #[error("ocspResponses[{index}]: {rule}")]
    Response { index: usize, rule: String },
    #[error("certificateChain[{certificate}]: no supplied OCSP response speaks for it")]
    Uncovered { certificate: usize },
    #[error("certificateChain[{certificate}]: revoked at {at}, its OCSP responder says")]
    Revoked { certificate: usize, at: String },
    #[error("certificateChain[{certificate}]: unknown to its OCSP responder")]
    Unknown { certificate: usize },
}

fn rule(index: usize, rule: impl Into<String>) -> OcspRejection {
    OcspRejection::Response {
        index,
        rule: rule.into(),
    }
}

/// Checks `responses` against a verified `chain` (leaf first, root last) at `now`. Returns how
/// many certificates they showed good: every one [`asked_about`], or a refusal.
pub fn check_revocation(
    chain: &[(Vec<u8>, Certificate)],
    responses: &[Vec<u8>],
    now: i64,
) -> Result<usize, OcspRejection> {
    if responses.len() > MAX_RESPONSES {
        return Err(rule(
            MAX_RESPONSES,
            format!("more than {MAX_RESPONSES} responses"),
        ));
    }
    let mut good = vec![false; chain.len()];
    for (index, der) in responses.iter().enumerate() {
        for certificate in check_response(index, der, chain, now)? {
            good[certificate] = true;
        }
    }
    let asked = asked_about(chain.len());
    match asked.clone().find(|&i| !good[i]) {
        Some(certificate) => Err(OcspRejection::Uncovered { certificate }),
        None => Ok(asked.len()),
    }
}

/// The certificates of a chain of `length` a responder is asked about: from the device
/// certificate (index 1) to the last below the root.
fn asked_about(length: usize) -> std::ops::Range<usize> {
    1..length.saturating_sub(1)
}

/// One response: which certificates of `chain` it shows good.
fn check_response(
    index: usize,
    der: &[u8],
    chain: &[(Vec<u8>, Certificate)],
    now: i64,
) -> Result<Vec<usize>, OcspRejection> {
    if der.len() > MAX_RESPONSE_BYTES {
        return Err(rule(
            index,
            format!(
                "{} bytes is over the limit of {MAX_RESPONSE_BYTES}",
                der.len()
            ),
        ));
    }
    let response = OcspResponse::from_der(der)
        .map_err(|e| rule(index, format!("is not an OCSPResponse: {e}")))?;
    if response.response_status != OcspResponseStatus::Successful {
        return Err(rule(
            index,
            format!("the responder answered {:?}", response.response_status),
        ));
    }
    let bytes = response
        .response_bytes
        .filter(|b| b.response_type == OCSP_BASIC)
        .ok_or_else(|| rule(index, "holds no basic OCSP response"))?;
    let basic_der = bytes.response.as_bytes();
    let basic = BasicOcspResponse::from_der(basic_der)
        .map_err(|e| rule(index, format!("is not a BasicOCSPResponse: {e}")))?;
    if basic.signature_algorithm.oid != ECDSA_WITH_SHA384 {
        return Err(rule(
            index,
            format!(
                "is signed with {}, not ecdsa-with-SHA384",
                basic.signature_algorithm.oid
            ),
        ));
    }
    let signed =
        first_element(basic_der).map_err(|e| rule(index, format!("tbsResponseData: {e}")))?;
    let signature = basic
        .signature
        .as_bytes()
        .ok_or_else(|| rule(index, "the signature is not whole bytes"))?;

    let mut shown = Vec::new();
    for single in &basic.tbs_response_data.responses {
        let Some(certificate) = (0..chain.len().saturating_sub(1))
            .find(|&i| speaks_for(&single.cert_id, &chain[i].1, &chain[i + 1].1))
        else {
            continue;
        };
        // Any CA above the certificate may answer for it, or a responder one of them certified.
        let answered_by_one = chain[certificate + 1..].iter().any(|(_, authority)| {
            std::iter::once(authority)
                .chain(delegated_responders(&basic, authority, now))
                .any(|signer| signed_by(signer, signed, signature))
        });
        if !answered_by_one {
            return Err(rule(
                index,
                format!(
                    "its signature is neither a CA's above certificateChain[{certificate}] nor \
                     a responder's one of them certified for OCSP signing"
                ),
            ));
        }
        let this_update = seconds(&single.this_update);
        if this_update > now + SKEW_SECONDS {
            return Err(rule(
                index,
                format!("is dated {this_update}, after now ({now})"),
            ));
        }
        let expires = single
            .next_update
            .as_ref()
            .map_or(this_update + MAX_AGE_SECONDS, seconds);
        if now > expires {
            return Err(rule(
                index,
                format!("expired at {expires} (now {now}): fetch a current one"),
            ));
        }
        match single.cert_status {
            CertStatus::Good(_) => shown.push(certificate),
            CertStatus::Revoked(info) => {
                return Err(OcspRejection::Revoked {
                    certificate,
                    at: info.revocation_time.0.to_date_time().to_string(),
                });
            }
            CertStatus::Unknown(_) => return Err(OcspRejection::Unknown { certificate }),
        }
    }
    if shown.is_empty() {
        return Err(rule(index, "speaks for no certificate of the chain"));
    }
    Ok(shown)
}

/// The OCSP requests (DER) to ask a responder about each certificate of a PEM chain
/// [`asked_about`], in chain order. The chain is not verified here: the network verifies it,
/// and the answers, again.
pub fn requests(chain_pem: &[u8]) -> Result<Vec<Vec<u8>>, CcRejection> {
    let certificates = pem_certificates(chain_pem)?
        .iter()
        .enumerate()
        .map(|(index, der)| {
            Certificate::from_der(der)
                .map_err(|e| CcRejection::Chain(format!("certificate {index} is not X.509: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let asked = asked_about(certificates.len());
    certificates[asked.start.min(certificates.len())..]
        .windows(2)
        .take(MAX_RESPONSES)
        .map(|pair| {
            let request = OcspRequest {
                tbs_request: TbsRequest {
                    version: Version::V1,
                    requestor_name: None,
                    request_list: vec![Request {
                        req_cert: cert_id(&pair[0], &pair[1])?,
                        single_request_extensions: None,
                    }],
                    request_extensions: None,
                },
                optional_signature: None,
            };
            request.to_der()
        })
        .collect::<Result<_, _>>()
        .map_err(|e| CcRejection::Chain(format!("an OCSP request cannot be encoded: {e}")))
}

/// Until when (seconds since the epoch) a response counts as current: its earliest
/// `nextUpdate`, or a week after it was made. `None` for what is not a response.
pub fn current_until(response: &[u8]) -> Option<i64> {
    let bytes = OcspResponse::from_der(response).ok()?.response_bytes?;
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes()).ok()?;
    basic
        .tbs_response_data
        .responses
        .iter()
        .map(|single| {
            single
                .next_update
                .as_ref()
                .map_or(seconds(&single.this_update) + MAX_AGE_SECONDS, seconds)
        })
        .min()
}

/// The identifier RFC 6960 gives `certificate` as issued by `issuer`, with SHA-384.
fn cert_id(
    certificate: &Certificate,
    issuer: &Certificate,
) -> Result<CertId, x509_cert::der::Error> {
    Ok(CertId {
        hash_algorithm: AlgorithmIdentifierOwned {
            oid: SHA384,
            parameters: None,
        },
        issuer_name_hash: OctetString::new(
            Sha384::digest(issuer.tbs_certificate.subject.to_der()?).to_vec(),
        )?,
        issuer_key_hash: OctetString::new(Sha384::digest(public_key(issuer)).to_vec())?,
        serial_number: certificate.tbs_certificate.serial_number.clone(),
    })
}

/// Whether `id` names `certificate` as issued by `issuer`, by the SHA-384 hashes RFC 6960
/// defines (NVIDIA's responder's; another hash is not taken).
fn speaks_for(id: &CertId, certificate: &Certificate, issuer: &Certificate) -> bool {
    id.hash_algorithm.oid == SHA384
        && cert_id(certificate, issuer).is_ok_and(|expected| {
            id.issuer_name_hash == expected.issuer_name_hash
                && id.issuer_key_hash == expected.issuer_key_hash
                && id.serial_number == expected.serial_number
        })
}

/// The keys of the response's certificates that `issuer` certified for OCSP signing, valid now.
fn delegated_responders<'a>(
    basic: &'a BasicOcspResponse,
    issuer: &Certificate,
    now: i64,
) -> impl Iterator<Item = &'a Certificate> {
    basic
        .certs
        .iter()
        .flatten()
        .filter(|responder| responder.tbs_certificate.issuer == issuer.tbs_certificate.subject)
        .filter(|responder| {
            responder
                .tbs_certificate
                .get::<ExtendedKeyUsage>()
                .ok()
                .flatten()
                .is_some_and(|(_, usage)| usage.0.contains(&OCSP_SIGNING))
        })
        .filter(move |responder| check_validity(0, responder, now).is_ok())
        .filter(|responder| {
            responder.signature_algorithm.oid == ECDSA_WITH_SHA384
                && responder.to_der().is_ok_and(|der| {
                    first_element(&der)
                        .is_ok_and(|tbs| signed_by(issuer, tbs, responder.signature.raw_bytes()))
                })
        })
}

fn seconds(time: &x509_ocsp::OcspGeneralizedTime) -> i64 {
    i64::try_from(time.0.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair};
    use x509_cert::der::asn1::{BitString, GeneralizedTime, Null};
    use x509_cert::ext::Extension;
    use x509_cert::serial_number::SerialNumber;
    use x509_ocsp::{
        OcspGeneralizedTime, ResponderId, ResponseBytes, ResponseData, RevokedInfo, SingleResponse,
    };

    use super::*;
    use crate::attestation::nvidia::tests::{forged_ders, key};
    use crate::attestation::nvidia::{PinnedRoot, verify_chain};

    const NOW: i64 = 1_796_083_200;

    /// A chain of five of our own certificates (NVIDIA's sample, re-keyed), verified, with the
    /// key of each.
    fn chain() -> (Vec<(Vec<u8>, Certificate)>, Vec<EcdsaKeyPair>) {
        let (ders, keys) = forged_ders(|_, _| {});
        let pem = crate::attestation::nvidia::tests::pem_chain(ders.last());
        let root = PinnedRoot::from_pem("a test root", &pem).unwrap();
        (verify_chain(ders, &root, NOW).unwrap(), keys)
    }

    fn time(seconds: i64) -> OcspGeneralizedTime {
        OcspGeneralizedTime(
            GeneralizedTime::from_unix_duration(std::time::Duration::from_secs(
                u64::try_from(seconds).unwrap(),
            ))
            .unwrap(),
        )
    }

    /// A response about `certificate`, signed by `signer`, carrying `certs`.
    struct Answer {
        certificate: usize,
        status: CertStatus,
        this_update: i64,
        next_update: Option<i64>,
        certs: Option<Vec<Certificate>>,
    }

    impl Answer {
        fn good(certificate: usize) -> Answer {
            Answer {
                certificate,
                status: CertStatus::good(),
                this_update: NOW - 3600,
                next_update: Some(NOW + 86_400),
                certs: None,
            }
        }

        fn signed(self, chain: &[(Vec<u8>, Certificate)], signer: &EcdsaKeyPair) -> Vec<u8> {
            let data = ResponseData {
                version: Version::V1,
                responder_id: ResponderId::ByName(
                    chain[self.certificate + 1]
                        .1
                        .tbs_certificate
                        .subject
                        .clone(),
                ),
                produced_at: time(self.this_update),
                responses: vec![SingleResponse {
                    cert_id: cert_id(&chain[self.certificate].1, &chain[self.certificate + 1].1)
                        .unwrap(),
                    cert_status: self.status,
                    this_update: time(self.this_update),
                    next_update: self.next_update.map(time),
                    single_extensions: None,
                }],
                response_extensions: None,
            };
            let signature = signer
                .sign(&SystemRandom::new(), &data.to_der().unwrap())
                .unwrap();
            let basic = BasicOcspResponse {
                tbs_response_data: data,
                signature_algorithm: AlgorithmIdentifierOwned {
                    oid: ECDSA_WITH_SHA384,
                    parameters: None,
                },
                signature: BitString::from_bytes(signature.as_ref()).unwrap(),
                certs: self.certs,
            };
            OcspResponse {
                response_status: OcspResponseStatus::Successful,
                response_bytes: Some(ResponseBytes {
                    response_type: OCSP_BASIC,
                    response: OctetString::new(basic.to_der().unwrap()).unwrap(),
                }),
            }
            .to_der()
            .unwrap()
        }
    }

    /// Good responses for every certificate below the root, each signed by its issuer.
    fn all_good(chain: &[(Vec<u8>, Certificate)], keys: &[EcdsaKeyPair]) -> Vec<Vec<u8>> {
        (0..chain.len() - 1)
            .map(|i| Answer::good(i).signed(chain, &keys[i + 1]))
            .collect()
    }

    #[test]
    fn responses_from_each_issuer_showing_every_certificate_good_pass() {
        let (chain, keys) = chain();
        assert_eq!(
            check_revocation(&chain, &all_good(&chain, &keys), NOW),
            Ok(3)
        );
        // The leaf need not be answered for (no responder knows it), only the device
        // certificate and the CAs above it; answered for, it is checked like the rest.
        let without_leaf = all_good(&chain, &keys).split_off(1);
        assert_eq!(check_revocation(&chain, &without_leaf, NOW), Ok(3));
        // A CA above the issuer may answer too.
        let mut by_root = all_good(&chain, &keys);
        by_root[1] = Answer::good(1).signed(&chain, &keys[4]);
        assert_eq!(check_revocation(&chain, &by_root, NOW), Ok(3));
        // Without a next update, a response counts for a week after it was made.
        let mut responses = all_good(&chain, &keys);
        responses[2] = Answer {
            next_update: None,
            ..Answer::good(2)
        }
        .signed(&chain, &keys[3]);
        assert_eq!(check_revocation(&chain, &responses, NOW), Ok(3));
    }

    #[test]
    fn a_revoked_unknown_or_uncovered_certificate_is_refused() {
        let (chain, keys) = chain();
        let with = |certificate: usize, answer: Answer| {
            let mut responses = all_good(&chain, &keys);
            responses[certificate] = answer.signed(&chain, &keys[certificate + 1]);
            check_revocation(&chain, &responses, NOW)
        };
        let revoked = with(
            1,
            Answer {
                status: CertStatus::revoked(RevokedInfo {
                    revocation_time: time(NOW - 60),
                    revocation_reason: None,
                }),
                ..Answer::good(1)
            },
        );
        assert!(
            matches!(revoked, Err(OcspRejection::Revoked { certificate: 1, .. })),
            "{revoked:?}"
        );
        let unknown = with(
            2,
            Answer {
                status: CertStatus::Unknown(Null),
                ..Answer::good(2)
            },
        );
        assert_eq!(unknown, Err(OcspRejection::Unknown { certificate: 2 }));
        let mut three = all_good(&chain, &keys);
        three.remove(3);
        assert_eq!(
            check_revocation(&chain, &three, NOW),
            Err(OcspRejection::Uncovered { certificate: 3 })
        );
    }

    #[test]
    fn a_response_not_signed_by_the_issuer_or_its_responder_is_refused() {
        let (chain, keys) = chain();
        let mut responses = all_good(&chain, &keys);
        // Certificate 0's status signed by its own key, then by a stranger's.
        for signer in [&keys[0], &key()] {
            responses[0] = Answer::good(0).signed(&chain, signer);
            let refused = check_revocation(&chain, &responses, NOW).unwrap_err();
            assert!(
                refused.to_string().contains("its signature is neither"),
                "{refused}"
            );
        }
        // One flipped bit in what the issuer signed.
        let mut flipped = Answer::good(0).signed(&chain, &keys[1]);
        let at = flipped.len() / 2;
        flipped[at] ^= 1;
        responses[0] = flipped;
        assert!(check_revocation(&chain, &responses, NOW).is_err());
    }

    /// A responder certificate naming `chain[issuer]` its issuer, signed by `signer`, with or
    /// without the OCSP-signing purpose, and its key.
    fn responder(
        chain: &[(Vec<u8>, Certificate)],
        issuer: usize,
        signer: &EcdsaKeyPair,
        for_ocsp: bool,
    ) -> (Certificate, EcdsaKeyPair) {
        let responder_key = key();
        let template = &chain[0].1;
        let mut tbs = template.tbs_certificate.clone();
        tbs.issuer = chain[issuer].1.tbs_certificate.subject.clone();
        tbs.serial_number = SerialNumber::new(&[0x42]).unwrap();
        tbs.subject_public_key_info.subject_public_key =
            BitString::from_bytes(responder_key.public_key().as_ref()).unwrap();
        let purposes = if for_ocsp {
            vec![OCSP_SIGNING]
        } else {
            vec![ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2")]
        };
        tbs.extensions = Some(vec![Extension {
            extn_id: ObjectIdentifier::new_unwrap("2.5.29.37"),
            critical: false,
            extn_value: OctetString::new(ExtendedKeyUsage(purposes).to_der().unwrap()).unwrap(),
        }]);
        let signature = signer
            .sign(&SystemRandom::new(), &tbs.to_der().unwrap())
            .unwrap();
        let certificate = Certificate {
            tbs_certificate: tbs,
            signature_algorithm: template.signature_algorithm.clone(),
            signature: BitString::from_bytes(signature.as_ref()).unwrap(),
        };
        (certificate, responder_key)
    }

    #[test]
    fn a_responder_counts_only_when_a_ca_above_certified_it_for_ocsp_signing() {
        let (chain, keys) = chain();
        let mut responses = all_good(&chain, &keys);
        let answer_by = |certificate: Certificate, key: &EcdsaKeyPair| {
            Answer {
                certs: Some(vec![certificate]),
                ..Answer::good(1)
            }
            .signed(&chain, key)
        };
        // Certified by the certificate's issuer, or by a CA above it.
        for issuer in [2, 3, 4] {
            let (delegated, delegated_key) = responder(&chain, issuer, &keys[issuer], true);
            responses[1] = answer_by(delegated, &delegated_key);
            assert_eq!(check_revocation(&chain, &responses, NOW), Ok(3), "{issuer}");
        }
        for (certificate, key) in [
            // Without the purpose.
            responder(&chain, 2, &keys[2], false),
            // Certified by the certificate it answers for.
            responder(&chain, 1, &keys[1], true),
            // Naming the issuer, signed by another key.
            responder(&chain, 2, &keys[3], true),
        ] {
            responses[1] = answer_by(certificate, &key);
            let refused = check_revocation(&chain, &responses, NOW).unwrap_err();
            assert!(
                refused.to_string().contains("its signature is neither"),
                "{refused}"
            );
        }
    }

    #[test]
    fn a_stale_future_foreign_or_malformed_response_is_refused_with_its_reason() {
        let (chain, keys) = chain();
        let with = |certificate: usize, response: Vec<u8>| {
            let mut responses = all_good(&chain, &keys);
            responses[certificate] = response;
            check_revocation(&chain, &responses, NOW)
                .unwrap_err()
                .to_string()
        };
        let expired = Answer {
            this_update: NOW - 10 * 86_400,
            next_update: Some(NOW - 86_400),
            ..Answer::good(0)
        };
        assert!(with(0, expired.signed(&chain, &keys[1])).contains("expired at"));
        let week_old = Answer {
            this_update: NOW - 8 * 86_400,
            next_update: None,
            ..Answer::good(0)
        };
        assert!(with(0, week_old.signed(&chain, &keys[1])).contains("expired at"));
        let future = Answer {
            this_update: NOW + 3600,
            ..Answer::good(0)
        };
        assert!(with(0, future.signed(&chain, &keys[1])).contains("after now"));
        // About another certificate than any of the chain's: it speaks for none.
        let (other, other_keys) = {
            let (ders, keys) = forged_ders(|index, tbs| {
                if index == 0 {
                    tbs.serial_number = SerialNumber::new(&[0x77]).unwrap();
                }
            });
            let pem = crate::attestation::nvidia::tests::pem_chain(ders.last());
            let root = PinnedRoot::from_pem("another root", &pem).unwrap();
            (verify_chain(ders, &root, NOW).unwrap(), keys)
        };
        let foreign = Answer::good(0).signed(&other, &other_keys[1]);
        assert!(with(0, foreign).contains("speaks for no certificate"));
        assert!(with(0, b"not der".to_vec()).contains("is not an OCSPResponse"));
        let try_later = OcspResponse {
            response_status: OcspResponseStatus::TryLater,
            response_bytes: None,
        }
        .to_der()
        .unwrap();
        assert!(with(0, try_later).contains("answered TryLater"));
        assert!(with(0, vec![0; MAX_RESPONSE_BYTES + 1]).contains("over the limit"));
    }

    #[test]
    fn the_requests_name_each_certificate_below_the_root_and_a_response_says_how_long_it_counts() {
        let sample = crate::attestation::nvidia::tests::SAMPLE_CHAIN;
        let certificates: Vec<Certificate> = pem_certificates(sample)
            .unwrap()
            .iter()
            .map(|d| Certificate::from_der(d).unwrap())
            .collect();
        let asked = requests(sample).unwrap();
        assert_eq!(
            asked.len(),
            3,
            "the device certificate and the two CAs above it"
        );
        for (i, der) in (1..).zip(&asked) {
            let request = OcspRequest::from_der(der).unwrap();
            let [one] = request.tbs_request.request_list.as_slice() else {
                panic!("one certificate per request")
            };
            assert!(speaks_for(
                &one.req_cert,
                &certificates[i],
                &certificates[i + 1]
            ));
            assert!(!speaks_for(
                &one.req_cert,
                &certificates[i + 1],
                &certificates[i]
            ));
        }
        assert!(requests(b"not pem").is_err());

        let (chain, keys) = chain();
        let answer = Answer::good(0).signed(&chain, &keys[1]);
        assert_eq!(current_until(&answer), Some(NOW + 86_400));
        let undated = Answer {
            next_update: None,
            ..Answer::good(0)
        }
        .signed(&chain, &keys[1]);
        assert_eq!(current_until(&undated), Some(NOW - 3600 + MAX_AGE_SECONDS));
        assert_eq!(current_until(b"junk"), None);
    }

    /// A response for each certificate of `chain` below the root, for tests elsewhere.
    pub(crate) fn responses_for_forged_chain() -> Vec<Vec<u8>> {
        let (chain, keys) = chain();
        all_good(&chain, &keys)
    }
}

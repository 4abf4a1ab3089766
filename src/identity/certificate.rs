//! Lease certificates: the provider key vouches for one lease's key until the lease ends.
//! Sidecars hold only the lease key and this certificate, never the provider key.

use ed25519_dalek::{SigningKey, VerifyingKey};
use prost::Message;

use super::{VerifyError, domain, public_key_base58, sign, verify};

/// The signed body of a lease certificate.
#[derive(Clone, PartialEq, Message)]
pub struct LeaseCertificate {
    #[prost(string, tag = "1")]
    pub lease_id: String,
    /// The lease key's 32-byte ed25519 public key.
    #[prost(bytes = "vec", tag = "2")]
    pub lease_public_key: Vec<u8>,
    /// The provider's 32-byte ed25519 public key, which signs this certificate.
    #[prost(bytes = "vec", tag = "3")]
    pub provider_public_key: Vec<u8>,
    /// Unix seconds after which the certificate is void.
    #[prost(int64, tag = "4")]
    pub not_after: i64,
}

/// A certificate body with the provider's signature over it.
#[derive(Clone, PartialEq, Message)]
pub struct SignedLeaseCertificate {
    #[prost(bytes = "vec", tag = "1")]
    pub body: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub signature: Vec<u8>,
}

/// The provider signs a certificate for a lease's key.
pub fn issue_lease_certificate(
    provider: &SigningKey,
    lease_id: &str,
    lease_key: &VerifyingKey,
    not_after: i64,
) -> SignedLeaseCertificate {
    let body = LeaseCertificate {
        lease_id: lease_id.to_string(),
        lease_public_key: lease_key.as_bytes().to_vec(),
        provider_public_key: provider.verifying_key().as_bytes().to_vec(),
        not_after,
    }
    .encode_to_vec();
    let signature = sign(provider, domain::LEASE_CERTIFICATE, &body)
        .to_bytes()
        .to_vec();
    SignedLeaseCertificate { body, signature }
}

/// Checks a certificate's encoding, issuer, signature and expiry, in that order, and returns
/// its body only when every check passed.
pub fn verify_lease_certificate(
    encoded: &[u8],
    provider: &VerifyingKey,
    now_unix: i64,
) -> Result<LeaseCertificate, VerifyError> {
    let signed = SignedLeaseCertificate::decode(encoded)
        .map_err(|e| VerifyError::MalformedBody(e.to_string()))?;
    let body = LeaseCertificate::decode(signed.body.as_slice())
        .map_err(|e| VerifyError::MalformedBody(e.to_string()))?;
    if body.provider_public_key != provider.as_bytes() {
        return Err(VerifyError::WrongIssuer {
            expected: public_key_base58(provider),
            found: bs58::encode(&body.provider_public_key).into_string(),
        });
    }
    verify(
        provider,
        domain::LEASE_CERTIFICATE,
        &signed.body,
        &signed.signature,
    )?;
    if now_unix > body.not_after {
        return Err(VerifyError::Expired {
            not_after: body.not_after,
        });
    }
    VerifyingKey::try_from(body.lease_public_key.as_slice())
        .map_err(|e| VerifyError::MalformedKey(e.to_string()))?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::generate_key;

    #[test]
    fn issued_certificate_verifies_and_tampering_is_caught() {
        let provider = generate_key();
        let lease = generate_key();
        let cert = issue_lease_certificate(&provider, "lease-1", &lease.verifying_key(), 1_000);
        let encoded = cert.encode_to_vec();
        let body = verify_lease_certificate(&encoded, &provider.verifying_key(), 999).unwrap();
        assert_eq!(body.lease_id, "lease-1");
        assert_eq!(body.lease_public_key, lease.verifying_key().as_bytes());

        assert_eq!(
            verify_lease_certificate(&encoded, &provider.verifying_key(), 1_001),
            Err(VerifyError::Expired { not_after: 1_000 })
        );
        let stranger = generate_key().verifying_key();
        assert!(matches!(
            verify_lease_certificate(&encoded, &stranger, 0),
            Err(VerifyError::WrongIssuer { .. })
        ));
        let mut forged = cert.clone();
        forged.body = LeaseCertificate {
            lease_id: "lease-2".into(),
            ..LeaseCertificate::decode(cert.body.as_slice()).unwrap()
        }
        .encode_to_vec();
        assert_eq!(
            verify_lease_certificate(&forged.encode_to_vec(), &provider.verifying_key(), 0),
            Err(VerifyError::BadSignature)
        );
        assert!(matches!(
            verify_lease_certificate(b"\xff\xff", &provider.verifying_key(), 0),
            Err(VerifyError::MalformedBody(_))
        ));
    }
}

//! Keys, signatures and lease certificates (DESIGN §5).
//!
//! Every signed message is `domain ‖ 0x00 ‖ protobuf(body)`, so a signature made for one kind of
//! message can never be replayed as another. Public keys are printed base58.

mod certificate;
pub mod keyfile;
mod keys;
pub mod lease_files;

pub use certificate::{
    LeaseCertificate, SignedLeaseCertificate, issue_lease_certificate, verify_lease_certificate,
};
pub use keys::{
    KeyError, generate_key, public_key_base58, public_key_from_base58, signing_key_from_bytes,
};
pub use lease_files::LeaseCredentials;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// Domain-separation prefixes of every signed message kind.
pub mod domain {
    pub const LEASE_CERTIFICATE: &str = "gpubridge/v1/lease-certificate";
}

/// Why a signed message was not trusted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("signature is not 64 bytes")]
    MalformedSignature,
    #[error("signature does not verify against the signer's key")]
    BadSignature,
    #[error("message body is not valid protobuf: {0}")]
    MalformedBody(String),
    #[error("public key is invalid: {0}")]
    MalformedKey(String),
    #[error("certificate was issued by {found}, not by the expected provider {expected}")]
    WrongIssuer { expected: String, found: String },
    #[error("certificate expired at unix time {not_after}")]
    Expired { not_after: i64 },
}

fn signed_bytes(domain: &str, body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(domain.len() + 1 + body.len());
    message.extend_from_slice(domain.as_bytes());
    message.push(0);
    message.extend_from_slice(body);
    message
}

/// Signs `body` for `domain`.
pub fn sign(key: &SigningKey, domain: &str, body: &[u8]) -> Signature {
    key.sign(&signed_bytes(domain, body))
}

/// Verifies a signature over `body` for `domain`.
pub fn verify(
    key: &VerifyingKey,
    domain: &str,
    body: &[u8],
    signature: &[u8],
) -> Result<(), VerifyError> {
    let signature =
        Signature::from_slice(signature).map_err(|_| VerifyError::MalformedSignature)?;
    key.verify(&signed_bytes(domain, body), &signature)
        .map_err(|_| VerifyError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_bound_to_its_domain_and_body() {
        let key = generate_key();
        let sig = sign(&key, "gpubridge/v1/a", b"body").to_bytes();
        let vk = key.verifying_key();
        assert_eq!(verify(&vk, "gpubridge/v1/a", b"body", &sig), Ok(()));
        assert_eq!(
            verify(&vk, "gpubridge/v1/b", b"body", &sig),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify(&vk, "gpubridge/v1/a", b"bodz", &sig),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify(&vk, "gpubridge/v1/a", b"body", &sig[..63]),
            Err(VerifyError::MalformedSignature)
        );
        let other = generate_key().verifying_key();
        assert_eq!(
            verify(&other, "gpubridge/v1/a", b"body", &sig),
            Err(VerifyError::BadSignature)
        );
    }
}

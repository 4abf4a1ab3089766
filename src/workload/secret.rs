//! The lease's identity: its own key and the provider's certificate for it.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use super::LeaseBox;
use crate::identity::lease_files::{
    LEASE_CERTIFICATE_FILE, LEASE_KEY_FILE, PROVIDER_PUBLIC_KEY_FILE,
};

/// Name of the Secret the sidecars read their identity from.
pub const IDENTITY_SECRET: &str = "lease-identity";

/// Key material of one lease, made by the controller (keys are random, so not here).
#[derive(Clone, Debug)]
pub struct LeaseIdentity {
    /// 32-byte ed25519 seed of the lease key.
    pub lease_key: Vec<u8>,
    /// Protobuf-encoded SignedLeaseCertificate.
    pub certificate: Vec<u8>,
    /// The provider's public key, base58, for verifying the certificate.
    pub provider_public_key: String,
}

/// Immutable, so that nothing can swap a lease's key under its running sidecars. Not stamped with
/// a hash: it is created once and never rewritten, and no digest of key material is published.
pub fn secret(b: &LeaseBox, identity: &LeaseIdentity) -> Secret {
    let data = BTreeMap::from([
        (
            LEASE_KEY_FILE.to_string(),
            ByteString(identity.lease_key.clone()),
        ),
        (
            LEASE_CERTIFICATE_FILE.to_string(),
            ByteString(identity.certificate.clone()),
        ),
        (
            PROVIDER_PUBLIC_KEY_FILE.to_string(),
            ByteString(identity.provider_public_key.as_bytes().to_vec()),
        ),
    ]);
    Secret {
        metadata: b.metadata(IDENTITY_SECRET),
        type_: Some("Opaque".to_string()),
        immutable: Some(true),
        data: Some(data),
        ..Default::default()
    }
}

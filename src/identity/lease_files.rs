//! A lease's identity as its sidecars read it from the mounted Secret: the lease key, the
//! provider's certificate for it, and the provider's public key. Checked at load, so a sidecar
//! given the wrong Secret says so at start instead of having every message refused.

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;

use super::{public_key_from_base58, signing_key_from_bytes, verify_lease_certificate};

/// File names inside the identity Secret (see `workload::secret`).
pub const LEASE_KEY_FILE: &str = "lease.key";
pub const LEASE_CERTIFICATE_FILE: &str = "lease.crt";
pub const PROVIDER_PUBLIC_KEY_FILE: &str = "provider.pub";

/// A lease's key and the provider's certificate for it.
#[derive(Clone)]
pub struct LeaseCredentials {
    pub key: SigningKey,
    /// Protobuf SignedLeaseCertificate.
    pub certificate: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseFilesError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

pub fn load(
    dir: &Path,
    lease_id: &str,
    now_unix: i64,
) -> Result<LeaseCredentials, LeaseFilesError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|source| LeaseFilesError::Read { path, source })
    };
    let invalid = |name: &str, reason: String| LeaseFilesError::Invalid {
        path: dir.join(name),
        reason,
    };
    let key = signing_key_from_bytes(&read(LEASE_KEY_FILE)?)
        .map_err(|e| invalid(LEASE_KEY_FILE, e.to_string()))?;
    let certificate = read(LEASE_CERTIFICATE_FILE)?;
    let provider_text = String::from_utf8(read(PROVIDER_PUBLIC_KEY_FILE)?)
        .map_err(|e| invalid(PROVIDER_PUBLIC_KEY_FILE, e.to_string()))?;
    let provider = public_key_from_base58(provider_text.trim())
        .map_err(|e| invalid(PROVIDER_PUBLIC_KEY_FILE, e.to_string()))?;
    let body = verify_lease_certificate(&certificate, &provider, now_unix)
        .map_err(|e| invalid(LEASE_CERTIFICATE_FILE, e.to_string()))?;
    if body.lease_id != lease_id {
        return Err(invalid(
            LEASE_CERTIFICATE_FILE,
            format!(
                "certifies lease {}, not --lease-id {lease_id}",
                body.lease_id
            ),
        ));
    }
    if body.lease_public_key != key.verifying_key().as_bytes() {
        return Err(invalid(
            LEASE_CERTIFICATE_FILE,
            format!("certifies another key than the one in {LEASE_KEY_FILE}"),
        ));
    }
    Ok(LeaseCredentials { key, certificate })
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::identity::{generate_key, issue_lease_certificate, public_key_base58};

    fn write(dir: &Path, key: &SigningKey, cert_key: &SigningKey, provider: &SigningKey) {
        let cert = issue_lease_certificate(provider, "lease-1", &cert_key.verifying_key(), 2_000);
        std::fs::write(dir.join(LEASE_KEY_FILE), key.to_bytes()).unwrap();
        std::fs::write(dir.join(LEASE_CERTIFICATE_FILE), cert.encode_to_vec()).unwrap();
        std::fs::write(
            dir.join(PROVIDER_PUBLIC_KEY_FILE),
            public_key_base58(&provider.verifying_key()),
        )
        .unwrap();
    }

    #[test]
    fn a_matching_identity_loads_and_each_mismatch_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let (lease, provider) = (generate_key(), generate_key());
        write(dir.path(), &lease, &lease, &provider);
        let loaded = load(dir.path(), "lease-1", 1_000).unwrap();
        assert_eq!(loaded.key.verifying_key(), lease.verifying_key());

        let err = load(dir.path(), "lease-2", 1_000)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("lease.crt") && err.contains("lease-2"),
            "{err}"
        );
        let err = load(dir.path(), "lease-1", 3_000)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("expired"), "{err}");

        write(dir.path(), &lease, &generate_key(), &provider);
        let err = load(dir.path(), "lease-1", 1_000)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("another key"), "{err}");

        std::fs::write(dir.path().join(LEASE_KEY_FILE), [1; 5]).unwrap();
        let err = load(dir.path(), "lease-1", 1_000)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("lease.key"), "{err}");
        write(dir.path(), &lease, &lease, &provider);
        std::fs::remove_file(dir.path().join(PROVIDER_PUBLIC_KEY_FILE)).unwrap();
        assert!(matches!(
            load(dir.path(), "lease-1", 1_000),
            Err(LeaseFilesError::Read { .. })
        ));
    }
}

//! ed25519 keys and their base58 text form.

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::OsRng;

/// Why key material was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("private key must be a 32-byte ed25519 seed, got {0} bytes")]
    SeedLength(usize),
    #[error("public key is not base58: {0}")]
    NotBase58(String),
    #[error("public key must be 32 bytes, got {0}")]
    PublicKeyLength(usize),
    #[error("public key is not a valid ed25519 point")]
    InvalidPoint,
}

/// A fresh key from the operating system's randomness.
pub fn generate_key() -> SigningKey {
    SigningKey::generate(&mut OsRng)
}

pub fn signing_key_from_bytes(seed: &[u8]) -> Result<SigningKey, KeyError> {
    let seed: [u8; 32] = seed
        .try_into()
        .map_err(|_| KeyError::SeedLength(seed.len()))?;
    Ok(SigningKey::from_bytes(&seed))
}

pub fn public_key_base58(key: &VerifyingKey) -> String {
    bs58::encode(key.as_bytes()).into_string()
}

pub fn public_key_from_base58(text: &str) -> Result<VerifyingKey, KeyError> {
    let bytes = bs58::decode(text)
        .into_vec()
        .map_err(|e| KeyError::NotBase58(e.to_string()))?;
    let bytes: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::PublicKeyLength(bytes.len()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::InvalidPoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base58_round_trip_and_rejections() {
        let key = generate_key().verifying_key();
        let text = public_key_base58(&key);
        assert!((32..=44).contains(&text.len()));
        assert_eq!(public_key_from_base58(&text), Ok(key));
        assert!(matches!(
            public_key_from_base58("0OIl"),
            Err(KeyError::NotBase58(_))
        ));
        assert_eq!(
            public_key_from_base58("abc"),
            Err(KeyError::PublicKeyLength(3))
        );
        assert_eq!(
            signing_key_from_bytes(&[1; 31]).err(),
            Some(KeyError::SeedLength(31))
        );
    }
}

//! Key files: a base58 ed25519 seed on one line, readable only by its owner (mode 0600).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;

use super::{generate_key, signing_key_from_bytes};

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("key file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a new key to `path`, which must not exist; created with mode 0600.
pub fn create(path: &Path) -> Result<SigningKey, KeyFileError> {
    let key = generate_key();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // A folder made for a key is private too.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(path))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    writeln!(file, "{}", bs58::encode(key.to_bytes()).into_string()).map_err(io(path))?;
    file.sync_all().map_err(io(path))?;
    Ok(key)
}

/// Reads a key file, refusing one that others can read.
pub fn load(path: &Path) -> Result<SigningKey, KeyFileError> {
    let invalid = |reason: String| KeyFileError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let mode = std::fs::metadata(path)
        .map_err(io(path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(invalid(format!(
            "mode {:o} lets others read it; chmod 600 it",
            mode & 0o777
        )));
    }
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let seed = bs58::decode(text.trim())
        .into_vec()
        .map_err(|e| invalid(format!("not base58: {e}")))?;
    signing_key_from_bytes(&seed).map_err(|e| invalid(e.to_string()))
}

/// Reads the key at `path`, or creates it when absent.
pub fn load_or_create(path: &Path) -> Result<SigningKey, KeyFileError> {
    if path.exists() {
        load(path)
    } else {
        create(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_private_and_round_trip() {
        let dir = std::env::temp_dir().join(format!("gpubridge-keyfile-{}", std::process::id()));
        let path = dir.join("k.key");
        let _ = std::fs::remove_dir_all(&dir);
        let key = create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700, "the folder made for the key is private");
        assert_eq!(load(&path).unwrap().to_bytes(), key.to_bytes());
        assert_eq!(load_or_create(&path).unwrap().to_bytes(), key.to_bytes());
        assert!(
            create(&path).is_err(),
            "an existing key is never overwritten"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "not-a-key!").unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("not base58"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

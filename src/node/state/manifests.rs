//! NVIDIA's reference integrity manifests the network holds: submitted by anyone, trusted for
//! NVIDIA's signature alone, and used to compare every attested GPU's measurements.

use crate::attestation::nvidia::PinnedRoot;
use crate::attestation::rim::{ManifestBook, ReferenceManifest, verify_rim};
use crate::wire::envelope::open;
use crate::wire::proto::{RimBody, RimReply, Signed};
use crate::wire::{Opened, Rejection};

use super::{Block, MANIFESTS, Result, State};

/// The root every manifest's signing certificates must end in, parsed once.
static NVIDIA_RIM_ROOT: std::sync::LazyLock<PinnedRoot> =
    std::sync::LazyLock::new(PinnedRoot::nvidia_rim);

fn key(chip: &str, version: &str) -> String {
    format!("{chip}/{}", version.to_ascii_lowercase())
}

impl State {
    /// Verifies a manifest at the block's time and holds it by chip and version. A manifest
    /// already held is answered again: NVIDIA publishes one per version.
    pub(super) fn submit_rim(&mut self, signed: &Signed, block: &Block) -> Result<RimReply> {
        let opened: Opened<RimBody> = open(signed, block.time)?;
        let manifest = verify_rim(&opened.body.manifest, &NVIDIA_RIM_ROOT, block.time)
            .map_err(|e| Rejection::invalid("manifest", &format!("{}: {e}", e.kind())))?;
        self.consume_nonce(&opened)?;
        self.put(
            MANIFESTS,
            &key(&manifest.chip, &manifest.version),
            &manifest,
        )?;
        Ok(RimReply {
            chip: manifest.chip,
            version: manifest.version,
            measurements: u32::try_from(manifest.golden.len()).unwrap_or(u32::MAX),
        })
    }

    /// Every manifest held: tens at most, one per chip and driver or VBIOS version.
    pub(super) fn manifests(&self) -> Result<ManifestBook> {
        let mut book = ManifestBook::default();
        for manifest in self.all::<ReferenceManifest>(MANIFESTS)? {
            book.insert(manifest);
        }
        Ok(book)
    }
}

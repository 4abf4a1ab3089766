//! Attestation (DESIGN §4): evidence of where a lease runs — its GPUs, node, pod and image —
//! bound to the network's challenge nonce and signed with the lease key; how it is verified and
//! which trust tier it earns; and the attest sidecar that answers every challenge.

mod c14n;
pub mod evidence;
pub mod nvidia;
pub mod ocsp;
pub mod rim;
pub mod spdm;

pub use evidence::{
    Attestation, EvidenceRejection, TrustTier, VerifiedEvidence, attest, build_evidence,
    check_ocsp, verify_evidence,
};

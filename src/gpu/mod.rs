//! What the sidecars read of a GPU (DESIGN §5) — its identity, its readings, its attestation —
//! and the deterministic simulation of one for tests and the demo. NVML lives with the sidecars.

mod simulated;

pub use simulated::{SimulatedSettings, SimulatedSource};

/// What identifies one GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub uuid: String,
    pub serial: String,
    pub model: String,
    pub vbios: String,
    pub driver: String,
    /// Confidential-computing mode is on.
    pub cc_mode: bool,
    /// A MIG instance or otherwise shared GPU: its figures are apportioned, not its own.
    pub shared: bool,
}

/// One reading of one GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub utilization_percent: u32,
    pub memory_used_bytes: u64,
    /// Energy drawn since the driver loaded; the meter takes differences.
    pub energy_total_millijoules: u64,
}

/// A GPU's confidential-computing attestation: its report over a nonce and its certificate chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HardwareAttestation {
    pub report: Vec<u8>,
    pub certificate_chain: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(
        "NVML is not available ({0}): no NVIDIA driver on this machine, or this container was given no GPU"
    )]
    Unavailable(String),
    #[error("GPU {uuid}: {operation}: {reason}")]
    Query {
        uuid: String,
        operation: &'static str,
        reason: String,
    },
}

/// A source of GPU identities and readings.
pub trait GpuSource: Send {
    /// The GPUs this process can see.
    fn devices(&self) -> Result<Vec<DeviceInfo>, GpuError>;
    fn sample(&self, uuid: &str) -> Result<Sample, GpuError>;
    /// The GPU's attestation report over `nonce`; `None` unless it is in CC mode.
    fn attestation(
        &self,
        uuid: &str,
        nonce: &[u8; 32],
    ) -> Result<Option<HardwareAttestation>, GpuError>;
}

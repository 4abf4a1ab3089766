//! Where the sidecars read GPUs from (DESIGN §4): NVML, loaded at run time so the binary starts
//! on a machine without a GPU, or a deterministic simulation for tests and the demo.

mod nvml;
mod simulated;

pub use nvml::NvmlSource;
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

/// Which source a sidecar reads.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    Nvml,
    Simulated,
}

/// Flags shared by the meter and attest sidecars.
#[derive(clap::Args, Debug, Clone)]
pub struct GpuSourceArgs {
    /// Where GPU readings come from.
    #[arg(long, env = "GPUBRIDGE_GPU_SOURCE", value_enum, default_value = "nvml")]
    pub gpu_source: SourceKind,
    /// Path or name of the NVML library.
    #[arg(
        long,
        env = "GPUBRIDGE_NVML_LIBRARY",
        default_value = "libnvidia-ml.so.1"
    )]
    pub nvml_library: String,
    #[command(flatten)]
    pub simulated: SimulatedSettings,
}

impl GpuSourceArgs {
    /// The configured source, or why it cannot be had (NVML on a machine without a GPU).
    pub fn open(&self) -> Result<Box<dyn GpuSource>, GpuError> {
        Ok(match self.gpu_source {
            SourceKind::Nvml => Box::new(NvmlSource::load(&self.nvml_library)?),
            SourceKind::Simulated => Box::new(SimulatedSource::new(self.simulated.clone())),
        })
    }
}

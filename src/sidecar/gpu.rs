//! Which GPU source a sidecar reads, from its flags.

use super::nvml::NvmlSource;
use crate::gpu::{GpuError, GpuSource, SimulatedSettings, SimulatedSource};

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

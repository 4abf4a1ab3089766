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

/// `gpubridge-sidecar gpus`: the GPUs the meter and attestation sidecars would read here, a
/// reading of each, and whether each can attest: a provider's check of a node, no lease needed.
#[derive(clap::Args, Debug, Clone)]
pub struct GpusArgs {
    #[command(flatten)]
    pub gpu: GpuSourceArgs,
}

/// What `source` says of each GPU, in its order, as lines: identity, one reading, and its
/// attestation over `nonce` (the report's and chain's sizes; CC mode off gives none).
pub fn describe(source: &dyn GpuSource, nonce: &[u8; 32]) -> Result<Vec<String>, GpuError> {
    let mut lines = Vec::new();
    for (index, device) in source.devices()?.iter().enumerate() {
        let sample = source.sample(&device.uuid)?;
        let attestation = match source.attestation(&device.uuid, nonce)? {
            Some(a) => format!(
                "report of {} bytes over the nonce, certificate chain of {} bytes",
                a.report.len(),
                a.certificate_chain.len()
            ),
            None => "none (CC mode off): its evidence carries its identity only".to_string(),
        };
        lines.extend([
            format!("GPU {index}: {} {}", device.uuid, device.model),
            format!(
                "  serial {}, VBIOS {}, driver {}, CC mode {}, {}",
                device.serial,
                device.vbios,
                device.driver,
                if device.cc_mode { "on" } else { "off" },
                if device.shared {
                    "shared (MIG): metered as modelled"
                } else {
                    "whole"
                }
            ),
            format!(
                "  reading: {} % utilization, {} MiB memory used, {} J drawn since the driver loaded",
                sample.utilization_percent,
                sample.memory_used_bytes >> 20,
                sample.energy_total_millijoules / 1000
            ),
            format!("  attestation: {attestation}"),
        ]);
    }
    if lines.is_empty() {
        lines.push("no GPU".to_string());
    }
    Ok(lines)
}

/// Prints [`describe`] of the configured source.
pub fn run_gpus(args: GpusArgs) -> Result<(), GpuError> {
    let source = args.gpu.open()?;
    let mut nonce = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    for line in describe(source.as_ref(), &nonce)? {
        println!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(gpus: u32, cc_mode: bool, visible: Option<&str>) -> SimulatedSettings {
        SimulatedSettings {
            simulated_gpus: gpus,
            simulated_model: "NVIDIA H200".into(),
            simulated_cc_mode: cc_mode,
            simulated_mig: false,
            simulated_seed: "describe".into(),
            simulated_visible_devices: visible.map(str::to_string),
        }
    }

    #[test]
    fn each_gpu_is_described_by_its_identity_reading_and_attestation() {
        let source = SimulatedSource::new(settings(2, false, None));
        let devices = source.devices().unwrap();
        let lines = describe(&source, &[1; 32]).unwrap();
        assert_eq!(lines.len(), 8, "{lines:#?}");
        assert_eq!(lines[0], format!("GPU 0: {} NVIDIA H200", devices[0].uuid));
        assert_eq!(lines[4], format!("GPU 1: {} NVIDIA H200", devices[1].uuid));
        assert!(lines[1].contains(&format!("serial {}", devices[0].serial)));
        assert!(lines[1].ends_with("CC mode off, whole"), "{}", lines[1]);
        assert!(lines[2].starts_with("  reading: "), "{}", lines[2]);
        assert_eq!(
            lines[3],
            "  attestation: none (CC mode off): its evidence carries its identity only"
        );
    }

    #[test]
    fn a_gpu_in_cc_mode_says_what_it_attested_and_none_visible_says_so() {
        let source = SimulatedSource::new(settings(1, true, None));
        let report = source
            .attestation(&source.devices().unwrap()[0].uuid, &[1; 32])
            .unwrap()
            .unwrap();
        let lines = describe(&source, &[1; 32]).unwrap();
        assert_eq!(
            lines[3],
            format!(
                "  attestation: report of {} bytes over the nonce, certificate chain of {} bytes",
                report.report.len(),
                report.certificate_chain.len()
            )
        );
        let hidden = SimulatedSource::new(settings(1, false, Some("none")));
        assert_eq!(describe(&hidden, &[1; 32]).unwrap(), ["no GPU"]);
    }
}

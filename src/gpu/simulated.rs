//! A deterministic GPU simulation: readings are closed-form functions of the time since the
//! source started, so a test can compute exactly what a meter must have seen.

use std::f64::consts::TAU;
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::{DeviceInfo, GpuError, GpuSource, HardwareAttestation, Sample};

/// Period of the simulated utilization wave.
const PERIOD_SECONDS: f64 = 120.0;
const IDLE_WATTS: f64 = 80.0;
/// Watts per percent of utilization.
const WATTS_PER_PERCENT: f64 = 3.0;
const MEMORY_BASE_BYTES: f64 = 4.0 * 1024.0 * 1024.0 * 1024.0;
const MEMORY_PER_PERCENT_BYTES: f64 = 512.0 * 1024.0 * 1024.0;

#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct SimulatedSettings {
    /// Simulated source: how many GPUs.
    #[arg(long, env = "GPUBRIDGE_SIMULATED_GPUS", default_value_t = 1)]
    pub simulated_gpus: u32,
    /// Simulated source: the GPUs' model name.
    #[arg(
        long,
        env = "GPUBRIDGE_SIMULATED_MODEL",
        default_value = "NVIDIA H100 80GB HBM3"
    )]
    pub simulated_model: String,
    /// Simulated source: the GPUs are in confidential-computing mode.
    #[arg(long, env = "GPUBRIDGE_SIMULATED_CC_MODE", default_value_t = false, action = clap::ArgAction::Set)]
    pub simulated_cc_mode: bool,
    /// Simulated source: the GPUs are MIG instances (figures are modelled).
    #[arg(long, env = "GPUBRIDGE_SIMULATED_MIG", default_value_t = false, action = clap::ArgAction::Set)]
    pub simulated_mig: bool,
    /// Simulated source: seeds the UUIDs and serials, so two nodes' GPUs differ.
    #[arg(long, env = "GPUBRIDGE_SIMULATED_SEED", default_value = "gpubridge")]
    pub simulated_seed: String,
    /// Simulated source: which of the GPUs this process sees, as NVIDIA's container runtime
    /// reads the variable: `all` (or unset), `none`/`void`, or a comma-separated list of UUIDs.
    /// A device plugin sets it for the containers it allocates GPUs to.
    #[arg(long, env = "NVIDIA_VISIBLE_DEVICES")]
    pub simulated_visible_devices: Option<String>,
}

/// Whether GPU `uuid` is visible under an `NVIDIA_VISIBLE_DEVICES` value.
fn is_visible(uuid: &str, visible_devices: Option<&str>) -> bool {
    match visible_devices.map(str::trim) {
        None | Some("all") => true,
        Some("none" | "void" | "") => false,
        Some(list) => list.split(',').any(|id| id.trim() == uuid),
    }
}

pub struct SimulatedSource {
    settings: SimulatedSettings,
    started: Instant,
}

impl SimulatedSource {
    pub fn new(settings: SimulatedSettings) -> SimulatedSource {
        SimulatedSource {
            settings,
            started: Instant::now(),
        }
    }

    fn index_of(&self, uuid: &str) -> Result<u32, GpuError> {
        self.visible_indices()
            .find(|&i| self.uuid(i) == uuid)
            .ok_or_else(|| GpuError::Query {
                uuid: uuid.to_string(),
                operation: "find by UUID",
                reason: "no such simulated GPU is visible".into(),
            })
    }

    fn visible_indices(&self) -> impl Iterator<Item = u32> + '_ {
        let visible = self.settings.simulated_visible_devices.as_deref();
        (0..self.settings.simulated_gpus).filter(move |&i| is_visible(&self.uuid(i), visible))
    }

    /// The UUID of every simulated GPU, visible or not: what a device plugin advertises.
    pub fn all_uuids(&self) -> Vec<String> {
        (0..self.settings.simulated_gpus)
            .map(|i| self.uuid(i))
            .collect()
    }

    fn uuid(&self, index: u32) -> String {
        let digest = Sha256::digest(format!("{}/{index}", self.settings.simulated_seed));
        let hex = hex::encode(&digest[..16]);
        format!(
            "GPU-{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }

    /// The reading of GPU `index` after `t` seconds.
    pub fn reading(index: u32, t: f64) -> Sample {
        let phase = f64::from(index);
        let utilization = 50.0 + 40.0 * (TAU * t / PERIOD_SECONDS + phase).sin();
        // ∫ (idle + k·u(s)) ds from 0 to t, in closed form, so energy is exact at any sample rate.
        let amplitude = 40.0 * PERIOD_SECONDS / TAU;
        let joules = IDLE_WATTS * t
            + WATTS_PER_PERCENT
                * (50.0 * t - amplitude * ((TAU * t / PERIOD_SECONDS + phase).cos() - phase.cos()));
        Sample {
            utilization_percent: utilization.round() as u32,
            memory_used_bytes: (MEMORY_BASE_BYTES + MEMORY_PER_PERCENT_BYTES * utilization) as u64,
            energy_total_millijoules: (joules * 1000.0) as u64,
        }
    }
}

impl GpuSource for SimulatedSource {
    fn devices(&self) -> Result<Vec<DeviceInfo>, GpuError> {
        Ok(self
            .visible_indices()
            .map(|i| DeviceInfo {
                uuid: self.uuid(i),
                serial: format!("SIM{:010}", i),
                model: self.settings.simulated_model.clone(),
                vbios: "96.00.99.00.01".into(),
                driver: "580.95.05-simulated".into(),
                cc_mode: self.settings.simulated_cc_mode,
                shared: self.settings.simulated_mig,
            })
            .collect())
    }

    fn sample(&self, uuid: &str) -> Result<Sample, GpuError> {
        let index = self.index_of(uuid)?;
        Ok(Self::reading(index, self.started.elapsed().as_secs_f64()))
    }

    /// A stand-in report: SHA-256 of nonce and UUID, with a placeholder chain. It exercises the
    /// path that carries CC evidence to the verifier, which refuses it (no NVIDIA chain signs
    /// it): a simulated GPU is never hardware-attested.
    fn attestation(
        &self,
        uuid: &str,
        nonce: &[u8; 32],
    ) -> Result<Option<HardwareAttestation>, GpuError> {
        self.index_of(uuid)?;
        if !self.settings.simulated_cc_mode {
            return Ok(None);
        }
        let mut report = b"SIMULATED-REPORT:".to_vec();
        report.extend_from_slice(&Sha256::digest(
            [nonce.as_slice(), uuid.as_bytes()].concat(),
        ));
        Ok(Some(HardwareAttestation {
            report,
            certificate_chain: b"SIMULATED-CERTIFICATE-CHAIN".to_vec(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(gpus: u32) -> SimulatedSettings {
        SimulatedSettings {
            simulated_gpus: gpus,
            simulated_model: "NVIDIA H100 80GB HBM3".into(),
            simulated_cc_mode: false,
            simulated_mig: false,
            simulated_seed: "node-a".into(),
            simulated_visible_devices: None,
        }
    }

    #[test]
    fn a_process_sees_only_the_gpus_its_visible_devices_name() {
        let all = SimulatedSource::new(settings(4)).all_uuids();
        let sees = |visible: Option<&str>| -> Vec<String> {
            let source = SimulatedSource::new(SimulatedSettings {
                simulated_visible_devices: visible.map(str::to_string),
                ..settings(4)
            });
            source
                .devices()
                .unwrap()
                .into_iter()
                .map(|d| d.uuid)
                .collect()
        };
        assert_eq!(sees(None), all);
        assert_eq!(sees(Some("all")), all);
        assert_eq!(sees(Some("none")), Vec::<String>::new());
        assert_eq!(sees(Some("void")), Vec::<String>::new());
        let two = format!("{}, {}", all[3], all[1]);
        assert_eq!(sees(Some(&two)), vec![all[1].clone(), all[3].clone()]);
        assert_eq!(sees(Some("GPU-not-on-this-node")), Vec::<String>::new());
        // An invisible GPU cannot be read either.
        let source = SimulatedSource::new(SimulatedSettings {
            simulated_visible_devices: Some(all[0].clone()),
            ..settings(4)
        });
        assert!(source.sample(&all[0]).is_ok());
        assert!(source.sample(&all[2]).is_err());
    }

    #[test]
    fn devices_are_distinct_and_stable() {
        let a = SimulatedSource::new(settings(3)).devices().unwrap();
        let b = SimulatedSource::new(settings(3)).devices().unwrap();
        assert_eq!(a, b);
        let mut uuids: Vec<_> = a.iter().map(|d| d.uuid.clone()).collect();
        uuids.dedup();
        assert_eq!(uuids.len(), 3);
        let other = SimulatedSource::new(SimulatedSettings {
            simulated_seed: "node-b".into(),
            ..settings(1)
        });
        assert_ne!(other.devices().unwrap()[0].uuid, a[0].uuid);
    }

    #[test]
    fn readings_stay_in_range_and_energy_only_grows() {
        let mut previous = 0;
        for step in 0..600 {
            let t = f64::from(step) * 0.5;
            let s = SimulatedSource::reading(1, t);
            assert!((10..=90).contains(&s.utilization_percent), "{s:?}");
            assert!(s.energy_total_millijoules >= previous);
            previous = s.energy_total_millijoules;
        }
        // Mean power over whole periods is idle + k × 50 %: 230 W, so 230 J per second.
        let one_period = SimulatedSource::reading(0, PERIOD_SECONDS).energy_total_millijoules;
        assert!((one_period as f64 - 230_000.0 * PERIOD_SECONDS).abs() < 1_000.0);
    }

    #[test]
    fn attestation_only_in_cc_mode_and_bound_to_the_nonce() {
        let plain = SimulatedSource::new(settings(1));
        let uuid = plain.devices().unwrap()[0].uuid.clone();
        assert_eq!(plain.attestation(&uuid, &[1; 32]).unwrap(), None);
        let cc = SimulatedSource::new(SimulatedSettings {
            simulated_cc_mode: true,
            ..settings(1)
        });
        let a = cc.attestation(&uuid, &[1; 32]).unwrap().unwrap();
        let b = cc.attestation(&uuid, &[2; 32]).unwrap().unwrap();
        assert_ne!(a.report, b.report);
        assert!(cc.attestation("GPU-unknown", &[1; 32]).is_err());
    }
}

//! NVML through `nvml-wrapper`, which dlopens the library: a machine without the NVIDIA driver
//! gets [`GpuError::Unavailable`] at load, never a failure to start the binary.

use nvml_wrapper::Nvml;
use nvml_wrapper::error::NvmlError;

use crate::gpu::{DeviceInfo, GpuError, GpuSource, HardwareAttestation, Sample};

pub struct NvmlSource {
    nvml: Nvml,
}

impl NvmlSource {
    pub fn load(library: &str) -> Result<NvmlSource, GpuError> {
        let nvml = Nvml::builder()
            .lib_path(std::ffi::OsStr::new(library))
            .init()
            .map_err(|e| GpuError::Unavailable(format!("{library}: {e}")))?;
        Ok(NvmlSource { nvml })
    }

    fn device(&self, uuid: &str) -> Result<nvml_wrapper::Device<'_>, GpuError> {
        self.nvml
            .device_by_uuid(uuid)
            .map_err(|e| query(uuid, "find by UUID", e))
    }
}

fn query(uuid: &str, operation: &'static str, e: NvmlError) -> GpuError {
    GpuError::Query {
        uuid: uuid.to_string(),
        operation,
        reason: e.to_string(),
    }
}

/// Optional identity fields: a GPU that does not report one still meters.
fn or_unknown(value: Result<String, NvmlError>) -> String {
    value.unwrap_or_else(|_| "unknown".to_string())
}

impl GpuSource for NvmlSource {
    fn devices(&self) -> Result<Vec<DeviceInfo>, GpuError> {
        let count = self
            .nvml
            .device_count()
            .map_err(|e| query("*", "count devices", e))?;
        let driver = or_unknown(self.nvml.sys_driver_version());
        (0..count)
            .map(|index| {
                let device = self
                    .nvml
                    .device_by_index(index)
                    .map_err(|e| query(&index.to_string(), "open", e))?;
                let uuid = device.uuid().map_err(|e| query("?", "read UUID", e))?;
                Ok(DeviceInfo {
                    serial: or_unknown(device.serial()),
                    model: or_unknown(device.name()),
                    vbios: or_unknown(device.vbios_version()),
                    driver: driver.clone(),
                    cc_mode: device.is_cc_enabled().unwrap_or(false),
                    shared: device.mig_mode().is_ok_and(|m| m.current == 1),
                    uuid,
                })
            })
            .collect()
    }

    fn sample(&self, uuid: &str) -> Result<Sample, GpuError> {
        let device = self.device(uuid)?;
        let utilization = device
            .utilization_rates()
            .map_err(|e| query(uuid, "read utilization", e))?;
        let memory = device
            .memory_info()
            .map_err(|e| query(uuid, "read memory", e))?;
        let energy = device
            .total_energy_consumption()
            .map_err(|e| query(uuid, "read energy", e))?;
        Ok(Sample {
            utilization_percent: utilization.gpu,
            memory_used_bytes: memory.used,
            energy_total_millijoules: energy,
        })
    }

    fn attestation(
        &self,
        uuid: &str,
        nonce: &[u8; 32],
    ) -> Result<Option<HardwareAttestation>, GpuError> {
        let device = self.device(uuid)?;
        if !device.is_cc_enabled().unwrap_or(false) {
            return Ok(None);
        }
        let report = device
            .confidential_compute_gpu_attestation_report(*nonce)
            .map_err(|e| query(uuid, "read attestation report", e))?;
        let certificates = device
            .confidential_compute_gpu_certificate()
            .map_err(|e| query(uuid, "read certificate chain", e))?;
        Ok(Some(HardwareAttestation {
            report: report.attestation_report,
            certificate_chain: certificates.attestation_cert_chain,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_without_the_library_gets_a_plain_error_not_a_crash() {
        let err = NvmlSource::load("libnvidia-ml-absent.so.1").err().unwrap();
        let text = err.to_string();
        assert!(matches!(err, GpuError::Unavailable(_)));
        assert!(text.contains("libnvidia-ml-absent.so.1"), "{text}");
        assert!(text.contains("no NVIDIA driver"), "{text}");
    }
}

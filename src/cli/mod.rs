//! The command lines: `gpubridge`, one subcommand per role, and `gpubridge-sidecar`, the lease
//! pods' sidecars.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::node::NetworkArgs;
use crate::operator::OperatorArgs;

pub mod order;

#[derive(Parser, Debug)]
#[command(
    name = "gpubridge",
    version,
    about = "Bridges a Kubernetes cluster's idle GPUs into a compute network"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the operator: offers from idle GPUs, leases as boxed GPU pods.
    Operator(Box<OperatorArgs>),
    /// Run the reference network node: offer book, matching, escrow, settlement.
    Network(Box<NetworkArgs>),
    /// Buy GPU time on a network: keys, deposits, orders.
    #[command(after_help = order::EXIT_STATUS)]
    Order(order::OrderArgs),
    /// Create an ed25519 key file (mode 0600) and print its public key, base58.
    Keygen {
        /// Where to write the key; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run a kubelet device plugin advertising the simulated GPU source's GPUs as
    /// nvidia.com/gpu, for nodes without GPUs (the test bed's real node).
    SimulatedGpuPlugin(crate::deviceplugin::service::DevicePluginArgs),
    /// Print the CustomResourceDefinitions as YAML, or write one file each into a folder.
    Crdgen {
        /// Folder to write `<plural>.<group>.yaml` files into; standard output when absent.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

/// `gpubridge-sidecar`: the lease pod's sidecars, a binary of their own so that a lease pod
/// maps only the code that meters and attests, not the operator's and the network node's.
#[derive(Parser, Debug)]
#[command(
    name = "gpubridge-sidecar",
    version,
    about = "A gpubridge lease pod's sidecars: the GPU probe, metering and attestation"
)]
pub struct SidecarCli {
    #[command(subcommand)]
    pub command: SidecarCommand,
}

#[derive(Subcommand, Debug)]
pub enum SidecarCommand {
    /// Meter the lease's GPUs into signed receipts for the collector.
    Meter(crate::sidecar::meter::MeterArgs),
    /// Answer the network's attestation challenges with signed evidence.
    Attest(crate::sidecar::attest::AttestArgs),
    /// Run the network's GPU probe for the lease, once, before the workload starts.
    Probe(crate::sidecar::probe::ProbeArgs),
    /// Say where a probe would run here (CUDA or the CPU), and whether NVRTC compiles its kernels.
    ProbeEngine(crate::sidecar::probe::EngineCheckArgs),
    /// Say which GPUs the meter and attestation sidecars see here, a reading of each, and
    /// whether each attests.
    Gpus(crate::sidecar::gpu::GpusArgs),
}

#[derive(Debug, thiserror::Error)]
pub enum CrdgenError {
    #[error("cannot render CRD YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
}

/// Writes a command's output to stdout. A reader that went away (`gpubridge … | head`) ends
/// the output quietly, as for any Unix tool: what it did not read is not an error.
pub fn emit(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written,
    }
}

/// `gpubridge crdgen`.
pub fn crdgen(out_dir: Option<PathBuf>) -> Result<(), CrdgenError> {
    let Some(dir) = out_dir else {
        return emit(&crate::crd::all_as_yaml_stream()?).map_err(CrdgenError::Output);
    };
    std::fs::create_dir_all(&dir).map_err(|source| CrdgenError::Write {
        path: dir.clone(),
        source,
    })?;
    for (file, crd) in crate::crd::all() {
        let path = dir.join(file);
        std::fs::write(&path, crate::crd::to_yaml(&crd)?)
            .map_err(|source| CrdgenError::Write { path, source })?;
    }
    Ok(())
}

/// `gpubridge keygen`.
pub fn keygen(out: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let key = crate::identity::keyfile::create(out)?;
    emit(&format!(
        "{}\n",
        crate::identity::public_key_base58(&key.verifying_key())
    ))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use k8s_openapi::api::core::v1::Pod;

    use super::SidecarCli;
    use crate::workload::{ATTEST_CONTAINER, METER_CONTAINER, PROBE_CONTAINER};

    /// The lease pod the workload builders make (its golden file, which `workload`'s tests keep
    /// equal to what they build) runs each sidecar with arguments its binary accepts. The
    /// downward-API values come from the environment in the pod; here they are given.
    #[test]
    fn the_lease_pods_sidecar_arguments_parse() {
        let pod: Pod =
            serde_yaml::from_str(include_str!("../../tests/fixtures/golden/pod.yaml")).unwrap();
        let sidecars = pod.spec.unwrap().init_containers.unwrap();
        for name in [PROBE_CONTAINER, METER_CONTAINER, ATTEST_CONTAINER] {
            let sidecar = sidecars.iter().find(|c| c.name == name).unwrap();
            let argv = sidecar
                .command
                .clone()
                .unwrap()
                .into_iter()
                .chain(sidecar.args.clone().unwrap())
                .chain(
                    ["--pod-uid=u".to_string(), "--node-name=n".to_string()]
                        .into_iter()
                        .filter(|_| name == ATTEST_CONTAINER),
                );
            let parsed = SidecarCli::try_parse_from(argv);
            assert!(parsed.is_ok(), "{name}: {}", parsed.err().unwrap());
        }
        let bad = [
            "/usr/local/bin/gpubridge-sidecar",
            "meter",
            "--no-such-flag",
        ];
        assert!(
            SidecarCli::try_parse_from(bad).is_err(),
            "the check can fail"
        );
    }
}

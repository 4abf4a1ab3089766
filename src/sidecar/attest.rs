//! `gpubridge-sidecar attest`: answers every attestation challenge of the network with evidence
//! of where the lease runs, signed with the lease key.

use std::time::Duration;

use tracing::{info, warn};

use super::gpu::GpuSourceArgs;
use crate::attestation::evidence::build_evidence;
use crate::gpu::GpuSource;
use crate::identity::lease_files::{self, LeaseFilesError};
use crate::process::shutdown::Shutdown;
use crate::process::telemetry::LogFormat;
use crate::sidecar::client::{LeaseArgs, SidecarClient};
use crate::wire::envelope::sign_body;

#[derive(clap::Args, Debug, Clone)]
pub struct AttestArgs {
    #[command(flatten)]
    pub lease: LeaseArgs,
    /// The workload image as the pod names it.
    #[arg(long)]
    pub image: String,
    /// The pod's UID and node, from the downward API.
    #[arg(long, env = "GPUBRIDGE_POD_UID")]
    pub pod_uid: String,
    #[arg(long, env = "GPUBRIDGE_NODE_NAME")]
    pub node_name: String,
    /// Seconds between two looks for a new challenge.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub poll_seconds: u64,
    #[arg(long, env = "GPUBRIDGE_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub gpu: GpuSourceArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("lease identity: {0}")]
    Identity(#[from] LeaseFilesError),
    #[error("{0}")]
    Collector(String),
}

/// The evidence for `nonce`, signed. GPUs that cannot be read are reported as none: the
/// evidence is then self-reported, never claimed stronger than it is.
fn sealed_evidence(
    args: &AttestArgs,
    source: Option<&dyn GpuSource>,
    key: &ed25519_dalek::SigningKey,
    nonce: &[u8],
) -> crate::wire::proto::Signed {
    let nonce_array: [u8; 32] = nonce.try_into().unwrap_or([0; 32]);
    let gpus = source
        .and_then(|s| {
            s.devices()
                .inspect_err(|e| warn!(error = %e, "cannot list GPUs"))
                .ok()
        })
        .unwrap_or_default()
        .into_iter()
        .map(|d| {
            let report = source
                .and_then(|s| {
                    s.attestation(&d.uuid, &nonce_array)
                        .inspect_err(|e| warn!(error = %e, "no attestation report"))
                        .ok()
                })
                .flatten();
            (d, report)
        })
        .collect::<Vec<_>>();
    let evidence = build_evidence(
        &args.lease.lease_id,
        nonce,
        &gpus,
        &args.node_name,
        &args.pod_uid,
        &args.image,
        jiff::Timestamp::now().as_second(),
    );
    sign_body(key, &evidence)
}

pub async fn run(args: AttestArgs) -> Result<(), AttestError> {
    let credentials = lease_files::load(
        &args.lease.identity_dir,
        &args.lease.lease_id,
        jiff::Timestamp::now().as_second(),
    )?;
    let client = SidecarClient::new(&args.lease.collector_url, credentials.clone())
        .map_err(AttestError::Collector)?;
    let source = args
        .gpu
        .open()
        .inspect_err(|e| warn!(error = %e, "evidence will name no GPU"))
        .ok();
    let shutdown = Shutdown::on_signals();
    let stop = shutdown.signalled();
    let mut poll = tokio::time::interval(Duration::from_secs(args.poll_seconds));
    loop {
        tokio::select! {
            _ = stop.clone() => return Ok(()),
            _ = poll.tick() => {}
        }
        let challenge = match client.challenge().await {
            Ok(c) => c,
            Err(s) => {
                warn!(code = ?s.code(), message = %s.message(), "cannot read the challenge");
                continue;
            }
        };
        if challenge.answered {
            continue;
        }
        let evidence =
            sealed_evidence(&args, source.as_deref(), &credentials.key, &challenge.nonce);
        match client.submit_evidence(evidence).await {
            Ok(reply) => info!(tier = %reply.trust_tier, "evidence accepted"),
            Err(s) => warn!(code = ?s.code(), message = %s.message(), "evidence refused"),
        }
    }
}

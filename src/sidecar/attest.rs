//! `gpubridge-sidecar attest`: answers every attestation challenge of the network with evidence
//! of where the lease runs, signed with the lease key, and runs every re-probe the network
//! issues the lease beside its workload.

use std::time::Duration;

use tracing::{info, warn};

use super::gpu::GpuSourceArgs;
use crate::attestation::evidence::build_evidence;
use crate::gpu::GpuSource;
use crate::identity::lease_files::{self, LeaseFilesError};
use crate::process::shutdown::Shutdown;
use crate::process::telemetry::LogFormat;
use crate::sidecar::client::{LeaseArgs, SidecarClient};
use crate::sidecar::probe::{Deadlines, EngineKind, Which, drive};
use crate::wire::envelope::sign_body;
use crate::wire::proto::ChallengeReply;

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
    /// Where the lease's re-probes run (as `probe --engine`). The network issues them only to
    /// a lease of an offer that promised them (`reprobed=true`: DRA devices, whose claim this
    /// sidecar shares).
    #[arg(
        long,
        env = "GPUBRIDGE_PROBE_ENGINE",
        value_enum,
        default_value = "auto"
    )]
    pub probe_engine: EngineKind,
}

/// A re-probe has twice the network's `probe-answer-seconds` to commit and answer; the sidecar
/// gives up on one well after that, when the network has already ended the lease.
const REPROBE_DEADLINES: Deadlines = Deadlines {
    give_up: Duration::from_secs(2 * 3_600),
    retry: Duration::from_secs(2),
};

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

/// Whether the network issued the lease a re-probe that has not passed or failed yet.
fn reprobe_under_way(challenge: &ChallengeReply) -> bool {
    challenge
        .reprobe
        .as_ref()
        .is_some_and(|r| matches!(r.state.as_str(), "issued" | "committed"))
}

/// Runs the lease's re-probe under way beside the workload; its verdict is the network's, and a
/// failure here is only logged: the network ends the lease on its own deadlines.
async fn reprobe(client: &SidecarClient, engine: EngineKind) {
    let engine = match engine.open() {
        Ok(engine) => engine,
        Err(e) => {
            warn!(error = %e, "the re-probe cannot run");
            return;
        }
    };
    match drive(client, engine, Which::Latest, REPROBE_DEADLINES).await {
        Ok(detail) => info!(%detail, "GPU re-probe passed"),
        Err(e) => warn!(error = %e, "GPU re-probe did not pass"),
    }
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
        if reprobe_under_way(&challenge) {
            reprobe(&client, args.probe_engine).await;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::proto::ProbeReply;

    #[test]
    fn a_reprobe_is_run_while_issued_or_committed_and_left_once_over() {
        let with = |state: &str| ChallengeReply {
            reprobe: Some(ProbeReply {
                state: state.into(),
                reprobe: 1,
                ..ProbeReply::default()
            }),
            ..ChallengeReply::default()
        };
        assert!(reprobe_under_way(&with("issued")));
        assert!(reprobe_under_way(&with("committed")));
        assert!(!reprobe_under_way(&with("passed")));
        assert!(!reprobe_under_way(&with("failed")));
        assert!(!reprobe_under_way(&ChallengeReply::default()));
        // The run takes the re-probe, not the probe at acceptance.
        let taken = Which::Latest.of(with("issued")).unwrap();
        assert_eq!(taken.reprobe, 1);
        assert_eq!(Which::First.of(with("issued")), None);
    }
}

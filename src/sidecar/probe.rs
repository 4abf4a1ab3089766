//! `gpubridge-sidecar probe`: the network's GPU probe (DESIGN §8), run once in the lease pod
//! before the sidecars and the workload: multiply what the challenge nonce seeds, commit the
//! roots, answer the checks the commitment's block drew, and exit once the network recorded the
//! pass. The arithmetic runs on the CPU ([`CpuRun`]); a CUDA engine is not built yet.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::identity::lease_files::{self, LeaseFilesError};
use crate::probe::wire::{CpuRun, Move};
use crate::process::telemetry::LogFormat;
use crate::sidecar::client::{LeaseArgs, SidecarClient};
use crate::wire::proto::ProbeReply;

#[derive(clap::Args, Debug, Clone)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub lease: LeaseArgs,
    /// Seconds between two tries when the collector or the network does not answer.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub retry_seconds: u64,
    /// Seconds after which the probe gives up (the network's own deadlines end the lease).
    #[arg(long, default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub give_up_seconds: u64,
    #[arg(long, env = "GPUBRIDGE_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("lease identity: {0}")]
    Identity(#[from] LeaseFilesError),
    #[error("{0}")]
    Collector(String),
    #[error("the network failed the probe: {0}")]
    Failed(String),
    #[error("the probe did not pass within {0} s")]
    GaveUp(u64),
}

pub async fn run(args: ProbeArgs) -> Result<(), ProbeError> {
    let credentials = lease_files::load(
        &args.lease.identity_dir,
        &args.lease.lease_id,
        jiff::Timestamp::now().as_second(),
    )?;
    let client = SidecarClient::new(&args.lease.collector_url, credentials)
        .map_err(ProbeError::Collector)?;
    let give_up = Instant::now() + Duration::from_secs(args.give_up_seconds);
    let retry = Duration::from_secs(args.retry_seconds);
    let mut run = CpuRun::default();
    let mut last: Option<ProbeReply> = None;
    while Instant::now() < give_up {
        let reply = match last.take() {
            Some(reply) => reply,
            None => match client.challenge().await {
                Ok(challenge) => challenge.probe.ok_or_else(|| {
                    ProbeError::Collector("the network issued this lease no probe".into())
                })?,
                Err(s) => {
                    warn!(code = ?s.code(), message = %s.message(), "cannot read the probe");
                    tokio::time::sleep(retry).await;
                    continue;
                }
            },
        };
        // The work is seconds of CPU: off the runtime's thread.
        let (back, next) = tokio::task::spawn_blocking(move || {
            let next = run.next(&reply);
            (run, next)
        })
        .await
        .map_err(|e| ProbeError::Collector(format!("the probe's work: {e}")))?;
        run = back;
        let step = match next {
            Move::Passed(detail) => {
                info!(%detail, "GPU probe passed");
                return Ok(());
            }
            Move::Failed(detail) => return Err(ProbeError::Failed(detail)),
            Move::Send(step) => step,
        };
        match client.submit_probe(step).await {
            Ok(reply) => {
                info!(state = %reply.state, answered = ?reply.answered, "probe step taken");
                last = Some(reply);
            }
            Err(s) => {
                warn!(code = ?s.code(), message = %s.message(), "probe step refused");
                tokio::time::sleep(retry).await;
            }
        }
    }
    Err(ProbeError::GaveUp(args.give_up_seconds))
}

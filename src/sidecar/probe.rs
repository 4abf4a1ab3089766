//! `gpubridge-sidecar probe`: the network's GPU probe (DESIGN §8), run once in the lease pod
//! before the sidecars and the workload: multiply what the challenge nonce seeds, commit the
//! roots, answer the checks the commitment's block drew, and exit once the network recorded the
//! pass; the attestation sidecar runs the lease's re-probes the same way ([`drive`]). The
//! arithmetic runs on the lease's GPUs through CUDA ([`CudaEngine`]), or on the CPU
//! ([`CpuEngine`]) where there is no CUDA (the simulated GPUs of the tests).

use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::commitment::merkle::Hash;
use crate::identity::lease_files::{self, LeaseFilesError};
use crate::probe::Spec;
use crate::probe::challenge::{
    Rules, check_gpu, checks_nonce, gpu_rounds, gpu_seed, throughput_gops,
};
use crate::probe::run::{CpuEngine, Engine, Move, ProbeRun};
use crate::process::telemetry::LogFormat;
use crate::sidecar::client::{LeaseArgs, SidecarClient};
use crate::sidecar::cuda::{self, CudaEngine};
use crate::wire::proto::{ChallengeReply, ProbeReply};

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
    /// Where the arithmetic runs: `auto` takes CUDA when the driver and NVRTC load and the
    /// CPU otherwise (a GPU the CPU stands in for fails a governed band; one without a band
    /// passes on the arithmetic alone).
    #[arg(
        long,
        env = "GPUBRIDGE_PROBE_ENGINE",
        value_enum,
        default_value = "auto"
    )]
    pub engine: EngineKind,
    #[arg(long, env = "GPUBRIDGE_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    Auto,
    Cuda,
    Cpu,
}

impl EngineKind {
    pub fn open(self) -> Result<Box<dyn Engine>, ProbeError> {
        let cpu = || -> Box<dyn Engine> { Box::new(CpuEngine::default()) };
        Ok(match self {
            EngineKind::Cpu => cpu(),
            EngineKind::Cuda => Box::new(CudaEngine::open().map_err(ProbeError::Engine)?),
            EngineKind::Auto => match CudaEngine::open() {
                Ok(cuda) => {
                    info!("the probe runs on the GPUs through CUDA");
                    Box::new(cuda)
                }
                Err(reason) => {
                    warn!(%reason, "no CUDA: the probe runs on the CPU");
                    cpu()
                }
            },
        })
    }
}

/// `gpubridge-sidecar probe-engine`: where a probe would run on this machine, no lease needed
/// (an image's check, or a provider's on a GPU node); with `--calibrate`, a probe's
/// multiplication timed on GPU 0 and its product checked as the network checks a lease's: the
/// figure a governed band (`probe-band/<model>`) is set from.
#[derive(clap::Args, Debug, Clone)]
pub struct EngineCheckArgs {
    /// Fail unless this much works: `nvrtc` (the kernels compile; no GPU needed) or `cuda`
    /// (they load on every GPU the container sees).
    #[arg(long, value_enum)]
    pub require: Option<Requirement>,
    /// Run one GPU's probe multiplication on the chosen engine, check its product, and print
    /// its time, throughput and root.
    #[arg(long)]
    pub calibrate: bool,
    /// The memory the calibration fills 90 % of: the model's, as its band will say.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub memory_mib: u32,
    /// Tiles are size × size, as the network's `probe-size`.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(16..=512))]
    pub size: u32,
    /// Rounds of checks on the calibration's product, and rows opened a round, as the network's
    /// `probe-rounds` and `probe-rows`.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub rounds: u32,
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=2))]
    pub rows: u32,
    #[arg(long, value_enum, default_value = "auto")]
    pub engine: EngineKind,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requirement {
    Nvrtc,
    Cuda,
}

/// Prints what compiles and what loads here (and a calibration run's figures), and fails when
/// `--require` is not met.
pub fn check_engine(args: EngineCheckArgs) -> Result<(), ProbeError> {
    let compiled = cuda::compile().map(|_| "compiles the probe's kernels".to_string());
    let opened = CudaEngine::open().map(|engine| format!("{} GPUs", engine.gpus()));
    let said = |result: &Result<String, String>| match result {
        Ok(what) | Err(what) => what.clone(),
    };
    println!("nvrtc: {}", said(&compiled));
    println!("cuda: {}", said(&opened));
    println!("engine: {}", if opened.is_ok() { "cuda" } else { "cpu" });
    match args.require {
        Some(Requirement::Nvrtc) => compiled.map(drop).map_err(ProbeError::Engine)?,
        Some(Requirement::Cuda) => opened.map(drop).map_err(ProbeError::Engine)?,
        None => {}
    }
    if args.calibrate {
        let rules = Rules {
            size: args.size,
            default_memory_mib: args.memory_mib,
            rounds: args.rounds,
            rows: args.rows,
            bands: Default::default(),
        };
        let mut engine = args.engine.open()?;
        let calibrated = calibrate(&mut engine, &rules)?;
        println!(
            "calibration ({} engine): {} tiles of {}² ({} MiB) multiplied in {} ms: {} GOPS",
            engine.name(),
            calibrated.spec.tiles,
            calibrated.spec.size,
            args.memory_mib,
            calibrated.kernel_ms,
            throughput_gops(&calibrated.spec, calibrated.kernel_ms),
        );
        println!("root: {}", hex::encode(calibrated.root));
        println!(
            "checked: {} rounds of {} rows, as the network checks a lease's probe",
            rules.rounds, rules.rows
        );
    }
    Ok(())
}

/// The nonce a calibration multiplies from: fixed, so that two engines or two machines can
/// compare their roots.
const CALIBRATION_NONCE: [u8; 32] = [0x5a; 32];

/// A calibration run whose product the network's checks passed.
#[derive(Debug)]
pub struct Calibrated {
    pub spec: Spec,
    pub root: Hash,
    pub kernel_ms: u64,
}

/// GPU 0's probe under `rules` at their default memory, checked as the network checks a lease's
/// (checks drawn from the root, after the commitment): a time is a figure for a band only when
/// the product it timed is right.
pub fn calibrate(engine: &mut dyn Engine, rules: &Rules) -> Result<Calibrated, ProbeError> {
    let spec = rules.filling(rules.default_memory_mib);
    let committed = engine
        .multiply(spec, &[gpu_seed(&CALIBRATION_NONCE, 0)])
        .map_err(ProbeError::Engine)?;
    let root = *committed
        .roots
        .first()
        .ok_or_else(|| ProbeError::Engine("the engine committed no root".into()))?;
    let checks = checks_nonce(&[0; 32], "calibration", &[root]);
    let answers = engine
        .answer(0, &gpu_rounds(rules, &spec, &checks, 0))
        .map_err(ProbeError::Engine)?;
    check_gpu(
        rules,
        &spec,
        &CALIBRATION_NONCE,
        &checks,
        0,
        &root,
        &answers,
    )
    .map_err(|refusal| {
        ProbeError::Engine(format!(
            "its product failed the network's checks: {refusal}"
        ))
    })?;
    Ok(Calibrated {
        spec,
        root,
        kernel_ms: committed.kernel_ms,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("lease identity: {0}")]
    Identity(#[from] LeaseFilesError),
    #[error("{0}")]
    Collector(String),
    #[error("the network failed the probe: {0}")]
    Failed(String),
    #[error("the probe's engine: {0}")]
    Engine(String),
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
    let deadlines = Deadlines {
        give_up: Duration::from_secs(args.give_up_seconds),
        retry: Duration::from_secs(args.retry_seconds),
    };
    let detail = drive(&client, args.engine.open()?, Which::First, deadlines).await?;
    info!(%detail, "GPU probe passed");
    Ok(())
}

/// Which of a lease's probes a run takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// The probe at acceptance, before the workload starts.
    First,
    /// The latest re-probe, beside the workload.
    Latest,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::First => "probe",
            Which::Latest => "re-probe",
        }
    }

    /// This probe, from the network's challenge reply.
    pub fn of(self, challenge: ChallengeReply) -> Option<ProbeReply> {
        match self {
            Which::First => challenge.probe,
            Which::Latest => challenge.reprobe,
        }
    }
}

/// How long a run keeps trying, and how long it waits between two tries.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    pub give_up: Duration,
    pub retry: Duration,
}

/// Runs `which` probe of the lease to its end on `engine`: multiply, commit, answer, until the
/// network records a pass (its detail) or a failure.
pub async fn drive(
    client: &SidecarClient,
    engine: Box<dyn Engine>,
    which: Which,
    deadlines: Deadlines,
) -> Result<String, ProbeError> {
    let give_up = Instant::now() + deadlines.give_up;
    let mut run = ProbeRun::new(engine);
    let mut last: Option<ProbeReply> = None;
    while Instant::now() < give_up {
        let reply = match last.take() {
            Some(reply) => reply,
            None => match client.challenge().await {
                Ok(challenge) => which.of(challenge).ok_or_else(|| {
                    ProbeError::Collector(format!(
                        "the network issued this lease no {}",
                        which.name()
                    ))
                })?,
                Err(s) => {
                    warn!(code = ?s.code(), message = %s.message(), "cannot read the probe");
                    tokio::time::sleep(deadlines.retry).await;
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
            Move::Passed(detail) => return Ok(detail),
            Move::Failed(detail) => return Err(ProbeError::Failed(detail)),
            Move::Broken(reason) => return Err(ProbeError::Engine(reason)),
            Move::Send(step) => step,
        };
        match client.submit_probe(step).await {
            Ok(reply) => {
                info!(state = %reply.state, answered = ?reply.answered, reprobe = reply.reprobe,
                    "probe step taken");
                last = Some(reply);
            }
            Err(s) => {
                warn!(code = ?s.code(), message = %s.message(), "probe step refused");
                tokio::time::sleep(deadlines.retry).await;
            }
        }
    }
    Err(ProbeError::GaveUp(deadlines.give_up.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::run::Committed;
    use crate::probe::{Answer, Prover, Round};

    fn rules() -> Rules {
        Rules {
            size: 16,
            default_memory_mib: 1,
            rounds: 16,
            rows: 2,
            bands: Default::default(),
        }
    }

    /// The CPU engine with every answer's C·r off by one in its first entry.
    #[derive(Default)]
    struct Wrong(CpuEngine);

    impl Engine for Wrong {
        fn name(&self) -> &'static str {
            "wrong"
        }

        fn multiply(&mut self, spec: Spec, seeds: &[[u8; 32]]) -> Result<Committed, String> {
            self.0.multiply(spec, seeds)
        }

        fn answer(&mut self, gpu: u32, rounds: &[Round]) -> Result<Vec<Answer>, String> {
            let mut answers = self.0.answer(gpu, rounds)?;
            answers[0].product[0] += 1;
            Ok(answers)
        }
    }

    #[test]
    fn a_calibration_commits_the_references_root_and_passes_the_networks_checks() {
        let calibrated = calibrate(&mut CpuEngine::default(), &rules()).unwrap();
        let spec = rules().filling(1);
        assert_eq!(calibrated.spec, spec);
        let reference = Prover::remaking(spec, &gpu_seed(&CALIBRATION_NONCE, 0));
        assert_eq!(calibrated.root, reference.commitment());
    }

    #[test]
    fn a_calibration_whose_product_is_wrong_gives_no_figure() {
        let err = calibrate(&mut Wrong::default(), &rules()).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "the probe's engine: its product failed the network's checks: gpus[0].rounds[0]:"
            ),
            "{err}"
        );
    }
}

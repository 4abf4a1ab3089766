//! `gpubridge network`: the reference network node (DESIGN §7) — provider registry, offer book
//! with expiry, matching, a double-entry escrow ledger.
//!
//! `state` is the network's rules as one deterministic state machine over signed transactions,
//! pure, with `matching`, `ledger` and `transitions` (an order and its lease) beneath it; `store`
//! is its embedded driver, which orders transactions itself and persists each block in an
//! embedded database; `chain` its consensus driver, an ABCI application beside each validator's
//! CometBFT node, persisting through the same store; `service` is the gRPC surface of both.

pub mod chain;
pub mod ledger;
pub mod matching;
pub mod records;
pub mod relay;
pub mod service;
pub mod state;
pub mod store;
pub mod transitions;
pub mod uptime;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use crate::identity::{keyfile, public_key_base58};
use crate::process::shutdown::Shutdown;
use crate::wire::MAX_MESSAGE_BYTES;
use crate::wire::proto::gateway_server::GatewayServer;
use crate::wire::proto::relay_server::RelayServer;
pub use state::Params;
pub use store::{HubError, Store};

/// Flags of `gpubridge network`.
#[derive(clap::Args, Debug, Clone)]
pub struct NetworkArgs {
    /// Address to serve the gateway on.
    #[arg(
        long,
        env = "GPUBRIDGE_NETWORK_LISTEN",
        default_value = "127.0.0.1:7300"
    )]
    pub listen: SocketAddr,
    /// Folder of the database and, unless --key-file says otherwise, the network key.
    #[arg(
        long,
        env = "GPUBRIDGE_NETWORK_DATA_DIR",
        default_value = "gpubridge-network"
    )]
    pub data_dir: PathBuf,
    /// The network's signing key; created (mode 0600) when absent.
    #[arg(long, env = "GPUBRIDGE_NETWORK_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Seconds an offer lives without being published again.
    #[arg(long, default_value_t = 120)]
    pub offer_ttl_seconds: u32,
    /// Seconds without a heartbeat after which a provider's offers are dropped.
    #[arg(long, default_value_t = 30)]
    pub heartbeat_timeout_seconds: u32,
    /// Seconds of the slot uptime is counted in: providers heartbeat at least this often.
    #[arg(long, default_value_t = 10)]
    pub heartbeat_interval_seconds: u32,
    /// Seconds of the window a provider's uptime is measured over.
    #[arg(long, default_value_t = 24 * 3600)]
    pub uptime_window_seconds: u32,
    /// Seconds a provider has to accept or reject a lease.
    #[arg(long, default_value_t = 30)]
    pub answer_seconds: u32,
    /// Seconds between attestation challenges of a running lease, once the last is answered.
    #[arg(long, default_value_t = 300)]
    pub challenge_seconds: u32,
    /// Denomination stake is bonded in.
    #[arg(long, default_value = "USDC")]
    pub stake_denomination: String,
    /// Stake each GPU of a provider's matched and running leases needs, in units of the stake
    /// denomination (for example 50 or 12.5); 0 asks no bond.
    #[arg(long, default_value = "0")]
    pub bond_per_gpu: String,
    /// Seconds unbonded stake stays slashable before it is paid back.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    pub unbonding_seconds: u32,
    /// Seconds after acceptance by which a lease's first receipt must arrive; past it the lease
    /// never started and its provider is slashed. 0 sets no deadline.
    #[arg(long, default_value_t = 600)]
    pub start_deadline_seconds: u32,
    /// Share of a provider's stake one slash takes, in basis points (1000 = 10 %).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub slash_basis_points: u32,
    /// The GPU probe every accepted lease runs: tiles of this size² (16 to 512).
    #[arg(long, default_value_t = 256)]
    pub probe_size: u32,
    /// MiB of each GPU the probe fills (90 % of) on a model with no calibration band.
    #[arg(long, default_value_t = 16)]
    pub probe_memory_mib: u32,
    /// Rounds of checks per GPU (1 to 16): a wrong product answered from what the probe holds
    /// survives each with probability at most 1/2.
    #[arg(long, default_value_t = 16)]
    pub probe_rounds: u32,
    /// Rows each round opens (0 to 2).
    #[arg(long, default_value_t = 2)]
    pub probe_rows: u32,
    /// Seconds from the probe's commitment by which its checks must be answered.
    #[arg(long, default_value_t = 120)]
    pub probe_answer_seconds: u32,
    /// Seconds after a running lease's last passed probe at which it is probed again, when its
    /// offer promised re-probes (`reprobed=true`: DRA devices); 0 probes no lease again.
    #[arg(long, default_value_t = 3_600)]
    pub reprobe_seconds: u32,
    /// MiB of each GPU a re-probe fills (90 % of): room the workload leaves beside it.
    #[arg(long, default_value_t = 512)]
    pub reprobe_memory_mib: u32,
    /// A GPU model's calibration band, MODEL=MEMORY_MIB:LEAST_GOPS:MOST_GOPS; repeatable.
    #[arg(long)]
    pub probe_band: Vec<String>,
    /// Blocks a proposal is voted on. This and the three below are governance's own rules: no
    /// proposal changes them.
    #[arg(long, default_value_t = 100)]
    pub voting_blocks: u64,
    /// The least deposit of a proposal, in units of the stake denomination.
    #[arg(long, default_value = "10")]
    pub min_deposit: String,
    /// Bonded stake that must vote for a tally to count, basis points.
    #[arg(long, default_value_t = 3_340, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub quorum_basis_points: u32,
    /// Yes votes, basis points of the stake that voted, above which a proposal passes.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub threshold_basis_points: u32,
    /// Run as one validator's application: serve ABCI 2.0 on this address to a CometBFT node
    /// (0.38), which orders the transactions; the parameters are then the genesis file's
    /// `app_state`, not these flags. Without it the node orders them itself (the embedded
    /// network).
    #[arg(long, value_name = "ABCI_ADDRESS")]
    pub cometbft: Option<SocketAddr>,
    /// The JSON-RPC of this validator's CometBFT node, which the gateway sends transactions to.
    #[arg(long, default_value = "http://127.0.0.1:26657/")]
    pub cometbft_rpc: hyper::Uri,
    /// Print these flags' parameters as a CometBFT genesis `app_state` and exit.
    #[arg(long)]
    pub print_app_state: bool,
    /// Log format.
    #[arg(long, env = "GPUBRIDGE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: crate::process::telemetry::LogFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("cannot create {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] keyfile::KeyFileError),
    #[error("cannot open the database: {0}")]
    Store(#[from] HubError),
    #[error(transparent)]
    Flag(#[from] crate::wire::Rejection),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("ABCI: {0}")]
    Abci(#[from] Box<tendermint_abci::Error>),
    #[error("the ABCI server stopped: {0}")]
    AbciStopped(tokio::task::JoinError),
    #[error("cannot serve on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        source: tonic::transport::Error,
    },
}

pub async fn run(args: NetworkArgs) -> Result<(), NetworkError> {
    let params = params(&args)?;
    if args.print_app_state {
        let app_state = chain::app::AppState { params };
        println!(
            "{}",
            serde_json::to_string_pretty(&app_state).expect("params serialize")
        );
        return Ok(());
    }
    std::fs::create_dir_all(&args.data_dir).map_err(|source| NetworkError::DataDir {
        path: args.data_dir.clone(),
        source,
    })?;
    let key_path = args
        .key_file
        .clone()
        .unwrap_or_else(|| args.data_dir.join("network.key"));
    let key = keyfile::load_or_create(&key_path)?;
    let db_path = args.data_dir.join("network.redb");
    let store = Arc::new(tokio::task::block_in_place(|| {
        Store::open(&db_path, key, params.clone())
    })?);
    info!(
        node_key = %public_key_base58(&store.network_key()),
        listen = %args.listen,
        database = %db_path.display(),
        validator = args.cometbft.is_some(),
        "network node starting"
    );
    let relay = relay::RelayService::new(store.clone());
    let (gateway, consensus) = match args.cometbft {
        Some(abci) => {
            let (gateway, abci) = validator(&args, abci, store);
            (gateway, Some(abci))
        }
        None => (embedded(&params, store)?, None),
    };
    let mut server = crate::wire::server();
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| NetworkError::Tls(format!("{}: {e}", p.display())))
        };
        let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
        server = server
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| NetworkError::Tls(e.to_string()))?;
    }
    let service = GatewayServer::new(gateway).max_decoding_message_size(MAX_MESSAGE_BYTES);
    // A graceful stop waits for open streams to end: the providers' relay streams never do
    // of themselves, so they are ended first.
    let stopped = {
        let (signalled, relay) = (Shutdown::on_signals().signalled(), relay.clone());
        async move {
            signalled.await;
            relay.end_streams();
        }
    };
    let relay = RelayServer::new(relay).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let served = server
        .add_service(service)
        .add_service(relay)
        .serve_with_shutdown(args.listen, stopped);
    let served = async {
        served.await.map_err(|source| NetworkError::Serve {
            addr: args.listen,
            source,
        })
    };
    match consensus {
        None => served.await,
        // The ABCI server runs until the process ends; it returning is a failure to serve.
        Some(abci) => tokio::select! {
            done = served => done,
            stopped = abci => stopped.unwrap_or_else(|e| Err(NetworkError::AbciStopped(e))),
        },
    }
}

/// The embedded network: a sweeper makes each second's upkeep a block of its own and delivers
/// the leases it made.
fn embedded(params: &Params, store: Arc<Store>) -> Result<service::GatewayService, NetworkError> {
    let in_force = store.params()?;
    if &in_force != params {
        warn!(
            ?in_force,
            "the network's parameters are its state's: the flags set them only for a new \
             network, and only governance changes them"
        );
    }
    let gateway = service::GatewayService::new(store.clone());
    let sweeper = gateway.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let store = store.clone();
            let now = jiff::Timestamp::now().as_second();
            match tokio::task::spawn_blocking(move || store.sweep(now)).await {
                Ok(Ok((lapsed, matched))) => {
                    if !lapsed.is_empty() {
                        info!(?lapsed, "leases lapsed");
                    }
                    for (provider, lease) in matched {
                        sweeper.deliver(&provider, lease, None);
                    }
                }
                Ok(Err(e)) => error!(error = %e, "sweep failed"),
                Err(e) => error!(error = %e, "sweep task failed"),
            }
        }
    });
    Ok(gateway)
}

/// A validator: the ABCI application CometBFT drives, on a thread of its own, and a gateway
/// whose transactions go through CometBFT and which hears of every committed block.
fn validator(
    args: &NetworkArgs,
    abci: SocketAddr,
    store: Arc<Store>,
) -> (
    service::GatewayService,
    tokio::task::JoinHandle<Result<(), NetworkError>>,
) {
    let app = chain::abci::AbciApp::new(Arc::new(chain::app::Chain::new(store.clone())));
    let mut committed = app.subscribe();
    let broadcaster = Arc::new(chain::broadcast::Broadcaster::new(
        args.cometbft_rpc.clone(),
        COMMIT_TIMEOUT,
    ));
    let gateway = service::GatewayService::validator(store, broadcaster);
    let listener = gateway.clone();
    tokio::spawn(async move {
        loop {
            match committed.recv().await {
                Ok(block) => listener.committed(&block.block),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => warn!(
                    missed,
                    "the gateway fell behind the chain: clients of those blocks time out and \
                     their providers' leases come with their next stream"
                ),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    let serving = tokio::task::spawn_blocking(move || app.serve(abci).map_err(NetworkError::from));
    (gateway, serving)
}

/// How long a validator's gateway waits for a transaction's block before answering that it
/// was not committed (yet).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The network parameters the flags set (a new embedded network's, or a genesis `app_state`).
fn params(args: &NetworkArgs) -> Result<Params, NetworkError> {
    crate::wire::validate::denomination("--stake-denomination", &args.stake_denomination)?;
    let base = Params {
        offer_ttl_seconds: args.offer_ttl_seconds,
        heartbeat_timeout_seconds: args.heartbeat_timeout_seconds,
        heartbeat_interval_seconds: args.heartbeat_interval_seconds,
        uptime_window_seconds: args.uptime_window_seconds,
        answer_seconds: args.answer_seconds,
        challenge_seconds: args.challenge_seconds,
        bond_per_gpu: crate::wire::amount::from_decimal_units(
            "--bond-per-gpu",
            &args.bond_per_gpu,
        )?,
        stake_denomination: args.stake_denomination.clone(),
        unbonding_seconds: args.unbonding_seconds,
        start_deadline_seconds: args.start_deadline_seconds,
        slash_basis_points: args.slash_basis_points,
        voting_blocks: args.voting_blocks,
        min_deposit: crate::wire::amount::from_decimal_units("--min-deposit", &args.min_deposit)?,
        quorum_basis_points: args.quorum_basis_points,
        threshold_basis_points: args.threshold_basis_points,
        ..Params::default()
    };
    // The probe's flags are checked as governance would change them, within the same bounds.
    let mut probe: Vec<(String, String)> = [
        ("probe-size", args.probe_size),
        ("probe-memory-mib", args.probe_memory_mib),
        ("probe-rounds", args.probe_rounds),
        ("probe-rows", args.probe_rows),
        ("probe-answer-seconds", args.probe_answer_seconds),
        ("reprobe-seconds", args.reprobe_seconds),
        ("reprobe-memory-mib", args.reprobe_memory_mib),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value.to_string()))
    .collect();
    for band in &args.probe_band {
        let (model, value) = band.split_once('=').ok_or_else(|| {
            crate::wire::Rejection::invalid(
                "--probe-band",
                "must be MODEL=MEMORY_MIB:LEAST_GOPS:MOST_GOPS",
            )
        })?;
        probe.push((format!("probe-band/{model}"), value.to_string()));
    }
    probe.into_iter().try_fold(base, |params, (name, value)| {
        params
            .with_change(&name, &value)
            .map_err(NetworkError::from)
    })
}

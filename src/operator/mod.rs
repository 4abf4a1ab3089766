//! `gpubridge operator`: assembles the process — caches, controllers, leader election, the
//! HTTP endpoint — and shuts it down gracefully on SIGTERM.
//!
//! - `controller`: the two reconcilers and the inventory watches;
//! - `leader`: leader election, so that only one replica writes;
//! - `session`, `intake`, `publication`, `reservations`: the outbound session to the network,
//!   the leases it takes (their GPUs promised through a record shared by every replica) and the
//!   offers it publishes;
//! - `collector`: the gRPC endpoint the lease pods' sidecars report to;
//! - `metrics`: what `/metrics` exposes.

pub mod access;
pub mod collector;
pub mod controller;
pub mod intake;
pub mod leader;
pub mod metrics;
pub mod permissions;
pub mod publication;
pub mod reservations;
pub mod session;
pub mod status;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::{Api, Client};
use tracing::{error, info};

use crate::capacity::Inventory;
use crate::commitment::PinnedNetwork;
use crate::crd::{ComputeLease, GpuOffer};
use crate::identity::{
    generate_key, public_key_base58, public_key_from_base58, signing_key_from_bytes,
};
use crate::operator::controller::backoff::Backoff;
use crate::operator::controller::boxes::BoxCache;
use crate::operator::controller::watch::{self, LeaseTriggers, OfferTriggers, Synced};
use crate::operator::metrics::Metrics;
use crate::process::http::{self, Probe};
use crate::process::shutdown::Shutdown;
use crate::process::telemetry::LogFormat;
use crate::wire::client::{self, NetworkClient, Target};
use crate::workload::{CollectorEndpoint, LogReader};
use collector::{CollectorService, OcspFetcher};
use controller::{Context, Settings};
use leader::ElectionSettings;
use session::{NetworkTrust, SessionSettings};

const PROVIDER_KEY_FIELD: &str = "provider.key";
const PROVIDER_PUBLIC_KEY_FIELD: &str = "provider.pub";

/// Flags of `gpubridge operator`; each can also come from the environment.
#[derive(clap::Args, Debug, Clone)]
pub struct OperatorArgs {
    /// Namespace the operator runs in: its provider key Secret and leader Lease live there.
    #[arg(long, env = "POD_NAMESPACE", default_value = "gpubridge-system")]
    pub namespace: String,
    /// Address of the /metrics, /livez and /readyz endpoint.
    #[arg(long, env = "GPUBRIDGE_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "GPUBRIDGE_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// Most reconciles of one controller running at once.
    #[arg(long, env = "GPUBRIDGE_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Elect a leader among replicas; only the leader writes. Disable only for a single replica.
    #[arg(long, env = "GPUBRIDGE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the coordination.k8s.io Lease used for leader election.
    #[arg(
        long,
        env = "GPUBRIDGE_LEADER_LEASE",
        default_value = "gpubridge-operator"
    )]
    pub leader_lease_name: String,
    /// This replica's identity in leader election; the pod name in a cluster.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Image lease sidecars run: the operator's own image.
    #[arg(long, env = "GPUBRIDGE_SIDECAR_IMAGE")]
    pub sidecar_image: String,
    /// An environment variable of the lease pods' meter and attest sidecars, NAME=VALUE;
    /// repeat for more (for example GPUBRIDGE_NVML_LIBRARY where the driver keeps NVML
    /// elsewhere).
    #[arg(long = "sidecar-env", value_name = "NAME=VALUE", value_parser = crate::workload::parse_sidecar_env)]
    pub sidecar_env: Vec<k8s_openapi::api::core::v1::EnvVar>,
    /// Seconds a lease pod may take to run before the lease fails.
    #[arg(
        long,
        env = "GPUBRIDGE_SCHEDULING_TIMEOUT_SECONDS",
        default_value_t = 600
    )]
    pub scheduling_timeout_seconds: u64,
    /// Seconds between recomputes of an offer that nothing triggered.
    #[arg(long, env = "GPUBRIDGE_OFFER_RESYNC_SECONDS", default_value_t = 300)]
    pub offer_resync_seconds: u64,
    /// Secret holding the provider key; created on first start when absent.
    #[arg(
        long,
        env = "GPUBRIDGE_PROVIDER_KEY_SECRET",
        default_value = "gpubridge-provider-key"
    )]
    pub provider_key_secret: String,
    /// The network's gateways, `http://host:port` or `https://host:port`, comma-separated:
    /// every validator serves one, and the session moves to the next when one fails. Without
    /// any the operator computes and shows offers but publishes them nowhere.
    #[arg(long, env = "GPUBRIDGE_NETWORK_URL", value_delimiter = ',')]
    pub network_url: Vec<String>,
    /// The embedded network's public key, base58. When set, a network presenting another key
    /// is refused.
    #[arg(
        long,
        env = "GPUBRIDGE_NETWORK_KEY",
        conflicts_with = "network_genesis"
    )]
    pub network_key: Option<String>,
    /// The CometBFT genesis document of a network run by validators: its chain id and
    /// validator set are pinned, and a lease is taken only with the proof that validators
    /// holding more than 2/3 of that set's voting power committed it.
    #[arg(long, env = "GPUBRIDGE_NETWORK_GENESIS")]
    pub network_genesis: Option<std::path::PathBuf>,
    /// An OCSP responder for the GPUs' certificate chains (NVIDIA's is
    /// `http://ocsp.ndis.nvidia.com/`): the operator fetches a response for each GPU's device
    /// certificate and the CAs above it, and hands them to the network with the evidence, which
    /// then checks revocation. Unset,
    /// revocation is not checked and every verdict says so. The NetworkPolicy must let the
    /// operator reach it (`networkPolicy.ocspResponder` in the chart).
    #[arg(long, env = "GPUBRIDGE_OCSP_RESPONDER")]
    pub ocsp_responder: Option<hyper::Uri>,
    /// PEM CA bundle that signs the network's TLS certificate; the system roots when absent.
    #[arg(long, env = "GPUBRIDGE_NETWORK_CA_FILE")]
    pub network_ca_file: Option<std::path::PathBuf>,
    /// This provider's display name on the network.
    #[arg(long, env = "GPUBRIDGE_PROVIDER_NAME", default_value = "gpubridge")]
    pub provider_name: String,
    /// Region this cluster's GPUs are in, as buyers filter by it; empty for none.
    #[arg(long, env = "GPUBRIDGE_REGION", default_value = "")]
    pub region: String,
    /// Watch ResourceSlices and ResourceClaims (resource.k8s.io/v1) for offers of DRA devices.
    /// Disable on a cluster that does not serve that API.
    #[arg(long, env = "GPUBRIDGE_DYNAMIC_RESOURCES", default_value_t = true, action = clap::ArgAction::Set)]
    pub dynamic_resources: bool,
    /// Address the collector serves lease sidecars on.
    #[arg(long, env = "GPUBRIDGE_COLLECTOR_ADDR", default_value = "0.0.0.0:7400")]
    pub collector_addr: SocketAddr,
    /// URL lease sidecars dial the collector at; by default the `gpubridge-collector` Service
    /// in the operator's namespace, on the collector's port.
    #[arg(long, env = "GPUBRIDGE_COLLECTOR_URL")]
    pub collector_url: Option<String>,
    /// The ClusterRole granting `pods/log`, which the operator binds to its service account in
    /// each lease namespace so that it can relay the workload's log to its buyer; logs are
    /// refused without it.
    #[arg(long, env = "GPUBRIDGE_LOG_READER_ROLE")]
    pub log_reader_role: Option<String>,
    /// The operator's service account (in --namespace), named in those bindings.
    #[arg(long, env = "GPUBRIDGE_SERVICE_ACCOUNT", default_value = "gpubridge")]
    pub service_account: String,
    /// Least seconds between two usage summaries of one lease written into its status.
    #[arg(long, env = "GPUBRIDGE_COLLECTOR_STATUS_SECONDS", default_value_t = 10)]
    pub collector_status_seconds: u64,
    /// Seconds a lease's end report waits for the meter's final receipt.
    #[arg(
        long,
        env = "GPUBRIDGE_FINAL_RECEIPT_GRACE_SECONDS",
        default_value_t = 120
    )]
    pub final_receipt_grace_seconds: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("cannot reach the Kubernetes API: {0}")]
    Client(#[source] kube::Error),
    #[error("provider key Secret {namespace}/{name}: {reason}")]
    ProviderKey {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot serve HTTP on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("--network-url: {0}")]
    NetworkUrl(#[source] client::ConnectError),
    #[error("--network-key: {0}")]
    NetworkKey(String),
    #[error("--network-genesis {path}: {reason}")]
    NetworkGenesis { path: String, reason: String },
    #[error("cannot serve the collector on {addr}: {source}")]
    Collector {
        addr: SocketAddr,
        source: tonic::transport::Error,
    },
    #[error("leadership was lost; exiting so that only the new leader writes")]
    LeadershipLost,
}

pub async fn run(args: OperatorArgs) -> Result<(), OperatorError> {
    let session_settings = session_settings(&args)?;
    // Both ports first: one in use stops the operator before it does anything else.
    let bind = |what: &'static str, addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| OperatorError::Bind { what, addr, source })
    };
    let http_listener = bind("metrics and probes (--http-addr)", args.http_addr).await?;
    let collector_listener = bind("the collector (--collector-addr)", args.collector_addr).await?;
    let client = Client::try_default().await.map_err(OperatorError::Client)?;
    let provider_key =
        load_or_create_provider_key(&client, &args.namespace, &args.provider_key_secret).await?;
    info!(provider = %public_key_base58(&provider_key.verifying_key()), "provider identity");

    let shutdown = Shutdown::on_signals();
    let (offers, offers_writer) = reflector::store::<GpuOffer>();
    let inventory = Arc::new(RwLock::new(Inventory::default()));
    let synced = Synced::new(args.dynamic_resources);
    let triggers = OfferTriggers::default();
    let backoff = Arc::new(Backoff::new(
        Duration::from_secs(1),
        Duration::from_secs(300),
    ));
    tokio::spawn(watch::run_offers(
        client.clone(),
        offers_writer,
        triggers.clone(),
        backoff.clone(),
    ));
    // One watch per kind, shared: the ComputeLease watch also fills the lease controller's cache.
    let (leases, leases_writer) = reflector::store::<ComputeLease>();
    let lease_triggers = LeaseTriggers::default();
    tokio::spawn(watch::run(
        client.clone(),
        watch::Shared {
            inventory: inventory.clone(),
            offers: offers.clone(),
            triggers: triggers.clone(),
            synced: synced.clone(),
        },
        leases_writer,
        lease_triggers.clone(),
        args.dynamic_resources,
    ));
    let (boxes, box_writers) = BoxCache::new();
    tokio::spawn(watch::run_boxes(
        client.clone(),
        box_writers,
        lease_triggers.clone(),
    ));

    let metrics = Metrics::new();
    let leading = metrics.leader.clone();
    let probe = Arc::new(OperatorProbe::new(
        offers.clone(),
        inventory.clone(),
        synced,
        metrics.clone(),
    ));
    let http = http::serve(http_listener, probe.clone(), shutdown.signalled());
    let http_addr = args.http_addr;
    let http = tokio::spawn(async move {
        http.await.map_err(|source| OperatorError::Http {
            addr: http_addr,
            source,
        })
    });

    // Every replica serves the collector: what it writes is the network's verdict on the
    // receipts, the same whichever replica forwards them.
    let collector = {
        let network = match &session_settings {
            Some(settings) => Some(NetworkClient::new(
                client::any_channel(&settings.targets).map_err(OperatorError::NetworkUrl)?,
                provider_key.clone(),
            )),
            None => None,
        };
        let service = CollectorService::new(
            provider_key.verifying_key(),
            client.clone(),
            network,
            metrics.clone(),
            Duration::from_secs(args.collector_status_seconds),
            args.ocsp_responder.clone().map(OcspFetcher::new),
        );
        let addr = args.collector_addr;
        let stop = shutdown.signalled();
        tokio::spawn(async move {
            collector::serve(collector_listener, service, stop)
                .await
                .map_err(|source| OperatorError::Collector { addr, source })
        })
    };
    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("gpubridge-{}", std::process::id()));
    let ctx = Arc::new(Context {
        client: client.clone(),
        inventory,
        offers,
        boxes,
        settings: Settings {
            sidecar_image: args.sidecar_image.clone(),
            sidecar_env: args.sidecar_env.clone(),
            scheduling_timeout: Duration::from_secs(args.scheduling_timeout_seconds),
            offer_resync: Duration::from_secs(args.offer_resync_seconds),
            reports_to_network: session_settings.is_some(),
            final_receipt_grace: Duration::from_secs(args.final_receipt_grace_seconds),
            collector: CollectorEndpoint {
                url: args.collector_url.clone().unwrap_or_else(|| {
                    format!(
                        "http://gpubridge-collector.{}.svc:{}",
                        args.namespace,
                        args.collector_addr.port()
                    )
                }),
                namespace: args.namespace.clone(),
                port: args.collector_addr.port(),
            },
            log_reader: args.log_reader_role.clone().map(|cluster_role| LogReader {
                cluster_role,
                service_account: args.service_account.clone(),
            }),
        },
        metrics,
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "gpubridge-operator".into(),
                instance: Some(identity.clone()),
            },
        ),
        backoff,
        reservations: reservations::ReservationRecord::new(client.clone(), &args.namespace),
        provider_key,
        box_gate: Default::default(),
    });
    tokio::spawn(permissions::watch(client.clone(), ctx.box_gate.clone()));
    // Nothing is decided from a partial picture: the controllers start once every cache has
    // listed its objects.
    let caches_synced = async {
        while !probe.ready() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        _ = shutdown.signalled() => return Ok(()),
        _ = caches_synced => info!("caches synced"),
    }
    let session = {
        let (ctx, stop) = (ctx.clone(), shutdown.signalled());
        async move {
            match session_settings {
                Some(settings) => {
                    // Buyers' access rides on outbound streams to every gateway, beside the
                    // session.
                    let reach = access::kube::KubeReach {
                        client: ctx.client.clone(),
                        offers: ctx.offers.clone(),
                    };
                    let metrics = access::AccessMetrics {
                        calls: ctx.metrics.access_calls.clone(),
                        bytes: ctx.metrics.access_bytes.clone(),
                    };
                    let relay = access::Relay::new(reach, ctx.provider_key.clone(), metrics);
                    let targets = settings.targets.clone();
                    futures::future::join(
                        session::run(ctx, settings, stop.clone()),
                        access::run(relay, targets, stop),
                    )
                    .await;
                }
                None => info!("no --network-url: offers are computed but not published"),
            }
        }
    };
    let controllers = futures::future::join(
        controller::run(
            ctx,
            controller::Caches {
                offer_triggers: triggers,
                leases,
                lease_triggers,
            },
            args.concurrency,
            shutdown.signalled(),
        ),
        session,
    );

    let result = if args.leader_election {
        let election = ElectionSettings::new(
            args.namespace.clone(),
            args.leader_lease_name.clone(),
            identity,
        );
        let leases: Api<Lease> = Api::namespaced(client, &args.namespace);
        tokio::select! {
            _ = shutdown.signalled() => return Ok(()),
            acquired = leader::acquire(&leases, &election) => acquired.map_err(OperatorError::Client)?,
        }
        leading.set(1);
        let result = tokio::select! {
            _ = controllers => Ok(()),
            _ = leader::hold(&leases, &election) => Err(OperatorError::LeadershipLost),
        };
        leading.set(0);
        if result.is_ok() {
            // A clean stop hands leadership over at once instead of after the lease duration.
            leader::release(&leases, &election).await;
        }
        result
    } else {
        // Without election this replica writes from the start, as the gauge says.
        leading.set(1);
        controllers.await;
        leading.set(0);
        Ok(())
    };
    shutdown.trigger();
    if let Ok(Err(e)) = http.await {
        error!(error = %e, "HTTP endpoint failed");
    }
    if let Ok(Err(e)) = collector.await {
        error!(error = %e, "collector failed");
    }
    result
}

fn session_settings(args: &OperatorArgs) -> Result<Option<SessionSettings>, OperatorError> {
    // An empty GPUBRIDGE_NETWORK_URL, or a stray comma, names no gateway.
    let urls: Vec<&String> = args.network_url.iter().filter(|u| !u.is_empty()).collect();
    if urls.is_empty() {
        return Ok(None);
    }
    let trust = match (&args.network_genesis, &args.network_key) {
        (Some(path), _) => {
            let fail = |reason: String| OperatorError::NetworkGenesis {
                path: path.display().to_string(),
                reason,
            };
            let json = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
            let pinned = PinnedNetwork::from_genesis(&json).map_err(|e| fail(e.to_string()))?;
            let (validators, power) = pinned.size();
            info!(
                chain = pinned.chain_id(),
                validators, power, "leases are taken only as committed by these validators"
            );
            NetworkTrust::Validators(Arc::new(pinned))
        }
        (None, key) => NetworkTrust::Key(
            key.as_deref()
                .map(public_key_from_base58)
                .transpose()
                .map_err(|e| OperatorError::NetworkKey(e.to_string()))?,
        ),
    };
    Ok(Some(SessionSettings {
        targets: urls
            .into_iter()
            .map(|url| Target {
                url: url.clone(),
                ca_file: args.network_ca_file.clone(),
            })
            .collect(),
        trust,
        provider_name: args.provider_name.clone(),
        region: args.region.clone(),
    }))
}

/// Reads the provider key, or creates it on first start. Two replicas starting together both
/// end up with whichever key was created first.
async fn load_or_create_provider_key(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<SigningKey, OperatorError> {
    let fail = |reason: String| OperatorError::ProviderKey {
        namespace: namespace.into(),
        name: name.into(),
        reason,
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = match secrets
        .get_opt(name)
        .await
        .map_err(|e| fail(e.to_string()))?
    {
        Some(secret) => secret,
        None => {
            let key = generate_key();
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some(namespace.into()),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/part-of".to_string(),
                        "gpubridge".to_string(),
                    )])),
                    ..Default::default()
                },
                immutable: Some(true),
                type_: Some("Opaque".into()),
                data: Some(BTreeMap::from([
                    (
                        PROVIDER_KEY_FIELD.to_string(),
                        ByteString(key.to_bytes().to_vec()),
                    ),
                    (
                        PROVIDER_PUBLIC_KEY_FIELD.to_string(),
                        ByteString(public_key_base58(&key.verifying_key()).into_bytes()),
                    ),
                ])),
                ..Default::default()
            };
            match secrets.create(&PostParams::default(), &secret).await {
                Ok(created) => {
                    info!(%namespace, %name, "created the provider key");
                    created
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    secrets.get(name).await.map_err(|e| fail(e.to_string()))?
                }
                Err(e) => return Err(fail(e.to_string())),
            }
        }
    };
    let seed = secret
        .data
        .as_ref()
        .and_then(|d| d.get(PROVIDER_KEY_FIELD))
        .ok_or_else(|| fail(format!("has no {PROVIDER_KEY_FIELD} entry")))?;
    signing_key_from_bytes(&seed.0).map_err(|e| fail(format!("{PROVIDER_KEY_FIELD}: {e}")))
}

/// Readiness and metrics from the caches.
struct OperatorProbe {
    offers: Store<GpuOffer>,
    offers_synced: Arc<AtomicBool>,
    inventory: Arc<RwLock<Inventory>>,
    synced: Synced,
    metrics: Metrics,
}

impl OperatorProbe {
    fn new(
        offers: Store<GpuOffer>,
        inventory: Arc<RwLock<Inventory>>,
        synced: Synced,
        metrics: Metrics,
    ) -> Self {
        let offers_synced = Arc::new(AtomicBool::new(false));
        let (flag, store) = (offers_synced.clone(), offers.clone());
        tokio::spawn(async move {
            if store.wait_until_ready().await.is_ok() {
                flag.store(true, Ordering::Relaxed);
            }
        });
        OperatorProbe {
            offers,
            offers_synced,
            inventory,
            synced,
            metrics,
        }
    }
}

impl Probe for OperatorProbe {
    fn ready(&self) -> bool {
        self.offers_synced.load(Ordering::Relaxed) && self.synced.all()
    }

    fn metrics(&self) -> String {
        let offers = self.offers.state();
        {
            let inventory = self.inventory.read().expect("inventory lock poisoned");
            self.metrics.refresh(
                offers.iter().map(|o| o.as_ref()),
                inventory.leases(),
                |node| {
                    let node = inventory.node(node)?;
                    inventory.model_of(node).map(str::to_string)
                },
            );
        }
        self.metrics.render()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        operator: OperatorArgs,
    }

    fn settings(flags: &[&str]) -> Result<Option<SessionSettings>, OperatorError> {
        let args = Flags::try_parse_from(
            ["operator", "--sidecar-image", "i"]
                .into_iter()
                .chain(flags.iter().copied()),
        )
        .unwrap();
        session_settings(&args.operator)
    }

    #[test]
    fn the_gateways_are_listed_in_order_and_a_network_is_pinned_by_key_or_genesis() {
        assert!(settings(&["--network-url", ""]).unwrap().is_none());
        let listed = settings(&["--network-url", "http://a:1,,http://b:2"])
            .unwrap()
            .unwrap();
        let urls: Vec<&str> = listed.targets.iter().map(|t| t.url.as_str()).collect();
        assert_eq!(urls, ["http://a:1", "http://b:2"]);
        assert!(matches!(listed.trust, NetworkTrust::Key(None)));

        let dir = tempfile::tempdir().unwrap();
        let genesis = dir.path().join("genesis.json");
        let chain = crate::commitment::testchain::TestChain::new("pinned", 4, 1);
        std::fs::write(&genesis, chain.genesis()).unwrap();
        let path = genesis.to_str().unwrap();
        let pinned = settings(&["--network-url", "http://a:1", "--network-genesis", path])
            .unwrap()
            .unwrap();
        assert!(matches!(&pinned.trust, NetworkTrust::Validators(p) if p.chain_id() == "pinned"));

        std::fs::write(&genesis, b"{}").unwrap();
        let refused = settings(&["--network-url", "http://a:1", "--network-genesis", path])
            .unwrap_err()
            .to_string();
        assert!(
            refused.starts_with(&format!(
                "--network-genesis {path}: is not a CometBFT genesis document"
            )),
            "{refused}"
        );
        let both = Flags::try_parse_from([
            "operator",
            "--sidecar-image",
            "i",
            "--network-url",
            "http://a:1",
            "--network-key",
            "4vJ9JU1bJJE96FWSJKvHsmmFADCg4gpZQff4P3bkLKi",
            "--network-genesis",
            path,
        ]);
        assert_eq!(
            both.err().map(|e| e.kind()),
            Some(clap::error::ErrorKind::ArgumentConflict),
            "--network-key with --network-genesis"
        );
    }
}

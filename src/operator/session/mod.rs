//! The operator's outbound session with the network (DESIGN §3, §6), run by the leader only:
//! connect to one of the network's gateways (TLS optional; the embedded network's key or a
//! validator network's genesis pinned), register, open the lease stream, heartbeat,
//! publish offers when they change and before they expire, withdraw paused or deleted ones,
//! take leases through intake, and report the end of every lease. Any failure drops the session
//! and reconnects to the next gateway, with backoff and jitter once each was tried; everything
//! it does is level-based, so a reconnect (or a new leader) picks up where the last one stopped.
//!
//! This file connects and runs the session; `leases` takes leases (intake's shell), `publish`
//! keeps the offers in the book, `ends` reports the ends.

mod ends;
mod leases;
mod publish;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use rand_core::{OsRng, RngCore};
use tonic::Status;
use tracing::{info, warn};

use crate::commitment::PinnedNetwork;
use crate::crd::ComputeLease;
use crate::identity::public_key_base58;
use crate::operator::controller::Context;
use crate::wire::client::{self, NetworkClient, Target};
use crate::wire::envelope::verifying_key;

/// Field manager of the status fields the session writes (offerId, lastAdvertised, reportedAt).
pub const SESSION_FIELD_MANAGER: &str = "gpubridge-network-session";

/// Settings of the session, from the operator's flags.
#[derive(Clone, Debug)]
pub struct SessionSettings {
    /// The network's gateways, tried in turn.
    pub targets: Vec<Target>,
    pub trust: NetworkTrust,
    pub provider_name: String,
    pub region: String,
}

/// What makes a lease the network's.
#[derive(Clone, Debug)]
pub enum NetworkTrust {
    /// The embedded network's key signs its leases; the session refuses a network presenting
    /// another key than the pinned one.
    Key(Option<VerifyingKey>),
    /// A network of validators: a lease is taken only with the proof that the pinned
    /// validators committed it (`commitment::verify_committed_lease`).
    Validators(Arc<PinnedNetwork>),
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Connect(#[from] client::ConnectError),
    #[error("network call failed: {0}")]
    Call(#[from] Status),
    #[error("the network presents key {found}, not the pinned {pinned}")]
    WrongNetworkKey { pinned: String, found: String },
    #[error("the network's key is invalid: {0}")]
    BadNetworkKey(String),
    #[error("the lease stream ended")]
    StreamEnded,
    #[error(
        "the gateway sent lease {lease} without proof that the validators committed it \
         ({reason}); trying another gateway"
    )]
    Uncommitted { lease: String, reason: String },
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl SessionError {
    /// The `reason` label of `gpubridge_network_session_failures_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SessionError::Connect(_) => "connect",
            SessionError::Call(_) => "call",
            SessionError::WrongNetworkKey { .. } => "wrong_network_key",
            SessionError::BadNetworkKey(_) => "bad_network_key",
            SessionError::StreamEnded => "stream_ended",
            SessionError::Uncommitted { .. } => "uncommitted_lease",
            SessionError::Kube(_) => "kube",
        }
    }
}

fn now_unix() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn now_unix_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Runs sessions until `shutdown`, reconnecting after each failure.
pub async fn run(
    ctx: Arc<Context>,
    settings: SessionSettings,
    shutdown: impl Future<Output = ()> + Clone,
) {
    tokio::select! {
        _ = shutdown.clone() => return,
        _ = catch_up(&ctx) => {}
    }
    let mut failures: u32 = 0;
    let mut next = 0;
    loop {
        let started = Instant::now();
        let target = &settings.targets[next % settings.targets.len()];
        let session = session(&ctx, &settings, target);
        let result = tokio::select! {
            _ = shutdown.clone() => return,
            result = session => result,
        };
        ctx.metrics.network_session_up.set(0);
        if started.elapsed() > Duration::from_secs(60) {
            // It worked for a while: this is a new outage, not the same one.
            failures = 0;
        }
        failures = failures.saturating_add(1);
        next += 1;
        // Backing off grows with each round over all the gateways, not with each gateway.
        let gateways = u32::try_from(settings.targets.len()).unwrap_or(u32::MAX);
        let delay = reconnect_delay(failures.div_ceil(gateways));
        let Err(e) = result;
        ctx.metrics
            .network_session_failures
            .with_label_values(&[e.metric_label()])
            .inc();
        warn!(error = %e, url = %target.url, retry_in = ?delay, "network session lost");
        tokio::select! {
            _ = shutdown.clone() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// A new leader's caches may lag what the previous leader created. Before taking any lease, read
/// every ComputeLease from the API (a quorum read) and wait until the inventory counts them all,
/// so intake never decides against a picture older than the last promise.
async fn catch_up(ctx: &Context) {
    let api: Api<ComputeLease> = Api::all(ctx.client.clone());
    loop {
        match api.list(&ListParams::default()).await {
            Ok(list) => {
                let names: Vec<String> = list.items.iter().map(|l| l.name_any()).collect();
                // A lease deleted since the list never shows up: list again after a while.
                for _ in 0..50 {
                    let missing = {
                        let inventory = ctx.inventory.read().expect("inventory lock poisoned");
                        names
                            .iter()
                            .filter(|n| inventory.lease(n).is_none())
                            .count()
                    };
                    if missing == 0 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot list ComputeLeases before intake; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// 1 s doubling to 60 s, with up to 50% random jitter so providers do not reconnect in lockstep
/// after a network restart.
fn reconnect_delay(failures: u32) -> Duration {
    let base = Duration::from_secs(1 << failures.clamp(1, 7).saturating_sub(1))
        .min(Duration::from_secs(60));
    base + base.mul_f64(f64::from(OsRng.next_u32() % 500) / 1000.0)
}

async fn session(
    ctx: &Arc<Context>,
    settings: &SessionSettings,
    target: &Target,
) -> Result<Infallible, SessionError> {
    let channel = client::channel(target)?;
    let client = NetworkClient::new(channel, ctx.provider_key.clone());
    let info = client.info().await?;
    let network_key = verifying_key("networkKey", &info.network_key)
        .map_err(|e| SessionError::BadNetworkKey(e.to_string()))?;
    let validators = match &settings.trust {
        NetworkTrust::Key(Some(pinned)) if pinned != &network_key => {
            return Err(SessionError::WrongNetworkKey {
                pinned: public_key_base58(pinned),
                found: public_key_base58(&network_key),
            });
        }
        NetworkTrust::Key(Some(_)) => None,
        NetworkTrust::Key(None) => {
            warn!(
                network = %public_key_base58(&network_key),
                "no --network-key: trusting the key this network presents; pin it in production"
            );
            None
        }
        // Each validator's gateway signs with its own key; the proofs are what count.
        NetworkTrust::Validators(pinned) => Some(pinned.as_ref()),
    };
    let check = leases::LeaseCheck {
        gateway: network_key,
        validators,
    };
    let registered = client
        .register(&settings.provider_name, &settings.region)
        .await?;
    let stream = client.leases().await?;
    ctx.metrics.network_session_up.set(1);
    info!(
        network = %public_key_base58(&network_key),
        url = %target.url,
        "network session established"
    );
    let ttl = Duration::from_secs(u64::from(registered.offer_ttl_seconds.max(3)));
    let heartbeat = Duration::from_secs(u64::from(registered.heartbeat_timeout_seconds.max(3)) / 3);
    tokio::select! {
        r = leases::take_leases(ctx, &client, stream, &check) => r,
        r = keep_alive(&client, heartbeat) => r,
        r = publish::publish_offers(ctx, &client, settings, ttl) => r,
        r = ends::report_ends(ctx, &client) => r,
    }
}

async fn keep_alive(client: &NetworkClient, every: Duration) -> Result<Infallible, SessionError> {
    loop {
        tokio::time::sleep(every).await;
        client.heartbeat().await?;
    }
}

//! Buyer access, the operator's side (DESIGN §9, `relay.proto`): a relay stream open to every
//! gateway of the network, each call served on an Attach stream of its own. A call is checked
//! again here — the buyer's token against the ComputeLease (`access`), the offer's limits —
//! before the pod's log is read or its declared port dialled; the bytes are then copied until
//! either side ends, the lease stops running or the connection idles out.
//!
//! This file is the relay shell; `kube` is the [`Reach`] into the cluster, `limits` counts what
//! each lease holds open.

pub mod kube;
mod limits;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use ed25519_dalek::{SigningKey, VerifyingKey};
use prometheus::IntCounterVec;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use crate::access::{self, Access, LeaseFacts, SeenNonces};
use crate::crd::LeaseAccess;
use crate::wire::client::{self, Target};
use crate::wire::envelope::seal;
use crate::wire::proto::relay_client::RelayClient;
use crate::wire::proto::{
    AccessCall, AttachBody, Chunk, LogOptions, Refused, RelayCallsBody, access_call, chunk,
};
use crate::wire::{MAX_CHUNK_BYTES, Rejection};

use limits::{CallKind, Direction, Held};
pub use limits::{LeaseLimits, Limits};

/// Chunks buffered toward a gateway per call.
const BUFFERED_CHUNKS: usize = 8;
/// Tokens remembered against replay, each until it expires.
const REMEMBERED_TOKENS: usize = 1 << 18;
/// How long a finished call waits for the gateway to take its last bytes.
const CLOSE_WITHIN: Duration = Duration::from_secs(30);
/// How often a call checks that its lease still runs.
const LEASE_CHECK_EVERY: Duration = Duration::from_secs(5);
/// How often what the calls carried is recorded on their leases' statuses, where the meter
/// reads it for its receipts: one write per busy lease per period bounds the API server's load,
/// and a receipt sealed as its pod stops misses at most this much of the last bytes.
const RECORD_EVERY: Duration = Duration::from_secs(5);

/// A lease as the operator sees it, for access.
#[derive(Clone, Debug)]
pub struct LeaseView {
    pub lease_id: String,
    pub buyer: VerifyingKey,
    /// The TCP ports its workload declared.
    pub ports: Vec<u32>,
    pub running: bool,
    /// The containers whose logs the buyer may read.
    pub log_containers: Vec<String>,
    /// What its offer allows.
    pub limits: LeaseLimits,
    /// The access its status records so far.
    pub access: LeaseAccess,
}

pub type LogReader = Pin<Box<dyn AsyncBufRead + Send>>;
pub type Connection = Pin<Box<dyn Duplex>>;

/// A byte stream both ways: a TCP connection to a pod, or a test's pipe.
pub trait Duplex: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> Duplex for T {}

/// How the operator reaches a lease's pod: the cluster's API and pod network in production, a
/// loopback server in tests.
pub trait Reach: Send + Sync + 'static {
    /// The lease, or why it cannot be reached (it does not exist here).
    fn lease(&self, lease_id: &str) -> impl Future<Output = Result<LeaseView, Rejection>> + Send;
    /// A container's log, as the kubelet serves it (each line prefixed with its RFC 3339 time).
    fn logs(
        &self,
        lease: &LeaseView,
        options: &LogOptions,
    ) -> impl Future<Output = Result<LogReader, Rejection>> + Send;
    /// A connection to a port of the lease's pod.
    fn dial(
        &self,
        lease: &LeaseView,
        port: u32,
    ) -> impl Future<Output = Result<Connection, Rejection>> + Send;
    /// Records what the lease's calls carried so far on its status (NotFound: it is gone).
    fn record(
        &self,
        lease_id: &str,
        access: LeaseAccess,
    ) -> impl Future<Output = Result<(), Rejection>> + Send;
}

/// The access counters of the operator's metrics (bounded labels: no lease id).
#[derive(Clone)]
pub struct AccessMetrics {
    /// `gpubridge_access_calls_total{kind, outcome}`.
    pub calls: IntCounterVec,
    /// `gpubridge_access_bytes_total{direction}`: to_buyer, to_workload.
    pub bytes: IntCounterVec,
}

/// What every relay stream of this operator shares.
pub struct Relay<R> {
    pub reach: R,
    pub key: SigningKey,
    pub metrics: AccessMetrics,
    limits: Limits,
    tokens: Mutex<SeenNonces>,
}

impl<R: Reach> Relay<R> {
    pub fn new(reach: R, key: SigningKey, metrics: AccessMetrics) -> Arc<Relay<R>> {
        Arc::new(Relay {
            reach,
            key,
            metrics,
            limits: Limits::default(),
            tokens: Mutex::new(SeenNonces::new(REMEMBERED_TOKENS, now())),
        })
    }
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Keeps a relay stream open to each of `targets` until `shutdown`, reconnecting each on its
/// own with backoff: a buyer reaches the provider through whichever gateway it calls.
pub async fn run<R: Reach>(
    relay: Arc<Relay<R>>,
    targets: Vec<Target>,
    shutdown: impl Future<Output = ()>,
) {
    let streams = futures::future::join_all(
        targets
            .into_iter()
            .map(|target| keep_open(relay.clone(), target)),
    );
    tokio::select! {
        _ = shutdown => {}
        _ = streams => {}
        _ = keep_recording(&relay) => {}
    }
    // What was counted since the last record is not lost to a clean stop.
    record_once(&relay).await;
}

/// Records, every few seconds, what each lease's calls carried.
async fn keep_recording<R: Reach>(relay: &Relay<R>) {
    let mut every = tokio::time::interval(RECORD_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        record_once(relay).await;
    }
}

async fn record_once<R: Reach>(relay: &Relay<R>) {
    for (lease_id, access) in relay.limits.unrecorded() {
        match relay.reach.record(&lease_id, access).await {
            Ok(()) => {}
            Err(Rejection::NotFound(_)) => relay.limits.forget(&lease_id),
            Err(e) => {
                warn!(lease = %lease_id, error = %e, "cannot record the lease's access; retrying");
                relay.limits.not_recorded(&lease_id);
            }
        }
    }
}

async fn keep_open<R: Reach>(relay: Arc<Relay<R>>, target: Target) {
    let schedule = || {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(30))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut delays = schedule();
    loop {
        let started = Instant::now();
        let error = match serve_calls(&relay, &target).await {
            Ok(()) => "the gateway ended the relay stream".to_string(),
            Err(e) => e,
        };
        if started.elapsed() > Duration::from_secs(60) {
            // It worked for a while: this is a new outage.
            delays = schedule();
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(30));
        warn!(url = %target.url, %error, retry_in = ?delay, "relay stream lost");
        tokio::time::sleep(delay).await;
    }
}

/// One relay stream: each call it brings is served on a task of its own.
async fn serve_calls<R: Reach>(relay: &Arc<Relay<R>>, target: &Target) -> Result<(), String> {
    let channel = client::channel(target).map_err(|e| e.to_string())?;
    let client = client::relay_client(channel);
    let signed = seal(&relay.key, RelayCallsBody { header: None }, now());
    let mut calls = client
        .clone()
        .calls(signed)
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    info!(url = %target.url, "relay stream open");
    while let Some(call) = calls.message().await.map_err(|s| s.message().to_string())? {
        let (relay, client) = (relay.clone(), client.clone());
        tokio::spawn(async move { serve_call(&relay, client, call).await });
    }
    Ok(())
}

/// What a call gets once allowed.
enum Served {
    Logs(LogReader),
    Connection(Connection),
}

impl<R: Reach> Relay<R> {
    /// Whether the call may be served, and if so the log or the connection, with the hold it
    /// takes on its lease's connection count.
    async fn open(
        &self,
        call: &AccessCall,
    ) -> Result<(Served, LeaseView, limits::Held), Rejection> {
        let token = call
            .token
            .as_ref()
            .ok_or_else(|| Rejection::invalid("token", "is required"))?;
        let now = now();
        let token = access::open_token(token, now)?;
        if token.lease_id != call.lease_id {
            return Err(Rejection::invalid(
                "leaseId",
                "the call's lease is not the token's",
            ));
        }
        let lease = self.reach.lease(&token.lease_id).await?;
        let containers: Vec<&str> = lease.log_containers.iter().map(String::as_str).collect();
        let facts = LeaseFacts {
            lease_id: &lease.lease_id,
            buyer: &lease.buyer,
            ports: &lease.ports,
            running: lease.running,
            log_containers: Some(&containers),
        };
        let what = call
            .what
            .as_ref()
            .ok_or_else(|| Rejection::invalid("what", "is required"))?;
        let access = match what {
            access_call::What::Logs(options) => Access::Logs {
                container: &options.container,
            },
            access_call::What::Port(port) => Access::Connect { port: *port },
        };
        access::authorize(&token, &facts, access)?;
        self.tokens.lock().expect("tokens lock").admit(
            &token.buyer,
            &token.nonce,
            token.issued_at,
            token.expires_at,
            now,
        )?;
        let kind = match what {
            access_call::What::Logs(_) => CallKind::Logs,
            access_call::What::Port(_) => CallKind::Connection,
        };
        let held = self.limits.hold(&lease, kind)?;
        let served = match what {
            access_call::What::Logs(options) => {
                Served::Logs(self.reach.logs(&lease, options).await?)
            }
            access_call::What::Port(port) => {
                Served::Connection(self.reach.dial(&lease, *port).await?)
            }
        };
        Ok((served, lease, held))
    }
}

fn kind_of(call: &AccessCall) -> &'static str {
    match call.what {
        Some(access_call::What::Logs(_)) => "logs",
        _ => "connect",
    }
}

/// Serves one call: refuses it on its Attach stream, or attaches and copies bytes.
async fn serve_call<R: Reach>(relay: &Relay<R>, client: RelayClient<Channel>, call: AccessCall) {
    let kind = kind_of(&call);
    let opened = relay.open(&call).await;
    let refused = opened.as_ref().err().map(|rejection| Refused {
        code: rejection.code() as i32,
        message: rejection.to_string(),
    });
    let outcome = match &opened {
        Ok(_) => "served",
        Err(rejection) => rejection.kind(),
    };
    relay
        .metrics
        .calls
        .with_label_values(&[kind, outcome])
        .inc();
    let attach = seal(
        &relay.key,
        AttachBody {
            header: None,
            call_id: call.call_id.clone(),
            refused,
        },
        now(),
    );
    let (to_gateway, outgoing) = mpsc::channel(BUFFERED_CHUNKS);
    let first = Chunk {
        kind: Some(chunk::Kind::Attach(attach)),
    };
    to_gateway
        .try_send(first)
        .expect("an empty channel takes one chunk");
    let attached = client.clone().attach(ReceiverStream::new(outgoing)).await;
    let from_gateway = match attached {
        Ok(response) => response.into_inner(),
        Err(status) => {
            warn!(call = %call.call_id, error = %status.message(), "cannot attach to the call");
            return;
        }
    };
    let Ok((served, lease, held)) = opened else {
        return;
    };
    debug!(call = %call.call_id, lease = %lease.lease_id, kind, "call attached");
    let pipe = Pipe {
        relay,
        held: &held,
        lease_id: &lease.lease_id,
        last_activity: AtomicI64::new(0),
        started: Instant::now(),
    };
    let mut from_gateway = from_gateway;
    let copied = match served {
        // Nothing comes from the gateway on a log until its end: the buyer left. A quiet
        // `--follow` is a normal wait, and the log ends with its container (the kubelet ends
        // it), its last lines included: a log is not cut when its lease stops running.
        Served::Logs(log) => {
            tokio::select! {
                copied = pipe.copy_out(log, to_gateway) => copied,
                _ = ended(&mut from_gateway) => Err("the buyer stopped reading".to_string()),
            }
        }
        Served::Connection(connection) => {
            let idle = Duration::from_secs(u64::from(lease.limits.idle_timeout_seconds));
            let copy = pipe.connection(connection, &mut from_gateway, to_gateway);
            pipe.watched(copy, idle).await
        }
    };
    match copied {
        Ok(()) => {
            // The gateway ends its side once it has all of ours: until then, dropping the call
            // could cut off the last of what was sent.
            let closed = tokio::time::timeout(CLOSE_WITHIN, ended(&mut from_gateway)).await;
            debug!(call = %call.call_id, closed = closed.is_ok(), "call ended");
        }
        Err(reason) => info!(call = %call.call_id, lease = %lease.lease_id, %reason, "call cut"),
    }
}

/// Waits until the gateway's side of a call ends (or breaks).
async fn ended(from_gateway: &mut Streaming<Chunk>) {
    while let Ok(Some(_)) = from_gateway.message().await {}
}

/// The copying of one call, watched for idleness and for its lease's end.
struct Pipe<'a, R> {
    relay: &'a Relay<R>,
    /// The call's place in its lease's tally: its count and its pace.
    held: &'a Held,
    lease_id: &'a str,
    /// Milliseconds since `started` at the last byte either way.
    last_activity: AtomicI64,
    started: Instant,
}

impl<R: Reach> Pipe<'_, R> {
    fn touch(&self) {
        let elapsed = i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.last_activity.store(elapsed, Ordering::Relaxed);
    }

    /// Runs `copy` until it ends, the call idles for `idle`, or the lease stops running.
    async fn watched(
        &self,
        copy: impl Future<Output = Result<(), String>>,
        idle: Duration,
    ) -> Result<(), String> {
        let watch = async {
            loop {
                tokio::time::sleep(LEASE_CHECK_EVERY.min(idle)).await;
                let last = Duration::from_millis(
                    u64::try_from(self.last_activity.load(Ordering::Relaxed)).unwrap_or(0),
                );
                if self.started.elapsed().saturating_sub(last) >= idle {
                    return format!("idle for {} s", idle.as_secs());
                }
                match self.relay.reach.lease(self.lease_id).await {
                    Ok(lease) if lease.running => {}
                    Ok(_) => return "the lease stopped running".to_string(),
                    Err(e) => return format!("the lease is gone: {e}"),
                }
            }
        };
        tokio::select! {
            done = copy => done,
            reason = watch => Err(reason),
        }
    }

    /// Copies `from` to the gateway until its end; the call's stream toward the buyer ends with
    /// it (the sender is dropped).
    async fn copy_out(
        &self,
        mut from: impl AsyncRead + Unpin,
        to_gateway: mpsc::Sender<Chunk>,
    ) -> Result<(), String> {
        let mut buffer = vec![0u8; MAX_CHUNK_BYTES];
        loop {
            let n = from
                .read(&mut buffer)
                .await
                .map_err(|e| format!("reading the workload: {e}"))?;
            if n == 0 {
                return Ok(());
            }
            self.touch();
            self.held.pace(n).await;
            self.held.carried(Direction::FromWorkload, n);
            self.relay
                .metrics
                .bytes
                .with_label_values(&["to_buyer"])
                .inc_by(n as u64);
            let chunk = Chunk {
                kind: Some(chunk::Kind::Data(buffer[..n].to_vec())),
            };
            to_gateway
                .send(chunk)
                .await
                .map_err(|_| "the gateway closed the call".to_string())?;
        }
    }

    /// Copies the gateway's data to `to` until the buyer closes its side (an empty chunk, or
    /// the end of the gateway's), then closes the workload's; an error when the buyer went.
    async fn copy_in(
        &self,
        from: &mut Streaming<Chunk>,
        mut to: impl AsyncWrite + Unpin,
    ) -> Result<(), String> {
        while let Some(chunk) = from
            .message()
            .await
            .map_err(|s| format!("the buyer's side ended: {}", s.message()))?
        {
            let Some(chunk::Kind::Data(data)) = chunk.kind else {
                return Err("the gateway sent something other than data".to_string());
            };
            if data.is_empty() {
                break;
            }
            self.touch();
            self.held.pace(data.len()).await;
            self.held.carried(Direction::ToWorkload, data.len());
            self.relay
                .metrics
                .bytes
                .with_label_values(&["to_workload"])
                .inc_by(data.len() as u64);
            to.write_all(&data)
                .await
                .map_err(|e| format!("writing to the workload: {e}"))?;
        }
        to.shutdown()
            .await
            .map_err(|e| format!("closing the workload's side: {e}"))
    }

    /// Both directions of a connection. Each side's close is passed on (a half-close); the
    /// copying ends when both sides closed, or at the first error.
    async fn connection(
        &self,
        connection: Connection,
        from_gateway: &mut Streaming<Chunk>,
        to_gateway: mpsc::Sender<Chunk>,
    ) -> Result<(), String> {
        let (read, write) = tokio::io::split(connection);
        tokio::try_join!(
            self.copy_in(from_gateway, write),
            self.copy_out(read, to_gateway)
        )
        .map(|_| ())
    }
}

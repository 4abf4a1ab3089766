//! Buyer access through the relay (relay.proto, DESIGN §9), in process: an embedded network
//! node serving its gateway and relay, the operator's relay shell (`operator::access`) reaching
//! loopback servers that stand in for the lease's pod, and the buyer's side of the CLI
//! (`cli::order::access`). What a cluster adds — the pod's address, `pods/log`, the lease's
//! NetworkPolicy — is the real node's e2e.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use gpubridge::access::Scope;
use gpubridge::cli::order::access::{self as buyer_access, Tokens};
use gpubridge::crd::LeaseAccess;
use gpubridge::identity::generate_key;
use gpubridge::node::relay::RelayService;
use gpubridge::operator::access::{
    self, AccessMetrics, Connection, LeaseLimits, LeaseView, LogReader, Reach, Relay,
};
use gpubridge::operator::metrics::Metrics;
use gpubridge::wire::Rejection;
use gpubridge::wire::amount::Amount;
use gpubridge::wire::client::Target;
use gpubridge::wire::envelope::seal;
use gpubridge::wire::proto::relay_client::RelayClient;
use gpubridge::wire::proto::relay_server::RelayServer;
use gpubridge::wire::proto::{
    AccessTokenBody, AttachBody, Chunk, ConnectRequest, LogOptions, Refused, RelayCallsBody,
    Signed, access_call, chunk,
};
use support::network::{Node, UNIT, now, offer, order};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::Code;
use tonic::transport::Channel;

/// The port the lease's workload declares.
const PORT: u32 = 8000;

/// The lease's pod as the test's [`Reach`] serves it: an echo server on [`PORT`], and a log
/// whose lines the test appends to (and then ends).
struct Pod {
    lease: Mutex<Option<LeaseView>>,
    echo: SocketAddr,
    /// The log's lines, (RFC 3339 time, text), and whether the container ended.
    log: watch::Sender<(Vec<(String, String)>, bool)>,
}

impl Pod {
    fn append(&self, text: &str) {
        self.log.send_modify(|(lines, _)| {
            // Times a millisecond apart, as the kubelet stamps lines.
            let at = jiff::Timestamp::now() + jiff::SignedDuration::from_millis(lines.len() as i64);
            lines.push((at.to_string(), text.to_string()));
            std::thread::sleep(Duration::from_millis(2));
        });
    }

    fn end_log(&self) {
        self.log.send_modify(|(_, ended)| *ended = true);
    }

    fn set_running(&self, running: bool) {
        if let Some(lease) = self.lease.lock().unwrap().as_mut() {
            lease.running = running;
        }
    }

    fn set_idle_timeout(&self, seconds: u32) {
        if let Some(lease) = self.lease.lock().unwrap().as_mut() {
            lease.limits.idle_timeout_seconds = seconds;
        }
    }

    fn set_max_connections(&self, max_connections: u32) {
        if let Some(lease) = self.lease.lock().unwrap().as_mut() {
            lease.limits.max_connections = max_connections;
        }
    }

    fn set_max_bytes_per_second(&self, limit: Option<u32>) {
        if let Some(lease) = self.lease.lock().unwrap().as_mut() {
            lease.limits.max_bytes_per_second = limit;
        }
    }

    /// What the operator last recorded on the lease's status.
    fn recorded(&self) -> LeaseAccess {
        self.lease
            .lock()
            .unwrap()
            .as_ref()
            .map(|l| l.access)
            .unwrap_or_default()
    }

    /// Waits until the recorded access satisfies `settled`.
    async fn recorded_when(&self, settled: impl Fn(&LeaseAccess) -> bool) -> LeaseAccess {
        for _ in 0..150 {
            let recorded = self.recorded();
            if settled(&recorded) {
                return recorded;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the lease's access was not recorded as expected: {:?}",
            self.recorded()
        );
    }
}

#[derive(Clone)]
struct TestReach(Arc<Pod>);

impl Reach for TestReach {
    async fn lease(&self, lease_id: &str) -> Result<LeaseView, Rejection> {
        self.0
            .lease
            .lock()
            .unwrap()
            .clone()
            .filter(|l| l.lease_id == lease_id)
            .ok_or_else(|| Rejection::NotFound(format!("lease {lease_id} does not run here")))
    }

    async fn logs(&self, _: &LeaseView, options: &LogOptions) -> Result<LogReader, Rejection> {
        // Like the kubelet: lines at or after `since_time`, each with its time; with `follow`,
        // new lines as they come, until the container ends.
        let since: Option<jiff::Timestamp> = match options.since_time.as_str() {
            "" => None,
            text => Some(text.parse().unwrap()),
        };
        let (follow, mut log) = (options.follow, self.0.log.subscribe());
        let (mut to_reader, reader) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut sent = 0;
            loop {
                let (lines, ended) = log.borrow_and_update().clone();
                for (time, text) in &lines[sent..] {
                    if since.is_none_or(|since| time.parse::<jiff::Timestamp>().unwrap() >= since)
                        && to_reader
                            .write_all(format!("{time} {text}\n").as_bytes())
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
                sent = lines.len();
                if !follow || ended || log.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Box::pin(tokio::io::BufReader::new(reader)))
    }

    async fn record(&self, lease_id: &str, access: LeaseAccess) -> Result<(), Rejection> {
        // As the status would: the next read of the lease carries it.
        match self.0.lease.lock().unwrap().as_mut() {
            Some(lease) if lease.lease_id == lease_id => {
                lease.access = access;
                Ok(())
            }
            _ => Err(Rejection::NotFound(format!("lease {lease_id} is gone"))),
        }
    }

    async fn dial(&self, _: &LeaseView, port: u32) -> Result<Connection, Rejection> {
        assert_eq!(port, PORT, "the operator dials only declared ports");
        let stream = TcpStream::connect(self.0.echo)
            .await
            .map_err(|e| Rejection::Precondition(e.to_string()))?;
        Ok(Box::pin(stream))
    }
}

/// Echoes every byte back on every connection.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut read, mut write) = socket.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    address
}

/// The operator's relay in a runtime of its own, so that stopping it ends every call it serves,
/// as a process exit would.
struct Operator {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Operator {
    fn start(gateways: &[String], key: &SigningKey, pod: &Arc<Pod>, metrics: &Metrics) -> Operator {
        let targets: Vec<Target> = gateways
            .iter()
            .map(|url| Target {
                url: url.clone(),
                ca_file: None,
            })
            .collect();
        let relay = Relay::new(
            TestReach(pod.clone()),
            key.clone(),
            AccessMetrics {
                calls: metrics.access_calls.clone(),
                bytes: metrics.access_bytes.clone(),
            },
        );
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let (done, wait) = tokio::sync::oneshot::channel::<()>();
            std::thread::spawn(move || {
                let _ = stopped.recv();
                let _ = done.send(());
            });
            runtime.block_on(access::run(relay, targets, async {
                let _ = wait.await;
            }));
            runtime.shutdown_timeout(Duration::from_secs(1));
        });
        Operator {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Another gateway of the network (each validator serves one), in a runtime of its own so that
/// stopping it cuts every stream it carries, as a crash would.
struct Gateway {
    url: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Gateway {
    fn start(store: &Arc<gpubridge::node::Store>) -> Gateway {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let relay = RelayServer::new(RelayService::new(store.clone()));
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            gpubridge::wire::server()
                .add_service(relay)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
        });
        Gateway {
            url,
            runtime: Some(runtime),
        }
    }

    fn stop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

struct World {
    node: Node,
    provider: SigningKey,
    buyer: SigningKey,
    lease_id: String,
    pod: Arc<Pod>,
    metrics: Metrics,
}

/// A node, a provider with an offer, a buyer whose order declares [`PORT`], the lease accepted,
/// and its pod.
async fn world() -> World {
    let node = Node::start().await;
    let (provider, buyer) = (generate_key(), generate_key());
    let p = node.client(provider.clone());
    p.register("acme", "eu-west").await.unwrap();
    p.publish(offer("h100", &[8])).await.unwrap();
    let b = node.client(buyer.clone());
    b.deposit(Amount::from_atto(100 * UNIT), "USDC")
        .await
        .unwrap();
    let mut body = order(1);
    body.workload.as_mut().unwrap().ports = vec![PORT];
    let placed = b.submit(body).await.unwrap();
    p.decide(&placed.lease_id, true, "").await.unwrap();
    let (log, _) = watch::channel((Vec::new(), false));
    let pod = Arc::new(Pod {
        lease: Mutex::new(Some(LeaseView {
            lease_id: placed.lease_id.clone(),
            buyer: buyer.verifying_key(),
            ports: vec![PORT],
            running: true,
            log_containers: vec!["workload".into()],
            limits: LeaseLimits {
                max_connections: 64,
                idle_timeout_seconds: 60,
                max_bytes_per_second: None,
            },
            access: LeaseAccess::default(),
        })),
        echo: echo_server().await,
        log,
    });
    World {
        node,
        provider,
        buyer,
        lease_id: placed.lease_id,
        pod,
        metrics: Metrics::new(),
    }
}

/// The world with the operator's relay stream open to the node's gateway.
async fn served() -> (World, Operator) {
    let w = world().await;
    let operator = w.operator(std::slice::from_ref(&w.node.url));
    relay_up(&w, &w.node.url).await;
    (w, operator)
}

impl World {
    fn operator(&self, gateways: &[String]) -> Operator {
        Operator::start(gateways, &self.provider, &self.pod, &self.metrics)
    }

    fn tokens(&self) -> Tokens {
        Tokens {
            key: self.buyer.clone(),
            lease_id: self.lease_id.clone(),
        }
    }
}

fn relay(url: &str) -> RelayClient<Channel> {
    let target = Target {
        url: url.to_string(),
        ca_file: None,
    };
    buyer_access::relay_client(gpubridge::wire::client::channel(&target).unwrap())
}

/// Opens a Tunnel call with `token` to `port`; the stream from the workload, or the refusal.
async fn open_tunnel(
    relay: &RelayClient<Channel>,
    token: Signed,
    port: u32,
) -> Result<(mpsc::Sender<Chunk>, tonic::Streaming<Chunk>), tonic::Status> {
    let (to_relay, outgoing) = mpsc::channel(8);
    to_relay
        .send(Chunk {
            kind: Some(chunk::Kind::Open(ConnectRequest {
                token: Some(token),
                port,
            })),
        })
        .await
        .unwrap();
    let response = relay.clone().tunnel(ReceiverStream::new(outgoing)).await?;
    Ok((to_relay, response.into_inner()))
}

/// Waits until the operator's relay stream is up at `url`: a call no longer finds the provider
/// offline.
async fn relay_up(w: &World, url: &str) {
    let relay = relay(url);
    for _ in 0..100 {
        match open_tunnel(&relay, w.tokens().sign(Scope::Connect, &[PORT]), PORT).await {
            Err(status) if status.code() == Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => return,
        }
    }
    panic!("the operator's relay stream never came up at {url}");
}

/// A buyer token with every field chosen.
fn token(
    key: &SigningKey,
    lease_id: &str,
    scopes: &[&str],
    ports: &[u32],
    issued_at: i64,
    expires_at: i64,
) -> Signed {
    let body = AccessTokenBody {
        header: None,
        lease_id: lease_id.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ports: ports.to_vec(),
        expires_at,
    };
    seal(key, body, issued_at)
}

/// Sends `message` on a connection and reads the echo to its end.
async fn round_trip(address: SocketAddr, message: &[u8]) -> Vec<u8> {
    let mut socket = TcpStream::connect(address).await.unwrap();
    socket.write_all(message).await.unwrap();
    socket.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    socket.read_to_end(&mut echoed).await.unwrap();
    echoed
}

/// `order connect`'s forwarder on a loopback port.
async fn forwarder(w: &World) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(buyer_access::forward(
        relay(&w.node.url),
        w.tokens(),
        PORT,
        listener,
    ));
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_connections_reach_the_workload_while_one_stalls() {
    let (w, _operator) = served().await;
    let local = forwarder(&w).await;

    // One connection sends 16 MiB and never reads its echo: its streams fill up and stop.
    let mut stalled = TcpStream::connect(local).await.unwrap();
    let stall = tokio::spawn(async move {
        let block = vec![7u8; 1 << 20];
        for _ in 0..16 {
            if stalled.write_all(&block).await.is_err() {
                return;
            }
        }
        std::future::pending::<()>().await;
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Fifty more, each with its own 100 KiB message, all at once: every one echoes whole.
    let started = Instant::now();
    let calls: Vec<_> = (0..50)
        .map(|i| {
            tokio::spawn(async move {
                let message: Vec<u8> = (0..100 * 1024).map(|b| (b * 31 + i) as u8).collect();
                (round_trip(local, &message).await == message, i)
            })
        })
        .collect();
    for call in calls {
        let (whole, i) = tokio::time::timeout(Duration::from_secs(60), call)
            .await
            .expect("a connection was held up behind the stalled one")
            .unwrap();
        assert!(whole, "connection {i} did not echo whole");
    }
    eprintln!(
        "50 connections echoed 100 KiB each in {:?}",
        started.elapsed()
    );
    assert!(
        !stall.is_finished(),
        "the stalled connection is still stalled"
    );
    let served = w
        .metrics
        .access_calls
        .with_label_values(&["connect", "served"])
        .get();
    assert!(served >= 51, "{served} calls served");
    assert!(
        w.metrics
            .access_bytes
            .with_label_values(&["to_workload"])
            .get()
            >= 50 * 100 * 1024,
        "bytes to the workload are counted"
    );
    stall.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_for_another_buyer_lease_port_scope_time_or_use_are_refused() {
    let w = world().await;
    let stranger = generate_key();
    // A second gateway of the same network (as each validator serves one): the operator keeps
    // a relay stream open to each.
    let gateway = Gateway::start(&w.node.store);
    let second = gateway.url.clone();
    let mut operator = w.operator(&[w.node.url.clone(), second.clone()]);
    relay_up(&w, &w.node.url).await;
    relay_up(&w, &second).await;
    let (first, other) = (relay(&w.node.url), relay(&second));
    let lease = w.lease_id.as_str();
    let t = now();

    let cases: Vec<(&str, Signed, u32, Code, &str)> = vec![
        (
            "another buyer's token",
            token(&stranger, lease, &["connect"], &[PORT], t, t + 60),
            PORT,
            Code::PermissionDenied,
            "did not order lease",
        ),
        (
            "an expired token",
            token(&w.buyer, lease, &["connect"], &[PORT], t - 400, t - 100),
            PORT,
            Code::FailedPrecondition,
            "token.expiresAt: the token expired",
        ),
        (
            "a token valid for longer than 15 minutes",
            token(&w.buyer, lease, &["connect"], &[PORT], t, t + 901),
            PORT,
            Code::InvalidArgument,
            "token.expiresAt: must be 1 to 900 s",
        ),
        (
            "a port the workload did not declare",
            token(&w.buyer, lease, &["connect"], &[9000], t, t + 60),
            9000,
            Code::PermissionDenied,
            "declares no port 9000",
        ),
        (
            "a port the token does not grant",
            token(&w.buyer, lease, &["connect"], &[PORT], t, t + 60),
            9000,
            Code::PermissionDenied,
            "the token does not grant port 9000",
        ),
        (
            "a logs token used to connect",
            token(&w.buyer, lease, &["logs"], &[], t, t + 60),
            PORT,
            Code::PermissionDenied,
            "does not grant connect",
        ),
        (
            "a token for a lease that does not exist",
            token(&w.buyer, "nosuchlease", &["connect"], &[PORT], t, t + 60),
            PORT,
            Code::NotFound,
            "lease nosuchlease does not exist",
        ),
        (
            "a forged signature",
            {
                let mut forged = token(&w.buyer, lease, &["connect"], &[PORT], t, t + 60);
                forged.signature[5] ^= 1;
                forged
            },
            PORT,
            Code::Unauthenticated,
            "signature:",
        ),
    ];
    for (name, token, port, code, says) in cases {
        let refused = open_tunnel(&first, token, port).await.err();
        let refused = refused.unwrap_or_else(|| panic!("{name}: not refused"));
        assert_eq!(refused.code(), code, "{name}: {}", refused.message());
        assert!(
            refused.message().contains(says),
            "{name}: {}",
            refused.message()
        );
    }

    // A token is good once: replayed at the same gateway, the gateway refuses it; replayed at
    // another gateway, the operator does.
    let once = token(&w.buyer, lease, &["connect"], &[PORT], t, t + 60);
    let (_keep, _) = open_tunnel(&first, once.clone(), PORT).await.unwrap();
    let again = open_tunnel(&first, once.clone(), PORT).await.err().unwrap();
    assert_eq!(again.code(), Code::AlreadyExists, "{}", again.message());
    let elsewhere = open_tunnel(&other, once, PORT).await.err().unwrap();
    assert_eq!(
        elsewhere.code(),
        Code::AlreadyExists,
        "{}",
        elsewhere.message()
    );
    assert!(
        w.metrics
            .access_calls
            .with_label_values(&["connect", "duplicate"])
            .get()
            >= 1,
        "the operator refused the replay itself"
    );

    // The operator checks its own view of the lease: stopped there (though the network has not
    // heard yet), refused.
    w.pod.set_running(false);
    let stopped = open_tunnel(&first, w.tokens().sign(Scope::Connect, &[PORT]), PORT)
        .await
        .err()
        .unwrap();
    assert_eq!(stopped.code(), Code::FailedPrecondition);
    assert!(
        stopped.message().contains("is not running"),
        "{}",
        stopped.message()
    );
    w.pod.set_running(true);

    // The offer's bound on open connections: the one above is still open, so a limit of 1
    // refuses the next.
    w.pod.set_max_connections(1);
    let full = open_tunnel(&first, w.tokens().sign(Scope::Connect, &[PORT]), PORT)
        .await
        .err()
        .unwrap();
    assert_eq!(full.code(), Code::ResourceExhausted, "{}", full.message());
    w.pod.set_max_connections(64);

    // The provider offline: a clean refusal naming it, at either gateway.
    operator.stop();
    for relay in [&first, &other] {
        let offline = open_tunnel(relay, w.tokens().sign(Scope::Connect, &[PORT]), PORT)
            .await
            .err()
            .unwrap();
        assert_eq!(offline.code(), Code::Unavailable, "{}", offline.message());
        assert!(
            offline.message().contains("offline"),
            "{}",
            offline.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_and_a_followed_log_go_on_through_another_gateway_when_one_fails() {
    let w = world().await;
    let mut gateway = Gateway::start(&w.node.store);
    let _operator = w.operator(&[w.node.url.clone(), gateway.url.clone()]);
    relay_up(&w, &w.node.url).await;
    relay_up(&w, &gateway.url).await;
    // The buyer's CLI with both gateways (`--network A,B`): one channel over both.
    let targets: Vec<Target> = [&gateway.url, &w.node.url]
        .into_iter()
        .map(|url| Target {
            url: url.clone(),
            ca_file: None,
        })
        .collect();
    let both = buyer_access::relay_client(gpubridge::wire::client::any_channel(&targets).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    tokio::spawn(buyer_access::forward(
        both.clone(),
        w.tokens(),
        PORT,
        listener,
    ));
    let out = Shared::default();
    let follow = out.follow(both.clone(), w.tokens());
    w.pod.append("before");
    out.wait_for_lines(1).await;
    for i in 0..10u8 {
        let message = vec![i; 1000];
        assert_eq!(round_trip(local, &message).await, message);
    }

    // A gateway fails: what it carried breaks; the log resumes and new connections open
    // through the other.
    gateway.stop();
    w.pod.append("after");
    for i in 0..10u8 {
        let message = vec![i; 1000];
        let echoed = tokio::time::timeout(Duration::from_secs(20), round_trip(local, &message))
            .await
            .expect("a connection opened through the gateway still up");
        assert_eq!(echoed, message, "connection {i} after the failover");
    }
    out.wait_for_lines(2).await;
    w.pod.end_log();
    Shared::ended(follow).await;
    assert_eq!(out.text(), "before\nafter\n", "no line lost or repeated");
}

/// A `Write` the test reads while the log is followed.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    /// Follows the lease's log into this, as `order logs --follow` prints it.
    fn follow(
        &self,
        relay: RelayClient<Channel>,
        tokens: Tokens,
    ) -> tokio::task::JoinHandle<Result<(), tonic::Status>> {
        let out = self.clone();
        tokio::spawn(async move {
            let options = LogOptions {
                follow: true,
                ..LogOptions::default()
            };
            buyer_access::logs(relay, &tokens, options, false, out).await
        })
    }

    /// Waits for a followed log to end, as it does when its container ends.
    async fn ended(follow: tokio::task::JoinHandle<Result<(), tonic::Status>>) {
        tokio::time::timeout(Duration::from_secs(30), follow)
            .await
            .expect("the log ends when the container ends")
            .unwrap()
            .unwrap();
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// Waits up to 30 s: after an operator restart the CLI resumes on its backoff (250 ms,
    /// doubling), and the new operator first connects to the network.
    async fn wait_for_lines(&self, lines: usize) {
        for _ in 0..600 {
            if self.text().lines().count() >= lines {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("waited for {lines} lines, have: {:?}", self.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_followed_log_survives_an_operator_restart_without_losing_or_repeating_a_line() {
    let (w, mut operator) = served().await;
    for line in ["starting", "loading weights", "serving on :8000"] {
        w.pod.append(line);
    }
    // Without --follow: what there is, then the end.
    let mut once = Vec::new();
    buyer_access::logs(
        relay(&w.node.url),
        &w.tokens(),
        LogOptions::default(),
        false,
        &mut once,
    )
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8(once).unwrap(),
        "starting\nloading weights\nserving on :8000\n"
    );

    let out = Shared::default();
    let follow = out.follow(relay(&w.node.url), w.tokens());
    out.wait_for_lines(3).await;
    // A token signed before the operator went: the new one cannot know whether it was used.
    let signed_before = w.tokens().sign(Scope::Connect, &[PORT]);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // The operator goes away mid-stream; lines keep coming; a new operator comes up.
    operator.stop();
    w.pod.append("request 1");
    w.pod.append("request 2");
    let _restarted = w.operator(std::slice::from_ref(&w.node.url));
    out.wait_for_lines(5).await;
    let refused = open_tunnel(&relay(&w.node.url), signed_before, PORT)
        .await
        .expect_err("a token from before the restart is refused");
    assert_eq!(refused.code(), Code::Unavailable, "{}", refused.message());
    assert!(
        refused.message().contains("sign a fresh one"),
        "{}",
        refused.message()
    );
    w.pod.append("shutting down");
    w.pod.end_log();
    Shared::ended(follow).await;
    assert_eq!(
        out.text(),
        "starting\nloading weights\nserving on :8000\nrequest 1\nrequest 2\nshutting down\n"
    );
    // A sidecar's log is the provider's.
    let refused = buyer_access::logs(
        relay(&w.node.url),
        &w.tokens(),
        LogOptions {
            container: "meter".into(),
            ..LogOptions::default()
        },
        false,
        Vec::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        refused.code(),
        Code::PermissionDenied,
        "{}",
        refused.message()
    );
}

/// Tunnel throughput and added latency against a direct loopback connection to the same echo
/// server, in one run: `cargo test --release --test access -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a benchmark: run it on its own, in release"]
async fn access_tunnel_benchmark() {
    let (w, _operator) = served().await;
    let tunnel = forwarder(&w).await;
    let direct = w.pod.echo;
    const BYTES: usize = 256 << 20;
    const ROUND_TRIPS: usize = 2000;
    println!(
        "{:<8} {:>14} {:>12} {:>12}",
        "path", "echo MiB/s", "RTT p50 µs", "RTT p99 µs"
    );
    for (name, address) in [("direct", direct), ("tunnel", tunnel)] {
        // Throughput: BYTES each way at once.
        let socket = TcpStream::connect(address).await.unwrap();
        socket.set_nodelay(true).unwrap();
        let (mut read, mut write) = socket.into_split();
        let started = Instant::now();
        let writer = tokio::spawn(async move {
            let block = vec![1u8; 64 * 1024];
            for _ in 0..BYTES / block.len() {
                write.write_all(&block).await.unwrap();
            }
            write
        });
        let mut buffer = vec![0u8; 64 * 1024];
        let mut echoed = 0;
        while echoed < BYTES {
            echoed += read.read(&mut buffer).await.unwrap();
        }
        let throughput = (BYTES >> 20) as f64 / started.elapsed().as_secs_f64();
        drop(writer.await.unwrap());
        // Latency: one byte there and back, ROUND_TRIPS times on one connection.
        let mut socket = TcpStream::connect(address).await.unwrap();
        socket.set_nodelay(true).unwrap();
        let mut times = Vec::with_capacity(ROUND_TRIPS);
        let mut byte = [0u8; 1];
        for _ in 0..ROUND_TRIPS {
            let sent = Instant::now();
            socket.write_all(b"x").await.unwrap();
            socket.read_exact(&mut byte).await.unwrap();
            times.push(sent.elapsed().as_micros());
        }
        times.sort_unstable();
        println!(
            "{name:<8} {throughput:>14.0} {:>12} {:>12}",
            times[ROUND_TRIPS / 2],
            times[ROUND_TRIPS * 99 / 100]
        );
    }
}

/// The provider's side of a call as a hand-made Attach stream: its first chunk, then nothing.
async fn attach(
    relay: &RelayClient<Channel>,
    key: &SigningKey,
    call_id: &str,
    refused: Option<Refused>,
) -> Result<tonic::Streaming<Chunk>, tonic::Status> {
    let body = AttachBody {
        header: None,
        call_id: call_id.into(),
        refused,
    };
    let (to_relay, outgoing) = mpsc::channel(1);
    to_relay
        .send(Chunk {
            kind: Some(chunk::Kind::Attach(seal(key, body, now()))),
        })
        .await
        .unwrap();
    let response = relay.clone().attach(ReceiverStream::new(outgoing)).await?;
    Ok(response.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_joins_a_call_only_to_its_providers_signed_answer() {
    let w = world().await;
    let relay = relay(&w.node.url);
    // The provider's relay stream, opened by hand; its signed request works once.
    let calls_request = seal(&w.provider, RelayCallsBody { header: None }, now());
    let mut calls = relay
        .clone()
        .calls(calls_request.clone())
        .await
        .unwrap()
        .into_inner();
    let replayed = relay.clone().calls(calls_request).await.unwrap_err();
    assert_eq!(
        replayed.code(),
        Code::AlreadyExists,
        "{}",
        replayed.message()
    );
    let stale = seal(&w.provider, RelayCallsBody { header: None }, now() - 120);
    let stale = relay.clone().calls(stale).await.unwrap_err();
    assert_eq!(
        stale.code(),
        Code::FailedPrecondition,
        "{}",
        stale.message()
    );

    // A buyer's call reaches the provider's stream with the buyer's token, as the buyer sent it.
    let token = w.tokens().sign(Scope::Connect, &[PORT]);
    let buyer = {
        let (relay, token) = (relay.clone(), token.clone());
        tokio::spawn(async move { open_tunnel(&relay, token, PORT).await.map(|_| ()) })
    };
    let call = calls.message().await.unwrap().unwrap();
    assert_eq!(call.lease_id, w.lease_id);
    assert_eq!(call.token, Some(token));
    assert_eq!(call.what, Some(access_call::What::Port(PORT)));

    // Only the lease's provider answers it: not another key, not an unknown call.
    let stranger = generate_key();
    let err = attach(&relay, &stranger, &call.call_id, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    let err = attach(
        &relay,
        &w.provider,
        "00000000000000000000000000000000",
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    // A forged answer: the provider's body with another signature.
    let mut forged = seal(
        &w.provider,
        AttachBody {
            header: None,
            call_id: call.call_id.clone(),
            refused: None,
        },
        now(),
    );
    forged.signature[0] ^= 1;
    let (to_relay, outgoing) = mpsc::channel(1);
    to_relay
        .send(Chunk {
            kind: Some(chunk::Kind::Attach(forged)),
        })
        .await
        .unwrap();
    let err = relay
        .clone()
        .attach(ReceiverStream::new(outgoing))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());

    // The provider's signed refusal is what the buyer gets, code and reason.
    let refusal = Refused {
        code: Code::ResourceExhausted as i32,
        message: "the workload's port is busy".into(),
    };
    attach(&relay, &w.provider, &call.call_id, Some(refusal))
        .await
        .unwrap();
    let refused = buyer.await.unwrap().unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(refused.message(), "the workload's port is busy");
    // Answered once: a second answer finds no call.
    let again = attach(&relay, &w.provider, &call.call_id, None)
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound, "{}", again.message());
}

/// Writes `message` on `socket` and reads back its echo.
async fn echo(socket: &mut TcpStream, message: &[u8]) {
    socket.write_all(message).await.unwrap();
    let mut echoed = vec![0u8; message.len()];
    socket.read_exact(&mut echoed).await.unwrap();
    assert_eq!(echoed, message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leases_bytes_and_calls_are_recorded_on_its_status_and_paced_by_its_offer() {
    let (w, _operator) = served().await;
    // The probe call of `relay_up` is counted too.
    let before = w.pod.recorded_when(|a| a.connections >= 1).await;
    let local = forwarder(&w).await;
    let message = vec![5u8; 10_000];
    for _ in 0..3 {
        assert_eq!(round_trip(local, &message).await, message);
    }
    let after = w
        .pod
        .recorded_when(|a| {
            a.connections == before.connections + 3
                && a.bytes_to_workload >= before.bytes_to_workload + 30_000
                && a.bytes_from_workload >= before.bytes_from_workload + 30_000
        })
        .await;
    assert_eq!(
        (
            after.bytes_to_workload - before.bytes_to_workload,
            after.bytes_from_workload - before.bytes_from_workload,
            after.log_streams,
        ),
        (30_000, 30_000, 0),
        "each byte is counted once each way"
    );

    // At 64 KiB/s, 96 KiB each way pass one burst (64 KiB) at once and the rest at the pace.
    w.pod.set_max_bytes_per_second(Some(64 * 1024));
    let message = vec![9u8; 96 * 1024];
    let started = Instant::now();
    assert_eq!(round_trip(local, &message).await, message);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1_500),
        "192 KiB through a 64 KiB/s lease took only {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_ends_when_it_idles_past_the_offers_limit_or_its_lease_stops() {
    let (w, _operator) = served().await;
    let local = forwarder(&w).await;
    w.pod.set_idle_timeout(1);
    let mut idle = TcpStream::connect(local).await.unwrap();
    echo(&mut idle, b"ping").await;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut rest))
        .await
        .expect("a connection idle past the offer's limit is closed")
        .unwrap();
    assert!(rest.is_empty());

    w.pod.set_idle_timeout(300);
    let mut busy = TcpStream::connect(local).await.unwrap();
    echo(&mut busy, b"ping").await;
    w.pod.set_running(false);
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), busy.read_to_end(&mut rest))
        .await
        .expect("a connection of a lease that stopped running is closed")
        .unwrap();
    assert!(rest.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_network_node_stops_on_sigterm_while_a_provider_holds_a_relay_stream() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::network::free_port();
    let mut node = support::network::spawn_node(dir.path(), port, &[]);
    let url = format!("http://127.0.0.1:{port}");
    support::network::client(&url, generate_key()).await;
    let provider = generate_key();
    let mut calls = relay(&url)
        .calls(seal(&provider, RelayCallsBody { header: None }, now()))
        .await
        .unwrap()
        .into_inner();
    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &node.0.id().to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    let stopped = tokio::task::spawn_blocking(move || {
        for _ in 0..100 {
            if let Some(status) = node.0.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    })
    .await
    .unwrap();
    assert!(
        stopped.is_some_and(|s| s.success()),
        "the node exits on SIGTERM within 10 s: {stopped:?}"
    );
    // The provider saw its stream end, and reconnects elsewhere.
    assert!(!matches!(calls.message().await, Ok(Some(_))));
}

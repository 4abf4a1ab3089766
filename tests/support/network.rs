#![allow(dead_code)] // shared by several test crates; each uses a part

//! A network node served in-process on a loopback port, with helpers for providers and buyers.

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use gpubridge::identity::generate_key;
use gpubridge::node::relay::RelayService;
use gpubridge::node::service::GatewayService;
use gpubridge::node::{Params, Store};
use gpubridge::sidecar::probe::Which;
use gpubridge::wire::MAX_MESSAGE_BYTES;
use gpubridge::wire::client::{NetworkClient, Target, channel};
use gpubridge::wire::proto::gateway_client::GatewayClient;
use gpubridge::wire::proto::gateway_server::GatewayServer;
use gpubridge::wire::proto::relay_server::RelayServer;
use gpubridge::wire::proto::{Attribute, EnvVar, OfferBody, OrderBody, Workload};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;

pub const UNIT: u128 = 1_000_000_000_000_000_000;

pub struct Node {
    pub store: Arc<Store>,
    pub url: String,
    _dir: tempfile::TempDir,
}

/// The default parameters with probes small enough for a debug build: 90 % of 1 MiB in
/// tiles of 16², four rounds, and re-probes of 1 MiB too.
pub fn params() -> Params {
    Params {
        probe_size: 16,
        probe_memory_mib: 1,
        probe_rounds: 4,
        reprobe_memory_mib: 1,
        ..Params::default()
    }
}

/// Runs the lease's GPU probe at acceptance to its end as an honest probe does, through
/// `provider`'s client with the lease `certificate`: the network's last word.
pub async fn pass_probe(
    provider: &NetworkClient,
    lease_id: &str,
    certificate: Vec<u8>,
) -> gpubridge::wire::proto::ProbeReply {
    run_probe(provider, lease_id, certificate, Which::First).await
}

/// The same for `which` of the lease's probes (its latest re-probe, as the attestation sidecar
/// runs it).
pub async fn run_probe(
    provider: &NetworkClient,
    lease_id: &str,
    certificate: Vec<u8>,
    which: Which,
) -> gpubridge::wire::proto::ProbeReply {
    use gpubridge::probe::run::{CpuEngine, Move, ProbeRun};
    let mut run = ProbeRun::new(CpuEngine::default());
    let challenge = provider.lease_challenge(lease_id).await.unwrap();
    let mut reply = which.of(challenge).expect("the lease has that probe");
    loop {
        match run.next(&reply) {
            Move::Send(step) => {
                reply = provider
                    .submit_probe(lease_id, certificate.clone(), step)
                    .await
                    .unwrap();
            }
            Move::Passed(_) | Move::Failed(_) => return reply,
            Move::Broken(e) => panic!("the CPU engine broke: {e}"),
        }
    }
}

impl Node {
    pub async fn start() -> Node {
        Node::start_with(params()).await
    }

    pub async fn start_with(settings: Params) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            Store::open(&dir.path().join("network.redb"), generate_key(), settings).unwrap(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let service = GatewayServer::new(GatewayService::new(store.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let relay = RelayServer::new(RelayService::new(store.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        tokio::spawn(
            gpubridge::wire::server()
                .add_service(service)
                .add_service(relay)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Node {
            store,
            url,
            _dir: dir,
        }
    }

    pub fn client(&self, key: SigningKey) -> NetworkClient {
        let target = Target {
            url: self.url.clone(),
            ca_file: None,
        };
        NetworkClient::new(channel(&target).unwrap(), key)
    }

    /// The raw generated client, for sending hand-made envelopes.
    pub fn raw(&self) -> GatewayClient<Channel> {
        let target = Target {
            url: self.url.clone(),
            ca_file: None,
        };
        GatewayClient::new(channel(&target).unwrap())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(4 * MAX_MESSAGE_BYTES)
    }
}

/// A child process that is killed (SIGKILL) when dropped, so a failing test leaves nothing
/// running.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    /// Kills it now, as a crash would, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `gpubridge network` as its own process on `port`, with its database in `dir`.
pub fn spawn_node(dir: &std::path::Path, port: u16, flags: &[&str]) -> KillOnDrop {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_gpubridge"))
        .args(["network", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir)
        .args(flags)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the network node starts");
    KillOnDrop(child)
}

/// A client of the node at `url` signing with `key`, once the node answers.
pub async fn client(url: &str, key: SigningKey) -> NetworkClient {
    let target = Target {
        url: url.into(),
        ca_file: None,
    };
    let client = NetworkClient::new(channel(&target).unwrap(), key);
    for _ in 0..100 {
        if client.info().await.is_ok() {
            return client;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the network node did not come up at {url}");
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// An offer of H100s at 2.5 USDC per GPU-hour, 60 s to 1 day, images from ghcr.io only.
pub fn offer(name: &str, blocks: &[u32]) -> OfferBody {
    OfferBody {
        header: None,
        offer_name: name.into(),
        model: "NVIDIA-H100-80GB-HBM3".into(),
        resource_name: "nvidia.com/gpu".into(),
        free_blocks: blocks.to_vec(),
        price_per_gpu_hour: (5 * UNIT / 2).to_string(),
        denomination: "USDC".into(),
        min_duration_seconds: 60,
        max_duration_seconds: 86_400,
        max_gpus_per_lease: 8,
        allowed_registries: vec!["ghcr.io".into()],
        region: "eu-west".into(),
        attributes: vec![Attribute {
            key: "egress".into(),
            value: "internet".into(),
        }],
        expires_at: now() + 100,
    }
}

/// An order for `gpus` H100s for an hour at up to 3 USDC per GPU-hour.
pub fn order(gpus: u32) -> OrderBody {
    OrderBody {
        header: None,
        resource_name: String::new(),
        provider: String::new(),
        min_uptime_basis_points: 0,
        wait_until: 0,
        min_trust_tier: String::new(),
        gpus,
        model: "NVIDIA-H100-80GB-HBM3".into(),
        duration_seconds: 3600,
        max_price_per_gpu_hour: (3 * UNIT).to_string(),
        denomination: "USDC".into(),
        region: String::new(),
        attributes: vec![],
        workload: Some(Workload {
            image: "ghcr.io/acme/train:1".into(),
            command: vec!["python".into(), "train.py".into()],
            args: vec![],
            env: vec![EnvVar {
                name: "EPOCHS".into(),
                value: "3".into(),
            }],
            cpu: "4".into(),
            memory: "16Gi".into(),
            ports: vec![],
        }),
    }
}

//! The network on four validators: each a CometBFT node (v0.38, built by
//! `e2e/build-binaries.sh`) beside its own `gpubridge network --cometbft` application, all on
//! loopback ports. Transactions are the real ones (signed requests), broadcast through
//! CometBFT's RPC; what is checked is what CometBFT and each application say.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use gpubridge::commitment::results as proof;
use gpubridge::commitment::{LeaseProofError, PinnedNetwork, TxResult, verify_committed_lease};
use gpubridge::crd::{ComputeLease, LeasePhase};
use gpubridge::identity::generate_key;
use gpubridge::node::chain::codec::{decode_carried, encode_tx, outcome_of};
use gpubridge::node::state::{Outcome, Params, Tx};
use gpubridge::node::store::Store;
use gpubridge::sidecar::receipt_log::ReceiptLog;
use gpubridge::wire::client::{NetworkClient, Target, channel};
use gpubridge::wire::envelope::{open_from, seal, verifying_key};
use gpubridge::wire::proto::{
    DepositBody, LeaseBody, OfferBody, OrderBody, OrderState, RegisterBody, Workload, lease_event,
};
use kube::Api;
use kube::api::DeleteParams;
use serde_json::Value;

use gpubridge::wire::amount::Amount;

use crate::network::{
    UNIT, end_reported, order as model_order, order_reaches, settled_exactly, wait_published,
};
use crate::sidecars::Sidecars;
use crate::support::{
    NetworkNode, Operator, apply_yaml, bin_dir, cluster, eventually, free_port, http_get, now_unix,
    percentile,
};
use crate::{delete_lease, install_crds, wait_phase, workstation_offer};

const SECOND: Duration = Duration::from_secs(1);

/// One validator: its CometBFT node and its application, supervised together (if the
/// application dies its node exits, so both are killed and started as one).
struct Validator {
    home: PathBuf,
    rpc: u16,
    abci: u16,
    gateway: u16,
    processes: Option<(Child, Child)>,
}

impl Validator {
    fn start(&mut self) {
        assert!(self.processes.is_none(), "already running");
        let log = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.home.join(name))
                .unwrap()
        };
        let app = Command::new(env!("CARGO_BIN_EXE_gpubridge"))
            .args(["network", "--cometbft", &format!("127.0.0.1:{}", self.abci)])
            .args(["--listen", &format!("127.0.0.1:{}", self.gateway)])
            .args(["--cometbft-rpc", &format!("http://127.0.0.1:{}/", self.rpc)])
            .arg("--data-dir")
            .arg(self.home.join("app"))
            .stdout(log("app.log"))
            .stderr(log("app.log"))
            .spawn()
            .unwrap();
        // CometBFT dials the application at start: it must be listening first.
        let abci = format!("127.0.0.1:{}", self.abci);
        for _ in 0..100 {
            if std::net::TcpStream::connect(&abci).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let node = Command::new(bin_dir().join("cometbft"))
            .args(["start", "--home"])
            .arg(&self.home)
            .stdout(log("cometbft.log"))
            .stderr(log("cometbft.log"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        self.processes = Some((app, node));
    }

    /// CPU time its application and its node have used so far, in clock ticks (1/100 s).
    fn cpu_ticks(&self) -> (u64, u64) {
        let ticks = |child: &Child| {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap();
            // Fields after the command's closing parenthesis; utime and stime are 14 and 15.
            let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
            fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
        };
        let (app, node) = self.processes.as_ref().expect("running");
        (ticks(app), ticks(node))
    }

    /// `kill -9` of both.
    fn kill(&mut self) {
        if let Some((mut app, mut node)) = self.processes.take() {
            let _ = node.kill();
            let _ = app.kill();
            let _ = node.wait();
            let _ = app.wait();
        }
    }

    /// Where its gateway listens.
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.gateway)
    }

    /// A client of this validator's gateway, signing with `key`.
    fn client(&self, key: &ed25519_dalek::SigningKey) -> NetworkClient {
        let target = Target {
            url: self.url(),
            ca_file: None,
        };
        NetworkClient::new(channel(&target).unwrap(), key.clone())
    }

    async fn rpc(&self, path: &str) -> Result<Value, String> {
        let (code, body) = http_get(&format!("http://127.0.0.1:{}/{path}", self.rpc)).await?;
        let json: Value = serde_json::from_str(&body).map_err(|e| format!("{code} {e}: {body}"))?;
        match json.get("result") {
            Some(result) => Ok(result.clone()),
            None => Err(format!("{code} {body}")),
        }
    }

    async fn height(&self) -> Result<u64, String> {
        let status = self.rpc("status").await?;
        number(&status["sync_info"]["latest_block_height"])
    }

    /// What the application says it persisted last: height and app hash (Info).
    async fn app_head(&self) -> Result<(u64, Vec<u8>), String> {
        let info = self.rpc("abci_info").await?;
        let response = &info["response"];
        let height = number(&response["last_block_height"]).unwrap_or(0);
        let hash = base64::engine::general_purpose::STANDARD
            .decode(response["last_block_app_hash"].as_str().unwrap_or(""))
            .map_err(|e| e.to_string())?;
        Ok((height, hash))
    }

    /// A hash the header of block `height` carries: `app_hash` (the state after `height - 1`)
    /// or `last_results_hash` (the results of `height - 1`).
    async fn header_hash(&self, height: u64, field: &str) -> Result<Vec<u8>, String> {
        let block = self.rpc(&format!("block?height={height}")).await?;
        let hash = block["block"]["header"][field]
            .as_str()
            .ok_or_else(|| format!("no {field}"))?;
        hex::decode(hash).map_err(|e| e.to_string())
    }

    /// When block `height` was made (its header's BFT time), how many transactions it carries
    /// and how many requests (a gateway's batch carries several in one transaction).
    async fn block_meta(&self, height: u64) -> Result<(jiff::Timestamp, usize, usize), String> {
        let block = self.rpc(&format!("block?height={height}")).await?;
        let time: jiff::Timestamp = block["block"]["header"]["time"]
            .as_str()
            .ok_or("no time")?
            .parse()
            .map_err(|e: jiff::Error| e.to_string())?;
        let (mut txs, mut requests) = (0, 0);
        for tx in block["block"]["data"]["txs"]
            .as_array()
            .into_iter()
            .flatten()
        {
            txs += 1;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(tx.as_str().ok_or("a transaction is no string")?)
                .map_err(|e| e.to_string())?;
            requests += decode_carried(&bytes)
                .map_err(|e| e.to_string())?
                .requests()
                .len();
        }
        Ok((time, txs, requests))
    }

    /// The results block `height` recorded, as CometBFT serves them.
    async fn block_results(&self, height: u64) -> Result<Vec<TxResult>, String> {
        let results = self.rpc(&format!("block_results?height={height}")).await?;
        Ok(results["txs_results"]
            .as_array()
            .map(|all| all.iter().map(parse_result).collect())
            .unwrap_or_default())
    }

    /// Broadcasts `tx` and waits for its block: the check's and the block's results.
    async fn commit(&self, tx: &Tx) -> Result<(TxResult, TxResult), String> {
        let hex = hex::encode(encode_tx(tx));
        let result = self.rpc(&format!("broadcast_tx_commit?tx=0x{hex}")).await?;
        Ok((
            parse_result(&result["check_tx"]),
            parse_result(&result["tx_result"]),
        ))
    }

    fn log_tail(&self) -> String {
        ["app.log", "cometbft.log"]
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(self.home.join(name)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                format!(
                    "--- {} {name}\n{}",
                    self.home.display(),
                    lines[lines.len().saturating_sub(15)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Validator {
    fn drop(&mut self) {
        self.kill();
    }
}

fn parse_result(r: &Value) -> TxResult {
    TxResult {
        code: r["code"].as_u64().unwrap_or(0) as u32,
        data: base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap_or(""))
            .unwrap_or_default(),
        log: r["log"].as_str().unwrap_or("").to_string(),
    }
}

fn number(v: &Value) -> Result<u64, String> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_u64())
        .ok_or_else(|| format!("not a number: {v}"))
}

/// A fresh network of `n` validators in `dir`, not started: CometBFT's own `testnet` layout,
/// each node on its own loopback ports, 200 ms between a commit and the next height, and the
/// genesis `app_state` that `gpubridge network --print-app-state` prints for `params_flags`.
fn testnet(dir: &Path, n: usize, params_flags: &[&str]) -> Vec<Validator> {
    testnet_committing_every(dir, n, params_flags, "200ms")
}

/// [`testnet`] with `timeout_commit` between a commit and the next height (CometBFT's own
/// default is 1s).
fn testnet_committing_every(
    dir: &Path,
    n: usize,
    params_flags: &[&str],
    timeout_commit: &str,
) -> Vec<Validator> {
    let out = Command::new(bin_dir().join("cometbft"))
        .args(["testnet", "--v", &n.to_string(), "--o"])
        .arg(dir)
        .args(["--populate-persistent-peers=false"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let app_state = Command::new(env!("CARGO_BIN_EXE_gpubridge"))
        .args(["network", "--print-app-state"])
        .args(params_flags)
        .output()
        .unwrap();
    assert!(app_state.status.success());
    let app_state: Value = serde_json::from_slice(&app_state.stdout).unwrap();
    let ports: Vec<(u16, u16, u16, u16)> = (0..n)
        .map(|_| (free_port(), free_port(), free_port(), free_port()))
        .collect();
    let peers: Vec<String> = (0..n)
        .map(|i| {
            let home = dir.join(format!("node{i}"));
            let id = Command::new(bin_dir().join("cometbft"))
                .args(["show-node-id", "--home"])
                .arg(&home)
                .output()
                .unwrap();
            let id = String::from_utf8(id.stdout).unwrap();
            format!("{}@127.0.0.1:{}", id.trim(), ports[i].0)
        })
        .collect();
    (0..n)
        .map(|i| {
            let home = dir.join(format!("node{i}"));
            let (p2p, rpc, abci, gateway) = ports[i];
            let config = home.join("config/config.toml");
            let others: Vec<&str> = (0..n)
                .filter(|&j| j != i)
                .map(|j| peers[j].as_str())
                .collect();
            let text = std::fs::read_to_string(&config)
                .unwrap()
                .replace(
                    "proxy_app = \"tcp://127.0.0.1:26658\"",
                    &format!("proxy_app = \"tcp://127.0.0.1:{abci}\""),
                )
                .replace(
                    "laddr = \"tcp://127.0.0.1:26657\"",
                    &format!("laddr = \"tcp://127.0.0.1:{rpc}\""),
                )
                .replace(
                    "laddr = \"tcp://0.0.0.0:26656\"",
                    &format!("laddr = \"tcp://127.0.0.1:{p2p}\""),
                )
                .replace(
                    "persistent_peers = \"\"",
                    &format!("persistent_peers = \"{}\"", others.join(",")),
                )
                .replace(
                    "timeout_commit = \"1s\"",
                    &format!("timeout_commit = \"{timeout_commit}\""),
                )
                // broadcast_tx_commit subscribes once per call: room for the benchmark's.
                .replace(
                    "max_subscription_clients = 100",
                    "max_subscription_clients = 400",
                )
                .replace("timeout_propose = \"3s\"", "timeout_propose = \"1s\"")
                // Loopback peers: flush and gossip at once, so a transaction broadcast just
                // after a commit reaches the next proposer before it proposes.
                .replace(
                    "flush_throttle_timeout = \"100ms\"",
                    "flush_throttle_timeout = \"10ms\"",
                )
                .replace(
                    "peer_gossip_sleep_duration = \"100ms\"",
                    "peer_gossip_sleep_duration = \"10ms\"",
                )
                // The gateway answers from the application's committed state, so no one
                // reads CometBFT's transaction index: a validator need not keep one.
                .replace("indexer = \"kv\"", "indexer = \"null\"")
                .replace("log_level = \"info\"", "log_level = \"error\"");
            std::fs::write(&config, text).unwrap();
            let genesis = home.join("config/genesis.json");
            let mut doc: Value =
                serde_json::from_str(&std::fs::read_to_string(&genesis).unwrap()).unwrap();
            doc["app_state"] = app_state.clone();
            std::fs::write(&genesis, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
            Validator {
                home,
                rpc,
                abci,
                gateway,
                processes: None,
            }
        })
        .collect()
}

/// A deposit of `atto` units of USDC.
fn deposit(key: &ed25519_dalek::SigningKey, atto: &str) -> Tx {
    let body = DepositBody {
        header: None,
        amount: atto.into(),
        denomination: "USDC".into(),
    };
    Tx::Deposit(seal(key, body, now_unix()))
}

/// Waits until `validator`'s chain is past `height`; its height then.
async fn past(validator: &Validator, height: u64, timeout: Duration) -> u64 {
    eventually(&format!("a block past {height}"), timeout, || async {
        match validator.height().await {
            Ok(h) if h > height => Ok(h),
            Ok(h) => Err(format!("at {h}\n{}", validator.log_tail())),
            Err(e) => Err(format!("{e}\n{}", validator.log_tail())),
        }
    })
    .await
}

/// Every running validator's application persisted the state that the chain's next header
/// commits to: no application diverged.
async fn applications_agree_with_the_chain(validators: &[Validator]) {
    for v in validators.iter().filter(|v| v.processes.is_some()) {
        let (height, hash) = v.app_head().await.unwrap();
        past(v, height, 10 * SECOND).await;
        let committed = v.header_hash(height + 1, "app_hash").await.unwrap();
        assert_eq!(
            hex::encode(&hash),
            hex::encode(&committed),
            "{}'s application at {height} vs the header of {}",
            v.home.display(),
            height + 1
        );
    }
}

#[tokio::test]
async fn four_validators_agree_survive_one_down_halt_at_two_and_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut validators = testnet(dir.path(), 4, &["--voting-blocks", "5"]);
    for v in &mut validators {
        v.start();
    }
    past(&validators[0], 2, 60 * SECOND).await;

    // Real requests, each committed by the four: deposits credit; a replay and a forgery do not.
    let buyers: Vec<_> = (0..8).map(|_| generate_key()).collect();
    for (i, buyer) in buyers.iter().enumerate() {
        let tx = deposit(buyer, "5");
        let (check, result) = validators[i % 4].commit(&tx).await.unwrap();
        assert_eq!((check.code, result.code), (0, 0), "{check:?} {result:?}");
        match outcome_of(&result).unwrap() {
            Outcome::Balance(reply) => assert_eq!(reply.balances[0].available, "5"),
            other => panic!("a deposit answered {other:?}"),
        }
        if i == 0 {
            // A replay stops at the mempools' cache; one a proposer put in a block anyway is
            // refused by the state (`chain::app`'s tests).
            let error = validators[1].commit(&tx).await.unwrap_err();
            assert!(error.contains("tx already exists in cache"), "{error}");
        }
    }
    let Tx::Deposit(mut forged) = deposit(&buyers[0], "1000") else {
        unreachable!()
    };
    let last = forged.body.len() - 1;
    forged.body[last] ^= 1;
    let (check, _) = validators[2].commit(&Tx::Deposit(forged)).await.unwrap();
    assert_eq!(
        check.code,
        tonic::Code::Unauthenticated as u32,
        "{}",
        check.log
    );
    // What a client can check a result against: every block's results hash, as computed here,
    // is the LastResultsHash of the next header the validators signed; and each result proves.
    // The last deposit was committed by validator 3; validator 0 may be a block behind it.
    let mut tip = 0;
    for v in &validators {
        tip = tip.max(v.height().await.unwrap());
    }
    past(&validators[0], tip, 10 * SECOND).await;
    let mut proven = 0;
    for height in 1..=tip {
        let results = validators[0].block_results(height).await.unwrap();
        let committed = validators[0]
            .header_hash(height + 1, "last_results_hash")
            .await
            .unwrap();
        let root = proof::results_hash(&results);
        assert_eq!(hex::encode(root), hex::encode(&committed), "block {height}");
        for (result, place) in results.iter().zip(proof::prove_all(&results)) {
            proof::verify(&root, result, &place).unwrap();
            proven += 1;
        }
    }
    assert!(proven >= buyers.len(), "{proven} results proven");
    applications_agree_with_the_chain(&validators).await;

    // One of four down: the other three hold more than 2/3 of the power and go on.
    validators[3].kill();
    let before = validators[0].height().await.unwrap();
    past(&validators[0], before + 3, 30 * SECOND).await;
    let (_, result) = validators[1]
        .commit(&deposit(&buyers[1], "2"))
        .await
        .unwrap();
    assert_eq!(result.code, 0, "{}", result.log);

    // Restarted, it replays what it missed and reaches the same state.
    validators[3].start();
    let tip = validators[0].height().await.unwrap();
    past(&validators[3], tip, 60 * SECOND).await;
    applications_agree_with_the_chain(&validators).await;

    // Two of four down: no 2/3, no block, and no fork.
    validators[2].kill();
    validators[3].kill();
    tokio::time::sleep(2 * SECOND).await;
    let halted = validators[0].height().await.unwrap();
    tokio::time::sleep(3 * SECOND).await;
    assert_eq!(
        validators[0].height().await.unwrap(),
        halted,
        "two of four validators down: the chain halts"
    );
    assert_eq!(validators[1].height().await.unwrap(), halted);
    // One back: three of four, and the chain goes on from where it stopped.
    validators[2].start();
    past(&validators[0], halted + 2, 60 * SECOND).await;
    validators[3].start();
    past(&validators[3], halted + 2, 60 * SECOND).await;
    applications_agree_with_the_chain(&validators).await;
}

#[tokio::test]
async fn a_market_through_four_gateways_each_answering_from_committed_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let genesis = [
        "--bond-per-gpu",
        "1",
        "--start-deadline-seconds",
        "5",
        "--voting-blocks",
        "4",
        "--min-deposit",
        "1",
    ];
    let mut validators = testnet(dir.path(), 4, &genesis);
    for v in &mut validators {
        v.start();
    }
    past(&validators[0], 1, 60 * SECOND).await;
    let (provider_key, buyer_key) = (generate_key(), generate_key());
    // The provider speaks to validator 1's gateway, the buyer to validator 3's.
    let provider = validators[1].client(&provider_key);
    let buyer = validators[3].client(&buyer_key);
    let gateway_key = provider.register("acme", "").await.unwrap().network_key;
    provider
        .deposit(Amount::from_atto(50 * UNIT), "USDC")
        .await
        .unwrap();
    let bonded = provider
        .bond(Amount::from_atto(10 * UNIT), "available")
        .await
        .unwrap();
    assert_eq!(bonded.covered_gpus, Some(10));
    provider.publish(h100s(now_unix())).await.unwrap();
    let mut stream = provider.leases().await.unwrap();
    let balance = buyer
        .deposit(Amount::from_atto(100 * UNIT), "USDC")
        .await
        .unwrap();
    let hundred = (100 * UNIT).to_string();
    assert_eq!(balance.balances[0].available, hundred);
    // Committed, so every validator's gateway answers the same.
    let elsewhere = validators[0].client(&buyer_key);
    eventually("the deposit on validator 0", 10 * SECOND, || async {
        let balance = elsewhere.balance().await.map_err(|e| e.to_string())?;
        match balance.balances.first() {
            Some(b) if b.available == hundred => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    let placed = buyer.submit(one_gpu()).await.unwrap();
    assert_eq!(placed.state, OrderState::Matched as i32, "{placed:?}");
    // The lease comes on the provider's stream from the committed block, signed by the key
    // its gateway registered it with, and proven by the next header: the four validators'
    // signatures checked against the genesis, as a provider pins it.
    let genesis = std::fs::read(validators[0].home.join("config/genesis.json")).unwrap();
    let pinned = PinnedNetwork::from_genesis(&genesis).unwrap();
    let mut next_lease = async || {
        let event = tokio::time::timeout(10 * SECOND, stream.message())
            .await
            .expect("a lease within 10 s")
            .unwrap()
            .expect("the stream stays open");
        let Some(lease_event::Event::Lease(signed)) = event.event else {
            panic!("{event:?}")
        };
        let height = verify_committed_lease(&pinned, &signed.body, event.proof.as_ref())
            .unwrap_or_else(|e| panic!("the lease's proof: {e}"));
        (signed, event.proof.unwrap(), height)
    };
    let (signed, proof, ordered_at) = next_lease().await;
    let lease: LeaseBody = open_from(
        &signed,
        &verifying_key("network_key", &gateway_key).unwrap(),
    )
    .unwrap();
    assert_eq!(lease.lease_id, placed.lease_id);
    // A standing order for GPUs no one offers yet, matched by the upkeep when an offer of them
    // comes: in no transaction's result, it reaches the provider with its next heartbeat's
    // list of waiting leases, proven by the heartbeat's block (the lease already sent is not
    // sent again).
    let standing = buyer
        .submit(OrderBody {
            model: "NVIDIA-A100-80GB".into(),
            wait_until: now_unix() + 120,
            ..one_gpu()
        })
        .await
        .unwrap();
    assert_eq!(standing.state, OrderState::Waiting as i32, "{standing:?}");
    let a100s = OfferBody {
        offer_name: "a100s".into(),
        model: "NVIDIA-A100-80GB".into(),
        ..h100s(now_unix())
    };
    provider.publish(a100s).await.unwrap();
    let standing = eventually("the standing order matched", 10 * SECOND, || async {
        let view = buyer
            .order_status(&standing.order_id)
            .await
            .map_err(|e| e.to_string())?;
        if view.state == OrderState::Matched as i32 {
            Ok(view)
        } else {
            Err(format!("{view:?}"))
        }
    })
    .await;
    validators[0]
        .client(&provider_key)
        .heartbeat()
        .await
        .unwrap();
    let (matched, _, beat_at) = next_lease().await;
    let matched: LeaseBody = prost::Message::decode(matched.body.as_slice()).unwrap();
    assert_eq!(matched.lease_id, standing.lease_id);
    assert!(beat_at > ordered_at, "{beat_at} after {ordered_at}");
    validators[2]
        .client(&provider_key)
        .decide(&matched.lease_id, false, "not now")
        .await
        .unwrap();
    // What a gateway cannot do: relay a lease changed or without its proof.
    let mut cheaper = lease.clone();
    cheaper.price_per_gpu_hour = "1".into();
    assert_eq!(
        verify_committed_lease(
            &pinned,
            &prost::Message::encode_to_vec(&cheaper),
            Some(&proof)
        ),
        Err(LeaseProofError::NotInOutcome)
    );
    assert_eq!(
        verify_committed_lease(&pinned, &signed.body, None),
        Err(LeaseProofError::Missing)
    );
    validators[2]
        .client(&provider_key)
        .decide(&lease.lease_id, true, "")
        .await
        .unwrap();
    eventually(
        "the order leased, seen from validator 0",
        10 * SECOND,
        || async {
            let view = elsewhere
                .order_status(&placed.order_id)
                .await
                .map_err(|e| e.to_string())?;
            if view.state == OrderState::Leased as i32 {
                Ok(())
            } else {
                Err(format!("{view:?}"))
            }
        },
    )
    .await;

    // No receipt within the start deadline (5 s of block time): every validator's upkeep ends
    // the lease as the provider's fault and slashes 10 % of its bond to the buyer.
    let stake = eventually("the never-started slash", 30 * SECOND, || async {
        let stake = validators[0]
            .client(&provider_key)
            .stake()
            .await
            .map_err(|e| e.to_string())?;
        if stake.slashes.is_empty() {
            Err(format!("{stake:?}"))
        } else {
            Ok(stake)
        }
    })
    .await;
    assert_eq!(
        (
            stake.slashes[0].kind.as_str(),
            stake.slashes[0].lease_id.as_str()
        ),
        ("never-started", lease.lease_id.as_str())
    );
    assert_eq!(stake.bonded, (9 * UNIT).to_string());
    let refunded = elsewhere.balance().await.unwrap();
    assert_eq!(
        refunded.balances[0].available,
        (101 * UNIT).to_string(),
        "the whole hold back and the slash"
    );

    // Governance on the chain: a proposal by bonded stake takes effect at its height.
    let tip = validators[0].height().await.unwrap();
    let proposal = provider
        .propose(
            vec![("answer-seconds".into(), "45".into())],
            tip + 15,
            Amount::from_atto(UNIT),
        )
        .await
        .unwrap();
    let voted = validators[0]
        .client(&provider_key)
        .vote(proposal.id, true)
        .await
        .unwrap();
    assert_eq!(voted.status, "voting", "{voted:?}");
    let answer_seconds = |params: &gpubridge::wire::proto::ParamsReply| {
        params
            .params
            .iter()
            .find(|p| p.name == "answer-seconds")
            .map(|p| p.value.clone())
    };
    let observer = validators[2].client(&generate_key());
    assert_eq!(
        answer_seconds(&observer.params().await.unwrap()).as_deref(),
        Some("30"),
        "not before its height"
    );
    eventually("the proposal applied", 60 * SECOND, || async {
        let params = observer.params().await.map_err(|e| e.to_string())?;
        let status = params.proposals.iter().find(|p| p.id == proposal.id);
        match (answer_seconds(&params).as_deref(), status) {
            (Some("45"), Some(p)) if p.status == "applied" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(validators[2].height().await.unwrap() >= tip + 15);

    // Refusals come back as the embedded node gives them: the state's, and the mempool's.
    let malformed = OrderBody {
        gpus: 4096,
        ..one_gpu()
    };
    let error = buyer.submit(malformed).await.unwrap_err();
    assert_eq!(
        (error.code(), error.message()),
        (
            tonic::Code::InvalidArgument,
            "order.gpus: must be between 1 and 64"
        )
    );
    let unmatched = OrderBody {
        gpus: 16,
        ..one_gpu()
    };
    let refused = buyer.submit(unmatched).await.unwrap();
    assert_eq!(refused.state, OrderState::Rejected as i32, "{refused:?}");
    let signed = seal(&buyer_key, one_gpu(), now_unix());
    buyer.submit_signed(signed.clone()).await.unwrap();
    let replay = elsewhere.submit_signed(signed).await.unwrap_err();
    assert_eq!(replay.code(), tonic::Code::AlreadyExists, "{replay}");
    let stranger = validators[2].client(&generate_key());
    let error = stranger
        .decide(&lease.lease_id, true, "")
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::PermissionDenied, "{error}");
    applications_agree_with_the_chain(&validators).await;
}

/// Every network session the operator lost so far, whatever the reason.
async fn sessions_lost(operator: &Operator) -> f64 {
    let (_, body) = http_get(&format!("{}/metrics", operator.http))
        .await
        .unwrap_or_default();
    body.lines()
        .filter(|l| l.starts_with("gpubridge_network_session_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn an_operator_on_four_validators_refuses_a_forged_lease_fails_over_and_settles_exactly() {
    let Some(c) = cluster("validators-lease").await else {
        return;
    };
    install_crds(&c.client).await;
    let dir = tempfile::tempdir().unwrap();
    let mut validators = testnet(dir.path(), 4, &[]);
    for v in &mut validators {
        v.start();
    }
    past(&validators[0], 1, 60 * SECOND).await;
    let genesis = validators[0].home.join("config/genesis.json");
    let gateways: Vec<String> = validators.iter().map(Validator::url).collect();
    let flags = |urls: &[String]| -> Vec<String> {
        vec![
            "--network-url".into(),
            urls.join(","),
            "--network-genesis".into(),
            genesis.display().to_string(),
            "--provider-name".into(),
            "e2e".into(),
        ]
    };

    // A rogue gateway first in the list: a network of its own that invents a lease.
    let rogue = NetworkNode::start("validators-rogue");
    let listed: Vec<String> = std::iter::once(rogue.url.clone())
        .chain(gateways.iter().cloned())
        .collect();
    let operator = Operator::start_with(&c, "validators-lease", &flags(&listed));
    apply_yaml(&c.client, &workstation_offer()).await;
    operator.wait_ready().await;
    let fooled = rogue.client(generate_key()).await;
    wait_published(&fooled, "rtx-workstation", 2).await;
    fooled
        .deposit(Amount::from_atto(10 * UNIT), "USDC")
        .await
        .unwrap();
    let invented = fooled
        .submit(model_order(
            1,
            "NVIDIA-GeForce-RTX-4090",
            60,
            12 * UNIT / 10,
        ))
        .await
        .unwrap();
    assert_eq!(invented.state, OrderState::Matched as i32, "{invented:?}");
    operator
        .wait_metric_at_least(
            r#"gpubridge_intake_leases_total{decision="rejected",reason="uncommitted"}"#,
            1,
            30 * SECOND,
        )
        .await;
    operator
        .wait_metric_at_least(
            r#"gpubridge_network_session_failures_total{reason="uncommitted_lease"}"#,
            1,
            10 * SECOND,
        )
        .await;
    // On to validator 0: the offer in the validators' book; nothing made of the forgery.
    let buyer_key = generate_key();
    let buyer = validators[3].client(&buyer_key);
    wait_published(&buyer, "rtx-workstation", 2).await;
    let leases: Api<ComputeLease> = Api::all(c.client.clone());
    assert!(leases.get_opt(&invented.lease_id).await.unwrap().is_none());
    // The platform team drops the rogue gateway from the list.
    operator.kill();
    let operator = Operator::start_with(&c, "validators-lease", &flags(&gateways));
    operator.wait_ready().await;

    // A buyer's lease through validator 3, taken by the operator through validator 0.
    buyer
        .deposit(Amount::from_atto(10 * UNIT), "USDC")
        .await
        .unwrap();
    let placed = buyer
        .submit(model_order(
            1,
            "NVIDIA-GeForce-RTX-4090",
            90,
            12 * UNIT / 10,
        ))
        .await
        .unwrap();
    assert_eq!(placed.state, OrderState::Matched as i32, "{placed:?}");
    let lease_id = placed.lease_id.clone();
    wait_phase(&c.client, &lease_id, LeasePhase::Running, 60 * SECOND).await;
    let mut sidecars = Sidecars::start(&c.client, &lease_id, 1).await;
    let accepted = async || {
        leases
            .get(&lease_id)
            .await
            .ok()
            .and_then(|l| l.status?.usage)
            .map_or(0, |u| u.receipts_accepted)
    };
    let at_least = async |n: u64, what: &str| {
        eventually(what, 60 * SECOND, || async {
            let now = accepted().await;
            if now >= n {
                Ok(now)
            } else {
                Err(format!("{now} accepted"))
            }
        })
        .await
    };
    let before = at_least(2, "receipts settled through validator 0").await;

    // kill -9 of the operator's validator: it moves to the next; receipts go on.
    let lost = sessions_lost(&operator).await;
    validators[0].kill();
    eventually("the session to fail over", 60 * SECOND, || async {
        let now = sessions_lost(&operator).await;
        if now > lost {
            Ok(())
        } else {
            Err(format!("{now} sessions lost"))
        }
    })
    .await;
    operator
        .wait_metric("gpubridge_network_session_up 1", 60 * SECOND)
        .await;
    let during = at_least(before + 3, "receipts settled with validator 0 down").await;

    // A second down: the chain halts, nothing settles, nothing is lost; one back, it resumes.
    validators[1].kill();
    let halted = validators[2].height().await.unwrap();
    tokio::time::sleep(5 * SECOND).await;
    assert_eq!(validators[2].height().await.unwrap(), halted, "halted");
    validators[0].start();
    past(&validators[2], halted + 2, 60 * SECOND).await;
    at_least(during + 3, "receipts settled after the halt").await;
    validators[1].start();

    wait_phase(&c.client, &lease_id, LeasePhase::Expired, 150 * SECOND).await;
    sidecars.stop_meter();
    let ended = order_reaches(&buyer, &placed.order_id, OrderState::Ended, 90 * SECOND).await;
    let logged = ReceiptLog::read_all(&sidecars.receipts_dir()).unwrap();
    let lease = end_reported(&c.client, &lease_id, 60 * SECOND).await;
    settled_exactly(&lease, &ended, &logged, 9 * UNIT / 10);
    // The restarted validators caught up: every application holds what the chain commits to.
    past(&validators[1], halted + 2, 60 * SECOND).await;
    applications_agree_with_the_chain(&validators).await;

    delete_lease(&c.client, &lease_id).await;
    Api::<gpubridge::crd::GpuOffer>::all(c.client.clone())
        .delete("rtx-workstation", &DeleteParams::default())
        .await
        .unwrap();
}

/// A provider with one offer of 8 blocks of 1024 H100s, and the transactions that make it.
fn provider_with_offer(i: usize) -> Vec<Tx> {
    let provider = generate_key();
    let now = now_unix();
    let register = RegisterBody {
        header: None,
        name: format!("p{i}"),
        region: String::new(),
    };
    vec![
        Tx::Register(seal(&provider, register, now)),
        Tx::PublishOffer(seal(&provider, h100s(now), now)),
    ]
}

/// An offer of 8 blocks of 1024 H100s at 2 USDC per GPU-hour.
fn h100s(now: i64) -> OfferBody {
    OfferBody {
        header: None,
        offer_name: "gpus".into(),
        model: "NVIDIA-H100-80GB-HBM3".into(),
        resource_name: "nvidia.com/gpu".into(),
        free_blocks: vec![1024; 8],
        price_per_gpu_hour: "2".into(),
        denomination: "USDC".into(),
        min_duration_seconds: 60,
        max_duration_seconds: 86_400,
        max_gpus_per_lease: 8,
        allowed_registries: vec!["ghcr.io".into()],
        region: String::new(),
        attributes: vec![],
        expires_at: now + 600,
    }
}

fn order(buyer: &ed25519_dalek::SigningKey) -> Tx {
    Tx::SubmitOrder(seal(buyer, one_gpu(), now_unix()))
}

/// One H100 for an hour, at most 3 USDC.
fn one_gpu() -> OrderBody {
    OrderBody {
        gpus: 1,
        duration_seconds: 3600,
        max_price_per_gpu_hour: "3".into(),
        denomination: "USDC".into(),
        workload: Some(Workload {
            image: "ghcr.io/acme/train:1".into(),
            cpu: "4".into(),
            memory: "16Gi".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `make bench`: orders per second the four validators commit, and how long each order takes
/// from broadcast to commit (in time and in blocks), with 200 ms between a commit and the next
/// height (the test bed's) and with CometBFT's default of 1 s; beside the same orders through
/// the embedded driver in this process (each its own fsynced block) as the baseline.
#[tokio::test]
#[ignore = "a benchmark: `make bench` runs it"]
async fn consensus_order_benchmark() {
    for timeout_commit in ["200ms", "1s"] {
        println!("{}", orders_on_four_validators(timeout_commit).await);
    }
    println!(
        "the same orders through the embedded driver (one fsynced block each): {:.0} orders/s",
        orders_through_the_embedded_driver()
    );
}

/// Throughput is what is in flight over the commit latency (Little's law): enough in flight
/// that blocks, not the clients, are the limit.
const BENCH_ORDERS: usize = 12_000;
const BENCH_IN_FLIGHT: usize = 1_600;
/// The issue's target: 1,000 orders a second, committed within 2 blocks (p99).
const PACED_RATE: usize = 1_000;
const PACED_ORDERS: usize = 10_000;

/// Ten providers with an offer each: what the benchmark's orders match.
fn benchmark_providers() -> Vec<Vec<Tx>> {
    (0..10).map(provider_with_offer).collect()
}

/// The figures of four validators committing `timeout_commit` apart: saturated, then at the
/// target rate.
async fn orders_on_four_validators(timeout_commit: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    // Providers that registered during the setup stay in the book without heartbeats.
    let mut validators = testnet_committing_every(
        dir.path(),
        4,
        &["--heartbeat-timeout-seconds", "3600"],
        timeout_commit,
    );
    for v in &mut validators {
        v.start();
    }
    past(&validators[0], 1, 60 * SECOND).await;
    // Independent transactions at once, so that the setup takes a few blocks at any cadence:
    // each is fresh for a minute.
    let buyers: Vec<_> = (0..40).map(|_| generate_key()).collect();
    let providers = benchmark_providers();
    let commit_all = |txs: Vec<Tx>| {
        let v = &validators[0];
        futures::future::join_all(txs.into_iter().map(|tx| async move {
            let (check, result) = v.commit(&tx).await.unwrap();
            assert_eq!((check.code, result.code), (0, 0), "{check:?} {result:?}");
        }))
    };
    commit_all(
        providers
            .iter()
            .map(|p| p[0].clone())
            .chain(buyers.iter().map(|b| deposit(b, "100000")))
            .collect(),
    )
    .await;
    commit_all(providers.iter().map(|p| p[1].clone()).collect()).await;

    // Through the gateways, as buyers order: each broadcasts with `broadcast_tx_sync` and
    // answers when its application commits the block.
    // Four connections to each gateway: at most 100 requests on each HTTP/2 connection, so
    // none waits for a stream.
    let gateways: Vec<NetworkClient> = (0..16)
        .map(|i| validators[i % 4].client(&generate_key()))
        .collect();
    // Each phase's orders are signed just before it: a request is fresh for a minute.
    let orders =
        |n: usize| -> Vec<Tx> { (0..n).map(|i| order(&buyers[i % buyers.len()])).collect() };
    // At the target rate first, sent on a clock whatever is in flight (an open loop, as many
    // buyers order): whether the network keeps up, and how long a buyer waits when it does.
    // First, so that neither phase runs while the upkeep closes the other's leases: no
    // provider answers them, and each lapses at its answer deadline (30 s), work a market
    // whose providers answer does not have.
    let at_rate = submit_all(
        &validators,
        &gateways,
        orders(PACED_ORDERS),
        PACED_ORDERS,
        Some(PACED_RATE / 100),
    )
    .await;
    // Then saturated: as many in flight as the gateways serve at once.
    let saturated = submit_all(
        &validators,
        &gateways,
        orders(BENCH_ORDERS),
        BENCH_IN_FLIGHT,
        None,
    )
    .await;
    format!(
        "4 validators, timeout_commit {timeout_commit}:\n  \
         {PACED_ORDERS} orders sent at {PACED_RATE} a second: {}\n  \
         {BENCH_ORDERS} orders with {BENCH_IN_FLIGHT} in flight (saturated): {}",
        at_rate.summary(),
        saturated.summary(),
    )
}

/// The benchmark's orders, after the same setup, applied by the embedded driver: orders a
/// second.
fn orders_through_the_embedded_driver() -> f64 {
    let base = tempfile::tempdir().unwrap();
    let params = Params {
        heartbeat_timeout_seconds: 3600,
        ..Params::default()
    };
    let store = Store::open(&base.path().join("network.redb"), generate_key(), params).unwrap();
    let buyers: Vec<_> = (0..40).map(|_| generate_key()).collect();
    let setup = benchmark_providers()
        .into_iter()
        .flatten()
        .chain(buyers.iter().map(|b| deposit(b, "100000")));
    for tx in setup {
        store.apply(&tx, now_unix()).unwrap();
    }
    let orders: Vec<Tx> = (0..BENCH_ORDERS)
        .map(|i| order(&buyers[i % buyers.len()]))
        .collect();
    let started = Instant::now();
    for tx in &orders {
        match store.apply(tx, now_unix()).unwrap() {
            Outcome::Ordered(placed) => assert!(placed.lease.is_some(), "{:?}", placed.order),
            other => panic!("{other:?}"),
        }
    }
    BENCH_ORDERS as f64 / started.elapsed().as_secs_f64()
}

/// Orders committed through the gateways: from the first sent to the last answered, each
/// one's time to its answer, and the blocks committed meanwhile.
struct OrderRun {
    elapsed: Duration,
    /// From the first order sent to the last.
    sent_over: Duration,
    /// The chain's committed rate: the requests of the blocks that carried any, over the time
    /// between them (their headers' times), but for the first and the last: each holds only a
    /// part of an interval, the first what came before it, the last the run's tail. Counted
    /// from blocks, not from the clients' answers, it holds whatever the commit latency: a
    /// run's last answers come a latency after its last order was sent.
    committed_rate: f64,
    latencies: Vec<Duration>,
    /// Orders not committed, by the gateway's status code.
    refused: std::collections::BTreeMap<String, usize>,
    blocks: u64,
    /// The CometBFT transactions that carried the orders (the gateways batch them).
    transactions: usize,
    /// Where the two cores went, in seconds: CometBFT's four nodes, the four applications.
    cpu: (f64, f64),
}

impl OrderRun {
    fn summary(&self) -> String {
        let block_time = self.elapsed / u32::try_from(self.blocks.max(1)).unwrap();
        let p = |q| percentile(&self.latencies, q);
        let in_blocks = |d: Duration| d.as_secs_f64() / block_time.as_secs_f64();
        format!(
            "{:.0} orders/s committed over {} blocks ({block_time:?} a block; sent over {:.1?}); \
             commit latency p50 {:?} ({:.1} blocks), p99 {:?} ({:.1} blocks); \
             {} transactions carried them; CPU: CometBFT nodes {:.1} s, applications {:.1} s \
             (of {:.1} s on 2 cores)",
            self.committed_rate,
            self.blocks,
            self.sent_over,
            p(50.0),
            in_blocks(p(50.0)),
            p(99.0),
            in_blocks(p(99.0)),
            self.transactions,
            self.cpu.0,
            self.cpu.1,
            2.0 * self.elapsed.as_secs_f64(),
        ) + &if self.refused.is_empty() {
            String::new()
        } else {
            format!("; not committed, by status: {:?}", self.refused)
        }
    }
}

/// Submits `orders` round the `gateways`, at most `in_flight` at once, and `per_tick` each
/// 10 ms when paced; each committed must be matched.
async fn submit_all(
    validators: &[Validator],
    gateways: &[NetworkClient],
    orders: Vec<Tx>,
    in_flight: usize,
    per_tick: Option<usize>,
) -> OrderRun {
    let gate = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let first_height = validators[0].height().await.unwrap();
    let cpu_before: Vec<_> = validators.iter().map(Validator::cpu_ticks).collect();
    let started = Instant::now();
    let mut sent = Vec::new();
    for (i, tx) in orders.into_iter().enumerate() {
        if let Some(per_tick) = per_tick
            && i % per_tick == 0
        {
            tick.tick().await;
        }
        let permit = gate.clone().acquire_owned().await.unwrap();
        let gateway = gateways[i % gateways.len()].clone();
        let Tx::SubmitOrder(signed) = tx else {
            unreachable!("orders")
        };
        sent.push(tokio::spawn(async move {
            let at = Instant::now();
            let placed = gateway.submit_signed(signed).await;
            drop(permit);
            // A network that falls behind refuses (its mempool is full) or does not commit in
            // time: counted, so that the figures say so, never a failed benchmark.
            let placed = placed.map_err(|s| format!("{:?}", s.code()))?;
            assert_eq!(placed.state, OrderState::Matched as i32, "{placed:?}");
            Ok::<Duration, String>(at.elapsed())
        }));
    }
    let sent_over = started.elapsed();
    let mut latencies = Vec::new();
    let mut refused = std::collections::BTreeMap::<String, usize>::new();
    for task in sent {
        match task.await.unwrap() {
            Ok(latency) => latencies.push(latency),
            Err(code) => *refused.entry(code).or_default() += 1,
        }
    }
    let elapsed = started.elapsed();
    let (mut node_ticks, mut app_ticks) = (0, 0);
    for (v, (app, node)) in validators.iter().zip(cpu_before) {
        let (app_after, node_after) = v.cpu_ticks();
        app_ticks += app_after - app;
        node_ticks += node_after - node;
    }
    latencies.sort();
    let last_height = validators[0].height().await.unwrap();
    let (mut carrying, mut transactions) = (Vec::new(), 0);
    for height in first_height + 1..=last_height {
        let (time, txs, requests) = validators[0].block_meta(height).await.unwrap();
        transactions += txs;
        if requests > 0 {
            carrying.push((time, requests));
        }
    }
    let committed_rate = match carrying.len() {
        n if n >= 3 => {
            let (first, last_full) = (carrying[0].0, carrying[n - 2].0);
            let requests: usize = carrying[1..n - 1].iter().map(|(_, r)| r).sum();
            requests as f64 / last_full.duration_since(first).as_secs_f64()
        }
        _ => 0.0,
    };
    OrderRun {
        elapsed,
        sent_over,
        committed_rate,
        latencies,
        refused,
        blocks: last_height - first_height,
        transactions,
        cpu: (node_ticks as f64 / 100.0, app_ticks as f64 / 100.0),
    }
}

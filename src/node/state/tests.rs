//! The state machine is deterministic: random transaction sequences applied to two fresh states,
//! and through the embedded driver to disk and back, end in the same hash; a refused transaction
//! changes nothing; the books balance after any sequence.

use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use sha2::{Digest, Sha256};

use super::probe::probe_reply;
use super::*;
use crate::identity::{issue_lease_certificate, public_key_base58};
use crate::metering::ChainHead;
use crate::metering::chain::{WindowReport, seal_receipt};
use crate::node::chain::app::{AppState, Chain, DecidedBlock};
use crate::node::chain::codec;
use crate::node::records::{LeaseRecord, ProbeRecord};
use crate::node::store::Store;
use crate::probe::challenge::{gpu_rounds, gpu_seed};
use crate::probe::wire::issued;
use crate::probe::{Matrix, Prover, generate, multiply};
use crate::wire::amount::Amount;
use crate::wire::envelope::seal;
use crate::wire::proto::{
    AccessUsage, Attribute, Attribution, BondBody, CancelBody, DepositBody, GpuUsage,
    HeartbeatBody, LeaseDecisionBody, LeaseEndBody, OfferBody, OrderBody, ParamChange, ProbeBody,
    ProbeCommit, ProbeReply, ProbeStep, ProposeBody, ReceiptsBody, ReceiptsReply, RegisterBody,
    RimBody, StakeReply, UnbondBody, VoteBody, WithdrawBody, probe_step,
};

const UNIT: u128 = 1_000_000_000_000_000_000;
const START: i64 = 1_800_000_000;

/// One step of a random history, in terms of who and which: made concrete against the state
/// it is applied to (the lease's provider, the chain's head).
#[derive(Clone, Debug)]
enum Op {
    Register(usize),
    Publish(usize, u32),
    Withdraw(usize),
    Heartbeat(usize),
    Deposit(usize, u8),
    /// A buyer orders GPUs, waiting for an offer for two minutes when `true`.
    Order(usize, u32, bool),
    Cancel(usize),
    Decide(usize, bool),
    End(usize),
    Receipts(usize, u16),
    /// A lease's probe takes its next step: honest, or from products that are all wrong.
    Probe(usize, bool),
    /// A provider bonds units from its spendable balance (or its earnings).
    Bond(usize, u8, bool),
    Unbond(usize, u8),
    /// A party proposes one of a few parameter changes, some out of bounds.
    Propose(usize, usize),
    /// A provider votes on a proposal by number.
    Vote(usize, u64, bool),
    /// An earlier transaction again, byte for byte.
    Replay(usize),
    /// An earlier transaction with one bit of its signature flipped.
    Forge(usize),
    /// The block ends; the next starts this many seconds later.
    NextBlock(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0..2usize).prop_map(Op::Register),
        2 => (0..2usize, 1..9u32).prop_map(|(p, g)| Op::Publish(p, g)),
        1 => (0..2usize).prop_map(Op::Withdraw),
        2 => (0..2usize).prop_map(Op::Heartbeat),
        1 => (0..5usize, 1..200u8).prop_map(|(w, u)| Op::Deposit(w, u)),
        4 => (0..3usize, 1..10u32, any::<bool>()).prop_map(|(b, g, w)| Op::Order(b, g, w)),
        1 => (0..8usize).prop_map(Op::Cancel),
        4 => (0..8usize, prop::bool::weighted(0.8)).prop_map(|(o, a)| Op::Decide(o, a)),
        1 => (0..8usize).prop_map(Op::End),
        5 => (0..8usize, 1..900u16).prop_map(|(o, s)| Op::Receipts(o, s)),
        4 => (0..8usize, prop::bool::weighted(0.9)).prop_map(|(o, h)| Op::Probe(o, h)),
        2 => (0..2usize, 1..60u8, any::<bool>()).prop_map(|(p, u, e)| Op::Bond(p, u, e)),
        1 => (0..2usize, 1..60u8).prop_map(|(p, u)| Op::Unbond(p, u)),
        1 => (0..5usize, 0..4usize).prop_map(|(w, c)| Op::Propose(w, c)),
        4 => (0..2usize, 1..3u64, prop::bool::weighted(0.8)).prop_map(|(p, id, y)| Op::Vote(p, id, y)),
        1 => (0..64usize).prop_map(Op::Replay),
        1 => (0..64usize).prop_map(Op::Forge),
        3 => (0..20u8).prop_map(Op::NextBlock),
        1 => (20..90u8).prop_map(Op::NextBlock),
    ]
}

fn key(role: u8, i: usize) -> SigningKey {
    SigningKey::from_bytes(&Sha256::digest([role, i as u8]).into())
}

fn offer(name: &str, gpus: u32, now: i64) -> OfferBody {
    OfferBody {
        header: None,
        offer_name: name.into(),
        model: "NVIDIA-H100-80GB-HBM3".into(),
        resource_name: "nvidia.com/gpu".into(),
        free_blocks: vec![gpus, gpus],
        price_per_gpu_hour: (5 * UNIT / 2).to_string(),
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

fn order(gpus: u32) -> OrderBody {
    OrderBody {
        gpus,
        ..crate::wire::validate::tests::valid_order()
    }
}

/// A history being written: the transactions so far, grouped in blocks, made concrete against
/// `state` as it goes.
struct History {
    state: State,
    time: i64,
    /// Orders placed, by who placed them, with their lease id.
    orders: Vec<(usize, String, String)>,
    sent: Vec<Tx>,
    blocks: Vec<(Block, Vec<Tx>)>,
    current: Vec<Tx>,
    refused: usize,
}

impl History {
    fn new() -> History {
        History {
            state: State::genesis(history_params()).unwrap(),
            time: START,
            orders: Vec::new(),
            sent: Vec::new(),
            blocks: Vec::new(),
            current: Vec::new(),
            refused: 0,
        }
    }

    fn block(&self) -> Block {
        let height = self.blocks.len() as u64 + 1;
        Block {
            height,
            time: self.time,
            entropy: Sha256::digest(height.to_be_bytes()).into(),
        }
    }

    fn lease(&self, index: usize) -> Option<LeaseRecord> {
        let (_, _, lease_id) = self.orders.get(index % self.orders.len().max(1))?;
        self.state.get(LEASES, lease_id).unwrap()
    }

    fn provider_of(lease: &LeaseRecord) -> SigningKey {
        (0..2)
            .map(|i| key(1, i))
            .find(|k| public_key_base58(&k.verifying_key()) == lease.provider)
            .expect("leases are made for the two providers")
    }

    fn concrete(&mut self, op: &Op) -> Option<Tx> {
        let now = self.time;
        Some(match op.clone() {
            Op::Register(p) => {
                let body = RegisterBody {
                    header: None,
                    name: format!("provider-{p}"),
                    region: String::new(),
                };
                Tx::Register(seal(&key(1, p), body, now))
            }
            Op::Publish(p, gpus) => {
                // Provider 1's offer promises re-probes: its leases are probed again.
                let mut body = offer("h100", gpus, now);
                if p == 1 {
                    let (name, value) = crate::wire::validate::REPROBED;
                    body.attributes = vec![Attribute {
                        key: name.into(),
                        value: value.into(),
                    }];
                }
                Tx::PublishOffer(seal(&key(1, p), body, now))
            }
            Op::Withdraw(p) => {
                let body = WithdrawBody {
                    header: None,
                    offer_name: "h100".into(),
                };
                Tx::WithdrawOffer(seal(&key(1, p), body, now))
            }
            Op::Heartbeat(p) => {
                Tx::Heartbeat(seal(&key(1, p), HeartbeatBody { header: None }, now))
            }
            Op::Deposit(b, units) => {
                let body = DepositBody {
                    header: None,
                    amount: (u128::from(units) * UNIT).to_string(),
                    denomination: "USDC".into(),
                };
                // Buyers 0 to 2, then providers 0 and 1.
                let who = if b < 3 { key(2, b) } else { key(1, b - 3) };
                Tx::Deposit(seal(&who, body, now))
            }
            Op::Order(b, gpus, wait) => {
                let body = OrderBody {
                    wait_until: if wait { now + 120 } else { 0 },
                    ..order(gpus)
                };
                let signed = seal(&key(2, b), body, now);
                let order_id = hex::encode(&Sha256::digest(&signed.body)[..16]);
                let lease_id = hex::encode(&Sha256::digest(format!("lease\0{order_id}"))[..12]);
                self.orders.push((b, order_id, lease_id));
                Tx::SubmitOrder(signed)
            }
            Op::Cancel(i) => {
                let (b, order_id, _) = self.orders.get(i % self.orders.len().max(1))?.clone();
                let body = CancelBody {
                    header: None,
                    order_id,
                };
                Tx::CancelOrder(seal(&key(2, b), body, now))
            }
            Op::Decide(i, accept) => {
                let lease = self.lease(i)?;
                let body = LeaseDecisionBody {
                    header: None,
                    lease_id: lease.lease_id.clone(),
                    accept,
                    reason: if accept { "" } else { "busy" }.into(),
                };
                Tx::DecideLease(seal(&Self::provider_of(&lease), body, now))
            }
            Op::End(i) => {
                let lease = self.lease(i)?;
                let body = LeaseEndBody {
                    header: None,
                    lease_id: lease.lease_id.clone(),
                    phase: "Succeeded".into(),
                    reason: String::new(),
                    fault: "none".into(),
                    started_at: lease.matched_at,
                    ended_at: now,
                    gpu_seconds: 0,
                };
                Tx::ReportLeaseEnd(seal(&Self::provider_of(&lease), body, now))
            }
            Op::Receipts(i, seconds) => {
                let lease = self.lease(i)?;
                let provider = Self::provider_of(&lease);
                let start = lease.chain.window_end_ms.unwrap_or(first_window_ms(&lease));
                let end_ms = (start + i64::from(seconds) * 1000).min(now * 1000);
                receipts_tx(&provider, &lease, &lease.chain, end_ms, now)
            }
            Op::Probe(i, honest) => {
                let lease = self.lease(i)?;
                probe_tx(&Self::provider_of(&lease), &lease, honest, now)?
            }
            Op::Bond(p, units, earnings) => {
                let body = BondBody {
                    header: None,
                    amount: (u128::from(units) * UNIT).to_string(),
                    source: if earnings { "earnings" } else { "available" }.into(),
                };
                Tx::Bond(seal(&key(1, p), body, now))
            }
            Op::Unbond(p, units) => {
                let body = UnbondBody {
                    header: None,
                    amount: (u128::from(units) * UNIT).to_string(),
                };
                Tx::Unbond(seal(&key(1, p), body, now))
            }
            Op::Propose(w, c) => {
                let (name, value) = [
                    ("answer-seconds", "45"),
                    ("bond-per-gpu", "2000000000000000000"),
                    ("slash-basis-points", "99999"),
                    ("start-deadline-seconds", "60"),
                ][c];
                let body = ProposeBody {
                    header: None,
                    changes: vec![ParamChange {
                        name: name.into(),
                        value: value.into(),
                    }],
                    effective_height: self.block().height + 4,
                    deposit: (10 * UNIT).to_string(),
                };
                let who = if w < 3 { key(2, w) } else { key(1, w - 3) };
                Tx::Propose(seal(&who, body, now))
            }
            Op::Vote(p, id, yes) => {
                let body = VoteBody {
                    header: None,
                    proposal_id: id,
                    yes,
                };
                Tx::Vote(seal(&key(1, p), body, now))
            }
            Op::Replay(i) => self.sent.get(i % self.sent.len().max(1))?.clone(),
            Op::Forge(i) => {
                let mut tx = self.sent.get(i % self.sent.len().max(1))?.clone();
                let signed = match &mut tx {
                    Tx::Register(s)
                    | Tx::PublishOffer(s)
                    | Tx::WithdrawOffer(s)
                    | Tx::Heartbeat(s)
                    | Tx::OpenLeaseStream(s)
                    | Tx::DecideLease(s)
                    | Tx::ReportLeaseEnd(s)
                    | Tx::Deposit(s)
                    | Tx::SubmitOrder(s)
                    | Tx::CancelOrder(s)
                    | Tx::SubmitReceipts(s)
                    | Tx::SubmitEvidence(s)
                    | Tx::Bond(s)
                    | Tx::Unbond(s)
                    | Tx::Propose(s)
                    | Tx::Vote(s)
                    | Tx::SubmitProbe(s)
                    | Tx::SubmitRim(s) => s,
                };
                signed.signature[0] ^= 1;
                tx
            }
            Op::NextBlock(_) => return None,
        })
    }

    /// Applies `ops` to the history's state, one block per `NextBlock`, checking that each
    /// refused transaction leaves the hash as it was.
    fn run(ops: &[Op]) -> History {
        let mut h = History::new();
        h.state.sweep(&h.block()).unwrap();
        // A market to trade in, which the random steps then change.
        let opening = [
            Op::Register(0),
            Op::Register(1),
            Op::Publish(0, 8),
            Op::Publish(1, 4),
            Op::Deposit(0, 200),
            Op::Deposit(1, 200),
            Op::Deposit(3, 200),
            Op::Deposit(4, 200),
            Op::Bond(0, 50, false),
            Op::Bond(1, 20, false),
        ];
        for op in opening.iter().chain(ops) {
            if let Op::NextBlock(seconds) = op {
                h.end_block();
                h.time += i64::from(*seconds);
                let block = h.block();
                h.state.sweep(&block).unwrap();
                continue;
            }
            let Some(tx) = h.concrete(op) else { continue };
            let before = h.state.hash();
            let outcome = h.state.apply(&tx, &h.block());
            if outcome.is_err() {
                assert_eq!(
                    h.state.hash(),
                    before,
                    "{op:?} was refused but changed the state"
                );
                h.refused += 1;
            }
            h.sent.push(tx.clone());
            h.current.push(tx);
        }
        h.end_block();
        h
    }

    fn end_block(&mut self) {
        let block = self.block();
        self.state.end_block(&block).unwrap();
        self.state.settle_block();
        self.blocks.push((block, std::mem::take(&mut self.current)));
    }
}

/// `provider`'s batch of one receipt of `lease` after `head`, up to `end_ms`, signed by the
/// lease's key (certified by `provider`).
fn receipts_tx(
    provider: &SigningKey,
    lease: &LeaseRecord,
    head: &ChainHead,
    end_ms: i64,
    now: i64,
) -> Tx {
    receipts_signed_by(
        &key(3, lease.sequence_hint()),
        provider,
        lease,
        head,
        end_ms,
        now,
    )
}

/// The same, under `lease_key`.
fn receipts_signed_by(
    lease_key: &SigningKey,
    provider: &SigningKey,
    lease: &LeaseRecord,
    head: &ChainHead,
    end_ms: i64,
    now: i64,
) -> Tx {
    receipts_carrying(lease_key, provider, lease, head, end_ms, now, None)
}

/// The same, carrying buyer `access` in the window.
fn receipts_carrying(
    lease_key: &SigningKey,
    provider: &SigningKey,
    lease: &LeaseRecord,
    head: &ChainHead,
    end_ms: i64,
    now: i64,
    access: Option<AccessUsage>,
) -> Tx {
    let certificate = issue_lease_certificate(
        provider,
        &lease.lease_id,
        &lease_key.verifying_key(),
        now + 86_400,
    );
    let usage = (0..lease.gpus)
        .map(|g| GpuUsage {
            uuid: format!("GPU-{g}"),
            utilization_percent: 50,
            memory_high_water_bytes: 0,
            energy_millijoules: 1000,
        })
        .collect();
    let (receipt, _) = seal_receipt(
        lease_key,
        &lease.lease_id,
        lease.gpus,
        head,
        first_window_ms(lease),
        WindowReport {
            window_end_ms: end_ms,
            gpus: usage,
            attribution: Attribution::Measured,
            access,
            ..WindowReport::default()
        },
    );
    let body = ReceiptsBody {
        header: None,
        lease_id: lease.lease_id.clone(),
        certificate: prost::Message::encode_to_vec(&certificate),
        receipts: vec![receipt],
    };
    Tx::SubmitReceipts(seal(provider, body, now))
}

/// Where an honest meter starts the lease's first window: when its probe passed; before that,
/// at its match (which the network refuses).
fn first_window_ms(lease: &LeaseRecord) -> i64 {
    crate::metering::metering_start(
        lease.probe.as_ref().and_then(|p| p.passed_at),
        lease.hardware_attested_since,
    )
    .unwrap_or(lease.matched_at * 1000)
}

/// Every GPU's products for the lease's probe: right, or each element off by one.
fn probe_provers(probe: &ProbeRecord, honest: bool) -> Vec<Prover> {
    let (spec, _) = issued(&probe_reply(probe));
    (0..probe.answered.len() as u32)
        .map(|g| {
            let seed = gpu_seed(&probe.nonce, g);
            if honest {
                return Prover::run(spec, &seed);
            }
            let wrong = (0..spec.tiles)
                .map(|t| {
                    let a = generate(&seed, spec.size, t, Matrix::A);
                    let b = generate(&seed, spec.size, t, Matrix::B);
                    multiply(&a, &b, spec.size).iter().map(|v| v + 1).collect()
                })
                .collect();
            Prover::holding(spec, wrong)
        })
        .collect()
}

/// The next step of the lease's probe under way (its re-probe, when one is), by its provider
/// with the lease's test key: the commitment, then the first GPU not answered yet; none once
/// the probe is over.
fn probe_tx(provider: &SigningKey, lease: &LeaseRecord, honest: bool, now: i64) -> Option<Tx> {
    let under_way = |p: &&ProbeRecord| p.passed_at.is_none() && p.failed_at.is_none();
    let probe = lease
        .reprobe
        .as_ref()
        .filter(under_way)
        .or(lease.probe.as_ref())
        .filter(under_way)?;
    let provers = probe_provers(probe, honest);
    let kind = match probe.checks {
        None => probe_step::Kind::Commit(ProbeCommit {
            roots: provers.iter().map(|p| p.commitment().to_vec()).collect(),
            kernel_ms: 1_000,
        }),
        Some(checks) => {
            let gpu = probe.answered.iter().position(|a| !a)? as u32;
            let (spec, rules) = issued(&probe_reply(probe));
            let answers: Vec<_> = gpu_rounds(&rules, &spec, &checks, gpu)
                .iter()
                .map(|r| provers[gpu as usize].answer(r))
                .collect();
            probe_step::Kind::Answers(crate::probe::wire::to_wire(gpu, &answers))
        }
    };
    let certificate = issue_lease_certificate(
        provider,
        &lease.lease_id,
        &key(3, lease.sequence_hint()).verifying_key(),
        now + 86_400,
    );
    let body = ProbeBody {
        header: None,
        lease_id: lease.lease_id.clone(),
        certificate: prost::Message::encode_to_vec(&certificate),
        step: Some(ProbeStep { kind: Some(kind) }),
    };
    Some(Tx::SubmitProbe(seal(provider, body, now)))
}

impl LeaseRecord {
    /// A number that tells leases apart, for their test keys.
    fn sequence_hint(&self) -> usize {
        usize::from(Sha256::digest(self.lease_id.as_bytes())[0])
    }
}

/// A probe small enough for tests: 90 % of 1 MiB in tiles of 16², four rounds of two rows.
fn small_probe(params: Params) -> Params {
    Params {
        probe_size: 16,
        probe_memory_mib: 1,
        probe_rounds: 4,
        probe_rows: 2,
        ..params
    }
}

/// The parameters of the random histories: bonds matter, a lease that sends no receipt
/// within two minutes of acceptance is slashed, and re-probes come a minute after each pass.
fn history_params() -> Params {
    small_probe(Params {
        voting_blocks: 2,
        bond_per_gpu: Amount::from_atto(UNIT),
        unbonding_seconds: 300,
        start_deadline_seconds: 120,
        reprobe_seconds: 60,
        reprobe_memory_mib: 1,
        ..Params::default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random histories replay to the same state ([`replays_to_the_same_hash`]).
    #[test]
    fn the_same_blocks_give_the_same_hash_again_and_from_disk(ops in prop::collection::vec(op(), 1..80)) {
        let history = History::run(&ops);
        // Something happened, and some of it was refused: the hash is not the genesis hash.
        prop_assume!(history.sent.len() > history.refused);
        replays_to_the_same_hash(&history)?;
    }
}

/// The history's blocks give its state's hash again: applied to a fresh state, through the
/// embedded driver to disk and opened again, and as the bytes of consensus blocks through the
/// ABCI application's driver (every other block's requests in one batch). Refused transactions
/// change nothing, and the books balance.
fn replays_to_the_same_hash(history: &History) -> std::result::Result<(), TestCaseError> {
    let expected = history.state.hash();

    let mut again = State::genesis(history_params()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("network.redb");
    let store = Store::open(&path, key(0, 0), history_params()).unwrap();
    prop_assert_eq!(store.head().unwrap(), (0, again.hash()));
    let chain_path = dir.path().join("chain.redb");
    let open_chain = || {
        let store = Store::open(&chain_path, key(0, 1), Params::default()).unwrap();
        Chain::new(std::sync::Arc::new(store))
    };
    let chain = open_chain();
    let app_state = serde_json::to_vec(&AppState {
        params: history_params(),
    })
    .unwrap();
    prop_assert_eq!(chain.init_chain(&app_state).unwrap(), again.hash());
    for (block, txs) in &history.blocks {
        let (_, outcomes) = again.finalize(block, true, txs).unwrap();
        again.end_block(block).unwrap();
        again.settle_block();
        let (_, persisted) = store.finalize(block, true, txs).unwrap();
        prop_assert_eq!(format!("{outcomes:?}"), format!("{persisted:?}"));
        // Every other block carries its requests as one gateway's batch: the same state and
        // the same answers either way.
        let batched = block.height % 2 == 0 && (2..=codec::MAX_BATCH).contains(&txs.len());
        let decided = DecidedBlock {
            height: block.height,
            time: block.time,
            hash: block.entropy.to_vec(),
            txs: match batched {
                true => vec![codec::encode_batch(txs)],
                false => txs.iter().map(codec::encode_tx).collect(),
            },
        };
        let finalized = chain.finalize_block(&decided).unwrap();
        prop_assert_eq!(chain.commit().unwrap(), block.height);
        let results: Vec<_> = outcomes.iter().map(codec::result_of).collect();
        let answered: Vec<_> = finalized.answers.iter().map(|(_, r)| r.clone()).collect();
        prop_assert_eq!(&answered, &results);
        prop_assert_eq!(
            finalized.results,
            match batched {
                true => vec![codec::batch_result(&results)],
                false => results,
            }
        );
        prop_assert_eq!(finalized.app_hash, again.hash());
    }
    prop_assert_eq!(again.hash(), expected);
    prop_assert_eq!(store.head().unwrap().1, expected);
    drop(chain);
    prop_assert_eq!(open_chain().info(), (history.blocks.len() as u64, expected));
    history.state.audit().unwrap();
    prop_assert_ne!(expected, State::genesis(history_params()).unwrap().hash());

    drop(store);
    let reopened = Store::open(&path, key(0, 0), history_params()).unwrap();
    prop_assert_eq!(reopened.head().unwrap().1, expected);
    Ok(())
}

/// Random histories seldom carry a lease through its probe (each step is one random op), so one
/// history is written out: provider 1's lease passes its probe, is probed again a minute later and
/// passes, is probed a third time and lapses, and its blocks replay to the same hash.
#[test]
fn a_history_with_reprobes_gives_the_same_hash_again_and_from_disk() {
    let probe = [Op::Probe(0, true), Op::Probe(0, true), Op::Probe(0, true)];
    let ops: Vec<Op> = [Op::Withdraw(0), Op::Order(0, 2, false), Op::Decide(0, true)]
        .into_iter()
        .chain(probe.clone())
        .chain([Op::NextBlock(30), Op::Receipts(0, 30), Op::NextBlock(31)])
        .chain(probe)
        .chain([Op::Receipts(0, 31), Op::NextBlock(61), Op::NextBlock(130)])
        .collect();
    let history = History::run(&ops);
    let lease = &history.state.leases().unwrap()[0];
    assert!(lease.reprobed);
    assert_eq!(lease.reprobes_passed(), 1);
    assert_eq!(lease.chain.sequence, 2);
    assert_eq!(lease.reprobe.as_ref().unwrap().reprobe, 2);
    assert_eq!(lease.end.as_ref().unwrap().reason, "ReprobeLapsed");
    replays_to_the_same_hash(&history).unwrap();
}

/// A small market driven by hand: one state, blocks at chosen times.
struct Market {
    state: State,
    height: u64,
}

impl Market {
    fn new(params: Params) -> Market {
        Market {
            state: State::genesis(params).unwrap(),
            height: 0,
        }
    }

    fn block(&mut self, time: i64) -> Block {
        self.height += 1;
        Block {
            height: self.height,
            time,
            entropy: [7; 32],
        }
    }

    fn apply(&mut self, time: i64, tx: Tx) -> Result<Outcome> {
        let block = self.block(time);
        let outcome = self.state.apply(&tx, &block);
        self.state.end_block(&block).unwrap();
        self.state.settle_block();
        outcome
    }

    fn sweep(&mut self, time: i64) {
        let block = self.block(time);
        self.state.sweep(&block).unwrap();
        self.state.end_block(&block).unwrap();
        self.state.settle_block();
    }

    fn provider(&self) -> String {
        public_key_base58(&key(1, 0).verifying_key())
    }

    fn buyer(&self) -> String {
        public_key_base58(&key(2, 0).verifying_key())
    }

    /// Provider 0 registered and publishing two nodes of 8 GPUs; buyer 0 holding 1000 USDC;
    /// both at START.
    fn opened(params: Params) -> Market {
        let mut m = Market::new(params);
        let register = RegisterBody {
            header: None,
            name: "acme".into(),
            region: String::new(),
        };
        m.apply(START, Tx::Register(seal(&key(1, 0), register, START)))
            .unwrap();
        m.apply(
            START,
            Tx::PublishOffer(seal(&key(1, 0), offer("h100", 8, START), START)),
        )
        .unwrap();
        for who in [key(2, 0), key(1, 0)] {
            let deposit = DepositBody {
                header: None,
                amount: (1000 * UNIT).to_string(),
                denomination: "USDC".into(),
            };
            m.apply(START, Tx::Deposit(seal(&who, deposit, START)))
                .unwrap();
        }
        m
    }

    fn bond(&mut self, time: i64, units: u128, source: &str) -> Result<StakeReply> {
        let body = BondBody {
            header: None,
            amount: (units * UNIT).to_string(),
            source: source.into(),
        };
        match self.apply(time, Tx::Bond(seal(&key(1, 0), body, time)))? {
            Outcome::Stake(reply) => Ok(reply),
            other => panic!("bond answered {other:?}"),
        }
    }

    fn unbond(&mut self, time: i64, units: u128) -> Result<StakeReply> {
        let body = UnbondBody {
            header: None,
            amount: (units * UNIT).to_string(),
        };
        match self.apply(time, Tx::Unbond(seal(&key(1, 0), body, time)))? {
            Outcome::Stake(reply) => Ok(reply),
            other => panic!("unbond answered {other:?}"),
        }
    }

    /// Buyer 0 orders `gpus` for an hour; the order as placed.
    fn order(&mut self, time: i64, gpus: u32) -> OrderView {
        match self
            .apply(time, Tx::SubmitOrder(seal(&key(2, 0), order(gpus), time)))
            .unwrap()
        {
            Outcome::Ordered(placed) => placed.order,
            other => panic!("order answered {other:?}"),
        }
    }

    fn accept(&mut self, time: i64, lease_id: &str) {
        let body = LeaseDecisionBody {
            header: None,
            lease_id: lease_id.into(),
            accept: true,
            reason: String::new(),
        };
        self.apply(time, Tx::DecideLease(seal(&key(1, 0), body, time)))
            .unwrap();
    }

    fn available(&self, who: &str) -> Amount {
        let reply = self.state.balances_of(who).unwrap();
        let usdc = reply.balances.iter().find(|b| b.denomination == "USDC");
        usdc.map_or(Amount::ZERO, |b| {
            crate::wire::amount::parse("available", &b.available).unwrap()
        })
    }
}

fn staked() -> Params {
    small_probe(Params {
        bond_per_gpu: Amount::from_atto(10 * UNIT),
        unbonding_seconds: 3600,
        start_deadline_seconds: 300,
        slash_basis_points: 2000,
        ..Params::default()
    })
}

#[test]
fn a_bond_bounds_the_gpus_a_provider_leases_and_frees_with_them() {
    let mut m = Market::opened(staked());
    let t = START + 1;
    let unbonded = m.order(t, 1);
    assert_eq!(unbonded.state(), crate::wire::proto::OrderState::Rejected);
    let stake = m.bond(t, 25, "available").unwrap();
    assert_eq!((stake.covered_gpus, stake.committed_gpus), (Some(2), 0));
    assert_eq!(
        m.order(t, 4).state(),
        crate::wire::proto::OrderState::Rejected,
        "4 GPUs need 40 USDC bonded"
    );
    let first = m.order(t, 2);
    assert_eq!(first.state(), crate::wire::proto::OrderState::Matched);
    assert_eq!(m.state.stake_of(&m.provider()).unwrap().committed_gpus, 2);
    assert_eq!(
        m.order(t, 1).state(),
        crate::wire::proto::OrderState::Rejected,
        "the bond is used up"
    );
    let cancel = CancelBody {
        header: None,
        order_id: first.order_id.clone(),
    };
    m.apply(t, Tx::CancelOrder(seal(&key(2, 0), cancel, t)))
        .unwrap();
    assert_eq!(m.state.stake_of(&m.provider()).unwrap().committed_gpus, 0);
    assert_eq!(
        m.order(t, 1).state(),
        crate::wire::proto::OrderState::Matched
    );
    let offers = m.state.list_offers(t).unwrap();
    assert_eq!(offers[0].bonded, (25 * UNIT).to_string());
    m.state.audit().unwrap();
}

#[test]
fn bonds_and_unbonds_are_refused_with_the_field_and_the_rule() {
    let mut m = Market::opened(staked());
    let t = START + 1;
    let refusal = |r: Result<StakeReply>| r.expect_err("refused").to_string();
    let before = m.state.hash();
    assert_eq!(
        refusal(m.bond(t, 5, "savings")),
        "bond.source: must be available or earnings"
    );
    assert!(
        refusal(m.bond(t, 5000, "available"))
            .starts_with("insufficient funds: bond needs 5000 USDC")
    );
    assert!(refusal(m.bond(t, 5, "earnings")).starts_with("insufficient funds"));
    assert!(refusal(m.unbond(t, 1)).contains("unbond.amount: 1 USDC is more than the 0 bonded"));
    assert_eq!(m.state.hash(), before, "refusals change nothing");

    m.bond(t, 30, "available").unwrap();
    let order = m.order(t, 2);
    m.accept(t, &order.lease_id);
    let uncovered = refusal(m.unbond(t, 15));
    assert!(
        uncovered
            .contains("less than the 2 GPUs of the provider's matched and running leases need"),
        "{uncovered}"
    );
    let stake = m.unbond(t, 10).unwrap();
    assert_eq!(stake.bonded, (20 * UNIT).to_string());
    assert_eq!(stake.unbonding.len(), 1);
    assert_eq!(stake.unbonding[0].release_at, t + 3600);

    // Paid back at its release time, not before.
    let spendable = m.available(&m.provider());
    m.sweep(t + 3599);
    assert_eq!(m.available(&m.provider()), spendable);
    m.sweep(t + 3600);
    assert_eq!(
        m.available(&m.provider()),
        spendable
            .checked_add(Amount::from_atto(10 * UNIT), "")
            .unwrap()
    );
    assert!(
        m.state
            .stake_of(&m.provider())
            .unwrap()
            .unbonding
            .is_empty()
    );
    m.state.audit().unwrap();
}

#[test]
fn a_lease_never_started_ends_and_its_provider_is_slashed_to_the_buyer() {
    let mut m = Market::opened(staked());
    let t = START + 1;
    m.bond(t, 40, "available").unwrap();
    m.unbond(t, 10).unwrap();
    let order = m.order(t, 2);
    let spent = m.available(&m.buyer());
    m.accept(t + 5, &order.lease_id);

    assert_eq!(
        State::start_deadline(
            &m.state
                .get::<LeaseRecord>(LEASES, &order.lease_id)
                .unwrap()
                .unwrap(),
            300,
        ),
        Some(t + 5 + 300)
    );
    m.sweep(t + 5 + 299);
    let lease: LeaseRecord = m.state.get(LEASES, &order.lease_id).unwrap().unwrap();
    assert_eq!(lease.state, crate::node::records::LeaseState::Accepted);

    m.sweep(t + 5 + 300);
    let view = m.state.order_status(&m.buyer(), &order.order_id).unwrap();
    let lease = view.lease.as_ref().unwrap();
    assert_eq!(
        (lease.state.as_str(), lease.fault.as_str()),
        ("ended", "provider")
    );
    assert_eq!(lease.end_reason, "NeverStarted");
    // 20 % of the 40 USDC of stake (30 bonded, 10 unbonding) is 8 USDC, and the hold comes back.
    let hold = crate::wire::amount::parse("held", &view.held).unwrap();
    let slashed = Amount::from_atto(8 * UNIT);
    assert_eq!(
        m.available(&m.buyer()),
        spent
            .checked_add(hold, "")
            .unwrap()
            .checked_add(slashed, "")
            .unwrap()
    );
    assert!(view.reason.contains("no receipt by"), "{}", view.reason);
    let stake = m.state.stake_of(&m.provider()).unwrap();
    assert_eq!(stake.bonded, (22 * UNIT).to_string(), "the bond pays first");
    assert_eq!(stake.unbonding[0].amount, (10 * UNIT).to_string());
    assert_eq!(stake.committed_gpus, 0);
    assert_eq!(stake.slashes.len(), 1);
    let slash = &stake.slashes[0];
    assert_eq!(
        (
            slash.kind.as_str(),
            slash.lease_id.as_str(),
            slash.buyer.as_str()
        ),
        ("never-started", order.lease_id.as_str(), m.buyer().as_str())
    );
    assert_eq!(
        slash.evidence,
        format!(
            "accepted at {}; no receipt by {} (300 s later)",
            t + 5,
            t + 305
        )
    );
    // Once: the next sweep finds an ended lease.
    m.sweep(t + 1000);
    assert_eq!(m.state.stake_of(&m.provider()).unwrap().slashes.len(), 1);
    m.state.audit().unwrap();
}

/// A staked market whose provider bonded 40 and accepted a 2-GPU order at START + 6.
fn accepted_lease() -> (Market, OrderView) {
    let mut m = Market::opened(staked());
    let t = START + 1;
    m.bond(t, 40, "available").unwrap();
    let order = m.order(t, 2);
    m.accept(t + 5, &order.lease_id);
    (m, order)
}

/// The same, its probe passed at START + 7.
fn probed_lease() -> (Market, OrderView) {
    let (mut m, order) = accepted_lease();
    let reply = m.probe(START + 7, &order.lease_id, true);
    assert_eq!(reply.state, "passed", "{}", reply.detail);
    (m, order)
}

impl Market {
    fn lease(&self, lease_id: &str) -> LeaseRecord {
        self.state.get(LEASES, lease_id).unwrap().unwrap()
    }

    /// Runs provider 0's lease probe at `time` to its end (a commitment, then each GPU's
    /// answers, one block each): the last answer.
    fn probe(&mut self, time: i64, lease_id: &str, honest: bool) -> ProbeReply {
        let mut last = None;
        while let Some(tx) = probe_tx(&key(1, 0), &self.lease(lease_id), honest, time) {
            match self.apply(time, tx) {
                Ok(Outcome::Probe(reply)) => last = Some(reply),
                other => panic!("a probe step was answered {other:?}"),
            }
        }
        last.expect("the lease has a probe under way")
    }
}

#[test]
fn a_receipt_chain_that_forks_slashes_its_provider_to_the_buyer_once() {
    let (mut m, order) = probed_lease();
    let t = START + 1;
    let lease = |m: &Market| m.lease(&order.lease_id);
    let genesis = lease(&m).chain;
    let submit = |m: &mut Market, end_ms: i64, now: i64| -> ReceiptsReply {
        let tx = receipts_tx(&key(1, 0), &lease(m), &genesis, end_ms, now);
        match m.apply(now, tx).unwrap() {
            Outcome::Receipts(reply) => reply,
            other => panic!("receipts answered {other:?}"),
        }
    };
    let first = submit(&mut m, (t + 60) * 1000, t + 61);
    assert_eq!((first.accepted_through, first.rejection), (1, None));
    let before = m.available(&m.buyer());
    // The same sequence again, with another window: two histories signed by one lease key.
    let fork = submit(&mut m, (t + 90) * 1000, t + 91);
    let rejection = fork.rejection.expect("a fork is refused");
    assert_eq!((rejection.kind.as_str(), rejection.sequence), ("Fork", 1));
    let stake = m.state.stake_of(&m.provider()).unwrap();
    assert_eq!(stake.slashes.len(), 1);
    let slash = &stake.slashes[0];
    assert_eq!(
        (slash.kind.as_str(), slash.buyer.as_str()),
        ("fork", m.buyer().as_str())
    );
    assert!(
        slash
            .evidence
            .starts_with("receipt 1 signed twice by the lease key: "),
        "{}",
        slash.evidence
    );
    // 20 % of 40 USDC bonded, paid to the buyer.
    assert_eq!(
        m.available(&m.buyer()),
        before.checked_add(Amount::from_atto(8 * UNIT), "").unwrap()
    );
    // The same fork sent again is the same evidence: no second slash. The receipt accepted
    // first, resent, is no fork at all.
    submit(&mut m, (t + 90) * 1000, t + 92);
    let again = submit(&mut m, (t + 60) * 1000, t + 93);
    assert_eq!((again.accepted_through, again.rejection), (1, None));
    assert_eq!(m.state.stake_of(&m.provider()).unwrap().slashes.len(), 1);
    m.state.audit().unwrap();
}

#[test]
fn the_access_receipts_carry_adds_up_in_the_receipts_summary_and_the_buyers_view() {
    let (mut m, order) = probed_lease();
    let t = START + 1;
    let window = |to, from, connections| AccessUsage {
        bytes_to_workload: to,
        bytes_from_workload: from,
        connections,
        log_streams: 1,
    };
    let mut submit = |end: i64, access: Option<AccessUsage>| -> ReceiptsReply {
        let lease = m.lease(&order.lease_id);
        let tx = receipts_carrying(
            &key(3, lease.sequence_hint()),
            &key(1, 0),
            &lease,
            &lease.chain,
            end * 1000,
            end + 1,
            access,
        );
        match m.apply(end + 1, tx).unwrap() {
            Outcome::Receipts(reply) => reply,
            other => panic!("receipts answered {other:?}"),
        }
    };
    submit(t + 60, Some(window(100, 4_000, 2)));
    // A window without access adds nothing.
    submit(t + 120, None);
    let reply = submit(t + 180, Some(window(50, 1_000, 1)));
    assert_eq!(
        (reply.accepted_through, reply.rejection),
        (3, None),
        "every receipt accepted"
    );
    let summed = AccessUsage {
        bytes_to_workload: 150,
        bytes_from_workload: 5_000,
        connections: 3,
        log_streams: 2,
    };
    assert_eq!(reply.access, Some(summed));
    let view = m.lease(&order.lease_id).to_view(None);
    assert_eq!(view.access, Some(summed));
    m.state.audit().unwrap();
}

#[test]
fn a_lease_key_is_pinned_by_its_first_accepted_certificate() {
    // The probe's certificate is the first the network accepts: it pins the lease's test key.
    let (mut m, order) = probed_lease();
    let t = START + 1;
    let lease = |m: &Market| m.lease(&order.lease_id);
    let genesis = lease(&m).chain;
    // The lease's first receipt, under `lease_key`, for a window ending at `end` (seconds).
    let first_receipt = |m: &Market, lease_key: &SigningKey, end: i64| {
        receipts_signed_by(
            lease_key,
            &key(1, 0),
            &lease(m),
            &genesis,
            end * 1000,
            end + 1,
        )
    };
    let first = key(3, lease(&m).sequence_hint());
    let tx = first_receipt(&m, &first, t + 60);
    assert!(matches!(m.apply(t + 61, tx), Ok(Outcome::Receipts(r)) if r.accepted_through == 1));
    assert_eq!(
        lease(&m).lease_key,
        Some(first.verifying_key().as_bytes().to_vec())
    );
    // The provider certifies a second key and signs another history with it, from the start.
    let hash_before = m.state.hash();
    let tx = first_receipt(&m, &key(3, 101), t + 90);
    match m.apply(t + 91, tx) {
        Err(StateError::Rejected(Rejection::PermissionDenied(message))) => assert!(
            message.starts_with("certificate.leasePublicKey: lease ")
                && message.ends_with("a certificate for another key is refused"),
            "{message}"
        ),
        other => panic!("a second lease key was answered {other:?}"),
    }
    assert_eq!(lease(&m).chain.sequence, 1);
    assert_eq!(
        m.state.hash(),
        hash_before,
        "a refused certificate changes nothing"
    );
    m.state.audit().unwrap();
}

#[test]
fn an_end_the_provider_reports_as_its_fault_slashes_it_and_others_do_not() {
    let mut m = Market::opened(staked());
    let t = START + 1;
    m.bond(t, 40, "available").unwrap();
    let end = |m: &mut Market, lease_id: &str, fault: &str, now: i64| {
        let body = LeaseEndBody {
            header: None,
            lease_id: lease_id.into(),
            phase: "Failed".into(),
            reason: "NodeLost".into(),
            fault: fault.into(),
            started_at: t + 10,
            ended_at: now,
            gpu_seconds: 0,
        };
        m.apply(now, Tx::ReportLeaseEnd(seal(&key(1, 0), body, now)))
            .unwrap();
    };
    for fault in ["tenant", "network", "none"] {
        let order = m.order(t, 1);
        m.accept(t + 5, &order.lease_id);
        end(&mut m, &order.lease_id, fault, t + 20);
    }
    assert!(m.state.stake_of(&m.provider()).unwrap().slashes.is_empty());
    let order = m.order(t, 1);
    m.accept(t + 5, &order.lease_id);
    let before = m.available(&m.buyer());
    end(&mut m, &order.lease_id, "provider", t + 30);
    // Retried, the report is answered as before and slashes nothing more.
    end(&mut m, &order.lease_id, "provider", t + 31);
    let stake = m.state.stake_of(&m.provider()).unwrap();
    assert_eq!(stake.slashes.len(), 1);
    let slash = &stake.slashes[0];
    assert_eq!(
        (slash.kind.as_str(), slash.evidence.as_str()),
        (
            "provider-fault",
            "the provider reported the end (Failed, NodeLost) as its fault"
        )
    );
    let hold = crate::wire::amount::parse("held", &order.held).unwrap();
    assert_eq!(
        m.available(&m.buyer()),
        before
            .checked_add(hold, "")
            .unwrap()
            .checked_add(Amount::from_atto(8 * UNIT), "")
            .unwrap(),
        "the hold back, and 20 % of the 40 USDC bonded"
    );
    m.state.audit().unwrap();
}

#[test]
fn a_slash_beyond_the_bond_takes_from_unbonding_stake() {
    let params = Params {
        slash_basis_points: 10_000,
        ..staked()
    };
    let mut m = Market::opened(params);
    let t = START + 1;
    m.bond(t, 40, "available").unwrap();
    let order = m.order(t, 1);
    m.accept(t, &order.lease_id);
    m.unbond(t, 25).unwrap();
    m.sweep(t + 300);
    let stake = m.state.stake_of(&m.provider()).unwrap();
    assert_eq!(stake.bonded, "0");
    assert!(stake.unbonding.is_empty(), "{:?}", stake.unbonding);
    assert_eq!(stake.slashes[0].amount, (40 * UNIT).to_string());
    m.state.audit().unwrap();
}

#[test]
fn a_buyer_names_a_provider_or_asks_for_uptime_and_the_book_shows_both() {
    let mut m = Market::opened(Params::default());
    let other = key(1, 1);
    let register = RegisterBody {
        header: None,
        name: "budget".into(),
        region: String::new(),
    };
    m.apply(START, Tx::Register(seal(&other, register, START)))
        .unwrap();
    // Provider 0 heartbeats every slot for ten minutes; the other every other slot.
    for s in 1..=60 {
        let t = START + s * 10;
        m.apply(
            t,
            Tx::Heartbeat(seal(&key(1, 0), HeartbeatBody { header: None }, t)),
        )
        .unwrap();
        if s % 2 == 0 {
            m.apply(
                t,
                Tx::Heartbeat(seal(&other, HeartbeatBody { header: None }, t)),
            )
            .unwrap();
        }
    }
    // Both publish (offers live two minutes); the other sells cheaper.
    let t = START + 600;
    let mut cheap = offer("h100", 8, t);
    cheap.price_per_gpu_hour = (2 * UNIT).to_string();
    m.apply(t, Tx::PublishOffer(seal(&other, cheap, t)))
        .unwrap();
    m.apply(
        t,
        Tx::PublishOffer(seal(&key(1, 0), offer("h100", 8, t), t)),
    )
    .unwrap();
    let book = m.state.list_offers(t).unwrap();
    let uptime = |name: &str| {
        book.iter()
            .find(|o| o.provider_name == name)
            .unwrap()
            .uptime_basis_points
    };
    assert_eq!(uptime("acme"), 10_000);
    assert!(
        (4_900..=5_200).contains(&uptime("budget")),
        "{}",
        uptime("budget")
    );

    let place = |m: &mut Market, edit: &dyn Fn(&mut OrderBody)| {
        let mut body = order(1);
        edit(&mut body);
        match m
            .apply(t, Tx::SubmitOrder(seal(&key(2, 0), body, t)))
            .unwrap()
        {
            Outcome::Ordered(placed) => *placed,
            other => panic!("{other:?}"),
        }
    };
    let any = place(&mut m, &|_| ());
    assert_eq!(
        any.lease.unwrap().0,
        public_key_base58(&other.verifying_key()),
        "the cheaper"
    );
    let named = place(&mut m, &|o| o.provider = m_provider());
    assert_eq!(
        named.lease.unwrap().0,
        m_provider(),
        "the named, though dearer"
    );
    let reliable = place(&mut m, &|o| o.min_uptime_basis_points = 9_000);
    assert_eq!(
        reliable.lease.unwrap().0,
        m_provider(),
        "the one with the uptime"
    );
    let refused = place(&mut m, &|o| {
        o.min_uptime_basis_points = 9_000;
        o.provider = public_key_base58(&other.verifying_key());
    });
    assert!(refused.lease.is_none());
    assert!(
        refused.order.reason.contains("is another provider's"),
        "{}",
        refused.order.reason
    );

    // No evidence verified yet: every offer is self-reported and an order asking more matches
    // none; once acme's evidence reached hardware-attested, it matches acme, though dearer.
    assert!(
        book.iter().all(|o| o.trust_tier == "self-reported"),
        "{book:?}"
    );
    let attested = |o: &mut OrderBody| o.min_trust_tier = "hardware-attested".into();
    let unmet = place(&mut m, &attested);
    assert!(unmet.lease.is_none());
    assert!(
        unmet
            .order
            .reason
            .contains("lower trust tier (the best: self-reported)"),
        "{}",
        unmet.order.reason
    );
    let mut acme = m.state.registered(&m_provider()).unwrap();
    acme.trust_tier = crate::attestation::TrustTier::HardwareAttested;
    m.state.put(PROVIDERS, &m_provider(), &acme).unwrap();
    assert_eq!(place(&mut m, &attested).lease.unwrap().0, m_provider());
    let shown = m.state.list_offers(t).unwrap();
    assert_eq!(
        shown
            .iter()
            .find(|o| o.provider_name == "acme")
            .unwrap()
            .trust_tier,
        "hardware-attested"
    );
    let gold = OrderBody {
        min_trust_tier: "gold".into(),
        ..order(1)
    };
    match m.apply(t, Tx::SubmitOrder(seal(&key(2, 0), gold, t))) {
        Err(StateError::Rejected(r)) => assert!(
            r.to_string().contains("order.minTrustTier: must be empty"),
            "{r}"
        ),
        other => panic!("an unknown tier was answered {other:?}"),
    }

    // A lease that ends well counts for its provider; one that never starts, against.
    let lease_id = named.order.lease_id.clone();
    m.accept(t, &lease_id);
    let end = LeaseEndBody {
        header: None,
        lease_id,
        phase: "Succeeded".into(),
        reason: String::new(),
        fault: "none".into(),
        started_at: t,
        ended_at: t + 5,
        gpu_seconds: 5,
    };
    m.apply(t + 5, Tx::ReportLeaseEnd(seal(&key(1, 0), end, t + 5)))
        .unwrap();
    m.accept(t + 5, &reliable.order.lease_id);
    m.sweep(t + 5 + 600);
    let record: crate::node::records::ProviderRecord =
        m.state.get(PROVIDERS, &m_provider()).unwrap().unwrap();
    assert_eq!(
        (record.completed_leases, record.provider_fault_ends),
        (1, 1)
    );
}

/// Provider 0's public key.
fn m_provider() -> String {
    public_key_base58(&key(1, 0).verifying_key())
}

#[test]
fn a_proposal_passes_by_bonded_stake_and_takes_effect_at_its_height() {
    let params = Params {
        voting_blocks: 6,
        quorum_basis_points: 5_000,
        ..staked()
    };
    let mut m = Market::opened(params);
    let t = START + 1;
    m.bond(t, 100, "available").unwrap();
    let propose =
        |m: &mut Market, who: &SigningKey, changes: &[(&str, &str)], at: u64, units: u128| {
            let body = ProposeBody {
                header: None,
                changes: changes
                    .iter()
                    .map(|(n, v)| ParamChange {
                        name: n.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
                effective_height: at,
                deposit: (units * UNIT).to_string(),
            };
            m.apply(t, Tx::Propose(seal(who, body, t)))
        };
    let vote = |m: &mut Market, who: &SigningKey, id: u64, yes: bool| {
        let body = VoteBody {
            header: None,
            proposal_id: id,
            yes,
        };
        m.apply(t, Tx::Vote(seal(who, body, t)))
    };
    let refused = |r: Result<Outcome>| r.expect_err("refused").to_string();
    let buyer = key(2, 0);
    let h = m.height;
    assert!(
        refused(propose(&mut m, &buyer, &[("price", "1")], h + 10, 10))
            .starts_with("change.name: \"price\" is not a governed parameter")
    );
    assert_eq!(
        refused(propose(
            &mut m,
            &buyer,
            &[("answer-seconds", "1")],
            h + 10,
            10
        )),
        "change.value: answer-seconds must be a whole number from 5 to 3600"
    );
    assert!(
        refused(propose(
            &mut m,
            &buyer,
            &[("answer-seconds", "60")],
            h + 3,
            10
        ))
        .starts_with("propose.effectiveHeight: must be after the vote ends at height")
    );
    assert!(
        refused(propose(
            &mut m,
            &buyer,
            &[("answer-seconds", "60")],
            h + 10,
            1
        ))
        .starts_with("propose.deposit: must be at least")
    );

    // An accepted lease that never starts, under the start deadline of 300 s this proposal
    // shortens.
    let unstarted = m.order(t, 1);
    m.accept(t, &unstarted.lease_id);

    // The buyer proposes; only the bonded provider's vote counts.
    let before = m.available(&m.buyer());
    let at = m.height + 9;
    let Outcome::Proposal(p) = propose(
        &mut m,
        &buyer,
        &[
            ("answer-seconds", "60"),
            ("slash-basis-points", "500"),
            ("start-deadline-seconds", "60"),
        ],
        at,
        10,
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!((p.id, p.status.as_str()), (1, "voting"));
    assert!(refused(vote(&mut m, &buyer, 1, true)).contains("only bonded stake votes"));
    assert!(refused(vote(&mut m, &key(1, 0), 9, true)).contains("proposal 9 does not exist"));
    vote(&mut m, &key(1, 0), 1, false).unwrap();
    vote(&mut m, &key(1, 0), 1, true).unwrap();
    m.sweep(t);
    assert_eq!(m.state.params().unwrap().answer_seconds, 30, "still voting");
    while m.height <= p.voting_end_height {
        m.sweep(t);
    }
    let view = m.state.params_view().unwrap();
    assert_eq!(
        view.proposals[0].status, "passed",
        "{:?}",
        view.proposals[0]
    );
    assert_eq!(
        m.available(&m.buyer()),
        before,
        "quorum reached: the deposit is back"
    );
    assert!(refused(vote(&mut m, &key(1, 0), 1, false)).contains("its vote ended"));
    while m.height < p.effective_height - 1 {
        m.sweep(t);
    }
    assert_eq!(
        m.state.params().unwrap().answer_seconds,
        30,
        "not before its height"
    );
    m.sweep(t);
    let now = m.state.params().unwrap();
    assert_eq!(
        (
            now.answer_seconds,
            now.slash_basis_points,
            now.start_deadline_seconds
        ),
        (60, 500, 60)
    );
    assert_eq!(
        m.state.params_view().unwrap().proposals[0].status,
        "applied"
    );
    // The lease running when the deadline changed is held to the new one.
    m.state.audit().unwrap();
    m.sweep(t + 59);
    assert_eq!(
        m.lease(&unstarted.lease_id).state,
        crate::node::records::LeaseState::Accepted
    );
    m.sweep(t + 60);
    let ended = m.lease(&unstarted.lease_id);
    assert_eq!(
        (ended.state, ended.end.unwrap().reason.as_str()),
        (crate::node::records::LeaseState::Ended, "NeverStarted")
    );
    let before = m.available(&m.buyer());

    // Without quorum the proposal fails and the deposit stays with the network.
    let at = m.height + 9;
    let Outcome::Proposal(p) =
        propose(&mut m, &buyer, &[("answer-seconds", "90")], at, 10).unwrap()
    else {
        panic!()
    };
    while m.height <= p.voting_end_height + 3 {
        m.sweep(t);
    }
    let view = m.state.params_view().unwrap();
    assert_eq!(view.proposals[1].status, "rejected");
    assert!(
        view.proposals[1].outcome.starts_with("no quorum"),
        "{}",
        view.proposals[1].outcome
    );
    assert_eq!(m.state.params().unwrap().answer_seconds, 60);
    assert_eq!(
        m.available(&m.buyer()),
        before
            .checked_sub(Amount::from_atto(10 * UNIT), "")
            .unwrap()
    );
    m.state.audit().unwrap();
}

#[test]
fn a_standing_order_waits_for_capacity_matches_when_it_comes_and_closes_at_its_deadline() {
    let mut m = Market::opened(Params::default());
    let t = START + 1;
    let waiting = |m: &mut Market, gpus: u32, until: i64, at: i64| {
        let body = OrderBody {
            wait_until: until,
            ..order(gpus)
        };
        match m.apply(at, Tx::SubmitOrder(seal(&key(2, 0), body, at))) {
            Ok(Outcome::Ordered(placed)) => Ok(*placed),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.to_string()),
        }
    };
    assert!(
        waiting(&mut m, 1, t, t)
            .unwrap_err()
            .starts_with("order.waitUntil: must be 0, or later than now")
    );
    assert!(
        waiting(&mut m, 1, t + 8 * 86_400, t).is_err(),
        "at most 7 days"
    );

    // 9 GPUs fit no node of 8: the order waits, holding nothing.
    let spendable = m.available(&m.buyer());
    let big = waiting(&mut m, 9, t + 600, t).unwrap();
    assert_eq!(big.order.state(), crate::wire::proto::OrderState::Waiting);
    assert!(
        big.order.reason.starts_with(&format!(
            "waiting for an offer until {}: no offer matches",
            t + 600
        )),
        "{}",
        big.order.reason
    );
    assert_eq!(m.available(&m.buyer()), spendable);
    // 4 GPUs fit nothing either while a new offer is missing: the book holds 8 + 8, so first
    // fill it with two matched orders of 8, then wait for 4.
    for _ in 0..2 {
        let full = waiting(&mut m, 8, 0, t).unwrap();
        assert!(full.lease.is_some());
    }
    let four = waiting(&mut m, 4, t + 600, t).unwrap();
    assert_eq!(four.order.state(), crate::wire::proto::OrderState::Waiting);
    let cancel_me = waiting(&mut m, 2, t + 600, t).unwrap();
    let cancel = CancelBody {
        header: None,
        order_id: cancel_me.order.order_id.clone(),
    };
    let Outcome::Order(view) = m
        .apply(t, Tx::CancelOrder(seal(&key(2, 0), cancel, t)))
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(view.state(), crate::wire::proto::OrderState::Cancelled);

    // The provider publishes a node more: at the next upkeep the oldest waiting order that fits
    // matches, with its hold; the others keep waiting.
    let t2 = t + 10;
    m.apply(
        t2,
        Tx::PublishOffer(seal(
            &key(1, 0),
            OfferBody {
                free_blocks: vec![8, 8, 8],
                ..offer("h100", 8, t2)
            },
            t2,
        )),
    )
    .unwrap();
    let block = m.block(t2);
    let swept = m.state.sweep(&block).unwrap();
    m.state.end_block(&block).unwrap();
    m.state.settle_block();
    assert_eq!(swept.matched.len(), 1, "{swept:?}");
    let view = m
        .state
        .order_status(&m.buyer(), &four.order.order_id)
        .unwrap();
    assert_eq!(view.state(), crate::wire::proto::OrderState::Matched);
    assert_eq!(swept.matched[0].1.lease_id, view.lease_id);
    assert_ne!(view.held, "0");
    let view = m
        .state
        .order_status(&m.buyer(), &cancel_me.order.order_id)
        .unwrap();
    assert_eq!(
        view.state(),
        crate::wire::proto::OrderState::Cancelled,
        "a cancelled order never matches"
    );

    // Past its deadline the 9-GPU order closes, saying what it waited for.
    m.sweep(t + 601);
    let view = m
        .state
        .order_status(&m.buyer(), &big.order.order_id)
        .unwrap();
    assert_eq!(view.state(), crate::wire::proto::OrderState::Rejected);
    assert!(
        view.reason.starts_with(&format!(
            "no offer matched by {}: no offer matches",
            t + 600
        )),
        "{}",
        view.reason
    );
    m.state.audit().unwrap();
}

/// What a validator's gateway proves leases by: the answer to a provider's own stream opening or
/// heartbeat lists exactly its leases still waiting for an answer, so a lease matched by the
/// upkeep (in no transaction's result) reaches the provider proven with its next heartbeat.
#[test]
fn a_providers_stream_opening_and_heartbeat_list_the_leases_waiting_for_its_answer() {
    let mut m = Market::opened(Params::default());
    let waiting = |m: &mut Market, t: i64, open: bool| -> Vec<String> {
        let tx = if open {
            Tx::OpenLeaseStream(seal(
                &key(1, 0),
                crate::wire::proto::LeaseStreamBody { header: None },
                t,
            ))
        } else {
            Tx::Heartbeat(seal(&key(1, 0), HeartbeatBody { header: None }, t))
        };
        match m.apply(t, tx).unwrap() {
            Outcome::Waiting(provider, leases) => {
                assert_eq!(provider, m.provider());
                leases.into_iter().map(|l| l.lease_id).collect()
            }
            other => panic!("answered {other:?}"),
        }
    };
    assert_eq!(waiting(&mut m, START, true), Vec::<String>::new());
    let first = m.order(START + 1, 2);
    let second = m.order(START + 2, 2);
    let mut both = vec![first.lease_id.clone(), second.lease_id.clone()];
    both.sort();
    assert_eq!(waiting(&mut m, START + 3, false), both);
    m.accept(START + 4, &first.lease_id);
    assert_eq!(waiting(&mut m, START + 5, true), [second.lease_id]);
    // Another provider's heartbeat lists none of them.
    let register = RegisterBody {
        header: None,
        name: "other".into(),
        region: String::new(),
    };
    m.apply(
        START + 6,
        Tx::Register(seal(&key(1, 1), register, START + 6)),
    )
    .unwrap();
    let beat = Tx::Heartbeat(seal(&key(1, 1), HeartbeatBody { header: None }, START + 6));
    assert!(matches!(m.apply(START + 6, beat), Ok(Outcome::Waiting(_, w)) if w.is_empty()));
}

/// The lease's first receipt, for the window `start_ms` to `end_ms`, under its test key.
fn first_window(
    m: &mut Market,
    lease_id: &str,
    start_ms: i64,
    end_ms: i64,
    now: i64,
) -> Result<Outcome> {
    let lease = m.lease(lease_id);
    let lease_key = key(3, lease.sequence_hint());
    let certificate = issue_lease_certificate(
        &key(1, 0),
        lease_id,
        &lease_key.verifying_key(),
        now + 86_400,
    );
    let (receipt, _) = seal_receipt(
        &lease_key,
        lease_id,
        lease.gpus,
        &ChainHead::default(),
        start_ms,
        WindowReport {
            window_end_ms: end_ms,
            attribution: Attribution::AllocationOnly,
            ..WindowReport::default()
        },
    );
    let body = ReceiptsBody {
        header: None,
        lease_id: lease_id.into(),
        certificate: prost::Message::encode_to_vec(&certificate),
        receipts: vec![receipt],
    };
    m.apply(now, Tx::SubmitReceipts(seal(&key(1, 0), body, now)))
}

/// The refusal a receipts batch was answered with, by kind and message.
fn refusal(outcome: Result<Outcome>) -> Option<(String, String)> {
    match outcome.unwrap() {
        Outcome::Receipts(reply) => reply.rejection.map(|r| (r.kind, r.message)),
        other => panic!("receipts answered {other:?}"),
    }
}

#[test]
fn a_lease_is_metered_only_from_the_moment_its_probe_passed() {
    let (mut m, order) = accepted_lease();
    let id = order.lease_id.clone();
    let accepted = START + 6;
    // Before the probe passed, no window at all, however it is dated.
    let before = first_window(
        &mut m,
        &id,
        accepted * 1000,
        (accepted + 30) * 1000,
        accepted + 30,
    );
    assert_eq!(refusal(before).unwrap().0, "Unverified");
    let passed_at = START + 40;
    let reply = m.probe(passed_at, &id, true);
    assert_eq!(
        (
            reply.state.as_str(),
            reply.passed_at,
            reply.answered.clone()
        ),
        ("passed", passed_at, vec![0, 1])
    );
    assert!(
        reply.detail.contains("has no calibration band"),
        "{}",
        reply.detail
    );
    // The provider signs a window from acceptance, before the probe: refused, nothing paid.
    let end = passed_at + 60;
    let (kind, message) =
        refusal(first_window(&mut m, &id, accepted * 1000, end * 1000, end)).unwrap();
    assert_eq!(kind, "BadWindow");
    assert!(
        message.contains(&format!(
            "must not start before the lease passed its challenge ({})",
            passed_at * 1000
        )),
        "{message}"
    );
    assert_eq!(m.lease(&id).charged, Amount::ZERO);
    // From the pass: accepted, and the time charged is the GPUs × (end − pass), no more.
    assert_eq!(
        refusal(first_window(&mut m, &id, passed_at * 1000, end * 1000, end)),
        None
    );
    let lease = m.lease(&id);
    assert_eq!(lease.totals.allocated_gpu_millis, 2 * 60_000);
    assert!(lease.charged > Amount::ZERO);
    // The offer book shows the tier the provider's lease reached.
    assert_eq!(
        m.state.registered(&m.provider()).unwrap().trust_tier,
        crate::attestation::TrustTier::ChallengeVerified
    );
    m.state.audit().unwrap();
}

#[test]
fn a_probe_that_answers_from_wrong_products_fails_and_its_provider_is_slashed_to_the_buyer() {
    let (mut m, order) = accepted_lease();
    let id = order.lease_id.clone();
    let buyer_before = m.available(&m.buyer());
    let reply = m.probe(START + 10, &id, false);
    assert_eq!(reply.state, "failed");
    assert!(
        reply.detail.starts_with("Freivalds: gpus[0].rounds[0]: "),
        "{}",
        reply.detail
    );
    let lease = m.lease(&id);
    let end = lease.end.as_ref().expect("the lease ended");
    assert_eq!(
        (end.reason.as_str(), end.fault.as_str(), end.charged),
        ("ChallengeFailed", "provider", Amount::ZERO)
    );
    let stake = m.state.stake_of(&m.provider()).unwrap();
    assert_eq!(stake.slashes.len(), 1);
    assert_eq!(stake.slashes[0].kind, "challenge");
    assert!(
        stake.slashes[0]
            .evidence
            .starts_with("GPU probe failed: Freivalds: ")
    );
    // The whole hold back, and 20 % of the 40 bonded.
    let refunded_and_slashed = buyer_before
        .checked_add(order_held(&m, &order), "")
        .unwrap()
        .checked_add(Amount::from_atto(8 * UNIT), "")
        .unwrap();
    assert_eq!(m.available(&m.buyer()), refunded_and_slashed);
    // An over probe takes no more steps.
    let again = probe_tx(&key(1, 0), &lease, true, START + 11);
    assert!(again.is_none());
    m.state.audit().unwrap();
}

fn order_held(m: &Market, order: &OrderView) -> Amount {
    let record: crate::node::records::OrderRecord =
        m.state.get(ORDERS, &order.order_id).unwrap().unwrap();
    record.held
}

#[test]
fn a_probe_left_unanswered_fails_at_its_deadline_and_steps_out_of_turn_are_refused() {
    let (mut m, order) = accepted_lease();
    let id = order.lease_id.clone();
    let t = START + 10;
    // Answers before the commitment: refused, nothing changes.
    let lease = m.lease(&id);
    let mut committed = lease.clone();
    committed.probe.as_mut().unwrap().checks = Some([1; 32]);
    let early = probe_tx(&key(1, 0), &committed, true, t).unwrap();
    assert!(matches!(
        m.apply(t, early),
        Err(StateError::Rejected(Rejection::Precondition(_)))
    ));
    let commit = probe_tx(&key(1, 0), &lease, true, t).unwrap();
    assert!(matches!(m.apply(t, commit), Ok(Outcome::Probe(r)) if r.state == "committed"));
    // A second commitment: refused.
    let again = probe_tx(&key(1, 0), &lease, true, t + 1).unwrap();
    assert!(matches!(
        m.apply(t + 1, again),
        Err(StateError::Rejected(Rejection::Duplicate(_)))
    ));
    // The checks go unanswered past the deadline.
    let deadline = t + i64::from(staked().probe_answer_seconds);
    m.sweep(deadline - 1);
    assert!(m.lease(&id).end.is_none());
    m.sweep(deadline);
    let lease = m.lease(&id);
    assert_eq!(lease.end.as_ref().unwrap().reason, "ChallengeFailed");
    assert!(
        lease
            .probe
            .unwrap()
            .detail
            .starts_with("Unanswered: the checks were not answered within 120 s")
    );
    assert_eq!(
        m.state.stake_of(&m.provider()).unwrap().slashes[0].kind,
        "challenge"
    );
    m.state.audit().unwrap();
}

#[test]
fn a_reported_time_outside_the_models_calibration_band_fails_the_probe() {
    // The band of the offer's model, far faster than a kernel of 1 s over this spec.
    let params = staked()
        .with_change("probe-band/NVIDIA-H100-80GB-HBM3", "1:1000:2000")
        .unwrap();
    let mut m = Market::opened(params);
    let t = START + 1;
    m.bond(t, 40, "available").unwrap();
    let order = m.order(t, 1);
    m.accept(t + 1, &order.lease_id);
    let reply = m.probe(t + 2, &order.lease_id, true);
    assert_eq!(reply.state, "failed");
    assert!(
        reply.detail.starts_with("OutsideBand: kernelMs: 0 GOPS is outside NVIDIA-H100-80GB-HBM3's calibration band 1000–2000 GOPS"),
        "{}",
        reply.detail
    );
}

/// Decoded records are kept between reads, never past a write, a delete or a rollback: what a
/// read returns is always what the entries hold.
#[test]
fn a_read_after_a_write_delete_or_rollback_sees_the_entries() {
    let mut state = State::genesis(Params::default()).unwrap();
    state.put(COUNTERS, "x", &1u64).unwrap();
    assert_eq!(state.get::<u64>(COUNTERS, "x").unwrap(), Some(1));
    let savepoint = state.kv.savepoint();
    state.put(COUNTERS, "x", &2u64).unwrap();
    assert_eq!(state.get::<u64>(COUNTERS, "x").unwrap(), Some(2), "a write");
    assert_eq!(state.all::<u64>(COUNTERS).unwrap(), vec![2]);
    state.rollback(savepoint);
    assert_eq!(
        state.get::<u64>(COUNTERS, "x").unwrap(),
        Some(1),
        "a rollback"
    );
    assert_eq!(state.all::<u64>(COUNTERS).unwrap(), vec![1]);
    assert!(state.delete(COUNTERS, "x"));
    assert_eq!(state.get::<u64>(COUNTERS, "x").unwrap(), None, "a delete");
    // A record read as one type and then as another is decoded as each.
    state.put(COUNTERS, "y", &7u64).unwrap();
    assert_eq!(state.get::<u64>(COUNTERS, "y").unwrap(), Some(7));
    assert_eq!(state.get::<i64>(COUNTERS, "y").unwrap(), Some(7));
}

#[test]
fn nvidias_manifests_are_held_once_verified_and_bad_ones_leave_the_state_as_it_was() {
    use crate::attestation::rim::tests::{DRIVER_RIM, SIGNED_AT};
    let mut m = Market::new(history_params());
    // Anyone may hand one over: only NVIDIA's signature is trusted.
    let anyone = key(3, 0);
    let submit = |manifest: Vec<u8>, now: i64| {
        Tx::SubmitRim(seal(
            &anyone,
            RimBody {
                header: None,
                manifest,
            },
            now,
        ))
    };
    let before = m.state.hash();
    let altered = String::from_utf8(DRIVER_RIM.to_vec())
        .unwrap()
        .replacen("ns2:Hash0=\"0e0ee161", "ns2:Hash0=\"1e0ee161", 1)
        .into_bytes();
    for (manifest, time, reason) in [
        (altered, SIGNED_AT, "manifest: RimSignature"),
        (DRIVER_RIM.to_vec(), START, "RimCertificate"),
        (b"<SoftwareIdentity/>".to_vec(), SIGNED_AT, "MalformedRim"),
    ] {
        let refused = m.apply(time, submit(manifest, time)).unwrap_err();
        assert!(refused.to_string().contains(reason), "{reason}: {refused}");
    }
    assert_eq!(m.state.hash(), before, "refusals change nothing");
    assert!(
        m.state
            .manifests()
            .unwrap()
            .get("GH100", "545.00")
            .is_none()
    );

    let held = submit(DRIVER_RIM.to_vec(), SIGNED_AT);
    let Outcome::Rim(reply) = m.apply(SIGNED_AT, held.clone()).unwrap() else {
        panic!("a manifest's outcome is its reply")
    };
    assert_eq!(
        (
            reply.chip.as_str(),
            reply.version.as_str(),
            reply.measurements
        ),
        ("GH100", "545.00", 21)
    );
    let book = m.state.manifests().unwrap();
    assert_eq!(book.get("GH100", "545.00").unwrap().golden.len(), 21);
    // The same request again is a replay; the same manifest in a new request is held again.
    let replay = m.apply(SIGNED_AT, held).unwrap_err();
    assert!(replay.to_string().contains("replay"), "{replay}");
    let hash = m.state.hash();
    m.apply(SIGNED_AT + 1, submit(DRIVER_RIM.to_vec(), SIGNED_AT + 1))
        .unwrap();
    assert_ne!(m.state.hash(), hash, "the request's nonce is recorded");
    assert_eq!(
        m.state.manifests().unwrap().get("GH100", "545.00"),
        book.get("GH100", "545.00")
    );
}

/// A staked market re-probing every 600 s in 1 MiB, whose provider also offers GPUs it
/// re-probes (DRA devices): a 2-GPU order requiring them accepted at START + 6, its probe
/// passed at START + 7.
fn dra_probed_lease() -> (Market, OrderView) {
    let mut m = Market::opened(Params {
        reprobe_seconds: 600,
        reprobe_memory_mib: 1,
        ..staked()
    });
    let t = START + 1;
    let (key_, value) = crate::wire::validate::REPROBED;
    let reprobed = Attribute {
        key: key_.into(),
        value: value.into(),
    };
    let offer = OfferBody {
        attributes: vec![reprobed.clone()],
        ..offer("h100-dra", 8, t)
    };
    m.apply(t, Tx::PublishOffer(seal(&key(1, 0), offer, t)))
        .unwrap();
    m.bond(t, 40, "available").unwrap();
    let body = OrderBody {
        attributes: vec![reprobed],
        ..order(2)
    };
    let order = match m.apply(t, Tx::SubmitOrder(seal(&key(2, 0), body, t))) {
        Ok(Outcome::Ordered(placed)) => placed.order,
        other => panic!("order answered {other:?}"),
    };
    m.accept(t + 5, &order.lease_id);
    let lease = m.lease(&order.lease_id);
    assert!(lease.reprobed);
    assert_eq!(m.probe(START + 7, &order.lease_id, true).state, "passed");
    (m, order)
}

/// The lease's next receipt, ending at `end` (Unix seconds), sent at that time.
fn next_window(m: &mut Market, lease_id: &str, end: i64) -> Option<(String, String)> {
    let lease = m.lease(lease_id);
    let tx = receipts_tx(&key(1, 0), &lease, &lease.chain, end * 1000, end);
    refusal(m.apply(end, tx))
}

#[test]
fn a_lease_sharing_its_gpus_is_probed_again_and_metered_only_as_far_as_its_last_pass_vouches() {
    let (mut m, order) = dra_probed_lease();
    let id = order.lease_id.clone();
    let passed = START + 7;
    // A lease of whole GPUs, whose sidecars cannot reach them, is never probed again.
    let whole = m.order(START + 8, 1);
    m.accept(START + 8, &whole.lease_id);
    m.probe(START + 9, &whole.lease_id, true);
    // Both started before the start deadline.
    assert_eq!(next_window(&mut m, &id, passed + 200), None);
    assert_eq!(next_window(&mut m, &whole.lease_id, passed + 200), None);
    m.sweep(passed + 599);
    assert!(m.lease(&id).reprobe.is_none());
    m.sweep(passed + 600);
    assert!(m.lease(&whole.lease_id).reprobe.is_none());
    let lease = m.lease(&id);
    let reprobe = lease.reprobe.as_ref().expect("due after 600 s");
    assert_eq!((reprobe.reprobe, reprobe.issued_at), (1, passed + 600));
    assert_ne!(reprobe.nonce, lease.probe.as_ref().unwrap().nonce);
    // 90 % of the governed 1 MiB in tiles of 6 × 16² bytes.
    assert_eq!((reprobe.size, reprobe.tiles), (16, 615));
    // The pass vouches for 600 s and the re-probe's two deadlines of 120 s: through +840.
    assert_eq!(next_window(&mut m, &id, passed + 840), None);
    let (kind, message) = next_window(&mut m, &id, passed + 900).unwrap();
    assert_eq!(kind, "Unproven");
    assert!(
        message.contains(&format!("ends past {}", (passed + 840) * 1000)),
        "{message}"
    );
    // The sidecar runs the re-probe; the network does not hold it to the model's band.
    let reply = m.probe(passed + 650, &id, true);
    assert_eq!((reply.state.as_str(), reply.reprobe), ("passed", 1));
    assert!(
        reply.detail.contains("beside the workload"),
        "{}",
        reply.detail
    );
    let lease = m.lease(&id);
    assert_eq!(
        (lease.probe_proven_at, lease.reprobes_passed()),
        (Some(passed + 650), 1)
    );
    assert_eq!(
        lease.tier(),
        crate::attestation::TrustTier::ChallengeVerified
    );
    // The window refused before is taken now.
    assert_eq!(next_window(&mut m, &id, passed + 900), None);
    let charged = m.lease(&id).charged;
    assert_eq!(m.lease(&id).totals.allocated_gpu_millis, 2 * 900_000);
    // The second re-probe is issued and never committed: the lease ends at its deadline, what
    // was charged stands, the rest goes back to the buyer, and nobody is slashed.
    let buyer_before = m.available(&m.buyer());
    m.sweep(passed + 1250);
    assert_eq!(m.lease(&id).reprobe.as_ref().unwrap().reprobe, 2);
    m.sweep(passed + 1369);
    assert!(m.lease(&id).end.is_none());
    m.sweep(passed + 1370);
    let lease = m.lease(&id);
    let end = lease.end.as_ref().expect("ended at the deadline");
    assert_eq!(
        (end.reason.as_str(), end.fault.as_str(), end.charged),
        ("ReprobeLapsed", "none", charged)
    );
    let refund = order_held(&m, &order).checked_sub(charged, "").unwrap();
    assert_eq!(end.refunded, refund);
    assert_eq!(
        m.available(&m.buyer()),
        buyer_before.checked_add(refund, "").unwrap()
    );
    assert!(m.state.stake_of(&m.provider()).unwrap().slashes.is_empty());
    let record: crate::node::records::OrderRecord =
        m.state.get(ORDERS, &order.order_id).unwrap().unwrap();
    assert!(
        record.reason.contains(&format!(
            "re-probe 2 issued at {} was not committed within 120 s",
            passed + 1250
        )),
        "{}",
        record.reason
    );
    // Its meter hears that the lease is closed; the operator stops the pod on that word.
    let (kind, _) = next_window(&mut m, &id, passed + 1400).unwrap();
    assert_eq!(kind, "LeaseClosed");
    m.state.audit().unwrap();
}

#[test]
fn a_reprobe_answered_from_wrong_products_ends_the_running_lease_and_slashes_to_the_buyer() {
    let (mut m, order) = dra_probed_lease();
    let id = order.lease_id.clone();
    let passed = START + 7;
    assert_eq!(next_window(&mut m, &id, passed + 300), None);
    let charged = m.lease(&id).charged;
    assert!(charged > Amount::ZERO);
    m.sweep(passed + 600);
    let reply = m.probe(passed + 610, &id, false);
    assert_eq!((reply.state.as_str(), reply.reprobe), ("failed", 1));
    let lease = m.lease(&id);
    let end = lease.end.as_ref().expect("ended");
    assert_eq!(
        (end.reason.as_str(), end.fault.as_str(), end.charged),
        ("ChallengeFailed", "provider", charged)
    );
    assert_eq!(
        end.refunded,
        order_held(&m, &order).checked_sub(charged, "").unwrap()
    );
    // The first probe passed, but the lease's GPUs no longer vouch for it.
    assert_eq!(lease.tier(), crate::attestation::TrustTier::SelfReported);
    let stake = m.state.stake_of(&m.provider()).unwrap();
    assert_eq!(stake.slashes.len(), 1);
    assert!(
        stake.slashes[0]
            .evidence
            .starts_with("GPU re-probe 1 failed: Freivalds: "),
        "{}",
        stake.slashes[0].evidence
    );
    m.state.audit().unwrap();
}

#[test]
fn a_request_is_refused_again_until_its_freshness_has_passed_twice_then_forgotten() {
    let mut m = Market::new(Params::default());
    let t = START;
    let body = |units: u128| DepositBody {
        header: None,
        amount: (units * UNIT).to_string(),
        denomination: "USDC".into(),
    };
    let first = Tx::Deposit(seal(&key(2, 0), body(1), t));
    m.apply(t, first.clone()).unwrap();
    let later = Tx::Deposit(seal(&key(2, 0), body(2), t + 50));
    m.apply(t + 50, later).unwrap();
    let replay = m.apply(t + 10, first.clone()).unwrap_err();
    assert!(replay.to_string().contains("replay"), "{replay}");
    let horizon = 2 * crate::wire::envelope::FRESHNESS_SECONDS;
    m.sweep(t + horizon);
    assert_eq!(m.state.keys(NONCES).len(), 2, "issued at the horizon: kept");
    m.sweep(t + horizon + 1);
    let kept = m.state.keys(NONCES);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0].starts_with(&format!("{:020}/", t + 50)), "{kept:?}");
    // Forgotten, the first is refused for its age, not taken again.
    let stale = m.apply(t + horizon + 1, first).unwrap_err();
    assert!(stale.to_string().contains("issued_at"), "{stale}");
}

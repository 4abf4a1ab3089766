//! Network node throughput: the pure matcher over a large offer book, a whole order through the
//! node's store (verify, match, hold, persist with fsync), and receipts — verified alone, and
//! verified, settled and persisted in batches as the collector forwards them. `make bench`
//! prints them all.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use gpubridge::attestation::TrustTier;
use gpubridge::identity::{generate_key, issue_lease_certificate};
use gpubridge::metering::{ChainHead, LeaseTerms, Step, WindowReport, check_next, seal_receipt};
use gpubridge::node::matching::{BookOffer, OrderTerms, best_offer};
use gpubridge::node::state::kv::Kv;
use gpubridge::node::state::{Block, Outcome, State, Tx};
use gpubridge::node::{Params, Store};
use gpubridge::probe::run::{CpuEngine, Move, ProbeRun};
use gpubridge::wire::amount::Amount;
use gpubridge::wire::envelope::seal;
use gpubridge::wire::proto::{
    Attribution, ChallengeBody, GpuUsage, OfferBody, OrderBody, ProbeBody, ReceiptsBody, Signed,
    Workload,
};
use prost::Message;

const UNIT: u128 = 1_000_000_000_000_000_000;

fn book(offers: usize) -> Vec<BookOffer> {
    (0..offers)
        .map(|i| BookOffer {
            resource: "nvidia.com/gpu".into(),
            offer_id: format!("provider-{i}/offer"),
            model: [
                "NVIDIA-H100-80GB-HBM3",
                "NVIDIA-A100-SXM4-80GB",
                "NVIDIA-L40S",
            ][i % 3]
                .into(),
            region: ["eu-west", "us-east"][i % 2].into(),
            attributes: vec![("egress".into(), "internet".into())],
            free_blocks: vec![8, 8, 4, 2, (i % 8) as u32],
            price: Amount::from_atto(UNIT + (i as u128 % 97) * UNIT / 100),
            denomination: "USDC".into(),
            min_duration_seconds: 60,
            max_duration_seconds: 86_400,
            max_gpus_per_lease: 8,
            allowed_registries: vec!["ghcr.io".into(), "nvcr.io".into()],
            published_seq: i as u64,
            provider: format!("provider-{i}"),
            bond_covers: None,
            uptime_basis_points: 10_000,
            trust_tier: TrustTier::SelfReported,
        })
        .collect()
}

fn terms() -> OrderTerms {
    OrderTerms {
        resource: "nvidia.com/gpu".into(),
        gpus: 4,
        model: "NVIDIA-H100-80GB-HBM3".into(),
        duration_seconds: 3600,
        max_price: Amount::from_atto(3 * UNIT),
        denomination: "USDC".into(),
        region: String::new(),
        attributes: vec![],
        image: "ghcr.io/acme/train:1".into(),
        provider: String::new(),
        min_uptime_basis_points: 0,
        min_trust_tier: TrustTier::SelfReported,
    }
}

fn order_body() -> OrderBody {
    OrderBody {
        header: None,
        resource_name: String::new(),
        provider: String::new(),
        min_uptime_basis_points: 0,
        wait_until: 0,
        min_trust_tier: String::new(),
        gpus: 1,
        model: String::new(),
        duration_seconds: 3600,
        max_price_per_gpu_hour: (3 * UNIT).to_string(),
        denomination: "USDC".into(),
        region: String::new(),
        attributes: vec![],
        workload: Some(Workload {
            image: "ghcr.io/acme/train:1".into(),
            command: vec![],
            args: vec![],
            env: vec![],
            cpu: "4".into(),
            memory: "16Gi".into(),
            ports: vec![],
        }),
    }
}

fn matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("matching");
    for offers in [100usize, 1_000, 10_000] {
        let book = book(offers);
        let order = terms();
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("best_offer/{offers}_offers"), |b| {
            b.iter(|| black_box(best_offer(black_box(&order), black_box(&book))))
        });
    }
    group.finish();
}

/// A fresh store in a temporary folder, and the time its requests are stamped with.
fn open_store(name: &str) -> (std::path::PathBuf, Store, i64) {
    let dir = std::env::temp_dir().join(format!("gpubridge-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The smallest probe: what these benchmarks time comes after it.
    let params = Params {
        probe_memory_mib: 1,
        ..Params::default()
    };
    let store = Store::open(&dir.join("network.redb"), generate_key(), params).unwrap();
    (dir, store, jiff::Timestamp::now().as_second())
}

/// Applies transactions through the embedded driver, as blocks at `now`.
fn through(store: &Store, now: i64) -> impl FnMut(Tx) + '_ {
    move |tx| drop(store.apply(&tx, now).unwrap())
}

/// A registered provider with one offer of 8 blocks of 1024 H100s, priced `i` atto above one
/// unit, made by `apply`.
fn provider_with_offer(apply: &mut dyn FnMut(Tx), i: usize, now: i64) -> ed25519_dalek::SigningKey {
    let provider = generate_key();
    let register = gpubridge::wire::proto::RegisterBody {
        header: None,
        name: format!("p{i}"),
        region: String::new(),
    };
    apply(Tx::Register(seal(&provider, register, now)));
    let offer = OfferBody {
        header: None,
        offer_name: "gpus".into(),
        model: "NVIDIA-H100-80GB-HBM3".into(),
        resource_name: "nvidia.com/gpu".into(),
        free_blocks: vec![1024; 8],
        price_per_gpu_hour: (UNIT + i as u128).to_string(),
        denomination: "USDC".into(),
        min_duration_seconds: 60,
        max_duration_seconds: 86_400,
        max_gpus_per_lease: 8,
        allowed_registries: vec!["ghcr.io".into()],
        region: String::new(),
        attributes: vec![],
        expires_at: now + 3000,
    };
    apply(Tx::PublishOffer(seal(&provider, offer, now)));
    provider
}

fn funded_buyer(apply: &mut dyn FnMut(Tx), amount: u128, now: i64) -> ed25519_dalek::SigningKey {
    let buyer = generate_key();
    let deposit = gpubridge::wire::proto::DepositBody {
        header: None,
        amount: amount.to_string(),
        denomination: "USDC".into(),
    };
    apply(Tx::Deposit(seal(&buyer, deposit, now)));
    buyer
}

/// One order end to end through the store: signature check, validation, matching against 100
/// offers, escrow hold, lease signing, and a durable commit.
fn store_submit(c: &mut Criterion) {
    let (dir, store, now) = open_store("orders");
    for i in 0..100 {
        provider_with_offer(&mut through(&store, now), i, now);
    }
    let buyer = funded_buyer(&mut through(&store, now), u64::MAX as u128 * UNIT, now);
    let mut group = c.benchmark_group("network_node");
    group.throughput(Throughput::Elements(1));
    group.sample_size(30);
    group.bench_function("submit_order/100_offers_fsync", |b| {
        b.iter(|| {
            let signed = seal(&buyer, order_body(), now);
            let submitted = store.submit_order(&signed, now).unwrap();
            black_box(submitted.order.order_id)
        })
    });
    group.finish();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One order through the pure state machine, as a validator applies it in a block: the same
/// work as `submit_order` without the disk.
fn state_apply(c: &mut Criterion) {
    let now = jiff::Timestamp::now().as_second();
    let state = std::cell::RefCell::new(State::genesis(Params::default()).unwrap());
    let block = Block {
        height: 1,
        time: now,
        entropy: [0; 32],
    };
    let mut apply = |tx: Tx| drop(state.borrow_mut().apply(&tx, &block).unwrap());
    for i in 0..100 {
        provider_with_offer(&mut apply, i, now);
    }
    let buyer = funded_buyer(&mut apply, u64::MAX as u128 * UNIT, now);
    let mut group = c.benchmark_group("state_machine");
    group.throughput(Throughput::Elements(1));
    group.bench_function("apply_order/100_offers", |b| {
        b.iter_batched(
            || Tx::SubmitOrder(seal(&buyer, order_body(), now)),
            |tx| black_box(state.borrow_mut().apply(&tx, &block).unwrap()),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// The state hash a block ends with, over 200,000 entries (the state of about 40,000 orders)
/// after the block changed 1,000 of them, beside the same entries hashed from scratch: what
/// every block paid before the hash was kept by chunks.
fn state_hash(c: &mut Criterion) {
    const ENTRIES: u64 = 200_000;
    let entries = || (0..ENTRIES).map(|i| (format!("leases/{i:020}"), vec![7u8; 200]));
    let mut group = c.benchmark_group("state_hash");
    group.sample_size(10);
    let kv = std::cell::RefCell::new(Kv::restore(entries()));
    kv.borrow().hash();
    let mut block = 0u64;
    group.bench_function("200k_entries/after_a_block_changed_1000", |b| {
        b.iter_batched(
            || {
                block += 1;
                let mut kv = kv.borrow_mut();
                for i in 0..1000 {
                    let key = format!("leases/{:020}", (i * 197 + block) % ENTRIES);
                    kv.put(&key, block.to_be_bytes().to_vec());
                }
                kv.settle();
            },
            |()| black_box(kv.borrow().hash()),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("200k_entries/from_scratch", |b| {
        b.iter_batched(
            || Kv::restore(entries()),
            |fresh| black_box(fresh.hash()),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn usage() -> Vec<GpuUsage> {
    vec![GpuUsage {
        uuid: "GPU-00000000-0000-0000-0000-000000000000".into(),
        utilization_percent: 87,
        memory_high_water_bytes: 70 << 30,
        energy_millijoules: 7_000_000,
    }]
}

/// One receipt checked against its chain head: signature, decoding, every chain rule.
fn receipt_verification(c: &mut Criterion) {
    let key = generate_key();
    let start = jiff::Timestamp::now().as_millisecond();
    let (first, head) = seal_receipt(
        &key,
        "lease-1",
        1,
        &ChainHead::default(),
        start,
        WindowReport {
            window_end_ms: start + 10,
            gpus: usage(),
            attribution: Attribution::Measured,
            ..WindowReport::default()
        },
    );
    let (second, _) = seal_receipt(
        &key,
        "lease-1",
        1,
        &head,
        start,
        WindowReport {
            window_end_ms: start + 20,
            gpus: usage(),
            attribution: Attribution::Measured,
            ..WindowReport::default()
        },
    );
    let terms = LeaseTerms {
        lease_id: "lease-1".into(),
        gpus: 1,
        lease_key: key.verifying_key(),
        metering_from_ms: Some(start),
        metering_until_ms: None,
    };
    assert!(matches!(
        check_next(&terms, &ChainHead::default(), &first, start),
        Ok(Step::Next { .. })
    ));
    let mut group = c.benchmark_group("receipts");
    group.throughput(Throughput::Elements(1));
    group.bench_function("verify_one", |b| {
        b.iter(|| black_box(check_next(&terms, &head, black_box(&second), start).is_ok()))
    });
    group.finish();
}

/// Batches of 64 receipts through the store: provider envelope, certificate, every receipt's
/// signature and chain link, a ledger posting per receipt, one durable commit per batch.
fn store_receipts(c: &mut Criterion) {
    const BATCH: usize = 64;
    let (dir, store, now) = open_store("receipts");
    let provider = provider_with_offer(&mut through(&store, now), 0, now);
    let buyer = funded_buyer(&mut through(&store, now), 1_000_000 * UNIT, now);
    let order = OrderBody {
        duration_seconds: 86_400,
        ..order_body()
    };
    let placed = store.submit_order(&seal(&buyer, order, now), now).unwrap();
    let lease_id = placed.order.lease_id;
    let decision = gpubridge::wire::proto::LeaseDecisionBody {
        header: None,
        lease_id: lease_id.clone(),
        accept: true,
        reason: String::new(),
    };
    store
        .apply(&Tx::DecideLease(seal(&provider, decision, now)), now)
        .unwrap();
    let lease_key = generate_key();
    let certificate = issue_lease_certificate(
        &provider,
        &lease_id,
        &lease_key.verifying_key(),
        now + 86_400,
    )
    .encode_to_vec();
    // The lease's GPU probe passes first: metering starts there.
    let challenge = ChallengeBody {
        header: None,
        lease_id: lease_id.clone(),
    };
    let mut reply = store
        .lease_challenge(&seal(&provider, challenge, now), now)
        .unwrap()
        .probe
        .unwrap();
    let mut run = ProbeRun::new(CpuEngine::default());
    while let Move::Send(step) = run.next(&reply) {
        let body = ProbeBody {
            header: None,
            lease_id: lease_id.clone(),
            certificate: certificate.clone(),
            step: Some(step),
        };
        match store.apply(&Tx::SubmitProbe(seal(&provider, body, now)), now) {
            Ok(Outcome::Probe(next)) => reply = next,
            other => panic!("a probe step was answered {other:?}"),
        }
    }
    assert_eq!(reply.state, "passed", "{}", reply.detail);
    // Each batch continues the chain with fresh receipts of 10 ms windows, sealed outside the
    // timing; the store's clock moves along so no window ends in its future.
    let mut head = ChainHead::default();
    let start_ms = now * 1000;
    let mut next_batch = || {
        let receipts: Vec<Signed> = (0..BATCH)
            .map(|_| {
                let end = head.window_end_ms.unwrap_or(start_ms) + 10;
                let (signed, next) = seal_receipt(
                    &lease_key,
                    &lease_id,
                    1,
                    &head,
                    start_ms,
                    WindowReport {
                        window_end_ms: end,
                        gpus: usage(),
                        attribution: Attribution::Measured,
                        ..WindowReport::default()
                    },
                );
                head = next;
                signed
            })
            .collect();
        let at = head.window_end_ms.unwrap() / 1000;
        let body = ReceiptsBody {
            header: None,
            lease_id: lease_id.clone(),
            certificate: certificate.clone(),
            receipts,
        };
        (seal(&provider, body, at), at)
    };
    let mut group = c.benchmark_group("network_node");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.bench_function("submit_receipts/batch_64_fsync", |b| {
        b.iter_batched(
            &mut next_batch,
            |(signed, at)| {
                let reply = store.submit_receipts(&signed, at).unwrap();
                assert!(reply.rejection.is_none(), "{:?}", reply.rejection);
                black_box(reply.accepted_through)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(
    benches,
    matching,
    store_submit,
    state_apply,
    state_hash,
    receipt_verification,
    store_receipts
);
criterion_main!(benches);

//! Network matching throughput: the pure matcher over a large offer book, and a whole order
//! through the node's store (verify, match, hold, persist with fsync). `make bench` prints both.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gpubridge::hub::matching::{BookOffer, OrderTerms, best_offer};
use gpubridge::hub::{HubSettings, Store};
use gpubridge::identity::generate_key;
use gpubridge::network::domain;
use gpubridge::network::envelope::seal;
use gpubridge::network::proto::{OfferBody, OrderBody, Workload};

const UNIT: u128 = 1_000_000_000_000_000_000;

fn book(offers: usize) -> Vec<BookOffer> {
    (0..offers)
        .map(|i| BookOffer {
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
            price: UNIT + (i as u128 % 97) * UNIT / 100,
            denomination: "USDC".into(),
            min_duration_seconds: 60,
            max_duration_seconds: 86_400,
            max_gpus_per_lease: 8,
            allowed_registries: vec!["ghcr.io".into(), "nvcr.io".into()],
            published_seq: i as u64,
        })
        .collect()
}

fn terms() -> OrderTerms {
    OrderTerms {
        gpus: 4,
        model: "NVIDIA-H100-80GB-HBM3".into(),
        duration_seconds: 3600,
        max_price: 3 * UNIT,
        denomination: "USDC".into(),
        region: String::new(),
        attributes: vec![],
        image: "ghcr.io/acme/train:1".into(),
    }
}

fn order_body() -> OrderBody {
    OrderBody {
        header: None,
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

/// One order end to end through the store: signature check, validation, matching against 100
/// offers, escrow hold, lease signing, and a durable commit.
fn store_submit(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("gpubridge-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(
        &dir.join("network.redb"),
        generate_key(),
        HubSettings::default(),
    )
    .unwrap();
    let now = jiff::Timestamp::now().as_second();
    for i in 0..100 {
        let provider = generate_key();
        let register = gpubridge::network::proto::RegisterBody {
            header: None,
            name: format!("p{i}"),
            region: String::new(),
        };
        store
            .register(&seal(&provider, domain::REGISTER, register, now), now)
            .unwrap();
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
        store
            .publish(&seal(&provider, domain::OFFER, offer, now), now)
            .unwrap();
    }
    let buyer = generate_key();
    let deposit = gpubridge::network::proto::DepositBody {
        header: None,
        amount: (u64::MAX as u128 * UNIT).to_string(),
        denomination: "USDC".into(),
    };
    store
        .deposit(&seal(&buyer, domain::DEPOSIT, deposit, now), now)
        .unwrap();
    let mut group = c.benchmark_group("network_node");
    group.throughput(Throughput::Elements(1));
    group.sample_size(30);
    group.bench_function("submit_order/100_offers_fsync", |b| {
        b.iter(|| {
            let signed = seal(&buyer, domain::ORDER, order_body(), now);
            let submitted = store.submit_order(&signed, now).unwrap();
            black_box(submitted.order.order_id)
        })
    });
    group.finish();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, matching, store_submit);
criterion_main!(benches);

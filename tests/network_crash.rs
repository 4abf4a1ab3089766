//! `kill -9` of the network node in the middle of traffic loses no acknowledged order, lease or
//! ledger entry: after each kill the database is opened and compared with every reply the
//! clients received, the books are audited, and the node is started again on the same files.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::timeout;

use gpubridge::identity::{generate_key, keyfile, public_key_base58};
use gpubridge::node::{Params, Store};
use gpubridge::wire::amount::Amount;
use gpubridge::wire::proto::{OrderState, lease_event};
use rand_core::{OsRng, RngCore};
use support::network::{UNIT, client, free_port, offer, order, spawn_node};

const BUYERS: usize = 4;
const ROUNDS: usize = 3;
/// A call not answered within this is one the kill cut off: counted as unanswered, so that a
/// connection the kill left hanging cannot hang the test.
const UNANSWERED: Duration = Duration::from_secs(10);

/// What the clients were told: order id → state in the reply; deposits acknowledged per buyer,
/// and deposits whose reply never came (the kill), which may or may not have committed.
#[derive(Default)]
struct Acknowledged {
    orders: BTreeMap<String, OrderState>,
    deposits: BTreeMap<String, u128>,
    unanswered_deposits: BTreeMap<String, u128>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_traffic_loses_no_acknowledged_order_lease_or_entry() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let provider = generate_key();
    let buyers: Vec<_> = (0..BUYERS).map(|_| generate_key()).collect();
    let acked = Arc::new(Mutex::new(Acknowledged::default()));

    for round in 0..ROUNDS {
        let mut node = spawn_node(dir.path(), port, &[]);
        let p = client(&url, provider.clone()).await;
        p.register("acme", "").await.unwrap();
        p.publish(offer("h100", &[64; 64])).await.unwrap();
        // The provider accepts every lease it is sent, until the node dies.
        let accepting = {
            let p = p.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = p.leases().await else {
                    return;
                };
                while let Ok(Some(event)) = stream.message().await {
                    if let Some(lease_event::Event::Lease(signed)) = event.event {
                        let lease: gpubridge::wire::proto::LeaseBody =
                            prost::Message::decode(signed.body.as_slice()).unwrap();
                        if p.decide(&lease.lease_id, true, "").await.is_err() {
                            return;
                        }
                    }
                }
            })
        };
        let mut traffic = Vec::new();
        for buyer in &buyers {
            let (c, acked) = (client(&url, buyer.clone()).await, acked.clone());
            let who = public_key_base58(&buyer.verifying_key());
            traffic.push(tokio::spawn(async move {
                loop {
                    let deposit = c.deposit(Amount::from_atto(10 * UNIT), "USDC");
                    if !matches!(timeout(UNANSWERED, deposit).await, Ok(Ok(_))) {
                        *acked
                            .lock()
                            .unwrap()
                            .unanswered_deposits
                            .entry(who.clone())
                            .or_default() += 10 * UNIT;
                        return;
                    }
                    *acked
                        .lock()
                        .unwrap()
                        .deposits
                        .entry(who.clone())
                        .or_default() += 10 * UNIT;
                    match timeout(UNANSWERED, c.submit(order(1))).await {
                        Ok(Ok(view)) => {
                            let state = view.state();
                            acked.lock().unwrap().orders.insert(view.order_id, state);
                        }
                        _ => return,
                    }
                }
            }));
        }
        let run_for = 400 + u64::from(OsRng.next_u32() % 1200);
        tokio::time::sleep(Duration::from_millis(run_for)).await;
        node.kill(); // SIGKILL
        for task in traffic {
            task.await.unwrap();
        }
        accepting.abort();

        // The node is dead: read its database directly and compare with every reply.
        let key = keyfile::load(&dir.path().join("network.key")).unwrap();
        let store = Store::open(&dir.path().join("network.redb"), key, Params::default())
            .expect("the database opens after kill -9");
        let stored: BTreeMap<String, OrderState> = store
            .orders()
            .unwrap()
            .into_iter()
            .map(|o| (o.order_id.clone(), o.state()))
            .collect();
        let leases: BTreeMap<String, _> = store
            .leases()
            .unwrap()
            .into_iter()
            .map(|l| (l.order_id.clone(), l))
            .collect();
        let acked_now = acked.lock().unwrap();
        assert!(
            !acked_now.orders.is_empty(),
            "round {round}: traffic flowed"
        );
        for (order_id, told) in &acked_now.orders {
            let now = stored
                .get(order_id)
                .unwrap_or_else(|| panic!("round {round}: acknowledged order {order_id} was lost"));
            match told {
                OrderState::Matched | OrderState::Leased => {
                    assert!(
                        matches!(now, OrderState::Matched | OrderState::Leased),
                        "round {round}: order {order_id} was {told:?}, is {now:?}"
                    );
                    assert!(
                        leases.contains_key(order_id),
                        "round {round}: lease of {order_id} lost"
                    );
                }
                other => assert_eq!(now, other, "round {round}: order {order_id}"),
            }
        }
        for buyer in &buyers {
            let who = public_key_base58(&buyer.verifying_key());
            let balance = store.balances_of(&who).unwrap();
            let total: u128 = balance
                .balances
                .iter()
                .map(|b| b.available.parse::<u128>().unwrap() + b.held.parse::<u128>().unwrap())
                .sum();
            let told = acked_now.deposits.get(&who).copied().unwrap_or(0);
            let unanswered = acked_now
                .unanswered_deposits
                .get(&who)
                .copied()
                .unwrap_or(0);
            // Every acknowledged deposit is there; at most those in flight at a kill are more.
            assert!(
                total >= told && total <= told + unanswered,
                "round {round}: buyer {who} was told {told} deposited, the books hold {total}"
            );
        }
        let audit = store
            .audit()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        println!(
            "round {round}: killed after {run_for} ms; {} orders acknowledged, {} stored, {} postings, books balance",
            acked_now.orders.len(),
            audit.orders,
            audit.postings
        );
    }
}

//! The network node over gRPC: a lease from order to settlement, matching and escrow, and a
//! corpus of forged, malformed, replayed, expired, oversized and out-of-terms messages, each
//! refused with its reason while nothing is created and the node keeps serving.

mod support;

use ed25519_dalek::SigningKey;
use gpubridge::identity::{generate_key, issue_lease_certificate, public_key_base58};
use gpubridge::metering::{ChainHead, WindowReport, seal_receipt};
use gpubridge::operator::intake::verify_lease;
use gpubridge::sidecar::probe::Which;
use gpubridge::wire::amount::Amount;
use gpubridge::wire::envelope::{header, seal, sign_body};
use gpubridge::wire::proto::Attribution;
use gpubridge::wire::proto::{
    CancelBody, DepositBody, GpuOcsp, HeartbeatBody, InfoRequest, LeaseDecisionBody, LeaseEndBody,
    OrderBody, OrderState, QueryBody, RegisterBody, Signed, lease_event,
};
use gpubridge::wire::{Signable, envelope::verifying_key};
use prost::Message;
use support::network::{Node, UNIT, now, offer, order, pass_probe, run_probe};
use tonic::Code;

/// A lease's meter as the tests play it: the lease key, the provider's certificate for it, and
/// receipts built exactly as the meter sidecar builds them.
struct Meter {
    key: SigningKey,
    certificate: Vec<u8>,
    lease_id: String,
    gpus: u32,
    start_ms: i64,
}

impl Meter {
    fn new(provider: &SigningKey, lease_id: &str, gpus: u32) -> Meter {
        let key = generate_key();
        let certificate =
            issue_lease_certificate(provider, lease_id, &key.verifying_key(), now() + 3600)
                .encode_to_vec();
        Meter {
            key,
            certificate,
            lease_id: lease_id.into(),
            gpus,
            start_ms: now() * 1000,
        }
    }

    /// A meter for an accepted lease whose GPU probe it passed first, as the pod's probe does
    /// before the meter starts; its first window starts after the pass.
    async fn probed(
        provider_key: &SigningKey,
        provider: &gpubridge::wire::client::NetworkClient,
        lease_id: &str,
        gpus: u32,
    ) -> Meter {
        let mut meter = Meter::new(provider_key, lease_id, gpus);
        let reply = pass_probe(provider, lease_id, meter.certificate()).await;
        assert_eq!(reply.state, "passed", "{}", reply.detail);
        meter.start_ms = now() * 1000;
        meter
    }

    fn certificate(&self) -> Vec<u8> {
        self.certificate.clone()
    }

    /// Consecutive allocation-only receipts with windows of these lengths.
    fn receipts(&self, lengths_ms: &[i64]) -> Vec<Signed> {
        let mut head = ChainHead::default();
        let mut end = self.start_ms;
        lengths_ms
            .iter()
            .map(|ms| {
                end += ms;
                let (signed, next) = seal_receipt(
                    &self.key,
                    &self.lease_id,
                    self.gpus,
                    &head,
                    self.start_ms,
                    WindowReport {
                        window_end_ms: end,
                        attribution: Attribution::AllocationOnly,
                        ..WindowReport::default()
                    },
                );
                head = next;
                signed
            })
            .collect()
    }
}

struct World {
    node: Node,
    provider: SigningKey,
    buyer: SigningKey,
}

/// A node with one provider (offer "h100", blocks 8 and 4) and a buyer holding 100 USDC.
/// Providers have 10 s to answer a lease and 30 s between heartbeats.
async fn world() -> World {
    let node = Node::start_with(gpubridge::node::Params {
        answer_seconds: 10,
        ..support::network::params()
    })
    .await;
    let provider = generate_key();
    let buyer = generate_key();
    let p = node.client(provider.clone());
    p.register("acme", "eu-west").await.unwrap();
    p.publish(offer("h100", &[8, 4])).await.unwrap();
    node.client(buyer.clone())
        .deposit(Amount::from_atto(100 * UNIT), "USDC")
        .await
        .unwrap();
    World {
        node,
        provider,
        buyer,
    }
}

fn available(reply: &gpubridge::wire::proto::BalanceReply, field: &str) -> u128 {
    let b = &reply.balances[0];
    let text = match field {
        "available" => &b.available,
        "held" => &b.held,
        _ => &b.earned,
    };
    text.parse().unwrap()
}

#[tokio::test]
async fn an_order_is_matched_leased_and_settled_exactly() {
    let w = world().await;
    let provider = w.node.client(w.provider.clone());
    let buyer = w.node.client(w.buyer.clone());
    let mut stream = provider.leases().await.unwrap();

    let placed = buyer.submit(order(4)).await.unwrap();
    assert_eq!(placed.state(), OrderState::Matched, "{}", placed.reason);
    // 4 GPUs × 1 h × 2.5 = 10 USDC held.
    assert_eq!(placed.held, (10 * UNIT).to_string());
    assert_eq!(placed.price_per_gpu_hour, (5 * UNIT / 2).to_string());
    let balance = buyer.balance().await.unwrap();
    assert_eq!(available(&balance, "available"), 90 * UNIT);
    assert_eq!(available(&balance, "held"), 10 * UNIT);

    // The provider gets the lease, signed by the network, and verifies it.
    let event = stream.message().await.unwrap().unwrap();
    let Some(lease_event::Event::Lease(signed)) = event.event else {
        panic!("expected a lease");
    };
    let network_key = verifying_key("k", &provider.info().await.unwrap().network_key).unwrap();
    let lease = verify_lease(&signed, &network_key, &w.provider.verifying_key(), now()).unwrap();
    assert_eq!(lease.lease.lease_id, placed.lease_id);
    assert_eq!(lease.buyer, w.buyer.verifying_key());
    provider.decide(&placed.lease_id, true, "").await.unwrap();
    // Answering twice is idempotent.
    provider.decide(&placed.lease_id, true, "").await.unwrap();
    assert_eq!(
        buyer.order_status(&placed.order_id).await.unwrap().state(),
        OrderState::Leased
    );
    // The block of 4 was taken (best fit), so an order for 8 still fits and another 4 does not
    // fit twice.
    let offers = buyer.list_offers().await.unwrap();
    assert_eq!((offers[0].available_gpus, offers[0].largest_block), (8, 8));

    // Three receipts of odd lengths: the charge is the cumulative GPU time at the price,
    // rounded down once, not a sum of per-receipt roundings.
    let meter = Meter::probed(&w.provider, &provider, &placed.lease_id, 4).await;
    let receipts = meter.receipts(&[13_334, 13_335, 13_337]);
    let price = 5 * UNIT / 2;
    let total_ms: u128 = 4 * (13_334 + 13_335 + 13_337);
    let expected = price * total_ms / 3_600_000;
    let rounded_each: u128 = [13_334u128, 13_335, 13_337]
        .iter()
        .map(|ms| price * 4 * ms / 3_600_000)
        .sum();
    assert_ne!(
        expected, rounded_each,
        "the lengths make the two roundings differ"
    );
    let first = provider
        .submit_receipts(
            &placed.lease_id,
            meter.certificate(),
            receipts[..2].to_vec(),
        )
        .await
        .unwrap();
    assert_eq!((first.accepted_through, first.rejection), (2, None));
    // Resent whole (an acknowledgement was lost): the first two are not paid again.
    let all = provider
        .submit_receipts(&placed.lease_id, meter.certificate(), receipts.clone())
        .await
        .unwrap();
    assert_eq!((all.accepted_through, &all.rejection), (3, &None));
    assert_eq!(all.charged, expected.to_string());
    assert_eq!(all.allocated_gpu_millis as u128, total_ms);
    assert_eq!(
        buyer.order_status(&placed.order_id).await.unwrap().charged,
        expected.to_string(),
        "the buyer sees each receipt's charge at once"
    );

    // The end refunds the rest of the hold; the reported GPU-seconds pay nothing.
    let end = LeaseEndBody {
        header: None,
        lease_id: placed.lease_id.clone(),
        phase: "Succeeded".into(),
        reason: "Completed".into(),
        fault: "none".into(),
        started_at: now() - 1800,
        ended_at: now(),
        gpu_seconds: 4 * 1800,
    };
    let settled = provider.report_end(end.clone()).await.unwrap();
    assert_eq!(settled.charged, expected.to_string());
    assert_eq!(settled.refunded, (10 * UNIT - expected).to_string());
    // Reported again (a provider retrying after a lost reply): same answer, nothing moves.
    let again = provider.report_end(end).await.unwrap();
    assert_eq!(again, settled);
    // Receipts after the end are refused, and pay nothing.
    let late = provider
        .submit_receipts(
            &placed.lease_id,
            meter.certificate(),
            meter.receipts(&[13_334, 13_335, 13_337, 1_000]),
        )
        .await
        .unwrap();
    assert_eq!(late.accepted_through, 3);
    assert_eq!(late.rejection.unwrap().kind, "LeaseClosed");
    let balance = buyer.balance().await.unwrap();
    assert_eq!(available(&balance, "available"), 100 * UNIT - expected);
    assert_eq!(available(&balance, "held"), 0);
    let earned = provider.balance().await.unwrap();
    assert_eq!(available(&earned, "earned"), expected);
    let ended = buyer.order_status(&placed.order_id).await.unwrap();
    assert_eq!(ended.state(), OrderState::Ended);
    assert!(ended.reason.contains("Succeeded"), "{}", ended.reason);
    // The GPUs are for sale again.
    let offers = buyer.list_offers().await.unwrap();
    assert_eq!(offers[0].available_gpus, 12);
    let audit = w.node.store.audit().unwrap();
    assert_eq!(
        audit.postings, 6,
        "deposit, hold, three receipt charges, refund"
    );
}

#[tokio::test]
async fn rejection_lapse_cancel_and_silence_refund_and_free_the_gpus() {
    let w = world().await;
    let provider = w.node.client(w.provider.clone());
    let buyer = w.node.client(w.buyer.clone());

    let rejected = buyer.submit(order(8)).await.unwrap();
    provider
        .decide(&rejected.lease_id, false, "maintenance window")
        .await
        .unwrap();
    let view = buyer.order_status(&rejected.order_id).await.unwrap();
    assert_eq!(view.state(), OrderState::Rejected);
    assert!(
        view.reason.contains("maintenance window"),
        "{}",
        view.reason
    );
    assert_eq!(view.refunded, view.held);

    let cancelled = buyer.submit(order(8)).await.unwrap();
    let view = buyer.cancel(&cancelled.order_id).await.unwrap();
    assert_eq!(view.state(), OrderState::Cancelled);
    // The provider answers too late: refused, with the reason.
    let late = provider
        .decide(&cancelled.lease_id, true, "")
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert!(late.message().contains("cancelled"), "{}", late.message());

    let unanswered = buyer.submit(order(8)).await.unwrap();
    let (lapsed, _) = w.node.store.sweep(now() + 11).unwrap();
    assert_eq!(lapsed, vec![unanswered.lease_id.clone()]);
    let view = buyer.order_status(&unanswered.order_id).await.unwrap();
    assert_eq!(view.state(), OrderState::Rejected);
    assert!(view.reason.contains("did not answer"), "{}", view.reason);

    let balance = buyer.balance().await.unwrap();
    assert_eq!(available(&balance, "available"), 100 * UNIT);
    assert_eq!(available(&balance, "held"), 0);
    // Every GPU is for sale again.
    assert_eq!(buyer.list_offers().await.unwrap()[0].available_gpus, 12);

    // A provider that stops heartbeating loses its offers.
    w.node.store.sweep(now() + 31).unwrap();
    assert!(buyer.list_offers().await.unwrap().is_empty());
    let view = buyer.submit(order(1)).await.unwrap();
    assert_eq!(view.state(), OrderState::Rejected);
    assert_eq!(view.reason, "no offer matches: the offer book is empty");
    w.node.store.audit().unwrap();
}

#[tokio::test]
async fn matching_takes_constraints_then_price_then_time() {
    let node = Node::start().await;
    let (cheap, dear, late) = (generate_key(), generate_key(), generate_key());
    for (key, name, price, blocks) in [
        (&dear, "dear", 28 * UNIT / 10, vec![8]),
        (&cheap, "cheap", 2 * UNIT, vec![2]),
        (&late, "late", 28 * UNIT / 10, vec![8]),
    ] {
        let c = node.client(key.clone());
        c.register(name, "").await.unwrap();
        let mut body = offer(name, &blocks);
        body.price_per_gpu_hour = price.to_string();
        c.publish(body).await.unwrap();
    }
    let buyer_key = generate_key();
    let buyer = node.client(buyer_key);
    buyer
        .deposit(Amount::from_atto(1000 * UNIT), "USDC")
        .await
        .unwrap();
    // Fits the cheap offer: cheapest wins.
    let small = buyer.submit(order(2)).await.unwrap();
    assert!(small.offer_id.ends_with("/cheap"), "{}", small.offer_id);
    // Does not fit the cheap offer any more: of two equal prices, the earlier published wins.
    let big = buyer.submit(order(4)).await.unwrap();
    assert!(big.offer_id.ends_with("/dear"), "{}", big.offer_id);
    // Over every offer's maximum price: rejected, with why per offer.
    let mut stingy = order(1);
    stingy.max_price_per_gpu_hour = UNIT.to_string();
    let view = buyer.submit(stingy).await.unwrap();
    assert_eq!(view.state(), OrderState::Rejected);
    assert_eq!(
        view.reason,
        "no offer matches: of 3 offers, 1 has no node with that many free GPUs (the most free on \
         one node: 0) and 2 cost more than the order's maximum price (the cheapest asks 2.8 USDC \
         per GPU-hour)"
    );
}

/// One hand-made request to one call.
enum Call {
    Register(Signed),
    Publish(Signed),
    Heartbeat(Signed),
    Decide(Signed),
    End(Signed),
    Deposit(Signed),
    Submit(Signed),
    Cancel(Signed),
    Status(Signed),
}

struct Case {
    name: &'static str,
    call: Call,
    code: Code,
    says: &'static str,
}

async fn send(node: &Node, call: Call) -> Result<(), tonic::Status> {
    let mut raw = node.raw();
    match call {
        Call::Register(s) => raw.register(s).await.map(drop),
        Call::Publish(s) => raw.publish_offer(s).await.map(drop),
        Call::Heartbeat(s) => raw.heartbeat(s).await.map(drop),
        Call::Decide(s) => raw.decide_lease(s).await.map(drop),
        Call::End(s) => raw.report_lease_end(s).await.map(drop),
        Call::Deposit(s) => raw.deposit(s).await.map(drop),
        Call::Submit(s) => raw.submit_order(s).await.map(drop),
        Call::Cancel(s) => raw.cancel_order(s).await.map(drop),
        Call::Status(s) => raw.order_status(s).await.map(drop),
    }
}

fn order_with(edit: impl FnOnce(&mut OrderBody)) -> OrderBody {
    let mut body = order(2);
    edit(&mut body);
    body
}

fn signed_order(key: &SigningKey, edit: impl FnOnce(&mut OrderBody)) -> Signed {
    seal(key, order_with(edit), now())
}

#[tokio::test]
async fn bad_input_is_refused_with_its_reason_and_changes_nothing() {
    let w = world().await;
    let (buyer, provider) = (&w.buyer, &w.provider);
    let stranger = generate_key();
    let buyer_client = w.node.client(buyer.clone());
    // One lease in the book, offered to the provider and not answered, for the lease cases.
    let pending = buyer_client.submit(order(1)).await.unwrap();
    assert_eq!(pending.state(), OrderState::Matched);
    let lease_id = pending.lease_id.clone();
    let end = |edit: &dyn Fn(&mut LeaseEndBody)| {
        let mut body = LeaseEndBody {
            header: None,
            lease_id: lease_id.clone(),
            phase: "Succeeded".into(),
            reason: "Completed".into(),
            fault: "none".into(),
            started_at: now() - 10,
            ended_at: now(),
            gpu_seconds: 10,
        };
        edit(&mut body);
        seal(provider, body, now())
    };
    let replayed_heartbeat = seal(provider, HeartbeatBody::default(), now());
    send(&w.node, Call::Heartbeat(replayed_heartbeat.clone()))
        .await
        .unwrap();
    let replayed_order = signed_order(buyer, |_| {});
    send(&w.node, Call::Submit(replayed_order.clone()))
        .await
        .unwrap();
    let replayed_deposit = seal(
        buyer,
        DepositBody {
            header: None,
            amount: UNIT.to_string(),
            denomination: "USDC".into(),
        },
        now(),
    );
    send(&w.node, Call::Deposit(replayed_deposit.clone()))
        .await
        .unwrap();

    let good = signed_order(buyer, |_| {});
    let mut flipped = good.clone();
    let last = flipped.body.len() - 1;
    flipped.body[last] ^= 0x01;
    let mut short_sig = good.clone();
    short_sig.signature.truncate(63);
    let forged = Signed {
        body: good.body.clone(),
        signature: sign_body(&stranger, &order(2)).signature,
    };
    let mut other_domain = good.clone();
    other_domain.signature = gpubridge::identity::sign(buyer, DepositBody::DOMAIN, &good.body)
        .to_bytes()
        .to_vec();
    let stale = {
        let mut body = order(2);
        body.header = Some(header(buyer, now() - 600));
        sign_body(buyer, &body)
    };
    let future = {
        let mut body = order(2);
        body.header = Some(header(buyer, now() + 600));
        sign_body(buyer, &body)
    };
    let headerless = sign_body(buyer, &order(2));
    let short_signer = {
        let mut body = order(2);
        let mut h = header(buyer, now());
        h.signer.truncate(31);
        body.header = Some(h);
        sign_body(buyer, &body)
    };
    let short_nonce = {
        let mut body = order(2);
        let mut h = header(buyer, now());
        h.nonce.truncate(4);
        body.header = Some(h);
        sign_body(buyer, &body)
    };
    let huge_env = signed_order(buyer, |o| {
        let w = o.workload.as_mut().unwrap();
        w.env = (0..3)
            .map(|i| gpubridge::wire::proto::EnvVar {
                name: format!("V{i}"),
                value: "x".repeat(30_000),
            })
            .collect();
    });
    let over_grpc_limit = Signed {
        body: vec![0; 300 * 1024],
        signature: vec![0; 64],
    };
    let garbage = Signed {
        body: vec![0xff; 40],
        signature: good.signature.clone(),
    };
    let deposit = |amount: &str| {
        seal(
            buyer,
            DepositBody {
                header: None,
                amount: amount.into(),
                denomination: "USDC".into(),
            },
            now(),
        )
    };
    let decide = |key: &SigningKey, id: &str, accept: bool, reason: &str| {
        seal(
            key,
            LeaseDecisionBody {
                header: None,
                lease_id: id.into(),
                accept,
                reason: reason.into(),
            },
            now(),
        )
    };
    let publish = |key: &SigningKey, edit: &dyn Fn(&mut gpubridge::wire::proto::OfferBody)| {
        let mut body = offer("h100", &[8, 4]);
        edit(&mut body);
        seal(key, body, now())
    };
    let cancel = |key: &SigningKey, id: &str| {
        seal(
            key,
            CancelBody {
                header: None,
                order_id: id.into(),
            },
            now(),
        )
    };

    let cases = vec![
        Case {
            name: "forged signature",
            call: Call::Submit(forged),
            code: Code::Unauthenticated,
            says: "signature",
        },
        Case {
            name: "signature from another domain",
            call: Call::Submit(other_domain),
            code: Code::Unauthenticated,
            says: "domain gpubridge/v1/order",
        },
        Case {
            name: "body changed after signing",
            call: Call::Submit(flipped),
            code: Code::Unauthenticated,
            says: "signature",
        },
        Case {
            name: "signature of 63 bytes",
            call: Call::Submit(short_sig),
            code: Code::InvalidArgument,
            says: "signature: must be 64 bytes",
        },
        Case {
            name: "replayed order",
            call: Call::Submit(replayed_order),
            code: Code::AlreadyExists,
            says: "replay",
        },
        Case {
            name: "replayed heartbeat",
            call: Call::Heartbeat(replayed_heartbeat),
            code: Code::AlreadyExists,
            says: "replay",
        },
        Case {
            name: "replayed deposit",
            call: Call::Deposit(replayed_deposit),
            code: Code::AlreadyExists,
            says: "replay",
        },
        Case {
            name: "issued 10 minutes ago",
            call: Call::Submit(stale),
            code: Code::FailedPrecondition,
            says: "header.issued_at",
        },
        Case {
            name: "issued 10 minutes ahead",
            call: Call::Submit(future),
            code: Code::FailedPrecondition,
            says: "header.issued_at",
        },
        Case {
            name: "no header",
            call: Call::Submit(headerless),
            code: Code::InvalidArgument,
            says: "header: is required",
        },
        Case {
            name: "signer of 31 bytes",
            call: Call::Submit(short_signer),
            code: Code::InvalidArgument,
            says: "header.signer",
        },
        Case {
            name: "nonce of 4 bytes",
            call: Call::Submit(short_nonce),
            code: Code::InvalidArgument,
            says: "header.nonce",
        },
        Case {
            name: "body over 64 KiB",
            call: Call::Submit(huge_env),
            code: Code::ResourceExhausted,
            says: "over the limit",
        },
        Case {
            name: "message over the gRPC limit",
            call: Call::Submit(over_grpc_limit),
            code: Code::OutOfRange,
            says: "",
        },
        Case {
            name: "body that is not protobuf",
            call: Call::Submit(garbage),
            code: Code::InvalidArgument,
            says: "body: is not a valid message",
        },
        Case {
            name: "zero GPUs",
            call: Call::Submit(signed_order(buyer, |o| o.gpus = 0)),
            code: Code::InvalidArgument,
            says: "order.gpus",
        },
        Case {
            name: "65 GPUs",
            call: Call::Submit(signed_order(buyer, |o| o.gpus = 65)),
            code: Code::InvalidArgument,
            says: "order.gpus",
        },
        Case {
            name: "10-second lease",
            call: Call::Submit(signed_order(buyer, |o| o.duration_seconds = 10)),
            code: Code::InvalidArgument,
            says: "order.durationSeconds",
        },
        Case {
            name: "price that is not a number",
            call: Call::Submit(signed_order(buyer, |o| {
                o.max_price_per_gpu_hour = "abc".into()
            })),
            code: Code::InvalidArgument,
            says: "order.maxPricePerGpuHour",
        },
        Case {
            name: "price of 40 digits",
            call: Call::Submit(signed_order(buyer, |o| {
                o.max_price_per_gpu_hour = "9".repeat(40)
            })),
            code: Code::InvalidArgument,
            says: "39 digits",
        },
        Case {
            name: "image without registry",
            call: Call::Submit(signed_order(buyer, |o| {
                o.workload.as_mut().unwrap().image = "ubuntu".into()
            })),
            code: Code::InvalidArgument,
            says: "order.workload.image",
        },
        Case {
            name: "env name that is not an identifier",
            call: Call::Submit(signed_order(buyer, |o| {
                o.workload.as_mut().unwrap().env[0].name = "1BAD".into()
            })),
            code: Code::InvalidArgument,
            says: "order.workload.env[0].name",
        },
        Case {
            name: "memory that is not a quantity",
            call: Call::Submit(signed_order(buyer, |o| {
                o.workload.as_mut().unwrap().memory = "lots".into()
            })),
            code: Code::InvalidArgument,
            says: "order.workload.memory",
        },
        Case {
            name: "no workload",
            call: Call::Submit(signed_order(buyer, |o| o.workload = None)),
            code: Code::InvalidArgument,
            says: "order.workload: is required",
        },
        Case {
            name: "empty denomination",
            call: Call::Submit(signed_order(buyer, |o| o.denomination.clear())),
            code: Code::InvalidArgument,
            says: "order.denomination",
        },
        Case {
            name: "order beyond the buyer's funds",
            call: Call::Submit(signed_order(&stranger, |_| {})),
            code: Code::FailedPrecondition,
            says: "insufficient funds",
        },
        Case {
            name: "deposit of zero",
            call: Call::Deposit(deposit("0")),
            code: Code::InvalidArgument,
            says: "deposit.amount: must be greater than zero",
        },
        Case {
            name: "negative deposit",
            call: Call::Deposit(deposit("-5")),
            code: Code::InvalidArgument,
            says: "deposit.amount",
        },
        Case {
            name: "fractional atto deposit",
            call: Call::Deposit(deposit("1.5")),
            code: Code::InvalidArgument,
            says: "deposit.amount",
        },
        Case {
            name: "cancel of another buyer's order",
            call: Call::Cancel(cancel(&stranger, &pending.order_id)),
            code: Code::NotFound,
            says: "does not exist",
        },
        Case {
            name: "cancel with a malformed id",
            call: Call::Cancel(cancel(buyer, "ZZ")),
            code: Code::InvalidArgument,
            says: "cancel.orderId",
        },
        Case {
            name: "status of another buyer's order",
            call: Call::Status(seal(
                &stranger,
                QueryBody {
                    header: None,
                    order_id: pending.order_id.clone(),
                },
                now(),
            )),
            code: Code::NotFound,
            says: "does not exist",
        },
        Case {
            name: "offer from an unregistered provider",
            call: Call::Publish(publish(&stranger, &|_| {})),
            code: Code::PermissionDenied,
            says: "not registered",
        },
        Case {
            name: "offer that expired",
            call: Call::Publish(publish(provider, &|o| o.expires_at = now() - 1)),
            code: Code::InvalidArgument,
            says: "offer.expiresAt",
        },
        Case {
            name: "offer at price zero",
            call: Call::Publish(publish(provider, &|o| o.price_per_gpu_hour = "0".into())),
            code: Code::InvalidArgument,
            says: "offer.pricePerGpuHour",
        },
        Case {
            name: "offer with 5000 blocks",
            call: Call::Publish(publish(provider, &|o| o.free_blocks = vec![1; 5000])),
            code: Code::InvalidArgument,
            says: "offer.freeBlocks",
        },
        Case {
            name: "offer with min above max duration",
            call: Call::Publish(publish(provider, &|o| o.min_duration_seconds = 90_000)),
            code: Code::InvalidArgument,
            says: "offer.m",
        },
        Case {
            name: "register with a control character",
            call: Call::Register(seal(
                provider,
                RegisterBody {
                    header: None,
                    name: "acme\u{7}".into(),
                    region: String::new(),
                },
                now(),
            )),
            code: Code::InvalidArgument,
            says: "register.name",
        },
        Case {
            name: "answer to another provider's lease",
            call: Call::Decide(decide(&stranger, &lease_id, true, "")),
            code: Code::PermissionDenied,
            says: "another provider",
        },
        Case {
            name: "answer to an unknown lease",
            call: Call::Decide(decide(provider, "feedfeed", true, "")),
            code: Code::NotFound,
            says: "does not exist",
        },
        Case {
            name: "rejection without a reason",
            call: Call::Decide(decide(provider, &lease_id, false, "")),
            code: Code::InvalidArgument,
            says: "decision.reason",
        },
        Case {
            name: "end with an unknown phase",
            call: Call::End(end(&|b| b.phase = "Bogus".into())),
            code: Code::InvalidArgument,
            says: "end.phase",
        },
        Case {
            name: "end before its start",
            call: Call::End(end(&|b| b.ended_at = b.started_at - 1)),
            code: Code::InvalidArgument,
            says: "end.endedAt",
        },
        Case {
            name: "end of a lease never accepted",
            call: Call::End(end(&|_| {})),
            code: Code::FailedPrecondition,
            says: "only an accepted lease can end",
        },
    ];
    assert!(cases.len() >= 30, "the corpus has {} cases", cases.len());

    let before_orders = w.node.store.orders().unwrap();
    let before_leases = w.node.store.leases().unwrap();
    let before_balance = buyer_client.balance().await.unwrap();
    for case in cases {
        let refused = send(&w.node, case.call).await.expect_err(case.name);
        assert_eq!(
            refused.code(),
            case.code,
            "{}: {}",
            case.name,
            refused.message()
        );
        assert!(
            refused.message().contains(case.says),
            "{}: {:?} does not say {:?}",
            case.name,
            refused.message(),
            case.says
        );
        // The node keeps serving.
        w.node.raw().info(InfoRequest {}).await.unwrap();
    }
    assert_eq!(
        w.node.store.orders().unwrap(),
        before_orders,
        "no order was created or changed"
    );
    assert_eq!(
        w.node.store.leases().unwrap(),
        before_leases,
        "no lease was created or changed"
    );
    assert_eq!(
        buyer_client.balance().await.unwrap(),
        before_balance,
        "no money moved"
    );
    w.node.store.audit().unwrap();
}

#[tokio::test]
async fn out_of_terms_orders_are_rejected_with_the_reason_and_hold_nothing() {
    let w = world().await;
    let buyer = w.node.client(w.buyer.clone());
    let cases: Vec<(&str, OrderBody, &str)> = vec![
        (
            "registry the offer does not allow",
            order_with(|o| o.workload.as_mut().unwrap().image = "docker.io/x/miner:1".into()),
            "the only offer does not allow the image's registry (registries allowed: ghcr.io)",
        ),
        (
            "longer than the offer allows",
            order_with(|o| o.duration_seconds = 100_000),
            "the only offer does not allow this duration (allowed: 60 s to 86400 s)",
        ),
        (
            "more GPUs than any node has",
            order_with(|o| o.gpus = 16),
            "the only offer allows fewer GPUs per lease (at most 8 GPUs per lease)",
        ),
        (
            "below the offer's price",
            order_with(|o| o.max_price_per_gpu_hour = UNIT.to_string()),
            "the only offer costs more than the order's maximum price (the cheapest asks 2.5 USDC per GPU-hour)",
        ),
        (
            "another GPU model",
            order_with(|o| o.model = "NVIDIA-A100-SXM4-80GB".into()),
            "the only offer offers another GPU model (on offer: NVIDIA-H100-80GB-HBM3)",
        ),
        (
            "another region",
            order_with(|o| o.region = "us-east".into()),
            "the only offer is in another region (on offer: eu-west)",
        ),
        (
            "another denomination",
            order_with(|o| o.denomination = "EUR".into()),
            "the only offer sells in another denomination (on offer: USDC)",
        ),
    ];
    for (name, body, says) in cases {
        let view = buyer.submit(body).await.unwrap();
        assert_eq!(view.state(), OrderState::Rejected, "{name}");
        assert!(view.reason.contains(says), "{name}: {}", view.reason);
        assert_eq!(view.held, "0", "{name}");
    }
    assert!(w.node.store.leases().unwrap().is_empty());
    let balance = buyer.balance().await.unwrap();
    assert_eq!(available(&balance, "available"), 100 * UNIT);
    let orders = buyer.list_orders().await.unwrap();
    let owner = public_key_base58(&w.buyer.verifying_key());
    assert!(
        orders.iter().all(|o| o.buyer == owner),
        "the buyer lists only its own orders"
    );
}

/// A matched and accepted lease of 4 GPUs, with its meter.
async fn accepted_lease(w: &World) -> (String, Meter) {
    let provider = w.node.client(w.provider.clone());
    let placed = w
        .node
        .client(w.buyer.clone())
        .submit(order(4))
        .await
        .unwrap();
    provider.decide(&placed.lease_id, true, "").await.unwrap();
    let meter = Meter::probed(&w.provider, &provider, &placed.lease_id, 4).await;
    (placed.lease_id, meter)
}

#[tokio::test]
async fn forged_forked_and_foreign_receipts_are_refused_and_pay_nothing() {
    let w = world().await;
    let provider = w.node.client(w.provider.clone());
    let (lease_id, meter) = accepted_lease(&w).await;
    let receipts = meter.receipts(&[10_000, 10_000]);
    let accepted = provider
        .submit_receipts(&lease_id, meter.certificate(), receipts[..1].to_vec())
        .await
        .unwrap();
    let paid = accepted.charged.clone();

    let mut tampered = receipts[1].clone();
    tampered.body[5] ^= 1;
    // A receipt 1 of another chain: same sequence, other window.
    let forked = meter.receipts(&[9_000])[0].clone();
    let stranger = Meter::new(&w.provider, &lease_id, 4);
    let stranger_receipt = stranger.receipts(&[10_000, 10_000])[1].clone();
    for (name, receipt, kind) in [
        ("tampered", tampered, "BadSignature"),
        ("forked", forked, "Fork"),
        // Signed by a key the submitted certificate does not certify.
        ("other key", stranger_receipt, "BadSignature"),
    ] {
        let reply = provider
            .submit_receipts(&lease_id, meter.certificate(), vec![receipt])
            .await
            .unwrap();
        let rejection = reply
            .rejection
            .unwrap_or_else(|| panic!("{name} was accepted"));
        assert_eq!(rejection.kind, kind, "{name}: {}", rejection.message);
        assert_eq!(
            (reply.accepted_through, &reply.charged),
            (1, &paid),
            "{name}"
        );
    }

    // A certificate the provider did not sign, or one for another lease, refuses the whole call.
    let forger = generate_key();
    let forged_cert = Meter::new(&forger, &lease_id, 4);
    let status = provider
        .submit_receipts(
            &lease_id,
            forged_cert.certificate(),
            forged_cert.receipts(&[1_000]),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let (other_lease, _) = accepted_lease(&w).await;
    let status = provider
        .submit_receipts(&other_lease, meter.certificate(), receipts[..1].to_vec())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // Another provider cannot submit for this lease at all.
    let status = w
        .node
        .client(generate_key())
        .submit_receipts(&lease_id, meter.certificate(), receipts[..1].to_vec())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    // The good second receipt still goes through after all of that.
    let reply = provider
        .submit_receipts(&lease_id, meter.certificate(), receipts)
        .await
        .unwrap();
    assert_eq!((reply.accepted_through, reply.rejection), (2, None));
    w.node.store.audit().unwrap();
}

#[tokio::test]
async fn evidence_answers_the_outstanding_challenge_once() {
    use gpubridge::attestation::build_evidence;
    use gpubridge::gpu::{DeviceInfo, HardwareAttestation};
    let w = world().await;
    let provider = w.node.client(w.provider.clone());
    let (lease_id, meter) = accepted_lease(&w).await;
    let challenge = provider.lease_challenge(&lease_id).await.unwrap();
    assert_eq!((challenge.nonce.len(), challenge.answered), (32, false));
    let gpu = DeviceInfo {
        uuid: "GPU-1".into(),
        serial: "1".into(),
        model: "NVIDIA H100".into(),
        vbios: "96".into(),
        driver: "580".into(),
        cc_mode: true,
        shared: false,
    };
    let attested = Some(HardwareAttestation {
        report: vec![1; 64],
        certificate_chain: vec![2; 64],
    });
    let evidence = |nonce: &[u8]| {
        let e = build_evidence(
            &lease_id,
            nonce,
            &[(gpu.clone(), attested.clone())],
            "n",
            "u",
            "i",
            now(),
        );
        sign_body(&meter.key, &e)
    };
    let wrong = provider
        .submit_evidence(
            &lease_id,
            meter.certificate(),
            evidence(&[7; 32]),
            "",
            vec![],
        )
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::FailedPrecondition, "{wrong:?}");
    assert!(wrong.message().starts_with("WrongNonce"), "{wrong:?}");

    let good = evidence(&challenge.nonce);
    // The image digest the operator read from the pod: checked for shape, then recorded.
    let malformed = provider
        .submit_evidence(
            &lease_id,
            meter.certificate(),
            good.clone(),
            "train:latest",
            vec![],
        )
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument, "{malformed:?}");
    assert!(
        malformed.message().contains("evidence.imageDigest"),
        "{malformed:?}"
    );
    // OCSP responses supplied for more GPUs than the evidence names: refused before anything.
    let too_many = provider
        .submit_evidence(
            &lease_id,
            meter.certificate(),
            good.clone(),
            "",
            vec![GpuOcsp::default(); 2],
        )
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument, "{too_many:?}");
    assert!(
        too_many.message().contains("ocsp: 2 lists for 1 GPUs"),
        "{too_many:?}"
    );
    let digest = format!("ghcr.io/acme/train@sha256:{}", "0f".repeat(32));
    let reply = provider
        .submit_evidence(
            &lease_id,
            meter.certificate(),
            good.clone(),
            &digest,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(reply.image_digest, digest);
    // A report and chain that are not NVIDIA's earn nothing beyond what the lease's probe
    // earned: the network says why.
    assert_eq!(reply.trust_tier, "challenge-verified");
    assert!(
        reply.detail.contains("CC evidence refused (BadChain)"),
        "{reply:?}"
    );
    assert!(provider.lease_challenge(&lease_id).await.unwrap().answered);
    // The same nonce again, even with freshly signed evidence: a replay.
    for again in [good, evidence(&challenge.nonce)] {
        let replayed = provider
            .submit_evidence(&lease_id, meter.certificate(), again, "", vec![])
            .await
            .unwrap_err();
        assert_eq!(replayed.code(), Code::AlreadyExists, "{replayed:?}");
        assert!(
            replayed.message().starts_with("ReplayedNonce"),
            "{replayed:?}"
        );
    }
    // Evidence signed by another key than the certified one.
    let forged = sign_body(
        &generate_key(),
        &build_evidence(&lease_id, &challenge.nonce, &[], "n", "u", "i", now()),
    );
    let status = provider
        .submit_evidence(&lease_id, meter.certificate(), forged, "", vec![])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

#[tokio::test]
async fn an_answered_challenge_is_renewed_by_the_sweep() {
    let w = world().await;
    let provider = w.node.client(w.provider.clone());
    let (lease_id, meter) = accepted_lease(&w).await;
    let first = provider.lease_challenge(&lease_id).await.unwrap();
    let e =
        gpubridge::attestation::build_evidence(&lease_id, &first.nonce, &[], "n", "u", "i", now());
    provider
        .submit_evidence(
            &lease_id,
            meter.certificate(),
            sign_body(&meter.key, &e),
            "",
            vec![],
        )
        .await
        .unwrap();
    // Not yet due: the answered challenge stays.
    w.node.store.sweep(now()).unwrap();
    assert_eq!(
        provider.lease_challenge(&lease_id).await.unwrap().nonce,
        first.nonce
    );
    let due = now() + i64::from(w.node.store.params().unwrap().challenge_seconds);
    w.node.store.sweep(due).unwrap();
    let renewed = provider.lease_challenge(&lease_id).await.unwrap();
    assert_ne!(renewed.nonce, first.nonce);
    assert!(!renewed.answered);
}

/// A lease of an offer that promises re-probes is probed again over the gateway once its last
/// pass is `reprobe-seconds` old, its steps go to the re-probe, and the pass is the network's.
#[tokio::test]
async fn a_lease_of_an_offer_promising_reprobes_is_probed_again_through_the_gateway() {
    let w = world().await;
    let provider = w.node.client(w.provider.clone());
    let (name, value) = gpubridge::wire::validate::REPROBED;
    let reprobed = gpubridge::wire::proto::Attribute {
        key: name.into(),
        value: value.into(),
    };
    let mut promising = offer("h100-dra", &[8]);
    promising.attributes.push(reprobed.clone());
    provider.publish(promising).await.unwrap();
    let mut wants = order(2);
    wants.attributes = vec![reprobed];
    let placed = w.node.client(w.buyer.clone()).submit(wants).await.unwrap();
    provider.decide(&placed.lease_id, true, "").await.unwrap();
    let id = placed.lease_id;
    let meter = Meter::probed(&w.provider, &provider, &id, 2).await;
    let no_reprobe_yet = provider.lease_challenge(&id).await.unwrap();
    assert!(no_reprobe_yet.reprobe.is_none());
    // It started: a first receipt, well before the start deadline.
    let started = provider
        .submit_receipts(&id, meter.certificate(), meter.receipts(&[1_000]))
        .await
        .unwrap();
    assert_eq!((started.accepted_through, started.rejection), (1, None));
    let interval = w.node.store.params().unwrap().reprobe_seconds;
    w.node.store.sweep(now() + i64::from(interval) + 1).unwrap();
    let challenge = provider.lease_challenge(&id).await.unwrap();
    let issued = challenge.reprobe.clone().expect("a re-probe is due");
    assert_eq!((issued.state.as_str(), issued.reprobe), ("issued", 1));
    assert_ne!(issued.nonce, challenge.probe.unwrap().nonce);
    let reply = run_probe(&provider, &id, meter.certificate(), Which::Latest).await;
    assert_eq!(
        (reply.state.as_str(), reply.reprobe),
        ("passed", 1),
        "{}",
        reply.detail
    );
    // The first probe's record is unchanged.
    let after = provider.lease_challenge(&id).await.unwrap();
    assert_eq!(after.probe.unwrap().reprobe, 0);
    assert_eq!(after.reprobe.unwrap().state, "passed");
}

/// A standing order waits in the running node (its own process, its own upkeep every second)
/// until capacity comes, and the lease made then reaches the provider's open stream.
#[tokio::test]
async fn a_standing_order_is_matched_by_the_nodes_upkeep_and_its_lease_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::network::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _node = support::network::spawn_node(dir.path(), port, &[]);
    let provider = generate_key();
    let p = support::network::client(&url, provider.clone()).await;
    p.register("acme", "eu-west").await.unwrap();
    p.publish(offer("h100", &[2])).await.unwrap();
    let mut stream = p.leases().await.unwrap();
    let buyer = support::network::client(&url, generate_key()).await;
    buyer
        .deposit(Amount::from_atto(100 * UNIT), "USDC")
        .await
        .unwrap();

    let mut standing = order(8);
    standing.wait_until = now() + 120;
    let placed = buyer.submit(standing).await.unwrap();
    assert_eq!(placed.state(), OrderState::Waiting, "{}", placed.reason);
    assert!(
        placed.held.is_empty() || placed.held == "0",
        "nothing held while waiting"
    );

    p.publish(offer("h100", &[8])).await.unwrap();
    let event = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
        .await
        .expect("the lease arrives within the upkeep's second")
        .unwrap()
        .unwrap();
    let Some(lease_event::Event::Lease(signed)) = event.event else {
        panic!("{event:?}")
    };
    let lease = gpubridge::wire::proto::LeaseBody::decode(signed.body.as_slice()).unwrap();
    let view = buyer.order_status(&placed.order_id).await.unwrap();
    assert_eq!(view.state(), OrderState::Matched);
    assert_eq!(view.lease_id, lease.lease_id);
    let info = p.info().await.unwrap();
    let network_key = ed25519_dalek::VerifyingKey::try_from(info.network_key.as_slice()).unwrap();
    gpubridge::wire::envelope::open_from::<gpubridge::wire::proto::LeaseBody>(
        &signed,
        &network_key,
    )
    .expect("signed by the node");
}

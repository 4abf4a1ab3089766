use ed25519_dalek::SigningKey;
use prost::Message;

use super::*;
use crate::identity::generate_key;
use crate::wire::envelope::MAX_BODY_BYTES;
use crate::wire::proto::Evidence;

const START: i64 = 1_700_000_000_000;

fn usage(uuid: &str, utilization: u32, energy: u64) -> GpuUsage {
    GpuUsage {
        uuid: uuid.into(),
        utilization_percent: utilization,
        memory_high_water_bytes: 1 << 30,
        energy_millijoules: energy,
    }
}

fn terms(key: &SigningKey) -> LeaseTerms {
    LeaseTerms {
        lease_id: "lease-1".into(),
        gpus: 2,
        lease_key: key.verifying_key(),
        metering_from_ms: Some(START),
        metering_until_ms: None,
    }
}

/// The receipt after `head` ending `ms` later, measured on two GPUs.
fn next(key: &SigningKey, head: &ChainHead, ms: i64) -> (Signed, ChainHead) {
    let end = head.window_end_ms.unwrap_or(START) + ms;
    seal_receipt(
        key,
        "lease-1",
        2,
        head,
        START,
        WindowReport {
            window_end_ms: end,
            gpus: vec![usage("GPU-a", 40, 500), usage("GPU-b", 60, 700)],
            attribution: Attribution::Measured,
            ..WindowReport::default()
        },
    )
}

/// A receipt body re-signed after `change`: what a forger with the lease key could send.
fn altered(key: &SigningKey, signed: &Signed, change: impl FnOnce(&mut Receipt)) -> Signed {
    let mut receipt = Receipt::decode(signed.body.as_slice()).unwrap();
    change(&mut receipt);
    sign_body(key, &receipt)
}

fn accept(terms: &LeaseTerms, head: &ChainHead, signed: &Signed) -> ChainHead {
    match check_next(terms, head, signed, START + 3_600_000).unwrap() {
        Step::Next { receipt, hash } => head.advance(&receipt, hash),
        other => panic!("expected the next receipt, got {other:?}"),
    }
}

fn rejection(terms: &LeaseTerms, head: &ChainHead, signed: &Signed) -> ReceiptRejection {
    check_next(terms, head, signed, START + 3_600_000).unwrap_err()
}

#[test]
fn a_chain_built_by_the_meter_verifies_link_by_link() {
    let key = generate_key();
    let t = terms(&key);
    let (mut built, mut verified) = (ChainHead::default(), ChainHead::default());
    let mut totals = Totals::default();
    for _ in 0..5 {
        let (signed, head) = next(&key, &built, 10_000);
        verified = accept(&t, &verified, &signed);
        assert_eq!(verified, head, "the verifier's head is the meter's");
        totals.add(&Receipt::decode(signed.body.as_slice()).unwrap());
        built = head;
    }
    assert_eq!(verified.sequence, 5);
    assert_eq!(totals.allocated_gpu_millis, 5 * 2 * 10_000);
    assert_eq!(totals.energy_millijoules, 5 * 1_200);
    assert_eq!(totals.utilization_percent(), 50);
}

#[test]
fn a_receipt_at_or_below_the_head_is_reported_as_earlier_with_its_hash() {
    let key = generate_key();
    let t = terms(&key);
    let (first, _) = next(&key, &ChainHead::default(), 10_000);
    let head = accept(&t, &ChainHead::default(), &first);
    assert_eq!(
        check_next(&t, &head, &first, START + 60_000),
        Ok(Step::Earlier {
            sequence: 1,
            hash: digest(&first.body)
        })
    );
    assert_eq!(head.hash, digest(&first.body).to_vec());
}

#[test]
fn signatures_are_checked_before_anything_else() {
    let key = generate_key();
    let t = terms(&key);
    let (mut signed, _) = next(&key, &ChainHead::default(), 10_000);
    // Another key: a sidecar of another lease, or a forger.
    let (foreign, _) = next(&generate_key(), &ChainHead::default(), 10_000);
    assert_eq!(
        rejection(&t, &ChainHead::default(), &foreign),
        ReceiptRejection::BadSignature
    );
    // One flipped bit of the body.
    signed.body[3] ^= 1;
    assert_eq!(
        rejection(&t, &ChainHead::default(), &signed),
        ReceiptRejection::BadSignature
    );
    // A signature made for another message kind.
    let (good, _) = next(&key, &ChainHead::default(), 10_000);
    let cross = Signed {
        signature: crate::identity::sign(&key, Evidence::DOMAIN, &good.body)
            .to_bytes()
            .to_vec(),
        ..good
    };
    assert_eq!(
        rejection(&t, &ChainHead::default(), &cross),
        ReceiptRejection::BadSignature
    );
}

#[test]
fn every_chain_rule_has_its_rejection() {
    let key = generate_key();
    let t = terms(&key);
    let genesis = ChainHead::default();
    let (first, built) = next(&key, &genesis, 10_000);
    let head = accept(&t, &genesis, &first);
    let (second, _) = next(&key, &built, 10_000);

    let cases: Vec<(&str, Signed, &str)> = vec![
        (
            "other lease",
            altered(&key, &second, |r| r.lease_id = "lease-2".into()),
            "WrongLease",
        ),
        (
            "skipped sequence",
            altered(&key, &second, |r| r.sequence = 3),
            "Gap",
        ),
        (
            "sequence zero",
            altered(&key, &second, |r| r.sequence = 0),
            "Malformed",
        ),
        (
            "wrong previous hash",
            altered(&key, &second, |r| r.previous_hash = vec![7; 32]),
            "BrokenChain",
        ),
        (
            "window overlaps",
            altered(&key, &second, |r| {
                r.window_start_ms -= 1;
                r.allocated_gpu_millis += 2;
            }),
            "BadWindow",
        ),
        (
            "window skips time",
            altered(&key, &second, |r| {
                r.window_start_ms += 1;
                r.allocated_gpu_millis -= 2;
            }),
            "BadWindow",
        ),
        (
            "empty window",
            altered(&key, &second, |r| {
                r.window_end_ms = r.window_start_ms;
                r.allocated_gpu_millis = 0;
            }),
            "BadWindow",
        ),
        (
            "inflated allocation",
            altered(&key, &second, |r| r.allocated_gpu_millis += 1),
            "BadWindow",
        ),
        (
            "future window",
            altered(&key, &second, |r| {
                r.window_end_ms += 10 * 3_600_000;
                r.allocated_gpu_millis = 2 * (r.window_end_ms - r.window_start_ms) as u64;
            }),
            "BadWindow",
        ),
        (
            "no attribution",
            altered(&key, &second, |r| r.attribution = 0),
            "Malformed",
        ),
        (
            "measured, one GPU missing",
            altered(&key, &second, |r| {
                r.gpus.pop();
            }),
            "Malformed",
        ),
        (
            "allocation-only with figures",
            altered(&key, &second, |r| {
                r.attribution = Attribution::AllocationOnly as i32;
            }),
            "Malformed",
        ),
        (
            "utilization over 100",
            altered(&key, &second, |r| r.gpus[0].utilization_percent = 101),
            "Malformed",
        ),
        (
            "empty uuid",
            altered(&key, &second, |r| r.gpus[0].uuid.clear()),
            "Malformed",
        ),
        (
            "garbage body",
            Signed {
                body: vec![0xff; 3],
                signature: crate::identity::sign(&key, Receipt::DOMAIN, &[0xff; 3])
                    .to_bytes()
                    .to_vec(),
            },
            "Malformed",
        ),
    ];
    for (name, signed, kind) in cases {
        let got = rejection(&t, &head, &signed);
        assert_eq!(got.kind(), kind, "{name}: {got}");
    }
    // The untouched second receipt still goes through after all of that.
    accept(&t, &head, &second);
}

#[test]
fn the_first_window_may_not_start_before_the_challenge_passed_and_nothing_follows_the_final_receipt()
 {
    let key = generate_key();
    let t = terms(&key);
    let genesis = ChainHead::default();
    let (early, _) = seal_receipt(
        &key,
        "lease-1",
        2,
        &genesis,
        START - 1,
        WindowReport {
            window_end_ms: START + 1_000,
            attribution: Attribution::AllocationOnly,
            ..WindowReport::default()
        },
    );
    assert_eq!(
        rejection(&t, &genesis, &early).to_string(),
        format!("receipt 1: window must not start before the lease passed its challenge ({START})")
    );
    // Before any challenge passed, no window at all: not even the one accepted below.
    let (last, built) = seal_receipt(
        &key,
        "lease-1",
        2,
        &genesis,
        START,
        WindowReport {
            window_end_ms: START + 1_000,
            attribution: Attribution::AllocationOnly,
            r#final: true,
            ..WindowReport::default()
        },
    );
    let unverified = LeaseTerms {
        metering_from_ms: None,
        ..t.clone()
    };
    assert_eq!(
        rejection(&unverified, &genesis, &last),
        ReceiptRejection::Unverified { sequence: 1 }
    );
    let head = accept(&t, &genesis, &last);
    assert!(head.final_received);
    let (after, _) = next(&key, &built, 1_000);
    assert_eq!(
        rejection(&t, &head, &after),
        ReceiptRejection::AfterFinal { sequence: 2 }
    );
}

#[test]
fn an_oversized_receipt_is_refused_before_its_signature_is_checked() {
    let key = generate_key();
    let huge = Signed {
        body: vec![0; MAX_BODY_BYTES + 1],
        signature: vec![0; 64],
    };
    assert_eq!(
        rejection(&terms(&key), &ChainHead::default(), &huge).kind(),
        "Malformed"
    );
}

#[test]
fn a_window_past_what_the_last_probe_vouches_for_waits_for_the_next_pass() {
    let key = generate_key();
    let (first, built) = next(&key, &ChainHead::default(), 10_000);
    let (second, _) = next(&key, &built, 10_000);
    // The last pass vouches through 15 s after the start: the first window fits, the second
    // ends 5 s past it.
    let vouched = LeaseTerms {
        metering_until_ms: Some(START + 15_000),
        ..terms(&key)
    };
    let head = accept(&vouched, &ChainHead::default(), &first);
    let refused = rejection(&vouched, &head, &second);
    assert_eq!(
        refused,
        ReceiptRejection::Unproven {
            sequence: 2,
            until_ms: START + 15_000
        }
    );
    assert_eq!((refused.kind(), refused.sequence()), ("Unproven", 2));
    // A re-probe passed: the same receipt, resent, is taken.
    let renewed = LeaseTerms {
        metering_until_ms: Some(START + 20_000),
        ..vouched
    };
    accept(&renewed, &head, &second);
}

#[test]
fn a_pass_vouches_for_the_interval_and_the_next_probes_two_deadlines() {
    assert_eq!(
        metering_until(Some(1_000), 3_600, 120),
        Some((1_000 + 3_600 + 240) * 1000)
    );
    // Never passed, or no re-probes: nothing bounds the end.
    assert_eq!(metering_until(None, 3_600, 120), None);
    assert_eq!(metering_until(Some(1_000), 0, 120), None);
    assert_eq!(metering_until(Some(i64::MAX), 3_600, 120), Some(i64::MAX));
}

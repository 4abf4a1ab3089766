//! Every decoder of network input, each behind one entry point taking raw bytes, for the fuzz
//! targets in `fuzz/` and the property tests that run the same entry points on every build.
//! Each entry point must return for any input; the checks inside are the properties.

use std::sync::LazyLock;

use ed25519_dalek::SigningKey;
use prost::Message;

use super::envelope::{HasHeader, Opened, domain, open};
use super::proto::{
    CancelBody, DepositBody, HeartbeatBody, LeaseDecisionBody, LeaseEndBody, LeaseStreamBody,
    OfferBody, OrderBody, QueryBody, RegisterBody, Signed,
};
use super::{amount as amounts, intake, validate};

/// Fixed keys, so that inputs reach the checks after the signature.
static NETWORK: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::from_bytes(&[7; 32]));
static PROVIDER: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::from_bytes(&[9; 32]));

fn open_as<M: Message + Default + HasHeader>(signed: &Signed, domain: &str) {
    if let Ok(Opened { signer, .. }) = open::<M>(signed, domain, 0) {
        // Whatever opened was signed by the key it names, over exactly these bytes.
        crate::identity::verify(&signer, domain, &signed.body, &signed.signature)
            .expect("an opened request verifies");
    }
}

/// Bytes as a `Signed` request, opened as every body type under `domain`.
pub fn signed_request(data: &[u8], domain: &str) {
    let Ok(signed) = Signed::decode(data) else {
        return;
    };
    open_as::<RegisterBody>(&signed, domain);
    open_as::<OfferBody>(&signed, domain);
    open_as::<HeartbeatBody>(&signed, domain);
    open_as::<LeaseStreamBody>(&signed, domain);
    open_as::<LeaseDecisionBody>(&signed, domain);
    open_as::<LeaseEndBody>(&signed, domain);
    open_as::<DepositBody>(&signed, domain);
    open_as::<OrderBody>(&signed, domain);
    open_as::<CancelBody>(&signed, domain);
    open_as::<QueryBody>(&signed, domain);
}

/// Bytes as a lease body, signed by the network, through intake's verification.
pub fn lease(data: &[u8]) {
    let signed = Signed {
        body: data.to_vec(),
        signature: crate::identity::sign(&NETWORK, domain::LEASE, data)
            .to_bytes()
            .to_vec(),
    };
    let verified = intake::verify_lease(
        &signed,
        &NETWORK.verifying_key(),
        &PROVIDER.verifying_key(),
        0,
    );
    if let Ok(v) = verified {
        assert_eq!(
            v.lease.gpus, v.order.gpus,
            "a verified lease matches its order"
        );
    }
}

/// Bytes as a receipt body and as an evidence body, each signed by the lease key, through the
/// chain and evidence checks: whatever verifies is the next link and hashes as it says.
pub fn receipt_and_evidence(data: &[u8]) {
    use crate::metering::{ChainHead, LeaseTerms, Step, check_next, digest};
    let sign = |domain: &str| Signed {
        body: data.to_vec(),
        signature: crate::identity::sign(&PROVIDER, domain, data)
            .to_bytes()
            .to_vec(),
    };
    let terms = LeaseTerms {
        lease_id: "lease-1".into(),
        gpus: 2,
        lease_key: PROVIDER.verifying_key(),
        not_before_ms: 0,
    };
    if let Ok(step) = check_next(
        &terms,
        &ChainHead::default(),
        &sign(domain::RECEIPT),
        i64::MAX / 2,
    ) {
        let Step::Next { receipt, hash } = step else {
            panic!("nothing is earlier than the genesis head");
        };
        assert_eq!(receipt.sequence, 1);
        assert_eq!(hash, digest(data));
        assert_eq!(
            receipt.allocated_gpu_millis,
            2 * (receipt.window_end_ms - receipt.window_start_ms) as u64
        );
    }
    if let Ok(verified) = crate::attestation::verify_evidence(
        &PROVIDER.verifying_key(),
        "lease-1",
        &sign(domain::EVIDENCE),
        0,
    ) {
        assert_eq!(verified.evidence.nonce.len(), 32);
        assert_eq!(
            verified.tier,
            crate::attestation::trust_tier(&verified.evidence)
        );
    }
}

/// Bytes as an offer body and as an order body, through the field rules.
pub fn bodies(data: &[u8]) {
    if let Ok(offer) = OfferBody::decode(data) {
        let _ = validate::offer(&offer, 0);
    }
    if let Ok(order) = OrderBody::decode(data)
        && let Ok(checked) = validate::order(&order)
    {
        assert!(checked.max_price > 0);
        assert!((1..=validate::MAX_GPUS_PER_LEASE).contains(&order.gpus));
    }
}

/// Bytes as amount text: what parses is canonical and prints back the same.
pub fn amount(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(value) = amounts::parse("amount", text) {
        assert_eq!(value.to_string(), text);
    }
    if let Ok(atto) = amounts::from_decimal_units("amount", text) {
        let back = amounts::to_decimal_units(atto);
        assert_eq!(amounts::from_decimal_units("amount", &back), Ok(atto));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::envelope::seal;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn no_decoder_panics_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            signed_request(&data, domain::ORDER);
            lease(&data);
            bodies(&data);
            amount(&data);
            receipt_and_evidence(&data);
        }

        #[test]
        fn mutated_receipts_never_verify_as_something_else(flips in proptest::collection::vec((0usize..200, any::<u8>()), 1..8)) {
            let receipt = crate::network::proto::Receipt {
                lease_id: "lease-1".into(),
                sequence: 1,
                previous_hash: vec![0; 32],
                window_start_ms: 1_000,
                window_end_ms: 2_000,
                allocated_gpu_millis: 2_000,
                gpus: vec![],
                attribution: crate::network::proto::Attribution::AllocationOnly as i32,
                r#final: false,
            };
            let mut bytes = receipt.encode_to_vec();
            for (at, value) in flips {
                let i = at % bytes.len();
                bytes[i] = value;
            }
            receipt_and_evidence(&bytes);
        }

        #[test]
        fn no_decoder_panics_on_mutated_valid_messages(flips in proptest::collection::vec((0usize..400, any::<u8>()), 1..8)) {
            let order = crate::network::intake::tests::order_body();
            let mut bytes = seal(&PROVIDER, domain::ORDER, order, 0).encode_to_vec();
            for (at, value) in flips {
                if !bytes.is_empty() {
                    let i = at % bytes.len();
                    bytes[i] = value;
                }
            }
            signed_request(&bytes, domain::ORDER);
            lease(&bytes);
            bodies(&bytes);
        }
    }

    #[test]
    fn a_valid_request_opens_through_the_decoder() {
        let order = crate::network::intake::tests::order_body();
        let bytes = seal(&PROVIDER, domain::ORDER, order, 0).encode_to_vec();
        signed_request(&bytes, domain::ORDER);
        amount(b"1000");
        amount(b"2.5");
    }
}

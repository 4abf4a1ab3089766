//! Every decoder of network input, each behind one entry point taking raw bytes, for the fuzz
//! targets in `fuzz/` and the property tests that run the same entry points on every build.
//! Each entry point must return for any input; the checks inside are the properties.

use std::sync::LazyLock;

use ed25519_dalek::SigningKey;
use prost::Message;

use crate::operator::intake;
use crate::wire::envelope::{HasHeader, Signable, open};
use crate::wire::proto::{
    CancelBody, DepositBody, Evidence, HeartbeatBody, LeaseBody, LeaseDecisionBody, LeaseEndBody,
    LeaseStreamBody, OfferBody, OrderBody, QueryBody, Receipt, RegisterBody, Signed, WithdrawBody,
};
use crate::wire::{amount as amounts, validate};

/// Fixed keys, so that inputs reach the checks after the signature.
static NETWORK: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::from_bytes(&[7; 32]));
static PROVIDER: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::from_bytes(&[9; 32]));

/// Whether `signed` opens as an `M`, under `M`'s own domain.
fn opens_as<M: Signable + Default + HasHeader>(signed: &Signed) -> Option<&'static str> {
    open::<M>(signed, 0).is_ok().then_some(M::DOMAIN)
}

/// Bytes as a `Signed` request, opened as every request body type. A signature is good for the
/// one kind of request it was made for: whatever opens, opens as exactly one type, whose domain
/// is returned.
pub fn signed_request(data: &[u8]) -> Option<&'static str> {
    let signed = Signed::decode(data).ok()?;
    let opened: Vec<&str> = [
        opens_as::<RegisterBody>(&signed),
        opens_as::<OfferBody>(&signed),
        opens_as::<WithdrawBody>(&signed),
        opens_as::<HeartbeatBody>(&signed),
        opens_as::<LeaseStreamBody>(&signed),
        opens_as::<LeaseDecisionBody>(&signed),
        opens_as::<LeaseEndBody>(&signed),
        opens_as::<DepositBody>(&signed),
        opens_as::<OrderBody>(&signed),
        opens_as::<CancelBody>(&signed),
        opens_as::<QueryBody>(&signed),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(
        opened.len() <= 1,
        "one signature opened as several request types: {opened:?}"
    );
    opened.first().copied()
}

/// Bytes as a lease body, signed by the network, through intake's verification.
pub fn lease(data: &[u8]) {
    let signed = Signed {
        body: data.to_vec(),
        signature: crate::identity::sign(&NETWORK, LeaseBody::DOMAIN, data)
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
/// chain and evidence checks. Whatever verifies is bound to its lease and its key: it verifies
/// for no other lease and under no other key, and a receipt accepted once is not the next link
/// again.
pub fn receipt_and_evidence(data: &[u8]) {
    use crate::metering::{ChainHead, LeaseTerms, Step, check_next};
    let sign = |domain: &str| Signed {
        body: data.to_vec(),
        signature: crate::identity::sign(&PROVIDER, domain, data)
            .to_bytes()
            .to_vec(),
    };
    let terms = |lease_id: &str, key: &SigningKey| LeaseTerms {
        lease_id: lease_id.into(),
        gpus: 2,
        lease_key: key.verifying_key(),
        metering_from_ms: Some(0),
        metering_until_ms: None,
    };
    let now = i64::MAX / 2;
    let receipt = sign(Receipt::DOMAIN);
    let genesis = ChainHead::default();
    if let Ok(Step::Next {
        receipt: body,
        hash,
    }) = check_next(&terms("lease-1", &PROVIDER), &genesis, &receipt, now)
    {
        assert!(check_next(&terms("lease-2", &PROVIDER), &genesis, &receipt, now).is_err());
        assert!(check_next(&terms("lease-1", &NETWORK), &genesis, &receipt, now).is_err());
        let head = genesis.advance(&body, hash);
        assert!(
            !matches!(
                check_next(&terms("lease-1", &PROVIDER), &head, &receipt, now),
                Ok(Step::Next { .. })
            ),
            "a receipt is the next link once"
        );
    }
    let evidence = sign(Evidence::DOMAIN);
    let verify = |lease_id: &str, key: &SigningKey| {
        crate::attestation::verify_evidence(&key.verifying_key(), lease_id, &evidence, 0)
    };
    if verify("lease-1", &PROVIDER).is_ok() {
        assert!(verify("lease-2", &PROVIDER).is_err());
        assert!(verify("lease-1", &NETWORK).is_err());
    }
}

/// Bytes as one of NVIDIA's reference integrity manifests, through XML parsing,
/// canonicalization and the signature checks, at a time NVIDIA's published manifests were valid
/// so that altered ones reach every check. What verifies holds at least one measurement.
pub fn manifest(data: &[u8]) -> Option<crate::attestation::rim::ReferenceManifest> {
    use crate::attestation::nvidia::PinnedRoot;
    static ROOT: LazyLock<PinnedRoot> = LazyLock::new(PinnedRoot::nvidia_rim);
    let verified = crate::attestation::rim::verify_rim(data, &ROOT, 1_717_200_000).ok()?;
    assert!(!verified.golden.is_empty());
    Some(verified)
}

/// Bytes as an offer body and as an order body, through the field rules.
pub fn bodies(data: &[u8]) {
    if let Ok(offer) = OfferBody::decode(data) {
        let _ = validate::offer(&offer, 0);
    }
    if let Ok(order) = OrderBody::decode(data)
        && let Ok(checked) = validate::order(&order)
    {
        assert!(checked.max_price > amounts::Amount::ZERO);
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
        let back = atto.to_decimal_units();
        assert_eq!(amounts::from_decimal_units("amount", &back), Ok(atto));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::envelope::seal;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn no_decoder_panics_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            signed_request(&data);
            lease(&data);
            bodies(&data);
            amount(&data);
            receipt_and_evidence(&data);
            manifest(&data);
        }

        /// A signature over a document, not over its bytes: some bytes of a signed manifest
        /// can change and it still verifies (whitespace between attributes, inside base64), but
        /// then what it says is exactly what NVIDIA signed.
        #[test]
        fn an_altered_manifest_that_still_verifies_says_what_nvidia_signed(flips in proptest::collection::vec((0usize..20_519, any::<u8>()), 1..4)) {
            const RIM: &[u8] = include_bytes!("attestation/testdata/Driver_RIM_test_no_gpu.swidtag");
            let signed = manifest(RIM).unwrap();
            let mut bytes = RIM.to_vec();
            for (at, value) in flips {
                bytes[at % RIM.len()] = value;
            }
            if let Some(verified) = manifest(&bytes) {
                prop_assert_eq!(verified, signed);
            }
        }

        /// The same, with the likeliest harmless change: one whitespace byte for another.
        #[test]
        fn whitespace_swapped_in_a_manifest_changes_nothing_it_says(at in any::<prop::sample::Index>(), value in prop::sample::select(vec![b' ', b'\t', b'\n', b'\r'])) {
            const RIM: &[u8] = include_bytes!("attestation/testdata/Driver_RIM_test_no_gpu.swidtag");
            let signed = manifest(RIM).unwrap();
            let spaces: Vec<usize> = (0..RIM.len()).filter(|&i| RIM[i].is_ascii_whitespace()).collect();
            let mut bytes = RIM.to_vec();
            bytes[*at.get(&spaces)] = value;
            if let Some(verified) = manifest(&bytes) {
                prop_assert_eq!(verified, signed);
            }
        }

        #[test]
        fn mutated_receipts_never_verify_as_something_else(flips in proptest::collection::vec((0usize..200, any::<u8>()), 1..8)) {
            let receipt = crate::wire::proto::Receipt {
                lease_id: "lease-1".into(),
                sequence: 1,
                previous_hash: vec![0; 32],
                window_start_ms: 1_000,
                window_end_ms: 2_000,
                allocated_gpu_millis: 2_000,
                gpus: vec![],
                attribution: crate::wire::proto::Attribution::AllocationOnly as i32,
                r#final: false,
                access: None,
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
            let order = crate::operator::intake::tests::order_body();
            let mut bytes = seal(&PROVIDER, order, 0).encode_to_vec();
            for (at, value) in flips {
                if !bytes.is_empty() {
                    let i = at % bytes.len();
                    bytes[i] = value;
                }
            }
            signed_request(&bytes);
            lease(&bytes);
            bodies(&bytes);
        }
    }

    #[test]
    fn some_changes_to_a_manifests_bytes_keep_its_signature_and_its_content() {
        const RIM: &[u8] = include_bytes!("attestation/testdata/Driver_RIM_test_no_gpu.swidtag");
        let text = String::from_utf8(RIM.to_vec()).unwrap();
        // Spacing inside a tag and inside base64 is not what the signature covers.
        let respaced = text
            .replacen("<ns0:Entity name=", "<ns0:Entity\n\tname=", 1)
            .replacen("<ds:X509Certificate>MII", "<ds:X509Certificate>\n  MII", 1);
        assert_ne!(respaced, text);
        assert_eq!(manifest(respaced.as_bytes()), manifest(RIM));
    }

    #[test]
    fn a_valid_request_opens_through_the_decoder_and_a_tampered_one_does_not() {
        let order = crate::operator::intake::tests::order_body();
        let mut bytes = seal(&PROVIDER, order, 0).encode_to_vec();
        assert_eq!(signed_request(&bytes), Some(OrderBody::DOMAIN));
        let mut signed = Signed::decode(bytes.as_slice()).unwrap();
        signed.signature = crate::identity::sign(&PROVIDER, CancelBody::DOMAIN, &signed.body)
            .to_bytes()
            .to_vec();
        assert_ne!(
            signed_request(&signed.encode_to_vec()),
            Some(OrderBody::DOMAIN),
            "an order signed under another domain"
        );
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(signed_request(&bytes), None, "a flipped bit");
    }

    /// A receipt as the meter seals it passes the chain check the harness starts from, so the
    /// harness's properties run on it.
    #[test]
    fn a_valid_receipt_reaches_the_checks() {
        use crate::metering::{
            ChainHead, LeaseTerms, Step, WindowReport, check_next, seal_receipt,
        };
        use crate::wire::proto::Attribution;
        let (signed, _) = seal_receipt(
            &PROVIDER,
            "lease-1",
            2,
            &ChainHead::default(),
            1_000,
            WindowReport {
                window_end_ms: 2_000,
                attribution: Attribution::AllocationOnly,
                ..WindowReport::default()
            },
        );
        let terms = LeaseTerms {
            lease_id: "lease-1".into(),
            gpus: 2,
            lease_key: PROVIDER.verifying_key(),
            metering_from_ms: Some(0),
            metering_until_ms: None,
        };
        assert!(matches!(
            check_next(&terms, &ChainHead::default(), &signed, i64::MAX / 2),
            Ok(Step::Next { .. })
        ));
        receipt_and_evidence(&signed.body);
    }
}

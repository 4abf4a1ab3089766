//! Which block headers the network's validators signed: the light-client check of a CometBFT
//! header and its commit against the validator set pinned at install, taken from the network's
//! genesis. A header passes only when validators holding more than 2/3 of the pinned voting
//! power signed it for the pinned chain; then what it commits to is the network's, not one
//! node's word.
//!
//! The network's validator set never changes (the state machine returns no validator updates),
//! so the pinned set is the set of every height: a header naming another set is refused rather
//! than followed.

use prost::Message;
use tendermint::block::signed_header::SignedHeader;
use tendermint::{Genesis, validator};
use tendermint_light_client_verifier::errors::VerificationErrorDetail;
use tendermint_light_client_verifier::operations::VotingPowerTally;
use tendermint_light_client_verifier::types::UntrustedBlockState;
use tendermint_light_client_verifier::{ProdVerifier, Verdict};
use tendermint_proto::v0_38::types::SignedHeader as RawSignedHeader;

/// The network a provider trusts: its chain id and validator set, as its genesis names them.
#[derive(Clone, Debug)]
pub struct PinnedNetwork {
    chain_id: String,
    validators: validator::Set,
}

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("is not a CometBFT genesis document: {0}")]
    Genesis(#[from] serde_json::Error),
    #[error("validators: a genesis without validators pins nothing")]
    NoValidators,
}

/// Why a header is not one the pinned validators signed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("proof.signedHeader: is not a CometBFT SignedHeader: {0}")]
    Decode(String),
    #[error("proof.signedHeader.header.chainId: {got}, but this provider pinned {pinned}")]
    ChainId { got: String, pinned: String },
    #[error(
        "proof.signedHeader.header.{field}: {named} is not the validator set pinned at install"
    )]
    ValidatorSet { field: &'static str, named: String },
    #[error(
        "proof.signedHeader.commit: validators holding {signed} of the pinned {total} voting \
         power signed it; more than 2/3 must"
    )]
    NotEnoughPower { signed: u64, total: u64 },
    #[error("proof.signedHeader.commit: {0}")]
    Commit(String),
}

impl PinnedNetwork {
    /// The network a CometBFT genesis document (`genesis.json`) describes.
    pub fn from_genesis(json: &[u8]) -> Result<PinnedNetwork, PinError> {
        let genesis: Genesis<serde_json::Value> = serde_json::from_slice(json)?;
        if genesis.validators.is_empty() {
            return Err(PinError::NoValidators);
        }
        Ok(PinnedNetwork {
            chain_id: genesis.chain_id.to_string(),
            validators: validator::Set::without_proposer(genesis.validators),
        })
    }

    pub fn chain_id(&self) -> &str {
        &self.chain_id
    }

    /// How many validators, and their total voting power.
    pub fn size(&self) -> (usize, u64) {
        (
            self.validators.validators().len(),
            self.validators.total_voting_power().value(),
        )
    }

    /// The header in `encoded` (a protobuf SignedHeader), once the pinned validators are shown
    /// to have committed it.
    pub fn verify(&self, encoded: &[u8]) -> Result<SignedHeader, HeaderError> {
        let raw =
            RawSignedHeader::decode(encoded).map_err(|e| HeaderError::Decode(e.to_string()))?;
        let signed = SignedHeader::try_from(raw).map_err(|e| HeaderError::Decode(e.to_string()))?;
        let chain_id = signed.header.chain_id.as_str();
        if chain_id != self.chain_id {
            return Err(HeaderError::ChainId {
                got: chain_id.into(),
                pinned: self.chain_id.clone(),
            });
        }
        let untrusted = UntrustedBlockState {
            signed_header: &signed,
            validators: &self.validators,
            next_validators: Some(&self.validators),
        };
        let pinned = self.validators.hash();
        for (field, named) in [
            ("validatorsHash", signed.header.validators_hash),
            ("nextValidatorsHash", signed.header.next_validators_hash),
        ] {
            if named != pinned {
                return Err(HeaderError::ValidatorSet {
                    field,
                    named: named.to_string(),
                });
            }
        }
        let verifier = ProdVerifier::default();
        // The header is the block the commit signs, each signature a pinned validator's; then
        // those signatures hold more than 2/3 of the power.
        verdict(verifier.verify_validator_sets(&untrusted))?;
        verdict(verifier.verify_commit(&untrusted))?;
        Ok(signed)
    }
}

fn verdict(verdict: Verdict) -> Result<(), HeaderError> {
    let not_enough = |tally: VotingPowerTally| HeaderError::NotEnoughPower {
        signed: tally.tallied,
        total: tally.total,
    };
    match verdict {
        Verdict::Success => Ok(()),
        Verdict::NotEnoughTrust(tally) => Err(not_enough(tally)),
        Verdict::Invalid(VerificationErrorDetail::InsufficientSignersOverlap(e)) => {
            Err(not_enough(e.tally))
        }
        Verdict::Invalid(detail) => Err(HeaderError::Commit(detail.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commitment::testchain::{TestChain, encode};

    fn pinned(chain: &TestChain) -> PinnedNetwork {
        PinnedNetwork::from_genesis(&chain.genesis()).unwrap()
    }

    #[test]
    fn a_genesis_pins_its_chain_and_validators() {
        let chain = TestChain::new("gpubridge-test", 4, 1);
        let network = pinned(&chain);
        assert_eq!(
            (network.chain_id(), network.size()),
            ("gpubridge-test", (4, 40))
        );
        let mut empty: serde_json::Value = serde_json::from_slice(&chain.genesis()).unwrap();
        empty["validators"] = serde_json::json!([]);
        assert_eq!(
            PinnedNetwork::from_genesis(empty.to_string().as_bytes())
                .unwrap_err()
                .to_string(),
            "validators: a genesis without validators pins nothing"
        );
        assert!(
            PinnedNetwork::from_genesis(b"{\"chain_id\": 5}")
                .unwrap_err()
                .to_string()
                .starts_with("is not a CometBFT genesis document")
        );
    }

    #[test]
    fn more_than_two_thirds_of_the_pinned_power_must_sign() {
        let chain = TestChain::new("gpubridge-test", 4, 1);
        let network = pinned(&chain);
        for signers in [&[0, 1, 2, 3][..], &[0, 1, 2], &[1, 2, 3]] {
            let header = chain.signed_header(5, [3; 32], signers, None);
            let verified = network.verify(&encode(header.clone())).unwrap();
            assert_eq!(verified, header, "{signers:?}");
        }
        for signers in [&[0, 1][..], &[3]] {
            let header = chain.signed_header(5, [3; 32], signers, None);
            assert_eq!(
                network.verify(&encode(header)),
                Err(HeaderError::NotEnoughPower {
                    signed: 10 * signers.len() as u64,
                    total: 40
                }),
                "{signers:?}"
            );
        }
        let unsigned = chain.signed_header(5, [3; 32], &[], None);
        assert_eq!(
            network.verify(&encode(unsigned)).unwrap_err().to_string(),
            "proof.signedHeader.commit: no signatures for commit"
        );
    }

    #[test]
    fn forged_altered_and_foreign_headers_are_refused() {
        let chain = TestChain::new("gpubridge-test", 4, 1);
        let network = pinned(&chain);
        let all = [0, 1, 2, 3];

        // Validators of another network, naming their own set.
        let others = TestChain::new("gpubridge-test", 4, 100);
        let header = others.signed_header(5, [3; 32], &all, None);
        assert!(matches!(
            network.verify(&encode(header)),
            Err(HeaderError::ValidatorSet {
                field: "validatorsHash",
                ..
            })
        ));
        // ...or naming the pinned set while signing with their own keys.
        let header = others.signed_header(5, [3; 32], &all, Some(&chain.set()));
        assert!(matches!(
            network.verify(&encode(header)),
            Err(HeaderError::Commit(_))
        ));

        // Another chain's header, though signed by the same keys.
        let elsewhere = TestChain::new("another-chain", 4, 1);
        let header = elsewhere.signed_header(5, [3; 32], &all, None);
        assert_eq!(
            network.verify(&encode(header)).unwrap_err().to_string(),
            "proof.signedHeader.header.chainId: another-chain, but this provider pinned gpubridge-test"
        );

        // The header changed after it was signed: the commit signs another block.
        let mut header = chain.signed_header(5, [3; 32], &all, None);
        header.header.last_results_hash = Some(tendermint::Hash::Sha256([4; 32]));
        assert!(matches!(
            network.verify(&encode(header)),
            Err(HeaderError::Commit(_))
        ));

        // A signature with one bit flipped.
        let mut header = chain.signed_header(5, [3; 32], &all, None);
        if let tendermint::block::CommitSig::BlockIdFlagCommit { signature, .. } =
            &mut header.commit.signatures[1]
        {
            let mut bytes = signature.as_ref().unwrap().as_bytes().to_vec();
            bytes[10] ^= 1;
            *signature = tendermint::Signature::new(<[u8; 64]>::try_from(bytes).unwrap()).unwrap();
        }
        assert!(matches!(
            network.verify(&encode(header)),
            Err(HeaderError::Commit(_))
        ));

        assert!(matches!(
            network.verify(b"\xff\x01garbage"),
            Err(HeaderError::Decode(_))
        ));
    }
}

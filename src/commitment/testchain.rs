//! A chain of test validators whose keys the tests hold: genesis documents and signed headers
//! built the way CometBFT builds them, so the light-client check meets real signatures.

use ed25519_dalek::{Signer, SigningKey};
use prost::Message;
use tendermint::block::header::Version;
use tendermint::block::signed_header::SignedHeader;
use tendermint::block::{self, Commit, CommitSig, Header};
use tendermint::vote::{SignedVote, Type, ValidatorIndex, Vote};
use tendermint::{Hash, Time, account, chain, validator};
use tendermint_proto::v0_38::types::SignedHeader as RawSignedHeader;

pub struct TestChain {
    pub chain_id: String,
    pub keys: Vec<SigningKey>,
}

impl TestChain {
    /// `n` validators of power 10 each, keys derived from `seed`.
    pub fn new(chain_id: &str, n: u8, seed: u8) -> TestChain {
        TestChain {
            chain_id: chain_id.into(),
            keys: (0..n)
                .map(|i| SigningKey::from_bytes(&[seed.wrapping_add(i); 32]))
                .collect(),
        }
    }

    fn info(key: &SigningKey) -> validator::Info {
        let public = tendermint::PublicKey::from_raw_ed25519(key.verifying_key().as_bytes())
            .expect("an ed25519 key");
        validator::Info::new(public, 10u32.into())
    }

    pub fn set(&self) -> validator::Set {
        validator::Set::without_proposer(self.keys.iter().map(Self::info).collect())
    }

    /// The CometBFT genesis document of this chain.
    pub fn genesis(&self) -> Vec<u8> {
        let validators: Vec<_> = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let info = Self::info(key);
                serde_json::json!({
                    "address": info.address.to_string(),
                    "pub_key": {
                        "type": "tendermint/PubKeyEd25519",
                        "value": base64::Engine::encode(
                            &base64::engine::general_purpose::STANDARD,
                            key.verifying_key().as_bytes()
                        ),
                    },
                    "power": "10",
                    "name": format!("validator{i}"),
                })
            })
            .collect();
        serde_json::json!({
            "genesis_time": "2026-12-01T00:00:00Z",
            "chain_id": self.chain_id,
            "initial_height": "1",
            "consensus_params": {
                "block": {"max_bytes": "22020096", "max_gas": "-1"},
                "evidence": {
                    "max_age_num_blocks": "100000",
                    "max_age_duration": "172800000000000",
                    "max_bytes": "1048576"
                },
                "validator": {"pub_key_types": ["ed25519"]},
                "version": {"app": "0"},
                "abci": {"vote_extensions_enable_height": "0"}
            },
            "validators": validators,
            "app_hash": "",
            "app_state": {"params": {}}
        })
        .to_string()
        .into_bytes()
    }

    /// The header of `height` committing to `last_results_hash`, with precommits from the
    /// validators at `signers` (indices into `keys`), naming the set `named` (this chain's
    /// when `None`).
    pub fn signed_header(
        &self,
        height: u64,
        last_results_hash: [u8; 32],
        signers: &[usize],
        named: Option<&validator::Set>,
    ) -> SignedHeader {
        let own = self.set();
        let named = named.unwrap_or(&own);
        let time = Time::from_unix_timestamp(1_796_000_000 + height as i64, 0).unwrap();
        let header = Header {
            version: Version { block: 11, app: 0 },
            chain_id: chain::Id::try_from(self.chain_id.as_str()).unwrap(),
            height: block::Height::try_from(height).unwrap(),
            time,
            last_block_id: None,
            last_commit_hash: None,
            data_hash: None,
            validators_hash: named.hash(),
            next_validators_hash: named.hash(),
            consensus_hash: Hash::Sha256([7; 32]),
            app_hash: Default::default(),
            last_results_hash: Some(Hash::Sha256(last_results_hash)),
            evidence_hash: None,
            proposer_address: named.validators()[0].address,
        };
        let block_id = block::Id {
            hash: header.hash(),
            part_set_header: block::parts::Header::new(1, Hash::Sha256([9; 32])).unwrap(),
        };
        let signatures = own
            .validators()
            .iter()
            .enumerate()
            .map(|(index, info)| {
                let at = self
                    .keys
                    .iter()
                    .position(|k| Self::info(k).address == info.address)
                    .unwrap();
                if !signers.contains(&at) {
                    return CommitSig::BlockIdFlagAbsent;
                }
                let sign_bytes = self.sign_bytes(&header, block_id, info.address, index);
                let signature = self.keys[at].sign(&sign_bytes).to_bytes();
                CommitSig::BlockIdFlagCommit {
                    validator_address: info.address,
                    timestamp: time,
                    signature: tendermint::Signature::new(signature).unwrap(),
                }
            })
            .collect();
        let commit = Commit {
            height: header.height,
            round: block::Round::default(),
            block_id,
            signatures,
        };
        SignedHeader::new(header, commit).unwrap()
    }

    fn sign_bytes(
        &self,
        header: &Header,
        block_id: block::Id,
        address: account::Id,
        index: usize,
    ) -> Vec<u8> {
        let vote = Vote {
            vote_type: Type::Precommit,
            height: header.height,
            round: block::Round::default(),
            block_id: Some(block_id),
            timestamp: Some(header.time),
            validator_address: address,
            validator_index: ValidatorIndex::try_from(index as u32).unwrap(),
            signature: tendermint::Signature::new([0; 64]).unwrap(),
            extension: Vec::new(),
            extension_signature: None,
        };
        SignedVote::from_vote(vote, header.chain_id.clone())
            .unwrap()
            .sign_bytes()
    }
}

/// The bytes a gateway ships a signed header as.
pub fn encode(signed: SignedHeader) -> Vec<u8> {
    RawSignedHeader::from(signed).encode_to_vec()
}

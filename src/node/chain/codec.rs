//! The chain's encodings, pure: a [`Tx`] as the bytes a block carries, and what it did as the
//! bytes its result records. Prost encodes fields in number order and this protocol has no maps,
//! so one value always gives the same bytes on every validator.

use prost::Message;
use sha2::{Digest, Sha256};
use tonic::Code;

use crate::commitment::TxResult;
use crate::node::state::{NonceUse, Outcome, Placed, StateError, Tx};
use crate::wire::envelope::{open, reopen};
use crate::wire::proto::{
    Ack, Batch, BatchItem, BatchOutcome, BondBody, CancelBody, DepositBody, EvidenceSubmitBody,
    HeartbeatBody, LeaseDecisionBody, LeaseEndBody, LeaseStreamBody, OfferBody, OrderBody,
    ProbeBody, ProposeBody, ReceiptsBody, RegisterBody, RimBody, Transaction, TxOutcome,
    UnbondBody, VoteBody, WaitingLeases, WithdrawBody, transaction, tx_outcome,
};
use crate::wire::{MAX_MESSAGE_BYTES, Rejection};

/// Largest transaction a block may carry: the largest request the gateway takes.
pub const MAX_TX_BYTES: usize = MAX_MESSAGE_BYTES;

macro_rules! transactions {
    ($($variant:ident => $body:ty),* $(,)?) => {
        /// `tx` as the message a block carries.
        fn transaction_of(tx: &Tx) -> Transaction {
            let kind = match tx {
                $(Tx::$variant(signed) => transaction::Kind::$variant(signed.clone()),)*
            };
            Transaction { kind: Some(kind) }
        }

        /// The request `kind` carries, or the batch it is.
        fn from_kind(kind: transaction::Kind) -> Result<Tx, Batch> {
            match kind {
                $(transaction::Kind::$variant(signed) => Ok(Tx::$variant(signed)),)*
                transaction::Kind::Batch(batch) => Err(batch),
            }
        }

        /// The signed request `tx` carries, verified as its type's body over the received
        /// bytes and fresh at `now`: its nonce, whose use is the state's to judge.
        pub fn verify_envelope(tx: &Tx, now: i64) -> Result<NonceUse, Rejection> {
            match tx {
                $(Tx::$variant(signed) => open::<$body>(signed, now).map(|o| NonceUse::of(&o)),)*
            }
        }

        /// [`verify_envelope`] without the signature, for a transaction this node's mempool
        /// admitted verified ([`reopen`]).
        pub fn recheck_envelope(tx: &Tx, now: i64) -> Result<NonceUse, Rejection> {
            match tx {
                $(Tx::$variant(signed) => reopen::<$body>(signed, now).map(|o| NonceUse::of(&o)),)*
            }
        }
    };
}

transactions! {
    Register => RegisterBody,
    PublishOffer => OfferBody,
    WithdrawOffer => WithdrawBody,
    Heartbeat => HeartbeatBody,
    OpenLeaseStream => LeaseStreamBody,
    DecideLease => LeaseDecisionBody,
    ReportLeaseEnd => LeaseEndBody,
    Deposit => DepositBody,
    SubmitOrder => OrderBody,
    CancelOrder => CancelBody,
    SubmitReceipts => ReceiptsBody,
    SubmitEvidence => EvidenceSubmitBody,
    Bond => BondBody,
    Unbond => UnbondBody,
    Propose => ProposeBody,
    Vote => VoteBody,
    SubmitProbe => ProbeBody,
    SubmitRim => RimBody,
}

/// Most requests one batch carries.
pub const MAX_BATCH: usize = 256;

/// What one of a block's transactions carries: a signed request, or a gateway's batch of them.
#[derive(Clone, Debug, PartialEq)]
pub enum Carried {
    One(Tx),
    Batch(Vec<Tx>),
}

impl Carried {
    /// The requests, in the order they are applied.
    pub fn requests(&self) -> &[Tx] {
        match self {
            Carried::One(tx) => std::slice::from_ref(tx),
            Carried::Batch(txs) => txs,
        }
    }
}

/// The bytes of `tx` in a block.
pub fn encode_tx(tx: &Tx) -> Vec<u8> {
    transaction_of(tx).encode_to_vec()
}

/// The bytes of a batch of `txs` in a block.
pub fn encode_batch(txs: &[Tx]) -> Vec<u8> {
    let transactions = txs.iter().map(transaction_of).collect();
    Transaction {
        kind: Some(transaction::Kind::Batch(Batch { transactions })),
    }
    .encode_to_vec()
}

/// The hash a request is known by, carried alone or in a batch: the SHA-256 of its bytes as a
/// transaction of its own (CometBFT's hash of that transaction).
pub fn request_hash(tx: &Tx) -> [u8; 32] {
    Sha256::digest(encode_tx(tx)).into()
}

/// What a transaction of a block carries; anything else is refused with the rule it breaks.
pub fn decode_carried(bytes: &[u8]) -> Result<Carried, Rejection> {
    if bytes.len() > MAX_TX_BYTES {
        return Err(Rejection::TooLarge(format!(
            "transaction: {} bytes is over the limit of {MAX_TX_BYTES}",
            bytes.len()
        )));
    }
    let decoded = Transaction::decode(bytes).map_err(|e| {
        Rejection::invalid("transaction", &format!("is not a valid Transaction: {e}"))
    })?;
    let kind = decoded
        .kind
        .ok_or_else(|| Rejection::invalid("transaction.kind", "is required"))?;
    let batch = match from_kind(kind) {
        Ok(tx) => return Ok(Carried::One(tx)),
        Err(batch) => batch.transactions,
    };
    if batch.is_empty() || batch.len() > MAX_BATCH {
        return Err(Rejection::invalid(
            "transaction.batch.transactions",
            &format!("must hold 1 to {MAX_BATCH} requests, not {}", batch.len()),
        ));
    }
    batch
        .into_iter()
        .enumerate()
        .map(|(i, inner)| {
            let field = format!("transaction.batch.transactions[{i}]");
            let kind = inner
                .kind
                .ok_or_else(|| Rejection::invalid(&format!("{field}.kind"), "is required"))?;
            from_kind(kind).map_err(|_| {
                Rejection::invalid(&format!("{field}.batch"), "a batch holds no batch")
            })
        })
        .collect::<Result<_, _>>()
        .map(Carried::Batch)
}

/// The result of a batch whose requests did what `items` say, in its order: applied (code 0),
/// its data the batch's outcome.
pub fn batch_result(items: &[TxResult]) -> TxResult {
    let items = items
        .iter()
        .map(|r| BatchItem {
            code: r.code,
            outcome: r.data.clone(),
            reason: r.log.clone(),
        })
        .collect();
    TxResult {
        code: 0,
        data: TxOutcome {
            kind: Some(tx_outcome::Kind::Batch(BatchOutcome { items })),
        }
        .encode_to_vec(),
        log: String::new(),
    }
}

/// The result a block records for one transaction.
pub fn result_of(outcome: &Result<Outcome, StateError>) -> TxResult {
    match outcome {
        Ok(outcome) => TxResult {
            code: 0,
            data: encode_outcome(outcome),
            log: String::new(),
        },
        Err(StateError::Rejected(rejection)) => refused(rejection),
        // A broken invariant, the same on every validator: the transaction is refused as an
        // internal error and the chain goes on.
        Err(other) => TxResult {
            code: Code::Internal as u32,
            data: Vec::new(),
            log: other.to_string(),
        },
    }
}

/// The result of a transaction refused before it reached the state (undecodable, forged).
pub fn refused(rejection: &Rejection) -> TxResult {
    TxResult {
        code: rejection.code() as u32,
        data: Vec::new(),
        log: rejection.to_string(),
    }
}

/// What a committed result says to the client that sent its transaction: the outcome, or the
/// refusal as the gRPC status the embedded node would have answered.
pub fn outcome_of(result: &TxResult) -> Result<Outcome, tonic::Status> {
    if result.code != 0 {
        let code = i32::try_from(result.code).map_or(Code::Unknown, Code::from_i32);
        return Err(tonic::Status::new(code, result.log.clone()));
    }
    decode_outcome(&result.data)
        .map_err(|e| tonic::Status::internal(format!("the chain's result is unreadable: {e}")))
}

fn encode_outcome(outcome: &Outcome) -> Vec<u8> {
    use tx_outcome::Kind;
    let kind = match outcome.clone() {
        Outcome::Done => Kind::Done(Ack {}),
        Outcome::Published(reply) => Kind::Published(reply),
        Outcome::Waiting(provider, waiting) => Kind::Waiting(WaitingLeases { provider, waiting }),
        Outcome::Ended(reply) => Kind::Ended(reply),
        Outcome::Balance(reply) => Kind::Balance(reply),
        Outcome::Ordered(placed) => {
            let (provider, lease) = placed.lease.unzip();
            Kind::Ordered(crate::wire::proto::Placed {
                order: Some(placed.order),
                provider: provider.unwrap_or_default(),
                lease,
            })
        }
        Outcome::Order(view) => Kind::Order(*view),
        Outcome::Receipts(reply) => Kind::Receipts(reply),
        Outcome::Evidence(reply) => Kind::Evidence(reply),
        Outcome::Stake(reply) => Kind::Stake(reply),
        Outcome::Proposal(view) => Kind::Proposal(view),
        Outcome::Probe(reply) => Kind::Probe(reply),
        Outcome::Rim(reply) => Kind::Rim(reply),
    };
    TxOutcome { kind: Some(kind) }.encode_to_vec()
}

fn decode_outcome(bytes: &[u8]) -> Result<Outcome, String> {
    use tx_outcome::Kind;
    let kind = TxOutcome::decode(bytes)
        .map_err(|e| e.to_string())?
        .kind
        .ok_or("no outcome")?;
    Ok(match kind {
        Kind::Done(Ack {}) => Outcome::Done,
        Kind::Published(reply) => Outcome::Published(reply),
        Kind::Waiting(w) => Outcome::Waiting(w.provider, w.waiting),
        Kind::Ended(reply) => Outcome::Ended(reply),
        Kind::Balance(reply) => Outcome::Balance(reply),
        Kind::Ordered(placed) => Outcome::Ordered(Box::new(Placed {
            order: placed.order.ok_or("an order's outcome without its order")?,
            lease: placed.lease.map(|lease| (placed.provider, lease)),
        })),
        Kind::Order(view) => Outcome::Order(Box::new(view)),
        Kind::Receipts(reply) => Outcome::Receipts(reply),
        Kind::Evidence(reply) => Outcome::Evidence(reply),
        Kind::Stake(reply) => Outcome::Stake(reply),
        Kind::Proposal(view) => Outcome::Proposal(view),
        Kind::Probe(reply) => Outcome::Probe(reply),
        Kind::Rim(reply) => Outcome::Rim(reply),
        Kind::Batch(_) => return Err("a batch's outcome answers no one request".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::generate_key;
    use crate::wire::envelope::seal;
    use crate::wire::proto::{LeaseBody, OrderView, Signed};

    fn deposit(now: i64) -> Signed {
        let body = DepositBody {
            header: None,
            amount: "5".into(),
            denomination: "USDC".into(),
        };
        seal(&generate_key(), body, now)
    }

    #[test]
    fn every_kind_of_transaction_comes_back_as_it_went() {
        let s = deposit(1_000);
        let all = [
            Tx::Register(s.clone()),
            Tx::PublishOffer(s.clone()),
            Tx::WithdrawOffer(s.clone()),
            Tx::Heartbeat(s.clone()),
            Tx::OpenLeaseStream(s.clone()),
            Tx::DecideLease(s.clone()),
            Tx::ReportLeaseEnd(s.clone()),
            Tx::Deposit(s.clone()),
            Tx::SubmitOrder(s.clone()),
            Tx::CancelOrder(s.clone()),
            Tx::SubmitReceipts(s.clone()),
            Tx::SubmitEvidence(s.clone()),
            Tx::Bond(s.clone()),
            Tx::Unbond(s.clone()),
            Tx::Propose(s.clone()),
            Tx::Vote(s.clone()),
            Tx::SubmitProbe(s.clone()),
            Tx::SubmitRim(s),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for tx in &all {
            let bytes = encode_tx(tx);
            let decoded = decode_carried(&bytes).unwrap();
            assert_eq!(decoded, Carried::One(tx.clone()));
            assert_eq!(encode_tx(&decoded.requests()[0]), bytes, "canonical");
            seen.insert(bytes);
        }
        assert_eq!(
            seen.len(),
            all.len(),
            "each kind is told apart by its bytes"
        );
    }

    #[test]
    fn bytes_that_are_no_transaction_are_refused_with_the_rule() {
        let error = decode_carried(b"\xff\xff\xff").unwrap_err();
        assert!(
            error.to_string().starts_with("transaction: is not a valid"),
            "{error}"
        );
        let error = decode_carried(&[]).unwrap_err();
        assert_eq!(error.to_string(), "transaction.kind: is required");
        let error = decode_carried(&vec![0; MAX_TX_BYTES + 1]).unwrap_err();
        assert!(matches!(error, Rejection::TooLarge(_)), "{error}");
    }

    #[test]
    fn a_batch_carries_its_requests_in_order_and_holds_no_batch() {
        let requests = vec![
            Tx::Deposit(deposit(1_000)),
            Tx::SubmitOrder(deposit(1_001)),
            Tx::Deposit(deposit(1_002)),
        ];
        let bytes = encode_batch(&requests);
        let carried = decode_carried(&bytes).unwrap();
        assert_eq!(carried.requests(), requests.as_slice());
        assert_eq!(carried, Carried::Batch(requests.clone()));
        // Each is known by the hash it would have alone.
        let alone = encode_tx(&requests[1]);
        assert_eq!(
            request_hash(&requests[1]),
            <[u8; 32]>::from(Sha256::digest(&alone))
        );
        assert_eq!(
            decode_carried(&alone).unwrap(),
            Carried::One(requests[1].clone())
        );

        let batch_of = |transactions: Vec<Transaction>| {
            Transaction {
                kind: Some(transaction::Kind::Batch(Batch { transactions })),
            }
            .encode_to_vec()
        };
        let error = decode_carried(&batch_of(vec![])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "transaction.batch.transactions: must hold 1 to 256 requests, not 0"
        );
        let one = Transaction::decode(alone.as_slice()).unwrap();
        let error = decode_carried(&batch_of(vec![one.clone(); MAX_BATCH + 1])).unwrap_err();
        assert!(error.to_string().ends_with("not 257"), "{error}");
        assert!(decode_carried(&batch_of(vec![one.clone(); MAX_BATCH])).is_ok());
        let nested = Transaction::decode(bytes.as_slice()).unwrap();
        let error = decode_carried(&batch_of(vec![one.clone(), nested])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "transaction.batch.transactions[1].batch: a batch holds no batch"
        );
        let error = decode_carried(&batch_of(vec![one, Transaction::default()])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "transaction.batch.transactions[1].kind: is required"
        );
    }

    #[test]
    fn a_batchs_result_says_what_each_of_its_requests_did() {
        let applied = result_of(&Ok(Outcome::Done));
        let refused = refused(&Rejection::Precondition("insufficient funds".into()));
        let result = batch_result(&[applied.clone(), refused.clone()]);
        assert_eq!((result.code, result.log.as_str()), (0, ""));
        let Some(tx_outcome::Kind::Batch(batch)) =
            TxOutcome::decode(result.data.as_slice()).unwrap().kind
        else {
            panic!("a batch's outcome")
        };
        let items: Vec<TxResult> = batch
            .items
            .into_iter()
            .map(|i| TxResult {
                code: i.code,
                data: i.outcome,
                log: i.reason,
            })
            .collect();
        assert_eq!(items, [applied, refused]);
        assert!(
            outcome_of(&result).is_err(),
            "a batch answers no one client"
        );
    }

    #[test]
    fn a_request_signed_as_another_kind_or_forged_fails_its_envelope_check() {
        let now = 1_000;
        let signed = deposit(now);
        let used = verify_envelope(&Tx::Deposit(signed.clone()), now).unwrap();
        let header = DepositBody::decode(signed.body.as_slice())
            .unwrap()
            .header
            .unwrap();
        assert_eq!(
            (used.signer.as_bytes().to_vec(), used.issued_at, used.nonce),
            (header.signer, header.issued_at, header.nonce)
        );
        let error = verify_envelope(&Tx::Bond(signed.clone()), now).unwrap_err();
        assert!(
            error.to_string().contains("gpubridge/v1/bond"),
            "a deposit's signature is no bond's: {error}"
        );
        let mut forged = signed.clone();
        let last = forged.body.len() - 1;
        forged.body[last] ^= 1;
        let error = verify_envelope(&Tx::Deposit(forged), now).unwrap_err();
        assert!(matches!(error, Rejection::Unauthenticated(_)), "{error}");
        let error = verify_envelope(&Tx::Deposit(signed), now + 3_600).unwrap_err();
        assert!(error.to_string().contains("header.issued_at"), "{error}");
    }

    #[test]
    fn outcomes_and_refusals_come_back_as_the_client_would_have_been_answered() {
        let order = OrderView {
            order_id: "o-1".into(),
            ..Default::default()
        };
        let lease = LeaseBody {
            lease_id: "l-1".into(),
            ..Default::default()
        };
        let outcomes = [
            Outcome::Done,
            Outcome::Waiting("p".into(), vec![lease.clone()]),
            Outcome::Ordered(Box::new(Placed {
                order: order.clone(),
                lease: Some(("p".into(), lease)),
            })),
            Outcome::Ordered(Box::new(Placed {
                order: order.clone(),
                lease: None,
            })),
            Outcome::Order(Box::new(order)),
        ];
        for outcome in outcomes {
            let result = result_of(&Ok(outcome.clone()));
            assert_eq!(result.code, 0);
            assert_eq!(outcome_of(&result).unwrap(), outcome);
        }
        let refusal = Rejection::Duplicate("header.nonce: replay".into());
        let result = result_of(&Err(refusal.clone().into()));
        assert_eq!(result.code, Code::AlreadyExists as u32);
        let status = outcome_of(&result).unwrap_err();
        assert_eq!(status.code(), tonic::Status::from(refusal).code());
        assert_eq!(status.message(), "header.nonce: replay");
        let broken = result_of(&Err(StateError::Inconsistent("x".into())));
        assert_eq!(outcome_of(&broken).unwrap_err().code(), Code::Internal);
    }
}

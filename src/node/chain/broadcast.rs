//! A validator's gateway hands each state-changing request to its CometBFT node as a
//! transaction (JSON-RPC `broadcast_tx_sync`, which answers after CheckTx) and answers the
//! client when the block that carries it is committed, with what the block recorded for it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tendermint::block::signed_header::SignedHeader;
use tendermint_proto::v0_38::types::SignedHeader as RawSignedHeader;
use tokio::sync::oneshot;
use tonic::Status;
use tracing::debug;

use super::app::Finalized;
use super::codec::{MAX_TX_BYTES, encode_batch, encode_tx, outcome_of};
use crate::commitment::TxResult;
use crate::node::state::{Outcome, Tx};

pub struct Broadcaster {
    rpc: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Clients waiting for a request's block, by the request's hash.
    waiting: Mutex<HashMap<[u8; 32], Vec<oneshot::Sender<TxResult>>>>,
    timeout: Duration,
    /// Requests to broadcast, oldest first. At most [`SENDING_AT_ONCE`] broadcasts are with the
    /// node; the requests that come meanwhile go together when one is done, as one batch: the
    /// chain's work per transaction (mempool, gossip, the ABCI round trips) is then paid once
    /// for them.
    queue: Mutex<Vec<Queued>>,
    sending: tokio::sync::Semaphore,
}

/// Broadcasts with the node at once: two, so that a batch goes while the node is still
/// answering the last (its CheckTx waits while the application applies a block).
const SENDING_AT_ONCE: usize = 2;
/// Most requests a batch carries: a lease is proven by its batch's outcome, which carries what
/// each of them did, so this bounds a lease's proof (some 50 KiB of orders' outcomes).
const BATCH_REQUESTS: usize = 64;

/// A request waiting in the queue, and where to say whether the node took it.
struct Queued {
    tx: Tx,
    /// Its bytes as a transaction of its own.
    bytes: Vec<u8>,
    checked: oneshot::Sender<Result<TxResult, Status>>,
}

impl Broadcaster {
    /// Sends to the CometBFT node whose RPC is at `rpc`; a transaction not committed within
    /// `timeout` is answered as such.
    pub fn new(rpc: Uri, timeout: Duration) -> Broadcaster {
        Broadcaster {
            rpc,
            client: Client::builder(TokioExecutor::new()).build_http(),
            waiting: Mutex::default(),
            timeout,
            queue: Mutex::default(),
            sending: tokio::sync::Semaphore::new(SENDING_AT_ONCE),
        }
    }

    fn waiting(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Vec<oneshot::Sender<TxResult>>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Broadcasts `tx` and waits for its block: the outcome, or the refusal as a status.
    pub async fn submit(&self, tx: &Tx) -> Result<Outcome, Status> {
        let bytes = encode_tx(tx);
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        let (sender, receiver) = oneshot::channel();
        // Registered before the broadcast: the block may be committed before its answer comes.
        self.waiting().entry(hash).or_default().push(sender);
        let checked = self.broadcast_queued(tx.clone(), bytes).await;
        let result = match checked {
            Ok(check) if check.code == 0 => tokio::time::timeout(self.timeout, receiver).await,
            refused => {
                self.waiting().remove(&hash);
                return outcome_of(&refused?);
            }
        };
        match result {
            Ok(Ok(result)) => outcome_of(&result),
            Ok(Err(_)) => Err(Status::unavailable("the gateway is stopping")),
            Err(_) => {
                self.waiting().remove(&hash);
                Err(Status::deadline_exceeded(format!(
                    "the transaction {} was not committed within {:?}; it may still be: ask the \
                     network for what it changed before sending it again",
                    hex::encode(hash),
                    self.timeout
                )))
            }
        }
    }

    /// Answers the clients waiting for the requests of a committed block.
    pub fn committed(&self, block: &Finalized) {
        let mut waiting = self.waiting();
        for (hash, result) in &block.answers {
            for sender in waiting.remove(hash).unwrap_or_default() {
                let _ = sender.send(result.clone());
            }
        }
    }

    /// Queues `tx` and, once a broadcast is free, sends what is queued: whether its node took
    /// `tx` (CheckTx). Every request queued is followed by one turn at sending, so none is left
    /// behind; a turn finds its own request already sent when an earlier turn took it along. (A
    /// client that goes away before its turn leaves its request to the next one: it is still
    /// the request the client signed and sent.)
    async fn broadcast_queued(&self, tx: Tx, bytes: Vec<u8>) -> Result<TxResult, Status> {
        let (checked, answer) = oneshot::channel();
        self.queue().push(Queued { tx, bytes, checked });
        {
            let _turn = self
                .sending
                .acquire()
                .await
                .expect("the semaphore is never closed");
            let batch = take_batch(&mut self.queue());
            if !batch.is_empty() {
                self.send(batch).await;
            }
        }
        answer
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("the gateway is stopping")))
    }

    /// Broadcasts `queued`: alone as itself, several as a batch. A batch the node does not take
    /// whole (one of its requests is refused, or the node fails) is sent again one request at a
    /// time, so that each is answered for itself.
    async fn send(&self, mut queued: Vec<Queued>) {
        if queued.len() > 1 {
            let txs: Vec<Tx> = queued.iter().map(|q| q.tx.clone()).collect();
            match self.broadcast(&encode_batch(&txs)).await {
                Ok(check) if check.code == 0 => {
                    for q in queued {
                        let _ = q.checked.send(Ok(check.clone()));
                    }
                    return;
                }
                refused => debug!(
                    requests = queued.len(),
                    refusal = ?refused.map(|c| c.log),
                    "a batch was refused: its requests go one at a time"
                ),
            }
        }
        let alone = queued.drain(..).map(|q| async move {
            let _ = q.checked.send(self.broadcast(&q.bytes).await);
        });
        futures::future::join_all(alone).await;
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<Queued>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn broadcast(&self, tx: &[u8]) -> Result<TxResult, Status> {
        let answer = self
            .call("broadcast_tx_sync", json!({"tx": STANDARD.encode(tx)}))
            .await?;
        check_result(&answer)
    }

    /// The header of block `height` with the commit that signs it, as a protobuf SignedHeader:
    /// what proves the results of block `height − 1`. Waits for the block up to the commit
    /// timeout.
    pub async fn signed_header(&self, height: u64) -> Result<Vec<u8>, Status> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let answer = self
                .call("commit", json!({"height": height.to_string()}))
                .await
                .and_then(|body| signed_header_of(&body));
            match answer {
                Ok(header) => return Ok(header),
                Err(status) if tokio::time::Instant::now() >= deadline => return Err(status),
                // Most often the block is not committed yet.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// One JSON-RPC call to the node; the answer's bytes.
    async fn call(&self, method: &str, params: Value) -> Result<Bytes, Status> {
        let call = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let unreachable = |e: &dyn std::fmt::Display| {
            Status::unavailable(format!("the validator's CometBFT RPC at {}: {e}", self.rpc))
        };
        let request = Request::post(self.rpc.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(call.to_string())))
            .map_err(|e| unreachable(&e))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| unreachable(&e))?;
        Ok(response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes())
    }
}

/// The oldest queued requests that fit one batch: at most [`BATCH_REQUESTS`], their bytes
/// within the largest transaction; at least one, however large, when any is queued.
fn take_batch(queue: &mut Vec<Queued>) -> Vec<Queued> {
    // A batch is its requests' bytes, each with a tag and a length of at most 5 bytes, in a
    // field of the same overhead.
    let mut size = 6;
    let taken = queue
        .iter()
        .take(BATCH_REQUESTS)
        .take_while(|q| {
            size += q.bytes.len() + 6;
            size <= MAX_TX_BYTES
        })
        .count()
        .max(1)
        .min(queue.len());
    queue.drain(..taken).collect()
}

/// CometBFT's answer to `commit` as a protobuf SignedHeader. Pure.
pub fn signed_header_of(body: &[u8]) -> Result<Vec<u8>, Status> {
    #[derive(serde::Deserialize)]
    struct Answer {
        result: Option<CommitResult>,
        error: Option<Value>,
    }
    #[derive(serde::Deserialize)]
    struct CommitResult {
        signed_header: SignedHeader,
    }
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|e| Status::unavailable(format!("CometBFT's commit is unreadable: {e}")))?;
    match (answer.result, answer.error) {
        (Some(result), _) => Ok(RawSignedHeader::from(result.signed_header).encode_to_vec()),
        (None, error) => Err(Status::unavailable(format!(
            "CometBFT has no commit: {}",
            error.unwrap_or_default()
        ))),
    }
}

/// CometBFT's answer to `broadcast_tx_sync`: the CheckTx result, or why the node would not take
/// the transaction. Pure.
pub fn check_result(body: &[u8]) -> Result<TxResult, Status> {
    let answer: Value = serde_json::from_slice(body)
        .map_err(|e| Status::unavailable(format!("CometBFT answered something unreadable: {e}")))?;
    if let Some(error) = answer.get("error") {
        let said = error["data"]
            .as_str()
            .or(error["message"].as_str())
            .unwrap_or("no reason given")
            .to_string();
        return Err(if said.contains("tx already exists in cache") {
            Status::already_exists("header.nonce: this request was already received (replay)")
        } else {
            Status::unavailable(format!("the validator's CometBFT node refused it: {said}"))
        });
    }
    let result = &answer["result"];
    let code = result["code"]
        .as_u64()
        .and_then(|c| u32::try_from(c).ok())
        .ok_or_else(|| Status::unavailable(format!("CometBFT's answer has no code: {answer}")))?;
    let data = STANDARD
        .decode(result["data"].as_str().unwrap_or(""))
        .map_err(|e| Status::unavailable(format!("CometBFT's answer: data: {e}")))?;
    Ok(TxResult {
        code,
        data,
        log: result["log"].as_str().unwrap_or("").to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::chain::codec::{Carried, decode_carried, request_hash, result_of};
    use tonic::Code;

    #[test]
    fn cometbfts_answers_become_check_results_or_statuses() {
        let taken = br#"{"jsonrpc":"2.0","id":1,"result":{"code":0,"data":"","log":"","codespace":"","hash":"AB"}}"#;
        assert_eq!(check_result(taken).unwrap(), TxResult::default());
        let refused = br#"{"jsonrpc":"2.0","id":1,"result":{"code":16,"data":"","log":"signature: bad","hash":"AB"}}"#;
        let refused = check_result(refused).unwrap();
        assert_eq!((refused.code, refused.log.as_str()), (16, "signature: bad"));
        assert_eq!(
            outcome_of(&refused).unwrap_err().code(),
            Code::Unauthenticated
        );
        let replay = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"Internal error","data":"tx already exists in cache"}}"#;
        assert_eq!(
            check_result(replay).unwrap_err().code(),
            Code::AlreadyExists
        );
        let full = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"Internal error","data":"mempool is full"}}"#;
        let status = check_result(full).unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("mempool is full"), "{status}");
        assert_eq!(
            check_result(b"<html>").unwrap_err().code(),
            Code::Unavailable
        );
    }

    #[tokio::test]
    async fn an_unreachable_node_is_unavailable_and_leaves_nothing_waiting() {
        let broadcaster = Broadcaster::new(
            "http://127.0.0.1:9".parse().unwrap(),
            Duration::from_secs(1),
        );
        let status = broadcaster
            .submit(&Tx::Deposit(Default::default()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status}");
        assert!(broadcaster.waiting().is_empty());
    }

    /// A node on a loopback port that answers each `broadcast_tx_sync` after `delay`, with the
    /// code `check` gives what it carries; and what it was sent, in order.
    async fn recording_node(
        check: fn(&Carried) -> u32,
        delay: Duration,
    ) -> (Uri, std::sync::Arc<Mutex<Vec<Carried>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}/", listener.local_addr().unwrap());
        let sent = std::sync::Arc::new(Mutex::new(Vec::new()));
        let record = sent.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut chunk = vec![0; 64 * 1024];
                    loop {
                        // One request per connection is enough: each waits for its answer.
                        let text = String::from_utf8_lossy(&request).to_string();
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let length: usize = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length: ")
                                        .map(str::to_string)
                                })
                                .and_then(|l| l.trim().parse().ok())
                                .unwrap_or(0);
                            if body.len() >= length {
                                let call: Value = serde_json::from_str(body).unwrap();
                                let tx = STANDARD
                                    .decode(call["params"]["tx"].as_str().unwrap())
                                    .unwrap();
                                let carried = decode_carried(&tx).unwrap();
                                let code = check(&carried);
                                record.lock().unwrap().push(carried);
                                tokio::time::sleep(delay).await;
                                let log = if code == 0 { "" } else { "refused" };
                                let body = format!(
                                    r#"{{"jsonrpc":"2.0","id":1,"result":{{"code":{code},"data":"","log":"{log}"}}}}"#
                                );
                                let response = format!(
                                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                                    body.len()
                                );
                                let _ = stream.write_all(response.as_bytes()).await;
                                request.clear();
                                continue;
                            }
                        }
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        (uri.parse().unwrap(), sent)
    }

    /// `n` requests submitted at once to `broadcaster`, each answered when committed as
    /// `committed` says; their outcomes.
    async fn submit_at_once(
        broadcaster: &std::sync::Arc<Broadcaster>,
        n: u8,
        committed: TxResult,
    ) -> Vec<Result<Outcome, Status>> {
        let txs: Vec<Tx> = (0..n)
            .map(|i| {
                Tx::Deposit(crate::wire::proto::Signed {
                    body: vec![i],
                    signature: vec![2],
                })
            })
            .collect();
        let submitted: Vec<_> = txs
            .iter()
            .map(|tx| {
                let (broadcaster, tx) = (broadcaster.clone(), tx.clone());
                tokio::spawn(async move { broadcaster.submit(&tx).await })
            })
            .collect();
        // Every request queued, then every one sent and told whether the node took it.
        tokio::time::sleep(Duration::from_millis(20)).await;
        while !broadcaster.queue().is_empty()
            || broadcaster.sending.available_permits() < SENDING_AT_ONCE
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let hashes: Vec<[u8; 32]> = txs.iter().map(request_hash).collect();
        broadcaster.committed(&Finalized {
            height: 1,
            results: Vec::new(),
            answers: hashes.iter().map(|h| (*h, committed.clone())).collect(),
            app_hash: [0; 32],
            applied: Vec::new(),
            matched: Vec::new(),
        });
        let mut outcomes = Vec::new();
        for task in submitted {
            outcomes.push(task.await.unwrap());
        }
        outcomes
    }

    #[tokio::test]
    async fn requests_that_come_while_the_node_is_busy_go_together_as_a_batch() {
        let (node, sent) = recording_node(|_| 0, Duration::from_millis(100)).await;
        let broadcaster = std::sync::Arc::new(Broadcaster::new(node, Duration::from_secs(5)));
        let outcomes = submit_at_once(&broadcaster, 20, result_of(&Ok(Outcome::Done))).await;
        assert!(
            outcomes.iter().all(|o| matches!(o, Ok(Outcome::Done))),
            "{outcomes:?}"
        );
        let sent = sent.lock().unwrap();
        let requests: usize = sent.iter().map(|c| c.requests().len()).sum();
        assert_eq!(requests, 20, "each once: {sent:?}");
        assert_eq!(
            sent.iter().map(|c| c.requests().len()).collect::<Vec<_>>(),
            [1, 1, 18],
            "the first two alone, those that came while they were with the node together"
        );
        assert!(sent.iter().any(|c| matches!(c, Carried::Batch(_))));
        assert!(broadcaster.waiting().is_empty() && broadcaster.queue().is_empty());
    }

    #[tokio::test]
    async fn a_refused_batch_is_sent_again_one_request_at_a_time() {
        let refuse_batches = |c: &Carried| match c {
            Carried::Batch(_) => Code::Unauthenticated as u32,
            Carried::One(_) => 0,
        };
        let (node, sent) = recording_node(refuse_batches, Duration::from_millis(100)).await;
        let broadcaster = std::sync::Arc::new(Broadcaster::new(node, Duration::from_secs(5)));
        let outcomes = submit_at_once(&broadcaster, 10, result_of(&Ok(Outcome::Done))).await;
        assert!(
            outcomes.iter().all(|o| matches!(o, Ok(Outcome::Done))),
            "{outcomes:?}"
        );
        let sent: Vec<String> = sent
            .lock()
            .unwrap()
            .iter()
            .map(|c| match c {
                Carried::One(_) => "alone".to_string(),
                Carried::Batch(txs) => format!("batch of {}", txs.len()),
            })
            .collect();
        // The first two alone; the eight that came meanwhile as a batch, refused, then each
        // alone.
        let mut expected = vec!["alone".to_string(); 2];
        expected.push("batch of 8".to_string());
        expected.extend(vec!["alone".to_string(); 8]);
        assert_eq!(sent, expected);

        // A node that refuses each request: every client hears its own refusal.
        let (node, _) = recording_node(|_| Code::Unauthenticated as u32, Duration::ZERO).await;
        let broadcaster = std::sync::Arc::new(Broadcaster::new(node, Duration::from_secs(5)));
        let outcomes = submit_at_once(&broadcaster, 10, result_of(&Ok(Outcome::Done))).await;
        for outcome in outcomes {
            assert_eq!(outcome.unwrap_err().code(), Code::Unauthenticated);
        }
        assert!(broadcaster.waiting().is_empty());
    }

    #[test]
    fn a_batch_takes_the_oldest_requests_that_fit_one_transaction() {
        let queued = |size: usize| Queued {
            tx: Tx::Deposit(Default::default()),
            bytes: vec![0; size],
            checked: oneshot::channel().0,
        };
        let mut queue: Vec<Queued> = (0..100).map(|_| queued(100)).collect();
        assert_eq!(take_batch(&mut queue).len(), BATCH_REQUESTS);
        assert_eq!(queue.len(), 100 - BATCH_REQUESTS);
        let mut queue: Vec<Queued> = (0..5).map(|_| queued(MAX_TX_BYTES / 3)).collect();
        let batch = take_batch(&mut queue);
        assert_eq!(batch.len(), 2, "within the largest transaction");
        let mut queue = vec![queued(MAX_TX_BYTES), queued(1)];
        assert_eq!(take_batch(&mut queue).len(), 1, "a large one goes alone");
        assert_eq!(take_batch(&mut queue).len(), 1);
        assert!(take_batch(&mut queue).is_empty());
    }

    #[tokio::test]
    async fn a_client_is_answered_when_its_block_is_committed_or_told_it_was_not() {
        let broadcaster = std::sync::Arc::new(Broadcaster::new(
            recording_node(|_| 0, Duration::ZERO).await.0,
            Duration::from_secs(5),
        ));
        let tx = Tx::Deposit(crate::wire::proto::Signed {
            body: vec![1],
            signature: vec![2],
        });
        let hash: [u8; 32] = Sha256::digest(encode_tx(&tx)).into();
        let submitted = tokio::spawn({
            let broadcaster = broadcaster.clone();
            let tx = tx.clone();
            async move { broadcaster.submit(&tx).await }
        });
        while !broadcaster.waiting().contains_key(&hash) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let refused = TxResult {
            code: Code::FailedPrecondition as u32,
            data: Vec::new(),
            log: "insufficient funds".into(),
        };
        broadcaster.committed(&Finalized {
            height: 1,
            results: vec![TxResult::default(), refused.clone()],
            answers: vec![([0; 32], TxResult::default()), (hash, refused)],
            app_hash: [0; 32],
            applied: Vec::new(),
            matched: Vec::new(),
        });
        let status = submitted.await.unwrap().unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::FailedPrecondition, "insufficient funds")
        );
        assert!(broadcaster.waiting().is_empty());

        let impatient = Broadcaster::new(
            recording_node(|_| 0, Duration::ZERO).await.0,
            Duration::from_millis(200),
        );
        let status = impatient.submit(&tx).await.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert!(status.message().contains("may still be"), "{status}");
        assert!(impatient.waiting().is_empty());
    }
}

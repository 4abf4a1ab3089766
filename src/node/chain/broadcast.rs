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

use super::app::Finalized;
use super::codec::{encode_tx, outcome_of};
use crate::commitment::TxResult;
use crate::node::state::{Outcome, Tx};

pub struct Broadcaster {
    rpc: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Clients waiting for a transaction's block, by the transaction's hash.
    waiting: Mutex<HashMap<[u8; 32], Vec<oneshot::Sender<TxResult>>>>,
    timeout: Duration,
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
        let checked = self.broadcast(&bytes).await;
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

    /// Answers the clients waiting for the transactions of a committed block.
    pub fn committed(&self, block: &Finalized) {
        let mut waiting = self.waiting();
        for (hash, result) in block.tx_hashes.iter().zip(&block.results) {
            for sender in waiting.remove(hash).unwrap_or_default() {
                let _ = sender.send(result.clone());
            }
        }
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

    /// A node that takes every transaction (CheckTx code 0), on a loopback port.
    async fn accepting_node() -> Uri {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = vec![0; 64 * 1024];
                let _ = stream.read(&mut request).await;
                let body = r#"{"jsonrpc":"2.0","id":1,"result":{"code":0,"data":"","log":""}}"#;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        uri.parse().unwrap()
    }

    #[tokio::test]
    async fn a_client_is_answered_when_its_block_is_committed_or_told_it_was_not() {
        let broadcaster = std::sync::Arc::new(Broadcaster::new(
            accepting_node().await,
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
            results: vec![TxResult::default(), refused],
            tx_hashes: vec![[0; 32], hash],
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

        let impatient = Broadcaster::new(accepting_node().await, Duration::from_millis(200));
        let status = impatient.submit(&tx).await.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert!(status.message().contains("may still be"), "{status}");
        assert!(impatient.waiting().is_empty());
    }
}

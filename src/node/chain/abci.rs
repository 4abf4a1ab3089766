//! The ABCI 2.0 socket server CometBFT (0.38) connects to: each request translated to a call
//! of [`Chain`], nothing decided here. CometBFT opens one connection for consensus, one for the
//! mempool, one for queries and one for snapshots; `tendermint-abci` serves each on a thread of
//! its own, so consensus requests are handled strictly in the order they arrive.
//!
//! A request that cannot be carried out (the database fails, an invariant is broken) stops the
//! process: an application that answered anyway could diverge from the other validators, and
//! CometBFT exits with it, to replay from the last Commit once restarted.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tendermint_abci::{Application, ServerBuilder};
use tendermint_proto::v0_38::abci::{
    CheckTxType, ExecTxResult, RequestCheckTx, RequestFinalizeBlock, RequestInfo, RequestInitChain,
    ResponseCheckTx, ResponseCommit, ResponseFinalizeBlock, ResponseInfo, ResponseInitChain,
};
use tracing::{error, info};

use super::app::{Chain, DecidedBlock, Finalized};
use super::codec::MAX_TX_BYTES;

/// A block CometBFT committed, as the gateway hears of it.
#[derive(Clone, Debug)]
pub struct Committed {
    pub height: u64,
    pub block: Arc<Finalized>,
}

#[derive(Clone)]
pub struct AbciApp {
    chain: Arc<Chain>,
    finalized: Arc<Mutex<Option<Finalized>>>,
    committed: tokio::sync::broadcast::Sender<Committed>,
}

impl AbciApp {
    pub fn new(chain: Arc<Chain>) -> AbciApp {
        AbciApp {
            chain,
            finalized: Arc::default(),
            committed: tokio::sync::broadcast::channel(64).0,
        }
    }

    /// Every block committed from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Committed> {
        self.committed.subscribe()
    }

    /// Serves CometBFT on `addr` until the process ends.
    pub fn serve(self, addr: SocketAddr) -> Result<(), Box<tendermint_abci::Error>> {
        // A request carries at most one block of transactions; CometBFT's default block is
        // 21 MiB (max_bytes), read in chunks of this size.
        let server = ServerBuilder::new(MAX_TX_BYTES).bind(addr, self)?;
        info!(abci = %addr, "serving ABCI to CometBFT");
        Ok(server.listen()?)
    }
}

/// Stops the process: see the module's documentation.
fn halt(request: &str, error: impl std::fmt::Display) -> ! {
    error!(%error, "{request} failed: stopping so that this validator cannot diverge");
    eprintln!("gpubridge network: {request} failed: {error}");
    std::process::exit(70)
}

fn seconds(time: Option<&tendermint_proto::google::protobuf::Timestamp>) -> i64 {
    time.map_or(0, |t| t.seconds)
}

impl Application for AbciApp {
    fn info(&self, _: RequestInfo) -> ResponseInfo {
        let (height, app_hash) = self.chain.info();
        ResponseInfo {
            data: "gpubridge".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            app_version: 1,
            last_block_height: i64::try_from(height).unwrap_or(i64::MAX),
            last_block_app_hash: app_hash.to_vec().into(),
        }
    }

    fn init_chain(&self, request: RequestInitChain) -> ResponseInitChain {
        match self.chain.init_chain(&request.app_state_bytes) {
            Ok(app_hash) => {
                info!(chain_id = %request.chain_id, app_hash = %hex::encode(app_hash), "chain started");
                ResponseInitChain {
                    app_hash: app_hash.to_vec().into(),
                    ..Default::default()
                }
            }
            Err(e) => halt("InitChain", e),
        }
    }

    fn check_tx(&self, request: RequestCheckTx) -> ResponseCheckTx {
        let recheck = request.r#type == CheckTxType::Recheck as i32;
        let result = self
            .chain
            .check_tx(&request.tx, jiff::Timestamp::now().as_second(), recheck);
        ResponseCheckTx {
            code: result.code,
            log: result.log,
            ..Default::default()
        }
    }

    fn finalize_block(&self, request: RequestFinalizeBlock) -> ResponseFinalizeBlock {
        let block = DecidedBlock {
            height: u64::try_from(request.height).unwrap_or(0),
            time: seconds(request.time.as_ref()),
            hash: request.hash.to_vec(),
            txs: request.txs.iter().map(|tx| tx.to_vec()).collect(),
        };
        let finalized = match self.chain.finalize_block(&block) {
            Ok(finalized) => finalized,
            Err(e) => halt("FinalizeBlock", e),
        };
        let response = ResponseFinalizeBlock {
            tx_results: finalized
                .results
                .iter()
                .map(|r| ExecTxResult {
                    code: r.code,
                    data: r.data.clone().into(),
                    log: r.log.clone(),
                    ..Default::default()
                })
                .collect(),
            app_hash: finalized.app_hash.to_vec().into(),
            ..Default::default()
        };
        *self.finalized.lock().unwrap_or_else(|p| p.into_inner()) = Some(finalized);
        response
    }

    fn commit(&self) -> ResponseCommit {
        let height = match self.chain.commit() {
            Ok(height) => height,
            Err(e) => halt("Commit", e),
        };
        let finalized = self
            .finalized
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(block) = finalized {
            // Nobody listening is no error: the gateway subscribes when it serves.
            let _ = self.committed.send(Committed {
                height,
                block: Arc::new(block),
            });
        }
        ResponseCommit { retain_height: 0 }
    }
}

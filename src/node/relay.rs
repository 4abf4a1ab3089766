//! The gateway's relay (DESIGN §9, `relay.proto`): joins a buyer's Logs or Tunnel call to an
//! Attach stream the provider's operator opens for it, over the provider's outbound Calls
//! stream. The buyer's token is checked against the lease as committed (`access`), once; the
//! bytes are then copied both ways, each call on its own HTTP/2 streams with small buffers, so
//! a stalled connection holds back only itself.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use rand_core::{OsRng, RngCore};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::access::{self, Access, LeaseFacts, SeenNonces};
use crate::identity::{public_key_base58, public_key_from_base58};
use crate::node::records::{LeaseRecord, LeaseState};
use crate::node::store::Store;
use crate::wire::envelope::{FRESHNESS_SECONDS, HasHeader, Signable};
use crate::wire::proto::relay_server::Relay;
use crate::wire::proto::{
    AccessCall, AttachBody, Chunk, LeaseBody, LogsRequest, OrderBody, RelayCallsBody, Signed,
    access_call, chunk,
};
use crate::wire::{MAX_CHUNK_BYTES, Opened, Rejection, open};

/// Chunks buffered per direction of a call: with HTTP/2's per-stream flow control, what a slow
/// reader holds up is its own call only.
const BUFFERED_CHUNKS: usize = 8;
/// How long the operator has to attach to a call.
const ATTACH_WITHIN: Duration = Duration::from_secs(10);
/// Calls queued for one provider; past that, new calls are refused until it catches up.
const QUEUED_CALLS: usize = 256;
/// Tokens and relay requests remembered against replay (each until it expires).
const REMEMBERED_NONCES: usize = 1 << 18;

type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk, Status>> + Send>>;
type ChunkSender = mpsc::Sender<Result<Chunk, Status>>;

#[derive(Clone)]
pub struct RelayService {
    store: Arc<Store>,
    shared: Arc<Shared>,
}

struct Shared {
    /// Each provider's Calls stream, by public key; a new one replaces the old.
    providers: Mutex<HashMap<String, mpsc::Sender<Result<AccessCall, Status>>>>,
    /// Calls sent to a provider and not yet attached, by call id.
    pending: Mutex<HashMap<String, Pending>>,
    nonces: Mutex<SeenNonces>,
}

struct Pending {
    provider: String,
    attached: oneshot::Sender<Attached>,
}

/// The operator's side of a call once it attached.
struct Attached {
    refused: Option<Status>,
    from_operator: Streaming<Chunk>,
    to_operator: ChunkSender,
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// What the relay checks a token against, from the lease as committed: its buyer, the ports its
/// order declared, whether it runs.
fn facts_of(lease: &LeaseRecord) -> Result<(ed25519_dalek::VerifyingKey, Vec<u32>, bool), Status> {
    let buyer = public_key_from_base58(&lease.buyer)
        .map_err(|e| Status::internal(format!("lease {}: buyer key: {e}", lease.lease_id)))?;
    let ports = LeaseBody::decode(lease.body.as_slice())
        .ok()
        .and_then(|body| body.order)
        .and_then(|order| OrderBody::decode(order.body.as_slice()).ok())
        .and_then(|order| order.workload)
        .map(|workload| workload.ports)
        .unwrap_or_default();
    let running = lease.state == LeaseState::Accepted && lease.end.is_none();
    Ok((buyer, ports, running))
}

/// A refusal carried on the operator's signed attach, as the status the buyer gets.
fn refusal_status(refused: &crate::wire::proto::Refused) -> Status {
    Status::new(Code::from_i32(refused.code), refused.message.clone())
}

impl RelayService {
    pub fn new(store: Arc<Store>) -> RelayService {
        RelayService {
            store,
            shared: Arc::new(Shared {
                providers: Mutex::default(),
                pending: Mutex::default(),
                nonces: Mutex::new(SeenNonces::new(REMEMBERED_NONCES, now())),
            }),
        }
    }

    /// Ends every provider's relay stream and every call waiting for its answer, for a stop.
    pub fn end_streams(&self) {
        self.shared
            .providers
            .lock()
            .expect("providers lock")
            .clear();
        self.shared.pending.lock().expect("pending lock").clear();
    }

    /// Opens a provider's signed request, fresh and never seen before (its nonce is
    /// remembered for as long as the request would be fresh).
    fn open_once<M: Signable + Default + HasHeader>(
        &self,
        signed: &Signed,
    ) -> Result<Opened<M>, Status> {
        let now = now();
        let opened = open::<M>(signed, now)?;
        self.shared.nonces.lock().expect("nonces lock").admit(
            &opened.signer,
            &opened.nonce,
            opened.issued_at,
            opened.issued_at + FRESHNESS_SECONDS,
            now,
        )?;
        Ok(opened)
    }

    /// Checks a buyer's token for `access`, sends the call to the lease's provider and waits
    /// for the operator to attach; the operator's side, or why not.
    async fn call(
        &self,
        token: Option<Signed>,
        what: access_call::What,
    ) -> Result<Attached, Status> {
        let token_bytes = token.ok_or_else(|| Rejection::invalid("token", "is required"))?;
        let now = now();
        let token = access::open_token(&token_bytes, now)?;
        let store = self.store.clone();
        let lease_id = token.lease_id.clone();
        let lease = tokio::task::spawn_blocking(move || store.lease(&lease_id))
            .await
            .map_err(|e| Status::internal(format!("task failed: {e}")))??
            .ok_or_else(|| {
                Rejection::NotFound(format!("lease {} does not exist", token.lease_id))
            })?;
        let (buyer, ports, running) = facts_of(&lease)?;
        let facts = LeaseFacts {
            lease_id: &lease.lease_id,
            buyer: &buyer,
            ports: &ports,
            running,
            log_containers: None,
        };
        let access = match &what {
            access_call::What::Logs(options) => Access::Logs {
                container: &options.container,
            },
            access_call::What::Port(port) => Access::Connect { port: *port },
        };
        access::authorize(&token, &facts, access)?;
        self.shared.nonces.lock().expect("nonces lock").admit(
            &token.buyer,
            &token.nonce,
            token.issued_at,
            token.expires_at,
            now,
        )?;
        let provider = lease.provider.clone();
        let calls = self
            .shared
            .providers
            .lock()
            .expect("providers lock")
            .get(&provider)
            .cloned()
            .ok_or_else(|| {
                Status::unavailable(format!(
                    "the provider of lease {} is offline (it has no relay stream here)",
                    lease.lease_id
                ))
            })?;
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        let call_id = hex::encode(id);
        let (attached, attach) = oneshot::channel();
        self.shared.pending.lock().expect("pending lock").insert(
            call_id.clone(),
            Pending {
                provider: provider.clone(),
                attached,
            },
        );
        let call = AccessCall {
            call_id: call_id.clone(),
            lease_id: lease.lease_id.clone(),
            token: Some(token_bytes),
            what: Some(what),
        };
        let unanswered = |status: Status| {
            self.shared
                .pending
                .lock()
                .expect("pending lock")
                .remove(&call_id);
            status
        };
        calls.try_send(Ok(call)).map_err(|e| {
            unanswered(match e {
                mpsc::error::TrySendError::Full(_) => Status::resource_exhausted(format!(
                    "the provider of lease {} has {QUEUED_CALLS} calls waiting; retry later",
                    lease.lease_id
                )),
                mpsc::error::TrySendError::Closed(_) => Status::unavailable(format!(
                    "the provider of lease {} is offline (its relay stream closed)",
                    lease.lease_id
                )),
            })
        })?;
        match tokio::time::timeout(ATTACH_WITHIN, attach).await {
            Ok(Ok(attached)) => match attached.refused {
                Some(status) => Err(status),
                None => Ok(attached),
            },
            _ => Err(unanswered(Status::unavailable(format!(
                "the provider of lease {} did not answer within {} s",
                lease.lease_id,
                ATTACH_WITHIN.as_secs()
            )))),
        }
    }
}

/// The operator's chunks as the buyer's: data passes; anything else ends the call. `held`, a
/// sender toward the operator, is dropped only once the operator's side ended (or the buyer
/// left): the operator waits for the end of the gateway's side before it lets go of the call,
/// so none of its last bytes are cut off.
fn to_buyer(from_operator: Streaming<Chunk>, held: ChunkSender) -> ChunkStream {
    Box::pin(from_operator.map_while(move |chunk| {
        let _held = &held;
        match chunk {
            Ok(Chunk {
                kind: Some(chunk::Kind::Data(data)),
            }) => Some(Ok(Chunk {
                kind: Some(chunk::Kind::Data(data)),
            })),
            Ok(_) => Some(Err(Status::internal(
                "the operator sent something other than data after attaching",
            ))),
            // The operator's stream broke (its restart, a lost gateway connection): the buyer
            // reconnects.
            Err(status) => Some(Err(Status::unavailable(format!(
                "the provider's side of the call ended: {}",
                status.message()
            )))),
        }
    }))
}

#[tonic::async_trait]
impl Relay for RelayService {
    type LogsStream = ChunkStream;

    async fn logs(&self, request: Request<LogsRequest>) -> Result<Response<ChunkStream>, Status> {
        let LogsRequest { token, options } = request.into_inner();
        let options = options.unwrap_or_default();
        let attached = self.call(token, access_call::What::Logs(options)).await?;
        // Nothing goes to the operator on a log: its side ends when the buyer's does.
        Ok(Response::new(to_buyer(
            attached.from_operator,
            attached.to_operator,
        )))
    }

    type TunnelStream = ChunkStream;

    async fn tunnel(
        &self,
        request: Request<Streaming<Chunk>>,
    ) -> Result<Response<ChunkStream>, Status> {
        let mut from_buyer = request.into_inner();
        let open = match from_buyer.message().await? {
            Some(Chunk {
                kind: Some(chunk::Kind::Open(open)),
            }) => open,
            _ => return Err(Rejection::invalid("open", "must be the first chunk").into()),
        };
        let attached = self
            .call(open.token, access_call::What::Port(open.port))
            .await?;
        let to_operator = attached.to_operator.clone();
        tokio::spawn(async move {
            loop {
                let chunk = match from_buyer.message().await {
                    Ok(Some(chunk)) => chunk,
                    // The buyer closed its side: an empty chunk tells the operator to close the
                    // pod's (a half-close; the other direction goes on).
                    Ok(None) => Chunk {
                        kind: Some(chunk::Kind::Data(Vec::new())),
                    },
                    Err(_) => break,
                };
                let closes = match &chunk.kind {
                    Some(chunk::Kind::Data(data)) if data.len() <= MAX_CHUNK_BYTES => {
                        data.is_empty()
                    }
                    _ => {
                        let _ = to_operator
                            .send(Err(Status::invalid_argument(format!(
                                "data: after open, only data of at most {MAX_CHUNK_BYTES} bytes"
                            ))))
                            .await;
                        return;
                    }
                };
                if to_operator.send(Ok(chunk)).await.is_err() || closes {
                    return;
                }
            }
            // The buyer is gone: the call ends on the operator's side too.
            let _ = to_operator
                .send(Err(Status::cancelled("the buyer disconnected")))
                .await;
        });
        Ok(Response::new(to_buyer(
            attached.from_operator,
            attached.to_operator,
        )))
    }

    type CallsStream = ReceiverStream<Result<AccessCall, Status>>;

    async fn calls(&self, request: Request<Signed>) -> Result<Response<Self::CallsStream>, Status> {
        let opened = self.open_once::<RelayCallsBody>(&request.into_inner())?;
        let provider = public_key_base58(&opened.signer);
        let (calls, stream) = mpsc::channel(QUEUED_CALLS);
        self.shared
            .providers
            .lock()
            .expect("providers lock")
            .insert(provider.clone(), calls);
        info!(%provider, "relay stream opened");
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    type AttachStream = ReceiverStream<Result<Chunk, Status>>;

    async fn attach(
        &self,
        request: Request<Streaming<Chunk>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut from_operator = request.into_inner();
        let signed = match from_operator.message().await? {
            Some(Chunk {
                kind: Some(chunk::Kind::Attach(signed)),
            }) => signed,
            _ => return Err(Rejection::invalid("attach", "must be the first chunk").into()),
        };
        let opened = self.open_once::<AttachBody>(&signed)?;
        let provider = public_key_base58(&opened.signer);
        let pending = {
            let mut pending = self.shared.pending.lock().expect("pending lock");
            match pending.get(&opened.body.call_id) {
                Some(call) if call.provider == provider => pending.remove(&opened.body.call_id),
                Some(_) => {
                    return Err(Status::permission_denied(format!(
                        "call {} is for another provider",
                        opened.body.call_id
                    )));
                }
                None => None,
            }
        };
        let pending = pending.ok_or_else(|| {
            Status::not_found(format!(
                "call {} is not waiting here (answered, timed out, or never made)",
                opened.body.call_id
            ))
        })?;
        let (to_operator, stream) = mpsc::channel(BUFFERED_CHUNKS);
        let refused = opened.body.refused.as_ref().map(refusal_status);
        if let Some(status) = &refused {
            info!(call = %opened.body.call_id, code = ?status.code(), reason = %status.message(), "the operator refused a call");
        }
        if pending
            .attached
            .send(Attached {
                refused,
                from_operator,
                to_operator,
            })
            .is_err()
        {
            warn!(call = %opened.body.call_id, "the buyer left before the operator attached");
        }
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

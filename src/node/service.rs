//! The gateway's gRPC service. A state-changing call is a transaction: the embedded node applies
//! it as a block of its own through the [`Store`] (on the blocking pool: every write waits for
//! its fsync); a validator's gateway broadcasts it to its CometBFT node and answers when it is
//! committed. Queries read the store's committed state. Leases go to their provider's stream
//! from the outcomes: at once on the embedded node, from each committed block on a validator.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::commitment::results;
use crate::node::chain::app::Finalized;
use crate::node::chain::broadcast::Broadcaster;
use crate::node::state::{Outcome, Tx};
use crate::node::store::{HubError, Store};
use crate::wire::PROTOCOL;
use crate::wire::proto::gateway_server::Gateway;
use crate::wire::proto::{
    Ack, BalanceReply, ChallengeReply, EvidenceReply, HeartbeatReply, InfoReply, InfoRequest,
    LeaseBody, LeaseEndReply, LeaseEvent, LeaseProof, ListOffersReply, ListOffersRequest,
    ListOrdersReply, OrderView, ParamsReply, ParamsRequest, ProbeReply, ProposalView,
    PublishOfferReply, ReceiptsReply, RegisterReply, RimReply, Signed, StakeReply, lease_event,
};

type LeaseSender = mpsc::Sender<Result<LeaseEvent, Status>>;

#[derive(Clone)]
pub struct GatewayService {
    store: Arc<Store>,
    /// How transactions are ordered: here (`None`), or by consensus.
    validator: Option<Arc<Broadcaster>>,
    /// The open lease stream of each provider, by public key; a new stream replaces the old.
    streams: Arc<Mutex<HashMap<String, LeaseStream>>>,
}

/// A provider's open lease stream, and the leases already sent on it: a heartbeat's list of
/// waiting leases then sends only those the stream has not had (a standing order's match).
struct LeaseStream {
    sender: LeaseSender,
    sent: HashSet<String>,
}

/// Lease ids a stream remembers; past that it forgets them all, at worst sending one again
/// (providers are idempotent by lease id).
const REMEMBERED_PER_STREAM: usize = 10_000;

/// A state-changing call: its name, the transaction it sends, and the outcome it answers with.
macro_rules! transact {
    ($self:ident, $request:ident, $call:ident, $answer:pat => $reply:expr) => {{
        let tx = Tx::$call($request.into_inner());
        match $self.submit(stringify!($call), tx).await? {
            $answer => $reply,
            other => {
                return Err(Status::internal(format!(
                    "{} was answered with {other:?}",
                    stringify!($call)
                )));
            }
        }
    }};
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn lease_event(signed: Signed, proof: Option<LeaseProof>) -> LeaseEvent {
    LeaseEvent {
        event: Some(lease_event::Event::Lease(signed)),
        proof,
    }
}

/// The leases an outcome sends to providers, with their providers' keys: an order's match, and
/// the leases waiting for a provider whose stream opened or whose heartbeat arrived.
fn leases_of(outcome: &Outcome) -> Vec<(&str, &LeaseBody)> {
    match outcome {
        Outcome::Ordered(placed) => placed
            .lease
            .iter()
            .map(|(provider, lease)| (provider.as_str(), lease))
            .collect(),
        Outcome::Waiting(provider, waiting) => waiting
            .iter()
            .map(|lease| (provider.as_str(), lease))
            .collect(),
        _ => Vec::new(),
    }
}

impl GatewayService {
    /// The embedded node's gateway.
    pub fn new(store: Arc<Store>) -> GatewayService {
        GatewayService {
            store,
            validator: None,
            streams: Arc::default(),
        }
    }

    /// A validator's gateway: transactions go through `broadcaster`, and [`Self::committed`]
    /// hears of each block.
    pub fn validator(store: Arc<Store>, broadcaster: Arc<Broadcaster>) -> GatewayService {
        GatewayService {
            validator: Some(broadcaster),
            ..GatewayService::new(store)
        }
    }

    /// Applies `tx` the way this gateway orders transactions; its outcome.
    async fn submit(&self, call: &'static str, tx: Tx) -> Result<Outcome, Status> {
        let Some(broadcaster) = &self.validator else {
            let outcome = self.blocking(call, move |s, now| s.apply(&tx, now)).await?;
            // The embedded network's key signs what it decided alone: no proof to add.
            for (provider, lease) in self.streamed(leases_of(&outcome)) {
                self.deliver(provider, self.store.sign_lease(lease), None);
            }
            return Ok(outcome);
        };
        let outcome = broadcaster.submit(&tx).await;
        if let Err(status) = &outcome {
            warn!(call, error = %status.message(), "request refused");
        }
        outcome
    }

    /// A block committed on a validator: its clients are answered, and its leases are
    /// delivered with the proof that the validators committed them (DESIGN §4 step 2) once the
    /// next block's header is signed. Leases the upkeep matched for standing orders are in no
    /// transaction's result: they reach the provider with its next heartbeat's, which lists them.
    pub fn committed(&self, block: &Finalized) {
        let Some(broadcaster) = &self.validator else {
            return;
        };
        broadcaster.committed(block);
        let mut proven = Vec::new();
        // Proven only when the block has a lease for a stream here; then all at once.
        let mut places = None;
        for (index, outcome) in &block.applied {
            let leases = self.streamed(leases_of(outcome));
            if leases.is_empty() {
                continue;
            }
            let places = places.get_or_insert_with(|| results::prove_all(&block.results));
            let Some(place) = places.get(*index) else {
                warn!(
                    index,
                    "no result for an applied transaction; its leases wait"
                );
                continue;
            };
            let proof = LeaseProof {
                height: block.height as i64,
                outcome: block.results[*index].data.clone(),
                index: place.index,
                total: place.total,
                aunts: place.aunts.iter().map(|a| a.to_vec()).collect(),
                signed_header: Vec::new(),
            };
            for (provider, lease) in leases {
                proven.push((
                    provider.to_string(),
                    self.store.sign_lease(lease),
                    proof.clone(),
                ));
            }
        }
        if proven.is_empty() {
            return;
        }
        let (gateway, broadcaster, next) = (self.clone(), broadcaster.clone(), block.height + 1);
        tokio::spawn(async move {
            match broadcaster.signed_header(next).await {
                Ok(header) => {
                    for (provider, lease, mut proof) in proven {
                        proof.signed_header = header.clone();
                        gateway.deliver(&provider, lease, Some(proof));
                    }
                }
                Err(status) => warn!(
                    height = next,
                    error = %status.message(),
                    "no signed header to prove leases by; they are resent with the provider's next heartbeat"
                ),
            }
        });
    }

    async fn blocking<T: Send + 'static>(
        &self,
        call: &'static str,
        work: impl FnOnce(&Store, i64) -> Result<T, HubError> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store.clone();
        let result = tokio::task::spawn_blocking(move || work(&store, now()))
            .await
            .map_err(|e| Status::internal(format!("task failed: {e}")))?;
        if let Err(e) = &result {
            warn!(call, error = %e, "request refused");
        }
        result.map_err(Status::from)
    }

    /// Those of `leases` whose provider has a stream open here: only they are signed and
    /// proven here (a provider's other leases wait for its next stream or heartbeat).
    fn streamed<'a>(&self, leases: Vec<(&'a str, &'a LeaseBody)>) -> Vec<(&'a str, &'a LeaseBody)> {
        let streams = self.streams.lock().expect("streams lock");
        leases
            .into_iter()
            .filter(|(provider, _)| streams.contains_key(*provider))
            .collect()
    }

    /// Sends a lease to its provider's stream when one is open and has not had it; otherwise it
    /// waits there for the provider's next stream.
    pub fn deliver(&self, provider: &str, lease: Signed, proof: Option<LeaseProof>) {
        let lease_id = LeaseBody::decode(lease.body.as_slice())
            .map(|l| l.lease_id)
            .unwrap_or_default();
        let mut streams = self.streams.lock().expect("streams lock");
        let Some(stream) = streams.get_mut(provider) else {
            return;
        };
        if stream.sent.contains(&lease_id) {
            return;
        }
        if stream
            .sender
            .try_send(Ok(lease_event(lease, proof)))
            .is_err()
        {
            warn!(%provider, "lease stream full or closed; the lease is resent on its next stream");
            return;
        }
        if stream.sent.len() >= REMEMBERED_PER_STREAM {
            stream.sent.clear();
        }
        stream.sent.insert(lease_id);
    }
}

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn submit_receipts(
        &self,
        request: Request<Signed>,
    ) -> Result<Response<ReceiptsReply>, Status> {
        let reply = transact!(self, request, SubmitReceipts, Outcome::Receipts(reply) => reply);
        if let Some(r) = &reply.rejection {
            warn!(kind = %r.kind, sequence = r.sequence, message = %r.message, "receipt refused");
        }
        Ok(Response::new(reply))
    }

    async fn lease_challenge(
        &self,
        request: Request<Signed>,
    ) -> Result<Response<ChallengeReply>, Status> {
        let signed = request.into_inner();
        let reply = self
            .blocking("LeaseChallenge", move |s, now| {
                s.lease_challenge(&signed, now)
            })
            .await?;
        Ok(Response::new(reply))
    }

    async fn bond(&self, request: Request<Signed>) -> Result<Response<StakeReply>, Status> {
        let reply = transact!(self, request, Bond, Outcome::Stake(reply) => reply);
        Ok(Response::new(reply))
    }

    async fn unbond(&self, request: Request<Signed>) -> Result<Response<StakeReply>, Status> {
        let reply = transact!(self, request, Unbond, Outcome::Stake(reply) => reply);
        Ok(Response::new(reply))
    }

    async fn params(&self, _: Request<ParamsRequest>) -> Result<Response<ParamsReply>, Status> {
        let reply = self.blocking("Params", |s, _| s.params_view()).await?;
        Ok(Response::new(reply))
    }

    async fn propose(&self, request: Request<Signed>) -> Result<Response<ProposalView>, Status> {
        let reply = transact!(self, request, Propose, Outcome::Proposal(view) => view);
        Ok(Response::new(reply))
    }

    async fn vote(&self, request: Request<Signed>) -> Result<Response<ProposalView>, Status> {
        let reply = transact!(self, request, Vote, Outcome::Proposal(view) => view);
        Ok(Response::new(reply))
    }

    async fn stake(&self, request: Request<Signed>) -> Result<Response<StakeReply>, Status> {
        let signed = request.into_inner();
        let reply = self
            .blocking("Stake", move |s, now| s.stake(&signed, now))
            .await?;
        Ok(Response::new(reply))
    }

    async fn submit_evidence(
        &self,
        request: Request<Signed>,
    ) -> Result<Response<EvidenceReply>, Status> {
        let reply = transact!(self, request, SubmitEvidence, Outcome::Evidence(reply) => reply);
        Ok(Response::new(reply))
    }

    async fn submit_probe(&self, request: Request<Signed>) -> Result<Response<ProbeReply>, Status> {
        let reply = transact!(self, request, SubmitProbe, Outcome::Probe(reply) => reply);
        Ok(Response::new(reply))
    }

    async fn submit_rim(&self, request: Request<Signed>) -> Result<Response<RimReply>, Status> {
        let reply = transact!(self, request, SubmitRim, Outcome::Rim(reply) => reply);
        Ok(Response::new(reply))
    }

    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoReply>, Status> {
        let params = self.store.params()?;
        Ok(Response::new(InfoReply {
            network_key: self.store.network_key().as_bytes().to_vec(),
            protocol: PROTOCOL.into(),
            offer_ttl_seconds: params.offer_ttl_seconds,
            heartbeat_timeout_seconds: params.heartbeat_timeout_seconds,
        }))
    }

    async fn list_offers(
        &self,
        _: Request<ListOffersRequest>,
    ) -> Result<Response<ListOffersReply>, Status> {
        let offers = self
            .blocking("ListOffers", |s, now| s.list_offers(now))
            .await?;
        Ok(Response::new(ListOffersReply { offers }))
    }

    async fn register(&self, request: Request<Signed>) -> Result<Response<RegisterReply>, Status> {
        transact!(self, request, Register, Outcome::Done => ());
        let params = self.store.params()?;
        Ok(Response::new(RegisterReply {
            network_key: self.store.network_key().as_bytes().to_vec(),
            offer_ttl_seconds: params.offer_ttl_seconds,
            heartbeat_timeout_seconds: params.heartbeat_timeout_seconds,
        }))
    }

    async fn publish_offer(
        &self,
        request: Request<Signed>,
    ) -> Result<Response<PublishOfferReply>, Status> {
        let reply = transact!(self, request, PublishOffer, Outcome::Published(reply) => reply);
        Ok(Response::new(reply))
    }

    async fn withdraw_offer(&self, request: Request<Signed>) -> Result<Response<Ack>, Status> {
        transact!(self, request, WithdrawOffer, Outcome::Done => ());
        Ok(Response::new(Ack {}))
    }

    async fn heartbeat(
        &self,
        request: Request<Signed>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        transact!(self, request, Heartbeat, Outcome::Waiting(..) => ());
        Ok(Response::new(HeartbeatReply { server_time: now() }))
    }

    type LeasesStream = ReceiverStream<Result<LeaseEvent, Status>>;

    async fn leases(
        &self,
        request: Request<Signed>,
    ) -> Result<Response<Self::LeasesStream>, Status> {
        let signed = request.into_inner();
        // Who is asking, checked here so that the stream is registered before the store is read:
        // a lease matched in between is then delivered live (perhaps also in `waiting`; providers
        // are idempotent by lease id) instead of being missed.
        let opened: crate::wire::Opened<crate::wire::proto::LeaseStreamBody> =
            crate::wire::open(&signed, now())?;
        let provider = crate::identity::public_key_base58(&opened.signer);
        let (tx, rx) = mpsc::channel(1024);
        let previous = self.streams.lock().expect("streams lock").insert(
            provider.clone(),
            LeaseStream {
                sender: tx,
                sent: HashSet::new(),
            },
        );
        // The leases waiting for the provider are in the outcome, delivered like any other.
        match self.submit("Leases", Tx::OpenLeaseStream(signed)).await {
            Ok(Outcome::Waiting(_, waiting)) => {
                info!(%provider, waiting = waiting.len(), "lease stream opened");
            }
            opened => {
                let mut streams = self.streams.lock().expect("streams lock");
                match previous {
                    Some(previous) => streams.insert(provider, previous),
                    None => streams.remove(&provider),
                };
                return Err(match opened {
                    Err(status) => status,
                    Ok(other) => Status::internal(format!("Leases was answered with {other:?}")),
                });
            }
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn decide_lease(&self, request: Request<Signed>) -> Result<Response<Ack>, Status> {
        transact!(self, request, DecideLease, Outcome::Done => ());
        Ok(Response::new(Ack {}))
    }

    async fn report_lease_end(
        &self,
        request: Request<Signed>,
    ) -> Result<Response<LeaseEndReply>, Status> {
        let reply = transact!(self, request, ReportLeaseEnd, Outcome::Ended(reply) => reply);
        Ok(Response::new(reply))
    }

    async fn deposit(&self, request: Request<Signed>) -> Result<Response<BalanceReply>, Status> {
        let reply = transact!(self, request, Deposit, Outcome::Balance(reply) => reply);
        Ok(Response::new(reply))
    }

    async fn submit_order(&self, request: Request<Signed>) -> Result<Response<OrderView>, Status> {
        let order = transact!(self, request, SubmitOrder, Outcome::Ordered(placed) => placed.order);
        Ok(Response::new(order))
    }

    async fn cancel_order(&self, request: Request<Signed>) -> Result<Response<OrderView>, Status> {
        let view = transact!(self, request, CancelOrder, Outcome::Order(view) => *view);
        Ok(Response::new(view))
    }

    async fn list_orders(
        &self,
        request: Request<Signed>,
    ) -> Result<Response<ListOrdersReply>, Status> {
        let signed = request.into_inner();
        let orders = self
            .blocking("ListOrders", move |s, now| s.list_orders(&signed, now))
            .await?;
        Ok(Response::new(ListOrdersReply { orders }))
    }

    async fn order_status(&self, request: Request<Signed>) -> Result<Response<OrderView>, Status> {
        let signed = request.into_inner();
        let view = self
            .blocking("OrderStatus", move |s, now| s.order_status(&signed, now))
            .await?;
        Ok(Response::new(view))
    }

    async fn balance(&self, request: Request<Signed>) -> Result<Response<BalanceReply>, Status> {
        let signed = request.into_inner();
        let reply = self
            .blocking("Balance", move |s, now| s.balance(&signed, now))
            .await?;
        Ok(Response::new(reply))
    }
}

//! The gateway's gRPC service: each call verifies, applies through the [`Store`], and answers.
//! Store work runs on the blocking pool: every write waits for its fsync.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::node::store::{HubError, Store};
use crate::wire::PROTOCOL;
use crate::wire::proto::gateway_server::Gateway;
use crate::wire::proto::{
    Ack, BalanceReply, ChallengeReply, EvidenceReply, HeartbeatReply, InfoReply, InfoRequest,
    LeaseEndReply, LeaseEvent, ListOffersReply, ListOffersRequest, ListOrdersReply, OrderView,
    ParamsReply, ParamsRequest, ProposalView, PublishOfferReply, ReceiptsReply, RegisterReply,
    Signed, StakeReply, lease_event,
};

type LeaseSender = mpsc::Sender<Result<LeaseEvent, Status>>;

#[derive(Clone)]
pub struct GatewayService {
    store: Arc<Store>,
    /// The open lease stream of each provider, by public key; a new stream replaces the old.
    streams: Arc<Mutex<HashMap<String, LeaseSender>>>,
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn lease_event(signed: Signed) -> LeaseEvent {
    LeaseEvent {
        event: Some(lease_event::Event::Lease(signed)),
    }
}

impl GatewayService {
    pub fn new(store: Arc<Store>) -> GatewayService {
        GatewayService {
            store,
            streams: Arc::default(),
        }
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

    /// Sends a lease to its provider's stream when one is open; otherwise it waits there for
    /// the provider's next stream.
    pub fn deliver(&self, provider: &str, lease: Signed) {
        let sender = self
            .streams
            .lock()
            .expect("streams lock")
            .get(provider)
            .cloned();
        if let Some(sender) = sender
            && sender.try_send(Ok(lease_event(lease))).is_err()
        {
            warn!(%provider, "lease stream full or closed; the lease is resent on its next stream");
        }
    }
}

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn submit_receipts(
        &self,
        request: Request<Signed>,
    ) -> Result<Response<ReceiptsReply>, Status> {
        let signed = request.into_inner();
        let reply = self
            .blocking("SubmitReceipts", move |s, now| {
                s.submit_receipts(&signed, now)
            })
            .await?;
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
        let signed = request.into_inner();
        let reply = self
            .blocking("Bond", move |s, now| s.bond(&signed, now))
            .await?;
        Ok(Response::new(reply))
    }

    async fn unbond(&self, request: Request<Signed>) -> Result<Response<StakeReply>, Status> {
        let signed = request.into_inner();
        let reply = self
            .blocking("Unbond", move |s, now| s.unbond(&signed, now))
            .await?;
        Ok(Response::new(reply))
    }

    async fn params(&self, _: Request<ParamsRequest>) -> Result<Response<ParamsReply>, Status> {
        let reply = self.blocking("Params", |s, _| s.params_view()).await?;
        Ok(Response::new(reply))
    }

    async fn propose(&self, request: Request<Signed>) -> Result<Response<ProposalView>, Status> {
        let signed = request.into_inner();
        let reply = self
            .blocking("Propose", move |s, now| s.propose(&signed, now))
            .await?;
        Ok(Response::new(reply))
    }

    async fn vote(&self, request: Request<Signed>) -> Result<Response<ProposalView>, Status> {
        let signed = request.into_inner();
        let reply = self
            .blocking("Vote", move |s, now| s.vote(&signed, now))
            .await?;
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
        let signed = request.into_inner();
        let reply = self
            .blocking("SubmitEvidence", move |s, now| {
                s.submit_evidence(&signed, now)
            })
            .await?;
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
        let signed = request.into_inner();
        self.blocking("Register", move |s, now| s.register(&signed, now))
            .await?;
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
        let signed = request.into_inner();
        let reply = self
            .blocking("PublishOffer", move |s, now| s.publish(&signed, now))
            .await?;
        Ok(Response::new(reply))
    }

    async fn withdraw_offer(&self, request: Request<Signed>) -> Result<Response<Ack>, Status> {
        let signed = request.into_inner();
        self.blocking("WithdrawOffer", move |s, now| s.withdraw(&signed, now))
            .await?;
        Ok(Response::new(Ack {}))
    }

    async fn heartbeat(
        &self,
        request: Request<Signed>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let signed = request.into_inner();
        self.blocking("Heartbeat", move |s, now| s.heartbeat(&signed, now))
            .await?;
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
        let previous = self
            .streams
            .lock()
            .expect("streams lock")
            .insert(provider.clone(), tx.clone());
        let opened = self
            .blocking("Leases", move |s, now| s.open_lease_stream(&signed, now))
            .await;
        let waiting = match opened {
            Ok((_, waiting)) => waiting,
            Err(status) => {
                let mut streams = self.streams.lock().expect("streams lock");
                match previous {
                    Some(previous) => streams.insert(provider, previous),
                    None => streams.remove(&provider),
                };
                return Err(status);
            }
        };
        info!(%provider, waiting = waiting.len(), "lease stream opened");
        for lease in waiting {
            let _ = tx.send(Ok(lease_event(lease))).await;
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn decide_lease(&self, request: Request<Signed>) -> Result<Response<Ack>, Status> {
        let signed = request.into_inner();
        self.blocking("DecideLease", move |s, now| s.decide_lease(&signed, now))
            .await?;
        Ok(Response::new(Ack {}))
    }

    async fn report_lease_end(
        &self,
        request: Request<Signed>,
    ) -> Result<Response<LeaseEndReply>, Status> {
        let signed = request.into_inner();
        let reply = self
            .blocking("ReportLeaseEnd", move |s, now| s.report_end(&signed, now))
            .await?;
        Ok(Response::new(reply))
    }

    async fn deposit(&self, request: Request<Signed>) -> Result<Response<BalanceReply>, Status> {
        let signed = request.into_inner();
        let reply = self
            .blocking("Deposit", move |s, now| s.deposit(&signed, now))
            .await?;
        Ok(Response::new(reply))
    }

    async fn submit_order(&self, request: Request<Signed>) -> Result<Response<OrderView>, Status> {
        let signed = request.into_inner();
        let submitted = self
            .blocking("SubmitOrder", move |s, now| s.submit_order(&signed, now))
            .await?;
        if let Some((provider, lease)) = submitted.lease {
            self.deliver(&provider, lease);
        }
        Ok(Response::new(submitted.order))
    }

    async fn cancel_order(&self, request: Request<Signed>) -> Result<Response<OrderView>, Status> {
        let signed = request.into_inner();
        let view = self
            .blocking("CancelOrder", move |s, now| s.cancel(&signed, now))
            .await?;
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

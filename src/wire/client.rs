//! A gateway client that signs every request with its key: used by the operator's session, the
//! buyer CLI and the tests.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Status, Streaming};

use crate::wire::amount::Amount;
use crate::wire::envelope::{HasHeader, Signable, seal};
use crate::wire::proto::gateway_client::GatewayClient;
use crate::wire::proto::relay_client::RelayClient;
use crate::wire::proto::{
    BalanceReply, BondBody, CancelBody, ChallengeBody, ChallengeReply, DepositBody, EvidenceReply,
    EvidenceSubmitBody, GpuOcsp, HeartbeatBody, InfoReply, InfoRequest, LeaseDecisionBody,
    LeaseEndBody, LeaseEndReply, LeaseEvent, LeaseStreamBody, ListOffersRequest, OfferBody,
    OfferView, OrderBody, OrderView, ParamChange, ParamsReply, ParamsRequest, ProbeBody,
    ProbeReply, ProbeStep, ProposalView, ProposeBody, PublishOfferReply, QueryBody, ReceiptsBody,
    ReceiptsReply, RegisterBody, RegisterReply, RimBody, RimReply, Signed, StakeReply, UnbondBody,
    VoteBody, WithdrawBody,
};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("network endpoint {url}: {reason}")]
    Endpoint { url: String, reason: String },
    #[error("CA file {path}: {reason}")]
    Ca { path: String, reason: String },
}

/// Where the network is and how to trust it.
#[derive(Clone, Debug)]
pub struct Target {
    /// `http://host:port`, or `https://host:port` for TLS.
    pub url: String,
    /// PEM CA bundle to verify the network's TLS certificate; the system roots when absent.
    pub ca_file: Option<std::path::PathBuf>,
}

/// A lazily connected channel to `target`: calls fail (and the caller retries) until it is up.
pub fn channel(target: &Target) -> Result<Channel, ConnectError> {
    Ok(endpoint(target)?.connect_lazy())
}

/// One channel over several gateways of one network: each call goes to one that is up, so the
/// calls go on while any answers.
pub fn any_channel(targets: &[Target]) -> Result<Channel, ConnectError> {
    match targets {
        [one] => channel(one),
        many => Ok(Channel::balance_list(
            many.iter()
                .map(endpoint)
                .collect::<Result<Vec<_>, _>>()?
                .into_iter(),
        )),
    }
}

fn endpoint(target: &Target) -> Result<Endpoint, ConnectError> {
    let fail = |reason: String| ConnectError::Endpoint {
        url: target.url.clone(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(target.url.clone())
        .map_err(|e| fail(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .initial_stream_window_size(crate::wire::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(crate::wire::CONNECTION_WINDOW_BYTES);
    if target.url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(path) = &target.ca_file {
            let pem = std::fs::read(path).map_err(|e| ConnectError::Ca {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| fail(e.to_string()))?;
    }
    Ok(endpoint)
}

/// A client of a gateway's relay (buyer access, relay.proto), decoding messages up to the
/// protocol's limit.
pub fn relay_client(channel: Channel) -> RelayClient<Channel> {
    RelayClient::new(channel).max_decoding_message_size(crate::wire::MAX_MESSAGE_BYTES)
}

#[derive(Clone)]
pub struct NetworkClient {
    inner: GatewayClient<Channel>,
    key: SigningKey,
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl NetworkClient {
    pub fn new(channel: Channel, key: SigningKey) -> NetworkClient {
        NetworkClient {
            inner: GatewayClient::new(channel)
                .max_decoding_message_size(crate::wire::MAX_MESSAGE_BYTES),
            key,
        }
    }

    fn seal<M: Signable + HasHeader>(&self, body: M) -> Signed {
        seal(&self.key, body, now())
    }

    pub async fn info(&self) -> Result<InfoReply, Status> {
        Ok(self.inner.clone().info(InfoRequest {}).await?.into_inner())
    }

    pub async fn list_offers(&self) -> Result<Vec<OfferView>, Status> {
        Ok(self
            .inner
            .clone()
            .list_offers(ListOffersRequest {})
            .await?
            .into_inner()
            .offers)
    }

    pub async fn register(&self, name: &str, region: &str) -> Result<RegisterReply, Status> {
        let body = RegisterBody {
            header: None,
            name: name.into(),
            region: region.into(),
        };
        let signed = self.seal(body);
        Ok(self.inner.clone().register(signed).await?.into_inner())
    }

    pub async fn publish(&self, body: OfferBody) -> Result<PublishOfferReply, Status> {
        let signed = self.seal(body);
        Ok(self.inner.clone().publish_offer(signed).await?.into_inner())
    }

    pub async fn withdraw(&self, offer_name: &str) -> Result<(), Status> {
        let body = WithdrawBody {
            header: None,
            offer_name: offer_name.into(),
        };
        let signed = self.seal(body);
        self.inner.clone().withdraw_offer(signed).await?;
        Ok(())
    }

    pub async fn heartbeat(&self) -> Result<(), Status> {
        let signed = self.seal(HeartbeatBody::default());
        self.inner.clone().heartbeat(signed).await?;
        Ok(())
    }

    pub async fn leases(&self) -> Result<Streaming<LeaseEvent>, Status> {
        let signed = self.seal(LeaseStreamBody::default());
        Ok(self.inner.clone().leases(signed).await?.into_inner())
    }

    pub async fn decide(&self, lease_id: &str, accept: bool, reason: &str) -> Result<(), Status> {
        let body = LeaseDecisionBody {
            header: None,
            lease_id: lease_id.into(),
            accept,
            reason: reason.into(),
        };
        let signed = self.seal(body);
        self.inner.clone().decide_lease(signed).await?;
        Ok(())
    }

    pub async fn report_end(&self, body: LeaseEndBody) -> Result<LeaseEndReply, Status> {
        let signed = self.seal(body);
        Ok(self
            .inner
            .clone()
            .report_lease_end(signed)
            .await?
            .into_inner())
    }

    /// Forwards a lease's receipts, with the provider's certificate for the lease key.
    pub async fn submit_receipts(
        &self,
        lease_id: &str,
        certificate: Vec<u8>,
        receipts: Vec<Signed>,
    ) -> Result<ReceiptsReply, Status> {
        let body = ReceiptsBody {
            header: None,
            lease_id: lease_id.into(),
            certificate,
            receipts,
        };
        let signed = self.seal(body);
        Ok(self
            .inner
            .clone()
            .submit_receipts(signed)
            .await?
            .into_inner())
    }

    pub async fn lease_challenge(&self, lease_id: &str) -> Result<ChallengeReply, Status> {
        let body = ChallengeBody {
            header: None,
            lease_id: lease_id.into(),
        };
        let signed = self.seal(body);
        Ok(self
            .inner
            .clone()
            .lease_challenge(signed)
            .await?
            .into_inner())
    }

    /// Forwards a lease's evidence, with the digest of the image its pod runs (empty until
    /// the workload container started) and the OCSP responses fetched for its GPUs' chains.
    pub async fn submit_evidence(
        &self,
        lease_id: &str,
        certificate: Vec<u8>,
        evidence: Signed,
        image_digest: &str,
        ocsp: Vec<GpuOcsp>,
    ) -> Result<EvidenceReply, Status> {
        let body = EvidenceSubmitBody {
            header: None,
            lease_id: lease_id.into(),
            certificate,
            evidence: Some(evidence),
            image_digest: image_digest.into(),
            ocsp,
        };
        let signed = self.seal(body);
        Ok(self
            .inner
            .clone()
            .submit_evidence(signed)
            .await?
            .into_inner())
    }

    /// Forwards a step of a lease's GPU probe.
    pub async fn submit_probe(
        &self,
        lease_id: &str,
        certificate: Vec<u8>,
        step: ProbeStep,
    ) -> Result<ProbeReply, Status> {
        let body = ProbeBody {
            header: None,
            lease_id: lease_id.into(),
            certificate,
            step: Some(step),
        };
        let signed = self.seal(body);
        Ok(self.inner.clone().submit_probe(signed).await?.into_inner())
    }

    /// Submits one of NVIDIA's reference integrity manifests, as published.
    pub async fn submit_rim(&self, manifest: Vec<u8>) -> Result<RimReply, Status> {
        let body = RimBody {
            header: None,
            manifest,
        };
        let signed = self.seal(body);
        Ok(self.inner.clone().submit_rim(signed).await?.into_inner())
    }

    pub async fn deposit(
        &self,
        amount: Amount,
        denomination: &str,
    ) -> Result<BalanceReply, Status> {
        let body = DepositBody {
            header: None,
            amount: amount.to_string(),
            denomination: denomination.into(),
        };
        let signed = self.seal(body);
        Ok(self.inner.clone().deposit(signed).await?.into_inner())
    }

    pub async fn submit(&self, body: OrderBody) -> Result<OrderView, Status> {
        let signed = self.seal(body);
        self.submit_signed(signed).await
    }

    /// Sends an already signed order as is (replays and forgeries in tests).
    pub async fn submit_signed(&self, signed: Signed) -> Result<OrderView, Status> {
        Ok(self.inner.clone().submit_order(signed).await?.into_inner())
    }

    pub async fn cancel(&self, order_id: &str) -> Result<OrderView, Status> {
        let body = CancelBody {
            header: None,
            order_id: order_id.into(),
        };
        let signed = self.seal(body);
        Ok(self.inner.clone().cancel_order(signed).await?.into_inner())
    }

    pub async fn list_orders(&self) -> Result<Vec<OrderView>, Status> {
        let signed = self.seal(QueryBody::default());
        Ok(self
            .inner
            .clone()
            .list_orders(signed)
            .await?
            .into_inner()
            .orders)
    }

    pub async fn order_status(&self, order_id: &str) -> Result<OrderView, Status> {
        let body = QueryBody {
            header: None,
            order_id: order_id.into(),
        };
        let signed = self.seal(body);
        Ok(self.inner.clone().order_status(signed).await?.into_inner())
    }

    pub async fn balance(&self) -> Result<BalanceReply, Status> {
        let signed = self.seal(QueryBody::default());
        Ok(self.inner.clone().balance(signed).await?.into_inner())
    }

    /// Bonds `amount` of the network's stake denomination, from `source` ("available" or
    /// "earnings").
    pub async fn bond(&self, amount: Amount, source: &str) -> Result<StakeReply, Status> {
        let body = BondBody {
            header: None,
            amount: amount.to_string(),
            source: source.into(),
        };
        let signed = self.seal(body);
        Ok(self.inner.clone().bond(signed).await?.into_inner())
    }

    pub async fn unbond(&self, amount: Amount) -> Result<StakeReply, Status> {
        let body = UnbondBody {
            header: None,
            amount: amount.to_string(),
        };
        let signed = self.seal(body);
        Ok(self.inner.clone().unbond(signed).await?.into_inner())
    }

    pub async fn stake(&self) -> Result<StakeReply, Status> {
        let signed = self.seal(QueryBody::default());
        Ok(self.inner.clone().stake(signed).await?.into_inner())
    }

    pub async fn params(&self) -> Result<ParamsReply, Status> {
        Ok(self
            .inner
            .clone()
            .params(ParamsRequest {})
            .await?
            .into_inner())
    }

    /// Proposes `changes` (name, value), effective at `effective_height`, with `deposit`.
    pub async fn propose(
        &self,
        changes: Vec<(String, String)>,
        effective_height: u64,
        deposit: Amount,
    ) -> Result<ProposalView, Status> {
        let body = ProposeBody {
            header: None,
            changes: changes
                .into_iter()
                .map(|(name, value)| ParamChange { name, value })
                .collect(),
            effective_height,
            deposit: deposit.to_string(),
        };
        let signed = self.seal(body);
        Ok(self.inner.clone().propose(signed).await?.into_inner())
    }

    pub async fn vote(&self, proposal_id: u64, yes: bool) -> Result<ProposalView, Status> {
        let body = VoteBody {
            header: None,
            proposal_id,
            yes,
        };
        let signed = self.seal(body);
        Ok(self.inner.clone().vote(signed).await?.into_inner())
    }
}

//! The collector (DESIGN §4): the operator's gRPC endpoint for lease sidecars.
//!
//! Every request is signed with a lease key and carries the provider's certificate for it; the
//! collector verifies both, then every receipt and the chain (or the evidence and where it says
//! it runs), forwards what verified to the network, and answers with the network's verdict, so a
//! meter's receipts are acknowledged only once the network holds them. It writes a summary into
//! the ComputeLease at a bounded rate and counts every refusal.
//!
//! A refusal is written onto the lease only when the certificate verified: the lease id is then
//! the provider's word, not the sender's, so a stranger cannot mark arbitrary leases.

mod ocsp;
pub mod summary;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{Api, Client, ResourceExt};
use prost::Message;
use serde::Serialize;
use tonic::{Code, Request, Response, Status};
use tracing::{info, warn};

use crate::attestation::{EvidenceRejection, verify_evidence};
use crate::crd::{
    ATTESTED_CONDITION, ComputeLease, LeaseAttestation, LeaseAttestationPart, LeaseMeteringPart,
    METERED_CONDITION,
};
use crate::identity::{LeaseCertificate, verify_lease_certificate};
use crate::metering::chain::MAX_RECEIPTS_PER_BATCH;
use crate::metering::{ChainHead, LeaseTerms, ReceiptRejection, Step, check_next};
use crate::operator::metrics::Metrics;
use crate::operator::status::apply_status;
use crate::wire::client::NetworkClient;
use crate::wire::envelope::HasHeader;
use crate::wire::proto::collector_server::{Collector, CollectorServer};
use crate::wire::proto::{
    AccessUsage, ChallengeReply, EvidenceReply, ProbeReply, Receipt,
    ReceiptRejection as WireRejection, ReceiptsReply, SidecarAccessBody, SidecarChallengeBody,
    SidecarEvidenceBody, SidecarProbeBody, SidecarReceiptsBody, Signed,
};
use crate::wire::{Rejection, Signable, open};
use crate::workload::{POD_NAME, WORKLOAD_CONTAINER, namespace_for};
pub use ocsp::OcspFetcher;
use summary::{
    LeaseProgress, Served, access_count, metering_from_status, seconds, usage_from, with_probe,
};

/// Field managers of the collector's status writes. Server-side apply drops whatever a manager
/// owned and leaves out of its next apply, so each manager writes all of its fields every time:
/// usage with the Metered condition, attestation with the Attested condition.
pub const METERING_FIELD_MANAGER: &str = "gpubridge-collector-metering";
pub const ATTESTATION_FIELD_MANAGER: &str = "gpubridge-collector-attestation";

/// Bodies sent by sidecars: each carries the lease certificate.
trait SidecarBody: Signable + Default + HasHeader {
    fn certificate(&self) -> &[u8];
}

macro_rules! sidecar_body {
    ($($body:ty),*) => {$(
        impl SidecarBody for $body {
            fn certificate(&self) -> &[u8] { &self.certificate }
        }
    )*};
}
sidecar_body!(
    SidecarReceiptsBody,
    SidecarChallengeBody,
    SidecarEvidenceBody,
    SidecarProbeBody,
    SidecarAccessBody
);

/// A sidecar request whose certificate and signature verified, with its lease.
struct Authenticated<B> {
    body: B,
    certificate: LeaseCertificate,
    lease_key: VerifyingKey,
    lease: ComputeLease,
}

pub struct CollectorService {
    provider: VerifyingKey,
    client: Client,
    network: Option<NetworkClient>,
    metrics: Metrics,
    status_interval: Duration,
    /// Where OCSP responses for the GPUs' chains come from; none leaves revocation unchecked.
    ocsp: Option<OcspFetcher>,
    /// Per lease id; entries go when the lease's final receipt is in.
    leases: Mutex<HashMap<String, LeaseProgress>>,
}

/// How long the collector remembers a lease it heard nothing from; after that the next request
/// starts from the network's word again.
const FORGET_SILENT_LEASE: Duration = Duration::from_secs(3600);

fn now() -> Timestamp {
    Timestamp::now()
}

impl CollectorService {
    pub fn new(
        provider: VerifyingKey,
        client: Client,
        network: Option<NetworkClient>,
        metrics: Metrics,
        status_interval: Duration,
        ocsp: Option<OcspFetcher>,
    ) -> CollectorService {
        CollectorService {
            provider,
            client,
            network,
            metrics,
            status_interval,
            ocsp,
            leases: Mutex::default(),
        }
    }

    fn refused(&self, subject: &str, reason: &str) {
        self.metrics
            .verification_failures
            .with_label_values(&[subject, reason])
            .inc();
    }

    fn network(&self) -> Result<&NetworkClient, Status> {
        self.network.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this operator has no --network-url: receipts and evidence stay with the sidecars",
            )
        })
    }

    /// Verifies the envelope, the certificate and that the envelope's signer is the certified
    /// lease key, and finds the lease.
    async fn authenticate<B: SidecarBody>(
        &self,
        signed: &Signed,
    ) -> Result<Authenticated<B>, Status> {
        let now = now();
        let opened = open::<B>(signed, now.as_second()).inspect_err(|e| {
            self.refused("sidecar", e.kind());
        })?;
        let certificate =
            verify_lease_certificate(opened.body.certificate(), &self.provider, now.as_second())
                .map_err(|e| {
                    self.refused("sidecar", "Certificate");
                    Status::unauthenticated(format!("certificate: {e}"))
                })?;
        let lease_key = VerifyingKey::try_from(certificate.lease_public_key.as_slice())
            .map_err(|e| Status::unauthenticated(format!("certificate: {e}")))?;
        let api: Api<ComputeLease> = Api::all(self.client.clone());
        let lease = api
            .get_opt(&certificate.lease_id)
            .await
            .map_err(|e| Status::unavailable(format!("reading the lease: {e}")))?
            .filter(|l| l.spec.lease_id == certificate.lease_id)
            .ok_or_else(|| {
                self.refused("sidecar", "UnknownLease");
                Status::not_found(format!("lease {} is not here", certificate.lease_id))
            })?;
        if opened.signer != lease_key {
            self.refused("sidecar", "WrongLeaseKey");
            let message = "the request is not signed by the certified lease key";
            let condition =
                lease.condition(METERED_CONDITION, false, "WrongLeaseKey", message, now);
            self.write_metering(&lease, None, condition).await;
            return Err(Status::unauthenticated(message));
        }
        Ok(Authenticated {
            body: opened.body,
            certificate,
            lease_key,
            lease,
        })
    }

    /// Server-side applies one of the collector's parts of a lease's status.
    async fn write_status(
        &self,
        lease: &ComputeLease,
        manager: &str,
        part: &(impl Serialize + std::fmt::Debug),
    ) {
        let name = lease.name_any();
        if let Err(e) = apply_status::<ComputeLease>(&self.client, &name, manager, None, part).await
        {
            // The next batch writes the whole summary again.
            warn!(lease = %name, error = %e, "cannot write the lease's usage");
        }
    }

    /// Writes the Metered condition with `usage`, or the usage already on the lease.
    async fn write_metering(
        &self,
        lease: &ComputeLease,
        usage: Option<crate::crd::LeaseUsage>,
        condition: Condition,
    ) {
        let part = LeaseMeteringPart {
            usage: usage.or_else(|| lease.status.as_ref().and_then(|s| s.usage.clone())),
            conditions: [condition],
        };
        self.write_status(lease, METERING_FIELD_MANAGER, &part)
            .await;
    }

    /// Writes the Attested condition with `attestation`, or the attestation already on the lease.
    async fn write_attestation(
        &self,
        lease: &ComputeLease,
        attestation: Option<LeaseAttestation>,
        condition: Condition,
    ) {
        let part = LeaseAttestationPart {
            attestation: attestation
                .or_else(|| lease.status.as_ref().and_then(|s| s.attestation.clone())),
            conditions: [condition],
        };
        self.write_status(lease, ATTESTATION_FIELD_MANAGER, &part)
            .await;
    }

    /// Verifies a batch against the chain as far as the collector knows it: from the head the
    /// network last confirmed, or, after a restart, from what the first receipt claims to
    /// follow (the network checks that link against its own head).
    fn verify_batch(
        &self,
        terms: &LeaseTerms,
        receipts: &[Signed],
    ) -> (usize, Option<ReceiptRejection>) {
        let now_ms = now().as_millisecond();
        let known = self
            .leases
            .lock()
            .expect("collector lock")
            .get(&terms.lease_id)
            .and_then(|p| p.confirmed().cloned());
        let mut head = match (known, receipts.first()) {
            (Some(head), _) => head,
            (None, Some(first)) => match Receipt::decode(first.body.as_slice()) {
                Ok(r) => ChainHead {
                    sequence: r.sequence.saturating_sub(1),
                    hash: r.previous_hash,
                    window_end_ms: (r.sequence > 1).then_some(r.window_start_ms),
                    final_received: false,
                },
                Err(e) => return (0, Some(ReceiptRejection::Malformed(format!("body: {e}")))),
            },
            (None, None) => ChainHead::default(),
        };
        for (i, signed) in receipts.iter().enumerate() {
            match check_next(terms, &head, signed, now_ms) {
                Ok(Step::Next { receipt, hash }) => head = head.advance(&receipt, hash),
                Ok(Step::Earlier { .. }) => {}
                Err(rejection) => return (i, Some(rejection)),
            }
        }
        (receipts.len(), None)
    }

    async fn receipts(&self, signed: Signed) -> Result<ReceiptsReply, Status> {
        let auth: Authenticated<SidecarReceiptsBody> = self.authenticate(&signed).await?;
        let network = self.network()?;
        let receipts = &auth.body.receipts;
        if receipts.is_empty() || receipts.len() > MAX_RECEIPTS_PER_BATCH {
            return Err(Rejection::invalid(
                "receipts",
                &format!("must hold 1 to {MAX_RECEIPTS_PER_BATCH} receipts"),
            )
            .into());
        }
        let lease_id = auth.certificate.lease_id.clone();
        let terms = LeaseTerms {
            lease_id: lease_id.clone(),
            gpus: auth.lease.spec.gpus,
            lease_key: auth.lease_key,
            metering_from_ms: self.metering_from(&auth.lease, network).await?,
            // The end a re-probe's pass vouches for moves with every pass and with governance:
            // the network, which records both, is the one to bound it.
            metering_until_ms: None,
        };
        let (valid, local_rejection) = self.verify_batch(&terms, receipts);
        let certificate = auth.body.certificate.clone();
        let mut reply = if valid > 0 {
            network
                .submit_receipts(&lease_id, certificate, receipts[..valid].to_vec())
                .await?
        } else {
            // Nothing verified to forward: the answer is the refusal alone, and the meter keeps
            // its receipts.
            ReceiptsReply::default()
        };
        if let Some(r) = &local_rejection {
            reply.rejection = Some(WireRejection {
                sequence: r.sequence(),
                kind: r.kind().to_string(),
                message: r.to_string(),
            });
        }
        let forwarded = if valid > 0 {
            let served = Served::of_reply(&reply)
                .map_err(|e| Status::unavailable(format!("the network's answer: {e}")))?;
            Some(served)
        } else {
            None
        };
        self.record_receipts(&auth.lease, &lease_id, &reply, forwarded)
            .await;
        Ok(reply)
    }

    /// Counts, remembers the confirmed head, and writes the summary when due.
    async fn record_receipts(
        &self,
        lease: &ComputeLease,
        lease_id: &str,
        reply: &ReceiptsReply,
        forwarded: Option<Served>,
    ) {
        let usage_in_status = lease.status.as_ref().and_then(|s| s.usage.as_ref());
        let recorded = {
            let mut leases = self.leases.lock().expect("collector lock");
            let now = Instant::now();
            let recorded = leases.entry(lease_id.to_string()).or_default().record(
                usage_in_status,
                reply,
                forwarded,
                now,
                self.status_interval,
            );
            if reply.final_received {
                leases.remove(lease_id);
            }
            // A lease whose meter went silent without a final receipt is forgotten after a
            // while: the map holds only leases being metered.
            leases.retain(|_, p| !p.silent_for(FORGET_SILENT_LEASE, now));
            recorded
        };
        self.metrics
            .receipts_accepted
            .inc_by(recorded.newly_accepted);
        self.metrics.record_served(
            &lease.spec.price.denomination,
            recorded.newly_served.gpu_millis,
            recorded.newly_served.charged,
        );
        if !recorded.write_status {
            return;
        }
        let condition = match &reply.rejection {
            Some(r) => {
                self.refused("receipt", &r.kind);
                warn!(lease = %lease_id, kind = %r.kind, message = %r.message, "receipt refused");
                lease.condition(METERED_CONDITION, false, &r.kind, &r.message, now())
            }
            None => lease.condition(
                METERED_CONDITION,
                true,
                "ReceiptsVerified",
                &format!("{} receipts verified and settled", reply.accepted_through),
                now(),
            ),
        };
        let usage = forwarded.map(|served| usage_from(reply, served.charged));
        self.write_metering(lease, usage, condition).await;
    }

    /// When the lease's metering may start: from what the status records, or, before the
    /// collector wrote it, from the network's record of the probe.
    async fn metering_from(
        &self,
        lease: &ComputeLease,
        network: &NetworkClient,
    ) -> Result<Option<i64>, Status> {
        let recorded = lease
            .status
            .as_ref()
            .and_then(|s| s.attestation.as_ref())
            .and_then(metering_from_status);
        if recorded.is_some() {
            return Ok(recorded);
        }
        let challenge = network.lease_challenge(&lease.spec.lease_id).await?;
        Ok(crate::metering::metering_start(
            challenge.probe.map(|p| p.passed_at).filter(|at| *at > 0),
            None,
        ))
    }

    /// Forwards a step of the lease's probe; its verdict goes onto the lease.
    async fn probe(&self, signed: Signed) -> Result<ProbeReply, Status> {
        let auth: Authenticated<SidecarProbeBody> = self.authenticate(&signed).await?;
        let step = auth
            .body
            .step
            .clone()
            .ok_or_else(|| Status::from(Rejection::invalid("step", "is required")))?;
        let reply = self
            .network()?
            .submit_probe(
                &auth.certificate.lease_id,
                auth.body.certificate.clone(),
                step,
            )
            .await
            .inspect_err(|s| self.refused("probe", &format!("{:?}", s.code())))?;
        let (passed, reason) = match reply.state.as_str() {
            "passed" => (true, "ChallengeVerified"),
            "failed" => (false, "ChallengeFailed"),
            _ => return Ok(reply),
        };
        if !passed {
            self.refused("probe", "ChallengeFailed");
        }
        info!(lease = %auth.certificate.lease_id, state = %reply.state, detail = %reply.detail, "GPU probe");
        let existing = auth
            .lease
            .status
            .as_ref()
            .and_then(|s| s.attestation.clone());
        let attestation = with_probe(existing, &reply);
        let condition = auth.lease.condition(
            ATTESTED_CONDITION,
            passed,
            reason,
            &format!("GPU probe {}: {}", reply.state, reply.detail),
            now(),
        );
        self.write_attestation(&auth.lease, Some(attestation), condition)
            .await;
        Ok(reply)
    }

    /// The lease's access count, as the relay recorded it on the lease's status.
    async fn access_count(&self, signed: Signed) -> Result<AccessUsage, Status> {
        let auth: Authenticated<SidecarAccessBody> = self.authenticate(&signed).await?;
        Ok(access_count(auth.lease.status.as_ref()))
    }

    async fn challenge(&self, signed: Signed) -> Result<ChallengeReply, Status> {
        let auth: Authenticated<SidecarChallengeBody> = self.authenticate(&signed).await?;
        self.network()?
            .lease_challenge(&auth.certificate.lease_id)
            .await
    }

    async fn evidence(&self, signed: Signed) -> Result<EvidenceReply, Status> {
        let auth: Authenticated<SidecarEvidenceBody> = self.authenticate(&signed).await?;
        let network = self.network()?;
        let lease_id = auth.certificate.lease_id.clone();
        let evidence = auth
            .body
            .evidence
            .clone()
            .ok_or_else(|| Status::from(Rejection::invalid("evidence", "is required")))?;
        let verified =
            match verify_evidence(&auth.lease_key, &lease_id, &evidence, now().as_second()) {
                Ok(v) => v,
                Err(e) => return Err(self.evidence_refused(&auth.lease, e).await),
            };
        let pod = self.lease_pod(&auth.lease).await?;
        let image_digest = match placement(pod.as_ref(), &verified.evidence) {
            Ok(digest) => digest,
            Err(e) => return Err(self.evidence_refused(&auth.lease, e).await),
        };
        let ocsp = match &self.ocsp {
            Some(fetcher) => {
                fetcher
                    .for_evidence(&verified.evidence, now().as_second())
                    .await
            }
            None => Vec::new(),
        };
        let reply = match network
            .submit_evidence(
                &lease_id,
                auth.body.certificate.clone(),
                evidence,
                &image_digest,
                ocsp,
            )
            .await
        {
            Ok(reply) => reply,
            Err(status) => {
                let rejection = match status.code() {
                    Code::AlreadyExists => EvidenceRejection::ReplayedNonce,
                    Code::FailedPrecondition if status.message().starts_with("Stale") => {
                        EvidenceRejection::Stale {
                            issued_at: verified.evidence.issued_at,
                        }
                    }
                    Code::FailedPrecondition => EvidenceRejection::WrongNonce,
                    _ => return Err(status),
                };
                return Err(self.evidence_refused(&auth.lease, rejection).await);
            }
        };
        self.metrics
            .attestations
            .with_label_values(&[reply.trust_tier.as_str()])
            .inc();
        let verified_at = Timestamp::from_second(reply.verified_at).unwrap_or_else(|_| now());
        let existing = auth
            .lease
            .status
            .as_ref()
            .and_then(|s| s.attestation.clone());
        let attestation = LeaseAttestation {
            trust_tier: reply.trust_tier.clone(),
            last_verified: Some(Time(verified_at)),
            evidence_digest: Some(hex::encode(&reply.digest)),
            image_digest: Some(reply.image_digest.clone()).filter(|d| !d.is_empty()),
            hardware_attested_since: seconds(reply.hardware_attested_since),
            probe_passed_at: existing.as_ref().and_then(|a| a.probe_passed_at.clone()),
            probe: existing.and_then(|a| a.probe),
        };
        let reason = match reply.trust_tier.as_str() {
            "hardware-attested" => "HardwareAttested",
            "challenge-verified" => "ChallengeVerified",
            _ => "SelfReported",
        };
        let condition = auth.lease.condition(
            ATTESTED_CONDITION,
            true,
            reason,
            &format!(
                "evidence for the network's challenge verified: {} ({})",
                reply.trust_tier, reply.detail
            ),
            now(),
        );
        info!(lease = %lease_id, tier = %reply.trust_tier, "evidence verified");
        self.write_attestation(&auth.lease, Some(attestation), condition)
            .await;
        Ok(reply)
    }

    /// The lease's pod, if it exists.
    async fn lease_pod(&self, lease: &ComputeLease) -> Result<Option<Pod>, Status> {
        let namespace = namespace_for(&lease.metadata.name.clone().unwrap_or_default());
        Api::<Pod>::namespaced(self.client.clone(), &namespace)
            .get_opt(POD_NAME)
            .await
            .map_err(|e| Status::unavailable(format!("reading the lease pod: {e}")))
    }

    async fn evidence_refused(&self, lease: &ComputeLease, e: EvidenceRejection) -> Status {
        self.refused("evidence", e.kind());
        warn!(lease = %lease.spec.lease_id, kind = e.kind(), error = %e, "evidence refused");
        let condition = lease.condition(ATTESTED_CONDITION, false, e.kind(), &e.to_string(), now());
        self.write_attestation(lease, None, condition).await;
        let message = format!("{}: {e}", e.kind());
        match e {
            EvidenceRejection::ReplayedNonce => Status::already_exists(message),
            EvidenceRejection::WrongNonce | EvidenceRejection::Stale { .. } => {
                Status::failed_precondition(message)
            }
            EvidenceRejection::BadSignature => Status::unauthenticated(message),
            EvidenceRejection::WrongLease { .. } | EvidenceRejection::WrongPlacement { .. } => {
                Status::permission_denied(message)
            }
            EvidenceRejection::Malformed(_) => Status::invalid_argument(message),
        }
    }
}

/// The evidence must name the lease's own pod and node; then the image its workload container
/// runs, as the kubelet reported it (`imageID`; empty until the container started).
fn placement(
    pod: Option<&Pod>,
    evidence: &crate::wire::proto::Evidence,
) -> Result<String, EvidenceRejection> {
    let uid = pod.and_then(|p| p.metadata.uid.clone()).unwrap_or_default();
    let node = pod
        .and_then(|p| p.spec.as_ref())
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    if evidence.pod_uid != uid {
        return Err(EvidenceRejection::WrongPlacement {
            field: "pod",
            expected: uid,
            found: evidence.pod_uid.clone(),
        });
    }
    if evidence.node != node {
        return Err(EvidenceRejection::WrongPlacement {
            field: "node",
            expected: node,
            found: evidence.node.clone(),
        });
    }
    Ok(pod
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == WORKLOAD_CONTAINER))
        .map(|c| c.image_id.clone())
        .unwrap_or_default())
}

#[tonic::async_trait]
impl Collector for CollectorService {
    async fn submit_receipts(
        &self,
        request: Request<Signed>,
    ) -> Result<Response<ReceiptsReply>, Status> {
        self.receipts(request.into_inner()).await.map(Response::new)
    }

    async fn challenge(
        &self,
        request: Request<Signed>,
    ) -> Result<Response<ChallengeReply>, Status> {
        self.challenge(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn submit_evidence(
        &self,
        request: Request<Signed>,
    ) -> Result<Response<EvidenceReply>, Status> {
        self.evidence(request.into_inner()).await.map(Response::new)
    }

    async fn submit_probe(&self, request: Request<Signed>) -> Result<Response<ProbeReply>, Status> {
        self.probe(request.into_inner()).await.map(Response::new)
    }

    async fn access_count(
        &self,
        request: Request<Signed>,
    ) -> Result<Response<AccessUsage>, Status> {
        self.access_count(request.into_inner())
            .await
            .map(Response::new)
    }
}

/// Serves the collector on `addr` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: CollectorService,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(
            CollectorServer::new(service).max_decoding_message_size(crate::wire::MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::proto::Evidence;

    fn pod(image_id: Option<&str>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "workload", "uid": "uid-1"},
            "spec": {"nodeName": "gpu-node-1", "containers": []},
            "status": {"containerStatuses": image_id.map(|id| vec![
                serde_json::json!({"name": "attest", "image": "gpubridge:1", "imageID": "sha256:aa",
                    "ready": true, "restartCount": 0}),
                serde_json::json!({"name": "workload", "image": "ghcr.io/acme/train:1", "imageID": id,
                    "ready": true, "restartCount": 0}),
            ]).unwrap_or_default()}
        }))
        .unwrap()
    }

    fn evidence(pod_uid: &str, node: &str) -> Evidence {
        Evidence {
            pod_uid: pod_uid.into(),
            node: node.into(),
            ..Default::default()
        }
    }

    #[test]
    fn evidence_must_name_the_lease_pod_and_node_and_gets_the_image_the_kubelet_ran() {
        let digest = format!("ghcr.io/acme/train@sha256:{}", "ab".repeat(32));
        let running = pod(Some(&digest));
        assert_eq!(
            placement(Some(&running), &evidence("uid-1", "gpu-node-1")),
            Ok(digest)
        );
        // Not started yet: no digest to report.
        assert_eq!(
            placement(Some(&pod(None)), &evidence("uid-1", "gpu-node-1")),
            Ok(String::new())
        );
        let kind = |pod: Option<&Pod>, e: Evidence| placement(pod, &e).unwrap_err().to_string();
        assert_eq!(
            kind(Some(&running), evidence("uid-2", "gpu-node-1")),
            "evidence names pod uid-2, but the lease runs in uid-1"
        );
        assert_eq!(
            kind(Some(&running), evidence("uid-1", "other")),
            "evidence names node other, but the lease runs in gpu-node-1"
        );
        assert!(
            kind(None, evidence("uid-1", "gpu-node-1")).starts_with("evidence names pod uid-1")
        );
    }
}

//! The sidecars' side of the collector: every call signed with the lease key and carrying the
//! provider's certificate for it.

use std::path::PathBuf;
use std::time::Duration;

use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use crate::identity::LeaseCredentials;
use crate::wire::envelope::{HasHeader, Signable, seal};
use crate::wire::proto::collector_client::CollectorClient;
use crate::wire::proto::{
    AccessUsage, ChallengeReply, EvidenceReply, ProbeReply, ProbeStep, ReceiptsReply,
    SidecarAccessBody, SidecarChallengeBody, SidecarEvidenceBody, SidecarProbeBody,
    SidecarReceiptsBody, Signed,
};

/// What every process of a lease pod is told: its lease, where the lease's identity is mounted,
/// and the collector.
#[derive(clap::Args, Debug, Clone)]
pub struct LeaseArgs {
    /// The lease this pod runs.
    #[arg(long, env = "GPUBRIDGE_LEASE_ID")]
    pub lease_id: String,
    /// Folder of the mounted identity Secret.
    #[arg(long)]
    pub identity_dir: PathBuf,
    /// The operator's collector.
    #[arg(long, env = "GPUBRIDGE_COLLECTOR_URL")]
    pub collector_url: String,
}

#[derive(Clone)]
pub struct SidecarClient {
    inner: CollectorClient<Channel>,
    credentials: LeaseCredentials,
}

impl SidecarClient {
    /// A lazily connected client: calls fail, and the sidecar retries, until the collector is up.
    pub fn new(url: &str, credentials: LeaseCredentials) -> Result<SidecarClient, String> {
        let channel = Endpoint::from_shared(url.to_string())
            .map_err(|e| format!("--collector-url {url}: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect_lazy();
        Ok(SidecarClient {
            inner: CollectorClient::new(channel),
            credentials,
        })
    }

    fn seal<M: Signable + HasHeader>(&self, body: M) -> Signed {
        seal(
            &self.credentials.key,
            body,
            jiff::Timestamp::now().as_second(),
        )
    }

    pub async fn submit_receipts(&self, receipts: Vec<Signed>) -> Result<ReceiptsReply, Status> {
        let body = SidecarReceiptsBody {
            header: None,
            certificate: self.credentials.certificate.clone(),
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

    pub async fn challenge(&self) -> Result<ChallengeReply, Status> {
        let body = SidecarChallengeBody {
            header: None,
            certificate: self.credentials.certificate.clone(),
        };
        let signed = self.seal(body);
        Ok(self.inner.clone().challenge(signed).await?.into_inner())
    }

    pub async fn submit_evidence(&self, evidence: Signed) -> Result<EvidenceReply, Status> {
        let body = SidecarEvidenceBody {
            header: None,
            certificate: self.credentials.certificate.clone(),
            evidence: Some(evidence),
        };
        let signed = self.seal(body);
        Ok(self
            .inner
            .clone()
            .submit_evidence(signed)
            .await?
            .into_inner())
    }

    pub async fn submit_probe(&self, step: ProbeStep) -> Result<ProbeReply, Status> {
        let body = SidecarProbeBody {
            header: None,
            certificate: self.credentials.certificate.clone(),
            step: Some(step),
        };
        let signed = self.seal(body);
        Ok(self.inner.clone().submit_probe(signed).await?.into_inner())
    }

    pub async fn access_count(&self) -> Result<AccessUsage, Status> {
        let body = SidecarAccessBody {
            header: None,
            certificate: self.credentials.certificate.clone(),
        };
        let signed = self.seal(body);
        Ok(self.inner.clone().access_count(signed).await?.into_inner())
    }
}

//! The cluster as access reaches it: a lease from its ComputeLease and its offer's policy, a
//! log through the API server (`pods/log`, granted to the operator in lease namespaces only),
//! a port through the pod network (the lease's NetworkPolicy admits the operator's pods to the
//! declared ports and nothing else).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::LogParams;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use tokio::net::TcpStream;
use tokio_util::compat::FuturesAsyncReadCompatExt;

use super::limits::log_containers;
use super::{Connection, LeaseLimits, LeaseView, LogReader, Reach};
use crate::crd::{ComputeLease, GpuOffer, LeaseAccess, LeaseAccessPart, LeasePhase, PortProtocol};
use crate::identity::public_key_from_base58;
use crate::operator::status::apply_status;
use crate::wire::Rejection;
use crate::wire::proto::LogOptions;
use crate::workload::{POD_NAME, WORKLOAD_CONTAINER, namespace_for};

/// The field manager of `status.access`.
pub const ACCESS_FIELD_MANAGER: &str = "gpubridge-relay-access";
/// How long dialling a pod may take.
const DIAL_WITHIN: Duration = Duration::from_secs(5);

pub struct KubeReach {
    pub client: Client,
    pub offers: Store<GpuOffer>,
}

fn unreachable(what: &str, e: impl std::fmt::Display) -> Rejection {
    Rejection::Precondition(format!("{what}: {e}"))
}

impl KubeReach {
    async fn pod(&self, lease: &LeaseView) -> Result<Pod, Rejection> {
        let namespace = namespace_for(&lease.lease_id);
        Api::<Pod>::namespaced(self.client.clone(), &namespace)
            .get_opt(POD_NAME)
            .await
            .map_err(|e| unreachable("reading the lease's pod", e))?
            .ok_or_else(|| {
                Rejection::NotFound(format!("lease {} has no pod (yet)", lease.lease_id))
            })
    }
}

impl Reach for KubeReach {
    async fn lease(&self, lease_id: &str) -> Result<LeaseView, Rejection> {
        let lease = Api::<ComputeLease>::all(self.client.clone())
            .get_opt(lease_id)
            .await
            .map_err(|e| unreachable("reading the ComputeLease", e))?
            .ok_or_else(|| {
                Rejection::NotFound(format!("lease {lease_id} does not run on this provider"))
            })?;
        let buyer = public_key_from_base58(&lease.spec.buyer_public_key)
            .map_err(|e| unreachable("the lease's buyer key", e))?;
        let policy = self
            .offers
            .get(&ObjectRef::new(&lease.spec.offer_name))
            .map(|offer| offer.spec.workload.access.clone())
            .unwrap_or_default();
        Ok(LeaseView {
            lease_id: lease.spec.lease_id.clone(),
            buyer,
            ports: lease
                .spec
                .workload
                .ports
                .iter()
                .filter(|p| p.protocol == PortProtocol::TCP)
                .map(|p| u32::from(p.container_port))
                .collect(),
            running: lease
                .status
                .as_ref()
                .is_some_and(|s| s.phase == LeasePhase::Running),
            log_containers: log_containers(&policy),
            limits: LeaseLimits::from(&policy),
            access: lease.status.and_then(|s| s.access).unwrap_or_default(),
        })
    }

    async fn logs(&self, lease: &LeaseView, options: &LogOptions) -> Result<LogReader, Rejection> {
        let since_time = match options.since_time.as_str() {
            "" => None,
            text => Some(text.parse::<jiff::Timestamp>().map_err(|e| {
                Rejection::invalid("options.sinceTime", &format!("must be RFC 3339: {e}"))
            })?),
        };
        let container = match options.container.as_str() {
            "" => WORKLOAD_CONTAINER,
            named => named,
        };
        let params = LogParams {
            container: Some(container.to_string()),
            follow: options.follow,
            since_time,
            tail_lines: (options.tail_lines > 0).then_some(options.tail_lines),
            // The buyer resumes a broken stream from the last time it saw.
            timestamps: true,
            ..LogParams::default()
        };
        let namespace = namespace_for(&lease.lease_id);
        let log = Api::<Pod>::namespaced(self.client.clone(), &namespace)
            .log_stream(POD_NAME, &params)
            .await
            .map_err(|e| unreachable("reading the log", e))?;
        Ok(Box::pin(tokio::io::BufReader::new(log.compat())))
    }

    async fn record(&self, lease_id: &str, access: LeaseAccess) -> Result<(), Rejection> {
        apply_status::<ComputeLease>(
            &self.client,
            lease_id,
            ACCESS_FIELD_MANAGER,
            None,
            &LeaseAccessPart { access },
        )
        .await
        .map(drop)
        .map_err(|e| match e {
            kube::Error::Api(status) if status.code == 404 => {
                Rejection::NotFound(format!("lease {lease_id} is gone"))
            }
            e => unreachable("recording the lease's access", e),
        })
    }

    async fn dial(&self, lease: &LeaseView, port: u32) -> Result<Connection, Rejection> {
        let pod = self.pod(lease).await?;
        let ip = pod
            .status
            .and_then(|s| s.pod_ip)
            .ok_or_else(|| Rejection::Precondition("the lease's pod has no address yet".into()))?;
        let ip: std::net::IpAddr = ip
            .parse()
            .map_err(|e| unreachable("the pod's address", e))?;
        let port = u16::try_from(port).map_err(|_| Rejection::invalid("port", "out of range"))?;
        let stream = tokio::time::timeout(DIAL_WITHIN, TcpStream::connect((ip, port)))
            .await
            .map_err(|_| unreachable("dialling the workload", "timed out"))?
            .map_err(|e| unreachable(&format!("dialling the workload's port {port}"), e))?;
        stream.set_nodelay(true).ok();
        Ok(Box::pin(stream))
    }
}

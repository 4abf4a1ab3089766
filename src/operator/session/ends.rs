//! Reports the end of every lease from the network, once, after its final receipt.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use tonic::Code;
use tracing::{info, warn};

use super::{SESSION_FIELD_MANAGER, SessionError};
use crate::crd::{ComputeLease, LeaseReportPart};
use crate::lifecycle::{awaiting_final_receipt, end_report};
use crate::operator::controller::Context;
use crate::operator::status::apply_status;
use crate::wire::client::NetworkClient;
use crate::wire::proto::LeaseEndBody;

/// Reports every ended lease from the network that was not reported yet; level-based, so an end
/// missed while disconnected is reported after the next connect. The inventory says which leases
/// ended (no list of whole objects); each is read once, and remembered as settled until deleted.
pub(super) async fn report_ends(
    ctx: &Arc<Context>,
    client: &NetworkClient,
) -> Result<Infallible, SessionError> {
    let api: Api<ComputeLease> = Api::all(ctx.client.clone());
    let mut settled: BTreeSet<String> = BTreeSet::new();
    loop {
        let ended: Vec<String> = {
            let inventory = ctx.inventory.read().expect("inventory lock poisoned");
            settled.retain(|name| inventory.lease(name).is_some());
            inventory
                .leases()
                .filter(|l| !l.active() && !settled.contains(&l.name))
                .map(|l| l.name.clone())
                .collect()
        };
        for name in ended {
            let lease = api.get_opt(&name).await?;
            let grace = ctx.settings.final_receipt_grace;
            if let Some(lease) = &lease
                && awaiting_final_receipt(lease, jiff::Timestamp::now(), grace)
            {
                continue;
            }
            if let Some(body) = lease
                .as_ref()
                .and_then(|l| end_report(l, jiff::Timestamp::now()))
            {
                report_end(client, &ctx.client, &name, body).await?;
            }
            settled.insert(name);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Reports one end and records it on the lease (`status.reportedAt`).
async fn report_end(
    client: &NetworkClient,
    kube: &kube::Client,
    name: &str,
    body: LeaseEndBody,
) -> Result<(), SessionError> {
    match client.report_end(body).await {
        Ok(reply) => info!(
            lease = %name,
            charged = %reply.charged,
            refunded = %reply.refunded,
            "reported the lease's end"
        ),
        Err(s)
            if matches!(
                s.code(),
                Code::FailedPrecondition | Code::NotFound | Code::PermissionDenied
            ) =>
        {
            // The network never leased it to us (it lapsed or was cancelled before our answer):
            // nothing to settle, and asking again will not change that.
            warn!(lease = %name, error = %s, "the network does not settle this lease");
        }
        Err(s) => return Err(s.into()),
    }
    let part = LeaseReportPart {
        reported_at: Time(jiff::Timestamp::now()),
    };
    apply_status::<ComputeLease>(kube, name, SESSION_FIELD_MANAGER, None, &part).await?;
    Ok(())
}

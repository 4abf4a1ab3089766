//! Reports the end of every lease from the network, once, after its final receipt.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use tonic::Code;
use tracing::{info, warn};

use super::{SESSION_FIELD_MANAGER, SessionError};
use crate::crd::{ComputeLease, LeaseReportPart, METERED_CONDITION};
use crate::lifecycle::{awaiting_final_receipt, end_report, unmetered};
use crate::operator::controller::Context;
use crate::operator::status::apply_status;
use crate::wire::amount::in_units;
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
            if let Some(lease) = &lease
                && let Some(body) = end_report(lease, jiff::Timestamp::now())
            {
                report_end(ctx, client, lease, body).await?;
            }
            settled.insert(name);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Reports one end and records it on the lease (`status.reportedAt`); a lease that ran with no
/// accepted receipt also gets `Metered` False and a warning Event.
async fn report_end(
    ctx: &Context,
    client: &NetworkClient,
    lease: &ComputeLease,
    body: LeaseEndBody,
) -> Result<(), SessionError> {
    let name = lease.name_any();
    match client.report_end(body).await {
        Ok(reply) => info!(
            lease = %name,
            charged = %in_units(&reply.charged, &lease.spec.price.denomination),
            refunded = %in_units(&reply.refunded, &lease.spec.price.denomination),
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
    let now = jiff::Timestamp::now();
    let unmetered = unmetered(lease);
    let conditions = unmetered
        .iter()
        .map(|why| lease.condition(METERED_CONDITION, false, "NoReceipts", why, now))
        .collect();
    let part = LeaseReportPart {
        reported_at: Time(now),
        conditions,
    };
    apply_status::<ComputeLease>(&ctx.client, &name, SESSION_FIELD_MANAGER, None, &part).await?;
    if let Some(why) = unmetered {
        warn!(lease = %name, "{why}");
        let event = Event {
            type_: EventType::Warning,
            reason: "Unmetered".into(),
            note: Some(why),
            action: "ReportEnd".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &lease.object_ref(&())).await {
            warn!(lease = %name, error = %e, "could not record an Event on the lease");
        }
    }
    Ok(())
}

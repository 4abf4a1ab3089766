//! Reconcilers. They read state, call the pure modules, and write the results.
//!
//! - `offer`: GpuOffer → status from the capacity formula;
//! - `lease`: ComputeLease → its namespace, policies, secret and pod, and its phases;
//! - `watch`: Node, Pod and ComputeLease watches feeding the capacity inventory, and the lease
//!   boxes' policy objects feeding `boxes`.

pub mod backoff;
pub mod boxes;
pub mod context;
pub mod error;
pub mod lease;
pub mod offer;
pub mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::{Action, Config};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Api, Resource, ResourceExt};
use tracing::{debug, warn};

pub use context::{Context, Settings};
pub use error::Error;

use crate::crd::{ComputeLease, GpuOffer, LEASE_LABEL};

/// The controllers' names, as their metrics and backoff keys label them.
pub const OFFER_CONTROLLER: &str = "offer";
pub const LEASE_CONTROLLER: &str = "lease";

/// What the controllers are fed from the operator's one watch per kind: the offers' and leases'
/// caches (the offers' is `Context::offers`) and what to reconcile.
pub struct Caches {
    pub offer_triggers: watch::OfferTriggers,
    pub leases: Store<ComputeLease>,
    pub lease_triggers: watch::LeaseTriggers,
}

/// Runs both controllers until `shutdown` resolves; in-flight reconciles finish first.
pub async fn run(
    ctx: Arc<Context>,
    caches: Caches,
    concurrency: u16,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    for controller in [OFFER_CONTROLLER, LEASE_CONTROLLER] {
        ctx.metrics
            .init_controller(controller, &Error::FAILURE_LABELS);
    }
    let client = ctx.client.clone();
    // The caches are filled by the watches (`watch::run_offers`, `watch::run`), not by the
    // controllers: each reconciles what its triggers name. A set of pending names holds what
    // changed while this replica stood by, so a new leader reconciles all of it.
    let offers = Controller::for_stream(futures::stream::pending(), ctx.offers.clone())
        // No debounce: a change is recomputed on its first trigger. Triggers that arrive while
        // an offer's recompute runs are held by the controller and merged into one more run
        // after it (kube-runtime's runner holds messages for objects in flight), so a burst
        // still costs one write per recompute, never one per event.
        .with_config(Config::default().concurrency(concurrency))
        .reconcile_on(caches.offer_triggers.stream())
        .graceful_shutdown_on(shutdown.clone())
        .run(
            |offer, ctx| instrumented(OFFER_CONTROLLER, offer, ctx, offer::reconcile),
            error_policy::<GpuOffer>(OFFER_CONTROLLER),
            ctx.clone(),
        )
        .for_each(|_| async {});
    let leases = Controller::for_stream(futures::stream::pending(), caches.leases)
        .reconcile_on(caches.lease_triggers.stream())
        // Not `owns`: it maps a pod to its owner within the pod's namespace, and a cluster-scoped
        // lease reached through two references would be reconciled twice at once. This watch
        // stays apart from the inventory's pod watch: it needs lease pods once they finish,
        // which the inventory's field selector leaves out.
        .watches(
            Api::<Pod>::all(client),
            watcher::Config::default().labels(LEASE_LABEL),
            |pod| {
                pod.labels()
                    .get(LEASE_LABEL)
                    .map(|lease| ObjectRef::<ComputeLease>::new(lease))
            },
        )
        .with_config(Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(
            |lease, ctx| instrumented(LEASE_CONTROLLER, lease, ctx, lease::reconcile),
            error_policy::<ComputeLease>(LEASE_CONTROLLER),
            ctx,
        )
        .for_each(|_| async {});
    tokio::join!(offers, leases);
}

/// Times and counts a reconcile, and clears the object's backoff when it succeeds.
async fn instrumented<K, F, Fut>(
    controller: &'static str,
    obj: Arc<K>,
    ctx: Arc<Context>,
    reconcile: F,
) -> Result<Action, Error>
where
    K: Resource,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action, Error>>,
{
    let key = backoff::key(controller, &obj.name_any());
    let started = Instant::now();
    let result = reconcile(obj, ctx.clone()).await;
    ctx.metrics
        .reconciles
        .with_label_values(&[controller])
        .inc();
    ctx.metrics
        .reconcile_duration
        .with_label_values(&[controller])
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.backoff.forget(&key);
    }
    result
}

/// Waits are polled at their own pace; failures back off per object and are counted.
fn error_policy<K: Resource>(
    controller: &'static str,
) -> impl Fn(Arc<K>, &Error, Arc<Context>) -> Action {
    move |obj, error, ctx| Action::requeue(retry_delay(controller, &obj.name_any(), error, &ctx))
}

/// How long `error_policy` waits before it reconciles a failed object again: a wait's own
/// pace, or the object's next backoff delay for a failure, which is counted.
pub fn retry_delay(controller: &'static str, name: &str, error: &Error, ctx: &Context) -> Duration {
    if let Some(retry_after) = error.waiting_for() {
        debug!(%error, "{controller} {name} waits");
        return retry_after;
    }
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[controller, error.metric_label()])
        .inc();
    let delay = ctx.backoff.next_delay(&backoff::key(controller, name));
    warn!(%error, retry_in = ?delay, "{controller} {name} failed");
    delay
}

//! What every reconcile shares: the client, the caches, the settings, metrics and events.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use kube::Client;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;

use crate::admission::BoxGate;
use crate::capacity::{Inventory, OfferFacts};
use crate::crd::GpuOffer;
use crate::operator::controller::backoff::Backoff;
use crate::operator::controller::boxes::BoxCache;
use crate::operator::metrics::Metrics;
use crate::operator::reservations::ReservationRecord;

/// Settings of the controllers, from the operator's flags.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Image of the operator, whose binary lease sidecars run.
    pub sidecar_image: String,
    /// Environment the provider gives its sidecars, besides what the pod sets.
    pub sidecar_env: Vec<k8s_openapi::api::core::v1::EnvVar>,
    /// How long a lease pod may take to run before the lease fails.
    pub scheduling_timeout: Duration,
    /// How often an offer is recomputed when nothing triggers it.
    pub offer_resync: Duration,
    /// Whether a network session reports lease ends; a lease from the network then keeps its
    /// namespace until its end is reported (or the grace below passes).
    pub reports_to_network: bool,
    /// How long after a lease ends its end report waits for the meter's final receipt.
    pub final_receipt_grace: Duration,
    /// Where lease sidecars reach the collector.
    pub collector: crate::workload::CollectorEndpoint,
    /// How the operator reads lease pods' logs for their buyers, when it may.
    pub log_reader: Option<crate::workload::LogReader>,
}

pub struct Context {
    pub client: Client,
    pub inventory: Arc<RwLock<Inventory>>,
    pub offers: Store<GpuOffer>,
    /// The lease boxes' policy objects as last watched.
    pub boxes: BoxCache,
    pub settings: Settings,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub backoff: Arc<Backoff>,
    /// Intake's reservation record, shared by every replica; a lease's entry goes with it.
    pub reservations: ReservationRecord,
    pub provider_key: SigningKey,
    /// Whether intake may accept leases: closed while the cluster may not hold their boxes.
    pub box_gate: Arc<Mutex<BoxGate>>,
}

impl Context {
    /// Facts of every cached offer, for the formula's overlap rule.
    pub fn offer_facts(&self) -> Vec<OfferFacts> {
        self.offers
            .state()
            .iter()
            .map(|o| OfferFacts::from_offer(o))
            .collect()
    }
}

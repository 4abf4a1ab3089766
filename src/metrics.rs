//! The operator's Prometheus metrics. Labels are bounded: controller names, results, error
//! kinds, phases, GPU models and offer names (offers are few and declared by the platform team),
//! never a lease or pod name.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::crd::{GpuOffer, LeasePhase};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: IntCounterVec,
    pub reconcile_errors: IntCounterVec,
    pub reconcile_duration: HistogramVec,
    pub offer_gpus: IntGaugeVec,
    pub model_gpus: IntGaugeVec,
    pub leases: IntGaugeVec,
    pub lease_ends: IntCounterVec,
    pub leader: IntGauge,
    pub network_session_up: IntGauge,
    pub intake: IntCounterVec,
    pub receipts_accepted: IntCounter,
    pub verification_failures: IntCounterVec,
    pub attestations: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "gpubridge_reconciles_total",
                "Reconciles run, by controller",
            ),
            &["controller"],
        )
        .unwrap();
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "gpubridge_reconcile_errors_total",
                "Reconciles that failed, by controller and error kind",
            ),
            &["controller", "error"],
        )
        .unwrap();
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "gpubridge_reconcile_duration_seconds",
                "Time spent in one reconcile",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
            &["controller"],
        )
        .unwrap();
        let offer_gpus = IntGaugeVec::new(
            Opts::new(
                "gpubridge_offer_gpus",
                "GPUs of each offer, by state: idle, advertised, leased",
            ),
            &["offer", "state"],
        )
        .unwrap();
        let model_gpus = IntGaugeVec::new(
            Opts::new(
                "gpubridge_model_gpus",
                "GPUs over all offers by GPU model and state: idle, advertised",
            ),
            &["model", "state"],
        )
        .unwrap();
        let leases = IntGaugeVec::new(
            Opts::new("gpubridge_leases", "ComputeLeases by phase"),
            &["phase"],
        )
        .unwrap();
        let lease_ends = IntCounterVec::new(
            Opts::new(
                "gpubridge_lease_ends_total",
                "Leases ended, by reason and whose fault",
            ),
            &["reason", "fault"],
        )
        .unwrap();
        let leader = IntGauge::new(
            "gpubridge_leader",
            "1 while this replica leads and writes, else 0",
        )
        .unwrap();
        let network_session_up = IntGauge::new(
            "gpubridge_network_session_up",
            "1 while the outbound session with the network is established, else 0",
        )
        .unwrap();
        let intake = IntCounterVec::new(
            Opts::new(
                "gpubridge_intake_leases_total",
                "Leases the network sent, by decision (accepted, rejected) and reason kind",
            ),
            &["decision", "reason"],
        )
        .unwrap();
        let receipts_accepted = IntCounter::new(
            "gpubridge_receipts_accepted_total",
            "Meter receipts the network accepted through this operator's collector",
        )
        .unwrap();
        let verification_failures = IntCounterVec::new(
            Opts::new(
                "gpubridge_verification_failures_total",
                "Sidecar messages refused, by subject (sidecar, receipt, evidence) and reason kind",
            ),
            &["subject", "reason"],
        )
        .unwrap();
        let attestations = IntCounterVec::new(
            Opts::new(
                "gpubridge_attestations_total",
                "Attestation evidence the network accepted, by trust tier",
            ),
            &["tier"],
        )
        .unwrap();
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_errors.clone()),
            Box::new(reconcile_duration.clone()),
            Box::new(offer_gpus.clone()),
            Box::new(model_gpus.clone()),
            Box::new(leases.clone()),
            Box::new(lease_ends.clone()),
            Box::new(leader.clone()),
            Box::new(network_session_up.clone()),
            Box::new(intake.clone()),
            Box::new(receipts_accepted.clone()),
            Box::new(verification_failures.clone()),
            Box::new(attestations.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            offer_gpus,
            model_gpus,
            leases,
            lease_ends,
            leader,
            network_session_up,
            intake,
            receipts_accepted,
            verification_failures,
            attestations,
        }
    }

    /// Sets the gauges from the cached objects, at scrape time, so that deleted offers and
    /// leases drop out instead of lingering with their last value.
    pub fn refresh<'a>(
        &self,
        offers: impl IntoIterator<Item = &'a GpuOffer>,
        lease_phases: impl IntoIterator<Item = LeasePhase>,
    ) {
        self.offer_gpus.reset();
        self.model_gpus.reset();
        self.leases.reset();
        for phase in LeasePhase::ALL {
            self.leases.with_label_values(&[phase.as_str()]).set(0);
        }
        for offer in offers {
            let Some(status) = &offer.status else {
                continue;
            };
            let name = offer.metadata.name.as_deref().unwrap_or_default();
            for (state, value) in [
                ("idle", status.idle_gpus),
                ("advertised", status.advertised_gpus),
                ("leased", status.leased_gpus),
            ] {
                self.offer_gpus
                    .with_label_values(&[name, state])
                    .set(i64::from(value));
            }
            for m in &status.models {
                self.model_gpus
                    .with_label_values(&[m.model.as_str(), "idle"])
                    .add(i64::from(m.idle_gpus));
                self.model_gpus
                    .with_label_values(&[m.model.as_str(), "advertised"])
                    .add(i64::from(m.advertised_gpus));
            }
        }
        for phase in lease_phases {
            self.leases.with_label_values(&[phase.as_str()]).inc();
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics");
        out
    }
}

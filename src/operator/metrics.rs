//! The operator's Prometheus metrics. Labels are bounded: controller names, results, error
//! kinds, phases, GPU models, denominations and offer names (offers are few and declared by the
//! platform team), never a lease or pod name. The Grafana dashboard of the chart
//! (charts/gpubridge/files/dashboards/) queries only these.

use prometheus::{
    Counter, CounterVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use crate::capacity::LeaseFacts;
use crate::crd::{GpuOffer, LeasePhase};
use crate::wire::amount::Amount;

/// The model label of leased GPUs whose order named no model.
pub const UNKNOWN_MODEL: &str = "unknown";

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: IntCounterVec,
    pub reconcile_errors: IntCounterVec,
    pub reconcile_duration: HistogramVec,
    pub offers: IntGaugeVec,
    pub offer_gpus: IntGaugeVec,
    pub model_gpus: IntGaugeVec,
    pub leases: IntGaugeVec,
    pub lease_ends: IntCounterVec,
    pub leader: IntGauge,
    pub network_session_up: IntGauge,
    pub network_session_failures: IntCounterVec,
    pub intake: IntCounterVec,
    pub receipts_accepted: IntCounter,
    pub gpu_seconds: Counter,
    pub earnings: CounterVec,
    pub verification_failures: IntCounterVec,
    pub attestations: IntCounterVec,
    pub access_calls: IntCounterVec,
    pub access_bytes: IntCounterVec,
    pub build_info: IntGaugeVec,
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
        let offers = IntGaugeVec::new(
            Opts::new(
                "gpubridge_offers",
                "GpuOffers, by whether their Ready condition is true",
            ),
            &["ready"],
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
                "GPUs over all offers by GPU model, resource (whole GPUs or a MIG profile) and \
                 state: idle, advertised, leased",
            ),
            &["model", "resource", "state"],
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
        let network_session_failures = IntCounterVec::new(
            Opts::new(
                "gpubridge_network_session_failures_total",
                "Outbound sessions with the network that failed or ended, by reason",
            ),
            &["reason"],
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
        let gpu_seconds = Counter::new(
            "gpubridge_gpu_seconds_total",
            "Allocated GPU-seconds of the meter receipts the network accepted through this collector",
        )
        .unwrap();
        let earnings = CounterVec::new(
            Opts::new(
                "gpubridge_earnings_total",
                "Paid to the provider for accepted receipts, in whole units of the denomination \
                 (a float: the exact amount is in each lease's status and the network's ledger)",
            ),
            &["denomination"],
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
        let access_calls = IntCounterVec::new(
            Opts::new(
                "gpubridge_access_calls_total",
                "Buyers' log and connect calls relayed to lease pods, by kind and outcome \
                 (served, or the refusal's kind)",
            ),
            &["kind", "outcome"],
        )
        .unwrap();
        let access_bytes = IntCounterVec::new(
            Opts::new(
                "gpubridge_access_bytes_total",
                "Bytes relayed between buyers and lease pods, by direction (to_buyer, to_workload)",
            ),
            &["direction"],
        )
        .unwrap();
        let build_info = IntGaugeVec::new(
            Opts::new(
                "gpubridge_build_info",
                "1, labelled with the operator's version",
            ),
            &["version"],
        )
        .unwrap();
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_errors.clone()),
            Box::new(reconcile_duration.clone()),
            Box::new(offers.clone()),
            Box::new(offer_gpus.clone()),
            Box::new(model_gpus.clone()),
            Box::new(leases.clone()),
            Box::new(lease_ends.clone()),
            Box::new(leader.clone()),
            Box::new(network_session_up.clone()),
            Box::new(network_session_failures.clone()),
            Box::new(intake.clone()),
            Box::new(receipts_accepted.clone()),
            Box::new(gpu_seconds.clone()),
            Box::new(earnings.clone()),
            Box::new(verification_failures.clone()),
            Box::new(attestations.clone()),
            Box::new(access_calls.clone()),
            Box::new(access_bytes.clone()),
            Box::new(build_info.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            offers,
            offer_gpus,
            model_gpus,
            leases,
            lease_ends,
            leader,
            network_session_up,
            network_session_failures,
            intake,
            receipts_accepted,
            gpu_seconds,
            earnings,
            verification_failures,
            attestations,
            access_calls,
            access_bytes,
            build_info,
        }
    }

    /// Creates a controller's series at zero, so that a dashboard shows "no errors" rather than
    /// no data before the first failure.
    pub fn init_controller(&self, controller: &str, error_kinds: &[&str]) {
        self.reconciles.with_label_values(&[controller]);
        for kind in error_kinds {
            self.reconcile_errors.with_label_values(&[controller, kind]);
        }
    }

    /// Sets the gauges from the cached objects, at scrape time, so that deleted offers and
    /// leases drop out instead of lingering with their last value. Leased GPUs by model are
    /// those of leases not ended yet, under the model the order named, else the model of the
    /// node the lease was placed on (`node_model`).
    pub fn refresh<'a>(
        &self,
        offers: impl IntoIterator<Item = &'a GpuOffer>,
        leases: impl IntoIterator<Item = &'a LeaseFacts>,
        node_model: impl Fn(&str) -> Option<String>,
    ) {
        self.offers.reset();
        self.offer_gpus.reset();
        self.model_gpus.reset();
        self.leases.reset();
        for ready in ["true", "false"] {
            self.offers.with_label_values(&[ready]).set(0);
        }
        for phase in LeasePhase::ALL {
            self.leases.with_label_values(&[phase.as_str()]).set(0);
        }
        for offer in offers {
            let ready = offer.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            self.offers
                .with_label_values(&[if ready { "true" } else { "false" }])
                .inc();
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
            let resource = offer.spec.sold_resource();
            for m in &status.models {
                let series = |state| [m.model.as_str(), resource.as_str(), state];
                self.model_gpus
                    .with_label_values(&series("idle"))
                    .add(i64::from(m.idle_gpus));
                self.model_gpus
                    .with_label_values(&series("advertised"))
                    .add(i64::from(m.advertised_gpus));
                // Every offered model has a leased series, 0 while nothing of it is leased.
                self.model_gpus.with_label_values(&series("leased")).add(0);
            }
        }
        for lease in leases {
            self.leases.with_label_values(&[lease.phase.as_str()]).inc();
            if !lease.phase.is_terminal() {
                let model = lease
                    .model
                    .clone()
                    .or_else(|| lease.node.as_deref().and_then(&node_model))
                    .unwrap_or_else(|| UNKNOWN_MODEL.to_string());
                self.model_gpus
                    .with_label_values(&[model.as_str(), lease.resource.as_str(), "leased"])
                    .add(i64::from(lease.gpus));
            }
        }
    }

    /// Counts what one call of the collector newly saw accepted for a lease: the allocated
    /// GPU-milliseconds and the charge (in the denomination's smallest unit, 10^-18) added since
    /// the last figures known for it.
    pub fn record_served(&self, denomination: &str, gpu_millis: u64, charged: Amount) {
        self.gpu_seconds.inc_by(gpu_millis as f64 / 1000.0);
        // A float for Prometheus only: the exact figure is the network's ledger.
        self.earnings
            .with_label_values(&[denomination])
            .inc_by(charged.atto() as f64 / 1e18);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(phase: LeasePhase, gpus: u32, model: Option<&str>) -> LeaseFacts {
        LeaseFacts {
            name: format!("l-{gpus}"),
            offer: "o".into(),
            resource: "nvidia.com/gpu".into(),
            gpus,
            phase,
            node: None,
            model: model.map(str::to_string),
        }
    }

    fn no_nodes(_: &str) -> Option<String> {
        None
    }

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn leased_gpus_by_model_count_only_leases_not_ended() {
        let m = Metrics::new();
        let leases = [
            lease(LeasePhase::Running, 2, Some("H100")),
            lease(LeasePhase::Scheduling, 1, Some("H100")),
            lease(LeasePhase::Succeeded, 4, Some("H100")),
            lease(LeasePhase::Pending, 3, None),
        ];
        m.refresh([], leases.iter(), no_nodes);
        let text = m.render();
        assert_eq!(
            line(
                &text,
                r#"gpubridge_model_gpus{model="H100",resource="nvidia.com/gpu",state="leased"}"#
            ),
            Some(
                r#"gpubridge_model_gpus{model="H100",resource="nvidia.com/gpu",state="leased"} 3"#
            )
        );
        assert_eq!(
            line(
                &text,
                r#"gpubridge_model_gpus{model="unknown",resource="nvidia.com/gpu",state="leased"}"#
            ),
            Some(
                r#"gpubridge_model_gpus{model="unknown",resource="nvidia.com/gpu",state="leased"} 3"#
            )
        );
        assert_eq!(
            line(&text, r#"gpubridge_leases{phase="Succeeded"}"#),
            Some(r#"gpubridge_leases{phase="Succeeded"} 1"#)
        );
        assert_eq!(
            line(&text, r#"gpubridge_offers{ready="false"}"#),
            Some(r#"gpubridge_offers{ready="false"} 0"#)
        );
        // A lease gone from the cache drops out at the next scrape.
        m.refresh([], [], no_nodes);
        assert!(line(&m.render(), "gpubridge_model_gpus{").is_none());
    }

    /// MIG slices are never added to whole GPUs: each offer's GPUs count under its resource,
    /// and a lease that named no model counts under its node's model, not "unknown".
    #[test]
    fn slices_and_whole_gpus_are_separate_series() {
        let offer = |name: &str, resource: &str, model: &str, idle: u32| {
            let mut spec: crate::crd::GpuOfferSpec =
                serde_yaml::from_str(include_str!("../../tests/fixtures/offer-spec.yaml")).unwrap();
            spec.resource_name = resource.into();
            let mut offer = GpuOffer::new(name, spec);
            offer.status = Some(crate::crd::GpuOfferStatus {
                models: vec![crate::crd::ModelCapacity {
                    model: model.into(),
                    idle_gpus: idle,
                    advertised_gpus: idle,
                    largest_block: idle,
                }],
                ..Default::default()
            });
            offer
        };
        let offers = [
            offer("whole", "nvidia.com/gpu", "A100", 8),
            offer("mig", "nvidia.com/mig-1g.10gb", "A100", 7),
        ];
        let mut sliced = lease(LeasePhase::Running, 1, None);
        sliced.resource = "nvidia.com/mig-1g.10gb".into();
        sliced.node = Some("gpu-a100-mig-0".into());
        let m = Metrics::new();
        m.refresh(offers.iter(), [&sliced], |node| {
            (node == "gpu-a100-mig-0").then(|| "A100".to_string())
        });
        let text = m.render();
        for expected in [
            r#"gpubridge_model_gpus{model="A100",resource="nvidia.com/gpu",state="idle"} 8"#,
            r#"gpubridge_model_gpus{model="A100",resource="nvidia.com/mig-1g.10gb",state="idle"} 7"#,
            r#"gpubridge_model_gpus{model="A100",resource="nvidia.com/mig-1g.10gb",state="leased"} 1"#,
            r#"gpubridge_model_gpus{model="A100",resource="nvidia.com/gpu",state="leased"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == expected), "{expected} in\n{text}");
        }
        assert!(!text.contains(r#"model="unknown""#), "{text}");
    }

    #[test]
    fn served_time_and_earnings_add_up_in_whole_units() {
        let m = Metrics::new();
        m.record_served("USDC", 1_500, Amount::from_atto(250_000_000_000_000_000));
        m.record_served("USDC", 500, Amount::from_atto(750_000_000_000_000_000));
        let text = m.render();
        assert_eq!(
            line(&text, "gpubridge_gpu_seconds_total "),
            Some("gpubridge_gpu_seconds_total 2")
        );
        assert_eq!(
            line(&text, r#"gpubridge_earnings_total{denomination="USDC"}"#),
            Some(r#"gpubridge_earnings_total{denomination="USDC"} 1"#)
        );
    }

    #[test]
    fn controller_series_exist_at_zero_before_the_first_error() {
        let m = Metrics::new();
        m.init_controller("lease", &["kube", "conflict"]);
        let text = m.render();
        assert!(
            text.contains(
                r#"gpubridge_reconcile_errors_total{controller="lease",error="conflict"} 0"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"gpubridge_reconciles_total{controller="lease"} 0"#),
            "{text}"
        );
        assert!(text.contains(&format!(
            r#"gpubridge_build_info{{version="{}"}} 1"#,
            env!("CARGO_PKG_VERSION")
        )));
    }
}

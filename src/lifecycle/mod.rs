//! A lease's life (DESIGN §3 step 4): from what is observed of its pod and the clock, the next
//! status and what to do. Pure: the lease controller observes, calls [`decide`], and carries out.
//!
//! Phases follow the pod: Pending (nothing created yet) → Scheduling (pod exists, not running) →
//! Running → Succeeded | Failed | Expired | Terminated. The end is reached once and kept: a
//! terminal lease never moves again, whatever its pod does afterwards.

mod report;

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::{
    ComputeLeaseSpec, ComputeLeaseStatus, LeasePhase, METERED_CONDITION, Termination,
    TerminationReason,
};
use crate::workload::WORKLOAD_CONTAINER;

pub use report::{awaiting_final_receipt, end_report, unmetered};

/// What the controller saw of the lease pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodObservation {
    /// Kubernetes pod phase: Pending, Running, Succeeded, Failed or Unknown.
    pub phase: String,
    pub node: Option<String>,
    pub created_at: Option<Timestamp>,
    /// The pod has a deletionTimestamp.
    pub deleting: bool,
    /// Reason of the pod's DisruptionTarget condition: who is taking it away.
    pub disruption: Option<String>,
    /// status.reason, such as DeadlineExceeded or Evicted.
    pub reason: Option<String>,
    /// Why the workload container waits, such as ErrImagePull.
    pub workload_waiting: Option<String>,
    /// Exit code of the terminated workload container.
    pub workload_exit_code: Option<i32>,
    pub message: Option<String>,
}

impl PodObservation {
    pub fn from_pod(pod: &Pod) -> PodObservation {
        let status = pod.status.as_ref();
        let disruption = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
            })
            .and_then(|c| c.reason.clone());
        let workload = status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == WORKLOAD_CONTAINER))
            .and_then(|c| c.state.as_ref());
        PodObservation {
            phase: status
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "Pending".into()),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            created_at: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            disruption,
            reason: status.and_then(|s| s.reason.clone()),
            workload_waiting: workload
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.clone()),
            workload_exit_code: workload
                .and_then(|s| s.terminated.as_ref())
                .map(|t| t.exit_code),
            message: status.and_then(|s| s.message.clone()),
        }
    }
}

/// Everything [`decide`] reads.
#[derive(Clone, Debug)]
pub struct Observation<'a> {
    pub spec: &'a ComputeLeaseSpec,
    pub status: &'a ComputeLeaseStatus,
    /// The lease pod, if it exists.
    pub pod: Option<&'a PodObservation>,
    /// `Err` when the lease cannot start: its offer is gone or its terms are outside the offer's.
    pub admissible: Result<(), (TerminationReason, String)>,
    /// When the ComputeLease was created: a lease whose pod cannot even be created fails at
    /// the scheduling deadline too.
    pub created_at: Option<Timestamp>,
    pub now: Timestamp,
    /// How long a pod may take to run before the lease fails.
    pub scheduling_timeout: Duration,
    /// The DisruptionTarget reason last seen on the lease pod by the pod watch: a pod that is
    /// preempted or evicted can be gone before a reconcile reads it.
    pub last_disruption: Option<&'a str>,
}

/// What to do, and the status to write once it is done.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub status: ComputeLeaseStatus,
    /// Create the namespace, its policies, the secret and the pod.
    pub create: bool,
    /// Delete the pod: the lease has ended.
    pub delete_pod: bool,
    /// When to look again if nothing changes before.
    pub requeue_after: Option<Duration>,
}

const WAITING_REASONS_OF_IMAGES: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
];
const WAITING_REASONS_OF_SPECS: &[&str] = &[
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

pub fn decide(o: &Observation) -> Decision {
    let mut status = o.status.clone();
    if status.phase.is_terminal() {
        // Ended: make sure the pod stops, change nothing else.
        let delete_pod = o.pod.is_some_and(|p| !p.deleting && !is_pod_terminal(p));
        return Decision {
            status,
            create: false,
            delete_pod,
            requeue_after: None,
        };
    }

    if let Some(message) = closed_by_network(&status) {
        return end(
            status,
            TerminationReason::CancelledByNetwork,
            message,
            o.now,
        );
    }

    let Some(pod) = o.pod else {
        return match status.phase {
            LeasePhase::Pending => match &o.admissible {
                Err((reason, message)) => end(status, *reason, message.clone(), o.now),
                Ok(()) if o.now >= deadline(o.created_at, o) => end(
                    status,
                    TerminationReason::SchedulingTimeout,
                    format!(
                        "the lease pod could not be created within {}s",
                        o.scheduling_timeout.as_secs()
                    ),
                    o.now,
                ),
                Ok(()) => {
                    status.phase = LeasePhase::Scheduling;
                    Decision {
                        status,
                        create: true,
                        delete_pod: false,
                        requeue_after: Some(o.scheduling_timeout),
                    }
                }
            },
            _ => match o.last_disruption {
                Some(disruption) => end(
                    status,
                    disruption_reason(disruption),
                    format!("pod disrupted ({disruption})"),
                    o.now,
                ),
                None => end(
                    status,
                    TerminationReason::PodLost,
                    "the lease pod disappeared".into(),
                    o.now,
                ),
            },
        };
    };

    if let Some(ended) = pod_ended(pod, &status) {
        let (reason, message) = ended;
        return end(status, reason, message, o.now);
    }

    if let Some(node) = &pod.node {
        status.node = Some(node.clone());
    }
    if pod.phase == "Running" {
        let started = status.started_at.as_ref().map(|t| t.0).unwrap_or(o.now);
        let ends = started + SignedDuration::from_secs(o.spec.duration_seconds as i64);
        status.phase = LeasePhase::Running;
        status.started_at = Some(Time(started));
        status.ends_at = Some(Time(ends));
        if o.now >= ends {
            return end(
                status,
                TerminationReason::Expired,
                "the lease ran its full duration".into(),
                o.now,
            );
        }
        return Decision {
            status,
            create: false,
            delete_pod: false,
            requeue_after: Some(until(o.now, ends)),
        };
    }

    // Not running yet: it has until the scheduling deadline.
    status.phase = LeasePhase::Scheduling;
    let deadline = deadline(pod.created_at, o);
    if let Some(waiting) = pod.workload_waiting.as_deref()
        && waiting == "InvalidImageName"
    {
        return end(
            status,
            TerminationReason::ImagePullFailed,
            format!("workload image is invalid ({waiting})"),
            o.now,
        );
    }
    if o.now >= deadline {
        let (reason, message) = match pod.workload_waiting.as_deref() {
            Some(w) if WAITING_REASONS_OF_IMAGES.contains(&w) => (
                TerminationReason::ImagePullFailed,
                format!("workload image could not be pulled ({w})"),
            ),
            Some(w) if WAITING_REASONS_OF_SPECS.contains(&w) => (
                TerminationReason::WorkloadInvalid,
                format!("workload container could not be created ({w})"),
            ),
            _ => (
                TerminationReason::SchedulingTimeout,
                format!(
                    "the pod did not run within {}s",
                    o.scheduling_timeout.as_secs()
                ),
            ),
        };
        return end(status, reason, message, o.now);
    }
    Decision {
        status,
        create: false,
        delete_pod: false,
        requeue_after: Some(until(o.now, deadline)),
    }
}

/// Why the network closed the lease, when it refused a receipt as closed (the collector's
/// `Metered` condition): it ended the lease on its own deadlines, a lapsed re-probe among them,
/// and pays nothing more, so the pod stops.
fn closed_by_network(status: &ComputeLeaseStatus) -> Option<String> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == METERED_CONDITION && c.status == "False" && c.reason == "LeaseClosed")
        .map(|c| format!("the network closed the lease: {}", c.message))
}

/// The lease's end for a pod's DisruptionTarget reason.
fn disruption_reason(disruption: &str) -> TerminationReason {
    match disruption {
        "PreemptionByScheduler" | "PreemptionByKubeScheduler" => TerminationReason::Preempted,
        "DeletionByTaintManager" | "DeletionByPodGC" => TerminationReason::NodeLost,
        _ => TerminationReason::PodLost,
    }
}

/// Whether and why the pod has ended the lease on its own.
fn pod_ended(
    pod: &PodObservation,
    status: &ComputeLeaseStatus,
) -> Option<(TerminationReason, String)> {
    let detail = |what: &str| match &pod.message {
        Some(m) => format!("{what}: {m}"),
        None => what.to_string(),
    };
    // Someone else is taking the pod away: the provider's doing, whatever the pod phase says.
    if let Some(disruption) = pod.disruption.as_deref() {
        return Some((
            disruption_reason(disruption),
            detail(&format!("pod disrupted ({disruption})")),
        ));
    }
    match pod.phase.as_str() {
        "Succeeded" => Some((
            TerminationReason::Completed,
            "the workload completed".into(),
        )),
        "Failed" => Some(match pod.reason.as_deref() {
            Some("DeadlineExceeded") if status.started_at.is_some() => (
                TerminationReason::Expired,
                "the lease ran its full duration".into(),
            ),
            Some("DeadlineExceeded") => (
                TerminationReason::SchedulingTimeout,
                detail("the pod never ran"),
            ),
            Some("Evicted" | "Preempting") => (TerminationReason::PodLost, detail("pod evicted")),
            Some("NodeLost" | "NodeShutdown" | "Terminated") => {
                (TerminationReason::NodeLost, detail("node lost"))
            }
            _ => (
                TerminationReason::WorkloadFailed,
                match pod.workload_exit_code {
                    Some(code) => format!("the workload exited with code {code}"),
                    None => detail("the workload failed"),
                },
            ),
        }),
        // Deleted by someone other than the operator, with no disruption condition to say why.
        _ if pod.deleting => Some((
            TerminationReason::PodLost,
            "the lease pod was deleted".into(),
        )),
        _ => None,
    }
}

/// The scheduling timeout after `since` (or now, when unknown).
fn deadline(since: Option<Timestamp>, o: &Observation) -> Timestamp {
    since.unwrap_or(o.now)
        + SignedDuration::try_from(o.scheduling_timeout).unwrap_or(SignedDuration::MAX)
}

/// The lease's end when the API refused part of its box: nothing of it can run, the provider's
/// set-up is at fault, and the buyer is refunded. A lease that already ended stays as it is.
pub fn box_refused(status: &ComputeLeaseStatus, message: String, now: Timestamp) -> Decision {
    if status.phase.is_terminal() {
        return Decision {
            status: status.clone(),
            create: false,
            delete_pod: false,
            requeue_after: None,
        };
    }
    end(
        status.clone(),
        TerminationReason::BoxRejected,
        format!("the API refused the lease's box: {message}"),
        now,
    )
}

fn is_pod_terminal(pod: &PodObservation) -> bool {
    pod.phase == "Succeeded" || pod.phase == "Failed"
}

fn end(
    mut status: ComputeLeaseStatus,
    reason: TerminationReason,
    message: String,
    now: Timestamp,
) -> Decision {
    status.phase = reason.phase();
    status.finished_at = Some(Time(now));
    status.termination = Some(Termination::new(reason, message));
    Decision {
        status,
        create: false,
        delete_pod: true,
        requeue_after: None,
    }
}

fn until(now: Timestamp, then: Timestamp) -> Duration {
    // One second past the instant, so that the next look finds it reached.
    Duration::from_secs(then.duration_since(now).as_secs().max(0) as u64 + 1)
}

#[cfg(test)]
mod tests;

//! The lease state machine, case by case.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::crd::{ComputeLeaseSpec, Fault};

fn spec() -> ComputeLeaseSpec {
    serde_yaml::from_str(include_str!("../../tests/fixtures/lease-spec.yaml")).unwrap()
}

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

const TIMEOUT: Duration = Duration::from_secs(600);

fn decide_at(
    status: &ComputeLeaseStatus,
    pod: Option<&PodObservation>,
    now: Timestamp,
) -> Decision {
    let spec = spec();
    decide(&Observation {
        spec: &spec,
        status,
        pod,
        admissible: Ok(()),
        created_at: Some(t(0)),
        now,
        scheduling_timeout: TIMEOUT,
        last_disruption: None,
    })
}

fn pod(phase: &str) -> PodObservation {
    PodObservation {
        phase: phase.into(),
        node: Some("gpu-0".into()),
        created_at: Some(t(0)),
        ..Default::default()
    }
}

fn status(phase: LeasePhase) -> ComputeLeaseStatus {
    ComputeLeaseStatus {
        phase,
        ..Default::default()
    }
}

fn running_since(secs: i64) -> ComputeLeaseStatus {
    ComputeLeaseStatus {
        phase: LeasePhase::Running,
        started_at: Some(Time(t(secs))),
        ends_at: Some(Time(t(secs) + SignedDuration::from_secs(3600))),
        ..Default::default()
    }
}

fn reason(d: &Decision) -> Option<TerminationReason> {
    d.status.termination.as_ref().map(|t| t.reason)
}

#[test]
fn new_lease_creates_its_box_and_waits_for_scheduling() {
    let d = decide_at(&status(LeasePhase::Pending), None, t(0));
    assert!(d.create);
    assert_eq!(d.status.phase, LeasePhase::Scheduling);
    assert_eq!(d.requeue_after, Some(TIMEOUT));
}

#[test]
fn inadmissible_lease_ends_before_anything_is_created() {
    let spec = spec();
    let st = status(LeasePhase::Pending);
    let d = decide(&Observation {
        spec: &spec,
        status: &st,
        pod: None,
        admissible: Err((TerminationReason::OfferGone, "offer h100 not found".into())),
        created_at: Some(t(0)),
        now: t(0),
        scheduling_timeout: TIMEOUT,
        last_disruption: None,
    });
    assert!(!d.create);
    assert_eq!(d.status.phase, LeasePhase::Failed);
    assert_eq!(d.status.termination.unwrap().fault, Fault::Provider);
}

#[test]
fn running_pod_starts_the_clock_once() {
    let d = decide_at(
        &status(LeasePhase::Scheduling),
        Some(&pod("Running")),
        t(30),
    );
    assert_eq!(d.status.phase, LeasePhase::Running);
    assert_eq!(d.status.started_at, Some(Time(t(30))));
    assert_eq!(d.status.ends_at, Some(Time(t(30 + 3600))));
    assert_eq!(d.status.node.as_deref(), Some("gpu-0"));
    assert_eq!(d.requeue_after, Some(Duration::from_secs(3601)));
    // Seen again later: the clock is not restarted.
    let again = decide_at(&d.status, Some(&pod("Running")), t(100));
    assert_eq!(again.status, d.status);
    assert!(!again.create && !again.delete_pod);
}

#[test]
fn running_lease_expires_at_its_end() {
    let d = decide_at(&running_since(0), Some(&pod("Running")), t(3600));
    assert_eq!(d.status.phase, LeasePhase::Expired);
    assert_eq!(reason(&d), Some(TerminationReason::Expired));
    assert_eq!(d.status.termination.as_ref().unwrap().fault, Fault::None);
    assert_eq!(d.status.finished_at, Some(Time(t(3600))));
    assert!(d.delete_pod);
}

#[test]
fn pod_outcomes_map_to_typed_reasons_and_faults() {
    let cases: Vec<(
        &str,
        PodObservation,
        ComputeLeaseStatus,
        TerminationReason,
        Fault,
    )> = vec![
        (
            "success",
            pod("Succeeded"),
            running_since(0),
            TerminationReason::Completed,
            Fault::None,
        ),
        (
            "workload exit 3",
            PodObservation {
                workload_exit_code: Some(3),
                ..pod("Failed")
            },
            running_since(0),
            TerminationReason::WorkloadFailed,
            Fault::Tenant,
        ),
        (
            "deadline after running",
            PodObservation {
                reason: Some("DeadlineExceeded".into()),
                ..pod("Failed")
            },
            running_since(0),
            TerminationReason::Expired,
            Fault::None,
        ),
        (
            "deadline before running",
            PodObservation {
                reason: Some("DeadlineExceeded".into()),
                ..pod("Failed")
            },
            status(LeasePhase::Scheduling),
            TerminationReason::SchedulingTimeout,
            Fault::Provider,
        ),
        (
            "preempted",
            PodObservation {
                disruption: Some("PreemptionByScheduler".into()),
                deleting: true,
                ..pod("Running")
            },
            running_since(0),
            TerminationReason::Preempted,
            Fault::Provider,
        ),
        (
            "node lost",
            PodObservation {
                disruption: Some("DeletionByTaintManager".into()),
                ..pod("Running")
            },
            running_since(0),
            TerminationReason::NodeLost,
            Fault::Provider,
        ),
        (
            "evicted",
            PodObservation {
                reason: Some("Evicted".into()),
                ..pod("Failed")
            },
            running_since(0),
            TerminationReason::PodLost,
            Fault::Provider,
        ),
        (
            "deleted by someone",
            PodObservation {
                deleting: true,
                ..pod("Running")
            },
            running_since(0),
            TerminationReason::PodLost,
            Fault::Provider,
        ),
    ];
    for (name, p, st, want, fault) in cases {
        let d = decide_at(&st, Some(&p), t(10));
        assert_eq!(reason(&d), Some(want), "{name}");
        assert_eq!(
            d.status.termination.as_ref().unwrap().fault,
            fault,
            "{name}"
        );
        assert_eq!(d.status.phase, want.phase(), "{name}");
        assert!(d.delete_pod, "{name}");
    }
}

#[test]
fn a_lease_whose_pod_cannot_be_created_fails_at_the_deadline() {
    let d = decide_at(&status(LeasePhase::Pending), None, t(599));
    assert!(d.create, "still trying");
    let d = decide_at(&status(LeasePhase::Pending), None, t(600));
    assert!(!d.create);
    assert_eq!(reason(&d), Some(TerminationReason::SchedulingTimeout));
    assert_eq!(d.status.termination.unwrap().fault, Fault::Provider);
}

#[test]
fn vanished_pod_is_the_providers_fault() {
    let mut running = running_since(0);
    running.pod = Some("workload".into());
    let d = decide_at(&running, None, t(10));
    assert_eq!(reason(&d), Some(TerminationReason::PodLost));
    assert!(!d.create, "a lost pod is never silently recreated");
}

#[test]
fn a_pod_gone_after_a_disruption_was_seen_ends_with_that_reason() {
    let spec = spec();
    let mut running = running_since(0);
    running.pod = Some("workload".into());
    let d = decide(&Observation {
        spec: &spec,
        status: &running,
        pod: None,
        admissible: Ok(()),
        created_at: Some(t(0)),
        now: t(10),
        scheduling_timeout: TIMEOUT,
        last_disruption: Some("PreemptionByScheduler"),
    });
    assert_eq!(reason(&d), Some(TerminationReason::Preempted));
    assert_eq!(d.status.termination.unwrap().fault, Fault::Provider);
}

#[test]
fn scheduling_deadline_names_the_cause() {
    let pending = pod("Pending");
    let d = decide_at(&status(LeasePhase::Scheduling), Some(&pending), t(599));
    assert_eq!(d.status.phase, LeasePhase::Scheduling);
    assert_eq!(d.requeue_after, Some(Duration::from_secs(2)));

    let d = decide_at(&status(LeasePhase::Scheduling), Some(&pending), t(600));
    assert_eq!(reason(&d), Some(TerminationReason::SchedulingTimeout));

    let pulling = PodObservation {
        workload_waiting: Some("ImagePullBackOff".into()),
        ..pod("Pending")
    };
    let d = decide_at(&status(LeasePhase::Scheduling), Some(&pulling), t(600));
    assert_eq!(reason(&d), Some(TerminationReason::ImagePullFailed));
    assert_eq!(d.status.termination.as_ref().unwrap().fault, Fault::Tenant);

    let bad_config = PodObservation {
        workload_waiting: Some("CreateContainerError".into()),
        ..pod("Pending")
    };
    assert_eq!(
        reason(&decide_at(
            &status(LeasePhase::Scheduling),
            Some(&bad_config),
            t(600)
        )),
        Some(TerminationReason::WorkloadInvalid)
    );

    let invalid = PodObservation {
        workload_waiting: Some("InvalidImageName".into()),
        ..pod("Pending")
    };
    assert_eq!(
        reason(&decide_at(
            &status(LeasePhase::Scheduling),
            Some(&invalid),
            t(1)
        )),
        Some(TerminationReason::ImagePullFailed),
        "an invalid image name fails at once"
    );
}

#[test]
fn ended_leases_never_move_again() {
    let mut ended = running_since(0);
    ended.phase = LeasePhase::Expired;
    for p in [
        pod("Running"),
        pod("Succeeded"),
        PodObservation {
            deleting: true,
            ..pod("Running")
        },
    ] {
        let d = decide_at(&ended, Some(&p), t(5000));
        assert_eq!(d.status, ended);
        assert!(!d.create);
        assert_eq!(d.delete_pod, p.phase == "Running" && !p.deleting, "{p:?}");
    }
    assert_eq!(decide_at(&ended, None, t(5000)).status, ended);
}

#[test]
fn observation_from_a_real_pod_object() {
    let p: Pod = serde_yaml::from_str(
        r#"
metadata: {name: workload, namespace: lease-a, creationTimestamp: "2027-01-15T08:00:00Z", deletionTimestamp: "2027-01-15T09:00:00Z"}
spec: {nodeName: gpu-0, containers: [{name: workload}]}
status:
  phase: Running
  conditions: [{type: DisruptionTarget, status: "True", reason: PreemptionByScheduler, message: "preempted by prod/trainer"}]
  containerStatuses:
  - {name: workload, image: x, imageID: "", ready: false, restartCount: 0, state: {waiting: {reason: ErrImagePull}}}
"#,
    )
    .unwrap();
    let o = PodObservation::from_pod(&p);
    assert_eq!(o.phase, "Running");
    assert_eq!(o.node.as_deref(), Some("gpu-0"));
    assert!(o.deleting);
    assert_eq!(o.disruption.as_deref(), Some("PreemptionByScheduler"));
    assert_eq!(o.workload_waiting.as_deref(), Some("ErrImagePull"));
    assert_eq!(o.created_at, Some("2027-01-15T08:00:00Z".parse().unwrap()));
}

#[test]
fn a_refused_box_fails_the_lease_at_once_as_the_providers_fault() {
    for phase in [LeasePhase::Pending, LeasePhase::Scheduling] {
        let d = box_refused(&status(phase), "pods is forbidden".into(), t(5));
        assert_eq!(d.status.phase, LeasePhase::Failed, "from {phase:?}");
        let termination = d.status.termination.unwrap();
        assert_eq!(termination.reason, TerminationReason::BoxRejected);
        assert_eq!(termination.fault, Fault::Provider);
        assert!(
            termination.message.contains("pods is forbidden"),
            "{}",
            termination.message
        );
        assert_eq!(d.status.finished_at, Some(Time(t(5))));
        assert!(!d.create);
    }
    // An ended lease keeps its end.
    let ended = decide_at(&status(LeasePhase::Pending), None, t(601)).status;
    let d = box_refused(&ended, "late".into(), t(700));
    assert_eq!(d.status, ended);
}

#[test]
fn a_lease_the_network_closed_stops_its_pod_and_a_refused_window_does_not() {
    let metered = |ok: bool, reason: &str| {
        crate::crd::conditions::condition(
            &[],
            METERED_CONDITION,
            ok,
            reason,
            "receipt 9: the lease is ended and takes no more receipts",
            None,
            t(100),
        )
    };
    let mut st = running_since(0);
    st.conditions = vec![metered(false, "LeaseClosed")];
    let d = decide_at(&st, Some(&pod("Running")), t(120));
    assert_eq!(reason(&d), Some(TerminationReason::CancelledByNetwork));
    assert_eq!(d.status.phase, LeasePhase::Terminated);
    assert_eq!(d.status.termination.as_ref().unwrap().fault, Fault::Network);
    assert!(
        d.status
            .termination
            .as_ref()
            .unwrap()
            .message
            .contains("the network closed the lease: receipt 9"),
        "{:?}",
        d.status.termination
    );
    assert!(d.delete_pod);
    // A receipt refused for another reason (waiting for a re-probe's pass) keeps it running,
    // as does the condition once true again.
    for other in [metered(false, "Unproven"), metered(true, "LeaseClosed")] {
        st.conditions = vec![other];
        let d = decide_at(&st, Some(&pod("Running")), t(120));
        assert_eq!(d.status.phase, LeasePhase::Running);
        assert!(!d.delete_pod);
    }
}

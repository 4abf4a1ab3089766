//! Leader election on a `coordination.k8s.io` Lease, so that two replicas never both write.
//!
//! Written here because the maintained crate for it (kube-leader-election) is built on kube 4,
//! which cannot use the k8s-openapi version of our control plane. It follows client-go's rules:
//! a holder is presumed alive until its record has not changed for a whole lease duration *by
//! our own clock* (so clock skew between replicas does not matter), and every write carries the
//! resourceVersion it was decided from, so two candidates cannot both win.
//!
//! A leader stops acting once it has not renewed for `renew_deadline`, which is shorter than the
//! `lease_duration` a follower waits before taking over, and every call it makes to the API runs
//! under a timeout that ends at that deadline: a hung call cannot keep a deposed leader acting.
//! (Intake's reservations are safe even when two replicas both believe they lead; this keeps the
//! window in which they could small.)

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tracing::{info, warn};

use crate::operator::controller::error::{is_conflict, is_not_found};

#[derive(Clone, Debug)]
pub struct ElectionSettings {
    pub namespace: String,
    pub lease_name: String,
    pub identity: String,
    /// How long followers wait, by their own clocks, for a silent holder before taking over.
    pub lease_duration: Duration,
    /// How long a leader keeps acting without a successful renewal: less than `lease_duration`.
    pub renew_deadline: Duration,
    /// How often the leader renews and a follower looks.
    pub renew_period: Duration,
}

impl ElectionSettings {
    /// client-go's defaults, scaled: 15 s lease, 10 s renew deadline, 2 s retry period.
    pub fn new(namespace: String, lease_name: String, identity: String) -> ElectionSettings {
        ElectionSettings {
            namespace,
            lease_name,
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            renew_period: Duration::from_secs(2),
        }
    }
}

/// How long the next renewal may take: what is left of the renew deadline since the last
/// successful renewal, or `None` once it has passed and the leader must stop.
pub fn renewal_budget(since_last_renewal: Duration, renew_deadline: Duration) -> Option<Duration> {
    renew_deadline
        .checked_sub(since_last_renewal)
        .filter(|left| !left.is_zero())
}

/// What a candidate does after reading the Lease.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// No Lease exists: create one naming us.
    Create,
    /// We hold it: renew it.
    Renew,
    /// Its holder stopped renewing, or released it: take it over.
    TakeOver,
    /// Someone else holds it and renews it.
    Follow { holder: String },
}

/// Tracks when the Lease record last changed, by the local clock.
#[derive(Default, Debug)]
pub struct Observed {
    record: Option<(Option<String>, Option<MicroTime>)>,
    since: Option<Instant>,
}

/// Decides the next step. Pure: the clock is passed in.
pub fn next_step(
    lease: Option<&Lease>,
    me: &str,
    observed: &mut Observed,
    now: Instant,
    duration: Duration,
) -> Step {
    let Some(lease) = lease else {
        return Step::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let record = (holder.clone(), spec.renew_time.clone());
    if observed.record.as_ref() != Some(&record) {
        observed.record = Some(record);
        observed.since = Some(now);
    }
    match holder {
        Some(h) if h == me => Step::Renew,
        None => Step::TakeOver,
        Some(h) => {
            let held_for = spec
                .lease_duration_seconds
                .map(|s| Duration::from_secs(s.max(1) as u64))
                .unwrap_or(duration);
            let unchanged_for = now.duration_since(observed.since.unwrap_or(now));
            if unchanged_for >= held_for {
                Step::TakeOver
            } else {
                Step::Follow { holder: h }
            }
        }
    }
}

/// Blocks until this replica holds the Lease.
pub async fn acquire(api: &Api<Lease>, settings: &ElectionSettings) -> Result<(), kube::Error> {
    let mut observed = Observed::default();
    let mut last_holder = None;
    loop {
        // A hung call must not stall the candidate: each round gets the renew deadline.
        match tokio::time::timeout(
            settings.renew_deadline,
            try_once(api, settings, &mut observed),
        )
        .await
        {
            Ok(Ok(None)) => {
                info!(identity = %settings.identity, "became leader");
                return Ok(());
            }
            Ok(Ok(Some(holder))) => {
                if last_holder.as_ref() != Some(&holder) {
                    info!(%holder, "another replica leads; standing by");
                    last_holder = Some(holder);
                }
            }
            Ok(Err(e)) if is_conflict(&e) => {}
            Ok(Err(e)) => warn!(error = %e, "leader election failed; retrying"),
            Err(_) => warn!("leader election call timed out; retrying"),
        }
        tokio::time::sleep(settings.renew_period).await;
    }
}

/// Renews the Lease until no renewal has succeeded for the renew deadline, then returns: the
/// caller must stop writing at once. A renewal still in flight at the deadline is abandoned.
pub async fn hold(api: &Api<Lease>, settings: &ElectionSettings) {
    let mut observed = Observed::default();
    let mut last_success = Instant::now();
    loop {
        tokio::time::sleep(settings.renew_period).await;
        let Some(budget) = renewal_budget(last_success.elapsed(), settings.renew_deadline) else {
            warn!("leadership not renewed within the renew deadline");
            return;
        };
        match tokio::time::timeout(budget, try_once(api, settings, &mut observed)).await {
            Ok(Ok(None)) => last_success = Instant::now(),
            Ok(Ok(Some(holder))) => {
                warn!(%holder, "leadership lost to another replica");
                return;
            }
            Ok(Err(e)) => warn!(error = %e, "could not renew leadership"),
            Err(_) => {
                warn!("leadership renewal hung past the renew deadline");
                return;
            }
        }
    }
}

/// Gives the Lease up, so that another replica takes over without waiting for it to expire.
pub async fn release(api: &Api<Lease>, s: &ElectionSettings) {
    let result = tokio::time::timeout(s.renew_deadline, async {
        let mut lease = api.get(&s.lease_name).await?;
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(s.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        api.replace(&s.lease_name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    })
    .await;
    match result {
        Ok(Ok(())) => info!(identity = %s.identity, "released leadership"),
        Ok(Err(e)) => warn!(error = %e, "could not release leadership; it expires on its own"),
        Err(_) => warn!("releasing leadership timed out; it expires on its own"),
    }
}

/// One round: `Ok(None)` when we hold the Lease afterwards, `Ok(Some(holder))` when another does.
async fn try_once(
    api: &Api<Lease>,
    s: &ElectionSettings,
    observed: &mut Observed,
) -> Result<Option<String>, kube::Error> {
    let current = match api.get(&s.lease_name).await {
        Ok(lease) => Some(lease),
        Err(e) if is_not_found(&e) => None,
        Err(e) => return Err(e),
    };
    let now = MicroTime(Timestamp::now());
    match next_step(
        current.as_ref(),
        &s.identity,
        observed,
        Instant::now(),
        s.lease_duration,
    ) {
        Step::Follow { holder } => Ok(Some(holder)),
        Step::Create => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(s.lease_name.clone()),
                    namespace: Some(s.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(s.identity.clone()),
                    lease_duration_seconds: Some(s.lease_duration.as_secs() as i32),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            api.create(&PostParams::default(), &lease).await?;
            Ok(None)
        }
        step @ (Step::Renew | Step::TakeOver) => {
            let mut lease = current.expect("renew and take over follow a read Lease");
            let spec = lease.spec.get_or_insert_with(Default::default);
            if step == Step::TakeOver {
                spec.holder_identity = Some(s.identity.clone());
                spec.acquire_time = Some(now.clone());
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.lease_duration_seconds = Some(s.lease_duration.as_secs() as i32);
            spec.renew_time = Some(now);
            // replace carries the resourceVersion we read: a concurrent writer makes this fail.
            api.replace(&s.lease_name, &PostParams::default(), &lease)
                .await?;
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_renew_budget_runs_out_at_the_deadline() {
        let deadline = Duration::from_secs(10);
        for (since, budget) in [
            (0, Some(10_000)),
            (2_000, Some(8_000)),
            (9_999, Some(1)),
            (10_000, None),
            (60_000, None),
        ] {
            assert_eq!(
                renewal_budget(Duration::from_millis(since), deadline),
                budget.map(Duration::from_millis),
                "{since} ms after the last renewal"
            );
        }
    }

    #[test]
    fn a_leader_stops_acting_before_a_follower_may_take_over() {
        let s = ElectionSettings::new("ns".into(), "lease".into(), "me".into());
        assert!(s.renew_period < s.renew_deadline);
        assert!(s.renew_deadline < s.lease_duration);
    }

    /// A renewal whose API call never answers ends leadership at the renew deadline, before any
    /// follower would take over.
    #[tokio::test(start_paused = true)]
    async fn a_hung_renewal_ends_leadership_by_the_renew_deadline() {
        let (service, mut handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        // Accept every request and never answer it.
        let server = tokio::spawn(async move {
            let mut pending = Vec::new();
            while let Some((request, respond)) = handle.next_request().await {
                pending.push((request, respond));
            }
        });
        let api: Api<Lease> = Api::namespaced(kube::Client::new(service, "ns"), "ns");
        let settings = ElectionSettings::new("ns".into(), "lease".into(), "me".into());
        let started = tokio::time::Instant::now();
        hold(&api, &settings).await;
        let held = started.elapsed();
        assert!(
            held >= settings.renew_deadline && held < settings.lease_duration,
            "acted for {held:?}"
        );
        server.abort();
    }

    fn lease(holder: Option<&str>, renew: &str) -> Lease {
        Lease {
            metadata: Default::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(Into::into),
                renew_time: Some(MicroTime(renew.parse().unwrap())),
                lease_duration_seconds: Some(15),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn steps() {
        let t0 = Instant::now();
        let d = Duration::from_secs(15);
        let mut obs = Observed::default();
        assert_eq!(next_step(None, "me", &mut obs, t0, d), Step::Create);
        assert_eq!(
            next_step(
                Some(&lease(Some("me"), "2027-01-01T00:00:00Z")),
                "me",
                &mut obs,
                t0,
                d
            ),
            Step::Renew
        );
        assert_eq!(
            next_step(
                Some(&lease(None, "2027-01-01T00:00:00Z")),
                "me",
                &mut obs,
                t0,
                d
            ),
            Step::TakeOver
        );
    }

    #[test]
    fn a_holder_that_keeps_renewing_is_followed_and_a_silent_one_is_replaced() {
        let t0 = Instant::now();
        let d = Duration::from_secs(15);
        let mut obs = Observed::default();
        let other = lease(Some("other"), "2027-01-01T00:00:00Z");
        assert_eq!(
            next_step(Some(&other), "me", &mut obs, t0, d),
            Step::Follow {
                holder: "other".into()
            }
        );
        // Its renewTime is far in the past by its clock, but we only just saw it: still followed.
        assert_eq!(
            next_step(
                Some(&other),
                "me",
                &mut obs,
                t0 + Duration::from_secs(14),
                d
            ),
            Step::Follow {
                holder: "other".into()
            }
        );
        // It renews: the record changed, so the wait starts over.
        let renewed = lease(Some("other"), "2027-01-01T00:00:10Z");
        assert_eq!(
            next_step(
                Some(&renewed),
                "me",
                &mut obs,
                t0 + Duration::from_secs(20),
                d
            ),
            Step::Follow {
                holder: "other".into()
            }
        );
        // Silent for a whole lease duration by our clock: taken over.
        assert_eq!(
            next_step(
                Some(&renewed),
                "me",
                &mut obs,
                t0 + Duration::from_secs(35),
                d
            ),
            Step::TakeOver
        );
    }
}

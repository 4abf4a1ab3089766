//! Leader election on a `coordination.k8s.io` Lease, so that two replicas never both write.
//!
//! Written here because the maintained crate for it (kube-leader-election) is built on kube 4,
//! which cannot use the k8s-openapi version of our control plane. It follows client-go's rules:
//! a holder is presumed alive until its record has not changed for a whole lease duration *by
//! our own clock* (so clock skew between replicas does not matter), and every write carries the
//! resourceVersion it was decided from, so two candidates cannot both win.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use tracing::{info, warn};

use super::error::{is_conflict, is_not_found};

#[derive(Clone, Debug)]
pub struct ElectionSettings {
    pub namespace: String,
    pub lease_name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_period: Duration,
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
        match try_once(api, settings, &mut observed).await {
            Ok(None) => {
                info!(identity = %settings.identity, "became leader");
                return Ok(());
            }
            Ok(Some(holder)) => {
                if last_holder.as_ref() != Some(&holder) {
                    info!(%holder, "another replica leads; standing by");
                    last_holder = Some(holder);
                }
            }
            Err(e) if is_conflict(&e) => {}
            Err(e) => warn!(error = %e, "leader election failed; retrying"),
        }
        tokio::time::sleep(settings.renew_period).await;
    }
}

/// Renews the Lease until a renewal fails for longer than the lease duration, then returns:
/// by then another replica may lead, so the caller must stop writing at once.
pub async fn hold(api: &Api<Lease>, settings: &ElectionSettings) {
    let mut observed = Observed::default();
    let mut last_success = Instant::now();
    loop {
        tokio::time::sleep(settings.renew_period).await;
        match try_once(api, settings, &mut observed).await {
            Ok(None) => last_success = Instant::now(),
            Ok(Some(holder)) => {
                warn!(%holder, "leadership lost to another replica");
                return;
            }
            Err(e) => warn!(error = %e, "could not renew leadership"),
        }
        if last_success.elapsed() >= settings.lease_duration {
            warn!("leadership not renewed within the lease duration");
            return;
        }
    }
}

/// Gives the Lease up, so that another replica takes over without waiting for it to expire.
pub async fn release(api: &Api<Lease>, s: &ElectionSettings) {
    let result = async {
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
    }
    .await;
    match result {
        Ok(()) => info!(identity = %s.identity, "released leadership"),
        Err(e) => warn!(error = %e, "could not release leadership; it expires on its own"),
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

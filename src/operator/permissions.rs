//! Asks the API, with access reviews, whether the operator may build lease boxes, at start and
//! every minute, and closes intake's gate while it may not (`admission::BoxGate`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};
use tracing::{info, warn};

use crate::admission::{BOX_PERMISSIONS, BoxGate, permission_name};

const RECHECK: Duration = Duration::from_secs(60);

/// Runs until the process ends. A review that cannot be made (the API down) leaves the gate as
/// it was: the lease controller still closes it on a refused box.
pub async fn watch(client: Client, gate: Arc<Mutex<BoxGate>>) {
    let api: Api<SelfSubjectAccessReview> = Api::all(client);
    let mut last: Option<Vec<String>> = None;
    loop {
        match missing(&api).await {
            Ok(missing) => {
                if last.as_ref() != Some(&missing) {
                    if missing.is_empty() {
                        info!("the operator may build lease boxes");
                    } else {
                        warn!(missing = %missing.join(", "), "the operator lacks permissions lease boxes need; leases are refused until it has them");
                    }
                }
                gate.lock()
                    .expect("box gate lock poisoned")
                    .set_missing(missing.clone());
                last = Some(missing);
            }
            Err(e) => warn!(error = %e, "could not review the operator's permissions"),
        }
        tokio::time::sleep(RECHECK).await;
    }
}

async fn missing(api: &Api<SelfSubjectAccessReview>) -> Result<Vec<String>, kube::Error> {
    let mut missing = Vec::new();
    for (group, resource, verb) in BOX_PERMISSIONS {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some((*group).into()),
                    resource: Some((*resource).into()),
                    verb: Some((*verb).into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = api.create(&PostParams::default(), &review).await?;
        if !answer.status.is_some_and(|s| s.allowed) {
            missing.push(permission_name(group, resource, verb));
        }
    }
    Ok(missing)
}

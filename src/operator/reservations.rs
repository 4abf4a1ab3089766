//! Intake's reservation ledger (`admission::Reservations`) kept in one ConfigMap of the
//! operator's namespace, changed only under optimistic concurrency: each change is made to the
//! record as read and written back with the resourceVersion it was read at, so a replica that
//! decided against a stale record fails to write and decides again. Two replicas that both
//! believe they lead (a partition, a paused process) therefore never promise a GPU twice.

use std::collections::BTreeMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Client};

use crate::admission::{NodeBlock, Reservations};
use crate::operator::controller::error::is_conflict;

/// The ConfigMap holding the record, in the operator's namespace.
pub const RESERVATIONS_CONFIGMAP: &str = "gpubridge-reservations";
const RECORD_KEY: &str = "reservations.json";
/// Writes lost to other replicas before intake gives up on one lease.
const MAX_ATTEMPTS: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("configmap {RESERVATIONS_CONFIGMAP} key {RECORD_KEY} is not a reservation record: {0}")]
    Corrupt(serde_json::Error),
    #[error("{MAX_ATTEMPTS} writes of the reservation record lost to other replicas")]
    Contended,
}

pub struct ReservationRecord {
    api: Api<ConfigMap>,
    /// The record as last read or written, for publication's view of what is pending.
    last: Mutex<Reservations>,
}

impl ReservationRecord {
    pub fn new(client: Client, namespace: &str) -> ReservationRecord {
        ReservationRecord {
            api: Api::namespaced(client, namespace),
            last: Mutex::new(Reservations::default()),
        }
    }

    /// Applies `change` to the record as stored and writes it back; when another replica wrote
    /// first, reads again and reapplies. `change` decides from the record it is given, so its
    /// answer (`Ok` or its own error) is the one that was written.
    pub async fn update<T, E>(
        &self,
        mut change: impl FnMut(&mut Reservations) -> Result<T, E>,
    ) -> Result<Result<T, E>, RecordError> {
        for _ in 0..MAX_ATTEMPTS {
            let stored = self.api.get_opt(RESERVATIONS_CONFIGMAP).await?;
            let mut record = match stored.as_ref().and_then(record_text) {
                Some(text) => serde_json::from_str(text).map_err(RecordError::Corrupt)?,
                None => Reservations::default(),
            };
            let before = record.clone();
            let answer = change(&mut record);
            if record == before {
                *self.last.lock().expect("record lock") = record;
                return Ok(answer);
            }
            let written = match stored {
                Some(mut object) => {
                    // The resourceVersion read above rides along: a write since fails with 409.
                    object.data = Some(record_data(&record));
                    self.api
                        .replace(RESERVATIONS_CONFIGMAP, &PostParams::default(), &object)
                        .await
                }
                None => {
                    let object = ConfigMap {
                        metadata: ObjectMeta {
                            name: Some(RESERVATIONS_CONFIGMAP.into()),
                            labels: Some(BTreeMap::from([(
                                "app.kubernetes.io/managed-by".to_string(),
                                "gpubridge".to_string(),
                            )])),
                            ..Default::default()
                        },
                        data: Some(record_data(&record)),
                        ..Default::default()
                    };
                    self.api.create(&PostParams::default(), &object).await
                }
            };
            match written {
                Ok(_) => {
                    *self.last.lock().expect("record lock") = record;
                    return Ok(answer);
                }
                Err(e) if is_conflict(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(RecordError::Contended)
    }

    /// Drops `lease`'s reservation: it was not created after all, or it is going.
    pub async fn release(&self, lease: &str) -> Result<(), RecordError> {
        self.update(|record| {
            record.release(lease);
            Ok::<(), std::convert::Infallible>(())
        })
        .await
        .map(|_| ())
    }

    /// What the record last seen reserves for `offer` and the inventory at hand does not count.
    pub fn pending_for(&self, offer: &str, counted: impl Fn(&str) -> bool) -> Vec<NodeBlock> {
        self.last
            .lock()
            .expect("record lock")
            .pending_for(offer, counted)
    }
}

fn record_text(object: &ConfigMap) -> Option<&str> {
    object.data.as_ref()?.get(RECORD_KEY).map(String::as_str)
}

fn record_data(record: &Reservations) -> BTreeMap<String, String> {
    BTreeMap::from([(
        RECORD_KEY.to_string(),
        serde_json::to_string(record).expect("the record serializes"),
    )])
}

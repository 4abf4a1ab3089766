//! Errors of the reconcilers.

use std::time::Duration;

/// Why a reconcile did not finish. Transient errors back off per object; `Waiting` is not a
/// failure, only a step that cannot finish yet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("the {what} was changed by someone else while it was being updated; retries exhausted")]
    Conflict { what: &'static str },
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("waiting: {reason}")]
    Waiting {
        reason: String,
        retry_after: Duration,
    },
    #[error("object has no {0}")]
    MissingField(&'static str),
    #[error("reservation record: {0}")]
    Reservations(#[from] crate::operator::reservations::RecordError),
}

impl Error {
    /// Every value of `metric_label` that is counted as a failure (waits are not).
    pub const FAILURE_LABELS: [&'static str; 5] = [
        "kube",
        "conflict",
        "finalizer",
        "invalid_object",
        "reservations",
    ];

    /// Short bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Conflict { .. } => "conflict",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.metric_label(),
                _ => "finalizer",
            },
            Error::Waiting { .. } => "waiting",
            Error::MissingField(_) => "invalid_object",
            Error::Reservations(_) => "reservations",
        }
    }

    /// For a step that cannot finish yet: when to look again.
    pub fn waiting_for(&self) -> Option<Duration> {
        match self {
            Error::Waiting { retry_after, .. } => Some(*retry_after),
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.waiting_for(),
                _ => None,
            },
            _ => None,
        }
    }
}

/// True when the API refused a write because the object changed since it was read.
pub fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409)
}

/// True when the API says the object does not exist.
pub fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

//! Why a network message was refused: one typed reason, readable by the party that sent it, and
//! its gRPC status.

use tonic::{Code, Status};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A field is malformed or out of range.
    #[error("{field}: {rule}")]
    Invalid { field: String, rule: String },
    /// The signature or key does not verify.
    #[error("{0}")]
    Unauthenticated(String),
    /// The signer may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    NotFound(String),
    /// A replayed nonce or a duplicate object.
    #[error("{0}")]
    Duplicate(String),
    /// Stale, expired, unfunded, or in the wrong state.
    #[error("{0}")]
    Precondition(String),
    /// Larger than the protocol allows.
    #[error("{0}")]
    TooLarge(String),
    /// Not now: the same request, made afresh, may pass.
    #[error("{0}")]
    Unavailable(String),
}

impl Rejection {
    pub fn invalid(field: &str, rule: &str) -> Rejection {
        Rejection::Invalid {
            field: field.to_string(),
            rule: rule.to_string(),
        }
    }

    /// The same refusal of a part of something larger, at `place` (for example
    /// `transactions[3]`): its field or message prefixed with it.
    pub fn within(self, place: &str) -> Rejection {
        let at = |message: String| format!("{place}: {message}");
        match self {
            Rejection::Invalid { field, rule } => Rejection::Invalid {
                field: format!("{place}.{field}"),
                rule,
            },
            Rejection::Unauthenticated(m) => Rejection::Unauthenticated(at(m)),
            Rejection::PermissionDenied(m) => Rejection::PermissionDenied(at(m)),
            Rejection::NotFound(m) => Rejection::NotFound(at(m)),
            Rejection::Duplicate(m) => Rejection::Duplicate(at(m)),
            Rejection::Precondition(m) => Rejection::Precondition(at(m)),
            Rejection::TooLarge(m) => Rejection::TooLarge(at(m)),
            Rejection::Unavailable(m) => Rejection::Unavailable(at(m)),
        }
    }

    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::Invalid { .. } => "invalid",
            Rejection::Unauthenticated(_) => "unauthenticated",
            Rejection::PermissionDenied(_) => "permission_denied",
            Rejection::NotFound(_) => "not_found",
            Rejection::Duplicate(_) => "duplicate",
            Rejection::Precondition(_) => "precondition",
            Rejection::TooLarge(_) => "too_large",
            Rejection::Unavailable(_) => "unavailable",
        }
    }

    /// The gRPC status code a refusal is answered with.
    pub fn code(&self) -> Code {
        match self {
            Rejection::Invalid { .. } => Code::InvalidArgument,
            Rejection::Unauthenticated(_) => Code::Unauthenticated,
            Rejection::PermissionDenied(_) => Code::PermissionDenied,
            Rejection::NotFound(_) => Code::NotFound,
            Rejection::Duplicate(_) => Code::AlreadyExists,
            Rejection::Precondition(_) => Code::FailedPrecondition,
            Rejection::TooLarge(_) => Code::ResourceExhausted,
            Rejection::Unavailable(_) => Code::Unavailable,
        }
    }
}

impl From<Rejection> for Status {
    fn from(rejection: Rejection) -> Status {
        Status::new(rejection.code(), rejection.to_string())
    }
}

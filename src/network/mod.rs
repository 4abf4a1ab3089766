//! The network side of the operator and the protocol both ends speak (DESIGN §5–§6): the
//! generated gateway types, signed envelopes, amounts, the gateway client, and the operator's
//! outbound session with its lease intake.

pub mod amount;
pub mod client;
pub mod decoders;
pub mod envelope;
pub mod intake;
pub mod publication;
pub mod rejection;
pub mod session;
pub mod validate;

/// Generated from `proto/gpubridge/network/v1/network.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("gpubridge.network.v1");
}

pub use envelope::{Opened, domain, open, seal};
pub use rejection::Rejection;

/// The protocol version string of `InfoReply.protocol`.
pub const PROTOCOL: &str = "gpubridge.network.v1";

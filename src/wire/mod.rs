//! The protocol both ends speak (DESIGN §1, the bottom layer): the generated gateway and
//! collector types, signed envelopes, amounts, field rules, rejections, message-size limits, and
//! the gateway client the operator and the buyer share.

pub mod amount;
pub mod client;
pub mod envelope;
pub mod rejection;
pub mod validate;

/// Generated from `proto/gpubridge/network/v1/network.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("gpubridge.network.v1");
}

pub use envelope::{Opened, Signable, open, seal};
pub use rejection::Rejection;

/// The protocol version string of `InfoReply.protocol`.
pub const PROTOCOL: &str = "gpubridge.network.v1";

/// Largest gRPC message either end decodes; signed bodies are capped lower (64 KiB,
/// 192 KiB for batches of receipts and evidence).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

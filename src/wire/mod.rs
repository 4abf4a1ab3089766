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

/// HTTP/2 flow-control windows of the network's connections. Many streams share one connection
/// (every relayed TCP connection of a provider is a stream on its connection to the gateway),
/// and data a stalled stream's reader has not taken counts against the connection's window
/// too: with the connection's window 64 times a stream's, 64 stalled streams still leave the
/// others room, so one slow reader never blocks the rest.
pub const STREAM_WINDOW_BYTES: u32 = 512 * 1024;
pub const CONNECTION_WINDOW_BYTES: u32 = 64 * STREAM_WINDOW_BYTES;

/// A gRPC server with the network's flow-control windows, which pings idle connections so that
/// a provider's stream on a connection that died unannounced is dropped within half a minute.
pub fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
}

/// Largest piece of data one relay chunk carries (relay.proto), either way.
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;

/// Largest gRPC message either end decodes; signed bodies are capped lower (64 KiB,
/// 192 KiB for batches of receipts and evidence).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

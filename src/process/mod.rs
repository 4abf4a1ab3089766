//! What every long-running process shares, and decides nothing: its tokio runtime, signal
//! handling, logging, and the `/metrics`, `/livez`, `/readyz` endpoint.

pub mod http;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;

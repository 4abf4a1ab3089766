//! `gpubridge-sidecar`: the processes of a lease pod beside the buyer's workload (DESIGN §5).
//!
//! - `meter`: samples the lease's GPUs and delivers signed receipts, kept in `receipt_log` until
//!   the collector acknowledges them;
//! - `attest`: answers the network's challenges with signed evidence;
//! - `probe`: runs the network's GPU probe once, before the workload;
//! - `client`: their connection to the operator's collector;
//! - `gpu`: where they read GPUs (NVML loaded at run time, or the simulation).

pub mod attest;
pub mod client;
pub mod cuda;
pub mod gpu;
pub mod meter;
mod nvml;
pub mod probe;
pub mod receipt_log;

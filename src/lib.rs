//! gpubridge: puts a Kubernetes cluster's idle GPUs on a decentralized compute network and runs
//! the network's leases on them, boxed, metered and attested.
//!
//! Decisions live in pure modules (`capacity`, `admission`, `lifecycle`, `workload`,
//! `identity`); `controller` only reads state, calls them and writes the results.

pub mod admission;
pub mod attestation;
pub mod capacity;
pub mod cli;
pub mod collector;
pub mod controller;
pub mod crd;
pub mod gpu;
pub mod http;
pub mod hub;
pub mod identity;
pub mod lifecycle;
pub mod metering;
pub mod metrics;
pub mod network;
pub mod operator;
pub mod runtime;
pub mod shutdown;
pub mod telemetry;
pub mod workload;

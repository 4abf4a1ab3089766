//! gpubridge: puts a Kubernetes cluster's idle GPUs on a decentralized compute network and runs
//! the network's leases on them, boxed, metered and attested.
//!
//! The modules are layers (DESIGN §1); each uses only those below it, and
//! `tests/layering.rs` fails on an import that runs up:
//! 1. `wire` (with `identity` beneath it): the protocol both ends speak;
//! 2. the pure cores: `crd`, `access`, `commitment`, `gpu`, `capacity`, `probe`, `admission`,
//!    `workload`, `lifecycle`, `metering`, `attestation`; then `process`, what every process
//!    shares;
//! 3. the process roles, which never import one another: `operator`, `node`, `sidecar`,
//!    `deviceplugin`;
//!    above them `cli`, whose commands only parse arguments and call a role.

pub mod access;
pub mod admission;
pub mod attestation;
pub mod capacity;
pub mod cli;
pub mod commitment;
pub mod crd;
#[cfg(any(test, feature = "fuzzing"))]
pub mod decoders;
pub mod deviceplugin;
pub mod gpu;
pub mod identity;
pub mod lifecycle;
pub mod metering;
pub mod node;
pub mod operator;
pub mod probe;
pub mod process;
pub mod sidecar;
pub mod wire;
pub mod workload;

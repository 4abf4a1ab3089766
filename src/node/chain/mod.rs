//! The consensus driver of the network's state machine (DESIGN §6): each validator runs this
//! application beside a CometBFT node, which orders the transactions into blocks, so no single
//! party decides what the network does.
//!
//! `codec` is the chain's encodings (pure); `app` what each consensus request does to the state
//! and its store; `abci` the socket server CometBFT connects to; `broadcast` how a validator's
//! gateway sends requests to its CometBFT node and answers them once committed, and proves the
//! leases it delivers (`crate::commitment`).

pub mod abci;
pub mod app;
pub mod broadcast;
pub mod codec;

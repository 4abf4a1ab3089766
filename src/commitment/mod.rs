//! What the network's validators committed to, checked without trusting the node that relays it
//! (DESIGN §4 step 2, §6), pure: `results` is what a header commits to about the transaction
//! results of the block before it; `header` is the light-client check that the validators pinned
//! at install signed a header; `lease` puts the two together for a lease a provider receives;
//! `merkle` is CometBFT's tree, which the GPU challenge's row commitments use too.
//! Validators build the proofs with it, providers check them with it.

pub mod header;
pub mod lease;
pub mod merkle;
pub mod results;

pub use header::{HeaderError, PinnedNetwork};
pub use lease::{LeaseProofError, verify_committed_lease};
pub use results::{ResultProof, TxResult};

#[cfg(test)]
pub mod testchain;

//! Idle capacity (DESIGN §2): the one formula everything rests on. Pure: no client, no clock.
//!
//! - [`facts`] reduces API objects to what the formula needs as they arrive from watches;
//! - [`dra`] does the same for Dynamic Resource Allocation's ResourceSlices and ResourceClaims;
//! - [`inventory::Inventory`] indexes them incrementally;
//! - [`offer::compute`] applies the formula to one offer.

pub mod blocks;
pub mod dra;
pub mod facts;
pub mod inventory;
pub mod offer;
pub mod quantity;
pub mod requests;

pub use facts::{LeaseFacts, NodeFacts, OfferFacts, PodFacts, tolerates};
pub use inventory::Inventory;
pub use offer::{OfferCapacity, compute, eligible_nodes, static_exclusion};

#[cfg(test)]
mod tests;

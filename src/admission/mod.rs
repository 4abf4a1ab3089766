//! Whether a lease may run under an offer: its terms against the offer's, and the capacity
//! intake has already promised. Pure.
//!
//! Intake checks these before it accepts a lease from the network; the lease controller checks
//! them again before it creates anything, so that a ComputeLease written by hand or by a
//! compromised intake cannot escape its offer's terms.

mod gate;
mod reservation;
mod terms;

pub use gate::{BOX_PERMISSIONS, BoxGate, permission_name};
pub use reservation::{NodeBlock, Reservations, Shortfall, free_after};
pub use terms::{TermsViolation, check_terms, image_registry_allowed};

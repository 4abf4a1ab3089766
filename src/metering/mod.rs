//! Metering (DESIGN §4): receipts — how a meter builds them and how the collector and the
//! network verify them — and the meter sidecar that samples GPUs and delivers receipts.

pub mod access;
pub mod chain;
pub mod window;

pub use chain::{
    AccessTotals, ChainHead, LeaseTerms, ReceiptRejection, Step, Totals, WindowReport, check_next,
    digest, metering_start, metering_until, seal_receipt,
};

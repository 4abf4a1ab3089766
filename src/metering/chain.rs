//! The receipt chain: building the next receipt, and verifying one against the chain's head.
//! Pure, shared by the meter, the operator's collector and the network node, so all three
//! agree on what a valid receipt is.

use ed25519_dalek::{SigningKey, VerifyingKey};
use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::identity;
use crate::metering::access;
use crate::wire::envelope::{Signable, sign_body};
use crate::wire::proto::{AccessUsage, Attribution, GpuUsage, Receipt, Signed};

/// `previous_hash` of the first receipt.
pub const GENESIS_HASH: [u8; 32] = [0; 32];
/// Most receipts in one submission.
pub const MAX_RECEIPTS_PER_BATCH: usize = 256;
/// Most GPUs one receipt reports, and the longest GPU UUID.
const MAX_GPUS_PER_RECEIPT: usize = 64;
const MAX_UUID_CHARS: usize = 128;
/// How far in the future a window may end, for clock skew between node and verifier.
const CLOCK_SKEW_MS: i64 = 60_000;

/// SHA-256 of a receipt's body bytes: what the next receipt's `previous_hash` carries.
pub fn digest(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// Where a lease's chain stands after its last accepted receipt.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// 0 before the first receipt.
    pub sequence: u64,
    /// Hash of the last receipt's body; empty before the first.
    pub hash: Vec<u8>,
    pub window_end_ms: Option<i64>,
    pub final_received: bool,
}

impl ChainHead {
    fn expected_previous_hash(&self) -> &[u8] {
        if self.sequence == 0 {
            &GENESIS_HASH
        } else {
            &self.hash
        }
    }

    /// The head after `receipt`, whose body hashes to `hash`.
    pub fn advance(&self, receipt: &Receipt, hash: [u8; 32]) -> ChainHead {
        ChainHead {
            sequence: receipt.sequence,
            hash: hash.to_vec(),
            window_end_ms: Some(receipt.window_end_ms),
            final_received: receipt.r#final,
        }
    }
}

/// Running totals over a lease's accepted receipts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub allocated_gpu_millis: u64,
    pub energy_millijoules: u64,
    /// Σ mean utilization × allocated GPU-milliseconds, over receipts that measured it.
    pub utilization_weighted: u128,
    /// Σ allocated GPU-milliseconds of the receipts that measured utilization.
    pub utilization_weight: u128,
    /// Buyer access over the receipts.
    #[serde(default)]
    pub access: AccessTotals,
}

/// [`AccessUsage`] summed over receipts, in the form the network's state keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTotals {
    pub bytes_to_workload: u64,
    pub bytes_from_workload: u64,
    pub connections: u64,
    pub log_streams: u64,
}

impl From<AccessTotals> for AccessUsage {
    fn from(t: AccessTotals) -> AccessUsage {
        AccessUsage {
            bytes_to_workload: t.bytes_to_workload,
            bytes_from_workload: t.bytes_from_workload,
            connections: t.connections,
            log_streams: t.log_streams,
        }
    }
}

impl From<AccessUsage> for AccessTotals {
    fn from(u: AccessUsage) -> AccessTotals {
        AccessTotals {
            bytes_to_workload: u.bytes_to_workload,
            bytes_from_workload: u.bytes_from_workload,
            connections: u.connections,
            log_streams: u.log_streams,
        }
    }
}

impl Totals {
    pub fn add(&mut self, receipt: &Receipt) {
        self.allocated_gpu_millis = self
            .allocated_gpu_millis
            .saturating_add(receipt.allocated_gpu_millis);
        let energy: u64 = receipt.gpus.iter().map(|g| g.energy_millijoules).sum();
        self.energy_millijoules = self.energy_millijoules.saturating_add(energy);
        if !receipt.gpus.is_empty() {
            let mean = receipt
                .gpus
                .iter()
                .map(|g| u128::from(g.utilization_percent))
                .sum::<u128>()
                / receipt.gpus.len() as u128;
            self.utilization_weighted += mean * u128::from(receipt.allocated_gpu_millis);
            self.utilization_weight += u128::from(receipt.allocated_gpu_millis);
        }
        if let Some(access) = &receipt.access {
            self.access = access::add(&self.access.into(), access).into();
        }
    }

    /// Mean utilization, weighted by allocated time; 0 when nothing measured it.
    pub fn utilization_percent(&self) -> u32 {
        self.utilization_weighted
            .checked_div(self.utilization_weight)
            .map_or(0, |u| u as u32)
    }
}

/// What a verifier knows of the lease a receipt claims to be for.
#[derive(Clone, Debug)]
pub struct LeaseTerms {
    pub lease_id: String,
    pub gpus: u32,
    /// The lease key, from the provider's certificate.
    pub lease_key: VerifyingKey,
    /// No window may start before this, Unix milliseconds ([`metering_start`]); none: the
    /// lease has not passed its challenge, and no window is metered.
    pub metering_from_ms: Option<i64>,
    /// No window may end after this, Unix milliseconds ([`metering_until`]); none: no re-probe
    /// bounds the lease.
    pub metering_until_ms: Option<i64>,
}

/// When a lease's metering may begin (DESIGN §8), Unix milliseconds: the first moment the
/// network recorded the lease's probe passed or its hardware evidence verified (Unix seconds),
/// whichever came first; none before either. The collector and the network both bound receipts
/// by it, so a provider cannot bill the time before its GPUs proved themselves.
pub fn metering_start(
    probe_passed_at: Option<i64>,
    hardware_attested_since: Option<i64>,
) -> Option<i64> {
    [probe_passed_at, hardware_attested_since]
        .into_iter()
        .flatten()
        .min()
        .map(|seconds| seconds.saturating_mul(1000))
}

/// How far a lease's metering may run, Unix milliseconds, when it is probed again every
/// `reprobe_seconds` (DESIGN §8): its last pass vouches for the interval to the next re-probe and
/// the time that re-probe has to commit and answer (`answer_seconds` each). Later windows wait
/// for the next pass; a lease whose re-probe lapsed ends, and they are never paid.
pub fn metering_until(
    last_passed_at: Option<i64>,
    reprobe_seconds: u32,
    answer_seconds: u32,
) -> Option<i64> {
    let vouched = i64::from(reprobe_seconds) + 2 * i64::from(answer_seconds);
    last_passed_at
        .filter(|_| reprobe_seconds > 0)
        .map(|at| at.saturating_add(vouched).saturating_mul(1000))
}

/// Why a receipt was refused. `kind` is a stable word for metrics and conditions.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptRejection {
    #[error("receipt is malformed: {0}")]
    Malformed(String),
    #[error("receipt signature does not verify against the lease key")]
    BadSignature,
    #[error("receipt is for lease {found}, not {expected}")]
    WrongLease { expected: String, found: String },
    #[error("receipt {found} follows {head}: sequences must have no gaps")]
    Gap { head: u64, found: u64 },
    #[error("receipt {sequence} does not carry the hash of receipt {previous}")]
    BrokenChain { sequence: u64, previous: u64 },
    #[error("receipt {sequence} differs from the receipt {sequence} accepted before")]
    Fork { sequence: u64 },
    #[error("receipt {sequence}: {rule}")]
    BadWindow { sequence: u64, rule: String },
    #[error("receipt {sequence} follows the final receipt")]
    AfterFinal { sequence: u64 },
    #[error("receipt {sequence}: the lease is {state} and takes no more receipts")]
    LeaseClosed { sequence: u64, state: String },
    #[error(
        "receipt {sequence}: the lease has not passed its challenge; nothing is metered before it does"
    )]
    Unverified { sequence: u64 },
    #[error(
        "receipt {sequence}: the window ends past {until_ms}, as far as the lease's last passed probe vouches for; it is taken once the next re-probe passes"
    )]
    Unproven { sequence: u64, until_ms: i64 },
}

impl ReceiptRejection {
    pub fn kind(&self) -> &'static str {
        match self {
            ReceiptRejection::Malformed(_) => "Malformed",
            ReceiptRejection::BadSignature => "BadSignature",
            ReceiptRejection::WrongLease { .. } => "WrongLease",
            ReceiptRejection::Gap { .. } => "Gap",
            ReceiptRejection::BrokenChain { .. } => "BrokenChain",
            ReceiptRejection::Fork { .. } => "Fork",
            ReceiptRejection::BadWindow { .. } => "BadWindow",
            ReceiptRejection::AfterFinal { .. } => "AfterFinal",
            ReceiptRejection::LeaseClosed { .. } => "LeaseClosed",
            ReceiptRejection::Unverified { .. } => "Unverified",
            ReceiptRejection::Unproven { .. } => "Unproven",
        }
    }

    /// The refused receipt's sequence; 0 when it could not be read.
    pub fn sequence(&self) -> u64 {
        match self {
            ReceiptRejection::Gap { found, .. } => *found,
            ReceiptRejection::BrokenChain { sequence, .. }
            | ReceiptRejection::Fork { sequence }
            | ReceiptRejection::BadWindow { sequence, .. }
            | ReceiptRejection::AfterFinal { sequence }
            | ReceiptRejection::LeaseClosed { sequence, .. }
            | ReceiptRejection::Unverified { sequence }
            | ReceiptRejection::Unproven { sequence, .. } => *sequence,
            _ => 0,
        }
    }
}

/// The verdict on one receipt that verified.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// The next link of the chain.
    Next { receipt: Receipt, hash: [u8; 32] },
    /// A receipt at or below the head: already accepted if its hash is the one stored for its
    /// sequence (the verifier checks, as only it keeps past hashes), a fork otherwise.
    Earlier { sequence: u64, hash: [u8; 32] },
}

fn bad_window(sequence: u64, rule: impl Into<String>) -> ReceiptRejection {
    ReceiptRejection::BadWindow {
        sequence,
        rule: rule.into(),
    }
}

/// Verifies `signed` as the receipt after `head`: signature first, then every rule of the chain.
pub fn check_next(
    terms: &LeaseTerms,
    head: &ChainHead,
    signed: &Signed,
    now_ms: i64,
) -> Result<Step, ReceiptRejection> {
    if signed.body.len() > Receipt::MAX_BYTES {
        return Err(ReceiptRejection::Malformed(format!(
            "body is {} bytes, over the limit of {}",
            signed.body.len(),
            Receipt::MAX_BYTES
        )));
    }
    identity::verify(
        &terms.lease_key,
        Receipt::DOMAIN,
        &signed.body,
        &signed.signature,
    )
    .map_err(|_| ReceiptRejection::BadSignature)?;
    let receipt = Receipt::decode(signed.body.as_slice())
        .map_err(|e| ReceiptRejection::Malformed(format!("body: {e}")))?;
    if receipt.lease_id != terms.lease_id {
        return Err(ReceiptRejection::WrongLease {
            expected: terms.lease_id.clone(),
            found: receipt.lease_id,
        });
    }
    let hash = digest(&signed.body);
    let sequence = receipt.sequence;
    if sequence == 0 {
        return Err(ReceiptRejection::Malformed(
            "sequence: must start at 1".into(),
        ));
    }
    if sequence <= head.sequence {
        return Ok(Step::Earlier { sequence, hash });
    }
    if head.final_received {
        return Err(ReceiptRejection::AfterFinal { sequence });
    }
    if sequence != head.sequence + 1 {
        return Err(ReceiptRejection::Gap {
            head: head.sequence,
            found: sequence,
        });
    }
    if receipt.previous_hash != head.expected_previous_hash() {
        return Err(ReceiptRejection::BrokenChain {
            sequence,
            previous: head.sequence,
        });
    }
    check_window(terms, head, &receipt, now_ms)?;
    check_figures(terms, &receipt)?;
    Ok(Step::Next { receipt, hash })
}

fn check_window(
    terms: &LeaseTerms,
    head: &ChainHead,
    receipt: &Receipt,
    now_ms: i64,
) -> Result<(), ReceiptRejection> {
    let sequence = receipt.sequence;
    let (start, end) = (receipt.window_start_ms, receipt.window_end_ms);
    match head.window_end_ms {
        Some(previous_end) if start != previous_end => {
            return Err(bad_window(
                sequence,
                format!(
                    "window must start where receipt {} ended ({previous_end})",
                    head.sequence
                ),
            ));
        }
        None => match terms.metering_from_ms {
            None => return Err(ReceiptRejection::Unverified { sequence }),
            Some(from) if start < from => {
                return Err(bad_window(
                    sequence,
                    format!("window must not start before the lease passed its challenge ({from})"),
                ));
            }
            Some(_) => {}
        },
        _ => {}
    }
    if end <= start {
        return Err(bad_window(sequence, "window must end after it starts"));
    }
    if end > now_ms + CLOCK_SKEW_MS {
        return Err(bad_window(sequence, "window must not end in the future"));
    }
    if let Some(until_ms) = terms.metering_until_ms.filter(|until| end > *until) {
        return Err(ReceiptRejection::Unproven { sequence, until_ms });
    }
    let expected = u64::from(terms.gpus).checked_mul((end - start) as u64);
    if expected != Some(receipt.allocated_gpu_millis) {
        return Err(bad_window(
            sequence,
            format!(
                "allocatedGpuMillis must be the lease's {} GPUs × the window's {} ms",
                terms.gpus,
                end - start
            ),
        ));
    }
    Ok(())
}

fn check_figures(terms: &LeaseTerms, receipt: &Receipt) -> Result<(), ReceiptRejection> {
    let malformed = |rule: String| Err(ReceiptRejection::Malformed(rule));
    let attribution = Attribution::try_from(receipt.attribution).unwrap_or_default();
    if attribution == Attribution::Unspecified {
        return malformed("attribution: must be measured, modelled or allocation-only".into());
    }
    if receipt.gpus.len() > MAX_GPUS_PER_RECEIPT {
        return malformed(format!("gpus: at most {MAX_GPUS_PER_RECEIPT} entries"));
    }
    if (attribution == Attribution::AllocationOnly) != receipt.gpus.is_empty() {
        return malformed(
            "gpus: present exactly when the attribution is not allocation-only".into(),
        );
    }
    if attribution == Attribution::Measured && receipt.gpus.len() != terms.gpus as usize {
        return malformed(format!(
            "gpus: a measured receipt reports each of the lease's {} GPUs",
            terms.gpus
        ));
    }
    for (i, gpu) in receipt.gpus.iter().enumerate() {
        if gpu.uuid.is_empty() || gpu.uuid.chars().count() > MAX_UUID_CHARS {
            return malformed(format!("gpus[{i}].uuid: 1 to {MAX_UUID_CHARS} characters"));
        }
        if gpu.utilization_percent > 100 {
            return malformed(format!("gpus[{i}].utilizationPercent: at most 100"));
        }
    }
    Ok(())
}

/// What a meter closes a window with.
#[derive(Clone, Debug, Default)]
pub struct WindowReport {
    pub window_end_ms: i64,
    pub gpus: Vec<GpuUsage>,
    pub attribution: Attribution,
    /// Buyer access the window added; none when it added nothing.
    pub access: Option<AccessUsage>,
    pub r#final: bool,
}

/// The receipt after `head`, for the window from the head's end (or `first_start_ms`) to the
/// report's end, signed with the lease key.
pub fn seal_receipt(
    key: &SigningKey,
    lease_id: &str,
    gpus: u32,
    head: &ChainHead,
    first_start_ms: i64,
    report: WindowReport,
) -> (Signed, ChainHead) {
    let window_start_ms = head.window_end_ms.unwrap_or(first_start_ms);
    let window_end_ms = report.window_end_ms;
    let receipt = Receipt {
        lease_id: lease_id.to_string(),
        sequence: head.sequence + 1,
        previous_hash: head.expected_previous_hash().to_vec(),
        window_start_ms,
        window_end_ms,
        allocated_gpu_millis: u64::from(gpus) * (window_end_ms - window_start_ms).max(0) as u64,
        gpus: report.gpus,
        attribution: report.attribution as i32,
        r#final: report.r#final,
        access: report.access,
    };
    let signed = sign_body(key, &receipt);
    let next = head.advance(&receipt, digest(&signed.body));
    (signed, next)
}

#[cfg(test)]
mod tests;

//! A lease's GPU probe as the network runs it (DESIGN §8): issued at acceptance with the
//! rules in force, committed, checked with a nonce the commitment's block drew, then passed or
//! failed. A failed probe is evidence: the lease ends as the provider's fault, the buyer gets
//! back what was not charged and the provider is slashed to the buyer.
//!
//! A lease of an offer that promises re-probes ([`REPROBED`], which the operator publishes for
//! DRA devices, whose one claim the sidecars share) is probed again every governed
//! `reprobe-seconds` after its last pass, in the room its workload leaves
//! (`reprobe-memory-mib`); its metering runs no further than the last pass vouches for
//! ([`crate::metering::metering_until`]). A re-probe not committed and answered in time ends the
//! lease with no one's fault: the workload may have taken the memory, or the provider may have
//! stopped it, and the network cannot tell which, so nobody is slashed, and the windows the last
//! pass did not vouch for are never paid.
//!
//! [`REPROBED`]: crate::wire::validate::REPROBED

use sha2::{Digest, Sha256};

use super::params::Params;
use crate::attestation::TrustTier;
use crate::commitment::merkle::Hash;
use crate::identity::public_key_base58;
use crate::node::records::{LeaseRecord, ProbeRecord};
use crate::node::transitions;
use crate::probe::Spec;
use crate::probe::challenge::{ProbeRefusal, Rules, check_band, check_gpu, checks_nonce};
use crate::probe::wire::{from_wire, issued};
use crate::wire::envelope::open;
use crate::wire::proto::{ProbeAnswers, ProbeBody, ProbeCommit, ProbeReply, Signed, probe_step};
use crate::wire::{Opened, Rejection, validate};

use super::{Block, PROVIDERS, Result, State, StateError};

/// The probe every accepted lease runs, under the rules in force at `block`.
pub(super) fn issue(
    rules: &Rules,
    lease: &LeaseRecord,
    nonce: Vec<u8>,
    block: &Block,
) -> ProbeRecord {
    issue_spec(rules, rules.spec(&lease.model), lease, nonce, block)
}

/// The lease's next re-probe: the probe's rules in force, in `reprobe-memory-mib` of each GPU,
/// seeded by a nonce nobody knew before `block`.
pub(super) fn issue_reprobe(params: &Params, lease: &LeaseRecord, block: &Block) -> ProbeRecord {
    let ordinal = lease.reprobes_passed() + 1;
    let mut hasher = Sha256::new();
    hasher.update(b"gpubridge/v1/reprobe-nonce\0");
    hasher.update(block.entropy);
    hasher.update(lease.lease_id.as_bytes());
    hasher.update(ordinal.to_be_bytes());
    let rules = params.probe_rules();
    let spec = rules.filling(params.reprobe_memory_mib);
    ProbeRecord {
        reprobe: ordinal,
        ..issue_spec(&rules, spec, lease, hasher.finalize().to_vec(), block)
    }
}

fn issue_spec(
    rules: &Rules,
    spec: Spec,
    lease: &LeaseRecord,
    nonce: Vec<u8>,
    block: &Block,
) -> ProbeRecord {
    ProbeRecord {
        model: lease.model.clone(),
        nonce,
        size: spec.size,
        tiles: spec.tiles,
        rounds: rules.rounds,
        rows: rules.rows,
        issued_at: block.time,
        roots: Vec::new(),
        kernel_ms: 0,
        committed_at: None,
        checks: None,
        answered: vec![false; lease.gpus as usize],
        passed_at: None,
        failed_at: None,
        detail: String::new(),
        reprobe: 0,
    }
}

/// Whether a probe is still under way: neither passed nor failed.
fn under_way(probe: &ProbeRecord) -> bool {
    probe.passed_at.is_none() && probe.failed_at.is_none()
}

/// When a running lease is due its next re-probe: its offer promised them, its last pass is
/// `reprobe_seconds` old, and no re-probe is under way.
pub(super) fn reprobe_due_at(lease: &LeaseRecord, reprobe_seconds: u32) -> Option<i64> {
    if !transitions::meters(lease.state)
        || !lease.reprobed
        || reprobe_seconds == 0
        || lease.reprobe.as_ref().is_some_and(under_way)
    {
        return None;
    }
    Some(lease.probe_proven_at? + i64::from(reprobe_seconds))
}

/// The re-probe under way of a running lease.
fn reprobe_under_way(lease: &LeaseRecord) -> Option<&ProbeRecord> {
    lease
        .reprobe
        .as_ref()
        .filter(|p| transitions::meters(lease.state) && under_way(p))
}

/// When a running lease's re-probe under way lapses: `answer_seconds` after its issue while it
/// is not committed, after its commitment while its checks are not answered.
pub(super) fn reprobe_lapses_at(lease: &LeaseRecord, answer_seconds: u32) -> Option<i64> {
    let probe = reprobe_under_way(lease)?;
    Some(probe.committed_at.unwrap_or(probe.issued_at) + i64::from(answer_seconds))
}

/// Why a running lease's re-probe lapsed at `now` ([`reprobe_lapses_at`]).
pub(super) fn reprobe_lapsed(lease: &LeaseRecord, answer_seconds: u32, now: i64) -> Option<String> {
    reprobe_lapses_at(lease, answer_seconds).filter(|&at| at <= now)?;
    let probe = reprobe_under_way(lease)?;
    Some(match probe.committed_at {
        None => format!(
            "re-probe {} issued at {} was not committed within {answer_seconds} s",
            probe.reprobe, probe.issued_at
        ),
        Some(at) => format!(
            "re-probe {}'s checks were not answered within {answer_seconds} s of its commitment at {at}",
            probe.reprobe
        ),
    })
}

/// Where a running lease's metering may run to, Unix milliseconds ([`metering_until`]): bounded
/// only for a lease that is probed again.
///
/// [`metering_until`]: crate::metering::metering_until
pub(super) fn metered_until(lease: &LeaseRecord, params: &Params) -> Option<i64> {
    if !lease.reprobed {
        return None;
    }
    crate::metering::metering_until(
        lease.probe_proven_at,
        params.reprobe_seconds,
        params.probe_answer_seconds,
    )
}

pub(super) fn probe_reply(probe: &ProbeRecord) -> ProbeReply {
    let state = if probe.failed_at.is_some() {
        "failed"
    } else if probe.passed_at.is_some() {
        "passed"
    } else if probe.committed_at.is_some() {
        "committed"
    } else {
        "issued"
    };
    ProbeReply {
        nonce: probe.nonce.clone(),
        size: probe.size,
        tiles: probe.tiles,
        gpus: probe.answered.len() as u32,
        checks: probe.checks.map(|c| c.to_vec()).unwrap_or_default(),
        rounds: probe.rounds,
        rows: probe.rows,
        state: state.into(),
        detail: probe.detail.clone(),
        passed_at: probe.passed_at.unwrap_or(0),
        answered: (0..probe.answered.len() as u32)
            .filter(|g| probe.answered[*g as usize])
            .collect(),
        reprobe: probe.reprobe,
    }
}

fn hash_of(field: &'static str, bytes: &[u8]) -> Result<Hash> {
    bytes
        .try_into()
        .map_err(|_| Rejection::invalid(field, "must be 32 bytes").into())
}

impl State {
    /// A step of a lease's probe, by its provider.
    pub(super) fn submit_probe(&mut self, signed: &Signed, block: &Block) -> Result<ProbeReply> {
        let opened: Opened<ProbeBody> = open(signed, block.time)?;
        let body = &opened.body;
        validate::object_id("probe.leaseId", &body.lease_id)?;
        let step = body
            .step
            .as_ref()
            .and_then(|s| s.kind.as_ref())
            .ok_or_else(|| Rejection::invalid("probe.step", "is required"))?;
        let provider = public_key_base58(&opened.signer);
        self.consume_nonce(&opened)?;
        let mut lease = self.owned_lease(&body.lease_id, &provider)?;
        super::metering::lease_terms(&mut lease, &body.certificate, block.time, &self.params()?)?;
        // A step is the re-probe's while one is under way, the first probe's otherwise.
        let reprobing = lease.reprobe.as_ref().is_some_and(under_way);
        let current = if reprobing {
            &lease.reprobe
        } else {
            &lease.probe
        };
        let Some(mut probe) = current.clone().filter(|_| transitions::meters(lease.state)) else {
            return Err(Rejection::Precondition(format!(
                "lease {} is {} and runs no probe",
                lease.lease_id,
                transitions::name(lease.state)
            ))
            .into());
        };
        if probe.passed_at.is_some() || probe.failed_at.is_some() {
            return Err(Rejection::Duplicate(format!(
                "lease {}'s probe is over: {}",
                lease.lease_id, probe.detail
            ))
            .into());
        }
        // The spec and rounds the probe was issued with, the bands in force.
        let (spec, mut rules) = issued(&probe_reply(&probe));
        rules.bands = self.params()?.probe_bands;
        let verdict = match step {
            probe_step::Kind::Commit(commit) => {
                self.commit(&mut probe, &lease, &rules, &spec, commit, block)?
            }
            probe_step::Kind::Answers(answers) => {
                self.answer(&mut probe, &lease, &rules, &spec, answers, block)?
            }
        };
        let reply = probe_reply(&probe);
        if reprobing {
            lease.reprobe = Some(probe);
        } else {
            lease.probe = Some(probe);
        }
        if let Err(refusal) = verdict {
            return self.fail_probe(block, lease, &refusal.to_string(), refusal.kind());
        }
        if reply.passed_at != 0 {
            lease.probe_proven_at = Some(block.time);
            let mut registered = self.registered(&provider)?;
            registered.trust_tier = lease.tier();
            self.put(PROVIDERS, &provider, &registered)?;
        }
        self.put_lease(&lease)?;
        Ok(reply)
    }

    /// Takes the commitment and draws the checks; a reported time outside the model's band
    /// fails the probe at once.
    fn commit(
        &self,
        probe: &mut ProbeRecord,
        lease: &LeaseRecord,
        rules: &Rules,
        spec: &Spec,
        commit: &ProbeCommit,
        block: &Block,
    ) -> Result<std::result::Result<(), ProbeRefusal>> {
        if probe.committed_at.is_some() {
            return Err(Rejection::Duplicate(format!(
                "lease {}'s probe is already committed",
                lease.lease_id
            ))
            .into());
        }
        if commit.roots.len() != lease.gpus as usize {
            return Err(Rejection::invalid(
                "probe.commit.roots",
                &format!(
                    "must hold one root for each of the lease's {} GPUs",
                    lease.gpus
                ),
            )
            .into());
        }
        if commit.kernel_ms == 0 {
            return Err(Rejection::invalid("probe.commit.kernelMs", "must be positive").into());
        }
        let roots = commit
            .roots
            .iter()
            .map(|r| hash_of("probe.commit.roots", r))
            .collect::<Result<Vec<Hash>>>()?;
        probe.checks = Some(checks_nonce(&block.entropy, &lease.lease_id, &roots));
        probe.roots = roots;
        probe.kernel_ms = commit.kernel_ms;
        probe.committed_at = Some(block.time);
        if probe.reprobe > 0 {
            probe.detail = format!(
                "re-probe {}: {} tiles of {}² a GPU verified beside the workload, whose load leaves its speed uncompared",
                probe.reprobe, spec.tiles, spec.size
            );
            return Ok(Ok(()));
        }
        Ok(
            check_band(rules, &probe.model, spec, commit.kernel_ms).map(|detail| {
                probe.detail = detail;
            }),
        )
    }

    /// Checks one GPU's answers; the last GPU's verified passes the probe.
    fn answer(
        &self,
        probe: &mut ProbeRecord,
        lease: &LeaseRecord,
        rules: &Rules,
        spec: &Spec,
        wire: &ProbeAnswers,
        block: &Block,
    ) -> Result<std::result::Result<(), ProbeRefusal>> {
        let Some(checks) = probe.checks else {
            return Err(Rejection::Precondition(format!(
                "lease {}'s probe is not committed: commit the roots first",
                lease.lease_id
            ))
            .into());
        };
        let gpu = wire.gpu;
        match probe.answered.get(gpu as usize) {
            None => {
                return Err(Rejection::invalid(
                    "probe.answers.gpu",
                    &format!("the lease has GPUs 0 to {}", lease.gpus.saturating_sub(1)),
                )
                .into());
            }
            Some(true) => {
                return Err(Rejection::Duplicate(format!(
                    "GPU {gpu} of lease {} already answered",
                    lease.lease_id
                ))
                .into());
            }
            Some(false) => {}
        }
        let answers = from_wire(wire)?;
        let root = probe.roots[gpu as usize];
        if let Err(refusal) = check_gpu(rules, spec, &probe.nonce, &checks, gpu, &root, &answers) {
            return Ok(Err(refusal));
        }
        probe.answered[gpu as usize] = true;
        if probe.answered.iter().all(|a| *a) {
            probe.passed_at = Some(block.time);
            probe.detail = format!(
                "passed at {}: {}; {} GPU(s), {} rounds of {} rows each",
                block.time,
                probe.detail,
                probe.answered.len(),
                probe.rounds,
                probe.rows
            );
        }
        Ok(Ok(()))
    }

    /// Records the failure of the probe under way (the re-probe's, when one is), ends the
    /// lease as the provider's fault and slashes it to the buyer.
    fn fail_probe(
        &mut self,
        block: &Block,
        mut lease: LeaseRecord,
        why: &str,
        kind: &str,
    ) -> Result<ProbeReply> {
        let probe = match lease.reprobe.as_mut().filter(|p| under_way(p)) {
            Some(reprobe) => reprobe,
            None => lease.probe.as_mut().ok_or_else(|| {
                StateError::Inconsistent("a failed probe that was never issued".into())
            })?,
        };
        probe.failed_at = Some(block.time);
        probe.detail = format!("{kind}: {why}");
        let reply = probe_reply(probe);
        let evidence = match reply.reprobe {
            0 => format!("GPU probe failed: {}", reply.detail),
            n => format!("GPU re-probe {n} failed: {}", reply.detail),
        };
        self.put_lease(&lease)?;
        let mut registered = self.registered(&lease.provider)?;
        registered.trust_tier = TrustTier::SelfReported;
        self.put(PROVIDERS, &lease.provider, &registered)?;
        self.end_by_network(block, lease, "ChallengeFailed", evidence, Some("challenge"))?;
        Ok(reply)
    }

    /// Ends a running lease whose re-probe lapsed (`why`, from [`reprobe_lapsed`]): what its
    /// receipts charged stands, the rest goes back to the buyer, and nobody is slashed.
    pub(super) fn end_unproven(
        &mut self,
        block: &Block,
        mut lease: LeaseRecord,
        why: String,
    ) -> Result<()> {
        if let Some(reprobe) = lease.reprobe.as_mut() {
            reprobe.failed_at = Some(block.time);
            reprobe.detail = format!("Unanswered: {why}");
        }
        self.end_by_network(block, lease, "ReprobeLapsed", why, None)
    }

    /// Fails a probe committed but not answered in time (the upkeep's, see [`unanswered`]).
    pub(super) fn fail_unanswered(
        &mut self,
        block: &Block,
        lease: LeaseRecord,
        answer_seconds: u32,
    ) -> Result<()> {
        let why =
            format!("the checks were not answered within {answer_seconds} s of the commitment");
        self.fail_probe(block, lease, &why, "Unanswered").map(drop)
    }
}

/// When a running lease's committed probe is left unanswered: `answer_seconds` after its
/// commitment, while it is under way.
pub(super) fn unanswered_at(lease: &LeaseRecord, answer_seconds: u32) -> Option<i64> {
    let probe = lease
        .probe
        .as_ref()
        .filter(|p| transitions::meters(lease.state) && under_way(p))?;
    Some(probe.committed_at? + i64::from(answer_seconds))
}

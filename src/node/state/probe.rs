//! A lease's GPU probe as the network runs it (DESIGN §8): issued at acceptance with the
//! rules in force, committed, checked with a nonce the commitment's block drew, then passed or
//! failed. A failed probe is evidence: the lease ends as the provider's fault, the buyer gets
//! the hold back and the provider is slashed to the buyer.

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

use super::{Block, LEASES, PROVIDERS, Result, State, StateError};

/// The probe every accepted lease runs, under the rules in force at `block`.
pub(super) fn issue(
    rules: &Rules,
    lease: &LeaseRecord,
    nonce: Vec<u8>,
    block: &Block,
) -> ProbeRecord {
    let spec = rules.spec(&lease.model);
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
    }
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
        super::metering::lease_terms(&mut lease, &body.certificate, block.time)?;
        let Some(mut probe) = lease
            .probe
            .clone()
            .filter(|_| transitions::meters(lease.state))
        else {
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
        lease.probe = Some(probe);
        if let Err(refusal) = verdict {
            return self.fail_probe(block, lease, &refusal.to_string(), refusal.kind());
        }
        let reply = probe_reply(lease.probe.as_ref().expect("set above"));
        if reply.passed_at != 0 {
            let mut registered = self.registered(&provider)?;
            registered.trust_tier = lease.tier();
            self.put(PROVIDERS, &provider, &registered)?;
        }
        self.put(LEASES, &lease.lease_id, &lease)?;
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

    /// Records the failure, ends the lease as the provider's fault and slashes it to the buyer.
    fn fail_probe(
        &mut self,
        block: &Block,
        mut lease: LeaseRecord,
        why: &str,
        kind: &str,
    ) -> Result<ProbeReply> {
        let probe = lease.probe.as_mut().ok_or_else(|| {
            StateError::Inconsistent("a failed probe that was never issued".into())
        })?;
        probe.failed_at = Some(block.time);
        probe.detail = format!("{kind}: {why}");
        let reply = probe_reply(probe);
        let evidence = format!("GPU probe failed: {}", reply.detail);
        self.put(LEASES, &lease.lease_id, &lease)?;
        let mut registered = self.registered(&lease.provider)?;
        registered.trust_tier = TrustTier::SelfReported;
        self.put(PROVIDERS, &lease.provider, &registered)?;
        self.end_unstarted(block, lease, "ChallengeFailed", "challenge", evidence)?;
        Ok(reply)
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

/// Whether a running lease's probe was committed and not answered within `answer_seconds`.
pub(super) fn unanswered(lease: &LeaseRecord, answer_seconds: u32, now: i64) -> bool {
    transitions::meters(lease.state)
        && lease.probe.as_ref().is_some_and(|p| {
            p.passed_at.is_none()
                && p.failed_at.is_none()
                && p.committed_at
                    .is_some_and(|at| at + i64::from(answer_seconds) <= now)
        })
}

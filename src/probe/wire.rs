//! The probe's messages: answers to and from the wire, and the probe's next step from where the
//! network says it stands.

use std::time::Instant;

use super::challenge::{Rules, gpu_rounds, gpu_seed};
use super::matrices::Spec;
use super::verify::{Answer, Opened, Prover};
use crate::commitment::merkle::Hash;
use crate::wire::Rejection;
use crate::wire::proto::{
    ProbeAnswers, ProbeCommit, ProbeReply, ProbeRoundAnswer, ProbeRow, ProbeStep, probe_step,
};

/// GPU `gpu`'s answers as the wire carries them.
pub fn to_wire(gpu: u32, answers: &[Answer]) -> ProbeAnswers {
    ProbeAnswers {
        gpu,
        rounds: answers
            .iter()
            .map(|a| ProbeRoundAnswer {
                product: a.product.clone(),
                rows: a
                    .rows
                    .iter()
                    .map(|r| ProbeRow {
                        row: r.row,
                        values: r.values.clone(),
                        aunts: r.aunts.iter().map(|h| h.to_vec()).collect(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The wire's answers as the verifier reads them; an aunt of the wrong length is malformed.
pub fn from_wire(wire: &ProbeAnswers) -> Result<Vec<Answer>, Rejection> {
    let aunt = |bytes: &Vec<u8>| -> Result<Hash, Rejection> {
        bytes.as_slice().try_into().map_err(|_| {
            Rejection::invalid("probe.answers.rounds.rows.aunts", "must be 32 bytes each")
        })
    };
    wire.rounds
        .iter()
        .map(|round| {
            Ok(Answer {
                product: round.product.clone(),
                rows: round
                    .rows
                    .iter()
                    .map(|r| {
                        Ok(Opened {
                            row: r.row,
                            values: r.values.clone(),
                            aunts: r.aunts.iter().map(aunt).collect::<Result<_, _>>()?,
                        })
                    })
                    .collect::<Result<_, Rejection>>()?,
            })
        })
        .collect()
}

/// What the probe in a lease pod does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Multiply and commit.
    Commit,
    /// Answer the checks for these GPUs.
    Answer(Vec<u32>),
    Passed,
    Failed(String),
}

pub fn next(reply: &ProbeReply) -> Next {
    match reply.state.as_str() {
        "passed" => Next::Passed,
        "failed" => Next::Failed(reply.detail.clone()),
        "committed" => Next::Answer(
            (0..reply.gpus)
                .filter(|g| !reply.answered.contains(g))
                .collect(),
        ),
        _ => Next::Commit,
    }
}

/// The spec and round rules a reply gives the probe.
pub fn issued(reply: &ProbeReply) -> (Spec, Rules) {
    let spec = Spec {
        size: reply.size,
        tiles: reply.tiles,
    };
    let rules = Rules {
        size: reply.size,
        default_memory_mib: 0,
        rounds: reply.rounds,
        rows: reply.rows,
        bands: Default::default(),
    };
    (spec, rules)
}

/// A probe run on the CPU: the row hashes it keeps between its commitment and its answers.
#[derive(Default)]
pub struct CpuRun {
    provers: Option<Vec<Prover>>,
}

/// What a probe run does with the network's latest word.
#[derive(Debug)]
pub enum Move {
    Send(ProbeStep),
    Passed(String),
    Failed(String),
}

impl CpuRun {
    /// Every GPU's products, one thread each, as the GPUs would run at once; the host keeps
    /// their row hashes and makes a checked tile again when it answers.
    fn multiply_all(reply: &ProbeReply) -> Vec<Prover> {
        let (spec, _) = issued(reply);
        let nonce = reply.nonce.as_slice();
        std::thread::scope(|scope| {
            let running: Vec<_> = (0..reply.gpus)
                .map(|g| scope.spawn(move || Prover::remaking(spec, &gpu_seed(nonce, g))))
                .collect();
            running
                .into_iter()
                .map(|t| t.join().expect("a probe thread panicked"))
                .collect()
        })
    }

    /// The move after `reply`: multiply and commit (timing the work), answer the next GPU's
    /// checks (multiplying again after a restart), or stop.
    pub fn next(&mut self, reply: &ProbeReply) -> Move {
        match next(reply) {
            Next::Passed => Move::Passed(reply.detail.clone()),
            Next::Failed(detail) => Move::Failed(detail),
            Next::Commit => {
                let started = Instant::now();
                let provers = Self::multiply_all(reply);
                let kernel_ms = started.elapsed().as_millis().max(1) as u64;
                let commit = ProbeCommit {
                    roots: provers.iter().map(|p| p.commitment().to_vec()).collect(),
                    kernel_ms,
                };
                self.provers = Some(provers);
                Move::Send(ProbeStep {
                    kind: Some(probe_step::Kind::Commit(commit)),
                })
            }
            Next::Answer(gpus) => {
                let (spec, rules) = issued(reply);
                let Ok(checks) = <[u8; 32]>::try_from(reply.checks.as_slice()) else {
                    return Move::Failed("the network's checks are not 32 bytes".into());
                };
                let Some(&gpu) = gpus.first() else {
                    return Move::Failed("committed, with every GPU answered".into());
                };
                let provers = self
                    .provers
                    .get_or_insert_with(|| Self::multiply_all(reply));
                let answers: Vec<Answer> = gpu_rounds(&rules, &spec, &checks, gpu)
                    .iter()
                    .map(|round| provers[gpu as usize].answer(round))
                    .collect();
                Move::Send(ProbeStep {
                    kind: Some(probe_step::Kind::Answers(to_wire(gpu, &answers))),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{Prover, rounds};

    #[test]
    fn answers_come_back_from_the_wire_as_they_went() {
        let spec = Spec { size: 16, tiles: 2 };
        let prover = Prover::run(spec, &[4; 32]);
        let answers: Vec<Answer> = rounds(&spec, &[6; 32], 3, 2)
            .iter()
            .map(|r| prover.answer(r))
            .collect();
        assert_eq!(from_wire(&to_wire(1, &answers)).unwrap(), answers);
        let mut short = to_wire(1, &answers);
        short.rounds[0].rows[0].aunts[0].pop();
        assert_eq!(
            from_wire(&short).unwrap_err().to_string(),
            "probe.answers.rounds.rows.aunts: must be 32 bytes each"
        );
    }

    #[test]
    fn the_probe_commits_answers_what_is_left_then_stops() {
        let reply = |state: &str, answered: Vec<u32>| ProbeReply {
            state: state.into(),
            gpus: 3,
            answered,
            detail: "why".into(),
            ..Default::default()
        };
        assert_eq!(next(&reply("issued", vec![])), Next::Commit);
        assert_eq!(next(&reply("committed", vec![1])), Next::Answer(vec![0, 2]));
        assert_eq!(next(&reply("passed", vec![0, 1, 2])), Next::Passed);
        assert_eq!(next(&reply("failed", vec![])), Next::Failed("why".into()));
    }
}

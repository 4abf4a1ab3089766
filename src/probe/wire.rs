//! The probe's messages: answers to and from the wire, and the probe's next step from where the
//! network says it stands.

use super::challenge::Rules;
use super::matrices::Spec;
use super::verify::{Answer, Opened};
use crate::commitment::merkle::Hash;
use crate::wire::Rejection;
use crate::wire::proto::{ProbeAnswers, ProbeReply, ProbeRoundAnswer, ProbeRow};

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

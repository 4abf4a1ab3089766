//! A probe run in a lease pod: the network's latest word in, the next step out, whichever engine
//! does the arithmetic — the CPU here ([`CpuEngine`]), the lease's GPUs in the sidecar's CUDA
//! engine.

use std::time::Instant;

use super::challenge::{gpu_rounds, gpu_seed};
use super::matrices::Spec;
use super::verify::{Answer, Prover, Round};
use super::wire::{Next, issued, next, to_wire};
use crate::commitment::merkle::Hash;
use crate::wire::proto::{ProbeCommit, ProbeReply, ProbeStep, probe_step};

/// What an engine committed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// One Merkle root per GPU, in GPU order.
    pub roots: Vec<Hash>,
    /// How long the multiplication took, as the network compares it with the model's band.
    pub kernel_ms: u64,
}

/// Where the probe's arithmetic runs. Errors are the engine's own (no driver, out of memory):
/// the probe stops, and the network's deadline decides.
pub trait Engine: Send {
    /// What it runs on, for logs and reports.
    fn name(&self) -> &'static str;
    /// Generates and multiplies every GPU's tiles (GPU g's seeded by `seeds[g]`), keeping what
    /// answering needs.
    fn multiply(&mut self, spec: Spec, seeds: &[[u8; 32]]) -> Result<Committed, String>;
    /// GPU `gpu`'s answers to `rounds`, after [`Engine::multiply`].
    fn answer(&mut self, gpu: u32, rounds: &[Round]) -> Result<Vec<Answer>, String>;
}

impl<E: Engine + ?Sized> Engine for Box<E> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn multiply(&mut self, spec: Spec, seeds: &[[u8; 32]]) -> Result<Committed, String> {
        (**self).multiply(spec, seeds)
    }

    fn answer(&mut self, gpu: u32, rounds: &[Round]) -> Result<Vec<Answer>, String> {
        (**self).answer(gpu, rounds)
    }
}

/// The CPU: one thread per GPU, keeping the row hashes and making a checked tile again.
#[derive(Default)]
pub struct CpuEngine {
    provers: Vec<Prover>,
}

impl Engine for CpuEngine {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn multiply(&mut self, spec: Spec, seeds: &[[u8; 32]]) -> Result<Committed, String> {
        let started = Instant::now();
        self.provers = std::thread::scope(|scope| {
            let running: Vec<_> = seeds
                .iter()
                .map(|seed| scope.spawn(move || Prover::remaking(spec, seed)))
                .collect();
            running
                .into_iter()
                .map(|t| t.join().expect("a probe thread panicked"))
                .collect()
        });
        Ok(Committed {
            roots: self.provers.iter().map(Prover::commitment).collect(),
            kernel_ms: started.elapsed().as_millis().max(1) as u64,
        })
    }

    fn answer(&mut self, gpu: u32, rounds: &[Round]) -> Result<Vec<Answer>, String> {
        let prover = self
            .provers
            .get(gpu as usize)
            .ok_or_else(|| format!("GPU {gpu} was not multiplied"))?;
        Ok(rounds.iter().map(|r| prover.answer(r)).collect())
    }
}

/// What a probe run does with the network's latest word.
#[derive(Debug)]
pub enum Move {
    Send(ProbeStep),
    Passed(String),
    /// The network failed the probe.
    Failed(String),
    /// The engine could not do its part.
    Broken(String),
}

/// A probe run: its engine, and whether the engine holds this run's products.
pub struct ProbeRun<E> {
    engine: E,
    multiplied: bool,
}

impl<E: Engine> ProbeRun<E> {
    pub fn new(engine: E) -> ProbeRun<E> {
        ProbeRun {
            engine,
            multiplied: false,
        }
    }

    /// The move after `reply`: multiply and commit, answer the next GPU's checks (multiplying
    /// again after a restart), or stop.
    pub fn next(&mut self, reply: &ProbeReply) -> Move {
        match self.step(reply) {
            Ok(step) => step,
            Err(e) => Move::Broken(e),
        }
    }

    fn step(&mut self, reply: &ProbeReply) -> Result<Move, String> {
        let (spec, rules) = issued(reply);
        let seeds: Vec<[u8; 32]> = (0..reply.gpus).map(|g| gpu_seed(&reply.nonce, g)).collect();
        Ok(match next(reply) {
            Next::Passed => Move::Passed(reply.detail.clone()),
            Next::Failed(detail) => Move::Failed(detail),
            Next::Commit => {
                let committed = self.engine.multiply(spec, &seeds)?;
                self.multiplied = true;
                Move::Send(ProbeStep {
                    kind: Some(probe_step::Kind::Commit(ProbeCommit {
                        roots: committed.roots.iter().map(|r| r.to_vec()).collect(),
                        kernel_ms: committed.kernel_ms,
                    })),
                })
            }
            Next::Answer(gpus) => {
                let checks = <[u8; 32]>::try_from(reply.checks.as_slice())
                    .map_err(|_| "the network's checks are not 32 bytes".to_string())?;
                let &gpu = gpus
                    .first()
                    .ok_or("committed, with every GPU answered".to_string())?;
                if !self.multiplied {
                    self.engine.multiply(spec, &seeds)?;
                    self.multiplied = true;
                }
                let rounds = gpu_rounds(&rules, &spec, &checks, gpu);
                let answers = self.engine.answer(gpu, &rounds)?;
                Move::Send(ProbeStep {
                    kind: Some(probe_step::Kind::Answers(to_wire(gpu, &answers))),
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::verify_round;

    /// The CPU engine, counting its multiplications, failing when told to.
    #[derive(Default)]
    struct Counted {
        cpu: CpuEngine,
        multiplied: u32,
        broken: bool,
    }

    impl Engine for Counted {
        fn name(&self) -> &'static str {
            "counted cpu"
        }

        fn multiply(&mut self, spec: Spec, seeds: &[[u8; 32]]) -> Result<Committed, String> {
            if self.broken {
                return Err("out of memory".into());
            }
            self.multiplied += 1;
            self.cpu.multiply(spec, seeds)
        }

        fn answer(&mut self, gpu: u32, rounds: &[Round]) -> Result<Vec<Answer>, String> {
            self.cpu.answer(gpu, rounds)
        }
    }

    fn reply(state: &str) -> ProbeReply {
        ProbeReply {
            state: state.into(),
            nonce: vec![7; 32],
            checks: vec![9; 32],
            gpus: 2,
            size: 16,
            tiles: 3,
            rounds: 4,
            rows: 2,
            answered: vec![0],
            ..Default::default()
        }
    }

    fn sent(step: Move) -> probe_step::Kind {
        match step {
            Move::Send(ProbeStep { kind: Some(kind) }) => kind,
            other => panic!("expected a step to send, got {other:?}"),
        }
    }

    #[test]
    fn a_run_commits_then_answers_what_the_network_checks_and_verifies() {
        let mut run = ProbeRun::new(Counted::default());
        let probe_step::Kind::Commit(commit) = sent(run.next(&reply("issued"))) else {
            panic!("a fresh probe commits first");
        };
        assert_eq!(commit.roots.len(), 2);
        let probe_step::Kind::Answers(answers) = sent(run.next(&reply("committed"))) else {
            panic!("a committed probe answers");
        };
        assert_eq!(answers.gpu, 1, "GPU 0 is answered already");
        assert_eq!(
            run.engine.multiplied, 1,
            "the products are held between the steps"
        );
        let (spec, rules) = issued(&reply("committed"));
        let root: Hash = commit.roots[1].as_slice().try_into().unwrap();
        let seed = gpu_seed(&[7; 32], 1);
        let rounds = gpu_rounds(&rules, &spec, &[9; 32], 1);
        let answers = crate::probe::wire::from_wire(&answers).unwrap();
        assert_eq!(answers.len(), 4);
        for (round, answer) in rounds.iter().zip(&answers) {
            verify_round(&spec, &seed, &root, round, answer).unwrap();
        }
    }

    #[test]
    fn a_restarted_run_multiplies_again_before_it_answers() {
        let mut run = ProbeRun::new(Counted::default());
        assert!(matches!(
            sent(run.next(&reply("committed"))),
            probe_step::Kind::Answers(_)
        ));
        assert_eq!(run.engine.multiplied, 1);
    }

    #[test]
    fn the_network_word_stops_a_run_and_an_engine_fault_breaks_it() {
        let mut run = ProbeRun::new(Counted::default());
        assert!(matches!(run.next(&reply("passed")), Move::Passed(_)));
        assert!(matches!(run.next(&reply("failed")), Move::Failed(_)));
        let mut broken = ProbeRun::new(Counted {
            broken: true,
            ..Default::default()
        });
        assert!(matches!(broken.next(&reply("issued")), Move::Broken(e) if e == "out of memory"));
        let mut short = reply("committed");
        short.checks.pop();
        assert!(matches!(
            ProbeRun::new(CpuEngine::default()).next(&short),
            Move::Broken(e) if e.contains("32 bytes")
        ));
    }
}

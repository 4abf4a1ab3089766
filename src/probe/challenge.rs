//! A lease's probe as the network runs it, pure: what each GPU must multiply, the checks drawn
//! once it committed, and the verdict on its answers, with the GPU model's calibration band.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::matrices::{MAX_SIZE, Spec};
use super::verify::{Answer, ProbeFailure, Round, rounds, verify_round};
use crate::commitment::merkle::Hash;

/// How an honest probe runs on one GPU model, set by governance from measurements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Calibration {
    /// The model's memory: its probe fills 90 % of it.
    pub memory_mib: u32,
    /// The INT8 throughput an honest probe on the model reaches, giga-operations a second
    /// (a tile is 2n³ operations): the band a reported time must fall in.
    pub least_gops: u64,
    pub most_gops: u64,
}

impl Calibration {
    /// `MEMORY_MIB:LEAST_GOPS:MOST_GOPS`, as a governance proposal writes it.
    pub fn parse(value: &str) -> Result<Calibration, String> {
        let rule = "must be MEMORY_MIB:LEAST_GOPS:MOST_GOPS, whole numbers, 0 < LEAST ≤ MOST";
        let parts: Vec<&str> = value.split(':').collect();
        let [memory, least, most] = parts.as_slice() else {
            return Err(rule.into());
        };
        let (Ok(memory_mib), Ok(least_gops), Ok(most_gops)) =
            (memory.parse(), least.parse(), most.parse())
        else {
            return Err(rule.into());
        };
        if memory_mib == 0 || least_gops == 0 || least_gops > most_gops {
            return Err(rule.into());
        }
        Ok(Calibration {
            memory_mib,
            least_gops,
            most_gops,
        })
    }
}

impl std::fmt::Display for Calibration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.memory_mib, self.least_gops, self.most_gops
        )
    }
}

/// The probe's governed rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Tiles are size × size.
    pub size: u32,
    /// The memory filled on a model with no calibration.
    pub default_memory_mib: u32,
    /// Rounds of checks per GPU, and rows opened per round.
    pub rounds: u32,
    pub rows: u32,
    /// Calibrations by GPU model, as offers name it.
    pub bands: BTreeMap<String, Calibration>,
}

impl Rules {
    /// What each GPU of a lease on `model` multiplies: 90 % of the model's calibrated memory.
    pub fn spec(&self, model: &str) -> Spec {
        let mib = self
            .bands
            .get(model)
            .map_or(self.default_memory_mib, |c| c.memory_mib);
        self.filling(mib)
    }

    /// What each GPU multiplies to fill 90 % of `mib` MiB: a re-probe's footprint.
    pub fn filling(&self, mib: u32) -> Spec {
        Spec::filling(u64::from(mib) << 20, self.size.min(MAX_SIZE))
    }
}

fn derived(domain: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(domain.as_bytes());
    hasher.update([0]);
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// GPU `gpu`'s seed: each GPU of a lease multiplies matrices of its own.
pub fn gpu_seed(nonce: &[u8], gpu: u32) -> [u8; 32] {
    derived("gpubridge/v1/probe-seed", &[nonce, &gpu.to_be_bytes()])
}

/// The checks, drawn from the entropy of the block that took the commitment: nobody knew them
/// while the probe multiplied.
pub fn checks_nonce(entropy: &[u8; 32], lease_id: &str, roots: &[Hash]) -> [u8; 32] {
    let mut parts: Vec<&[u8]> = vec![entropy, lease_id.as_bytes()];
    parts.extend(roots.iter().map(|r| r.as_slice()));
    derived("gpubridge/v1/probe-checks", &parts)
}

/// GPU `gpu`'s rounds under `checks`.
pub fn gpu_rounds(rules: &Rules, spec: &Spec, checks: &[u8; 32], gpu: u32) -> Vec<Round> {
    let per_gpu = derived(
        "gpubridge/v1/probe-gpu-checks",
        &[checks, &gpu.to_be_bytes()],
    );
    rounds(spec, &per_gpu, rules.rounds, rules.rows)
}

/// INT8 giga-operations a second for every GPU's product in `kernel_ms`, each GPU working on
/// its own tiles at once.
pub fn throughput_gops(spec: &Spec, kernel_ms: u64) -> u64 {
    let n = u128::from(spec.size);
    let operations = 2 * n * n * n * u128::from(spec.tiles);
    // operations / (kernel_ms × 10⁶): giga a second.
    u64::try_from(operations / (u128::from(kernel_ms.max(1)) * 1_000_000)).unwrap_or(u64::MAX)
}

/// Why a probe failed: evidence against its provider.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeRefusal {
    #[error("gpus[{gpu}].rounds: {found} answers, the checks drew {drawn}")]
    RoundCount {
        gpu: u32,
        found: usize,
        drawn: usize,
    },
    #[error("gpus[{gpu}].rounds[{round}]: {failure}")]
    Answer {
        gpu: u32,
        round: usize,
        failure: ProbeFailure,
    },
    #[error(
        "kernelMs: {gops} GOPS is outside {model}'s calibration band {least}–{most} GOPS: not the GPU the offer names"
    )]
    OutsideBand {
        model: String,
        gops: u64,
        least: u64,
        most: u64,
    },
}

impl ProbeRefusal {
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeRefusal::RoundCount { .. } => "RoundCount",
            ProbeRefusal::Answer { failure, .. } => failure.kind(),
            ProbeRefusal::OutsideBand { .. } => "OutsideBand",
        }
    }
}

/// GPU `gpu`'s answers to its rounds, each checked against its committed `root`.
pub fn check_gpu(
    rules: &Rules,
    spec: &Spec,
    nonce: &[u8],
    checks: &[u8; 32],
    gpu: u32,
    root: &Hash,
    answers: &[Answer],
) -> Result<(), ProbeRefusal> {
    let rounds = gpu_rounds(rules, spec, checks, gpu);
    if answers.len() != rounds.len() {
        return Err(ProbeRefusal::RoundCount {
            gpu,
            found: answers.len(),
            drawn: rounds.len(),
        });
    }
    let seed = gpu_seed(nonce, gpu);
    for (i, (round, answer)) in rounds.iter().zip(answers).enumerate() {
        verify_round(spec, &seed, root, round, answer).map_err(|failure| ProbeRefusal::Answer {
            gpu,
            round: i,
            failure,
        })?;
    }
    Ok(())
}

/// The band the reported time matched, in words, or why it is refused. A model with no
/// calibration passes on its product alone, and the words say its speed was not compared.
pub fn check_band(
    rules: &Rules,
    model: &str,
    spec: &Spec,
    kernel_ms: u64,
) -> Result<String, ProbeRefusal> {
    let gops = throughput_gops(spec, kernel_ms);
    match rules.bands.get(model) {
        None => Ok(format!(
            "{} tiles of {}² a GPU verified; {model} has no calibration band, so its speed ({gops} GOPS reported) was not compared",
            spec.tiles, spec.size
        )),
        Some(band) if (band.least_gops..=band.most_gops).contains(&gops) => Ok(format!(
            "{} tiles of {}² a GPU verified; {gops} GOPS within {model}'s band {}–{} GOPS",
            spec.tiles, spec.size, band.least_gops, band.most_gops
        )),
        Some(band) => Err(ProbeRefusal::OutsideBand {
            model: model.to_string(),
            gops,
            least: band.least_gops,
            most: band.most_gops,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Prover;

    fn rules() -> Rules {
        Rules {
            size: 32,
            default_memory_mib: 1,
            rounds: 6,
            rows: 2,
            bands: BTreeMap::from([(
                "NVIDIA-H100-80GB-HBM3".to_string(),
                Calibration {
                    memory_mib: 2,
                    least_gops: 100,
                    most_gops: 2_000,
                },
            )]),
        }
    }

    #[test]
    fn the_spec_fills_the_calibrated_memory_or_the_default() {
        let rules = rules();
        // 90 % of 1 MiB in tiles of 6 × 32² bytes: 154 tiles.
        assert_eq!(
            rules.spec("unknown"),
            Spec {
                size: 32,
                tiles: 154
            }
        );
        assert_eq!(
            rules.spec("NVIDIA-H100-80GB-HBM3"),
            Spec {
                size: 32,
                tiles: 308
            }
        );
    }

    #[test]
    fn an_honest_probe_of_every_gpu_passes_and_each_gpu_has_its_own_matrices() {
        let rules = rules();
        let spec = Spec { size: 32, tiles: 3 };
        let nonce = [9u8; 32];
        let provers: Vec<Prover> = (0..2)
            .map(|g| Prover::run(spec, &gpu_seed(&nonce, g)))
            .collect();
        let roots: Vec<Hash> = provers.iter().map(Prover::commitment).collect();
        assert_ne!(roots[0], roots[1]);
        let checks = checks_nonce(&[1; 32], "lease-1", &roots);
        let check = |gpu: u32, answers: &[Answer]| {
            check_gpu(
                &rules,
                &spec,
                &nonce,
                &checks,
                gpu,
                &roots[gpu as usize],
                answers,
            )
        };
        for (g, prover) in provers.iter().enumerate() {
            let g = g as u32;
            let answers: Vec<Answer> = gpu_rounds(&rules, &spec, &checks, g)
                .iter()
                .map(|r| prover.answer(r))
                .collect();
            assert_eq!(check(g, &answers), Ok(()));
            // GPU 0's answers are not GPU 1's.
            assert!(check(1 - g, &answers).is_err());
            // Answers short of the drawn rounds.
            assert_eq!(
                check(g, &answers[1..]),
                Err(ProbeRefusal::RoundCount {
                    gpu: g,
                    found: 5,
                    drawn: 6
                })
            );
        }
        // The checks depend on the block's entropy and on every root.
        assert_ne!(checks, checks_nonce(&[2; 32], "lease-1", &roots));
        assert_ne!(checks, checks_nonce(&[1; 32], "lease-1", &roots[..1]));
    }

    #[test]
    fn a_time_outside_the_models_band_is_refused_and_an_uncalibrated_model_says_so() {
        let rules = rules();
        // 2 × 1024³ × 100 operations = 214.7 G.
        let spec = Spec {
            size: 1024,
            tiles: 100,
        };
        assert_eq!(throughput_gops(&spec, 1_000), 214);
        assert_eq!(throughput_gops(&spec, 0), 214_748);
        let h100 = "NVIDIA-H100-80GB-HBM3";
        assert!(
            check_band(&rules, h100, &spec, 1_000)
                .unwrap()
                .contains("214 GOPS within")
        );
        // Four times slower than the band allows: another, slower GPU.
        assert_eq!(
            check_band(&rules, h100, &spec, 4_000),
            Err(ProbeRefusal::OutsideBand {
                model: h100.into(),
                gops: 53,
                least: 100,
                most: 2_000
            })
        );
        // Faster than any such GPU: the time is not what ran.
        assert_eq!(
            check_band(&rules, h100, &spec, 100).unwrap_err().kind(),
            "OutsideBand"
        );
        let uncalibrated = check_band(&rules, "RTX-4090", &spec, 4_000).unwrap();
        assert!(
            uncalibrated.contains("no calibration band"),
            "{uncalibrated}"
        );
    }

    #[test]
    fn calibrations_parse_from_governance_and_print_back() {
        let c = Calibration::parse("81559:400:3000").unwrap();
        assert_eq!(c.to_string(), "81559:400:3000");
        for bad in ["", "1:2", "0:1:2", "1:3:2", "1:0:2", "a:1:2", "1:2:3:4"] {
            assert!(Calibration::parse(bad).is_err(), "{bad}");
        }
    }
}

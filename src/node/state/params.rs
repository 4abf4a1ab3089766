//! The network's parameters (DESIGN §7), pure: a typed set that governance changes one named
//! field at a time, each within its bounds, and governance's own rules, which it cannot change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::probe::challenge::{Calibration, Rules};
use crate::wire::Rejection;
use crate::wire::amount::{self, Amount};

/// The network's parameters, part of the state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// Longest an offer lives without being published again.
    pub offer_ttl_seconds: u32,
    /// A provider silent this long has its offers dropped from matching.
    pub heartbeat_timeout_seconds: u32,
    /// The slot uptime is counted in: a provider heartbeats at least this often.
    pub heartbeat_interval_seconds: u32,
    /// The window uptime is measured over.
    pub uptime_window_seconds: u32,
    /// How long a provider has to answer a lease.
    pub answer_seconds: u32,
    /// How often an accepted lease is challenged for fresh attestation evidence.
    pub challenge_seconds: u32,
    /// The denomination stake is bonded in.
    pub stake_denomination: String,
    /// Stake each GPU of a provider's matched and running leases needs; zero asks no bond.
    pub bond_per_gpu: Amount,
    /// How long unbonded stake stays slashable before it is paid back.
    pub unbonding_seconds: u32,
    /// How long after acceptance a lease's first receipt may come; past it the lease never
    /// started, ends as the provider's fault and its provider is slashed. Zero sets no deadline.
    pub start_deadline_seconds: u32,
    /// The share of a provider's stake (bonded and unbonding) one slash takes, basis points.
    pub slash_basis_points: u32,
    /// The GPU probe every accepted lease runs (DESIGN §8): tiles of `probe_size`², filling
    /// 90 % of the model's calibrated memory or of `probe_memory_mib` for a model with none;
    /// `probe_rounds` rounds of checks per GPU, each opening `probe_rows` rows, answered within
    /// `probe_answer_seconds` of the commitment.
    pub probe_size: u32,
    pub probe_memory_mib: u32,
    pub probe_rounds: u32,
    pub probe_rows: u32,
    pub probe_answer_seconds: u32,
    /// How often a running lease of an offer that promised re-probes (`reprobed=true`) is
    /// probed again, counted from its last pass; zero probes no lease again. A re-probe fills
    /// 90 % of `reprobe_memory_mib` of each GPU, the room a workload leaves, and must be
    /// committed, then answered, within `probe_answer_seconds` each.
    #[serde(default = "default_reprobe_seconds")]
    pub reprobe_seconds: u32,
    #[serde(default = "default_reprobe_memory_mib")]
    pub reprobe_memory_mib: u32,
    /// Calibration bands by GPU model as offers name it, `probe-band/<model>` to governance.
    pub probe_bands: BTreeMap<String, Calibration>,
    /// Governance's own rules, fixed at genesis: no proposal changes them.
    /// Blocks a proposal is voted on.
    pub voting_blocks: u64,
    /// The least a proposal puts down, in the stake denomination; returned when the vote
    /// reaches quorum, kept by the network when not.
    pub min_deposit: Amount,
    /// Bonded stake that must vote for a tally to count, basis points of all bonded stake.
    pub quorum_basis_points: u32,
    /// Yes votes, basis points of the stake that voted, above which a proposal passes.
    pub threshold_basis_points: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            offer_ttl_seconds: 120,
            heartbeat_timeout_seconds: 30,
            heartbeat_interval_seconds: 10,
            uptime_window_seconds: 24 * 3600,
            answer_seconds: 30,
            challenge_seconds: 300,
            stake_denomination: "USDC".into(),
            bond_per_gpu: Amount::ZERO,
            unbonding_seconds: 7 * 24 * 3600,
            start_deadline_seconds: 600,
            slash_basis_points: 1000,
            probe_size: 256,
            probe_memory_mib: 16,
            probe_rounds: 16,
            probe_rows: 2,
            probe_answer_seconds: 120,
            reprobe_seconds: default_reprobe_seconds(),
            reprobe_memory_mib: default_reprobe_memory_mib(),
            probe_bands: BTreeMap::new(),
            voting_blocks: 100,
            min_deposit: Amount::from_atto(10 * 1_000_000_000_000_000_000),
            quorum_basis_points: 3_340,
            threshold_basis_points: 5_000,
        }
    }
}

fn default_reprobe_seconds() -> u32 {
    3_600
}

fn default_reprobe_memory_mib() -> u32 {
    512
}

/// What governance may change, with its bounds: (name, least, most). Not the stake
/// denomination (bonds in it would be stranded), nor governance's own rules.
const GOVERNED: &[(&str, u128, u128)] = &[
    ("offer-ttl-seconds", 10, 86_400),
    ("heartbeat-timeout-seconds", 5, 3_600),
    ("heartbeat-interval-seconds", 1, 3_600),
    ("uptime-window-seconds", 3_600, 90 * 86_400),
    ("answer-seconds", 5, 3_600),
    ("challenge-seconds", 30, 86_400),
    // Up to a million units per GPU.
    ("bond-per-gpu", 0, 1_000_000_000_000_000_000_000_000),
    ("unbonding-seconds", 0, 365 * 86_400),
    ("start-deadline-seconds", 0, 86_400),
    ("slash-basis-points", 0, 10_000),
    // Bounded so that one GPU's answers fit a request body (192 KiB).
    ("probe-size", 16, 512),
    ("probe-memory-mib", 1, 1 << 20),
    ("probe-rounds", 1, 16),
    ("probe-rows", 0, 2),
    ("probe-answer-seconds", 5, 3_600),
    ("reprobe-seconds", 0, 7 * 86_400),
    ("reprobe-memory-mib", 1, 1 << 20),
];

/// A model's calibration band is governed as `probe-band/<model>`.
const PROBE_BAND: &str = "probe-band/";

impl Params {
    /// The parameters with `name` set to `value` (a whole number; atto units for an amount),
    /// or why not.
    pub fn with_change(&self, name: &str, value: &str) -> Result<Params, Rejection> {
        if let Some(model) = name.strip_prefix(PROBE_BAND) {
            return self.with_band(model, value);
        }
        let Some(&(_, least, most)) = GOVERNED.iter().find(|(n, _, _)| *n == name) else {
            let names: Vec<&str> = GOVERNED.iter().map(|(n, _, _)| *n).collect();
            return Err(Rejection::invalid(
                "change.name",
                &format!(
                    "{name:?} is not a governed parameter (one of {}, {PROBE_BAND}<model>)",
                    names.join(", ")
                ),
            ));
        };
        let out_of_bounds = || {
            Rejection::invalid(
                "change.value",
                &format!("{name} must be a whole number from {least} to {most}"),
            )
        };
        let number = amount::parse("change.value", value)
            .map_err(|_| out_of_bounds())?
            .atto();
        if !(least..=most).contains(&number) {
            return Err(out_of_bounds());
        }
        let seconds = || u32::try_from(number).map_err(|_| out_of_bounds());
        let mut next = self.clone();
        match name {
            "offer-ttl-seconds" => next.offer_ttl_seconds = seconds()?,
            "heartbeat-timeout-seconds" => next.heartbeat_timeout_seconds = seconds()?,
            "heartbeat-interval-seconds" => next.heartbeat_interval_seconds = seconds()?,
            "uptime-window-seconds" => next.uptime_window_seconds = seconds()?,
            "answer-seconds" => next.answer_seconds = seconds()?,
            "challenge-seconds" => next.challenge_seconds = seconds()?,
            "bond-per-gpu" => next.bond_per_gpu = Amount::from_atto(number),
            "unbonding-seconds" => next.unbonding_seconds = seconds()?,
            "start-deadline-seconds" => next.start_deadline_seconds = seconds()?,
            "slash-basis-points" => next.slash_basis_points = seconds()?,
            "probe-size" => next.probe_size = seconds()?,
            "probe-memory-mib" => next.probe_memory_mib = seconds()?,
            "probe-rounds" => next.probe_rounds = seconds()?,
            "probe-rows" => next.probe_rows = seconds()?,
            "probe-answer-seconds" => next.probe_answer_seconds = seconds()?,
            "reprobe-seconds" => next.reprobe_seconds = seconds()?,
            "reprobe-memory-mib" => next.reprobe_memory_mib = seconds()?,
            other => unreachable!("{other} is in GOVERNED but not set"),
        }
        Ok(next)
    }

    /// The parameters with `model`'s calibration band set to `value`
    /// (`MEMORY_MIB:LEAST_GOPS:MOST_GOPS`), or removed by `none`.
    fn with_band(&self, model: &str, value: &str) -> Result<Params, Rejection> {
        if model.is_empty()
            || model.len() > 63
            || !model
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(Rejection::invalid(
                "change.name",
                &format!(
                    "{PROBE_BAND}<model>: the model is 1 to 63 letters, digits, '-', '_' or '.', as offers name it"
                ),
            ));
        }
        let mut next = self.clone();
        if value == "none" {
            next.probe_bands.remove(model);
        } else {
            let band = Calibration::parse(value).map_err(|rule| {
                Rejection::invalid(
                    "change.value",
                    &format!("{PROBE_BAND}{model} {rule}, or none"),
                )
            })?;
            next.probe_bands.insert(model.to_string(), band);
        }
        Ok(next)
    }

    /// The probe's rules in force.
    pub fn probe_rules(&self) -> Rules {
        Rules {
            size: self.probe_size,
            default_memory_mib: self.probe_memory_mib,
            rounds: self.probe_rounds,
            rows: self.probe_rows,
            bands: self.probe_bands.clone(),
        }
    }

    /// Every parameter by its name: the governed ones, then those fixed at genesis.
    pub fn listed(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = [
            ("offer-ttl-seconds", self.offer_ttl_seconds.to_string()),
            (
                "heartbeat-timeout-seconds",
                self.heartbeat_timeout_seconds.to_string(),
            ),
            (
                "heartbeat-interval-seconds",
                self.heartbeat_interval_seconds.to_string(),
            ),
            (
                "uptime-window-seconds",
                self.uptime_window_seconds.to_string(),
            ),
            ("answer-seconds", self.answer_seconds.to_string()),
            ("challenge-seconds", self.challenge_seconds.to_string()),
            ("bond-per-gpu", self.bond_per_gpu.to_string()),
            ("unbonding-seconds", self.unbonding_seconds.to_string()),
            (
                "start-deadline-seconds",
                self.start_deadline_seconds.to_string(),
            ),
            ("slash-basis-points", self.slash_basis_points.to_string()),
            ("probe-size", self.probe_size.to_string()),
            ("probe-memory-mib", self.probe_memory_mib.to_string()),
            ("probe-rounds", self.probe_rounds.to_string()),
            ("probe-rows", self.probe_rows.to_string()),
            (
                "probe-answer-seconds",
                self.probe_answer_seconds.to_string(),
            ),
            ("reprobe-seconds", self.reprobe_seconds.to_string()),
            ("reprobe-memory-mib", self.reprobe_memory_mib.to_string()),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect();
        for (model, band) in &self.probe_bands {
            out.push((format!("{PROBE_BAND}{model}"), band.to_string()));
        }
        for (name, value) in [
            ("stake-denomination", self.stake_denomination.clone()),
            ("voting-blocks", self.voting_blocks.to_string()),
            ("min-deposit", self.min_deposit.to_string()),
            ("quorum-basis-points", self.quorum_basis_points.to_string()),
            (
                "threshold-basis-points",
                self.threshold_basis_points.to_string(),
            ),
        ] {
            out.push((name.into(), value));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_governed_name_changes_its_field_within_its_bounds() {
        let base = Params::default();
        for (name, least, most) in GOVERNED {
            for value in [*least, *most] {
                let next = base.with_change(name, &value.to_string()).unwrap();
                let shown = next.listed();
                assert!(
                    shown.contains(&(name.to_string(), value.to_string())),
                    "{name}={value}: {shown:?}"
                );
                let changed: Vec<String> = shown
                    .into_iter()
                    .zip(base.listed())
                    .filter(|(now, before)| now != before)
                    .map(|(now, _)| now.0)
                    .collect();
                assert!(changed.iter().all(|n| n == name), "{name}: {changed:?}");
            }
            for bad in [most + 1, least.wrapping_sub(1)] {
                if bad > *most || bad < *least {
                    let error = base.with_change(name, &bad.to_string()).unwrap_err();
                    assert_eq!(
                        error.to_string(),
                        format!(
                            "change.value: {name} must be a whole number from {least} to {most}"
                        )
                    );
                }
            }
        }
    }

    #[test]
    fn a_models_calibration_band_is_set_listed_and_removed_by_name() {
        let base = Params::default();
        let h100 = "probe-band/NVIDIA-H100-80GB-HBM3";
        let with = base.with_change(h100, "81559:400:3000").unwrap();
        assert!(
            with.listed()
                .contains(&(h100.to_string(), "81559:400:3000".to_string()))
        );
        assert_eq!(
            with.probe_rules().spec("NVIDIA-H100-80GB-HBM3").tiles,
            // 90 % of 81 559 MiB in tiles of 6 × 256² bytes.
            195_742
        );
        assert_eq!(with.with_change(h100, "none").unwrap(), base);
        let bad = base.with_change(h100, "400:3000").unwrap_err();
        assert!(
            bad.to_string()
                .starts_with("change.value: probe-band/NVIDIA-H100-80GB-HBM3 must be"),
            "{bad}"
        );
        for model in ["", "a b", &"x".repeat(64)] {
            let bad = base
                .with_change(&format!("probe-band/{model}"), "1:1:1")
                .unwrap_err();
            assert!(
                bad.to_string()
                    .starts_with("change.name: probe-band/<model>"),
                "{bad}"
            );
        }
    }

    #[test]
    fn unknown_names_and_malformed_values_are_refused_by_field() {
        let base = Params::default();
        for fixed in [
            "stake-denomination",
            "quorum-basis-points",
            "threshold-basis-points",
            "voting-blocks",
            "min-deposit",
        ] {
            let unknown = base.with_change(fixed, "1").unwrap_err();
            assert!(
                unknown.to_string().starts_with(&format!(
                    "change.name: \"{fixed}\" is not a governed parameter"
                )),
                "{unknown}"
            );
        }
        for bad in ["-1", "1.5", "", "ten"] {
            let error = base.with_change("answer-seconds", bad).unwrap_err();
            assert!(
                error
                    .to_string()
                    .starts_with("change.value: answer-seconds"),
                "{bad}: {error}"
            );
        }
    }
}

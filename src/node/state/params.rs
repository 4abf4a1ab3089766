//! The network's parameters (DESIGN §7), pure: a typed set that governance changes one named
//! field at a time, each within its bounds, and governance's own rules, which it cannot change.

use serde::{Deserialize, Serialize};

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
            voting_blocks: 100,
            min_deposit: Amount::from_atto(10 * 1_000_000_000_000_000_000),
            quorum_basis_points: 3_340,
            threshold_basis_points: 5_000,
        }
    }
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
];

impl Params {
    /// The parameters with `name` set to `value` (a whole number; atto units for an amount),
    /// or why not.
    pub fn with_change(&self, name: &str, value: &str) -> Result<Params, Rejection> {
        let Some(&(_, least, most)) = GOVERNED.iter().find(|(n, _, _)| *n == name) else {
            let names: Vec<&str> = GOVERNED.iter().map(|(n, _, _)| *n).collect();
            return Err(Rejection::invalid(
                "change.name",
                &format!(
                    "{name:?} is not a governed parameter (one of {})",
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
            other => unreachable!("{other} is in GOVERNED but not set"),
        }
        Ok(next)
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
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect();
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

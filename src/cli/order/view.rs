//! What `gpubridge order` prints: tables, the order detail, JSON — pure, from what the network
//! answered.

use serde_json::{Value, json};

use crate::wire::amount::{self, in_units};
use crate::wire::proto::{
    BalanceReply, LeaseView, OfferView, OrderState, OrderView, ParamsReply, ProposalView, RimReply,
    StakeReply,
};

use super::Output;

/// An amount from the network in whole units (`0.35`, never 18 trailing digits); shown as sent
/// when it is not an amount.
pub(super) fn units(atto: &str) -> String {
    amount::parse("amount", atto).map_or_else(|_| atto.to_string(), |a| a.to_decimal_units())
}

/// A count of GPUs as a table shows it: whole GPUs as a number, slices with their MIG profile
/// (`7 × mig-1g.10gb`), so that slices never read as whole GPUs.
fn gpus_of(count: u32, resource: &str) -> String {
    match resource.strip_prefix("nvidia.com/") {
        Some(mig) if mig.starts_with("mig-") => format!("{count} × {mig}"),
        _ => count.to_string(),
    }
}

/// An order's state as a lowercase word, for tables and JSON.
pub(super) fn state(order: &OrderView) -> &'static str {
    match OrderState::try_from(order.state).unwrap_or(OrderState::Unspecified) {
        OrderState::Unspecified => "unknown",
        OrderState::Matched => "matched",
        OrderState::Leased => "leased",
        OrderState::Ended => "ended",
        OrderState::Rejected => "rejected",
        OrderState::Cancelled => "cancelled",
        OrderState::Waiting => "waiting",
    }
}

/// Whether nothing more will happen to the order.
pub(super) fn is_final(order: &OrderView) -> bool {
    matches!(state(order), "ended" | "rejected" | "cancelled")
}

/// How an order turned out, for the exit status: rejected (no lease, or the provider refused
/// or never answered), failed (its lease ended by a fault not the buyer's), or neither.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Fine,
    Rejected,
    Failed,
}

pub(super) fn outcome(order: &OrderView) -> Outcome {
    match state(order) {
        "rejected" => Outcome::Rejected,
        "ended"
            if order
                .lease
                .as_ref()
                .is_some_and(|l| matches!(l.fault.as_str(), "provider" | "network")) =>
        {
            Outcome::Failed
        }
        _ => Outcome::Fine,
    }
}

/// A time the network sent (Unix seconds) as a reader wants it; `-` for none.
fn when(seconds: i64) -> String {
    if seconds <= 0 {
        return "-".into();
    }
    jiff::Timestamp::from_second(seconds)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| seconds.to_string())
}

/// A length of time as `1h 30m`, `45s`.
fn span(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    let parts: Vec<String> = [(h, "h"), (m, "m"), (s, "s")]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if parts.is_empty() {
        "0s".into()
    } else {
        parts.join(" ")
    }
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.to_string()
    }
}

/// Rows under a header, each column as wide as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    std::iter::once(line(&header))
        .chain(rows.iter().map(|row| line(row)))
        .collect()
}

fn pretty(value: &Value) -> String {
    format!(
        "{}\n",
        serde_json::to_string_pretty(value).expect("JSON renders")
    )
}

/// "1 connection", "2 connections".
fn counted(n: u64, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

fn lease_json(lease: &LeaseView) -> Value {
    json!({
        "leaseId": lease.lease_id, "state": lease.state,
        "provider": lease.provider, "providerName": lease.provider_name, "region": lease.region,
        "nodeBlock": lease.node_block,
        "matchedAt": lease.matched_at, "acceptedAt": lease.accepted_at,
        "startedAt": lease.started_at, "endedAt": lease.ended_at,
        "receipts": lease.receipts, "meteredGpuSeconds": lease.metered_gpu_seconds,
        "energyJoules": lease.energy_joules, "utilizationPercent": lease.utilization_percent,
        "charged": units(&lease.charged), "trustTier": lease.trust_tier,
        "endPhase": lease.end_phase, "endReason": lease.end_reason, "fault": lease.fault,
        "access": lease.access.map(|a| json!({
            "bytesToWorkload": a.bytes_to_workload, "bytesFromWorkload": a.bytes_from_workload,
            "connections": a.connections, "logStreams": a.log_streams,
        })),
    })
}

fn order_json(o: &OrderView) -> Value {
    json!({
        "orderId": o.order_id, "state": state(o), "reason": o.reason,
        "gpus": o.gpus, "resourceName": o.resource_name, "model": o.model,
        "durationSeconds": o.duration_seconds,
        "maxPricePerGpuHour": units(&o.max_price_per_gpu_hour),
        "pricePerGpuHour": units(&o.price_per_gpu_hour), "denomination": o.denomination,
        "leaseId": o.lease_id, "offerId": o.offer_id, "image": o.image,
        "held": units(&o.held), "charged": units(&o.charged), "refunded": units(&o.refunded),
        "createdAt": o.created_at, "updatedAt": o.updated_at,
        "lease": o.lease.as_ref().map(lease_json),
    })
}

/// The price column: what the order pays, or for an order that never got a price, the most it
/// asked to pay.
fn price_cell(o: &OrderView) -> String {
    if o.price_per_gpu_hour.is_empty() {
        format!("≤ {} {}", units(&o.max_price_per_gpu_hour), o.denomination)
    } else {
        in_units(&o.price_per_gpu_hour, &o.denomination)
    }
}

pub(super) fn orders(orders: &[OrderView], output: Output) -> String {
    if output == Output::Json {
        return pretty(&Value::Array(orders.iter().map(order_json).collect()));
    }
    let rows: Vec<Vec<String>> = orders
        .iter()
        .map(|o| {
            vec![
                o.order_id.clone(),
                state(o).to_string(),
                gpus_of(o.gpus, &o.resource_name),
                if o.model.is_empty() {
                    "any".into()
                } else {
                    o.model.clone()
                },
                span(o.duration_seconds),
                price_cell(o),
                or_dash(&o.lease_id),
                units(&o.charged),
                when(o.created_at),
                o.reason.clone(),
            ]
        })
        .collect();
    table(
        &[
            "ORDER",
            "STATE",
            "GPUS",
            "MODEL",
            "DURATION",
            "PRICE/GPU-H",
            "LEASE",
            "CHARGED",
            "CREATED",
            "REASON",
        ],
        &rows,
    )
}

/// One order in detail: what was asked, where its lease runs, how far it got, what was metered,
/// held and charged, and how it was verified and ended.
pub(super) fn order_detail(o: &OrderView, output: Output) -> String {
    if output == Output::Json {
        return pretty(&order_json(o));
    }
    let denomination = &o.denomination;
    let money = |atto: &str| in_units(atto, denomination);
    let mut lines: Vec<(&str, String)> = vec![
        ("Order", o.order_id.clone()),
        ("State", state(o).to_string()),
    ];
    if !o.reason.is_empty() {
        lines.push(("Reason", o.reason.clone()));
    }
    lines.extend([
        (
            "Asked",
            format!(
                "{} {}, {}, for {}, at most {} per GPU-hour",
                o.gpus,
                or_dash(&o.resource_name),
                if o.model.is_empty() {
                    "any model".to_string()
                } else {
                    o.model.clone()
                },
                span(o.duration_seconds),
                money(&o.max_price_per_gpu_hour)
            ),
        ),
        ("Image", or_dash(&o.image)),
        ("Created", when(o.created_at)),
        ("Updated", when(o.updated_at)),
    ]);
    if !o.price_per_gpu_hour.is_empty() {
        lines.push((
            "Price",
            format!("{} per GPU-hour", money(&o.price_per_gpu_hour)),
        ));
    }
    lines.push((
        "Hold",
        format!(
            "{} held, {} charged, {} refunded",
            money(&o.held),
            money(&o.charged),
            money(&o.refunded)
        ),
    ));
    if let Some(lease) = &o.lease {
        let provider = match lease.provider_name.as_str() {
            "" => lease.provider.clone(),
            name => format!("{name} ({})", lease.provider),
        };
        let ends_by = if lease.accepted_at > 0 {
            lease
                .accepted_at
                .saturating_add_unsigned(o.duration_seconds)
        } else {
            0
        };
        lines.extend([
            ("Lease", format!("{} ({})", lease.lease_id, lease.state)),
            ("Provider", provider),
            ("Region", or_dash(&lease.region)),
            ("Offer", or_dash(&o.offer_id)),
            ("Node", format!("block {} of the offer", lease.node_block)),
            ("Matched", when(lease.matched_at)),
            ("Accepted", when(lease.accepted_at)),
            ("Ends by", when(ends_by)),
            ("Started", when(lease.started_at)),
            ("Ended", when(lease.ended_at)),
            (
                "Usage",
                format!(
                    "{} receipts, {} GPU-seconds metered, {} J{}",
                    lease.receipts,
                    lease.metered_gpu_seconds,
                    lease.energy_joules,
                    lease
                        .utilization_percent
                        .map(|u| format!(", {u}% mean utilization"))
                        .unwrap_or_default()
                ),
            ),
            (
                "Access",
                lease
                    .access
                    .filter(crate::metering::access::any)
                    .map_or_else(
                        || "none".to_string(),
                        |a| {
                            format!(
                                "{}, {}; {} bytes to the workload, {} back",
                                counted(a.connections, "connection"),
                                counted(a.log_streams, "log stream"),
                                a.bytes_to_workload,
                                a.bytes_from_workload
                            )
                        },
                    ),
            ),
            ("Paid so far", money(&lease.charged)),
            (
                "Verification",
                match lease.trust_tier.as_str() {
                    "" | "self-reported" => {
                        "self-reported: no probe passed, no evidence verified".to_string()
                    }
                    tier => tier.to_string(),
                },
            ),
        ]);
    }
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
    lines
        .iter()
        .map(|(key, value)| format!("{:<width$}{value}\n", format!("{key}:")))
        .collect()
}

pub(super) fn balances(reply: &BalanceReply, output: Output) -> String {
    if output == Output::Json {
        let list: Vec<_> = reply
            .balances
            .iter()
            .map(|b| json!({"denomination": b.denomination, "available": units(&b.available), "held": units(&b.held), "earned": units(&b.earned)}))
            .collect();
        return pretty(&json!(list));
    }
    let rows: Vec<Vec<String>> = reply
        .balances
        .iter()
        .map(|b| {
            vec![
                b.denomination.clone(),
                units(&b.available),
                units(&b.held),
                units(&b.earned),
            ]
        })
        .collect();
    table(&["DENOMINATION", "AVAILABLE", "HELD", "EARNED"], &rows)
}

pub(super) fn offers(offers: &[OfferView], output: Output) -> String {
    if output == Output::Json {
        let list: Vec<_> = offers
            .iter()
            .map(|o| {
                json!({
                    "offerId": o.offer_id, "provider": o.provider_name,
                    "resourceName": o.resource_name, "model": o.model,
                    "availableGpus": o.available_gpus, "largestBlock": o.largest_block,
                    "pricePerGpuHour": units(&o.price_per_gpu_hour), "denomination": o.denomination,
                    "minDurationSeconds": o.min_duration_seconds, "maxDurationSeconds": o.max_duration_seconds,
                    "region": o.region, "expiresAt": o.expires_at,
                    "bonded": units(&o.bonded),
                    "providerKey": o.provider,
                    "uptimeBasisPoints": o.uptime_basis_points,
                    "trustTier": o.trust_tier,
                    "completedLeases": o.completed_leases,
                    "providerFaultEnds": o.provider_fault_ends,
                    "attributes": o.attributes.iter()
                        .map(|a| (a.key.clone(), json!(a.value)))
                        .collect::<serde_json::Map<_, _>>(),
                })
            })
            .collect();
        return pretty(&json!(list));
    }
    let rows: Vec<Vec<String>> = offers
        .iter()
        .map(|o| {
            vec![
                o.offer_id
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                o.provider_name.clone(),
                if o.model.is_empty() {
                    "mixed".into()
                } else {
                    o.model.clone()
                },
                gpus_of(o.available_gpus, &o.resource_name),
                o.largest_block.to_string(),
                in_units(&o.price_per_gpu_hour, &o.denomination),
                format!(
                    "{} to {}",
                    span(o.min_duration_seconds),
                    span(o.max_duration_seconds)
                ),
                or_dash(&o.region),
                units(&o.bonded),
                format!(
                    "{}.{:02} %",
                    o.uptime_basis_points / 100,
                    o.uptime_basis_points % 100
                ),
                or_dash(&o.trust_tier),
                format!("{} / {}", o.completed_leases, o.provider_fault_ends),
                or_dash(
                    &o.attributes
                        .iter()
                        .map(|a| format!("{}={}", a.key, a.value))
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                o.provider.clone(),
            ]
        })
        .collect();
    table(
        &[
            "OFFER",
            "PROVIDER",
            "MODEL",
            "GPUS",
            "LARGEST",
            "PRICE/GPU-H",
            "DURATION",
            "REGION",
            "BONDED",
            "UPTIME",
            "TIER",
            "DONE/FAULTS",
            "ATTRIBUTES",
            "PROVIDER KEY",
        ],
        &rows,
    )
}

/// The manifests the network now holds.
pub(super) fn manifests(held: &[RimReply], output: Output) -> String {
    if output == Output::Json {
        return pretty(&json!(
            held.iter()
                .map(|r| json!({
                    "chip": r.chip, "version": r.version, "measurements": r.measurements,
                }))
                .collect::<Vec<_>>()
        ));
    }
    let rows: Vec<Vec<String>> = held
        .iter()
        .map(|r| {
            vec![
                r.chip.clone(),
                r.version.clone(),
                r.measurements.to_string(),
            ]
        })
        .collect();
    table(&["CHIP", "VERSION", "MEASUREMENTS"], &rows)
}

pub(super) fn stake(reply: &StakeReply, output: Output) -> String {
    let covers = reply
        .covered_gpus
        .map_or_else(|| "any (no bond asked)".to_string(), |c| c.to_string());
    if output == Output::Json {
        return pretty(&json!({
            "denomination": reply.denomination,
            "bonded": units(&reply.bonded),
            "coveredGpus": reply.covered_gpus,
            "committedGpus": reply.committed_gpus,
            "unbonding": reply.unbonding.iter().map(|u| json!({"amount": units(&u.amount), "releaseAt": u.release_at})).collect::<Vec<_>>(),
            "slashes": reply.slashes.iter().map(|s| json!({
                "leaseId": s.lease_id, "kind": s.kind, "amount": units(&s.amount),
                "at": s.at, "buyer": s.buyer, "evidence": s.evidence,
            })).collect::<Vec<_>>(),
        }));
    }
    let mut text = table(
        &["DENOMINATION", "BONDED", "COVERS GPUS", "COMMITTED GPUS"],
        &[vec![
            reply.denomination.clone(),
            units(&reply.bonded),
            covers,
            reply.committed_gpus.to_string(),
        ]],
    );
    if !reply.unbonding.is_empty() {
        let rows: Vec<Vec<String>> = reply
            .unbonding
            .iter()
            .map(|u| vec![units(&u.amount), when(u.release_at)])
            .collect();
        text.push('\n');
        text.push_str(&table(&["UNBONDING", "RELEASED AT"], &rows));
    }
    if !reply.slashes.is_empty() {
        let rows: Vec<Vec<String>> = reply
            .slashes
            .iter()
            .map(|s| {
                vec![
                    s.lease_id.clone(),
                    s.kind.clone(),
                    units(&s.amount),
                    when(s.at),
                    s.evidence.clone(),
                ]
            })
            .collect();
        text.push('\n');
        text.push_str(&table(
            &["SLASHED LEASE", "KIND", "AMOUNT", "AT", "EVIDENCE"],
            &rows,
        ));
    }
    text
}

fn proposal_json(p: &ProposalView) -> Value {
    json!({
        "id": p.id, "proposer": p.proposer,
        "changes": p.changes.iter().map(|c| json!({"name": c.name, "value": c.value})).collect::<Vec<_>>(),
        "deposit": units(&p.deposit), "submittedHeight": p.submitted_height,
        "votingEndHeight": p.voting_end_height, "effectiveHeight": p.effective_height,
        "status": p.status, "outcome": p.outcome, "yes": units(&p.yes), "no": units(&p.no),
    })
}

pub(super) fn proposals(proposals: &[ProposalView], output: Output) -> String {
    if output == Output::Json {
        return pretty(&Value::Array(proposals.iter().map(proposal_json).collect()));
    }
    let rows: Vec<Vec<String>> = proposals
        .iter()
        .map(|p| {
            let changes: Vec<String> = p
                .changes
                .iter()
                .map(|c| format!("{}={}", c.name, c.value))
                .collect();
            vec![
                p.id.to_string(),
                p.status.clone(),
                changes.join(" "),
                format!("{} to {}", p.submitted_height, p.voting_end_height),
                p.effective_height.to_string(),
                units(&p.yes),
                units(&p.no),
                or_dash(&p.outcome),
            ]
        })
        .collect();
    table(
        &[
            "PROPOSAL",
            "STATUS",
            "CHANGES",
            "VOTE",
            "EFFECTIVE",
            "YES",
            "NO",
            "OUTCOME",
        ],
        &rows,
    )
}

pub(super) fn params(reply: &ParamsReply, output: Output) -> String {
    if output == Output::Json {
        return pretty(&json!({
            "height": reply.height,
            "params": reply.params.iter().map(|p| (p.name.clone(), Value::from(p.value.clone()))).collect::<serde_json::Map<_, _>>(),
            "proposals": reply.proposals.iter().map(proposal_json).collect::<Vec<_>>(),
        }));
    }
    let rows: Vec<Vec<String>> = reply
        .params
        .iter()
        .map(|p| vec![p.name.clone(), p.value.clone()])
        .collect();
    let mut text = format!("Height: {}\n", reply.height);
    text.push_str(&table(&["PARAMETER", "VALUE"], &rows));
    if !reply.proposals.is_empty() {
        text.push('\n');
        text.push_str(&proposals(&reply.proposals, Output::Table));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::proto::AccessUsage;

    const UNIT: &str = "000000000000000000";

    fn atto(whole: &str) -> String {
        format!("{whole}{UNIT}")
    }

    #[test]
    fn tables_align_their_columns_and_trim_line_ends() {
        let text = table(
            &["ORDER", "STATE", "REASON"],
            &[
                vec!["a1".into(), "matched".into(), String::new()],
                vec!["b22222".into(), "ended".into(), "done".into()],
            ],
        );
        assert_eq!(
            text,
            "ORDER   STATE    REASON\na1      matched\nb22222  ended    done\n"
        );
    }

    #[test]
    fn slices_show_their_profile_and_whole_gpus_a_number() {
        assert_eq!(gpus_of(7, "nvidia.com/mig-1g.10gb"), "7 × mig-1g.10gb");
        assert_eq!(gpus_of(8, "nvidia.com/gpu"), "8");
        assert_eq!(gpus_of(8, ""), "8");
    }

    #[test]
    fn times_and_lengths_read_as_people_write_them() {
        assert_eq!(when(1_796_169_601), "2026-12-02 00:00:01 UTC");
        assert_eq!(when(0), "-");
        assert_eq!(span(3600), "1h");
        assert_eq!(span(5400), "1h 30m");
        assert_eq!(span(45), "45s");
        assert_eq!(span(0), "0s");
    }

    #[test]
    fn json_output_is_one_document_with_amounts_in_whole_units() {
        let order = OrderView {
            order_id: "o1".into(),
            state: OrderState::Matched as i32,
            charged: "1500000000000000000".into(),
            ..Default::default()
        };
        let text = orders(&[order], Output::Json);
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed[0]["state"], "matched");
        assert_eq!(parsed[0]["charged"], "1.5");
        assert!(text.ends_with("}\n]\n"), "{text}");
    }

    /// A rejected order has no price; its row shows the most it asked to pay instead of nothing.
    #[test]
    fn rejected_rows_show_the_price_asked() {
        let rejected = OrderView {
            order_id: "r".into(),
            state: OrderState::Rejected as i32,
            max_price_per_gpu_hour: atto("2"),
            denomination: "USDC".into(),
            ..Default::default()
        };
        let text = orders(&[rejected], Output::Table);
        assert!(text.lines().nth(1).unwrap().contains("≤ 2 USDC"), "{text}");
    }

    fn ended(fault: &str) -> OrderView {
        OrderView {
            order_id: "0123".into(),
            state: OrderState::Ended as i32,
            reason: "Expired at its end; no fault".into(),
            gpus: 2,
            resource_name: "nvidia.com/gpu".into(),
            duration_seconds: 3600,
            max_price_per_gpu_hour: atto("3"),
            price_per_gpu_hour: "2500000000000000000".into(),
            denomination: "USDC".into(),
            held: atto("5"),
            charged: atto("5"),
            refunded: "0".into(),
            image: "ghcr.io/acme/train:1".into(),
            created_at: 1_796_169_600,
            updated_at: 1_796_173_201,
            lease_id: "abcd".into(),
            offer_id: "key/h100".into(),
            lease: Some(LeaseView {
                lease_id: "abcd".into(),
                provider: "Key1".into(),
                provider_name: "acme".into(),
                region: "eu-west".into(),
                node_block: 3,
                state: "ended".into(),
                matched_at: 1_796_169_600,
                accepted_at: 1_796_169_601,
                started_at: 1_796_169_605,
                ended_at: 1_796_173_201,
                receipts: 60,
                metered_gpu_seconds: 7200,
                energy_joules: 2_520_000,
                utilization_percent: Some(73),
                charged: atto("5"),
                trust_tier: "software-attested".into(),
                end_phase: "Expired".into(),
                end_reason: "Expired".into(),
                fault: fault.into(),
                access: Some(AccessUsage {
                    bytes_to_workload: 4_096,
                    bytes_from_workload: 1_048_576,
                    connections: 12,
                    log_streams: 1,
                }),
            }),
            ..Default::default()
        }
    }

    /// The detail view shows everything a buyer asks about a lease, readably.
    #[test]
    fn the_detail_view_shows_where_how_far_what_it_cost_and_how_it_was_verified() {
        let text = order_detail(&ended("none"), Output::Table);
        for line in [
            "Order:        0123",
            "State:        ended",
            "Reason:       Expired at its end; no fault",
            "Asked:        2 nvidia.com/gpu, any model, for 1h, at most 3 USDC per GPU-hour",
            "Created:      2026-12-02 00:00:00 UTC",
            "Price:        2.5 USDC per GPU-hour",
            "Hold:         5 USDC held, 5 USDC charged, 0 USDC refunded",
            "Lease:        abcd (ended)",
            "Provider:     acme (Key1)",
            "Region:       eu-west",
            "Node:         block 3 of the offer",
            "Ends by:      2026-12-02 01:00:01 UTC",
            "Started:      2026-12-02 00:00:05 UTC",
            "Usage:        60 receipts, 7200 GPU-seconds metered, 2520000 J, 73% mean utilization",
            "Access:       12 connections, 1 log stream; 4096 bytes to the workload, 1048576 back",
            "Paid so far:  5 USDC",
            "Verification: software-attested",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing from\n{text}"
            );
        }
        let parsed: Value =
            serde_json::from_str(&order_detail(&ended("none"), Output::Json)).unwrap();
        assert_eq!(parsed["lease"]["trustTier"], "software-attested");
        assert_eq!(parsed["lease"]["receipts"], 60);
        assert_eq!(parsed["lease"]["access"]["bytesFromWorkload"], 1_048_576);
    }

    #[test]
    fn an_order_fails_when_its_lease_ended_by_a_fault_not_the_buyers() {
        assert_eq!(outcome(&ended("none")), Outcome::Fine);
        assert_eq!(outcome(&ended("tenant")), Outcome::Fine);
        assert_eq!(outcome(&ended("provider")), Outcome::Failed);
        assert_eq!(outcome(&ended("network")), Outcome::Failed);
        let rejected = OrderView {
            state: OrderState::Rejected as i32,
            ..Default::default()
        };
        assert_eq!(outcome(&rejected), Outcome::Rejected);
        assert!(is_final(&rejected));
        let leased = OrderView {
            state: OrderState::Leased as i32,
            ..Default::default()
        };
        assert_eq!(outcome(&leased), Outcome::Fine);
        assert!(!is_final(&leased));
    }
}

//! The buyer's input, checked before anything is sent: flag values, the order body with each
//! mistake named as its flag, and ids given as prefixes — pure.

use crate::wire::amount::from_decimal_units;
use crate::wire::proto::{Attribute, EnvVar, OrderBody, OrderView, Workload};
use crate::wire::{Rejection, validate};

use super::SubmitArgs;

/// `--gpus`: a positive whole number (a negative one gets this error, not clap's `-- -1` tip).
pub(super) fn count(text: &str) -> Result<u32, String> {
    match text.parse::<i64>() {
        Ok(n) if n > 0 => u32::try_from(n).map_err(|_| format!("{n} is too many")),
        Ok(_) => Err("must be a positive whole number, such as 1 or 8".into()),
        Err(_) => Err("must be a whole number, such as 1 or 8".into()),
    }
}

/// `--hours`: a positive number of hours, such as 1 or 0.5, as whole seconds.
pub(super) fn hours(text: &str) -> Result<u64, String> {
    match text.parse::<f64>() {
        Ok(h) if h.is_finite() && h > 0.0 && h * 3600.0 < u64::MAX as f64 => {
            Ok((h * 3600.0).round() as u64)
        }
        _ => Err("must be a positive number of hours, such as 1 or 0.5".into()),
    }
}

/// `--seconds`: a positive whole number of seconds.
pub(super) fn seconds(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(s) if s > 0 => Ok(s),
        _ => Err("must be a positive whole number of seconds, such as 3600".into()),
    }
}

/// `--min-uptime`: a percentage with at most two decimals, such as 99.5, as basis points.
pub(super) fn percent(text: &str) -> Result<u32, String> {
    let rule = || "must be a percentage from 0 to 100 with at most two decimals, such as 99.5";
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (text.contains('.') && !digits(fraction)) || fraction.len() > 2 {
        return Err(rule().into());
    }
    let whole: u32 = whole.parse().map_err(|_| rule())?;
    let fraction: u32 = format!("{fraction:0<2}").parse().map_err(|_| rule())?;
    match whole.checked_mul(100).and_then(|w| w.checked_add(fraction)) {
        Some(bp) if bp <= 10_000 => Ok(bp),
        _ => Err(rule().into()),
    }
}

/// A time (RFC 3339, such as 2026-12-03T18:00:00Z) or a length (`90s`, `30m`, `2h`, `1d`):
/// `--wait-until` (from now on) and `logs --since` (back from now).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeOrLength {
    At(i64),
    For(i64),
}

impl TimeOrLength {
    /// Unix seconds, a length after `now`.
    pub(super) fn after(self, now: i64) -> i64 {
        match self {
            TimeOrLength::At(t) => t,
            TimeOrLength::For(s) => now.saturating_add(s),
        }
    }

    /// Unix seconds, a length before `now`.
    pub(super) fn before(self, now: i64) -> i64 {
        match self {
            TimeOrLength::At(t) => t,
            TimeOrLength::For(s) => now.saturating_sub(s),
        }
    }
}

pub(super) fn time_or_length(text: &str) -> Result<TimeOrLength, String> {
    if let Ok(t) = text.parse::<jiff::Timestamp>() {
        return Ok(TimeOrLength::At(t.as_second()));
    }
    let unit = |u: &str| match u {
        "s" => Some(1),
        "m" => Some(60),
        "h" => Some(3600),
        "d" => Some(86_400),
        _ => None,
    };
    // The last character is the unit, wherever its bytes start.
    let split = text.char_indices().last().map_or(0, |(at, _)| at);
    match (text[..split].parse::<i64>(), unit(&text[split..])) {
        (Ok(n), Some(u)) if n > 0 => Ok(TimeOrLength::For(n.saturating_mul(u))),
        _ => Err(
            "must be a time such as 2026-12-03T18:00:00Z, or a length such as 30m, 2h or 1d".into(),
        ),
    }
}

/// `NAME=VALUE` for `--env` and `--attribute`.
/// A manifest file's bytes, refused before anything is sent when it cannot be one of NVIDIA's.
pub(super) fn manifest(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use crate::attestation::rim::MAX_RIM_BYTES;
    let bytes =
        std::fs::read(path).map_err(|e| format!("files: cannot read {}: {e}", path.display()))?;
    if bytes.len() > MAX_RIM_BYTES {
        return Err(format!(
            "files: {} is {} bytes, over a manifest's limit of {MAX_RIM_BYTES}",
            path.display(),
            bytes.len()
        ));
    }
    Ok(bytes)
}

pub(super) fn pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))
}

/// The flag a field of the order body comes from, so that a mistake is named as the buyer typed
/// it (`--gpus`, not `order.gpus`).
fn flag_of(field: &str) -> String {
    let flag = match field {
        "order.gpus" => "--gpus",
        "order.resourceName" => "--resource",
        "order.model" => "--model",
        "order.durationSeconds" => "--hours/--seconds",
        "order.maxPricePerGpuHour" => "--max-price",
        "order.denomination" => "--denomination",
        "order.region" => "--region",
        "order.provider" => "--provider",
        "order.minUptimeBasisPoints" => "--min-uptime",
        "order.minTrustTier" => "--min-tier",
        "order.waitUntil" => "--wait-until",
        "order.workload.image" => "--image",
        "order.workload.cpu" => "--cpu",
        "order.workload.memory" => "--memory",
        "order.workload.command" | "order.workload.args" => "the command after --",
        f if f.starts_with("order.attributes") => "--attribute",
        f if f.starts_with("order.workload.env") => "--env",
        other => other,
    };
    flag.to_string()
}

/// The order the flags describe, checked by the same rules the network applies, each mistake
/// named as its flag.
pub(super) fn order_body(args: SubmitArgs) -> Result<OrderBody, String> {
    let duration_seconds = args
        .hours
        .or(args.seconds)
        .ok_or("--hours or --seconds: give the lease length")?;
    let max_price =
        from_decimal_units("--max-price", &args.max_price).map_err(|e| e.to_string())?;
    let (command, rest) = match args.command.split_first() {
        Some((first, rest)) => (vec![first.clone()], rest.to_vec()),
        None => (vec![], vec![]),
    };
    let body = OrderBody {
        header: None,
        gpus: args.gpus,
        resource_name: args.resource,
        provider: args.provider,
        min_uptime_basis_points: args.min_uptime,
        min_trust_tier: args.min_tier.unwrap_or_default(),
        wait_until: args
            .wait_until
            .map_or(0, |w| w.after(jiff::Timestamp::now().as_second())),
        model: args.model,
        duration_seconds,
        max_price_per_gpu_hour: max_price.to_string(),
        denomination: args.denomination,
        region: args.region,
        attributes: args
            .attributes
            .into_iter()
            .map(|(key, value)| Attribute { key, value })
            .collect(),
        workload: Some(Workload {
            image: args.image,
            command,
            args: rest,
            env: args
                .env
                .into_iter()
                .map(|(name, value)| EnvVar { name, value })
                .collect(),
            cpu: args.cpu,
            memory: args.memory,
            ports: args.ports,
        }),
    };
    match validate::order(&body) {
        Ok(_) => Ok(body),
        Err(Rejection::Invalid { field, rule }) => Err(format!("{}: {rule}", flag_of(&field))),
        Err(other) => Err(other.to_string()),
    }
}

/// Order ids are 32 hex digits: one that long is used as given, without listing the orders.
const ORDER_ID_LEN: usize = 32;

/// Whether `given` is a whole order id, which needs no lookup.
pub(super) fn is_whole_order_id(given: &str) -> bool {
    given.len() == ORDER_ID_LEN && given.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The order `given` names: an order id or a lease id, whole or a unique prefix, among the
/// buyer's `orders`.
pub(super) fn resolve_id(given: &str, orders: &[OrderView]) -> Result<String, String> {
    if given.is_empty() || !given.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{given:?} is not an order or lease id (hex digits, as `gpubridge order list` shows)"
        ));
    }
    let given = given.to_ascii_lowercase();
    let matches: Vec<&OrderView> = orders
        .iter()
        .filter(|o| {
            o.order_id.starts_with(&given)
                || (!o.lease_id.is_empty() && o.lease_id.starts_with(&given))
        })
        .collect();
    match matches.as_slice() {
        [] => Err(format!("no order or lease of yours starts with {given}")),
        [one] => Ok(one.order_id.clone()),
        several => Err(format!(
            "{given} could be any of {} orders ({}) — give more of the id",
            several.len(),
            several
                .iter()
                .map(|o| o.order_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_get_plain_errors_naming_the_rule() {
        assert_eq!(count("8"), Ok(8));
        assert_eq!(
            count("-1"),
            Err("must be a positive whole number, such as 1 or 8".into())
        );
        assert_eq!(count("0"), count("-1"));
        assert!(count("two").unwrap_err().contains("whole number"));
        assert_eq!(hours("0.5"), Ok(1800));
        assert_eq!(hours("1"), Ok(3600));
        for bad in ["-1", "0", "NaN", "inf", "x"] {
            assert!(hours(bad).is_err(), "{bad}");
        }
        assert_eq!(seconds("60"), Ok(60));
        assert!(seconds("-60").is_err());
        assert_eq!(pair("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(pair("A").is_err());
        for (text, bp) in [("99.5", 9_950), ("100", 10_000), ("0", 0), ("99.95", 9_995)] {
            assert_eq!(percent(text), Ok(bp), "{text}");
        }
        for bad in [
            "100.01",
            "99.555",
            "-1",
            "",
            ".5",
            "5.",
            "x",
            "1e2",
            "4294967296",
        ] {
            assert!(percent(bad).unwrap_err().contains("from 0 to 100"), "{bad}");
        }
    }

    fn submit() -> SubmitArgs {
        SubmitArgs {
            gpus: 1,
            resource: "nvidia.com/gpu".into(),
            model: String::new(),
            hours: Some(3600),
            seconds: None,
            max_price: "3".into(),
            denomination: "USDC".into(),
            image: "ghcr.io/acme/train:1".into(),
            cpu: "4".into(),
            memory: "16Gi".into(),
            env: vec![],
            ports: vec![],
            region: String::new(),
            provider: String::new(),
            min_uptime: 0,
            min_tier: None,
            wait_until: None,
            attributes: vec![],
            command: vec!["python".into(), "train.py".into()],
        }
    }

    /// Each mistake the network would refuse is caught first and named as the flag.
    #[test]
    fn each_mistake_is_named_as_its_flag() {
        let body = order_body(submit()).unwrap();
        assert_eq!(body.duration_seconds, 3600);
        assert_eq!(body.max_price_per_gpu_hour, "3000000000000000000");
        let workload = body.workload.unwrap();
        assert_eq!(
            (workload.command, workload.args),
            (vec!["python".to_string()], vec!["train.py".to_string()])
        );

        type Edit = fn(&mut SubmitArgs);
        let cases: Vec<(Edit, &str)> = vec![
            (|a| a.gpus = 65, "--gpus: must be between 1 and 64"),
            (|a| a.resource = "nvidia.com/tpu".into(), "--resource: "),
            (|a| a.model = "a b".into(), "--model: "),
            (
                |a| a.hours = Some(30),
                "--hours/--seconds: must be between 60 and",
            ),
            (|a| a.max_price = "-1".into(), "--max-price: "),
            (|a| a.max_price = "0".into(), "--max-price: "),
            (|a| a.denomination = "usdc".into(), "--denomination: "),
            (|a| a.region = "EU".into(), "--region: "),
            (|a| a.image = "train:1".into(), "--image: "),
            (|a| a.cpu = "lots".into(), "--cpu: "),
            (|a| a.memory = "16 GB".into(), "--memory: "),
            (|a| a.env = vec![("1BAD".into(), "x".into())], "--env: "),
            (
                |a| a.attributes = vec![("".into(), "x".into())],
                "--attribute: ",
            ),
            (
                |a| a.provider = "acme".into(),
                "--provider: must be a provider's",
            ),
        ];
        for (edit, says) in cases {
            let mut args = submit();
            edit(&mut args);
            let error = order_body(args).unwrap_err();
            assert!(error.starts_with(says), "{says:?}: {error}");
            assert!(!error.contains("order."), "named as the flag: {error}");
        }
    }

    fn order(order_id: &str, lease_id: &str) -> OrderView {
        OrderView {
            order_id: order_id.into(),
            lease_id: lease_id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn ids_resolve_by_unique_prefix_of_an_order_or_its_lease() {
        let orders = [
            order("aa11", "ff01"),
            order("aa22", ""),
            order("bb33", "ff02"),
        ];
        assert_eq!(resolve_id("aa1", &orders), Ok("aa11".into()));
        assert_eq!(resolve_id("AA2", &orders), Ok("aa22".into()));
        assert_eq!(resolve_id("ff02", &orders), Ok("bb33".into()), "a lease id");
        let ambiguous = resolve_id("aa", &orders).unwrap_err();
        assert!(
            ambiguous.contains("any of 2 orders (aa11, aa22)"),
            "{ambiguous}"
        );
        assert!(resolve_id("ff", &orders).is_err(), "two leases");
        assert_eq!(
            resolve_id("cc", &orders),
            Err("no order or lease of yours starts with cc".into())
        );
        assert!(resolve_id("", &orders).is_err());
        assert!(
            resolve_id("zz", &orders)
                .unwrap_err()
                .contains("not an order or lease id")
        );
        assert!(is_whole_order_id(&"a".repeat(32)));
        assert!(!is_whole_order_id(&"a".repeat(24)));
    }
}

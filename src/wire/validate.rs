//! Field rules of every network body, shared by the network node (on arrival) and the operator
//! (on a lease's embedded order). Each error names the field and the rule. Pure.

use crate::wire::Rejection;
use crate::wire::amount::{self, Amount};
use crate::wire::proto::{Attribute, LeaseBody, OfferBody, OrderBody, Workload};

pub const MAX_GPUS_PER_LEASE: u32 = 64;
pub const MIN_DURATION_SECONDS: u64 = 60;
pub const MAX_DURATION_SECONDS: u64 = 31_536_000;
/// An offer lives at most this long without being published again.
pub const MAX_OFFER_TTL_SECONDS: i64 = 3600;
pub const MAX_REASON_CHARS: usize = 1024;
/// The longest image reference, with or without a digest.
pub const MAX_IMAGE_CHARS: usize = 512;

fn invalid<T>(field: &str, rule: &str) -> Result<T, Rejection> {
    Err(Rejection::invalid(field, rule))
}

fn bounded(field: &str, text: &str, min: usize, max: usize) -> Result<(), Rejection> {
    let chars = text.chars().count();
    if chars < min || chars > max {
        return invalid(field, &format!("must be {min} to {max} characters"));
    }
    Ok(())
}

fn charset(
    field: &str,
    text: &str,
    allowed: fn(char) -> bool,
    rule: &str,
) -> Result<(), Rejection> {
    if text.chars().all(allowed) {
        Ok(())
    } else {
        invalid(field, rule)
    }
}

/// A display name: 1–63 letters, digits, spaces, dots, dashes or underscores.
pub fn name(field: &str, text: &str) -> Result<(), Rejection> {
    bounded(field, text, 1, 63)?;
    charset(
        field,
        text,
        |c| c.is_ascii_alphanumeric() || " ._-".contains(c),
        "may contain only letters, digits, spaces, '.', '-' and '_'",
    )
}

/// A region: empty, or up to 63 lowercase letters, digits and dashes.
pub fn region(field: &str, text: &str) -> Result<(), Rejection> {
    bounded(field, text, 0, 63)?;
    charset(
        field,
        text,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-',
        "may contain only lowercase letters, digits and '-'",
    )
}

/// A denomination such as "USDC": 1–16 letters or digits.
pub fn denomination(field: &str, text: &str) -> Result<(), Rejection> {
    bounded(field, text, 1, 16)?;
    charset(
        field,
        text,
        |c| c.is_ascii_uppercase() || c.is_ascii_digit(),
        "may contain only uppercase letters and digits, such as USDC",
    )
}

/// A GPU model label value: up to 128 label characters.
pub fn model(field: &str, text: &str) -> Result<(), Rejection> {
    bounded(field, text, 0, 128)?;
    charset(
        field,
        text,
        |c| c.is_ascii_alphanumeric() || "._-".contains(c),
        "may contain only letters, digits, '.', '-' and '_'",
    )
}

/// The offer attribute that promises re-probes: the operator publishes `reprobed=true` for an
/// offer of DRA devices, whose sidecars share the workload's GPUs and can probe them again while
/// it runs, and `reprobed=false` otherwise. A buyer requires it as any attribute.
pub const REPROBED: (&str, &str) = ("reprobed", "true");

/// [`REPROBED`] as offers and orders carry attributes.
pub fn reprobed_attribute() -> (String, String) {
    (REPROBED.0.to_string(), REPROBED.1.to_string())
}

/// Whole GPUs are sold as this resource; MIG slices as `nvidia.com/mig-<profile>`.
pub const WHOLE_GPU: &str = "nvidia.com/gpu";

/// A GPU resource on the network: whole GPUs, or one named MIG profile (`nvidia.com/mig-1g.10gb`).
pub fn gpu_resource(field: &str, text: &str) -> Result<(), Rejection> {
    let mig_profile = text.strip_prefix("nvidia.com/mig-").is_some_and(|profile| {
        !profile.is_empty()
            && profile
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.')
    });
    if (text != WHOLE_GPU && !mig_profile) || text.len() > 63 {
        return invalid(
            field,
            "must be nvidia.com/gpu (whole GPUs) or a MIG profile such as nvidia.com/mig-1g.10gb",
        );
    }
    Ok(())
}

/// The resource an order asks for: whole GPUs unless it names a MIG profile.
pub fn ordered_resource(order: &OrderBody) -> &str {
    if order.resource_name.is_empty() {
        WHOLE_GPU
    } else {
        &order.resource_name
    }
}

/// An id made by the network: 1–52 lowercase letters and digits, so it names a ComputeLease.
pub fn object_id(field: &str, text: &str) -> Result<(), Rejection> {
    bounded(field, text, 1, 52)?;
    charset(
        field,
        text,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit(),
        "may contain only lowercase letters and digits",
    )
}

/// A Kubernetes object name (DNS subdomain).
pub fn dns_subdomain(field: &str, text: &str) -> Result<(), Rejection> {
    bounded(field, text, 1, 253)?;
    let ok_chars = text
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    let ok_ends = text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !(ok_chars && ok_ends) {
        return invalid(
            field,
            "must be lowercase letters, digits, '-' and '.', starting and ending with a letter or digit",
        );
    }
    Ok(())
}

fn attributes(field: &str, list: &[Attribute]) -> Result<Vec<(String, String)>, Rejection> {
    if list.len() > 32 {
        return invalid(field, "must have at most 32 entries");
    }
    list.iter()
        .enumerate()
        .map(|(i, a)| {
            bounded(&format!("{field}[{i}].key"), &a.key, 1, 63)?;
            bounded(&format!("{field}[{i}].value"), &a.value, 0, 253)?;
            Ok((a.key.clone(), a.value.clone()))
        })
        .collect()
}

fn duration(field: &str, seconds: u64) -> Result<(), Rejection> {
    if !(MIN_DURATION_SECONDS..=MAX_DURATION_SECONDS).contains(&seconds) {
        return invalid(
            field,
            &format!("must be between {MIN_DURATION_SECONDS} and {MAX_DURATION_SECONDS} seconds"),
        );
    }
    Ok(())
}

fn gpus(field: &str, count: u32) -> Result<(), Rejection> {
    if !(1..=MAX_GPUS_PER_LEASE).contains(&count) {
        return invalid(
            field,
            &format!("must be between 1 and {MAX_GPUS_PER_LEASE}"),
        );
    }
    Ok(())
}

/// Whether an image reference names its registry host, as lease images must.
pub fn image(field: &str, text: &str) -> Result<(), Rejection> {
    bounded(field, text, 1, MAX_IMAGE_CHARS)?;
    let Some((host, rest)) = text.split_once('/') else {
        return invalid(
            field,
            "must name its registry host, for example ghcr.io/org/image:tag",
        );
    };
    let (host_name, port) = host.split_once(':').unwrap_or((host, ""));
    let host_ok = !host_name.is_empty()
        && host_name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && host_name.contains('.')
        && port.len() <= 5
        && port.chars().all(|c| c.is_ascii_digit());
    if !host_ok || rest.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return invalid(
            field,
            "must name its registry host, for example ghcr.io/org/image:tag",
        );
    }
    Ok(())
}

/// A positive Kubernetes quantity in plain form: digits, an optional fraction, an optional
/// suffix (m, k, M, G, T, P, E, Ki … Ei). The apiserver checks the rest when the pod is made.
fn quantity(field: &str, text: &str) -> Result<(), Rejection> {
    bounded(field, text, 1, 32)?;
    const SUFFIXES: [&str; 14] = [
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    let well_formed = !int_part.is_empty()
        && !number.ends_with('.')
        && frac_part.chars().all(|c| c.is_ascii_digit())
        && SUFFIXES.contains(&suffix);
    let positive = number.chars().any(|c| c.is_ascii_digit() && c != '0');
    if !(well_formed && positive) {
        return invalid(
            field,
            "must be a positive Kubernetes quantity such as 8 or 64Gi",
        );
    }
    Ok(())
}

fn workload(field: &str, w: Option<&Workload>) -> Result<(), Rejection> {
    let Some(w) = w else {
        return invalid(field, "is required");
    };
    image(&format!("{field}.image"), &w.image)?;
    if w.command.len() > 64 {
        return invalid(&format!("{field}.command"), "must have at most 64 entries");
    }
    if w.args.len() > 256 {
        return invalid(&format!("{field}.args"), "must have at most 256 entries");
    }
    for (i, arg) in w.command.iter().chain(&w.args).enumerate() {
        if arg.len() > 4096 {
            return invalid(
                &format!("{field}.command/args[{i}]"),
                "must be at most 4096 bytes",
            );
        }
    }
    if w.env.len() > 128 {
        return invalid(&format!("{field}.env"), "must have at most 128 entries");
    }
    for (i, var) in w.env.iter().enumerate() {
        let valid_name = !var.name.is_empty()
            && var.name.len() <= 128
            && var
                .name
                .starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && var
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return invalid(
                &format!("{field}.env[{i}].name"),
                "must be a C identifier of at most 128 characters",
            );
        }
        if var.value.len() > 32_768 {
            return invalid(
                &format!("{field}.env[{i}].value"),
                "must be at most 32768 bytes",
            );
        }
    }
    ports(&format!("{field}.ports"), &w.ports)?;
    quantity(&format!("{field}.cpu"), &w.cpu)?;
    quantity(&format!("{field}.memory"), &w.memory)
}

/// Most ports a workload declares (the ComputeLease's rule).
pub const MAX_PORTS: usize = 16;

/// TCP ports: at most [`MAX_PORTS`], each 1–65535, none twice.
pub fn ports(field: &str, ports: &[u32]) -> Result<(), Rejection> {
    if ports.len() > MAX_PORTS {
        return invalid(field, &format!("must have at most {MAX_PORTS} entries"));
    }
    for (i, port) in ports.iter().enumerate() {
        if !(1..=65535).contains(port) {
            return invalid(&format!("{field}[{i}]"), "must be a TCP port, 1 to 65535");
        }
        if ports[..i].contains(port) {
            return invalid(
                &format!("{field}[{i}]"),
                &format!("port {port} is listed twice"),
            );
        }
    }
    Ok(())
}

/// An order's terms, checked.
#[derive(Debug)]
pub struct CheckedOrder {
    pub max_price: Amount,
    pub attributes: Vec<(String, String)>,
}

pub fn order(body: &OrderBody) -> Result<CheckedOrder, Rejection> {
    gpus("order.gpus", body.gpus)?;
    if !body.resource_name.is_empty() {
        gpu_resource("order.resourceName", &body.resource_name)?;
    }
    model("order.model", &body.model)?;
    duration("order.durationSeconds", body.duration_seconds)?;
    let max_price =
        amount::parse_positive("order.maxPricePerGpuHour", &body.max_price_per_gpu_hour)?;
    denomination("order.denomination", &body.denomination)?;
    region("order.region", &body.region)?;
    let attributes = attributes("order.attributes", &body.attributes)?;
    workload("order.workload", body.workload.as_ref())?;
    if !body.provider.is_empty() && crate::identity::public_key_from_base58(&body.provider).is_err()
    {
        return invalid(
            "order.provider",
            "must be a provider's base58 public key, or empty",
        );
    }
    if body.min_uptime_basis_points > 10_000 {
        return invalid(
            "order.minUptimeBasisPoints",
            "must be at most 10000 (100 %)",
        );
    }
    Ok(CheckedOrder {
        max_price,
        attributes,
    })
}

/// An offer's terms, checked against the receiver's clock.
#[derive(Debug)]
pub struct CheckedOffer {
    pub price: Amount,
    pub attributes: Vec<(String, String)>,
}

pub fn offer(body: &OfferBody, now: i64) -> Result<CheckedOffer, Rejection> {
    dns_subdomain("offer.offerName", &body.offer_name)?;
    model("offer.model", &body.model)?;
    gpu_resource("offer.resourceName", &body.resource_name)?;
    if body.free_blocks.len() > 4096 {
        return invalid(
            "offer.freeBlocks",
            "must have at most 4096 entries (one per node)",
        );
    }
    if body.free_blocks.iter().any(|b| *b > 1024) {
        return invalid("offer.freeBlocks", "each entry must be at most 1024 GPUs");
    }
    let price = amount::parse_positive("offer.pricePerGpuHour", &body.price_per_gpu_hour)?;
    denomination("offer.denomination", &body.denomination)?;
    duration("offer.minDurationSeconds", body.min_duration_seconds)?;
    duration("offer.maxDurationSeconds", body.max_duration_seconds)?;
    if body.min_duration_seconds > body.max_duration_seconds {
        return invalid(
            "offer.minDurationSeconds",
            "must not exceed maxDurationSeconds",
        );
    }
    gpus("offer.maxGpusPerLease", body.max_gpus_per_lease)?;
    if body.allowed_registries.len() > 64 {
        return invalid("offer.allowedRegistries", "must have at most 64 entries");
    }
    for (i, registry) in body.allowed_registries.iter().enumerate() {
        bounded(&format!("offer.allowedRegistries[{i}]"), registry, 1, 253)?;
    }
    region("offer.region", &body.region)?;
    let attributes = attributes("offer.attributes", &body.attributes)?;
    if body.expires_at <= now || body.expires_at > now + MAX_OFFER_TTL_SECONDS {
        return invalid(
            "offer.expiresAt",
            &format!("must be in the future and at most {MAX_OFFER_TTL_SECONDS} s ahead"),
        );
    }
    Ok(CheckedOffer { price, attributes })
}

/// A lease's own fields (its signatures are checked by the caller).
pub fn lease(body: &LeaseBody) -> Result<Amount, Rejection> {
    object_id("lease.leaseId", &body.lease_id)?;
    dns_subdomain("lease.offerName", &body.offer_name)?;
    gpus("lease.gpus", body.gpus)?;
    duration("lease.durationSeconds", body.duration_seconds)?;
    denomination("lease.denomination", &body.denomination)?;
    if body.order.is_none() {
        return invalid("lease.order", "is required");
    }
    amount::parse_positive("lease.pricePerGpuHour", &body.price_per_gpu_hour)
}

/// A reason text a party will read.
pub fn reason(field: &str, text: &str) -> Result<(), Rejection> {
    bounded(field, text, 0, MAX_REASON_CHARS)?;
    charset(
        field,
        text,
        |c| !c.is_control(),
        "must not contain control characters",
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::proto::EnvVar;

    pub(crate) fn valid_order() -> OrderBody {
        OrderBody {
            header: None,
            gpus: 2,
            model: "NVIDIA-H100-80GB-HBM3".into(),
            duration_seconds: 3600,
            max_price_per_gpu_hour: "3000000000000000000".into(),
            denomination: "USDC".into(),
            region: String::new(),
            attributes: vec![],
            resource_name: String::new(),
            provider: String::new(),
            min_uptime_basis_points: 0,
            wait_until: 0,
            min_trust_tier: String::new(),
            workload: Some(Workload {
                image: "ghcr.io/acme/train:1.2".into(),
                command: vec!["python".into()],
                args: vec![],
                env: vec![EnvVar {
                    name: "EPOCHS".into(),
                    value: "3".into(),
                }],
                cpu: "8".into(),
                memory: "64Gi".into(),
                ports: vec![8000],
            }),
        }
    }

    #[test]
    fn a_valid_order_passes_and_each_rule_names_its_field() {
        assert!(order(&valid_order()).is_ok());
        for resource in ["", "nvidia.com/gpu", "nvidia.com/mig-1g.10gb"] {
            let mut o = valid_order();
            o.resource_name = resource.into();
            assert!(order(&o).is_ok(), "{resource:?}");
            assert_eq!(
                ordered_resource(&o),
                if resource.is_empty() {
                    WHOLE_GPU
                } else {
                    resource
                }
            );
        }
        type Edit = fn(&mut OrderBody);
        let cases: Vec<(Edit, &str)> = vec![
            (|o| o.gpus = 0, "order.gpus"),
            (|o| o.gpus = 65, "order.gpus"),
            (
                |o| o.resource_name = "nvidia.com/gpus".into(),
                "order.resourceName",
            ),
            (
                |o| o.resource_name = "nvidia.com/mig-".into(),
                "order.resourceName",
            ),
            (
                |o| o.resource_name = "amd.com/gpu".into(),
                "order.resourceName",
            ),
            (|o| o.duration_seconds = 59, "order.durationSeconds"),
            (
                |o| o.max_price_per_gpu_hour = "0".into(),
                "order.maxPricePerGpuHour",
            ),
            (
                |o| o.max_price_per_gpu_hour = "1.5".into(),
                "order.maxPricePerGpuHour",
            ),
            (|o| o.denomination = String::new(), "order.denomination"),
            (|o| o.model = "a b".into(), "order.model"),
            (|o| o.region = "EU".into(), "order.region"),
            (|o| o.workload = None, "order.workload"),
            (
                |o| o.workload.as_mut().unwrap().image = "ubuntu".into(),
                "order.workload.image",
            ),
            (
                |o| o.workload.as_mut().unwrap().image = "localhost/x".into(),
                "order.workload.image",
            ),
            (
                |o| o.workload.as_mut().unwrap().cpu = "lots".into(),
                "order.workload.cpu",
            ),
            (
                |o| o.workload.as_mut().unwrap().memory = "0".into(),
                "order.workload.memory",
            ),
            (
                |o| o.workload.as_mut().unwrap().env[0].name = "1X".into(),
                "order.workload.env[0].name",
            ),
            (
                |o| o.workload.as_mut().unwrap().env[0].value = "x".repeat(40_000),
                "order.workload.env[0].value",
            ),
            (
                |o| o.workload.as_mut().unwrap().command = vec!["x".into(); 65],
                "order.workload.command",
            ),
            (
                |o| o.workload.as_mut().unwrap().ports = vec![0],
                "order.workload.ports[0]",
            ),
            (
                |o| o.workload.as_mut().unwrap().ports = vec![8000, 65_536],
                "order.workload.ports[1]",
            ),
            (
                |o| o.workload.as_mut().unwrap().ports = vec![80, 8000, 80],
                "order.workload.ports[2]",
            ),
            (
                |o| o.workload.as_mut().unwrap().ports = (1..=17).collect(),
                "order.workload.ports",
            ),
            (|o| o.provider = "not-a-key".into(), "order.provider"),
            (
                |o| o.min_uptime_basis_points = 10_001,
                "order.minUptimeBasisPoints",
            ),
        ];
        for (edit, field) in cases {
            let mut body = valid_order();
            edit(&mut body);
            let err = order(&body).unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("{field}: ")),
                "{field}: {err}"
            );
        }
    }

    #[test]
    fn images_must_name_a_registry_host() {
        for ok in [
            "ghcr.io/a/b:1",
            "registry.example.com:5000/x",
            "nvcr.io/nvidia/pytorch@sha256:abc",
        ] {
            assert!(image("i", ok).is_ok(), "{ok}");
        }
        for ok in ["8", "7500m", "64Gi", "0.5", "1.5Ti"] {
            assert!(quantity("q", ok).is_ok(), "{ok}");
        }
        for bad in ["", "0", "0Gi", "-1", "1.", ".5", "1GB", "1e3x", "lots"] {
            assert!(quantity("q", bad).is_err(), "{bad}");
        }
        for bad in [
            "ubuntu",
            "library/ubuntu",
            "ghcr.io/",
            "GHCR.io/a",
            "ghcr.io/a b",
            "/x",
            "host:99999999/x",
        ] {
            assert!(image("i", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_and_names() {
        assert!(object_id("id", "abc123").is_ok());
        for bad in ["", "ABC", "a-b", &"a".repeat(53)] {
            assert!(object_id("id", bad).is_err(), "{bad}");
        }
        assert!(dns_subdomain("n", "h100-public").is_ok());
        assert!(dns_subdomain("n", "-x").is_err());
        assert!(reason("r", "no capacity").is_ok());
        assert!(reason("r", "a\u{7}").is_err());
        assert!(name("n", "acme gpu farm").is_ok());
        assert!(name("n", "").is_err());
    }
}

//! Order matching (DESIGN §7): constraints first, then price, then time. Pure: the store hands
//! it the live offer book and commits what it decides.

use crate::admission::image_registry_allowed;
use crate::attestation::TrustTier;
use crate::capacity::blocks::best_fit;
use crate::wire::amount::Amount;

/// An offer as matching sees it: terms, and GPUs free per node after the leases already matched
/// against this publication of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BookOffer {
    pub offer_id: String,
    /// The provider's public key, base58.
    pub provider: String,
    /// Whole GPUs (`nvidia.com/gpu`) or a MIG profile.
    pub resource: String,
    pub model: String,
    pub region: String,
    pub attributes: Vec<(String, String)>,
    pub free_blocks: Vec<u32>,
    /// Atto units per GPU-hour.
    pub price: Amount,
    pub denomination: String,
    pub min_duration_seconds: u64,
    pub max_duration_seconds: u64,
    pub max_gpus_per_lease: u32,
    pub allowed_registries: Vec<String>,
    /// Publication order: earlier offers win ties on price.
    pub published_seq: u64,
    /// GPUs the provider's bond still covers for new leases; `None` when no bond is asked.
    pub bond_covers: Option<u64>,
    /// The provider's uptime over the network's window, basis points.
    pub uptime_basis_points: u32,
    /// The tier the provider's last verified evidence reached.
    pub trust_tier: TrustTier,
}

/// What an order asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderTerms {
    pub gpus: u32,
    /// Whole GPUs (`nvidia.com/gpu`) or a MIG profile: an order for one never takes the other.
    pub resource: String,
    pub model: String,
    pub duration_seconds: u64,
    pub max_price: Amount,
    pub denomination: String,
    pub region: String,
    pub attributes: Vec<(String, String)>,
    pub image: String,
    /// The provider the buyer names; any when empty.
    pub provider: String,
    /// The least provider uptime, basis points; 0 asks none.
    pub min_uptime_basis_points: u32,
    /// The least tier the provider's last verified evidence must have reached.
    pub min_trust_tier: TrustTier,
}

/// The chosen offer and the node-block the lease takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Match {
    pub offer: usize,
    pub block: usize,
}

/// Why an offer cannot take an order, in the order the constraints are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mismatch {
    Provider,
    Denomination,
    Resource,
    Model,
    Region,
    Uptime,
    TrustTier,
    Attributes,
    Duration,
    LeaseSize,
    Registry,
    Capacity,
    Bond,
    Price,
}

/// `value`, or `empty` in its place when it is empty.
fn or_when_empty<'a>(value: &'a str, empty: &'a str) -> &'a str {
    if value.is_empty() { empty } else { value }
}

impl Mismatch {
    /// What the offers failing on this constraint do, as (one offer, several offers).
    fn describe(self) -> (&'static str, &'static str) {
        match self {
            Mismatch::Provider => ("is another provider's", "are other providers'"),
            Mismatch::Denomination => (
                "sells in another denomination",
                "sell in another denomination",
            ),
            Mismatch::Resource => (
                "sells other GPUs (whole GPUs or another MIG profile)",
                "sell other GPUs (whole GPUs or another MIG profile)",
            ),
            Mismatch::Model => ("offers another GPU model", "offer other GPU models"),
            Mismatch::Region => ("is in another region", "are in other regions"),
            Mismatch::Uptime => (
                "is from a provider with less uptime than the order asks",
                "are from providers with less uptime than the order asks",
            ),
            Mismatch::TrustTier => (
                "is from a provider whose last evidence reached a lower trust tier",
                "are from providers whose last evidence reached a lower trust tier",
            ),
            Mismatch::Attributes => ("lacks a required attribute", "lack a required attribute"),
            Mismatch::Duration => ("does not allow this duration", "do not allow this duration"),
            Mismatch::LeaseSize => ("allows fewer GPUs per lease", "allow fewer GPUs per lease"),
            Mismatch::Registry => (
                "does not allow the image's registry",
                "do not allow the image's registry",
            ),
            Mismatch::Capacity => (
                "has no node with that many free GPUs",
                "have no node with that many free GPUs",
            ),
            Mismatch::Bond => (
                "is from a provider whose bond covers fewer GPUs",
                "are from providers whose bonds cover fewer GPUs",
            ),
            Mismatch::Price => (
                "costs more than the order's maximum price",
                "cost more than the order's maximum price",
            ),
        }
    }

    /// The bound the offers failing on this constraint set, which the buyer can order within:
    /// what they sell, the durations and lease sizes they allow, the most free GPUs on a node,
    /// the cheapest price. `None` for attributes, whose values offers do not publish here.
    fn bound(self, offers: &[&BookOffer]) -> Option<String> {
        let listed = |values: Vec<&str>| {
            let values: std::collections::BTreeSet<&str> = values.into_iter().collect();
            let shown: Vec<&str> = values.iter().copied().take(MAX_LISTED).collect();
            let more = if values.len() > MAX_LISTED {
                ", …"
            } else {
                ""
            };
            format!("on offer: {}{more}", shown.join(", "))
        };
        Some(match self {
            // Other providers' keys are not the buyer's business.
            Mismatch::Provider => return None,
            Mismatch::Denomination => {
                listed(offers.iter().map(|o| o.denomination.as_str()).collect())
            }
            Mismatch::Resource => listed(offers.iter().map(|o| o.resource.as_str()).collect()),
            // An offer without a model mixes models; one without a region names none.
            Mismatch::Model => listed(
                offers
                    .iter()
                    .map(|o| or_when_empty(&o.model, "mixed"))
                    .collect(),
            ),
            Mismatch::Region => listed(
                offers
                    .iter()
                    .map(|o| or_when_empty(&o.region, "none"))
                    .collect(),
            ),
            Mismatch::Uptime => {
                let best = offers.iter().map(|o| o.uptime_basis_points).max()?;
                format!("the best: {}.{:02} %", best / 100, best % 100)
            }
            Mismatch::TrustTier => {
                let best = offers.iter().map(|o| o.trust_tier).max()?;
                format!("the best: {}", best.as_str())
            }
            Mismatch::Attributes => return None,
            Mismatch::Duration => {
                let shortest = offers.iter().map(|o| o.min_duration_seconds).min()?;
                let longest = offers.iter().map(|o| o.max_duration_seconds).max()?;
                format!("allowed: {shortest} s to {longest} s")
            }
            Mismatch::LeaseSize => {
                let most = offers.iter().map(|o| o.max_gpus_per_lease).max()?;
                format!("at most {most} GPUs per lease")
            }
            Mismatch::Registry => listed(
                offers
                    .iter()
                    .flat_map(|o| o.allowed_registries.iter().map(String::as_str))
                    .collect(),
            )
            .replacen("on offer", "registries allowed", 1),
            Mismatch::Capacity => {
                let most = offers
                    .iter()
                    .flat_map(|o| o.free_blocks.iter().copied())
                    .max()
                    .unwrap_or(0);
                format!("the most free on one node: {most}")
            }
            Mismatch::Bond => {
                let most = offers.iter().filter_map(|o| o.bond_covers).max()?;
                format!("the most GPUs a bond still covers: {most}")
            }
            Mismatch::Price => {
                let cheapest = offers.iter().min_by_key(|o| o.price)?;
                format!(
                    "the cheapest asks {} {} per GPU-hour",
                    cheapest.price.to_decimal_units(),
                    cheapest.denomination
                )
            }
        })
    }
}

/// Values a refusal lists, at most.
const MAX_LISTED: usize = 5;

/// The offers that failed on one constraint: how many, and the bound they set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub mismatch: Mismatch,
    pub offers: usize,
    pub bound: Option<String>,
}

/// Why no offer took an order: for each constraint, how many offers failed on it and what they
/// allow, readable by the buyer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoMatch {
    pub offers: usize,
    pub refusals: Vec<Refusal>,
}

impl std::fmt::Display for NoMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.offers == 0 {
            return write!(f, "no offer matches: the offer book is empty");
        }
        if self.offers == 1 {
            write!(f, "no offer matches: the only offer")?;
        } else {
            write!(f, "no offer matches: of {} offers,", self.offers)?;
        }
        for (i, refusal) in self.refusals.iter().enumerate() {
            let sep = match i {
                0 => " ",
                _ if i + 1 == self.refusals.len() => " and ",
                _ => ", ",
            };
            let (one, several) = refusal.mismatch.describe();
            let count = match (self.offers, refusal.offers) {
                (1, _) => String::new(),
                (_, n) => format!("{n} "),
            };
            let verb = if refusal.offers == 1 { one } else { several };
            write!(f, "{sep}{count}{verb}")?;
            if let Some(bound) = &refusal.bound {
                write!(f, " ({bound})")?;
            }
        }
        Ok(())
    }
}

/// The first constraint `offer` fails for `order`, or `None` when it can take it.
pub fn mismatch(order: &OrderTerms, offer: &BookOffer) -> Option<Mismatch> {
    if !order.provider.is_empty() && offer.provider != order.provider {
        return Some(Mismatch::Provider);
    }
    if offer.denomination != order.denomination {
        return Some(Mismatch::Denomination);
    }
    if offer.resource != order.resource {
        return Some(Mismatch::Resource);
    }
    if !order.model.is_empty() && offer.model != order.model {
        return Some(Mismatch::Model);
    }
    if !order.region.is_empty() && offer.region != order.region {
        return Some(Mismatch::Region);
    }
    if offer.uptime_basis_points < order.min_uptime_basis_points {
        return Some(Mismatch::Uptime);
    }
    if offer.trust_tier < order.min_trust_tier {
        return Some(Mismatch::TrustTier);
    }
    if !order
        .attributes
        .iter()
        .all(|a| offer.attributes.contains(a))
    {
        return Some(Mismatch::Attributes);
    }
    if order.duration_seconds < offer.min_duration_seconds
        || order.duration_seconds > offer.max_duration_seconds
    {
        return Some(Mismatch::Duration);
    }
    if order.gpus > offer.max_gpus_per_lease {
        return Some(Mismatch::LeaseSize);
    }
    if !image_registry_allowed(&order.image, &offer.allowed_registries) {
        return Some(Mismatch::Registry);
    }
    if best_fit(&offer.free_blocks, order.gpus).is_none() {
        return Some(Mismatch::Capacity);
    }
    if offer.bond_covers.is_some_and(|c| u64::from(order.gpus) > c) {
        return Some(Mismatch::Bond);
    }
    if offer.price > order.max_price {
        return Some(Mismatch::Price);
    }
    None
}

/// Matches `order` against `book`: among offers that meet every constraint, the lowest price,
/// then the earliest published, then the smallest offer id.
pub fn best_offer(order: &OrderTerms, book: &[BookOffer]) -> Result<Match, NoMatch> {
    let mut failures: Vec<(Mismatch, usize)> = Vec::new();
    let mut best: Option<usize> = None;
    for (i, offer) in book.iter().enumerate() {
        match mismatch(order, offer) {
            Some(reason) => failures.push((reason, i)),
            None => {
                let better = best.is_none_or(|b| {
                    let current = &book[b];
                    (offer.price, offer.published_seq, &offer.offer_id)
                        < (current.price, current.published_seq, &current.offer_id)
                });
                if better {
                    best = Some(i);
                }
            }
        }
    }
    match best {
        Some(offer) => Ok(Match {
            offer,
            block: best_fit(&book[offer].free_blocks, order.gpus)
                .expect("a matching offer has a block that fits"),
        }),
        None => {
            let refusals = failures
                .iter()
                .map(|(reason, _)| *reason)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .map(|mismatch| {
                    let offers: Vec<&BookOffer> = failures
                        .iter()
                        .filter(|(reason, _)| *reason == mismatch)
                        .map(|(_, offer)| &book[*offer])
                        .collect();
                    Refusal {
                        mismatch,
                        offers: offers.len(),
                        bound: mismatch.bound(&offers),
                    }
                })
                .collect();
            Err(NoMatch {
                offers: book.len(),
                refusals,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(id: &str, price: u128, blocks: &[u32], seq: u64) -> BookOffer {
        BookOffer {
            offer_id: id.into(),
            resource: "nvidia.com/gpu".into(),
            model: "H100".into(),
            region: "eu".into(),
            attributes: vec![("egress".into(), "internet".into())],
            free_blocks: blocks.to_vec(),
            price: Amount::from_atto(price),
            denomination: "USDC".into(),
            min_duration_seconds: 60,
            max_duration_seconds: 86_400,
            max_gpus_per_lease: 8,
            allowed_registries: vec!["ghcr.io".into()],
            published_seq: seq,
            provider: "provider-a".into(),
            bond_covers: None,
            uptime_basis_points: 10_000,
            trust_tier: TrustTier::SelfReported,
        }
    }

    fn order(gpus: u32, max_price: u128) -> OrderTerms {
        OrderTerms {
            gpus,
            resource: "nvidia.com/gpu".into(),
            model: "H100".into(),
            duration_seconds: 3600,
            max_price: Amount::from_atto(max_price),
            denomination: "USDC".into(),
            region: String::new(),
            attributes: vec![],
            image: "ghcr.io/acme/train:1".into(),
            provider: String::new(),
            min_uptime_basis_points: 0,
            min_trust_tier: TrustTier::SelfReported,
        }
    }

    #[test]
    fn cheapest_then_earliest_then_id_wins() {
        let book = vec![
            offer("b", 3, &[8], 2),
            offer("a", 2, &[8], 5),
            offer("c", 2, &[8], 1),
        ];
        assert_eq!(best_offer(&order(1, 10), &book).unwrap().offer, 2);
        let tie = vec![offer("b", 2, &[8], 1), offer("a", 2, &[8], 1)];
        assert_eq!(best_offer(&order(1, 10), &tie).unwrap().offer, 1);
    }

    /// An order for whole GPUs never takes MIG slices, however cheap, and an order for a MIG
    /// profile takes only that profile.
    #[test]
    fn whole_gpus_and_slices_never_match_each_other() {
        let mut slices = offer("slices", 1, &[7], 1);
        slices.resource = "nvidia.com/mig-1g.10gb".into();
        let whole = offer("whole", 5, &[8], 2);
        let book = vec![slices.clone(), whole];
        assert_eq!(best_offer(&order(1, 10), &book).unwrap().offer, 1);

        let only_slices = vec![slices];
        let refused = best_offer(&order(1, 10), &only_slices).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "no offer matches: the only offer sells other GPUs (whole GPUs or another MIG \
             profile) (on offer: nvidia.com/mig-1g.10gb)"
        );

        let mut slice_order = order(3, 10);
        slice_order.resource = "nvidia.com/mig-1g.10gb".into();
        assert_eq!(best_offer(&slice_order, &book).unwrap().offer, 0);
        slice_order.resource = "nvidia.com/mig-2g.20gb".into();
        assert!(best_offer(&slice_order, &book).is_err(), "another profile");
    }

    #[test]
    fn constraints_come_before_price() {
        // The cheapest offer has no node with 4 free GPUs; the dearer one does.
        let book = vec![offer("cheap", 1, &[2, 2, 2], 1), offer("dear", 5, &[4], 2)];
        let m = best_offer(&order(4, 10), &book).unwrap();
        assert_eq!((m.offer, m.block), (1, 0));
    }

    #[test]
    fn every_constraint_is_checked_and_named() {
        let base = offer("o", 5, &[8], 1);
        type Edit = Box<dyn Fn(&mut OrderTerms, &mut BookOffer)>;
        let cases: Vec<(Edit, Mismatch)> = vec![
            (
                Box::new(|o, _| o.provider = "provider-b".into()),
                Mismatch::Provider,
            ),
            (
                Box::new(|o, _| o.denomination = "EUR".into()),
                Mismatch::Denomination,
            ),
            (
                Box::new(|o, b| {
                    o.min_uptime_basis_points = 9_950;
                    b.uptime_basis_points = 9_949
                }),
                Mismatch::Uptime,
            ),
            (
                Box::new(|o, _| o.min_trust_tier = TrustTier::HardwareAttested),
                Mismatch::TrustTier,
            ),
            (Box::new(|_, b| b.bond_covers = Some(1)), Mismatch::Bond),
            (Box::new(|o, _| o.model = "A100".into()), Mismatch::Model),
            (Box::new(|o, _| o.region = "us".into()), Mismatch::Region),
            (
                Box::new(|o, _| o.attributes = vec![("tier".into(), "cc".into())]),
                Mismatch::Attributes,
            ),
            (Box::new(|o, _| o.duration_seconds = 59), Mismatch::Duration),
            (
                Box::new(|o, _| o.duration_seconds = 86_401),
                Mismatch::Duration,
            ),
            (
                Box::new(|_, b| b.max_gpus_per_lease = 1),
                Mismatch::LeaseSize,
            ),
            (
                Box::new(|o, _| o.image = "docker.io/evil/miner".into()),
                Mismatch::Registry,
            ),
            (
                Box::new(|_, b| b.free_blocks = vec![1, 1]),
                Mismatch::Capacity,
            ),
            (
                Box::new(|o, _| o.max_price = Amount::from_atto(4)),
                Mismatch::Price,
            ),
        ];
        for (edit, expected) in cases {
            let (mut o, mut b) = (order(2, 10), base.clone());
            edit(&mut o, &mut b);
            assert_eq!(mismatch(&o, &b), Some(expected));
        }
        let (mut o, mut b) = (order(2, 10), base);
        assert_eq!(mismatch(&o, &b), None);
        // The bounds themselves pass: the named provider, uptime just enough, a bond just covering.
        o.provider = "provider-a".into();
        o.min_uptime_basis_points = 9_950;
        b.uptime_basis_points = 9_950;
        b.bond_covers = Some(2);
        o.min_trust_tier = TrustTier::HardwareAttested;
        b.trust_tier = TrustTier::HardwareAttested;
        assert_eq!(mismatch(&o, &b), None);
        b.bond_covers = None;
        let any_model = OrderTerms {
            model: String::new(),
            ..order(2, 10)
        };
        assert_eq!(mismatch(&any_model, &b), None);
    }

    /// Each refusal names what the failing offers allow, so that the buyer knows which flag to
    /// change and to what.
    #[test]
    fn each_refusal_names_the_bound_to_order_within() {
        const UNIT: u128 = 1_000_000_000_000_000_000;
        let mut second = offer("p", 3 * UNIT / 2, &[2, 6], 2);
        second.model = "A100".into();
        second.region = "us".into();
        second.min_duration_seconds = 600;
        second.max_duration_seconds = 7200;
        second.max_gpus_per_lease = 4;
        second.allowed_registries = vec!["nvcr.io".into()];
        let mut first = offer("o", 5 * UNIT, &[8], 1);
        (first.uptime_basis_points, second.uptime_basis_points) = (9_990, 9_000);
        (first.bond_covers, second.bond_covers) = (Some(3), Some(2));
        let book = vec![first, second];
        type Edit = Box<dyn Fn(&mut OrderTerms)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|o| o.denomination = "EUR".into()),
                "2 sell in another denomination (on offer: USDC)",
            ),
            (
                Box::new(|o| o.model = "B200".into()),
                "2 offer other GPU models (on offer: A100, H100)",
            ),
            (
                Box::new(|o| o.region = "ap".into()),
                "2 are in other regions (on offer: eu, us)",
            ),
            (
                Box::new(|o| o.attributes = vec![("tier".into(), "cc".into())]),
                "2 lack a required attribute",
            ),
            (
                Box::new(|o| o.duration_seconds = 30),
                "2 do not allow this duration (allowed: 60 s to 86400 s)",
            ),
            (
                Box::new(|o| {
                    o.gpus = 9;
                    o.max_price = Amount::from_atto(10 * UNIT)
                }),
                "2 allow fewer GPUs per lease (at most 8 GPUs per lease)",
            ),
            (
                Box::new(|o| o.image = "docker.io/x/y".into()),
                "2 do not allow the image's registry (registries allowed: ghcr.io, nvcr.io)",
            ),
            (
                Box::new(|o| o.max_price = Amount::from_atto(UNIT)),
                "2 cost more than the order's maximum price (the cheapest asks 1.5 USDC per GPU-hour)",
            ),
            (
                Box::new(|o| o.provider = "provider-z".into()),
                "2 are other providers'",
            ),
            (
                Box::new(|o| o.min_uptime_basis_points = 10_000),
                "2 are from providers with less uptime than the order asks (the best: 99.90 %)",
            ),
            (
                Box::new(|o| o.min_trust_tier = TrustTier::HardwareAttested),
                "2 are from providers whose last evidence reached a lower trust tier (the best: self-reported)",
            ),
            (
                Box::new(|o| o.gpus = 4),
                "2 are from providers whose bonds cover fewer GPUs (the most GPUs a bond still covers: 3)",
            ),
        ];
        for (edit, expected) in cases {
            let mut terms = order(2, 10 * UNIT);
            terms.model = String::new();
            terms.image = "ghcr.io/acme/train:1".into();
            edit(&mut terms);
            // Registries differ between the two offers: the second refuses ghcr.io on its own.
            let book: Vec<BookOffer> = book
                .iter()
                .cloned()
                .map(|mut b| {
                    if !expected.contains("registr") {
                        b.allowed_registries = vec!["ghcr.io".into()];
                    }
                    b
                })
                .collect();
            let refused = best_offer(&terms, &book).unwrap_err().to_string();
            assert_eq!(
                refused,
                format!("no offer matches: of 2 offers, {expected}")
            );
        }
        let mut full = order(7, 10 * UNIT);
        full.model = String::new();
        let book: Vec<BookOffer> = book
            .into_iter()
            .map(|mut b| {
                b.allowed_registries = vec!["ghcr.io".into()];
                b.max_gpus_per_lease = 8;
                if b.offer_id == "o" {
                    b.free_blocks = vec![5];
                }
                b
            })
            .collect();
        assert_eq!(
            best_offer(&full, &book).unwrap_err().to_string(),
            "no offer matches: of 2 offers, 2 have no node with that many free GPUs (the most \
             free on one node: 6)"
        );
    }

    #[test]
    fn no_match_says_why_per_offer() {
        let book = vec![
            offer("a", 5, &[1], 1),
            offer("b", 50, &[8], 2),
            offer("c", 50, &[8], 3),
        ];
        let err = best_offer(&order(4, 10), &book).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no offer matches: of 3 offers, 1 has no node with that many free GPUs (the most \
             free on one node: 1) and 2 cost more than the order's maximum price (the cheapest \
             asks 0.00000000000000005 USDC per GPU-hour)"
        );
        assert_eq!(
            best_offer(&order(1, 10), &[]).unwrap_err().to_string(),
            "no offer matches: the offer book is empty"
        );
    }
}

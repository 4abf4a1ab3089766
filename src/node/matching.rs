//! Order matching (DESIGN §6): constraints first, then price, then time. Pure: the store hands
//! it the live offer book and commits what it decides.

use crate::admission::image_registry_allowed;
use crate::capacity::blocks::best_fit;
use crate::wire::amount::Amount;

/// An offer as matching sees it: terms, and GPUs free per node after the leases already matched
/// against this publication of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BookOffer {
    pub offer_id: String,
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
    Denomination,
    Resource,
    Model,
    Region,
    Attributes,
    Duration,
    LeaseSize,
    Registry,
    Capacity,
    Price,
}

impl Mismatch {
    fn describe(self) -> &'static str {
        match self {
            Mismatch::Denomination => "sell in another denomination",
            Mismatch::Resource => "sell other GPUs (whole GPUs or another MIG profile)",
            Mismatch::Model => "offer another GPU model",
            Mismatch::Region => "are in another region",
            Mismatch::Attributes => "lack a required attribute",
            Mismatch::Duration => "do not allow this duration",
            Mismatch::LeaseSize => "allow fewer GPUs per lease",
            Mismatch::Registry => "do not allow the image's registry",
            Mismatch::Capacity => "have no node with that many free GPUs",
            Mismatch::Price => "cost more than the order's maximum price",
        }
    }
}

/// Why no offer took an order: how many offers failed on each constraint, readable by the buyer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoMatch {
    pub offers: usize,
    pub by_reason: Vec<(Mismatch, usize)>,
}

impl std::fmt::Display for NoMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.offers == 0 {
            return write!(f, "no offer matches: the offer book is empty");
        }
        write!(f, "no offer matches: of {} offers", self.offers)?;
        for (i, (reason, count)) in self.by_reason.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            write!(f, "{sep}{count} {}", reason.describe())?;
        }
        Ok(())
    }
}

/// The first constraint `offer` fails for `order`, or `None` when it can take it.
pub fn mismatch(order: &OrderTerms, offer: &BookOffer) -> Option<Mismatch> {
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
    if offer.price > order.max_price {
        return Some(Mismatch::Price);
    }
    None
}

/// Matches `order` against `book`: among offers that meet every constraint, the lowest price,
/// then the earliest published, then the smallest offer id.
pub fn best_offer(order: &OrderTerms, book: &[BookOffer]) -> Result<Match, NoMatch> {
    let mut failures: Vec<Mismatch> = Vec::new();
    let mut best: Option<usize> = None;
    for (i, offer) in book.iter().enumerate() {
        match mismatch(order, offer) {
            Some(reason) => failures.push(reason),
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
            failures.sort();
            let mut by_reason: Vec<(Mismatch, usize)> = Vec::new();
            for reason in failures {
                match by_reason.last_mut() {
                    Some((last, count)) if *last == reason => *count += 1,
                    _ => by_reason.push((reason, 1)),
                }
            }
            Err(NoMatch {
                offers: book.len(),
                by_reason,
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
        assert_eq!(refused.by_reason, vec![(Mismatch::Resource, 1)]);
        assert!(refused.to_string().contains("sell other GPUs"), "{refused}");

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
                Box::new(|o, _| o.denomination = "EUR".into()),
                Mismatch::Denomination,
            ),
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
        let (o, b) = (order(2, 10), base);
        assert_eq!(mismatch(&o, &b), None);
        let any_model = OrderTerms {
            model: String::new(),
            ..order(2, 10)
        };
        assert_eq!(mismatch(&any_model, &b), None);
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
            "no offer matches: of 3 offers 1 have no node with that many free GPUs, 2 cost more than the order's maximum price"
        );
        assert_eq!(
            best_offer(&order(1, 10), &[]).unwrap_err().to_string(),
            "no offer matches: the offer book is empty"
        );
    }
}

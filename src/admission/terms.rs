//! A lease's terms against its offer's.

use crate::crd::{ComputeLeaseSpec, GpuOfferSpec};

/// Why a lease's terms are outside its offer's. Each names the field and the rule.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TermsViolation {
    #[error("spec.resourceName {lease} differs from the offer's resourceName {offer}")]
    ResourceName { lease: String, offer: String },
    #[error("spec.gpus {gpus} exceeds the offer's lease.maxGpusPerLease {max}")]
    TooManyGpus { gpus: u32, max: u32 },
    #[error("spec.durationSeconds {seconds} is below the offer's lease.minDurationSeconds {min}")]
    TooShort { seconds: u64, min: u64 },
    #[error("spec.durationSeconds {seconds} exceeds the offer's lease.maxDurationSeconds {max}")]
    TooLong { seconds: u64, max: u64 },
    #[error("spec.price.denomination {lease} differs from the offer's {offer}")]
    Denomination { lease: String, offer: String },
    #[error("spec.price.amount {lease} is below the offer's price {offer}")]
    PriceBelowOffer { lease: String, offer: String },
    #[error("spec.price.amount {0:?} is not a decimal amount")]
    MalformedPrice(String),
    #[error("spec.workload.image {image} is not from a registry the offer allows ({allowed})")]
    RegistryNotAllowed { image: String, allowed: String },
}

/// Checks every term; returns the first violation in the order of the spec's fields.
pub fn check_terms(offer: &GpuOfferSpec, lease: &ComputeLeaseSpec) -> Result<(), TermsViolation> {
    if lease.resource_name != offer.sold_resource() {
        return Err(TermsViolation::ResourceName {
            lease: lease.resource_name.clone(),
            offer: offer.sold_resource(),
        });
    }
    if lease.gpus > offer.lease.max_gpus_per_lease {
        return Err(TermsViolation::TooManyGpus {
            gpus: lease.gpus,
            max: offer.lease.max_gpus_per_lease,
        });
    }
    if lease.duration_seconds < offer.lease.min_duration_seconds {
        return Err(TermsViolation::TooShort {
            seconds: lease.duration_seconds,
            min: offer.lease.min_duration_seconds,
        });
    }
    if lease.duration_seconds > offer.lease.max_duration_seconds {
        return Err(TermsViolation::TooLong {
            seconds: lease.duration_seconds,
            max: offer.lease.max_duration_seconds,
        });
    }
    if lease.price.denomination != offer.price.denomination {
        return Err(TermsViolation::Denomination {
            lease: lease.price.denomination.clone(),
            offer: offer.price.denomination.clone(),
        });
    }
    let lease_price = lease
        .price
        .atto_units()
        .ok_or_else(|| TermsViolation::MalformedPrice(lease.price.amount.clone()))?;
    let offer_price = offer
        .price
        .atto_units()
        .ok_or_else(|| TermsViolation::MalformedPrice(offer.price.amount.clone()))?;
    if lease_price < offer_price {
        return Err(TermsViolation::PriceBelowOffer {
            lease: lease.price.amount.clone(),
            offer: offer.price.amount.clone(),
        });
    }
    if !image_registry_allowed(&lease.workload.image, &offer.workload.allowed_registries) {
        return Err(TermsViolation::RegistryNotAllowed {
            image: lease.workload.image.clone(),
            allowed: offer.workload.allowed_registries.join(", "),
        });
    }
    Ok(())
}

/// True when `image` is under one of `allowed`, compared by whole path segments, so that
/// "ghcr.io/acme" allows "ghcr.io/acme/train:1" but not "ghcr.io/acme-evil/x:1".
pub fn image_registry_allowed(image: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|prefix| {
        image
            .strip_prefix(prefix.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn offer() -> GpuOfferSpec {
        fixture(include_str!("../../tests/fixtures/offer-spec.yaml"))
    }

    fn lease() -> ComputeLeaseSpec {
        fixture(include_str!("../../tests/fixtures/lease-spec.yaml"))
    }

    #[test]
    fn the_fixture_lease_fits_its_offer() {
        assert_eq!(check_terms(&offer(), &lease()), Ok(()));
    }

    #[test]
    fn every_violation_names_its_field() {
        type Edit = fn(&mut ComputeLeaseSpec);
        let cases: &[(&str, Edit, &str)] = &[
            (
                "resource",
                |l| l.resource_name = "nvidia.com/mig-1g.10gb".into(),
                "spec.resourceName",
            ),
            ("gpus", |l| l.gpus = 9, "spec.gpus 9 exceeds"),
            (
                "short",
                |l| l.duration_seconds = 60,
                "spec.durationSeconds 60 is below",
            ),
            (
                "long",
                |l| l.duration_seconds = 1_000_000,
                "exceeds the offer's lease.maxDurationSeconds",
            ),
            (
                "denomination",
                |l| l.price.denomination = "EUR".into(),
                "spec.price.denomination",
            ),
            (
                "cheap",
                |l| l.price.amount = "2.3999".into(),
                "spec.price.amount 2.3999 is below",
            ),
            (
                "registry",
                |l| l.workload.image = "docker.io/evil/miner:1".into(),
                "spec.workload.image",
            ),
            (
                "lookalike",
                |l| l.workload.image = "ghcr.io/acme-evil/x:1".into(),
                "not from a registry",
            ),
        ];
        for (name, edit, want) in cases {
            let mut l = lease();
            edit(&mut l);
            let err = check_terms(&offer(), &l).expect_err(name).to_string();
            assert!(err.contains(want), "{name}: {err}");
        }
    }

    #[test]
    fn a_higher_price_is_fine() {
        let mut l = lease();
        l.price.amount = "2.41".into();
        assert_eq!(check_terms(&offer(), &l), Ok(()));
    }
}

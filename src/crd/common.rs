//! Types shared by both resources.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// The resource name an offer sells when it does not say otherwise.
pub const DEFAULT_GPU_RESOURCE: &str = "nvidia.com/gpu";

/// A price per GPU-hour. The amount is a decimal string so that no float ever rounds money.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Price {
    /// The amount per GPU-hour as a decimal string with at most 18 fractional digits, for
    /// example "2.40". It must be greater than zero.
    #[schemars(regex(pattern = r"^[0-9]{1,18}(\.[0-9]{1,18})?$"), length(max = 37))]
    // Only a well-formed amount is checked for zero, so that a malformed one gets one message.
    #[x_kube(validation = Rule::new("!self.matches('^[0-9]{1,18}(\\\\.[0-9]{1,18})?$') || self.matches('[1-9]')").message(Message::Expression("'spec.price.amount (%s) must be greater than zero'.format([self])".into())))]
    pub amount: String,
    /// The denomination the amount is counted in: uppercase letters and digits, for example
    /// "USDC". Orders match it exactly.
    #[schemars(regex(pattern = r"^[A-Z][A-Z0-9]{1,15}$"), length(max = 16))]
    pub denomination: String,
}

/// Label GPU feature discovery puts on nodes with the GPU's product name.
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";

/// Label on every object the operator creates for a lease, with the ComputeLease's name as value.
pub const LEASE_LABEL: &str = "gpubridge.dev/lease";

/// Annotation intake puts on a ComputeLease: the node it promised the lease's GPUs on. The
/// lease pod is pinned there, so the promise and the placement are the same decision.
pub const NODE_ANNOTATION: &str = "gpubridge.dev/node";

/// The field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "gpubridge-operator";

impl Price {
    /// The amount as an exact integer of 10^-18 units, or `None` when it is not a decimal of at
    /// most 18 integer and 18 fractional digits (the schema's pattern).
    pub fn atto_units(&self) -> Option<crate::wire::amount::Amount> {
        crate::wire::amount::decimal_atto_units(&self.amount)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::wire::amount::Amount;

    fn atto(n: u128) -> Amount {
        Amount::from_atto(n)
    }

    fn price(amount: &str) -> Price {
        Price {
            amount: amount.into(),
            denomination: "USDC".into(),
        }
    }

    #[test]
    fn amounts_are_exact_integers() {
        assert_eq!(
            price("2.40").atto_units(),
            Some(atto(2_400_000_000_000_000_000))
        );
        assert_eq!(price("2.4").atto_units(), price("2.400").atto_units());
        assert_eq!(price("0.000000000000000001").atto_units(), Some(atto(1)));
        assert_eq!(price("7").atto_units(), Some(atto(7 * 10u128.pow(18))));
        assert!(price("0.1").atto_units() < price("0.10000000000000001").atto_units());
        for bad in [
            "",
            "-1",
            "1.",
            ".5",
            "1.2.3",
            "1e3",
            "0.0000000000000000001",
            "1234567890123456789",
        ] {
            assert_eq!(price(bad).atto_units(), None, "{bad}");
        }
    }
}

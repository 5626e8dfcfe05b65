//! The size and value limits of the `ProxyConfig` API, stated once and used twice: in
//! the generated CRD schema (so the API server refuses a bad object, and can estimate
//! every CEL rule's cost) and in [`crate::ProxyConfigSpec::effective`] (so a config read
//! from a manifests directory, which no API server checked, is held to the same limits).
//!
//! Why bounds at all: the API server estimates each `x-kubernetes-validations` rule's
//! worst-case cost when the CRD is created. An array without `maxItems` is assumed to
//! hold as many elements as a 3 MiB request can carry (about a million strings) and a
//! string without `maxLength` about 3 million bytes; `self.all(a, isCIDR(a))` over such
//! a list is estimated hundreds of times over the per-rule budget and the CRD is refused.
//!
//! Duration ceilings. kube-proxy operators set `syncPeriod`/`minSyncPeriod` in seconds to
//! minutes; one hour is far beyond any useful value and keeps `Instant + period` safe.
//! IPVS timeouts are what `ipvsadm --set` takes: the kernel's own defaults are 15 min
//! (TCP), 2 min (FIN) and 5 min (UDP); a day is the ceiling. Conntrack timeouts go up to
//! 7 days: kube-proxy's default for established TCP is 24 h and the kernel's own is 5 days.
//!
//! A duration is written as Go writes it, at most four `<number><unit>` parts with at
//! most five integer digits each (the Gateway API's `Duration` makes the same choice):
//! no value the pattern admits can overflow Go's `time.Duration` in the API server's
//! `duration()` conversion, so the value rule can never fail with an evaluation error.

use std::time::Duration;

use schemars::Schema;
use serde_json::json;

/// `maxItems` of `fallback`: there are four engines and `auto` is not allowed.
pub const MAX_FALLBACK: usize = 4;
/// `maxItems` of `clusterCIDRs` and `ipvs.excludeCIDRs`.
pub const MAX_CIDRS: usize = 16;
/// `maxItems` of `nodePortAddresses`.
pub const MAX_NODE_PORT_ADDRESSES: usize = 16;
/// `maxLength` of a CIDR or `primary` (the longest IPv6 CIDR has 43 characters).
pub const MAX_CIDR_LENGTH: usize = 64;
/// `maxLength` of `host:port` bind addresses (`[v6]:port` is at most 47).
pub const MAX_ADDRESS_LENGTH: usize = 64;
/// `maxLength` of a duration string.
pub const MAX_DURATION_LENGTH: usize = 32;
/// `maxLength` of `ebpf.cgroupPath`.
pub const MAX_PATH_LENGTH: usize = 256;

/// The Go duration syntax a ProxyConfig accepts (see the module doc for the digit bound).
pub const DURATION_PATTERN: &str = r"^(0|([0-9]{1,5}(\.[0-9]{1,9})?(ns|us|ms|s|m|h)){1,4})$";

/// A duration field's ceiling (and whether zero is allowed): the schema rule and the
/// check `effective()` runs.
#[derive(Clone, Copy, Debug)]
pub struct DurationLimit {
    /// Written as in the schema rule, e.g. `"1h"`.
    pub max: &'static str,
    pub max_value: Duration,
    pub allow_zero: bool,
}

impl DurationLimit {
    pub const SYNC: DurationLimit = DurationLimit {
        max: "1h",
        max_value: Duration::from_secs(3600),
        allow_zero: false,
    };
    pub const MIN_SYNC: DurationLimit = DurationLimit {
        allow_zero: true,
        ..Self::SYNC
    };
    pub const IPVS_TIMEOUT: DurationLimit = DurationLimit {
        max: "24h",
        max_value: Duration::from_secs(24 * 3600),
        allow_zero: true,
    };
    pub const CONNTRACK_TIMEOUT: DurationLimit = DurationLimit {
        max: "168h",
        max_value: Duration::from_secs(7 * 24 * 3600),
        allow_zero: true,
    };

    /// The CEL rule the schema carries. `matches` guards `duration()`: CEL's `&&` is
    /// commutative over errors, so a string the pattern refuses makes the rule false,
    /// never an evaluation error.
    pub fn rule(&self) -> String {
        let lower = if self.allow_zero {
            String::new()
        } else {
            " && duration(self) > duration('0s')".to_string()
        };
        let pattern = DURATION_PATTERN.replace('\\', "\\\\");
        format!(
            "self.matches('{pattern}'){lower} && duration(self) <= duration('{}')",
            self.max
        )
    }

    pub fn message(&self) -> String {
        let range = if self.allow_zero {
            "0"
        } else {
            "greater than 0"
        };
        format!(
            "must be a duration from {range} to {}, such as 30s, 1m30s or 500ms",
            self.max
        )
    }

    /// Checks a parsed value against the limit; the error text completes "spec.FIELD: ".
    pub fn check(&self, value: Duration) -> Result<Duration, String> {
        if value.is_zero() && !self.allow_zero {
            return Err("must be greater than zero".into());
        }
        if value > self.max_value {
            return Err(format!("{value:?} is longer than the maximum {}", self.max));
        }
        Ok(value)
    }
}

impl DurationLimit {
    /// Adds `maxLength` and the value rule to a duration field's schema.
    fn apply(&self, schema: &mut Schema) {
        schema.insert("maxLength".into(), json!(MAX_DURATION_LENGTH));
        push_rule(schema, &self.rule(), &self.message());
    }
}

/// Schema transforms for `#[schemars(transform = ...)]`, one per duration limit.
pub(crate) fn sync_duration(schema: &mut Schema) {
    DurationLimit::SYNC.apply(schema)
}
pub(crate) fn min_sync_duration(schema: &mut Schema) {
    DurationLimit::MIN_SYNC.apply(schema)
}
pub(crate) fn ipvs_timeout(schema: &mut Schema) {
    DurationLimit::IPVS_TIMEOUT.apply(schema)
}
pub(crate) fn conntrack_timeout(schema: &mut Schema) {
    DurationLimit::CONNTRACK_TIMEOUT.apply(schema)
}

/// Adds an `x-kubernetes-validations` entry.
pub(crate) fn push_rule(schema: &mut Schema, rule: &str, message: &str) {
    let entry = json!({"rule": rule, "message": message});
    match schema
        .get_mut("x-kubernetes-validations")
        .and_then(|v| v.as_array_mut())
    {
        Some(list) => list.push(entry),
        None => {
            schema.insert("x-kubernetes-validations".into(), json!([entry]));
        }
    }
}

/// A list of CIDR strings: each item bounded and checked with `isCIDR`.
pub(crate) fn cidr_list(schema: &mut Schema) {
    bound_items(schema, MAX_CIDR_LENGTH);
    push_rule(
        schema,
        "self.all(c, isCIDR(c))",
        "every entry must be a CIDR such as 10.0.0.0/8 or fd00::/64",
    );
}

/// Sets `maxLength` on the `items` schema of an array schema.
pub(crate) fn bound_items(schema: &mut Schema, max_length: usize) {
    if let Some(items) = schema.get_mut("items").and_then(|v| v.as_object_mut()) {
        items.insert("maxLength".into(), json!(max_length));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_text_escapes_the_pattern_for_cel() {
        let r = DurationLimit::SYNC.rule();
        assert!(r.contains(r"(\\.[0-9]{1,9})"), "{r}");
        assert!(r.contains("duration(self) > duration('0s')"), "{r}");
        assert!(r.ends_with("duration(self) <= duration('1h')"), "{r}");
    }

    #[test]
    fn limits_check_values() {
        assert!(DurationLimit::SYNC.check(Duration::ZERO).is_err());
        assert!(DurationLimit::MIN_SYNC.check(Duration::ZERO).is_ok());
        assert!(DurationLimit::SYNC
            .check(Duration::from_secs(3601))
            .is_err());
        assert!(DurationLimit::SYNC.check(Duration::from_secs(3600)).is_ok());
    }
}

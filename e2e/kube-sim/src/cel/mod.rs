//! CEL as the API server uses it for CRD validation rules (`x-kubernetes-validations`):
//!
//! - [`decl`]: the CEL type and worst-case size of every schema node;
//! - [`cost`]: the static worst-case cost estimate checked when a CRD is created, and the
//!   compile check that goes with it;
//! - [`rules`]: evaluating the rules against a custom object, with the Kubernetes library
//!   functions our CRDs use (`isCIDR`, `isIP`) on top of the `cel` crate's standard
//!   library (whose `matches` is RE2-style unanchored search, like cel-go's).

pub mod cost;
pub mod decl;
pub mod rules;

/// Per-expression limit on the estimated cost (`StaticEstimatedCostLimit`).
pub const PER_RULE_COST_LIMIT: u64 = 10_000_000;
/// Limit on the sum over a CRD version's rules (`StaticEstimatedCRDCostLimit`).
pub const PER_CRD_COST_LIMIT: u64 = 100_000_000;

/// The API server's wording for a cost over its limit (`getCostErrorMessage`).
pub fn cost_error_message(what: &str, cost: u64, limit: u64) -> String {
    let factor = cost as f64 / limit as f64;
    let factor = if factor > 100.0 {
        "more than 100x".to_string()
    } else if factor < 1.5 {
        format!("{factor:.6}x")
    } else {
        format!("{factor:.1}x")
    };
    format!(
        "{what} exceeds budget by factor of {factor} (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"
    )
}

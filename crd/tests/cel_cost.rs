//! Would a real API server take our CRDs? Every `x-kubernetes-validations` rule of the
//! generated CRDs is compiled and its worst-case cost estimated as the API server does at
//! CRD creation (the simulator's estimator, checked there against the published
//! examples); the test fails on any rule over the per-rule budget, on a total over the
//! per-CRD budget, and on anything else the API server would refuse at create time.
//!
//! Before the bounds (issue 15), `nodePortAddresses`' rule alone was estimated at more
//! than 100 times the per-rule budget.

use serde_json::Value;
use switchyard_kube_sim::cel::{PER_CRD_COST_LIMIT, PER_RULE_COST_LIMIT};
use switchyard_kube_sim::crd_admission;

fn crds() -> Vec<Value> {
    serde_yaml::Deserializer::from_str(&switchyard_crd::crds_yaml())
        .map(|d| serde::Deserialize::deserialize(d).expect("CRD YAML"))
        .collect()
}

#[test]
fn every_rule_is_within_the_api_servers_cost_budget() {
    let mut rules = 0;
    for crd in crds() {
        let name = crd["metadata"]["name"].as_str().unwrap_or("").to_string();
        let (costs, compile_errors) = crd_admission::rule_costs(&crd);
        assert!(compile_errors.is_empty(), "{name}: {compile_errors:?}");
        let mut total: u64 = 0;
        for c in &costs {
            println!(
                "{name} {:>12} = {:>8} x {:>3}  {}  ({})",
                c.total, c.cost, c.cardinality, c.path, c.rule
            );
            assert!(
                c.total <= PER_RULE_COST_LIMIT,
                "{name}: {} costs {} (limit {PER_RULE_COST_LIMIT}): {}",
                c.path,
                c.total,
                c.rule
            );
            total = total.saturating_add(c.total);
        }
        println!(
            "{name}: {} rules, total {total} (limit {PER_CRD_COST_LIMIT})",
            costs.len()
        );
        assert!(total <= PER_CRD_COST_LIMIT, "{name}: total {total}");
        rules += costs.len();
        let errors = crd_admission::validate(&crd);
        assert!(errors.is_empty(), "{name} would be refused: {errors:?}");
    }
    assert!(rules >= 10, "expected the ProxyConfig rules, found {rules}");
}

/// The estimator would have caught issue 15: the unbounded CRD is refused.
#[test]
fn the_unbounded_node_port_addresses_rule_would_be_refused() {
    let mut crd = crds().remove(0);
    let npa = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["nodePortAddresses"];
    npa.as_object_mut().unwrap().remove("maxItems");
    npa["items"].as_object_mut().unwrap().remove("maxLength");
    let errors: Vec<String> = crd_admission::validate(&crd)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("properties[nodePortAddresses].x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of more than 100x")),
        "{errors:?}"
    );
}

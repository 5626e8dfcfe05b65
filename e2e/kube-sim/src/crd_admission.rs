//! Create-time checks of a CustomResourceDefinition, as the API server runs them
//! (apiextensions `ValidateCustomResourceDefinition`), for what matters to our CRDs:
//!
//! - the schema is **structural**: every node says its `type` (unless it is
//!   `x-kubernetes-int-or-string` or preserves unknown fields), no `$ref`, `definitions`,
//!   `dependencies`, `patternProperties`, `additionalItems`, `id`, `type: null`, tuple
//!   `items`, and not both `properties` and `additionalProperties`;
//! - every `x-kubernetes-validations` rule **compiles** (parses, names declared fields
//!   and known functions, yields a bool);
//! - every rule's **estimated cost** times the number of times it can run (the product
//!   of `maxItems`/`maxProperties` above it, or the request-size bound when one is
//!   missing) is within [`cel::PER_RULE_COST_LIMIT`], and their sum within
//!   [`cel::PER_CRD_COST_LIMIT`].
//!
//! Errors are the API server's, on its paths: one version's schema is reported under
//! `spec.validation.openAPIV3Schema` (as the internal API lifts a schema all versions
//! share), several under `spec.versions[i].schema.openAPIV3Schema`.

use serde_json::{json, Value};

use crate::cel::{self, cost, decl::DeclType, decl::MAX_REQUEST_SIZE_BYTES};
use crate::field_error::FieldError;

/// One rule and its estimated cost (already multiplied by its cardinality).
#[derive(Debug, Clone, PartialEq)]
pub struct RuleCost {
    /// `...properties[spec].properties[fallback].x-kubernetes-validations[0].rule`.
    pub path: String,
    pub rule: String,
    /// Worst-case cost of one evaluation.
    pub cost: u64,
    /// How many times it can run per object.
    pub cardinality: u64,
    /// `cost × cardinality` (saturating): what the limits are compared with.
    pub total: u64,
}

/// Every rule of every version, with its cost; compile errors as field errors.
pub fn rule_costs(crd: &Value) -> (Vec<RuleCost>, Vec<FieldError>) {
    let mut costs = Vec::new();
    let mut errors = Vec::new();
    for (base, schema) in version_schemas(crd) {
        walk_rules(schema, &base, Some(1), true, &mut costs, &mut errors);
    }
    (costs, errors)
}

/// All create-time errors of a CRD object (empty when the API server would take it).
pub fn validate(crd: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (base, schema) in version_schemas(crd) {
        structural(schema, &base, true, &mut errors);
    }
    if !errors.is_empty() {
        return errors;
    }
    for (base, schema) in version_schemas(crd) {
        let mut costs = Vec::new();
        walk_rules(schema, &base, Some(1), true, &mut costs, &mut errors);
        let mut total: u64 = 0;
        for c in &costs {
            if c.total > cel::PER_RULE_COST_LIMIT {
                errors.push(FieldError::forbidden(
                    &c.path,
                    cel::cost_error_message(
                        "estimated rule cost",
                        c.total,
                        cel::PER_RULE_COST_LIMIT,
                    ),
                ));
            }
            total = total.saturating_add(c.total);
        }
        if total > cel::PER_CRD_COST_LIMIT {
            let mut top: Vec<&RuleCost> = costs
                .iter()
                .filter(|c| c.total >= cel::PER_CRD_COST_LIMIT / 100)
                .collect();
            top.sort_by_key(|c| std::cmp::Reverse(c.total));
            for c in top.into_iter().take(4) {
                errors.push(FieldError::forbidden(
                    &c.path,
                    "contributed to estimated rule cost total exceeding cost limit for entire OpenAPIv3 schema",
                ));
            }
            errors.push(FieldError::forbidden(
                &base,
                cel::cost_error_message(
                    "x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema",
                    total,
                    cel::PER_CRD_COST_LIMIT,
                ),
            ));
        }
    }
    errors
}

fn version_schemas(crd: &Value) -> Vec<(String, &Value)> {
    let versions: Vec<&Value> = crd["spec"]["versions"]
        .as_array()
        .map(|v| v.iter().collect())
        .unwrap_or_default();
    let schemas: Vec<(usize, &Value)> = versions
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v["schema"].get("openAPIV3Schema").map(|s| (i, s)))
        .collect();
    let shared = schemas.windows(2).all(|w| w[0].1 == w[1].1);
    match schemas.as_slice() {
        [(_, s), ..] if shared => vec![("spec.validation.openAPIV3Schema".to_string(), *s)],
        many => many
            .iter()
            .map(|(i, s)| (format!("spec.versions[{i}].schema.openAPIV3Schema"), *s))
            .collect(),
    }
}

/// The children of a schema node with their path segments.
fn children(schema: &Value) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        out.extend(props.iter().map(|(k, v)| (format!("properties[{k}]"), v)));
    }
    if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
        out.push(("items".to_string(), items));
    }
    if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        out.push(("additionalProperties".to_string(), extra));
    }
    out
}

fn structural(schema: &Value, path: &str, root: bool, errors: &mut Vec<FieldError>) {
    let flag = |k: &str| schema.get(k).and_then(Value::as_bool) == Some(true);
    let typed = schema
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty());
    if !typed
        && !flag("x-kubernetes-int-or-string")
        && !flag("x-kubernetes-preserve-unknown-fields")
    {
        errors.push(FieldError {
            detail: "must not be empty for specified object fields".into(),
            ..FieldError::required(&format!("{path}.type"))
        });
    }
    if root && schema.get("type").and_then(Value::as_str) != Some("object") {
        errors.push(FieldError::invalid(
            &format!("{path}.type"),
            schema.get("type").cloned().unwrap_or(json!("")),
            "must be object at the root",
        ));
    }
    for (key, what) in [
        ("$ref", "$ref is not supported"),
        ("definitions", "definitions is not supported"),
        ("dependencies", "dependencies is not supported"),
        ("patternProperties", "patternProperties is not supported"),
        ("additionalItems", "additionalItems is not supported"),
        ("id", "id is not supported"),
    ] {
        if schema.get(key).is_some() {
            errors.push(FieldError::forbidden(&format!("{path}.{key}"), what));
        }
    }
    if schema.get("type").and_then(Value::as_str) == Some("null") {
        errors.push(FieldError::forbidden(
            &format!("{path}.type"),
            "type cannot be set to null, use nullable as an alternative",
        ));
    }
    if schema.get("items").is_some_and(Value::is_array) {
        errors.push(FieldError::forbidden(
            &format!("{path}.items"),
            "items must be a schema object and not an array",
        ));
    }
    if schema.get("properties").is_some()
        && schema
            .get("additionalProperties")
            .is_some_and(Value::is_object)
    {
        errors.push(FieldError::forbidden(
            &format!("{path}.additionalProperties"),
            "additionalProperties and properties are mutual exclusive",
        ));
    }
    for (seg, child) in children(schema) {
        structural(child, &format!("{path}.{seg}"), false, errors);
    }
}

/// How many elements a node multiplies its children by (`extractMaxElements`).
fn max_elements(schema: &Value) -> Option<u64> {
    let bound = |k: &str| {
        schema
            .get(k)
            .and_then(Value::as_i64)
            .map(|v| v.max(0) as u64)
    };
    match schema.get("type").and_then(Value::as_str) {
        Some("array") => bound("maxItems"),
        Some("object")
            if schema
                .get("additionalProperties")
                .is_some_and(Value::is_object) =>
        {
            bound("maxProperties")
        }
        _ => Some(1),
    }
}

fn walk_rules(
    schema: &Value,
    path: &str,
    cardinality: Option<u64>,
    root: bool,
    costs: &mut Vec<RuleCost>,
    errors: &mut Vec<FieldError>,
) {
    let rules = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array);
    if let Some(rules) = rules.filter(|r| !r.is_empty()) {
        let decl = if root {
            DeclType::of_resource_root(schema)
        } else {
            DeclType::of(schema)
        };
        for (i, r) in rules.iter().enumerate() {
            let rule_path = format!("{path}.x-kubernetes-validations[{i}].rule");
            let text = r.get("rule").and_then(Value::as_str).unwrap_or("").trim();
            if text.is_empty() {
                errors.push(FieldError {
                    detail: "rule is not specified".into(),
                    ..FieldError::required(&rule_path)
                });
                continue;
            }
            let Some(decl) = &decl else {
                errors.push(FieldError::invalid(
                    &rule_path,
                    r.clone(),
                    "the schema node has no CEL type",
                ));
                continue;
            };
            match cost::estimate(text, decl) {
                Ok(c) => {
                    // Unbounded parents: as many as fit in a request (`maxCardinality`).
                    let n = cardinality
                        .unwrap_or(MAX_REQUEST_SIZE_BYTES / (decl.min_serialized_size + 1));
                    costs.push(RuleCost {
                        path: rule_path,
                        rule: text.to_string(),
                        cost: c.max,
                        cardinality: n,
                        total: c.max.saturating_mul(n),
                    });
                }
                Err(e) => errors.push(FieldError::invalid(&rule_path, r.clone(), e.to_string())),
            }
        }
    }
    let factor = max_elements(schema);
    let child_cardinality = cardinality.zip(factor).map(|(c, f)| c.saturating_mul(f));
    for (seg, child) in children(schema) {
        walk_rules(
            child,
            &format!("{path}.{seg}"),
            child_cardinality,
            false,
            costs,
            errors,
        );
    }
}

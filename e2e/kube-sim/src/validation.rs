//! A small structural check of custom objects against their CRD's `openAPIV3Schema`:
//! `required` fields, `enum` values and primitive types. Anything fancier (`anyOf`,
//! `x-kubernetes-int-or-string`, formats, patterns) is accepted as is.

use serde_json::Value;

/// Validates `obj` (without its metadata, apiVersion and kind) against `schema`.
pub fn validate(schema: &Value, obj: &Value) -> Result<(), String> {
    let mut errors = Vec::new();
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("apiVersion");
        m.remove("kind");
    }
    let mut schema = schema.clone();
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        props.remove("metadata");
        props.remove("apiVersion");
        props.remove("kind");
    }
    if let Some(req) = schema.get_mut("required").and_then(Value::as_array_mut) {
        req.retain(|r| !matches!(r.as_str(), Some("metadata" | "apiVersion" | "kind")));
    }
    check(&schema, &o, "", &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        _ => true,
    }
}

fn check(schema: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
    if v.is_null() {
        return;
    }
    if schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
    {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            errors.push(format!(
                "{}: Invalid value: must be an integer or a string",
                shown(path)
            ));
        }
        return;
    }
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        if !type_ok(t, v) {
            errors.push(format!(
                "{}: Invalid value: {v}: must be of type {t}",
                shown(path)
            ));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(v) {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            errors.push(format!(
                "{}: Unsupported value: {v}: supported values: {}",
                shown(path),
                list.join(", ")
            ));
        }
    }
    match v {
        Value::Object(m) => {
            for r in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if m.get(r).is_none_or(Value::is_null) {
                    errors.push(format!("{}: Required value", shown(&format!("{path}.{r}"))));
                }
            }
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, sub) in props {
                    if let Some(x) = m.get(k) {
                        check(sub, x, &format!("{path}.{k}"), errors);
                    }
                }
            }
            if let Some(add) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                let props = schema.get("properties").and_then(Value::as_object);
                for (k, x) in m {
                    if !props.is_some_and(|p| p.contains_key(k)) {
                        check(add, x, &format!("{path}.{k}"), errors);
                    }
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = schema.get("items") {
                for (i, x) in a.iter().enumerate() {
                    check(items, x, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
}

fn shown(path: &str) -> &str {
    path.strip_prefix('.').unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn enums_required_types() {
        let schema = json!({"type": "object", "required": ["spec"], "properties": {
            "metadata": {"type": "object"},
            "spec": {"type": "object", "required": ["mode"], "properties": {
                "mode": {"type": "string", "enum": ["iptables", "nftables"]},
                "priority": {"type": "integer"},
                "port": {"x-kubernetes-int-or-string": true}}}}});
        assert!(validate(
            &schema,
            &json!({"metadata": {}, "spec": {"mode": "nftables", "port": "http"}})
        )
        .is_ok());
        let e = validate(&schema, &json!({"spec": {"mode": "bogus"}})).unwrap_err();
        assert!(e.contains("spec.mode: Unsupported value"), "{e}");
        assert!(validate(&schema, &json!({"spec": {}}))
            .unwrap_err()
            .contains("spec.mode: Required"));
        assert!(validate(
            &schema,
            &json!({"spec": {"mode": "nftables", "priority": "x"}})
        )
        .is_err());
        assert!(validate(&schema, &json!({})).is_err());
    }
}

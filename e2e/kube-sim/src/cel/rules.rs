//! Evaluating `x-kubernetes-validations` rules against an object, as the API server's
//! CEL validator does: every schema node with rules is visited where the object has a
//! (non-null) value; `self` is that value, `oldSelf` the stored one on an update (rules
//! that read `oldSelf` are skipped on create). A rule that is false gives its `message`
//! (or `failed rule: RULE`) on the node's path, with the node's type as the "value", as
//! in `spec: Invalid value: "object": fallback may not repeat mode`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::{Context, Program, Value as CelValue};
use serde_json::Value;

use crate::field_error::FieldError;

/// JSON as CEL sees it: integers are `int` (not `uint`), objects are maps.
pub fn to_cel(v: &Value) -> CelValue {
    match v {
        Value::Null => CelValue::Null,
        Value::Bool(b) => CelValue::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => CelValue::Int(i),
            (None, Some(u)) => CelValue::UInt(u),
            _ => CelValue::Float(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => CelValue::String(Arc::new(s.clone())),
        Value::Array(a) => CelValue::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(m) => {
            let map: HashMap<Key, CelValue> = m
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v)))
                .collect();
            CelValue::Map(Map { map: Arc::new(map) })
        }
    }
}

fn is_cidr(s: Arc<String>) -> bool {
    // Kubernetes' isCIDR: an address/prefix whose address parses (IPv4 or IPv6).
    s.split_once('/').is_some_and(|(ip, prefix)| {
        ip.parse::<IpAddr>().is_ok_and(|addr| {
            let max = if addr.is_ipv4() { 32 } else { 128 };
            prefix.parse::<u8>().is_ok_and(|p| p <= max) && !prefix.starts_with('+')
        })
    })
}

fn is_ip(s: Arc<String>) -> bool {
    s.parse::<IpAddr>().is_ok()
}

/// The CEL type name the API server reports for a schema node.
fn type_name(schema: &Value) -> &'static str {
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => "object",
        Some("array") => "array",
        Some("string") => "string",
        Some("integer") => "integer",
        Some("number") => "number",
        Some("boolean") => "boolean",
        _ => "",
    }
}

/// Evaluates one rule; `Ok(None)` when it holds or does not apply.
fn evaluate(rule: &str, value: &Value, old: Option<&Value>) -> Result<bool, String> {
    let program = Program::compile(rule).map_err(|e| format!("compilation failed: {e}"))?;
    let uses_old = program.references().has_variable("oldSelf");
    if uses_old && old.is_none() {
        return Ok(true);
    }
    let mut ctx = Context::default();
    ctx.add_variable_from_value("self", to_cel(value));
    if let Some(o) = old {
        ctx.add_variable_from_value("oldSelf", to_cel(o));
    }
    ctx.add_function("isCIDR", is_cidr)
        .and_then(|()| ctx.add_function("isIP", is_ip))
        .map_err(|e| e.to_string())?;
    match program.execute(&ctx) {
        Ok(CelValue::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("rule did not evaluate to a bool: {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs every rule of `schema` and its children against `value` (at `path`).
pub fn validate(
    schema: &Value,
    value: &Value,
    old: Option<&Value>,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    if value.is_null() {
        return;
    }
    for rule in schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let text = rule.get("rule").and_then(Value::as_str).unwrap_or("");
        let message = rule
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("failed rule: {text}"));
        let bad = Value::String(type_name(schema).into());
        match evaluate(text, value, old) {
            Ok(true) => {}
            Ok(false) => errors.push(FieldError::invalid(path, bad, message)),
            Err(e) => errors.push(FieldError::invalid(
                path,
                bad,
                format!("rule evaluation error: {e}: {text}"),
            )),
        }
    }
    match value {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, v) in m {
                let sub = props.and_then(|p| p.get(k)).or(extra);
                if let Some(sub) = sub {
                    let o = old.and_then(|o| o.get(k));
                    validate(sub, v, o, &join(path, k), errors);
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = schema.get("items") {
                for (i, v) in a.iter().enumerate() {
                    validate(items, v, None, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
}

/// `a.b`, or `b` at the root.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn library_functions() {
        assert!(is_cidr(Arc::new("10.0.0.0/8".into())));
        assert!(is_cidr(Arc::new("fd00::/64".into())));
        assert!(!is_cidr(Arc::new("10.0.0.0".into())));
        assert!(!is_cidr(Arc::new("10.0.0.0/33".into())));
        assert!(evaluate(
            "isCIDR(self[0]) && !isCIDR(self[1])",
            &json!(["1.2.3.0/24", "x"]),
            None
        )
        .unwrap());
        assert!(evaluate("self.matches('^a+$')", &json!("aaa"), None).unwrap());
        assert!(
            evaluate("self.matches('b')", &json!("abc"), None).unwrap(),
            "matches is a search"
        );
        assert!(evaluate("duration(self) <= duration('1h')", &json!("59m59s"), None).unwrap());
        assert!(!evaluate("duration(self) <= duration('1h')", &json!("1h0.5s"), None).unwrap());
        assert!(evaluate("self.x > 1", &json!({"x": 2}), None).unwrap());
        assert!(
            evaluate("self == oldSelf", &json!(1), None).unwrap(),
            "skipped on create"
        );
        assert!(!evaluate("self == oldSelf", &json!(1), Some(&json!(2))).unwrap());
    }
}

//! What the API server does to a custom object against its CRD's `openAPIV3Schema` on
//! every write, in its order:
//!
//! 1. **Defaulting and null pruning**: a `null` in a field that is not `nullable` is
//!    dropped, then every absent property with a `default` gets it (inside objects that
//!    exist, list items included).
//! 2. **Structural validation**: `type`, `nullable`, `enum`, `required`, `pattern`,
//!    `minimum`/`maximum` (and their exclusive forms), `minLength`/`maxLength` (in
//!    characters), `minItems`/`maxItems`, `minProperties`/`maxProperties`, and the
//!    uniqueness of `x-kubernetes-list-type: set` lists. Messages are the API server's.
//! 3. **CEL rules** (`x-kubernetes-validations`, [`crate::cel::rules`]), skipped as the API
//!    server skips them when a type error or a missing required field would make them
//!    meaningless.
//!
//! Not reproduced: pruning of unknown fields, `format` checks, `x-kubernetes-list-type:
//! map` keys, embedded resources' metadata, ratcheting of unchanged invalid values.

use serde_json::{json, Map, Value};

use crate::cel;
use crate::field_error::{FieldError, FieldErrorType};

const ENVELOPE: [&str; 3] = ["metadata", "apiVersion", "kind"];

/// Defaults, validates and runs the rules of a custom object (`old`: the stored version
/// on an update). The object keeps its defaults even when it is refused.
pub fn admit(schema: &Value, obj: &mut Value, old: Option<&Value>) -> Result<(), Vec<FieldError>> {
    let Some(top) = obj.as_object_mut() else {
        return Err(vec![FieldError::invalid(
            "",
            json!("object"),
            "must be an object",
        )]);
    };
    let props = schema.get("properties").and_then(Value::as_object);
    for (k, sub) in props.into_iter().flatten() {
        if ENVELOPE.contains(&k.as_str()) {
            continue;
        }
        default_property(top, k, sub);
        if let Some(v) = top.get_mut(k) {
            apply_defaults(sub, v);
        }
    }
    let mut errors = Vec::new();
    for r in required(schema) {
        if !ENVELOPE.contains(&r) && top.get(r).is_none_or(Value::is_null) {
            errors.push(FieldError::required(r));
        }
    }
    for (k, sub) in props.into_iter().flatten() {
        if let Some(v) = top.get(k).filter(|_| !ENVELOPE.contains(&k.as_str())) {
            check(sub, v, k, &mut errors);
        }
    }
    let blocking = errors.iter().any(|e| {
        e.type_ == FieldErrorType::Required
            || (e.type_ == FieldErrorType::Invalid && e.detail.contains("must be of type"))
    });
    if !blocking {
        for (k, sub) in props.into_iter().flatten() {
            if let Some(v) = top.get(k).filter(|_| !ENVELOPE.contains(&k.as_str())) {
                cel::rules::validate(sub, v, old.and_then(|o| o.get(k)), k, &mut errors);
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn required(schema: &Value) -> impl Iterator<Item = &str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

fn nullable(schema: &Value) -> bool {
    schema.get("nullable").and_then(Value::as_bool) == Some(true)
}

/// Drops a non-nullable `null` and fills a missing property from its `default`.
fn default_property(obj: &mut Map<String, Value>, key: &str, schema: &Value) {
    if obj.get(key).is_some_and(Value::is_null) && !nullable(schema) {
        obj.remove(key);
    }
    if !obj.contains_key(key) {
        if let Some(d) = schema.get("default") {
            obj.insert(key.to_string(), d.clone());
        }
    }
}

fn apply_defaults(schema: &Value, v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, sub) in props {
                    default_property(m, k, sub);
                    if let Some(x) = m.get_mut(k) {
                        apply_defaults(sub, x);
                    }
                }
            }
            if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for x in m.values_mut() {
                    apply_defaults(extra, x);
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                items.iter_mut().for_each(|x| apply_defaults(sub, x));
            }
        }
        _ => {}
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_ok(t: &str, v: &Value) -> bool {
    let actual = json_type(v);
    actual == t || (t == "number" && actual == "integer")
}

/// Structural checks of one value (and its children) at `path`.
fn check(schema: &Value, v: &Value, path: &str, errors: &mut Vec<FieldError>) {
    if v.is_null() {
        if !nullable(schema) && schema.get("type").is_some() {
            errors.push(type_error(schema, v, path));
        }
        return;
    }
    if schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
    {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            errors.push(FieldError::invalid(
                path,
                json!(json_type(v)),
                format!("{path} in body must be of type integer-or-string"),
            ));
        }
        return;
    }
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        if !type_ok(t, v) {
            errors.push(type_error(schema, v, path));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(v) {
            errors.push(FieldError::not_supported(path, v.clone(), allowed));
        }
    }
    match v {
        Value::String(s) => check_string(schema, s, path, errors),
        Value::Number(n) => check_number(schema, n.as_f64().unwrap_or(0.0), v, path, errors),
        Value::Array(a) => check_array(schema, a, path, errors),
        Value::Object(m) => check_object(schema, m, path, errors),
        _ => {}
    }
}

fn type_error(schema: &Value, v: &Value, path: &str) -> FieldError {
    let t = schema.get("type").and_then(Value::as_str).unwrap_or("");
    FieldError::invalid(
        path,
        json!(json_type(v)),
        format!("{path} in body must be of type {t}: {:?}", json_type(v)),
    )
}

fn limit(schema: &Value, key: &str) -> Option<u64> {
    schema
        .get(key)
        .and_then(Value::as_f64)
        .map(|f| f.max(0.0) as u64)
}

fn check_string(schema: &Value, s: &str, path: &str, errors: &mut Vec<FieldError>) {
    let chars = s.chars().count() as u64;
    if let Some(max) = limit(schema, "maxLength") {
        if chars > max {
            errors.push(FieldError::too_long(path, max));
        }
    }
    if let Some(min) = limit(schema, "minLength") {
        if chars < min {
            errors.push(FieldError::invalid(
                path,
                json!(s),
                format!("{path} in body should be at least {min} chars long"),
            ));
        }
    }
    if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
        match regex::Regex::new(p) {
            Ok(re) if re.is_match(s) => {}
            Ok(_) => errors.push(FieldError::invalid(
                path,
                json!(s),
                format!("{path} in body should match '{p}'"),
            )),
            Err(e) => errors.push(FieldError::invalid(
                path,
                json!(s),
                format!("bad pattern: {e}"),
            )),
        }
    }
}

fn check_number(schema: &Value, x: f64, v: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let excl = |k: &str| schema.get(k).and_then(Value::as_bool) == Some(true);
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        let (bad, word) = if excl("exclusiveMinimum") {
            (x <= min, "greater than")
        } else {
            (x < min, "greater than or equal to")
        };
        if bad {
            errors.push(FieldError::invalid(
                path,
                v.clone(),
                format!("{path} in body should be {word} {}", number(min)),
            ));
        }
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
        let (bad, word) = if excl("exclusiveMaximum") {
            (x >= max, "less than")
        } else {
            (x > max, "less than or equal to")
        };
        if bad {
            errors.push(FieldError::invalid(
                path,
                v.clone(),
                format!("{path} in body should be {word} {}", number(max)),
            ));
        }
    }
}

fn number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        x.to_string()
    }
}

fn check_array(schema: &Value, a: &[Value], path: &str, errors: &mut Vec<FieldError>) {
    if let Some(max) = limit(schema, "maxItems") {
        if a.len() as u64 > max {
            errors.push(FieldError::too_many(path, a.len(), max));
        }
    }
    if let Some(min) = limit(schema, "minItems") {
        if (a.len() as u64) < min {
            errors.push(FieldError::invalid(
                path,
                Value::Array(a.to_vec()),
                format!("{path} in body should have at least {min} items"),
            ));
        }
    }
    if schema.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("set") {
        for (i, x) in a.iter().enumerate() {
            if a[..i].contains(x) {
                errors.push(FieldError::duplicate(&format!("{path}[{i}]"), x.clone()));
            }
        }
    }
    if let Some(items) = schema.get("items") {
        for (i, x) in a.iter().enumerate() {
            check(items, x, &format!("{path}[{i}]"), errors);
        }
    }
}

fn check_object(schema: &Value, m: &Map<String, Value>, path: &str, errors: &mut Vec<FieldError>) {
    if let Some(max) = limit(schema, "maxProperties") {
        if m.len() as u64 > max {
            errors.push(FieldError::too_many(path, m.len(), max));
        }
    }
    for r in required(schema) {
        if m.get(r).is_none_or(Value::is_null) {
            errors.push(FieldError::required(&format!("{path}.{r}")));
        }
    }
    let props = schema.get("properties").and_then(Value::as_object);
    let extra = schema.get("additionalProperties").filter(|a| a.is_object());
    for (k, x) in m {
        let sub = props.and_then(|p| p.get(k)).or(extra);
        if let Some(sub) = sub {
            check(sub, x, &format!("{path}.{k}"), errors);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "required": ["spec"], "properties": {
            "metadata": {"type": "object"},
            "spec": {"type": "object", "required": ["mode"],
              "x-kubernetes-validations": [{"rule": "self.mode != 'off' || (has(self.priority) && self.priority > 0)", "message": "off needs a priority"}],
              "properties": {
                "mode": {"type": "string", "enum": ["iptables", "nftables", "off"], "default": "iptables"},
                "priority": {"type": "integer", "minimum": 0.0, "maximum": 100.0},
                "list": {"type": "array", "maxItems": 2, "x-kubernetes-list-type": "set",
                         "items": {"type": "string", "maxLength": 3, "pattern": "^[a-z]+$"}},
                "port": {"x-kubernetes-int-or-string": true},
                "opt": {"type": "string", "nullable": true}}}}})
    }

    fn errors(obj: Value) -> Vec<String> {
        let mut o = obj;
        match admit(&schema(), &mut o, None) {
            Ok(()) => vec![],
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn defaults_then_checks() {
        let mut o = json!({"metadata": {"name": "x"}, "spec": {"opt": null, "priority": null}});
        admit(&schema(), &mut o, None).unwrap();
        assert_eq!(o["spec"], json!({"mode": "iptables", "opt": null}));
        assert_eq!(
            errors(json!({"spec": {"mode": "bogus"}})),
            ["spec.mode: Unsupported value: \"bogus\": supported values: \"iptables\", \"nftables\", \"off\""]
        );
        assert_eq!(
            errors(json!({"spec": {"list": ["a", "a", "toolong", "B"]}})),
            [
                "spec.list: Too many: 4: must have at most 2 items",
                "spec.list[1]: Duplicate value: \"a\"",
                "spec.list[2]: Too long: may not be more than 3 bytes",
                "spec.list[3]: Invalid value: \"B\": spec.list[3] in body should match '^[a-z]+$'"
            ]
        );
        assert_eq!(
            errors(json!({"spec": {"priority": 101}})),
            ["spec.priority: Invalid value: 101: spec.priority in body should be less than or equal to 100"]
        );
        assert_eq!(errors(json!({})), ["spec: Required value"]);
        assert_eq!(
            errors(json!({"spec": {"mode": "off"}})),
            ["spec: Invalid value: \"object\": off needs a priority"]
        );
        assert!(errors(json!({"spec": {"mode": "off", "priority": 1, "port": "http"}})).is_empty());
        let e = errors(json!({"spec": {"mode": "off", "priority": "x"}}));
        assert_eq!(e.len(), 1, "type errors stop the rules: {e:?}");
    }
}

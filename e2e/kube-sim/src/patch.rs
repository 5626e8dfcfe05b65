//! Patch flavours: JSON merge patch (RFC 7386), strategic merge patch (merge patch plus
//! merging lists of objects by key), JSON patch (RFC 6902) and server-side apply (a deep
//! merge of the applied fields).

use serde_json::{Map, Value};

/// RFC 7386 merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

const MERGE_KEYS: [&str; 6] = ["name", "port", "containerPort", "type", "ip", "mountPath"];

fn merge_key(items: &[Value]) -> Option<&'static str> {
    if items.is_empty() || !items.iter().all(Value::is_object) {
        return None;
    }
    MERGE_KEYS
        .into_iter()
        .find(|k| items.iter().all(|i| i.get(*k).is_some()))
}

/// Strategic merge patch, approximated: objects merge as in a merge patch, `$`-directives are
/// dropped (except `$patch: delete` list items), and lists whose items are objects sharing a
/// key (`name`, `port`, `type`, …) are merged item by item on that key.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if p.get("$patch").and_then(Value::as_str) == Some("replace") {
                let mut clean = patch.clone();
                strip_directives(&mut clean);
                *target = clean;
                return;
            }
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if k.starts_with('$') {
                    continue;
                }
                if v.is_null() {
                    t.remove(k);
                    continue;
                }
                let slot = t.entry(k.clone()).or_insert(Value::Null);
                match (slot.as_array_mut(), v.as_array()) {
                    (Some(orig), Some(items)) => {
                        if let Some(key) = merge_key(items).or_else(|| merge_key(orig)) {
                            merge_list_by_key(orig, items, key);
                        } else {
                            let mut clean = v.clone();
                            strip_directives(&mut clean);
                            *slot = clean;
                        }
                    }
                    _ => strategic_merge_patch(slot, v),
                }
            }
        }
        other => {
            let mut clean = other.clone();
            strip_directives(&mut clean);
            *target = clean;
        }
    }
}

fn merge_list_by_key(orig: &mut Vec<Value>, items: &[Value], key: &str) {
    for item in items {
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        let pos = orig.iter().position(|o| o.get(key) == item.get(key));
        match (pos, delete) {
            (Some(i), true) => {
                orig.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge_patch(&mut orig[i], item),
            (None, false) => {
                let mut clean = item.clone();
                strip_directives(&mut clean);
                orig.push(clean);
            }
        }
    }
}

fn strip_directives(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !k.starts_with('$'));
            m.values_mut().for_each(strip_directives);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

/// Server-side apply, approximated by a deep merge: objects merge recursively, everything
/// else (scalars, lists) is replaced by the applied value. Nulls are ignored.
pub fn apply_merge(target: &mut Value, applied: &Value) {
    match applied {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    continue;
                }
                apply_merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        other => *target = other.clone(),
    }
}

fn unescape(seg: &str) -> String {
    seg.replace("~1", "/").replace("~0", "~")
}

fn pointer_parts(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(vec![]);
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("invalid JSON pointer {path:?}"))?;
    Ok(rest.split('/').map(unescape).collect())
}

fn remove_at(doc: &mut Value, path: &str) -> Result<Value, String> {
    let mut parts = pointer_parts(path)?;
    let last = parts.pop().ok_or("cannot remove the root")?;
    let parent = resolve_mut(doc, &parts)?;
    match parent {
        Value::Object(m) => m.remove(&last).ok_or(format!("path {path:?} not found")),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| format!("bad index in {path:?}"))?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(format!("index out of range in {path:?}"))
            }
        }
        _ => Err(format!("path {path:?} not found")),
    }
}

fn resolve_mut<'a>(doc: &'a mut Value, parts: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for p in parts {
        cur = match cur {
            Value::Object(m) => m
                .get_mut(p)
                .ok_or(format!("path segment {p:?} not found"))?,
            Value::Array(a) => {
                let i: usize = p.parse().map_err(|_| format!("bad index {p:?}"))?;
                a.get_mut(i).ok_or(format!("index {i} out of range"))?
            }
            _ => return Err(format!("path segment {p:?} not found")),
        };
    }
    Ok(cur)
}

fn add_at(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let mut parts = pointer_parts(path)?;
    let Some(last) = parts.pop() else {
        *doc = value;
        return Ok(());
    };
    match resolve_mut(doc, &parts)? {
        Value::Object(m) => {
            m.insert(last, value);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
                return Ok(());
            }
            let i: usize = last.parse().map_err(|_| format!("bad index in {path:?}"))?;
            if i > a.len() {
                return Err(format!("index out of range in {path:?}"));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(format!("path {path:?} not found")),
    }
}

/// RFC 6902 JSON patch.
pub fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops.as_array().ok_or("a JSON patch must be an array")?;
    for op in ops {
        let path = op["path"].as_str().ok_or("op without path")?;
        match op["op"].as_str().unwrap_or("") {
            "add" => add_at(doc, path, op["value"].clone())?,
            "remove" => {
                remove_at(doc, path)?;
            }
            "replace" => {
                let parts = pointer_parts(path)?;
                *resolve_mut(doc, &parts)? = op["value"].clone();
            }
            "test" => {
                let parts = pointer_parts(path)?;
                if *resolve_mut(doc, &parts)? != op["value"] {
                    return Err(format!("test failed at {path:?}"));
                }
            }
            "move" => {
                let from = op["from"].as_str().ok_or("move without from")?;
                let v = remove_at(doc, from)?;
                add_at(doc, path, v)?;
            }
            "copy" => {
                let from = op["from"].as_str().ok_or("copy without from")?;
                let v = resolve_mut(doc, &pointer_parts(from)?)?.clone();
                add_at(doc, path, v)?;
            }
            other => return Err(format!("unknown JSON patch op {other:?}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_and_strategic() {
        let mut o = json!({"a": 1, "b": {"c": 2, "d": 3}, "l": [1, 2]});
        merge_patch(&mut o, &json!({"a": null, "b": {"c": 5}, "l": [3]}));
        assert_eq!(o, json!({"b": {"c": 5, "d": 3}, "l": [3]}));

        let mut s = json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}});
        strategic_merge_patch(
            &mut s,
            &json!({"spec": {"$setElementOrder/ports": [{"port": 80}], "ports": [{"port": 80, "targetPort": 8080}, {"port": 443, "$patch": "delete"}]}}),
        );
        assert_eq!(
            s,
            json!({"spec": {"ports": [{"port": 80, "name": "http", "targetPort": 8080}]}})
        );
    }

    #[test]
    fn json_patch_ops() {
        let mut o = json!({"a": [1, 2], "b": {"c": 1}});
        json_patch(
            &mut o,
            &json!([
                {"op": "add", "path": "/a/-", "value": 3},
                {"op": "replace", "path": "/b/c", "value": 2},
                {"op": "remove", "path": "/a/0"},
                {"op": "add", "path": "/b/x~1y", "value": true}
            ]),
        )
        .unwrap();
        assert_eq!(o, json!({"a": [2, 3], "b": {"c": 2, "x/y": true}}));
    }
}

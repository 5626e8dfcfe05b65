//! Just enough Kubernetes protobuf decoding for kubectl's typed-client requests (e.g.
//! `kubectl create namespace`): the `k8s\0` envelope, its TypeMeta and the object's
//! ObjectMeta (name, generateName, namespace, labels, annotations, finalizers). Other fields
//! of a protobuf body are dropped.

use serde_json::{json, Map, Value};

const MAGIC: &[u8] = b"k8s\0";

/// Protobuf fields: (field number, wire type, payload).
enum Field<'a> {
    Bytes(&'a [u8]),
    /// A varint or fixed-width scalar (unused here).
    Scalar,
}

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn fields(buf: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let (num, wire) = (key >> 3, key & 7);
        let f = match wire {
            0 => {
                varint(buf, &mut pos)?;
                Field::Scalar
            }
            1 => {
                pos += 8;
                Field::Scalar
            }
            2 => {
                let len = varint(buf, &mut pos)? as usize;
                let b = buf.get(pos..pos + len)?;
                pos += len;
                Field::Bytes(b)
            }
            5 => {
                pos += 4;
                Field::Scalar
            }
            _ => return None,
        };
        out.push((num, f));
    }
    (pos == buf.len()).then_some(out)
}

fn non_empty(m: &mut Map<String, Value>, k: &str, v: &[u8]) {
    if !v.is_empty() {
        m.insert(k.into(), string(v));
    }
}

fn string(b: &[u8]) -> Value {
    json!(String::from_utf8_lossy(b))
}

fn map_entry(b: &[u8]) -> Option<(String, Value)> {
    let mut key = String::new();
    let mut value = json!("");
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(k)) => key = String::from_utf8_lossy(k).into_owned(),
            (2, Field::Bytes(v)) => value = string(v),
            _ => {}
        }
    }
    Some((key, value))
}

fn object_meta(b: &[u8]) -> Option<Value> {
    let mut m = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    let mut finalizers = Vec::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(v)) => non_empty(&mut m, "name", v),
            (2, Field::Bytes(v)) => non_empty(&mut m, "generateName", v),
            (3, Field::Bytes(v)) => non_empty(&mut m, "namespace", v),
            (6, Field::Bytes(v)) => non_empty(&mut m, "resourceVersion", v),
            (11, Field::Bytes(e)) => {
                let (k, v) = map_entry(e)?;
                labels.insert(k, v);
            }
            (12, Field::Bytes(e)) => {
                let (k, v) = map_entry(e)?;
                annotations.insert(k, v);
            }
            (14, Field::Bytes(v)) => finalizers.push(string(v)),
            _ => {}
        }
    }
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), Value::Array(finalizers));
    }
    Some(Value::Object(m))
}

/// Decodes a protobuf request body into a JSON object carrying apiVersion, kind and metadata.
pub fn decode(body: &[u8]) -> Option<Value> {
    let rest = body.strip_prefix(MAGIC)?;
    let mut obj = json!({});
    for (n, f) in fields(rest)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (n, f) in fields(tm)? {
                    match (n, f) {
                        (1, Field::Bytes(v)) => obj["apiVersion"] = string(v),
                        (2, Field::Bytes(v)) => obj["kind"] = string(v),
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(raw)) => {
                let mut data = Map::new();
                for (n, f) in fields(raw)? {
                    match (n, f) {
                        (1, Field::Bytes(meta)) => obj["metadata"] = object_meta(meta)?,
                        (2, Field::Bytes(e)) => {
                            let (k, v) = map_entry(e)?;
                            data.insert(k, v);
                        }
                        _ => {}
                    }
                }
                if !data.is_empty() {
                    obj["data"] = Value::Object(data);
                }
            }
            _ => {}
        }
    }
    let supported = matches!(
        (obj["apiVersion"].as_str(), obj["kind"].as_str()),
        (Some("v1"), Some("Namespace" | "ConfigMap"))
    );
    if !supported {
        return None;
    }
    if obj["kind"] == "Namespace" {
        if let Some(m) = obj.as_object_mut() {
            m.remove("data");
        }
    }
    Some(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ld(num: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![(num << 3) | 2, payload.len() as u8];
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn namespace_envelope() {
        let tm = [ld(1, b"v1"), ld(2, b"Namespace")].concat();
        let label = [ld(1, b"team"), ld(2, b"a")].concat();
        let meta = [ld(1, b"team-a"), ld(11, &label)].concat();
        let raw = [ld(1, &meta), ld(2, b""), ld(3, b"")].concat();
        let body = [
            MAGIC.to_vec(),
            ld(1, &tm),
            ld(2, &raw),
            ld(4, b"application/vnd.kubernetes.protobuf"),
        ]
        .concat();
        assert_eq!(
            decode(&body).unwrap(),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a", "labels": {"team": "a"}}})
        );
    }
}

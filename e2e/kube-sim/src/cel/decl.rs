//! The type and worst-case size of every schema node, as the API server derives them
//! for CEL (`SchemaDeclType` in k8s.io/apiserver `pkg/cel/common/schemas.go`):
//!
//! - a string with `maxLength: n` holds at most `4n` bytes (a code point is up to four);
//!   without it, as many as a request can carry (3 MiB minus the quotes);
//! - an array without `maxItems` holds as many of its smallest items as fit in a request:
//!   `(3 MiB - 2) / (min item size + 1)`; a map without `maxProperties` likewise, with
//!   `min value size + 6` per entry;
//! - an object's smallest serialization is `{}` plus its required, undefaulted fields.

use std::collections::BTreeMap;

use serde_json::Value;

/// `DefaultMaxRequestSizeBytes` of the API server.
pub const MAX_REQUEST_SIZE_BYTES: u64 = 3 * 1024 * 1024;

/// What a schema node is in CEL.
#[derive(Debug, Clone, PartialEq)]
pub enum DeclKind {
    Object(BTreeMap<String, DeclType>),
    List(Box<DeclType>),
    Map(Box<DeclType>),
    String,
    Bytes,
    Int,
    Double,
    Bool,
    Duration,
    Timestamp,
    /// `x-kubernetes-int-or-string`.
    Dyn,
}

/// A schema node's CEL type with its size bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct DeclType {
    pub kind: DeclKind,
    /// Elements (list items, map entries, string bytes) it can hold at most.
    pub max_elements: u64,
    /// Bytes of its smallest JSON form.
    pub min_serialized_size: u64,
}

impl DeclType {
    fn simple(kind: DeclKind, min_size: u64) -> Self {
        DeclType {
            kind,
            max_elements: 0,
            min_serialized_size: min_size,
        }
    }

    /// A string of unknown length (map keys, per-request bound).
    pub fn unbounded_string() -> Self {
        DeclType {
            kind: DeclKind::String,
            max_elements: MAX_REQUEST_SIZE_BYTES - 2,
            min_serialized_size: 2,
        }
    }

    /// The declaration of `schema`; `None` for nodes CEL cannot see (an array without
    /// `items`, a type it does not know).
    pub fn of(schema: &Value) -> Option<DeclType> {
        Self::of_node(schema, false)
    }

    /// The root of a custom resource: `apiVersion`, `kind`, `metadata.name` and
    /// `metadata.generateName` are always visible.
    pub fn of_resource_root(schema: &Value) -> Option<DeclType> {
        Self::of_node(schema, true)
    }

    fn of_node(schema: &Value, resource_root: bool) -> Option<DeclType> {
        let int = |key: &str| {
            schema
                .get(key)
                .and_then(Value::as_i64)
                .map(|v| v.max(0) as u64)
        };
        if schema
            .get("x-kubernetes-int-or-string")
            .and_then(Value::as_bool)
            == Some(true)
        {
            return Some(DeclType {
                kind: DeclKind::Dyn,
                max_elements: MAX_REQUEST_SIZE_BYTES - 2,
                min_serialized_size: 1,
            });
        }
        match schema.get("type").and_then(Value::as_str)? {
            "array" => {
                let items = Self::of_node(schema.get("items")?, embedded(schema.get("items")?))?;
                let max = int("maxItems")
                    .unwrap_or((MAX_REQUEST_SIZE_BYTES - 2) / (items.min_serialized_size + 1));
                Some(DeclType {
                    kind: DeclKind::List(Box::new(items)),
                    max_elements: max,
                    min_serialized_size: 2,
                })
            }
            "object" => Some(Self::object(schema, resource_root)),
            "string" => Some(Self::string(schema)),
            "boolean" => Some(Self::simple(DeclKind::Bool, 4)),
            "number" => Some(Self::simple(DeclKind::Double, 1)),
            "integer" => Some(Self::simple(DeclKind::Int, 1)),
            _ => None,
        }
    }

    fn object(schema: &Value, resource_root: bool) -> DeclType {
        if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
            if let Some(v) = Self::of_node(values, embedded(values)) {
                let max = schema
                    .get("maxProperties")
                    .and_then(Value::as_i64)
                    .map(|m| m.max(0) as u64)
                    .unwrap_or((MAX_REQUEST_SIZE_BYTES - 2) / (v.min_serialized_size + 6));
                return DeclType {
                    kind: DeclKind::Map(Box::new(v)),
                    max_elements: max,
                    min_serialized_size: 2,
                };
            }
        }
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut fields = BTreeMap::new();
        let mut min_size = 2;
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                if let Some(t) = Self::of_node(prop, embedded(prop)) {
                    if required.contains(&name.as_str()) && prop.get("default").is_none() {
                        min_size += name.len() as u64 + t.min_serialized_size + 4;
                    }
                    fields.insert(name.clone(), t);
                }
            }
        }
        if resource_root {
            let s = || Self::unbounded_string();
            fields.entry("apiVersion".into()).or_insert_with(s);
            fields.entry("kind".into()).or_insert_with(s);
            let meta = BTreeMap::from([("name".into(), s()), ("generateName".into(), s())]);
            fields.entry("metadata".into()).or_insert(DeclType {
                kind: DeclKind::Object(meta),
                max_elements: 0,
                min_serialized_size: 2,
            });
        }
        DeclType {
            kind: DeclKind::Object(fields),
            max_elements: 0,
            min_serialized_size: min_size,
        }
    }

    fn string(schema: &Value) -> DeclType {
        let max_len = schema
            .get("maxLength")
            .and_then(Value::as_i64)
            .map(|m| m.max(0) as u64);
        let per_request = MAX_REQUEST_SIZE_BYTES - 2;
        match schema.get("format").and_then(Value::as_str) {
            Some("byte") => DeclType {
                kind: DeclKind::Bytes,
                max_elements: max_len.unwrap_or(per_request),
                min_serialized_size: 2,
            },
            // MaxDurationSizeJSON, JSONDateSize and MaxDatetimeSizeJSON of apiserver/pkg/cel.
            Some("duration") => DeclType {
                kind: DeclKind::Duration,
                max_elements: 32,
                min_serialized_size: 4,
            },
            Some("date") => DeclType {
                kind: DeclKind::Timestamp,
                max_elements: 12,
                min_serialized_size: 12,
            },
            Some("date-time") => DeclType {
                kind: DeclKind::Timestamp,
                max_elements: 37,
                min_serialized_size: 22,
            },
            _ => DeclType {
                kind: DeclKind::String,
                max_elements: max_len.map_or(per_request, |m| m.saturating_mul(4)),
                min_serialized_size: 2,
            },
        }
    }

    /// The field `name` of an object, or the value type of a map.
    pub fn field(&self, name: &str) -> Option<&DeclType> {
        match &self.kind {
            DeclKind::Object(fields) => fields.get(name),
            DeclKind::Map(values) => Some(values),
            _ => None,
        }
    }
}

fn embedded(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-embedded-resource")
        .and_then(Value::as_bool)
        == Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes_follow_the_api_server() {
        let t = DeclType::of(&json!({"type": "array", "items": {"type": "string"}})).unwrap();
        assert_eq!(t.max_elements, 1_048_575);
        let DeclKind::List(item) = &t.kind else {
            panic!()
        };
        assert_eq!(item.max_elements, 3_145_726);
        let t = DeclType::of(&json!({"type": "string", "maxLength": 10})).unwrap();
        assert_eq!(t.max_elements, 40);
        let t = DeclType::of(&json!({"type": "array", "items": {"type": "integer"}})).unwrap();
        assert_eq!(t.max_elements, 1_572_863);
    }
}

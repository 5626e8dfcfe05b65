//! OpenAPI v3 documents for the CRD-defined kinds, as the API server publishes them:
//! `/openapi/v3` lists one path per group/version with a `serverRelativeURL` carrying a
//! content hash, and `/openapi/v3/apis/GROUP/VERSION` holds the schemas under
//! `components.schemas`, named by the reversed group (`dev.switchyard.v1alpha1.ProxyConfig`)
//! and tagged with `x-kubernetes-group-version-kind`. This is what `kubectl explain`
//! reads; the descriptions in the CRD are what an operator sees first.
//!
//! Built-in kinds are not published (their schemas are not in the simulator); kubectl
//! then falls back to the empty v2 document for client-side validation, as before.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::registry::ResourceType;

/// `switchyard.dev` → `dev.switchyard`.
fn reversed(group: &str) -> String {
    group.split('.').rev().collect::<Vec<_>>().join(".")
}

/// The path key of a group/version: `apis/switchyard.dev/v1alpha1`.
pub fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The published document of one group/version, or `None` when no served kind of it has
/// a schema.
pub fn document(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let mut schemas = serde_json::Map::new();
    let mut paths = serde_json::Map::new();
    for t in types
        .iter()
        .filter(|t| t.group == group && t.version == version)
    {
        let Some(schema) = &t.schema else { continue };
        let name = format!("{}.{}.{}", reversed(group), version, t.kind);
        let gvk = json!([{"group": group, "version": version, "kind": t.kind}]);
        add_paths(&mut paths, t, &name);
        let mut s = schema.clone();
        let props = s["properties"]
            .as_object_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let mut all = serde_json::Map::new();
        all.insert("apiVersion".into(), json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#resources"}));
        all.insert("kind".into(), json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#types-kinds"}));
        all.insert("metadata".into(), json!({"type": "object", "description": "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"}));
        all.extend(props.into_iter().filter(|(k, _)| k != "metadata"));
        s["properties"] = Value::Object(all);
        s["x-kubernetes-group-version-kind"] = gvk.clone();
        schemas.insert(name.clone(), s);
        let list_gvk =
            json!([{"group": group, "version": version, "kind": format!("{}List", t.kind)}]);
        schemas.insert(
            format!("{name}List"),
            json!({
                "type": "object", "required": ["items"],
                "description": format!("{}List is a list of {}", t.kind, t.kind),
                "properties": {
                    "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                    "items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{name}")}},
                },
                "x-kubernetes-group-version-kind": list_gvk,
            }),
        );
    }
    if schemas.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes CRD Swagger", "version": "v0.1.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// The read operations of a kind: `kubectl explain` finds a resource's kind through the
/// `x-kubernetes-group-version-kind` of its paths' operations. No write operations are
/// published, so kubectl does not assume server-side field validation (which the
/// simulator does not implement) and keeps validating on its side as before.
fn add_paths(paths: &mut serde_json::Map<String, Value>, t: &ResourceType, schema: &str) {
    let base = format!("/{}", gv_path(&t.group, &t.version));
    let collection = if t.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", t.plural)
    } else {
        format!("{base}/{}", t.plural)
    };
    let gvk = json!({"group": t.group, "version": t.version, "kind": t.kind});
    let op = |action: &str, reference: String| {
        json!({"get": {
            "operationId": format!("{action}{}", t.kind),
            "responses": {"200": {"description": "OK", "content": {"application/json": {
                "schema": {"$ref": reference}}}}},
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
        }})
    };
    let r = format!("#/components/schemas/{schema}");
    paths.insert(collection.clone(), op("list", format!("{r}List")));
    paths.insert(format!("{collection}/{{name}}"), op("get", r));
}

/// A short content hash for `serverRelativeURL` (FNV-1a; clients only compare it).
fn hash(v: &Value) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in v.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016X}")
}

/// The `/openapi/v3` index.
pub fn index(types: &[ResourceType]) -> Value {
    let mut paths = BTreeMap::new();
    for t in types {
        let key = gv_path(&t.group, &t.version);
        if paths.contains_key(&key) {
            continue;
        }
        if let Some(doc) = document(types, &t.group, &t.version) {
            let url = format!("/openapi/v3/{key}?hash={}", hash(&doc));
            paths.insert(key, json!({"serverRelativeURL": url}));
        }
    }
    json!({ "paths": paths })
}

//! One manifest file's text into objects. JSON (whatever the file's extension: JSON is
//! YAML) goes through serde_json without building a document tree: a `List`'s items stay
//! slices of the text and each is decoded straight into its typed object, the items
//! shared between two threads. Other YAML goes through serde-saphyr into a document tree,
//! then the same decoding.
//!
//! Measured on a 61 MB `kind: List` of 50k Services and 50k EndpointSlices (5 endpoints
//! each), release build, in BENCHMARKS.md ("cold start").

use std::path::Path;

use serde::Deserialize;
use serde_json::{value::RawValue, Value};

use crate::{
    manifests::{FileContents, ManifestError},
    state::{Object, ObjectKey, ObjectKind},
    validation::validate,
};

/// Lists shorter than this are decoded on the calling thread.
const PARALLEL_ITEMS: usize = 2048;

/// Parses manifest text (YAML or JSON, several documents allowed).
pub fn parse_text(path: &Path, text: &str) -> Result<FileContents, ManifestError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        if let Ok(raw) = serde_json::from_str::<&RawValue>(trimmed) {
            return Ok(parse_json(path, raw));
        }
    }
    parse_yaml(path, text)
}

fn parse_yaml(path: &Path, text: &str) -> Result<FileContents, ManifestError> {
    // YAML 1.2 booleans only (`namespace: n` is the string "n", not false), as the
    // YAML parser used before (serde_yaml) read it.
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    let docs: Vec<Value> =
        serde_saphyr::from_multiple_with_options(text, options).map_err(|e| {
            ManifestError::Parse {
                file: path.to_path_buf(),
                document: 1,
                message: e.to_string(),
            }
        })?;
    let mut out = FileContents::default();
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        collect_value(path, doc, &mut out);
    }
    Ok(out)
}

/// What an object says of itself before it is decoded.
#[derive(Deserialize, Default)]
struct Head<'a> {
    #[serde(default, rename = "apiVersion", borrow)]
    api_version: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    metadata: Option<HeadMeta<'a>>,
    #[serde(default, borrow)]
    items: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize, Default)]
struct HeadMeta<'a> {
    #[serde(default, borrow)]
    name: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    namespace: Option<std::borrow::Cow<'a, str>>,
}

fn parse_json(path: &Path, raw: &RawValue) -> FileContents {
    let mut out = FileContents::default();
    let Ok(head) = serde_json::from_str::<Head>(raw.get()) else {
        return out;
    };
    match head.items {
        Some(items) if is_list(head.kind.as_deref()) => {
            if items.len() < PARALLEL_ITEMS {
                for item in items {
                    collect_raw(path, item, &mut out);
                }
            } else {
                out = parse_items(path, &items);
            }
        }
        _ => collect_raw(path, raw, &mut out),
    }
    out
}

/// A `List` (or `ServiceList`, ...) kind.
fn is_list(kind: Option<&str>) -> bool {
    kind.is_some_and(|k| k.ends_with("List"))
}

/// The items of a large list, decoded on two threads, in order.
fn parse_items(path: &Path, items: &[&RawValue]) -> FileContents {
    let (first, second) = items.split_at(items.len() / 2);
    let decode = |part: &[&RawValue]| {
        let mut out = FileContents::default();
        for item in part {
            collect_raw(path, item, &mut out);
        }
        out
    };
    let (mut a, b) = std::thread::scope(|s| {
        let other = s.spawn(|| decode(second));
        let a = decode(first);
        // A decoder never panics on any input; if one did, the process goes down loudly.
        (a, other.join().expect("manifest decoder thread panicked"))
    });
    a.objects.extend(b.objects);
    a.errors.extend(b.errors);
    a
}

fn collect_raw(path: &Path, raw: &RawValue, out: &mut FileContents) {
    let head: Head = serde_json::from_str(raw.get()).unwrap_or_default();
    if let (true, Some(items)) = (is_list(head.kind.as_deref()), &head.items) {
        for item in items {
            collect_raw(path, item, out);
        }
        return;
    }
    let api_version = head.api_version.as_deref().unwrap_or("");
    let kind = head.kind.as_deref().unwrap_or("");
    let Some(object_kind) = kind_of(api_version, kind) else {
        tracing::debug!(file = %path.display(), %kind, "ignoring object of a kind the proxy does not use");
        return;
    };
    let meta = head.metadata.unwrap_or_default();
    let names = Names {
        name: meta.name.as_deref(),
        namespace: meta.namespace.as_deref(),
    };
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let decoded = decode_typed(object_kind, &mut de);
    finish(path, object_kind, &names, decoded, out);
}

fn collect_value(path: &Path, doc: Value, out: &mut FileContents) {
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if is_list(Some(&kind)) && doc.get("items").is_some() {
        if let Value::Object(mut doc) = doc {
            if let Some(Value::Array(items)) = doc.remove("items") {
                for item in items {
                    collect_value(path, item, out);
                }
            }
        }
        return;
    }
    let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let Some(object_kind) = kind_of(api_version, &kind) else {
        tracing::debug!(file = %path.display(), %kind, "ignoring object of a kind the proxy does not use");
        return;
    };
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_string);
    let namespace = doc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .map(str::to_string);
    let names = Names {
        name: name.as_deref(),
        namespace: namespace.as_deref(),
    };
    let decoded = decode_typed(object_kind, doc);
    finish(path, object_kind, &names, decoded, out);
}

/// The object's name and namespace as written (for errors and its key).
struct Names<'a> {
    name: Option<&'a str>,
    namespace: Option<&'a str>,
}

impl Names<'_> {
    fn display(&self) -> String {
        let name = self.name.unwrap_or("<unnamed>");
        match self.namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_string(),
        }
    }

    /// The key the object will have once decoded (namespace defaulted as
    /// [`default_namespace`] does); `None` without a name.
    fn identity(&self, kind: ObjectKind) -> Option<ObjectKey> {
        let name = self.name.filter(|n| !n.is_empty())?;
        let namespace = self.namespace.unwrap_or("");
        let namespaced = matches!(kind, ObjectKind::Service | ObjectKind::EndpointSlice);
        Some(ObjectKey {
            kind,
            namespace: if namespaced && namespace.is_empty() {
                "default".into()
            } else {
                namespace.into()
            },
            name: name.into(),
        })
    }
}

/// Decodes one object of `kind`; an error names the JSON path of the field.
fn decode_typed<'de, D>(kind: ObjectKind, de: D) -> Result<Object, (String, String)>
where
    D: serde::Deserializer<'de>,
{
    fn decode<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
        de: D,
    ) -> Result<T, (String, String)> {
        serde_path_to_error::deserialize(de)
            .map_err(|e| (e.path().to_string(), e.inner().to_string()))
    }
    match kind {
        ObjectKind::Service => decode(de).map(|o| Object::Service(Box::new(o))),
        ObjectKind::EndpointSlice => decode(de).map(|o| Object::EndpointSlice(Box::new(o))),
        ObjectKind::Node => decode(de).map(|o| Object::Node(Box::new(o))),
        ObjectKind::ProxyConfig => decode(de).map(|o| Object::ProxyConfig(Box::new(o))),
    }
}

/// Validates a decoded object into `out`, or records why it is unusable.
fn finish(
    path: &Path,
    kind: ObjectKind,
    names: &Names<'_>,
    decoded: Result<Object, (String, String)>,
    out: &mut FileContents,
) {
    match decoded {
        Ok(mut object) => {
            default_namespace(&mut object);
            match validate(&object) {
                Ok(()) => out.objects.push(object),
                Err(source) => out.errors.push(ManifestError::Invalid {
                    file: path.to_path_buf(),
                    source: Box::new(source),
                }),
            }
        }
        Err((field, message)) => out.errors.push(ManifestError::Decode {
            file: path.to_path_buf(),
            kind,
            name: names.display(),
            object: names.identity(kind).map(Box::new),
            field,
            message,
        }),
    }
}

/// The kinds the proxy reads, by `apiVersion` and `kind`.
fn kind_of(api_version: &str, kind: &str) -> Option<ObjectKind> {
    match (api_version, kind) {
        ("v1", "Service") => Some(ObjectKind::Service),
        ("discovery.k8s.io/v1", "EndpointSlice") => Some(ObjectKind::EndpointSlice),
        ("v1", "Node") => Some(ObjectKind::Node),
        ("switchyard.dev/v1alpha1", "ProxyConfig") => Some(ObjectKind::ProxyConfig),
        _ => None,
    }
}

/// Namespaced kinds without a namespace live in `default`, as `kubectl apply` would put
/// them.
fn default_namespace(object: &mut Object) {
    let meta = match object {
        Object::Service(o) => &mut o.metadata,
        Object::EndpointSlice(o) => &mut o.metadata,
        Object::Node(_) | Object::ProxyConfig(_) => return,
    };
    if meta.namespace.as_deref().unwrap_or("").is_empty() {
        meta.namespace = Some("default".to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_scalars_read_as_yaml_1_2() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: y, namespace: n}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n";
        let c = parse_text(Path::new("x.yaml"), text).unwrap();
        assert!(
            c.errors.is_empty(),
            "{:?}",
            c.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>()
        );
        assert_eq!(c.objects[0].key().namespace, "n");
        assert_eq!(c.objects[0].key().name, "y");
    }

    #[test]
    fn json_is_read_as_json_whatever_the_extension() {
        let item = |i: usize| {
            format!(
                r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"s{i}","namespace":"n"}},"spec":{{"clusterIP":"10.96.0.{i}","ports":[{{"port":80}}]}}}}"#
            )
        };
        // Large enough to be decoded on two threads, with one bad item in each half.
        let mut items: Vec<String> = (0..PARALLEL_ITEMS * 2).map(|i| item(i % 250)).collect();
        items[3] = items[3].replace(r#""port":80"#, r#""port":"x""#);
        items[PARALLEL_ITEMS + 5] =
            items[PARALLEL_ITEMS + 5].replace("\"Service\"", "\"Deployment\"");
        let text = format!(
            r#"{{"apiVersion":"v1","kind":"List","items":[{}]}}"#,
            items.join(",")
        );
        let c = parse_text(Path::new("all.yaml"), &text).unwrap();
        assert_eq!(c.objects.len(), PARALLEL_ITEMS * 2 - 2);
        assert_eq!(c.errors.len(), 1);
        assert!(
            c.errors[0].to_string().contains("spec.ports[0].port"),
            "{}",
            c.errors[0]
        );
        // Order is kept across the two halves.
        assert_eq!(c.objects[0].key().name, "s0");
        assert_eq!(
            c.objects.last().unwrap().key().name,
            item_name(PARALLEL_ITEMS * 2 - 1)
        );
    }

    fn item_name(i: usize) -> String {
        format!("s{}", i % 250)
    }
}

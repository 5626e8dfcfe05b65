//! The standalone source: a directory of Kubernetes YAML/JSON manifests, followed by
//! polling. Every `*.yaml`, `*.yml` and `*.json` file is read (multi-document YAML and
//! `kind: List` included); Service, EndpointSlice, Node and ProxyConfig objects enter
//! `ClusterState`, other kinds are ignored.
//!
//! Bad input never stops the source: a file that does not parse keeps the objects it
//! last provided; an invalid object is reported (file, object, field), counted, and its
//! last valid version (if any) stays.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use serde_json::Value;
use tokio::sync::Notify;

use crate::{
    metrics::Metrics,
    state::{ClusterState, Object, ObjectKey},
    validation::validate,
};

/// A problem with one file or one object in it.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: document {document}: does not parse: {message}")]
    Parse {
        file: PathBuf,
        document: usize,
        message: String,
    },
    #[error("{file}: {kind} {name}: field {field}: {message}")]
    Decode {
        file: PathBuf,
        kind: String,
        name: String,
        field: String,
        message: String,
    },
    #[error("{file}: {source}")]
    Invalid {
        file: PathBuf,
        #[source]
        source: Box<crate::validation::InvalidObject>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// What one read of one file produced.
pub struct FileContents {
    pub objects: Vec<Object>,
    /// Per-object problems (the rest of the file is still used).
    pub errors: Vec<ManifestError>,
}

/// Reads one manifest file. `Err` means the file as a whole is unusable.
pub fn read_file(path: &Path) -> Result<FileContents, ManifestError> {
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    parse_text(path, &text)
}

/// Parses manifest text (YAML or JSON, several documents allowed).
pub fn parse_text(path: &Path, text: &str) -> Result<FileContents, ManifestError> {
    let mut docs = Vec::new();
    // JSON files: serde_json is an order of magnitude faster than the YAML parser on
    // large files (a `kind: List` of thousands of objects); YAML is the fallback.
    let json = path.extension().and_then(|e| e.to_str()) == Some("json");
    if let Some(value) = json
        .then(|| serde_json::from_str::<Value>(text).ok())
        .flatten()
    {
        docs.push(value);
    }
    let yaml_docs = if docs.is_empty() {
        Some(serde_yaml::Deserializer::from_str(text))
    } else {
        None
    };
    for (i, doc) in yaml_docs.into_iter().flatten().enumerate() {
        let value: Value =
            serde::Deserialize::deserialize(doc).map_err(|e| ManifestError::Parse {
                file: path.to_path_buf(),
                document: i + 1,
                message: e.to_string(),
            })?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    let mut out = FileContents {
        objects: Vec::new(),
        errors: Vec::new(),
    };
    for doc in docs {
        collect(path, doc, &mut out);
    }
    Ok(out)
}

fn collect(path: &Path, doc: Value, out: &mut FileContents) {
    let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = doc
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if kind == "List" || kind.ends_with("List") && doc.get("items").is_some() {
        if let Value::Object(mut doc) = doc {
            if let Some(Value::Array(items)) = doc.remove("items") {
                for item in items {
                    collect(path, item, out);
                }
            }
        }
        return;
    }
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>");
    let namespace = doc.pointer("/metadata/namespace").and_then(Value::as_str);
    let display = match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    };
    fn decode<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, (String, String)> {
        serde_path_to_error::deserialize(v)
            .map_err(|e| (e.path().to_string(), e.inner().to_string()))
    }
    let decoded: Result<Option<Object>, (String, String)> = match (api_version, kind.as_str()) {
        ("v1", "Service") => decode(doc).map(|o| Some(Object::Service(Box::new(o)))),
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            decode(doc).map(|o| Some(Object::EndpointSlice(Box::new(o))))
        }
        ("v1", "Node") => decode(doc).map(|o| Some(Object::Node(Box::new(o)))),
        ("switchyard.dev/v1alpha1", "ProxyConfig") => {
            decode(doc).map(|o| Some(Object::ProxyConfig(Box::new(o))))
        }
        _ => Ok(None),
    };
    match decoded {
        Ok(Some(mut object)) => {
            default_namespace(&mut object);
            match validate(&object) {
                Ok(()) => out.objects.push(object),
                Err(source) => out.errors.push(ManifestError::Invalid {
                    file: path.to_path_buf(),
                    source: Box::new(source),
                }),
            }
        }
        Ok(None) => {
            tracing::debug!(file = %path.display(), %kind, "ignoring object of a kind the proxy does not use")
        }
        Err((field, message)) => out.errors.push(ManifestError::Decode {
            file: path.to_path_buf(),
            kind,
            name: display,
            field,
            message,
        }),
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

fn is_manifest(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'));
    !hidden
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
}

/// Follows a directory and keeps `ClusterState` equal to what its files say.
///
/// It keeps only keys, never objects: the last good version of an object that a broken
/// edit made unreadable is the one already in `ClusterState`. Each key is allocated
/// once and shared by `provided` and `owner`.
pub struct ManifestDir {
    dir: PathBuf,
    stamps: BTreeMap<PathBuf, FileStamp>,
    /// Which objects each file provided last time it was read successfully.
    provided: BTreeMap<Arc<Path>, BTreeSet<Arc<ObjectKey>>>,
    /// Which file owns each object (the last one to provide it).
    owner: BTreeMap<Arc<ObjectKey>, Arc<Path>>,
    metrics: Metrics,
}

impl ManifestDir {
    pub fn new(dir: impl Into<PathBuf>, metrics: Metrics) -> Self {
        ManifestDir {
            dir: dir.into(),
            stamps: BTreeMap::new(),
            provided: BTreeMap::new(),
            owner: BTreeMap::new(),
            metrics,
        }
    }

    /// Reads whatever changed since the last scan into `state`. Returns whether the
    /// state changed. A missing or unreadable directory is reported and changes nothing.
    pub fn scan(&mut self, state: &Mutex<ClusterState>) -> bool {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read manifests directory; keeping current state");
                return false;
            }
        };
        let mut seen = BTreeMap::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if !is_manifest(&path) {
                continue;
            }
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            use std::os::unix::fs::MetadataExt;
            seen.insert(
                path,
                FileStamp {
                    modified: meta.modified().ok(),
                    len: meta.len(),
                    inode: meta.ino(),
                },
            );
        }
        let mut changed = false;
        let gone: Vec<PathBuf> = self
            .stamps
            .keys()
            .filter(|p| !seen.contains_key(*p))
            .cloned()
            .collect();
        for path in gone {
            self.stamps.remove(&path);
            changed |= self.replace_file_objects(&path, Vec::new(), state);
            self.provided.remove(path.as_path());
        }
        for (path, stamp) in seen {
            if self.stamps.get(&path) == Some(&stamp) {
                continue;
            }
            self.stamps.insert(path.clone(), stamp);
            match read_file(&path) {
                Ok(contents) => {
                    for e in &contents.errors {
                        let kind = match e {
                            ManifestError::Invalid { source, .. } => {
                                source.object.kind.as_str().to_string()
                            }
                            ManifestError::Decode { kind, .. } => kind.clone(),
                            _ => "unknown".to_string(),
                        };
                        self.metrics.invalid_object(&kind);
                        tracing::warn!(error = %e, "skipping invalid object (its last valid version, if any, stays in force)");
                    }
                    let mut objects = contents.objects;
                    // Keep the last valid version of objects that are now invalid.
                    let invalid_keys: BTreeSet<ObjectKey> = contents
                        .errors
                        .iter()
                        .filter_map(|e| match e {
                            ManifestError::Invalid { source, .. } => Some(source.object.clone()),
                            _ => None,
                        })
                        .collect();
                    let kept: Vec<Arc<ObjectKey>> = self
                        .provided
                        .get(path.as_path())
                        .into_iter()
                        .flatten()
                        .filter(|k| invalid_keys.contains(k.as_ref()))
                        .cloned()
                        .collect();
                    changed |= self.replace_file_objects_keeping(&path, &mut objects, &kept, state);
                }
                Err(e) => {
                    self.metrics.unparseable_files.inc();
                    tracing::warn!(error = %e, "skipping file that does not parse (objects it provided before stay in force)");
                }
            }
        }
        changed
    }

    fn replace_file_objects(
        &mut self,
        path: &Path,
        mut objects: Vec<Object>,
        state: &Mutex<ClusterState>,
    ) -> bool {
        self.replace_file_objects_keeping(path, &mut objects, &[], state)
    }

    fn replace_file_objects_keeping(
        &mut self,
        path: &Path,
        objects: &mut Vec<Object>,
        keep: &[Arc<ObjectKey>],
        state: &Mutex<ClusterState>,
    ) -> bool {
        let mut state = state.lock().expect("state lock poisoned");
        let mut changed = false;
        let (path, old) = match self.provided.remove_entry(path) {
            Some((path, old)) => (path, old),
            None => (Arc::from(path), BTreeSet::new()),
        };
        let mut new_keys: BTreeSet<Arc<ObjectKey>> = keep.iter().cloned().collect();
        for object in objects.drain(..) {
            let key = object.key();
            let key = match self.owner.get_key_value(&key) {
                Some((shared, other)) => {
                    if *other != path {
                        tracing::warn!(object = %key, file = %path.display(), other = %other.display(), "object defined in two files; the most recently read wins");
                    }
                    shared.clone()
                }
                None => Arc::new(key),
            };
            self.owner.insert(key.clone(), path.clone());
            new_keys.insert(key);
            changed |= state.upsert(object);
        }
        for key in old.difference(&new_keys) {
            if self.owner.get(key) == Some(&path) {
                self.owner.remove(key);
                changed |= state.remove(key);
            }
        }
        self.provided.insert(path, new_keys);
        changed
    }

    /// Scans every `interval` on a dedicated thread, waking `notify` on change, until
    /// `stop` is set. The first scan happens before this returns.
    pub fn follow(
        mut self,
        state: Arc<Mutex<ClusterState>>,
        notify: Arc<Notify>,
        interval: Duration,
    ) -> std::thread::JoinHandle<()> {
        if self.scan(&state) {
            notify.notify_one();
        }
        std::thread::Builder::new()
            .name("manifests".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                if self.scan(&state) {
                    notify.notify_one();
                }
            })
            .expect("spawning the manifests thread")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sy-manifests-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: n}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n";

    #[test]
    fn reads_multi_document_and_lists() {
        let text = format!(
            "{SVC}---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {{name: b, namespace: n}}\n  spec: {{clusterIP: 10.96.0.2, ports: [{{port: 81}}]}}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: ignored}}\n"
        );
        let c = parse_text(Path::new("x.yaml"), &text).unwrap();
        assert_eq!(c.objects.len(), 2);
        assert!(c.errors.is_empty());
    }

    #[test]
    fn json_files_parse() {
        let text = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"j","namespace":"n"},"spec":{"clusterIP":"10.96.0.9","ports":[{"port":53,"protocol":"UDP"}]}}"#;
        let c = parse_text(Path::new("x.json"), text).unwrap();
        assert_eq!(c.objects.len(), 1);
    }

    #[test]
    fn invalid_object_is_reported_others_kept() {
        let text = format!(
            "{SVC}---\napiVersion: v1\nkind: Service\nmetadata: {{name: bad, namespace: n}}\nspec: {{clusterIP: 10.96.0.3, ports: [{{port: 70000}}]}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: worse, namespace: n}}\nspec: {{clusterIP: 10.96.0.4, ports: [{{port: eighty}}]}}\n"
        );
        let c = parse_text(Path::new("x.yaml"), &text).unwrap();
        assert_eq!(c.objects.len(), 1);
        assert_eq!(c.errors.len(), 2);
        let msgs: Vec<String> = c.errors.iter().map(|e| e.to_string()).collect();
        assert!(
            msgs[0].contains("Service n/bad") && msgs[0].contains("spec.ports[0].port"),
            "{}",
            msgs[0]
        );
        assert!(
            msgs[1].contains("n/worse") && msgs[1].contains("spec.ports[0].port"),
            "{}",
            msgs[1]
        );
    }

    #[test]
    fn follows_adds_edits_deletes_and_keeps_last_good() {
        let dir = tmpdir("follow");
        let metrics = Metrics::new();
        let state = Mutex::new(ClusterState::default());
        let mut src = ManifestDir::new(&dir, metrics.clone());
        std::fs::write(dir.join("a.yaml"), SVC).unwrap();
        std::fs::write(dir.join("notes.txt"), "not a manifest").unwrap();
        assert!(src.scan(&state));
        assert_eq!(state.lock().unwrap().service_count(), 1);
        assert!(!src.scan(&state), "nothing changed");

        // A broken edit keeps the last good objects.
        std::fs::write(dir.join("a.yaml"), "kind: [unclosed").unwrap();
        assert!(!src.scan(&state));
        assert_eq!(state.lock().unwrap().service_count(), 1);
        assert_eq!(metrics.unparseable_files.get(), 1);

        // Rename into place.
        std::fs::write(dir.join(".b.tmp"), SVC.replace("name: a", "name: b")).unwrap();
        std::fs::rename(dir.join(".b.tmp"), dir.join("b.yml")).unwrap();
        assert!(src.scan(&state));
        assert_eq!(state.lock().unwrap().service_count(), 2);

        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        assert!(src.scan(&state));
        assert_eq!(state.lock().unwrap().service_count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_invalid_edit_keeps_the_last_valid_object() {
        let dir = tmpdir("invalid");
        let state = Mutex::new(ClusterState::default());
        let mut src = ManifestDir::new(&dir, Metrics::new());
        let other = SVC.replace("name: a", "name: b");
        std::fs::write(dir.join("a.yaml"), format!("{SVC}---\n{other}")).unwrap();
        assert!(src.scan(&state));
        let port = |st: &ClusterState, name: &str| st.service("n", name).map(|s| s.ports[0].port);
        // `a` turns invalid, `b` is edited: `a` keeps its last valid version.
        std::fs::write(
            dir.join("a.yaml"),
            format!(
                "{}---\n{}",
                SVC.replace("port: 80", "port: 70000"),
                other.replace("port: 80", "port: 81")
            ),
        )
        .unwrap();
        assert!(src.scan(&state));
        assert_eq!(port(&state.lock().unwrap(), "a"), Some(80));
        assert_eq!(port(&state.lock().unwrap(), "b"), Some(81));
        // The file goes away: so do both.
        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        assert!(src.scan(&state));
        assert_eq!(state.lock().unwrap().service_count(), 0);
        assert!(src.owner.is_empty() && src.provided.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

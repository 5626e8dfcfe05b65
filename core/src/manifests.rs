//! The standalone source: a directory of Kubernetes YAML/JSON manifests, followed through
//! inotify (polling where inotify cannot serve; see [`crate::dir_watch`]). Every `*.yaml`, `*.yml` and `*.json` file is read (multi-document YAML and
//! `kind: List` included); Service, EndpointSlice, Node and ProxyConfig objects enter
//! `ClusterState`, other kinds are ignored.
//!
//! Bad input never stops the source: a file that does not parse keeps the objects it
//! last provided; an object that is invalid or does not decode (a field of the wrong
//! type) is reported (file, object, field), counted, and its last valid version (if any)
//! stays.
//!
//! **The first read.** Until the directory has been read once completely — listed, with
//! at least one manifest file, every manifest file read and parsed — [`Following`] says
//! the first sync must wait. A node restarted while its directory is missing, empty,
//! unreadable or half-written would otherwise program an empty (or partial) ruleset over
//! the working rules its previous run left; waiting keeps them serving, as the agent waits
//! for its first lists from the API server. Object-level errors do not hold the first
//! read: an API server would have refused such an object too. After the first read,
//! the same problems keep the last good objects instead.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tokio::sync::{watch, Notify};

use crate::{
    dir_watch::DirWatch,
    liveness::Liveness,
    metrics::Metrics,
    state::{ClusterState, Object, ObjectKey, ObjectKind},
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
    #[error("{file}: {} {name}: field {field}: {message}", kind.as_str())]
    Decode {
        file: PathBuf,
        kind: ObjectKind,
        name: String,
        /// The object's identity, when its metadata names it.
        object: Option<Box<ObjectKey>>,
        field: String,
        message: String,
    },
    #[error("{file}: {source}")]
    Invalid {
        file: PathBuf,
        #[source]
        source: Box<crate::validation::InvalidObject>,
    },
    #[error("the manifests scan thread stopped before the directory was read once")]
    Stopped,
}

impl ManifestError {
    /// The object an object-level error is about (its last valid version stays).
    pub fn object(&self) -> Option<&ObjectKey> {
        match self {
            ManifestError::Invalid { source, .. } => Some(&source.object),
            ManifestError::Decode { object, .. } => object.as_deref(),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// What one read of one file produced.
#[derive(Default)]
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

pub use crate::manifest_docs::parse_text;

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

/// Longest silence of the scan thread before `/livez` fails, beyond the scan interval:
/// a scan re-reads only the files that changed, and reading one 46 MB file of 50k
/// Services and EndpointSlices takes a few seconds (BENCHMARKS.md, the agent at 50k).
pub const SCAN_SILENCE_LIMIT: Duration = Duration::from_secs(30);

/// What one scan found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    /// The state changed.
    pub changed: bool,
    /// Why the directory, as it stands, is not completely read: it cannot be listed, it
    /// holds no manifest file, or a manifest file could not be read or parsed (at its
    /// last change). `None`: complete.
    pub incomplete: Option<String>,
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
    /// Manifest files whose last read failed, and why.
    broken: BTreeMap<PathBuf, String>,
    metrics: Metrics,
}

impl ManifestDir {
    pub fn new(dir: impl Into<PathBuf>, metrics: Metrics) -> Self {
        ManifestDir {
            dir: dir.into(),
            stamps: BTreeMap::new(),
            provided: BTreeMap::new(),
            owner: BTreeMap::new(),
            broken: BTreeMap::new(),
            metrics,
        }
    }

    /// Lists the manifest files; `Err` when the directory itself cannot be read. Entries
    /// that cannot be examined make the listing incomplete (the second value).
    fn list(&self) -> Result<(BTreeMap<PathBuf, FileStamp>, Vec<String>), String> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| format!("cannot read directory {}: {e}", self.dir.display()))?;
        let mut seen = BTreeMap::new();
        let mut problems = Vec::new();
        for entry in entries {
            let path = match entry {
                Ok(entry) => entry.path(),
                Err(e) => {
                    problems.push(format!("{}: {e}", self.dir.display()));
                    continue;
                }
            };
            if !is_manifest(&path) {
                continue;
            }
            let meta = match std::fs::metadata(&path) {
                Ok(meta) => meta,
                Err(e) => {
                    problems.push(format!("{}: {e}", path.display()));
                    continue;
                }
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
        Ok((seen, problems))
    }

    /// Reads whatever changed since the last scan into `state`. A missing or unreadable
    /// directory is reported and changes nothing.
    pub fn scan(&mut self, state: &Mutex<ClusterState>) -> Scan {
        let (seen, problems) = match self.list() {
            Ok(listed) => listed,
            Err(reason) => {
                tracing::debug!(%reason, "keeping current state");
                return Scan {
                    changed: false,
                    incomplete: Some(reason),
                };
            }
        };
        let mut changed = false;
        let gone: Vec<PathBuf> = self
            .stamps
            .keys()
            .filter(|p| !seen.contains_key(*p))
            .cloned()
            .collect();
        for path in gone {
            self.stamps.remove(&path);
            self.broken.remove(&path);
            changed |= self.replace_file_objects(&path, Vec::new(), state);
            self.provided.remove(path.as_path());
        }
        let empty = seen.is_empty();
        for (path, stamp) in seen {
            if self.stamps.get(&path) == Some(&stamp) {
                continue;
            }
            self.stamps.insert(path.clone(), stamp);
            let file_changed = self.read_changed_file(&path, state);
            tracing::debug!(file = %path.display(), state_changed = file_changed, "manifest file read");
            changed |= file_changed;
        }
        let incomplete = if let Some(problem) = problems.into_iter().next() {
            Some(problem)
        } else if let Some((file, why)) = self.broken.iter().next() {
            Some(format!("{}: {why}", file.display()))
        } else if empty {
            Some(format!(
                "no manifest (*.yaml, *.yml, *.json) in {} yet",
                self.dir.display()
            ))
        } else {
            None
        };
        Scan {
            changed,
            incomplete,
        }
    }

    /// Reads one new or changed file into `state`; returns whether the state changed.
    fn read_changed_file(&mut self, path: &Path, state: &Mutex<ClusterState>) -> bool {
        let contents = match read_file(path) {
            Ok(contents) => contents,
            Err(e) => {
                self.metrics.unparseable_files.inc();
                tracing::warn!(error = %e, "skipping file that does not parse (objects it provided before stay in force)");
                let why = match &e {
                    ManifestError::Read { source, .. } => format!("cannot read: {source}"),
                    ManifestError::Parse { message, .. } => format!("does not parse: {message}"),
                    other => other.to_string(),
                };
                self.broken.insert(path.to_path_buf(), why);
                return false;
            }
        };
        self.broken.remove(path);
        for e in &contents.errors {
            let kind = match e {
                ManifestError::Invalid { source, .. } => source.object.kind.as_str(),
                ManifestError::Decode { kind, .. } => kind.as_str(),
                _ => "unknown",
            };
            self.metrics.invalid_object(kind);
            tracing::warn!(error = %e, "skipping invalid object (its last valid version, if any, stays in force)");
        }
        let mut objects = contents.objects;
        // Keep the last valid version of objects that are now invalid or undecodable.
        let failed: BTreeSet<&ObjectKey> = contents
            .errors
            .iter()
            .filter_map(ManifestError::object)
            .collect();
        let kept: Vec<Arc<ObjectKey>> = self
            .provided
            .get(path)
            .into_iter()
            .flatten()
            .filter(|k| failed.contains(k.as_ref()))
            .cloned()
            .collect();
        self.replace_file_objects_keeping(path, &mut objects, &kept, state)
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

    /// Scans on a dedicated thread ("manifests") whenever inotify reports a change in
    /// the directory (and every [`crate::dir_watch::RESCAN_INTERVAL`] regardless), or every `interval`
    /// where inotify cannot serve; wakes `notify` on change, for as long as the process
    /// runs. The thread ticks a heartbeat in `liveness` each time round (`manifests
    /// scan`, allowed the longer wait + [`SCAN_SILENCE_LIMIT`] of silence).
    pub fn follow(
        self,
        state: Arc<Mutex<ClusterState>>,
        notify: Arc<Notify>,
        interval: Duration,
        liveness: &Liveness,
    ) -> Following {
        let wakeup = DirWatch::new(self.dir.clone(), interval);
        self.follow_with(state, notify, wakeup, liveness)
    }

    /// [`ManifestDir::follow`], woken by `wakeup`.
    pub fn follow_with(
        mut self,
        state: Arc<Mutex<ClusterState>>,
        notify: Arc<Notify>,
        mut wakeup: DirWatch,
        liveness: &Liveness,
    ) -> Following {
        let (done, first_read) = watch::channel(false);
        let heartbeat =
            liveness.register("manifests scan", wakeup.longest_wait() + SCAN_SILENCE_LIMIT);
        let fault = ScanFault::from_env();
        let mut waiting = WaitLog::default();
        std::thread::Builder::new()
            .name("manifests".into())
            .spawn(move || loop {
                heartbeat.tick();
                let scan = self.scan(&state);
                if scan.changed {
                    notify.notify_one();
                }
                if !*done.borrow() {
                    match &scan.incomplete {
                        None => {
                            tracing::info!(dir = %self.dir.display(), "manifests directory read completely: syncing may start");
                            let _ = done.send(true);
                        }
                        Some(reason) => waiting.report(reason),
                    }
                } else if let Some(fault) = fault {
                    fault.strike();
                }
                wakeup.wait();
            })
            .expect("spawning the manifests thread");
        Following { first_read }
    }
}

/// A followed directory (see [`ManifestDir::follow`]).
pub struct Following {
    first_read: watch::Receiver<bool>,
}

impl Following {
    /// Returns once the directory has been read completely (see the module doc): no
    /// sync may start before. Logs why it waits, meanwhile, from the scan thread.
    pub async fn first_read(&mut self) -> Result<(), ManifestError> {
        self.first_read
            .wait_for(|done| *done)
            .await
            .map(|_| ())
            .map_err(|_| ManifestError::Stopped)
    }
}

/// Logs why the first sync waits: at once when the reason changes, then every 30 s.
#[derive(Default)]
struct WaitLog {
    last: Option<(String, std::time::Instant)>,
}

impl WaitLog {
    fn report(&mut self, reason: &str) {
        let due = match &self.last {
            Some((last, at)) => last != reason || at.elapsed() >= Duration::from_secs(30),
            None => true,
        };
        if due {
            tracing::warn!(%reason, "manifests directory not read completely yet: no sync until it is (the rules already in the kernel stay)");
            self.last = Some((reason.to_string(), std::time::Instant::now()));
        }
    }
}

/// Faults the reliability tests inject into the scan thread through the environment
/// variable `SWITCHYARD_FAULT` (never set in production), after the first complete
/// read: `manifests-panic` panics the thread, `manifests-stall` stops it for good
/// (no more scans, no more heartbeats).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ScanFault {
    Panic,
    Stall,
}

impl ScanFault {
    fn from_env() -> Option<ScanFault> {
        let value = std::env::var("SWITCHYARD_FAULT").ok()?;
        match value.as_str() {
            "manifests-panic" => Some(ScanFault::Panic),
            "manifests-stall" => Some(ScanFault::Stall),
            other => {
                tracing::warn!(value = %other, "SWITCHYARD_FAULT: not a fault of the manifests scan thread (manifests-panic, manifests-stall); ignored");
                None
            }
        }
    }

    fn strike(self) {
        tracing::warn!(fault = ?self, "SWITCHYARD_FAULT: injecting a fault into the manifests scan thread");
        match self {
            ScanFault::Panic => panic!("SWITCHYARD_FAULT=manifests-panic: injected panic"),
            ScanFault::Stall => loop {
                std::thread::park();
            },
        }
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
        assert!(src.scan(&state).changed);
        assert_eq!(state.lock().unwrap().service_count(), 1);
        assert!(!src.scan(&state).changed, "nothing changed");

        // A broken edit keeps the last good objects.
        std::fs::write(dir.join("a.yaml"), "kind: [unclosed").unwrap();
        assert!(!src.scan(&state).changed);
        assert_eq!(state.lock().unwrap().service_count(), 1);
        assert_eq!(metrics.unparseable_files.get(), 1);

        // Rename into place.
        std::fs::write(dir.join(".b.tmp"), SVC.replace("name: a", "name: b")).unwrap();
        std::fs::rename(dir.join(".b.tmp"), dir.join("b.yml")).unwrap();
        assert!(src.scan(&state).changed);
        assert_eq!(state.lock().unwrap().service_count(), 2);

        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        assert!(src.scan(&state).changed);
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
        assert!(src.scan(&state).changed);
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
        assert!(src.scan(&state).changed);
        assert_eq!(port(&state.lock().unwrap(), "a"), Some(80));
        assert_eq!(port(&state.lock().unwrap(), "b"), Some(81));
        // The file goes away: so do both.
        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        assert!(src.scan(&state).changed);
        assert_eq!(state.lock().unwrap().service_count(), 0);
        assert!(src.owner.is_empty() && src.provided.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_undecodable_edit_keeps_the_last_valid_object() {
        let dir = tmpdir("decode");
        let metrics = Metrics::new();
        let state = Mutex::new(ClusterState::default());
        let mut src = ManifestDir::new(&dir, metrics.clone());
        // No namespace: the object lives in `default`, and so must its kept version.
        let svc = SVC.replace("namespace: n", "labels: {}");
        let other = svc.replace("name: a", "name: b");
        std::fs::write(dir.join("a.yaml"), format!("{svc}---\n{other}")).unwrap();
        assert!(src.scan(&state).changed);
        let port =
            |st: &ClusterState, name: &str| st.service("default", name).map(|s| s.ports[0].port);
        // `a` gets a port of the wrong type (a decode error), `b` is edited.
        std::fs::write(
            dir.join("a.yaml"),
            format!(
                "{}---\n{}",
                svc.replace("port: 80", "port: eighty"),
                other.replace("port: 80", "port: 81")
            ),
        )
        .unwrap();
        assert!(src.scan(&state).changed);
        assert_eq!(port(&state.lock().unwrap(), "a"), Some(80), "a kept");
        assert_eq!(port(&state.lock().unwrap(), "b"), Some(81));
        assert!(metrics
            .render()
            .contains(r#"switchyard_invalid_objects_total{kind="Service"} 1"#));
        // Fixed again: the new version wins.
        std::fs::write(
            dir.join("a.yaml"),
            format!("{}---\n{other}", svc.replace("port: 80", "port: 82")),
        )
        .unwrap();
        assert!(src.scan(&state).changed);
        assert_eq!(port(&state.lock().unwrap(), "a"), Some(82));
        // An undecodable object never seen valid enters nothing.
        std::fs::write(
            dir.join("c.yaml"),
            svc.replace("name: a", "name: c")
                .replace("port: 80", "port: [1]"),
        )
        .unwrap();
        assert!(!src.scan(&state).changed);
        assert_eq!(port(&state.lock().unwrap(), "c"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn complete_only_once_every_manifest_is_read() {
        let dir = tmpdir("complete");
        let state = Mutex::new(ClusterState::default());
        let missing = dir.join("not-yet");
        let mut src = ManifestDir::new(&missing, Metrics::new());
        let why = src.scan(&state).incomplete.unwrap();
        assert!(why.contains("cannot read directory"), "{why}");
        std::fs::create_dir(&missing).unwrap();
        std::fs::write(missing.join("README.txt"), "not a manifest").unwrap();
        let why = src.scan(&state).incomplete.unwrap();
        assert!(why.starts_with("no manifest"), "{why}");
        std::fs::write(missing.join("a.yaml"), "kind: [unclosed").unwrap();
        let why = src.scan(&state).incomplete.unwrap();
        assert!(why.contains("a.yaml: does not parse"), "{why}");
        // Unchanged, still broken: still incomplete.
        assert!(src.scan(&state).incomplete.is_some());
        std::os::unix::fs::symlink(missing.join("gone"), missing.join("b.yaml")).unwrap();
        std::fs::write(missing.join("a.yaml"), SVC).unwrap();
        let why = src.scan(&state).incomplete.unwrap();
        assert!(
            why.contains("b.yaml"),
            "a dangling link is not a read: {why}"
        );
        std::fs::remove_file(missing.join("b.yaml")).unwrap();
        // An invalid object does not hold the read back.
        std::fs::write(
            missing.join("c.yaml"),
            SVC.replace("name: a", "name: c")
                .replace("port: 80", "port: 70000"),
        )
        .unwrap();
        assert_eq!(src.scan(&state).incomplete, None);
        assert_eq!(state.lock().unwrap().service_count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn following_waits_for_the_first_complete_read() {
        let dir = tmpdir("following");
        let state = Arc::new(Mutex::new(ClusterState::default()));
        let liveness = Liveness::new();
        let mut following = ManifestDir::new(&dir, Metrics::new()).follow(
            state.clone(),
            Arc::new(Notify::new()),
            Duration::from_millis(10),
            &liveness,
        );
        let wait = tokio::time::timeout(Duration::from_millis(200), following.first_read());
        assert!(wait.await.is_err(), "an empty directory is no first read");
        std::fs::write(dir.join("a.yaml"), SVC).unwrap();
        tokio::time::timeout(Duration::from_secs(5), following.first_read())
            .await
            .expect("read once a manifest is there")
            .unwrap();
        assert_eq!(state.lock().unwrap().service_count(), 1);
        let live = liveness.verdict();
        assert!(
            live.alive && live.loops[0].name == "manifests scan",
            "{live:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Issue 12 part 3: with inotify, an edit is read at once, not at the next poll
    /// (the poll interval here is a minute).
    #[tokio::test]
    async fn follows_edits_through_inotify() {
        let dir = tmpdir("inotify");
        std::fs::write(dir.join("a.yaml"), SVC).unwrap();
        let state = Arc::new(Mutex::new(ClusterState::default()));
        let notify = Arc::new(Notify::new());
        let mut following = ManifestDir::new(&dir, Metrics::new()).follow(
            state.clone(),
            notify.clone(),
            Duration::from_secs(60),
            &Liveness::new(),
        );
        following.first_read().await.unwrap();
        // Let the scan thread reach its wait.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let written = std::time::Instant::now();
        std::fs::write(dir.join("b.yaml"), SVC.replace("name: a", "name: b")).unwrap();
        while state.lock().unwrap().service_count() < 2 {
            assert!(
                written.elapsed() < Duration::from_secs(3),
                "not read within 3 s: inotify did not wake the scan"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let took = written.elapsed();
        assert!(took < Duration::from_secs(1), "{took:?}");
        println!("file write to state: {took:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

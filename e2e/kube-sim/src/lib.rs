//! `switchyard-kube-sim`: a Kubernetes API server simulator for end-to-end tests, speaking
//! plain HTTP on 127.0.0.1 to kube-rs clients and to kubectl.
//!
//! Contents:
//! - [`KubeSim`] (this file): start/stop/outage control, kubeconfig, direct object access.
//! - [`background`]: [`BackgroundKubeSim`], the same on private runtime threads for sync code.
//! - [`server`]: HTTP routing, discovery, query parsing, content negotiation.
//! - [`store`]: objects, resourceVersions, verbs' semantics, watch history.
//! - [`watch`]: watch streams (replay, 410, bookmarks, timeouts, streaming lists).
//! - [`registry`]: built-in and CRD-defined resource types, discovery documents.
//! - [`patch`]: merge, strategic merge, JSON patch, server-side apply merge.
//! - [`selector`]: label and field selectors.
//! - [`table`]: `Table` output for kubectl (printer columns, JSONPath, ages).
//! - [`protobuf`]: minimal decoding of kubectl's protobuf request bodies.
//! - [`validation`]: what the API server does to a custom object on write: schema
//!   defaults, structural checks, CEL rules.
//! - [`cel`]: CEL for validation rules: schema types and sizes, cost estimation, rule
//!   evaluation.
//! - [`crd_admission`]: create-time checks of a CRD (structural schema, rules that
//!   compile, rule cost within budget).
//! - [`field_error`]: field errors worded as the API server words them.
//! - [`openapi`]: the OpenAPI v3 documents kubectl reads (`kubectl explain`).
//! - [`events`]: core/v1 ⇄ events.k8s.io/v1 Event conversion (shared storage).
//! - [`defaults`]: Service defaulting (cluster IP and node port allocation).
//! - [`status`]: errors as `Status` objects.

pub mod background;
pub mod cel;
pub mod crd_admission;
pub mod defaults;
pub mod events;
pub mod field_error;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod registry;
pub mod selector;
pub mod server;
pub mod status;
pub mod store;
pub mod table;
pub mod validation;
pub mod watch;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use serde_json::Value;
use tokio::task::JoinHandle;

pub use background::BackgroundKubeSim;
pub use server::Options;
use store::{PatchKind, Store};

/// A running simulator. Dropping it stops the server.
pub struct KubeSim {
    shared: Arc<server::Shared>,
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

async fn spawn_server(
    shared: Arc<server::Shared>,
    addr: SocketAddr,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let addr = listener.local_addr()?;
    let app = server::router(shared);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, task))
}

impl KubeSim {
    /// Starts on 127.0.0.1 with an ephemeral port and default options.
    pub async fn start() -> anyhow::Result<KubeSim> {
        Self::start_with(0, Options::default()).await
    }

    /// Starts on 127.0.0.1:`port` (0 = ephemeral).
    pub async fn start_with(port: u16, options: Options) -> anyhow::Result<KubeSim> {
        let shared = Arc::new(server::Shared::new(options));
        let (addr, task) =
            spawn_server(shared.clone(), SocketAddr::from(([127, 0, 0, 1], port))).await?;
        Ok(KubeSim {
            shared,
            addr,
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A kubeconfig pointing at the simulator (context `kube-sim`, namespace `default`).
    pub fn kubeconfig(&self) -> String {
        kubeconfig_for(&self.url())
    }

    /// Writes [`KubeSim::kubeconfig`] to `path` (for kubectl and the agent's `KUBECONFIG`).
    pub fn write_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        // Write-then-rename, so whoever polls for the file never reads half of it.
        let tmp = path.with_extension("kube-sim-tmp");
        std::fs::write(&tmp, self.kubeconfig())
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Stops serving: the listener closes (connections are refused), requests on kept-alive
    /// connections get 503 and open watches end. [`KubeSim::restart`] undoes it.
    pub fn stop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        if let Some(t) = self.task.take() {
            t.abort();
        }
        self.shared.drop_watches();
    }

    /// Serves again on the same port, with the same state.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.task.is_none() {
            let mut last = None;
            for _ in 0..50 {
                match spawn_server(self.shared.clone(), self.addr).await {
                    Ok((_, task)) => {
                        self.task = Some(task);
                        last = None;
                        break;
                    }
                    Err(e) => {
                        last = Some(e);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            if let Some(e) = last {
                return Err(e);
            }
        }
        self.shared.stopped.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Simulates an outage: open watches end now and every request gets 503 for `d`.
    pub fn pause_for(&self, d: Duration) {
        *self.shared.down_until.lock().expect("lock") = Some(Instant::now() + d);
        self.shared.drop_watches();
    }

    /// Ends a [`KubeSim::pause_for`] outage early.
    pub fn resume(&self) {
        *self.shared.down_until.lock().expect("lock") = None;
    }

    /// Ends every open watch (clients re-watch from their last resourceVersion).
    pub fn drop_watches(&self) {
        self.shared.drop_watches();
    }

    /// Forgets the watch history: watches from any current resourceVersion get 410 Expired.
    pub fn compact_history(&self) {
        self.shared.store.lock().expect("lock").compact();
    }

    /// The current (global) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.lock().expect("lock").resource_version()
    }

    fn resolve(
        store: &Store,
        api_version: &str,
        kind: &str,
    ) -> anyhow::Result<registry::ResourceType> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        store
            .types()
            .iter()
            .find(|t| t.group == group && t.version == version && t.kind == kind)
            .cloned()
            .ok_or_else(|| anyhow!("no resource serves {api_version} {kind}"))
    }

    /// Creates the object, or merges it into the existing one (like server-side apply).
    pub fn apply(&self, obj: Value) -> anyhow::Result<Value> {
        let mut store = self.shared.store.lock().expect("lock");
        let rt = Self::resolve(
            &store,
            obj["apiVersion"].as_str().unwrap_or(""),
            obj["kind"].as_str().unwrap_or(""),
        )?;
        let name = obj["metadata"]["name"]
            .as_str()
            .ok_or_else(|| anyhow!("metadata.name is required"))?
            .to_string();
        let ns = rt.namespaced.then(|| {
            obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        });
        let status = obj.get("status").cloned();
        let out = store
            .apply(&rt, ns.as_deref(), &name, obj, false, "kube-sim")
            .map_err(|e| anyhow!(e.message))?;
        match status {
            Some(s) if rt.has_status => store
                .patch(
                    &rt,
                    ns.as_deref(),
                    &name,
                    PatchKind::Merge,
                    serde_json::json!({ "status": s }),
                    true,
                )
                .map_err(|e| anyhow!(e.message)),
            _ => Ok(out),
        }
    }

    /// [`KubeSim::apply`] for every document of a (multi-document) YAML string.
    pub fn apply_yaml(&self, yaml: &str) -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::new();
        // One JSON document (JSON is YAML) is read by serde_json: a 61 MB `List` of 50k
        // Services and 50k EndpointSlices loads in seconds instead of minutes.
        let docs: Vec<Value> = match serde_json::from_str::<Value>(yaml) {
            Ok(v) => vec![v],
            Err(_) => serde_yaml::Deserializer::from_str(yaml)
                .map(serde::Deserialize::deserialize)
                .collect::<Result<_, _>>()?,
        };
        for mut v in docs {
            if v.is_null() {
                continue;
            }
            if v["kind"].as_str().is_some_and(|k| k.ends_with("List")) {
                let items = match v.get_mut("items") {
                    Some(Value::Array(items)) => std::mem::take(items),
                    _ => Vec::new(),
                };
                for item in items {
                    out.push(self.apply(item)?);
                }
            } else {
                out.push(self.apply(v)?);
            }
        }
        Ok(out)
    }

    /// One object, if present (`namespace` is ignored for cluster-scoped kinds).
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let store = self.shared.store.lock().expect("lock");
        let rt = Self::resolve(&store, api_version, kind).ok()?;
        let ns = if rt.namespaced { namespace } else { "" };
        store.get(&rt, ns, name).ok()
    }

    /// All objects of a kind, across namespaces.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let store = self.shared.store.lock().expect("lock");
        match Self::resolve(&store, api_version, kind) {
            Ok(rt) => store.list(&rt, None, &Default::default()).0,
            Err(_) => Vec::new(),
        }
    }

    /// Deletes one object; `Ok(false)` when it did not exist.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<bool> {
        let mut store = self.shared.store.lock().expect("lock");
        let rt = Self::resolve(&store, api_version, kind)?;
        let ns = rt.namespaced.then_some(namespace);
        match store.delete(&rt, ns, name) {
            Ok(_) => Ok(true),
            Err(e) if e.code == 404 => Ok(false),
            Err(e) => Err(anyhow!(e.message)),
        }
    }
}

impl Drop for KubeSim {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.shared.drop_watches();
    }
}

/// A kubeconfig for a simulator at `url`.
pub fn kubeconfig_for(url: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kube-sim
  cluster:
    server: {url}
contexts:
- name: kube-sim
  context:
    cluster: kube-sim
    user: kube-sim
    namespace: default
current-context: kube-sim
users:
- name: kube-sim
  user: {{}}
preferences: {{}}
"
    )
}

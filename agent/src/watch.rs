//! Watchers feeding `ClusterState`. Each kind is followed by a kube-runtime watcher with
//! the default backoff; a relist replaces that kind's objects only once it is complete,
//! so a reconnect never empties the state.

use std::{
    collections::BTreeSet,
    fmt::Debug,
    sync::{Arc, Mutex},
};

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api, Client, Resource,
};
use serde::de::DeserializeOwned;
use switchyard_core::{
    metrics::Metrics, validation::validate, ClusterState, Object, ObjectKey, ObjectKind,
};
use switchyard_crd::ProxyConfig;
use tokio::sync::{watch as tokio_watch, Notify};

/// Services and slices a kube-proxy must not handle (as upstream's informer selectors).
const SERVICE_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// Becomes true once every watcher has listed its kind once: the runner must not sync
/// before, or it would program an empty ruleset over working rules.
pub type SourcesReady = tokio_watch::Receiver<bool>;

struct Feed {
    state: Arc<Mutex<ClusterState>>,
    notify: Arc<Notify>,
    metrics: Metrics,
}

impl Feed {
    fn apply(&self, object: Object, relist: Option<&mut BTreeSet<ObjectKey>>) -> bool {
        let key = object.key();
        if let Some(seen) = relist {
            seen.insert(key.clone());
        }
        match validate(&object) {
            Ok(()) => self.state.lock().expect("state lock").upsert(object),
            Err(e) => {
                self.metrics.invalid_object(key.kind.as_str());
                tracing::warn!(error = %e, "skipping invalid object (its last valid version, if any, stays in force)");
                false
            }
        }
    }

    fn remove(&self, key: &ObjectKey) -> bool {
        self.state.lock().expect("state lock").remove(key)
    }

    /// Drops objects of `kind` that a completed relist did not return.
    fn finish_relist(&self, kind: ObjectKind, seen: &BTreeSet<ObjectKey>) -> bool {
        let mut state = self.state.lock().expect("state lock");
        let mut changed = false;
        for key in state.keys(kind) {
            if !seen.contains(&key) {
                changed |= state.remove(&key);
            }
        }
        changed
    }
}

async fn follow<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: ObjectKind,
    wrap: fn(K) -> Object,
    feed: Arc<Feed>,
    ready: tokio::sync::oneshot::Sender<()>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut ready = Some(ready);
    let mut relist: Option<BTreeSet<ObjectKey>> = None;
    let mut stream = watcher(api, config).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        let changed = match event {
            Ok(watcher::Event::Init) => {
                relist = Some(BTreeSet::new());
                false
            }
            Ok(watcher::Event::InitApply(o)) => feed.apply(wrap(o), relist.as_mut()),
            Ok(watcher::Event::Apply(o)) => feed.apply(wrap(o), None),
            Ok(watcher::Event::Delete(o)) => feed.remove(&wrap(o).key()),
            Ok(watcher::Event::InitDone) => {
                let changed = relist
                    .take()
                    .map(|seen| feed.finish_relist(kind, &seen))
                    .unwrap_or(false);
                if let Some(tx) = ready.take() {
                    tracing::info!(kind = kind.as_str(), "initial list complete");
                    let _ = tx.send(());
                }
                changed
            }
            Err(e) => {
                tracing::warn!(kind = kind.as_str(), error = %e, "watch failed; retrying with backoff (dataplane untouched)");
                false
            }
        };
        if changed {
            feed.notify.notify_one();
        }
    }
}

fn spawn_follow<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: ObjectKind,
    wrap: fn(K) -> Object,
    feed: &Arc<Feed>,
) -> tokio::sync::oneshot::Receiver<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(follow(api, config, kind, wrap, feed.clone(), tx));
    rx
}

/// Starts the four watchers. The returned receiver turns true once each has listed.
pub fn follow_cluster(
    client: Client,
    node_name: &str,
    state: Arc<Mutex<ClusterState>>,
    notify: Arc<Notify>,
    metrics: Metrics,
) -> SourcesReady {
    let feed = Arc::new(Feed {
        state,
        notify,
        metrics,
    });
    let waits = [
        spawn_follow(
            Api::<Service>::all(client.clone()),
            watcher::Config::default().labels(SERVICE_SELECTOR),
            ObjectKind::Service,
            |o| Object::Service(Box::new(o)),
            &feed,
        ),
        spawn_follow(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default().labels(SERVICE_SELECTOR),
            ObjectKind::EndpointSlice,
            |o| Object::EndpointSlice(Box::new(o)),
            &feed,
        ),
        spawn_follow(
            Api::<Node>::all(client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={node_name}")),
            ObjectKind::Node,
            |o| Object::Node(Box::new(o)),
            &feed,
        ),
        spawn_follow(
            Api::<ProxyConfig>::all(client),
            watcher::Config::default(),
            ObjectKind::ProxyConfig,
            |o| Object::ProxyConfig(Box::new(o)),
            &feed,
        ),
    ];
    let (tx, rx) = tokio_watch::channel(false);
    tokio::spawn(async move {
        for w in waits {
            let _ = w.await;
        }
        let _ = tx.send(true);
    });
    rx
}

//! `ClusterState`: the typed store of the Kubernetes objects this node cares about.
//! Sources (the API watchers, the manifests directory) are its only writers.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use switchyard_crd::ProxyConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    Service,
    EndpointSlice,
    Node,
    ProxyConfig,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
            ObjectKind::Node => "Node",
            ObjectKind::ProxyConfig => "ProxyConfig",
        }
    }
}

/// Kind plus `namespace/name` (namespace empty for cluster-scoped objects).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind.as_str(), self.name)
        } else {
            write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
        }
    }
}

/// One object of a kind the proxy consumes.
#[derive(Clone, Debug)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Node(Box<Node>),
    ProxyConfig(Box<ProxyConfig>),
}

impl Object {
    pub fn key(&self) -> ObjectKey {
        let (kind, meta) = match self {
            Object::Service(o) => (ObjectKind::Service, &o.metadata),
            Object::EndpointSlice(o) => (ObjectKind::EndpointSlice, &o.metadata),
            Object::Node(o) => (ObjectKind::Node, &o.metadata),
            Object::ProxyConfig(o) => (ObjectKind::ProxyConfig, &o.metadata),
        };
        ObjectKey {
            kind,
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// `(namespace, name)` of a Service.
pub type ServiceKey = (String, String);

/// What changed since the last `take_changes`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateChanges {
    /// Services whose Service object or EndpointSlices changed.
    pub services: BTreeSet<ServiceKey>,
    /// A Node or ProxyConfig changed: everything must be recomputed.
    pub global: bool,
}

#[derive(Clone, Debug)]
pub struct ClusterState {
    services: BTreeMap<ObjectKey, Service>,
    endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    nodes: BTreeMap<String, Node>,
    proxy_configs: BTreeMap<String, ProxyConfig>,
    /// EndpointSlices by the Service their `kubernetes.io/service-name` label names.
    slices_by_service: HashMap<ServiceKey, BTreeSet<ObjectKey>>,
    changes: StateChanges,
    /// Bumped on every change, so readers can tell whether anything moved.
    generation: u64,
}

impl Default for ClusterState {
    fn default() -> Self {
        ClusterState {
            services: BTreeMap::new(),
            endpoint_slices: BTreeMap::new(),
            nodes: BTreeMap::new(),
            proxy_configs: BTreeMap::new(),
            slices_by_service: HashMap::new(),
            changes: StateChanges {
                services: BTreeSet::new(),
                global: true,
            },
            generation: 0,
        }
    }
}

/// The Service an EndpointSlice belongs to, from its label.
fn slice_service(slice: &EndpointSlice) -> Option<ServiceKey> {
    let name = slice
        .metadata
        .labels
        .as_ref()?
        .get(crate::model::SERVICE_NAME_LABEL)?;
    Some((
        slice.metadata.namespace.clone().unwrap_or_default(),
        name.clone(),
    ))
}

impl ClusterState {
    /// Inserts or replaces an object. Returns whether the state changed.
    pub fn upsert(&mut self, object: Object) -> bool {
        let key = object.key();
        let changed = match object {
            Object::Service(o) => {
                let svc = (key.namespace.clone(), key.name.clone());
                let changed = replace(&mut self.services, key, *o);
                if changed {
                    self.changes.services.insert(svc);
                }
                changed
            }
            Object::EndpointSlice(o) => {
                let new_owner = slice_service(&o);
                let old_owner = self.endpoint_slices.get(&key).and_then(slice_service);
                let changed = replace(&mut self.endpoint_slices, key.clone(), *o);
                if changed {
                    self.reindex_slice(&key, old_owner, new_owner);
                }
                changed
            }
            Object::Node(o) => {
                let changed = replace(&mut self.nodes, key.name, *o);
                self.changes.global |= changed;
                changed
            }
            Object::ProxyConfig(o) => {
                let same = self
                    .proxy_configs
                    .get(&key.name)
                    .is_some_and(|old| old.metadata == o.metadata && old.spec == o.spec);
                if !same {
                    self.proxy_configs.insert(key.name, *o);
                    self.changes.global = true;
                }
                !same
            }
        };
        if changed {
            self.generation += 1;
        }
        changed
    }

    /// Removes an object. Returns whether it was there.
    pub fn remove(&mut self, key: &ObjectKey) -> bool {
        let removed = match key.kind {
            ObjectKind::Service => {
                let removed = self.services.remove(key).is_some();
                if removed {
                    self.changes
                        .services
                        .insert((key.namespace.clone(), key.name.clone()));
                }
                removed
            }
            ObjectKind::EndpointSlice => match self.endpoint_slices.remove(key) {
                Some(old) => {
                    self.reindex_slice(key, slice_service(&old), None);
                    true
                }
                None => false,
            },
            ObjectKind::Node | ObjectKind::ProxyConfig => {
                let removed = if key.kind == ObjectKind::Node {
                    self.nodes.remove(&key.name).is_some()
                } else {
                    self.proxy_configs.remove(&key.name).is_some()
                };
                self.changes.global |= removed;
                removed
            }
        };
        if removed {
            self.generation += 1;
        }
        removed
    }

    fn reindex_slice(&mut self, key: &ObjectKey, old: Option<ServiceKey>, new: Option<ServiceKey>) {
        if let Some(svc) = old {
            if let Some(set) = self.slices_by_service.get_mut(&svc) {
                set.remove(key);
                if set.is_empty() {
                    self.slices_by_service.remove(&svc);
                }
            }
            self.changes.services.insert(svc);
        }
        if let Some(svc) = new {
            self.slices_by_service
                .entry(svc.clone())
                .or_default()
                .insert(key.clone());
            self.changes.services.insert(svc);
        }
    }

    /// Takes what changed since the last call (everything is "global" at first).
    pub fn take_changes(&mut self) -> StateChanges {
        std::mem::take(&mut self.changes)
    }

    /// Marks everything changed (the next reader recomputes all).
    pub fn mark_all_changed(&mut self) {
        self.changes.global = true;
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services.get(&ObjectKey {
            kind: ObjectKind::Service,
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }

    /// The EndpointSlices labelled with Service `namespace/name`.
    pub fn slices_of<'a>(
        &'a self,
        namespace: &str,
        name: &str,
    ) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        self.slices_by_service
            .get(&(namespace.to_string(), name.to_string()))
            .into_iter()
            .flatten()
            .filter_map(|k| self.endpoint_slices.get(k))
    }

    /// Every key of one kind (for a source that relisted and must drop what is gone).
    pub fn keys(&self, kind: ObjectKind) -> Vec<ObjectKey> {
        match kind {
            ObjectKind::Service => self.services.keys().cloned().collect(),
            ObjectKind::EndpointSlice => self.endpoint_slices.keys().cloned().collect(),
            ObjectKind::Node => self
                .nodes
                .keys()
                .map(|name| ObjectKey {
                    kind,
                    namespace: String::new(),
                    name: name.clone(),
                })
                .collect(),
            ObjectKind::ProxyConfig => self
                .proxy_configs
                .keys()
                .map(|name| ObjectKey {
                    kind,
                    namespace: String::new(),
                    name: name.clone(),
                })
                .collect(),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    pub fn endpoint_slices(&self) -> impl Iterator<Item = &EndpointSlice> {
        self.endpoint_slices.values()
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    pub fn proxy_configs(&self) -> impl Iterator<Item = &ProxyConfig> {
        self.proxy_configs.values()
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }
}

fn replace<K: Ord, V: PartialEq>(map: &mut BTreeMap<K, V>, key: K, value: V) -> bool {
    match map.get(&key) {
        Some(old) if *old == value => false,
        _ => {
            map.insert(key, value);
            true
        }
    }
}

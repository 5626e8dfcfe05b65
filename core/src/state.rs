//! `ClusterState`: the typed store of the Kubernetes objects this node cares about.
//! Sources (the API watchers, the manifests directory) are its only writers.

use std::collections::BTreeMap;

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

#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    services: BTreeMap<ObjectKey, Service>,
    endpoint_slices: BTreeMap<ObjectKey, EndpointSlice>,
    nodes: BTreeMap<String, Node>,
    proxy_configs: BTreeMap<String, ProxyConfig>,
    /// Bumped on every change, so readers can tell whether anything moved.
    generation: u64,
}

impl ClusterState {
    /// Inserts or replaces an object. Returns whether the state changed.
    pub fn upsert(&mut self, object: Object) -> bool {
        let key = object.key();
        let changed = match object {
            Object::Service(o) => replace(&mut self.services, key, *o),
            Object::EndpointSlice(o) => replace(&mut self.endpoint_slices, key, *o),
            Object::Node(o) => replace(&mut self.nodes, key.name, *o),
            Object::ProxyConfig(o) => {
                let same = self
                    .proxy_configs
                    .get(&key.name)
                    .is_some_and(|old| old.metadata == o.metadata && old.spec == o.spec);
                if !same {
                    self.proxy_configs.insert(key.name, *o);
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
            ObjectKind::Service => self.services.remove(key).is_some(),
            ObjectKind::EndpointSlice => self.endpoint_slices.remove(key).is_some(),
            ObjectKind::Node => self.nodes.remove(&key.name).is_some(),
            ObjectKind::ProxyConfig => self.proxy_configs.remove(&key.name).is_some(),
        };
        if removed {
            self.generation += 1;
        }
        removed
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

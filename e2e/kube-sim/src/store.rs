//! The object store: objects per resource, the global resourceVersion counter, a bounded
//! history of watch events and a broadcast channel feeding live watches. All verbs' semantics
//! (metadata, conflicts, status subresources, finalizers, owner-reference cleanup, CRD
//! registration) live here; the HTTP layer only translates.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::crd_admission;
use crate::defaults::Allocators;
use crate::events;
use crate::patch;
use crate::registry::{self, ResourceType};
use crate::selector::Selectors;
use crate::status::ApiError;
use crate::validation;

/// Watch event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change to the store.
#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub key: String,
    pub type_: EventType,
    pub object: Value,
    /// The object before a modification.
    pub old: Option<Value>,
}

/// How a PATCH body is to be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Strategic,
    Json,
    Apply,
}

type Objects = BTreeMap<(String, String), Value>;

/// The simulator's state. Guard with a mutex; no method blocks.
pub struct Store {
    rv: u64,
    types: Vec<ResourceType>,
    objects: HashMap<String, Objects>,
    history: VecDeque<Arc<Event>>,
    history_cap: usize,
    compacted: u64,
    tx: broadcast::Sender<Arc<Event>>,
    alloc: Allocators,
    uid_counter: u64,
    /// Server-side apply bookkeeping: object id → (manager, subresource) → applied paths.
    managers: HashMap<String, BTreeMap<String, Vec<Vec<String>>>>,
}

fn object_id(key: &str, ns: &str, name: &str) -> String {
    format!("{key}|{ns}|{name}")
}

/// Leaf paths an apply configuration sets (objects are descended, lists and scalars are
/// leaves); metadata contributes only labels and annotations.
fn applied_paths(body: &Value, has_status: bool, status_only: bool) -> Vec<Vec<String>> {
    fn walk(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, x) in m {
                    prefix.push(k.clone());
                    walk(x, prefix, out);
                    prefix.pop();
                }
            }
            _ => out.push(prefix.clone()),
        }
    }
    let mut out = Vec::new();
    let Some(m) = body.as_object() else {
        return out;
    };
    for (k, v) in m {
        let wanted = match k.as_str() {
            "apiVersion" | "kind" => false,
            "status" if has_status => status_only,
            _ => !status_only || !has_status,
        };
        if !wanted {
            continue;
        }
        if k == "metadata" {
            for sub in ["labels", "annotations"] {
                if let Some(x) = v.get(sub) {
                    walk(x, &mut vec![k.clone(), sub.to_string()], &mut out);
                }
            }
            continue;
        }
        walk(v, &mut vec![k.clone()], &mut out);
    }
    out
}

fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

fn remove_path(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for p in parents {
        match cur.get_mut(p) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

/// Current time as RFC 3339 with second precision.
pub fn now_rfc3339() -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second())
        .expect("valid")
        .to_string()
}

fn object_name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or("")
}

/// Everything but metadata (and status when it is a subresource), for generation bumps.
fn spec_part(obj: &Value, has_status: bool) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("apiVersion");
        m.remove("kind");
        if has_status {
            m.remove("status");
        }
    }
    o
}

impl Store {
    /// A store with the built-in types, default namespaces and `history_cap` kept events.
    pub fn new(history_cap: usize) -> Self {
        let (tx, _) = broadcast::channel(4096);
        let mut s = Store {
            rv: 0,
            types: registry::builtins(),
            objects: HashMap::new(),
            history: VecDeque::new(),
            history_cap: history_cap.max(1),
            compacted: 0,
            tx,
            alloc: Allocators::default(),
            uid_counter: 0,
            managers: HashMap::new(),
        };
        let ns_type = s.find("", "v1", "namespaces").expect("builtin");
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
            s.create(&ns_type, None, obj).expect("default namespace");
        }
        s
    }

    /// A copy for dry runs: same objects, a private event channel.
    pub fn dry_run_copy(&self) -> Store {
        Store {
            rv: self.rv,
            types: self.types.clone(),
            objects: self.objects.clone(),
            history: VecDeque::new(),
            history_cap: self.history_cap,
            compacted: self.rv,
            tx: broadcast::channel(16).0,
            alloc: self.alloc.clone(),
            uid_counter: self.uid_counter,
            managers: self.managers.clone(),
        }
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Drops the whole event history (watches from any older resourceVersion get 410).
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// All served types.
    pub fn types(&self) -> &[ResourceType] {
        &self.types
    }

    /// The type served at group/version/plural.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    fn storage_api_version(&self, rt: &ResourceType) -> String {
        self.types
            .iter()
            .find(|t| t.store_key() == rt.store_key())
            .map(ResourceType::api_version)
            .unwrap_or_else(|| rt.api_version())
    }

    /// The object as seen through `rt` (its apiVersion/kind).
    pub fn present(rt: &ResourceType, obj: &Value) -> Value {
        let mut o = if events::is_events_v1(&rt.group, &rt.plural) {
            events::to_events_v1(obj)
        } else {
            obj.clone()
        };
        o["apiVersion"] = json!(rt.api_version());
        o["kind"] = json!(rt.kind);
        o
    }

    fn next_random(&mut self) -> u64 {
        // splitmix64 over time and a counter: unique enough for uids and name suffixes.
        self.uid_counter += 1;
        let mut z = (jiff::Timestamp::now().as_nanosecond() as u64)
            .wrapping_add(self.uid_counter.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn next_uid(&mut self) -> String {
        let h = format!("{:016x}{:016x}", self.next_random(), self.next_random());
        format!(
            "{}-{}-4{}-a{}-{}",
            &h[0..8],
            &h[8..12],
            &h[13..16],
            &h[17..20],
            &h[20..32]
        )
    }

    fn random_suffix(&mut self) -> String {
        const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut x = self.next_random();
        (0..5)
            .map(|_| {
                let c = ALPHA[(x % ALPHA.len() as u64) as usize] as char;
                x /= ALPHA.len() as u64;
                c
            })
            .collect()
    }

    fn commit(&mut self, key: &str, type_: EventType, mut obj: Value, old: Option<Value>) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = object_name(&obj).to_string();
        let map = self.objects.entry(key.to_string()).or_default();
        if type_ == EventType::Deleted {
            map.remove(&(ns.clone(), name.clone()));
            self.managers.remove(&object_id(key, &ns, &name));
        } else {
            map.insert((ns, name), obj.clone());
        }
        let ev = Arc::new(Event {
            rv: self.rv,
            key: key.to_string(),
            type_,
            object: obj.clone(),
            old,
        });
        self.history.push_back(ev.clone());
        while self.history.len() > self.history_cap {
            if let Some(e) = self.history.pop_front() {
                self.compacted = e.rv;
            }
        }
        let _ = self.tx.send(ev);
        obj
    }

    /// Lists objects (namespace `None` = all namespaces) and the list's resourceVersion.
    pub fn list(&self, rt: &ResourceType, ns: Option<&str>, sel: &Selectors) -> (Vec<Value>, u64) {
        let (items, rv) = self.list_borrowed(rt, ns, sel);
        (
            items
                .into_iter()
                .map(std::borrow::Cow::into_owned)
                .collect(),
            rv,
        )
    }

    /// [`Store::list`] without copies where possible: an object stored as it is
    /// presented (its `apiVersion` and `kind` those of `rt`, no conversion) is borrowed.
    /// A LIST of 50k Services is then serialized straight from the store (copying each
    /// object first took most of the 3.5 s two such LISTs took).
    pub fn list_borrowed(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        sel: &Selectors,
    ) -> (Vec<std::borrow::Cow<'_, Value>>, u64) {
        use std::borrow::Cow;
        let api_version = rt.api_version();
        let events_v1 = events::is_events_v1(&rt.group, &rt.plural);
        let items = self
            .objects
            .get(&rt.store_key())
            .map(|m| {
                m.iter()
                    .filter(|((ons, _), _)| ns.is_none_or(|n| n == ons))
                    .map(|(_, o)| {
                        let as_is = !events_v1
                            && o["apiVersion"].as_str() == Some(api_version.as_str())
                            && o["kind"].as_str() == Some(rt.kind.as_str());
                        if as_is {
                            Cow::Borrowed(o)
                        } else {
                            Cow::Owned(Self::present(rt, o))
                        }
                    })
                    .filter(|o| sel.matches(o))
                    .collect()
            })
            .unwrap_or_default();
        (items, self.rv)
    }

    fn get_raw(&self, rt: &ResourceType, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&rt.store_key())?
            .get(&(ns.to_string(), name.to_string()))
    }

    /// One object.
    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.get_raw(rt, ns, name)
            .map(|o| Self::present(rt, o))
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))
    }

    /// The stored shape of an object written through `rt`.
    fn to_storage(rt: &ResourceType, obj: Value) -> Value {
        if events::is_events_v1(&rt.group, &rt.plural) {
            events::to_core(&obj)
        } else {
            obj
        }
    }

    fn check_body(rt: &ResourceType, ns: Option<&str>, obj: &mut Value) -> Result<(), ApiError> {
        if !obj.is_object() {
            return Err(ApiError::invalid(
                &rt.kind,
                "",
                "the body must be a JSON object",
            ));
        }
        if let Some(k) = obj.get("kind").and_then(Value::as_str) {
            if k != rt.kind {
                return Err(ApiError::bad_request(format!(
                    "the kind of the body ({k}) does not match the resource ({})",
                    rt.kind
                )));
            }
        }
        if !obj.get("metadata").is_some_and(Value::is_object) {
            obj["metadata"] = json!({});
        }
        let meta = obj["metadata"].as_object_mut().expect("object");
        if rt.namespaced {
            let path_ns = ns.unwrap_or("default");
            match meta.get("namespace").and_then(Value::as_str) {
                Some(n) if !n.is_empty() && n != path_ns && ns.is_some() => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
                Some(n) if !n.is_empty() => {}
                _ => {
                    meta.insert("namespace".into(), json!(path_ns));
                }
            }
        } else {
            meta.remove("namespace");
        }
        meta.remove("managedFields");
        Ok(())
    }

    /// Admission of a write: schema defaults, validation and rules for custom objects
    /// (`old`: the stored version on an update), create-time checks for CRDs.
    fn admit(
        &self,
        rt: &ResourceType,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        let name = object_name(obj).to_string();
        if let Some(schema) = &rt.schema {
            validation::admit(schema, obj, old)
                .map_err(|e| ApiError::invalid_fields(&rt.group, &rt.kind, &name, &e))?;
        }
        if rt.plural == "customresourcedefinitions" {
            registry::from_crd(obj).map_err(|m| ApiError::invalid(&rt.kind, &name, m))?;
            let errors = crd_admission::validate(obj);
            if !errors.is_empty() {
                return Err(ApiError::invalid_fields(
                    &rt.group, &rt.kind, &name, &errors,
                ));
            }
        }
        Ok(())
    }

    /// POST.
    pub fn create(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        Self::check_body(rt, ns, &mut obj)?;
        let mut obj = Self::to_storage(rt, obj);
        let now = now_rfc3339();
        let uid = self.next_uid();
        let suffix = self.random_suffix();
        {
            let meta = obj["metadata"].as_object_mut().expect("object");
            let has_name = meta
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            if !has_name {
                match meta.get("generateName").and_then(Value::as_str) {
                    Some(g) if !g.is_empty() => {
                        let n = format!("{g}{suffix}");
                        meta.insert("name".into(), json!(n));
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            &rt.kind,
                            "",
                            "metadata.name: Required value: name or generateName is required",
                        ))
                    }
                }
            }
            meta.insert("uid".into(), json!(uid));
            meta.insert("creationTimestamp".into(), json!(now));
            meta.insert("generation".into(), json!(1));
            meta.remove("resourceVersion");
            meta.remove("deletionTimestamp");
        }
        obj["apiVersion"] = json!(self.storage_api_version(rt));
        obj["kind"] = json!(rt.kind);
        let key = rt.store_key();
        let ns_key = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = object_name(&obj).to_string();
        if self.get_raw(rt, &ns_key, &name).is_some() {
            return Err(ApiError::already_exists(&rt.group, &rt.plural, &name));
        }
        if rt.group.is_empty() && rt.plural == "services" {
            let (ips, ports) = if Allocators::allocates(&obj) {
                self.service_allocations()
            } else {
                Default::default()
            };
            self.alloc.default_service(&mut obj, &ips, &ports);
        }
        if rt.plural == "customresourcedefinitions" {
            obj["status"] = crd_status(&obj);
        }
        if rt.plural == "namespaces" && obj["status"]["phase"].is_null() {
            obj["status"] = json!({"phase": "Active"});
        }
        self.admit(rt, &mut obj, None)?;
        if rt.namespaced {
            self.ensure_namespace(&ns_key);
        }
        let out = self.commit(&key, EventType::Added, obj, None);
        if rt.plural == "customresourcedefinitions" {
            self.refresh_crds();
        }
        Ok(Self::present(rt, &out))
    }

    /// Namespaces spring into existence when first used (a real API server would answer
    /// 404; tests rarely care to create them first).
    fn ensure_namespace(&mut self, ns: &str) {
        let exists = self
            .objects
            .get("/namespaces")
            .is_some_and(|m| m.contains_key(&(String::new(), ns.to_string())));
        if exists || ns.is_empty() {
            return;
        }
        if let Some(t) = self.find("", "v1", "namespaces") {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
            let _ = self.create(&t, None, obj);
        }
    }

    fn service_allocations(&self) -> (HashSet<String>, HashSet<i64>) {
        let mut ips = HashSet::new();
        let mut ports = HashSet::new();
        for svc in self
            .objects
            .get("/services")
            .map(|m| m.values().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            if let Some(ip) = svc["spec"]["clusterIP"].as_str() {
                ips.insert(ip.to_string());
            }
            for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
                if let Some(np) = p["nodePort"].as_i64() {
                    ports.insert(np);
                }
            }
        }
        (ips, ports)
    }

    /// Stores `new` as the next version of `old` (common to PUT and PATCH).
    fn replace(
        &mut self,
        rt: &ResourceType,
        old: Value,
        mut new: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        let name = object_name(&old).to_string();
        if status_only {
            let status = new.get("status").cloned();
            new = old.clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        } else if rt.has_status {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        if object_name(&new) != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                object_name(&new)
            )));
        }
        // Immutable and server-owned metadata.
        for k in ["uid", "creationTimestamp", "namespace", "deletionTimestamp"] {
            match old["metadata"].get(k) {
                Some(v) => new["metadata"][k] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(k);
                    }
                }
            }
        }
        if let Some(m) = new["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        new["apiVersion"] = old["apiVersion"].clone();
        new["kind"] = old["kind"].clone();
        if rt.group.is_empty() && rt.plural == "services" {
            // Keep allocated addresses when an update omits them.
            for k in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                if new["spec"].get(k).is_none() {
                    if let Some(v) = old["spec"].get(k) {
                        new["spec"][k] = v.clone();
                    }
                }
            }
        }
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        let bump = spec_part(&old, rt.has_status) != spec_part(&new, rt.has_status);
        new["metadata"]["generation"] = json!(if bump { generation + 1 } else { generation });
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        self.admit(rt, &mut new, Some(&old))?;
        let key = rt.store_key();
        let finalizers_gone = new["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|a| a.is_empty());
        if !new["metadata"]["deletionTimestamp"].is_null() && finalizers_gone {
            let out = self.commit(&key, EventType::Deleted, new, Some(old));
            self.after_delete(rt, &out);
            return Ok(Self::present(rt, &out));
        }
        if new == old {
            return Ok(Self::present(rt, &old));
        }
        let out = self.commit(&key, EventType::Modified, new, Some(old));
        if rt.plural == "customresourcedefinitions" {
            self.refresh_crds();
        }
        Ok(Self::present(rt, &out))
    }

    /// PUT (status subresource when `status_only`).
    pub fn update(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        Self::check_body(rt, ns, &mut obj)?;
        let obj = Self::to_storage(rt, obj);
        let ns_key = ns.unwrap_or("");
        let Some(old) = self.get_raw(rt, ns_key, name).cloned() else {
            if status_only {
                return Err(ApiError::not_found(&rt.group, &rt.plural, name));
            }
            // PUT of a missing object creates it (as for most built-in kinds).
            if object_name(&obj) != name {
                return Err(ApiError::bad_request(
                    "the name of the object does not match the name on the URL",
                ));
            }
            return self.create(rt, ns, obj);
        };
        if let Some(want) = obj["metadata"]["resourceVersion"].as_str() {
            if !want.is_empty() && Some(want) != old["metadata"]["resourceVersion"].as_str() {
                return Err(ApiError::conflict(&rt.group, &rt.plural, name));
            }
        }
        self.replace(rt, old, obj, status_only)
    }

    /// PATCH (status subresource when `status_only`). Apply patches go through
    /// [`Store::apply`] with the field manager `unknown`.
    pub fn patch(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        kind: PatchKind,
        body: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        if kind == PatchKind::Apply {
            return self.apply(rt, ns, name, body, status_only, "unknown");
        }
        self.patch_inner(rt, ns, name, kind, body, status_only, &[])
    }

    /// Server-side apply: creates the object if absent, else merges the configuration in and
    /// removes the fields this manager applied last time but no longer does (unless another
    /// manager applied them too).
    pub fn apply(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        body: Value,
        status_only: bool,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let id = object_id(&rt.store_key(), ns.unwrap_or(""), name);
        let mkey = format!("{manager}/{}", if status_only { "status" } else { "" });
        let paths = applied_paths(&body, rt.has_status, status_only);
        let prev = self.managers.get(&id).cloned().unwrap_or_default();
        let stale: Vec<Vec<String>> = prev
            .get(&mkey)
            .map(|old| {
                old.iter()
                    .filter(|p| !paths.contains(p))
                    .filter(|p| {
                        !prev
                            .iter()
                            .any(|(k, ps)| *k != mkey && ps.iter().any(|q| overlaps(p, q)))
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let out = self.patch_inner(rt, ns, name, PatchKind::Apply, body, status_only, &stale)?;
        let ns_key = out["metadata"]["namespace"].as_str().unwrap_or("");
        let id = object_id(&rt.store_key(), ns_key, name);
        if self.get_raw(rt, ns_key, name).is_some() {
            self.managers.entry(id).or_default().insert(mkey, paths);
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn patch_inner(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        kind: PatchKind,
        body: Value,
        status_only: bool,
        stale: &[Vec<String>],
    ) -> Result<Value, ApiError> {
        let ns_key = ns.unwrap_or("");
        let Some(old) = self.get_raw(rt, ns_key, name).cloned() else {
            if kind == PatchKind::Apply && !status_only {
                let mut obj = body;
                if !obj.is_object() {
                    return Err(ApiError::invalid(
                        &rt.kind,
                        name,
                        "the body must be an object",
                    ));
                }
                if obj["metadata"]["name"].is_null() {
                    obj["metadata"]["name"] = json!(name);
                }
                return self.create(rt, ns, obj);
            }
            return Err(ApiError::not_found(&rt.group, &rt.plural, name));
        };
        let mut new = Self::present(rt, &old);
        match kind {
            PatchKind::Merge => {
                if !body.is_object() {
                    return Err(ApiError::bad_request("a merge patch must be a JSON object"));
                }
                patch::merge_patch(&mut new, &body)
            }
            PatchKind::Strategic => {
                if !body.is_object() {
                    return Err(ApiError::bad_request(
                        "a strategic merge patch must be a JSON object",
                    ));
                }
                patch::strategic_merge_patch(&mut new, &body)
            }
            PatchKind::Json => patch::json_patch(&mut new, &body)
                .map_err(|m| ApiError::invalid(&rt.kind, name, m))?,
            PatchKind::Apply => {
                if !body.is_object() {
                    return Err(ApiError::bad_request("an apply patch must be an object"));
                }
                if let Some(n) = body["metadata"]["name"].as_str() {
                    if n != name {
                        return Err(ApiError::bad_request(
                            "the name of the object does not match the name on the URL",
                        ));
                    }
                }
                let mut applied = body;
                if let Some(m) = applied["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                    m.remove("managedFields");
                }
                patch::apply_merge(&mut new, &applied);
                for p in stale {
                    remove_path(&mut new, p);
                }
            }
        }
        if let Some(want) = new["metadata"]["resourceVersion"].as_str() {
            if want != old["metadata"]["resourceVersion"].as_str().unwrap_or("") {
                return Err(ApiError::conflict(&rt.group, &rt.plural, name));
            }
        }
        if !new.is_object() {
            return Err(ApiError::invalid(
                &rt.kind,
                name,
                "the patched object is not an object",
            ));
        }
        new["apiVersion"] = old["apiVersion"].clone();
        let new = Self::to_storage(rt, new);
        self.replace(rt, old, new, status_only)
    }

    /// DELETE of one object: returns the deleted object (or the object marked for deletion
    /// when it still has finalizers).
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let ns_key = ns.unwrap_or("");
        let Some(old) = self.get_raw(rt, ns_key, name).cloned() else {
            return Err(ApiError::not_found(&rt.group, &rt.plural, name));
        };
        let key = rt.store_key();
        let has_finalizers = old["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
            && rt.plural != "namespaces";
        if has_finalizers {
            if !old["metadata"]["deletionTimestamp"].is_null() {
                return Ok(Self::present(rt, &old));
            }
            let mut new = old.clone();
            new["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            let out = self.commit(&key, EventType::Modified, new, Some(old));
            return Ok(Self::present(rt, &out));
        }
        let out = self.commit(&key, EventType::Deleted, old.clone(), Some(old));
        self.after_delete(rt, &out);
        Ok(Self::present(rt, &out))
    }

    /// DELETE of a collection.
    pub fn delete_collection(
        &mut self,
        rt: &ResourceType,
        ns: Option<&str>,
        sel: &Selectors,
    ) -> Vec<Value> {
        let (items, _) = self.list(rt, ns, sel);
        items
            .iter()
            .filter_map(|o| {
                let ns = o["metadata"]["namespace"].as_str();
                self.delete(rt, ns, object_name(o)).ok()
            })
            .collect()
    }

    /// Cascades: objects in a deleted namespace, objects owned by the deleted object, the
    /// objects and types of a deleted CRD.
    fn after_delete(&mut self, rt: &ResourceType, deleted: &Value) {
        if rt.plural == "customresourcedefinitions" {
            if let Ok(types) = registry::from_crd(deleted) {
                if let Some(t) = types.first() {
                    let key = t.store_key();
                    let objs: Vec<Value> = self
                        .objects
                        .get(&key)
                        .map(|m| m.values().cloned().collect())
                        .unwrap_or_default();
                    for o in objs {
                        self.commit(&key, EventType::Deleted, o.clone(), Some(o));
                    }
                }
            }
            self.refresh_crds();
        }
        let mut doomed: Vec<(ResourceType, Value)> = Vec::new();
        let uid = deleted["metadata"]["uid"].as_str().unwrap_or("");
        let ns_name =
            (rt.group.is_empty() && rt.plural == "namespaces").then(|| object_name(deleted));
        for t in &self.types {
            // Visit each storage key once (via its first served version).
            if self.storage_api_version(t) != t.api_version() {
                continue;
            }
            for o in self
                .objects
                .get(&t.store_key())
                .into_iter()
                .flat_map(|m| m.values())
            {
                let in_ns =
                    ns_name.is_some_and(|n| t.namespaced && o["metadata"]["namespace"] == n);
                let owned = !uid.is_empty()
                    && o["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid));
                if in_ns || owned {
                    doomed.push((t.clone(), o.clone()));
                }
            }
        }
        for (t, o) in doomed {
            let ns = o["metadata"]["namespace"].as_str().map(String::from);
            let _ = self.delete(&t, ns.as_deref(), object_name(&o));
        }
    }

    /// Rebuilds the served types from the builtins plus the stored CRDs.
    fn refresh_crds(&mut self) {
        let mut types = registry::builtins();
        let crds: Vec<Value> = self
            .objects
            .get("apiextensions.k8s.io/customresourcedefinitions")
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        for crd in crds {
            if let Ok(mut ts) = registry::from_crd(&crd) {
                // The storage version first, so it is the one objects are stored as.
                let storage = registry::crd_preferred_version(&crd);
                ts.sort_by_key(|t| Some(&t.version) != storage.as_ref());
                types.extend(ts);
            }
        }
        self.types = types;
    }

    /// The CRD object registering a group, for its preferred version.
    pub fn crd_for_group(&self, group: &str) -> Option<Value> {
        self.objects
            .get("apiextensions.k8s.io/customresourcedefinitions")?
            .values()
            .find(|c| c["spec"]["group"] == group)
            .cloned()
    }

    /// Prepares a watch: the events to replay (after `from`, or synthetic ADDED for all
    /// current objects when `from` is `None`) and a receiver for what follows.
    #[allow(clippy::type_complexity)]
    pub fn watch(
        &self,
        rt: &ResourceType,
        from: Option<u64>,
    ) -> Result<(Vec<Arc<Event>>, u64, broadcast::Receiver<Arc<Event>>), ApiError> {
        let rx = self.tx.subscribe();
        let key = rt.store_key();
        let replay = match from {
            None => self
                .objects
                .get(&key)
                .into_iter()
                .flat_map(|m| m.values())
                .map(|o| {
                    Arc::new(Event {
                        rv: self.rv,
                        key: key.clone(),
                        type_: EventType::Added,
                        object: o.clone(),
                        old: None,
                    })
                })
                .collect(),
            Some(rv) => {
                // Older than the history kept, or newer than this store has ever been
                // (a client resuming against a restarted simulator): the client must
                // relist, as after a real server's "too old" / "too large" answers.
                if rv < self.compacted || rv > self.rv {
                    return Err(ApiError::expired());
                }
                self.history
                    .iter()
                    .filter(|e| e.rv > rv && e.key == key)
                    .cloned()
                    .collect()
            }
        };
        Ok((replay, self.rv, rx))
    }
}

fn crd_status(crd: &Value) -> Value {
    let now = now_rfc3339();
    let stored: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .map(|vs| {
            vs.iter()
                .filter(|v| v["storage"].as_bool() == Some(true))
                .map(|v| v["name"].clone())
                .collect()
        })
        .unwrap_or_default();
    json!({
        "acceptedNames": crd["spec"]["names"],
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
        "storedVersions": stored,
    })
}

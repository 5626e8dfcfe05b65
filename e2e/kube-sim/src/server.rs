//! The HTTP front: path routing (discovery, OpenAPI documents, resource paths), query parsing,
//! content negotiation (JSON, Table) and translation of verbs onto the store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Value};

use crate::openapi;
use crate::registry::{self, ResourceType};
use crate::selector::{FieldSelector, LabelSelector, Selectors};
use crate::status::{self, ApiError};
use crate::store::{PatchKind, Store};
use crate::table::{self, IncludeObject};
use crate::watch::{self, WatchRequest};

/// Tunables of a simulator instance.
#[derive(Debug, Clone)]
pub struct Options {
    /// How many events the watch history keeps (older resourceVersions get 410).
    pub history: usize,
    /// Interval between BOOKMARK events on watches that allow them.
    pub bookmark_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            history: 1000,
            bookmark_interval: Duration::from_secs(10),
        }
    }
}

/// State shared by all requests.
pub struct Shared {
    pub store: Mutex<Store>,
    pub options: Options,
    /// Bumped to end every open watch (outages).
    pub epoch: tokio::sync::watch::Sender<u64>,
    /// Requests are answered 503 until this instant.
    pub down_until: Mutex<Option<Instant>>,
    /// Set while the simulator is stopped.
    pub stopped: AtomicBool,
}

impl Shared {
    pub fn new(options: Options) -> Self {
        Shared {
            store: Mutex::new(Store::new(options.history)),
            options,
            epoch: tokio::sync::watch::channel(0).0,
            down_until: Mutex::new(None),
            stopped: AtomicBool::new(false),
        }
    }

    /// Ends every open watch.
    pub fn drop_watches(&self) {
        self.epoch.send_modify(|e| *e += 1);
    }

    fn unavailable(&self) -> bool {
        if self.stopped.load(Ordering::SeqCst) {
            return true;
        }
        let mut d = self.down_until.lock().expect("lock");
        match *d {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *d = None;
                false
            }
            None => false,
        }
    }
}

/// The router serving everything.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

fn json_response(code: u16, v: &Value) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(v.to_string()))
        .expect("response")
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.code, &e.to_status())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// A resource path, parsed.
struct ResourcePath {
    group: String,
    version: String,
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
    sub: Option<String>,
}

enum Route {
    Version,
    Healthz,
    Api,
    Apis,
    Group(String),
    GroupVersion(String, String),
    OpenApiV2,
    OpenApiV3,
    Resource(ResourcePath),
    Unknown,
}

fn route(path: &str) -> Route {
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (group, version, rest) = match s.as_slice() {
        ["version"] => return Route::Version,
        ["healthz" | "livez" | "readyz", ..] => return Route::Healthz,
        ["api"] => return Route::Api,
        ["apis"] => return Route::Apis,
        ["openapi", "v2"] => return Route::OpenApiV2,
        ["openapi", "v3", ..] => return Route::OpenApiV3,
        ["apis", g] => return Route::Group(g.to_string()),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Route::Unknown,
    };
    if rest.is_empty() {
        return Route::GroupVersion(group.into(), version.into());
    }
    let (namespace, rest) = match rest {
        ["namespaces", ns, r, more @ ..]
            if !(more.is_empty() && matches!(*r, "status" | "finalize")) =>
        {
            (Some(ns.to_string()), &rest[2..])
        }
        _ => (None, rest),
    };
    if rest.len() > 3 {
        return Route::Unknown;
    }
    Route::Resource(ResourcePath {
        group: group.into(),
        version: version.into(),
        namespace,
        plural: rest[0].into(),
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
    })
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if shared.unavailable() {
        return error_response(&ApiError::unavailable());
    }
    match serve(&shared, &method, &uri, &headers, &body) {
        Ok(Answer::Json(code, v)) => json_response(code, &v),
        Ok(Answer::Watch(req)) => watch::respond(shared.clone(), *req),
        Ok(Answer::Raw(code, ct, bytes)) => Response::builder()
            .status(code)
            .header(header::CONTENT_TYPE, ct)
            .body(Body::from(bytes))
            .expect("response"),
        Err(e) => error_response(&e),
    }
}

/// A LIST response, serialized straight from borrowed objects.
#[derive(serde::Serialize)]
struct ListBody<'a> {
    kind: String,
    #[serde(rename = "apiVersion")]
    api_version: String,
    metadata: Value,
    items: Vec<std::borrow::Cow<'a, Value>>,
}

enum Answer {
    Json(u16, Value),
    Watch(Box<WatchRequest>),
    Raw(u16, &'static str, Vec<u8>),
}

fn discovery(store: &Store, r: &Route) -> Result<Value, ApiError> {
    match r {
        Route::Version => Ok(json!({
            "major": "1", "minor": "32", "gitVersion": "v1.32.0-kube-sim",
            "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
            "buildDate": "2024-12-11T00:00:00Z", "goVersion": "go1.23.4", "compiler": "gc",
            "platform": "linux/amd64"
        })),
        Route::Api => Ok(json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]
        })),
        Route::Apis => {
            let groups: Vec<Value> = group_names(store)
                .iter()
                .map(|g| group_doc(store, g))
                .collect();
            Ok(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        Route::Group(g) => {
            if group_names(store).contains(g) {
                Ok(group_doc(store, g))
            } else {
                Err(ApiError::no_route(&format!("/apis/{g}")))
            }
        }
        Route::GroupVersion(g, v) => {
            let types: Vec<&ResourceType> = store
                .types()
                .iter()
                .filter(|t| &t.group == g && &t.version == v)
                .collect();
            if types.is_empty() {
                return Err(ApiError::no_route(&format!("/apis/{g}/{v}")));
            }
            let gv = if g.is_empty() {
                v.clone()
            } else {
                format!("{g}/{v}")
            };
            Ok(registry::resource_list(&gv, &types))
        }
        _ => Err(ApiError::no_route("")),
    }
}

fn group_names(store: &Store) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for t in store.types() {
        if !t.group.is_empty() && !names.contains(&t.group) {
            names.push(t.group.clone());
        }
    }
    names
}

fn group_doc(store: &Store, g: &str) -> Value {
    let mut versions: Vec<String> = Vec::new();
    for t in store.types().iter().filter(|t| t.group == g) {
        if !versions.contains(&t.version) {
            versions.push(t.version.clone());
        }
    }
    let preferred = store
        .crd_for_group(g)
        .and_then(|c| registry::crd_preferred_version(&c))
        .filter(|p| versions.contains(p))
        .unwrap_or_else(|| versions[0].clone());
    registry::api_group(g, &versions, &preferred)
}

fn parse_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if ct.contains("protobuf") {
        return crate::protobuf::decode(body).ok_or_else(|| ApiError::unsupported_media_type(ct));
    }
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => Ok(v),
        Err(je) => serde_yaml::from_slice::<Value>(body)
            .map_err(|_| ApiError::bad_request(format!("unable to decode the body: {je}"))),
    }
}

fn patch_kind(headers: &HeaderMap) -> Result<PatchKind, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let base = ct.split(';').next().unwrap_or("").trim();
    match base {
        "application/merge-patch+json" => Ok(PatchKind::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
        "application/json-patch+json" => Ok(PatchKind::Json),
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => Ok(PatchKind::Apply),
        _ => Err(ApiError::unsupported_media_type(ct)),
    }
}

fn selectors(q: &HashMap<String, String>) -> Result<Selectors, ApiError> {
    Ok(Selectors {
        labels: LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
            .map_err(ApiError::bad_request)?,
        fields: FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))
            .map_err(ApiError::bad_request)?,
    })
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("as=Table"))
}

fn serve(
    shared: &Arc<Shared>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Answer, ApiError> {
    let r = route(uri.path());
    let q = parse_query(uri);
    let rp = match r {
        Route::Resource(rp) => rp,
        Route::Healthz => return Ok(Answer::Raw(200, "text/plain", b"ok".to_vec())),
        // An empty protobuf document: kubectl's client-side validation finds no schema for
        // any kind and lets everything through.
        Route::OpenApiV2 => {
            return Ok(Answer::Raw(
                200,
                "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                Vec::new(),
            ))
        }
        Route::OpenApiV3 => {
            let store = shared.store.lock().expect("store lock");
            let rest = uri
                .path()
                .trim_end_matches('/')
                .trim_start_matches("/openapi/v3");
            let doc = match rest.trim_start_matches('/').split('/').collect::<Vec<_>>()[..] {
                [""] => Some(openapi::index(store.types())),
                ["api", v] => openapi::document(store.types(), "", v),
                ["apis", g, v] => openapi::document(store.types(), g, v),
                _ => None,
            };
            return doc
                .map(|d| Answer::Json(200, d))
                .ok_or_else(|| ApiError::no_route(uri.path()));
        }
        Route::Unknown => return Err(ApiError::no_route(uri.path())),
        other => {
            if method != Method::GET {
                return Err(ApiError::method_not_allowed(method.as_str()));
            }
            let store = shared.store.lock().expect("store lock");
            return discovery(&store, &other).map(|v| Answer::Json(200, v));
        }
    };
    let mut guard = shared.store.lock().expect("store lock");
    // dryRun: run the request against a throwaway copy of the store.
    let mut scratch;
    let store: &mut Store = if q.get("dryRun").is_some_and(|d| !d.is_empty()) {
        scratch = guard.dry_run_copy();
        &mut scratch
    } else {
        &mut guard
    };
    let rt = store
        .find(&rp.group, &rp.version, &rp.plural)
        .ok_or_else(|| ApiError::no_route(uri.path()))?;
    if rp.namespace.is_some() && !rt.namespaced {
        return Err(ApiError::no_route(uri.path()));
    }
    let status_only = match rp.sub.as_deref() {
        None => false,
        Some("status") if rt.has_status => true,
        Some(_) => return Err(ApiError::no_route(uri.path())),
    };
    let ns = rp.namespace.as_deref();
    let table = wants_table(headers)
        .then(|| IncludeObject::parse(q.get("includeObject").map(String::as_str)));
    match (method.clone(), rp.name.as_deref()) {
        (Method::GET, None) => {
            let sel = selectors(&q)?;
            if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) {
                let from = match q.get("resourceVersion").map(String::as_str) {
                    None | Some("") | Some("0") => None,
                    Some(rv) => Some(rv.parse::<u64>().map_err(|_| {
                        ApiError::bad_request(format!("invalid resourceVersion {rv:?}"))
                    })?),
                };
                let timeout = q
                    .get("timeoutSeconds")
                    .and_then(|t| t.parse::<u64>().ok())
                    .map(Duration::from_secs);
                return Ok(Answer::Watch(Box::new(WatchRequest {
                    rt,
                    namespace: rp.namespace.clone(),
                    selectors: sel,
                    from,
                    send_initial_events: q.get("sendInitialEvents").map(String::as_str)
                        == Some("true"),
                    bookmarks: q.get("allowWatchBookmarks").map(String::as_str) == Some("true"),
                    timeout,
                    table,
                })));
            }
            if let Some(inc) = table {
                let (items, rv) = store.list(&rt, ns, &sel);
                return Ok(Answer::Json(
                    200,
                    table::to_table(&rt, &items, &rv.to_string(), inc),
                ));
            }
            let (items, rv) = store.list_borrowed(&rt, ns, &sel);
            let list = ListBody {
                kind: format!("{}List", rt.kind),
                api_version: rt.api_version(),
                metadata: json!({"resourceVersion": rv.to_string()}),
                items,
            };
            let body = serde_json::to_vec(&list).expect("JSON values always serialize");
            Ok(Answer::Raw(200, "application/json", body))
        }
        (Method::GET, Some(name)) => {
            let obj = store.get(&rt, ns.unwrap_or(""), name)?;
            if let Some(inc) = table {
                let rv = obj["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                return Ok(Answer::Json(200, table::to_table(&rt, &[obj], &rv, inc)));
            }
            Ok(Answer::Json(200, obj))
        }
        (Method::POST, None) => {
            let obj = parse_body(headers, body)?;
            store.create(&rt, ns, obj).map(|o| Answer::Json(201, o))
        }
        (Method::PUT, Some(name)) => {
            let obj = parse_body(headers, body)?;
            if !obj.is_object() {
                return Err(ApiError::invalid(
                    &rt.kind,
                    name,
                    "the body must be a JSON object",
                ));
            }
            let existed = store.get(&rt, ns.unwrap_or(""), name).is_ok();
            store
                .update(&rt, ns, name, obj, status_only)
                .map(|o| Answer::Json(if existed { 200 } else { 201 }, o))
        }
        (Method::PATCH, Some(name)) => {
            let kind = patch_kind(headers)?;
            let patch = parse_body(headers, body)?;
            let existed = store.get(&rt, ns.unwrap_or(""), name).is_ok();
            let result = if kind == PatchKind::Apply {
                let manager = q
                    .get("fieldManager")
                    .map(String::as_str)
                    .unwrap_or("unknown");
                store.apply(&rt, ns, name, patch, status_only, manager)
            } else {
                store.patch(&rt, ns, name, kind, patch, status_only)
            };
            result.map(|o| Answer::Json(if existed { 200 } else { 201 }, o))
        }
        (Method::DELETE, Some(name)) if !status_only => {
            // DeleteOptions preconditions (uid, resourceVersion).
            let opts: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let pre = &opts["preconditions"];
            if pre.is_object() {
                let cur = store.get(&rt, ns.unwrap_or(""), name)?;
                for k in ["uid", "resourceVersion"] {
                    if let Some(want) = pre[k].as_str() {
                        if cur["metadata"][k].as_str() != Some(want) {
                            return Err(ApiError::conflict(&rt.group, &rt.plural, name));
                        }
                    }
                }
            }
            store.delete(&rt, ns, name).map(|o| Answer::Json(200, o))
        }
        (Method::DELETE, None) => {
            let sel = selectors(&q)?;
            store.delete_collection(&rt, ns, &sel);
            Ok(Answer::Json(200, status::success()))
        }
        (m, _) => Err(ApiError::method_not_allowed(m.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let Route::Resource(r) = route("/api/v1/namespaces/default/services/web/status") else {
            panic!()
        };
        assert_eq!(
            (
                r.namespace.as_deref(),
                r.plural.as_str(),
                r.name.as_deref(),
                r.sub.as_deref()
            ),
            (Some("default"), "services", Some("web"), Some("status"))
        );
        let Route::Resource(r) = route("/api/v1/namespaces/default") else {
            panic!()
        };
        assert_eq!(
            (r.namespace, r.plural.as_str(), r.name.as_deref()),
            (None, "namespaces", Some("default"))
        );
        let Route::Resource(r) = route("/api/v1/namespaces/kube-system/status") else {
            panic!()
        };
        assert_eq!(
            (r.plural.as_str(), r.sub.as_deref()),
            ("namespaces", Some("status"))
        );
        let Route::Resource(r) = route("/apis/switchyard.dev/v1alpha1/proxyconfigs") else {
            panic!()
        };
        assert_eq!((r.group.as_str(), r.name), ("switchyard.dev", None));
        assert!(matches!(
            route("/apis/switchyard.dev/v1alpha1"),
            Route::GroupVersion(..)
        ));
        assert_eq!(percent_decode("a%3Db%2Cc+d"), "a=b,c d");
    }
}

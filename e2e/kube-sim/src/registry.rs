//! Resource types the simulator serves: the built-in kinds plus every kind registered by a
//! CustomResourceDefinition, and the legacy discovery documents built from them.

use serde_json::{json, Value};

/// One printer column of a CRD (`additionalPrinterColumns`).
#[derive(Debug, Clone)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// A served resource (one group/version/plural).
#[derive(Debug, Clone)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub has_status: bool,
    /// `Some` for CRD kinds: their printer columns (may be empty).
    pub printer_columns: Option<Vec<PrinterColumn>>,
    /// The CRD's `openAPIV3Schema` for this version, if any.
    pub schema: Option<Value>,
}

impl ResourceType {
    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The storage key shared by all versions of a resource (events.k8s.io Events share
    /// the core Events' storage).
    pub fn store_key(&self) -> String {
        if crate::events::is_events_v1(&self.group, &self.plural) {
            return "/events".into();
        }
        format!("{}/{}", self.group, self.plural)
    }

    fn builtin(
        group: &str,
        version: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
        short: &[&str],
        has_status: bool,
    ) -> Self {
        ResourceType {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            kind: kind.into(),
            namespaced,
            short_names: short.iter().map(|s| s.to_string()).collect(),
            categories: if matches!(plural, "services" | "endpointslices") {
                vec!["all".into()]
            } else {
                vec![]
            },
            has_status,
            printer_columns: None,
            schema: None,
        }
    }
}

/// The built-in resources.
pub fn builtins() -> Vec<ResourceType> {
    use ResourceType as R;
    vec![
        R::builtin("", "v1", "services", "Service", true, &["svc"], true),
        R::builtin("", "v1", "endpoints", "Endpoints", true, &["ep"], false),
        R::builtin("", "v1", "nodes", "Node", false, &["no"], true),
        R::builtin("", "v1", "namespaces", "Namespace", false, &["ns"], true),
        R::builtin("", "v1", "events", "Event", true, &["ev"], false),
        R::builtin("", "v1", "pods", "Pod", true, &["po"], true),
        R::builtin("", "v1", "configmaps", "ConfigMap", true, &["cm"], false),
        R::builtin(
            "discovery.k8s.io",
            "v1",
            "endpointslices",
            "EndpointSlice",
            true,
            &[],
            false,
        ),
        R::builtin(
            "coordination.k8s.io",
            "v1",
            "leases",
            "Lease",
            true,
            &[],
            false,
        ),
        R::builtin(
            "events.k8s.io",
            "v1",
            "events",
            "Event",
            true,
            &["ev"],
            false,
        ),
        R::builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
            true,
        ),
    ]
}

/// The resource types a CustomResourceDefinition object declares (one per served version).
pub fn from_crd(crd: &Value) -> Result<Vec<ResourceType>, String> {
    let spec = crd.get("spec").ok_or("spec is required")?;
    let group = spec["group"].as_str().ok_or("spec.group is required")?;
    let names = &spec["names"];
    let plural = names["plural"]
        .as_str()
        .ok_or("spec.names.plural is required")?;
    let kind = names["kind"]
        .as_str()
        .ok_or("spec.names.kind is required")?;
    let singular = names["singular"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let namespaced = match spec["scope"].as_str() {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        _ => return Err("spec.scope must be Namespaced or Cluster".into()),
    };
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let versions = spec["versions"]
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or("spec.versions must not be empty")?;
    let mut out = Vec::new();
    for v in versions {
        let name = v["name"]
            .as_str()
            .ok_or("spec.versions[].name is required")?;
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let columns = v["additionalPrinterColumns"]
            .as_array()
            .map(|cols| {
                cols.iter()
                    .map(|c| PrinterColumn {
                        name: c["name"].as_str().unwrap_or("").to_string(),
                        type_: c["type"].as_str().unwrap_or("string").to_string(),
                        format: c["format"].as_str().unwrap_or("").to_string(),
                        description: c["description"].as_str().unwrap_or("").to_string(),
                        priority: c["priority"].as_i64().unwrap_or(0),
                        json_path: c["jsonPath"].as_str().unwrap_or("").to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(ResourceType {
            group: group.into(),
            version: name.into(),
            plural: plural.into(),
            singular: singular.clone(),
            kind: kind.into(),
            namespaced,
            short_names: strings(&names["shortNames"]),
            categories: strings(&names["categories"]),
            has_status: v["subresources"].get("status").is_some(),
            printer_columns: Some(columns),
            schema: v["schema"].get("openAPIV3Schema").cloned(),
        });
    }
    Ok(out)
}

/// The group's preferred version: the CRD's storage version, else the first.
pub fn crd_preferred_version(crd: &Value) -> Option<String> {
    let versions = crd["spec"]["versions"].as_array()?;
    versions
        .iter()
        .find(|v| v["storage"].as_bool() == Some(true))
        .or_else(|| versions.first())
        .and_then(|v| v["name"].as_str())
        .map(str::to_string)
}

/// `APIResourceList` for one group/version.
pub fn resource_list(group_version: &str, types: &[&ResourceType]) -> Value {
    let mut resources = Vec::new();
    for t in types {
        let mut verbs = vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ];
        if t.plural == "namespaces" {
            verbs.retain(|v| *v != "deletecollection");
        }
        let mut r = json!({
            "name": t.plural,
            "singularName": t.singular,
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": verbs,
        });
        if !t.short_names.is_empty() {
            r["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            r["categories"] = json!(t.categories);
        }
        resources.push(r);
        if t.has_status {
            resources.push(json!({
                "name": format!("{}/status", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    })
}

/// One `APIGroup` entry: versions in order, the preferred one first.
pub fn api_group(name: &str, versions: &[String], preferred: &str) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": name,
        "versions": vs,
        "preferredVersion": {"groupVersion": format!("{name}/{preferred}"), "version": preferred},
    })
}

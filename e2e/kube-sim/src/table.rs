//! Server-side printing: `meta.k8s.io/v1` `Table` answers for kubectl, built from a CRD's
//! `additionalPrinterColumns` (evaluated as simple JSONPaths) or from a fixed column set per
//! built-in kind, with ages formatted like kubectl.

use serde_json::{json, Value};

use crate::registry::{PrinterColumn, ResourceType};

/// The `includeObject` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// `k8s.io/apimachinery/pkg/util/duration.HumanDuration`.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// Age of an RFC 3339 timestamp, as kubectl prints it.
pub fn age(ts: Option<&str>) -> Value {
    let Some(ts) = ts else {
        return json!("<unknown>");
    };
    match ts.parse::<jiff::Timestamp>() {
        Ok(t) => {
            let secs = jiff::Timestamp::now().as_second() - t.as_second();
            json!(human_duration(secs))
        }
        Err(_) => json!("<invalid>"),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
    Wildcard,
    Filter(String, String),
}

fn parse_path(path: &str) -> Result<Vec<Step>, String> {
    let p = path.trim();
    let p = p
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or(p);
    let p = p.strip_prefix('$').unwrap_or(p);
    let chars: Vec<char> = p.chars().collect();
    let mut steps = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '.' => {
                i += 1;
                let start = i;
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    i += 1;
                }
                let name: String = chars[start..i].iter().collect();
                if name == "*" {
                    steps.push(Step::Wildcard);
                } else if !name.is_empty() {
                    steps.push(Step::Field(name));
                }
            }
            '[' => {
                let start = i + 1;
                let mut depth = 0;
                while i < chars.len() {
                    match chars[i] {
                        '[' => depth += 1,
                        ']' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                if i >= chars.len() {
                    return Err(format!("unterminated [ in {path:?}"));
                }
                let inner: String = chars[start..i].iter().collect();
                i += 1;
                let inner = inner.trim();
                if inner == "*" {
                    steps.push(Step::Wildcard);
                } else if let Ok(n) = inner.parse::<usize>() {
                    steps.push(Step::Index(n));
                } else if let Some(f) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
                    let (lhs, rhs) = f
                        .split_once("==")
                        .ok_or_else(|| format!("unsupported filter {f:?}"))?;
                    let field = lhs
                        .trim()
                        .strip_prefix("@.")
                        .ok_or_else(|| format!("unsupported filter {f:?}"))?;
                    let value = rhs.trim().trim_matches(|c| c == '"' || c == '\'');
                    steps.push(Step::Filter(field.to_string(), value.to_string()));
                } else {
                    let name = inner.trim_matches(|c| c == '"' || c == '\'');
                    steps.push(Step::Field(name.to_string()));
                }
            }
            c => return Err(format!("unexpected {c:?} in JSONPath {path:?}")),
        }
    }
    Ok(steps)
}

fn field_of<'a>(v: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted.split('.').try_fold(v, |cur, seg| cur.get(seg))
}

/// Evaluates a simple JSONPath (`.a.b`, `[N]`, `[*]`, `[?(@.f=="v")]`) against an object.
pub fn eval_jsonpath(obj: &Value, path: &str) -> Result<Vec<Value>, String> {
    let mut cur = vec![obj.clone()];
    for step in parse_path(path)? {
        let mut next = Vec::new();
        for v in &cur {
            match &step {
                Step::Field(f) => next.extend(v.get(f).cloned()),
                Step::Index(n) => next.extend(v.get(*n).cloned()),
                Step::Wildcard => match v {
                    Value::Array(a) => next.extend(a.iter().cloned()),
                    Value::Object(m) => next.extend(m.values().cloned()),
                    _ => {}
                },
                Step::Filter(f, want) => {
                    if let Some(a) = v.as_array() {
                        next.extend(
                            a.iter()
                                .filter(|item| {
                                    field_of(item, f).is_some_and(|x| match x {
                                        Value::String(s) => s == want,
                                        other => want.as_str() == other.to_string().as_str(),
                                    })
                                })
                                .cloned(),
                        );
                    }
                }
            }
        }
        cur = next;
    }
    Ok(cur)
}

fn column_def(name: &str, type_: &str, format: &str, description: &str, priority: i64) -> Value {
    json!({"name": name, "type": type_, "format": format, "description": description, "priority": priority})
}

fn name_column() -> Value {
    column_def(
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace.",
        0,
    )
}

fn age_column() -> Value {
    column_def(
        "Age",
        "date",
        "",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
        0,
    )
}

fn crd_cell(obj: &Value, col: &PrinterColumn) -> Value {
    let values = eval_jsonpath(obj, &col.json_path).unwrap_or_default();
    if col.type_ == "date" {
        return match values.first() {
            Some(Value::String(s)) => age(Some(s)),
            _ => Value::Null,
        };
    }
    match values.len() {
        0 => Value::Null,
        1 => {
            let v = values.into_iter().next().expect("one");
            match (col.type_.as_str(), v) {
                ("string", Value::String(s)) => json!(s),
                ("string", Value::Object(_) | Value::Array(_)) => Value::Null,
                ("string", other) => json!(other.to_string()),
                (_, other) => other,
            }
        }
        _ => json!(values
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(",")),
    }
}

fn str_or<'a>(v: &'a Value, default: &'a str) -> &'a str {
    v.as_str().unwrap_or(default)
}

fn service_ports(obj: &Value) -> String {
    let ports = obj["spec"]["ports"].as_array().cloned().unwrap_or_default();
    if ports.is_empty() {
        return "<none>".into();
    }
    ports
        .iter()
        .map(|p| {
            let proto = str_or(&p["protocol"], "TCP");
            match p["nodePort"].as_i64() {
                Some(np) => format!("{}:{np}/{proto}", p["port"]),
                None => format!("{}/{proto}", p["port"]),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn service_external_ip(obj: &Value) -> String {
    let mut ips: Vec<String> = obj["spec"]["externalIPs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    match str_or(&obj["spec"]["type"], "ClusterIP") {
        "ExternalName" => return str_or(&obj["spec"]["externalName"], "<none>").into(),
        "LoadBalancer" => {
            if let Some(ing) = obj["status"]["loadBalancer"]["ingress"].as_array() {
                ips.extend(ing.iter().filter_map(|i| {
                    i["ip"]
                        .as_str()
                        .or_else(|| i["hostname"].as_str())
                        .map(String::from)
                }));
            }
            if ips.is_empty() {
                return "<pending>".into();
            }
        }
        _ => {}
    }
    if ips.is_empty() {
        "<none>".into()
    } else {
        ips.join(",")
    }
}

fn node_status(obj: &Value) -> String {
    let ready = obj["status"]["conditions"].as_array().and_then(|cs| {
        cs.iter()
            .find(|c| c["type"] == "Ready")
            .map(|c| c["status"].clone())
    });
    let mut s = match ready.as_ref().and_then(Value::as_str) {
        Some("True") => "Ready".to_string(),
        Some("False") => "NotReady".to_string(),
        _ => "Unknown".to_string(),
    };
    if obj["spec"]["unschedulable"].as_bool() == Some(true) {
        s.push_str(",SchedulingDisabled");
    }
    s
}

fn node_roles(obj: &Value) -> String {
    let mut roles: Vec<String> = obj["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    if roles.is_empty() {
        "<none>".into()
    } else {
        roles.join(",")
    }
}

/// Computes a row's cells from an object.
type CellFn = Box<dyn Fn(&Value) -> Vec<Value>>;

/// Column definitions and a cell function for one resource type.
fn columns(rt: &ResourceType) -> (Vec<Value>, CellFn) {
    let name = |o: &Value| o["metadata"]["name"].clone();
    let created = |o: &Value| age(o["metadata"]["creationTimestamp"].as_str());
    if let Some(cols) = &rt.printer_columns {
        if cols.is_empty() {
            return (
                vec![name_column(), age_column()],
                Box::new(move |o| vec![name(o), created(o)]),
            );
        }
        let mut defs = vec![name_column()];
        defs.extend(
            cols.iter()
                .map(|c| column_def(&c.name, &c.type_, &c.format, &c.description, c.priority)),
        );
        let cols = cols.clone();
        return (
            defs,
            Box::new(move |o| {
                let mut cells = vec![name(o)];
                cells.extend(cols.iter().map(|c| crd_cell(o, c)));
                cells
            }),
        );
    }
    let s = |n: &str| column_def(n, "string", "", "", 0);
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "services") => (
            vec![
                name_column(),
                s("Type"),
                s("Cluster-IP"),
                s("External-IP"),
                s("Port(s)"),
                age_column(),
                column_def("Selector", "string", "", "", 1),
            ],
            Box::new(move |o| {
                let selector = o["spec"]["selector"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", str_or(v, "")))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "<none>".into());
                vec![
                    name(o),
                    json!(str_or(&o["spec"]["type"], "ClusterIP")),
                    json!(str_or(&o["spec"]["clusterIP"], "<none>")),
                    json!(service_external_ip(o)),
                    json!(service_ports(o)),
                    created(o),
                    json!(selector),
                ]
            }),
        ),
        ("", "nodes") => (
            vec![
                name_column(),
                s("Status"),
                s("Roles"),
                age_column(),
                s("Version"),
                column_def("Internal-IP", "string", "", "", 1),
                column_def("External-IP", "string", "", "", 1),
            ],
            Box::new(move |o| {
                let addr = |t: &str| {
                    o["status"]["addresses"]
                        .as_array()
                        .and_then(|a| a.iter().find(|x| x["type"] == t))
                        .and_then(|x| x["address"].as_str())
                        .unwrap_or("<none>")
                        .to_string()
                };
                vec![
                    name(o),
                    json!(node_status(o)),
                    json!(node_roles(o)),
                    created(o),
                    json!(str_or(&o["status"]["nodeInfo"]["kubeletVersion"], "")),
                    json!(addr("InternalIP")),
                    json!(addr("ExternalIP")),
                ]
            }),
        ),
        (_, "events") => (
            vec![
                s("Last Seen"),
                s("Type"),
                s("Reason"),
                s("Object"),
                s("Message"),
                column_def("Name", "string", "name", "", 1),
            ],
            Box::new(move |o| {
                let last = [
                    &o["series"]["lastObservedTime"],
                    &o["lastTimestamp"],
                    &o["deprecatedLastTimestamp"],
                    &o["eventTime"],
                    &o["metadata"]["creationTimestamp"],
                ]
                .into_iter()
                .find_map(|v| v.as_str());
                let regarding = if o["involvedObject"].is_object() {
                    &o["involvedObject"]
                } else {
                    &o["regarding"]
                };
                let object = format!(
                    "{}/{}",
                    str_or(&regarding["kind"], "").to_lowercase(),
                    str_or(&regarding["name"], "")
                );
                let message = o["message"].as_str().or(o["note"].as_str()).unwrap_or("");
                vec![
                    age(last),
                    json!(str_or(&o["type"], "")),
                    json!(str_or(&o["reason"], "")),
                    json!(object),
                    json!(message),
                    name(o),
                ]
            }),
        ),
        ("", "namespaces") => (
            vec![name_column(), s("Status"), age_column()],
            Box::new(move |o| {
                vec![
                    name(o),
                    json!(str_or(&o["status"]["phase"], "Active")),
                    created(o),
                ]
            }),
        ),
        ("discovery.k8s.io", "endpointslices") => (
            vec![
                name_column(),
                s("AddressType"),
                s("Ports"),
                s("Endpoints"),
                age_column(),
            ],
            Box::new(move |o| {
                let ports = o["ports"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|p| p["port"].to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "<unset>".into());
                let eps = o["endpoints"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .flat_map(|e| {
                                e["addresses"]
                                    .as_array()
                                    .cloned()
                                    .unwrap_or_default()
                                    .into_iter()
                                    .filter_map(|x| x.as_str().map(String::from))
                            })
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "<unset>".into());
                vec![
                    name(o),
                    json!(str_or(&o["addressType"], "")),
                    json!(ports),
                    json!(eps),
                    created(o),
                ]
            }),
        ),
        ("coordination.k8s.io", "leases") => (
            vec![name_column(), s("Holder"), age_column()],
            Box::new(move |o| {
                vec![
                    name(o),
                    json!(str_or(&o["spec"]["holderIdentity"], "")),
                    created(o),
                ]
            }),
        ),
        _ => (
            vec![name_column(), age_column()],
            Box::new(move |o| vec![name(o), created(o)]),
        ),
    }
}

/// A `Table` for the given objects (already carrying kind/apiVersion).
pub fn to_table(
    rt: &ResourceType,
    objects: &[Value],
    resource_version: &str,
    include: IncludeObject,
) -> Value {
    let (defs, cells) = columns(rt);
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = json!({"cells": cells(o)});
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o["metadata"],
                    })
                }
                IncludeObject::Object => row["object"] = o.clone(),
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": defs,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(180), "3m");
        assert_eq!(human_duration(185), "3m5s");
        assert_eq!(human_duration(3600 * 2), "120m");
        assert_eq!(human_duration(3600 * 5), "5h");
        assert_eq!(human_duration(3600 * 30), "30h");
        assert_eq!(human_duration(86400 * 4), "4d");
        assert_eq!(human_duration(86400 * 30), "30d");
    }

    #[test]
    fn jsonpaths() {
        let o = json!({"spec": {"mode": "nftables", "l": [1, 2]}, "status": {"conditions": [
            {"type": "Ready", "status": "True"}, {"type": "FallbackActive", "status": "False"}]}});
        assert_eq!(
            eval_jsonpath(&o, ".spec.mode").unwrap(),
            vec![json!("nftables")]
        );
        assert_eq!(eval_jsonpath(&o, ".spec.l[1]").unwrap(), vec![json!(2)]);
        assert_eq!(
            eval_jsonpath(
                &o,
                r#".status.conditions[?(@.type=="FallbackActive")].status"#
            )
            .unwrap(),
            vec![json!("False")]
        );
        assert!(eval_jsonpath(&o, ".status.missing").unwrap().is_empty());
    }
}

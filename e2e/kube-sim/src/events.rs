//! Conversion between core/v1 `Event` and events.k8s.io/v1 `Event`: both APIs serve the same
//! stored objects (kept in the core/v1 shape), as in a real cluster, so events recorded by
//! kube-rs (events.k8s.io) show in `kubectl get events` (core/v1).

use serde_json::{Map, Value};

/// (events.k8s.io/v1 field, core/v1 field)
const RENAMES: [(&str, &str); 7] = [
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
    ("reportingController", "reportingComponent"),
];

fn rename(obj: &Value, from_new: bool) -> Value {
    let Some(m) = obj.as_object() else {
        return obj.clone();
    };
    let mut out = Map::new();
    for (k, v) in m {
        let renamed = RENAMES.iter().find_map(|(new, core)| {
            if from_new && k == new {
                Some(*core)
            } else if !from_new && k == core {
                Some(*new)
            } else {
                None
            }
        });
        out.insert(renamed.unwrap_or(k).to_string(), v.clone());
    }
    Value::Object(out)
}

/// events.k8s.io/v1 shape → stored (core/v1) shape.
pub fn to_core(obj: &Value) -> Value {
    rename(obj, true)
}

/// Stored (core/v1) shape → events.k8s.io/v1 shape.
pub fn to_events_v1(obj: &Value) -> Value {
    rename(obj, false)
}

/// Whether a resource is the events.k8s.io view of Events.
pub fn is_events_v1(group: &str, plural: &str) -> bool {
    group == "events.k8s.io" && plural == "events"
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip() {
        let new = json!({"regarding": {"kind": "Node", "name": "n"}, "note": "hi", "reason": "R",
            "reportingController": "switchyard", "deprecatedCount": 2});
        let core = to_core(&new);
        assert_eq!(core["involvedObject"]["name"], "n");
        assert_eq!(core["message"], "hi");
        assert_eq!(core["reportingComponent"], "switchyard");
        assert_eq!(to_events_v1(&core), new);
    }
}

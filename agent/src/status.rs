//! The node's `ProxyNode`: created owned by its Node, its status written by server-side
//! apply whenever the runner's `NodeStatus` or the conntrack monitor's `ConntrackStatus`
//! changes (debounced), plus Events on the Node when the engine choice turns to a
//! fallback, to degraded, or back, when the conntrack table comes under pressure or
//! leaves it, and when the kernel refuses conntrack settings.

use std::time::Duration;

use k8s_openapi::{
    api::core::v1::Node,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
    Api, Client, Resource,
};
use switchyard_core::{
    conntrack_table::ConntrackStatus, engine_choice::EngineChoice, runner::NodeStatus,
};
use switchyard_crd::{
    condition, ConntrackTableStatus, Mode, ProgrammingLatencyStatus, ProxyNode, ProxyNodeStatus,
};
use tokio::sync::watch;

use crate::MANAGER;

/// The ProxyNode status for a runner snapshot and the conntrack monitor's.
pub fn proxy_node_status(
    s: &NodeStatus,
    ct: &ConntrackStatus,
    previous: &[Condition],
) -> ProxyNodeStatus {
    let (requested, active, fallback_reason, degraded) = match &s.choice {
        Some(EngineChoice::Run {
            requested,
            mode,
            fallback_reason,
        }) => (Some(*requested), Some(*mode), fallback_reason.clone(), None),
        Some(EngineChoice::Degraded { requested, reason }) => {
            (Some(*requested), None, None, Some(reason.clone()))
        }
        None => (None, None, None, None),
    };
    let mut conditions = engine_conditions(
        s,
        previous,
        active,
        fallback_reason.as_deref(),
        degraded.as_deref(),
    );
    conditions.extend(conntrack_conditions(ct, previous));
    ProxyNodeStatus {
        config: s.config_name.clone(),
        requested_mode: requested,
        active_mode: active,
        fallback_active: fallback_reason.is_some(),
        fallback_reason,
        capabilities: s.capabilities.clone(),
        missing_features: requested.and_then(|m| missing_features(s, m)),
        last_sync_time: s
            .last_sync
            .map(|t| Time(Timestamp::try_from(t).unwrap_or(Timestamp::UNIX_EPOCH))),
        last_sync_duration_seconds: s.last_sync_duration.map(|d| d.as_secs_f64()),
        service_ports: s.service_ports as i64,
        endpoints: s.endpoints as i64,
        rules: s.rules.map(|r| r as i64),
        network_programming_latency: s.network_programming.map(|l| ProgrammingLatencyStatus {
            p50_seconds: l.p50.as_secs_f64(),
            p99_seconds: l.p99.as_secs_f64(),
            samples: l.samples as i64,
            window_seconds: l.window.as_secs() as i64,
        }),
        conntrack: conntrack_table(ct),
        conditions,
    }
}

/// Ready, FallbackActive, Degraded, ConfigConflict and SettingsUnused.
fn engine_conditions(
    s: &NodeStatus,
    previous: &[Condition],
    active: Option<Mode>,
    fallback_reason: Option<&str>,
    degraded: Option<&str>,
) -> Vec<Condition> {
    let synced = s.last_sync.is_some() && s.last_error.is_none() && degraded.is_none();
    let (ready_reason, ready_message) = match (&degraded, &s.last_error, s.last_sync) {
        (Some(r), _, _) => ("Degraded", r.to_string()),
        (None, Some(e), _) => ("SyncFailed", e.clone()),
        (None, None, None) => ("NotSynced", "no sync yet".to_string()),
        (None, None, Some(_)) => (
            "Synced",
            format!(
                "{} programs the node",
                active.map(|m| m.to_string()).unwrap_or_default()
            ),
        ),
    };
    vec![
        condition::state(
            previous,
            condition::READY,
            synced,
            ready_reason,
            ready_message,
        ),
        condition::state(
            previous,
            condition::FALLBACK_ACTIVE,
            fallback_reason.is_some(),
            if fallback_reason.is_some() {
                "RequestedModeUnavailable"
            } else {
                "RequestedModeActive"
            },
            fallback_reason.unwrap_or_default().to_string(),
        ),
        condition::state(
            previous,
            condition::DEGRADED,
            degraded.is_some(),
            if degraded.is_some() {
                "NoUsableEngine"
            } else {
                "EngineRunning"
            },
            degraded.unwrap_or_default().to_string(),
        ),
        condition::state(
            previous,
            condition::CONFIG_CONFLICT,
            !s.conflicts_with.is_empty(),
            if s.conflicts_with.is_empty() {
                "SingleConfig"
            } else {
                "SamePriority"
            },
            if s.conflicts_with.is_empty() {
                String::new()
            } else {
                format!(
                    "{} chosen (oldest, then name); also selecting this node with the same priority: {}",
                    s.config_name.as_deref().unwrap_or("?"),
                    s.conflicts_with.join(", ")
                )
            },
        ),
        condition::state(
            previous,
            condition::SETTINGS_UNUSED,
            !s.unused_settings.is_empty(),
            if s.unused_settings.is_empty() {
                "AllSettingsUsed"
            } else {
                "EngineNotRunning"
            },
            s.unused_settings.join("; "),
        ),
    ]
}

/// What the requested mode lacks here, joined (`None` when it can run, or for `auto`).
fn missing_features(s: &NodeStatus, requested: Mode) -> Option<String> {
    s.capabilities
        .iter()
        .find(|c| c.mode == requested && !c.available)
        .map(|c| {
            if c.missing.is_empty() {
                c.detail.clone()
            } else {
                c.missing.join(",")
            }
        })
}

fn conntrack_table(ct: &ConntrackStatus) -> Option<ConntrackTableStatus> {
    if *ct == ConntrackStatus::default() {
        return None;
    }
    let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    Some(ConntrackTableStatus {
        entries: ct.usage.map(|u| as_i64(u.entries)),
        limit: ct.usage.map(|u| as_i64(u.limit)),
        usage_percent: ct.percent().map(|p| p.floor() as i64),
        refused: refused(ct),
        unreadable: ct.unreadable.clone(),
    })
}

fn conntrack_conditions(ct: &ConntrackStatus, previous: &[Condition]) -> [Condition; 2] {
    let fill = match ct.usage {
        Some(u) => format!(
            "{} of {} entries ({:.0}%)",
            u.entries,
            u.limit,
            ct.percent().unwrap_or(0.0)
        ),
        None => ct
            .unreadable
            .clone()
            .unwrap_or_else(|| "not read yet".into()),
    };
    [
        condition::state(
            previous,
            condition::CONNTRACK_PRESSURE,
            ct.pressure,
            if ct.pressure {
                "TableNearlyFull"
            } else {
                "TableHasRoom"
            },
            if ct.pressure {
                format!("{fill}: new flows are dropped once the table is full; raise spec.conntrack.maxPerCore or min")
            } else {
                fill
            },
        ),
        condition::state(
            previous,
            condition::CONNTRACK_SETTINGS_REFUSED,
            !ct.refused.is_empty(),
            if ct.refused.is_empty() {
                "Applied"
            } else {
                "KernelRefused"
            },
            refused(ct).join("; "),
        ),
    ]
}

fn refused(ct: &ConntrackStatus) -> Vec<String> {
    ct.refused.iter().map(ToString::to_string).collect()
}

/// The Events a change of the conntrack status calls for: (type, reason, note).
fn conntrack_events(
    old: &ConntrackStatus,
    new: &ConntrackStatus,
) -> Vec<(EventType, &'static str, String)> {
    let mut events = Vec::new();
    let fill = |ct: &ConntrackStatus| {
        ct.usage
            .map(|u| format!("{} of {} entries", u.entries, u.limit))
            .unwrap_or_default()
    };
    if new.pressure && !old.pressure {
        events.push((
            EventType::Warning,
            "ConntrackPressure",
            format!(
                "conntrack table more than 90% full ({}): new flows are dropped once it is full; raise spec.conntrack.maxPerCore or min",
                fill(new)
            ),
        ));
    } else if old.pressure && !new.pressure {
        events.push((
            EventType::Normal,
            "ConntrackPressureRelieved",
            format!("conntrack table back below 85% full ({})", fill(new)),
        ));
    }
    // Refused only for lack of nf_conntrack (retried): not worth an Event.
    let retry_only = new.refused.iter().all(|r| r.retry);
    if new.refused != old.refused && !retry_only {
        events.push((
            EventType::Warning,
            "ConntrackSettingsRefused",
            format!(
                "the kernel refused conntrack settings: {}",
                refused(new).join("; ")
            ),
        ));
    }
    events
}

/// The event a choice calls for: (type, reason, note).
fn event_for(choice: &EngineChoice) -> (EventType, &'static str, String) {
    match choice {
        EngineChoice::Run {
            requested,
            mode,
            fallback_reason: Some(reason),
        } => (
            EventType::Warning,
            "FallbackActive",
            format!("requested mode {requested} cannot run, {mode} runs instead: {reason}"),
        ),
        EngineChoice::Run {
            mode,
            fallback_reason: None,
            ..
        } => (
            EventType::Normal,
            "ModeActive",
            format!("{mode} programs this node"),
        ),
        EngineChoice::Degraded { requested, reason } => (
            EventType::Warning,
            "Degraded",
            format!(
                "no usable engine for requested mode {requested}; previous rules kept: {reason}"
            ),
        ),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("reading Node {0}: {1}")]
    Node(String, #[source] kube::Error),
    #[error("applying ProxyNode {0}: {1}")]
    Apply(String, #[source] kube::Error),
}

struct Writer {
    proxy_nodes: Api<ProxyNode>,
    nodes: Api<Node>,
    recorder: Recorder,
    node_name: String,
    conditions: Vec<Condition>,
    last_event: Option<(&'static str, String)>,
    /// The conntrack status the last Events were decided on.
    last_conntrack: ConntrackStatus,
}

impl Writer {
    async fn write(&mut self, s: &NodeStatus, ct: &ConntrackStatus) -> Result<(), StatusError> {
        let node = self
            .nodes
            .get(&self.node_name)
            .await
            .map_err(|e| StatusError::Node(self.node_name.clone(), e))?;
        let owner = node.controller_owner_ref(&()).map(|mut o| {
            o.controller = Some(false);
            o
        });
        let pp = PatchParams::apply(MANAGER).force();
        let object = serde_json::json!({
            "apiVersion": "switchyard.dev/v1alpha1",
            "kind": "ProxyNode",
            "metadata": {"name": self.node_name, "ownerReferences": owner.into_iter().collect::<Vec<_>>()},
            "spec": {"nodeName": self.node_name},
        });
        self.proxy_nodes
            .patch(&self.node_name, &pp, &Patch::Apply(&object))
            .await
            .map_err(|e| StatusError::Apply(self.node_name.clone(), e))?;
        let status = proxy_node_status(s, ct, &self.conditions);
        let body = serde_json::json!({
            "apiVersion": "switchyard.dev/v1alpha1",
            "kind": "ProxyNode",
            "status": status,
        });
        self.proxy_nodes
            .patch_status(&self.node_name, &pp, &Patch::Apply(&body))
            .await
            .map_err(|e| StatusError::Apply(self.node_name.clone(), e))?;
        self.conditions = status.conditions;

        let node_ref = node.object_ref(&());
        if let Some(choice) = &s.choice {
            let (type_, reason, note) = event_for(choice);
            let first_normal = self.last_event.is_none() && type_ == EventType::Normal;
            if self.last_event.as_ref() != Some(&(reason, note.clone())) && !first_normal {
                self.event(&node_ref, type_, reason, note.clone(), "SelectEngine")
                    .await;
            }
            self.last_event = Some((reason, note));
        }
        for (type_, reason, note) in conntrack_events(&self.last_conntrack, ct) {
            self.event(&node_ref, type_, reason, note, "WatchConntrack")
                .await;
        }
        self.last_conntrack = ct.clone();
        Ok(())
    }

    async fn event(
        &self,
        on: &k8s_openapi::api::core::v1::ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
        action: &str,
    ) {
        let ev = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, on).await {
            tracing::warn!(error = %e, "publishing an Event on the Node failed");
        }
    }
}

/// Writes the node's ProxyNode whenever `status` or `conntrack` changes, until the
/// runner is gone. API errors are logged and retried; they never affect the dataplane.
pub async fn publish_status(
    client: Client,
    node_name: String,
    mut status: watch::Receiver<NodeStatus>,
    mut conntrack: watch::Receiver<ConntrackStatus>,
) {
    let mut writer = Writer {
        proxy_nodes: Api::all(client.clone()),
        nodes: Api::all(client.clone()),
        recorder: Recorder::new(
            client,
            Reporter {
                controller: MANAGER.into(),
                instance: Some(node_name.clone()),
            },
        ),
        node_name,
        conditions: Vec::new(),
        last_event: None,
        last_conntrack: ConntrackStatus::default(),
    };
    let mut monitor_running = true;
    loop {
        let snapshot = status.borrow_and_update().clone();
        let ct = conntrack.borrow_and_update().clone();
        if snapshot.choice.is_some() {
            if let Err(e) = writer.write(&snapshot, &ct).await {
                tracing::warn!(error = %e, "ProxyNode status not written; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        }
        tokio::select! {
            r = status.changed() => if r.is_err() {
                return;
            },
            // A monitor that stopped leaves its last status in place.
            r = conntrack.changed(), if monitor_running => if r.is_err() {
                monitor_running = false;
            },
        }
        // Coalesce bursts of changes into one write.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use switchyard_conntrack::{Refusal, Setting, TableUsage};
    use switchyard_core::programming_latency::LatencySummary;
    use switchyard_crd::ModeCapability;

    fn node() -> NodeStatus {
        NodeStatus {
            choice: Some(EngineChoice::Run {
                requested: Mode::Ipvs,
                mode: Mode::Nftables,
                fallback_reason: Some("ipvs unavailable: missing kernel module ip_vs".into()),
            }),
            capabilities: vec![ModeCapability {
                mode: Mode::Ipvs,
                available: false,
                missing: vec!["ip_vs".into(), "ip_vs_rr".into()],
                detail: "missing kernel modules ip_vs, ip_vs_rr".into(),
            }],
            network_programming: Some(LatencySummary {
                p50: Duration::from_millis(20),
                p99: Duration::from_millis(250),
                samples: 7,
                window: Duration::from_secs(600),
            }),
            ..NodeStatus::default()
        }
    }

    fn table(entries: u64, pressure: bool) -> ConntrackStatus {
        ConntrackStatus {
            usage: Some(TableUsage {
                entries,
                limit: 1000,
            }),
            pressure,
            ..ConntrackStatus::default()
        }
    }

    fn condition<'a>(s: &'a ProxyNodeStatus, type_: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn status_carries_missing_features_latency_and_conntrack() {
        let s = proxy_node_status(&node(), &table(950, true), &[]);
        assert_eq!(s.missing_features.as_deref(), Some("ip_vs,ip_vs_rr"));
        let l = s.network_programming_latency.clone().unwrap();
        assert_eq!((l.p50_seconds, l.p99_seconds, l.samples), (0.02, 0.25, 7));
        let ct = s.conntrack.clone().unwrap();
        assert_eq!(
            (ct.entries, ct.limit, ct.usage_percent),
            (Some(950), Some(1000), Some(95))
        );
        let p = condition(&s, condition::CONNTRACK_PRESSURE);
        assert_eq!(
            (p.status.as_str(), p.reason.as_str()),
            ("True", "TableNearlyFull")
        );
        assert!(
            p.message.starts_with("950 of 1000 entries (95%)"),
            "{}",
            p.message
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["missingFeatures"], "ip_vs,ip_vs_rr");
        assert_eq!(json["conntrack"]["usagePercent"], 95);
        assert_eq!(json["networkProgrammingLatency"]["p99Seconds"], 0.25);

        let mut running = node();
        running.choice = Some(EngineChoice::Run {
            requested: Mode::Nftables,
            mode: Mode::Nftables,
            fallback_reason: None,
        });
        let s = proxy_node_status(&running, &ConntrackStatus::default(), &[]);
        assert_eq!(s.missing_features, None);
        assert_eq!(s.conntrack, None);
        assert_eq!(condition(&s, condition::CONNTRACK_PRESSURE).status, "False");
    }

    #[test]
    fn conntrack_events_on_transitions_only() {
        let calm = table(100, false);
        let full = table(950, true);
        let e = conntrack_events(&calm, &full);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].0, e[0].1), (EventType::Warning, "ConntrackPressure"));
        assert!(conntrack_events(&full, &table(960, true)).is_empty());
        let e = conntrack_events(&full, &calm);
        assert_eq!(e[0].1, "ConntrackPressureRelieved");

        let refusal = |retry| {
            Refusal {
            setting: Setting::Max,
            wanted: 131072,
            message: "writing 131072 to /proc/sys/net/netfilter/nf_conntrack_max: Read-only file system (os error 30)".into(),
            retry,
        }
        };
        let refused = ConntrackStatus {
            refused: vec![refusal(false)],
            ..calm.clone()
        };
        let e = conntrack_events(&calm, &refused);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].1, "ConntrackSettingsRefused");
        assert!(e[0]
            .2
            .contains("nf_conntrack_max = 131072 (spec.conntrack.maxPerCore)"));
        assert!(conntrack_events(&refused, &refused.clone()).is_empty());
        let not_loaded = ConntrackStatus {
            refused: vec![refusal(true)],
            ..calm.clone()
        };
        assert!(
            conntrack_events(&calm, &not_loaded).is_empty(),
            "retried, no Event"
        );
        let s = proxy_node_status(&node(), &refused, &[]);
        let c = condition(&s, condition::CONNTRACK_SETTINGS_REFUSED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "KernelRefused")
        );
        assert!(c.message.contains("Read-only file system"));
    }
}

//! The node's `ProxyNode`: created owned by its Node, its status written by server-side
//! apply whenever the runner's `NodeStatus` changes (debounced), plus Events on the
//! Node when the engine choice turns to a fallback, to degraded, or back.

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
use switchyard_core::{engine_choice::EngineChoice, runner::NodeStatus};
use switchyard_crd::{condition, ProxyNode, ProxyNodeStatus};
use tokio::sync::watch;

use crate::MANAGER;

/// The ProxyNode status for a runner snapshot.
pub fn proxy_node_status(s: &NodeStatus, previous: &[Condition]) -> ProxyNodeStatus {
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
    let synced = s.last_sync.is_some() && s.last_error.is_none() && degraded.is_none();
    let (ready_reason, ready_message) = match (&degraded, &s.last_error, s.last_sync) {
        (Some(r), _, _) => ("Degraded", r.clone()),
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
    let conditions = vec![
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
            fallback_reason.clone().unwrap_or_default(),
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
            degraded.clone().unwrap_or_default(),
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
    ];
    ProxyNodeStatus {
        config: s.config_name.clone(),
        requested_mode: requested,
        active_mode: active,
        fallback_active: fallback_reason.is_some(),
        fallback_reason,
        capabilities: s.capabilities.clone(),
        last_sync_time: s
            .last_sync
            .map(|t| Time(Timestamp::try_from(t).unwrap_or(Timestamp::UNIX_EPOCH))),
        last_sync_duration_seconds: s.last_sync_duration.map(|d| d.as_secs_f64()),
        service_ports: s.service_ports as i64,
        endpoints: s.endpoints as i64,
        rules: s.rules.map(|r| r as i64),
        conditions,
    }
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
}

impl Writer {
    async fn write(&mut self, s: &NodeStatus) -> Result<(), StatusError> {
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
        let status = proxy_node_status(s, &self.conditions);
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

        if let Some(choice) = &s.choice {
            let (type_, reason, note) = event_for(choice);
            let first_normal = self.last_event.is_none() && type_ == EventType::Normal;
            if self.last_event.as_ref() != Some(&(reason, note.clone())) && !first_normal {
                let ev = Event {
                    type_,
                    reason: reason.to_string(),
                    note: Some(note.clone()),
                    action: "SelectEngine".into(),
                    secondary: None,
                };
                if let Err(e) = self.recorder.publish(&ev, &node.object_ref(&())).await {
                    tracing::warn!(error = %e, "publishing an Event on the Node failed");
                }
            }
            self.last_event = Some((reason, note));
        }
        Ok(())
    }
}

/// Writes the node's ProxyNode whenever `status` changes, until the runner is gone.
/// API errors are logged and retried; they never affect the dataplane.
pub async fn publish_status(
    client: Client,
    node_name: String,
    mut status: watch::Receiver<NodeStatus>,
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
    };
    loop {
        let snapshot = status.borrow_and_update().clone();
        if snapshot.choice.is_some() {
            if let Err(e) = writer.write(&snapshot).await {
                tracing::warn!(error = %e, "ProxyNode status not written; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        }
        if status.changed().await.is_err() {
            return;
        }
        // Coalesce bursts of changes into one write.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

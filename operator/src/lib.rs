//! The operator: folds every node's `ProxyNode` into its `ProxyConfig`'s status (nodes
//! selected, ready, on fallback; conditions), so `kubectl get proxyconfig` answers "is
//! every pool running the mode I asked for?". Two replicas are safe: only the holder of
//! a `coordination.k8s.io` Lease writes.
//!
//! - [`summary`]: the pure fold of ProxyNodes into a ProxyConfig status.
//! - [`leader`]: Lease-based leader election.
//! - [`run`]: the reconcile loop.

pub mod leader;
pub mod summary;

use std::{collections::BTreeSet, time::Duration};

use k8s_openapi::api::core::v1::Node;
use kube::{
    api::{ListParams, Patch, PatchParams},
    Api, Client, ResourceExt,
};
use switchyard_crd::{ProxyConfig, ProxyNode};

pub use leader::LeaderElector;
pub use summary::summarize;

/// Field manager for the operator's writes.
pub const MANAGER: &str = "switchyard-operator";

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("listing {0}: {1}")]
    List(&'static str, #[source] kube::Error),
    #[error("writing status of ProxyConfig {0}: {1}")]
    Status(String, #[source] kube::Error),
    #[error("lease {0}: {1}")]
    Lease(String, #[source] kube::Error),
}

/// One pass: recompute every ProxyConfig's status, write those that changed, and delete
/// ProxyNodes whose Node is gone. Returns how many statuses were written.
pub async fn reconcile(client: &Client) -> Result<usize, OperatorError> {
    let configs: Api<ProxyConfig> = Api::all(client.clone());
    let proxy_nodes: Api<ProxyNode> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let lp = ListParams::default();
    let configs_list = configs
        .list(&lp)
        .await
        .map_err(|e| OperatorError::List("proxyconfigs", e))?;
    let pn_list = proxy_nodes
        .list(&lp)
        .await
        .map_err(|e| OperatorError::List("proxynodes", e))?;
    let node_names: BTreeSet<String> = nodes
        .list_metadata(&lp)
        .await
        .map_err(|e| OperatorError::List("nodes", e))?
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    for pn in &pn_list.items {
        if !node_names.contains(&pn.name_any()) {
            tracing::info!(proxynode = %pn.name_any(), "deleting ProxyNode of a Node that no longer exists");
            let _ = proxy_nodes
                .delete(&pn.name_any(), &Default::default())
                .await;
        }
    }
    let live: Vec<&ProxyNode> = pn_list
        .items
        .iter()
        .filter(|p| node_names.contains(&p.name_any()))
        .collect();
    let mut written = 0;
    for config in &configs_list.items {
        let name = config.name_any();
        let status = summarize(
            &name,
            &live,
            config
                .status
                .as_ref()
                .map(|s| s.conditions.as_slice())
                .unwrap_or(&[]),
        );
        if config.status.as_ref() == Some(&status) {
            continue;
        }
        let body = serde_json::json!({"status": status});
        configs
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .map_err(|e| OperatorError::Status(name.clone(), e))?;
        written += 1;
    }
    Ok(written)
}

/// Runs until the process ends: campaigns for the lease, and while leading reconciles
/// every `period`.
pub async fn run(client: Client, identity: String, namespace: String, period: Duration) {
    let elector = LeaderElector::new(
        client.clone(),
        &namespace,
        "switchyard-operator",
        identity,
        Duration::from_secs(15),
    );
    let mut leading = false;
    loop {
        match elector.try_acquire_or_renew().await {
            Ok(now_leading) => {
                if now_leading != leading {
                    tracing::info!(leading = now_leading, identity = %elector.identity(), "leadership changed");
                    leading = now_leading;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease update failed; standing by");
                leading = false;
            }
        }
        if leading {
            match reconcile(&client).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(written = n, "ProxyConfig statuses updated"),
                Err(e) => tracing::warn!(error = %e, "reconcile failed; retrying"),
            }
        }
        tokio::time::sleep(period).await;
    }
}

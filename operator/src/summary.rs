//! How ProxyNodes add up into a ProxyConfig's status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use switchyard_crd::{condition, ProxyConfigStatus, ProxyNode};

fn is_true(node: &ProxyNode, type_: &str) -> bool {
    node.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
    })
}

/// Lists at most five names, then "and N more".
fn names(list: &[String]) -> String {
    let mut out = list.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if list.len() > 5 {
        out.push_str(&format!(" and {} more", list.len() - 5));
    }
    out
}

/// The status of ProxyConfig `config` given every ProxyNode: the nodes whose agent
/// reports this config in force are "selected".
pub fn summarize(
    config: &str,
    proxy_nodes: &[&ProxyNode],
    previous: &[Condition],
) -> ProxyConfigStatus {
    let selected: Vec<&&ProxyNode> = proxy_nodes
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.config.as_deref()) == Some(config))
        .collect();
    let not_ready: Vec<String> = selected
        .iter()
        .filter(|p| !is_true(p, condition::READY))
        .map(|p| p.name_any())
        .collect();
    let fallback: Vec<String> = selected
        .iter()
        .filter_map(|p| {
            let s = p.status.as_ref()?;
            s.fallback_active.then(|| {
                format!(
                    "{} runs {} ({})",
                    p.name_any(),
                    s.active_mode.map(|m| m.to_string()).unwrap_or_default(),
                    s.fallback_reason.clone().unwrap_or_default()
                )
            })
        })
        .collect();
    let degraded: Vec<String> = selected
        .iter()
        .filter(|p| is_true(p, condition::DEGRADED))
        .map(|p| p.name_any())
        .collect();
    let conflicted: Vec<String> = selected
        .iter()
        .filter(|p| is_true(p, condition::CONFIG_CONFLICT))
        .map(|p| p.name_any())
        .collect();
    let total = selected.len();
    let ready = total - not_ready.len();
    let conditions = vec![
        condition::state(
            previous,
            condition::READY,
            total > 0 && not_ready.is_empty(),
            if total == 0 {
                "NoNodes"
            } else if not_ready.is_empty() {
                "AllNodesReady"
            } else {
                "NodesNotReady"
            },
            if not_ready.is_empty() {
                format!("{ready}/{total} nodes ready")
            } else {
                format!("not ready: {}", names(&not_ready))
            },
        ),
        condition::state(
            previous,
            condition::FALLBACK_ACTIVE,
            !fallback.is_empty(),
            if fallback.is_empty() {
                "RequestedModeActive"
            } else {
                "NodesOnFallback"
            },
            names(&fallback),
        ),
        condition::state(
            previous,
            condition::DEGRADED,
            !degraded.is_empty(),
            if degraded.is_empty() {
                "NoDegradedNodes"
            } else {
                "NodesDegraded"
            },
            names(&degraded),
        ),
        condition::state(
            previous,
            condition::CONFIG_CONFLICT,
            !conflicted.is_empty(),
            if conflicted.is_empty() {
                "NoConflict"
            } else {
                "SamePriority"
            },
            names(&conflicted),
        ),
    ];
    ProxyConfigStatus {
        nodes_selected: total as i32,
        nodes_ready: ready as i32,
        nodes_on_fallback: fallback.len() as i32,
        conditions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_crd::{Mode, ProxyNodeSpec, ProxyNodeStatus};

    fn node(name: &str, config: &str, ready: bool, fallback: bool) -> ProxyNode {
        let mut p = ProxyNode::new(
            name,
            ProxyNodeSpec {
                node_name: name.into(),
            },
        );
        p.status = Some(ProxyNodeStatus {
            config: Some(config.into()),
            requested_mode: Some(Mode::Ipvs),
            active_mode: Some(if fallback { Mode::Nftables } else { Mode::Ipvs }),
            fallback_active: fallback,
            fallback_reason: fallback
                .then(|| "ipvs unavailable: missing kernel modules ip_vs".into()),
            conditions: vec![condition::state(
                &[],
                condition::READY,
                ready,
                "x",
                String::new(),
            )],
            ..Default::default()
        });
        p
    }

    #[test]
    fn counts_selected_ready_and_fallback_nodes() {
        let nodes = [
            node("a", "pool", true, true),
            node("b", "pool", false, false),
            node("c", "other", true, false),
        ];
        let refs: Vec<&ProxyNode> = nodes.iter().collect();
        let s = summarize("pool", &refs, &[]);
        assert_eq!(
            (s.nodes_selected, s.nodes_ready, s.nodes_on_fallback),
            (2, 1, 1)
        );
        let fb = s
            .conditions
            .iter()
            .find(|c| c.type_ == condition::FALLBACK_ACTIVE)
            .unwrap();
        assert_eq!(fb.status, "True");
        assert!(
            fb.message
                .contains("a runs nftables (ipvs unavailable: missing kernel modules ip_vs)"),
            "{}",
            fb.message
        );
        let ready = s
            .conditions
            .iter()
            .find(|c| c.type_ == condition::READY)
            .unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.message.as_str()),
            ("False", "not ready: b")
        );
    }

    #[test]
    fn transition_time_is_kept_while_status_holds() {
        let nodes = [node("a", "pool", true, false)];
        let refs: Vec<&ProxyNode> = nodes.iter().collect();
        let first = summarize("pool", &refs, &[]);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let second = summarize("pool", &refs, &first.conditions);
        assert_eq!(first, second);
    }
}

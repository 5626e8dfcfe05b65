//! Which `ProxyConfig` governs this node: the configs whose `nodeSelector` matches the
//! Node's labels, highest `priority` first; a tie is a conflict, resolved
//! deterministically (oldest, then name) and reported.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use switchyard_crd::ProxyConfig;

/// The config chosen for a node.
#[derive(Debug, Clone)]
pub struct Selection<'a> {
    pub config: &'a ProxyConfig,
    /// Other configs that matched with the same priority (a `ConfigConflict`).
    pub conflicts_with: Vec<String>,
}

/// Whether `selector` selects an object with `labels`. An absent or empty selector
/// selects everything.
pub fn selector_matches(
    selector: Option<&LabelSelector>,
    labels: &BTreeMap<String, String>,
) -> bool {
    let Some(sel) = selector else { return true };
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for expr in sel.match_expressions.iter().flatten() {
        let value = labels.get(&expr.key);
        let values = expr.values.as_deref().unwrap_or(&[]);
        let ok = match expr.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => !value.is_some_and(|v| values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Picks the config for a node with `node_labels` among `configs`.
pub fn select<'a>(
    configs: impl IntoIterator<Item = &'a ProxyConfig>,
    node_labels: &BTreeMap<String, String>,
) -> Option<Selection<'a>> {
    let mut matching: Vec<&ProxyConfig> = configs
        .into_iter()
        .filter(|c| selector_matches(c.spec.node_selector.as_ref(), node_labels))
        .collect();
    matching.sort_by(|a, b| {
        b.spec
            .priority
            .cmp(&a.spec.priority)
            .then_with(|| {
                let ta = a.metadata.creation_timestamp.as_ref().map(|t| t.0);
                let tb = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
                // Configs without a timestamp (standalone manifests) sort after dated ones.
                match (ta, tb) {
                    (Some(x), Some(y)) => x.cmp(&y),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (None, None) => std::cmp::Ordering::Equal,
                }
            })
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    let winner = *matching.first()?;
    let conflicts_with = matching[1..]
        .iter()
        .filter(|c| c.spec.priority == winner.spec.priority)
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    Some(Selection {
        config: winner,
        conflicts_with,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_crd::ProxyConfigSpec;

    fn config(name: &str, priority: i32, selector: Option<&str>) -> ProxyConfig {
        let mut c = ProxyConfig::new(
            name,
            ProxyConfigSpec {
                priority,
                ..Default::default()
            },
        );
        c.spec.node_selector = selector.map(|s| serde_yaml::from_str(s).unwrap());
        c
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn highest_priority_matching_config_wins() {
        let configs = [
            config("default", 0, None),
            config("gpu", 10, Some("matchLabels: {pool: gpu}")),
            config("other", 20, Some("matchLabels: {pool: other}")),
        ];
        let s = select(&configs, &labels(&[("pool", "gpu")])).unwrap();
        assert_eq!(s.config.metadata.name.as_deref(), Some("gpu"));
        assert!(s.conflicts_with.is_empty());
        let s = select(&configs, &labels(&[("pool", "cpu")])).unwrap();
        assert_eq!(s.config.metadata.name.as_deref(), Some("default"));
    }

    #[test]
    fn tie_is_a_conflict_with_deterministic_winner() {
        let configs = [config("b", 5, None), config("a", 5, None)];
        let s = select(&configs, &labels(&[])).unwrap();
        assert_eq!(s.config.metadata.name.as_deref(), Some("a"));
        assert_eq!(s.conflicts_with, vec!["b".to_string()]);
    }

    #[test]
    fn match_expressions() {
        let sel: LabelSelector = serde_yaml::from_str(
            "matchExpressions: [{key: zone, operator: In, values: [a, b]}, {key: spot, operator: DoesNotExist}]",
        )
        .unwrap();
        assert!(selector_matches(Some(&sel), &labels(&[("zone", "a")])));
        assert!(!selector_matches(Some(&sel), &labels(&[("zone", "c")])));
        assert!(!selector_matches(
            Some(&sel),
            &labels(&[("zone", "a"), ("spot", "1")])
        ));
    }
}

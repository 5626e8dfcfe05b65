//! Fuzzing (issue 14, "0 panics") of everything a manifests directory feeds the agent:
//! the manifest parser (`parse_text`: YAML and JSON, several documents, lists), object
//! validation (run by the parser on every decoded object), ProxyConfig validation
//! (`ProxyConfigSpec::effective`, which parses the durations and CIDRs) and, through it,
//! duration parsing. Inputs are arbitrary text, and valid manifests whose every field is
//! replaced by hostile values (huge numbers, overflowing durations, any Unicode, wrong
//! types) or that are cut or mutated byte-wise. The result must be objects or errors,
//! never a panic.
//!
//! `SY_FUZZ_CASES` sets the number of cases per property (default 512 in `make test`;
//! `make chaos` runs 20000).

use std::path::Path;

use proptest::prelude::*;
use switchyard_core::{manifest_docs::parse_text, Object};

fn cases() -> u32 {
    std::env::var("SY_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(512)
}

/// Parses `text` and validates every ProxyConfig it yields, as the agent would.
fn feed(text: &str) {
    let Ok(contents) = parse_text(Path::new("fuzz.yaml"), text) else {
        return;
    };
    for object in &contents.objects {
        if let Object::ProxyConfig(pc) = object {
            let _ = pc.spec.effective();
        }
    }
    for e in &contents.errors {
        let _ = (e.to_string(), e.object());
    }
}

/// A hostile scalar: numbers at and beyond every integer width, durations that fit the
/// CRD's pattern but overflow, CIDRs and addresses that almost parse, any text.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| format!("{n}{n}")),
        (
            any::<u64>(),
            prop::sample::select(vec!["h", "m", "s", "ms", "us", "ns", "µs", ""])
        )
            .prop_map(|(n, u)| format!("\"{n}{u}\"")),
        "[0-9]{1,30}(h|m|s|ms)([0-9]{1,20}(s|ms))?".prop_map(|s| format!("\"{s}\"")),
        "[0-9]{1,4}\\.[0-9]{1,4}\\.[0-9]{1,4}\\.[0-9]{1,4}(/[0-9]{1,3})?"
            .prop_map(|s| format!("\"{s}\"")),
        "[0-9a-fA-F:]{0,45}(/[0-9]{1,4})?".prop_map(|s| format!("\"{s}\"")),
        "\\PC{0,40}".prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
        Just("null".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("[1, \"a\", {}]".to_string()),
        Just("-1".to_string()),
        Just("1e400".to_string()),
    ]
}

/// Valid manifests with `@` marking every value the fuzzer replaces.
const TEMPLATES: [&str; 4] = [
    r#"{"apiVersion": "switchyard.dev/v1alpha1", "kind": "ProxyConfig", "metadata": {"name": "p"},
 "spec": {"mode": @, "priority": @, "syncPeriod": @, "minSyncPeriod": @, "fallback": [@],
  "clusterCIDRs": [@, @], "nodePortAddresses": [@], "masqueradeAll": @,
  "healthzBindAddress": @, "metricsBindAddress": @,
  "conntrack": {"maxPerCore": @, "min": @, "tcpEstablishedTimeout": @, "tcpCloseWaitTimeout": @, "udpTimeout": @},
  "ipvs": {"scheduler": @, "tcpTimeout": @, "syncPeriod": @},
  "ebpf": {"cgroupPath": @, "mapSizes": {"services": @, "backends": @}},
  "nodeSelector": {"matchLabels": {"a": @}}}}"#,
    r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": @, "name": @},
 "spec": {"type": @, "clusterIP": @, "clusterIPs": [@], "ipFamilies": [@], "externalIPs": [@],
  "sessionAffinity": @, "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": @}},
  "externalTrafficPolicy": @, "internalTrafficPolicy": @, "healthCheckNodePort": @,
  "loadBalancerSourceRanges": [@], "trafficDistribution": @,
  "ports": [{"name": @, "port": @, "protocol": @, "targetPort": @, "nodePort": @}]},
 "status": {"loadBalancer": {"ingress": [{"ip": @, "ipMode": @}]}}}"#,
    r#"{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
 "metadata": {"namespace": "n", "name": @, "labels": {"kubernetes.io/service-name": @}},
 "addressType": @, "ports": [{"name": @, "port": @, "protocol": @}],
 "endpoints": [{"addresses": [@, @], "conditions": {"ready": @, "serving": @, "terminating": @},
   "nodeName": @, "zone": @, "hints": {"forZones": [{"name": @}]}}]}"#,
    r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": @, "labels": {"k": @}},
 "spec": {"podCIDR": @, "podCIDRs": [@]},
 "status": {"addresses": [{"type": @, "address": @}]}}"#,
];

fn fill(template: &str, values: &[String]) -> String {
    let mut out = String::with_capacity(template.len() * 2);
    let mut values = values.iter().cycle();
    for c in template.chars() {
        if c == '@' {
            out.push_str(values.next().map(String::as_str).unwrap_or("null"));
        } else {
            out.push(c);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn any_text_never_panics(text in "\\PC{0,400}") {
        feed(&text);
    }

    #[test]
    fn hostile_fields_never_panic(
        t in 0..TEMPLATES.len(),
        values in prop::collection::vec(hostile(), 1..40),
    ) {
        let json = fill(TEMPLATES[t], &values);
        feed(&json);
        // The same document as YAML (the other parser), when it is JSON at all.
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&json) {
            if let Ok(yaml) = serde_yaml::to_string(&v) {
                feed(&yaml);
                feed(&format!("---\n{yaml}---\n{yaml}"));
                feed(&format!("{{\"kind\": \"List\", \"items\": [{json}, {json}]}}"));
            }
        }
    }

    #[test]
    fn cut_and_mutated_manifests_never_panic(
        t in 0..TEMPLATES.len(),
        values in prop::collection::vec(hostile(), 1..40),
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<char>()), 0..8),
    ) {
        let mut chars: Vec<char> = fill(TEMPLATES[t], &values).chars().collect();
        for (at, c) in flips {
            let i = at.index(chars.len());
            chars[i] = c;
        }
        let text: String = chars[..cut.index(chars.len() + 1)].iter().collect();
        feed(&text);
    }
}

/// The ProxyConfig template with a valid value for every `@`, in order.
const VALID_PROXY_CONFIG: [&str; 23] = [
    "\"nftables\"",
    "10",
    "\"30s\"",
    "\"1s\"",
    "\"iptables\"",
    "\"10.0.0.0/8\"",
    "\"fd00::/8\"",
    "\"192.168.0.0/24\"",
    "false",
    "\"0.0.0.0:10256\"",
    "\"127.0.0.1:10249\"",
    "32768",
    "131072",
    "\"24h\"",
    "\"1h\"",
    "\"5m\"",
    "\"rr\"",
    "\"15m\"",
    "\"30s\"",
    "\"/sys/fs/cgroup\"",
    "65536",
    "262144",
    "\"b\"",
];

/// The fuzzed fields do reach validation: the template filled with valid values is a
/// valid ProxyConfig, and an overflowing duration in it is an error naming the field.
#[test]
fn the_proxy_config_template_reaches_validation() {
    let values: Vec<String> = VALID_PROXY_CONFIG.iter().map(|v| v.to_string()).collect();
    let text = fill(TEMPLATES[0], &values);
    let contents = parse_text(Path::new("pc.json"), &text).expect("parses");
    assert!(
        contents.errors.is_empty(),
        "{:?}",
        contents
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
    );
    let Some(Object::ProxyConfig(pc)) = contents.objects.first() else {
        panic!("no ProxyConfig from {text}");
    };
    pc.spec.effective().expect("valid");

    let mut bad = values.clone();
    bad[2] = "\"99999999999999999999h\"".into();
    let contents = parse_text(Path::new("pc.json"), &fill(TEMPLATES[0], &bad)).expect("parses");
    let said: Vec<String> = contents.errors.iter().map(|e| e.to_string()).collect();
    let effective = contents.objects.iter().find_map(|o| match o {
        Object::ProxyConfig(pc) => Some(pc.spec.effective().map(|_| ()).map_err(|e| e.to_string())),
        _ => None,
    });
    let all = format!("{said:?} {effective:?}");
    assert!(
        all.contains("syncPeriod"),
        "an overflowing syncPeriod was not refused by name: {all}"
    );
}

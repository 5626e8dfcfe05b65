//! kubectl against the simulator with Switchyard's own CRDs (the Helm chart's copy, which
//! `crd/tests/chart_crds.rs` keeps equal to the generated ones): the API server's
//! validation of custom objects as an operator meets it.
//!
//! - a ProxyConfig whose `fallback` repeats its `mode` is refused with the rule's message;
//! - a bad or too long duration is refused;
//! - a list longer than its `maxItems` is refused;
//! - schema defaults are applied;
//! - `kubectl explain proxyconfig.spec` shows the CRD's documentation;
//! - a CRD the API server would refuse (an unbounded list under `all()`) is refused.

mod common;

use common::kubectl::Kubectl;

const CHART_CRDS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../charts/switchyard/crds/switchyard.yaml"
);

async fn with_crds(name: &str) -> Option<Kubectl> {
    let k = Kubectl::start(name).await?;
    k.ok(&["apply", "-f", CHART_CRDS]).await;
    k.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/proxyconfigs.switchyard.dev",
        "--timeout=10s",
    ])
    .await;
    Some(k)
}

fn pxc(name: &str, spec: &str) -> String {
    format!("apiVersion: switchyard.dev/v1alpha1\nkind: ProxyConfig\nmetadata: {{name: {name}}}\nspec:\n{spec}")
}

#[tokio::test]
async fn invalid_proxy_configs_are_refused_with_the_api_servers_errors() {
    let Some(k) = with_crds("pxc-invalid").await else {
        return;
    };
    let f = k.file(
        "repeat.yaml",
        &pxc("repeat", "  mode: ipvs\n  fallback: [nftables, ipvs]\n"),
    );
    let err = k.fails(&["apply", "-f", &f]).await;
    assert!(
        err.contains(r#"The ProxyConfig "repeat" is invalid: spec: Invalid value: "object": fallback may not repeat mode"#),
        "{err}"
    );

    for (value, fragment) in [
        ("2h", "must be a duration from greater than 0 to 1h"),
        (
            "99999999999999999999h",
            "must be a duration from greater than 0 to 1h",
        ),
        ("soon", "must be a duration from greater than 0 to 1h"),
        (
            "1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h1h",
            "Too long: may not be more than 32 bytes",
        ),
    ] {
        let f = k.file(
            "duration.yaml",
            &pxc("duration", &format!("  syncPeriod: \"{value}\"\n")),
        );
        let err = k.fails(&["apply", "-f", &f]).await;
        assert!(err.contains("spec.syncPeriod: "), "{value}: {err}");
        assert!(err.contains(fragment), "{value}: {err}");
    }
    let f = k.file(
        "ipvs.yaml",
        &pxc("ipvs", "  ipvs: {tcpTimeout: 25h, scheduler: fastest}\n"),
    );
    let err = k.fails(&["apply", "-f", &f]).await;
    assert!(
        err.contains("spec.ipvs.scheduler: Unsupported value: \"fastest\""),
        "{err}"
    );

    let cidrs: Vec<String> = (0..17).map(|i| format!("10.{i}.0.0/16")).collect();
    let f = k.file(
        "many.yaml",
        &pxc("many", &format!("  clusterCIDRs: [{}]\n", cidrs.join(", "))),
    );
    let err = k.fails(&["apply", "-f", &f]).await;
    assert!(
        err.contains("spec.clusterCIDRs: Too many: 17: must have at most 16 items"),
        "{err}"
    );

    let f = k.file(
        "npa.yaml",
        &pxc("npa", "  nodePortAddresses: [primary, banana]\n"),
    );
    let err = k.fails(&["apply", "-f", &f]).await;
    assert!(err.contains(r#"spec.nodePortAddresses: Invalid value: "array": every entry must be a CIDR or "primary""#), "{err}");

    let (ok, out, _) = k.run(&["get", "pxc", "-o", "name"]).await;
    assert!(
        ok && out.trim().is_empty(),
        "nothing invalid was stored: {out}"
    );
}

#[tokio::test]
async fn valid_proxy_configs_are_stored_with_their_defaults() {
    let Some(k) = with_crds("pxc-valid").await else {
        return;
    };
    let f = k.file(
        "ok.yaml",
        &pxc("ok", "  fallback: [nftables]\n  syncPeriod: 1m30s\n  nodePortAddresses: [primary, 192.168.0.0/24]\n  ipvs: {scheduler: sh, schedulerFlags: [sh-port]}\n  conntrack: {maxPerCore: 0}\n"),
    );
    k.ok(&["apply", "-f", &f]).await;
    let get = |path: &'static str| {
        let k = &k;
        async move {
            k.ok(&["get", "pxc", "ok", "-o", &format!("jsonpath={path}")])
                .await
        }
    };
    assert_eq!(get("{.spec.mode}").await, "iptables");
    assert_eq!(get("{.spec.masqueradeAll}").await, "false");
    assert_eq!(get("{.spec.ipvs.strictARP}").await, "false");
    assert_eq!(get("{.spec.syncPeriod}").await, "1m30s");
    // An update is validated too, against the stored object.
    let err = k
        .fails(&[
            "patch",
            "pxc",
            "ok",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"mode":"nftables"}}"#,
        ])
        .await;
    assert!(err.contains("fallback may not repeat mode"), "{err}");
    let err = k
        .fails(&[
            "patch",
            "pxc",
            "ok",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"ipvs":{"scheduler":"rr"}}}"#,
        ])
        .await;
    assert!(
        err.contains("schedulerFlags must belong to the scheduler"),
        "{err}"
    );
}

#[tokio::test]
async fn kubectl_explain_shows_the_crd_documentation() {
    let Some(k) = with_crds("pxc-explain").await else {
        return;
    };
    let out = k.ok(&["explain", "proxyconfig.spec"]).await;
    for needle in [
        "GROUP:      switchyard.dev",
        "KIND:       ProxyConfig",
        "VERSION:    v1alpha1",
        "FIELD: spec <Object>",
        "Per-pool proxy configuration",
        "fallback",
        "syncPeriod",
        "nodePortAddresses",
        "ipvs\t<Object>",
        "fallback\t<[]string>",
    ] {
        assert!(out.contains(needle), "{needle} missing from:\n{out}");
    }
    let out = k.ok(&["explain", "pxc.spec.ipvs.scheduler"]).await;
    assert!(out.contains("ipvsadm"), "{out}");
    let out = k.ok(&["explain", "proxynode.status"]).await;
    assert!(out.contains("fallbackReason"), "{out}");
}

#[tokio::test]
async fn a_crd_the_api_server_would_refuse_is_refused() {
    let Some(k) = Kubectl::start("crd-refused").await else {
        return;
    };
    let unbounded = std::fs::read_to_string(CHART_CRDS)
        .unwrap()
        .replacen("                maxItems: 16\n                type: array\n                x-kubernetes-validations:\n                - message: every entry must be a CIDR or \"primary\"",
                  "                type: array\n                x-kubernetes-validations:\n                - message: every entry must be a CIDR or \"primary\"", 1)
        .replacen("                items:\n                  maxLength: 64\n                  type: string\n                type: array\n                x-kubernetes-validations:\n                - message: every entry must be a CIDR or \"primary\"",
                  "                items:\n                  type: string\n                type: array\n                x-kubernetes-validations:\n                - message: every entry must be a CIDR or \"primary\"", 1);
    assert!(!unbounded.contains("maxLength: 64\n                  type: string\n                type: array\n                x-kubernetes-validations:\n                - message: every entry must be a CIDR or \"primary\""));
    let f = k.file("unbounded.yaml", &unbounded);
    let err = k.fails(&["apply", "-f", &f]).await;
    assert!(
        err.contains("The CustomResourceDefinition \"proxyconfigs.switchyard.dev\" is invalid")
            && err.contains("* spec.validation.openAPIV3Schema.properties[spec].properties[nodePortAddresses].x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of more than 100x"),
        "{err}"
    );
    let bad_rule = std::fs::read_to_string(CHART_CRDS).unwrap().replacen(
        "rule: self.startsWith('/')",
        "rule: self.startsWith(",
        1,
    );
    let f = k.file("bad-rule.yaml", &bad_rule);
    let err = k.fails(&["apply", "-f", &f]).await;
    assert!(
        err.contains("properties[cgroupPath].x-kubernetes-validations[0].rule: Invalid value"),
        "{err}"
    );
    assert!(err.contains("compilation failed"), "{err}");
}

//! Fallback, for real, both ways: a ProxyConfig asking for `mode: ipvs, fallback:
//! [nftables]` runs the real agent in the sandbox.
//!
//! - With the IPVS modules there (the VM lane), it runs IPVS: traffic through a
//!   ClusterIP, the VIP in `ipvsadm -Ln`, no nftables engine table, and no fallback
//!   reported (`switchyard_engine_fallback` never 1).
//! - With `ip_vs` unavailable (the host has none; the VM lane unloads it and makes
//!   `modprobe ip_vs` fail first), it runs nftables and reports the fallback naming
//!   the missing module: `switchyard_engine_fallback{requested="ipvs",active=
//!   "nftables"} 1` and the agent's log. (The ProxyNode status and the Event are
//!   checked through the kube API simulator by `agent_api.rs`.)
//!
//! Needs root; the first test needs IPVS (skips loudly without it), the second needs
//! its absence (skips loudly when `ip_vs` is loaded).

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde_yaml::{Mapping, Value};
use switchyard_e2e::{
    manifests::{node_object, proxy_config, ManifestDir},
    netns::run_cmd,
    require_ipvs, require_root, Outcome, Proto, Sandbox,
};

const VIP: &str = "172.30.9.1";
const BACKENDS: [&str; 2] = ["10.180.9.1", "10.180.9.2"];
const HEALTHY: Duration = Duration::from_secs(90);

fn objects() -> Vec<Value> {
    let svc = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{namespace: e2e, name: web}}\nspec:\n  type: ClusterIP\n  clusterIP: {VIP}\n  clusterIPs: [{VIP}]\n  ipFamilies: [IPv4]\n  ports:\n  - {{name: http, port: 80, protocol: TCP, targetPort: 8080}}\n"
    );
    let eps: String = BACKENDS
        .iter()
        .map(|ip| {
            format!("- addresses: [{ip}]\n  conditions: {{ready: true}}\n  nodeName: test-node\n")
        })
        .collect();
    let slice = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  namespace: e2e\n  name: web-1\n  labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\nports:\n- {{name: http, port: 8080, protocol: TCP}}\nendpoints:\n{eps}"
    );
    vec![
        serde_yaml::from_str(&svc).unwrap(),
        serde_yaml::from_str(&slice).unwrap(),
    ]
}

/// The sandbox with the agent running `mode: ipvs, fallback: [nftables]`, healthy.
fn start() -> Result<(Sandbox, ManifestDir)> {
    let dir = ManifestDir::new_temp("manifests")?;
    dir.write(&node_object())?;
    let mut overrides = Mapping::new();
    overrides.insert("fallback".into(), vec!["nftables"].into());
    dir.write(&proxy_config("ipvs", &overrides))?;
    for (i, o) in objects().iter().enumerate() {
        dir.write_object(&format!("{i}.yaml"), o)?;
    }
    let mut sb = Sandbox::new()?;
    for ip in BACKENDS {
        sb.add_pod(&[ip.parse()?], &[8080])?;
    }
    sb.run_agent(dir.path(), &[])?;
    sb.wait_healthy(HEALTHY)?;
    Ok((sb, dir))
}

/// Both backends answer through the VIP.
fn traffic(sb: &Sandbox) -> Result<()> {
    let dst: SocketAddr = format!("{VIP}:80").parse()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = BTreeSet::new();
    while Instant::now() < deadline {
        if let Outcome::Answered { backend, .. } =
            sb.probe("pod", dst, Proto::Tcp, Duration::from_millis(1500))?
        {
            seen.insert(backend);
        }
        if seen.len() == BACKENDS.len() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!("through {dst} only {seen:?} answered");
}

fn in_node(sb: &Sandbox, args: &[&str]) -> Result<String> {
    run_cmd(
        Command::new("ip")
            .args(["netns", "exec", sb.node_ns().name()])
            .args(args),
    )
}

/// The metric lines of `switchyard_engine_fallback`.
fn fallback_metric(sb: &Sandbox) -> Result<Vec<String>> {
    Ok(sb
        .metrics()?
        .lines()
        .filter(|l| l.starts_with("switchyard_engine_fallback{"))
        .map(str::to_string)
        .collect())
}

#[test]
fn with_the_modules_ipvs_runs_and_no_fallback_is_reported() {
    let test = "with_the_modules_ipvs_runs_and_no_fallback_is_reported";
    if !require_root(test) || !require_ipvs(test) {
        return;
    }
    let (sb, _dir) = start().unwrap();
    traffic(&sb).unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", sb.agent_log(), sb.node_ruleset()));
    let table = in_node(&sb, &["ipvsadm", "-Ln"]).unwrap();
    assert!(table.contains(&format!("TCP  {VIP}:80 rr")), "{table}");
    assert!(
        in_node(&sb, &["nft", "list", "table", "ip", "switchyard"]).is_err(),
        "the nftables engine's table exists: not on IPVS?"
    );
    let metric = fallback_metric(&sb).unwrap();
    assert!(
        !metric.iter().any(|l| l.ends_with(" 1")),
        "{metric:?}\n{}",
        sb.agent_log()
    );
    let log = sb.agent_log();
    assert!(
        !log.to_ascii_lowercase().contains("fallback active"),
        "{log}"
    );
}

#[test]
fn without_ip_vs_nftables_runs_and_the_fallback_names_the_module() {
    let test = "without_ip_vs_nftables_runs_and_the_fallback_names_the_module";
    if !require_root(test) {
        return;
    }
    if Path::new("/proc/sys/net/ipv4/vs").exists() {
        eprintln!(
            "\n*** SKIPPED: {test} needs ip_vs unavailable (the VM lane unloads it first) ***\n"
        );
        return;
    }
    let (sb, _dir) = start().unwrap();
    traffic(&sb).unwrap_or_else(|e| panic!("{e:#}\n{}", sb.agent_log()));
    assert!(in_node(&sb, &["nft", "list", "table", "ip", "switchyard"]).is_ok());
    let metric = fallback_metric(&sb).unwrap();
    assert!(
        metric.contains(
            &r#"switchyard_engine_fallback{requested="ipvs",active="nftables"} 1"#.to_string()
        ),
        "{metric:?}"
    );
    let log = sb.agent_log();
    assert!(
        log.lines()
            .any(|l| l.to_ascii_lowercase().contains("fallback active") && l.contains("ip_vs")),
        "the log names neither the fallback nor ip_vs:\n{log}"
    );
}

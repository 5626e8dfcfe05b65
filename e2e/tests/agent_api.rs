//! The agent against the kube API simulator, all inside the sandbox's node namespace:
//! `kube-sim`, `switchyard operator` and `switchyard agent --node-name test-node` run there,
//! and kubectl talks to the simulator from there too.
//!
//! A ProxyConfig asks for `ipvs` with `fallback: [nftables]`; this kernel has no IPVS (and
//! the binary builds no IPVS engine), so the node runs nftables on fallback: checked through
//! `kubectl get proxyconfig` (MODE / NODES / FALLBACK columns), the ProxyNode status (missing
//! `ip_vs`), a Warning Event `FallbackActive`, the `switchyard_engine_fallback` metric and
//! real traffic. Then the mode is patched to iptables (make-before-break: traffic keeps
//! flowing and the nftables table goes away), the API server is killed and restarted
//! (the dataplane stays untouched while it is gone and while the agent reconnects; the
//! simulator keeps nothing on disk, so the restarted one is given the current objects
//! through `--load` — with an EndpointSlice edit "made during the outage" that the agent
//! must pick up — after padding past the old resourceVersion, because kube-sim silently
//! accepts watches resumed from a resourceVersion newer than its own), and finally a
//! Service deleted through kubectl stops answering.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Result};
use serde_yaml::Value;
use switchyard_e2e::{
    agent::{agent_binary, http_get, DEFAULT_HEALTHZ},
    cluster::{eventually, Cluster},
    manifests::{node_object, proxy_config},
    netns::run_cmd,
    require_root, Outcome, Proto, Sandbox,
};

const API_PORT: u16 = 18080;
const VIP: &str = "172.30.1.1:80";
const BACKENDS: [&str; 2] = ["10.180.0.1:8080", "10.180.0.2:8080"];
const PROBE: Duration = Duration::from_millis(500);

fn yaml(v: &Value) -> String {
    serde_yaml::to_string(v).expect("serialisable")
}

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {namespace: e2e, name: web}
spec:
  type: ClusterIP
  clusterIP: 172.30.1.1
  clusterIPs: [172.30.1.1]
  ipFamilies: [IPv4]
  selector: {app: web}
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: 8080}
"#;

const SLICE: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  namespace: e2e
  name: web-1
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
endpoints:
- addresses: [10.180.0.1]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: test-node
- addresses: [10.180.0.2]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: test-node
"#;

/// Backends answering a batch of `tries` from `pod` to the VIP (failures by kind).
fn hits(sb: &Sandbox, tries: usize) -> Result<BTreeMap<String, usize>> {
    let dst: SocketAddr = VIP.parse()?;
    let mut seen = BTreeMap::new();
    for _ in 0..tries {
        let key = match sb.probe("pod", dst, Proto::Tcp, PROBE)? {
            Outcome::Answered { backend, .. } => backend,
            Outcome::Refused(_) => "REFUSED".into(),
            Outcome::Timeout => "TIMEOUT".into(),
        };
        *seen.entry(key).or_insert(0) += 1;
    }
    Ok(seen)
}

fn both_backends(seen: &BTreeMap<String, usize>) -> bool {
    seen.len() == 2 && BACKENDS.iter().all(|b| seen.contains_key(*b))
}

fn nft_table_exists(sb: &Sandbox) -> bool {
    run_cmd(Command::new("ip").args([
        "netns",
        "exec",
        sb.node_ns().name(),
        "nft",
        "list",
        "table",
        "ip",
        "switchyard",
    ]))
    .is_ok()
}

#[test]
fn agent_against_api_simulator() -> Result<()> {
    if !require_root("agent_against_api_simulator") {
        return Ok(());
    }
    if run_cmd(Command::new("kubectl").args(["version", "--client"])).is_err() {
        bail!("kubectl is needed on PATH (scripts/install-deps.sh installs it)");
    }
    let mut sb = Sandbox::new()?;
    for p in ["10.180.0.1", "10.180.0.2"] {
        sb.add_pod(&[p.parse::<IpAddr>()?], &[8080])?;
    }
    let netns = sb.node_ns().name().to_string();
    let mut c = Cluster::new(&netns, API_PORT)?;
    let result = scenario(&mut sb, &mut c);
    if result.is_err() {
        println!("{}", c.logs());
        println!("node ruleset:\n{}", sb.node_ruleset());
    }
    result
}

/// Issue 12 part 1: `switchyard explain` lists the objects once from the API server
/// (`--kubeconfig`), asks the agent which engine runs, and finds the kernel in agreement.
fn explain_from_the_api(sb: &Sandbox, c: &Cluster) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", sb.node_ns().name()])
        .arg(agent_binary()?)
        .args(["explain", "e2e/web", "--kubeconfig"])
        .arg(&c.kubeconfig)
        .args(["--node-name", "test-node"])
        .env("RUST_LOG", "error")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success()
            && stdout.contains("from API server")
            && stdout.contains("nftables engine (active engine from the agent's metrics")
            && stdout.contains("kernel and plan agree")
            && BACKENDS.iter().all(|b| stdout.contains(b)),
        "switchyard explain --kubeconfig: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn scenario(sb: &mut Sandbox, c: &mut Cluster) -> Result<()> {
    // CRDs, Node, ProxyConfig, Service, EndpointSlice: all through kubectl.
    let crds = run_cmd(Command::new(agent_binary()?).arg("crd"))?;
    c.apply(&crds)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.kubectl(&["get", "proxyconfigs"]).is_err() {
        if Instant::now() > deadline {
            bail!("ProxyConfig resource never served after applying the CRDs");
        }
        thread::sleep(Duration::from_millis(100));
    }
    c.apply(&yaml(&node_object()))?;
    let mut overrides = serde_yaml::Mapping::new();
    overrides.insert("fallback".into(), vec!["nftables"].into());
    c.apply(&yaml(&proxy_config("ipvs", &overrides)))?;
    c.apply(&format!("{SERVICE}\n---\n{SLICE}"))?;
    println!(
        "node status as stored: {}",
        c.kubectl(&[
            "get",
            "node",
            "test-node",
            "-o",
            "jsonpath={.status.addresses}"
        ])?
    );

    c.start_node_side(&[])?;
    let healthz: SocketAddr = DEFAULT_HEALTHZ.parse()?;
    let node_path = sb.node_ns().path();
    eventually(
        c,
        Duration::from_secs(30),
        "agent /healthz answers 200",
        || {
            Ok(match http_get(&node_path, healthz, "/healthz") {
                Ok((200, _)) => None,
                Ok((code, body)) => Some(format!("{code} {body}")),
                Err(e) => Some(format!("{e:#}")),
            })
        },
    )?;

    // Traffic through nftables, the fallback engine.
    eventually(
        c,
        Duration::from_secs(10),
        "pod reaches both backends",
        || {
            let seen = hits(sb, 12)?;
            Ok((!both_backends(&seen)).then(|| format!("{seen:?}")))
        },
    )?;
    if !nft_table_exists(sb) {
        bail!(
            "traffic flows but there is no nftables `switchyard` table: not on the nftables fallback?\n{}",
            c.logs()
        );
    }
    explain_from_the_api(sb, c)?;

    // kubectl get proxyconfig: MODE ipvs, NODES 1, FALLBACK 1.
    eventually(
        c,
        Duration::from_secs(15),
        "kubectl get proxyconfig shows MODE ipvs, NODES 1, FALLBACK 1",
        || {
            let out = c.kubectl(&["get", "proxyconfig"])?;
            Ok((!columns_match(
                &out,
                "sandbox",
                &[("MODE", "ipvs"), ("NODES", "1"), ("FALLBACK", "1")],
            ))
            .then_some(out))
        },
    )?;
    println!("{}", c.kubectl(&["get", "proxyconfig"])?);

    // The ProxyNode names the fallback and the missing modules.
    eventually(
        c,
        Duration::from_secs(15),
        "ProxyNode test-node: fallbackActive true, activeMode nftables, missing ip_vs",
        || {
            let out = c.kubectl(&["get", "proxynode", "test-node", "-o", "yaml"])?;
            let ok = out.contains("fallbackActive: true")
                && out.contains("activeMode: nftables")
                && out.contains("requestedMode: ipvs")
                && out.contains("ip_vs");
            Ok((!ok).then_some(out))
        },
    )?;
    println!("{}", c.kubectl(&["get", "proxynode"])?);
    // Issue 12 part 4: `-o wide` adds what the requested mode lacks (a priority-1 column).
    let wide = c.kubectl(&["get", "proxynode", "-o", "wide"])?;
    println!("{wide}");
    let header = wide.lines().next().unwrap_or_default();
    let row = wide
        .lines()
        .find(|l| l.starts_with("test-node"))
        .unwrap_or_default();
    ensure!(
        header.contains("MISSING") && row.contains("ip_vs") && header.contains("CONNTRACK"),
        "kubectl get proxynode -o wide lacks the missing features:\n{wide}"
    );
    ensure!(
        !c.kubectl(&["get", "proxynode"])?.contains("MISSING"),
        "the Missing column is for -o wide only"
    );

    eventually(
        c,
        Duration::from_secs(15),
        "a Warning Event FallbackActive",
        || {
            let out = c.kubectl(&["get", "events", "-A"])?;
            let ok = out
                .lines()
                .any(|l| l.contains("Warning") && l.contains("FallbackActive"));
            Ok((!ok).then_some(out))
        },
    )?;

    eventually(
        c,
        Duration::from_secs(10),
        "metric switchyard_engine_fallback{requested=\"ipvs\",active=\"nftables\"} 1",
        || {
            let m = sb.metrics()?;
            let ok = m.lines().any(|l| {
                l == r#"switchyard_engine_fallback{requested="ipvs",active="nftables"} 1"#
            });
            Ok((!ok).then(|| grep(&m, "switchyard_engine")))
        },
    )?;

    // Patch the mode to iptables: switched live, traffic keeps flowing, nftables gone.
    let patched = Instant::now();
    c.kubectl(&[
        "patch",
        "proxyconfig",
        "sandbox",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"mode":"iptables","fallback":[]}}"#,
    ])?;
    let mut failures_during_switch = BTreeMap::new();
    let took = eventually(
        c,
        Duration::from_secs(10),
        "ProxyNode shows activeMode iptables, fallbackActive false",
        || {
            for (k, v) in hits(sb, 2)? {
                if !BACKENDS.contains(&k.as_str()) {
                    *failures_during_switch.entry(k).or_insert(0) += v;
                }
            }
            let out = c.kubectl(&["get", "proxynode", "test-node", "-o", "yaml"])?;
            let ok = out.contains("activeMode: iptables") && out.contains("fallbackActive: false");
            Ok((!ok).then_some(out))
        },
    )?;
    println!(
        "mode patch to iptables visible in ProxyNode after {took:?} ({:?} since the patch)",
        patched.elapsed()
    );
    if !failures_during_switch.is_empty() {
        bail!(
            "probes failed while switching nftables -> iptables: {failures_during_switch:?}\n{}",
            c.logs()
        );
    }
    eventually(c, Duration::from_secs(5), "traffic via iptables", || {
        let seen = hits(sb, 12)?;
        Ok((!both_backends(&seen)).then(|| format!("{seen:?}")))
    })?;
    eventually(
        c,
        Duration::from_secs(5),
        "nftables switchyard table gone, iptables SY- chains present",
        || {
            let save =
                run_cmd(Command::new("ip").args(["netns", "exec", &c.netns, "iptables-save"]))
                    .unwrap_or_default();
            let legacy = run_cmd(Command::new("ip").args([
                "netns",
                "exec",
                &c.netns,
                "iptables-legacy-save",
            ]))
            .unwrap_or_default();
            let ok = !nft_table_exists(sb) && (save.contains(":SY-") || legacy.contains(":SY-"));
            Ok((!ok).then(|| {
                format!(
                    "nft table exists: {}\n{}",
                    nft_table_exists(sb),
                    sb.node_ruleset()
                )
            }))
        },
    )?;
    eventually(
        c,
        Duration::from_secs(10),
        "kubectl get proxyconfig shows MODE iptables, FALLBACK 0",
        || {
            let out = c.kubectl(&["get", "proxyconfig"])?;
            Ok((!columns_match(
                &out,
                "sandbox",
                &[("MODE", "iptables"), ("NODES", "1"), ("FALLBACK", "0")],
            ))
            .then_some(out))
        },
    )?;

    // API outage: the dataplane stays untouched while the API server is gone.
    api_outage(sb, c)?;

    // Delete the Service through kubectl: the VIP stops answering.
    c.kubectl(&["delete", "service", "-n", "e2e", "web"])?;
    eventually(
        c,
        Duration::from_secs(5),
        "deleted Service stops answering",
        || {
            let seen = hits(sb, 3)?;
            let ok = seen.keys().all(|k| k == "REFUSED" || k == "TIMEOUT");
            Ok((!ok).then(|| format!("{seen:?}")))
        },
    )?;
    if !c.agent_running() {
        bail!("agent exited\n{}", c.logs());
    }
    Ok(())
}

fn api_outage(sb: &Sandbox, c: &mut Cluster) -> Result<()> {
    let syncs_before = metric_value(&sb.metrics()?, "_syncs");
    let last_rv = c.list_resource_version("/apis/discovery.k8s.io/v1/endpointslices")?;
    println!("resourceVersion before the outage: {last_rv}");
    if let Some(mut sim) = c.sim.take() {
        sim.kill_hard();
        println!("kube-sim killed");
    }
    let gone = Instant::now();
    let mut during = BTreeMap::new();
    while gone.elapsed() < Duration::from_secs(5) {
        for (k, v) in hits(sb, 4)? {
            *during.entry(k).or_insert(0) += v;
        }
        if !during.keys().all(|k| BACKENDS.contains(&k.as_str())) {
            bail!(
                "traffic disturbed while the API server is gone: {during:?}\n{}",
                c.logs()
            );
        }
        if !c.agent_running() {
            bail!("agent exited while the API server was gone\n{}", c.logs());
        }
    }
    if !both_backends(&during) {
        bail!("not both backends answered while the API server was gone: {during:?}");
    }
    println!(
        "traffic kept flowing for {:?} without the API server",
        gone.elapsed()
    );

    // Restart on the same port with the same objects (the simulator keeps nothing; --load
    // re-creates them, with fresh resourceVersions). The agent must relist before it changes
    // anything: no probe may fail from here on.
    // While it was down, the slice lost 10.180.0.2 (the restarted server is loaded with that
    // version): the agent must pick it up through a fresh list, since the new server's
    // resourceVersions start over.
    // The restarted simulator is loaded with the state as it stands now — the ProxyConfig
    // as patched, and the slice as edited while the server was away (10.180.0.2 gone) —
    // past the last resourceVersion the agent saw (see `Cluster::restart_sim`).
    let second = "- addresses: [10.180.0.2]\n  conditions: {ready: true, serving: true, terminating: false}\n  nodeName: test-node\n";
    if !SLICE.contains(second) {
        bail!("SLICE lacks the second endpoint block");
    }
    let mut patched = serde_yaml::Mapping::new();
    patched.insert("fallback".into(), Value::Sequence(vec![]));
    let reload = [
        run_cmd(Command::new(agent_binary()?).arg("crd"))?,
        yaml(&node_object()),
        yaml(&proxy_config("iptables", &patched)),
        SERVICE.to_string(),
        SLICE.replace(second, ""),
    ];
    c.restart_sim(&reload, last_rv)?;
    let back = Instant::now();
    let mut bad = BTreeMap::new();
    let mut relisted: Option<Duration> = None;
    let mut recent = Vec::new();
    while back.elapsed() < Duration::from_secs(20) {
        let batch = hits(sb, 4)?;
        for (k, v) in &batch {
            if !BACKENDS.contains(&k.as_str()) {
                *bad.entry(k.clone()).or_insert(0) += v;
            }
        }
        recent.push(batch.keys().cloned().collect::<Vec<_>>().join(","));
        if relisted.is_none()
            && recent.len() >= 3
            && recent[recent.len() - 3..]
                .iter()
                .all(|b| b == "10.180.0.1:8080")
        {
            relisted = Some(back.elapsed());
        }
        if relisted.is_some() && back.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    match relisted {
        Some(t) => println!(
            "edit made while the API server was down applied {t:?} after it came back"
        ),
        None => bail!(
            "the agent did not pick up the slice from the restarted API server within 20 s (last batches: {:?})\n{}",
            &recent[recent.len().saturating_sub(5)..],
            c.logs()
        ),
    }
    if !bad.is_empty() {
        bail!(
            "probes failed after the API server came back (rules flushed before the relist?): {bad:?}\n{}",
            c.logs()
        );
    }
    if !c.agent_running() {
        bail!("agent exited after the API server came back\n{}", c.logs());
    }
    let log = c.agent.as_ref().map(|a| a.log()).unwrap_or_default();
    println!(
        "agent log lines about the outage:\n{}",
        log.lines()
            .filter(|l| l.contains("initial list") || l.contains("relist") || l.contains("resync"))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    println!(
        "syncs before the outage {syncs_before:?}, now {:?}",
        metric_value(&sb.metrics()?, "_syncs")
    );
    eventually(
        c,
        Duration::from_secs(10),
        "ProxyNode after the restart: activeMode iptables, fallbackActive false",
        || {
            let out = c.kubectl(&["get", "proxynode", "test-node", "-o", "yaml"])?;
            let ok = out.contains("activeMode: iptables") && out.contains("fallbackActive: false");
            Ok((!ok).then_some(out))
        },
    )?;
    if nft_table_exists(sb) {
        bail!(
            "an nftables table reappeared after the restart\n{}",
            sb.node_ruleset()
        );
    }
    Ok(())
}

/// Whether the row of `name` in kubectl table output has every `(column, value)`.
fn columns_match(table: &str, name: &str, want: &[(&str, &str)]) -> bool {
    let mut lines = table.lines();
    let Some(header) = lines.next() else {
        return false;
    };
    let cols: Vec<&str> = header.split_whitespace().collect();
    let Some(row) = lines.find(|l| l.split_whitespace().next() == Some(name)) else {
        return false;
    };
    let cells: Vec<&str> = row.split_whitespace().collect();
    want.iter().all(|(col, val)| {
        cols.iter()
            .position(|c| c == col)
            .and_then(|i| cells.get(i))
            .is_some_and(|c| c == val)
    })
}

fn grep(text: &str, word: &str) -> String {
    text.lines()
        .filter(|l| l.contains(word))
        .collect::<Vec<_>>()
        .join("\n")
}

fn metric_value(metrics: &str, word: &str) -> Vec<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("switchyard_") && l.contains(word))
        .map(str::to_string)
        .collect()
}

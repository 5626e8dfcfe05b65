//! The real agent in ebpf mode (`switchyard run`), in the sandbox with a private cgroup
//! and a private bpffs:
//!
//! - with only the capabilities the chart grants an eBPF pool (NET_ADMIN, NET_RAW, BPF,
//!   PERFMON; no SYS_ADMIN, no privilege escalation: `setpriv`) and bpffs mounted for
//!   it, it probes ebpf usable, serves a ClusterIP and a NodePort, and a restart of the
//!   process (SIGTERM, then SIGKILL) under a connection loop fails no connection;
//! - a ProxyConfig switching nftables -> ebpf -> nftables: while ebpf runs there is no nft
//!   table or iptables chain of ours, after switching back there is no pin of ours; new
//!   connections work in every phase. (Connections NATed by netfilter before the switch
//!   end with its rules: nothing carries them over, as Cilium documents for kube-proxy.)

use std::{
    net::SocketAddr,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde_yaml::{Mapping, Value};
use switchyard_e2e::{
    agent::{Agent, Launch, Mounts, DEFAULT_HEALTHZ},
    manifests::{node_object, proxy_config, ManifestDir},
    require_root,
    sandbox::{EbpfPaths, NODE_NAME},
    Outcome, Proto, Sandbox,
};

const T: Duration = Duration::from_millis(1500);
const VIP: &str = "172.30.9.1:80";
const NODE_PORT: &str = "192.168.0.2:30901";
const PODS: [&str; 2] = ["10.181.9.1", "10.181.9.2"];

/// The chart's agent container for an eBPF pool, as a command prefix.
const CHART_CAPABILITIES: [&str; 7] = [
    "setpriv",
    "--bounding-set",
    "-all,+net_admin,+net_raw,+bpf,+perfmon",
    "--inh-caps",
    "-all",
    "--no-new-privs",
    "--",
];

fn objects() -> Vec<Value> {
    let text = format!(
        r#"
- apiVersion: v1
  kind: Service
  metadata: {{namespace: e2e, name: web}}
  spec:
    type: NodePort
    clusterIP: 172.30.9.1
    clusterIPs: [172.30.9.1]
    ipFamilies: [IPv4]
    ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30901}}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    namespace: e2e
    name: web-1
    labels: {{kubernetes.io/service-name: web}}
  addressType: IPv4
  ports: [{{name: http, port: 8080, protocol: TCP}}]
  endpoints:
  - {{addresses: [{a}], conditions: {{ready: true}}, nodeName: test-node}}
  - {{addresses: [{b}], conditions: {{ready: true}}, nodeName: test-node}}
"#,
        a = PODS[0],
        b = PODS[1]
    );
    serde_yaml::from_str(&text).expect("valid objects")
}

/// A sandbox with both pods, its private cgroup and bpffs, and the manifests in `mode`.
fn setup(mode: &str) -> Result<(Sandbox, EbpfPaths, ManifestDir)> {
    let mut sb = Sandbox::new()?;
    for ip in PODS {
        sb.add_pod(&[ip.parse()?], &[8080])?;
    }
    let paths = sb.enable_ebpf()?;
    let dir = ManifestDir::new_temp("ebpf-agent")?;
    dir.write(&node_object())?;
    dir.write(&config(mode, &paths))?;
    for o in objects() {
        dir.write(&o)?;
    }
    Ok((sb, paths, dir))
}

fn config(mode: &str, paths: &EbpfPaths) -> Value {
    let mut ebpf = Mapping::new();
    ebpf.insert(
        "cgroupPath".into(),
        paths.cgroup.to_string_lossy().into_owned().into(),
    );
    let mut overrides = Mapping::new();
    overrides.insert("ebpf".into(), Value::Mapping(ebpf));
    proxy_config(mode, &overrides)
}

fn bpffs_args(paths: &EbpfPaths) -> Vec<String> {
    vec![
        "--bpffs-root".into(),
        paths.bpffs.to_string_lossy().into_owned(),
    ]
}

/// Both pods answer new connections from `role` to `dst`.
fn serves(sb: &Sandbox, role: &str, dst: &str) -> Result<()> {
    let dst: SocketAddr = dst.parse()?;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..24 {
        match sb.probe(role, dst, Proto::Tcp, T)? {
            Outcome::Answered { backend, .. } => {
                seen.insert(backend);
            }
            other => bail!("{role} -> {dst}: {other}\nagent log:\n{}", sb.agent_log()),
        }
        if seen.len() == PODS.len() {
            return Ok(());
        }
    }
    bail!("{role} -> {dst} reached only {seen:?}")
}

fn loop_stats(sb: &Sandbox, d: Duration) -> Result<switchyard_e2e::cgroup::LoopStats> {
    let src = sb.source("pod")?;
    sb.cgroup_client()?.connect_loop(&src, VIP.parse()?, d)
}

/// Starts the agent with the chart's capabilities and waits until it is healthy.
fn chart_agent(sb: &Sandbox, dir: &Path, args: &[&str], log: &Path) -> Result<Agent> {
    let launch = Launch {
        mounts: Mounts::Host,
        wrapper: CHART_CAPABILITIES.iter().map(|s| s.to_string()).collect(),
    };
    let node = sb.node_ns();
    let mut agent = Agent::start_with_env(node.name(), &launch, dir, NODE_NAME, args, &[], log)?;
    agent.wait_healthy(
        &node.path(),
        DEFAULT_HEALTHZ.parse()?,
        Duration::from_secs(20),
    )?;
    Ok(agent)
}

#[test]
fn chart_capabilities_serve_and_a_restart_loses_no_connection() -> Result<()> {
    if !require_root("chart_capabilities_serve_and_a_restart_loses_no_connection") {
        return Ok(());
    }
    let (sb, paths, dir) = setup("ebpf")?;
    // Without CAP_SYS_ADMIN the agent cannot mount bpffs: the node's is mounted for it.
    sb.premount_bpffs()?;
    let args = bpffs_args(&paths);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let logs = ManifestDir::new_temp("ebpf-agent-logs")?;
    let log = |n: usize| logs.path().join(format!("agent-{n}.log"));
    let mut agent = chart_agent(&sb, dir.path(), &args, &log(0))?;
    ensure!(
        agent.log().contains("engine selected mode=ebpf"),
        "ebpf not selected with the chart's capabilities:\n{}",
        agent.log()
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid()))?;
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .context("CapEff")?
        .trim()
        .to_string();
    ensure!(
        cap_eff == "000000c000003000",
        "agent capabilities {cap_eff}, expected NET_ADMIN, NET_RAW, PERFMON, BPF only"
    );
    serves(&sb, "pod", VIP)?;
    serves(&sb, "node", VIP)?;
    serves(&sb, "ext", NODE_PORT)?;

    // Restarts under a connection loop: SIGTERM (a rollout), then SIGKILL (a crash).
    for (n, (how, kill)) in [("SIGTERM", false), ("SIGKILL", true)]
        .into_iter()
        .enumerate()
    {
        let (stats, next) = thread::scope(|s| -> Result<_> {
            let looping = s.spawn(|| loop_stats(&sb, Duration::from_millis(3000)));
            thread::sleep(Duration::from_millis(600));
            let started = Instant::now();
            if kill {
                agent.kill();
            } else {
                agent.stop();
            }
            let next = chart_agent(&sb, dir.path(), &args, &log(n + 1))?;
            println!("{how}: restarted and healthy in {:?}", started.elapsed());
            Ok((looping.join().expect("loop thread")?, next))
        })?;
        agent = next;
        ensure!(stats.ok > 50, "{how}: {stats:?}");
        ensure!(
            stats.failed == 0 && stats.slow == 0,
            "{how}: connections failed across the restart: {stats:?}"
        );
    }
    serves(&sb, "ext", NODE_PORT)
}

fn nft_tables_of_ours(sb: &Sandbox) -> Result<String> {
    let text = sb.in_node(&["nft", "list", "tables"])?;
    Ok(text
        .lines()
        .filter(|l| l.contains("switchyard"))
        .collect::<Vec<_>>()
        .join(", "))
}

/// Waits until the agent logged `switches` engine switches and `done` holds.
fn wait_for(sb: &Sandbox, switches: usize, what: &str, done: impl Fn() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(40) {
        if sb.agent_log().matches("switched engine").count() >= switches && done() {
            println!(
                "{what}: done {:?} after the ProxyConfig write",
                start.elapsed()
            );
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "{what}: not done within 40 s; agent log:\n{}",
        sb.agent_log()
    )
}

#[test]
fn switching_nftables_to_ebpf_and_back_leaves_only_the_active_engines_state() -> Result<()> {
    if !require_root("switching_nftables_to_ebpf_and_back_leaves_only_the_active_engines_state") {
        return Ok(());
    }
    let (mut sb, paths, dir) = setup("nftables")?;
    let args = bpffs_args(&paths);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sb.run_agent(dir.path(), &args)?;
    sb.wait_healthy(Duration::from_secs(20))?;
    ensure!(
        !nft_tables_of_ours(&sb)?.is_empty(),
        "nftables mode, no table"
    );
    serves(&sb, "pod", VIP)?;

    let pins = paths.bpffs.join("switchyard");
    dir.write(&config("ebpf", &paths))?;
    wait_for(&sb, 1, "nftables -> ebpf", || {
        pins.exists() && nft_tables_of_ours(&sb).is_ok_and(|t| t.is_empty())
    })?;
    let legacy = sb.in_node(&["iptables-legacy-save"]).unwrap_or_default();
    ensure!(
        !legacy.contains(":SY-"),
        "iptables chains while ebpf runs:\n{legacy}"
    );
    serves(&sb, "pod", VIP)?;
    serves(&sb, "node", VIP)?;
    serves(&sb, "ext", NODE_PORT)?;

    dir.write(&config("nftables", &paths))?;
    wait_for(&sb, 2, "ebpf -> nftables", || {
        !pins.exists() && nft_tables_of_ours(&sb).is_ok_and(|t| !t.is_empty())
    })?;
    serves(&sb, "pod", VIP)?;
    serves(&sb, "ext", NODE_PORT)?;
    ensure!(
        sb.agent_mut()?.is_running(),
        "agent exited:\n{}",
        sb.agent_log()
    );
    Ok(())
}

//! `make demo`: a guided tour of Switchyard on a sandboxed node. Three echo pods behind a
//! Service, traffic through its ClusterIP and NodePort, then a scale-down and how fast the
//! dataplane follows. Needs root; `SWITCHYARD_BIN` names the agent binary. The engine is
//! the first argument (`make demo MODE=ebpf`; default nftables); with ebpf, the sandbox's
//! clients live in a private cgroup the socket programs attach to, and the pins go to a
//! private bpffs.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use switchyard_e2e::{
    agent::{agent_binary, engine_mode_from_metrics, workspace_root},
    manifests::ManifestDir,
    sandbox::{is_root, NODE_IP},
    Outcome, Proto, Sandbox,
};

const REQUESTS: usize = 60;
const PODS: [&str; 3] = ["10.180.0.1", "10.180.0.2", "10.180.0.3"];
const CLUSTER_IP: &str = "172.30.0.10:80";
const NODE_PORT: u16 = 30080;
const TIMEOUT: Duration = Duration::from_secs(1);

const SERVICE: &str = "\
# The Service: a stable virtual IP (ClusterIP 172.30.0.10:80) and a NodePort (30080 on
# every node address) in front of the pods labelled app=web, which listen on 8080.
apiVersion: v1
kind: Service
metadata:
  namespace: demo
  name: web
spec:
  type: NodePort
  clusterIP: 172.30.0.10
  clusterIPs: [172.30.0.10]
  ipFamilies: [IPv4]
  selector: {app: web}
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}
";

const NODE: &str = "\
# The node Switchyard runs on (in the demo: a private network namespace).
apiVersion: v1
kind: Node
metadata:
  name: test-node
  labels:
    kubernetes.io/hostname: test-node
    topology.kubernetes.io/zone: zone-a
spec:
  podCIDR: 10.0.0.0/8
  podCIDRs: [10.0.0.0/8]
status:
  addresses:
  - {type: InternalIP, address: 192.168.0.2}
  - {type: Hostname, address: test-node}
";

const PROXY_CONFIG: &str = "\
# How Switchyard programs this node: the nftables engine; traffic from outside the pod
# network (10.0.0.0/8) reaching a NodePort is masqueraded.
apiVersion: switchyard.dev/v1alpha1
kind: ProxyConfig
metadata:
  name: demo
spec:
  mode: nftables
  clusterCIDRs: [10.0.0.0/8]
  syncPeriod: 30s
  minSyncPeriod: 100ms
";

/// The ProxyConfig for `mode`: the example's, with the engine swapped (and, for ebpf,
/// the sandbox's private cgroup for the socket programs).
fn proxy_config(mode: &str, cgroup: Option<&Path>) -> String {
    let mut text = PROXY_CONFIG
        .replace("the nftables engine", &format!("the {mode} engine"))
        .replace("mode: nftables", &format!("mode: {mode}"));
    if let Some(cg) = cgroup {
        text.push_str(&format!("  ebpf: {{cgroupPath: {}}}\n", cg.display()));
    }
    text
}

/// The EndpointSlice listing the given pods as ready endpoints of demo/web.
fn endpoint_slice(pods: &[&str]) -> String {
    let mut s = String::from(
        "\
# The endpoints behind demo/web: one entry per ready pod, port 8080.
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  namespace: demo
  name: web-1
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
endpoints:
",
    );
    for p in pods {
        s.push_str(&format!(
            "- addresses: [{p}]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  nodeName: test-node\n"
        ));
    }
    s
}

fn manifests() -> Vec<(&'static str, String)> {
    vec![
        ("web-service.yaml", SERVICE.to_string()),
        ("web-endpointslice.yaml", endpoint_slice(&PODS)),
        ("node.yaml", NODE.to_string()),
        ("proxyconfig.yaml", PROXY_CONFIG.to_string()),
    ]
}

/// Keeps `examples/demo/` in the repository equal to what the demo runs on.
fn refresh_examples(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, text) in manifests() {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Sends `n` requests from `src` to `dst`: answers per backend ("no answer" for failures).
fn distribution(
    sb: &Sandbox,
    src: &str,
    dst: SocketAddr,
    n: usize,
) -> Result<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let key = match sb.probe(src, dst, Proto::Tcp, TIMEOUT)? {
            Outcome::Answered { backend, .. } => backend,
            _ => "no answer".to_string(),
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    Ok(counts)
}

fn print_table(columns: &[(&str, &BTreeMap<String, usize>)]) {
    const CELL: usize = 34;
    let mut rows: Vec<String> = PODS.iter().map(|p| format!("{p}:8080")).collect();
    for (_, c) in columns {
        for k in c.keys() {
            if !rows.contains(k) {
                rows.push(k.clone());
            }
        }
    }
    let mut header = format!("{:<18}", "pod (endpoint)");
    for (title, _) in columns {
        header.push_str(&format!("  {title:<CELL$}"));
    }
    println!("    {}", header.trim_end());
    println!("    {}", "-".repeat(18 + (CELL + 2) * columns.len()));
    for row in &rows {
        let mut line = format!("{row:<18}");
        for (_, c) in columns {
            let n = c.get(row).copied().unwrap_or(0);
            let total = c.values().sum::<usize>().max(1);
            let cell = format!(
                "{n:>3} ({:>3}%) {}",
                n * 100 / total,
                "#".repeat(n * 20 / total)
            );
            line.push_str(&format!("  {cell:<CELL$}"));
        }
        println!("    {}", line.trim_end());
    }
}

/// `switchyard explain demo/web` in the node's network namespace (with the host's
/// mounts, as the eBPF engine's pins need), printed indented.
fn explain(sb: &Sandbox, bin: &Path, manifests: &Path, extra: &[&str]) -> Result<()> {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", sb.node_ns().path().display()))
        .arg(bin)
        .args([
            "explain",
            "demo/web",
            "--node-name",
            "test-node",
            "--manifests",
        ])
        .arg(manifests)
        .args(extra)
        .env("RUST_LOG", "error")
        .output()
        .context("running switchyard explain")?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        println!("   {line}");
    }
    if !out.status.success() {
        bail!(
            "switchyard explain exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn run() -> Result<()> {
    if !is_root() {
        bail!("the demo needs root to create network namespaces: run `sudo make demo`");
    }
    let mode = std::env::args().nth(1).unwrap_or_else(|| "nftables".into());
    if !["nftables", "iptables", "ebpf"].contains(&mode.as_str()) {
        bail!("engine {mode:?}: the demo runs nftables, iptables or ebpf");
    }
    let bin = agent_binary()?;
    println!("Switchyard demo: a kube-proxy replacement programming a (sandboxed) node.\n");
    println!("The node, its pods and an outside client live in private network namespaces;");
    println!("nothing on this machine's own network is changed.\n");

    let examples = workspace_root().join("examples/demo");
    refresh_examples(&examples)?;
    let work = ManifestDir::new_temp("demo")?;
    for (name, text) in manifests() {
        work.write_text(name, &text)?;
    }
    println!("1. Manifests (as in {}):", examples.display());
    println!("   Service demo/web  ClusterIP {CLUSTER_IP}, NodePort {NODE_PORT} -> pods port 8080");
    println!(
        "   EndpointSlice     {} ready pods: {}",
        PODS.len(),
        PODS.join(", ")
    );
    println!("   ProxyConfig       mode {mode}\n");

    let mut sb = Sandbox::new()?;
    for p in PODS {
        sb.add_pod(&[p.parse()?], &[8080])?;
    }
    let mut args: Vec<String> = Vec::new();
    if mode == "ebpf" {
        let paths = sb.enable_ebpf()?;
        work.write_text(
            "proxyconfig.yaml",
            &proxy_config(&mode, Some(&paths.cgroup)),
        )?;
        args = vec!["--bpffs-root".into(), paths.bpffs.display().to_string()];
        println!(
            "   eBPF: socket programs on the private cgroup {} (the pods' clients",
            paths.cgroup.display()
        );
        println!(
            "   connect from it: a ClusterIP is translated at connect(), no packet is NATed);"
        );
        println!(
            "   tc programs on the node's uplink for the NodePort; pins in {}.\n",
            paths.bpffs.display()
        );
    } else if mode != "nftables" {
        work.write_text("proxyconfig.yaml", &proxy_config(&mode, None))?;
    }
    println!(
        "2. Starting the agent: {} run --manifests {} --node-name test-node {}",
        bin.display(),
        work.path().display(),
        args.join(" ")
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sb.run_agent(work.path(), &args)?;
    // explain builds the same engine as the agent (same options) to read the kernel back.
    let explain_args = args.clone();
    sb.wait_healthy(Duration::from_secs(20))
        .context("waiting for the agent's /healthz")?;
    let logged = sb.agent().and_then(|a| a.logged_mode());
    let reported = sb.metrics().ok().and_then(|m| engine_mode_from_metrics(&m));
    match (logged, reported) {
        (_, Some(m)) => println!(
            "   healthy; dataplane mode in use: {m} (from /metrics: switchyard_engine_active{{mode=\"{m}\"}} 1)\n"
        ),
        (Some(m), None) => println!("   healthy; dataplane mode in use: {m} (from the agent's log)\n"),
        (None, None) => println!(
            "   healthy; dataplane mode requested: {mode} (neither the log nor /metrics says which runs)\n"
        ),
    }

    let vip: SocketAddr = CLUSTER_IP.parse()?;
    let node_port = SocketAddr::new(NODE_IP.into(), NODE_PORT);
    println!("3. {REQUESTS} requests each: from a pod to the ClusterIP, and from outside the node");
    println!("   (203.0.113.2) to the NodePort. Each pod answers with its own address.\n");
    let before_vip = distribution(&sb, "pod", vip, REQUESTS)?;
    let before_np = distribution(&sb, "ext", node_port, REQUESTS)?;
    let vip_title = format!("ClusterIP {CLUSTER_IP}");
    let np_title = format!("NodePort {node_port}");
    print_table(&[
        (vip_title.as_str(), &before_vip),
        (np_title.as_str(), &before_np),
    ]);
    if before_vip.len() != PODS.len() || before_np.len() != PODS.len() {
        bail!(
            "expected all {} pods (and nothing else) to answer",
            PODS.len()
        );
    }

    println!(
        "\n   What Switchyard decided for this Service port, and what the kernel holds\n   (switchyard explain demo/web, in the node's namespace):\n"
    );
    explain(&sb, &bin, work.path(), &explain_args)?;

    let removed = PODS[2];
    println!(
        "\n4. Scaling down: rewriting the EndpointSlice without {removed} (the pod keeps running,"
    );
    println!("   so only Switchyard can stop traffic from reaching it).");
    let removed_backend = format!("{removed}:8080");
    let t0 = Instant::now();
    work.write_text("web-endpointslice.yaml", &endpoint_slice(&PODS[..2]))?;
    let mut clean_since: Option<Instant> = None;
    let mut streak = 0;
    while streak < 30 {
        if t0.elapsed() > Duration::from_secs(15) {
            bail!(
                "{removed} still receives traffic 15 s after the edit; agent log:\n{}",
                sb.agent_log()
            );
        }
        let sent = Instant::now();
        match sb.probe("pod", vip, Proto::Tcp, TIMEOUT)? {
            Outcome::Answered { backend, .. } if backend != removed_backend => {
                streak += 1;
                clean_since.get_or_insert(sent);
            }
            _ => {
                streak = 0;
                clean_since = None;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let latency = clean_since
        .map(|t| t.saturating_duration_since(t0))
        .unwrap_or_default();
    println!(
        "   traffic stopped reaching {removed} {} ms after the file was written",
        latency.as_millis()
    );
    println!("   (first request of a run of 30 that all avoided it; requests every ~10 ms)\n");

    println!("5. The same {REQUESTS} requests after the scale-down:\n");
    let after_vip = distribution(&sb, "pod", vip, REQUESTS)?;
    let after_np = distribution(&sb, "ext", node_port, REQUESTS)?;
    print_table(&[
        (vip_title.as_str(), &after_vip),
        (np_title.as_str(), &after_np),
    ]);
    if after_vip.contains_key(&removed_backend) || after_np.contains_key(&removed_backend) {
        bail!("{removed} still answers after the scale-down");
    }
    println!("\n   switchyard explain demo/web after the scale-down:\n");
    explain(&sb, &bin, work.path(), &explain_args)?;
    drop(sb);
    println!("\nDone: agent stopped, namespaces removed.");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\ndemo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

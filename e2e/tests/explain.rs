//! `switchyard explain` against the real agent and the real kernel: the agent runs on
//! manifests in the sandbox's node namespace, and the real binary's `explain` runs in
//! the same network namespace, reading the same manifests:
//!
//! - the plan is shown, the kernel agrees with it (exit 0), the agent's metrics name the
//!   active engine; with the agent gone, the kernel does;
//! - after one object of the service port is removed from outside (an nft element, an
//!   iptables rule, a BPF map entry), explain reports the disagreement (exit 1, one line);
//! - a Service without endpoints exits 1 with the reason;
//! - `--from` outside a Service's `loadBalancerSourceRanges` exits 1 with the reason,
//!   from inside the ranges 0;
//! - conntrack entries to the VIP appear after a connection through it.
//!
//! Run for nftables, iptables and ebpf on the host, and for ipvs in the VM lane
//! (`tests/vm_lane.rs`; the host kernel has no IPVS: `explain_ipvs` skips there).

use std::{
    net::SocketAddr,
    process::{Command, Output},
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use serde_yaml::{Mapping, Value};
use switchyard_e2e::{
    agent::agent_binary,
    manifests::{node_object, proxy_config, ManifestDir},
    require_ipvs, require_root,
    sandbox::{EbpfPaths, NODE_NAME},
    Outcome, Proto, Sandbox,
};

const T: Duration = Duration::from_millis(1500);
const VIP: &str = "172.30.19.1";
const LB_IP: &str = "192.168.99.21";
const POD: &str = "10.182.0.1";
/// An endpoint that is not ready (no pod answers there: it must never be used).
const NOT_READY: &str = "10.182.0.9";

/// `e2e/web`: a LoadBalancer with source ranges and ClientIP affinity, one ready endpoint
/// and one not ready;
/// `e2e/empty`: a ClusterIP with none.
fn objects() -> Vec<Value> {
    let text = format!(
        r#"
- apiVersion: v1
  kind: Service
  metadata: {{namespace: e2e, name: web}}
  spec:
    type: LoadBalancer
    clusterIP: {VIP}
    clusterIPs: [{VIP}]
    ipFamilies: [IPv4]
    loadBalancerSourceRanges: [203.0.113.0/25]
    sessionAffinity: ClientIP
    ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30919}}]
  status:
    loadBalancer:
      ingress: [{{ip: {LB_IP}}}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    namespace: e2e
    name: web-1
    labels: {{kubernetes.io/service-name: web}}
  addressType: IPv4
  ports: [{{name: http, port: 8080, protocol: TCP}}]
  endpoints:
  - {{addresses: [{POD}], conditions: {{ready: true}}, nodeName: test-node}}
  - {{addresses: [{NOT_READY}], conditions: {{ready: false}}, nodeName: test-node}}
- apiVersion: v1
  kind: Service
  metadata: {{namespace: e2e, name: empty}}
  spec:
    type: ClusterIP
    clusterIP: 172.30.19.2
    clusterIPs: [172.30.19.2]
    ipFamilies: [IPv4]
    ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080}}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    namespace: e2e
    name: empty-1
    labels: {{kubernetes.io/service-name: empty}}
  addressType: IPv4
  ports: [{{name: http, port: 8080, protocol: TCP}}]
  endpoints: []
"#
    );
    serde_yaml::from_str(&text).expect("valid objects")
}

/// One `switchyard explain` run.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "exit ok: {}\nstdout:\n{}\nstderr:\n{}",
            self.ok, self.stdout, self.stderr
        )
    }

    /// Exit 1 with exactly one line on stderr containing `reason`.
    fn fails_with(&self, reason: &str) -> Result<()> {
        let lines: Vec<&str> = self.stderr.lines().collect();
        ensure!(
            !self.ok && lines.len() == 1 && lines[0].contains(reason),
            "expected exit 1 with one line containing {reason:?}, got {}",
            self.describe()
        );
        Ok(())
    }
}

/// A sandbox in `mode` with the pod and the manifests; the extra agent arguments.
struct Setup {
    sb: Sandbox,
    dir: ManifestDir,
    args: Vec<String>,
    ebpf: Option<EbpfPaths>,
}

fn setup(mode: &str) -> Result<Setup> {
    let mut sb = Sandbox::new()?;
    sb.add_pod(&[POD.parse()?], &[8080])?;
    let dir = ManifestDir::new_temp("explain")?;
    dir.write(&node_object())?;
    let mut overrides = Mapping::new();
    let mut args = Vec::new();
    let mut ebpf = None;
    if mode == "ebpf" {
        let paths = sb.enable_ebpf()?;
        let mut block = Mapping::new();
        block.insert(
            "cgroupPath".into(),
            paths.cgroup.to_string_lossy().into_owned().into(),
        );
        overrides.insert("ebpf".into(), Value::Mapping(block));
        args = vec![
            "--bpffs-root".into(),
            paths.bpffs.to_string_lossy().into_owned(),
        ];
        ebpf = Some(paths);
    }
    if mode == "iptables" {
        args = vec!["--iptables-backend".into(), "nft".into()];
    }
    dir.write(&proxy_config(mode, &overrides))?;
    for o in objects() {
        dir.write(&o)?;
    }
    let agent_args: Vec<&str> = args.iter().map(String::as_str).collect();
    sb.run_agent(dir.path(), &agent_args)?;
    sb.wait_healthy(Duration::from_secs(30))?;
    Ok(Setup {
        sb,
        dir,
        args,
        ebpf,
    })
}

/// Runs `switchyard explain ARGS --manifests DIR --node-name test-node` in the node's
/// network namespace (with the host's mounts, as the eBPF engine's pins need).
fn explain(s: &Setup, args: &[&str]) -> Result<Run> {
    let bin = agent_binary()?;
    let ns = s.sb.node_ns().path();
    let out: Output = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .arg(&bin)
        .arg("explain")
        .args(args)
        .arg("--manifests")
        .arg(s.dir.path())
        .args(["--node-name", NODE_NAME])
        .args(&s.args)
        .env("RUST_LOG", "error")
        .output()
        .context("running switchyard explain")?;
    Ok(Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn agrees(s: &Setup, run: &Run, mode: &str, from: &str) -> Result<()> {
    ensure!(
        run.ok
            && run.stdout.contains("kernel and plan agree")
            && run
                .stdout
                .contains(&format!("kernel: {mode} engine (active engine from {from}"))
            && run.stdout.contains(&format!("{POD}:8080"))
            && run.stdout.contains("left out: not ready")
            && run.stdout.contains("verdict: OK"),
        "explain in {mode} (active from {from}): expected agreement, got {}\nagent log:\n{}",
        run.describe(),
        s.sb.agent_log()
    );
    Ok(())
}

/// The checks every engine passes; `tamper` removes one kernel object of `e2e/web`.
fn check(mode: &str, tamper: impl Fn(&Setup) -> Result<()>) -> Result<()> {
    let mut s = setup(mode)?;
    let dst: SocketAddr = format!("{VIP}:80").parse()?;
    match s.sb.probe("pod", dst, Proto::Tcp, T)? {
        Outcome::Answered { .. } => {}
        other => bail!("pod -> {dst}: {other}\nagent log:\n{}", s.sb.agent_log()),
    }
    let run = explain(&s, &["e2e/web"])?;
    println!("{}", run.stdout);
    agrees(&s, &run, mode, "the agent's metrics")?;
    if mode != "ebpf" {
        // Socket-level load balancing (eBPF) never creates a conntrack entry for the VIP.
        ensure!(
            run.stdout
                .contains(&format!("-> {VIP}:80, reply from {POD}:8080")),
            "no conntrack entry to the VIP after a connection: {}",
            run.describe()
        );
    }
    let json = explain(&s, &["e2e/web", "-o", "json"])?;
    let doc: serde_json::Value =
        serde_json::from_str(&json.stdout).with_context(|| json.describe())?;
    ensure!(
        json.ok
            && doc["ok"] == true
            && doc["engine"]["mode"] == mode
            && doc["engine"]["kernel"]["agrees"] == true
            && doc["endpoints"].as_array().map(Vec::len) == Some(2)
            && doc["plan"]["families"][0]["firewall"][0] == "203.0.113.0/25",
        "json: {}",
        json.describe()
    );
    let blocked = explain(&s, &["e2e/web", "--from", "203.0.113.130"])?;
    println!("{}{}", blocked.stdout, blocked.stderr);
    blocked.fails_with("outside loadBalancerSourceRanges")?;
    let inside = explain(&s, &["e2e/web", "--from", "203.0.113.2"])?;
    ensure!(inside.ok, "from inside the ranges: {}", inside.describe());
    explain(&s, &["e2e/empty"])?.fails_with("no ready endpoint")?;
    explain(&s, &[&format!("{LB_IP}:80/tcp"), "--from", "10.0.0.2"]).and_then(|r| {
        // A pod to the LB IP: outside the source ranges too (upstream filters pods).
        r.fails_with("outside loadBalancerSourceRanges")
    })?;

    // The agent gone (its rules stay), the kernel says which engine holds the port.
    s.sb.agent_mut()?.kill();
    agrees(&s, &explain(&s, &["e2e/web"])?, mode, "the kernel")?;
    tamper(&s)?;
    let run = explain(&s, &["e2e/web"])?;
    println!("{}{}", run.stdout, run.stderr);
    run.fails_with("disagrees with the plan")?;
    ensure!(run.stdout.contains("DISAGREE"), "{}", run.describe());
    Ok(())
}

fn in_node(s: &Setup, args: &[&str]) -> Result<String> {
    s.sb.in_node(args)
}

/// Deletes `e2e/web`'s cluster IP element from whichever shard's `service-ips` holds it.
fn delete_nft_element(s: &Setup) -> Result<()> {
    for t in 0..16 {
        let table = format!("switchyard-{t}");
        let element = format!("{{ {VIP} . tcp . 80 }}");
        if in_node(
            s,
            &[
                "nft",
                "delete",
                "element",
                "ip",
                &table,
                "service-ips",
                &element,
            ],
        )
        .is_ok()
        {
            return Ok(());
        }
    }
    bail!("no shard's service-ips held {VIP} . tcp . 80")
}

#[test]
fn explain_nftables() -> Result<()> {
    if !require_root("explain_nftables") {
        return Ok(());
    }
    check("nftables", delete_nft_element)
}

/// Flushes `e2e/web`'s service chain (`SY-SVC-...`, the only one in the sandbox).
fn flush_svc_chain(s: &Setup) -> Result<()> {
    let saved = in_node(s, &["iptables-nft-save", "-t", "nat"])?;
    let chain = saved
        .lines()
        .find_map(|l| l.strip_prefix(':').filter(|c| c.starts_with("SY-SVC-")))
        .and_then(|c| c.split_whitespace().next())
        .with_context(|| format!("no SY-SVC- chain in:\n{saved}"))?;
    in_node(s, &["iptables-nft", "-t", "nat", "-F", chain])?;
    Ok(())
}

#[test]
fn explain_iptables() -> Result<()> {
    if !require_root("explain_iptables") {
        return Ok(());
    }
    check("iptables", flush_svc_chain)
}

/// Deletes the socket-scope entry of `e2e/web`'s cluster IP from the pinned
/// `sy_services` map (key: the IPv4-mapped address, port in network order, protocol,
/// scope; `struct svc_key`).
fn delete_bpf_entry(s: &Setup) -> Result<()> {
    let paths = s.ebpf.as_ref().context("an eBPF setup")?;
    let root = paths.bpffs.join("switchyard");
    let layout = std::fs::read_dir(&root)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('v'))
        })
        .with_context(|| format!("no layout directory under {}", root.display()))?;
    let vip: std::net::Ipv4Addr = VIP.parse()?;
    let mut key: Vec<u8> = vec![0; 10];
    key.extend([0xff, 0xff]);
    key.extend(vip.octets());
    key.extend(80u16.to_be_bytes());
    key.extend([6, 0]);
    let hex: Vec<String> = key.iter().map(|b| format!("{b:02x}")).collect();
    let map = layout.join("sy_services");
    let map = map.to_string_lossy();
    let mut args = vec!["map", "delete", "pinned", &*map, "key", "hex"];
    args.extend(hex.iter().map(String::as_str));
    switchyard_e2e::netns::run_cmd(Command::new("bpftool").args(&args))?;
    Ok(())
}

#[test]
fn explain_ebpf() -> Result<()> {
    if !require_root("explain_ebpf") {
        return Ok(());
    }
    check("ebpf", delete_bpf_entry)
}

/// Deletes `e2e/web`'s real server from its cluster IP's virtual server.
fn delete_real_server(s: &Setup) -> Result<()> {
    in_node(
        s,
        &[
            "ipvsadm",
            "-d",
            "-t",
            &format!("{VIP}:80"),
            "-r",
            &format!("{POD}:8080"),
        ],
    )?;
    Ok(())
}

#[test]
fn explain_ipvs() -> Result<()> {
    if !require_root("explain_ipvs") || !require_ipvs("explain_ipvs") {
        return Ok(());
    }
    check("ipvs", delete_real_server)
}

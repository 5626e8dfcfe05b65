//! Live engine switch in standalone mode keeps established connections: a TCP connection
//! from the `pod` client through a ClusterIP to a stream echo backend stays open while the
//! ProxyConfig file flips nftables -> iptables -> nftables; after each switch ("switched
//! engine" in the agent log, the old engine's rules gone, the new one's present) the SAME
//! connection keeps answering from the SAME backend, and new connections work too.
//! Runs once per iptables backend (nft, legacy).
//!
//! Away from IPVS (VM lane: the host kernel has no IPVS) the open connection is carried
//! by IPVS's own connection table, which dies with its virtual server: the switch keeps
//! that server (and its VIP) until the connection ends, and removes it then.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde_yaml::Value;
use switchyard_e2e::{
    manifests::{node_object, proxy_config, ManifestDir},
    netns::run_cmd,
    probe::LineStream,
    readback::{self, Dataplane},
    require_ipvs, require_root, Outcome, Proto, Sandbox,
};

const VIP: &str = "172.30.3.1";
const BACKENDS: [&str; 2] = ["10.180.0.1", "10.180.0.2"];
const T: Duration = Duration::from_millis(500);

fn objects() -> Vec<Value> {
    let svc = format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{namespace: e2e, name: stream}}
spec:
  type: ClusterIP
  clusterIP: {VIP}
  clusterIPs: [{VIP}]
  ipFamilies: [IPv4]
  selector: {{app: stream}}
  ports:
  - {{name: http, port: 80, protocol: TCP, targetPort: 8080}}
  - {{name: stream, port: 90, protocol: TCP, targetPort: 9000}}
"#
    );
    let eps: String = BACKENDS
        .iter()
        .map(|ip| {
            format!(
                "- addresses: [{ip}]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  nodeName: test-node\n"
            )
        })
        .collect();
    let slice = format!(
        r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  namespace: e2e
  name: stream-1
  labels: {{kubernetes.io/service-name: stream}}
addressType: IPv4
ports:
- {{name: http, port: 8080, protocol: TCP}}
- {{name: stream, port: 9000, protocol: TCP}}
endpoints:
{eps}"#
    );
    vec![
        serde_yaml::from_str(&svc).unwrap(),
        serde_yaml::from_str(&slice).unwrap(),
    ]
}

fn in_node(sb: &Sandbox, args: &[&str]) -> Result<String> {
    run_cmd(
        Command::new("ip")
            .args(["netns", "exec", sb.node_ns().name()])
            .args(args),
    )
}

fn nft_table(sb: &Sandbox) -> bool {
    in_node(sb, &["nft", "list", "table", "ip", "switchyard"]).is_ok()
}

fn sy_chains(sb: &Sandbox, backend: &str) -> bool {
    let save = if backend == "legacy" {
        "iptables-legacy-save"
    } else {
        "iptables-nft-save"
    };
    in_node(sb, &[save])
        .map(|s| s.lines().any(|l| l.starts_with(":SY-")))
        .unwrap_or(false)
}

fn switches(sb: &Sandbox) -> usize {
    sb.agent_log().matches("switched engine").count()
}

/// New connections to the plain echo port reach both backends.
fn new_connections_work(sb: &Sandbox) -> Result<()> {
    let dst: SocketAddr = format!("{VIP}:80").parse()?;
    let mut seen = BTreeSet::new();
    for _ in 0..16 {
        match sb.probe("pod", dst, Proto::Tcp, T)? {
            Outcome::Answered { backend, .. } => {
                seen.insert(backend);
            }
            other => bail!("new connection to {dst} failed: {other}"),
        }
        if seen.len() == 2 {
            return Ok(());
        }
    }
    bail!("new connections reached only {seen:?}")
}

/// Rewrites the ProxyConfig to `to`, keeps asking over `conn` while waiting for the switch;
/// returns how long the switch took (file write to "switched engine" logged and the old
/// engine's rules gone).
fn switch(
    sb: &mut Sandbox,
    dir: &ManifestDir,
    conn: &mut LineStream,
    backend: &str,
    from: &str,
    to: &str,
    pinned: &str,
) -> Result<Duration> {
    let before = switches(sb);
    let start = Instant::now();
    dir.write(&proxy_config(to, &Default::default()))?;
    let mut asked = 0;
    loop {
        let (ep, _) = conn
            .ask(Duration::from_secs(2))
            .with_context(|| format!("established connection broke during {from} -> {to}"))?;
        asked += 1;
        ensure!(
            ep == pinned,
            "established connection moved from {pinned} to {ep} during {from} -> {to}"
        );
        let gone = match from {
            "nftables" => !nft_table(sb),
            _ => !sy_chains(sb, backend),
        };
        let there = match to {
            "nftables" => nft_table(sb),
            _ => sy_chains(sb, backend),
        };
        if switches(sb) > before && gone && there {
            let took = start.elapsed();
            println!(
                "{from} -> {to} ({backend} backend): switched and cleaned up {took:?} after the file write; {asked} answers over the open connection meanwhile, all from {pinned}"
            );
            return Ok(took);
        }
        if start.elapsed() > Duration::from_secs(40) {
            bail!(
                "no switch {from} -> {to} within 40 s (switched logged: {}, old rules gone: {gone}, new rules there: {there})\nagent log:\n{}\nruleset:\n{}",
                switches(sb) > before,
                sb.agent_log(),
                sb.node_ruleset()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A node with both stream backends and the agent in `mode`, healthy.
fn start(mode: &str, backend: &str) -> Result<(Sandbox, ManifestDir)> {
    let mut sb = Sandbox::new()?;
    for ip in BACKENDS {
        sb.add_pod_with_streams(&[ip.parse::<IpAddr>()?], &[8080], &[9000])?;
    }
    let dir = ManifestDir::new_temp("switch")?;
    dir.write(&node_object())?;
    dir.write(&proxy_config(mode, &Default::default()))?;
    for o in objects() {
        dir.write(&o)?;
    }
    sb.run_agent(dir.path(), &["--iptables-backend", backend])?;
    sb.wait_healthy(Duration::from_secs(60))?;
    Ok((sb, dir))
}

/// A connection to the stream port from the `pod` client, and the endpoint answering it.
fn open_stream(sb: &Sandbox) -> Result<(LineStream, String)> {
    let stream_dst: SocketAddr = format!("{VIP}:90").parse()?;
    let mut conn = LineStream::connect(&sb.source("pod")?, stream_dst, T)?;
    let (pinned, seen) = conn.ask(T)?;
    println!(
        "open connection {} -> {stream_dst} answered by {pinned} (saw {seen})",
        conn.local_addr()?
    );
    ensure!(pinned.ends_with(":9000"), "unexpected backend {pinned}");
    Ok((conn, pinned))
}

fn run(backend: &str) -> Result<()> {
    let (mut sb, dir) = start("nftables", backend)?;
    ensure!(nft_table(&sb), "nftables mode but no switchyard table");
    new_connections_work(&sb)?;
    let (mut conn, pinned) = open_stream(&sb)?;

    let there = switch(
        &mut sb, &dir, &mut conn, backend, "nftables", "iptables", &pinned,
    )?;
    for _ in 0..5 {
        let (ep, _) = conn.ask(T)?;
        ensure!(
            ep == pinned,
            "after the switch the connection answers from {ep}, not {pinned}"
        );
    }
    new_connections_work(&sb)?;

    let back = switch(
        &mut sb, &dir, &mut conn, backend, "iptables", "nftables", &pinned,
    )?;
    for _ in 0..5 {
        let (ep, _) = conn.ask(T)?;
        ensure!(
            ep == pinned,
            "after switching back the connection answers from {ep}, not {pinned}"
        );
    }
    new_connections_work(&sb)?;
    ensure!(
        sb.agent_mut()?.is_running(),
        "agent exited; log:\n{}",
        sb.agent_log()
    );
    println!("switch times ({backend}): nftables->iptables {there:?}, iptables->nftables {back:?}");
    Ok(())
}

/// The VIP ports IPVS holds virtual servers for.
fn ipvs_ports(sb: &Sandbox) -> Result<BTreeSet<String>> {
    Ok(readback::backends(sb, Dataplane::Ipvs)?
        .into_keys()
        .collect())
}

#[test]
fn switch_from_ipvs_keeps_connections_until_they_end() -> Result<()> {
    let test = "switch_from_ipvs_keeps_connections_until_they_end";
    if !require_root(test) || !require_ipvs(test) {
        return Ok(());
    }
    let (mut sb, dir) = start("ipvs", "nft")?;
    new_connections_work(&sb)?;
    let (mut conn, pinned) = open_stream(&sb)?;
    let (idle, open) = (format!("{VIP}:80"), format!("{VIP}:90"));
    let before = switches(&sb);
    let start = Instant::now();
    dir.write(&proxy_config("nftables", &Default::default()))?;
    loop {
        let (ep, _) = conn
            .ask(Duration::from_secs(2))
            .context("established connection broke during ipvs -> nftables")?;
        ensure!(ep == pinned, "the connection moved from {pinned} to {ep}");
        let ports = ipvs_ports(&sb)?;
        if switches(&sb) > before && nft_table(&sb) && !ports.contains(&idle) {
            ensure!(
                ports.contains(&open),
                "the virtual server of the open connection went with the switch: {ports:?}"
            );
            println!(
                "ipvs -> nftables: switched {:?} after the file write; IPVS keeps only {ports:?}",
                start.elapsed()
            );
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "no switch ipvs -> nftables within 60 s (IPVS holds {ports:?})\nagent log:\n{}",
                sb.agent_log()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..5 {
        let (ep, _) = conn.ask(T)?;
        ensure!(
            ep == pinned,
            "after the switch the connection answers from {ep}, not {pinned}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    new_connections_work(&sb)?;
    ensure!(
        ipvs_ports(&sb)?.contains(&open),
        "the open connection's virtual server went while it was open"
    );
    drop(conn);
    let closed = Instant::now();
    while !ipvs_ports(&sb)?.is_empty()
        || in_node(&sb, &["ip", "link", "show", "switchyard-ipvs"]).is_ok()
    {
        if closed.elapsed() > Duration::from_secs(20) {
            bail!(
                "IPVS state still there 20 s after the last connection closed: {:?}\nagent log:\n{}",
                ipvs_ports(&sb)?,
                sb.agent_log()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
    println!(
        "the drained virtual server and the interface went {:?} after the connection closed",
        closed.elapsed()
    );
    new_connections_work(&sb)?;
    ensure!(
        sb.agent_mut()?.is_running(),
        "agent exited; log:\n{}",
        sb.agent_log()
    );
    Ok(())
}

#[test]
fn mode_switch_keeps_connections_iptables_nft_backend() -> Result<()> {
    if !require_root("mode_switch_keeps_connections_iptables_nft_backend") {
        return Ok(());
    }
    run("nft")
}

#[test]
fn mode_switch_keeps_connections_iptables_legacy_backend() -> Result<()> {
    if !require_root("mode_switch_keeps_connections_iptables_legacy_backend") {
        return Ok(());
    }
    run("legacy")
}

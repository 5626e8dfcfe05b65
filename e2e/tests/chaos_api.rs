//! Fault injection (issue 14): the API server goes away, for every engine the host runs.
//! `switchyard agent` follows the kube API simulator (`kube-sim`) in the sandbox; the
//! simulator is killed for `SY_CHAOS_API_OUTAGE_SECS` (default 20 s; `make chaos`: 180),
//! during which the kernel's dump must not change at all (compared every second) and
//! traffic keeps reaching both backends. The simulator then comes back holding an edit
//! made during the outage (one endpoint gone): the agent must resume or relist and apply
//! only that edit — the kernel read-back, sampled every 100 ms from the restart on, must
//! never lose the remaining endpoint (no flush, no empty ruleset between), and no probe
//! may fail.
//!
//! IPVS runs in the VM lane only (`api_outage_ipvs`, the host kernel has no IPVS), with
//! a 10 s outage by default (TCG); its dump is `ipvsadm -Sn`, the helper table and the
//! dummy interface's addresses (`switchyard_e2e::readback::dump`).

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Result};
use serde_yaml::Value;
use switchyard_e2e::{
    agent::{agent_binary, http_get, Mounts, DEFAULT_HEALTHZ},
    cluster::{eventually, Cluster},
    fault::{fault_count, EngineUnderTest, FaultNode},
    manifests::{cluster_ip_service, node_object, ready_slice, TestPort},
    netns::run_cmd,
    require_ipvs, require_root, Outcome, Proto,
};

const API_PORT: u16 = 18081;
const PODS: [&str; 2] = ["10.186.0.1", "10.186.0.2"];
const VIP: &str = "172.30.44.1";
const PORT: TestPort = TestPort {
    name: "http",
    port: 80,
    protocol: "TCP",
    target: 8080,
};

fn yaml(v: &Value) -> String {
    serde_yaml::to_string(v).expect("serialisable")
}

/// The objects the simulator holds, with the slice's `endpoints`.
fn documents(node: &FaultNode, engine: EngineUnderTest, endpoints: &[&str]) -> Result<Vec<String>> {
    Ok(vec![
        run_cmd(Command::new(agent_binary()?).arg("crd"))?,
        yaml(&node_object()),
        yaml(&node.config(engine)),
        yaml(&cluster_ip_service("web", VIP, PORT)),
        yaml(&ready_slice("web", PORT, endpoints)),
    ])
}

fn backends(endpoints: &[&str]) -> BTreeSet<String> {
    endpoints
        .iter()
        .map(|p| format!("{p}:{}", PORT.target))
        .collect()
}

/// Four probes: every one answered by one of `allowed`; returns who answered.
fn probes(node: &FaultNode, allowed: &BTreeSet<String>) -> Result<BTreeSet<String>> {
    let dst: SocketAddr = format!("{VIP}:{}", PORT.port).parse()?;
    let mut seen = BTreeSet::new();
    for _ in 0..4 {
        match node
            .sb
            .probe("pod", dst, Proto::Tcp, Duration::from_millis(1500))?
        {
            Outcome::Answered { backend, .. } if allowed.contains(&backend) => {
                seen.insert(backend);
            }
            other => bail!("probe to {dst}: {other} (allowed {allowed:?})"),
        }
    }
    Ok(seen)
}

fn start(engine: EngineUnderTest) -> Result<(FaultNode, Cluster)> {
    let node = FaultNode::new("chaos-api", engine, &PODS, &[PORT.target])?;
    let mut c = Cluster::new(node.sb.node_ns().name(), API_PORT)?;
    c.agent_mounts = Mounts::Host;
    let docs = documents(&node, engine, &PODS)?;
    c.apply(&docs[0])?;
    eventually(&c, Duration::from_secs(10), "ProxyConfig served", || {
        Ok(c.kubectl(&["get", "proxyconfigs"])
            .err()
            .map(|e| format!("{e:#}")))
    })?;
    c.apply(&docs[1..].join("\n---\n"))?;
    let args = node.args(engine);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    c.start_node_side(&args)?;
    let healthz: SocketAddr = DEFAULT_HEALTHZ.parse()?;
    let path = node.sb.node_ns().path();
    eventually(&c, Duration::from_secs(60), "agent healthy", || {
        Ok(match http_get(&path, healthz, "/healthz") {
            Ok((200, _)) => None,
            other => Some(format!("{other:?}")),
        })
    })?;
    eventually(&c, Duration::from_secs(10), "both backends answer", || {
        let seen = probes(&node, &backends(&PODS))?;
        Ok((seen.len() < 2).then(|| format!("{seen:?}")))
    })?;
    Ok((node, c))
}

/// An outage of `SY_CHAOS_API_OUTAGE_SECS`, else `short_secs`.
fn outage(engine: EngineUnderTest, short_secs: usize) -> Result<()> {
    let (node, mut c) = start(engine)?;
    let before = node.dump(engine)?;
    ensure!(!before.trim().is_empty(), "empty dump before the outage");
    let last_rv = c.list_resource_version("/apis/discovery.k8s.io/v1/endpointslices")?;
    if let Some(mut sim) = c.sim.take() {
        sim.kill_hard();
    }
    let length = Duration::from_secs(fault_count("API_OUTAGE_SECS", short_secs) as u64);
    let gone = Instant::now();
    let (mut dumps, mut answered) = (0, 0);
    while gone.elapsed() < length {
        probes(&node, &backends(&PODS))?;
        answered += 4;
        let now = node.dump(engine)?;
        ensure!(
            now == before,
            "{}: the kernel changed {:?} into the API outage\nbefore:\n{before}\nnow:\n{now}\n{}",
            engine.name(),
            gone.elapsed(),
            c.logs()
        );
        dumps += 1;
        ensure!(
            c.agent_running(),
            "agent exited during the outage\n{}",
            c.logs()
        );
        thread::sleep(Duration::from_millis(1000));
    }
    c.restart_sim(&documents(&node, engine, &PODS[..1])?, last_rv)?;
    let back = Instant::now();
    let port = format!("{VIP}:{}", PORT.port);
    let (only_a, both) = (backends(&PODS[..1]), backends(&PODS));
    let mut samples = 0;
    loop {
        let have = node.kernel(engine)?.get(&port).cloned().unwrap_or_default();
        samples += 1;
        ensure!(
            have.is_superset(&only_a) && have.is_subset(&both),
            "{}: {:?} after the API server came back, the kernel holds {have:?} (flushed?)\n{}",
            engine.name(),
            back.elapsed(),
            c.logs()
        );
        if have == only_a {
            break;
        }
        if back.elapsed() > Duration::from_secs(60) {
            bail!(
                "{}: the edit made during the outage was not applied within 60 s\n{}",
                engine.name(),
                c.logs()
            );
        }
        if samples % 10 == 0 {
            probes(&node, &both)?;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let applied = back.elapsed();
    ensure!(probes(&node, &only_a)? == only_a, "after the edit");
    println!(
        "{}: API server gone {length:?}: {dumps} kernel dumps identical, {answered} probes answered; back: the edit made during the outage applied after {applied:?}, {samples} read-backs never below the remaining endpoint",
        engine.name()
    );
    Ok(())
}

#[test]
fn api_outage_nftables() -> Result<()> {
    if !require_root("api_outage_nftables") {
        return Ok(());
    }
    outage(EngineUnderTest::Nftables, 20)
}

#[test]
fn api_outage_iptables_nft() -> Result<()> {
    if !require_root("api_outage_iptables_nft") {
        return Ok(());
    }
    outage(EngineUnderTest::IptablesNft, 20)
}

#[test]
fn api_outage_iptables_legacy() -> Result<()> {
    if !require_root("api_outage_iptables_legacy") {
        return Ok(());
    }
    outage(EngineUnderTest::IptablesLegacy, 20)
}

#[test]
fn api_outage_ebpf() -> Result<()> {
    if !require_root("api_outage_ebpf") {
        return Ok(());
    }
    outage(EngineUnderTest::Ebpf, 20)
}

#[test]
fn api_outage_ipvs() -> Result<()> {
    if !require_root("api_outage_ipvs") || !require_ipvs("api_outage_ipvs") {
        return Ok(());
    }
    outage(EngineUnderTest::Ipvs, 10)
}

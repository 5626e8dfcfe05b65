//! Fault injection (issue 14): our kernel state damaged from outside, for every engine
//! the host runs, with `syncPeriod: 2s`. Two faults per engine: everything of ours
//! flushed (nftables: our tables deleted; iptables: every `SY-` chain of the nat table
//! flushed; eBPF: every entry of `sy_services` deleted), then ONE piece removed
//! (nftables: the Service's `service-ips` element; iptables: its `SY-SERVICES` rule;
//! eBPF: its `sy_services` element). Each must be repaired (kernel read-back holds the
//! Service's backends again, traffic reaches both) within the sync period plus a slack
//! for a loaded machine, and counted in `switchyard_drift_repairs`; the repair times are
//! printed.
//!
//! IPVS (VM lane only, `drift_repaired_ipvs`), with the operator's tool: the Service's
//! virtual server deleted (`ipvsadm -D`: with one Service, everything of ours in the
//! IPVS table), then one of its real servers (`ipvsadm -d`).

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use switchyard_e2e::{
    fault::{EngineUnderTest, FaultNode},
    manifests::{cluster_ip_service, ready_slice, TestPort},
    netns::exec,
    require_ipvs, require_root, Outcome, Proto,
};

const PODS: [&str; 2] = ["10.185.0.1", "10.185.0.2"];
const VIP: &str = "172.30.43.1";
const PORT: TestPort = TestPort {
    name: "http",
    port: 80,
    protocol: "TCP",
    target: 8080,
};
const SYNC_PERIOD: Duration = Duration::from_secs(2);
/// Beyond the sync period: a loaded 2-core machine, a full rewrite.
const SLACK: Duration = Duration::from_secs(10);

fn setup(engine: EngineUnderTest) -> Result<FaultNode> {
    let mut node = FaultNode::new("chaos-drift", engine, &PODS, &[PORT.target])?;
    node.overrides.insert("syncPeriod".into(), "2s".into());
    node.set_mode(engine)?;
    node.dir.write(&cluster_ip_service("web", VIP, PORT))?;
    node.dir.write(&ready_slice("web", PORT, &PODS))?;
    node.start_healthy(engine)?;
    Ok(node)
}

fn whole(node: &FaultNode, engine: EngineUnderTest) -> Result<bool> {
    let want: BTreeSet<String> = PODS
        .iter()
        .map(|p| format!("{p}:{}", PORT.target))
        .collect();
    Ok(node.kernel(engine)?.get(&format!("{VIP}:80")) == Some(&want))
}

fn run_in_node(node: &FaultNode, tool: &str, args: &[&str], input: &str) -> Result<String> {
    let (ok, out) = exec(node.sb.node_ns().name(), tool, args, input);
    ensure!(ok, "{tool} {args:?}: {out}");
    Ok(out)
}

/// Removes everything of ours (`all`) or the Service's one entry from `engine`'s state.
fn damage(node: &FaultNode, engine: EngineUnderTest, all: bool) -> Result<()> {
    match engine {
        EngineUnderTest::Nftables => nft_damage(node, all),
        EngineUnderTest::IptablesNft | EngineUnderTest::IptablesLegacy => {
            iptables_damage(node, engine.iptables_backend(), all)
        }
        EngineUnderTest::Ebpf => ebpf_damage(node, all),
        EngineUnderTest::Ipvs => ipvs_damage(node, all),
    }
}

/// `ipvsadm -D` of the Service's virtual server (`all`), else `ipvsadm -d` of one of
/// its real servers.
fn ipvs_damage(node: &FaultNode, all: bool) -> Result<()> {
    let service = format!("{VIP}:{}", PORT.port);
    let real = format!("{}:{}", PODS[1], PORT.target);
    if all {
        node.sb.in_node(&["ipvsadm", "-D", "-t", &service])?;
    } else {
        node.sb
            .in_node(&["ipvsadm", "-d", "-t", &service, "-r", &real])?;
    }
    Ok(())
}

fn nft_damage(node: &FaultNode, all: bool) -> Result<()> {
    let tables = node.sb.in_node(&["nft", "list", "tables"])?;
    let ours: Vec<(&str, &str)> = tables
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace().skip(1);
            Some((w.next()?, w.next()?))
        })
        .filter(|(_, name)| name.starts_with("switchyard"))
        .collect();
    ensure!(!ours.is_empty(), "no table of ours to damage");
    if all {
        // One transaction: the tables go together, as `nft flush ruleset` would take them.
        let script: String = ours
            .iter()
            .map(|(family, name)| format!("delete table {family} {name}\n"))
            .collect();
        run_in_node(node, "nft", &["-f", "-"], &script)?;
        return Ok(());
    }
    let element = format!("{{ {VIP} . tcp . 80 }}");
    for (family, name) in ours.iter().filter(|(f, _)| *f == "ip") {
        let cmd = [
            "nft",
            "delete",
            "element",
            family,
            name,
            "service-ips",
            &element,
        ];
        if node.sb.in_node(&cmd).is_ok() {
            return Ok(());
        }
    }
    bail!("no service-ips element {element} found in {ours:?}")
}

fn iptables_damage(node: &FaultNode, backend: &str, all: bool) -> Result<()> {
    let save = node
        .sb
        .in_node(&[&format!("iptables-{backend}-save"), "-t", "nat"])?;
    let tool = format!("iptables-{backend}-restore");
    let text = if all {
        let flushes: String = save
            .lines()
            .filter_map(|l| l.strip_prefix(":SY-"))
            .filter_map(|l| l.split_whitespace().next())
            .map(|c| format!("-F SY-{c}\n"))
            .collect();
        ensure!(!flushes.is_empty(), "no SY- chain to flush");
        flushes
    } else {
        let rule = save
            .lines()
            .find(|l| l.starts_with("-A SY-SERVICES") && l.contains(&format!("-d {VIP}/32")))
            .context("no SY-SERVICES rule for the VIP")?;
        format!("-D{}\n", &rule[2..])
    };
    run_in_node(
        node,
        &tool,
        &["--noflush"],
        &format!("*nat\n{text}COMMIT\n"),
    )?;
    Ok(())
}

fn ebpf_damage(node: &FaultNode, all: bool) -> Result<()> {
    let root = node.paths.bpffs.join("switchyard");
    let dir = std::fs::read_dir(&root)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("sy_services").exists())
        .context("no pinned sy_services")?;
    let map = dir.join("sy_services").to_string_lossy().into_owned();
    let dump = node
        .sb
        .in_node(&["bpftool", "-j", "map", "dump", "pinned", &map])?;
    let entries: serde_json::Value = serde_json::from_str(&dump)?;
    let vip: std::net::Ipv4Addr = VIP.parse()?;
    let vip_bytes = vip.to_ipv6_mapped().octets();
    let mut deleted = 0;
    for e in entries.as_array().into_iter().flatten() {
        let key: Vec<String> = e["key"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b.as_str().map(|s| s.trim_start_matches("0x").to_string()))
            .collect();
        let is_vip = key.len() >= 16
            && key[..16]
                .iter()
                .zip(vip_bytes)
                .all(|(k, b)| u8::from_str_radix(k, 16).ok() == Some(b));
        if all || is_vip {
            let mut args = vec!["bpftool", "map", "delete", "pinned", &map, "key", "hex"];
            args.extend(key.iter().map(String::as_str));
            node.sb.in_node(&args)?;
            deleted += 1;
            if !all {
                break;
            }
        }
    }
    ensure!(deleted > 0, "no sy_services entry deleted");
    Ok(())
}

fn drift_repairs(node: &FaultNode) -> Result<u64> {
    let m = node.sb.metrics()?;
    // A counter: `switchyard_drift_repairs_total N`.
    m.lines()
        .filter(|l| l.starts_with("switchyard_drift_repairs"))
        .find_map(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .context("no switchyard_drift_repairs metric")
}

fn both_answer(node: &FaultNode) -> Result<()> {
    let dst: SocketAddr = format!("{VIP}:80").parse()?;
    let mut seen = BTreeSet::new();
    for _ in 0..24 {
        match node
            .sb
            .probe("pod", dst, Proto::Tcp, Duration::from_millis(1500))?
        {
            Outcome::Answered { backend, .. } => {
                seen.insert(backend);
            }
            other => bail!("after the repair: {other}"),
        }
        if seen.len() == PODS.len() {
            return Ok(());
        }
    }
    bail!("after the repair only {seen:?} answered")
}

fn repaired(node: &mut FaultNode, engine: EngineUnderTest, all: bool) -> Result<Duration> {
    let what = match (engine, all) {
        (EngineUnderTest::Ipvs, true) => "the virtual server deleted",
        (EngineUnderTest::Ipvs, false) => "one real server deleted",
        (_, true) => "everything flushed",
        (_, false) => "one entry deleted",
    };
    let before = drift_repairs(node)?;
    damage(node, engine, all)?;
    let start = Instant::now();
    // No check that the damage shows before the repair: the periodic sync may repair it
    // at once. The drift counter proves the agent saw it.
    while !(whole(node, engine)? && drift_repairs(node)? > before) {
        if start.elapsed() > SYNC_PERIOD + SLACK {
            bail!(
                "{}: {what}: not repaired and counted within {:?} (drift repairs {before} -> {})\nagent log:\n{}",
                engine.name(),
                SYNC_PERIOD + SLACK,
                drift_repairs(node)?,
                node.sb.agent_log()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
    let took = start.elapsed();
    both_answer(node)?;
    println!(
        "{}: {what}: repaired and counted after {took:?} (syncPeriod {SYNC_PERIOD:?})",
        engine.name()
    );
    Ok(took)
}

fn run(engine: EngineUnderTest) -> Result<()> {
    let mut node = setup(engine)?;
    repaired(&mut node, engine, true)?;
    repaired(&mut node, engine, false)?;
    node.ensure_running("after the repairs")
}

#[test]
fn drift_repaired_nftables() -> Result<()> {
    if !require_root("drift_repaired_nftables") {
        return Ok(());
    }
    run(EngineUnderTest::Nftables)
}

#[test]
fn drift_repaired_iptables_nft() -> Result<()> {
    if !require_root("drift_repaired_iptables_nft") {
        return Ok(());
    }
    run(EngineUnderTest::IptablesNft)
}

#[test]
fn drift_repaired_iptables_legacy() -> Result<()> {
    if !require_root("drift_repaired_iptables_legacy") {
        return Ok(());
    }
    run(EngineUnderTest::IptablesLegacy)
}

#[test]
fn drift_repaired_ebpf() -> Result<()> {
    if !require_root("drift_repaired_ebpf") {
        return Ok(());
    }
    run(EngineUnderTest::Ebpf)
}

#[test]
fn drift_repaired_ipvs() -> Result<()> {
    if !require_root("drift_repaired_ipvs") || !require_ipvs("drift_repaired_ipvs") {
        return Ok(());
    }
    run(EngineUnderTest::Ipvs)
}

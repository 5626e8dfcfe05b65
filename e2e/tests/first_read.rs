//! Standalone mode never programs a ruleset from a directory it has not read completely
//! (issue 14, defect 9). A node restarted while its manifests directory is missing,
//! empty, or holds a file that does not parse keeps the rules its previous run left —
//! real traffic keeps reaching the old endpoint — and the agent waits, saying why, with
//! no sync (so `/healthz` does not answer yet); once the directory reads completely, the
//! first sync follows and the new endpoint answers. Once per built engine.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Result};
use serde_yaml::Value;
use switchyard_e2e::{
    agent::{http_get, DEFAULT_HEALTHZ},
    manifests::{
        cluster_ip_service, node_object, proxy_config, ready_slice, ManifestDir, TestPort,
    },
    require_root, Outcome, Proto, Sandbox,
};

const VIP: &str = "172.30.9.1:80";
const OLD: &str = "10.180.0.1";
const NEW: &str = "10.180.0.2";
const PORT: TestPort = TestPort {
    name: "http",
    port: 80,
    protocol: "TCP",
    target: 8080,
};
/// How long the agent is watched while it must wait.
const WATCH: Duration = Duration::from_secs(3);

/// Everything the node needs, the Service's endpoint being `endpoint`.
fn objects(mode: &str, endpoint: &str) -> Vec<(String, Value)> {
    vec![
        ("node.yaml".into(), node_object()),
        (
            "config.yaml".into(),
            proxy_config(mode, &Default::default()),
        ),
        (
            "svc.yaml".into(),
            cluster_ip_service("web", "172.30.9.1", PORT),
        ),
        ("slice.yaml".into(), ready_slice("web", PORT, &[endpoint])),
    ]
}

fn write_all(dir: &Path, objects: &[(String, Value)]) -> Result<()> {
    for (file, object) in objects {
        std::fs::write(dir.join(file), serde_yaml::to_string(object)?)?;
    }
    Ok(())
}

/// Which backends answer a few connections to the VIP.
fn backends(sb: &Sandbox) -> Result<BTreeMap<String, usize>> {
    let dst: SocketAddr = VIP.parse()?;
    let mut seen = BTreeMap::new();
    for _ in 0..4 {
        let key = match sb.probe("pod", dst, Proto::Tcp, Duration::from_millis(500))? {
            Outcome::Answered { backend, .. } => backend,
            other => other.to_string(),
        };
        *seen.entry(key).or_insert(0) += 1;
    }
    Ok(seen)
}

fn only(sb: &Sandbox, endpoint: &str) -> Result<bool> {
    let want = format!("{endpoint}:8080");
    Ok(backends(sb)?.keys().eq([&want]))
}

/// Watches the waiting agent for [`WATCH`]: it keeps running, has not synced (no
/// `/healthz` 200, no "synced" line), and the old endpoint keeps answering.
fn holds_old_rules(sb: &mut Sandbox, case: &str, why: &str) -> Result<()> {
    let until = Instant::now() + WATCH;
    while Instant::now() < until {
        ensure!(
            sb.agent_mut()?.is_running(),
            "{case}: the agent exited instead of waiting; log:\n{}",
            sb.agent_log()
        );
        let seen = backends(sb)?;
        ensure!(
            seen.keys().eq([&format!("{OLD}:8080")]),
            "{case}: the previous run's rules must keep serving; got {seen:?}; log:\n{}\nruleset:\n{}",
            sb.agent_log(),
            sb.node_ruleset()
        );
    }
    let healthz = http_get(&sb.node_ns().path(), DEFAULT_HEALTHZ.parse()?, "/healthz");
    ensure!(
        !matches!(healthz, Ok((200, _))),
        "{case}: healthy without a sync"
    );
    let log = sb.agent_log();
    ensure!(
        !log.contains(" synced") && log.contains("not read completely yet") && log.contains(why),
        "{case}: the log must say why it waits ({why:?}) and show no sync:\n{log}"
    );
    Ok(())
}

/// The directory becomes complete (with the new endpoint): the first sync follows.
fn syncs_new(sb: &mut Sandbox, case: &str) -> Result<()> {
    sb.wait_healthy(Duration::from_secs(20))?;
    let until = Instant::now() + Duration::from_secs(5);
    while !only(sb, NEW)? {
        if Instant::now() > until {
            bail!(
                "{case}: the new endpoint never took over; log:\n{}",
                sb.agent_log()
            );
        }
    }
    Ok(())
}

/// A complete run that programs the old endpoint, then stops (its rules stay).
fn program_old(sb: &mut Sandbox, dir: &ManifestDir, mode: &str) -> Result<()> {
    write_all(dir.path(), &objects(mode, OLD))?;
    sb.run_agent(dir.path(), &[])?;
    sb.wait_healthy(Duration::from_secs(20))?;
    let until = Instant::now() + Duration::from_secs(5);
    while !only(sb, OLD)? {
        ensure!(
            Instant::now() < until,
            "{OLD} never answered alone; log:\n{}",
            sb.agent_log()
        );
    }
    sb.stop_agent();
    Ok(())
}

fn restart_cases(mode: &str) -> Result<()> {
    let mut sb = Sandbox::new()?;
    for ip in [OLD, NEW] {
        sb.add_pod(&[ip.parse::<IpAddr>()?], &[8080])?;
    }
    let dir = ManifestDir::new_temp("first-read")?;

    // 1. The directory is missing at start (an unmounted volume): wait; then it appears.
    program_old(&mut sb, &dir, mode)?;
    let moved = dir.path().with_extension("moved");
    std::fs::rename(dir.path(), &moved)?;
    sb.run_agent(dir.path(), &[])?;
    let held = holds_old_rules(&mut sb, "missing directory", "No such file or directory");
    write_all(&moved, &objects(mode, NEW))?;
    std::fs::rename(&moved, dir.path())?;
    held?;
    syncs_new(&mut sb, "missing directory")?;
    sb.stop_agent();

    // 2. An empty directory (a volume not populated yet).
    program_old(&mut sb, &dir, mode)?;
    let empty = ManifestDir::new_temp("first-read-empty")?;
    sb.run_agent(empty.path(), &[])?;
    holds_old_rules(&mut sb, "empty directory", "no manifest")?;
    write_all(empty.path(), &objects(mode, NEW))?;
    syncs_new(&mut sb, "empty directory")?;
    sb.stop_agent();

    // 3. A file that does not parse (a half-written edit) next to objects with a new
    // endpoint: nothing is applied until the file parses.
    program_old(&mut sb, &dir, mode)?;
    write_all(dir.path(), &objects(mode, NEW))?;
    dir.write_text("broken.yaml", "kind: [unclosed\n")?;
    sb.run_agent(dir.path(), &[])?;
    holds_old_rules(&mut sb, "file that does not parse", "broken.yaml")?;
    dir.remove("broken.yaml")?;
    syncs_new(&mut sb, "file that does not parse")?;
    Ok(())
}

#[test]
fn restart_with_unreadable_manifests_keeps_rules_nftables() -> Result<()> {
    if !require_root("restart_with_unreadable_manifests_keeps_rules_nftables") {
        return Ok(());
    }
    restart_cases("nftables")
}

#[test]
fn restart_with_unreadable_manifests_keeps_rules_iptables() -> Result<()> {
    if !require_root("restart_with_unreadable_manifests_keeps_rules_iptables") {
        return Ok(());
    }
    restart_cases("iptables")
}

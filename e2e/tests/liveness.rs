//! Liveness versus readiness, and loud deaths, with the real binary (issue 14, defects 2
//! and 3):
//!
//! - a node that cannot sync (degraded: its ProxyConfig asks for an engine this binary
//!   lacks, with no fallback) answers `/healthz` 503 but `/livez` 200 — the kubelet must
//!   not restart it, its rules stay;
//! - a panic in the manifests scan thread ends the process at once, saying so, and the
//!   rules stay serving traffic (`SWITCHYARD_FAULT=manifests-panic`);
//! - a scan thread that stops turning makes `/livez` fail, naming it, while `/healthz`
//!   stays 200 (`SWITCHYARD_FAULT=manifests-stall`).
//!
//! One test, in order: the fault is chosen through the environment the agent inherits.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Result};
use switchyard_e2e::{
    agent::{http_get, DEFAULT_HEALTHZ},
    manifests::{
        cluster_ip_service, node_object, proxy_config, ready_slice, ManifestDir, TestPort,
    },
    require_root, Outcome, Proto, Sandbox,
};

const VIP: &str = "172.30.8.1";
const POD: &str = "10.180.0.1";
const PORT: TestPort = TestPort {
    name: "http",
    port: 80,
    protocol: "TCP",
    target: 8080,
};

fn manifests(mode: &str) -> Result<ManifestDir> {
    let dir = ManifestDir::new_temp("liveness")?;
    dir.write(&node_object())?;
    let mut overrides = serde_yaml::Mapping::new();
    overrides.insert("fallback".into(), Vec::<String>::new().into());
    dir.write(&proxy_config(mode, &overrides))?;
    dir.write(&cluster_ip_service("web", VIP, PORT))?;
    dir.write(&ready_slice("web", PORT, &[POD]))?;
    Ok(dir)
}

fn get(sb: &Sandbox, path: &str) -> Result<(u16, serde_json::Value)> {
    let (code, body) = http_get(&sb.node_ns().path(), DEFAULT_HEALTHZ.parse()?, path)?;
    Ok((code, serde_json::from_str(&body)?))
}

/// Polls `path` until it answers `code`, or `within` passes.
fn wait_for(sb: &Sandbox, path: &str, code: u16, within: Duration) -> Result<serde_json::Value> {
    let start = Instant::now();
    loop {
        let last = match get(sb, path) {
            Ok((c, body)) if c == code => return Ok(body),
            Ok((c, body)) => format!("{c} {body}"),
            Err(e) => format!("{e:#}"),
        };
        if start.elapsed() > within {
            bail!(
                "{path} never answered {code} within {within:?} (last: {last}); log:\n{}",
                sb.agent_log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn served(sb: &Sandbox) -> Result<bool> {
    let dst = SocketAddr::new(VIP.parse()?, 80);
    let mut seen = BTreeMap::new();
    for _ in 0..3 {
        let key = match sb.probe("pod", dst, Proto::Tcp, Duration::from_millis(500))? {
            Outcome::Answered { backend, .. } => backend,
            other => other.to_string(),
        };
        *seen.entry(key).or_insert(0) += 1;
    }
    Ok(seen.keys().eq([&format!("{POD}:8080")]))
}

/// Degraded: not ready, alive.
fn degraded_is_alive(sb: &mut Sandbox) -> Result<()> {
    let dir = manifests("ipvs")?;
    sb.run_agent(dir.path(), &[])?;
    let live = wait_for(sb, "/livez", 200, Duration::from_secs(20))?;
    // Let several passes fail (the runner retries with backoff from 1 s).
    std::thread::sleep(Duration::from_secs(3));
    let (code, health) = get(sb, "/healthz")?;
    ensure!(
        code == 503 && health["reason"].as_str().unwrap_or("").contains("degraded"),
        "a degraded node must not be ready: {code} {health}"
    );
    let (code, live2) = get(sb, "/livez")?;
    ensure!(
        code == 200 && live2["alive"] == true,
        "a degraded node is alive: {code} {live2} (first answer {live})"
    );
    let names: Vec<&str> = live2["loops"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["name"].as_str())
        .collect();
    ensure!(
        names == ["manifests scan", "sync runner"],
        "/livez watches the scan thread and the runner: {live2}"
    );
    sb.stop_agent();
    Ok(())
}

fn panic_ends_the_process(sb: &mut Sandbox, dir: &ManifestDir) -> Result<()> {
    std::env::set_var("SWITCHYARD_FAULT", "manifests-panic");
    let started = sb.run_agent(dir.path(), &[]);
    std::env::remove_var("SWITCHYARD_FAULT");
    started?;
    let until = Instant::now() + Duration::from_secs(20);
    while sb.agent_mut()?.is_running() {
        ensure!(
            Instant::now() < until,
            "the agent outlived a panic in its scan thread; log:\n{}",
            sb.agent_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = sb.agent_log();
    ensure!(
        log.contains("panicked") && log.contains("exiting (status 70)"),
        "the panic must be logged and end the process:\n{log}"
    );
    ensure!(
        served(sb)?,
        "rules stay after the process died; ruleset:\n{}",
        sb.node_ruleset()
    );
    Ok(())
}

fn stall_fails_livez(sb: &mut Sandbox, dir: &ManifestDir) -> Result<()> {
    std::env::set_var("SWITCHYARD_FAULT", "manifests-stall");
    let started = sb.run_agent(dir.path(), &[]);
    std::env::remove_var("SWITCHYARD_FAULT");
    started?;
    sb.wait_healthy(Duration::from_secs(20))?;
    // Allowed silence: 0.2 s scan interval + 30 s.
    let body = wait_for(sb, "/livez", 503, Duration::from_secs(45))?;
    ensure!(
        body["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("manifests scan silent for"),
        "/livez must name the stopped loop: {body}"
    );
    let (code, health) = get(sb, "/healthz")?;
    ensure!(
        code == 200,
        "the node is still synced, so still ready: {code} {health}"
    );
    ensure!(served(sb)?, "traffic keeps flowing");
    sb.stop_agent();
    Ok(())
}

#[test]
fn liveness_readiness_and_loud_deaths() -> Result<()> {
    if !require_root("liveness_readiness_and_loud_deaths") {
        return Ok(());
    }
    let mut sb = Sandbox::new()?;
    sb.add_pod(&[POD.parse::<IpAddr>()?], &[8080])?;
    degraded_is_alive(&mut sb)?;

    let dir = manifests("nftables")?;
    sb.run_agent(dir.path(), &[])?;
    sb.wait_healthy(Duration::from_secs(20))?;
    ensure!(served(&sb)?, "the service answers");
    sb.stop_agent();
    panic_ends_the_process(&mut sb, &dir)?;
    stall_fails_livez(&mut sb, &dir)?;
    Ok(())
}

//! Issue 12 part 3: how long from a manifest file write to traffic reaching the new
//! backend, with the real `switchyard run` (nftables) in the sandbox, at 10,000 Services
//! (`SWITCHYARD_E2E_SERVICES` to change). The agent follows its directory through
//! inotify; before, it polled every 200 ms (140 ms measured end to end at every size).
//!
//! Each run moves one Service's EndpointSlice to the other of two pods by an atomic
//! rename (as `kubectl`-like writers and ConfigMap volumes do), then opens new TCP
//! connections to the VIP from the pod client, back to back, until the new pod answers.
//! The figure is the median of [`RUNS`] runs, printed as a `make bench` table row; the
//! test fails only when a change takes more than 2 s (a debug build on a loaded machine
//! must still pass), and checks that the agent reports the latency it measured
//! (`kubeproxy_network_programming_duration_seconds`) for every change.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Result};
use serde_json::json;
use serde_yaml::{Mapping, Value};
use switchyard_e2e::{
    manifests::{
        cluster_ip_service, node_object, proxy_config, ready_slice, ManifestDir, TestPort,
    },
    require_root, Outcome, Proto, Sandbox,
};

const RUNS: usize = 9;
const PORT: TestPort = TestPort {
    name: "http",
    port: 80,
    protocol: "TCP",
    target: 8080,
};
const VIP: &str = "172.30.9.1";
const PODS: [&str; 2] = ["10.180.0.1", "10.180.0.2"];

/// `n` one-port Services and their one-endpoint slices, as one JSON `List`.
fn bulk(n: usize) -> String {
    let mut items = Vec::with_capacity(2 * n);
    for i in 0..n {
        let (a, b) = (i / 250, i % 250 + 1);
        let name = format!("bulk-{i}");
        items.push(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": "bulk", "name": name},
            "spec": {"clusterIP": format!("172.20.{a}.{b}"), "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }));
        items.push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": "bulk", "name": format!("{name}-1"),
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [format!("10.201.{a}.{b}")], "conditions": {"ready": true}}],
            "ports": [{"name": "http", "port": 8080}]
        }));
    }
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

fn answered_by(sb: &Sandbox) -> Result<Option<String>> {
    let dst = SocketAddr::new(VIP.parse::<IpAddr>()?, PORT.port);
    Ok(
        match sb.probe("pod", dst, Proto::Tcp, Duration::from_millis(300))? {
            Outcome::Answered { backend, .. } => Some(backend),
            _ => None,
        },
    )
}

/// Probes until `pod` answers; returns how long after `since` it did.
fn until_answered_by(sb: &Sandbox, pod: &str, since: Instant) -> Result<Duration> {
    let want = format!("{pod}:{}", PORT.target);
    loop {
        if answered_by(sb)?.as_deref() == Some(want.as_str()) {
            return Ok(since.elapsed());
        }
        if since.elapsed() > Duration::from_secs(10) {
            bail!(
                "{pod} never answered within 10 s\nagent log:\n{}",
                sb.agent_log()
            );
        }
    }
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn file_write_to_traffic() -> Result<()> {
    if !require_root("programming_latency") {
        return Ok(());
    }
    let services: usize = std::env::var("SWITCHYARD_E2E_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mut sb = Sandbox::new()?;
    for p in PODS {
        sb.add_pod(&[p.parse()?], &[PORT.target])?;
    }
    let dir = ManifestDir::new_temp("latency")?;
    dir.write(&node_object())?;
    let mut o = Mapping::new();
    o.insert("minSyncPeriod".into(), "0s".into());
    o.insert("syncPeriod".into(), "300s".into());
    dir.write(&proxy_config("nftables", &o))?;
    dir.write_text("bulk.json", &bulk(services))?;
    dir.write_object("svc.yaml", &cluster_ip_service("moving", VIP, PORT))?;
    dir.write_object("slice.yaml", &ready_slice("moving", PORT, &[PODS[0]]))?;
    sb.run_agent(dir.path(), &[])?;
    sb.wait_healthy(Duration::from_secs(300))?;
    until_answered_by(&sb, PODS[0], Instant::now())?;
    let before = metric(
        &sb.metrics()?,
        "kubeproxy_network_programming_duration_seconds_count",
    )
    .unwrap_or(0.0);

    let mut took = Vec::with_capacity(RUNS);
    for run in 0..RUNS {
        let pod = PODS[(run + 1) % 2];
        let slice: Value = ready_slice("moving", PORT, &[pod]);
        dir.write_object("slice.yaml", &slice)?;
        let written = Instant::now();
        let t = until_answered_by(&sb, pod, written)?;
        took.push(t);
        // Settle before the next change (the agent logs, the old flows age).
        std::thread::sleep(Duration::from_millis(300));
    }
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let median = took[RUNS / 2];
    println!(
        "file write to traffic on the new backend, {services} services (nftables): \
         median {:.1} ms over {RUNS} runs (min {:.1}, max {:.1})",
        ms(median),
        ms(took[0]),
        ms(took[RUNS - 1])
    );
    println!(
        "| standalone (`switchyard run`, nftables, inotify) | {services} | {:.1} ({:.1}–{:.1}) |",
        ms(median),
        ms(took[0]),
        ms(took[RUNS - 1])
    );
    ensure!(
        median < Duration::from_secs(2),
        "median {median:?}: the agent did not follow the edit promptly\nagent log:\n{}",
        sb.agent_log()
    );
    // Every change was measured by the agent too.
    let after = metric(
        &sb.metrics()?,
        "kubeproxy_network_programming_duration_seconds_count",
    )
    .unwrap_or(0.0);
    ensure!(
        after - before >= RUNS as f64,
        "network programming latency observed {} times for {RUNS} changes",
        after - before
    );
    Ok(())
}

//! The standalone agent follows its manifests directory: an EndpointSlice shrinking from
//! two endpoints to one takes effect within 2 s, a deleted Service stops answering, and
//! garbage YAML, an invalid Service, or an edit giving a Service a field of the wrong type
//! next to valid ones neither stops the agent nor disturbs the valid services (the edited
//! one keeps its last valid version), each is counted in the metrics
//! (`switchyard_unparseable_files_total`, `switchyard_invalid_objects_total{kind}`), and
//! new valid services are still picked up.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Result};
use serde_yaml::Value;
use switchyard_e2e::{
    manifests::{
        cluster_ip_service, node_object, proxy_config, ready_slice, ManifestDir, TestPort,
    },
    require_root, Outcome, Proto, Sandbox,
};

const T: Duration = Duration::from_millis(500);

const PORT: TestPort = TestPort {
    name: "http",
    port: 80,
    protocol: "TCP",
    target: 8080,
};

fn service(name: &str, vip: &str) -> Value {
    cluster_ip_service(name, vip, PORT)
}

fn slice(service: &str, ips: &[&str]) -> Value {
    ready_slice(service, PORT, ips)
}

fn hits(sb: &Sandbox, vip: &str, tries: usize) -> Result<BTreeMap<String, usize>> {
    let dst: SocketAddr = vip.parse()?;
    let mut seen = BTreeMap::new();
    for _ in 0..tries {
        let key = match sb.probe("pod", dst, Proto::Tcp, T)? {
            Outcome::Answered { backend, .. } => backend,
            other => other.to_string(),
        };
        *seen.entry(key).or_insert(0) += 1;
    }
    Ok(seen)
}

/// Polls until `ok(hits)` holds for a batch of `tries` requests, or `within` passes.
fn eventually(
    sb: &Sandbox,
    vip: &str,
    tries: usize,
    within: Duration,
    what: &str,
    ok: impl Fn(&BTreeMap<String, usize>) -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let seen = hits(sb, vip, tries)?;
        if ok(&seen) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            bail!(
                "{what}: not true within {within:?}; last batch to {vip}: {seen:?}\nagent log:\n{}",
                sb.agent_log()
            );
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn agent_follows_edits() -> Result<()> {
    if !require_root("agent_follows_edits") {
        return Ok(());
    }
    let mut sb = Sandbox::new()?;
    for p in ["10.180.0.1", "10.180.0.2", "10.180.0.3"] {
        sb.add_pod(&[ip(p)], &[8080])?;
    }
    let dir = ManifestDir::new_temp("edits")?;
    dir.write(&node_object())?;
    dir.write(&proxy_config("nftables", &Default::default()))?;
    dir.write_object("svc-a.yaml", &service("a", "172.30.1.1"))?;
    dir.write_object("slice-a.yaml", &slice("a", &["10.180.0.1", "10.180.0.2"]))?;
    dir.write_object("svc-b.yaml", &service("b", "172.30.1.2"))?;
    dir.write_object("slice-b.yaml", &slice("b", &["10.180.0.3"]))?;
    sb.run_agent(dir.path(), &[])?;
    sb.wait_healthy(Duration::from_secs(20))?;

    let a = "172.30.1.1:80";
    let b = "172.30.1.2:80";
    eventually(
        &sb,
        a,
        16,
        Duration::from_secs(3),
        "both endpoints of a answer",
        |s| s.len() == 2 && s.contains_key("10.180.0.1:8080") && s.contains_key("10.180.0.2:8080"),
    )?;
    eventually(&sb, b, 4, Duration::from_secs(3), "b answers", |s| {
        s.keys().eq(["10.180.0.3:8080"].iter())
    })?;

    // Scale a down to one endpoint: within 2 s only that one answers.
    dir.write_object("slice-a.yaml", &slice("a", &["10.180.0.1"]))?;
    let took = eventually(
        &sb,
        a,
        12,
        Duration::from_secs(2),
        "a shrinks to 10.180.0.1",
        |s| s.keys().eq(["10.180.0.1:8080"].iter()),
    )?;
    println!("endpoint removal visible after {took:?}");

    // Delete Service a: its VIP stops answering.
    dir.remove("svc-a.yaml")?;
    eventually(
        &sb,
        a,
        3,
        Duration::from_secs(2),
        "a stops answering",
        |s| !s.contains_key("10.180.0.1:8080"),
    )?;

    // Garbage, an invalid Service, and b edited into a type error, next to valid ones.
    dir.write_text("garbage.yaml", "this: is: [not valid yaml\n  - {{{\n")?;
    let mut bad = service("bad", "172.30.1.9");
    bad["spec"]["ports"][0]["port"] = Value::from(70000);
    dir.write_object("svc-bad.yaml", &bad)?;
    let mut undecodable = service("b", "172.30.1.2");
    undecodable["spec"]["ports"][0]["port"] = Value::from("eighty");
    dir.write_object("svc-b.yaml", &undecodable)?;
    std::thread::sleep(Duration::from_millis(1500));
    ensure!(
        sb.agent_mut()?.is_running(),
        "agent exited after invalid manifests; log:\n{}",
        sb.agent_log()
    );
    eventually(
        &sb,
        b,
        6,
        Duration::from_secs(2),
        "b keeps answering",
        |s| s.keys().eq(["10.180.0.3:8080"].iter()),
    )?;
    sb.wait_healthy(Duration::from_secs(2))?;
    // Each bad input counted once: the garbage file; the invalid Service and the
    // undecodable edit of b.
    let metrics = sb.metrics()?;
    for (metric, want) in [
        ("switchyard_unparseable_files_total", 1.0),
        (r#"switchyard_invalid_objects_total{kind="Service"}"#, 2.0),
    ] {
        let got = metrics.lines().find_map(|l| {
            l.strip_prefix(metric)?
                .strip_prefix(' ')?
                .parse::<f64>()
                .ok()
        });
        ensure!(
            got == Some(want),
            "{metric} is {got:?}, expected {want}; metrics:\n{metrics}"
        );
    }
    // The agent still follows edits: a new valid service is programmed.
    dir.write_object("svc-c.yaml", &service("c", "172.30.1.3"))?;
    dir.write_object("slice-c.yaml", &slice("c", &["10.180.0.2"]))?;
    eventually(
        &sb,
        "172.30.1.3:80",
        4,
        Duration::from_secs(3),
        "new service c answers",
        |s| s.keys().eq(["10.180.0.2:8080"].iter()),
    )?;
    ensure!(
        sb.agent_mut()?.is_running(),
        "agent exited; log:\n{}",
        sb.agent_log()
    );
    Ok(())
}

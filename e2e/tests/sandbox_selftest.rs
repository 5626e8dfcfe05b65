//! Checks the harness itself, without the agent: the sandbox topology routes every source
//! role to the pods, echo servers answer on TCP and UDP for both families, and a
//! hand-written nftables ruleset in the node namespace yields the outcomes the scenario
//! runner classifies (answered with / without masquerade, refused, timeout).

use std::{
    io::Write,
    net::{IpAddr, SocketAddr},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use switchyard_e2e::{probe::PROBE_TIMEOUT, require_root, Outcome, Proto, Sandbox};

const T: Duration = Duration::from_millis(800);

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn answered(o: &Outcome) -> Option<(&str, IpAddr)> {
    match o {
        Outcome::Answered {
            backend,
            seen_source,
        } => Some((backend, seen_source.ip())),
        _ => None,
    }
}

const RULESET: &str = r#"
table ip sy_selftest {
  chain pre {
    type nat hook prerouting priority -100;
    ip daddr 172.30.0.41 tcp dport 80 dnat to numgen inc mod 2 map { 0 : 10.180.0.1, 1 : 10.180.2.1 }
  }
  chain out {
    type nat hook output priority -100;
    ip daddr 172.30.0.41 tcp dport 80 dnat to numgen inc mod 2 map { 0 : 10.180.0.1, 1 : 10.180.2.1 }
  }
  chain post {
    type nat hook postrouting priority 100;
    ct status dnat ip saddr != 10.0.0.0/8 masquerade
    ct status dnat ip saddr 10.180.0.1 ip daddr 10.180.0.1 masquerade
  }
  chain forward_filter {
    type filter hook forward priority 0;
    ip daddr 172.30.0.99 counter reject
    ip daddr 172.30.0.98 drop
  }
}
table ip6 sy_selftest6 {
  chain forward_filter {
    type filter hook forward priority 0;
    ip6 daddr fd00:172::99 reject
  }
}
"#;

#[test]
fn sandbox_routes_probes_and_classifies() -> Result<()> {
    if !require_root("sandbox_routes_probes_and_classifies") {
        return Ok(());
    }
    let mut sb = Sandbox::new()?;
    sb.add_pod(&[ip("10.180.0.1")], &[80])?;
    sb.add_pod(&[ip("10.180.2.1")], &[80])?;
    sb.add_pod(&[ip("fd00:10::5")], &[80, 53])?;

    // Plain routing from every role, both protocols, both families.
    for (src, dst, proto) in [
        ("pod", "10.180.0.1:80", Proto::Tcp),
        ("pod", "10.180.0.1:80", Proto::Udp),
        ("node", "10.180.2.1:80", Proto::Tcp),
        ("ext", "10.180.0.1:80", Proto::Tcp),
        ("extblocked", "10.180.0.1:80", Proto::Udp),
        ("10.180.2.1", "10.180.0.1:80", Proto::Tcp),
        ("pod6", "[fd00:10::5]:80", Proto::Tcp),
        ("pod6", "[fd00:10::5]:53", Proto::Udp),
        ("node6", "[fd00:10::5]:80", Proto::Tcp),
        ("ext6", "[fd00:10::5]:53", Proto::Udp),
    ] {
        let o = sb.probe(src, sa(dst), proto, T)?;
        let want_src = sb.source(src)?.ip;
        ensure!(
            answered(&o) == Some((sa(dst).to_string().as_str(), want_src)),
            "{src} -> {dst}/{proto}: {o}"
        );
    }
    // No listener: refused on TCP (RST) and UDP (ICMP port unreachable).
    for proto in [Proto::Tcp, Proto::Udp] {
        let o = sb.probe("pod", sa("10.180.0.1:81"), proto, T)?;
        ensure!(matches!(o, Outcome::Refused(_)), "closed port {proto}: {o}");
    }

    // A hand-written service in the node namespace.
    let mut nft = Command::new("ip")
        .args(["netns", "exec", sb.node_ns().name(), "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .context("running nft")?;
    nft.stdin.take().unwrap().write_all(RULESET.as_bytes())?;
    ensure!(nft.wait()?.success(), "nft -f failed");

    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let o = sb.probe("pod", sa("172.30.0.41:80"), Proto::Tcp, T)?;
        let (backend, source) = answered(&o).with_context(|| format!("clusterIP: {o}"))?;
        ensure!(
            source == ip("10.0.0.2"),
            "pod traffic must not be masqueraded: {o}"
        );
        seen.insert(backend.to_string());
    }
    ensure!(seen.len() == 2, "both backends should answer: {seen:?}");
    for src in ["ext", "node"] {
        let o = sb.probe(src, sa("172.30.0.41:80"), Proto::Tcp, T)?;
        let (_, source) = answered(&o).with_context(|| format!("{src}: {o}"))?;
        ensure!(
            source != sb.source(src)?.ip,
            "{src} must be masqueraded: {o}"
        );
    }
    for _ in 0..2 {
        let o = sb.probe("10.180.0.1", sa("172.30.0.41:80"), Proto::Tcp, T)?;
        let (backend, source) = answered(&o).with_context(|| format!("hairpin: {o}"))?;
        if backend == "10.180.0.1:80" {
            ensure!(
                source != ip("10.180.0.1"),
                "hairpin must be masqueraded: {o}"
            );
        }
    }
    let o = sb.probe("pod", sa("172.30.0.99:80"), Proto::Tcp, T)?;
    if std::env::var("HOLD").is_ok() {
        std::thread::sleep(Duration::from_secs(90));
    }
    ensure!(
        matches!(o, Outcome::Refused(_)),
        "reject: {o}\n{}",
        sb.node_ruleset()
    );
    let o = sb.probe("pod", sa("172.30.0.99:80"), Proto::Udp, T)?;
    ensure!(matches!(o, Outcome::Refused(_)), "reject udp: {o}");
    // IPv6 TCP only fails on the ICMPv6 error for the retransmitted SYN (~1 s).
    let o = sb.probe("pod6", sa("[fd00:172::99]:80"), Proto::Tcp, PROBE_TIMEOUT)?;
    ensure!(matches!(o, Outcome::Refused(_)), "reject tcp6: {o}");
    let o = sb.probe(
        "pod",
        sa("172.30.0.98:80"),
        Proto::Tcp,
        Duration::from_millis(300),
    )?;
    ensure!(o == Outcome::Timeout, "drop: {o}");

    sb.remove_pod(ip("10.180.2.1"))?;
    let o = sb.probe(
        "pod",
        sa("10.180.2.1:80"),
        Proto::Tcp,
        Duration::from_millis(300),
    )?;
    ensure!(answered(&o).is_none(), "removed pod still answers: {o}");
    Ok(())
}

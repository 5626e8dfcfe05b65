//! Connection setup rate through a ClusterIP: what iptables mode's reputation comes from.
//! Every new connection walks the services dispatch chain; iptables matches rule by rule,
//! nftables looks the VIP up in a verdict map, IPVS in its service hash table, eBPF
//! in a hash map at connect(). Measured in one namespace per case: the engine programs N
//! services whose endpoint is a local server, and a client opens as many connections as
//! it can for a fixed time to the VIP the dispatch chain reaches last, and (with N
//! services) straight to the endpoint. The eBPF engine's client is a child process in
//! its private cgroup (only that cgroup's sockets see its programs); the loop is the
//! same function.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use switchyard_e2e::netns::{run_cmd, spawn_in, NetNs};
use switchyard_model::{
    test_util::{self, ep},
    ChangeSet, NodeModel,
};

use crate::{ebpf::client_in_cgroup, engine_for, netns, Programmed, Subject};

/// The local server every service points at.
const ENDPOINT: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const MEASURE_FOR: Duration = Duration::from_secs(1);

pub struct RateRow {
    pub subject: Subject,
    pub services: usize,
    /// Connections per CPU-second of the client with 1 service programmed.
    pub one: f64,
    /// With `services` programmed, to the last one in the dispatch order.
    pub many: f64,
    /// With `services` programmed, straight to the endpoint.
    pub direct: f64,
}

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 20, 0, 0)) + i as u32)
}

fn model(services: usize) -> NodeModel {
    let services = (0..services)
        .map(|i| {
            let mut s = test_util::service(
                &format!("svc-{i}"),
                &[&vip(i).to_string()],
                80,
                vec![ep(&ENDPOINT.to_string(), 8080, true)],
            );
            s.name.namespace = format!("ns-{}", i % 100).into();
            s
        })
        .collect();
    test_util::model(services)
}

/// The VIP whose rule iptables evaluates last (any VIP for nftables: one map lookup).
fn last_vip(subject: Subject, ns: &NetNs, services: usize) -> Result<Ipv4Addr> {
    let save = match subject {
        Subject::Nftables | Subject::Ebpf | Subject::Ipvs => return Ok(vip(services - 1)),
        Subject::IptablesNft => "iptables-nft-save",
        Subject::IptablesLegacy => "iptables-legacy-save",
    };
    let out = run_cmd(std::process::Command::new("ip").args([
        "netns",
        "exec",
        ns.name(),
        save,
        "-t",
        "nat",
    ]))?;
    out.lines()
        .rev()
        .filter(|l| l.starts_with("-A SY-SERVICES") && l.contains(" -d "))
        .find_map(|l| l.split(" -d ").nth(1)?.split('/').next()?.parse().ok())
        .context("no service rule found in the SY-SERVICES chain")
}

/// Connections per CPU-second of one thread connecting to `target` for
/// [`MEASURE_FOR`] (the calling thread's namespace): on loopback the whole netfilter path
/// of a SYN runs in the sender's context, and CPU time is far less sensitive than wall
/// time to what else the 2-core machine is doing.
pub fn client_loop(target: SocketAddr) -> Result<f64> {
    // Warm up, and check the VIP answers at all.
    TcpStream::connect_timeout(&target, Duration::from_secs(2))
        .context("first connection to the target")?;
    let cpu = || -> Result<Duration> {
        let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)?;
        Ok(Duration::from(t))
    };
    let started = Instant::now();
    let cpu_started = cpu()?;
    let mut count = 0u64;
    while started.elapsed() < MEASURE_FOR {
        TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
        count += 1;
    }
    Ok(count as f64 / (cpu()? - cpu_started).as_secs_f64())
}

/// Connections per CPU-second of the client, from inside `ns` to `target`; in the eBPF
/// engine's cgroup when there is one.
fn rate(ns: &NetNs, target: SocketAddr, cgroup: Option<&std::path::Path>) -> Result<f64> {
    let path = ns.path();
    let stop = Arc::new(AtomicBool::new(false));
    let server_stop = stop.clone();
    // The client starts once the server listens (a fixed sleep lost that race on a
    // loaded machine).
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let server = spawn_in(&path, move || -> Result<()> {
        let listener = TcpListener::bind((ENDPOINT, 8080))?;
        listener.set_nonblocking(true)?;
        let _ = ready_tx.send(());
        while !server_stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    })?;
    if ready.recv_timeout(Duration::from_secs(10)).is_err() {
        stop.store(true, Ordering::Relaxed);
        return match server.join() {
            Ok(Ok(Err(e))) => Err(e.context("the endpoint server")),
            _ => bail!("the endpoint server did not start listening"),
        };
    }
    let result = match cgroup {
        Some(cg) => client_in_cgroup(cg, &path, target),
        None => spawn_in(&path, move || client_loop(target))?
            .join()
            .map_err(|_| anyhow::anyhow!("client panicked"))
            .and_then(|r| r)
            .and_then(|r| r),
    };
    stop.store(true, Ordering::Relaxed);
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server panicked"))???;
    result
}

/// The rate to the last VIP with `services` programmed, and straight to the endpoint.
async fn one_case(subject: Subject, services: usize, tag: &str) -> Result<(f64, f64)> {
    let ns = netns(tag)?;
    // No dummy driver in this kernel: a veth pair whose peer stays in the namespace.
    ns.ip(&[
        "link", "add", "eps", "type", "veth", "peer", "name", "eps-peer",
    ])?;
    ns.ip(&["link", "set", "eps", "up"])?;
    ns.ip(&["link", "set", "eps-peer", "up"])?;
    ns.ip(&["addr", "add", &format!("{ENDPOINT}/32"), "dev", "eps"])?;
    ns.ip(&["route", "add", "172.16.0.0/12", "dev", "eps"])?;
    ns.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
    ns.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    let m = model(services);
    let Programmed { mut engine, ebpf } = engine_for(subject, &ns)?;
    engine.prepare().await.context("prepare")?;
    engine
        .sync(&m, &ChangeSet::full(&m))
        .await
        .context("programming the services")?;
    let target = SocketAddr::from((last_vip(subject, &ns, services)?, 80));
    let cgroup = ebpf.as_ref().map(|e| e.cgroup());
    let r = rate(&ns, target, cgroup).and_then(|via_vip| {
        let direct = rate(&ns, SocketAddr::from((ENDPOINT, 8080)), cgroup)?;
        Ok((via_vip, direct))
    });
    engine.cleanup().await.ok();
    r
}

/// Median connection rates with 1 and with each of `sizes` services, per subject, in
/// one run.
pub async fn compare(subjects: &[Subject], sizes: &[usize], runs: usize) -> Result<Vec<RateRow>> {
    if sizes.iter().any(|s| *s < 2) {
        bail!("need at least 2 services to compare");
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).expect("rates are finite"));
        v[v.len() / 2]
    };
    let mut rows = Vec::new();
    for &subject in subjects {
        for &services in sizes {
            let (mut one, mut many, mut direct) = (Vec::new(), Vec::new(), Vec::new());
            // Interleave the two sizes so machine noise hits both alike.
            for run in 0..runs {
                one.push(one_case(subject, 1, &format!("rate1-{run}")).await?.0);
                let (m, d) = one_case(subject, services, &format!("rateN-{run}")).await?;
                many.push(m);
                direct.push(d);
            }
            rows.push(RateRow {
                subject,
                services,
                one: median(one),
                many: median(many),
                direct: median(direct),
            });
        }
    }
    Ok(rows)
}

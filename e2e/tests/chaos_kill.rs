//! Fault injection (issue 14): `kill -9` of the agent at random points of its syncs, for
//! every engine the host runs. A node serves [`SERVICES`] ClusterIPs; every round writes
//! a new version of all their EndpointSlices (one file, renamed into place, so the agent
//! sees whole versions only) and kills the agent at a random moment of the partial sync
//! that follows (within twice the time an unkilled partial sync takes to be logged,
//! measured first), then restarts it after writing yet another version and kills it at a
//! random moment of its first (full) sync. After every kill the kernel is read back
//! (`switchyard_e2e::readback`: nft -j, iptables-save, bpftool) and must hold, for every
//! service port, exactly the backends of the version before or the version being
//! applied: never a partial set, so never fewer backends than both versions had; for the
//! netfilter engines the whole ruleset must be one version (one transaction per sync).
//! The eBPF engine writes its maps service port by service port (no transaction spans
//! maps), so for it each service port must be whole, and rounds that caught a mix of
//! service ports at different versions are counted and printed. Traffic to sampled
//! services must reach only backends of those two versions, after every kill.
//!
//! IPVS (VM lane only, `kill_9_during_syncs_ipvs`): no transaction spans IPVS
//! operations either, and a service port changes one real server at a time, make before
//! break (new real servers added, then the old ones set to weight 0). So for IPVS a
//! service port may be caught between its two versions, and must then hold only
//! backends of the two, all of the old version's or all of the new's: never fewer
//! backends than both versions had. Such kills are counted ("between") and printed.
//! "Old" is always what the kernel held before the killed sync (read back), so a kill
//! that caught a sync half way is followed by a sync that starts from that state.
//!
//! `SY_CHAOS_KILLS` sets the number of kills per engine (default 10, `make chaos` 100;
//! IPVS under TCG: 4); `SY_CHAOS_SEED` replays a run (the seed is printed).

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Result};
use switchyard_e2e::{
    fault::{fault_count, EngineUnderTest, FaultNode},
    readback::Backends,
    require_ipvs, require_root, Outcome, Proto,
};

const SERVICES: usize = 60;
const PODS: [&str; 4] = ["10.182.0.1", "10.182.0.2", "10.182.0.3", "10.182.0.4"];
const TARGET: u16 = 8080;
fn vip(i: usize) -> String {
    format!("172.30.40.{}", i + 1)
}

/// Version `v`: service `i` has 1 to 3 of the pods, varying with `v`.
fn version(v: usize) -> Backends {
    (0..SERVICES)
        .map(|i| {
            let n = 1 + (v + i) % 3;
            let first = (v * 3 + i) % PODS.len();
            let set = (0..n)
                .map(|k| format!("{}:{TARGET}", PODS[(first + k) % PODS.len()]))
                .collect();
            (format!("{}:80", vip(i)), set)
        })
        .collect()
}

fn services_yaml() -> String {
    (0..SERVICES)
        .map(|i| {
            format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{namespace: chaos, name: s{i}}}\n\
                 spec:\n  type: ClusterIP\n  clusterIP: {v}\n  clusterIPs: [{v}]\n  ipFamilies: [IPv4]\n  \
                 ports: [{{name: http, port: 80, protocol: TCP, targetPort: {TARGET}}}]\n",
                v = vip(i)
            )
        })
        .collect()
}

fn slices_yaml(v: usize) -> String {
    let want = version(v);
    (0..SERVICES)
        .map(|i| {
            let eps: String = want[&format!("{}:80", vip(i))]
                .iter()
                .map(|b| {
                    let ip = b.split(':').next().unwrap_or_default();
                    format!("  - {{addresses: [{ip}], conditions: {{ready: true}}, nodeName: test-node}}\n")
                })
                .collect();
            format!(
                "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata:\n  namespace: chaos\n  name: s{i}-1\n  labels: {{kubernetes.io/service-name: s{i}}}\n\
                 addressType: IPv4\nports: [{{name: http, port: {TARGET}, protocol: TCP}}]\nendpoints:\n{eps}"
            )
        })
        .collect()
}

/// A small xorshift generator: reproducible from its printed seed, no dependency.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("SY_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
                    | 1
            });
        println!("SY_CHAOS_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Which versions the kernel holds: per service port `old` or `new`, else an error
/// naming the service port. Returns (ports at old, ports at new) among those that differ.
fn whole_versions(kernel: &Backends, old: &Backends, new: &Backends) -> Result<(usize, usize)> {
    let states = port_states(kernel, old, new, false)?;
    Ok((states.old, states.new))
}

/// Service ports (among those that differ) at the old version, at the new one, and
/// between the two (only where `between_allowed`).
#[derive(Debug, Default)]
struct PortStates {
    old: usize,
    new: usize,
    between: usize,
}

/// Per service port: `old`, `new`, or (when `between_allowed`, for an engine that
/// changes a port one real server at a time, make before break) a set within both
/// versions' backends that holds all of one of them; else an error naming the port.
fn port_states(
    kernel: &Backends,
    old: &Backends,
    new: &Backends,
    between_allowed: bool,
) -> Result<PortStates> {
    let mut states = PortStates::default();
    for (port, want_new) in new {
        let want_old = &old.get(port).cloned().unwrap_or_default();
        let have = kernel.get(port).cloned().unwrap_or_default();
        if have == *want_old && have == *want_new {
            continue;
        } else if have == *want_old {
            states.old += 1;
        } else if have == *want_new {
            states.new += 1;
        } else if between_allowed
            && have
                .iter()
                .all(|b| want_old.contains(b) || want_new.contains(b))
            && (have.is_superset(want_old) || have.is_superset(want_new))
        {
            states.between += 1;
        } else {
            let allowed = if between_allowed {
                ", nor between them with all of one of them"
            } else {
                ""
            };
            bail!("service port {port}: the kernel holds {have:?}, neither the old version {want_old:?} nor the new {want_new:?}{allowed}");
        }
    }
    Ok(states)
}

/// Traffic to three sampled services reaches only backends of `old` or `new`.
fn traffic_within(
    node: &FaultNode,
    old: &Backends,
    new: &Backends,
    rng: &mut Rng,
) -> Result<usize> {
    let mut answered = 0;
    for _ in 0..3 {
        let i = rng.below(SERVICES as u64) as usize;
        let port = format!("{}:80", vip(i));
        let dst: SocketAddr = port.parse()?;
        let allowed: BTreeSet<&String> = [old.get(&port), new.get(&port)]
            .into_iter()
            .flatten()
            .flatten()
            .collect();
        for _ in 0..3 {
            match node
                .sb
                .probe("pod", dst, Proto::Tcp, Duration::from_millis(1500))?
            {
                Outcome::Answered { backend, .. } if allowed.contains(&backend) => answered += 1,
                other => bail!("{port}: {other} (allowed {allowed:?})"),
            }
        }
    }
    Ok(answered)
}

/// What the kill rounds of one engine saw.
#[derive(Debug, Default)]
struct Tally {
    kills: usize,
    /// Kills after which the kernel held the old version (everywhere it differs).
    old: usize,
    /// ... the new version.
    new: usize,
    /// ... some service ports at the old version and some at the new (or between).
    mixed: usize,
    /// ... some service port between its two versions (IPVS: make before break).
    between: usize,
    answered: usize,
    /// Kills aimed at the measured sync interval.
    aimed: usize,
    /// Kills that found the kernel at the new version while the killed agent had not
    /// logged the sync yet: inside a sync, after the kernel took it.
    inside: usize,
}

struct Round<'a> {
    node: &'a mut FaultNode,
    engine: EngineUnderTest,
    rng: Rng,
    tally: Tally,
    /// "synced" lines the agent had logged when it was killed, and before the kill's
    /// sync was due.
    logged_at_kill: usize,
    logged_before: usize,
}

impl Round<'_> {
    /// Kills the agent at a random point around `timing` (see [`SyncTiming::kill_delay`]),
    /// remembering how many syncs it had logged.
    fn kill_after(&mut self, timing: SyncTiming) -> Result<()> {
        let (delay, aimed) = timing.kill_delay(&mut self.rng);
        self.tally.aimed += usize::from(aimed);
        thread::sleep(delay);
        self.node.sb.agent_mut()?.kill();
        self.logged_at_kill = synced_lines(self.node);
        Ok(())
    }

    /// Reads the kernel back after a kill of the sync from `old` (what the kernel held
    /// before it) towards version `new`; returns the read-back, the next sync's `old`.
    fn check(&mut self, old: &Backends, new: usize, what: &str) -> Result<Backends> {
        self.tally.kills += 1;
        let n = version(new);
        let kernel = self.node.kernel(self.engine)?;
        let ipvs = self.engine == EngineUnderTest::Ipvs;
        let states = port_states(&kernel, old, &n, ipvs).map_err(|e| {
            e.context(format!(
                "{} after kill {} ({what})\nagent log:\n{}",
                self.engine.name(),
                self.tally.kills,
                self.node.sb.agent_log()
            ))
        })?;
        let kinds = [states.old, states.new, states.between];
        let mixed = kinds.iter().filter(|k| **k > 0).count() > 1;
        let transactional = !matches!(self.engine, EngineUnderTest::Ebpf | EngineUnderTest::Ipvs);
        if mixed && transactional {
            bail!(
                "{}: kill {} ({what}) left a partial ruleset: {} service ports at the previous version, {} at v{new}",
                self.engine.name(),
                self.tally.kills,
                states.old,
                states.new
            );
        }
        self.tally.between += usize::from(states.between > 0);
        match (mixed, states.new > 0) {
            (true, _) => self.tally.mixed += 1,
            (false, true) => {
                self.tally.new += 1;
                if self.logged_at_kill == self.logged_before {
                    self.tally.inside += 1;
                }
            }
            (false, false) if states.between == 0 => self.tally.old += 1,
            (false, false) => {}
        }
        self.tally.answered += traffic_within(self.node, old, &n, &mut self.rng)?;
        Ok(kernel)
    }
}

/// When a sync happens, measured on one that is not killed: how long after the file
/// write (partial) or the process start (full) the agent logged "synced", and the
/// sync's own `total_ms` from that line.
#[derive(Clone, Copy, Debug)]
struct SyncTiming {
    logged: Duration,
    sync: Duration,
}

impl SyncTiming {
    /// Half the kills spread over `[0, 2 × logged]` (before, during, after), half aimed at
    /// the sync itself: `[logged − 2 × sync − 5 ms, logged + 5 ms]`.
    fn kill_delay(&self, rng: &mut Rng) -> (Duration, bool) {
        let ms = |d: Duration| d.as_millis() as u64;
        if rng.below(2) == 0 {
            return (
                Duration::from_millis(rng.below(2 * ms(self.logged).max(50))),
                false,
            );
        }
        let from = ms(self.logged).saturating_sub(2 * ms(self.sync) + 5);
        let span = ms(self.logged) + 5 - from;
        (Duration::from_millis(from + rng.below(span)), true)
    }
}

fn synced_lines(node: &FaultNode) -> usize {
    node.sb.agent_log().matches(" synced ").count()
}

/// Waits for one more "synced" line than `before`; its timing from `start`.
fn wait_synced(node: &FaultNode, before: usize, start: Instant) -> Result<SyncTiming> {
    while synced_lines(node) == before {
        ensure!(
            start.elapsed() < Duration::from_secs(60),
            "no sync logged within 60 s"
        );
        thread::sleep(Duration::from_millis(2));
    }
    let logged = start.elapsed();
    let log = node.sb.agent_log();
    let sync_ms: f64 = log
        .lines()
        .rev()
        .find(|l| l.contains(" synced "))
        .and_then(|l| l.split("total_ms=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Ok(SyncTiming {
        logged,
        sync: Duration::from_micros((sync_ms * 1000.0) as u64),
    })
}

/// Starts the agent on v0 (timing its full sync), then applies v1 (timing a partial one).
fn calibrate(node: &mut FaultNode, engine: EngineUnderTest) -> Result<(SyncTiming, SyncTiming)> {
    node.dir.write_text("services.yaml", &services_yaml())?;
    node.dir.write_text("slices.yaml", &slices_yaml(0))?;
    let start = Instant::now();
    node.start(engine)?;
    let full = wait_synced(node, 0, start)?;
    node.sb.wait_healthy(Duration::from_secs(60))?;
    let before = synced_lines(node);
    node.dir.write_text("slices.yaml", &slices_yaml(1))?;
    let partial = wait_synced(node, before, Instant::now())?;
    Ok((full, partial))
}

fn kill_rounds(engine: EngineUnderTest, short_kills: usize) -> Result<()> {
    let mut node = FaultNode::new("chaos-kill", engine, &PODS, &[TARGET])?;
    let (full, partial) = calibrate(&mut node, engine)?;
    let mut round = Round {
        node: &mut node,
        engine,
        rng: Rng::new(),
        tally: Tally::default(),
        logged_at_kill: 0,
        logged_before: 0,
    };
    let mut v = 1;
    let t0 = Instant::now();
    while round.tally.kills < fault_count("KILLS", short_kills) {
        // A partial sync killed at a random point.
        round.logged_before = synced_lines(round.node);
        round
            .node
            .dir
            .write_text("slices.yaml", &slices_yaml(v + 1))?;
        round.kill_after(partial)?;
        let held = round.check(&version(v), v + 1, "partial sync")?;
        // A restart's full sync towards v + 2, killed at a random point.
        round
            .node
            .dir
            .write_text("slices.yaml", &slices_yaml(v + 2))?;
        round.node.start(engine)?;
        round.logged_before = 0;
        round.kill_after(full)?;
        round.check(&held, v + 2, "first full sync after a restart")?;
        // Restart and converge on v + 2 exactly.
        round.node.start_healthy(engine)?;
        let target = version(v + 2);
        whole_versions(&round.node.kernel(engine)?, &target, &target)
            .map_err(|e| e.context(format!("{}: healthy, but not at v{}", engine.name(), v + 2)))?;
        v += 2;
    }
    let t = &round.tally;
    println!(
        "{}: {} kills in {:?} ({} aimed at the sync); {SERVICES} service ports: partial sync logged {:?} after the write ({:?} long), full sync logged {:?} after the start ({:?} long); kernel at the old version {} times, at the new {} times, mixed service ports {} times, a service port between its versions {} times; {} kills after the kernel held the new version but before the agent logged the sync; {} probes answered by allowed backends, 0 by others",
        engine.name(),
        t.kills,
        t0.elapsed(),
        t.aimed,
        partial.logged,
        partial.sync,
        full.logged,
        full.sync,
        t.old,
        t.new,
        t.mixed,
        t.between,
        t.inside,
        t.answered
    );
    Ok(())
}

#[test]
fn kill_9_during_syncs_nftables() -> Result<()> {
    if !require_root("kill_9_during_syncs_nftables") {
        return Ok(());
    }
    kill_rounds(EngineUnderTest::Nftables, 10)
}

#[test]
fn kill_9_during_syncs_iptables_nft() -> Result<()> {
    if !require_root("kill_9_during_syncs_iptables_nft") {
        return Ok(());
    }
    kill_rounds(EngineUnderTest::IptablesNft, 10)
}

#[test]
fn kill_9_during_syncs_iptables_legacy() -> Result<()> {
    if !require_root("kill_9_during_syncs_iptables_legacy") {
        return Ok(());
    }
    kill_rounds(EngineUnderTest::IptablesLegacy, 10)
}

#[test]
fn kill_9_during_syncs_ebpf() -> Result<()> {
    if !require_root("kill_9_during_syncs_ebpf") {
        return Ok(());
    }
    kill_rounds(EngineUnderTest::Ebpf, 10)
}

/// VM lane only (the host kernel has no IPVS): 4 kills by default, a TCG round costing
/// about ten times the host's.
#[test]
fn kill_9_during_syncs_ipvs() -> Result<()> {
    if !require_root("kill_9_during_syncs_ipvs") || !require_ipvs("kill_9_during_syncs_ipvs") {
        return Ok(());
    }
    kill_rounds(EngineUnderTest::Ipvs, 4)
}

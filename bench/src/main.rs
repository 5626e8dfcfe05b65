//! `switchyard-bench`: measures what the issues set goals for, on a real kernel inside
//! private network namespaces (never the host's rules):
//!
//! - per engine and size: a full sync from empty, and a one-endpoint change (engine
//!   apply alone, and the whole pipeline: state update, model build, diff, apply);
//!   the IPVS engine needs a kernel with IPVS: the VM lane's kernel (`--engines
//!   ipvs,nftables` there; see BENCHMARKS.md "IPVS");
//! - the real agent's resident memory after its first sync at the largest size.
//!
//! Figures are medians of `--runs` runs; the machine is small and noisy, so the table
//! also gives the minimum and maximum.

mod cluster;
mod conn_rate;
mod ebpf;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use switchyard_core::state::model_config;
use switchyard_crd::EffectiveConfig;
use switchyard_e2e::netns::NetNs;
use switchyard_iptables::{Backend, IptOptions, IptablesEngine};
use switchyard_ipvs::{IpvsEngine, IpvsOptions};
use switchyard_model::{ChangeSet, NodeModel, ProxyEngine};
use switchyard_nftables::{NftOptions, NftablesEngine};

use crate::cluster::SyntheticCluster;

/// The agent's allocator, so in-process engine figures are the agent's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An engine under measurement: nftables, iptables on one backend, or eBPF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    Nftables,
    IptablesNft,
    IptablesLegacy,
    Ebpf,
    Ipvs,
}

impl std::str::FromStr for Subject {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "nftables" => Ok(Subject::Nftables),
            "iptables-nft" => Ok(Subject::IptablesNft),
            "iptables-legacy" => Ok(Subject::IptablesLegacy),
            "ebpf" => Ok(Subject::Ebpf),
            "ipvs" => Ok(Subject::Ipvs),
            other => Err(format!(
                "{other:?}: expected nftables, iptables-nft, iptables-legacy, ebpf or ipvs"
            )),
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Subject::Nftables => "nftables",
            Subject::IptablesNft => "iptables (nft backend)",
            Subject::IptablesLegacy => "iptables (legacy backend)",
            Subject::Ebpf => "ebpf",
            Subject::Ipvs => "ipvs",
        })
    }
}

/// A fresh namespace for one measurement.
pub fn netns(tag: &str) -> Result<NetNs> {
    NetNs::create(&format!("sy-bench-{}-{tag}", std::process::id()))
}

/// An engine programming one namespace, and what it needs to live (eBPF: its private
/// cgroup and bpffs).
pub struct Programmed {
    pub engine: Box<dyn ProxyEngine>,
    pub ebpf: Option<ebpf::EbpfEnv>,
}

/// The engine for `subject`, programming namespace `ns`. For eBPF the namespace gets the
/// node's address (192.168.0.2 on a veth) so NodePorts are programmed as on a node.
pub fn engine_for(subject: Subject, ns: &NetNs) -> Result<Programmed> {
    if subject == Subject::Ebpf {
        ns.ip(&[
            "link",
            "add",
            "uplink",
            "type",
            "veth",
            "peer",
            "name",
            "uplink-peer",
        ])?;
        ns.ip(&["addr", "add", "192.168.0.2/24", "dev", "uplink"])?;
        ns.ip(&["link", "set", "uplink", "up"])?;
        let env = ebpf::EbpfEnv::new()?;
        return Ok(Programmed {
            engine: Box::new(env.engine(ns)),
            ebpf: Some(env),
        });
    }
    Ok(Programmed {
        engine: netfilter_engine(subject, ns),
        ebpf: None,
    })
}

fn netfilter_engine(subject: Subject, ns: &NetNs) -> Box<dyn ProxyEngine> {
    let netns = Some(ns.name().to_string());
    match subject {
        Subject::Nftables => Box::new(NftablesEngine::new(NftOptions {
            netns,
            ..NftOptions::default()
        })),
        Subject::IptablesNft => Box::new(IptablesEngine::new(IptOptions {
            netns,
            backend: Backend::Nft,
            ..IptOptions::default()
        })),
        Subject::IptablesLegacy => Box::new(IptablesEngine::new(IptOptions {
            netns,
            backend: Backend::Legacy,
            ..IptOptions::default()
        })),
        Subject::Ebpf => unreachable!("built by engine_for"),
        Subject::Ipvs => Box::new(IpvsEngine::new(IpvsOptions {
            netns,
            ..IpvsOptions::default()
        })),
    }
}

/// The one-endpoint change the bench times.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum OneEndpoint {
    Replace,
    RemoveRestore,
}

#[derive(Parser)]
struct Args {
    /// Service counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000")]
    sizes: Vec<usize>,
    /// Endpoints per service.
    #[arg(long, default_value_t = 5)]
    endpoints: usize,
    /// Runs per figure (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Engines to measure.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "nftables,iptables-nft,iptables-legacy"
    )]
    engines: Vec<Subject>,
    /// Service counts programmed for the connection-setup-rate comparison (0: skip).
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    conn_rate_services: Vec<usize>,
    /// Engines in the connection-setup-rate comparison.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "nftables,iptables-nft,iptables-legacy,ebpf"
    )]
    conn_rate_engines: Vec<Subject>,
    /// What the one-endpoint change is: `replace` (a pod replaced: one address goes,
    /// another comes) or `remove-restore` (one endpoint goes, comes back, goes).
    #[arg(long, value_enum, default_value_t = OneEndpoint::Replace)]
    one_endpoint: OneEndpoint,
    /// The switchyard binary, for the agent memory figure (skipped when absent).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// The engine the agent runs for the memory figure: nftables or ebpf.
    #[arg(long, default_value = "nftables")]
    agent_mode: Subject,
    /// Write the synthetic cluster of the first of `--sizes` (× `--endpoints`) as a
    /// manifests directory (one JSON `List` of Services and EndpointSlices, the Node, a
    /// ProxyConfig) into this directory and exit: the input of
    /// `scripts/agent-start-api.sh` and `switchyard run --manifests`.
    #[arg(long)]
    write_manifests: Option<PathBuf>,
    /// Internal: run as a connection-rate client in this namespace (see `ebpf`).
    #[arg(long, hide = true, requires = "client_target")]
    client_netns: Option<PathBuf>,
    #[arg(long, hide = true)]
    client_target: Option<std::net::SocketAddr>,
}

/// Median, min and max of a set of durations, in milliseconds.
struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn of(mut samples: Vec<Duration>) -> Stats {
        samples.sort();
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        Stats {
            median: ms(&samples[samples.len() / 2]),
            min: ms(&samples[0]),
            max: ms(samples.last().expect("at least one sample")),
        }
    }

    fn cell(&self) -> String {
        fn f(v: f64) -> String {
            if v >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        }
        format!("{} ({}–{})", f(self.median), f(self.min), f(self.max))
    }
}

struct Row {
    mode: Subject,
    services: usize,
    endpoints: usize,
    model_build: Stats,
    full_sync: Stats,
    /// `verify` right after the full sync (the drift check every syncPeriod runs it).
    verify: Stats,
    one_endpoint_engine: Stats,
    one_endpoint_pipeline: Stats,
    /// 1 % of the services each get a pod replaced at once (one sync).
    churn_engine: Stats,
    churn_pipeline: Stats,
}

async fn measure(
    mode: Subject,
    services: usize,
    per_service: usize,
    runs: usize,
    one_endpoint: OneEndpoint,
) -> Result<Row> {
    let config = EffectiveConfig {
        cluster_cidrs: vec!["10.0.0.0/8".parse()?],
        ..EffectiveConfig::default()
    };
    let cluster = SyntheticCluster::new(services, per_service);
    let mut state = cluster.state();
    let mut build = Vec::new();
    let mut model = NodeModel::default();
    for _ in 0..runs {
        let t = Instant::now();
        model = NodeModel::build(
            &state,
            &state.node_facts(cluster::NODE),
            &model_config(&config),
        );
        build.push(t.elapsed());
    }
    let mut full = Vec::new();
    let mut verify = Vec::new();
    let mut engine_one = Vec::new();
    let mut pipeline_one = Vec::new();
    let mut engine_churn = Vec::new();
    let mut pipeline_churn = Vec::new();
    for run in 0..runs {
        let ns = netns(&format!("sync-{run}"))?;
        let Programmed {
            mut engine,
            ebpf: _env,
        } = engine_for(mode, &ns)?;
        engine.prepare().await.context("prepare")?;
        let t = Instant::now();
        engine
            .sync(&model, &ChangeSet::full(&model))
            .await
            .context("full sync")?;
        full.push(t.elapsed());
        let t = Instant::now();
        let drift = engine.verify(&model).await.context("verify")?;
        verify.push(t.elapsed());
        if drift != switchyard_model::Drift::None {
            bail!("{mode}: drift right after a full sync: {drift:?}");
        }

        // One endpoint of one service changes: a pod replaced (its address changes), or
        // (`--one-endpoint remove-restore`) an endpoint gone, back, gone.
        state.take_changes();
        for step in 0..3 {
            let which = match one_endpoint {
                OneEndpoint::Replace => (run * 7919 + step * 104729) % services,
                OneEndpoint::RemoveRestore => (run * 7919) % services,
            };
            // The agent's path: the source updates the state, the runner recomputes
            // the changed Service only and hands the difference to the engine.
            let t = Instant::now();
            state.upsert(match one_endpoint {
                OneEndpoint::Replace => cluster.slice_with_replaced_endpoint(which, run * 3 + step),
                OneEndpoint::RemoveRestore => cluster.slice_with_endpoints(which, step != 1),
            });
            let dirty = state.take_changes();
            let changes = model.update_services(&state, &dirty.services);
            if changes.len() != 1 || dirty.global {
                bail!("expected one changed service port, got {}", changes.len());
            }
            let te = Instant::now();
            engine
                .sync(&model, &changes)
                .await
                .context("one-endpoint sync")?;
            engine_one.push(te.elapsed());
            pipeline_one.push(t.elapsed());
        }

        // 1 % churn: a pod replaced in each of services / 100 services, in one sync.
        let churned = (services / 100).max(1);
        let t = Instant::now();
        for i in 0..churned {
            let which = (run * 31 + i * 100 + 3) % services;
            state.upsert(cluster.slice_with_replaced_endpoint(which, 1000 + run));
        }
        let dirty = state.take_changes();
        let changes = model.update_services(&state, &dirty.services);
        if changes.len() != churned || dirty.global {
            bail!(
                "expected {churned} changed service ports, got {}",
                changes.len()
            );
        }
        let te = Instant::now();
        engine
            .sync(&model, &changes)
            .await
            .context("1% churn sync")?;
        engine_churn.push(te.elapsed());
        pipeline_churn.push(t.elapsed());
        let drift = engine.verify(&model).await.context("verify after churn")?;
        if drift != switchyard_model::Drift::None {
            bail!("{mode}: drift after the 1% churn: {drift:?}");
        }
        engine.cleanup().await.context("cleanup")?;
    }
    Ok(Row {
        mode,
        services,
        endpoints: services * per_service,
        model_build: Stats::of(build),
        full_sync: Stats::of(full),
        verify: Stats::of(verify),
        one_endpoint_engine: Stats::of(engine_one),
        one_endpoint_pipeline: Stats::of(pipeline_one),
        churn_engine: Stats::of(engine_churn),
        churn_pipeline: Stats::of(pipeline_churn),
    })
}

/// Starts the real agent on `services` services in a namespace; returns (seconds to
/// first sync, RSS MiB after it).
/// The agent's memory: resident after its first sync, and the peak it reached on the way.
struct AgentMemory {
    first_sync_s: f64,
    rss_mib: f64,
    peak_mib: f64,
}

fn agent_memory(
    agent: &PathBuf,
    mode: Subject,
    services: usize,
    per_service: usize,
) -> Result<AgentMemory> {
    let ns = netns("agent")?;
    let dir = std::env::temp_dir().join(format!("sy-bench-manifests-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let cluster = SyntheticCluster::new(services, per_service);
    let log = dir.with_extension("log");
    let mut cmd;
    // eBPF: the node's address, a private cgroup and bpffs, and the host's mounts (ip
    // netns exec would hide the cgroup v2 mount).
    let _ebpf = if mode == Subject::Ebpf {
        let Programmed { ebpf, .. } = engine_for(Subject::Ebpf, &ns)?;
        let env = ebpf.expect("ebpf env");
        cluster.write_manifests(&dir, Some(env.cgroup()))?;
        cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--net={}", ns.path().display()))
            .arg("--")
            .arg(agent);
        cmd.args(["run", "--mode", "ebpf", "--bpffs-root"])
            .arg(env.bpffs());
        Some(env)
    } else {
        cluster.write_manifests(&dir, None)?;
        cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", ns.name()]).arg(agent);
        cmd.args(["run", "--mode", "nftables"]);
        None
    };
    let mut child = cmd
        .arg("--manifests")
        .arg(&dir)
        .args(["--node-name", cluster::NODE])
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting the agent")?;
    let started = Instant::now();
    let result = (|| {
        loop {
            if started.elapsed() > Duration::from_secs(300) {
                bail!("agent did not sync within 300 s; see {}", log.display());
            }
            if let Some(status) = child.try_wait()? {
                bail!("agent exited ({status}); see {}", log.display());
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("synced") {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let first_sync = started.elapsed().as_secs_f64();
        // Let allocations settle after the first sync.
        std::thread::sleep(Duration::from_secs(2));
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))?;
        let mib = |field: &str| -> Result<f64> {
            let kib: f64 = status
                .lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .with_context(|| format!("{field} missing"))?
                .parse()?;
            Ok(kib / 1024.0)
        };
        Ok(AgentMemory {
            first_sync_s: first_sync,
            rss_mib: mib("VmRSS:")?,
            peak_mib: mib("VmHWM:")?,
        })
    })();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&log);
    result
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let (Some(netns), Some(target)) = (&args.client_netns, args.client_target) {
        switchyard_e2e::netns::enter(netns)?;
        println!("{}", conn_rate::client_loop(target)?);
        return Ok(());
    }
    if let Some(dir) = &args.write_manifests {
        let size = args.sizes.first().copied().unwrap_or(1000);
        std::fs::create_dir_all(dir)?;
        SyntheticCluster::new(size, args.endpoints).write_manifests(dir, None)?;
        eprintln!(
            "wrote {size} services x {} endpoints to {}",
            args.endpoints,
            dir.display()
        );
        return Ok(());
    }
    if !is_root() {
        bail!("benchmarks program a kernel inside network namespaces: run as root");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for &mode in &args.engines {
        for &size in &args.sizes {
            eprintln!(
                "measuring {mode} at {size} services x {} endpoints ...",
                args.endpoints
            );
            let row = runtime.block_on(measure(
                mode,
                size,
                args.endpoints,
                args.runs,
                args.one_endpoint,
            ))?;
            rows.push(row);
        }
    }
    println!("| engine | services | endpoints | model build ms | full sync from empty ms | verify ms | one-endpoint change: engine ms | one-endpoint change: whole pipeline ms | 1% churn (services / 100 at once): engine ms | 1% churn: whole pipeline ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.mode,
            r.services,
            r.endpoints,
            r.model_build.cell(),
            r.full_sync.cell(),
            r.verify.cell(),
            r.one_endpoint_engine.cell(),
            r.one_endpoint_pipeline.cell(),
            r.churn_engine.cell(),
            r.churn_pipeline.cell()
        );
    }
    let rate_sizes: Vec<usize> = args
        .conn_rate_services
        .iter()
        .copied()
        .filter(|n| *n > 0)
        .collect();
    if !rate_sizes.is_empty() {
        eprintln!("measuring connection setup rate with 1 and {rate_sizes:?} services ...");
        let rows = runtime.block_on(conn_rate::compare(
            &args.conn_rate_engines,
            &rate_sizes,
            args.runs,
        ))?;
        println!();
        println!("| engine | services | connections per client CPU-second: 1 service | N services (last in dispatch order) | N services, straight to the pod | vs 1 service | vs straight to the pod |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for r in rows {
            println!(
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} |",
                r.subject,
                r.services,
                r.one,
                r.many,
                r.direct,
                r.many / r.one,
                r.many / r.direct
            );
        }
    }
    if let Some(agent) = &args.agent {
        let size = *args.sizes.iter().max().unwrap_or(&1000);
        eprintln!("measuring the agent's memory at {size} services ...");
        let m = agent_memory(agent, args.agent_mode, size, args.endpoints)?;
        println!();
        println!(
            "| agent (`switchyard run`, {}) | services | endpoints | start to first sync s | RSS after first sync MiB | peak RSS MiB |",
            args.agent_mode
        );
        println!("|---|---:|---:|---:|---:|---:|");
        println!(
            "| manifests directory | {size} | {} | {:.1} | {:.0} | {:.0} |",
            size * args.endpoints,
            m.first_sync_s,
            m.rss_mib,
            m.peak_mib
        );
    }
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

//! The `switchyard` command line. Everything it runs lives in the library crates; this
//! file only parses arguments and wires sources, runner, engines and servers together.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use switchyard_conntrack::{node_cpus, Conntrack, Sysctls};
use switchyard_core::{
    conntrack_table::ConntrackMonitor,
    health::{serve_healthz, serve_metrics, Health},
    manifests::ManifestDir,
    metrics::Metrics,
    runner::{effective_config, ConfigSource, StaleFlowCleaner, SyncRunner},
    ChangeSet, ClusterState, EngineError, NodeModel,
};
use switchyard_crd::Mode;
use switchyard_iptables::Backend as IptBackend;
use switchyard_probe::Probe;

mod explain;
mod registry;

use registry::{capabilities, every_owner, BuildContext, Registry};
use tokio::sync::{watch, Notify};

/// mimalloc hands memory freed after a full rewrite's peak back to the system. At 50k
/// services × 5 endpoints (`switchyard run`, nftables) RSS after the first sync is
/// ≈ 302 MiB (peak ≈ 371 MiB) with it and ≈ 345 MiB with the system allocator.
/// Built without transparent huge pages (the `no_thp` feature: mimalloc does not
/// `madvise(MADV_HUGEPAGE)` its arenas): each first touch zeroed 2 MiB, so a 50k cold
/// start spent ≈ 2 s of CPU clearing pages it partly never used. Measured (three
/// alternating cold starts each, medians, quiet machine): to `/healthz` 200 11.5 → 9.5 s,
/// CPU 9.5 → 7.7 s, peak RSS 661 → 583 MiB, RSS after the first sync 385 → 358 MiB.
/// Its options and the release of freed memory after syncs: `switchyard-allocator`.
#[global_allocator]
static ALLOCATOR: switchyard_allocator::MiMalloc = switchyard_allocator::ALLOCATOR;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A kube-proxy replacement: Services to kernel dataplane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What `run` and `agent` share.
#[derive(clap::Args)]
struct NodeArgs {
    /// This node's name: its Node object gives its IPs, labels and zone (the DaemonSet
    /// passes spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Engine to run, overriding the ProxyConfig's mode (its fallback list still applies).
    #[arg(long)]
    mode: Option<Mode>,
    /// iptables backend: `nft`, `legacy`, or `auto` (the one holding more rules, as
    /// kube-proxy decides).
    #[arg(long, default_value = "auto", value_parser = parse_backend)]
    iptables_backend: IptBackend,
    /// Where bpffs is (or gets) mounted for the eBPF engine's pinned maps and links
    /// (`<DIR>/switchyard`). Default `/sys/fs/bpf`; tests give a private directory.
    #[arg(long, value_name = "DIR")]
    bpffs_root: Option<PathBuf>,
    /// The node's cgroup v2 root as this process sees it, for the eBPF engine's socket
    /// programs when the ProxyConfig sets no `ebpf.cgroupPath` (the chart mounts the
    /// host's at /run/switchyard/cgroupv2: a container's own /sys/fs/cgroup is its cgroup
    /// namespace). Default: the cgroup v2 mount in /proc/self/mountinfo.
    #[arg(long, value_name = "DIR")]
    cgroup_root: Option<PathBuf>,
}

fn parse_backend(s: &str) -> Result<IptBackend, String> {
    match s {
        "nft" => Ok(IptBackend::Nft),
        "legacy" => Ok(IptBackend::Legacy),
        "auto" => Ok(IptBackend::Detect),
        other => Err(format!("{other:?}: expected nft, legacy or auto")),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Standalone node agent: reads Kubernetes manifests from a directory (no API server).
    Run {
        /// Directory of *.yaml/*.yml/*.json manifests (Service, EndpointSlice, Node, ProxyConfig).
        #[arg(long)]
        manifests: PathBuf,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Node agent watching the API server (DaemonSet).
    Agent {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Aggregates ProxyNode status into ProxyConfig status (leader-elected).
    Operator {
        /// Namespace of the leader-election Lease.
        #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
        namespace: String,
        /// This replica's identity in the Lease (default: POD_NAME, else host and pid).
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// Reconcile period.
        #[arg(long, default_value = "2s")]
        period: String,
    },
    /// What this kernel supports, per mode.
    Probe {
        #[arg(long, default_value = "table")]
        output: String,
    },
    /// Removes every table, chain, map and rule Switchyard created on this node.
    Cleanup {
        /// Where the agent's `--bpffs-root` was, if it had one (its eBPF pins live there).
        #[arg(long, value_name = "DIR")]
        bpffs_root: Option<PathBuf>,
    },
    /// Prints the CustomResourceDefinitions.
    Crd,
    /// Explains one service port on this node: its plan, each endpoint's part, what the
    /// active engine's kernel state holds, its conntrack entries, and whether traffic
    /// (from --from) reaches a backend. Exit status 1, with one line why, when not.
    Explain(explain::ExplainArgs),
}

fn main() -> Result<()> {
    switchyard_allocator::tune_for_agent();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // A panic in any thread or task ends the process, loudly: a silently dead watcher or
    // scan thread would leave a "healthy" node that no longer follows its sources. The
    // dataplane keeps its rules; the restarted process picks up from there.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        tracing::error!(panic = %info, "a thread or task panicked: exiting (status 70) so the process is restarted; dataplane rules stay in place");
        std::process::exit(70);
    }));
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run { manifests, node } => runtime.block_on(run_standalone(manifests, node)),
        Command::Cleanup { bpffs_root } => runtime.block_on(cleanup(bpffs_root)),
        Command::Crd => {
            print!("{}", switchyard_crd::crds_yaml());
            Ok(())
        }
        Command::Agent { node } => runtime.block_on(run_agent(node)),
        Command::Operator {
            namespace,
            identity,
            period,
        } => runtime.block_on(run_operator(namespace, identity, period)),
        Command::Probe { output } => probe_command(&output),
        Command::Explain(args) => {
            if !runtime.block_on(explain::run(args))? {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// Deletes stale UDP conntrack flows over netlink, as upstream kube-proxy does.
struct UdpFlowCleaner(Conntrack);

impl StaleFlowCleaner for UdpFlowCleaner {
    fn clean(&mut self, changes: &ChangeSet, new: &NodeModel) -> Result<usize, EngineError> {
        if switchyard_conntrack::stale_flow_filters(changes, new).is_empty() {
            return Ok(0);
        }
        tokio::task::block_in_place(|| self.0.clean_stale_flows(changes, new))
    }
}

fn probe_command(output: &str) -> Result<()> {
    let report = Probe::new().run(&Mode::ENGINES);
    let caps = capabilities(&report);
    match output {
        "json" => {
            let json = serde_json::json!({ "probe": report, "usable": caps });
            println!("{}", serde_json::to_string_pretty(&json)?);
        }
        "table" => {
            print!("{}", report.table());
            println!();
            println!("{:<10} {:<7} DETAIL", "MODE", "USABLE");
            for c in &caps {
                println!(
                    "{:<10} {:<7} {}",
                    c.mode,
                    if c.available { "yes" } else { "no" },
                    c.detail
                );
            }
        }
        other => bail!("--output {other:?}: expected table or json"),
    }
    Ok(())
}

/// What both node modes share once their source is feeding `state`: probe, servers,
/// runner, conntrack cleanup; `api` also publishes the ProxyNode status.
struct NodeSide {
    node_name: String,
    iptables_backend: IptBackend,
    bpffs_root: Option<PathBuf>,
    cgroup_root: Option<PathBuf>,
    source: ConfigSource,
    state: Arc<Mutex<ClusterState>>,
    notify: Arc<Notify>,
    metrics: Metrics,
    health: Health,
}

impl NodeSide {
    fn new(args: NodeArgs) -> Self {
        NodeSide {
            node_name: args.node_name,
            iptables_backend: args.iptables_backend,
            bpffs_root: args.bpffs_root,
            cgroup_root: args.cgroup_root,
            source: ConfigSource {
                mode_override: args.mode,
            },
            state: Arc::new(Mutex::new(ClusterState::default())),
            notify: Arc::new(Notify::new()),
            metrics: Metrics::new(),
            health: Health::new(switchyard_crd::EffectiveConfig::default().sync_period),
        }
    }

    async fn run(self, origin: String, api: Option<kube::Client>) -> Result<()> {
        let config = {
            let state = self.state.lock().expect("state lock");
            if state.node(&self.node_name).is_none() {
                tracing::warn!(node = %self.node_name, "no Node object for this node yet: NodePorts have no default address until it appears");
            }
            effective_config(&state, &self.node_name, &self.source).config
        };
        let probe = ipvs_module_loading(Probe::new(), &config);
        let report = tokio::task::spawn_blocking(move || probe.run(&Mode::ENGINES)).await?;
        let caps = capabilities(&report);
        for c in &caps {
            tracing::info!(mode = %c.mode, usable = c.available, detail = %c.detail, "probe");
        }
        if !switchyard_model::kernel_has_ipv6() {
            // As kube-proxy on such a node: single-stack, said once, loudly.
            tracing::warn!(
                "this kernel has no IPv6 (booted with ipv6.disable=1: no /proc/sys/net/ipv6): \
                 programming IPv4 only; IPv6 Service addresses and endpoints are not served \
                 on this node"
            );
        }
        tracing::info!(
            requested = %config.mode,
            node = %self.node_name,
            source = %origin,
            healthz = %config.healthz_bind_address,
            metrics = %config.metrics_bind_address,
            "switchyard running"
        );
        let health = self.health.clone();
        tokio::spawn(release_memory_after_syncs(health.clone()));
        spawn_server(
            "healthz",
            serve_healthz(config.healthz_bind_address, health.clone()),
        );
        spawn_server(
            "metrics",
            serve_metrics(config.metrics_bind_address, self.metrics.clone()),
        );

        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            let _ = stop_tx.send(true);
        });
        // The ProxyConfig `conntrack` block, applied and watched beside the runner.
        let conntrack = ConntrackMonitor::new(
            Sysctls::host(),
            node_cpus(std::path::Path::new("/sys")),
            self.state.clone(),
            self.node_name.clone(),
            self.source.clone(),
            self.metrics.clone(),
        );
        let conntrack_status = conntrack.status();
        tokio::spawn(conntrack.run(stop_rx.clone()));
        let runner = SyncRunner::new(
            Arc::new(Registry {
                ctx: BuildContext {
                    iptables_backend: self.iptables_backend,
                    bpffs_root: self.bpffs_root.clone(),
                    cgroup_root: self.cgroup_root.clone(),
                },
            }),
            caps,
            self.state,
            self.notify,
            self.node_name.clone(),
            self.source,
            health,
            self.metrics,
        );
        let runner = match Conntrack::open() {
            Ok(ct) => runner.with_stale_flow_cleaner(Box::new(UdpFlowCleaner(ct))),
            Err(e) => {
                tracing::warn!(error = %e, "cannot open conntrack over netlink: stale UDP flows will not be cleaned");
                runner
            }
        };
        if let Some(client) = api {
            tokio::spawn(switchyard_agent::publish_status(
                client,
                self.node_name,
                runner.status(),
                conntrack_status,
            ));
        }
        runner.run(stop_rx).await;
        Ok(())
    }
}

/// Hands the memory a sync freed back to the system once the sync is over (at most once
/// a second, so a burst of small syncs costs one collection): a full sync's transient
/// peak (the render, the netlink batch, the old record) would otherwise stay resident
/// while the agent sits idle, since mimalloc only purges when asked or when allocating.
/// At 50k services a collection takes 0.1-18 ms (BENCHMARKS.md, "Agent memory at 50k").
async fn release_memory_after_syncs(health: Health) {
    let mut seen = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let last = health.verdict().last_updated;
        if last != seen {
            seen = last;
            let started = std::time::Instant::now();
            switchyard_allocator::release_free_memory();
            tracing::debug!(took = ?started.elapsed(), "freed memory handed back after a sync");
        }
    }
}

/// A node whose config asks for IPVS (as its mode or a fallback) loads the modules
/// first, as kube-proxy does, so a node whose `ip_vs` is loadable but not loaded is
/// not reported without it; a module that will not load is named with modprobe's
/// error in the probe's findings (and so in the fallback's reason).
fn ipvs_module_loading(probe: Probe, config: &switchyard_crd::EffectiveConfig) -> Probe {
    if config.mode != Mode::Ipvs && !config.fallback.contains(&Mode::Ipvs) {
        return probe;
    }
    let scheduler = config.ipvs.scheduler.as_str();
    tracing::info!(
        scheduler,
        "loading kernel modules ip_vs, ip_vs_{scheduler} and nf_conntrack before probing (the config asks for ipvs)"
    );
    probe.load_ipvs_modules(scheduler)
}

async fn run_standalone(dir: PathBuf, args: NodeArgs) -> Result<()> {
    let node = NodeSide::new(args);
    // No sync (so no rule is touched) before the directory has been read completely.
    ManifestDir::new(&dir, node.metrics.clone())
        .follow(
            node.state.clone(),
            node.notify.clone(),
            Duration::from_millis(200),
            &node.health.liveness(),
        )
        .first_read()
        .await?;
    node.run(format!("manifests {}", dir.display()), None).await
}

async fn run_agent(args: NodeArgs) -> Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the API server (in-cluster config or KUBECONFIG)")?;
    let node = NodeSide::new(args);
    let mut ready = switchyard_agent::follow_cluster(
        client.clone(),
        &node.node_name,
        node.state.clone(),
        node.notify.clone(),
        node.metrics.clone(),
    );
    tracing::info!("waiting for the initial lists of Services, EndpointSlices, the Node and ProxyConfigs (no rule is touched before)");
    while !*ready.borrow_and_update() {
        ready.changed().await.context("watchers stopped")?;
    }
    node.run("API server".to_string(), Some(client)).await
}

async fn run_operator(namespace: String, identity: Option<String>, period: String) -> Result<()> {
    let period = switchyard_crd::parse_duration(&period).context("--period")?;
    let identity = identity.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let client = kube::Client::try_default()
        .await
        .context("connecting to the API server (in-cluster config or KUBECONFIG)")?;
    tracing::info!(%identity, %namespace, "switchyard operator running");
    tokio::select! {
        _ = switchyard_operator::run(client, identity, namespace, period) => {}
        _ = wait_for_signal() => tracing::info!("stopping"),
    }
    Ok(())
}

fn spawn_server(
    what: &'static str,
    server: impl std::future::Future<Output = std::io::Result<()>> + Send + 'static,
) {
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(server = what, error = %e, "server stopped; the dataplane is unaffected");
        }
    });
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn cleanup(bpffs_root: Option<PathBuf>) -> Result<()> {
    let mut engines = every_owner(&BuildContext {
        iptables_backend: IptBackend::Detect,
        bpffs_root,
        cgroup_root: None,
    });
    let mut failures = Vec::new();
    for engine in &mut engines {
        match engine.cleanup().await {
            Ok(()) => tracing::info!(mode = %engine.mode(), "removed"),
            Err(e) => failures.push(format!("{}: {e}", engine.mode())),
        }
    }
    if !failures.is_empty() {
        bail!("cleanup incomplete: {}", failures.join("; "));
    }
    tracing::info!("removed every table, chain and rule Switchyard made");
    Ok(())
}

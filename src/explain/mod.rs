//! `switchyard explain`: for one service port on this node, the plan (VIPs, targets,
//! masquerade, firewall, affinity), each endpoint's part in it, what the active
//! engine's kernel state holds for it (read back by the engine, compared with what it
//! would write), the conntrack entries to its addresses, and whether traffic (from
//! `--from`) reaches a backend. The exit status is 1, with one line saying why, when
//! it would not, or when the kernel disagrees with the plan.
//!
//! - [`target`]: SERVICE | VIP:PORT[/PROTO] resolved to a service port;
//! - [`active`]: which engine runs, asked of the agent's metrics endpoint;
//! - [`report`]: the text and JSON forms.
//!
//! Inputs are read once, as the agent reads them: `--manifests DIR` with core's
//! manifest loader, else the API server (in-cluster or a kubeconfig) with the agent's
//! watchers, stopped after their first lists.

pub mod active;
pub mod report;
pub mod target;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::{bail, Context, Result};
use switchyard_conntrack::{Conntrack, Flow};
use switchyard_core::{
    manifests::ManifestDir,
    metrics::Metrics,
    runner::{effective_config, ConfigSource},
    state::model_config,
    ClusterState, NodeModel,
};
use switchyard_crd::{EffectiveConfig, Mode};
use switchyard_iptables::Backend as IptBackend;
use switchyard_model::{
    explain::{explain_port, PortExplanation},
    reach::{self, Destination, Outcome, SourceClass},
    IpFamily, PortInspection, ServicePortName,
};

use crate::registry::{BuildContext, ENGINES};

#[derive(clap::Args)]
pub struct ExplainArgs {
    /// `namespace/name[:port]` or `VIP:PORT[/PROTO]` (`[v6]:PORT` for IPv6).
    target: String,
    /// Say whether traffic from this address reaches a backend (exit 1 when not).
    #[arg(long, value_name = "IP")]
    from: Option<IpAddr>,
    /// Read the manifests the standalone agent reads (no API server).
    #[arg(long, value_name = "DIR", conflicts_with = "kubeconfig")]
    manifests: Option<PathBuf>,
    /// A kubeconfig file (default: in-cluster config, else $KUBECONFIG or ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// This node's name (default: $NODE_NAME, as the agent, else the hostname).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// `text` or `json`.
    #[arg(short = 'o', long, default_value = "text")]
    output: String,
    /// Read back this engine's state instead of asking the agent which one runs.
    #[arg(long)]
    mode: Option<Mode>,
    /// The agent's metrics address (default: the ProxyConfig's metricsBindAddress, an
    /// unspecified address read as loopback).
    #[arg(long, value_name = "ADDR")]
    metrics_address: Option<SocketAddr>,
    /// iptables backend to read: `nft`, `legacy`, or `auto`.
    #[arg(long, default_value = "auto", value_parser = crate::parse_backend)]
    iptables_backend: IptBackend,
    /// Where bpffs is mounted for the eBPF engine's pins (as `run --bpffs-root`).
    #[arg(long, value_name = "DIR")]
    bpffs_root: Option<PathBuf>,
}

/// The engine whose state was read, how it was chosen, and what it found.
pub struct EngineReading {
    pub mode: Option<Mode>,
    /// How the active engine was found (the agent's metrics, the kernel, `--mode`).
    pub how: String,
    pub inspection: Result<PortInspection, String>,
}

/// Whether traffic from `--from` reaches a backend, per destination.
pub struct FromReport {
    pub source: IpAddr,
    pub class: SourceClass,
    pub outcomes: Vec<(Destination, Outcome)>,
}

/// Everything `explain` tells.
pub struct Explanation {
    pub node: String,
    pub input: String,
    pub name: ServicePortName,
    pub port: PortExplanation,
    pub engine: EngineReading,
    pub conntrack: Result<Vec<Flow>, String>,
    pub from: Option<FromReport>,
    /// Why traffic would not reach a backend or the kernel disagrees; `None`: fine.
    pub failure: Option<String>,
}

/// Runs the command; `Ok(false)` when the exit status must be 1 (the reason printed).
pub async fn run(args: ExplainArgs) -> Result<bool> {
    if !matches!(args.output.as_str(), "text" | "json") {
        bail!("-o {:?}: expected text or json", args.output);
    }
    let asked = target::parse(&args.target)?;
    let node = match &args.node_name {
        Some(n) => n.clone(),
        None => hostname()?,
    };
    let (state, input) = load_state(&args, &node).await?;
    let config = effective_config(&state, &node, &ConfigSource::default()).config;
    let facts = state.node_facts(&node);
    let model = NodeModel::build(&state, &facts, &model_config(&config));
    let (name, asked_destination) = target::resolve(&model, &asked)?;
    let port = explain_port(&state, &facts, &model_config(&config), &name)
        .context("the service port vanished between two reads of the same state")?;
    let destinations = reach::destinations(&model, &port.plan);
    let local = local_addresses();
    let engine = read_engine(&args, &config, &model, &name).await;
    let conntrack = conntrack_entries(&destinations, &port.plan.protocol);
    let from = args.from.map(|source| {
        let class = reach::classify(&model, &local, source);
        from_report(&port, source, class, asked_destination, &destinations)
    });
    let failure = failure(&port, from.as_ref(), &engine);
    let explanation = Explanation {
        node,
        input,
        name,
        port,
        engine,
        conntrack,
        from,
        failure,
    };
    match args.output.as_str() {
        "json" => println!(
            "{}",
            serde_json::to_string_pretty(&report::json(&explanation))?
        ),
        _ => print!("{}", report::text(&explanation)),
    }
    if let Some(reason) = &explanation.failure {
        eprintln!("{reason}");
        return Ok(false);
    }
    Ok(true)
}

/// What happens to traffic from `source` to the destination asked about, or to every
/// destination of the source's family when a Service was asked about.
fn from_report(
    port: &PortExplanation,
    source: IpAddr,
    class: SourceClass,
    asked: Option<Destination>,
    destinations: &[Destination],
) -> FromReport {
    let asked: Vec<Destination> = match asked {
        Some(d) => vec![d],
        None => destinations
            .iter()
            .copied()
            .filter(|d| IpFamily::of(&d.addr) == IpFamily::of(&source))
            .collect(),
    };
    let outcomes = asked
        .into_iter()
        .map(|d| (d, reach::reach(&port.plan, class, source, &d)))
        .collect();
    FromReport {
        source,
        class,
        outcomes,
    }
}

/// The one-line reason for a non-zero exit: traffic first, then the kernel.
fn failure(
    port: &PortExplanation,
    from: Option<&FromReport>,
    engine: &EngineReading,
) -> Option<String> {
    let traffic = match from {
        Some(f) if f.outcomes.is_empty() => Some(format!(
            "from {} ({}): the service has no address of this family",
            f.source, f.class
        )),
        Some(f) => f
            .outcomes
            .iter()
            .find(|(_, o)| !o.reaches())
            .map(|(d, o)| format!("from {} ({}) to {d}: {o}", f.source, f.class)),
        None => reach::no_endpoints(&port.plan),
    };
    traffic.or_else(|| match &engine.inspection {
        Err(e) => Some(format!("cannot read the kernel's state: {e}")),
        Ok(i) if !i.agrees() => Some(format!(
            "the kernel ({}) disagrees with the plan: {}{}",
            i.owner,
            i.disagreements[0],
            match i.disagreements.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            }
        )),
        Ok(_) => None,
    })
}

fn hostname() -> Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("no --node-name nor NODE_NAME, and the hostname cannot be read")?;
    Ok(name.trim().to_lowercase())
}

/// The cluster state, read once; and a description of where from.
async fn load_state(args: &ExplainArgs, node: &str) -> Result<(ClusterState, String)> {
    if let Some(dir) = &args.manifests {
        let state = Mutex::new(ClusterState::default());
        let scan = ManifestDir::new(dir, Metrics::new()).scan(&state);
        if let Some(why) = scan.incomplete {
            bail!("--manifests {}: {why}", dir.display());
        }
        let state = state.into_inner().expect("not shared");
        return Ok((state, format!("manifests {}", dir.display())));
    }
    let client = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            let config = kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .with_context(|| format!("--kubeconfig {}", path.display()))?;
            kube::Client::try_from(config)?
        }
        None => kube::Client::try_default()
            .await
            .context("connecting to the API server (in-cluster config or KUBECONFIG); or give --manifests DIR")?,
    };
    let state = Arc::new(Mutex::new(ClusterState::default()));
    let mut ready = switchyard_agent::follow_cluster(
        client,
        node,
        state.clone(),
        Arc::new(tokio::sync::Notify::new()),
        Metrics::new(),
    );
    let wait = async {
        while !*ready.borrow_and_update() {
            ready.changed().await.context("watchers stopped")?;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), wait)
        .await
        .context("the API server's lists did not arrive within 30 s")??;
    let state = state.lock().expect("state lock").clone();
    Ok((state, "API server".to_string()))
}

/// The node's interface addresses (for telling the node's own traffic apart); empty
/// when they cannot be read.
fn local_addresses() -> Vec<IpAddr> {
    use switchyard_netlink::{rtnetlink::Rtnl, Netns};
    let Ok(mut rtnl) = Rtnl::open(&Netns::Current) else {
        return Vec::new();
    };
    let links = rtnl.links().unwrap_or_default();
    links
        .iter()
        .flat_map(|l| rtnl.addresses(l.index).unwrap_or_default())
        .map(|a| a.addr)
        .collect()
}

/// Reads the port back from the active engine's kernel state: the engine the agent
/// reports (or `--mode`), else the one whose state holds the port.
async fn read_engine(
    args: &ExplainArgs,
    config: &EffectiveConfig,
    model: &NodeModel,
    name: &ServicePortName,
) -> EngineReading {
    let ctx = BuildContext {
        iptables_backend: args.iptables_backend,
        bpffs_root: args.bpffs_root.clone(),
        cgroup_root: None,
    };
    let (mode, how) = match args.mode {
        Some(mode) => (Ok(mode), "--mode".to_string()),
        None => {
            let addr = args.metrics_address.unwrap_or_else(|| {
                let mut a = config.metrics_bind_address;
                if a.ip().is_unspecified() {
                    a.set_ip(if a.is_ipv4() {
                        IpAddr::from([127, 0, 0, 1])
                    } else {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    });
                }
                a
            });
            match active::ask_agent(addr).await {
                Ok(mode) => (Ok(mode), format!("the agent's metrics at {addr}")),
                Err(why) => (Err(()), why),
            }
        }
    };
    let Ok(mode) = mode else {
        return from_kernel(&ctx, config, model, name, how).await;
    };
    let Some(entry) = ENGINES.iter().find(|e| e.mode == mode) else {
        return EngineReading {
            mode: Some(mode),
            how,
            inspection: Err(format!("this binary has no {mode} engine")),
        };
    };
    let mut engine = (entry.build)(&ctx, config);
    EngineReading {
        mode: Some(mode),
        how,
        inspection: engine.inspect(model, name).await.map_err(|e| e.to_string()),
    }
}

/// No agent answered: the engine whose kernel state holds objects of the port (each
/// engine built as the agent builds it from this config, so it reads the same state).
async fn from_kernel(
    ctx: &BuildContext,
    config: &EffectiveConfig,
    model: &NodeModel,
    name: &ServicePortName,
    why: String,
) -> EngineReading {
    let mut errors = Vec::new();
    for entry in ENGINES {
        let mut engine = (entry.build)(ctx, config);
        match engine.inspect(model, name).await {
            Ok(i) if !i.objects.is_empty() => {
                return EngineReading {
                    mode: Some(engine.mode()),
                    how: format!(
                        "the kernel: {} state holds this port (no agent answered: {why})",
                        i.owner
                    ),
                    inspection: Ok(i),
                }
            }
            Ok(_) => {}
            Err(e) => errors.push(format!("{}: {e}", engine.owner())),
        }
    }
    let mut detail = String::from("no engine's kernel state holds this service port");
    if !errors.is_empty() {
        detail.push_str(&format!(" (unreadable: {})", errors.join("; ")));
    }
    EngineReading {
        mode: None,
        how: format!("the kernel (no agent answered: {why})"),
        inspection: Err(detail),
    }
}

/// Conntrack entries whose original destination is one of the port's destinations.
fn conntrack_entries(
    destinations: &[Destination],
    protocol: &switchyard_model::Protocol,
) -> Result<Vec<Flow>, String> {
    let mut ct = Conntrack::open().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        if !destinations.iter().any(|d| IpFamily::of(&d.addr) == family) {
            continue;
        }
        let flows = ct.flows(family).map_err(|e| e.to_string())?;
        out.extend(flows.into_iter().filter(|f| {
            f.original.protocol == protocol.number()
                && destinations
                    .iter()
                    .any(|d| d.addr == f.original.dst && d.port == f.original.dst_port)
        }));
    }
    Ok(out)
}

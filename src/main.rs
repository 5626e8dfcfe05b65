//! The `switchyard` command line. Everything it runs lives in the library crates; this
//! file only parses arguments and wires sources, runner, engines and servers together.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use kube::CustomResourceExt;
use switchyard_core::{
    health::{serve_healthz, serve_metrics, Health},
    manifests::ManifestDir,
    metrics::{Metrics, ModeLabel},
    runner::{effective_config, ConfigSource, SyncRunner},
    ClusterState, ProxyEngine,
};
use switchyard_crd::{Mode, ProxyConfig};
use switchyard_nftables::{NftOptions, NftablesEngine};
use tokio::sync::{watch, Notify};

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

#[derive(Subcommand)]
enum Command {
    /// Standalone node agent: reads Kubernetes manifests from a directory (no API server).
    Run {
        /// Directory of *.yaml/*.yml/*.json manifests (Service, EndpointSlice, Node, ProxyConfig).
        #[arg(long)]
        manifests: PathBuf,
        /// This node's name (its Node object gives its IPs and labels).
        #[arg(long)]
        node_name: String,
        /// Engine to run, overriding the ProxyConfig's mode.
        #[arg(long)]
        mode: Option<Mode>,
    },
    /// Node agent watching the API server (DaemonSet).
    Agent {
        #[arg(long)]
        node_name: String,
    },
    /// Aggregates ProxyNode status into ProxyConfig status.
    Operator,
    /// What this kernel supports, per mode.
    Probe {
        #[arg(long, default_value = "table")]
        output: String,
    },
    /// Removes every table, chain, map and rule Switchyard created on this node.
    Cleanup,
    /// Prints the CustomResourceDefinitions.
    Crd,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run {
            manifests,
            node_name,
            mode,
        } => runtime.block_on(run_standalone(manifests, node_name, mode)),
        Command::Cleanup => runtime.block_on(cleanup()),
        Command::Crd => {
            print!("{}", serde_yaml::to_string(&ProxyConfig::crd())?);
            Ok(())
        }
        Command::Agent { .. } => bail!(
            "`switchyard agent` (API-server source) is not built yet; use `switchyard run --manifests DIR` for now"
        ),
        Command::Operator => bail!("`switchyard operator` is not built yet"),
        Command::Probe { .. } => bail!("`switchyard probe` is not built yet"),
    }
}

/// The engine for `mode`, or an error saying why it cannot run here.
fn build_engine(mode: Mode) -> Result<Box<dyn ProxyEngine>> {
    match mode {
        Mode::Nftables | Mode::Auto => Ok(Box::new(NftablesEngine::new(NftOptions::default()))),
        Mode::Iptables | Mode::Ipvs | Mode::Ebpf => bail!(
            "the {mode} engine is not built yet (built: nftables); set `mode: nftables` in the ProxyConfig or pass --mode nftables"
        ),
    }
}

async fn run_standalone(dir: PathBuf, node_name: String, mode: Option<Mode>) -> Result<()> {
    if !dir.is_dir() {
        bail!("--manifests {}: not a directory", dir.display());
    }
    let metrics = Metrics::new();
    let state = Arc::new(Mutex::new(ClusterState::default()));
    let notify = Arc::new(Notify::new());
    let source = ConfigSource {
        mode_override: mode,
    };
    ManifestDir::new(&dir, metrics.clone()).follow(
        state.clone(),
        notify.clone(),
        Duration::from_millis(200),
    );
    let config = {
        let state = state.lock().expect("state lock");
        if state.node(&node_name).is_none() {
            tracing::warn!(node = %node_name, "no Node object for this node in the manifests yet: NodePorts have no default address until it appears");
        }
        effective_config(&state, &node_name, &source)
    };
    let engine = build_engine(config.mode)?;
    metrics
        .active_engine
        .get_or_create(&ModeLabel {
            mode: engine.mode().to_string(),
        })
        .set(1);
    tracing::info!(
        mode = %engine.mode(),
        requested = %config.mode,
        node = %node_name,
        manifests = %dir.display(),
        healthz = %config.healthz_bind_address,
        metrics = %config.metrics_bind_address,
        "switchyard running"
    );
    let health = Health::new(config.sync_period);
    spawn_server(
        "healthz",
        serve_healthz(config.healthz_bind_address, health.clone()),
    );
    spawn_server(
        "metrics",
        serve_metrics(config.metrics_bind_address, metrics.clone()),
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop_tx.send(true);
    });
    let runner = SyncRunner::new(engine, state, notify, node_name, source, health, metrics);
    runner.run(stop_rx).await;
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

async fn cleanup() -> Result<()> {
    let mut engine = NftablesEngine::new(NftOptions::default());
    engine
        .cleanup()
        .await
        .context("removing the nftables tables")?;
    tracing::info!("removed Switchyard's nftables tables (iptables, IPVS and eBPF engines are not built yet, so nothing of theirs exists)");
    Ok(())
}

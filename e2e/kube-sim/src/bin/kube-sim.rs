//! `kube-sim --port N --kubeconfig PATH`: runs the simulator until killed.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use switchyard_kube_sim::{KubeSim, Options};

/// Kubernetes API server simulator (plain HTTP on 127.0.0.1).
#[derive(Parser, Debug)]
#[command(name = "kube-sim")]
struct Args {
    /// Port to listen on (0 = ephemeral).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Write a kubeconfig pointing at the simulator here.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Objects (multi-document YAML files) to load at start.
    #[arg(long = "load")]
    load: Vec<PathBuf>,
    /// Watch events kept for resuming watches.
    #[arg(long, default_value_t = 1000)]
    history: usize,
    /// Seconds between watch bookmarks.
    #[arg(long, default_value_t = 10)]
    bookmark_seconds: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let options = Options {
        history: args.history,
        bookmark_interval: Duration::from_secs(args.bookmark_seconds.max(1)),
    };
    let sim = KubeSim::start_with(args.port, options).await?;
    for f in &args.load {
        let text = std::fs::read_to_string(f)?;
        sim.apply_yaml(&text)?;
    }
    if let Some(path) = &args.kubeconfig {
        sim.write_kubeconfig(path)?;
    }
    println!("kube-sim listening on {}", sim.url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}

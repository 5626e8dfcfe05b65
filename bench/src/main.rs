//! `switchyard-bench`: measures what the issues set goals for, on a real kernel inside
//! private network namespaces (never the host's rules):
//!
//! - per engine and size: a full sync from empty, and a one-endpoint change (engine
//!   apply alone, and the whole pipeline: state update, model build, diff, apply);
//! - the real agent's resident memory after its first sync at the largest size.
//!
//! Figures are medians of `--runs` runs; the machine is small and noisy, so the table
//! also gives the minimum and maximum.

mod cluster;
mod netns;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use switchyard_core::{ChangeSet, NodeModel, ProxyEngine};
use switchyard_crd::{EffectiveConfig, Mode};
use switchyard_nftables::{NftOptions, NftablesEngine};

use crate::{cluster::SyntheticCluster, netns::Netns};

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
    #[arg(long, value_delimiter = ',', default_value = "nftables")]
    engines: Vec<Mode>,
    /// The switchyard binary, for the agent memory figure (skipped when absent).
    #[arg(long)]
    agent: Option<PathBuf>,
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

fn engine_for(mode: Mode, ns: &Netns) -> Result<Box<dyn ProxyEngine>> {
    match mode {
        Mode::Nftables => Ok(Box::new(NftablesEngine::new(NftOptions {
            netns: Some(ns.name().to_string()),
            ..NftOptions::default()
        }))),
        other => bail!("no {other} engine to benchmark yet"),
    }
}

struct Row {
    mode: Mode,
    services: usize,
    endpoints: usize,
    model_build: Stats,
    full_sync: Stats,
    one_endpoint_engine: Stats,
    one_endpoint_pipeline: Stats,
}

async fn measure(mode: Mode, services: usize, per_service: usize, runs: usize) -> Result<Row> {
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
        model = NodeModel::build(&state, cluster::NODE, &config);
        build.push(t.elapsed());
    }
    let mut full = Vec::new();
    let mut engine_one = Vec::new();
    let mut pipeline_one = Vec::new();
    for run in 0..runs {
        let ns = Netns::new(&format!("bench-{run}"))?;
        let mut engine = engine_for(mode, &ns)?;
        let t = Instant::now();
        engine
            .sync(&model, &ChangeSet::full(&model))
            .await
            .context("full sync")?;
        full.push(t.elapsed());

        // One endpoint of one service changes address (a pod replaced).
        let mut applied = model.clone();
        for step in 0..3 {
            let which = (run * 7919 + step * 104729) % services;
            let t = Instant::now();
            state.upsert(cluster.slice_with_replaced_endpoint(which, run * 3 + step));
            let next = NodeModel::build(&state, cluster::NODE, &config);
            let changes = ChangeSet::between(&applied, &next);
            if changes.len() != 1 {
                bail!("expected one changed service port, got {}", changes.len());
            }
            let te = Instant::now();
            engine
                .sync(&next, &changes)
                .await
                .context("one-endpoint sync")?;
            engine_one.push(te.elapsed());
            pipeline_one.push(t.elapsed());
            applied = next;
        }
        engine.cleanup().await.context("cleanup")?;
    }
    Ok(Row {
        mode,
        services,
        endpoints: services * per_service,
        model_build: Stats::of(build),
        full_sync: Stats::of(full),
        one_endpoint_engine: Stats::of(engine_one),
        one_endpoint_pipeline: Stats::of(pipeline_one),
    })
}

/// Starts the real agent on `services` services in a namespace; returns (seconds to
/// first sync, RSS MiB after it).
fn agent_memory(agent: &PathBuf, services: usize, per_service: usize) -> Result<(f64, f64)> {
    let ns = Netns::new("bench-agent")?;
    let dir = std::env::temp_dir().join(format!("sy-bench-manifests-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let cluster = SyntheticCluster::new(services, per_service);
    cluster.write_manifests(&dir)?;
    let log = dir.with_extension("log");
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(agent)
        .args(["run", "--manifests"])
        .arg(&dir)
        .args(["--node-name", cluster::NODE, "--mode", "nftables"])
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
        let kib: f64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .context("VmRSS missing")?
            .parse()?;
        Ok((first_sync, kib / 1024.0))
    })();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&log);
    result
}

fn main() -> Result<()> {
    let args = Args::parse();
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
            let row = runtime.block_on(measure(mode, size, args.endpoints, args.runs))?;
            rows.push(row);
        }
    }
    println!("| engine | services | endpoints | model build ms | full sync from empty ms | one-endpoint change: engine ms | one-endpoint change: whole pipeline ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.mode,
            r.services,
            r.endpoints,
            r.model_build.cell(),
            r.full_sync.cell(),
            r.one_endpoint_engine.cell(),
            r.one_endpoint_pipeline.cell()
        );
    }
    if let Some(agent) = &args.agent {
        let size = *args.sizes.iter().max().unwrap_or(&1000);
        eprintln!("measuring the agent's memory at {size} services ...");
        let (first, rss) = agent_memory(agent, size, args.endpoints)?;
        println!();
        println!("| agent (`switchyard run`, nftables) | services | endpoints | start to first sync s | RSS after first sync MiB |");
        println!("|---|---:|---:|---:|---:|");
        println!(
            "| manifests directory | {size} | {} | {first:.1} | {rss:.0} |",
            size * args.endpoints
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

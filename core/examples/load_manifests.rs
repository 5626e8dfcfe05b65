//! Times reading a manifests directory into the cluster state and building the model
//! from it: where a cold start's seconds go before the first sync (`cargo run --release
//! -p switchyard-core --example load_manifests DIR`).

use std::{sync::Mutex, time::Instant};

use switchyard_core::{
    manifests::ManifestDir, metrics::Metrics, state::model_config, ClusterState, NodeModel,
};
use switchyard_crd::EffectiveConfig;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let dir = std::env::args().nth(1).expect("usage: load_manifests DIR");
    let file = std::path::Path::new(&dir).join("all.json");
    if file.exists() {
        let t = Instant::now();
        let text = std::fs::read_to_string(&file).unwrap();
        let read = t.elapsed();
        let t = Instant::now();
        let parsed = switchyard_core::manifests::parse_text(&file, &text).unwrap();
        eprintln!(
            "read {read:?}, parse+decode+validate {:?} ({} objects)",
            t.elapsed(),
            parsed.objects.len()
        );
    }
    let state = Mutex::new(ClusterState::default());
    let start = Instant::now();
    let mut source = ManifestDir::new(&dir, Metrics::new());
    source.scan(&state);
    let read = start.elapsed();
    let state = state.into_inner().unwrap();
    let t = Instant::now();
    let model = NodeModel::build(
        &state,
        &state.node_facts("test-node"),
        &model_config(&EffectiveConfig::default()),
    );
    eprintln!(
        "read + state {read:?} ({} services), model {:?} ({} ports), RSS {:.0} MiB",
        state.service_count(),
        t.elapsed(),
        model.services.len(),
        rss_mib()
    );
}

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

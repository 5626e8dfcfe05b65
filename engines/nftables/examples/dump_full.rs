//! Prints the full-sync `nft -f` input for a synthetic model of N services × 5
//! endpoints, and how long rendering took on stderr: a profiling aid for the full sync
//! (`cargo run --release -p switchyard-nftables --example dump_full 50000 > full.nft`,
//! then time `nft -f full.nft` inside a throwaway network namespace).

use std::time::Instant;

// The agent's allocator, so the figure is the agent's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let services: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let model = switchyard_model::test_util::big_model(services, 5);
    let before = rss_mib();
    let start = Instant::now();
    let (pieces, record) =
        switchyard_nftables::full::render_full_pieces(&model, &Default::default(), true);
    let took = start.elapsed();
    for piece in &pieces {
        print!("{piece}");
    }
    drop(pieces);
    eprintln!(
        "rendered {services} services in {took:?}; RSS {before:.0} MiB with the model, \
         {:.0} MiB with the engine's record ({} rules)",
        rss_mib(),
        record.rule_count()
    );
}

/// This process's resident set, MiB.
fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

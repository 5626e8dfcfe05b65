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
    let model = switchyard_core::test_util::big_model(services, 5);
    let start = Instant::now();
    let (text, _) = switchyard_nftables::render::render_full_with_record(&model);
    eprintln!(
        "rendered {services} services: {} bytes in {:?}",
        text.len(),
        start.elapsed()
    );
    print!("{text}");
}

//! The allocator hands freed memory back to the system: measured on this process's own
//! resident set (`/proc/self/statm`), with mimalloc installed as the global allocator as
//! the agent installs it.

#[global_allocator]
static ALLOCATOR: switchyard_allocator::MiMalloc = switchyard_allocator::ALLOCATOR;

/// Small allocations (the shape of the agent's state and records) totalling this much.
const BYTES: usize = 256 << 20;
const BLOCK: usize = 128;

fn resident_mib() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages in /proc/self/statm");
    (pages * 4096) >> 20
}

/// Allocates and touches `BYTES` in `BLOCK`-byte vectors, returns them.
fn fill() -> Vec<Vec<u8>> {
    (0..BYTES / BLOCK).map(|i| vec![i as u8; BLOCK]).collect()
}

/// One test (the options are process-wide): first mimalloc's default purge delay (1 s),
/// where freed memory stays resident until a collection; then the agent's options,
/// where it is returned as it is freed.
#[test]
fn freed_memory_leaves_the_resident_set() {
    let base = resident_mib();
    let blocks = fill();
    let peak = resident_mib();
    assert!(peak >= base + 200, "filled: {base} -> {peak} MiB");
    drop(blocks);
    switchyard_allocator::release_free_memory();
    let released = resident_mib();
    assert!(
        released + 200 <= peak,
        "after release_free_memory: {released} MiB (peak {peak} MiB)"
    );

    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        eprintln!("MIMALLOC_PURGE_DELAY is set: tune_for_agent leaves it, its part is skipped");
        return;
    }
    switchyard_allocator::tune_for_agent();
    let blocks = fill();
    let peak = resident_mib();
    drop(blocks);
    let freed = resident_mib();
    assert!(
        freed + 200 <= peak,
        "with purge_delay 0, freed without a collection: {freed} MiB (peak {peak} MiB)"
    );
}

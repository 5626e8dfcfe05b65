//! The process's allocator: mimalloc, its options set at start, and a way to hand freed
//! memory back to the system once a big transient peak (a first or full sync, decoding
//! the initial manifests or lists) is over.
//!
//! Why this is its own crate: the options and the collection are C calls into mimalloc
//! (`unsafe`), which the rest of the workspace forbids; here one small module makes them.
//!
//! Why the agent needs it: mimalloc (v3) only purges freed memory when an allocation or
//! a collection asks, after its purge delay, so an agent that goes idle after its first
//! sync kept the pages its peak left behind. Measured (50k Services × 5 endpoints,
//! `scripts/agent-start-api.sh`, medians of three cold starts; BENCHMARKS.md "Agent
//! memory at 50k"): RSS after the first sync 253 → 202 MiB (eBPF), 356 → 348 MiB
//! (nftables, whose live heap is larger; its peak 573 → 524 MiB).

mod ffi;

pub use mimalloc::MiMalloc;

/// The global allocator the binaries install (`#[global_allocator]`).
pub const ALLOCATOR: MiMalloc = MiMalloc;

/// Sets mimalloc's options for a long-running agent, before the first big allocation.
/// An option set in the environment (`MIMALLOC_<NAME>`) is left as the operator set it.
///
/// - `purge_delay` 0: memory freed back to an arena is returned to the system at once,
///   instead of after 1 s — and "after 1 s" in practice means at the next allocation or
///   collection after that second, which for an idle agent is never.
pub fn tune_for_agent() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        ffi::set_purge_delay_ms(0);
    }
}

/// Hands the memory the allocator holds but no longer uses back to the system: the
/// calling thread's free pages and every arena's unused ranges (process-wide). It walks
/// the calling thread's pages and the arenas: call it after a big transient peak, not
/// per allocation.
pub fn release_free_memory() {
    ffi::collect();
}

//! The nftables dataplane engine: `table ip switchyard` and `table ip6 switchyard`,
//! laid out as upstream kube-proxy's nftables proxier (verdict maps for service IPs and
//! NodePorts, one chain per service port and per endpoint), programmed with one atomic
//! `nft -f -` transaction per sync.
//!
//! This crate owns those two tables and nothing else on the node; it never reads the
//! Kubernetes API and never re-derives service semantics (see `switchyard_core::model`).
//!
//! - [`ruleset`]: table, chain, map and set names; hashed per-service-port chain names.
//! - [`render`]: ruleset text, full (`render_full`) and partial (`render_partial`).
//! - [`record`]: what the engine applied, per family and service port.
//! - [`apply`]: running `nft` (optionally inside a network namespace).
//! - [`verify`]: comparing the kernel's tables with the record (drift).
//! - [`engine`]: `NftablesEngine`, the `ProxyEngine` implementation.
//!
//! # Layout (per family table)
//!
//! Base chains `filter-prerouting|input|forward|output` (priority -110, before DNAT),
//! `filter-output-post-dnat` (-90), `nat-prerouting|output` (-100, jump `services`),
//! `nat-postrouting` (100, jump `masquerading`). Top-level chains: `services`
//! (`service-ips` / `service-nodeports` verdict maps), `masquerading`,
//! `mark-for-masquerade` (mark 0x4000), `reject-chain`, `service-endpoints-check` and
//! `nodeport-endpoints-check` (`no-endpoint-services` / `no-endpoint-nodeports`),
//! `firewall-check` (`firewall-ips`), `cluster-ips-check` (`cluster-ips`). Sets
//! `nodeport-ips` and `cluster-cidrs` (intervals). Per service port: `svc-H`, `local-H`,
//! `ext-H`, `fw-H`, per endpoint `ep-E` (and `aff-E-T` with ClientIP affinity); `H` is a
//! hash of the service port name, so names are stable and safe.
//!
//! # Kernel and tool requirements
//!
//! nft >= 1.0 (hook priorities are written numerically, as 1.0.6 only names `dstnat`
//! for prerouting), a kernel with nf_tables, `fib`, `numgen`, NAT and dynamic sets
//! (>= 5.x). Removing a map element and deleting the chain it pointed to in the same
//! transaction needs kernel >= 6.2 (older kernels refuse it; the sync then fails and the
//! next one is full).
//!
//! # Cost
//!
//! nft 1.0.6 dumps every chain of the host before any `add rule` / `add element`, and
//! the kernel's chain and rule dumps restart their walk for each message, so a partial
//! sync costs time in the total number of chains (not in the size of the change), and a
//! full listing of a large table is slow; see `verify` for how drift checks stay cheap.

pub mod apply;
pub mod engine;
pub mod record;
pub mod render;
pub mod ruleset;
pub mod verify;

pub use engine::{NftOptions, NftablesEngine};
pub use render::{render_full, render_partial, Partial};

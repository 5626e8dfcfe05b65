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

pub mod apply;
pub mod engine;
pub mod record;
pub mod render;
pub mod ruleset;
pub mod verify;

pub use engine::{NftOptions, NftablesEngine};
pub use render::{render_full, render_partial, Partial};

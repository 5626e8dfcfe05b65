//! The iptables dataplane engine: kube-proxy's iptables proxier layout (services
//! dispatch chain, per-service-port chains, external and firewall chains, NodePorts,
//! mark-then-masquerade, REJECT/DROP in `filter`) — minus upstream's chain per endpoint:
//! the service chain DNATs itself and one rule per family masquerades hairpin traffic
//! (`port.rs`, `fixed.rs`) — under the engine's
//! own chains (prefix `SY-` by default), programmed with one
//! `iptables-restore --noflush` transaction per family and sync, on the nft or legacy
//! backend.
//!
//! This crate owns the chains of its prefix in the `nat` and `filter` tables and the
//! jump rules into them, and nothing else: other chains and rules (kube-proxy's `KUBE-`
//! chains, the host firewall, another engine's prefix) are never flushed or rewritten.
//! It never reads the Kubernetes API and decides no Service semantics: it encodes the
//! model's plans (`switchyard_model::plan`).
//!
//! - [`chains`]: the chain prefix, chain names, the jump rules, ownership, comments.
//! - [`port`]: one service port's plan encoded as rules.
//! - [`fixed`]: the fixed chains' rules (node-wide settings only).
//! - [`render`]: restore input, full ([`render_full`]), partial and cleanup.
//! - [`record`]: what the engine applied, per family and service port.
//! - [`backend`]: nft or legacy, detection, binaries.
//! - [`apply`]: running `*-restore`, `*-save`, `-S CHAIN` (optionally inside a netns).
//! - [`verify`]: comparing the kernel with the record (drift); [`inspect`]: one service
//!   port read back and compared with its plan (`switchyard explain`).
//! - [`engine`]: `IptablesEngine`, the `ProxyEngine` implementation.

pub mod apply;
pub mod backend;
pub mod chains;
pub mod engine;
pub mod fixed;
pub mod inspect;
pub mod port;
pub mod record;
pub mod render;
pub mod verify;

pub use backend::{detect_backend, Backend, Binaries};
pub use chains::{ChainPrefix, ChainPrefixError};
pub use engine::{IptOptions, IptablesEngine};
pub use render::{render_full, render_full_shaped, Shape};

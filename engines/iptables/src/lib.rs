//! The iptables dataplane engine: kube-proxy's iptables proxier layout (services
//! dispatch chain, per-service-port and per-endpoint chains, external and firewall
//! chains, NodePorts, mark-then-masquerade, REJECT/DROP in `filter`) under Switchyard's
//! own `SY-` chains, programmed with one `iptables-restore --noflush` transaction per
//! family and sync, on the nft or legacy backend.
//!
//! This crate owns the `SY-` chains of the `nat` and `filter` tables and the jump rules
//! into them, and nothing else: other chains and rules (kube-proxy's `KUBE-` chains,
//! the host firewall) are never flushed or rewritten. It never reads the Kubernetes API
//! and never re-derives service semantics (see `switchyard_core::model`).
//!
//! - [`chains`]: chain names, the fixed layout, jump rules, hashed per-port names,
//!   comment sanitizing.
//! - [`render`]: restore input, full ([`render_full`]) and partial.
//! - [`record`]: what the engine applied, per family and service port.
//! - [`backend`]: nft or legacy, detection, binaries.
//! - [`apply`]: running `*-restore` and `*-save` (optionally inside a netns).
//! - [`verify`]: comparing the kernel with the record (drift).
//! - [`engine`]: `IptablesEngine`, the `ProxyEngine` implementation.

pub mod apply;
pub mod backend;
pub mod chains;
pub mod engine;
pub mod record;
pub mod render;
pub mod verify;

pub use backend::{detect_backend, Backend, Binaries};
pub use engine::{IptOptions, IptablesEngine};
pub use render::{render_full, render_full_shaped, Shape};

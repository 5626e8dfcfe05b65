//! Conntrack cleanup for Switchyard: deletes the kernel's stale UDP conntrack flows when
//! a service port's endpoints change, so UDP clients stop sending to a dead endpoint
//! (or keep being rejected after the service gained one). Semantics follow upstream
//! kube-proxy's `pkg/proxy/conntrack`.
//!
//! - [`filters`]: [`ConntrackFilter`] and [`stale_flow_filters`], the pure part — which
//!   flows a model change makes stale.
//! - [`socket`]: [`Conntrack`], a ctnetlink socket in the caller's network namespace
//!   that lists flows and deletes the ones matching filters.
//! - [`flow`]: [`Flow`] and [`Tuple`], one conntrack entry as the kernel reports it.
//! - [`message`]: the ctnetlink wire format (request encoding, stream decoding).
//! - [`error`]: [`ConntrackError`], what can go wrong.
//!
//! This crate owns no kernel state of its own: it only deletes conntrack entries, and
//! only the ones its caller's filters name. Needs `CAP_NET_ADMIN` and the
//! `nf_conntrack_netlink` module (auto-loaded by the kernel on first use; any kernel
//! with ctnetlink, 2.6.14+, works; `CTA_ID` checks on delete since 2.6.x).

pub mod error;
pub mod filters;
pub mod flow;
pub mod message;
pub mod socket;

pub use error::ConntrackError;
pub use filters::{stale_flow_filters, ConntrackFilter};
pub use flow::{Flow, Tuple};
pub use socket::Conntrack;

//! Conntrack for Switchyard: deletes the kernel's stale UDP conntrack flows when a
//! service port's endpoints change, so UDP clients stop sending to a dead endpoint (or
//! keep being rejected after the service gained one), and sizes the conntrack table.
//! Semantics follow upstream kube-proxy's `pkg/proxy/conntrack` and
//! `cmd/kube-proxy/app/conntrack.go`.
//!
//! - [`filters`]: [`ConntrackFilter`] and [`stale_flow_filters`], the pure part — which
//!   flows a model change makes stale.
//! - [`socket`]: [`Conntrack`], a ctnetlink socket in the caller's network namespace
//!   that lists flows and deletes the ones matching filters.
//! - [`flow`]: [`Flow`] and [`Tuple`], one conntrack entry as the kernel reports it.
//! - [`message`]: the ctnetlink wire format (request encoding, stream decoding).
//! - [`error`]: [`ConntrackError`], what can go wrong.
//! - [`sysctl`]: [`Sysctls`], the table's size and timeouts set from the ProxyConfig
//!   `conntrack` block, each refusal reported; [`TableUsage`], how full the table is.
//!
//! This crate owns no kernel state of its own: it deletes only the conntrack entries its
//! caller's filters name, and writes only the conntrack sysctls its caller's settings
//! name. Needs `CAP_NET_ADMIN` and the
//! `nf_conntrack_netlink` module (auto-loaded by the kernel on first use; any kernel
//! with ctnetlink, 2.6.14+, works; `CTA_ID` checks on delete since 2.6.x).

pub mod error;
pub mod filters;
pub mod flow;
pub mod message;
pub mod socket;
pub mod sysctl;

pub use error::ConntrackError;
pub use filters::{stale_flow_filters, ConntrackFilter};
pub use flow::{Flow, Tuple};
pub use socket::Conntrack;
pub use sysctl::{node_cpus, Refusal, Setting, SysctlError, Sysctls, TableUsage, Tuning};

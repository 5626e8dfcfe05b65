//! Conntrack for Switchyard: deletes the kernel's stale UDP conntrack flows when a
//! service port's endpoints change, so UDP clients stop sending to a dead endpoint (or
//! keep being rejected after the service gained one), and sizes the conntrack table.
//! Semantics follow upstream kube-proxy's `pkg/proxy/conntrack` and
//! `cmd/kube-proxy/app/conntrack.go`.
//!
//! - [`filters`]: [`ConntrackFilter`] and [`stale_flow_filters`], the pure part — which
//!   flows a change of plans makes stale.
//! - [`socket`]: [`Conntrack`], the conntrack table of a network namespace: lists flows
//!   and deletes the ones matching filters ([`Conntrack::clean_stale_flows`] is what the
//!   binary's stale-flow cleaner calls).
//! - [`sysctl`]: [`Sysctls`], the table's size and timeouts set from the ProxyConfig
//!   `conntrack` block, each refusal reported; [`TableUsage`], how full the table is.
//!
//! The ctnetlink wire format, [`Flow`] and [`Tuple`] are the netlink layer's
//! (`switchyard_netlink::ctnetlink`). This crate owns no kernel state of its own: it
//! deletes only the conntrack entries its caller's filters name, and writes only the
//! conntrack sysctls its caller's settings name. Needs `CAP_NET_ADMIN` and the
//! `nf_conntrack_netlink` module (auto-loaded by the kernel on first use; any kernel
//! with ctnetlink, 2.6.14+, works; `CTA_ID` checks on delete since 2.6.x).

pub mod filters;
pub mod socket;
pub mod sysctl;

pub use filters::{stale_flow_filters, ConntrackFilter};
pub use socket::Conntrack;
pub use switchyard_netlink::{
    ctnetlink::{Flow, Tuple},
    NetlinkError,
};
pub use sysctl::{node_cpus, Refusal, Setting, SysctlError, Sysctls, TableUsage, Tuning};

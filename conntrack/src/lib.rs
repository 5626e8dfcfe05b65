//! Conntrack cleanup for Switchyard: deletes the kernel's stale UDP conntrack flows when
//! a service port's endpoints change, so UDP clients stop sending to a dead endpoint
//! (or keep being rejected after the service gained one). Semantics follow upstream
//! kube-proxy's `pkg/proxy/conntrack`.
//!
//! - [`filters`]: [`ConntrackFilter`] and [`stale_flow_filters`], the pure part — which
//!   flows a change of plans makes stale.
//! - [`socket`]: [`Conntrack`], the conntrack table of a network namespace: lists flows
//!   and deletes the ones matching filters ([`Conntrack::clean_stale_flows`] is what the
//!   binary's stale-flow cleaner calls).
//!
//! The ctnetlink wire format, [`Flow`] and [`Tuple`] are the netlink layer's
//! (`switchyard_netlink::ctnetlink`). This crate owns no kernel state of its own: it only
//! deletes conntrack entries, and only the ones its caller's filters name. Needs
//! `CAP_NET_ADMIN` and the `nf_conntrack_netlink` module (auto-loaded by the kernel on
//! first use; any kernel with ctnetlink, 2.6.14+, works; `CTA_ID` checks on delete since
//! 2.6.x).

pub mod filters;
pub mod socket;

pub use filters::{stale_flow_filters, ConntrackFilter};
pub use socket::Conntrack;
pub use switchyard_netlink::{
    ctnetlink::{Flow, Tuple},
    NetlinkError,
};

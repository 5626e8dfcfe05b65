//! The IPVS dataplane engine, in kube-proxy's IPVS layout: a dummy interface
//! (`switchyard-ipvs`) holds every cluster, external and load-balancer IP; one IPVS
//! virtual server per VIP, port and protocol, and per allowed node address for
//! NodePorts, with the configured scheduler, masquerading forward, real servers of
//! weight 1, persistence for ClientIP affinity and graceful termination; and a small
//! nftables helper table (`switchyard-ipvs`) for what IPVS cannot do: masquerading,
//! load-balancer source ranges, Drop and Reject targets, rejecting unallocated
//! cluster-IP ports, and the short circuit of `externalTrafficPolicy: Local` (firewall
//! marks selecting firewall-mark virtual servers).
//!
//! The engine decides no Service semantics: it encodes the model's plans. It owns its
//! interface, its table and the virtual servers it can prove are its own (see
//! [`ownership`]); names are its ownership parameters ([`IpvsOptions`]).
//!
//! - [`wants`]: one plan as the kernel objects it asks for ([`wants::PortWants`]).
//! - [`claims`], [`record`]: which port's claim the kernel holds for objects several
//!   ports ask for, what was applied, and the difference a change makes.
//! - [`servers`]: writing virtual and real servers, graceful termination.
//! - [`helper`]: the helper table (rules, sets, text and netlink encodings).
//! - [`dummy`], [`sysctl`]: the interface, NodePort addresses, kernel settings.
//! - [`connections`]: the connections in flight a retired engine keeps servers for.
//! - [`ownership`], [`verify`], [`cleanup`], [`engine`]: `IpvsEngine`; [`inspect`]: one
//!   service port read back and compared with its plan (`switchyard explain`).
//!
//! # Syncs and their cost
//!
//! A one-endpoint change is one IPVS operation (a real server added, set to weight 0,
//! or deleted), plus one nf_tables element when the endpoint's address is new to the
//! node's hairpin set. A full sync dumps the virtual servers (one request) and the
//! real servers of each wanted one (one request each), and writes only differences.
//!
//! # Kernel requirements
//!
//! `ip_vs` and the scheduler's module (`ip_vs_rr`...), `nf_conntrack` with
//! `net.ipv4.vs.conntrack=1` (set in `prepare`, per network namespace), nf_tables with
//! `ct original`, `fib` and NAT (5.x), the `dummy` link type; `nft` >= 1.0 for full
//! syncs of the helper table.

pub mod claims;
pub mod cleanup;
pub mod connections;
pub mod dummy;
pub mod engine;
pub mod helper;
pub mod inspect;
pub mod options;
pub mod ownership;
pub mod record;
pub mod servers;
pub mod sysctl;
pub mod verify;
pub mod wants;

pub use engine::IpvsEngine;
pub use options::IpvsOptions;
pub use servers::Scheduler;

//! The one netlink layer of Switchyard: every conversation with the kernel over
//! netlink goes through here (nf_tables partial and full syncs, conntrack cleanup, the
//! probe's family lookups, IPVS and its dummy interface).
//!
//! - [`socket`]: [`NetlinkSocket`], a socket in the current or a named network
//!   namespace; send/receive with `EINTR` retry and a timeout, sequence numbers, and the
//!   request/answer/acknowledgement exchange.
//! - [`message`], [`attr`]: building requests, and walking answers with every header
//!   and attribute length checked before it is sliced (no reply can make this layer
//!   panic: see the fuzz tests).
//! - [`error`]: [`NetlinkError`], which keeps the kernel's errno and converts into the
//!   engines' `EngineError::Kernel` with it.
//!
//! Protocols:
//! - [`nftables`]: nf_tables batches (tables, base chains, sets and maps, rules,
//!   elements) and dumps.
//! - [`ctnetlink`]: conntrack flows: dump, decode, delete.
//! - [`genl`]: generic netlink family resolution; [`ipvs`]: IPVS virtual servers,
//!   destinations, timeouts.
//! - [`rtnetlink`]: links (a dummy interface) and addresses.
//!
//! What is hand-written and why: nf_tables batches, ctnetlink and IPVS have no
//! maintained Rust crate that encodes them without C bindings, so their messages are
//! ours. The family-resolution request is `netlink-packet-generic`'s, but its answer
//! is walked with our checked parser: the crate's (0.5.0) panics on a short policy
//! attribute, which `tests/fuzz.rs` found. Links and addresses are
//! `netlink-packet-route`'s (encoding and checked decoding; fuzzed too). Headers and
//! attributes are checked with `netlink-packet-core`'s buffers; the socket is
//! `netlink-sys`'s.
//!
//! Needs `CAP_NET_ADMIN` for anything that changes kernel state. No `unsafe`.

pub mod attr;
pub mod ctnetlink;
pub mod error;
pub mod genl;
pub mod ipvs;
pub mod message;
pub mod nftables;
pub mod rtnetlink;
pub mod socket;

pub use error::{Malformed, NetlinkError};
pub use socket::{NetlinkSocket, Netns, Protocol};

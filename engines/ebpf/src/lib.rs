//! Switchyard's eBPF dataplane, below the engine contract: the BPF programs (`bpf/`,
//! compiled by `build.rs`), their pinned maps, the loader that attaches them without
//! interrupting traffic across restarts, and a typed API that writes service entries.
//! It decides no Service semantics: the caller (the eBPF engine, encoding the model's
//! plans) says which entries, backends and flags exist.
//!
//! - [`service`]: the typed entries (keys, entries, backends, targets, scopes)
//! - [`dataplane`]: [`Dataplane`]: load, attach, write (ordered, only what changed)
//! - [`readback`]: reading the maps back, `verify`
//! - [`loader`]: objects, pins, cgroup and tc attachment, [`cleanup`]
//! - [`mounts`]: where cgroup v2 and bpffs are mounted (`/proc/self/mountinfo`)
//! - [`layout`]: the map byte layout (mirror of `bpf/maps.h`), the only `unsafe`
//!
//! Programs (see the C files for the details and minimum kernels):
//! - cgroup `connect4/6`, `sendmsg4/6`, `recvmsg4/6`, `getpeername4/6` (`bpf/sock.c`):
//!   socket-level load balancing for processes on the node;
//! - tc ingress/egress (`bpf/tc.c`): NodePort / LB / external IPs from outside the node.

pub mod dataplane;
pub mod error;
pub mod layout;
pub mod loader;
pub mod mounts;
mod objects;
pub mod readback;
pub mod service;

pub use dataplane::{Dataplane, ServicePort, WriteStats};
pub use error::EbpfError;
pub use loader::{cleanup, DataplaneConfig, MapSizes};
pub use service::{Action, Backend, Protocol, Scope, ServiceEntry, ServiceKey, TargetSet};

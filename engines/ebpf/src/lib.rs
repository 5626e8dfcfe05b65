//! Switchyard's eBPF engine: [`EbpfEngine`] encodes the model's plans into the maps of
//! the BPF programs (`bpf/`, compiled by `build.rs`); below it, the dataplane: pinned
//! maps, the loader that attaches the programs without interrupting traffic across
//! restarts, and a typed API that writes service entries. Nothing here decides Service
//! semantics: the plans did.
//!
//! - [`engine`]: [`EbpfEngine`], the `ProxyEngine` (prepare, sync, verify, cleanup)
//! - [`options`]: pins, cgroup, interfaces and map sizes ([`EbpfOptions`])
//! - [`encode`]: a plan's family as dataplane content (which key, which scope, which set)
//! - [`node`]: the node's interfaces and addresses, in its network namespace
//! - [`service`]: the typed entries (keys, entries, backends, targets, scopes)
//! - [`dataplane`]: [`Dataplane`]: load, attach, write (ordered, only what changed)
//! - `record`: what the maps hold per service id, slot arrangement
//! - [`readback`]: reading the maps back, `verify`; [`inspect`]: one service port read
//!   back from the pinned maps and compared with its plan (`switchyard explain`)
//! - [`loader`]: objects, pins, cgroup and tc attachment, [`cleanup`]
//! - [`mounts`]: where cgroup v2 and bpffs are mounted (`/proc/self/mountinfo`)
//! - [`features`]: the kernel features the programs use, asked of the kernel (the probe)
//! - [`layout`]: the map byte layout (mirror of `bpf/maps.h`), and `batch`: batched map
//!   reads and writes (the bpf syscall aya 0.14 lacks): the only `unsafe`
//!
//! Programs (see the C files for the details and minimum kernels):
//! - cgroup `connect4/6`, `sendmsg4/6`, `recvmsg4/6`, `getpeername4/6` (`bpf/sock.c`):
//!   socket-level load balancing for processes on the node;
//! - tc ingress/egress (`bpf/tc.c`): NodePort / LB / external IPs from outside the node.

mod batch;
pub mod dataplane;
pub mod encode;
pub mod engine;
pub mod error;
pub mod features;
pub mod inspect;
pub mod layout;
pub mod loader;
pub mod mounts;
pub mod node;
mod objects;
pub mod options;
pub mod readback;
mod record;
pub mod service;

pub use dataplane::{Dataplane, ServicePort, WriteStats};
pub use engine::{EbpfEngine, Interfaces};
pub use error::EbpfError;
pub use loader::{cleanup, DataplaneConfig, MapSizes, TcSide};
pub use options::EbpfOptions;
pub use service::{Action, Backend, Protocol, Scope, ServiceEntry, ServiceKey, TargetSet};

//! What an engine needs, and nothing more: the per-node model of every service port's
//! plan, change sets, the engine contract, IP families and name hashing. No servers,
//! no sources, no Kubernetes API types: an engine depends on this crate alone (as
//! kube-rs splits kube-core from kube-runtime).
//!
//! - [`facts`]: what the model reads (Services, EndpointSlices, the node, the config),
//!   reduced to facts, and the [`Catalog`] it reads them from.
//! - [`endpoints`]: which endpoints serve (readiness, terminating fallback, topology),
//!   per family.
//! - [`plan`]: [`ServicePortPlan`] and [`FamilyPlan`], every Service semantic decided.
//! - [`model`]: [`NodeModel`], the plans of this node and the node-wide settings.
//! - [`changes`]: [`ChangeSet`], the difference between two models.
//! - [`explain`]: why each endpoint serves a plan's targets or not (`switchyard explain`);
//!   [`reach`]: whether traffic from a source reaches a backend; [`inspect`]: what an
//!   engine reads back from the kernel for one service port.
//! - [`engine`]: the [`ProxyEngine`] contract and its typed errors; [`tool`]: running an
//!   engine's command-line tool.
//! - [`family`], [`name`], [`mode`]: IP families and protocols, service port names, their
//!   digests and stable ids, and the engine modes.

pub mod changes;
pub mod endpoints;
pub mod engine;
pub mod explain;
pub mod facts;
pub mod family;
pub mod inspect;
pub mod mode;
pub mod model;
pub mod name;
pub mod plan;
pub mod reach;
#[cfg(feature = "test-util")]
pub mod test_util;
pub mod tool;

pub use changes::ChangeSet;
pub use endpoints::Endpoint;
pub use engine::{kernel_has_ipv6, Drift, EngineError, Owner, ProxyEngine, Retirement, SyncReport};
pub use facts::{
    Catalog, EndpointHints, ModelConfig, NodeFacts, ServiceEntry, ServiceEntryPort, ServiceKey,
    SliceEndpoint, SliceEntry, SlicePort,
};
pub use family::{IpFamily, Protocol};
pub use inspect::{KernelObject, PortInspection};
pub use mode::Mode;
pub use model::NodeModel;
pub use name::{PortDigest, PortIds, ServicePortName};
pub use plan::{
    Backend, Backends, FamilyPlan, Firewall, HealthCheck, Masquerade, MasqueradeSources,
    ServicePortPlan, Target, Vip, VipKind,
};

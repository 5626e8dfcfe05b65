//! Switchyard's core: everything between the sources of Kubernetes objects and the
//! dataplane engines.
//!
//! - [`state`]: `ClusterState`, the typed store every source feeds.
//! - [`validation`]: per-object checks; an invalid object is reported and skipped.
//! - [`model`]: `NodeModel`, what every service port means on this node.
//! - [`changes`]: `ChangeSet`, the difference between two models.
//! - [`engine`]: the `ProxyEngine` contract every dataplane implements.
//! - [`runner`]: the sync loop (debounce, periodic resync, retries, drift repair).
//! - [`manifests`]: the standalone source reading a directory of YAML/JSON.
//! - [`metrics`], [`health`] and [`liveness`]: what the node tells the outside world.
//!
//! Core never renders kernel rules and never talks to a kernel.

pub mod changes;
pub mod engine;
pub mod engine_choice;
pub mod health;
pub mod liveness;
pub mod manifests;
pub mod metrics;
pub mod model;
pub mod runner;
pub mod selection;
pub mod service_health;
pub mod state;
#[cfg(feature = "test-util")]
pub mod test_util;
pub mod validation;

pub use changes::ChangeSet;
pub use engine::{Drift, EngineError, ProxyEngine, SyncReport};
pub use model::{Endpoint, IpFamily, NodeModel, Protocol, ServicePort, ServicePortName};
pub use state::{ClusterState, Object, ObjectKey, ObjectKind};

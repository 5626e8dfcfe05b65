//! Switchyard's core: everything between the sources of Kubernetes objects and the
//! dataplane engines.
//!
//! - [`state`]: `ClusterState`, the typed store every source feeds, read by the model
//!   (`switchyard-model`) as its catalog.
//! - [`validation`]: per-object checks; an invalid object is reported and skipped.
//! - [`runner`]: the sync loop (debounce, periodic resync, retries, drift repair, engine
//!   choice and make-before-break switches).
//! - [`manifests`]: the standalone source reading a directory of YAML/JSON
//!   ([`manifest_docs`]: one file's text into objects), woken by [`dir_watch`]
//!   (inotify, or polling where it cannot serve).
//! - [`metrics`], [`health`], [`liveness`] and [`service_health`]: what the node tells
//!   the outside world.
//! - [`programming_latency`]: how long endpoint changes take to reach the kernel.
//! - [`conntrack_table`]: the ProxyConfig `conntrack` block applied, and the table's
//!   fill watched (pressure, refused settings).
//!
//! The model, its plans, change sets and the engine contract live in
//! `switchyard-model` (re-exported here as [`model`], [`changes`] and [`engine`]). Core
//! renders no kernel rules; it reaches the kernel only through engines, the stale-flow
//! cleaner and servers the binary gives it, and the conntrack sysctls
//! (`switchyard-conntrack`).

pub mod conntrack_table;
pub mod dir_watch;
pub mod engine_choice;
pub mod health;
pub mod liveness;
pub mod manifest_docs;
pub mod manifests;
pub mod metrics;
pub mod programming_latency;
pub mod retiring;
pub mod runner;
pub mod selection;
pub mod service_health;
pub mod state;
pub mod validation;

pub use state::{ClusterState, Object, ObjectKey, ObjectKind};
pub use switchyard_model::{
    changes, engine, model, ChangeSet, Drift, EngineError, IpFamily, NodeModel, Protocol,
    ProxyEngine, ServicePortName, ServicePortPlan, SyncReport,
};

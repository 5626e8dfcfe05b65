//! The node agent's link to the API server.
//!
//! - [`watch`]: kube-rs watchers for Services, EndpointSlices, this Node and
//!   ProxyConfigs feeding `ClusterState` (validated exactly as the manifests source does);
//!   an API outage only pauses updates — the dataplane keeps what it has.
//! - [`status`]: the node's `ProxyNode` (owned by its Node) written by server-side apply,
//!   and Warning Events on the Node when a fallback runs or the node is degraded.
//!
//! The agent never touches the kernel; the runner in `switchyard-core` does.

pub mod status;
pub mod watch;

pub use status::publish_status;
pub use watch::{follow_cluster, SourcesReady};

/// Field manager and event reporter name.
pub const MANAGER: &str = "switchyard-agent";

//! Switchyard's end-to-end harness: a sandboxed node in private network namespaces, echo
//! pods, traffic probes, and the runner for the packet-flow scenario files shared by every
//! engine (`../shared/scenarios/`, `e2e/scenarios/`). It drives the real `switchyard run`
//! binary and never touches the host's own network configuration.
//!
//! - [`netns`]: named network namespaces and running code inside them
//! - [`sandbox`]: the node / external / pod topology and the agent running in it
//! - [`echo`]: echo servers naming the endpoint and the source they saw
//! - [`probe`]: one TCP/UDP request from a source role, classified
//! - [`flow`]: a long-lived UDP flow (one socket) and what answered it
//! - [`cgroup`]: private cgroups and the client process running inside one
//! - [`bpffs`]: a private bpffs directory for the eBPF engine's pins
//! - [`agent`]: the agent process, its log and `/healthz`
//! - [`cluster`]: the kube API simulator, operator and agent processes, and kubectl
//! - [`manifests`]: the manifests directory and the Node / ProxyConfig objects
//! - [`scenario`]: scenario files, playing their flows, the report
//! - [`readback`]: the backends each service port has in the kernel, read back per engine
//! - [`fault`]: the engines under fault injection, a node set up for them, the load
//! - [`vm`]: the qemu VM lane, running jobs and test binaries on a kernel with IPVS

pub mod agent;
pub mod bpffs;
pub mod cgroup;
pub mod cluster;
pub mod echo;
pub mod fault;
pub mod flow;
pub mod manifests;
pub mod netns;
pub mod probe;
pub mod readback;
pub mod sandbox;
pub mod scenario;
pub mod vm;

pub use probe::{Outcome, Proto, Source};
pub use sandbox::{require_ipvs, require_root, Sandbox};
pub use scenario::{Runner, Scenario, ScenarioReport};

//! Shared test support: model builders (the model's `test-util`: Services as facts,
//! planned by the real planner), chain names, and private network namespaces.
#![allow(dead_code)]

pub mod netns;

#[allow(unused_imports)]
pub use switchyard_model::test_util::*;

use std::net::IpAddr;

use switchyard_iptables::chains::{Chains, PortChain};
use switchyard_model::ServicePortName;

/// The chain of `kind` of a service port, with the default prefix.
pub fn port_chain(kind: PortChain, name: &ServicePortName) -> String {
    Chains::default().port(kind, &name.digest())
}

/// Upstream's endpoint chain name of `ip:port` in a service port, with the default
/// prefix: the name of the endpoint's affinity list (no such chain is made).
pub fn endpoint_chain(name: &ServicePortName, ip: &str, port: u16) -> String {
    let ip: IpAddr = ip.parse().unwrap();
    Chains::default().endpoint(&name.digest(), ip, port)
}

//! What the engine reads of the node it runs on, in its network namespace: the addresses
//! of every interface (NodePorts are served on the local ones within `nodePortAddresses`;
//! the tc programs go on the interfaces holding the node's and the pods' addresses).
//!
//! Interface names and addresses belong to a network namespace, and a thread reads the
//! namespace it is in: with [`in_netns`], an engine given a namespace (tests, the sandbox)
//! does that part on a short-lived thread that joined it. Everything else (loading,
//! map writes, cgroup attachment) does not depend on the namespace.

use std::{fs::File, net::IpAddr, path::Path};

use ipnet::IpNet;
use nix::{ifaddrs::getifaddrs, sched::CloneFlags};

use crate::error::EbpfError;

/// One address of one interface.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct InterfaceAddress {
    pub interface: String,
    pub ip: IpAddr,
}

/// Runs `f` in the network namespace at `netns` (on a thread that joins it), or right
/// here when there is none.
pub fn in_netns<T: Send>(
    netns: Option<&Path>,
    f: impl FnOnce() -> Result<T, EbpfError> + Send,
) -> Result<T, EbpfError> {
    let Some(path) = netns else {
        return f();
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(path).map_err(|source| EbpfError::Io {
                what: "opening the network namespace",
                path: path.into(),
                source,
            })?;
            nix::sched::setns(file, CloneFlags::CLONE_NEWNET).map_err(|source| {
                EbpfError::Netns {
                    path: path.into(),
                    source,
                }
            })?;
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Every address of every interface of the calling thread's network namespace, sorted.
pub fn interface_addresses() -> Result<Vec<InterfaceAddress>, EbpfError> {
    let mut out: Vec<InterfaceAddress> = getifaddrs()
        .map_err(|source| EbpfError::Interfaces { source })?
        .filter_map(|a| {
            let addr = a.address?;
            let ip = match (addr.as_sockaddr_in(), addr.as_sockaddr_in6()) {
                (Some(v4), _) => IpAddr::V4(v4.ip()),
                (_, Some(v6)) => IpAddr::V6(v6.ip()),
                _ => return None,
            };
            Some(InterfaceAddress {
                interface: a.interface_name,
                ip,
            })
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Loopback and link-local addresses never accept NodePort traffic (as upstream).
fn may_serve_node_ports(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
        IpAddr::V6(v6) => {
            !v6.is_loopback() && !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

/// The local addresses NodePorts are served on: within `cidrs`, not loopback or
/// link-local; sorted, each once.
pub fn node_port_addresses(addrs: &[InterfaceAddress], cidrs: &[IpNet]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = addrs
        .iter()
        .map(|a| a.ip)
        .filter(|ip| may_serve_node_ports(ip) && cidrs.iter().any(|c| c.contains(ip)))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The interfaces holding one of `ips`, sorted, each once.
pub fn interfaces_holding(addrs: &[InterfaceAddress], ips: &[IpAddr]) -> Vec<String> {
    let mut out: Vec<String> = addrs
        .iter()
        .filter(|a| ips.contains(&a.ip))
        .map(|a| a.interface.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The interfaces, other than loopback and `except`, holding an address inside `cidrs`
/// (a pod bridge holds its gateway address in the pod CIDR), sorted, each once.
pub fn interfaces_within(
    addrs: &[InterfaceAddress],
    cidrs: &[IpNet],
    except: &[String],
) -> Vec<String> {
    let mut out: Vec<String> = addrs
        .iter()
        .filter(|a| !a.ip.is_loopback() && !except.contains(&a.interface))
        .filter(|a| cidrs.iter().any(|c| c.contains(&a.ip)))
        .map(|a| a.interface.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(interface: &str, ip: &str) -> InterfaceAddress {
        InterfaceAddress {
            interface: interface.into(),
            ip: ip.parse().unwrap(),
        }
    }

    fn sandbox() -> Vec<InterfaceAddress> {
        vec![
            a("lo", "127.0.0.1"),
            a("lo", "::1"),
            a("cbr0", "10.0.0.1"),
            a("cbr0", "fd00:10::1"),
            a("cbr0", "fe80::1"),
            a("uplink", "192.168.0.2"),
            a("uplink", "192.168.1.2"),
            a("uplink", "2001:db8::1"),
        ]
    }

    #[test]
    fn node_ports_skip_loopback_and_link_local() {
        let all: Vec<IpNet> = vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
        let got = node_port_addresses(&sandbox(), &all);
        let want: Vec<IpAddr> = [
            "10.0.0.1",
            "192.168.0.2",
            "192.168.1.2",
            "2001:db8::1",
            "fd00:10::1",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(got, want);
        let primary: Vec<IpNet> = vec!["192.168.0.2/32".parse().unwrap()];
        assert_eq!(
            node_port_addresses(&sandbox(), &primary),
            vec!["192.168.0.2".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn interfaces_by_address_and_cidr() {
        let node_ips: Vec<IpAddr> = vec!["192.168.0.2".parse().unwrap()];
        let ext = interfaces_holding(&sandbox(), &node_ips);
        assert_eq!(ext, ["uplink"]);
        let pods: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(interfaces_within(&sandbox(), &pods, &ext), ["cbr0"]);
        assert!(interfaces_within(&sandbox(), &pods, &["cbr0".into()]).is_empty());
    }
}

//! The dummy interface holding every VIP (cluster, external and load-balancer IPs), so
//! the kernel delivers traffic to them locally, where IPVS picks it up (kube-proxy's
//! `kube-ipvs0`); and the node addresses NodePorts are served on: local, within
//! `nodePortAddresses`, never loopback, link-local or a VIP of the dummy itself.

use std::{collections::BTreeSet, net::IpAddr};

use ipnet::IpNet;
use switchyard_netlink::{
    rtnetlink::{InterfaceAddress, Rtnl},
    NetlinkError,
};

/// Default name of the dummy interface (15 bytes, the longest a name can be).
pub const INTERFACE: &str = "switchyard-ipvs";

/// A VIP as an interface address: a host route's worth.
pub fn vip_address(ip: IpAddr) -> InterfaceAddress {
    InterfaceAddress {
        addr: ip,
        prefix_len: if ip.is_ipv4() { 32 } else { 128 },
    }
}

/// Creates the interface unless it exists, sets it up; returns its index.
pub fn ensure(rtnl: &mut Rtnl, name: &str) -> Result<u32, NetlinkError> {
    let index = rtnl.ensure_dummy(name)?;
    rtnl.set_up(index)?;
    Ok(index)
}

/// The VIPs on the interface (its IPv6 link-local address is not one).
pub fn vips(rtnl: &mut Rtnl, index: u32) -> Result<BTreeSet<IpAddr>, NetlinkError> {
    Ok(rtnl
        .addresses(index)?
        .into_iter()
        .map(|a| a.addr)
        .filter(|ip| !is_link_local(ip))
        .collect())
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

/// The node's addresses NodePorts are served on: every address of every interface but
/// `dummy`, within `cidrs`, not loopback nor link-local; sorted.
pub fn node_port_addresses(
    rtnl: &mut Rtnl,
    dummy: Option<u32>,
    cidrs: &[IpNet],
) -> Result<Vec<IpAddr>, NetlinkError> {
    let mut out = BTreeSet::new();
    for link in rtnl.links()? {
        if Some(link.index) == dummy {
            continue;
        }
        for a in rtnl.addresses(link.index)? {
            let ip = a.addr;
            if ip.is_loopback() || is_link_local(&ip) {
                continue;
            }
            if cidrs.iter().any(|n| n.contains(&ip)) {
                out.insert(ip);
            }
        }
    }
    Ok(out.into_iter().collect())
}

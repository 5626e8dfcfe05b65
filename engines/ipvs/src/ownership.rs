//! Which virtual servers are ours, from what the kernel holds (so a restarted agent,
//! or `switchyard cleanup`, finds them without a record): those at a VIP on our dummy
//! interface, the NodePort servers listed in our helper table's `node-ports` set, and
//! the firewall-mark servers whose marks are in its `sc-marks` set. Nothing else is
//! ever deleted.

use std::{collections::BTreeSet, net::IpAddr};

use switchyard_model::IpFamily;
use switchyard_netlink::{
    ipvs::ServiceId,
    nftables::{NftSocket, TableFamily},
    NetlinkError,
};

use crate::helper::{Key, SetKind};

/// The ownership records read from the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owned {
    /// VIPs on the dummy interface.
    pub vips: BTreeSet<IpAddr>,
    /// NodePort servers (`node-ports`).
    pub node_ports: BTreeSet<ServiceId>,
    /// Firewall marks per family (`sc-marks`).
    pub marks: BTreeSet<(IpFamily, u32)>,
    /// Servers the engine's record says it wrote.
    pub servers: BTreeSet<ServiceId>,
}

fn table_family(family: IpFamily) -> TableFamily {
    match family {
        IpFamily::V4 => TableFamily::Ip,
        IpFamily::V6 => TableFamily::Ip6,
    }
}

impl Owned {
    /// Reads `node-ports` and `sc-marks` of `table` in `families` (nothing when the
    /// table is absent). The VIPs are the caller's to add.
    pub fn read(
        nft: &mut NftSocket,
        table: &str,
        families: &[IpFamily],
    ) -> Result<Owned, NetlinkError> {
        let mut owned = Owned::default();
        for &family in families {
            for kind in [SetKind::NodePorts, SetKind::ScMarks] {
                let Some(elements) = nft.elements(table_family(family), table, kind.name())? else {
                    continue;
                };
                for (bytes, _) in elements {
                    match Key::decode(kind, family, &bytes) {
                        Some(Key::Frontend(addr, protocol, port)) => {
                            owned
                                .node_ports
                                .insert(ServiceId::new(protocol, addr, port));
                        }
                        Some(Key::Mark(mark)) => {
                            owned.marks.insert((family, mark));
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(owned)
    }

    pub fn is_empty(&self) -> bool {
        self.vips.is_empty()
            && self.node_ports.is_empty()
            && self.marks.is_empty()
            && self.servers.is_empty()
    }

    /// Whether virtual server `id` is ours.
    pub fn owns(&self, id: &ServiceId) -> bool {
        if self.servers.contains(id) {
            return true;
        }
        match *id {
            ServiceId::Addr { addr, .. } => {
                self.vips.contains(&addr) || self.node_ports.contains(id)
            }
            ServiceId::Fwmark { family, mark } => self.marks.contains(&(family, mark)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_model::Protocol;

    #[test]
    fn owns_vips_recorded_node_ports_and_marks_only() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut o = Owned::default();
        o.vips.insert(ip("10.96.0.1"));
        o.node_ports
            .insert(ServiceId::new(Protocol::Tcp, ip("192.168.0.2"), 30080));
        o.marks.insert((IpFamily::V6, 0x0100_0001));
        assert!(o.owns(&ServiceId::new(Protocol::Udp, ip("10.96.0.1"), 53)));
        assert!(o.owns(&ServiceId::new(Protocol::Tcp, ip("192.168.0.2"), 30080)));
        assert!(!o.owns(&ServiceId::new(Protocol::Tcp, ip("192.168.0.2"), 22)));
        assert!(o.owns(&ServiceId::Fwmark {
            family: IpFamily::V6,
            mark: 0x0100_0001
        }));
        assert!(!o.owns(&ServiceId::Fwmark {
            family: IpFamily::V4,
            mark: 0x0100_0001
        }));
    }
}

//! [`Flow`] and [`Tuple`]: one conntrack entry as the kernel reports it.

use std::net::IpAddr;

use switchyard_model::{IpFamily, Protocol};

/// IANA protocol numbers.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;

/// One direction of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IANA protocol number (17 for UDP).
    pub protocol: u8,
    /// 0 for protocols without ports (ICMP and the like).
    pub src_port: u16,
    pub dst_port: u16,
}

/// One conntrack entry: the tuple as the client sent it and the tuple the answer is
/// expected with (after DNAT its source is the endpoint).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    pub original: Tuple,
    pub reply: Tuple,
    /// The kernel's id of the entry; a delete carrying it only removes this very entry.
    pub id: Option<u32>,
    /// Conntrack zone, when not the default one.
    pub zone: Option<u16>,
}

impl Flow {
    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.original.src)
    }

    /// The service protocol of the flow, if it is one services use.
    pub fn protocol(&self) -> Option<Protocol> {
        match self.original.protocol {
            IPPROTO_TCP => Some(Protocol::Tcp),
            IPPROTO_UDP => Some(Protocol::Udp),
            IPPROTO_SCTP => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

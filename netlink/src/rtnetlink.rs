//! rtnetlink: what the IPVS engine needs of links and addresses — a dummy interface
//! by name (create, bring up, delete, find its index) and its addresses (list, add,
//! delete; both families). Messages are `netlink-packet-route`'s, carried and checked
//! by [`NetlinkSocket`]; answers are decoded with its checked parsers.

use std::net::IpAddr;

use netlink_packet_core::{Emitable, NetlinkDeserializable, NetlinkHeader};
use netlink_packet_route::{
    address::{AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope},
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    AddressFamily, RouteNetlinkMessage,
};
use nix::errno::Errno;

use crate::{
    error::{Malformed, NetlinkError},
    message::{
        Message, MessageWriter, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
    },
    socket::{NetlinkSocket, Netns, Protocol},
};

/// The longest interface name (`IFNAMSIZ` is 16 with the NUL).
pub const MAX_NAME: usize = 15;

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `dummy`, `bridge`, `veth`... (`None` for kinds without link info, like `lo`).
    pub kind: Option<String>,
    pub up: bool,
}

/// An address on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InterfaceAddress {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// An rtnetlink socket in one network namespace.
pub struct Rtnl {
    socket: NetlinkSocket,
}

impl Rtnl {
    pub fn open(netns: &Netns) -> Result<Rtnl, NetlinkError> {
        Ok(Rtnl {
            socket: NetlinkSocket::open(Protocol::Route, netns)?,
        })
    }

    /// Sends `message`; `on_reply` gets every decoded answer.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        operation: &str,
        mut on_reply: impl FnMut(RouteNetlinkMessage),
    ) -> Result<(), NetlinkError> {
        let seq = self.socket.next_seq();
        let mut payload = vec![0; message.buffer_len()];
        message.emit(&mut payload);
        let mut w = MessageWriter::with_capacity(payload.len() + 16);
        w.begin(message.message_type(), NLM_F_REQUEST | flags, seq, &payload);
        self.socket.exchange(w.finish(), seq, operation, |m| {
            on_reply(decode(m).map_err(|e| NetlinkError::malformed(operation, e))?);
            Ok(())
        })
    }

    /// The interface called `name`, if any. A name longer than 15 bytes (`IFNAMSIZ`
    /// less its NUL) is `ERANGE`, as the kernel answers, with the limit named.
    pub fn link(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        if name.len() > MAX_NAME {
            return Err(NetlinkError::kernel(
                format!("link name {name:?}: longer than {MAX_NAME} bytes"),
                Errno::ERANGE as i32,
            ));
        }
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        let mut found = None;
        let result = self.request(
            RouteNetlinkMessage::GetLink(message),
            NLM_F_ACK,
            &format!("reading link {name}"),
            |reply| {
                if let RouteNetlinkMessage::NewLink(m) = reply {
                    found = Some(link_of(&m));
                }
            },
        );
        match result {
            Err(e) if e.is_kernel(Errno::ENODEV) => Ok(None),
            other => other.map(|()| found),
        }
    }

    /// Every interface.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let mut out = Vec::new();
        self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
            "dumping links",
            |reply| {
                if let RouteNetlinkMessage::NewLink(m) = reply {
                    out.push(link_of(&m));
                }
            },
        )?;
        Ok(out)
    }

    /// The index of interface `name`, if it exists.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>, NetlinkError> {
        Ok(self.link(name)?.map(|l| l.index))
    }

    /// Creates dummy interface `name` unless it exists; returns its index. An existing
    /// interface of another kind is `EEXIST`: it is not ours to reuse.
    pub fn ensure_dummy(&mut self, name: &str) -> Result<u32, NetlinkError> {
        if let Some(link) = self.link(name)? {
            return match link.kind.as_deref() {
                Some("dummy") => Ok(link.index),
                other => Err(NetlinkError::kernel(
                    format!("creating dummy link {name}: it exists as a {other:?} link"),
                    Errno::EEXIST as i32,
                )),
            };
        }
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        message
            .attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Dummy,
            )]));
        self.request(
            RouteNetlinkMessage::NewLink(message),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &format!("creating dummy link {name}"),
            |_| {},
        )?;
        self.link_index(name)?.ok_or_else(|| {
            NetlinkError::malformed(
                format!("creating dummy link {name}"),
                Malformed::new("the link is not there after it was created"),
            )
        })
    }

    /// Sets interface `index` up.
    pub fn set_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        self.request(
            RouteNetlinkMessage::SetLink(message),
            NLM_F_ACK,
            &format!("setting link {index} up"),
            |_| {},
        )
    }

    /// Deletes interface `name`; false when there was none.
    pub fn delete_link(&mut self, name: &str) -> Result<bool, NetlinkError> {
        let Some(index) = self.link_index(name)? else {
            return Ok(false);
        };
        let mut message = LinkMessage::default();
        message.header.index = index;
        let result = self.request(
            RouteNetlinkMessage::DelLink(message),
            NLM_F_ACK,
            &format!("deleting link {name}"),
            |_| {},
        );
        match result {
            Err(e) if e.is_kernel(Errno::ENODEV) => Ok(false),
            other => other.map(|()| true),
        }
    }

    /// The addresses of interface `index`, both families, sorted.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<InterfaceAddress>, NetlinkError> {
        let mut out = Vec::new();
        self.request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
            "dumping addresses",
            |reply| {
                if let RouteNetlinkMessage::NewAddress(m) = reply {
                    if m.header.index != index {
                        return;
                    }
                    let local = m.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Local(ip) => Some(*ip),
                        _ => None,
                    });
                    let addr = local.or_else(|| {
                        m.attributes.iter().find_map(|a| match a {
                            AddressAttribute::Address(ip) => Some(*ip),
                            _ => None,
                        })
                    });
                    if let Some(addr) = addr {
                        out.push(InterfaceAddress {
                            addr,
                            prefix_len: m.header.prefix_len,
                        });
                    }
                }
            },
        )?;
        out.sort();
        Ok(out)
    }

    /// Adds an address to interface `index`; false when it was already there. IPv6
    /// addresses skip duplicate address detection (a VIP must be usable at once).
    pub fn add_address(
        &mut self,
        index: u32,
        address: InterfaceAddress,
    ) -> Result<bool, NetlinkError> {
        let message = address_message(index, address);
        let result = self.request(
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &format!(
                "adding {}/{} to link {index}",
                address.addr, address.prefix_len
            ),
            |_| {},
        );
        match result {
            Err(e) if e.is_kernel(Errno::EEXIST) => Ok(false),
            other => other.map(|()| true),
        }
    }

    /// Deletes an address from interface `index`; false when it was not there.
    pub fn delete_address(
        &mut self,
        index: u32,
        address: InterfaceAddress,
    ) -> Result<bool, NetlinkError> {
        let message = address_message(index, address);
        let result = self.request(
            RouteNetlinkMessage::DelAddress(message),
            NLM_F_ACK,
            &format!(
                "deleting {}/{} from link {index}",
                address.addr, address.prefix_len
            ),
            |_| {},
        );
        match result {
            Err(e) if e.is_kernel(Errno::EADDRNOTAVAIL) => Ok(false),
            other => other.map(|()| true),
        }
    }
}

/// Decodes one rtnetlink answer (`netlink-packet-route`'s checked parsers).
pub fn decode(message: &Message<'_>) -> Result<RouteNetlinkMessage, Malformed> {
    let mut header = NetlinkHeader::default();
    header.message_type = message.kind;
    RouteNetlinkMessage::deserialize(&header, message.payload).map_err(|e| Malformed(e.to_string()))
}

fn address_message(index: u32, address: InterfaceAddress) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.index = index;
    m.header.prefix_len = address.prefix_len;
    m.header.scope = AddressScope::Universe;
    match address.addr {
        IpAddr::V4(_) => m.header.family = AddressFamily::Inet,
        IpAddr::V6(_) => {
            m.header.family = AddressFamily::Inet6;
            m.header.flags = AddressHeaderFlags::Nodad;
        }
    }
    m.attributes.push(AddressAttribute::Local(address.addr));
    if address.addr.is_ipv4() {
        m.attributes.push(AddressAttribute::Address(address.addr));
    }
    m
}

fn link_of(m: &LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        kind: None,
        up: m.header.flags.contains(LinkFlags::Up),
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = Some(kind.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

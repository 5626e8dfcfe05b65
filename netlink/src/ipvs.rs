//! IPVS over generic netlink (family `IPVS`, version 1): virtual servers
//! ([`Service`]), real servers ([`Destination`]), the connection timeouts and the
//! version info, as typed Rust values in and out.
//!
//! Hand-written: no maintained Rust crate speaks IPVS netlink. The attributes follow
//! `linux/ip_vs.h` and the kernel's `ip_vs_ctl.c` (which attributes a full entry needs,
//! which byte order each has); addresses travel as the 16-byte `nf_inet_addr` union,
//! ports big-endian, everything else host-endian. Dumps are parsed with every attribute
//! length checked. Needs `CAP_NET_ADMIN` and the `ip_vs` module (the family lookup
//! autoloads it where it can). The host kernel here has no IPVS: the kernel tests run
//! in the VM lane.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use nix::errno::Errno;
use switchyard_model::{IpFamily, Protocol};

use crate::{
    attr::{attrs, Attr, AttrWriter},
    error::{Malformed, NetlinkError},
    genl::{genlmsghdr, resolve_family},
    message::{MessageWriter, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST},
    socket::{NetlinkSocket, Netns, Protocol as NetlinkProtocol},
};

const IPVS_GENL_VERSION: u8 = 1;

// Commands.
const CMD_NEW_SERVICE: u8 = 1;
const CMD_SET_SERVICE: u8 = 2;
const CMD_DEL_SERVICE: u8 = 3;
const CMD_GET_SERVICE: u8 = 4;
const CMD_NEW_DEST: u8 = 5;
const CMD_SET_DEST: u8 = 6;
const CMD_DEL_DEST: u8 = 7;
const CMD_GET_DEST: u8 = 8;
const CMD_SET_CONFIG: u8 = 12;
const CMD_GET_CONFIG: u8 = 13;
const CMD_GET_INFO: u8 = 15;
const CMD_FLUSH: u8 = 17;

// Top-level attributes.
const CMD_ATTR_SERVICE: u16 = 1;
const CMD_ATTR_DEST: u16 = 2;
const CMD_ATTR_TIMEOUT_TCP: u16 = 4;
const CMD_ATTR_TIMEOUT_TCP_FIN: u16 = 5;
const CMD_ATTR_TIMEOUT_UDP: u16 = 6;

// Service attributes.
const SVC_ATTR_AF: u16 = 1;
const SVC_ATTR_PROTOCOL: u16 = 2;
const SVC_ATTR_ADDR: u16 = 3;
const SVC_ATTR_PORT: u16 = 4;
const SVC_ATTR_FWMARK: u16 = 5;
const SVC_ATTR_SCHED_NAME: u16 = 6;
const SVC_ATTR_FLAGS: u16 = 7;
const SVC_ATTR_TIMEOUT: u16 = 8;
const SVC_ATTR_NETMASK: u16 = 9;

// Destination attributes.
const DEST_ATTR_ADDR: u16 = 1;
const DEST_ATTR_PORT: u16 = 2;
const DEST_ATTR_FWD_METHOD: u16 = 3;
const DEST_ATTR_WEIGHT: u16 = 4;
const DEST_ATTR_U_THRESH: u16 = 5;
const DEST_ATTR_L_THRESH: u16 = 6;
const DEST_ATTR_ACTIVE_CONNS: u16 = 7;
const DEST_ATTR_INACT_CONNS: u16 = 8;
const DEST_ATTR_PERSIST_CONNS: u16 = 9;
const DEST_ATTR_ADDR_FAMILY: u16 = 11;

// Info attributes.
const INFO_ATTR_VERSION: u16 = 1;
const INFO_ATTR_CONN_TAB_SIZE: u16 = 2;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// `IP_VS_SVC_F_PERSISTENT`: ClientIP affinity.
pub const SVC_F_PERSISTENT: u32 = 0x1;
/// `IP_VS_SVC_F_HASHED`: set by the kernel on every service it holds.
pub const SVC_F_HASHED: u32 = 0x2;
/// `IP_VS_SVC_F_ONEPACKET`.
pub const SVC_F_ONEPACKET: u32 = 0x4;
/// `IP_VS_SVC_F_SCHED1..3`: scheduler flags (`sh`: fallback, port; `mh`: the same).
pub const SVC_F_SCHED1: u32 = 0x8;
pub const SVC_F_SCHED2: u32 = 0x10;
pub const SVC_F_SCHED3: u32 = 0x20;

fn af(family: IpFamily) -> u16 {
    match family {
        IpFamily::V4 => AF_INET,
        IpFamily::V6 => AF_INET6,
    }
}

/// How a virtual server is named.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceId {
    /// `-t/-u/--sctp-service addr:port`. `protocol` is the IANA number.
    Addr {
        protocol: u16,
        addr: IpAddr,
        port: u16,
    },
    /// `-f mark`, per family.
    Fwmark { family: IpFamily, mark: u32 },
}

impl ServiceId {
    pub fn new(protocol: Protocol, addr: IpAddr, port: u16) -> ServiceId {
        ServiceId::Addr {
            protocol: u16::from(protocol.number()),
            addr,
            port,
        }
    }

    pub fn family(&self) -> IpFamily {
        match self {
            ServiceId::Addr { addr, .. } => IpFamily::of(addr),
            ServiceId::Fwmark { family, .. } => *family,
        }
    }

    /// The attributes naming the service (inside `IPVS_CMD_ATTR_SERVICE`).
    fn encode(&self, a: &mut AttrWriter<'_>) {
        a.ne16(SVC_ATTR_AF, af(self.family()));
        match *self {
            ServiceId::Addr {
                protocol,
                addr,
                port,
            } => {
                a.ne16(SVC_ATTR_PROTOCOL, protocol);
                a.put(SVC_ATTR_ADDR, &inet_addr(&addr));
                a.be16(SVC_ATTR_PORT, port);
            }
            ServiceId::Fwmark { mark, .. } => a.ne32(SVC_ATTR_FWMARK, mark),
        }
    }
}

/// `union nf_inet_addr`: 16 bytes, an IPv4 address in the first four.
fn inet_addr(ip: &IpAddr) -> [u8; 16] {
    let mut out = [0; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

fn parse_inet_addr(attr: &Attr<'_>, family: u16) -> Result<IpAddr, Malformed> {
    let v = attr.value;
    match (family, v.len()) {
        (AF_INET, 4 | 16) => Ok(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]))),
        (AF_INET6, 16) => Ok(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(v).expect("16 bytes"),
        ))),
        (f, n) => Err(Malformed(format!(
            "IPVS address of {n} bytes for address family {f}"
        ))),
    }
}

/// A virtual server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub id: ServiceId,
    /// `rr`, `wrr`, `lc`, `wlc`, `sh`, `mh`...
    pub scheduler: String,
    /// `SVC_F_*` bits (the kernel adds [`SVC_F_HASHED`] to what it reports).
    pub flags: u32,
    /// Persistence timeout in seconds (with [`SVC_F_PERSISTENT`]).
    pub timeout: u32,
    /// Persistence granularity: an IPv4 mask (`0xffffffff`), or an IPv6 prefix length.
    pub netmask: u32,
}

impl Service {
    /// A service with `scheduler`, no persistence, one-address granularity.
    pub fn new(id: ServiceId, scheduler: &str) -> Service {
        let netmask = match id.family() {
            IpFamily::V4 => u32::MAX,
            IpFamily::V6 => 128,
        };
        Service {
            id,
            scheduler: scheduler.to_string(),
            flags: 0,
            timeout: 0,
            netmask,
        }
    }

    /// ClientIP affinity for `timeout` seconds.
    pub fn persistent(mut self, timeout: u32) -> Service {
        self.flags |= SVC_F_PERSISTENT;
        self.timeout = timeout;
        self
    }

    pub fn is_persistent(&self) -> bool {
        self.flags & SVC_F_PERSISTENT != 0
    }

    fn encode(&self, a: &mut AttrWriter<'_>) {
        self.id.encode(a);
        a.str(SVC_ATTR_SCHED_NAME, &self.scheduler);
        // struct ip_vs_flags { flags, mask }: set exactly these bits.
        let mut flags = [0u8; 8];
        flags[..4].copy_from_slice(&self.flags.to_ne_bytes());
        flags[4..].copy_from_slice(&u32::MAX.to_ne_bytes());
        a.put(SVC_ATTR_FLAGS, &flags);
        a.ne32(SVC_ATTR_TIMEOUT, self.timeout);
        a.ne32(SVC_ATTR_NETMASK, self.netmask);
    }

    /// Decodes the attributes nested in `IPVS_CMD_ATTR_SERVICE`.
    pub fn decode(nested: &[u8]) -> Result<Service, Malformed> {
        let all: Vec<Attr<'_>> = attrs(nested).collect::<Result<_, _>>()?;
        let get = |kind| all.iter().find(|a| a.kind == kind);
        let family = get(SVC_ATTR_AF)
            .ok_or_else(|| Malformed::new("IPVS service without an address family"))?
            .ne16()?;
        let id = match get(SVC_ATTR_FWMARK).map(Attr::ne32).transpose()? {
            Some(mark) if mark != 0 => ServiceId::Fwmark {
                family: match family {
                    AF_INET6 => IpFamily::V6,
                    _ => IpFamily::V4,
                },
                mark,
            },
            _ => {
                let need = |kind, what: &str| {
                    get(kind).ok_or_else(|| Malformed(format!("IPVS service without {what}")))
                };
                ServiceId::Addr {
                    protocol: need(SVC_ATTR_PROTOCOL, "a protocol")?.ne16()?,
                    addr: parse_inet_addr(need(SVC_ATTR_ADDR, "an address")?, family)?,
                    port: need(SVC_ATTR_PORT, "a port")?.be16()?,
                }
            }
        };
        let flags = match get(SVC_ATTR_FLAGS) {
            Some(a) => {
                let f = a.value.get(..4).ok_or_else(|| {
                    Malformed(format!("IPVS service flags of {} bytes", a.value.len()))
                })?;
                u32::from_ne_bytes(f.try_into().expect("4 bytes"))
            }
            None => 0,
        };
        Ok(Service {
            id,
            scheduler: get(SVC_ATTR_SCHED_NAME)
                .map(Attr::str)
                .transpose()?
                .unwrap_or_default()
                .to_string(),
            flags,
            timeout: get(SVC_ATTR_TIMEOUT)
                .map(Attr::ne32)
                .transpose()?
                .unwrap_or(0),
            netmask: get(SVC_ATTR_NETMASK)
                .map(Attr::ne32)
                .transpose()?
                .unwrap_or(0),
        })
    }
}

/// How packets reach a real server (`IP_VS_CONN_F_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Forward {
    /// NAT (`-m`): what kube-proxy uses.
    Masquerade,
    Local,
    Tunnel,
    DirectRoute,
    Bypass,
}

impl Forward {
    fn code(self) -> u32 {
        match self {
            Forward::Masquerade => 0,
            Forward::Local => 1,
            Forward::Tunnel => 2,
            Forward::DirectRoute => 3,
            Forward::Bypass => 4,
        }
    }

    fn from_code(code: u32) -> Result<Forward, Malformed> {
        Ok(match code & 0x7 {
            0 => Forward::Masquerade,
            1 => Forward::Local,
            2 => Forward::Tunnel,
            3 => Forward::DirectRoute,
            4 => Forward::Bypass,
            n => return Err(Malformed(format!("IPVS forwarding method {n}"))),
        })
    }
}

/// A real server of a virtual server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    pub addr: IpAddr,
    pub port: u16,
    pub forward: Forward,
    /// 0 takes no new connections (graceful termination).
    pub weight: u32,
    /// Connection thresholds (0: none).
    pub upper_threshold: u32,
    pub lower_threshold: u32,
}

impl Destination {
    /// A masqueraded real server with weight 1, as kube-proxy creates them.
    pub fn masquerade(addr: IpAddr, port: u16) -> Destination {
        Destination {
            addr,
            port,
            forward: Forward::Masquerade,
            weight: 1,
            upper_threshold: 0,
            lower_threshold: 0,
        }
    }

    fn encode(&self, a: &mut AttrWriter<'_>) {
        a.ne16(DEST_ATTR_ADDR_FAMILY, af(IpFamily::of(&self.addr)));
        a.put(DEST_ATTR_ADDR, &inet_addr(&self.addr));
        a.be16(DEST_ATTR_PORT, self.port);
        a.ne32(DEST_ATTR_FWD_METHOD, self.forward.code());
        a.ne32(DEST_ATTR_WEIGHT, self.weight);
        a.ne32(DEST_ATTR_U_THRESH, self.upper_threshold);
        a.ne32(DEST_ATTR_L_THRESH, self.lower_threshold);
    }

    /// The attributes naming the destination only (for deletes).
    fn encode_key(addr: &IpAddr, port: u16, a: &mut AttrWriter<'_>) {
        a.ne16(DEST_ATTR_ADDR_FAMILY, af(IpFamily::of(addr)));
        a.put(DEST_ATTR_ADDR, &inet_addr(addr));
        a.be16(DEST_ATTR_PORT, port);
    }
}

/// A real server as a dump reports it, with its connection counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DestinationStatus {
    pub destination: Destination,
    pub active_conns: u32,
    pub inactive_conns: u32,
    pub persistent_conns: u32,
}

impl DestinationStatus {
    /// Decodes the attributes nested in `IPVS_CMD_ATTR_DEST`; `service_family` reads
    /// the address when the kernel omits the destination's own family (before 4.2).
    pub fn decode(nested: &[u8], service_family: IpFamily) -> Result<DestinationStatus, Malformed> {
        let all: Vec<Attr<'_>> = attrs(nested).collect::<Result<_, _>>()?;
        let get = |kind| all.iter().find(|a| a.kind == kind);
        let need = |kind, what: &str| {
            get(kind).ok_or_else(|| Malformed(format!("IPVS destination without {what}")))
        };
        let u32_or_0 = |kind| {
            get(kind)
                .map(Attr::ne32)
                .transpose()
                .map(Option::unwrap_or_default)
        };
        let family = match get(DEST_ATTR_ADDR_FAMILY) {
            Some(a) => a.ne16()?,
            None => af(service_family),
        };
        Ok(DestinationStatus {
            destination: Destination {
                addr: parse_inet_addr(need(DEST_ATTR_ADDR, "an address")?, family)?,
                port: need(DEST_ATTR_PORT, "a port")?.be16()?,
                forward: Forward::from_code(need(DEST_ATTR_FWD_METHOD, "a method")?.ne32()?)?,
                weight: need(DEST_ATTR_WEIGHT, "a weight")?.ne32()?,
                upper_threshold: u32_or_0(DEST_ATTR_U_THRESH)?,
                lower_threshold: u32_or_0(DEST_ATTR_L_THRESH)?,
            },
            active_conns: u32_or_0(DEST_ATTR_ACTIVE_CONNS)?,
            inactive_conns: u32_or_0(DEST_ATTR_INACT_CONNS)?,
            persistent_conns: u32_or_0(DEST_ATTR_PERSIST_CONNS)?,
        })
    }
}

/// Connection timeouts in seconds (`ipvsadm --set tcp tcpfin udp`); 0 on a set leaves
/// that timeout unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp: u32,
    pub tcp_fin: u32,
    pub udp: u32,
}

/// `GET_INFO`: the IPVS version and the connection table size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Info {
    /// `major << 16 | minor << 8 | patch`.
    pub version: u32,
    pub conn_table_size: u32,
}

/// An IPVS client: a generic netlink socket and the `IPVS` family id.
pub struct Ipvs {
    socket: NetlinkSocket,
    family: u16,
}

impl Ipvs {
    /// Opens a socket in `netns` and resolves the `IPVS` family (which autoloads
    /// `ip_vs` where module autoloading works). `ENOENT`: IPVS is not available.
    pub fn open(netns: &Netns) -> Result<Ipvs, NetlinkError> {
        let mut socket = NetlinkSocket::open(NetlinkProtocol::Generic, netns)?;
        let family = resolve_family(&mut socket, "IPVS")?;
        Ok(Ipvs { socket, family })
    }

    /// One command; `body` writes its attributes, `on_reply` gets each answer's.
    fn command(
        &mut self,
        cmd: u8,
        flags: u16,
        operation: &str,
        body: impl FnOnce(&mut AttrWriter<'_>),
        mut on_reply: impl FnMut(&[Attr<'_>]) -> Result<(), Malformed>,
    ) -> Result<(), NetlinkError> {
        let seq = self.socket.next_seq();
        let mut w = MessageWriter::with_capacity(128);
        w.begin(
            self.family,
            NLM_F_REQUEST | flags,
            seq,
            &genlmsghdr(cmd, IPVS_GENL_VERSION),
        );
        body(&mut w.attrs());
        self.socket.exchange(w.finish(), seq, operation, |m| {
            let parsed = m
                .after_fixed(4)
                .and_then(|p| attrs(p).collect::<Result<Vec<_>, _>>())
                .and_then(|all| on_reply(&all));
            parsed.map_err(|e| NetlinkError::malformed(operation, e))
        })
    }

    fn change(
        &mut self,
        cmd: u8,
        operation: String,
        body: impl FnOnce(&mut AttrWriter<'_>),
    ) -> Result<(), NetlinkError> {
        self.command(cmd, NLM_F_ACK, &operation, body, |_| Ok(()))
    }

    pub fn add_service(&mut self, service: &Service) -> Result<(), NetlinkError> {
        self.change(
            CMD_NEW_SERVICE,
            format!("adding IPVS service {:?}", service.id),
            |a| {
                a.nested(CMD_ATTR_SERVICE, |a| service.encode(a));
            },
        )
    }

    /// Changes a service's scheduler, flags, timeout or netmask.
    pub fn update_service(&mut self, service: &Service) -> Result<(), NetlinkError> {
        self.change(
            CMD_SET_SERVICE,
            format!("updating IPVS service {:?}", service.id),
            |a| {
                a.nested(CMD_ATTR_SERVICE, |a| service.encode(a));
            },
        )
    }

    pub fn delete_service(&mut self, id: &ServiceId) -> Result<(), NetlinkError> {
        self.change(
            CMD_DEL_SERVICE,
            format!("deleting IPVS service {id:?}"),
            |a| {
                a.nested(CMD_ATTR_SERVICE, |a| id.encode(a));
            },
        )
    }

    /// One service; `None` when there is none (`ESRCH`).
    pub fn service(&mut self, id: &ServiceId) -> Result<Option<Service>, NetlinkError> {
        let mut found = None;
        let result = self.command(
            CMD_GET_SERVICE,
            NLM_F_ACK,
            &format!("reading IPVS service {id:?}"),
            |a| a.nested(CMD_ATTR_SERVICE, |a| id.encode(a)),
            |all| {
                for a in all.iter().filter(|a| a.kind == CMD_ATTR_SERVICE) {
                    found = Some(Service::decode(a.value)?);
                }
                Ok(())
            },
        );
        match result {
            Err(e) if e.is_kernel(Errno::ESRCH) => Ok(None),
            other => other.map(|()| found),
        }
    }

    /// Every virtual server.
    pub fn services(&mut self) -> Result<Vec<Service>, NetlinkError> {
        let mut out = Vec::new();
        self.command(
            CMD_GET_SERVICE,
            NLM_F_DUMP,
            "dumping IPVS services",
            |_| {},
            |all| {
                for a in all.iter().filter(|a| a.kind == CMD_ATTR_SERVICE) {
                    out.push(Service::decode(a.value)?);
                }
                Ok(())
            },
        )?;
        Ok(out)
    }

    pub fn add_destination(
        &mut self,
        id: &ServiceId,
        dest: &Destination,
    ) -> Result<(), NetlinkError> {
        let operation = format!(
            "adding IPVS destination {}:{} to {id:?}",
            dest.addr, dest.port
        );
        self.change(CMD_NEW_DEST, operation, |a| {
            a.nested(CMD_ATTR_SERVICE, |a| id.encode(a));
            a.nested(CMD_ATTR_DEST, |a| dest.encode(a));
        })
    }

    /// Changes a destination's weight, method or thresholds.
    pub fn update_destination(
        &mut self,
        id: &ServiceId,
        dest: &Destination,
    ) -> Result<(), NetlinkError> {
        let operation = format!(
            "updating IPVS destination {}:{} of {id:?}",
            dest.addr, dest.port
        );
        self.change(CMD_SET_DEST, operation, |a| {
            a.nested(CMD_ATTR_SERVICE, |a| id.encode(a));
            a.nested(CMD_ATTR_DEST, |a| dest.encode(a));
        })
    }

    pub fn delete_destination(
        &mut self,
        id: &ServiceId,
        addr: &IpAddr,
        port: u16,
    ) -> Result<(), NetlinkError> {
        let operation = format!("deleting IPVS destination {addr}:{port} of {id:?}");
        self.change(CMD_DEL_DEST, operation, |a| {
            a.nested(CMD_ATTR_SERVICE, |a| id.encode(a));
            a.nested(CMD_ATTR_DEST, |a| Destination::encode_key(addr, port, a));
        })
    }

    /// The real servers of a virtual server, with their connection counts.
    pub fn destinations(&mut self, id: &ServiceId) -> Result<Vec<DestinationStatus>, NetlinkError> {
        let mut out = Vec::new();
        let family = id.family();
        self.command(
            CMD_GET_DEST,
            NLM_F_DUMP,
            &format!("dumping IPVS destinations of {id:?}"),
            |a| a.nested(CMD_ATTR_SERVICE, |a| id.encode(a)),
            |all| {
                for a in all.iter().filter(|a| a.kind == CMD_ATTR_DEST) {
                    out.push(DestinationStatus::decode(a.value, family)?);
                }
                Ok(())
            },
        )?;
        Ok(out)
    }

    pub fn timeouts(&mut self) -> Result<Timeouts, NetlinkError> {
        let mut t = Timeouts::default();
        self.command(
            CMD_GET_CONFIG,
            NLM_F_ACK,
            "reading IPVS timeouts",
            |_| {},
            |all| {
                for a in all {
                    match a.kind {
                        CMD_ATTR_TIMEOUT_TCP => t.tcp = a.ne32()?,
                        CMD_ATTR_TIMEOUT_TCP_FIN => t.tcp_fin = a.ne32()?,
                        CMD_ATTR_TIMEOUT_UDP => t.udp = a.ne32()?,
                        _ => {}
                    }
                }
                Ok(())
            },
        )?;
        Ok(t)
    }

    pub fn set_timeouts(&mut self, t: &Timeouts) -> Result<(), NetlinkError> {
        self.change(CMD_SET_CONFIG, "setting IPVS timeouts".into(), |a| {
            a.ne32(CMD_ATTR_TIMEOUT_TCP, t.tcp);
            a.ne32(CMD_ATTR_TIMEOUT_TCP_FIN, t.tcp_fin);
            a.ne32(CMD_ATTR_TIMEOUT_UDP, t.udp);
        })
    }

    pub fn info(&mut self) -> Result<Info, NetlinkError> {
        let (mut version, mut size) = (None, None);
        self.command(
            CMD_GET_INFO,
            NLM_F_ACK,
            "reading IPVS info",
            |_| {},
            |all| {
                for a in all {
                    match a.kind {
                        INFO_ATTR_VERSION => version = Some(a.ne32()?),
                        INFO_ATTR_CONN_TAB_SIZE => size = Some(a.ne32()?),
                        _ => {}
                    }
                }
                Ok(())
            },
        )?;
        match (version, size) {
            (Some(version), Some(conn_table_size)) => Ok(Info {
                version,
                conn_table_size,
            }),
            _ => Err(NetlinkError::malformed(
                "reading IPVS info",
                Malformed::new("answer without version or table size"),
            )),
        }
    }

    /// Deletes every virtual server of this network namespace (`ipvsadm -C`). Only for
    /// namespaces the caller owns entirely (tests).
    pub fn flush(&mut self) -> Result<(), NetlinkError> {
        self.change(CMD_FLUSH, "flushing IPVS".into(), |_| {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded<T>(value: &T, encode: impl Fn(&T, &mut AttrWriter<'_>)) -> Vec<u8> {
        let mut buf = Vec::new();
        encode(value, &mut AttrWriter(&mut buf));
        buf
    }

    #[test]
    fn services_round_trip() {
        let v4 = Service::new(
            ServiceId::new(Protocol::Tcp, "10.96.0.1".parse().unwrap(), 443),
            "rr",
        )
        .persistent(10800);
        let v6 = Service::new(
            ServiceId::new(Protocol::Udp, "fd00::10".parse().unwrap(), 53),
            "mh",
        );
        let mark = Service::new(
            ServiceId::Fwmark {
                family: IpFamily::V6,
                mark: 7,
            },
            "wrr",
        );
        for s in [v4, v6, mark] {
            let decoded = Service::decode(&encoded(&s, Service::encode)).unwrap();
            assert_eq!(decoded, s);
        }
    }

    #[test]
    fn destinations_round_trip() {
        for addr in ["10.0.0.2", "fd00:10::2"] {
            let mut d = Destination::masquerade(addr.parse().unwrap(), 8080);
            d.weight = 0;
            d.upper_threshold = 5;
            let bytes = encoded(&d, Destination::encode);
            let status = DestinationStatus::decode(&bytes, IpFamily::V4).unwrap();
            assert_eq!(status.destination, d);
            assert_eq!(status.active_conns, 0);
        }
    }

    #[test]
    fn missing_or_short_attributes_are_errors() {
        let s = Service::new(
            ServiceId::new(Protocol::Tcp, "10.96.0.1".parse().unwrap(), 80),
            "rr",
        );
        let bytes = encoded(&s, Service::encode);
        for cut in 0..bytes.len() {
            // Never a panic; a cut inside the identifying attributes is an error.
            let r = Service::decode(&bytes[..cut]);
            if cut < 40 {
                assert!(r.is_err(), "cut at {cut}: {r:?}");
            }
        }
        // A 2-byte address.
        let mut buf = Vec::new();
        let mut a = AttrWriter(&mut buf);
        a.ne16(SVC_ATTR_AF, AF_INET);
        a.ne16(SVC_ATTR_PROTOCOL, 6);
        a.put(SVC_ATTR_ADDR, &[1, 2]);
        a.be16(SVC_ATTR_PORT, 80);
        assert!(Service::decode(&buf).is_err());
        assert!(DestinationStatus::decode(&[], IpFamily::V4).is_err());
    }
}

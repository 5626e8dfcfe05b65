//! ctnetlink (`NETLINK_NETFILTER`, subsystem `NFNL_SUBSYS_CTNETLINK`): conntrack flows
//! as [`Flow`]s, listed with one `IPCTNL_MSG_CT_GET` dump and deleted with
//! `IPCTNL_MSG_CT_DELETE`, many to a datagram.
//!
//! Hand-written: `netlink-packet-netfilter` covers nflog, not conntrack. A dump is
//! decoded as it streams in (each flow handed to the caller, nothing kept), so a table
//! of 100k+ flows costs no more memory than what the caller keeps. Every answer is
//! length-checked. Needs `CAP_NET_ADMIN` and `nf_conntrack_netlink` (autoloaded).
//! ctnetlink values (ports, ids, zones) are big-endian.

use std::net::{IpAddr, Ipv6Addr};

use nix::errno::Errno;
use switchyard_model::{IpFamily, Protocol};

use crate::{
    attr::{attrs, AttrWriter},
    error::{Malformed, NetlinkError},
    message::{
        error_code, messages, Message, MessageWriter, NLMSG_ERROR, NLM_F_ACK, NLM_F_DUMP,
        NLM_F_REQUEST,
    },
    socket::{NetlinkSocket, Netns, Protocol as NetlinkProtocol},
};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
/// A flow in a dump (`IPCTNL_MSG_CT_NEW`).
pub const CT_NEW: u16 = NFNL_SUBSYS_CTNETLINK << 8;
const CT_GET: u16 = NFNL_SUBSYS_CTNETLINK << 8 | 1;
const CT_DELETE: u16 = NFNL_SUBSYS_CTNETLINK << 8 | 2;

pub const AF_UNSPEC: u8 = 0;
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// Deletes sent in one datagram before reading their acknowledgements.
const DELETE_BATCH: usize = 64;

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
        [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
            .into_iter()
            .find(|p| p.number() == self.original.protocol)
    }
}

fn family_byte(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

fn nfgenmsg(family: u8) -> [u8; 4] {
    [family, 0, 0, 0]
}

fn put_tuple(a: &mut AttrWriter<'_>, kind: u16, tuple: &Tuple) {
    a.nested(kind, |a| {
        a.nested(CTA_TUPLE_IP, |a| match (tuple.src, tuple.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                a.put(CTA_IP_V4_SRC, &s.octets());
                a.put(CTA_IP_V4_DST, &d.octets());
            }
            (s, d) => {
                a.put(CTA_IP_V6_SRC, &v6(s).octets());
                a.put(CTA_IP_V6_DST, &v6(d).octets());
            }
        });
        a.nested(CTA_TUPLE_PROTO, |a| {
            a.u8(CTA_PROTO_NUM, tuple.protocol);
            a.be16(CTA_PROTO_SRC_PORT, tuple.src_port);
            a.be16(CTA_PROTO_DST_PORT, tuple.dst_port);
        });
    });
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Appends a request to dump the whole table of `family` (`AF_UNSPEC`: every family).
pub fn encode_dump_request(w: &mut MessageWriter, seq: u32, family: u8) {
    w.begin(CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, &nfgenmsg(family));
    w.end();
}

/// Appends a request to delete `flow`, identified by its original tuple (and its id
/// and zone when known), asking for an acknowledgement.
pub fn encode_delete_request(w: &mut MessageWriter, seq: u32, flow: &Flow) {
    let family = family_byte(&flow.original.src);
    w.begin(CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, seq, &nfgenmsg(family));
    let mut a = w.attrs();
    put_tuple(&mut a, CTA_TUPLE_ORIG, &flow.original);
    if let Some(zone) = flow.zone {
        a.be16(CTA_ZONE, zone);
    }
    if let Some(id) = flow.id {
        a.be32(CTA_ID, id);
    }
    w.end();
}

/// Appends `flow` as the kernel reports it in a dump (for tests of the decoder).
pub fn encode_flow(w: &mut MessageWriter, seq: u32, flow: &Flow) {
    let family = family_byte(&flow.original.src);
    w.begin(CT_NEW, 0x2, seq, &nfgenmsg(family));
    let mut a = w.attrs();
    put_tuple(&mut a, CTA_TUPLE_ORIG, &flow.original);
    put_tuple(&mut a, CTA_TUPLE_REPLY, &flow.reply);
    a.be32(CTA_STATUS, 8);
    if let Some(id) = flow.id {
        a.be32(CTA_ID, id);
    }
    if let Some(zone) = flow.zone {
        a.be16(CTA_ZONE, zone);
    }
    w.end();
}

fn decode_tuple(buf: &[u8]) -> Result<Tuple, Malformed> {
    let (mut src, mut dst) = (None, None);
    let (mut protocol, mut src_port, mut dst_port) = (None, 0, 0);
    for attr in attrs(buf) {
        let attr = attr?;
        match attr.kind {
            CTA_TUPLE_IP => {
                for a in attr.nested() {
                    let a = a?;
                    match a.kind {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = Some(a.ip()?),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst = Some(a.ip()?),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for a in attr.nested() {
                    let a = a?;
                    match a.kind {
                        CTA_PROTO_NUM => protocol = Some(a.u8()?),
                        CTA_PROTO_SRC_PORT => src_port = a.be16()?,
                        CTA_PROTO_DST_PORT => dst_port = a.be16()?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    match (src, dst, protocol) {
        (Some(src), Some(dst), Some(protocol)) => Ok(Tuple {
            src,
            dst,
            protocol,
            src_port,
            dst_port,
        }),
        _ => Err(Malformed::new(
            "conntrack tuple without addresses or protocol",
        )),
    }
}

/// Decodes the payload (after the netlink header) of a `CT_NEW` message of a dump.
pub fn decode_flow(payload: &[u8]) -> Result<Flow, Malformed> {
    let message = Message {
        kind: CT_NEW,
        flags: 0,
        seq: 0,
        payload,
    };
    let body = message.after_fixed(4)?;
    let (mut original, mut reply, mut id, mut zone) = (None, None, None, None);
    for attr in attrs(body) {
        let attr = attr?;
        match attr.kind {
            CTA_TUPLE_ORIG => original = Some(decode_tuple(attr.value)?),
            CTA_TUPLE_REPLY => reply = Some(decode_tuple(attr.value)?),
            CTA_ID => id = Some(attr.be32()?),
            CTA_ZONE => zone = Some(attr.be16()?),
            _ => {}
        }
    }
    match (original, reply) {
        (Some(original), Some(reply)) => Ok(Flow {
            original,
            reply,
            id,
            zone,
        }),
        _ => Err(Malformed::new("conntrack flow without both tuples")),
    }
}

/// A ctnetlink socket. Not shared between threads; open one per user.
pub struct Ctnetlink {
    socket: NetlinkSocket,
    send: MessageWriter,
}

impl Ctnetlink {
    pub fn open(netns: &Netns) -> Result<Ctnetlink, NetlinkError> {
        Ok(Ctnetlink {
            socket: NetlinkSocket::open(NetlinkProtocol::Netfilter, netns)?,
            send: MessageWriter::with_capacity(DELETE_BATCH * 128),
        })
    }

    /// Dumps the table of `family` (`None`: every family), handing each flow to
    /// `on_flow` as it is decoded. A flow that cannot be decoded fails the dump (after
    /// the dump is read to its end).
    pub fn dump(
        &mut self,
        family: Option<IpFamily>,
        mut on_flow: impl FnMut(Flow),
    ) -> Result<(), NetlinkError> {
        let family = match family {
            None => AF_UNSPEC,
            Some(IpFamily::V4) => AF_INET,
            Some(IpFamily::V6) => AF_INET6,
        };
        let seq = self.socket.next_seq();
        self.send.clear();
        encode_dump_request(&mut self.send, seq, family);
        const WHAT: &str = "ctnetlink dump";
        self.socket.exchange(self.send.finish(), seq, WHAT, |m| {
            if m.kind == CT_NEW {
                let flow = decode_flow(m.payload).map_err(|e| NetlinkError::malformed(WHAT, e))?;
                on_flow(flow);
            }
            Ok(())
        })
    }

    /// Deletes `flows`, each identified by its original tuple, zone and id. Returns how
    /// many were deleted; flows already gone (`ENOENT`) are skipped silently.
    pub fn delete(&mut self, flows: &[Flow]) -> Result<usize, NetlinkError> {
        const WHAT: &str = "ctnetlink delete";
        let mut deleted = 0;
        for batch in flows.chunks(DELETE_BATCH) {
            let first = self.socket.reserve_seqs(batch.len() as u32);
            self.send.clear();
            for (i, flow) in batch.iter().enumerate() {
                encode_delete_request(&mut self.send, first.wrapping_add(i as u32), flow);
            }
            self.socket.send(self.send.finish(), WHAT)?;
            let mut pending = batch.len();
            let mut failure = None;
            while pending > 0 {
                let data = self.socket.receive(WHAT)?;
                for m in messages(data) {
                    let m = m.map_err(|e| NetlinkError::malformed(WHAT, e))?;
                    if m.kind != NLMSG_ERROR || m.seq.wrapping_sub(first) as usize >= batch.len() {
                        continue; // not an answer to this batch
                    }
                    pending -= 1;
                    match error_code(&m).map_err(|e| NetlinkError::malformed(WHAT, e))? {
                        0 => deleted += 1,
                        e if e == Errno::ENOENT as i32 => {}
                        errno => {
                            failure.get_or_insert(NetlinkError::kernel(WHAT, errno));
                        }
                    }
                }
            }
            if let Some(failure) = failure {
                return Err(failure);
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn flow(orig_src: &str, orig_dst: &str, reply_src: &str) -> Flow {
        Flow {
            original: Tuple {
                src: orig_src.parse().unwrap(),
                dst: orig_dst.parse().unwrap(),
                protocol: 17,
                src_port: 1234,
                dst_port: 53,
            },
            reply: Tuple {
                src: reply_src.parse().unwrap(),
                dst: orig_src.parse().unwrap(),
                protocol: 17,
                src_port: 5353,
                dst_port: 1234,
            },
            id: Some(0xdead_beef),
            zone: None,
        }
    }

    #[test]
    fn flow_round_trips_ipv4_and_ipv6() {
        let v4 = flow("10.0.0.2", "172.30.0.10", "10.180.0.1");
        let mut v6 = flow("fd00::2", "fd00:30::10", "fd00:180::1");
        v6.zone = Some(7);
        v6.id = None;
        let mut w = MessageWriter::new();
        encode_flow(&mut w, 1, &v4);
        encode_flow(&mut w, 2, &v6);
        let buf = w.into_bytes();
        let msgs: Vec<Message> = messages(&buf).map(Result::unwrap).collect();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].kind, CT_NEW);
        assert_eq!((msgs[0].seq, msgs[1].seq), (1, 2));
        assert_eq!(decode_flow(msgs[0].payload).unwrap(), v4);
        assert_eq!(decode_flow(msgs[1].payload).unwrap(), v6);
        assert_eq!(msgs[1].payload[0], AF_INET6);
        assert_eq!(v4.protocol(), Some(Protocol::Udp));
    }

    #[test]
    fn delete_request_layout() {
        let f = flow("10.0.0.2", "172.30.0.10", "10.180.0.1");
        let mut w = MessageWriter::new();
        encode_delete_request(&mut w, 9, &f);
        let buf = w.into_bytes();
        let msgs: Vec<Message> = messages(&buf).map(Result::unwrap).collect();
        let m = msgs[0];
        assert_eq!(m.kind, 0x0102);
        assert_eq!(m.flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(&m.payload[..4], &[AF_INET, 0, 0, 0]);
        let all: Vec<_> = attrs(&m.payload[4..]).map(Result::unwrap).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].kind, CTA_TUPLE_ORIG);
        assert_eq!(decode_tuple(all[0].value).unwrap(), f.original);
        assert_eq!(all[1].be32().unwrap(), 0xdead_beef);
        // The nested flag is set on the wire.
        assert_eq!(u16::from_ne_bytes([m.payload[6], m.payload[7]]), 0x8001);
    }

    #[test]
    fn malformed_flows_are_errors() {
        let mut w = MessageWriter::new();
        w.begin(CT_NEW, 0, 1, &nfgenmsg(AF_INET));
        put_tuple(
            &mut w.attrs(),
            CTA_TUPLE_ORIG,
            &flow("10.0.0.1", "10.0.0.2", "10.0.0.3").original,
        );
        let buf = w.into_bytes();
        let m = messages(&buf).next().unwrap().unwrap();
        assert!(decode_flow(m.payload).is_err(), "no reply tuple");
        assert!(decode_flow(&m.payload[..m.payload.len() - 6]).is_err());
        assert!(decode_flow(&m.payload[..2]).is_err(), "short nfgenmsg");
    }
}

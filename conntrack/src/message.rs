//! The ctnetlink wire format: netlink header, `nfgenmsg`, and the `CTA_*` attributes
//! Switchyard needs. Requests are encoded into a caller's buffer; answers are decoded
//! in place, message by message and attribute by attribute, without allocating.
//!
//! Netlink and attribute headers are in host byte order; ctnetlink values (ports, ids,
//! zones) are big-endian.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{error::ConntrackError, flow::Flow, flow::Tuple};

// Netlink message types and flags (linux/netlink.h).
pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDRLEN: usize = 16;

// nfnetlink (linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h).
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const NFNETLINK_V0: u8 = 0;
const NFGENMSG_LEN: usize = 4;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

/// Message type of a flow in a dump (`IPCTNL_MSG_CT_NEW` of the ctnetlink subsystem).
pub const CT_NEW: u16 = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW;
const CT_GET: u16 = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET;
const CT_DELETE: u16 = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE;

// Address families.
pub const AF_UNSPEC: u8 = 0;
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

// Attributes.
const NLA_HDRLEN: usize = 4;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
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

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The address family byte of a flow.
pub fn family_of(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    }
}

// ---------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------

/// Starts a message; returns its offset for [`end_message`].
fn begin_message(buf: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, family: u8) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched by end_message
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    buf.extend_from_slice(&[family, NFNETLINK_V0, 0, 0]);
    start
}

fn end_message(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

fn put_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = NLA_HDRLEN + value.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(buf.len() + (align4(len) - len), 0);
}

/// Starts a nested attribute; returns its offset for [`end_nest`].
fn begin_nest(buf: &mut Vec<u8>, kind: u16) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    start
}

fn end_nest(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

fn put_tuple(buf: &mut Vec<u8>, kind: u16, tuple: &Tuple) {
    let outer = begin_nest(buf, kind);
    let ip = begin_nest(buf, CTA_TUPLE_IP);
    match (tuple.src, tuple.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            put_attr(buf, CTA_IP_V4_SRC, &s.octets());
            put_attr(buf, CTA_IP_V4_DST, &d.octets());
        }
        (s, d) => {
            put_attr(buf, CTA_IP_V6_SRC, &v6(s).octets());
            put_attr(buf, CTA_IP_V6_DST, &v6(d).octets());
        }
    }
    end_nest(buf, ip);
    let proto = begin_nest(buf, CTA_TUPLE_PROTO);
    put_attr(buf, CTA_PROTO_NUM, &[tuple.protocol]);
    put_attr(buf, CTA_PROTO_SRC_PORT, &tuple.src_port.to_be_bytes());
    put_attr(buf, CTA_PROTO_DST_PORT, &tuple.dst_port.to_be_bytes());
    end_nest(buf, proto);
    end_nest(buf, outer);
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Appends a request to dump the whole table of `family` (`AF_UNSPEC`: every family).
pub fn encode_dump_request(buf: &mut Vec<u8>, seq: u32, family: u8) {
    let start = begin_message(buf, CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, family);
    end_message(buf, start);
}

/// Appends a request to delete `flow`, identified by its original tuple (and its id
/// and zone when known), asking for an acknowledgement.
pub fn encode_delete_request(buf: &mut Vec<u8>, seq: u32, flow: &Flow) {
    let family = family_of(&flow.original.src);
    let start = begin_message(buf, CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, seq, family);
    put_tuple(buf, CTA_TUPLE_ORIG, &flow.original);
    if let Some(zone) = flow.zone {
        put_attr(buf, CTA_ZONE, &zone.to_be_bytes());
    }
    if let Some(id) = flow.id {
        put_attr(buf, CTA_ID, &id.to_be_bytes());
    }
    end_message(buf, start);
}

/// Appends `flow` as the kernel reports it in a dump (for tests of the decoder).
#[cfg(test)]
pub fn encode_flow(buf: &mut Vec<u8>, seq: u32, flow: &Flow) {
    let family = family_of(&flow.original.src);
    let start = begin_message(buf, CT_NEW, 0x2, seq, family);
    put_tuple(buf, CTA_TUPLE_ORIG, &flow.original);
    put_tuple(buf, CTA_TUPLE_REPLY, &flow.reply);
    put_attr(buf, 3 /* CTA_STATUS */, &8u32.to_be_bytes());
    if let Some(id) = flow.id {
        put_attr(buf, CTA_ID, &id.to_be_bytes());
    }
    if let Some(zone) = flow.zone {
        put_attr(buf, CTA_ZONE, &zone.to_be_bytes());
    }
    end_message(buf, start);
}

// ---------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------

/// One netlink message of a datagram; `payload` follows the 16-byte header.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// The netlink messages of one received datagram.
pub fn messages(buf: &[u8]) -> Messages<'_> {
    Messages { rest: buf }
}

pub struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>, ConntrackError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let buf = self.rest;
        if buf.len() < NLMSG_HDRLEN {
            self.rest = &[];
            return Some(Err(ConntrackError::Malformed("truncated netlink header")));
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            self.rest = &[];
            return Some(Err(ConntrackError::Malformed("bad netlink message length")));
        }
        let msg = Message {
            kind: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32::from_ne_bytes(buf[8..12].try_into().expect("4 bytes")),
            payload: &buf[NLMSG_HDRLEN..len],
        };
        self.rest = &buf[align4(len).min(buf.len())..];
        Some(Ok(msg))
    }
}

/// The error code of an `NLMSG_ERROR` (0: an acknowledgement) or `NLMSG_DONE` payload,
/// as a positive errno.
pub fn decode_error(payload: &[u8]) -> Result<i32, ConntrackError> {
    let code: [u8; 4] = payload
        .get(0..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(ConntrackError::Malformed("truncated error message"))?;
    Ok(-i32::from_ne_bytes(code))
}

/// The attributes of a buffer: `(type without flags, value)`.
fn attrs(buf: &[u8]) -> Attrs<'_> {
    Attrs { rest: buf }
}

struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), ConntrackError>;

    fn next(&mut self) -> Option<Self::Item> {
        let buf = self.rest;
        if buf.len() < NLA_HDRLEN {
            // Trailing padding shorter than a header is fine; anything else is not.
            self.rest = &[];
            return (!buf.is_empty() && buf.iter().any(|b| *b != 0))
                .then_some(Err(ConntrackError::Malformed("truncated attribute")));
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > buf.len() {
            self.rest = &[];
            return Some(Err(ConntrackError::Malformed("bad attribute length")));
        }
        self.rest = &buf[align4(len).min(buf.len())..];
        Some(Ok((kind, &buf[NLA_HDRLEN..len])))
    }
}

fn be16(value: &[u8]) -> Result<u16, ConntrackError> {
    value
        .try_into()
        .map(u16::from_be_bytes)
        .map_err(|_| ConntrackError::Malformed("16-bit attribute of the wrong size"))
}

fn be32(value: &[u8]) -> Result<u32, ConntrackError> {
    value
        .try_into()
        .map(u32::from_be_bytes)
        .map_err(|_| ConntrackError::Malformed("32-bit attribute of the wrong size"))
}

fn ipv4(value: &[u8]) -> Result<IpAddr, ConntrackError> {
    let octets: [u8; 4] = value
        .try_into()
        .map_err(|_| ConntrackError::Malformed("IPv4 address of the wrong size"))?;
    Ok(IpAddr::V4(Ipv4Addr::from(octets)))
}

fn ipv6(value: &[u8]) -> Result<IpAddr, ConntrackError> {
    let octets: [u8; 16] = value
        .try_into()
        .map_err(|_| ConntrackError::Malformed("IPv6 address of the wrong size"))?;
    Ok(IpAddr::V6(Ipv6Addr::from(octets)))
}

fn decode_tuple(buf: &[u8]) -> Result<Tuple, ConntrackError> {
    let (mut src, mut dst) = (None, None);
    let (mut protocol, mut src_port, mut dst_port) = (None, 0, 0);
    for attr in attrs(buf) {
        let (kind, value) = attr?;
        match kind {
            CTA_TUPLE_IP => {
                for attr in attrs(value) {
                    let (kind, value) = attr?;
                    match kind {
                        CTA_IP_V4_SRC => src = Some(ipv4(value)?),
                        CTA_IP_V4_DST => dst = Some(ipv4(value)?),
                        CTA_IP_V6_SRC => src = Some(ipv6(value)?),
                        CTA_IP_V6_DST => dst = Some(ipv6(value)?),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for attr in attrs(value) {
                    let (kind, value) = attr?;
                    match kind {
                        CTA_PROTO_NUM => protocol = value.first().copied(),
                        CTA_PROTO_SRC_PORT => src_port = be16(value)?,
                        CTA_PROTO_DST_PORT => dst_port = be16(value)?,
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
        _ => Err(ConntrackError::Malformed(
            "tuple without addresses or protocol",
        )),
    }
}

/// Decodes the payload (after the netlink header) of a `CT_NEW` message of a dump.
pub fn decode_flow(payload: &[u8]) -> Result<Flow, ConntrackError> {
    let body = payload
        .get(NFGENMSG_LEN..)
        .ok_or(ConntrackError::Malformed("truncated nfgenmsg"))?;
    let (mut original, mut reply, mut id, mut zone) = (None, None, None, None);
    for attr in attrs(body) {
        let (kind, value) = attr?;
        match kind {
            CTA_TUPLE_ORIG => original = Some(decode_tuple(value)?),
            CTA_TUPLE_REPLY => reply = Some(decode_tuple(value)?),
            CTA_ID => id = Some(be32(value)?),
            CTA_ZONE => zone = Some(be16(value)?),
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
        _ => Err(ConntrackError::Malformed("flow without both tuples")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(orig_src: &str, orig_dst: &str, reply_src: &str) -> Flow {
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
        let mut buf = Vec::new();
        encode_flow(&mut buf, 1, &v4);
        encode_flow(&mut buf, 2, &v6);
        let msgs: Vec<Message> = messages(&buf).map(Result::unwrap).collect();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].kind, CT_NEW);
        assert_eq!((msgs[0].seq, msgs[1].seq), (1, 2));
        assert_eq!(decode_flow(msgs[0].payload).unwrap(), v4);
        assert_eq!(decode_flow(msgs[1].payload).unwrap(), v6);
        assert_eq!(msgs[1].payload[0], AF_INET6);
    }

    #[test]
    fn delete_request_layout() {
        let f = flow("10.0.0.2", "172.30.0.10", "10.180.0.1");
        let mut buf = Vec::new();
        encode_delete_request(&mut buf, 9, &f);
        let msgs: Vec<Message> = messages(&buf).map(Result::unwrap).collect();
        assert_eq!(msgs.len(), 1);
        let m = msgs[0];
        assert_eq!(m.kind, 0x0102);
        assert_eq!(m.flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(m.seq, 9);
        assert_eq!(buf.len() % 4, 0);
        assert_eq!(&m.payload[..4], &[AF_INET, 0, 0, 0]);
        let attrs: Vec<(u16, &[u8])> = attrs(&m.payload[4..]).map(Result::unwrap).collect();
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[0].0, CTA_TUPLE_ORIG);
        assert_eq!(decode_tuple(attrs[0].1).unwrap(), f.original);
        assert_eq!(
            (attrs[1].0, attrs[1].1),
            (CTA_ID, &0xdead_beefu32.to_be_bytes()[..])
        );
        // The nested flag is set on the wire.
        assert_eq!(
            u16::from_ne_bytes([m.payload[6], m.payload[7]]),
            CTA_TUPLE_ORIG | NLA_F_NESTED
        );
    }

    #[test]
    fn dump_request_layout() {
        let mut buf = Vec::new();
        encode_dump_request(&mut buf, 3, AF_INET6);
        assert_eq!(buf.len(), 20);
        assert_eq!(u32::from_ne_bytes(buf[0..4].try_into().unwrap()), 20);
        assert_eq!(u16::from_ne_bytes([buf[4], buf[5]]), 0x0101);
        assert_eq!(u16::from_ne_bytes([buf[6], buf[7]]), 0x301);
        assert_eq!(buf[16], AF_INET6);
    }

    #[test]
    fn errors_and_malformed_input() {
        assert_eq!(decode_error(&(-2i32).to_ne_bytes()).unwrap(), 2);
        assert_eq!(decode_error(&0i32.to_ne_bytes()).unwrap(), 0);
        assert!(decode_error(&[1, 2]).is_err());
        // Length larger than the buffer.
        let mut buf = Vec::new();
        encode_dump_request(&mut buf, 1, AF_INET);
        buf[0] = 200;
        assert!(messages(&buf).next().unwrap().is_err());
        // A flow missing its reply tuple.
        let mut buf = Vec::new();
        let start = begin_message(&mut buf, CT_NEW, 0, 1, AF_INET);
        put_tuple(
            &mut buf,
            CTA_TUPLE_ORIG,
            &flow("10.0.0.1", "10.0.0.2", "10.0.0.3").original,
        );
        end_message(&mut buf, start);
        let m = messages(&buf).next().unwrap().unwrap();
        assert!(decode_flow(m.payload).is_err());
        // A truncated attribute inside.
        assert!(decode_flow(&m.payload[..m.payload.len() - 6]).is_err());
    }
}

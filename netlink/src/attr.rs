//! Netlink attributes (`struct nlattr`: 16-bit length, 16-bit type, value, padding to 4
//! bytes): [`AttrWriter`] appends them to a message being built, [`attrs`] walks them in
//! a received message with every length checked before anything is sliced (through
//! `netlink-packet-core`'s checked `NlaBuffer`), and [`Attr`]'s getters check each
//! value's size.
//!
//! Attribute headers are in host byte order. Values are not: nf_tables and ctnetlink
//! integers are big-endian, generic netlink and rtnetlink ones host-endian, ports are
//! big-endian everywhere. The getters and setters say which.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::NlasIterator;

use crate::error::Malformed;

pub const NLA_F_NESTED: u16 = 0x8000;
pub const NLA_F_NET_BYTEORDER: u16 = 0x4000;
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);
pub const NLA_HDRLEN: usize = 4;

pub const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends attributes to a message buffer.
pub struct AttrWriter<'a>(pub &'a mut Vec<u8>);

impl AttrWriter<'_> {
    /// One attribute with `value` as is. Values longer than an attribute can hold
    /// (65531 bytes) are a bug of the caller's encoding; nested lists are split before.
    pub fn put(&mut self, kind: u16, value: &[u8]) {
        let len = NLA_HDRLEN + value.len();
        debug_assert!(len <= usize::from(u16::MAX), "attribute {kind} too long");
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(self.0.len() + (align4(len) - len), 0);
    }

    pub fn u8(&mut self, kind: u16, value: u8) {
        self.put(kind, &[value]);
    }

    pub fn be16(&mut self, kind: u16, value: u16) {
        self.put(kind, &value.to_be_bytes());
    }

    pub fn ne16(&mut self, kind: u16, value: u16) {
        self.put(kind, &value.to_ne_bytes());
    }

    pub fn be32(&mut self, kind: u16, value: u32) {
        self.put(kind, &value.to_be_bytes());
    }

    pub fn ne32(&mut self, kind: u16, value: u32) {
        self.put(kind, &value.to_ne_bytes());
    }

    pub fn be64(&mut self, kind: u16, value: u64) {
        self.put(kind, &value.to_be_bytes());
    }

    /// A NUL-terminated string.
    pub fn str(&mut self, kind: u16, value: &str) {
        let len = NLA_HDRLEN + value.len() + 1;
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value.as_bytes());
        self.0.push(0);
        self.0.resize(self.0.len() + (align4(len) - len), 0);
    }

    /// An address's bytes (4 or 16).
    pub fn ip(&mut self, kind: u16, ip: &IpAddr) {
        match ip {
            IpAddr::V4(v4) => self.put(kind, &v4.octets()),
            IpAddr::V6(v6) => self.put(kind, &v6.octets()),
        }
    }

    /// Starts a nested attribute; returns its offset for [`AttrWriter::end`].
    pub fn begin(&mut self, kind: u16) -> usize {
        let start = self.0.len();
        self.0.extend_from_slice(&0u16.to_ne_bytes());
        self.0
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        start
    }

    /// Ends the nested attribute started at `start`.
    pub fn end(&mut self, start: usize) {
        let len = self.0.len() - start;
        debug_assert!(len <= usize::from(u16::MAX), "nested attribute too long");
        self.0[start..start + 2].copy_from_slice(&(len as u16).to_ne_bytes());
    }

    /// A nested attribute whose content `body` writes.
    pub fn nested(&mut self, kind: u16, body: impl FnOnce(&mut AttrWriter<'_>)) {
        let start = self.begin(kind);
        body(&mut AttrWriter(self.0));
        self.end(start);
    }
}

/// One received attribute: its type (flags masked off) and value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr<'a> {
    pub kind: u16,
    pub value: &'a [u8],
}

fn sized<const N: usize>(value: &[u8], kind: u16, what: &str) -> Result<[u8; N], Malformed> {
    value.try_into().map_err(|_| {
        Malformed(format!(
            "attribute {kind}: {what} of {} bytes, expected {N}",
            value.len()
        ))
    })
}

impl<'a> Attr<'a> {
    pub fn u8(&self) -> Result<u8, Malformed> {
        Ok(sized::<1>(self.value, self.kind, "u8")?[0])
    }

    pub fn be16(&self) -> Result<u16, Malformed> {
        Ok(u16::from_be_bytes(sized(self.value, self.kind, "be16")?))
    }

    pub fn ne16(&self) -> Result<u16, Malformed> {
        Ok(u16::from_ne_bytes(sized(self.value, self.kind, "u16")?))
    }

    pub fn be32(&self) -> Result<u32, Malformed> {
        Ok(u32::from_be_bytes(sized(self.value, self.kind, "be32")?))
    }

    pub fn ne32(&self) -> Result<u32, Malformed> {
        Ok(u32::from_ne_bytes(sized(self.value, self.kind, "u32")?))
    }

    pub fn be64(&self) -> Result<u64, Malformed> {
        Ok(u64::from_be_bytes(sized(self.value, self.kind, "be64")?))
    }

    pub fn ne64(&self) -> Result<u64, Malformed> {
        Ok(u64::from_ne_bytes(sized(self.value, self.kind, "u64")?))
    }

    /// A string, without its terminating NUL (and anything after it).
    pub fn str(&self) -> Result<&'a str, Malformed> {
        let bytes = match self.value.iter().position(|b| *b == 0) {
            Some(nul) => &self.value[..nul],
            None => self.value,
        };
        std::str::from_utf8(bytes)
            .map_err(|_| Malformed(format!("attribute {}: string not UTF-8", self.kind)))
    }

    /// An IPv4 (4 bytes) or IPv6 (16 bytes) address.
    pub fn ip(&self) -> Result<IpAddr, Malformed> {
        match self.value.len() {
            4 => Ok(IpAddr::V4(Ipv4Addr::from(sized::<4>(
                self.value, self.kind, "address",
            )?))),
            16 => Ok(IpAddr::V6(Ipv6Addr::from(sized::<16>(
                self.value, self.kind, "address",
            )?))),
            n => Err(Malformed(format!(
                "attribute {}: address of {n} bytes",
                self.kind
            ))),
        }
    }

    /// The attributes nested in this one.
    pub fn nested(&self) -> Attrs<'a> {
        attrs(self.value)
    }
}

/// Walks the attributes of `data`; a header or length past the end yields one error and
/// ends the walk.
pub fn attrs(data: &[u8]) -> Attrs<'_> {
    Attrs {
        inner: NlasIterator::new(data),
    }
}

pub struct Attrs<'a> {
    inner: NlasIterator<&'a [u8]>,
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<Attr<'a>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(match self.inner.next()? {
            Ok(nla) => {
                let (kind, len) = (nla.kind(), usize::from(nla.length()));
                let data: &'a [u8] = nla.into_inner();
                Ok(Attr {
                    kind,
                    value: &data[NLA_HDRLEN..len],
                })
            }
            Err(e) => Err(Malformed(format!("attribute: {e}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounds() {
        let mut buf = Vec::new();
        let mut w = AttrWriter(&mut buf);
        w.be32(1, 7);
        w.str(2, "svc-a");
        w.nested(3, |w| {
            w.ip(1, &"10.0.0.1".parse().unwrap());
            w.be16(2, 80);
        });
        assert_eq!(buf.len() % 4, 0);
        let all: Vec<Attr> = attrs(&buf).map(Result::unwrap).collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].be32().unwrap(), 7);
        assert_eq!(all[1].str().unwrap(), "svc-a");
        assert_eq!(all[2].kind, 3, "nested flag masked off");
        let inner: Vec<Attr> = all[2].nested().map(Result::unwrap).collect();
        assert_eq!(
            inner[0].ip().unwrap(),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(inner[1].be16().unwrap(), 80);
        // Wrong sizes are errors.
        assert!(all[0].be16().is_err());
        assert!(all[1].ip().is_err());
        // A length past the end: one error, then nothing.
        let mut bad = buf.clone();
        bad[0] = 200;
        let mut it = attrs(&bad);
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
        // A length shorter than the header.
        let mut bad = buf.clone();
        bad[0] = 2;
        assert!(attrs(&bad).next().unwrap().is_err());
        // Truncated header.
        assert!(attrs(&buf[..3]).next().unwrap().is_err());
        assert!(attrs(&[]).next().is_none());
    }
}

//! Netlink messages (`struct nlmsghdr`: length, type, flags, sequence number, port id;
//! then the payload): [`MessageWriter`] builds requests in a buffer, [`messages`] walks
//! a received datagram with each header checked (through `netlink-packet-core`'s checked
//! `NetlinkBuffer`) before its payload is sliced, and [`error_code`] reads the errno of
//! an `NLMSG_ERROR` or `NLMSG_DONE` only when it is there.

use netlink_packet_core::NetlinkBuffer;

use crate::{
    attr::{align4, AttrWriter},
    error::Malformed,
};

// linux/netlink.h
pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLM_F_ROOT: u16 = 0x100;
pub const NLM_F_MATCH: u16 = 0x200;
pub const NLM_F_DUMP: u16 = NLM_F_ROOT | NLM_F_MATCH;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
pub const NLMSG_HDRLEN: usize = 16;

/// Builds messages one after the other in one buffer (a datagram).
#[derive(Debug, Default)]
pub struct MessageWriter {
    buf: Vec<u8>,
    /// Where the message being written starts.
    open: Option<usize>,
}

impl MessageWriter {
    pub fn new() -> MessageWriter {
        MessageWriter::default()
    }

    pub fn with_capacity(n: usize) -> MessageWriter {
        MessageWriter {
            buf: Vec::with_capacity(n),
            open: None,
        }
    }

    /// Starts a message: header, then `fixed` (the protocol's fixed header: `nfgenmsg`,
    /// `genlmsghdr`, `ifinfomsg`...). Ends the previous one if still open.
    pub fn begin(&mut self, kind: u16, flags: u16, seq: u32, fixed: &[u8]) -> usize {
        self.end();
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by end()
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        self.buf.extend_from_slice(fixed);
        self.buf.resize(start + align4(self.buf.len() - start), 0);
        self.open = Some(start);
        start
    }

    /// The attributes of the open message.
    pub fn attrs(&mut self) -> AttrWriter<'_> {
        AttrWriter(&mut self.buf)
    }

    /// The buffer, for writers that append to the open message.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Ends the open message (sets its length).
    pub fn end(&mut self) {
        if let Some(start) = self.open.take() {
            let len = (self.buf.len() - start) as u32;
            self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        }
    }

    /// Sets more flags on the message starting at `start`.
    pub fn add_flags(&mut self, start: usize, flags: u16) {
        let at = start + 6;
        let old = u16::from_ne_bytes([self.buf[at], self.buf[at + 1]]);
        self.buf[at..at + 2].copy_from_slice(&(old | flags).to_ne_bytes());
    }

    /// Bytes written so far (the open message included).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.open = None;
    }

    /// The datagram, every message ended.
    pub fn finish(&mut self) -> &[u8] {
        self.end();
        &self.buf
    }

    pub fn into_bytes(mut self) -> Vec<u8> {
        self.end();
        self.buf
    }
}

/// One message of a received datagram; `payload` follows the 16-byte header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

impl<'a> Message<'a> {
    /// The payload after a fixed header of `n` bytes (padded to 4), or why not.
    pub fn after_fixed(&self, n: usize) -> Result<&'a [u8], Malformed> {
        self.payload.get(align4(n)..).ok_or_else(|| {
            Malformed(format!(
                "message type {}: payload of {} bytes, shorter than its {n}-byte header",
                self.kind,
                self.payload.len()
            ))
        })
    }
}

/// Walks the messages of a datagram. A header whose length is below 16 or past the end
/// of the data yields one error and ends the walk; trailing bytes too short for a header
/// are an error too.
pub fn messages(data: &[u8]) -> Messages<'_> {
    Messages { rest: data }
}

pub struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let data = std::mem::take(&mut self.rest);
        let buffer = match NetlinkBuffer::new_checked(data) {
            Ok(b) => b,
            Err(e) => return Some(Err(Malformed(format!("netlink header: {e}")))),
        };
        let len = buffer.length() as usize;
        let message = Message {
            kind: buffer.message_type(),
            flags: buffer.flags(),
            seq: buffer.sequence_number(),
            payload: &data[NLMSG_HDRLEN..len],
        };
        self.rest = data.get(align4(len)..).unwrap_or_default();
        Some(Ok(message))
    }
}

/// The errno of an `NLMSG_ERROR` (0 for an acknowledgement) or `NLMSG_DONE` payload,
/// positive; `NLMSG_DONE` without a code is 0.
pub fn error_code(message: &Message<'_>) -> Result<i32, Malformed> {
    match message.payload.get(..4) {
        Some(code) => {
            let code = i32::from_ne_bytes(code.try_into().expect("4 bytes"));
            Ok(code.saturating_neg())
        }
        None if message.kind == NLMSG_DONE => Ok(0),
        None => Err(Malformed(format!(
            "NLMSG_ERROR of {} bytes, shorter than its 4-byte code",
            message.payload.len()
        ))),
    }
}

/// The sequence number the kernel echoes in an `NLMSG_ERROR`: that of the request's
/// header, which follows the code. The message's own sequence number is the same for
/// every family here; this reads the embedded one, checked.
pub fn acked_seq(message: &Message<'_>) -> Result<u32, Malformed> {
    message
        .payload
        .get(12..16)
        .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
        .ok_or_else(|| Malformed("NLMSG_ERROR without the request's header".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_walks_messages() {
        let mut w = MessageWriter::new();
        w.begin(0x0a03, NLM_F_REQUEST, 7, &[2, 0, 0, 0]);
        w.attrs().str(1, "t");
        let second = w.begin(NLMSG_ERROR, 0, 8, &(-2i32).to_ne_bytes());
        w.add_flags(second, NLM_F_ACK);
        let buf = w.into_bytes();
        let all: Vec<Message> = messages(&buf).map(Result::unwrap).collect();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].kind, all[0].seq), (0x0a03, 7));
        assert_eq!(all[0].after_fixed(4).unwrap().len(), 8);
        assert_eq!(all[1].flags, NLM_F_ACK);
        assert_eq!(error_code(&all[1]).unwrap(), 2);
    }

    #[test]
    fn short_and_overlong_headers_are_errors() {
        let mut w = MessageWriter::new();
        w.begin(NLMSG_ERROR, 0, 1, &[]);
        let buf = w.into_bytes();
        let m = messages(&buf).next().unwrap().unwrap();
        // An NLMSG_ERROR shorter than its code.
        assert!(error_code(&m).is_err());
        assert!(acked_seq(&m).is_err());
        // Length past the end.
        let mut long = buf.clone();
        long[0] = 64;
        let mut it = messages(&long);
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
        // Length below the header.
        let mut short = buf.clone();
        short[0] = 8;
        assert!(messages(&short).next().unwrap().is_err());
        // Trailing bytes.
        let mut trailing = buf.clone();
        trailing.extend_from_slice(&[1, 2, 3]);
        let mut it = messages(&trailing);
        assert!(it.next().unwrap().is_ok());
        assert!(it.next().unwrap().is_err());
        // A payload shorter than its fixed header.
        assert!(m.after_fixed(4).is_err());
    }
}

//! The nf_tables netlink wire format and socket, for partial syncs that bypass `nft`
//! (whose 1.0.6 userspace dumps every chain of the host before any `add rule` or
//! `add element`). One [`Batch`] is one atomic nf_tables transaction
//! (`NFNL_MSG_BATCH_BEGIN` … `NFNL_MSG_BATCH_END`); the kernel applies all of it or
//! none of it.
//!
//! Only what partial syncs write is encoded: chains (create, flush, delete), rules
//! (see [`crate::rule`]), affinity sets (create, delete) and map/set elements; and the
//! dumps `verify` reads (chains, sets, elements, rules). Netlink and attribute headers are in host
//! byte order; nf_tables integer attributes are big-endian.
//!
//! The socket belongs to the network namespace it was opened in: [`NftSocket::open`]
//! opens it from a short-lived thread that first enters `/run/netns/NAME`.

use std::{
    collections::HashMap,
    os::fd::{AsRawFd, OwnedFd},
};

use nix::{
    errno::Errno,
    sched::{setns, CloneFlags},
    sys::{
        socket::{
            bind, recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr,
            SockFlag, SockProtocol, SockType,
        },
        time::TimeVal,
    },
};
use switchyard_model::EngineError;

use crate::ruleset::{Family, TableNames, TABLES};

// linux/netlink.h
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;

// linux/netfilter/nfnetlink.h
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;

// linux/netfilter/nf_tables.h: messages.
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

const NLMSG_DONE: u16 = 3;
const NLM_F_DUMP: u16 = 0x300;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_TIMEOUT: u16 = 11;
const NFTA_SET_USERDATA: u16 = 13;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;
/// nft's datatype ids (`ipv4_addr`, `ipv6_addr`).
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
/// nft's set user data: key byte order big-endian (`NFTNL_UDATA_SET_KEYBYTEORDER`).
const SET_USERDATA_KEY_BIG_ENDIAN: [u8; 6] = [0, 4, 2, 0, 0, 0];

// Attributes.
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
pub const NFTA_DATA_VALUE: u16 = 1;
pub const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

// Verdict codes.
pub const NF_DROP: i32 = 0;
pub const NFT_JUMP: i32 = -3;
pub const NFT_GOTO: i32 = -4;
pub const NFT_RETURN: i32 = -5;

const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

/// Elements per `NEWSETELEM`/`DELSETELEM` message: the element list is one nested
/// attribute, whose length must fit in 16 bits.
const ELEMENTS_PER_MESSAGE: usize = 256;

/// Largest batch sent in one datagram (the socket's send buffer is raised to hold it).
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn nfproto(family: Family) -> u8 {
    match family {
        Family::Ip => NFPROTO_IPV4,
        Family::Ip6 => NFPROTO_IPV6,
    }
}

/// Attribute encoding on a byte buffer.
pub struct Attrs<'a>(pub &'a mut Vec<u8>);

impl Attrs<'_> {
    pub fn put(&mut self, kind: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(self.0.len() + (align4(len) - len), 0);
    }

    pub fn u32(&mut self, kind: u16, value: u32) {
        self.put(kind, &value.to_be_bytes());
    }

    pub fn str(&mut self, kind: u16, value: &str) {
        let mut v = Vec::with_capacity(value.len() + 1);
        v.extend_from_slice(value.as_bytes());
        v.push(0);
        self.put(kind, &v);
    }

    /// Starts a nested attribute; returns its offset for [`Attrs::end`].
    pub fn begin(&mut self, kind: u16) -> usize {
        let start = self.0.len();
        self.0.extend_from_slice(&0u16.to_ne_bytes());
        self.0
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        start
    }

    pub fn end(&mut self, start: usize) {
        let len = (self.0.len() - start) as u16;
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// `kind { NFTA_DATA_VALUE bytes }`.
    pub fn data(&mut self, kind: u16, value: &[u8]) {
        let n = self.begin(kind);
        self.put(NFTA_DATA_VALUE, value);
        self.end(n);
    }

    /// `kind { NFTA_DATA_VERDICT { code, chain } }`.
    pub fn verdict(&mut self, kind: u16, code: i32, chain: Option<&str>) {
        let n = self.begin(kind);
        let v = self.begin(NFTA_DATA_VERDICT);
        self.put(NFTA_VERDICT_CODE, &code.to_be_bytes());
        if let Some(chain) = chain {
            self.str(NFTA_VERDICT_CHAIN, chain);
        }
        self.end(v);
        self.end(n);
    }

    /// One expression of a rule: `NFTA_LIST_ELEM { name, data { ... } }`.
    pub fn expr(&mut self, name: &str, body: impl FnOnce(&mut Attrs<'_>)) {
        let elem = self.begin(NFTA_LIST_ELEM);
        self.str(NFTA_EXPR_NAME, name);
        let data = self.begin(NFTA_EXPR_DATA);
        body(self);
        self.end(data);
        self.end(elem);
    }
}

/// A map or set element: key bytes (concatenations padded per component) and, for
/// verdict maps, a verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElementBytes {
    pub key: Vec<u8>,
    pub verdict: Option<(i32, Option<String>)>,
}

/// One nf_tables transaction being encoded.
pub struct Batch {
    buf: Vec<u8>,
    seq: u32,
    first: u32,
    messages: usize,
    last_start: Option<usize>,
}

impl Batch {
    pub fn new(seq: u32) -> Batch {
        let mut b = Batch {
            buf: Vec::with_capacity(16 * 1024),
            seq,
            first: seq,
            messages: 0,
            last_start: None,
        };
        let start = b.begin_raw(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0);
        // res_id: the subsystem, big-endian.
        let len = b.buf.len();
        b.buf[len - 2..].copy_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
        b.end_raw(start);
        b
    }

    /// Messages other than the batch delimiters.
    pub fn len(&self) -> usize {
        self.messages
    }

    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    fn begin_raw(&mut self, kind: u16, flags: u16, family: u8) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&[family, 0, 0, 0]);
        self.seq = self.seq.wrapping_add(1);
        start
    }

    fn end_raw(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn message(&mut self, family: Family, msg: u16, flags: u16, body: impl FnOnce(&mut Attrs<'_>)) {
        let start = self.begin_raw(
            NFNL_SUBSYS_NFTABLES << 8 | msg,
            NLM_F_REQUEST | flags,
            nfproto(family),
        );
        body(&mut Attrs(&mut self.buf));
        self.end_raw(start);
        self.messages += 1;
        self.last_start = Some(start);
    }

    /// `add chain` (no error if it exists).
    pub fn add_chain(&mut self, family: Family, table: &str, chain: &str) {
        self.message(family, NFT_MSG_NEWCHAIN, NLM_F_CREATE, |a| {
            a.str(NFTA_CHAIN_TABLE, table);
            a.str(NFTA_CHAIN_NAME, chain);
        });
    }

    /// `add set NAME { type ADDR; flags dynamic,timeout; timeout Ts; }` (an affinity
    /// set), as nft 1.0.6 encodes it.
    pub fn add_affinity_set(&mut self, family: Family, table: &str, name: &str, timeout_secs: u32) {
        let id = self.seq;
        self.message(family, NFT_MSG_NEWSET, NLM_F_CREATE, |a| {
            a.str(NFTA_SET_TABLE, table);
            a.str(NFTA_SET_NAME, name);
            a.u32(NFTA_SET_FLAGS, NFT_SET_TIMEOUT | NFT_SET_EVAL);
            let (kind, len) = match family {
                Family::Ip => (TYPE_IPADDR, 4),
                Family::Ip6 => (TYPE_IP6ADDR, 16),
            };
            a.u32(NFTA_SET_KEY_TYPE, kind);
            a.u32(NFTA_SET_KEY_LEN, len);
            a.u32(NFTA_SET_ID, id);
            a.put(
                NFTA_SET_TIMEOUT,
                &(u64::from(timeout_secs) * 1000).to_be_bytes(),
            );
            a.put(NFTA_SET_USERDATA, &SET_USERDATA_KEY_BIG_ENDIAN);
        });
    }

    pub fn delete_set(&mut self, family: Family, table: &str, name: &str) {
        self.message(family, NFT_MSG_DELSET, 0, |a| {
            a.str(NFTA_SET_TABLE, table);
            a.str(NFTA_SET_NAME, name);
        });
    }

    /// `flush chain`: deletes every rule of the chain.
    pub fn flush_chain(&mut self, family: Family, table: &str, chain: &str) {
        self.message(family, NFT_MSG_DELRULE, 0, |a| {
            a.str(NFTA_RULE_TABLE, table);
            a.str(NFTA_RULE_CHAIN, chain);
        });
    }

    pub fn delete_chain(&mut self, family: Family, table: &str, chain: &str) {
        self.message(family, NFT_MSG_DELCHAIN, 0, |a| {
            a.str(NFTA_CHAIN_TABLE, table);
            a.str(NFTA_CHAIN_NAME, chain);
        });
    }

    /// Appends a rule whose expressions `exprs` encodes (see [`Attrs::expr`]).
    pub fn add_rule(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        exprs: impl FnOnce(&mut Attrs<'_>),
    ) {
        self.message(family, NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, |a| {
            a.str(NFTA_RULE_TABLE, table);
            a.str(NFTA_RULE_CHAIN, chain);
            let n = a.begin(NFTA_RULE_EXPRESSIONS);
            exprs(a);
            a.end(n);
        });
    }

    fn elements(
        &mut self,
        family: Family,
        table: &str,
        msg: u16,
        set: &str,
        elements: &[ElementBytes],
    ) {
        let flags = if msg == NFT_MSG_NEWSETELEM {
            NLM_F_CREATE
        } else {
            0
        };
        for chunk in elements.chunks(ELEMENTS_PER_MESSAGE) {
            self.message(family, msg, flags, |a| {
                a.str(NFTA_SET_ELEM_LIST_TABLE, table);
                a.str(NFTA_SET_ELEM_LIST_SET, set);
                let list = a.begin(NFTA_SET_ELEM_LIST_ELEMENTS);
                for e in chunk {
                    let elem = a.begin(NFTA_LIST_ELEM);
                    a.data(NFTA_SET_ELEM_KEY, &e.key);
                    if let (Some((code, chain)), true) = (&e.verdict, msg == NFT_MSG_NEWSETELEM) {
                        a.verdict(NFTA_SET_ELEM_DATA, *code, chain.as_deref());
                    }
                    a.end(elem);
                }
                a.end(list);
            });
        }
    }

    pub fn add_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        elements: &[ElementBytes],
    ) {
        self.elements(family, table, NFT_MSG_NEWSETELEM, set, elements);
    }

    pub fn delete_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        elements: &[ElementBytes],
    ) {
        self.elements(family, table, NFT_MSG_DELSETELEM, set, elements);
    }

    /// Closes the batch: asks for an acknowledgement of the last message (errors of
    /// any message are reported whatever its flags). Returns the datagram, the
    /// sequence number of the batch start and that of the acknowledged message.
    pub fn finish(mut self) -> (Vec<u8>, u32, u32) {
        let mut last_seq = self.first;
        if let Some(start) = self.last_start {
            let flags_at = start + 6;
            let flags = u16::from_ne_bytes([self.buf[flags_at], self.buf[flags_at + 1]]);
            self.buf[flags_at..flags_at + 2].copy_from_slice(&(flags | NLM_F_ACK).to_ne_bytes());
            last_seq =
                u32::from_ne_bytes(self.buf[start + 8..start + 12].try_into().expect("4 bytes"));
        }
        let start = self.begin_raw(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0);
        let len = self.buf.len();
        self.buf[len - 2..].copy_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
        self.end_raw(start);
        (self.buf, self.first, last_seq)
    }
}

fn io_error(what: &str, e: Errno) -> EngineError {
    EngineError::errno(format!("nf_tables netlink: {what}"), e as i32)
}

/// A `NETLINK_NETFILTER` socket in one network namespace.
#[derive(Debug)]
pub struct NftSocket {
    fd: OwnedFd,
    seq: u32,
    recv_buf: Vec<u8>,
}

impl NftSocket {
    /// Opens a socket in `netns` (a name under `/run/netns`), or in the caller's
    /// namespace for `None`.
    pub fn open(netns: Option<&str>) -> Result<NftSocket, EngineError> {
        let fd = match netns {
            None => open_fd()?,
            Some(name) => {
                let path = format!("/run/netns/{name}");
                std::thread::scope(|s| {
                    s.spawn(|| {
                        let ns =
                            std::fs::File::open(&path).map_err(|source| EngineError::Kernel {
                                operation: format!("opening {path}"),
                                source,
                            })?;
                        setns(&ns, CloneFlags::CLONE_NEWNET)
                            .map_err(|e| io_error(&format!("entering {path}"), e))?;
                        open_fd()
                    })
                    .join()
                    .map_err(|_| {
                        EngineError::malformed("nf_tables netlink", "the netns thread panicked")
                    })?
                })?
            }
        };
        Ok(NftSocket {
            fd,
            seq: 1,
            recv_buf: vec![0; 64 * 1024],
        })
    }

    /// A new batch numbered after the previous ones.
    pub fn batch(&self) -> Batch {
        Batch::new(self.seq)
    }

    /// Sends one datagram to the kernel, retrying when interrupted.
    fn send(&self, buf: &[u8], what: &str) -> Result<(), EngineError> {
        loop {
            match sendto(
                self.fd.as_raw_fd(),
                buf,
                &NetlinkAddr::new(0, 0),
                MsgFlags::empty(),
            ) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(io_error(what, e)),
            }
        }
    }

    /// Receives one datagram into `recv_buf`, retrying when interrupted; returns its real
    /// length, which exceeds the buffer when the datagram was truncated.
    fn receive(&mut self, what: &str) -> Result<usize, EngineError> {
        loop {
            match recv(self.fd.as_raw_fd(), &mut self.recv_buf, MsgFlags::MSG_TRUNC) {
                Ok(n) => return Ok(n),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(io_error(what, e)),
            }
        }
    }

    /// Sends `batch` and waits for the kernel's verdict on it.
    pub fn commit(&mut self, batch: Batch) -> Result<(), EngineError> {
        let count = batch.len();
        let (buf, first, last) = batch.finish();
        // Sequence numbers: begin, messages..., end.
        self.seq = first.wrapping_add(count as u32 + 2);
        if count == 0 {
            return Ok(());
        }
        self.send(&buf, "sending the batch")?;
        let mut failure: Option<(u32, i32)> = None;
        loop {
            let n = self
                .receive("waiting for the kernel's answer")?
                .min(self.recv_buf.len());
            for message in messages(&self.recv_buf[..n], "answer") {
                let Message { kind, seq, body } = message?;
                if kind == NLMSG_ERROR && body.len() >= 4 {
                    let errno = i32::from_ne_bytes(body[0..4].try_into().expect("4"));
                    let in_batch = seq.wrapping_sub(first) <= last.wrapping_sub(first) + 1;
                    if in_batch {
                        if errno != 0 {
                            let index = seq.wrapping_sub(first);
                            failure.get_or_insert((index, errno));
                        }
                        if seq == last || seq == first {
                            return match failure {
                                None => Ok(()),
                                Some((index, errno)) => Err(EngineError::errno(
                                    format!("nf_tables netlink batch, message {index} of {count}"),
                                    errno,
                                )),
                            };
                        }
                    }
                }
            }
        }
    }
}

/// One netlink message of a received datagram: type, sequence number, body (after the
/// 16-byte header).
struct Message<'a> {
    kind: u16,
    seq: u32,
    body: &'a [u8],
}

/// The netlink messages of a received datagram, in order; a malformed header ends the
/// iteration with an error (`what` names the exchange).
fn messages<'a>(
    mut data: &'a [u8],
    what: &'static str,
) -> impl Iterator<Item = Result<Message<'a>, EngineError>> {
    std::iter::from_fn(move || {
        if data.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes(data[0..4].try_into().expect("4")) as usize;
        if len < 16 || len > data.len() {
            data = &[];
            return Some(Err(EngineError::malformed(
                format!("nf_tables netlink: {what}"),
                "malformed netlink message",
            )));
        }
        let message = Message {
            kind: u16::from_ne_bytes([data[4], data[5]]),
            seq: u32::from_ne_bytes(data[8..12].try_into().expect("4")),
            body: &data[16..len],
        };
        data = &data[align4(len).min(data.len())..];
        Some(Ok(message))
    })
}

/// The attributes of a message body: (type without flags, value).
pub fn attributes(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let kind = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            return None;
        }
        let value = &data[4..len];
        data = &data[align4(len).min(data.len())..];
        Some((kind, value))
    })
}

/// A string attribute's value without its terminating NUL.
fn attr_str(value: &[u8]) -> &[u8] {
    value.strip_suffix(&[0]).unwrap_or(value)
}

/// What a dump found: `None` when the kernel refused it with `ENOENT` (no such table
/// or set).
pub type Found<T> = Option<T>;

impl NftSocket {
    /// Runs one dump request; `on_message` gets each answer's attributes (after the
    /// `nfgenmsg` header).
    fn dump(
        &mut self,
        family: Family,
        msg: u16,
        request: impl FnOnce(&mut Attrs<'_>),
        mut on_message: impl FnMut(&[u8]),
    ) -> Result<Found<()>, EngineError> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&(NFNL_SUBSYS_NFTABLES << 8 | msg).to_ne_bytes());
        buf.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&[nfproto(family), 0, 0, 0]);
        request(&mut Attrs(&mut buf));
        let len = buf.len() as u32;
        buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.send(&buf, "sending a dump request")?;
        let mut failure = None;
        loop {
            let n = self.receive("reading a dump")?;
            if n > self.recv_buf.len() {
                return Err(EngineError::malformed(
                    "nf_tables netlink: dump",
                    "datagram larger than the buffer",
                ));
            }
            for message in messages(&self.recv_buf[..n], "dump") {
                let Message {
                    kind,
                    seq: msg_seq,
                    body,
                } = message?;
                if msg_seq != seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return failure.map_or(Ok(Some(())), Err),
                    NLMSG_ERROR => {
                        let errno = i32::from_ne_bytes(body[0..4].try_into().expect("4"));
                        return match errno {
                            0 => failure.map_or(Ok(Some(())), Err),
                            e if -e == Errno::ENOENT as i32 => Ok(None),
                            e => Err(io_error("dump", Errno::from_raw(-e))),
                        };
                    }
                    _ if body.len() >= 4 => on_message(&body[4..]),
                    _ => {
                        failure.get_or_insert(EngineError::malformed(
                            "nf_tables netlink: dump",
                            "short message",
                        ));
                    }
                }
            }
        }
    }

    /// Names of the chains of the `tables` in `family`, per table index (empty when a
    /// table does not exist).
    pub fn chains(
        &mut self,
        family: Family,
        tables: &TableNames,
    ) -> Result<Vec<Vec<String>>, EngineError> {
        let mut out = vec![Vec::new(); TABLES];
        self.dump(
            family,
            NFT_MSG_GETCHAIN,
            |_| {},
            |body| {
                let (mut table, mut name) = (None, None);
                for (kind, value) in attributes(body) {
                    match kind {
                        NFTA_CHAIN_TABLE => table = Some(attr_str(value)),
                        NFTA_CHAIN_NAME => name = Some(attr_str(value)),
                        _ => {}
                    }
                }
                if let (Some(t), Some(n)) = (table, name) {
                    if let Some(i) = tables.index(&String::from_utf8_lossy(t)) {
                        out[i].push(String::from_utf8_lossy(n).into_owned());
                    }
                }
            },
        )?;
        Ok(out)
    }

    /// Names of the sets and maps of our table in `family`.
    pub fn sets(&mut self, family: Family, table: &str) -> Result<Found<Vec<String>>, EngineError> {
        let mut out = Vec::new();
        let found = self.dump(
            family,
            NFT_MSG_GETSET,
            |a| a.str(NFTA_SET_TABLE, table),
            |body| {
                for (kind, value) in attributes(body) {
                    if kind == NFTA_SET_NAME {
                        out.push(String::from_utf8_lossy(attr_str(value)).into_owned());
                    }
                }
            },
        )?;
        Ok(found.map(|()| out))
    }

    /// Elements in one set or map of our table.
    pub fn element_count(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
    ) -> Result<Found<usize>, EngineError> {
        let mut count = 0;
        let found = self.dump(
            family,
            NFT_MSG_GETSETELEM,
            |a| {
                a.str(NFTA_SET_ELEM_LIST_TABLE, table);
                a.str(NFTA_SET_ELEM_LIST_SET, set);
            },
            |body| {
                for (kind, value) in attributes(body) {
                    if kind == NFTA_SET_ELEM_LIST_ELEMENTS {
                        count += attributes(value)
                            .filter(|(k, _)| *k == NFTA_LIST_ELEM)
                            .count();
                    }
                }
            },
        )?;
        Ok(found.map(|()| count))
    }

    /// How many of `keys` (a prefix of them: the kernel stops at the first missing one)
    /// are in `set`, and, for verdict maps, each found element's verdict chain.
    pub fn elements_present(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<String>>, EngineError> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let mut buf = Vec::with_capacity(64 + keys.len() * 32);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETSETELEM).to_ne_bytes());
        buf.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&[nfproto(family), 0, 0, 0]);
        {
            let mut a = Attrs(&mut buf);
            a.str(NFTA_SET_ELEM_LIST_TABLE, table);
            a.str(NFTA_SET_ELEM_LIST_SET, set);
            let list = a.begin(NFTA_SET_ELEM_LIST_ELEMENTS);
            for key in keys {
                let elem = a.begin(NFTA_LIST_ELEM);
                a.data(NFTA_SET_ELEM_KEY, key);
                a.end(elem);
            }
            a.end(list);
        }
        let len = buf.len() as u32;
        buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.send(&buf, "sending an element request")?;
        let mut found = Vec::new();
        loop {
            let n = self.receive("reading elements")?.min(self.recv_buf.len());
            for message in messages(&self.recv_buf[..n], "elements") {
                let Message {
                    kind,
                    seq: msg_seq,
                    body,
                } = message?;
                if msg_seq != seq {
                    continue;
                }
                if kind == NLMSG_ERROR {
                    let errno = i32::from_ne_bytes(body[0..4].try_into().expect("4"));
                    return match errno {
                        0 => Ok(found),
                        e if -e == Errno::ENOENT as i32 => Ok(found),
                        e => Err(io_error("elements", Errno::from_raw(-e))),
                    };
                }
                if body.len() < 4 {
                    continue;
                }
                for (kind, value) in attributes(&body[4..]) {
                    if kind != NFTA_SET_ELEM_LIST_ELEMENTS {
                        continue;
                    }
                    for (_, elem) in attributes(value).filter(|(k, _)| *k == NFTA_LIST_ELEM) {
                        let mut chain = None;
                        for (k, v) in attributes(elem) {
                            if k != NFTA_SET_ELEM_DATA {
                                continue;
                            }
                            for (_, verdict) in
                                attributes(v).filter(|(k, _)| *k == NFTA_DATA_VERDICT)
                            {
                                for (vk, vv) in attributes(verdict) {
                                    if vk == NFTA_VERDICT_CHAIN {
                                        chain = Some(
                                            String::from_utf8_lossy(attr_str(vv)).into_owned(),
                                        );
                                    }
                                }
                            }
                        }
                        found.push(chain);
                    }
                }
            }
        }
    }

    /// Rule counts per chain of our table (only `chain` when given).
    pub fn rule_counts(
        &mut self,
        family: Family,
        table: &str,
        chain: Option<&str>,
    ) -> Result<Found<HashMap<String, usize>>, EngineError> {
        let mut out: HashMap<String, usize> = HashMap::new();
        let found = self.dump(
            family,
            NFT_MSG_GETRULE,
            |a| {
                a.str(NFTA_RULE_TABLE, table);
                if let Some(chain) = chain {
                    a.str(NFTA_RULE_CHAIN, chain);
                }
            },
            |body| {
                for (kind, value) in attributes(body) {
                    if kind == NFTA_RULE_CHAIN {
                        let name = attr_str(value);
                        match out.get_mut(String::from_utf8_lossy(name).as_ref()) {
                            Some(n) => *n += 1,
                            None => {
                                out.insert(String::from_utf8_lossy(name).into_owned(), 1);
                            }
                        }
                    }
                }
            },
        )?;
        Ok(found.map(|()| out))
    }
}

fn open_fd() -> Result<OwnedFd, EngineError> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )
    .map_err(|e| io_error("opening a netfilter netlink socket", e))?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))
        .map_err(|e| io_error("binding the netlink socket", e))?;
    if setsockopt(&fd, sockopt::SndBufForce, &MAX_BATCH_BYTES).is_err() {
        let _ = setsockopt(&fd, sockopt::SndBuf, &MAX_BATCH_BYTES);
    }
    if setsockopt(&fd, sockopt::RcvBufForce, &(1024 * 1024)).is_err() {
        let _ = setsockopt(&fd, sockopt::RcvBuf, &(1024 * 1024));
    }
    // Never wait forever for an answer.
    let _ = setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(30, 0));
    Ok(fd)
}

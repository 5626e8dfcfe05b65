//! [`Batch`]: one nf_tables transaction being encoded. Every message of a batch is
//! numbered; the kernel reports an error for any of them and acknowledges the last one
//! (which carries `NLM_F_ACK`), so a commit knows when the verdict is complete.
//!
//! A batch is written in segments of about [`SEGMENT_BYTES`] (whole messages each), so a
//! full sync of tens of megabytes never reallocates and copies one growing buffer; the
//! segments go to the kernel as the iovecs of one `sendmsg`, which is one datagram and
//! so one transaction, as nft sends its batches. Parts of a transaction can be written
//! as separate batches and [`Batch::append`]ed in the order the kernel must see them;
//! sequence numbers are assigned when the batch is finished.

use std::net::IpAddr;

use super::{
    nfgenmsg, set::SetSpec, Attrs, ElementBytes, TableFamily, NFNL_MSG_BATCH_BEGIN,
    NFNL_MSG_BATCH_END, NFNL_SUBSYS_NFTABLES, NFTA_CHAIN_HOOK, NFTA_CHAIN_NAME, NFTA_CHAIN_POLICY,
    NFTA_CHAIN_TABLE, NFTA_CHAIN_TYPE, NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY, NFTA_LIST_ELEM,
    NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_TABLE, NFTA_SET_ELEM_DATA,
    NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET,
    NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_USERDATA, NFTA_TABLE_FLAGS, NFTA_TABLE_NAME,
    NFT_MSG_DELCHAIN, NFT_MSG_DELRULE, NFT_MSG_DELSET, NFT_MSG_DELSETELEM, NFT_MSG_DELTABLE,
    NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE, NFT_MSG_NEWSET, NFT_MSG_NEWSETELEM, NFT_MSG_NEWTABLE,
    NFT_SET_ELEM_INTERVAL_END, NF_ACCEPT, NF_DROP,
};
use crate::message::{MessageWriter, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST};

/// Elements per `NEWSETELEM`/`DELSETELEM` message: the element list is one nested
/// attribute, whose length must fit in 16 bits (256 IPv6 `addr . addr` keys with
/// verdicts take about 30 KiB).
const ELEMENTS_PER_MESSAGE: usize = 256;

/// Largest batch a partial sync sends (the socket's send buffer holds it from the
/// start); larger transactions raise the buffer to their size first (see
/// [`super::NftSocket::commit`]).
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// A segment is closed once it holds this many bytes (whole messages only).
pub const SEGMENT_BYTES: usize = 1024 * 1024;

/// Netfilter hooks (`NF_INET_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    fn number(self) -> u32 {
        match self {
            Hook::Prerouting => 0,
            Hook::Input => 1,
            Hook::Forward => 2,
            Hook::Output => 3,
            Hook::Postrouting => 4,
        }
    }
}

/// Base chain types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChainType {
    Filter,
    Nat,
    Route,
}

impl ChainType {
    fn name(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
            ChainType::Route => "route",
        }
    }
}

/// What makes a chain a base chain: `type T hook H priority P; policy accept|drop;`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BaseChain {
    pub chain_type: ChainType,
    pub hook: Hook,
    pub priority: i32,
    /// `policy drop` when false.
    pub accept: bool,
}

/// One nf_tables transaction being encoded (or a part of one, see [`Batch::append`]).
pub struct Batch {
    /// Closed segments: whole messages, sequence numbers not yet assigned.
    segments: Vec<Vec<u8>>,
    /// The segment being written.
    w: MessageWriter,
    /// The sequence number of the begin delimiter; messages follow it.
    first: u32,
    messages: usize,
    /// Where the last message starts: (segment index, offset); the open segment's index
    /// is `segments.len()`.
    last_start: Option<(usize, usize)>,
    /// Ids naming sets within the transaction (`NFTA_SET_ID`).
    next_set_id: u32,
    bytes: usize,
}

/// A finished batch: the datagram as consecutive segments, the sequence number of its
/// begin delimiter and that of the message the kernel acknowledges.
pub struct Transaction {
    pub segments: Vec<Vec<u8>>,
    pub first: u32,
    pub last: u32,
}

impl Transaction {
    /// Bytes of the datagram.
    pub fn bytes(&self) -> usize {
        self.segments.iter().map(Vec::len).sum()
    }

    /// The datagram in one buffer (tests, small batches).
    pub fn concat(&self) -> Vec<u8> {
        self.segments.concat()
    }
}

impl Batch {
    /// A batch whose messages are numbered from `seq` (the begin delimiter) on.
    pub fn new(seq: u32) -> Batch {
        Batch {
            segments: Vec::new(),
            w: MessageWriter::with_capacity(16 * 1024),
            first: seq,
            messages: 0,
            last_start: None,
            next_set_id: 1,
            bytes: 0,
        }
    }

    /// Messages other than the batch delimiters.
    pub fn len(&self) -> usize {
        self.messages
    }

    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// Bytes encoded so far (delimiters excluded).
    pub fn bytes(&self) -> usize {
        self.bytes + self.w.len()
    }

    fn close_segment(&mut self) {
        self.w.end();
        if !self.w.is_empty() {
            let full = std::mem::replace(&mut self.w, MessageWriter::with_capacity(16 * 1024));
            let bytes = full.into_bytes();
            self.bytes += bytes.len();
            self.segments.push(bytes);
        }
    }

    /// Appends the messages of `other` after this batch's (sequence numbers, set ids
    /// and the acknowledged message follow the new order).
    pub fn append(&mut self, mut other: Batch) {
        if other.is_empty() {
            return;
        }
        self.close_segment();
        other.close_segment();
        let base = self.segments.len();
        self.last_start = other.last_start.map(|(s, o)| (base + s, o));
        self.messages += other.messages;
        self.bytes += other.bytes;
        self.next_set_id = self.next_set_id.max(other.next_set_id);
        self.segments.append(&mut other.segments);
    }

    fn message(
        &mut self,
        family: TableFamily,
        msg: u16,
        flags: u16,
        body: impl FnOnce(&mut Attrs<'_>),
    ) {
        if self.w.len() >= SEGMENT_BYTES {
            self.close_segment();
        }
        let start = self.w.begin(
            NFNL_SUBSYS_NFTABLES << 8 | msg,
            NLM_F_REQUEST | flags,
            0,
            &nfgenmsg(family.nfproto(), 0),
        );
        body(&mut Attrs::new(self.w.buffer()));
        self.w.end();
        self.messages += 1;
        self.last_start = Some((self.segments.len(), start));
    }

    /// `add table` (no error if it exists).
    pub fn add_table(&mut self, family: impl Into<TableFamily>, name: &str) {
        self.message(family.into(), NFT_MSG_NEWTABLE, NLM_F_CREATE, |a| {
            a.str(NFTA_TABLE_NAME, name);
            a.u32(NFTA_TABLE_FLAGS, 0);
        });
    }

    /// `delete table`: the table and everything in it.
    pub fn delete_table(&mut self, family: impl Into<TableFamily>, name: &str) {
        self.message(family.into(), NFT_MSG_DELTABLE, 0, |a| {
            a.str(NFTA_TABLE_NAME, name);
        });
    }

    /// `add chain` (no error if it exists).
    pub fn add_chain(&mut self, family: impl Into<TableFamily>, table: &str, chain: &str) {
        self.message(family.into(), NFT_MSG_NEWCHAIN, NLM_F_CREATE, |a| {
            a.str(NFTA_CHAIN_TABLE, table);
            a.str(NFTA_CHAIN_NAME, chain);
        });
    }

    /// `add chain T C { type .. hook .. priority ..; policy ..; }`.
    pub fn add_base_chain(
        &mut self,
        family: impl Into<TableFamily>,
        table: &str,
        chain: &str,
        base: BaseChain,
    ) {
        self.message(family.into(), NFT_MSG_NEWCHAIN, NLM_F_CREATE, |a| {
            a.str(NFTA_CHAIN_TABLE, table);
            a.str(NFTA_CHAIN_NAME, chain);
            let hook = a.begin(NFTA_CHAIN_HOOK);
            a.u32(NFTA_HOOK_HOOKNUM, base.hook.number());
            a.put(NFTA_HOOK_PRIORITY, &base.priority.to_be_bytes());
            a.end(hook);
            let policy = if base.accept { NF_ACCEPT } else { NF_DROP };
            a.put(NFTA_CHAIN_POLICY, &policy.to_be_bytes());
            a.str(NFTA_CHAIN_TYPE, base.chain_type.name());
        });
    }

    /// `flush chain`: deletes every rule of the chain.
    pub fn flush_chain(&mut self, family: impl Into<TableFamily>, table: &str, chain: &str) {
        self.message(family.into(), NFT_MSG_DELRULE, 0, |a| {
            a.str(NFTA_RULE_TABLE, table);
            a.str(NFTA_RULE_CHAIN, chain);
        });
    }

    pub fn delete_chain(&mut self, family: impl Into<TableFamily>, table: &str, chain: &str) {
        self.message(family.into(), NFT_MSG_DELCHAIN, 0, |a| {
            a.str(NFTA_CHAIN_TABLE, table);
            a.str(NFTA_CHAIN_NAME, chain);
        });
    }

    /// Appends a rule whose expressions `exprs` encodes (see [`Attrs::expr`]).
    pub fn add_rule(
        &mut self,
        family: impl Into<TableFamily>,
        table: &str,
        chain: &str,
        exprs: impl FnOnce(&mut Attrs<'_>),
    ) {
        let flags = NLM_F_CREATE | NLM_F_APPEND;
        self.message(family.into(), NFT_MSG_NEWRULE, flags, |a| {
            a.str(NFTA_RULE_TABLE, table);
            a.str(NFTA_RULE_CHAIN, chain);
            let n = a.begin(NFTA_RULE_EXPRESSIONS);
            exprs(a);
            a.end(n);
        });
    }

    /// `add set` / `add map` (no error if it exists with the same definition).
    pub fn add_set(&mut self, family: impl Into<TableFamily>, table: &str, spec: &SetSpec<'_>) {
        let id = self.next_set_id;
        self.next_set_id = self.next_set_id.wrapping_add(1);
        self.message(family.into(), NFT_MSG_NEWSET, NLM_F_CREATE, |a| {
            spec.encode(a, table, id);
        });
    }

    /// `add set NAME { type ADDR; flags dynamic,timeout; timeout Ts; }`: a ClientIP
    /// affinity set of `family`'s addresses.
    pub fn add_affinity_set(
        &mut self,
        family: impl Into<TableFamily>,
        table: &str,
        name: &str,
        timeout_secs: u32,
    ) {
        let family = family.into();
        let key = [match family {
            TableFamily::Ip6 => super::KeyType::Ipv6Addr,
            _ => super::KeyType::Ipv4Addr,
        }];
        let spec = SetSpec {
            name,
            key: &key,
            data: None,
            flags: super::SetFlags {
                timeout: true,
                dynamic: true,
                ..Default::default()
            },
            timeout_ms: Some(u64::from(timeout_secs) * 1000),
            userdata: None,
        };
        self.add_set(family, table, &spec);
    }

    pub fn delete_set(&mut self, family: impl Into<TableFamily>, table: &str, name: &str) {
        self.message(family.into(), NFT_MSG_DELSET, 0, |a| {
            a.str(super::set::NFTA_SET_TABLE, table);
            a.str(super::set::NFTA_SET_NAME, name);
        });
    }

    /// `flush set`/`flush map`: deletes every element.
    pub fn flush_set(&mut self, family: impl Into<TableFamily>, table: &str, name: &str) {
        self.message(family.into(), NFT_MSG_DELSETELEM, 0, |a| {
            a.str(NFTA_SET_ELEM_LIST_TABLE, table);
            a.str(NFTA_SET_ELEM_LIST_SET, name);
        });
    }

    /// Element messages, [`ELEMENTS_PER_MESSAGE`] elements each; `one` writes the
    /// attributes of one element.
    fn element_messages<T>(
        &mut self,
        family: TableFamily,
        table: &str,
        msg: u16,
        set: &str,
        items: &[T],
        one: impl Fn(&mut Attrs<'_>, &T),
    ) {
        let flags = if msg == NFT_MSG_NEWSETELEM {
            NLM_F_CREATE
        } else {
            0
        };
        for chunk in items.chunks(ELEMENTS_PER_MESSAGE) {
            self.message(family, msg, flags, |a| {
                a.str(NFTA_SET_ELEM_LIST_TABLE, table);
                a.str(NFTA_SET_ELEM_LIST_SET, set);
                let list = a.begin(NFTA_SET_ELEM_LIST_ELEMENTS);
                for item in chunk {
                    let elem = a.begin(NFTA_LIST_ELEM);
                    one(a, item);
                    a.end(elem);
                }
                a.end(list);
            });
        }
    }

    pub fn add_elements(
        &mut self,
        family: impl Into<TableFamily>,
        table: &str,
        set: &str,
        elements: &[ElementBytes],
    ) {
        self.element_messages(
            family.into(),
            table,
            NFT_MSG_NEWSETELEM,
            set,
            elements,
            |a, e| {
                a.data(NFTA_SET_ELEM_KEY, &e.key);
                if let Some((code, chain)) = &e.verdict {
                    a.verdict(NFTA_SET_ELEM_DATA, *code, chain.as_deref());
                }
                if let Some(comment) = &e.comment {
                    a.put(NFTA_SET_ELEM_USERDATA, &comment_userdata(comment));
                }
            },
        );
    }

    /// Adds elements of a map whose data are values (`KEY : VALUE`), as raw bytes.
    pub fn add_value_elements(
        &mut self,
        family: impl Into<TableFamily>,
        table: &str,
        set: &str,
        elements: &[(Vec<u8>, Vec<u8>)],
    ) {
        self.element_messages(
            family.into(),
            table,
            NFT_MSG_NEWSETELEM,
            set,
            elements,
            |a, (key, value)| {
                a.data(NFTA_SET_ELEM_KEY, key);
                a.data(NFTA_SET_ELEM_DATA, value);
            },
        );
    }

    /// Deletes elements given by their keys' bytes.
    pub fn delete_keys(
        &mut self,
        family: impl Into<TableFamily>,
        table: &str,
        set: &str,
        keys: &[Vec<u8>],
    ) {
        self.element_messages(
            family.into(),
            table,
            NFT_MSG_DELSETELEM,
            set,
            keys,
            |a, key| a.data(NFTA_SET_ELEM_KEY, key),
        );
    }

    /// Deletes elements by key (their verdicts, if any, are not needed).
    pub fn delete_elements(
        &mut self,
        family: impl Into<TableFamily>,
        table: &str,
        set: &str,
        elements: &[ElementBytes],
    ) {
        self.element_messages(
            family.into(),
            table,
            NFT_MSG_DELSETELEM,
            set,
            elements,
            |a, e| a.data(NFTA_SET_ELEM_KEY, &e.key),
        );
    }

    /// Adds prefixes to an interval set of addresses (one type, not a concatenation):
    /// each is a start element and, unless it runs to the end of the address space, an
    /// end element (the first address after it, flagged `INTERVAL_END`), as nft sends
    /// them. Prefixes may come in any order and overlap: they are merged first.
    pub fn add_prefixes(
        &mut self,
        family: impl Into<TableFamily>,
        table: &str,
        set: &str,
        prefixes: &[(IpAddr, u8)],
    ) {
        // Intervals [start, end) in key order, adjacent or overlapping ones merged as
        // nft's `auto-merge` does (0.0.0.0/5 and 8.0.0.0/5 are one interval); `None`:
        // runs to the end of the address space. Keys of one family have one length, so
        // byte order is address order.
        let mut ranges: Vec<(Vec<u8>, Option<Vec<u8>>)> =
            prefixes.iter().map(|&(a, l)| prefix_bounds(a, l)).collect();
        ranges.sort();
        let mut merged: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some((_, last_end)) if last_end.as_ref().is_none_or(|e| start <= *e) => {
                    if last_end.is_some()
                        && end.as_ref().is_none_or(|e| Some(e) > last_end.as_ref())
                    {
                        *last_end = end;
                    }
                }
                _ => merged.push((start, end)),
            }
        }
        // (key, flags: interval end, open: runs to the end of the address space)
        let mut bounds: Vec<(Vec<u8>, bool, bool)> = Vec::with_capacity(merged.len() * 2 + 1);
        for (start, end) in merged {
            bounds.push((start, false, end.is_none()));
            if let Some(end) = end {
                bounds.push((end, true, false));
            }
        }
        // nft opens the set with an interval end at the zero address unless the first
        // interval starts there; so do we, so the kernel holds what nft would write.
        if let Some((first, _, _)) = bounds.first() {
            if first.iter().any(|b| *b != 0) {
                let zero = vec![0; first.len()];
                bounds.insert(0, (zero, true, false));
            }
        }
        self.element_messages(
            family.into(),
            table,
            NFT_MSG_NEWSETELEM,
            set,
            &bounds,
            |a, (key, end, open)| {
                a.data(NFTA_SET_ELEM_KEY, key);
                if *end {
                    a.u32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
                }
                if *open {
                    a.put(NFTA_SET_ELEM_USERDATA, &INTERVAL_OPEN_USERDATA);
                }
            },
        );
    }

    /// Closes the batch: numbers its messages after the begin delimiter and asks for an
    /// acknowledgement of the last one (errors of any message are reported whatever its
    /// flags).
    pub fn finish(mut self) -> Transaction {
        self.close_segment();
        let mut seq = self.first;
        let ack = self.last_start;
        for (s, segment) in self.segments.iter_mut().enumerate() {
            let mut at = 0;
            while at + 16 <= segment.len() {
                let len = u32::from_ne_bytes(segment[at..at + 4].try_into().expect("4 bytes"));
                seq = seq.wrapping_add(1);
                segment[at + 8..at + 12].copy_from_slice(&seq.to_ne_bytes());
                if ack == Some((s, at)) {
                    let flags = u16::from_ne_bytes([segment[at + 6], segment[at + 7]]) | NLM_F_ACK;
                    segment[at + 6..at + 8].copy_from_slice(&flags.to_ne_bytes());
                }
                at += crate::attr::align4(len as usize);
            }
        }
        let last = seq;
        let delimiter = |kind, seq| {
            let mut w = MessageWriter::with_capacity(20);
            w.begin(kind, NLM_F_REQUEST, seq, &nfgenmsg(0, NFNL_SUBSYS_NFTABLES));
            w.into_bytes()
        };
        let mut segments = Vec::with_capacity(self.segments.len() + 2);
        segments.push(delimiter(NFNL_MSG_BATCH_BEGIN, self.first));
        segments.append(&mut self.segments);
        segments.push(delimiter(NFNL_MSG_BATCH_END, last.wrapping_add(1)));
        Transaction {
            segments,
            first: self.first,
            last: if ack.is_some() { last } else { self.first },
        }
    }

    /// Sequence numbers this batch uses (delimiters included).
    pub fn seqs(&self) -> u32 {
        self.messages as u32 + 2
    }
}

/// nft's user data on an interval that runs to the end of the address space (no end
/// element follows it): `NFTNL_UDATA_SET_ELEM_FLAGS` (type 1, 4 bytes) holding
/// `NFTNL_SET_ELEM_F_INTERVAL_OPEN` (1), as `nft --debug=netlink` shows nft 1.0.6 send
/// for `0.0.0.0/0`.
const INTERVAL_OPEN_USERDATA: [u8; 6] = [1, 4, 1, 0, 0, 0];

/// nft's comment user data (`NFTNL_UDATA_*_COMMENT`, type 0: the text and its NUL).
pub fn comment_userdata(comment: &str) -> Vec<u8> {
    let mut end = comment.len().min(COMMENT_MAX);
    while !comment.is_char_boundary(end) {
        end -= 1;
    }
    let text = &comment.as_bytes()[..end];
    let mut out = Vec::with_capacity(text.len() + 3);
    out.push(0);
    out.push(text.len() as u8 + 1);
    out.extend_from_slice(text);
    out.push(0);
    out
}

/// Longest comment nft reads back (`NFTNL_UDATA_COMMENT_MAXLEN` is 128 with the NUL).
const COMMENT_MAX: usize = 127;

/// The text of nft's comment user data, if it holds one.
pub fn userdata_comment(userdata: &[u8]) -> Option<&str> {
    let mut at = 0;
    while at + 2 <= userdata.len() {
        let (kind, len) = (userdata[at], usize::from(userdata[at + 1]));
        let value = userdata.get(at + 2..at + 2 + len)?;
        if kind == 0 {
            let text = value.strip_suffix(&[0]).unwrap_or(value);
            return std::str::from_utf8(text).ok();
        }
        at += 2 + len;
    }
    None
}

/// The first address of a prefix and the first one after it (`None` past the end of
/// the address space), as key bytes. Host bits of `addr` are ignored.
pub fn prefix_bounds(addr: IpAddr, len: u8) -> (Vec<u8>, Option<Vec<u8>>) {
    fn bounds<const N: usize>(octets: [u8; N], len: u8) -> (Vec<u8>, Option<Vec<u8>>) {
        let bits = (N * 8) as u32;
        let len = u32::from(len).min(bits);
        let value = octets
            .iter()
            .fold(0u128, |acc, b| (acc << 8) | u128::from(*b));
        let host = if len == 0 {
            u128::MAX
        } else {
            (1u128 << (bits - len)) - 1
        };
        let host = if bits == 128 {
            host
        } else {
            host & ((1u128 << bits) - 1)
        };
        let start = value & !host;
        let to_bytes = |v: u128| v.to_be_bytes()[16 - N..].to_vec();
        let last = start | host;
        let max = if bits == 128 {
            u128::MAX
        } else {
            (1u128 << bits) - 1
        };
        let end = (last != max).then(|| to_bytes(last + 1));
        (to_bytes(start), end)
    }
    match addr {
        IpAddr::V4(v4) => bounds(v4.octets(), len),
        IpAddr::V6(v6) => bounds(v6.octets(), len),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_bounds_cover_the_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            prefix_bounds(ip("10.1.2.3"), 8),
            (vec![10, 0, 0, 0], Some(vec![11, 0, 0, 0]))
        );
        assert_eq!(
            prefix_bounds(ip("192.168.0.2"), 32),
            (vec![192, 168, 0, 2], Some(vec![192, 168, 0, 3]))
        );
        assert_eq!(prefix_bounds(ip("0.0.0.0"), 0), (vec![0; 4], None));
        assert_eq!(prefix_bounds(ip("255.255.255.255"), 32).1, None);
        let (start, end) = prefix_bounds(ip("fd00:10::1"), 32);
        assert_eq!(start[..4], [0xfd, 0, 0, 0x10]);
        assert_eq!(end.unwrap()[..4], [0xfd, 0, 0, 0x11]);
        assert_eq!(prefix_bounds(ip("::"), 0).1, None);
    }

    #[test]
    fn a_batch_numbers_its_messages_and_acks_the_last() {
        use crate::message::{messages, NLM_F_ACK};
        let mut b = Batch::new(10);
        b.add_table(TableFamily::Ip, "t");
        b.add_chain(TableFamily::Ip, "t", "c");
        assert_eq!((b.len(), b.seqs()), (2, 4));
        let mut part = Batch::new(0);
        part.add_chain(TableFamily::Ip, "t", "d");
        b.append(part);
        assert_eq!((b.len(), b.seqs()), (3, 5));
        let tx = b.finish();
        let buf = tx.concat();
        assert_eq!((tx.first, tx.last), (10, 13));
        let all: Vec<_> = messages(&buf).map(Result::unwrap).collect();
        let seqs: Vec<u32> = all.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [10, 11, 12, 13, 14]);
        assert_eq!(all[0].kind, NFNL_MSG_BATCH_BEGIN);
        assert_eq!(all[3].flags & NLM_F_ACK, NLM_F_ACK);
        assert_eq!(all[1].flags & NLM_F_ACK, 0);
        assert_eq!(all[2].flags & NLM_F_ACK, 0);
        assert_eq!(all[4].kind, NFNL_MSG_BATCH_END);
        // res_id of the delimiters: the subsystem, big-endian.
        assert_eq!(&all[0].payload[..4], &[0, 0, 0, 10]);
    }
}

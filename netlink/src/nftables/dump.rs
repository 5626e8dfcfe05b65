//! [`NftSocket`]: a `NETLINK_NETFILTER` socket that commits [`Batch`]es and runs the
//! nf_tables dumps `verify` and tests read (tables, chains, sets, elements, rules).
//! Every answer is parsed with checked lengths; a malformed one is an error naming the
//! dump, never a panic.

use std::collections::HashMap;

use nix::errno::Errno;

use super::{
    nfgenmsg, Attrs, Batch, TableFamily, MAX_BATCH_BYTES, NFNL_SUBSYS_NFTABLES, NFTA_CHAIN_NAME,
    NFTA_CHAIN_TABLE, NFTA_DATA_VALUE, NFTA_DATA_VERDICT, NFTA_EXPR_DATA, NFTA_EXPR_NAME,
    NFTA_LIST_ELEM, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_TABLE, NFTA_SET_ELEM_DATA,
    NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET,
    NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_USERDATA, NFTA_TABLE_NAME, NFTA_VERDICT_CHAIN,
    NFTA_VERDICT_CODE, NFT_MSG_GETCHAIN, NFT_MSG_GETRULE, NFT_MSG_GETSET, NFT_MSG_GETSETELEM,
    NFT_MSG_GETTABLE,
};
use crate::{
    attr::{attrs, Attr},
    error::{Malformed, NetlinkError},
    message::{
        error_code, messages, Message, MessageWriter, NLMSG_ERROR, NLM_F_ACK, NLM_F_DUMP,
        NLM_F_REQUEST,
    },
    socket::{NetlinkSocket, Netns, Protocol},
};

/// An element as a dump reports it: key bytes and, for verdict maps, the verdict's
/// chain.
pub type DumpedElement = (Vec<u8>, Option<String>);

/// What a dump found: `None` when the kernel refused it with `ENOENT` (no such table
/// or set).
pub type Found<T> = Option<T>;

/// Which tables a chain dump sorts chains into: an index per table name.
pub trait TableIndex {
    /// How many tables (indexes run from 0 to this, exclusive).
    fn table_count(&self) -> usize;
    /// The index of a table, if it is one of these.
    fn table_index(&self, name: &str) -> Option<usize>;
}

/// One set or map as the kernel describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetInfo {
    pub name: String,
    pub flags: u32,
    pub key_type: u32,
    pub key_len: u32,
    /// Map data type (`0xffffff00`: verdict), none for a set.
    pub data_type: Option<u32>,
}

/// A `NETLINK_NETFILTER` socket in one network namespace, for nf_tables.
#[derive(Debug)]
pub struct NftSocket {
    socket: NetlinkSocket,
    /// The send buffer the kernel granted (a batch is one datagram and must fit).
    send_buffer: usize,
}

fn malformed(what: &str) -> impl Fn(Malformed) -> NetlinkError + '_ {
    move |e| NetlinkError::malformed(format!("nf_tables netlink {what}"), e)
}

/// The attributes of one answer (after its `nfgenmsg` header).
fn body<'a>(message: &Message<'a>, what: &str) -> Result<Vec<Attr<'a>>, NetlinkError> {
    let payload = message.after_fixed(4).map_err(malformed(what))?;
    attrs(payload)
        .collect::<Result<Vec<_>, _>>()
        .map_err(malformed(what))
}

fn string(attr: &Attr<'_>, what: &str) -> Result<String, NetlinkError> {
    attr.str().map(str::to_string).map_err(malformed(what))
}

impl NftSocket {
    /// Opens a socket in `netns` (a name under `/run/netns`), or in the caller's
    /// namespace for `None`.
    pub fn open(netns: Option<&str>) -> Result<NftSocket, NetlinkError> {
        let socket = NetlinkSocket::open(Protocol::Netfilter, &Netns::from_name(netns))?;
        let send_buffer = socket.set_send_buffer(MAX_BATCH_BYTES);
        Ok(NftSocket {
            socket,
            send_buffer,
        })
    }

    /// How long a commit or dump waits for the kernel (a full sync of tens of thousands
    /// of services keeps the kernel busy for seconds).
    pub fn set_timeout(&mut self, timeout: std::time::Duration) -> Result<(), NetlinkError> {
        self.socket.set_timeout(timeout)
    }

    /// A new batch numbered after the previous ones.
    pub fn batch(&self) -> Batch {
        Batch::new(self.socket.peek_seq())
    }

    /// Sends `batch` and waits for the kernel's verdict on it: the first error of any
    /// of its messages (with that message's index), or the acknowledgement of the last.
    pub fn commit(&mut self, batch: Batch) -> Result<(), NetlinkError> {
        let count = batch.len();
        self.socket.reserve_seqs(batch.seqs());
        let tx = batch.finish();
        let (first, last) = (tx.first, tx.last);
        if count == 0 {
            return Ok(());
        }
        const WHAT: &str = "nf_tables netlink batch";
        // The kernel refuses a datagram larger than the send buffer (less 32 bytes).
        let needed = tx.bytes() + 64 * 1024;
        if needed > self.send_buffer {
            self.send_buffer = self.socket.set_send_buffer(needed);
        }
        self.socket.send_vectored(&tx.segments, WHAT)?;
        drop(tx);
        let mut failure: Option<(u32, i32)> = None;
        loop {
            let data = self.socket.receive(WHAT)?;
            for message in messages(data) {
                let message = message.map_err(malformed("batch answer"))?;
                let index = message.seq.wrapping_sub(first);
                if message.kind != NLMSG_ERROR || index > last.wrapping_sub(first) + 1 {
                    continue; // not about this batch
                }
                let errno = error_code(&message).map_err(malformed("batch answer"))?;
                if errno != 0 {
                    failure.get_or_insert((index, errno));
                }
                if message.seq == last || message.seq == first {
                    return match failure {
                        None => Ok(()),
                        Some((index, errno)) => Err(NetlinkError::kernel(
                            format!("nf_tables netlink batch, message {index} of {count}"),
                            errno,
                        )),
                    };
                }
            }
        }
    }

    /// Runs one request (a dump, or a get with `NLM_F_ACK`); `on_answer` gets each
    /// answer's attributes. `ENOENT` is `Ok(None)`.
    fn request(
        &mut self,
        family: TableFamily,
        msg: u16,
        flags: u16,
        what: &str,
        request: impl FnOnce(&mut Attrs<'_>),
        mut on_answer: impl FnMut(&[Attr<'_>]) -> Result<(), NetlinkError>,
    ) -> Result<Found<()>, NetlinkError> {
        let seq = self.socket.next_seq();
        let mut w = MessageWriter::with_capacity(128);
        w.begin(
            NFNL_SUBSYS_NFTABLES << 8 | msg,
            NLM_F_REQUEST | flags,
            seq,
            &nfgenmsg(family.nfproto(), 0),
        );
        request(&mut Attrs::new(w.buffer()));
        let operation = format!("nf_tables netlink {what}");
        let result = self
            .socket
            .exchange(w.finish(), seq, &operation, |m| on_answer(&body(m, what)?));
        match result {
            Ok(()) => Ok(Some(())),
            Err(e) if e.is_kernel(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn dump(
        &mut self,
        family: TableFamily,
        msg: u16,
        what: &str,
        request: impl FnOnce(&mut Attrs<'_>),
        on_answer: impl FnMut(&[Attr<'_>]) -> Result<(), NetlinkError>,
    ) -> Result<Found<()>, NetlinkError> {
        self.request(family, msg, NLM_F_DUMP, what, request, on_answer)
    }

    /// Names of the tables of `family`.
    pub fn tables(&mut self, family: impl Into<TableFamily>) -> Result<Vec<String>, NetlinkError> {
        let mut out = Vec::new();
        self.dump(
            family.into(),
            NFT_MSG_GETTABLE,
            "table dump",
            |_| {},
            |attrs| {
                for a in attrs.iter().filter(|a| a.kind == NFTA_TABLE_NAME) {
                    out.push(string(a, "table dump")?);
                }
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// Every chain of `family`: (table, chain).
    pub fn chain_names(
        &mut self,
        family: impl Into<TableFamily>,
    ) -> Result<Vec<(String, String)>, NetlinkError> {
        let mut out = Vec::new();
        self.dump(
            family.into(),
            NFT_MSG_GETCHAIN,
            "chain dump",
            |_| {},
            |attrs| {
                let (mut table, mut name) = (None, None);
                for a in attrs {
                    match a.kind {
                        NFTA_CHAIN_TABLE => table = Some(string(a, "chain dump")?),
                        NFTA_CHAIN_NAME => name = Some(string(a, "chain dump")?),
                        _ => {}
                    }
                }
                match (table, name) {
                    (Some(t), Some(n)) => out.push((t, n)),
                    _ => {
                        return Err(malformed("chain dump")(Malformed::new(
                            "chain without table or name",
                        )))
                    }
                }
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// Names of the chains of one table (the kernel walks that table's chains only, so
    /// this is cheap for a small table however many chains others hold).
    pub fn table_chains(
        &mut self,
        family: impl Into<TableFamily>,
        table: &str,
    ) -> Result<Found<Vec<String>>, NetlinkError> {
        const WHAT: &str = "chain dump";
        let mut out = Vec::new();
        let found = self.dump(
            family.into(),
            NFT_MSG_GETCHAIN,
            WHAT,
            |a| a.str(NFTA_CHAIN_TABLE, table),
            |attrs| {
                for a in attrs.iter().filter(|a| a.kind == NFTA_CHAIN_NAME) {
                    out.push(string(a, WHAT)?);
                }
                Ok(())
            },
        )?;
        Ok(found.map(|()| out))
    }

    /// Names of the chains of the `tables` in `family`, per table index (empty when a
    /// table does not exist).
    pub fn chains<T: TableIndex>(
        &mut self,
        family: impl Into<TableFamily>,
        tables: &T,
    ) -> Result<Vec<Vec<String>>, NetlinkError> {
        let mut out = vec![Vec::new(); tables.table_count()];
        for (table, chain) in self.chain_names(family)? {
            if let Some(i) = tables.table_index(&table) {
                if let Some(chains) = out.get_mut(i) {
                    chains.push(chain);
                }
            }
        }
        Ok(out)
    }

    /// The sets and maps of `table` in `family`.
    pub fn set_infos(
        &mut self,
        family: impl Into<TableFamily>,
        table: &str,
    ) -> Result<Found<Vec<SetInfo>>, NetlinkError> {
        let mut out = Vec::new();
        let found = self.dump(
            family.into(),
            NFT_MSG_GETSET,
            "set dump",
            |a| a.str(super::set::NFTA_SET_TABLE, table),
            |attrs| {
                out.push(set_info(attrs)?);
                Ok(())
            },
        )?;
        Ok(found.map(|()| out))
    }

    /// Names of the sets and maps of `table` in `family`.
    pub fn sets(
        &mut self,
        family: impl Into<TableFamily>,
        table: &str,
    ) -> Result<Found<Vec<String>>, NetlinkError> {
        Ok(self
            .set_infos(family, table)?
            .map(|sets| sets.into_iter().map(|s| s.name).collect()))
    }

    /// Elements in one set or map.
    pub fn element_count(
        &mut self,
        family: impl Into<TableFamily>,
        table: &str,
        set: &str,
    ) -> Result<Found<usize>, NetlinkError> {
        let mut count = 0;
        let found = self.dump(
            family.into(),
            NFT_MSG_GETSETELEM,
            "element dump",
            |a| {
                a.str(NFTA_SET_ELEM_LIST_TABLE, table);
                a.str(NFTA_SET_ELEM_LIST_SET, set);
            },
            |attrs| {
                for list in attrs
                    .iter()
                    .filter(|a| a.kind == NFTA_SET_ELEM_LIST_ELEMENTS)
                {
                    for elem in list.nested() {
                        let elem = elem.map_err(malformed("element dump"))?;
                        count += usize::from(elem.kind == NFTA_LIST_ELEM);
                    }
                }
                Ok(())
            },
        )?;
        Ok(found.map(|()| count))
    }

    /// The elements of one set or map: key bytes and, for verdict maps, the verdict's
    /// chain.
    pub fn elements(
        &mut self,
        family: impl Into<TableFamily>,
        table: &str,
        set: &str,
    ) -> Result<Found<Vec<DumpedElement>>, NetlinkError> {
        let mut out = Vec::new();
        let found = self.dump(
            family.into(),
            NFT_MSG_GETSETELEM,
            "element dump",
            |a| {
                a.str(NFTA_SET_ELEM_LIST_TABLE, table);
                a.str(NFTA_SET_ELEM_LIST_SET, set);
            },
            |attrs| {
                for list in attrs
                    .iter()
                    .filter(|a| a.kind == NFTA_SET_ELEM_LIST_ELEMENTS)
                {
                    out.extend(elements(list, "element dump")?);
                }
                Ok(())
            },
        )?;
        Ok(found.map(|()| out))
    }

    /// How many of `keys` (a prefix of them: the kernel stops at the first missing one)
    /// are in `set`, and, for verdict maps, each found element's verdict chain.
    pub fn elements_present(
        &mut self,
        family: impl Into<TableFamily>,
        table: &str,
        set: &str,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<String>>, NetlinkError> {
        let mut found = Vec::new();
        self.request(
            family.into(),
            NFT_MSG_GETSETELEM,
            NLM_F_ACK,
            "element lookup",
            |a| {
                a.str(NFTA_SET_ELEM_LIST_TABLE, table);
                a.str(NFTA_SET_ELEM_LIST_SET, set);
                let list = a.begin(NFTA_SET_ELEM_LIST_ELEMENTS);
                for key in keys {
                    let elem = a.begin(NFTA_LIST_ELEM);
                    a.data(NFTA_SET_ELEM_KEY, key);
                    a.end(elem);
                }
                a.end(list);
            },
            |attrs| {
                for list in attrs
                    .iter()
                    .filter(|a| a.kind == NFTA_SET_ELEM_LIST_ELEMENTS)
                {
                    found.extend(elements(list, "element lookup")?.into_iter().map(|e| e.1));
                }
                Ok(())
            },
        )?;
        Ok(found)
    }

    /// Rule counts per chain of `table` (only `chain` when given).
    pub fn rule_counts(
        &mut self,
        family: impl Into<TableFamily>,
        table: &str,
        chain: Option<&str>,
    ) -> Result<Found<HashMap<String, usize>>, NetlinkError> {
        let mut out: HashMap<String, usize> = HashMap::new();
        let found = self.dump(
            family.into(),
            NFT_MSG_GETRULE,
            "rule dump",
            |a| {
                a.str(NFTA_RULE_TABLE, table);
                if let Some(chain) = chain {
                    a.str(NFTA_RULE_CHAIN, chain);
                }
            },
            |attrs| {
                for a in attrs.iter().filter(|a| a.kind == NFTA_RULE_CHAIN) {
                    let name = a.str().map_err(malformed("rule dump"))?;
                    match out.get_mut(name) {
                        Some(n) => *n += 1,
                        None => {
                            out.insert(name.to_string(), 1);
                        }
                    }
                }
                Ok(())
            },
        )?;
        Ok(found.map(|()| out))
    }
}

/// What [`NftSocket::answers`] dumps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DumpKind {
    /// The chains of a table.
    Chains,
    /// The sets and maps of a table.
    Sets,
    /// The rules of a table, or of one chain.
    Rules,
    /// The elements of one set or map.
    Elements,
}

/// One element as a dump reports it, in full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElementInfo {
    pub key: Vec<u8>,
    /// For verdict maps: the verdict code and chain.
    pub verdict: Option<(i32, Option<String>)>,
    /// For maps of values: the value's bytes.
    pub value: Option<Vec<u8>>,
    /// `NFT_SET_ELEM_*` flags (`INTERVAL_END`).
    pub flags: u32,
    /// The user data (nft's element comment), if any.
    pub userdata: Option<Vec<u8>>,
}

/// One expression of a dumped rule: its name and its attributes (`NFTA_EXPR_DATA`'s
/// content), to be walked with [`crate::attr::attrs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleExpr {
    pub name: String,
    pub data: Vec<u8>,
}

impl NftSocket {
    /// Every answer of a dump of `table` (and of the chain, set or map `name` for rules
    /// and elements), as the kernel wrote its attributes: for comparing kernel state
    /// byte for byte.
    pub fn answers(
        &mut self,
        family: impl Into<TableFamily>,
        kind: DumpKind,
        table: &str,
        name: Option<&str>,
    ) -> Result<Found<Vec<Vec<u8>>>, NetlinkError> {
        let (msg, table_attr, name_attr) = match kind {
            DumpKind::Chains => (NFT_MSG_GETCHAIN, NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME),
            DumpKind::Sets => (NFT_MSG_GETSET, super::set::NFTA_SET_TABLE, 0),
            DumpKind::Rules => (NFT_MSG_GETRULE, NFTA_RULE_TABLE, NFTA_RULE_CHAIN),
            DumpKind::Elements => (
                NFT_MSG_GETSETELEM,
                NFTA_SET_ELEM_LIST_TABLE,
                NFTA_SET_ELEM_LIST_SET,
            ),
        };
        let mut out = Vec::new();
        let found = self.request(
            family.into(),
            msg,
            NLM_F_DUMP,
            "dump",
            |a| {
                a.str(table_attr, table);
                if let (Some(name), true) = (name, name_attr != 0) {
                    a.str(name_attr, name);
                }
            },
            |attrs| {
                let mut buf = Vec::new();
                let mut w = crate::attr::AttrWriter(&mut buf);
                for a in attrs {
                    w.put(a.kind, a.value);
                }
                out.push(buf);
                Ok(())
            },
        )?;
        Ok(found.map(|()| out))
    }

    /// The elements of one set or map with everything the kernel reports of them.
    pub fn element_infos(
        &mut self,
        family: impl Into<TableFamily>,
        table: &str,
        set: &str,
    ) -> Result<Found<Vec<ElementInfo>>, NetlinkError> {
        let mut out = Vec::new();
        let found = self.dump(
            family.into(),
            NFT_MSG_GETSETELEM,
            "element dump",
            |a| {
                a.str(NFTA_SET_ELEM_LIST_TABLE, table);
                a.str(NFTA_SET_ELEM_LIST_SET, set);
            },
            |attrs| {
                for list in attrs
                    .iter()
                    .filter(|a| a.kind == NFTA_SET_ELEM_LIST_ELEMENTS)
                {
                    for elem in list.nested() {
                        let elem = elem.map_err(malformed("element dump"))?;
                        if elem.kind == NFTA_LIST_ELEM {
                            out.push(element_info(&elem)?);
                        }
                    }
                }
                Ok(())
            },
        )?;
        Ok(found.map(|()| out))
    }

    /// The rules of one chain, each as its expressions.
    pub fn rule_exprs(
        &mut self,
        family: impl Into<TableFamily>,
        table: &str,
        chain: &str,
    ) -> Result<Found<Vec<Vec<RuleExpr>>>, NetlinkError> {
        const WHAT: &str = "rule dump";
        let mut out = Vec::new();
        let found = self.dump(
            family.into(),
            NFT_MSG_GETRULE,
            WHAT,
            |a| {
                a.str(NFTA_RULE_TABLE, table);
                a.str(NFTA_RULE_CHAIN, chain);
            },
            |attrs| {
                let mut exprs = Vec::new();
                for list in attrs.iter().filter(|a| a.kind == NFTA_RULE_EXPRESSIONS) {
                    for elem in list.nested() {
                        let elem = elem.map_err(malformed(WHAT))?;
                        let (mut name, mut data) = (String::new(), Vec::new());
                        for a in elem.nested() {
                            let a = a.map_err(malformed(WHAT))?;
                            match a.kind {
                                NFTA_EXPR_NAME => name = string(&a, WHAT)?,
                                NFTA_EXPR_DATA => data = a.value.to_vec(),
                                _ => {}
                            }
                        }
                        exprs.push(RuleExpr { name, data });
                    }
                }
                out.push(exprs);
                Ok(())
            },
        )?;
        Ok(found.map(|()| out))
    }
}

fn element_info(elem: &Attr<'_>) -> Result<ElementInfo, NetlinkError> {
    const WHAT: &str = "element dump";
    let mut info = ElementInfo {
        key: Vec::new(),
        verdict: None,
        value: None,
        flags: 0,
        userdata: None,
    };
    for a in elem.nested() {
        let a = a.map_err(malformed(WHAT))?;
        match a.kind {
            NFTA_SET_ELEM_KEY => {
                for v in a.nested() {
                    info.key = v.map_err(malformed(WHAT))?.value.to_vec();
                }
            }
            NFTA_SET_ELEM_DATA => {
                for d in a.nested() {
                    let d = d.map_err(malformed(WHAT))?;
                    if d.kind == NFTA_DATA_VALUE {
                        info.value = Some(d.value.to_vec());
                    }
                    if d.kind != NFTA_DATA_VERDICT {
                        continue;
                    }
                    let (mut code, mut chain) = (0, None);
                    for v in d.nested() {
                        let v = v.map_err(malformed(WHAT))?;
                        match v.kind {
                            NFTA_VERDICT_CODE => {
                                code = v.be32().map_err(malformed(WHAT))? as i32;
                            }
                            NFTA_VERDICT_CHAIN => chain = Some(string(&v, WHAT)?),
                            _ => {}
                        }
                    }
                    info.verdict = Some((code, chain));
                }
            }
            NFTA_SET_ELEM_FLAGS => info.flags = a.be32().map_err(malformed(WHAT))?,
            NFTA_SET_ELEM_USERDATA => info.userdata = Some(a.value.to_vec()),
            _ => {}
        }
    }
    Ok(info)
}

/// Decodes one answer of a set dump (`NEWSET`).
pub fn decode_set(message: &Message<'_>) -> Result<SetInfo, NetlinkError> {
    set_info(&body(message, "set dump")?)
}

/// Decodes one answer of an element dump or lookup (`NEWSETELEM`): each element's key
/// bytes and, for verdict maps, its verdict's chain.
pub fn decode_elements(message: &Message<'_>) -> Result<Vec<DumpedElement>, NetlinkError> {
    let mut out = Vec::new();
    for list in body(message, "element dump")?
        .iter()
        .filter(|a| a.kind == NFTA_SET_ELEM_LIST_ELEMENTS)
    {
        out.extend(elements(list, "element dump")?);
    }
    Ok(out)
}

fn set_info(attrs: &[Attr<'_>]) -> Result<SetInfo, NetlinkError> {
    const WHAT: &str = "set dump";
    let mut info = SetInfo {
        name: String::new(),
        flags: 0,
        key_type: 0,
        key_len: 0,
        data_type: None,
    };
    for a in attrs {
        let m = malformed(WHAT);
        match a.kind {
            2 => info.name = string(a, WHAT)?,
            3 => info.flags = a.be32().map_err(m)?,
            4 => info.key_type = a.be32().map_err(m)?,
            5 => info.key_len = a.be32().map_err(m)?,
            6 => info.data_type = Some(a.be32().map_err(m)?),
            _ => {}
        }
    }
    if info.name.is_empty() {
        return Err(malformed(WHAT)(Malformed::new("set without a name")));
    }
    Ok(info)
}

/// The elements of an `NFTA_SET_ELEM_LIST_ELEMENTS` attribute: key and verdict chain.
fn elements(list: &Attr<'_>, what: &str) -> Result<Vec<DumpedElement>, NetlinkError> {
    let mut out = Vec::new();
    for elem in list.nested() {
        let elem = elem.map_err(malformed(what))?;
        if elem.kind != NFTA_LIST_ELEM {
            continue;
        }
        let (mut key, mut chain) = (Vec::new(), None);
        for a in elem.nested() {
            let a = a.map_err(malformed(what))?;
            match a.kind {
                NFTA_SET_ELEM_KEY => {
                    for v in a.nested() {
                        key = v.map_err(malformed(what))?.value.to_vec();
                    }
                }
                NFTA_SET_ELEM_DATA => {
                    for d in a.nested() {
                        let d = d.map_err(malformed(what))?;
                        if d.kind != NFTA_DATA_VERDICT {
                            continue;
                        }
                        for v in d.nested() {
                            let v = v.map_err(malformed(what))?;
                            if v.kind == NFTA_VERDICT_CHAIN {
                                chain = Some(string(&v, what)?);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        out.push((key, chain));
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A set element dump answer, as the kernel would send it (for the parser tests).
    pub(crate) fn element_answer(chain: &str) -> Vec<u8> {
        let mut w = MessageWriter::new();
        w.begin(NFNL_SUBSYS_NFTABLES << 8 | 12, 0x2, 1, &nfgenmsg(2, 0));
        let mut a = Attrs::new(w.buffer());
        a.str(NFTA_SET_ELEM_LIST_TABLE, "t");
        a.str(NFTA_SET_ELEM_LIST_SET, "m");
        let list = a.begin(NFTA_SET_ELEM_LIST_ELEMENTS);
        let e = a.begin(NFTA_LIST_ELEM);
        a.data(NFTA_SET_ELEM_KEY, &[10, 0, 0, 1]);
        a.verdict(NFTA_SET_ELEM_DATA, super::super::NFT_GOTO, Some(chain));
        a.end(e);
        a.end(list);
        w.into_bytes()
    }

    pub(crate) fn parse_element_answer(data: &[u8]) -> Result<usize, NetlinkError> {
        let mut n = 0;
        for m in messages(data) {
            let m = m.map_err(malformed("test"))?;
            n += decode_elements(&m)?.len();
        }
        Ok(n)
    }

    #[test]
    fn element_answers_parse_and_truncations_fail() {
        let buf = element_answer("svc-1");
        assert_eq!(parse_element_answer(&buf).unwrap(), 1);
        // Every truncation is an error or parses fewer elements; never a panic.
        for cut in 0..buf.len() {
            let mut short = buf[..cut].to_vec();
            if short.len() >= 4 {
                short[..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            }
            let _ = parse_element_answer(&short);
        }
    }
}

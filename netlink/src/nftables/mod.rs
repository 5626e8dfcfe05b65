//! nf_tables over netlink (`NETLINK_NETFILTER`, subsystem `NFNL_SUBSYS_NFTABLES`): the
//! transactions the nftables engine writes without an `nft` process and the dumps its
//! `verify` reads.
//!
//! Hand-written: no maintained crate encodes nf_tables batches (the `nftnl`/`rustables`
//! crates bind libnftnl through C; `netlink-packet-netfilter` covers nflog only). Each
//! message mirrors what nft 1.0.6 sends for the same command, so `nft list` shows our
//! objects as if nft had made them.
//!
//! - [`Batch`]: one atomic transaction (`NFNL_MSG_BATCH_BEGIN` … `END`): tables, base and
//!   regular chains, rules, sets and maps (key types, concatenations, interval, timeout,
//!   dynamic), elements; the kernel applies all of it or none of it.
//! - [`NftSocket`]: commits batches and runs the dumps (chains, sets, elements, rules).
//! - [`Attrs`]: the attribute writer rules are encoded with (expressions, data, verdicts).
//!
//! Netlink and attribute headers are host byte order; nf_tables integers big-endian.

mod batch;
mod dump;
mod set;

use std::ops::{Deref, DerefMut};

pub use batch::{comment_userdata, prefix_bounds, userdata_comment};
pub use batch::{BaseChain, Batch, ChainType, Hook, Transaction, MAX_BATCH_BYTES, SEGMENT_BYTES};
pub use dump::{
    decode_elements, decode_set, DumpKind, DumpedElement, ElementInfo, Found, NftSocket, RuleExpr,
    SetInfo, TableIndex,
};
pub use set::{DataType, KeyType, SetFlags, SetSpec};

use crate::attr::AttrWriter;

// linux/netfilter/nfnetlink.h
pub(crate) const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub(crate) const NFNL_MSG_BATCH_BEGIN: u16 = 16;
pub(crate) const NFNL_MSG_BATCH_END: u16 = 17;

// linux/netfilter/nf_tables.h: messages.
pub(crate) const NFT_MSG_NEWTABLE: u16 = 0;
pub(crate) const NFT_MSG_GETTABLE: u16 = 1;
pub(crate) const NFT_MSG_DELTABLE: u16 = 2;
pub(crate) const NFT_MSG_NEWCHAIN: u16 = 3;
pub(crate) const NFT_MSG_GETCHAIN: u16 = 4;
pub(crate) const NFT_MSG_DELCHAIN: u16 = 5;
pub(crate) const NFT_MSG_NEWRULE: u16 = 6;
pub(crate) const NFT_MSG_GETRULE: u16 = 7;
pub(crate) const NFT_MSG_DELRULE: u16 = 8;
pub(crate) const NFT_MSG_NEWSET: u16 = 9;
pub(crate) const NFT_MSG_GETSET: u16 = 10;
pub(crate) const NFT_MSG_DELSET: u16 = 11;
pub(crate) const NFT_MSG_NEWSETELEM: u16 = 12;
pub(crate) const NFT_MSG_GETSETELEM: u16 = 13;
pub(crate) const NFT_MSG_DELSETELEM: u16 = 14;

// Attributes.
pub(crate) const NFTA_TABLE_NAME: u16 = 1;
pub(crate) const NFTA_TABLE_FLAGS: u16 = 2;
pub(crate) const NFTA_CHAIN_TABLE: u16 = 1;
pub(crate) const NFTA_CHAIN_NAME: u16 = 3;
pub(crate) const NFTA_CHAIN_HOOK: u16 = 4;
pub(crate) const NFTA_CHAIN_POLICY: u16 = 5;
pub(crate) const NFTA_CHAIN_TYPE: u16 = 7;
pub(crate) const NFTA_HOOK_HOOKNUM: u16 = 1;
pub(crate) const NFTA_HOOK_PRIORITY: u16 = 2;
pub(crate) const NFTA_RULE_TABLE: u16 = 1;
pub(crate) const NFTA_RULE_CHAIN: u16 = 2;
pub(crate) const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub(crate) const NFTA_LIST_ELEM: u16 = 1;
pub(crate) const NFTA_EXPR_NAME: u16 = 1;
pub(crate) const NFTA_EXPR_DATA: u16 = 2;
pub(crate) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(crate) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub(crate) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub(crate) const NFTA_SET_ELEM_KEY: u16 = 1;
pub(crate) const NFTA_SET_ELEM_DATA: u16 = 2;
pub(crate) const NFTA_SET_ELEM_FLAGS: u16 = 3;
pub(crate) const NFTA_SET_ELEM_USERDATA: u16 = 6;
pub const NFTA_DATA_VALUE: u16 = 1;
pub const NFTA_DATA_VERDICT: u16 = 2;
pub(crate) const NFTA_VERDICT_CODE: u16 = 1;
pub(crate) const NFTA_VERDICT_CHAIN: u16 = 2;
/// `NFT_SET_ELEM_INTERVAL_END`: the element closes an interval.
pub(crate) const NFT_SET_ELEM_INTERVAL_END: u32 = 1;

// Verdict codes.
pub const NF_DROP: i32 = 0;
pub const NF_ACCEPT: i32 = 1;
pub const NFT_CONTINUE: i32 = -1;
pub const NFT_JUMP: i32 = -3;
pub const NFT_GOTO: i32 = -4;
pub const NFT_RETURN: i32 = -5;

/// The family of an nf_tables table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TableFamily {
    Ip,
    Ip6,
    Inet,
}

impl TableFamily {
    /// The `NFPROTO_*` value the `nfgenmsg` header carries.
    pub fn nfproto(self) -> u8 {
        match self {
            TableFamily::Inet => 1,
            TableFamily::Ip => 2,
            TableFamily::Ip6 => 10,
        }
    }

    /// The nft keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            TableFamily::Ip => "ip",
            TableFamily::Ip6 => "ip6",
            TableFamily::Inet => "inet",
        }
    }
}

/// `nfgenmsg`: family, version 0, resource id (big-endian; the subsystem for batch
/// delimiters, else 0).
pub(crate) fn nfgenmsg(family: u8, res_id: u16) -> [u8; 4] {
    let [a, b] = res_id.to_be_bytes();
    [family, 0, a, b]
}

/// A map or set element: key bytes (concatenations padded per component), for verdict
/// maps a verdict (code, chain), and an optional comment (nft's element user data).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElementBytes {
    pub key: Vec<u8>,
    pub verdict: Option<(i32, Option<String>)>,
    pub comment: Option<String>,
}

/// The attribute writer rules are encoded with: the generic writer plus nf_tables'
/// big-endian integers, data values, verdicts and expressions.
pub struct Attrs<'a>(pub AttrWriter<'a>);

impl<'a> Deref for Attrs<'a> {
    type Target = AttrWriter<'a>;
    fn deref(&self) -> &AttrWriter<'a> {
        &self.0
    }
}

impl DerefMut for Attrs<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<'a> Attrs<'a> {
    pub fn new(buf: &'a mut Vec<u8>) -> Attrs<'a> {
        Attrs(AttrWriter(buf))
    }

    /// A big-endian `u32` (nf_tables' integer attributes).
    pub fn u32(&mut self, kind: u16, value: u32) {
        self.0.be32(kind, value);
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

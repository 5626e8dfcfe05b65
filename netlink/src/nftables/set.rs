//! Sets and maps as nf_tables declares them: key and data types (nft's datatype ids,
//! concatenations folded as nft folds them), flags, and the user data nft attaches so
//! `nft list` prints our sets as it prints its own.

use crate::attr::AttrWriter;

/// nft's datatypes (`src/datatype.h`) that keys and map data use here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyType {
    Ipv4Addr,
    Ipv6Addr,
    /// An IP protocol number (1 byte).
    InetProto,
    /// A port (2 bytes, big-endian).
    InetService,
    /// A packet mark (4 bytes).
    Mark,
    /// A plain 32-bit integer, host-endian (`numgen` results).
    Integer,
}

impl KeyType {
    /// nft's datatype id.
    pub fn id(self) -> u32 {
        match self {
            KeyType::Ipv4Addr => 7,
            KeyType::Ipv6Addr => 8,
            KeyType::InetProto => 12,
            KeyType::InetService => 13,
            KeyType::Mark => 19,
            KeyType::Integer => 4,
        }
    }

    /// Bytes of one value.
    pub fn bytes(self) -> u32 {
        match self {
            KeyType::Ipv4Addr | KeyType::Mark | KeyType::Integer => 4,
            KeyType::Ipv6Addr => 16,
            KeyType::InetProto => 1,
            KeyType::InetService => 2,
        }
    }

    /// Big-endian on the wire (addresses, ports): nft's user data says so.
    fn big_endian(self) -> bool {
        matches!(
            self,
            KeyType::Ipv4Addr | KeyType::Ipv6Addr | KeyType::InetService
        )
    }

    /// The key type of a concatenation: each component shifted in by 6 bits, the first
    /// one highest (nft's `concat_subtype_add`).
    pub fn concat_id(parts: &[KeyType]) -> u32 {
        parts.iter().fold(0, |acc, p| (acc << 6) | p.id())
    }

    /// The key length of a concatenation: each component padded to 4 bytes (one
    /// register); a single type is its own length.
    pub fn concat_len(parts: &[KeyType]) -> u32 {
        match parts {
            [one] => one.bytes(),
            _ => parts.iter().map(|p| p.bytes().div_ceil(4) * 4).sum(),
        }
    }
}

/// What a map maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    /// A verdict map (`: verdict`).
    Verdict,
    Value(KeyType),
    /// A concatenation of values (`: ipv4_addr . inet_service`).
    Values(&'static [KeyType]),
}

/// Set flags (`NFT_SET_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SetFlags {
    pub constant: bool,
    /// Elements are ranges (prefixes).
    pub interval: bool,
    /// Elements expire (`flags timeout`).
    pub timeout: bool,
    /// Rules add elements (`flags dynamic`).
    pub dynamic: bool,
    /// nft merges adjacent and overlapping intervals before sending them (`auto-merge`;
    /// interval sets only). Recorded in the set's user data, as nft does.
    pub auto_merge: bool,
}

pub(crate) const NFT_SET_CONSTANT: u32 = 0x2;
pub(crate) const NFT_SET_INTERVAL: u32 = 0x4;
pub(crate) const NFT_SET_MAP: u32 = 0x8;
pub(crate) const NFT_SET_TIMEOUT: u32 = 0x10;
pub(crate) const NFT_SET_EVAL: u32 = 0x20;
pub(crate) const NFT_SET_CONCAT: u32 = 0x80;
/// `NFT_DATA_VERDICT`: the data type of verdict maps.
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

pub(crate) const NFTA_SET_TABLE: u16 = 1;
pub(crate) const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_TIMEOUT: u16 = 11;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_DESC_CONCAT: u16 = 2;
const NFTA_SET_FIELD_LEN: u16 = 1;
const NFTA_LIST_ELEM: u16 = 1;
// nft's set user data (libnftnl `NFTNL_UDATA_SET_*`): type-length-value records, one
// byte each for type and length, values host-endian. nft 1.0.6 writes, in this order:
// the key's byte order (2: big-endian, for addresses and ports; 0 for a concatenation),
// for maps the data's byte order (0 for verdicts), `auto-merge` (1) for interval sets,
// for concatenations a `typeof` record naming a concatenation (expression type 13) with
// no sub-expressions, and for maps "data is not an interval" (0).
const UDATA_KEYBYTEORDER: u8 = 0;
const UDATA_DATABYTEORDER: u8 = 1;
const UDATA_MERGE_ELEMENTS: u8 = 2;
const UDATA_KEY_TYPEOF: u8 = 3;
const UDATA_DATA_INTERVAL: u8 = 6;
const BYTEORDER_BIG_ENDIAN: u32 = 2;
const BYTEORDER_HOST_ENDIAN: u32 = 1;
const TYPEOF_CONCAT: [u8; 8] = {
    let v = 13u32.to_ne_bytes();
    [0, 4, v[0], v[1], v[2], v[3], 1, 0]
};

fn udata_u32(out: &mut Vec<u8>, kind: u8, value: u32) {
    out.extend_from_slice(&[kind, 4]);
    out.extend_from_slice(&value.to_ne_bytes());
}

/// A set or map to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetSpec<'a> {
    pub name: &'a str,
    /// One type, or the components of a concatenation.
    pub key: &'a [KeyType],
    /// `Some` for a map.
    pub data: Option<DataType>,
    pub flags: SetFlags,
    /// Default element timeout (`timeout 3h`), in milliseconds.
    pub timeout_ms: Option<u64>,
    /// User data written as given instead of the one derived from the types (a
    /// `typeof` declaration, whose records name nft expressions).
    pub userdata: Option<&'a [u8]>,
}

impl SetSpec<'_> {
    fn flag_bits(&self) -> u32 {
        let f = &self.flags;
        let mut bits = 0;
        for (on, bit) in [
            (f.constant, NFT_SET_CONSTANT),
            (f.interval, NFT_SET_INTERVAL),
            (f.timeout, NFT_SET_TIMEOUT),
            (f.dynamic, NFT_SET_EVAL),
            (self.data.is_some(), NFT_SET_MAP),
            (self.concat_fields(), NFT_SET_CONCAT),
        ] {
            if on {
                bits |= bit;
            }
        }
        bits
    }

    /// Whether the set names its concatenation's field lengths (with `NFT_SET_CONCAT`:
    /// kernels since 6.2 refuse one without the other): as nft, only for interval
    /// concatenations, which need them to pick the `pipapo` backend.
    fn concat_fields(&self) -> bool {
        self.key.len() > 1 && self.flags.interval
    }

    /// nft's user data for this declaration (see the constants above).
    fn userdata(&self) -> Vec<u8> {
        let concat = self.key.len() > 1;
        let mut out = Vec::with_capacity(28);
        let order = match self.key {
            [one] if one.big_endian() => BYTEORDER_BIG_ENDIAN,
            [_] => BYTEORDER_HOST_ENDIAN,
            _ => 0,
        };
        udata_u32(&mut out, UDATA_KEYBYTEORDER, order);
        if let Some(data) = self.data {
            let order = match data {
                DataType::Verdict => 0,
                DataType::Value(t) if t.big_endian() => BYTEORDER_BIG_ENDIAN,
                DataType::Value(_) => BYTEORDER_HOST_ENDIAN,
                DataType::Values(_) => 0,
            };
            udata_u32(&mut out, UDATA_DATABYTEORDER, order);
        }
        if self.flags.interval && self.flags.auto_merge {
            udata_u32(&mut out, UDATA_MERGE_ELEMENTS, 1);
        }
        if concat {
            out.extend_from_slice(&[UDATA_KEY_TYPEOF, TYPEOF_CONCAT.len() as u8]);
            out.extend_from_slice(&TYPEOF_CONCAT);
        }
        if self.data.is_some() {
            udata_u32(&mut out, UDATA_DATA_INTERVAL, 0);
        }
        out
    }

    /// The `NEWSET` attributes, with `id` as the set's id in the transaction.
    pub(crate) fn encode(&self, a: &mut AttrWriter<'_>, table: &str, id: u32) {
        a.str(NFTA_SET_TABLE, table);
        a.str(NFTA_SET_NAME, self.name);
        a.be32(NFTA_SET_FLAGS, self.flag_bits());
        a.be32(NFTA_SET_KEY_TYPE, KeyType::concat_id(self.key));
        a.be32(NFTA_SET_KEY_LEN, KeyType::concat_len(self.key));
        match self.data {
            Some(DataType::Verdict) => {
                a.be32(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT);
                a.be32(NFTA_SET_DATA_LEN, 0);
            }
            Some(DataType::Value(t)) => {
                a.be32(NFTA_SET_DATA_TYPE, t.id());
                a.be32(NFTA_SET_DATA_LEN, t.bytes());
            }
            Some(DataType::Values(parts)) => {
                a.be32(NFTA_SET_DATA_TYPE, KeyType::concat_id(parts));
                a.be32(NFTA_SET_DATA_LEN, KeyType::concat_len(parts));
            }
            None => {}
        }
        a.be32(NFTA_SET_ID, id);
        if let Some(ms) = self.timeout_ms {
            a.be64(NFTA_SET_TIMEOUT, ms);
        }
        if self.concat_fields() {
            a.nested(NFTA_SET_DESC, |a| {
                a.nested(NFTA_SET_DESC_CONCAT, |a| {
                    for part in self.key {
                        a.nested(NFTA_LIST_ELEM, |a| a.be32(NFTA_SET_FIELD_LEN, part.bytes()));
                    }
                });
            });
        }
        match self.userdata {
            Some(raw) => a.put(NFTA_SET_USERDATA, raw),
            None => a.put(NFTA_SET_USERDATA, &self.userdata()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenations_fold_as_nft_does() {
        let vip = [KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService];
        // nft: ipv4_addr . inet_proto . inet_service
        assert_eq!(KeyType::concat_id(&vip), (7 << 12) | (12 << 6) | 13);
        assert_eq!(KeyType::concat_len(&vip), 12);
        assert_eq!(KeyType::concat_len(&[KeyType::InetService]), 2);
        assert_eq!(
            KeyType::concat_len(&[KeyType::Ipv6Addr, KeyType::Ipv6Addr]),
            32
        );
    }
}

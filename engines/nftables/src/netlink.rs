//! The nf_tables netlink wire format and socket live in the shared netlink layer
//! (`switchyard_netlink::nftables`: batches, dumps, checked parsing, errno-keeping
//! errors). This module re-exports what the engine uses and adapts the engine's
//! families and table names to it.

pub use switchyard_netlink::nftables::{
    userdata_comment, Attrs, BaseChain as BaseChainSpec, Batch, ChainType, DataType, DumpKind,
    ElementBytes, ElementInfo, Found, Hook, KeyType, NftSocket, RuleExpr, SetFlags, SetSpec,
    NFTA_DATA_VALUE, NFTA_DATA_VERDICT, NFT_GOTO, NFT_JUMP, NFT_RETURN, NF_DROP,
};
use switchyard_netlink::nftables::{TableFamily, TableIndex};

use crate::ruleset::{Family, TableNames, TABLES};

impl From<Family> for TableFamily {
    fn from(family: Family) -> TableFamily {
        match family {
            Family::Ip => TableFamily::Ip,
            Family::Ip6 => TableFamily::Ip6,
        }
    }
}

impl TableIndex for TableNames {
    fn table_count(&self) -> usize {
        TABLES
    }

    fn table_index(&self, name: &str) -> Option<usize> {
        self.index(name)
    }
}

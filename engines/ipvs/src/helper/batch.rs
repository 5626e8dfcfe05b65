//! Element changes of the helper table as one nf_tables netlink batch (no `nft`
//! process): what most partial syncs write, deletes before adds, all or nothing.

use std::collections::BTreeMap;

use switchyard_model::IpFamily;
use switchyard_netlink::nftables::{Batch, ElementBytes, TableFamily, NFT_GOTO, NFT_JUMP, NF_DROP};

use super::{Element, SetKind, Verdict, REJECT_CHAIN};

fn table_family(family: IpFamily) -> TableFamily {
    match family {
        IpFamily::V4 => TableFamily::Ip,
        IpFamily::V6 => TableFamily::Ip6,
    }
}

fn bytes(e: &Element) -> ElementBytes {
    ElementBytes {
        key: e.key.bytes(),
        verdict: match &e.value {
            Verdict::None => None,
            Verdict::Drop => Some((NF_DROP, None)),
            Verdict::Reject => Some((NFT_GOTO, Some(REJECT_CHAIN.to_string()))),
            Verdict::Jump(c) => Some((NFT_JUMP, Some(c.clone()))),
        },
        comment: None,
    }
}

/// Groups elements by set.
fn by_set(elements: &[&Element]) -> BTreeMap<SetKind, Vec<ElementBytes>> {
    let mut out: BTreeMap<SetKind, Vec<ElementBytes>> = BTreeMap::new();
    for e in elements {
        out.entry(e.set).or_default().push(bytes(e));
    }
    out
}

/// Appends one family's element deletes, then adds, to `batch`.
pub fn encode(
    batch: &mut Batch,
    table: &str,
    family: IpFamily,
    deletes: &[&Element],
    adds: &[&Element],
) {
    let fam = table_family(family);
    for (set, elements) in by_set(deletes) {
        batch.delete_elements(fam, table, set.name(), &elements);
    }
    for (set, elements) in by_set(adds) {
        batch.add_elements(fam, table, set.name(), &elements);
    }
}

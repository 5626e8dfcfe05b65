//! Shared test support: model builders (from the model crate's `test-util`) and private network
//! namespaces.
#![allow(dead_code)]

pub mod netns;

#[allow(unused_imports)]
pub use switchyard_model::test_util::*;

use std::collections::BTreeMap;

use switchyard_netlink::attr::{attrs, AttrWriter};
use switchyard_nftables::{
    netlink::{DumpKind, NftSocket},
    ruleset::{Family, TableNames, TABLES},
};

/// Everything the kernel holds in the engine's tables of `family`, as it dumps it
/// (handles dropped, order normalised where the kernel's order is creation order):
/// `chains`, `sets`, then the rules of each chain in order and the elements of each
/// set, sorted. Two tables with equal states hold the same objects byte for byte.
pub fn kernel_state(socket: &mut NftSocket, family: Family) -> BTreeMap<String, Vec<Vec<u8>>> {
    let names = TableNames::default();
    let mut out = BTreeMap::new();
    for t in 0..TABLES {
        let table = names.name(t);
        let dump = |socket: &mut NftSocket, kind, name: Option<&str>| {
            socket
                .answers(family, kind, table, name)
                .unwrap_or_else(|e| panic!("dumping {table}: {e}"))
                .unwrap_or_default()
        };
        // Handles: chain 2, rule 3 (and its position 6: the previous rule's handle), set 16.
        let mut chains: Vec<Vec<u8>> = dump(socket, DumpKind::Chains, None)
            .iter()
            .map(|a| without(a, 2))
            .collect();
        chains.sort();
        let chain_names: Vec<String> = dump(socket, DumpKind::Chains, None)
            .iter()
            .filter_map(|a| string_attr(a, 3))
            .collect();
        let mut sets: Vec<Vec<u8>> = dump(socket, DumpKind::Sets, None)
            .iter()
            .map(|a| without(a, 16))
            .collect();
        sets.sort();
        let set_names: Vec<String> = dump(socket, DumpKind::Sets, None)
            .iter()
            .filter_map(|a| string_attr(a, 2))
            .collect();
        out.insert(format!("{table} chains"), chains);
        out.insert(format!("{table} sets"), sets);
        for chain in chain_names {
            let rules = dump(socket, DumpKind::Rules, Some(&chain))
                .iter()
                .map(|a| without(&without(a, 3), 6))
                .collect();
            out.insert(format!("{table} rules {chain}"), rules);
        }
        for set in set_names {
            let mut elements: Vec<Vec<u8>> = Vec::new();
            for answer in dump(socket, DumpKind::Elements, Some(&set)) {
                // NFTA_SET_ELEM_LIST_ELEMENTS (3), each NFTA_LIST_ELEM raw.
                for list in attrs(&answer).flatten().filter(|a| a.kind == 3) {
                    elements.extend(list.nested().flatten().map(|e| e.value.to_vec()));
                }
            }
            elements.sort();
            out.insert(format!("{table} elements {set}"), elements);
        }
    }
    out
}

/// The attributes of `answer` without those of type `kind`.
fn without(answer: &[u8], kind: u16) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = AttrWriter(&mut buf);
    for a in attrs(answer).flatten().filter(|a| a.kind != kind) {
        w.put(a.kind, a.value);
    }
    buf
}

fn string_attr(answer: &[u8], kind: u16) -> Option<String> {
    attrs(answer)
        .flatten()
        .find(|a| a.kind == kind)
        .and_then(|a| a.str().ok().map(str::to_string))
}

/// The keys whose values differ between two kernel states, for a failure message.
pub fn state_diff(
    got: &BTreeMap<String, Vec<Vec<u8>>>,
    want: &BTreeMap<String, Vec<Vec<u8>>>,
) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = got.keys().chain(want.keys()).collect();
    keys.into_iter()
        .filter(|k| got.get(*k) != want.get(*k))
        .map(|k| {
            let (g, w) = (got.get(k), want.get(k));
            format!(
                "{k}: {} vs {} items; first differing: {:?}",
                g.map_or(0, Vec::len),
                w.map_or(0, Vec::len),
                g.into_iter()
                    .flatten()
                    .find(|x| !w.is_some_and(|w| w.contains(x)))
                    .map(|x| String::from_utf8_lossy(x).into_owned())
            )
        })
        .collect()
}

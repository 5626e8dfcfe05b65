//! Drift detection: compares what the kernel lists with the record of what was applied.
//!
//! The engine verifies through netlink dumps ([`verify_netlink`]: no `nft` process, no
//! text listing; under a second at 50k service ports); [`verify`] does the same through
//! `nft` listings, for engines configured without netlink. Maps and sets above
//! [`LARGE_MAP`] elements are checked by looking up a rotating sample of the keys the
//! record holds (and their verdicts), as their dumps cost time quadratic in their size.
//!
//! Listing every rule is expensive on large tables (the kernel's rule dump restarts its
//! walk for every message: 8000 service ports x 5 endpoints take ~15 s), so:
//! - chain names come from one `nft list chains` (both families);
//! - map and set element counts from `nft list sets FAMILY` and `nft list maps FAMILY`;
//! - per-chain rule counts from `nft -a list table` when the table holds at most
//!   [`FULL_LISTING_MAX_RULES`] rules; above that, from `nft -a list chain` for a few
//!   chains per call ([`SAMPLED_CHAINS`]), rotating so every chain is checked over time.

use std::collections::HashMap;

use switchyard_model::{Drift, EngineError};

use crate::{
    apply,
    netlink::NftSocket,
    record::{Applied, TableRecord},
    ruleset::{backend_map_chunk, backend_map_name, Family, MapKind, TableNames, BACKEND_MAPS},
    NftOptions,
};

/// Largest table (in rules) whose rules are all listed on every verify.
pub const FULL_LISTING_MAX_RULES: usize = 20_000;

/// Chains whose rules are listed per family and verify, above that size.
pub const SAMPLED_CHAINS: usize = 4;

/// What a listing shows of our table: chains with rule counts, maps/sets with element
/// counts.
#[derive(Debug, Default)]
pub struct Listing {
    pub chains: HashMap<String, usize>,
    pub maps: HashMap<String, usize>,
}

/// Parses `nft [-a] list ...` output, keeping only `table FAMILY TABLE` (`table` is one
/// of the engine's tables); `None` when that table is not in the output. With `-a`, every rule line carries a `# handle N`
/// comment (chain headers carry one too and are not rules); elements are
/// comma-separated.
pub fn parse_listing(text: &str, family: Family, table: &str) -> Option<Listing> {
    enum In {
        Nothing,
        Chain(String),
        Map(String),
        Elements(String),
    }
    let header = format!("table {} {table} {{", family.nft());
    let mut found = false;
    let mut ours = false;
    let mut listing = Listing::default();
    let mut current = In::Nothing;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("table ") {
            ours = t.starts_with(&header);
            found |= ours;
            current = In::Nothing;
            continue;
        }
        if !ours {
            continue;
        }
        match &mut current {
            In::Elements(name) => {
                *listing.maps.entry(name.clone()).or_default() += t.matches(',').count();
                if t.ends_with('}') {
                    *listing.maps.entry(name.clone()).or_default() += 1;
                    current = In::Map(std::mem::take(name));
                }
                continue;
            }
            In::Map(name) => {
                if let Some(rest) = t.strip_prefix("elements = {") {
                    let name = std::mem::take(name);
                    let entry = listing.maps.entry(name.clone()).or_default();
                    *entry += rest.matches(',').count();
                    if rest.trim_end().ends_with('}') {
                        *entry += 1;
                        current = In::Map(name);
                    } else {
                        current = In::Elements(name);
                    }
                    continue;
                }
                if t == "}" {
                    current = In::Nothing;
                }
                continue;
            }
            In::Chain(name) => {
                if t == "}" {
                    current = In::Nothing;
                } else if t.contains("# handle ") {
                    *listing.chains.entry(name.clone()).or_default() += 1;
                }
                continue;
            }
            In::Nothing => {}
        }
        let word = |prefix: &str| {
            t.strip_prefix(prefix)
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_string)
        };
        if let Some(name) = word("chain ") {
            listing.chains.insert(name.clone(), 0);
            current = In::Chain(name);
        } else if let Some(name) = word("map ").or_else(|| word("set ")) {
            listing.maps.insert(name.clone(), 0);
            current = In::Map(name);
        }
    }
    found.then_some(listing)
}

const MAX_FINDINGS: usize = 5;

/// Chains missing from or unexpected in `listing` (names only).
pub fn compare_chain_names(
    tables: &TableNames,
    family: Family,
    table: usize,
    listing: &Listing,
    record: &TableRecord,
) -> Vec<String> {
    let fam = family.nft();
    let table = tables.name(table);
    let mut out = Vec::new();
    for chain in record.chains.keys() {
        if !listing.chains.contains_key(&**chain) {
            out.push(format!("chain {fam} {table} {chain} is missing"));
            if out.len() >= MAX_FINDINGS {
                return out;
            }
        }
    }
    for chain in listing.chains.keys() {
        if !record.chains.contains_key(chain.as_str()) {
            out.push(format!("unexpected chain {fam} {table} {chain}"));
            if out.len() >= MAX_FINDINGS {
                return out;
            }
        }
    }
    out
}

/// Rule counts of the chains `listing` shows that differ from the record.
pub fn compare_rule_counts(
    tables: &TableNames,
    family: Family,
    table: usize,
    listing: &Listing,
    record: &TableRecord,
) -> Vec<String> {
    let fam = family.nft();
    let table = tables.name(table);
    let mut out = Vec::new();
    for (chain, n) in &listing.chains {
        if let Some(expected) = record.chains.get(chain.as_str()) {
            if n != expected {
                out.push(format!(
                    "chain {fam} {table} {chain} has {n} rules, expected {expected}"
                ));
                if out.len() >= MAX_FINDINGS {
                    break;
                }
            }
        }
    }
    out
}

/// Element counts of the maps and sets, and presence of affinity sets.
pub fn compare_maps(
    tables: &TableNames,
    family: Family,
    table: usize,
    listing: &Listing,
    record: &TableRecord,
) -> Vec<String> {
    let fam = family.nft();
    let t = table;
    let table = tables.name(table);
    let mut out = Vec::new();
    for kind in MapKind::ALL.into_iter().filter(|k| k.in_table(t)) {
        let expected = record.map_counts[kind.index()];
        match listing.maps.get(kind.name()) {
            None => out.push(format!("{fam} {table} {} is missing", kind.name())),
            Some(n) if *n != expected => out.push(format!(
                "{fam} {table} {} has {n} elements, expected {expected}",
                kind.name()
            )),
            Some(_) => {}
        }
    }
    if let Some(set) = record
        .sets
        .iter()
        .find(|s| !listing.maps.contains_key(&***s))
    {
        out.push(format!("set {fam} {table} {set} is missing"));
    }
    for chunk in 0..BACKEND_MAPS as u8 {
        let expected = record.backend_counts[usize::from(chunk)] as usize;
        let name = backend_map_name(chunk);
        match listing.maps.get(&name) {
            None if expected > 0 => out.push(format!("{fam} {table} {name} is missing")),
            Some(n) if *n != expected => out.push(format!(
                "{fam} {table} {name} has {n} elements, expected {expected}"
            )),
            _ => {}
        }
    }
    out
}

/// Every difference between a full `-a` listing of the table and the record (at most a
/// few of each kind).
pub fn compare(
    tables: &TableNames,
    family: Family,
    table: usize,
    listing: &Listing,
    record: &TableRecord,
) -> Vec<String> {
    let mut out = compare_chain_names(tables, family, table, listing, record);
    out.extend(compare_rule_counts(tables, family, table, listing, record));
    out.extend(compare_maps(tables, family, table, listing, record));
    out
}

/// Runs `nft ARGS`; a refusal (e.g. no such table) is a finding, not an error.
async fn list(
    options: &NftOptions,
    args: &[&str],
    found: &mut Vec<String>,
) -> Result<Option<String>, EngineError> {
    match apply::run(options, args, "").await {
        Ok(text) => Ok(Some(text)),
        Err(EngineError::Tool { stderr, .. }) => {
            found.push(format!("nft {} failed: {stderr}", args.join(" ")));
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Compares the kernel with `applied`. `cursor` rotates the sampled chains of large
/// tables between calls.
pub async fn verify(
    options: &NftOptions,
    tables: &TableNames,
    applied: &Applied,
    cursor: &mut usize,
) -> Result<Drift, EngineError> {
    let mut found = Vec::new();
    let Some(chains_text) = list(options, &["list", "chains"], &mut found).await? else {
        return Ok(Drift::Found(found.join("; ")));
    };
    for &family in applied.programmed() {
        let fam = family.nft();
        let sets = list(options, &["list", "sets", fam], &mut found).await?;
        let maps = list(options, &["list", "maps", fam], &mut found).await?;
        for (t, record) in applied.families[family.index()].tables.iter().enumerate() {
            let table = tables.name(t);
            let Some(chains) = parse_listing(&chains_text, family, table) else {
                found.push(format!("table {fam} {table} is missing"));
                continue;
            };
            found.extend(compare_chain_names(tables, family, t, &chains, record));
            if let (Some(sets), Some(maps)) = (&sets, &maps) {
                let mut listing = parse_listing(sets, family, table).unwrap_or_default();
                let maps = parse_listing(maps, family, table).unwrap_or_default();
                listing.maps.extend(maps.maps);
                found.extend(compare_maps(tables, family, t, &listing, record));
            }
            if record.rule_count() <= FULL_LISTING_MAX_RULES {
                if let Some(text) =
                    list(options, &["-a", "list", "table", fam, table], &mut found).await?
                {
                    let rules = parse_listing(&text, family, table).unwrap_or_default();
                    found.extend(compare_rule_counts(tables, family, t, &rules, record));
                    for chain in record.chains.keys() {
                        if !rules.chains.contains_key(&**chain)
                            && chains.chains.contains_key(&**chain)
                        {
                            found.push(format!(
                                "chain {fam} {table} {chain} vanished while listing"
                            ));
                            break;
                        }
                    }
                }
            } else {
                let n = record.chains.len();
                let start = *cursor % n.max(1);
                let sample: Vec<&std::sync::Arc<str>> = record
                    .chains
                    .keys()
                    .cycle()
                    .skip(start)
                    .take(SAMPLED_CHAINS.min(n))
                    .collect();
                for chain in sample {
                    if !chains.chains.contains_key(&**chain) {
                        continue; // already reported missing
                    }
                    if let Some(text) = list(
                        options,
                        &["-a", "list", "chain", fam, table, chain],
                        &mut found,
                    )
                    .await?
                    {
                        let rules = parse_listing(&text, family, table).unwrap_or_default();
                        found.extend(compare_rule_counts(tables, family, t, &rules, record));
                    }
                }
            }
        }
    }
    *cursor = cursor.wrapping_add(SAMPLED_CHAINS);
    Ok(if found.is_empty() {
        Drift::None
    } else {
        Drift::Found(found.join("; "))
    })
}

/// Maps and sets above this many elements are checked by sampling keys.
pub const LARGE_MAP: usize = 20_000;

/// Keys looked up per large map and verify (one request).
pub const NETLINK_SAMPLED_KEYS: usize = 256;

/// Chains whose rules are counted per family and verify through netlink on large tables
/// (each is one small dump).
pub const NETLINK_SAMPLED_CHAINS: usize = 64;

/// `verify` through netlink dumps (no `nft` process): chain names from one chain dump,
/// element counts from one dump per map or set, set names from one set dump, and rule
/// counts from one rule dump of the table when it holds at most
/// [`FULL_LISTING_MAX_RULES`] rules, else from per-chain rule dumps of
/// [`NETLINK_SAMPLED_CHAINS`] chains, rotating.
pub fn verify_netlink(
    socket: &mut NftSocket,
    tables: &TableNames,
    applied: &Applied,
    cursor: &mut usize,
) -> Result<Drift, EngineError> {
    let mut found = Vec::new();
    for &family in applied.programmed() {
        let fam = family.nft();
        let family_record = &applied.families[family.index()];
        let mut all_chains = socket.chains(family, tables)?;
        for (t, record) in family_record.tables.iter().enumerate() {
            let table = tables.name(t);
            let chains = std::mem::take(&mut all_chains[t]);
            if chains.is_empty() {
                found.push(format!("table {fam} {table} is missing"));
                continue;
            }
            let mut listing = Listing {
                chains: chains.into_iter().map(|c| (c, 0)).collect(),
                maps: HashMap::new(),
            };
            found.extend(compare_chain_names(tables, family, t, &listing, record));
            let sets = socket.sets(family, table)?.unwrap_or_default();
            let mut sampled: Vec<MapKind> = Vec::new();
            for set in sets {
                let kind = MapKind::ALL.into_iter().find(|k| k.name() == set);
                let n = match kind {
                    // Large maps: a dump restarts its walk of the set for every message
                    // (1.3 s for 250k elements), so check a sample of keys instead.
                    Some(kind) if record.map_counts[kind.index()] > LARGE_MAP => {
                        sampled.push(kind);
                        record.map_counts[kind.index()]
                    }
                    Some(_) => socket.element_count(family, table, &set)?.unwrap_or(0),
                    None if backend_map_chunk(&set).is_some() => {
                        socket.element_count(family, table, &set)?.unwrap_or(0)
                    }
                    None => 0,
                };
                listing.maps.insert(set, n);
            }
            found.extend(compare_maps(tables, family, t, &listing, record));
            for kind in sampled {
                found.extend(sample_elements(
                    socket,
                    family,
                    table,
                    t,
                    kind,
                    family_record,
                    *cursor,
                )?);
            }
            let all_rules = record.rule_count() <= FULL_LISTING_MAX_RULES;
            let rules = if all_rules {
                socket.rule_counts(family, table, None)?.unwrap_or_default()
            } else {
                let n = record.chains.len();
                let start = *cursor % n.max(1);
                let mut counts = HashMap::new();
                for chain in record
                    .chains
                    .keys()
                    .cycle()
                    .skip(start)
                    .take(NETLINK_SAMPLED_CHAINS.min(n))
                {
                    if !listing.chains.contains_key(&**chain) {
                        continue; // already reported missing
                    }
                    let got = socket
                        .rule_counts(family, table, Some(chain))?
                        .unwrap_or_default();
                    counts.insert(chain.to_string(), got.get(&**chain).copied().unwrap_or(0));
                }
                counts
            };
            for (chain, n) in listing.chains.iter_mut() {
                if let Some(count) = rules.get(chain) {
                    *n = *count;
                } else if !all_rules {
                    // Not sampled this time: compare nothing.
                    *n = record.chains.get(chain.as_str()).copied().unwrap_or(0);
                }
            }
            found.extend(compare_rule_counts(tables, family, t, &listing, record));
        }
    }
    *cursor = cursor.wrapping_add(NETLINK_SAMPLED_CHAINS);
    Ok(if found.is_empty() {
        Drift::None
    } else {
        Drift::Found(found.join("; "))
    })
}

/// Looks up a rotating sample of a large map's keys (with their verdicts) in table
/// `t`, returning what differs from the record.
fn sample_elements(
    socket: &mut NftSocket,
    family: Family,
    table: &str,
    t: usize,
    kind: MapKind,
    family_record: &crate::record::FamilyRecord,
    cursor: usize,
) -> Result<Vec<String>, EngineError> {
    let fam = family.nft();
    let count = family_record.tables[t].map_counts[kind.index()].max(1);
    let sample: Vec<(&crate::element::ElementKey, &crate::element::Verdict)> = family_record.claims
        [kind.index()]
    .iter()
    .filter_map(|(key, claims)| claims.first().map(|(_, v)| (key, v)))
    .filter(|(key, v)| crate::element::table_of(kind, key, v) == t)
    .skip(cursor % count)
    .take(NETLINK_SAMPLED_KEYS)
    .collect();
    let keys: Vec<Vec<u8>> = sample.iter().map(|(k, _)| k.bytes()).collect();
    let got = socket.elements_present(family, table, kind.name(), &keys)?;
    let mut found = Vec::new();
    for (i, (key, value)) in sample.iter().enumerate() {
        match got.get(i) {
            None => {
                found.push(format!("{fam} {table} {} lacks {key}", kind.name()));
                break;
            }
            Some(chain) if kind.is_map() => {
                let expected = value.chain().map(|c| &*c.name);
                if chain.as_deref() != expected && !(expected.is_none() && chain.is_none()) {
                    found.push(format!(
                        "{fam} {table} {} maps {key} to {chain:?}, expected {value}",
                        kind.name()
                    ));
                }
            }
            Some(_) => {}
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chains_and_elements() {
        let text = "table ip switchyard { # handle 2\n\tset nodeport-ips { # handle 7\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 192.168.0.0/24 }\n\t}\n\n\tmap service-ips { # handle 8\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n\t\telements = { 10.0.0.1 . tcp . 80 : goto svc-a,\n\t\t\t     10.0.0.2 . tcp . 80 : goto svc-b }\n\t}\n\tmap service-nodeports { # handle 9\n\t\ttype inet_proto . inet_service : verdict\n\t}\n\tchain nat-prerouting { # handle 1\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tjump services # handle 11\n\t}\n\tchain svc-a { # handle 3\n\t}\n}\n";
        let l = parse_listing(text, Family::Ip, "switchyard").unwrap();
        assert!(parse_listing(text, Family::Ip6, "switchyard").is_none());
        assert!(parse_listing(text, Family::Ip, "switchyard-0").is_none());
        assert_eq!(l.maps["service-ips"], 2);
        assert_eq!(l.maps["service-nodeports"], 0);
        assert_eq!(l.maps["nodeport-ips"], 1);
        assert_eq!(l.chains["nat-prerouting"], 1);
        assert_eq!(l.chains["svc-a"], 0);
    }
}

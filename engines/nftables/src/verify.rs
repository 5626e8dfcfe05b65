//! Drift detection: lists each table (`nft -a list table`, text, one run per family) and
//! compares chain names, per-chain rule counts and map element counts with the record
//! of what was applied.

use std::collections::HashMap;

use switchyard_core::{Drift, EngineError};

use crate::{
    apply,
    record::{Applied, FamilyRecord},
    ruleset::{Family, MapKind, TABLE},
    NftOptions,
};

/// What a listing shows: chains with rule counts, maps/sets with element counts.
#[derive(Debug, Default)]
pub struct Listing {
    pub chains: HashMap<String, usize>,
    pub maps: HashMap<String, usize>,
}

/// Parses `nft -a list table` output. Every rule line carries a `# handle N` comment;
/// chain headers carry one too and are not rules; elements are comma-separated.
pub fn parse_listing(text: &str) -> Listing {
    enum In {
        Nothing,
        Chain(String),
        Map(String),
        Elements(String),
    }
    let mut listing = Listing::default();
    let mut current = In::Nothing;
    for line in text.lines() {
        let t = line.trim();
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
    listing
}

/// Differences between a listing and the record, at most a few.
pub fn compare(family: Family, listing: &Listing, record: &FamilyRecord) -> Vec<String> {
    const MAX: usize = 5;
    let fam = family.nft();
    let mut out = Vec::new();
    let mut chains: Vec<(&String, &usize)> = record.chains.iter().collect();
    chains.sort();
    for (chain, rules) in chains {
        match listing.chains.get(chain) {
            None => out.push(format!("chain {fam} {TABLE} {chain} is missing")),
            Some(n) if n != rules => out.push(format!(
                "chain {fam} {TABLE} {chain} has {n} rules, expected {rules}"
            )),
            Some(_) => {}
        }
        if out.len() >= MAX {
            return out;
        }
    }
    for chain in listing.chains.keys() {
        if !record.chains.contains_key(chain) {
            out.push(format!("unexpected chain {fam} {TABLE} {chain}"));
            if out.len() >= MAX {
                return out;
            }
        }
    }
    for kind in MapKind::ALL {
        let expected = record.map_counts[kind.index()];
        match listing.maps.get(kind.name()) {
            None => out.push(format!("{fam} {TABLE} {} is missing", kind.name())),
            Some(n) if *n != expected => out.push(format!(
                "{fam} {TABLE} {} has {n} elements, expected {expected}",
                kind.name()
            )),
            Some(_) => {}
        }
    }
    for set in &record.sets {
        if !listing.maps.contains_key(set) {
            out.push(format!("set {fam} {TABLE} {set} is missing"));
            break;
        }
    }
    out.truncate(MAX);
    out
}

/// Lists both tables and compares them with `applied`.
pub async fn verify(options: &NftOptions, applied: &Applied) -> Result<Drift, EngineError> {
    let mut found = Vec::new();
    for family in Family::BOTH {
        let fam = family.nft();
        match apply::run(options, &["-a", "list", "table", fam, TABLE], "").await {
            Ok(text) => {
                let listing = parse_listing(&text);
                found.extend(compare(family, &listing, &applied.families[family.index()]));
            }
            Err(EngineError::Apply { message, .. }) => {
                found.push(format!("table {fam} {TABLE} cannot be listed: {message}"));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(if found.is_empty() {
        Drift::None
    } else {
        Drift::Found(found.join("; "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chains_and_elements() {
        let text = "table ip switchyard { # handle 2\n\tset nodeport-ips { # handle 7\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 192.168.0.0/24 }\n\t}\n\n\tmap service-ips { # handle 8\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n\t\telements = { 10.0.0.1 . tcp . 80 : goto svc-a,\n\t\t\t     10.0.0.2 . tcp . 80 : goto svc-b }\n\t}\n\tmap service-nodeports { # handle 9\n\t\ttype inet_proto . inet_service : verdict\n\t}\n\tchain nat-prerouting { # handle 1\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tjump services # handle 11\n\t}\n\tchain svc-a { # handle 3\n\t}\n}\n";
        let l = parse_listing(text);
        assert_eq!(l.maps["service-ips"], 2);
        assert_eq!(l.maps["service-nodeports"], 0);
        assert_eq!(l.maps["nodeport-ips"], 1);
        assert_eq!(l.chains["nat-prerouting"], 1);
        assert_eq!(l.chains["svc-a"], 0);
    }
}

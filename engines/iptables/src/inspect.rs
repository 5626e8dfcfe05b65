//! Reading one service port back from the kernel (`switchyard explain`): one `*-save`
//! per family of the port's plan, compared with what the engine would write for the
//! plan (`port::encode_port`):
//!
//! - the chains the port owns (`SVC-`, `SVL-`, `EXT-`, `FW-`): present, with the
//!   plan's number of rules, and the service chains DNAT to the plan's endpoints;
//! - its rules in the shared dispatch chains (`SERVICES`, `NODEPORTS`, the filter
//!   checks), found by the port's comment and compared by what decides where a packet
//!   goes: destination address, destination port and jump target.
//!
//! Rules are compared by these fields, not as text: `*-save` prints a rule in its own
//! canonical form (`-d 10.0.0.1/32`, options reordered, `--or-mark` as
//! `--set-xmark`), so the text written never equals the text read.

use std::collections::BTreeMap;

use switchyard_model::{IpFamily, KernelObject, NodeModel, PortInspection, ServicePortPlan};

use crate::{
    chains::{Chains, Table},
    port::{encode_port, FamilyContext},
    record::DispatchChain,
    render::large_cluster,
};

/// The fields of a rule that decide where a packet goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuleFacts {
    pub comment: String,
    pub destination: String,
    pub dport: String,
    pub jump: String,
    /// `--to-destination` of a DNAT.
    pub dnat: String,
}

impl std::fmt::Display for RuleFacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.destination.is_empty() {
            parts.push(format!("-d {}", self.destination));
        }
        if !self.dport.is_empty() {
            parts.push(format!("--dport {}", self.dport));
        }
        parts.push(format!("-j {}", self.jump));
        if !self.dnat.is_empty() {
            parts.push(format!("--to-destination {}", self.dnat));
        }
        f.write_str(&parts.join(" "))
    }
}

/// Splits a rule line into words, a double-quoted string being one word.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let (mut quoted, mut any) = (false, false);
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(word);
    }
    out
}

/// The facts of a rule spec (what follows `-A CHAIN`), from either side.
pub fn rule_facts(spec: &str) -> RuleFacts {
    let w = words(spec);
    let mut facts = RuleFacts::default();
    for (i, word) in w.iter().enumerate() {
        let next = || w.get(i + 1).cloned().unwrap_or_default();
        match word.as_str() {
            "--comment" => facts.comment = next(),
            "-d" | "--destination" => facts.destination = host_address(&next()),
            "--dport" | "--destination-port" => facts.dport = next(),
            "-j" | "--jump" => facts.jump = next(),
            "--to-destination" => facts.dnat = next(),
            _ => {}
        }
    }
    facts
}

/// `10.0.0.1/32` as `10.0.0.1` (how `*-save` prints a host address).
fn host_address(a: &str) -> String {
    a.strip_suffix("/32")
        .or_else(|| a.strip_suffix("/128"))
        .unwrap_or(a)
        .to_string()
}

/// One table of a `*-save` text: declared chains, and rule specs per chain.
#[derive(Debug, Default)]
pub struct SavedTable {
    pub chains: BTreeMap<String, Vec<String>>,
}

/// Parses `*-save` output into its tables (`nat`, `filter`).
pub fn parse_save(text: &str) -> BTreeMap<String, SavedTable> {
    let mut tables: BTreeMap<String, SavedTable> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            current = t.trim().to_string();
            tables.entry(current.clone()).or_default();
        } else if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            let table = tables.entry(current.clone()).or_default();
            table.chains.entry(name.to_string()).or_default();
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let (chain, spec) = rule.split_once(' ').unwrap_or((rule, ""));
            let table = tables.entry(current.clone()).or_default();
            table
                .chains
                .entry(chain.to_string())
                .or_default()
                .push(spec.to_string());
        }
    }
    tables
}

fn table_name(t: Table) -> &'static str {
    t.as_str()
}

/// Compares one family's `*-save` text with what `plan` needs there.
pub fn compare_family(
    model: &NodeModel,
    chains: &Chains,
    family: IpFamily,
    plan: &ServicePortPlan,
    saved: &str,
    out: &mut PortInspection,
) {
    let ctx = FamilyContext::new(model, family, chains, large_cluster(model), false);
    let Some(want) = encode_port(&ctx, plan) else {
        return;
    };
    let kernel = parse_save(saved);
    let empty = SavedTable::default();
    for table in Table::BOTH {
        let t = table_name(table);
        let have = kernel.get(t).unwrap_or(&empty);
        let wanted = parse_save(&format!("*{t}\n{}", want.body[table.index()]));
        let wanted = wanted.get(t).unwrap_or(&empty);
        for chain in want.record.chains(table) {
            let place = format!("{family} {t} {chain}");
            let want_rules = wanted.chains.get(chain).map_or(&[][..], Vec::as_slice);
            let Some(rules) = have.chains.get(chain) else {
                out.differs(format!("chain {place} is missing"));
                continue;
            };
            let dnat: Vec<String> = rules
                .iter()
                .map(|r| rule_facts(r).dnat)
                .filter(|d| !d.is_empty())
                .collect();
            let mut detail = match rules.len() {
                1 => "1 rule".to_string(),
                n => format!("{n} rules"),
            };
            if !dnat.is_empty() {
                detail.push_str(&format!(", DNAT to {}", dnat.join(", ")));
            }
            out.found(KernelObject::new("chain", &place, detail));
            if rules.len() != want_rules.len() {
                out.differs(format!(
                    "chain {place} has {} rules, the plan {}",
                    rules.len(),
                    want_rules.len()
                ));
            }
            let want_dnat: Vec<String> = want_rules
                .iter()
                .map(|r| rule_facts(r).dnat)
                .filter(|d| !d.is_empty())
                .collect();
            if dnat != want_dnat {
                out.differs(format!(
                    "chain {place} DNATs to [{}], the plan to [{}]",
                    dnat.join(", "),
                    want_dnat.join(", ")
                ));
            }
        }
    }
    compare_dispatch(chains, family, plan, &want.record.dispatch, &kernel, out);
}

/// The port's rules in the shared chains, found by their comment (the port's name).
fn compare_dispatch(
    chains: &Chains,
    family: IpFamily,
    plan: &ServicePortPlan,
    want: &crate::record::Dispatch,
    kernel: &BTreeMap<String, SavedTable>,
    out: &mut PortInspection,
) {
    let name = plan.name.to_string();
    let label = format!("{name} ");
    for d in DispatchChain::ALL {
        let table = table_name(d.table());
        let chain = d.name(chains);
        let place = format!("{family} {table} {chain}");
        let mut wanted: Vec<RuleFacts> = want.get(d).iter().map(|s| rule_facts(s)).collect();
        let mut have: Vec<RuleFacts> = kernel
            .get(table)
            .and_then(|t| t.chains.get(chain))
            .into_iter()
            .flatten()
            .map(|r| rule_facts(r))
            .filter(|f| f.comment == name || f.comment.starts_with(&label))
            .collect();
        wanted.sort();
        have.sort();
        for f in &have {
            out.found(KernelObject::new("rule", &place, f.to_string()));
        }
        for f in wanted.iter().filter(|f| !have.contains(f)) {
            out.differs(format!("{place} lacks the rule {f}"));
        }
        for f in have.iter().filter(|f| !wanted.contains(f)) {
            out.differs(format!("{place} holds the rule {f}, not in the plan"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_compare_by_their_facts_not_their_text() {
        let written = "-m comment --comment \"e2e/web:http/tcp cluster IP\" -m tcp -p tcp -d 172.30.0.1 --dport 80 -j SY-SVC-ABC";
        let saved = "-d 172.30.0.1/32 -p tcp -m comment --comment \"e2e/web:http/tcp cluster IP\" -m tcp --dport 80 -j SY-SVC-ABC";
        assert_eq!(rule_facts(written), rule_facts(saved));
        let f = rule_facts(saved);
        assert_eq!(f.comment, "e2e/web:http/tcp cluster IP");
        assert_eq!(f.to_string(), "-d 172.30.0.1 --dport 80 -j SY-SVC-ABC");
        let dnat = rule_facts("-p tcp -m tcp -j DNAT --to-destination 10.0.0.5:8080");
        assert_eq!(dnat.dnat, "10.0.0.5:8080");
    }

    #[test]
    fn parses_save_output() {
        let text = "*nat\n:PREROUTING ACCEPT [0:0]\n:SY-SVC-A - [0:0]\n-A SY-SVC-A -j SY-SEP-B\nCOMMIT\n*filter\n:SY-FW - [0:0]\nCOMMIT\n";
        let t = parse_save(text);
        assert_eq!(t["nat"].chains["SY-SVC-A"], ["-j SY-SEP-B"]);
        assert!(t["filter"].chains["SY-FW"].is_empty());
    }
}

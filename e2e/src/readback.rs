//! What the kernel holds, read back with each dataplane's own tool: for every IPv4
//! ClusterIP service port (`vip:port`), the set of backends (`ip:port`) traffic to it is
//! sent to. It is the ground truth the fault-injection suite compares with the versions
//! of the manifests it wrote, independent of the agent's own record and verify:
//!
//! - nftables: `nft -j list ruleset`: the `service-ips` verdict map of every
//!   `switchyard*` table, each element's chain followed (goto/jump) to its `dnat`s;
//! - iptables: `iptables-<backend>-save -t nat`: the `SY-SERVICES` rules matching a
//!   destination and port, their `-j SY-*` chains followed to `--to-destination`;
//! - eBPF: `bpftool map dump` of the pinned `sy_services` (scope node, the entry's
//!   target set and backend count) and `sy_backends` (slots `0..count`), decoded by the
//!   byte layout of `engines/ebpf/bpf/maps.h` (what the socket programs read);
//! - IPVS (VM lane only): `ipvsadm -Sn`, the operator's tool: every TCP and UDP virtual
//!   server (`-A -t|-u VIP:PORT`) with its masqueraded real servers (`-a ... -r IP:PORT
//!   -w WEIGHT`). A real server of **weight 0** is not a backend here: it is draining
//!   (graceful termination, the endpoint is gone from the model) and IPVS schedules no
//!   new connection to it; only its established connections still reach it, as they
//!   still reach a removed endpoint under the other engines through conntrack. So the
//!   IPVS read-back means what the others mean, where new traffic goes, and a version's
//!   removed endpoints are not counted as if still served.
//!
//! Only the IPv4 ClusterIP entry points are read: the suite's services are of that kind.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::sandbox::Sandbox;

/// `vip:port` -> backends (`ip:port`).
pub type Backends = BTreeMap<String, BTreeSet<String>>;

/// Which dataplane to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dataplane<'a> {
    Nftables,
    /// The iptables backend (`nft` or `legacy`).
    Iptables(&'a str),
    /// The bpffs directory given to the agent as `--bpffs-root`.
    Ebpf(&'a Path),
    /// The node namespace's IPVS table (and, in [`dump`], the engine's helper table and
    /// dummy interface).
    Ipvs,
}

/// The backends of every IPv4 ClusterIP service port in the node namespace's `plane`.
pub fn backends(sb: &Sandbox, plane: Dataplane<'_>) -> Result<Backends> {
    match plane {
        Dataplane::Nftables => {
            let text = sb.in_node(&["nft", "-j", "list", "ruleset"])?;
            nft_backends(&serde_json::from_str(&text).context("nft -j output")?)
        }
        Dataplane::Iptables(backend) => {
            let tool = format!("iptables-{backend}-save");
            Ok(iptables_backends(&sb.in_node(&[&tool, "-t", "nat"])?))
        }
        Dataplane::Ebpf(bpffs) => ebpf_backends(sb, bpffs),
        Dataplane::Ipvs => Ok(ipvs_backends(&sb.in_node(&["ipvsadm", "-Sn"])?)),
    }
}

/// A dump of everything `plane` holds, without what traffic changes (counters, the
/// save tools' timestamps): two dumps are equal when no rule, element or map entry
/// changed in between. nftables: `nft list ruleset`; iptables: `iptables-<backend>-save`
/// of every table; eBPF: `bpftool map dump` of `sy_services` and `sy_backends`; IPVS:
/// `ipvsadm -Sn` (no counters in it), the helper table (`nft list ruleset` without
/// counters) and the addresses of the engine's dummy interface.
pub fn dump(sb: &Sandbox, plane: Dataplane<'_>) -> Result<String> {
    match plane {
        Dataplane::Nftables => Ok(without_counters(&sb.in_node(&["nft", "list", "ruleset"])?)),
        Dataplane::Iptables(backend) => {
            let save = sb.in_node(&[&format!("iptables-{backend}-save")])?;
            Ok(save
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| match l.find(" [") {
                    Some(at) if l.starts_with(':') => &l[..at],
                    _ => l,
                })
                .collect::<Vec<_>>()
                .join("\n"))
        }
        Dataplane::Ebpf(bpffs) => {
            let Some(dir) = pin_dir(bpffs)? else {
                return Ok(String::new());
            };
            let mut out = String::new();
            for map in ["sy_services", "sy_backends"] {
                let path = dir.join(map);
                let path = path.to_string_lossy();
                out.push_str(&sb.in_node(&["bpftool", "map", "dump", "pinned", &path])?);
            }
            Ok(out)
        }
        Dataplane::Ipvs => {
            let servers = sb.in_node(&["ipvsadm", "-Sn"])?;
            let helper = without_counters(&sb.in_node(&["nft", "list", "ruleset"])?);
            let vips = sb
                .in_node(&["ip", "-o", "addr", "show", "dev", IPVS_INTERFACE])
                .unwrap_or_else(|e| format!("no {IPVS_INTERFACE}: {e:#}"));
            Ok(format!("{servers}\n{helper}\n{vips}"))
        }
    }
}

/// The IPVS engine's dummy interface (`engines/ipvs/src/dummy.rs`).
const IPVS_INTERFACE: &str = "switchyard-ipvs";

/// `nft list ruleset` without `packets N bytes M`.
fn without_counters(text: &str) -> String {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = Vec::new();
        let mut skip = 0;
        for w in line.split_whitespace() {
            if skip > 0 {
                skip -= 1;
            } else if w == "packets" || w == "bytes" {
                skip = 1;
            } else {
                words.push(w);
            }
        }
        out.push(words.join(" "));
    }
    out.join("\n")
}

// ---- nftables ----

/// Per table: chain -> rule expressions, the `service-ips` elements, and the backend
/// maps (`backends-N`: numgen key -> `addr:port`).
#[derive(Default)]
struct NftTable<'a> {
    chains: HashMap<&'a str, Vec<&'a Value>>,
    entries: Vec<(String, &'a str)>,
    maps: HashMap<&'a str, HashMap<u32, String>>,
}

fn nft_backends(doc: &Value) -> Result<Backends> {
    let items = doc["nftables"]
        .as_array()
        .context("nft -j: no nftables array")?;
    let mut tables: HashMap<&str, NftTable<'_>> = HashMap::new();
    for item in items {
        if let Some(rule) = item.get("rule") {
            if rule["family"] == "ip" {
                let (Some(t), Some(c)) = (rule["table"].as_str(), rule["chain"].as_str()) else {
                    continue;
                };
                let table = tables.entry(t).or_default();
                table.chains.entry(c).or_default().push(&rule["expr"]);
            }
        } else if let Some(map) = item.get("map") {
            if map["family"] == "ip" && map["name"] == "service-ips" {
                let t = map["table"].as_str().unwrap_or_default();
                let table = tables.entry(t).or_default();
                for elem in map["elem"].as_array().into_iter().flatten() {
                    if let Some(entry) = nft_entry(elem) {
                        table.entries.push(entry);
                    }
                }
            }
            let name = map["name"].as_str().unwrap_or_default();
            if map["family"] == "ip" && name.starts_with("backends-") {
                let t = map["table"].as_str().unwrap_or_default();
                let elements = tables.entry(t).or_default().maps.entry(name).or_default();
                for elem in map["elem"].as_array().into_iter().flatten() {
                    let pair = elem.as_array();
                    let key = pair.and_then(|p| p.first()).and_then(Value::as_i64);
                    let value = pair.and_then(|p| p.get(1)).map(|v| &v["concat"]);
                    if let (Some(key), Some(value)) = (key, value) {
                        if let (Some(a), Some(p)) = (value[0].as_str(), value[1].as_u64()) {
                            elements.insert(key as u32, format!("{a}:{p}"));
                        }
                    }
                }
            }
        }
    }
    let mut out = Backends::new();
    for (name, table) in &tables {
        if !name.starts_with("switchyard") {
            continue;
        }
        for (key, chain) in &table.entries {
            let mut found = BTreeSet::new();
            collect_dnat(table, chain, 0, &mut found);
            out.entry(key.clone()).or_default().extend(found);
        }
    }
    Ok(out)
}

/// One `service-ips` element: (`vip:port`, the chain it goes to).
fn nft_entry(elem: &Value) -> Option<(String, &str)> {
    let pair = elem.as_array()?;
    let key = pair.first()?;
    let key = key.get("elem").map(|e| &e["val"]).unwrap_or(key);
    let parts = key["concat"].as_array()?;
    let (addr, port) = (parts.first()?.as_str()?, parts.last()?.as_u64()?);
    let verdict = pair.get(1)?;
    let target = verdict
        .get("goto")
        .or_else(|| verdict.get("jump"))?
        .get("target")?
        .as_str()?;
    Some((format!("{addr}:{port}"), target))
}

fn collect_dnat(table: &NftTable<'_>, chain: &str, depth: usize, out: &mut BTreeSet<String>) {
    if depth > 4 {
        return;
    }
    for expr in table.chains.get(chain).into_iter().flatten() {
        let mut jumps = Vec::new();
        walk_expr(table, expr, out, &mut jumps);
        for next in jumps {
            collect_dnat(table, next, depth + 1, out);
        }
    }
}

fn walk_expr<'a>(
    table: &NftTable<'_>,
    v: &'a Value,
    out: &mut BTreeSet<String>,
    jumps: &mut Vec<&'a str>,
) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| walk_expr(table, i, out, jumps)),
        Value::Object(map) => {
            for (k, val) in map {
                match k.as_str() {
                    "dnat" => {
                        if let (Some(a), Some(p)) = (val["addr"].as_str(), val["port"].as_u64()) {
                            out.insert(format!("{a}:{p}"));
                        }
                        // `dnat to numgen random mod N offset O map @backends-C`: keys
                        // O .. O + N of the map (nft -j prints the offset signed).
                        let lookup = &val["addr"]["map"];
                        let numgen = &lookup["key"]["numgen"];
                        let map = lookup["data"].as_str().and_then(|d| d.strip_prefix('@'));
                        if let (Some(map), Some(n), Some(offset)) =
                            (map, numgen["mod"].as_u64(), numgen["offset"].as_i64())
                        {
                            let elements = table.maps.get(map);
                            for i in 0..n as u32 {
                                let key = (offset as u32).wrapping_add(i);
                                if let Some(target) = elements.and_then(|e| e.get(&key)) {
                                    out.insert(target.clone());
                                }
                            }
                        }
                    }
                    "goto" | "jump" => {
                        if let Some(t) = val["target"].as_str() {
                            jumps.push(t);
                        }
                    }
                    _ => walk_expr(table, val, out, jumps),
                }
            }
        }
        _ => {}
    }
}

// ---- iptables ----

fn iptables_backends(save: &str) -> Backends {
    let mut chains: HashMap<&str, Vec<Vec<&str>>> = HashMap::new();
    for line in save.lines() {
        if let Some(rule) = line.strip_prefix("-A ") {
            let words = split_rule(rule);
            if let Some((chain, args)) = words.split_first() {
                chains.entry(chain).or_default().push(args.to_vec());
            }
        }
    }
    let mut out = Backends::new();
    for rule in chains.get("SY-SERVICES").into_iter().flatten() {
        let (Some(dst), Some(port), Some(jump)) = (
            flag(rule, "-d"),
            flag(rule, "--dport"),
            flag(rule, "-j").filter(|j| j.starts_with("SY-")),
        ) else {
            continue;
        };
        let mut found = BTreeSet::new();
        follow_chain(&chains, jump, 0, &mut found);
        let vip = dst.trim_end_matches("/32");
        out.entry(format!("{vip}:{port}"))
            .or_default()
            .extend(found);
    }
    out
}

fn follow_chain(
    chains: &HashMap<&str, Vec<Vec<&str>>>,
    chain: &str,
    depth: usize,
    out: &mut BTreeSet<String>,
) {
    if depth > 4 {
        return;
    }
    for rule in chains.get(chain).into_iter().flatten() {
        if let Some(to) = flag(rule, "--to-destination") {
            out.insert(to.to_string());
        }
        if let Some(next) = flag(rule, "-j").filter(|j| j.starts_with("SY-")) {
            follow_chain(chains, next, depth + 1, out);
        }
    }
}

/// Splits a rule into words, keeping a double-quoted comment as one word.
fn split_rule(rule: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = rule.trim();
    while !rest.is_empty() {
        let end = if let Some(quoted) = rest.strip_prefix('"') {
            quoted.find('"').map(|i| i + 2).unwrap_or(rest.len())
        } else {
            rest.find(' ').unwrap_or(rest.len())
        };
        out.push(&rest[..end]);
        rest = rest[end..].trim_start();
    }
    out
}

fn flag<'a>(words: &[&'a str], name: &str) -> Option<&'a str> {
    words
        .iter()
        .position(|w| *w == name)
        .and_then(|i| words.get(i + 1).copied())
}

// ---- IPVS ----

/// `ipvsadm -Sn`: every IPv4 TCP/UDP virtual server (even without a live real server),
/// with its real servers of weight > 0 (see the module doc for weight 0).
fn ipvs_backends(save: &str) -> Backends {
    let mut out = Backends::new();
    for line in save.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(vip) = flag(&words, "-t").or_else(|| flag(&words, "-u")) else {
            continue; // firewall-mark virtual servers (-f) have no VIP:port
        };
        if vip.starts_with('[') {
            continue; // IPv6
        }
        match words.first() {
            Some(&"-A") => {
                out.entry(vip.to_string()).or_default();
            }
            Some(&"-a") => {
                let weight: u32 = flag(&words, "-w").and_then(|w| w.parse().ok()).unwrap_or(1);
                if let (Some(real), true) = (flag(&words, "-r"), weight > 0) {
                    out.entry(vip.to_string())
                        .or_default()
                        .insert(real.to_string());
                }
            }
            _ => {}
        }
    }
    out
}

// ---- eBPF ----

/// The pin directory of the current layout under `<bpffs>/switchyard` (`None`: the
/// engine left no maps).
fn pin_dir(bpffs: &Path) -> Result<Option<PathBuf>> {
    let root = bpffs.join("switchyard");
    if !root.exists() {
        return Ok(None);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .with_context(|| format!("reading {}", root.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("sy_services").exists())
        .collect();
    dirs.sort();
    Ok(dirs.pop())
}

fn bpf_dump(sb: &Sandbox, map: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let path = map.to_string_lossy();
    let text = sb.in_node(&["bpftool", "-j", "map", "dump", "pinned", &path])?;
    let doc: Value = serde_json::from_str(&text).context("bpftool -j output")?;
    let bytes = |v: &Value| -> Option<Vec<u8>> {
        v.as_array()?
            .iter()
            .map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
            .collect()
    };
    let mut out = Vec::new();
    for e in doc.as_array().into_iter().flatten() {
        match (bytes(&e["key"]), bytes(&e["value"])) {
            (Some(k), Some(v)) => out.push((k, v)),
            _ => bail!("bpftool entry without raw key/value: {e}"),
        }
    }
    Ok(out)
}

fn addr(b: &[u8]) -> Option<IpAddr> {
    let raw: [u8; 16] = b.get(..16)?.try_into().ok()?;
    let v6 = Ipv6Addr::from(raw);
    Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
}

fn ebpf_backends(sb: &Sandbox, bpffs: &Path) -> Result<Backends> {
    let Some(dir) = pin_dir(bpffs)? else {
        return Ok(Backends::new());
    };
    let mut slots: HashMap<(u32, u8, u16), String> = HashMap::new();
    for (k, v) in bpf_dump(sb, &dir.join("sy_backends"))? {
        let (Some(ip), true, true) = (addr(&v), k.len() >= 7, v.len() >= 18) else {
            bail!("sy_backends entry of unexpected size: {k:?} {v:?}");
        };
        let id = u32::from_le_bytes([k[0], k[1], k[2], k[3]]);
        let slot = u16::from_le_bytes([k[4], k[5]]);
        let port = u16::from_be_bytes([v[16], v[17]]);
        slots.insert((id, k[6], slot), format!("{ip}:{port}"));
    }
    let mut out = Backends::new();
    for (k, v) in bpf_dump(sb, &dir.join("sy_services"))? {
        let (Some(vip), true, true) = (addr(&k), k.len() >= 20, v.len() >= 13) else {
            bail!("sy_services entry of unexpected size: {k:?} {v:?}");
        };
        // Scope node (0), TCP, IPv4: the ClusterIP entries socket programs use.
        if k[19] != 0 || k[18] != 6 || !vip.is_ipv4() {
            continue;
        }
        let port = u16::from_be_bytes([k[16], k[17]]);
        let id = u32::from_le_bytes([v[0], v[1], v[2], v[3]]);
        let count = u16::from_le_bytes([v[4], v[5]]);
        let set = (0..count)
            .map(|slot| {
                slots
                    .get(&(id, v[12], slot))
                    .cloned()
                    .unwrap_or_else(|| format!("MISSING(id {id} slot {slot})"))
            })
            .collect();
        out.insert(format!("{vip}:{port}"), set);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_save_is_followed_from_the_service_rule_to_its_endpoints() {
        let save = r#"*nat
:SY-SERVICES - [0:0]
-A SY-SERVICES -d 172.30.20.1/32 -p tcp -m comment --comment "e2e/a:http cluster IP" -m tcp --dport 80 -j SY-SVC-AAA
-A SY-SVC-AAA -m statistic --mode random --probability 0.5 -j SY-SEP-1
-A SY-SVC-AAA -j SY-SEP-2
-A SY-SEP-1 -p tcp -j DNAT --to-destination 10.1.0.1:8080
-A SY-SEP-2 -p tcp -j DNAT --to-destination 10.1.0.2:8080
COMMIT
"#;
        let got = iptables_backends(save);
        assert_eq!(
            got["172.30.20.1:80"],
            BTreeSet::from(["10.1.0.1:8080".into(), "10.1.0.2:8080".into()])
        );
    }

    #[test]
    fn ipvsadm_save_counts_live_real_servers_only() {
        let save = "-A -t 172.30.40.1:80 -s rr
-a -t 172.30.40.1:80 -r 10.182.0.1:8080 -m -w 1
-a -t 172.30.40.1:80 -r 10.182.0.2:8080 -m -w 0
-A -u 172.30.41.2:81 -s rr -p 10800
-a -u 172.30.41.2:81 -r 10.183.0.1:8080 -m -w 1
-A -t 172.30.40.9:80 -s rr
-A -t [fd00:30::1]:80 -s rr
-a -t [fd00:30::1]:80 -r [fd00:10::5]:8080 -m -w 1
-A -f 7 -s rr
-a -f 7 -r 10.182.0.3:0 -m -w 1
";
        let got = ipvs_backends(save);
        let set =
            |items: &[&str]| -> BTreeSet<String> { items.iter().map(|s| s.to_string()).collect() };
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got["172.30.40.1:80"], set(&["10.182.0.1:8080"]));
        assert_eq!(got["172.30.41.2:81"], set(&["10.183.0.1:8080"]));
        assert!(got["172.30.40.9:80"].is_empty());
    }

    #[test]
    fn nft_map_elements_lead_to_their_dnats() {
        let doc: Value = serde_json::from_str(
            r#"{"nftables": [
              {"map": {"family": "ip", "table": "switchyard-3", "name": "service-ips",
                "elem": [[{"concat": ["172.30.20.1", "tcp", 80]}, {"goto": {"target": "svc-x"}}]]}},
              {"rule": {"family": "ip", "table": "switchyard-3", "chain": "svc-x", "expr": [
                {"match": {"op": "==", "left": {"numgen": {"mode": "random", "mod": 2}}, "right": 0}},
                {"dnat": {"addr": "10.1.0.1", "port": 8080}}]}},
              {"rule": {"family": "ip", "table": "switchyard-3", "chain": "svc-x", "expr": [
                {"dnat": {"addr": "10.1.0.2", "port": 8080}}]}}
            ]}"#,
        )
        .unwrap();
        let got = nft_backends(&doc).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got["172.30.20.1:80"].len(), 2);
    }

    #[test]
    fn nft_backend_map_keys_in_the_rule_range_are_its_dnats() {
        // As nft 1.0.6 prints it: the offset signed, keys unsigned; key 3 is another
        // chain's.
        let doc: Value = serde_json::from_str(
            r#"{"nftables": [
              {"map": {"family": "ip", "table": "switchyard-3", "name": "service-ips",
                "elem": [[{"concat": ["172.30.20.1", "tcp", 80]}, {"goto": {"target": "svc-x"}}]]}},
              {"map": {"family": "ip", "table": "switchyard-3", "name": "backends-7",
                "type": "integer", "map": "ipv4_addr . inet_service",
                "elem": [[4294967294, {"concat": ["10.1.0.1", 8080]}],
                         [4294967295, {"concat": ["10.1.0.2", 8080]}],
                         [3, {"concat": ["10.1.0.3", 8080]}]]}},
              {"rule": {"family": "ip", "table": "switchyard-3", "chain": "svc-x", "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
                {"dnat": {"family": "ip", "addr": {"map": {
                  "key": {"numgen": {"mode": "random", "mod": 2, "offset": -2}},
                  "data": "@backends-7"}}}}]}}
            ]}"#,
        )
        .unwrap();
        let got = nft_backends(&doc).unwrap();
        let want: BTreeSet<String> = ["10.1.0.1:8080", "10.1.0.2:8080"].map(String::from).into();
        assert_eq!(got["172.30.20.1:80"], want);
    }
}

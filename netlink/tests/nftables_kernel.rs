//! nf_tables batches against the real kernel, in a private network namespace: a full
//! ruleset (tables of both families, base chains, regular chains, verdict maps and sets
//! with concatenated keys, an interval set, a dynamic timeout set, rules, elements)
//! built by netlink batches alone, then read back two ways — `nft -j list ruleset` and
//! this layer's dumps — and a failing batch that changes nothing and keeps its errno.
//! Needs root and `nft`.

mod support;

use std::net::IpAddr;

use serde_json::Value;
use support::{need_root, TestNetns};
use switchyard_netlink::nftables::{
    Attrs, BaseChain, ChainType, DataType, ElementBytes, Hook, KeyType, NftSocket, SetFlags,
    SetSpec, TableFamily, NFTA_DATA_VERDICT, NFT_GOTO, NFT_JUMP,
};

const TABLE: &str = "sy-test";

// Expression attributes (linux/netfilter/nf_tables.h).
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_DREG: u16 = 3;
const NFT_META_L4PROTO: u32 = 16;
const NFT_REG32_00: u32 = 8;

/// `jump CHAIN`.
fn jump(a: &mut Attrs<'_>, chain: &str) {
    a.expr("immediate", |a| {
        a.u32(NFTA_IMMEDIATE_DREG, 0);
        let data = a.begin(NFTA_IMMEDIATE_DATA);
        let v = a.begin(NFTA_DATA_VERDICT);
        a.put(1, &NFT_JUMP.to_be_bytes());
        a.str(2, chain);
        a.end(v);
        a.end(data);
    });
}

fn payload(a: &mut Attrs<'_>, reg: u32, base: u32, offset: u32, len: u32) {
    a.expr("payload", |a| {
        a.u32(NFTA_PAYLOAD_DREG, reg);
        a.u32(NFTA_PAYLOAD_BASE, base);
        a.u32(NFTA_PAYLOAD_OFFSET, offset);
        a.u32(NFTA_PAYLOAD_LEN, len);
    });
}

/// `ip daddr . meta l4proto . th dport vmap @MAP` (`ip6 daddr` for IPv6).
fn vip_vmap(a: &mut Attrs<'_>, family: TableFamily, map: &str) {
    let (offset, len) = match family {
        TableFamily::Ip6 => (24, 16),
        _ => (16, 4),
    };
    payload(a, NFT_REG32_00, 1, offset, len);
    let next = NFT_REG32_00 + len / 4;
    a.expr("meta", |a| {
        a.u32(NFTA_META_DREG, next);
        a.u32(NFTA_META_KEY, NFT_META_L4PROTO);
    });
    payload(a, next + 1, 2, 2, 2);
    a.expr("lookup", |a| {
        a.str(NFTA_LOOKUP_SET, map);
        a.u32(NFTA_LOOKUP_SREG, NFT_REG32_00);
        a.u32(NFTA_LOOKUP_DREG, 0);
    });
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn padded(ip: IpAddr, proto: u8, port: u16) -> Vec<u8> {
    let mut key = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    key.extend_from_slice(&[proto, 0, 0, 0]);
    let [a, b] = port.to_be_bytes();
    key.extend_from_slice(&[a, b, 0, 0]);
    key
}

fn addr_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

struct FamilyCase {
    family: TableFamily,
    addr: KeyType,
    vip: IpAddr,
    endpoints: [IpAddr; 2],
    prefix: (IpAddr, u8),
    node: (IpAddr, u8),
}

fn cases() -> [FamilyCase; 2] {
    [
        FamilyCase {
            family: TableFamily::Ip,
            addr: KeyType::Ipv4Addr,
            vip: ip("10.96.0.10"),
            endpoints: [ip("10.0.0.2"), ip("10.0.0.3")],
            prefix: (ip("10.0.0.0"), 8),
            node: (ip("192.168.0.2"), 32),
        },
        FamilyCase {
            family: TableFamily::Ip6,
            addr: KeyType::Ipv6Addr,
            vip: ip("fd00:96::10"),
            endpoints: [ip("fd00:10::2"), ip("fd00:10::3")],
            prefix: (ip("fd00:10::"), 32),
            node: (ip("2001:db8::1"), 128),
        },
    ]
}

/// One family's whole ruleset, as one batch would write it in a full sync.
fn full_ruleset(batch: &mut switchyard_netlink::nftables::Batch, c: &FamilyCase) {
    let f = c.family;
    batch.add_table(f, TABLE);
    let base = |chain_type, hook, priority| BaseChain {
        chain_type,
        hook,
        priority,
        accept: true,
    };
    batch.add_base_chain(
        f,
        TABLE,
        "nat-prerouting",
        base(ChainType::Nat, Hook::Prerouting, -100),
    );
    batch.add_base_chain(
        f,
        TABLE,
        "nat-output",
        base(ChainType::Nat, Hook::Output, -100),
    );
    batch.add_base_chain(
        f,
        TABLE,
        "filter-forward",
        base(ChainType::Filter, Hook::Forward, -110),
    );
    for chain in ["services", "svc-a", "svc-b"] {
        batch.add_chain(f, TABLE, chain);
    }
    let vip_key = [c.addr, KeyType::InetProto, KeyType::InetService];
    batch.add_set(
        f,
        TABLE,
        &SetSpec {
            name: "service-ips",
            key: &vip_key,
            data: Some(DataType::Verdict),
            flags: SetFlags::default(),
            timeout_ms: None,
            userdata: None,
        },
    );
    batch.add_set(
        f,
        TABLE,
        &SetSpec {
            name: "cluster-ips",
            key: &[c.addr],
            data: None,
            flags: SetFlags::default(),
            timeout_ms: None,
            userdata: None,
        },
    );
    batch.add_set(
        f,
        TABLE,
        &SetSpec {
            name: "hairpin",
            key: &[c.addr, c.addr],
            data: None,
            flags: SetFlags::default(),
            timeout_ms: None,
            userdata: None,
        },
    );
    batch.add_set(
        f,
        TABLE,
        &SetSpec {
            name: "nodeport-ips",
            key: &[c.addr],
            data: None,
            flags: SetFlags {
                interval: true,
                ..SetFlags::default()
            },
            timeout_ms: None,
            userdata: None,
        },
    );
    batch.add_affinity_set(f, TABLE, "aff-a", 10800);
    batch.add_rule(f, TABLE, "nat-prerouting", |a| jump(a, "services"));
    batch.add_rule(f, TABLE, "nat-output", |a| jump(a, "services"));
    batch.add_rule(f, TABLE, "services", |a| vip_vmap(a, f, "service-ips"));
    batch.add_elements(
        f,
        TABLE,
        "service-ips",
        &[
            ElementBytes {
                key: padded(c.vip, 6, 80),
                verdict: Some((NFT_GOTO, Some("svc-a".into()))),
                ..Default::default()
            },
            ElementBytes {
                key: padded(c.vip, 17, 53),
                verdict: Some((NFT_GOTO, Some("svc-b".into()))),
                ..Default::default()
            },
        ],
    );
    batch.add_elements(
        f,
        TABLE,
        "cluster-ips",
        &[ElementBytes {
            key: addr_bytes(c.vip),
            verdict: None,
            ..Default::default()
        }],
    );
    let pair: Vec<u8> = [addr_bytes(c.endpoints[0]), addr_bytes(c.endpoints[0])].concat();
    batch.add_elements(
        f,
        TABLE,
        "hairpin",
        &[ElementBytes {
            key: pair,
            verdict: None,
            ..Default::default()
        }],
    );
    batch.add_prefixes(f, TABLE, "nodeport-ips", &[c.prefix, c.node]);
}

fn objects<'a>(json: &'a Value, kind: &str, family: &str) -> Vec<&'a Value> {
    json["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .filter_map(|o| o.get(kind))
        .filter(|o| o["family"] == family && o["table"].as_str().unwrap_or(TABLE) == TABLE)
        .collect()
}

fn named<'a>(list: &[&'a Value], name: &str) -> &'a Value {
    list.iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list:#?}"))
}

fn check_listing(json: &Value, c: &FamilyCase) {
    let fam = c.family.keyword();
    let tables = objects(json, "table", fam);
    assert!(tables.iter().any(|t| t["name"] == TABLE), "{json:#}");
    let chains = objects(json, "chain", fam);
    let pre = named(&chains, "nat-prerouting");
    assert_eq!(
        (&pre["type"], &pre["hook"], &pre["prio"], &pre["policy"]),
        (
            &Value::from("nat"),
            &Value::from("prerouting"),
            &Value::from(-100),
            &Value::from("accept")
        )
    );
    let fwd = named(&chains, "filter-forward");
    assert_eq!(
        (&fwd["type"], &fwd["hook"], &fwd["prio"]),
        (
            &Value::from("filter"),
            &Value::from("forward"),
            &Value::from(-110)
        )
    );
    assert!(named(&chains, "svc-a").get("hook").is_none());

    let addr_type = match c.family {
        TableFamily::Ip6 => "ipv6_addr",
        _ => "ipv4_addr",
    };
    let maps = objects(json, "map", fam);
    let vips = named(&maps, "service-ips");
    assert_eq!(
        vips["type"],
        serde_json::json!([addr_type, "inet_proto", "inet_service"])
    );
    assert_eq!(vips["map"], "verdict");
    let elems = vips["elem"].as_array().expect("map elements");
    let vip = c.vip.to_string();
    assert!(
        elems.contains(
            &serde_json::json!([{"concat": [vip, "tcp", 80]}, {"goto": {"target": "svc-a"}}])
        ),
        "{vips:#}"
    );
    assert!(
        elems.contains(
            &serde_json::json!([{"concat": [vip, "udp", 53]}, {"goto": {"target": "svc-b"}}])
        ),
        "{vips:#}"
    );

    let sets = objects(json, "set", fam);
    let cluster = named(&sets, "cluster-ips");
    assert_eq!(
        (&cluster["type"], &cluster["elem"]),
        (&Value::from(addr_type), &serde_json::json!([vip]))
    );
    let hairpin = named(&sets, "hairpin");
    let ep = c.endpoints[0].to_string();
    assert_eq!(hairpin["type"], serde_json::json!([addr_type, addr_type]));
    assert_eq!(hairpin["elem"], serde_json::json!([{"concat": [ep, ep]}]));
    let nodeports = named(&sets, "nodeport-ips");
    assert_eq!(nodeports["flags"], serde_json::json!(["interval"]));
    let node = c.node.0.to_string();
    let elems = nodeports["elem"].as_array().expect("interval elements");
    assert_eq!(elems.len(), 2, "{nodeports:#}");
    assert!(elems.contains(
        &serde_json::json!({"prefix": {"addr": c.prefix.0.to_string(), "len": c.prefix.1}})
    ));
    assert!(elems.contains(&Value::from(node)), "{nodeports:#}");
    let aff = named(&sets, "aff-a");
    // nft 1.0.6's JSON leaves `dynamic` out even for sets nft made itself; its text
    // listing shows it (checked below).
    assert_eq!(aff["flags"], serde_json::json!(["timeout"]), "{aff:#}");
    assert_eq!(aff["timeout"], 10800);
    assert_eq!(aff["type"], addr_type);

    let rules = objects(json, "rule", fam);
    let jumps: Vec<_> = rules
        .iter()
        .filter(|r| r["chain"] == "nat-prerouting")
        .collect();
    assert_eq!(jumps.len(), 1);
    assert_eq!(
        jumps[0]["expr"],
        serde_json::json!([{"jump": {"target": "services"}}])
    );
    let services: Vec<_> = rules.iter().filter(|r| r["chain"] == "services").collect();
    let vmap = &services[0]["expr"][0]["vmap"];
    assert_eq!(vmap["data"], "@service-ips", "{:#}", services[0]);
    assert_eq!(
        vmap["key"]["concat"][1],
        serde_json::json!({"meta": {"key": "l4proto"}})
    );
}

#[test]
fn a_full_ruleset_built_by_batches_reads_back_as_nft_would_write_it() {
    if !need_root("a_full_ruleset_built_by_batches_reads_back_as_nft_would_write_it") {
        return;
    }
    let ns = TestNetns::new("nl-nft");
    let mut socket = NftSocket::open(Some(&ns.name)).expect("socket in the netns");
    let mut batch = socket.batch();
    for c in &cases() {
        full_ruleset(&mut batch, c);
    }
    let messages = batch.len();
    socket.commit(batch).expect("the full ruleset batch");
    let json: Value = serde_json::from_str(&ns.exec("nft", &["-j", "list", "ruleset"])).unwrap();
    for c in &cases() {
        check_listing(&json, c);
        let text = ns.exec("nft", &["list", "set", c.family.keyword(), TABLE, "aff-a"]);
        assert!(text.contains("flags dynamic,timeout"), "{text}");
        assert!(text.contains("timeout 3h"), "{text}");
        let text = ns.exec(
            "nft",
            &["list", "chain", c.family.keyword(), TABLE, "nat-prerouting"],
        );
        assert!(
            text.contains("type nat hook prerouting priority dstnat; policy accept;"),
            "{text}"
        );
    }
    // The same state through this layer's dumps.
    for c in &cases() {
        let f = c.family;
        assert!(socket.tables(f).unwrap().contains(&TABLE.to_string()));
        let mut chains: Vec<String> = socket
            .chain_names(f)
            .unwrap()
            .into_iter()
            .filter(|(t, _)| t == TABLE)
            .map(|(_, c)| c)
            .collect();
        chains.sort();
        assert_eq!(
            chains,
            [
                "filter-forward",
                "nat-output",
                "nat-prerouting",
                "services",
                "svc-a",
                "svc-b"
            ]
        );
        let mut sets = socket.sets(f, TABLE).unwrap().unwrap();
        sets.sort();
        assert_eq!(
            sets,
            [
                "aff-a",
                "cluster-ips",
                "hairpin",
                "nodeport-ips",
                "service-ips"
            ]
        );
        assert_eq!(
            socket.element_count(f, TABLE, "service-ips").unwrap(),
            Some(2)
        );
        let elems = socket.elements(f, TABLE, "service-ips").unwrap().unwrap();
        let mut chains: Vec<_> = elems.iter().map(|e| e.1.clone().unwrap()).collect();
        chains.sort();
        assert_eq!(chains, ["svc-a", "svc-b"]);
        let keys = vec![padded(c.vip, 6, 80), padded(c.vip, 6, 81)];
        let present = socket
            .elements_present(f, TABLE, "service-ips", &keys)
            .unwrap();
        assert_eq!(
            present,
            [Some("svc-a".to_string())],
            "the lookup stops at the missing key"
        );
        let counts = socket.rule_counts(f, TABLE, None).unwrap().unwrap();
        assert_eq!((counts["nat-prerouting"], counts["services"]), (1, 1));
        assert_eq!(
            socket.sets(f, "sy-no-table").unwrap(),
            None,
            "ENOENT is None"
        );
    }
    eprintln!("{messages} messages in one batch");

    // A failing batch: the kernel names the message and the errno, and nothing of the
    // batch is applied.
    let before = ns.exec("nft", &["list", "ruleset"]);
    let mut batch = socket.batch();
    batch.add_chain(TableFamily::Ip, TABLE, "svc-c");
    batch.add_rule(TableFamily::Ip, TABLE, "no-such-chain", |a| {
        jump(a, "svc-a")
    });
    let err = socket.commit(batch).expect_err("rule in a missing chain");
    assert_eq!(err.errno(), Some(2), "{err}");
    assert!(err.to_string().contains("message 2 of 2"), "{err}");
    assert_eq!(before, ns.exec("nft", &["list", "ruleset"]));

    // Flush a set, delete a table; the socket keeps working after the failure.
    let mut batch = socket.batch();
    batch.flush_set(TableFamily::Ip, TABLE, "service-ips");
    batch.delete_table(TableFamily::Ip6, TABLE);
    socket.commit(batch).unwrap();
    assert_eq!(
        socket
            .element_count(TableFamily::Ip, TABLE, "service-ips")
            .unwrap(),
        Some(0)
    );
    assert!(!socket
        .tables(TableFamily::Ip6)
        .unwrap()
        .contains(&TABLE.to_string()));
}

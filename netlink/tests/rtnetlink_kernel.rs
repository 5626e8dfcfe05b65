//! rtnetlink against the real kernel, in private network namespaces: addresses of both
//! families added, listed (and checked with `ip -j addr`) and deleted on a link found
//! by name; and the IPVS engine's dummy interface created, brought up and deleted (the
//! host kernel here has no dummy link type: that test runs in the VM lane, and skips
//! loudly elsewhere). Needs root.

mod support;

use serde_json::Value;
use support::{may_skip_missing, need_root, TestNetns};
use switchyard_netlink::rtnetlink::{InterfaceAddress, Rtnl};

/// 15 bytes: the longest name a link can have.
const DUMMY: &str = "switchyard-ipvs";

fn addr(s: &str, prefix_len: u8) -> InterfaceAddress {
    InterfaceAddress {
        addr: s.parse().unwrap(),
        prefix_len,
    }
}

/// `ip -j addr show dev LINK` as (address, prefix) pairs, sorted, link-local left out.
fn ip_listing(ns: &TestNetns, link: &str) -> Vec<(String, u64)> {
    let json: Value =
        serde_json::from_str(&ns.exec("ip", &["-j", "addr", "show", "dev", link])).unwrap();
    let mut out: Vec<(String, u64)> = json[0]["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["scope"] != "link")
        .map(|a| {
            (
                a["local"].as_str().unwrap().to_string(),
                a["prefixlen"].as_u64().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Adds, lists and deletes a VIP of each family on `link`, checking with `ip`.
fn addresses_round_trip(ns: &TestNetns, rt: &mut Rtnl, link: &str) {
    let index = rt.link_index(link).unwrap().expect("the link exists");
    rt.set_up(index).unwrap();
    assert!(rt.link(link).unwrap().unwrap().up);
    let v4 = addr("10.96.0.10", 32);
    let v6 = addr("fd00:96::10", 128);
    assert!(rt.add_address(index, v4).unwrap());
    assert!(rt.add_address(index, v6).unwrap());
    assert!(!rt.add_address(index, v4).unwrap(), "already there");
    let listed: Vec<InterfaceAddress> = rt
        .addresses(index)
        .unwrap()
        .into_iter()
        .filter(|a| !matches!(a.addr, std::net::IpAddr::V6(v6) if v6.segments()[0] == 0xfe80))
        .collect();
    assert_eq!(listed, [v4, v6]);
    assert_eq!(
        ip_listing(ns, link),
        [
            ("10.96.0.10".to_string(), 32),
            ("fd00:96::10".to_string(), 128)
        ]
    );
    // The IPv6 VIP is usable at once (no duplicate address detection).
    let detail = ns.exec("ip", &["-6", "addr", "show", "dev", link]);
    let line = detail
        .lines()
        .find(|l| l.contains("fd00:96::10"))
        .unwrap_or_default();
    assert!(
        line.contains("nodad") && !line.contains("tentative"),
        "{detail}"
    );
    assert!(rt.delete_address(index, v4).unwrap());
    assert!(!rt.delete_address(index, v4).unwrap(), "already gone");
    assert_eq!(ip_listing(ns, link), [("fd00:96::10".to_string(), 128)]);
}

#[test]
fn addresses_of_both_families_on_a_link() {
    if !need_root("addresses_of_both_families_on_a_link") {
        return;
    }
    let ns = TestNetns::new("nl-rta");
    ns.exec("ip", &["link", "add", "sy-br0", "type", "bridge"]);
    let mut rt = Rtnl::open(&ns.netns()).expect("rtnetlink socket in the netns");
    assert!(rt.links().unwrap().iter().any(|l| l.name == "lo"));
    addresses_round_trip(&ns, &mut rt, "sy-br0");
    // Someone else's interface of another kind is not adopted as the dummy.
    let err = rt.ensure_dummy("sy-br0").unwrap_err();
    assert_eq!(err.errno(), Some(17), "{err}");
    let err = rt.ensure_dummy("switchyard-ipvs0").unwrap_err();
    assert_eq!(err.errno(), Some(34), "{err}");
    assert!(err.to_string().contains("longer than 15 bytes"), "{err}");
    assert!(rt.delete_link("sy-br0").unwrap());
    assert!(!rt.delete_link("sy-br0").unwrap());
    assert_eq!(rt.link_index("sy-br0").unwrap(), None);
}

#[test]
fn dummy_link_lifecycle() {
    if !need_root("dummy_link_lifecycle") {
        return;
    }
    let ns = TestNetns::new("nl-rtd");
    let mut rt = Rtnl::open(&ns.netns()).expect("rtnetlink socket in the netns");
    assert_eq!(rt.link_index(DUMMY).unwrap(), None);
    let index = match rt.ensure_dummy(DUMMY) {
        Ok(index) => index,
        Err(e) if e.errno() == Some(95) => {
            may_skip_missing("dummy_link_lifecycle", "dummy link type", &e);
            return;
        }
        Err(e) => panic!("creating the dummy link: {e}"),
    };
    assert_eq!(rt.ensure_dummy(DUMMY).unwrap(), index, "idempotent");
    let link = rt.link(DUMMY).unwrap().unwrap();
    assert_eq!((link.kind.as_deref(), link.up), (Some("dummy"), false));
    let shown = ns.exec("ip", &["-d", "link", "show", DUMMY]);
    assert!(shown.contains("dummy"), "{shown}");
    addresses_round_trip(&ns, &mut rt, DUMMY);
    assert!(rt.delete_link(DUMMY).unwrap());
    assert_eq!(rt.link_index(DUMMY).unwrap(), None);
}

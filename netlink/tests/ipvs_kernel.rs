//! IPVS generic netlink against a real IPVS kernel, in a private network namespace:
//! for each family, a virtual server with two masqueraded real servers, dumped back,
//! one weight changed, persistence switched on, a real server deleted, the server
//! deleted; a firewall-mark service; timeouts set and read; the version info; and the
//! kernel's refusals keeping their errno. The host kernel has no IPVS: these run in the
//! VM lane (`e2e/tests/vm_lane.rs`), and skip loudly elsewhere. Needs root.

mod support;

use std::net::IpAddr;

use support::{may_skip_missing, need_root, TestNetns};
use switchyard_model::{IpFamily, Protocol};
use switchyard_netlink::{
    ipvs::{Destination, Forward, Ipvs, Service, ServiceId, Timeouts, SVC_F_HASHED},
    NetlinkError,
};

/// IPVS in a fresh namespace, or `None` (after a loud skip) on a kernel without it.
/// `lo` is brought up first, as on any node: IPVS accepts an IPv4 real server only
/// when the namespace's local routing table exists (`inet_addr_type` is otherwise
/// `RTN_BROADCAST` and the add is `EINVAL`).
fn ipvs(test: &str, ns: &TestNetns) -> Option<Ipvs> {
    ns.exec("ip", &["link", "set", "lo", "up"]);
    match Ipvs::open(&ns.netns()) {
        Ok(ipvs) => Some(ipvs),
        Err(e) if e.errno() == Some(2) => {
            may_skip_missing(test, "IPVS (ip_vs)", &e);
            None
        }
        Err(e) => panic!("opening IPVS: {e}"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn service_with_two_destinations(ipvs: &mut Ipvs, vip: &str, eps: [&str; 2]) {
    let id = ServiceId::new(Protocol::Tcp, ip(vip), 80);
    let service = Service::new(id, "rr");
    ipvs.add_service(&service).expect("add service");
    let err = ipvs.add_service(&service).unwrap_err();
    assert_eq!(err.errno(), Some(17), "a second add is EEXIST: {err}");
    let dumped = ipvs.service(&id).unwrap().expect("the service reads back");
    assert_eq!(dumped.scheduler, "rr");
    assert_eq!(dumped.flags & !SVC_F_HASHED, 0);
    assert!(ipvs.services().unwrap().iter().any(|s| s.id == id));

    let dests: Vec<Destination> = eps
        .iter()
        .map(|e| Destination::masquerade(ip(e), 8080))
        .collect();
    for d in &dests {
        ipvs.add_destination(&id, d).expect("add destination");
    }
    let mut got: Vec<Destination> = ipvs
        .destinations(&id)
        .unwrap()
        .into_iter()
        .map(|s| s.destination)
        .collect();
    got.sort_by_key(|d| d.addr);
    assert_eq!(got, dests);
    assert!(got
        .iter()
        .all(|d| d.forward == Forward::Masquerade && d.weight == 1));

    // Graceful termination's first step: weight 0.
    let mut drained = dests[1];
    drained.weight = 0;
    ipvs.update_destination(&id, &drained).unwrap();
    let weights: Vec<(IpAddr, u32)> = ipvs
        .destinations(&id)
        .unwrap()
        .iter()
        .map(|s| (s.destination.addr, s.destination.weight))
        .collect();
    assert!(weights.contains(&(dests[0].addr, 1)) && weights.contains(&(drained.addr, 0)));

    // ClientIP affinity: persistence with the service's timeout.
    ipvs.update_service(&Service::new(id, "rr").persistent(10800))
        .unwrap();
    let s = ipvs.service(&id).unwrap().unwrap();
    assert!(s.is_persistent() && s.timeout == 10800, "{s:?}");

    ipvs.delete_destination(&id, &drained.addr, 8080).unwrap();
    let left = ipvs.destinations(&id).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].destination.addr, dests[0].addr);
    let err = ipvs
        .delete_destination(&id, &drained.addr, 8080)
        .unwrap_err();
    assert!(
        err.errno().is_some(),
        "a missing destination keeps its errno: {err}"
    );

    ipvs.delete_service(&id).unwrap();
    assert_eq!(ipvs.service(&id).unwrap(), None);
    let err: NetlinkError = ipvs.delete_service(&id).unwrap_err();
    assert_eq!(err.errno(), Some(3), "ESRCH: {err}");
}

#[test]
fn services_and_destinations_of_both_families() {
    let test = "services_and_destinations_of_both_families";
    if !need_root(test) {
        return;
    }
    let ns = TestNetns::new("nl-ipvs");
    let Some(mut ipvs) = ipvs(test, &ns) else {
        return;
    };
    let info = ipvs.info().unwrap();
    assert!(info.version >= 0x010200, "IPVS version {:#x}", info.version);
    assert!(info.conn_table_size > 0);
    service_with_two_destinations(&mut ipvs, "10.96.0.10", ["10.0.0.2", "10.0.0.3"]);
    service_with_two_destinations(&mut ipvs, "fd00:96::10", ["fd00:10::2", "fd00:10::3"]);

    // A firewall-mark service, IPv6, with the mh scheduler when it is there.
    let mark = ServiceId::Fwmark {
        family: IpFamily::V6,
        mark: 0x4242,
    };
    ipvs.add_service(&Service::new(mark, "rr")).unwrap();
    ipvs.add_destination(&mark, &Destination::masquerade(ip("fd00:10::9"), 0))
        .unwrap();
    let services = ipvs.services().unwrap();
    assert_eq!(services.len(), 1, "{services:?}");
    assert_eq!(services[0].id, mark);
    assert_eq!(ipvs.destinations(&mark).unwrap().len(), 1);
    ipvs.flush().unwrap();
    assert!(ipvs.services().unwrap().is_empty());
}

#[test]
fn timeouts_are_set_and_read() {
    let test = "timeouts_are_set_and_read";
    if !need_root(test) {
        return;
    }
    let ns = TestNetns::new("nl-ipvst");
    let Some(mut ipvs) = ipvs(test, &ns) else {
        return;
    };
    let wanted = Timeouts {
        tcp: 900,
        tcp_fin: 120,
        udp: 300,
    };
    ipvs.set_timeouts(&wanted).unwrap();
    assert_eq!(ipvs.timeouts().unwrap(), wanted);
    // 0 leaves a timeout as it was.
    ipvs.set_timeouts(&Timeouts {
        tcp: 0,
        tcp_fin: 0,
        udp: 60,
    })
    .unwrap();
    assert_eq!(ipvs.timeouts().unwrap(), Timeouts { udp: 60, ..wanted });
    // An unknown scheduler is refused with the kernel's errno (ENOENT), a name past
    // IP_VS_SCHEDNAME_MAXLEN by the attribute policy (EINVAL).
    let id = ServiceId::new(Protocol::Udp, ip("10.96.0.53"), 53);
    let err = ipvs
        .add_service(&Service::new(id, "sy-nosched"))
        .unwrap_err();
    assert_eq!(err.errno(), Some(2), "{err}");
    let err = ipvs
        .add_service(&Service::new(id, "sy-no-such-scheduler"))
        .unwrap_err();
    assert_eq!(err.errno(), Some(22), "{err}");
}

//! Every parser of the netlink layer against arbitrary and mutated kernel answers: it
//! returns an error or a value, never panics, never reads past the data. Valid answers
//! are built with the layer's own writers, then cut, bit-flipped and given lying
//! lengths. `SY_FUZZ_CASES` sets the number of cases (default 2048 per parser).

use proptest::prelude::*;
use switchyard_model::IpFamily;
use switchyard_netlink::{
    attr::{attrs, Attr, AttrWriter},
    ctnetlink::{decode_flow, encode_flow, Flow, Tuple},
    genl::decode_family_id,
    ipvs::{Destination, DestinationStatus, Service, ServiceId},
    message::{acked_seq, error_code, messages, Message, MessageWriter},
    nftables::{decode_elements, decode_set, Attrs, NFT_GOTO},
    rtnetlink,
};

fn cases() -> u32 {
    std::env::var("SY_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(2048)
}

/// Walks attributes recursively, reading every value every way.
fn walk(data: &[u8], depth: usize) {
    for a in attrs(data) {
        let Ok(a): Result<Attr<'_>, _> = a else {
            return;
        };
        let _ = (
            a.u8(),
            a.be16(),
            a.ne16(),
            a.be32(),
            a.ne32(),
            a.be64(),
            a.ne64(),
        );
        let _ = (a.str(), a.ip());
        if depth < 4 {
            walk(a.value, depth + 1);
        }
    }
}

/// Every parser on every message of a datagram.
fn parse_all(data: &[u8]) {
    for m in messages(data) {
        let Ok(m): Result<Message<'_>, _> = m else {
            return;
        };
        let _ = (error_code(&m), acked_seq(&m), m.after_fixed(4));
        let _ = decode_flow(m.payload);
        let _ = decode_elements(&m);
        let _ = decode_set(&m);
        let _ = decode_family_id(&m);
        let _ = rtnetlink::decode(&m);
        if let Ok(body) = m.after_fixed(4) {
            walk(body, 0);
            let _ = Service::decode(body);
            let _ = DestinationStatus::decode(body, IpFamily::V4);
            for a in attrs(body).flatten() {
                let _ = Service::decode(a.value);
                let _ = DestinationStatus::decode(a.value, IpFamily::V6);
            }
        }
    }
}

/// Valid answers of every protocol, as the seeds of the mutations.
fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    // ctnetlink flows.
    let tuple = |s: &str, d: &str| Tuple {
        src: s.parse().unwrap(),
        dst: d.parse().unwrap(),
        protocol: 17,
        src_port: 1000,
        dst_port: 53,
    };
    let mut w = MessageWriter::new();
    for (s, d) in [("10.0.0.1", "10.0.0.2"), ("fd00::1", "fd00::2")] {
        let flow = Flow {
            original: tuple(s, d),
            reply: tuple(d, s),
            id: Some(7),
            zone: Some(1),
        };
        encode_flow(&mut w, 1, &flow);
    }
    out.push(w.into_bytes());
    // nf_tables element answer.
    let mut w = MessageWriter::new();
    w.begin(10 << 8 | 12, 2, 1, &[2, 0, 0, 0]);
    let mut a = Attrs::new(w.buffer());
    a.str(1, "t");
    a.str(2, "m");
    let list = a.begin(3);
    for i in 0..3u8 {
        let e = a.begin(1);
        a.data(1, &[10, 0, 0, i]);
        a.verdict(2, NFT_GOTO, Some("svc-x"));
        a.end(e);
    }
    a.end(list);
    // nf_tables set answer.
    w.begin(10 << 8 | 9, 2, 1, &[2, 0, 0, 0]);
    let mut a = Attrs::new(w.buffer());
    a.str(1, "t");
    a.str(2, "s");
    a.u32(3, 0x8);
    a.u32(4, 7);
    a.u32(5, 4);
    a.u32(6, 0xffff_ff00);
    // An NLMSG_ERROR with the request's header.
    w.begin(
        2,
        0,
        1,
        &[0xfe, 0xff, 0xff, 0xff, 20, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
    );
    out.push(w.into_bytes());
    // IPVS service and destination answers (genl header, nested attributes).
    let mut w = MessageWriter::new();
    w.begin(0x20, 2, 1, &[1, 1, 0, 0]);
    let id = ServiceId::new(
        switchyard_model::Protocol::Tcp,
        "10.96.0.1".parse().unwrap(),
        80,
    );
    let svc = Service::new(id, "rr").persistent(60);
    w.attrs().nested(1, |a| {
        a.ne16(1, 2);
        a.ne16(2, 6);
        a.put(3, &[10, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        a.be16(4, 80);
        a.str(6, &svc.scheduler);
        a.put(7, &[1, 0, 0, 0, 255, 255, 255, 255]);
        a.ne32(8, 60);
        a.ne32(9, u32::MAX);
    });
    w.begin(0x20, 2, 1, &[5, 1, 0, 0]);
    let d = Destination::masquerade("10.0.0.9".parse().unwrap(), 8080);
    w.attrs().nested(2, |a: &mut AttrWriter<'_>| {
        a.ne16(11, 2);
        a.put(1, &[10, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        a.be16(2, d.port);
        a.ne32(3, 0);
        a.ne32(4, 1);
        a.ne32(7, 3);
    });
    out.push(w.into_bytes());
    // A generic netlink controller answer and an rtnetlink link answer.
    let mut w = MessageWriter::new();
    w.begin(0x10, 0, 1, &[1, 2, 0, 0]);
    w.attrs().str(2, "IPVS");
    w.attrs().ne16(1, 0x20);
    w.begin(16, 2, 1, &[0, 0, 1, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    w.attrs().str(3, "switchyard-ipvs0");
    w.attrs().nested(18, |a| a.str(1, "dummy"));
    w.begin(20, 2, 1, &[10, 128, 0, 0, 3, 0, 0, 0]);
    w.attrs().put(2, &[0xfd; 16]);
    out.push(w.into_bytes());
    out
}

/// A seed with some bytes overwritten, cut, and maybe a length field lying.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds();
    (
        0..seeds.len(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(move |(i, flips, cut, do_cut)| {
            let mut data = seeds[i].clone();
            for (at, byte) in flips {
                let at = at.index(data.len());
                data[at] = byte;
            }
            if do_cut {
                data.truncate(cut.index(data.len() + 1));
            }
            data
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        parse_all(&data);
    }

    #[test]
    fn mutated_answers_never_panic(data in mutated()) {
        parse_all(&data);
    }
}

#[test]
fn the_seeds_parse() {
    let seeds = seeds();
    let flows: Vec<_> = messages(&seeds[0])
        .map(|m| decode_flow(m.unwrap().payload).unwrap())
        .collect();
    assert_eq!(flows.len(), 2);
    let nft: Vec<Message<'_>> = messages(&seeds[1]).map(Result::unwrap).collect();
    assert_eq!(decode_elements(&nft[0]).unwrap().len(), 3);
    assert_eq!(decode_set(&nft[1]).unwrap().name, "s");
    assert_eq!(error_code(&nft[2]).unwrap(), 2);
    assert_eq!(acked_seq(&nft[2]).unwrap(), 1);
    let ipvs: Vec<Message<'_>> = messages(&seeds[2]).map(Result::unwrap).collect();
    let svc_attr = attrs(ipvs[0].after_fixed(4).unwrap())
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(Service::decode(svc_attr.value).unwrap().timeout, 60);
    let dest_attr = attrs(ipvs[1].after_fixed(4).unwrap())
        .next()
        .unwrap()
        .unwrap();
    let status = DestinationStatus::decode(dest_attr.value, IpFamily::V4).unwrap();
    assert_eq!(status.active_conns, 3);
    let other: Vec<Message<'_>> = messages(&seeds[3]).map(Result::unwrap).collect();
    assert_eq!(decode_family_id(&other[0]).unwrap(), Some(0x20));
    assert!(rtnetlink::decode(&other[1]).is_ok());
}

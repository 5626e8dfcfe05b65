//! The connections IPVS carries that still need their virtual server, read from
//! `/proc/net/ip_vs_conn` of the engine's network namespace. IPVS's netlink API counts
//! connections per real server, but its inactive count mixes handshakes in progress
//! with closed connections waiting out TIME_WAIT (2 minutes); only the connection
//! table tells them apart.
//!
//! In flight: a TCP or SCTP connection IPVS scheduled and still carries, from the
//! client's SYN (`SYN_RECV`) through `ESTABLISHED` to the last FIN's ACK (`FIN_WAIT`,
//! `CLOSE_WAIT`, `LAST_ACK`); for SCTP from `INIT` to the shutdown. IPVS translates
//! every packet of such a connection from its own table; a packet that finds its
//! virtual server deleted is dropped and the entry expired (`expire_nodest_conn`), and
//! what happens to the connection's next packets then depends on timing (seen once in
//! three lane runs of the switch under load: one connection of ≈ 90 reset).
//!
//! Not in flight: closed connections (`TIME_WAIT`, `CLOSE`; SCTP `CLOSED`,
//! `REJECTED`), persistence templates (`NONE`), and `SYN_SENT`: IPVS records a SYN it
//! saw only in the server's direction, never scheduled, in that state for 2 minutes.
//! Measured in the VM lane: while iptables (nft) served after a switch, every new
//! connection through it left such an entry at the retired engine's VIP (6,091 seen in
//! 60 s, none ever leaving `SYN_SENT`), which kept the old servers draining forever.
//! UDP flows are not waited for, as upstream's graceful termination does not wait for
//! them: a client's next datagram starts a new flow through the engine now serving.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use switchyard_model::{EngineError, Protocol};
use switchyard_netlink::{ipvs::ServiceId, Netns};

/// Where the kernel lists IPVS connections (both families).
const CONNECTION_TABLE: &str = "/proc/net/ip_vs_conn";

/// The TCP states (`tcp_state_name_table`) of a connection IPVS carries.
const TCP_IN_FLIGHT: [&str; 6] = [
    "SYN_RECV",
    "SYNACK",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
];

/// The SCTP states (`sctp_state_name_table`) of a connection IPVS carries.
const SCTP_IN_FLIGHT: [&str; 10] = [
    "INIT1",
    "INIT",
    "COOKIE_SENT",
    "COOKIE_REPLIED",
    "COOKIE_WAIT",
    "COOKIE_ECHOED",
    "ESTABLISHED",
    "SHUTDOWN_SENT",
    "SHUTDOWN_RECEIVED",
    "SHUTDOWN_ACK_SENT",
];

/// The connections in flight per virtual server (address services only: a connection
/// names the address and port it was sent to, not a firewall mark).
pub fn in_flight(netns: Option<&str>) -> Result<BTreeMap<ServiceId, u64>, EngineError> {
    // `/proc/net` shows the namespace of the thread that opens it.
    let text = Netns::from_name(netns)
        .run(|| std::fs::read_to_string(CONNECTION_TABLE))?
        .map_err(|source| EngineError::Kernel {
            operation: format!("reading {CONNECTION_TABLE}"),
            source,
        })?;
    Ok(parse(&text))
}

/// Counts the in-flight connections of a connection table's text; skips the header and
/// any line it cannot read (a format of a future kernel must not stop a switch).
pub fn parse(text: &str) -> BTreeMap<ServiceId, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines().skip(1) {
        if let Some(id) = in_flight_service(line) {
            *out.entry(id).or_insert(0) += 1;
        }
    }
    out
}

/// `Pro FromIP FPrt ToIP TPrt DestIP DPrt State Expires [PEName PEData]`: IPv4
/// addresses as 8 hex digits, IPv6 ones in full colon form, ports as 4 hex digits.
fn in_flight_service(line: &str) -> Option<ServiceId> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [proto, _, _, to, to_port, _, _, state, ..] = fields.as_slice() else {
        return None;
    };
    let (protocol, carried): (Protocol, &[&str]) = match *proto {
        "TCP" => (Protocol::Tcp, &TCP_IN_FLIGHT),
        "SCTP" => (Protocol::Sctp, &SCTP_IN_FLIGHT),
        _ => return None,
    };
    if !carried.contains(state) {
        return None;
    }
    let port = u16::from_str_radix(to_port, 16).ok()?;
    Some(ServiceId::new(protocol, address(to)?, port))
}

fn address(field: &str) -> Option<IpAddr> {
    if field.contains(':') {
        field.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        u32::from_str_radix(field, 16)
            .ok()
            .map(|n| IpAddr::V4(Ipv4Addr::from(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as kernel 6.1 prints them (`ip_vs_conn_seq_show`).
    const TABLE: &str = "\
Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
TCP 0A000001 A1B2 0A60000A 0050 0A010001 1F90 ESTABLISHED     899
TCP 0A000001 A1B3 0A60000A 0050 0A010002 1F90 TIME_WAIT       119
TCP 0A000001 A1B4 0A60000A 0050 0A010002 1F90 SYN_RECV         59
TCP 0A000002 BDF5 0A60000A 0050 0A010002 1F90 SYN_SENT        119
TCP 0A000002 A1B5 0A60000B 01BB 0A010003 1F90 FIN_WAIT        119
TCP 0A000003 0000 0A60000B 0000 0A010003 0000 NONE          10799
UDP 0A000001 C350 0A60000C 0035 0A010004 0035 UDP             299
SCTP 0A000001 0BB8 0A60000D 0BB8 0A010005 0BB8 ESTABLISHED     899
SCTP 0A000001 0BB9 0A60000D 0BB8 0A010005 0BB8 CLOSED           9
TCP 2001:0db8:0000:0000:0000:0000:0000:0002 D431 fd00:0000:0000:0000:0000:0000:0000:000a 0050 fd10:0000:0000:0000:0000:0000:0000:0001 1F90 CLOSE_WAIT       59
TCP garbage
";

    #[test]
    fn counts_connections_in_flight_per_virtual_server() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let want = BTreeMap::from([
            (ServiceId::new(Protocol::Tcp, ip("10.96.0.10"), 80), 2),
            (ServiceId::new(Protocol::Tcp, ip("10.96.0.11"), 443), 1),
            (ServiceId::new(Protocol::Sctp, ip("10.96.0.13"), 3000), 1),
            (ServiceId::new(Protocol::Tcp, ip("fd00::a"), 80), 1),
        ]);
        assert_eq!(parse(TABLE), want);
    }

    #[test]
    fn an_empty_table_has_nothing_in_flight() {
        assert!(parse(
            "Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n"
        )
        .is_empty());
        assert!(parse("").is_empty());
    }
}

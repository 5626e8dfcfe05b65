//! Reading one service port back from the kernel (`switchyard explain`): what the
//! engine would ask for the port's plan ([`port_wants`]) compared with the kernel:
//!
//! - each virtual server by address (one `GET_SERVICE` each), its scheduler, flags and
//!   persistence, and its real servers (one dump each): every planned backend at
//!   weight 1, nothing else but real servers draining at weight 0 (graceful
//!   termination: expected, not a disagreement);
//! - the port's VIPs on the dummy interface;
//! - the helper table: the elements keyed by each destination (`no-endpoint`,
//!   `firewall`, `short-circuit` with their verdicts, the masquerade and NodePort sets),
//!   the shared elements (`cluster-ips`, `hairpin`), and the rule counts of the port's
//!   `fw-H` / `sc-H` chains.
//!
//! Firewall-mark virtual servers (the short circuit under `externalTrafficPolicy:
//! Local`) are not compared: their mark follows the agent's numbering of the port,
//! which a model built by another process does not know; the `short-circuit` element
//! that leads to them is.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use switchyard_model::{IpFamily, KernelObject, PortInspection};
use switchyard_netlink::{
    ipvs::{Service, ServiceId},
    nftables::NftSocket,
    NetlinkError,
};

use crate::{
    helper::{Key, SetKind, Verdict},
    servers::{same_service, service_of, Scheduler},
    verify::table_family,
    wants::{PortWants, Shared},
};

/// A virtual server as read: the service and its real servers' weights.
pub type ReadServer = (Service, BTreeMap<(IpAddr, u16), u32>);

/// Compares the wanted address-named virtual servers with what was read (`None`: no
/// such virtual server).
pub fn compare_servers(
    wants: &PortWants,
    scheduler: &Scheduler,
    kernel: &BTreeMap<ServiceId, Option<ReadServer>>,
    out: &mut PortInspection,
) {
    for (id, _, frontend) in &wants.servers {
        if matches!(id, ServiceId::Fwmark { .. }) {
            continue;
        }
        let place = server_text(id);
        let Some(Some((service, dests))) = kernel.get(id) else {
            out.differs(format!("virtual server {place} is missing"));
            continue;
        };
        let reals: Vec<String> = dests
            .iter()
            .map(|((ip, port), w)| format!("{} weight {w}", std::net::SocketAddr::new(*ip, *port)))
            .collect();
        let mut detail = format!("{} {}", service.scheduler, persistence_text(service));
        detail.push_str(&format!(
            "; real servers: {}",
            if reals.is_empty() {
                "none".to_string()
            } else {
                reals.join(", ")
            }
        ));
        out.found(KernelObject::new("virtual server", &place, detail));
        let want = service_of(*id, frontend, scheduler);
        if !same_service(service, &want) {
            out.differs(format!(
                "virtual server {place}: scheduler {} {}, the plan {} {}",
                service.scheduler,
                persistence_text(service),
                want.scheduler,
                persistence_text(&want)
            ));
        }
        let wanted: BTreeSet<(IpAddr, u16)> = frontend.backends.iter().copied().collect();
        for b in &wanted {
            match dests.get(b) {
                Some(1) => {}
                Some(w) => out.differs(format!(
                    "virtual server {place}: real server {} has weight {w}, the plan 1",
                    std::net::SocketAddr::new(b.0, b.1)
                )),
                None => out.differs(format!(
                    "virtual server {place} lacks real server {}",
                    std::net::SocketAddr::new(b.0, b.1)
                )),
            }
        }
        for (b, w) in dests.iter().filter(|(b, _)| !wanted.contains(b)) {
            if *w != 0 {
                out.differs(format!(
                    "virtual server {place}: real server {} (weight {w}) is not in the plan",
                    std::net::SocketAddr::new(b.0, b.1)
                ));
            }
        }
    }
}

fn persistence_text(s: &Service) -> String {
    if s.is_persistent() {
        format!("persistent {} s", s.timeout)
    } else {
        "not persistent".to_string()
    }
}

fn server_text(id: &ServiceId) -> String {
    match id {
        ServiceId::Addr {
            protocol,
            addr,
            port,
        } => {
            let p = match protocol {
                6 => "TCP",
                17 => "UDP",
                132 => "SCTP",
                _ => "?",
            };
            format!("{p} {}", std::net::SocketAddr::new(*addr, *port))
        }
        ServiceId::Fwmark { family, mark } => format!("FWM {mark:#x} {family}"),
    }
}

/// Reads the port's virtual servers (`None`: absent).
pub fn read_servers(
    ipvs: &mut switchyard_netlink::ipvs::Ipvs,
    wants: &PortWants,
) -> Result<BTreeMap<ServiceId, Option<ReadServer>>, NetlinkError> {
    let mut out = BTreeMap::new();
    for (id, _, _) in &wants.servers {
        if matches!(id, ServiceId::Fwmark { .. }) {
            continue;
        }
        let read = match ipvs.service(id)? {
            None => None,
            Some(service) => {
                let dests = ipvs
                    .destinations(id)?
                    .into_iter()
                    .map(|d| {
                        (
                            (d.destination.addr, d.destination.port),
                            d.destination.weight,
                        )
                    })
                    .collect();
                Some((service, dests))
            }
        };
        out.insert(*id, read);
    }
    Ok(out)
}

/// The verdict chain a lookup answers for `value` (`None` for drop and plain sets).
fn verdict_chain(value: &Verdict) -> Option<String> {
    match value {
        Verdict::Jump(c) => Some(c.clone()),
        Verdict::Reject => Some(crate::helper::REJECT_CHAIN.to_string()),
        Verdict::None | Verdict::Drop => None,
    }
}

/// The helper table's elements and chains of the port.
pub fn compare_helper(
    nft: &mut NftSocket,
    table: &str,
    wants: &PortWants,
    out: &mut PortInspection,
) -> Result<(), NetlinkError> {
    let mut elements: Vec<(IpFamily, SetKind, Key, Verdict)> = Vec::new();
    for (id, _, frontend) in &wants.servers {
        if let ServiceId::Addr { addr, port, .. } = *id {
            let key = Key::Frontend(addr, frontend.protocol, port);
            for (kind, value) in &frontend.sets {
                elements.push((IpFamily::of(&addr), *kind, key, value.clone()));
            }
        }
    }
    for s in &wants.shared {
        if let Shared::Element(family, kind, key) = s {
            elements.push((*family, *kind, *key, Verdict::None));
        }
    }
    for (family, kind, key, value) in elements {
        let place = format!("{family} {table} {}", kind.name());
        let found =
            nft.elements_present(table_family(family), table, kind.name(), &[key.bytes()])?;
        match found.into_iter().next() {
            None => out.differs(format!("{place} lacks {key}")),
            Some(chain) => {
                let detail = chain
                    .as_ref()
                    .map(|c| format!("goto/jump {c}"))
                    .unwrap_or_default();
                out.found(KernelObject::new(
                    "element",
                    format!("{place} {key}"),
                    detail,
                ));
                if kind.is_map() && chain != verdict_chain(&value) {
                    out.differs(format!(
                        "{place} maps {key} to {chain:?}, the plan to {value}"
                    ));
                }
            }
        }
    }
    for chain in &wants.chains {
        let fam = table_family(chain.family);
        let counts = nft
            .rule_counts(fam, table, Some(&chain.name))?
            .unwrap_or_default();
        let place = format!("{} {table} {}", chain.family, chain.name);
        match counts.get(&chain.name) {
            None if !chain.rules.is_empty() => {
                out.differs(format!("chain {place} is missing or empty"))
            }
            n => {
                let n = n.copied().unwrap_or(0);
                out.found(KernelObject::new("chain", &place, format!("{n} rules")));
                if n != chain.rules.len() {
                    out.differs(format!(
                        "chain {place} has {n} rules, the plan {}",
                        chain.rules.len()
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use switchyard_model::{
        test_util::{ep, model, service},
        Protocol,
    };

    use super::*;
    use crate::wants::port_wants;

    fn read(wants: &PortWants) -> BTreeMap<ServiceId, Option<ReadServer>> {
        wants
            .servers
            .iter()
            .map(|(id, _, f)| {
                let service = service_of(*id, f, &Scheduler::default());
                let dests = f.backends.iter().map(|b| (*b, 1)).collect();
                (*id, Some((service, dests)))
            })
            .collect()
    }

    #[test]
    fn servers_agree_and_each_difference_is_named() {
        let m = model(vec![service(
            "web",
            &["172.30.0.1"],
            80,
            vec![ep("10.0.0.5", 8080, true), ep("10.0.0.6", 8080, false)],
        )]);
        let plan = m.services.values().next().unwrap();
        let wants = port_wants(plan, &[], false);
        let sched = Scheduler::default();
        let mut kernel = read(&wants);
        let mut out = PortInspection::new("ipvs".into());
        compare_servers(&wants, &sched, &kernel, &mut out);
        assert!(out.agrees(), "{:?}", out.disagreements);
        assert_eq!(out.objects.len(), 1);

        let id = ServiceId::new(Protocol::Tcp, "172.30.0.1".parse().unwrap(), 80);
        let (_, dests) = kernel.get_mut(&id).unwrap().as_mut().unwrap();
        dests.remove(&("10.0.0.6".parse().unwrap(), 8080));
        // A draining real server is expected; an active stray one is not.
        dests.insert(("10.0.0.7".parse().unwrap(), 8080), 0);
        let mut out = PortInspection::new("ipvs".into());
        compare_servers(&wants, &sched, &kernel, &mut out);
        assert_eq!(
            out.disagreements,
            ["virtual server TCP 172.30.0.1:80 lacks real server 10.0.0.6:8080"]
        );
        let (_, dests) = kernel.get_mut(&id).unwrap().as_mut().unwrap();
        dests.insert(("10.0.0.7".parse().unwrap(), 8080), 1);
        let (service, _) = kernel.get_mut(&id).unwrap().as_mut().unwrap();
        service.scheduler = "wrr".into();
        let mut out = PortInspection::new("ipvs".into());
        compare_servers(&wants, &sched, &kernel, &mut out);
        assert_eq!(out.disagreements.len(), 3, "{:?}", out.disagreements);

        kernel.insert(id, None);
        let mut out = PortInspection::new("ipvs".into());
        compare_servers(&wants, &sched, &kernel, &mut out);
        assert_eq!(
            out.disagreements,
            ["virtual server TCP 172.30.0.1:80 is missing"]
        );
    }
}

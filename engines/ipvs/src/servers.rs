//! Writing virtual and real servers: bringing one virtual server from what the kernel
//! holds ([`KernelServer`], from the record or a dump) to its winning claim with the
//! fewest IPVS operations, graceful termination of real servers, and reading the
//! kernel's servers back for adoption.
//!
//! Graceful termination, as upstream: a TCP or SCTP real server that no longer serves
//! goes to weight 0 (no new connections) and is deleted by [`sweep_drained`] (run by
//! every drift check, i.e. every syncPeriod, and every full sync; not by partial syncs,
//! which stay one operation per changed endpoint) once it has no active or inactive
//! connection, or once it has drained for the engine's bound; a UDP one is deleted at once (its conntrack flows are the runner's stale-flow
//! cleaner's). A draining real server that serves again gets weight 1 back.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use switchyard_model::Protocol;
use switchyard_netlink::{
    ipvs::{Destination, Ipvs, Service, ServiceId, SVC_F_HASHED},
    NetlinkError,
};

use crate::{
    record::{KernelDest, KernelServer},
    wants::Frontend,
};

/// The scheduler every virtual server gets (`ipvs.scheduler` and its flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scheduler {
    /// `rr`, `wrr`, `lc`, `wlc`, `sh`, `mh`...
    pub name: String,
    /// `SVC_F_SCHED1..3` bits (`sh-fallback`, `sh-port`, `mh-fallback`, `mh-port`).
    pub flags: u32,
}

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler {
            name: "rr".to_string(),
            flags: 0,
        }
    }
}

/// The virtual server a frontend asks for.
pub fn service_of(id: ServiceId, frontend: &Frontend, scheduler: &Scheduler) -> Service {
    let service = Service::new(id, &scheduler.name);
    let mut service = match frontend.persistence {
        Some(timeout) => service.persistent(timeout),
        None => service,
    };
    service.flags |= scheduler.flags;
    service
}

/// Whether two services agree on what a sync sets (the kernel adds `HASHED`).
pub fn same_service(a: &Service, b: &Service) -> bool {
    a.id == b.id
        && a.scheduler == b.scheduler
        && a.flags & !SVC_F_HASHED == b.flags & !SVC_F_HASHED
        && a.timeout == b.timeout
        && a.netmask == b.netmask
}

/// IPVS operations, counted (a one-endpoint change must be one).
pub struct Writer<'a> {
    pub ipvs: &'a mut Ipvs,
    pub scheduler: &'a Scheduler,
    pub now: Instant,
    pub operations: usize,
}

impl Writer<'_> {
    /// Brings virtual server `id` to `want` (`None`: deleted), starting from what
    /// `kernel` says is there, and records the result in `kernel`.
    pub fn server(
        &mut self,
        id: ServiceId,
        want: Option<&Frontend>,
        kernel: &mut BTreeMap<ServiceId, KernelServer>,
    ) -> Result<(), NetlinkError> {
        let Some(frontend) = want else {
            if kernel.remove(&id).is_some() {
                self.operations += 1;
                return match self.ipvs.delete_service(&id) {
                    Err(e) if e.is_kernel(nix::errno::Errno::ESRCH) => Ok(()),
                    other => other,
                };
            }
            return Ok(());
        };
        let service = service_of(id, frontend, self.scheduler);
        match kernel.get_mut(&id) {
            None => {
                self.operations += 1;
                self.ipvs.add_service(&service)?;
                kernel.insert(
                    id,
                    KernelServer {
                        service,
                        dests: BTreeMap::new(),
                    },
                );
            }
            Some(k) if !same_service(&k.service, &service) => {
                self.operations += 1;
                self.ipvs.update_service(&service)?;
                k.service = service;
            }
            Some(_) => {}
        }
        let k = kernel.get_mut(&id).expect("present now");
        self.dests(&id, frontend, &mut k.dests)
    }

    /// The real servers of one virtual server.
    fn dests(
        &mut self,
        id: &ServiceId,
        frontend: &Frontend,
        dests: &mut BTreeMap<(IpAddr, u16), KernelDest>,
    ) -> Result<(), NetlinkError> {
        for &(ip, port) in &frontend.backends {
            match dests.get(&(ip, port)) {
                None => {
                    self.operations += 1;
                    self.ipvs
                        .add_destination(id, &Destination::masquerade(ip, port))?;
                }
                Some(d) if d.weight != 1 => {
                    self.operations += 1;
                    self.ipvs
                        .update_destination(id, &Destination::masquerade(ip, port))?;
                }
                Some(_) => continue,
            }
            dests.insert(
                (ip, port),
                KernelDest {
                    weight: 1,
                    draining_since: None,
                },
            );
        }
        let gone: Vec<(IpAddr, u16)> = dests
            .keys()
            .filter(|k| !frontend.backends.contains(k))
            .copied()
            .collect();
        for (ip, port) in gone {
            let d = dests.get_mut(&(ip, port)).expect("listed above");
            if frontend.protocol == Protocol::Udp {
                self.operations += 1;
                self.ipvs.delete_destination(id, &ip, port)?;
                dests.remove(&(ip, port));
            } else if d.weight != 0 {
                self.operations += 1;
                let mut drained = Destination::masquerade(ip, port);
                drained.weight = 0;
                self.ipvs.update_destination(id, &drained)?;
                *d = KernelDest {
                    weight: 0,
                    draining_since: Some(self.now),
                };
            } else if d.draining_since.is_none() {
                d.draining_since = Some(self.now);
            }
        }
        Ok(())
    }
}

/// Deletes the draining real servers that have no connection left, or have drained
/// for `limit`; returns how many went. Those that started draining at `now` (in the
/// sync calling this) wait for the next check: a one-endpoint change stays one
/// operation, and the idle check comes at the next sync or drift check.
pub fn sweep_drained(
    ipvs: &mut Ipvs,
    kernel: &mut BTreeMap<ServiceId, KernelServer>,
    now: Instant,
    limit: Duration,
) -> Result<usize, NetlinkError> {
    let mut removed = 0;
    for (id, server) in kernel.iter_mut() {
        if !server
            .dests
            .values()
            .any(|d| d.draining_since.is_some_and(|t| t < now))
        {
            continue;
        }
        let live = ipvs.destinations(id)?;
        let draining: Vec<((IpAddr, u16), Instant)> = server
            .dests
            .iter()
            .filter_map(|(k, d)| d.draining_since.map(|t| (*k, t)))
            .filter(|(_, since)| *since < now)
            .collect();
        for ((ip, port), since) in draining {
            let conns = live
                .iter()
                .find(|s| s.destination.addr == ip && s.destination.port == port)
                .map(|s| s.active_conns + s.inactive_conns);
            let idle = conns.is_none_or(|n| n == 0);
            if idle || now.duration_since(since) >= limit {
                if conns.is_some() {
                    match ipvs.delete_destination(id, &ip, port) {
                        Err(e) if e.is_kernel(nix::errno::Errno::ENOENT) => {}
                        other => other?,
                    }
                }
                server.dests.remove(&(ip, port));
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// A virtual server read from the kernel, with its real servers; weight-0 ones are
/// taken as draining since `now`.
pub fn read_server(
    ipvs: &mut Ipvs,
    service: Service,
    now: Instant,
) -> Result<KernelServer, NetlinkError> {
    let dests = ipvs
        .destinations(&service.id)?
        .into_iter()
        .map(|s| {
            let d = s.destination;
            let draining_since = (d.weight == 0).then_some(now);
            (
                (d.addr, d.port),
                KernelDest {
                    weight: d.weight,
                    draining_since,
                },
            )
        })
        .collect();
    Ok(KernelServer { service, dests })
}

/// The address of an address-named virtual server.
pub fn service_addr(id: &ServiceId) -> Option<IpAddr> {
    match id {
        ServiceId::Addr { addr, .. } => Some(*addr),
        ServiceId::Fwmark { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_carry_persistence_and_scheduler_flags() {
        let id = ServiceId::new(Protocol::Tcp, "10.96.0.1".parse().unwrap(), 80);
        let fe = Frontend {
            protocol: Protocol::Tcp,
            backends: vec![],
            persistence: Some(10800),
            sets: vec![],
        };
        let sched = Scheduler {
            name: "sh".into(),
            flags: switchyard_netlink::ipvs::SVC_F_SCHED1,
        };
        let s = service_of(id, &fe, &sched);
        assert!(s.is_persistent());
        assert_eq!(s.timeout, 10800);
        assert_eq!(s.scheduler, "sh");
        let mut hashed = s.clone();
        hashed.flags |= SVC_F_HASHED;
        assert!(same_service(&s, &hashed));
        let plain = service_of(
            id,
            &Frontend {
                persistence: None,
                ..fe
            },
            &Scheduler::default(),
        );
        assert!(!same_service(&s, &plain));
    }
}

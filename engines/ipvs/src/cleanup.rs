//! `cleanup`: removes the virtual servers that are ours (see [`crate::ownership`]),
//! the dummy interface and the helper table, and nothing else. On a node where
//! nothing of ours is left (no interface, no table) IPVS is not even opened, so a
//! node running another engine never gets `ip_vs` loaded by a leftover check.
//!
//! `retire`: the same once another engine serves the node (a live switch, or leftovers
//! at start), except for what connections in flight still need (see
//! [`crate::connections`]): a virtual server carrying one stays, with its VIP on the
//! interface, until they end; everything else goes at once. The helper table's hooks
//! are emptied (the serving engine decides masquerading and filtering of new
//! connections; the in-flight ones keep their conntrack NAT), its sets stay, as they
//! record which servers are ours.

use std::{collections::BTreeSet, net::IpAddr};

use switchyard_model::{EngineError, IpFamily, Retirement};
use switchyard_netlink::{
    ipvs::{Ipvs, ServiceId},
    nftables::{NftSocket, TableFamily},
    rtnetlink::Rtnl,
    Netns,
};

use crate::{
    connections, dummy,
    engine::{excluded, IpvsEngine},
    helper::BASE_CHAINS,
    options::IpvsOptions,
    ownership::Owned,
};

/// What of ours the kernel holds.
struct Found {
    rtnl: Rtnl,
    nft: NftSocket,
    /// The dummy interface's index.
    index: Option<u32>,
    owned: Owned,
    /// The families with our helper table.
    tables: Vec<IpFamily>,
}

/// What of ours the kernel holds; `None` when there is nothing (no interface, no table).
fn find(options: &IpvsOptions) -> Result<Option<Found>, EngineError> {
    let netns = Netns::from_name(options.netns.as_deref());
    let mut rtnl = Rtnl::open(&netns)?;
    let mut nft = NftSocket::open(options.netns.as_deref())?;
    let index = rtnl.link_index(&options.interface)?;
    let mut owned = Owned::read(&mut nft, &options.table, &IpFamily::ALL)?;
    if let Some(index) = index {
        owned.vips = dummy::vips(&mut rtnl, index)?;
    }
    let mut tables = Vec::new();
    for f in IpFamily::ALL {
        if nft.tables(family(f))?.contains(&options.table) {
            tables.push(f);
        }
    }
    if index.is_none() && tables.is_empty() {
        return Ok(None);
    }
    Ok(Some(Found {
        rtnl,
        nft,
        index,
        owned,
        tables,
    }))
}

/// IPVS in `options`' namespace, when the kernel has it (without, nothing of ours is
/// in it either).
fn open_ipvs(options: &IpvsOptions) -> Result<Option<Ipvs>, EngineError> {
    match Ipvs::open(&Netns::from_name(options.netns.as_deref())) {
        Ok(ipvs) => Ok(Some(ipvs)),
        Err(e) if e.errno() == Some(nix::errno::Errno::ENOENT as i32) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Our virtual servers, as `found` proves them ours.
fn our_services(
    ipvs: &mut Ipvs,
    found: &Found,
    options: &IpvsOptions,
) -> Result<Vec<ServiceId>, EngineError> {
    Ok(ipvs
        .services()?
        .into_iter()
        .map(|s| s.id)
        .filter(|id| found.owned.owns(id) && !excluded(&options.exclude_cidrs, id))
        .collect())
}

pub async fn cleanup(engine: &mut IpvsEngine) -> Result<(), EngineError> {
    let options = engine.options.clone();
    let Some(mut found) = find(&options)? else {
        return Ok(());
    };
    if !found.owned.is_empty() {
        if let Some(mut ipvs) = open_ipvs(&options)? {
            for id in our_services(&mut ipvs, &found, &options)? {
                ipvs.delete_service(&id)?;
            }
        }
    }
    remove_interface_and_table(&mut found, &options)
}

pub async fn retire(engine: &mut IpvsEngine) -> Result<Retirement, EngineError> {
    let options = engine.options.clone();
    let Some(mut found) = find(&options)? else {
        return Ok(Retirement::Done);
    };
    let mut kept = BTreeSet::new();
    let mut carried = 0;
    if !found.owned.is_empty() {
        if let Some(mut ipvs) = open_ipvs(&options)? {
            let in_flight = connections::in_flight(options.netns.as_deref())?;
            let ours = our_services(&mut ipvs, &found, &options)?;
            // A connection of a firewall-mark server names its packets' address, not
            // the mark: those matching no address server of ours keep such servers.
            let unmatched: u64 = in_flight
                .iter()
                .filter(|(id, _)| !ours.contains(id))
                .map(|(_, n)| n)
                .sum();
            for id in ours {
                let n = match id {
                    ServiceId::Addr { .. } => in_flight.get(&id).copied().unwrap_or(0),
                    ServiceId::Fwmark { .. } => unmatched,
                };
                if n == 0 {
                    ipvs.delete_service(&id)?;
                } else {
                    kept.insert(id);
                }
            }
            let marks_kept = kept.iter().any(|id| matches!(id, ServiceId::Fwmark { .. }));
            let at_addresses: u64 = kept.iter().filter_map(|id| in_flight.get(id)).sum();
            carried = at_addresses + if marks_kept { unmatched } else { 0 };
        }
    }
    if kept.is_empty() {
        remove_interface_and_table(&mut found, &options)?;
        return Ok(Retirement::Done);
    }
    if let Some(index) = found.index {
        let needed: BTreeSet<IpAddr> = kept
            .iter()
            .filter_map(|id| match id {
                ServiceId::Addr { addr, .. } => Some(*addr),
                ServiceId::Fwmark { .. } => None,
            })
            .collect();
        for vip in found.owned.vips.difference(&needed) {
            found.rtnl.delete_address(index, dummy::vip_address(*vip))?;
        }
    }
    let mut batch = found.nft.batch();
    for &f in &found.tables {
        for chain in BASE_CHAINS {
            batch.flush_chain(family(f), &options.table, chain);
        }
    }
    found.nft.commit(batch)?;
    Ok(Retirement::Draining {
        connections: carried,
    })
}

fn remove_interface_and_table(found: &mut Found, options: &IpvsOptions) -> Result<(), EngineError> {
    if found.index.is_some() {
        found.rtnl.delete_link(&options.interface)?;
    }
    let mut batch = found.nft.batch();
    for f in IpFamily::ALL {
        batch.add_table(family(f), &options.table);
        batch.delete_table(family(f), &options.table);
    }
    found.nft.commit(batch)?;
    Ok(())
}

fn family(f: IpFamily) -> TableFamily {
    match f {
        IpFamily::V4 => TableFamily::Ip,
        IpFamily::V6 => TableFamily::Ip6,
    }
}

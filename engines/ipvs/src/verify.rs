//! `verify`: does the kernel still hold what the engine applied? Reads the dummy
//! interface's VIPs, the NodePort addresses, every virtual server (one dump), the
//! real servers of a rotating sample of them ([`SAMPLE`] per call: their dump is one
//! request per virtual server), and the helper table's element and rule counts, and
//! names the first difference. Also the engine's housekeeping: draining real servers
//! whose connections are gone are deleted here between syncs.

use std::{collections::BTreeMap, time::Instant};

use switchyard_model::{Drift, EngineError, IpFamily, NodeModel};
use switchyard_netlink::{ipvs::ServiceId, nftables::TableFamily};

use crate::{
    dummy,
    engine::IpvsEngine,
    helper::{self, SetKind},
    ownership::Owned,
    record::Record,
    servers::{same_service, sweep_drained},
};

/// Virtual servers whose real servers one `verify` reads.
pub const SAMPLE: usize = 64;

pub(crate) fn table_family(family: IpFamily) -> TableFamily {
    match family {
        IpFamily::V4 => TableFamily::Ip,
        IpFamily::V6 => TableFamily::Ip6,
    }
}

pub fn verify(engine: &mut IpvsEngine, model: &NodeModel) -> Result<Drift, EngineError> {
    let Some(mut record) = engine.record.take() else {
        return Ok(Drift::Found(
            "no successful sync since start, failure or cleanup".to_string(),
        ));
    };
    let result = check(engine, &mut record, model);
    engine.record = Some(record);
    result
}

fn check(
    engine: &mut IpvsEngine,
    record: &mut Record,
    model: &NodeModel,
) -> Result<Drift, EngineError> {
    engine.open()?;
    for step in [links, servers, helper_table] {
        if let Some(drift) = step(engine, record, model)? {
            return Ok(Drift::Found(drift));
        }
    }
    let ipvs = engine.ipvs.as_mut().expect("opened");
    sweep_drained(
        ipvs,
        &mut record.kernel,
        Instant::now(),
        engine.options.drain_limit,
    )?;
    Ok(Drift::None)
}

/// The dummy interface, its VIPs, and the NodePort addresses.
fn links(
    engine: &mut IpvsEngine,
    record: &mut Record,
    model: &NodeModel,
) -> Result<Option<String>, EngineError> {
    let name = engine.options.interface.clone();
    let rtnl = engine.rtnl.as_mut().expect("opened");
    let Some(index) = rtnl.link_index(&name)? else {
        return Ok(Some(format!("interface {name} is gone")));
    };
    let vips = dummy::vips(rtnl, index)?;
    let wanted = record.addresses();
    if vips != wanted {
        let missing: Vec<_> = wanted.difference(&vips).collect();
        let extra: Vec<_> = vips.difference(&wanted).collect();
        return Ok(Some(format!(
            "{name}: VIPs missing {missing:?}, unexpected {extra:?}"
        )));
    }
    let node = dummy::node_port_addresses(rtnl, Some(index), &model.node_port_addresses)?;
    if node != engine.node_addrs {
        return Ok(Some(format!(
            "NodePort addresses changed from {:?} to {node:?}",
            engine.node_addrs
        )));
    }
    Ok(None)
}

/// Every virtual server, and the real servers of a sample.
fn servers(
    engine: &mut IpvsEngine,
    record: &mut Record,
    _: &NodeModel,
) -> Result<Option<String>, EngineError> {
    let ipvs = engine.ipvs.as_mut().expect("opened");
    let dumped: BTreeMap<ServiceId, _> = ipvs.services()?.into_iter().map(|s| (s.id, s)).collect();
    for (id, k) in &record.kernel {
        match dumped.get(id) {
            None => return Ok(Some(format!("virtual server {id:?} is gone"))),
            Some(s) if !same_service(s, &k.service) => {
                return Ok(Some(format!("virtual server {id:?} changed: {s:?}")))
            }
            Some(_) => {}
        }
    }
    let owned = Owned {
        vips: record.addresses(),
        ..Owned::default()
    };
    if let Some(id) = dumped
        .keys()
        .find(|id| owned.owns(id) && !record.kernel.contains_key(id))
    {
        return Ok(Some(format!(
            "unexpected virtual server {id:?} at a VIP of ours"
        )));
    }
    let ids: Vec<ServiceId> = record.kernel.keys().copied().collect();
    if ids.is_empty() {
        return Ok(None);
    }
    let start = engine.verify_cursor % ids.len();
    engine.verify_cursor = start + SAMPLE;
    for id in ids.iter().cycle().skip(start).take(SAMPLE.min(ids.len())) {
        let live: BTreeMap<_, u32> = ipvs
            .destinations(id)?
            .into_iter()
            .map(|d| {
                (
                    (d.destination.addr, d.destination.port),
                    d.destination.weight,
                )
            })
            .collect();
        let applied: BTreeMap<_, u32> = record.kernel[id]
            .dests
            .iter()
            .map(|(k, d)| (*k, d.weight))
            .collect();
        if live != applied {
            return Ok(Some(format!(
                "real servers of {id:?}: kernel {live:?}, applied {applied:?}"
            )));
        }
    }
    Ok(None)
}

/// The helper table: element counts of every set, rule counts of every chain.
fn helper_table(
    engine: &mut IpvsEngine,
    record: &mut Record,
    _: &NodeModel,
) -> Result<Option<String>, EngineError> {
    let table = engine.options.table.clone();
    let elements = record.elements();
    let nft = engine.nft.as_mut().expect("opened");
    for rules in &engine.node_rules {
        let family = rules.family;
        let fam = table_family(family);
        for kind in SetKind::ALL {
            let want = elements
                .iter()
                .filter(|(f, e)| *f == family && e.set == kind)
                .count();
            match nft.element_count(fam, &table, kind.name())? {
                None => {
                    return Ok(Some(format!(
                        "{family} table {table}: set {} is gone",
                        kind.name()
                    )))
                }
                Some(n) if n != want => {
                    return Ok(Some(format!(
                        "{family} table {table}: {} has {n} elements, {want} applied",
                        kind.name()
                    )))
                }
                Some(_) => {}
            }
        }
        let Some(counts) = nft.rule_counts(fam, &table, None)? else {
            return Ok(Some(format!("{family} table {table} is gone")));
        };
        let mut want: Vec<(String, usize)> = helper::text::fixed_chains(rules)
            .into_iter()
            .map(|c| (c.name.to_string(), c.rules.len()))
            .collect();
        want.extend(
            record
                .chains
                .values()
                .filter(|c| c.family == family)
                .map(|c| (c.name.clone(), c.rules.len())),
        );
        for (chain, n) in want {
            let got = counts.get(&chain).copied().unwrap_or(0);
            if got != n {
                return Ok(Some(format!(
                    "{family} table {table}: chain {chain} has {got} rules, {n} applied"
                )));
            }
        }
    }
    Ok(None)
}

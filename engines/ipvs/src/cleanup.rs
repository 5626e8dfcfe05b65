//! `cleanup`: removes the virtual servers that are ours (see [`crate::ownership`]),
//! the dummy interface and the helper table, and nothing else. On a node where
//! nothing of ours is left (no interface, no table) IPVS is not even opened, so a
//! node running another engine never gets `ip_vs` loaded by a leftover check.

use switchyard_model::{EngineError, IpFamily};
use switchyard_netlink::{
    ipvs::Ipvs,
    nftables::{NftSocket, TableFamily},
    rtnetlink::Rtnl,
    Netns,
};

use crate::{
    dummy,
    engine::{excluded, IpvsEngine},
    ownership::Owned,
};

pub async fn cleanup(engine: &mut IpvsEngine) -> Result<(), EngineError> {
    let options = engine.options.clone();
    let netns = Netns::from_name(options.netns.as_deref());
    let mut rtnl = Rtnl::open(&netns)?;
    let mut nft = NftSocket::open(options.netns.as_deref())?;
    let index = rtnl.link_index(&options.interface)?;
    let mut owned = Owned::read(&mut nft, &options.table, &IpFamily::ALL)?;
    if let Some(index) = index {
        owned.vips = dummy::vips(&mut rtnl, index)?;
    }
    let table_present = IpFamily::ALL
        .iter()
        .map(|&f| nft.tables(family(f)))
        .collect::<Result<Vec<_>, _>>()?
        .iter()
        .any(|names| names.contains(&options.table));
    if index.is_none() && !table_present {
        return Ok(());
    }
    if !owned.is_empty() {
        match Ipvs::open(&netns) {
            Ok(mut ipvs) => {
                for s in ipvs.services()? {
                    if owned.owns(&s.id) && !excluded(&options.exclude_cidrs, &s.id) {
                        ipvs.delete_service(&s.id)?;
                    }
                }
            }
            // No IPVS here: no virtual server of ours either.
            Err(e) if e.errno() == Some(nix::errno::Errno::ENOENT as i32) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if index.is_some() {
        rtnl.delete_link(&options.interface)?;
    }
    let mut batch = nft.batch();
    for f in IpFamily::ALL {
        batch.add_table(family(f), &options.table);
        batch.delete_table(family(f), &options.table);
    }
    nft.commit(batch)?;
    Ok(())
}

fn family(f: IpFamily) -> TableFamily {
    match f {
        IpFamily::V4 => TableFamily::Ip,
        IpFamily::V6 => TableFamily::Ip6,
    }
}

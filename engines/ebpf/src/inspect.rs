//! Reading one service port back from the maps (`switchyard explain`), without loading
//! or attaching anything: the pinned maps are opened from bpffs, read whole (one batched
//! lookup per map, as `verify` reads them), and compared with what the engine would
//! write for the port's plan (`encode::encode_family`) on this node's NodePort
//! addresses:
//!
//! - every service entry the plan wants (`sy_services`: VIP, port, protocol, scope),
//!   with its action, backend set, masquerade, source-range and affinity flags; an entry
//!   of another service id for one of the port's keys; entries of the port's id the
//!   plan does not want;
//! - the port's backend sets (`sy_backends`), compared as sets of endpoints;
//! - its source ranges (`sy_src_ranges`).
//!
//! The port's service id is the one the kernel's entries carry: ids are stable within
//! an agent's life, so the agent's may differ from the id a fresh model gives.

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    path::Path,
};

use aya::maps::{HashMap as BpfHashMap, LpmTrie, Map, MapData};
use switchyard_model::{FamilyPlan, KernelObject, NodeModel, PortInspection, ServicePortPlan};

use crate::{
    dataplane::{map_err, ServicePort},
    encode::{encode_family, renumber, Shadows},
    error::EbpfError,
    loader::DataplaneConfig,
    node,
    options::EbpfOptions,
    readback::MapsRef,
    service::{Action, Backend, Scope, ServiceEntry, ServiceKey},
};

/// The maps, opened from their pins.
struct PinnedMaps {
    services: BpfHashMap<MapData, crate::layout::SvcKey, crate::layout::SvcValue>,
    backends: BpfHashMap<MapData, crate::layout::BackendKey, crate::layout::BackendValue>,
    ranges: LpmTrie<MapData, crate::layout::SrcRangeData, u8>,
}

impl PinnedMaps {
    /// `None` when the layout's maps are not pinned at `pin_dir`.
    fn open(pin_dir: &Path) -> Result<Option<PinnedMaps>, EbpfError> {
        let data = |name: &'static str| -> Result<Option<MapData>, EbpfError> {
            let path = pin_dir.join(name);
            if !path.exists() {
                return Ok(None);
            }
            MapData::from_pin(&path).map(Some).map_err(map_err(name))
        };
        let (Some(s), Some(b), Some(r)) = (
            data("sy_services")?,
            data("sy_backends")?,
            data("sy_src_ranges")?,
        ) else {
            return Ok(None);
        };
        Ok(Some(PinnedMaps {
            services: BpfHashMap::try_from(Map::HashMap(s)).map_err(map_err("sy_services"))?,
            backends: BpfHashMap::try_from(Map::HashMap(b)).map_err(map_err("sy_backends"))?,
            ranges: LpmTrie::try_from(Map::LpmTrie(r)).map_err(map_err("sy_src_ranges"))?,
        }))
    }

    fn reader(&self) -> MapsRef<'_> {
        MapsRef {
            services: &self.services,
            backends: &self.backends,
            ranges: &self.ranges,
        }
    }
}

/// The pin directory the engine with `options` uses.
fn pin_dir(options: &EbpfOptions) -> std::path::PathBuf {
    DataplaneConfig {
        bpffs: options.bpffs.clone(),
        pin_root: options.pin_root.clone(),
        cgroup: Default::default(),
        external_interfaces: Vec::new(),
        backend_interfaces: Vec::new(),
        sizes: options.sizes.clone(),
    }
    .pin_dir()
}

/// Reads `plan`'s port back from the maps pinned for `options`.
pub fn inspect(
    options: &EbpfOptions,
    model: &NodeModel,
    plan: &ServicePortPlan,
    out: &mut PortInspection,
) -> Result<(), EbpfError> {
    let dir = pin_dir(options);
    let Some(maps) = PinnedMaps::open(&dir)? else {
        out.differs(format!("no maps pinned at {}", dir.display()));
        return Ok(());
    };
    let kernel = maps.reader().read_back()?;
    let addrs = node::in_netns(options.netns.as_deref(), node::interface_addresses)?;
    let node_ports = node::node_port_addresses(&addrs, &model.node_port_addresses);
    let mut shadows = Shadows::default();
    for p in model.services.values() {
        shadows.add(p, &node_ports);
    }
    let by_key: HashMap<ServiceKey, ServiceEntry> = kernel
        .values()
        .flat_map(|sp| sp.entries.iter().map(|(k, e)| (*k, *e)))
        .collect();
    for fam in &plan.families {
        let want = encode_family(plan, fam, &node_ports, &shadows, 0);
        compare(fam, want, &by_key, &kernel, out);
    }
    Ok(())
}

/// One family: the port's id is the one the kernel's entries for its keys carry.
fn compare(
    fam: &FamilyPlan,
    mut want: ServicePort,
    by_key: &HashMap<ServiceKey, ServiceEntry>,
    kernel: &std::collections::BTreeMap<u32, ServicePort>,
    out: &mut PortInspection,
) {
    let ids: BTreeSet<u32> = want
        .entries
        .keys()
        .filter_map(|k| by_key.get(k).map(|e| e.id))
        .collect();
    let Some(&id) = ids.iter().next() else {
        out.differs(format!(
            "sy_services has no entry for the port's {} keys",
            fam.family
        ));
        return;
    };
    renumber(&mut want, id);
    let empty = ServicePort::default();
    let have = kernel.get(&id).unwrap_or(&empty);
    for (key, entry) in &want.entries {
        let place = format!("sy_services {}", key_text(key));
        match by_key.get(key) {
            None => out.differs(format!("{place} is missing")),
            Some(got) => {
                out.found(KernelObject::new("bpf map entry", &place, entry_text(got)));
                if got != entry {
                    out.differs(format!(
                        "{place}: {}, the plan: {}",
                        entry_text(got),
                        entry_text(entry)
                    ));
                }
            }
        }
    }
    for (key, got) in have
        .entries
        .iter()
        .filter(|(k, _)| !want.entries.contains_key(k))
    {
        let place = format!("sy_services {}", key_text(key));
        out.found(KernelObject::new("bpf map entry", &place, entry_text(got)));
        out.differs(format!("{place} (service id {id}) is not in the plan"));
    }
    let sets: BTreeSet<_> = want.sets.keys().chain(have.sets.keys()).copied().collect();
    for set in sets {
        let sorted = |b: Option<&Vec<Backend>>| {
            let mut v: Vec<String> = b.into_iter().flatten().map(backend_text).collect();
            v.sort();
            v
        };
        let (w, h) = (sorted(want.sets.get(&set)), sorted(have.sets.get(&set)));
        let place = format!("sy_backends id {id} {set:?}");
        if !h.is_empty() {
            out.found(KernelObject::new("bpf map entry", &place, h.join(", ")));
        }
        if w != h {
            out.differs(format!(
                "{place} holds [{}], the plan [{}]",
                h.join(", "),
                w.join(", ")
            ));
        }
    }
    if want.source_ranges != have.source_ranges {
        out.differs(format!(
            "sy_src_ranges of id {id}: {:?}, the plan {:?}",
            have.source_ranges, want.source_ranges
        ));
    } else if !have.source_ranges.is_empty() {
        let ranges: Vec<String> = have
            .source_ranges
            .iter()
            .map(|(ip, len)| format!("{ip}/{len}"))
            .collect();
        out.found(KernelObject::new(
            "bpf map entry",
            format!("sy_src_ranges id {id}"),
            ranges.join(", "),
        ));
    }
}

fn key_text(k: &ServiceKey) -> String {
    let scope = match k.scope {
        Scope::Node => "node",
        Scope::External => "external",
    };
    format!(
        "{}/{} ({scope})",
        SocketAddr::new(k.vip, k.port),
        k.protocol.as_str()
    )
}

fn entry_text(e: &ServiceEntry) -> String {
    let mut s = match e.action {
        Action::Forward => format!("forward to set {:?} of id {}", e.target, e.id),
        Action::Drop => format!("drop (id {})", e.id),
        Action::Reject => format!("reject (id {})", e.id),
    };
    if e.masquerade {
        s.push_str(", masquerade");
    }
    if e.source_ranges {
        s.push_str(", source ranges");
    }
    if let Some(t) = e.affinity_timeout {
        s.push_str(&format!(", affinity {t} s"));
    }
    s
}

fn backend_text(b: &Backend) -> String {
    if b.local {
        format!("{} (local)", b.addr)
    } else {
        b.addr.to_string()
    }
}

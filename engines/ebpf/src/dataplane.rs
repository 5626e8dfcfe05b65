//! The dataplane: loaded programs plus a typed writer for the maps, and a record of what
//! was written so that a change writes only what changed.
//!
//! Write order (so no lookup sees a half-written service): backend slots first, then the
//! service entries that carry the count, then removals (entries, then slots past the new
//! count). Every single map write is atomic for a reader, so at every instant an entry's
//! count covers only written slots. A one-endpoint change is one slot write (plus one
//! entry write per key when the count changes).
//!
//! The record is rebuilt from the maps when a dataplane is loaded over pinned maps, so a
//! restarted agent knows what the kernel holds without rewriting it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use aya::maps::{lpm_trie::Key as LpmKey, Array, HashMap, LpmTrie, MapData};

use crate::{
    error::EbpfError,
    layout::{self, BackendKey, BackendValue, ConfigValue, SrcRangeData, SvcKey, SvcValue},
    loader::{self, DataplaneConfig, Loaded},
    service::{
        addr_bytes, backend_key, source_range_key, Action, Backend, ServiceEntry, ServiceKey,
        TargetSet,
    },
};

/// Everything one service port (one IP family) needs in the maps: its backend sets and
/// the entries (VIP keys) pointing at them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServicePort {
    pub id: u32,
    pub sets: BTreeMap<TargetSet, Vec<Backend>>,
    pub entries: BTreeMap<ServiceKey, ServiceEntry>,
    /// LoadBalancer source ranges (address, prefix length), used by entries with
    /// `source_ranges`.
    pub source_ranges: BTreeSet<(IpAddr, u8)>,
}

/// What the maps hold for one service port, as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Applied {
    pub(crate) sets: BTreeMap<TargetSet, Vec<BackendValue>>,
    pub(crate) entries: BTreeMap<SvcKey, SvcValue>,
    pub(crate) ranges: BTreeSet<(u32, [u8; 20])>,
}

/// How many map operations one call made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub writes: usize,
    pub deletes: usize,
}

/// The loaded, attached dataplane and its map writer.
pub struct Dataplane {
    pub(crate) services: HashMap<MapData, SvcKey, SvcValue>,
    pub(crate) backends: HashMap<MapData, BackendKey, BackendValue>,
    pub(crate) ranges: LpmTrie<MapData, SrcRangeData, u8>,
    config: Array<MapData, ConfigValue>,
    pub(crate) record: BTreeMap<u32, Applied>,
    cfg: DataplaneConfig,
    _loaded: Loaded,
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> EbpfError {
    move |e| EbpfError::Map {
        map,
        source: Box::new(e),
    }
}

fn take<T>(
    loaded: &mut Loaded,
    name: &'static str,
    convert: impl FnOnce(aya::maps::Map) -> Result<T, aya::maps::MapError>,
) -> Result<T, EbpfError> {
    let map = loaded
        .sock
        .take_map(name)
        .ok_or(EbpfError::MissingMap(name))?;
    convert(map).map_err(map_err(name))
}

impl Dataplane {
    /// Loads and attaches everything (see `loader`), reusing pinned maps and replacing
    /// pinned attachments without a gap, and reads back what the maps already hold.
    pub fn load(cfg: DataplaneConfig) -> Result<Dataplane, EbpfError> {
        let mut loaded = loader::load_and_attach(&cfg)?;
        let services = take(&mut loaded, "sy_services", HashMap::try_from)?;
        let backends = take(&mut loaded, "sy_backends", HashMap::try_from)?;
        let ranges = take(&mut loaded, "sy_src_ranges", LpmTrie::try_from)?;
        let config = take(&mut loaded, "sy_config", Array::try_from)?;
        let mut dp = Dataplane {
            services,
            backends,
            ranges,
            config,
            record: BTreeMap::new(),
            cfg,
            _loaded: loaded,
        };
        dp.record = dp.read_record()?;
        Ok(dp)
    }

    pub fn config(&self) -> &DataplaneConfig {
        &self.cfg
    }

    /// The node address masqueraded traffic leaves with, per family.
    pub fn set_masquerade_address(&mut self, ip: IpAddr) -> Result<(), EbpfError> {
        let slot = match ip {
            IpAddr::V4(_) => layout::CONFIG_SNAT_V4,
            IpAddr::V6(_) => layout::CONFIG_SNAT_V6,
        };
        let value = ConfigValue {
            addr: addr_bytes(ip),
            set: 1,
            pad: [0; 7],
        };
        self.config
            .set(slot, value, 0)
            .map_err(map_err("sy_config"))
    }

    /// Writes one service port: new or changed backend slots, then its entries, then
    /// removals. Only differences from what was applied are written.
    pub fn upsert_service(&mut self, sp: &ServicePort) -> Result<WriteStats, EbpfError> {
        let new = encode(sp)?;
        let old = self.record.remove(&sp.id).unwrap_or_default();
        let mut stats = WriteStats::default();
        // The record is only put back once everything succeeded: a failure leaves the id
        // unrecorded, so a later upsert rewrites it all.
        self.write_sets(sp.id, &old, &new, &mut stats)?;
        self.write_ranges(&old, &new, &mut stats)?;
        self.write_entries(&old, &new, &mut stats)?;
        self.remove_stale(sp.id, &old, &new, &mut stats)?;
        self.record.insert(sp.id, new);
        Ok(stats)
    }

    /// Removes one service port: entries first, then ranges and backend slots.
    pub fn remove_service(&mut self, id: u32) -> Result<WriteStats, EbpfError> {
        let Some(old) = self.record.remove(&id) else {
            return Ok(WriteStats::default());
        };
        let mut stats = WriteStats::default();
        self.remove_stale(id, &old, &Applied::default(), &mut stats)?;
        Ok(stats)
    }

    /// A full sync: every service port in `all` is written, every other one removed.
    pub fn sync_all(&mut self, all: &[ServicePort]) -> Result<WriteStats, EbpfError> {
        let mut stats = WriteStats::default();
        let keep: BTreeSet<u32> = all.iter().map(|sp| sp.id).collect();
        let stale: Vec<u32> = self
            .record
            .keys()
            .filter(|id| !keep.contains(id))
            .copied()
            .collect();
        for sp in all {
            let s = self.upsert_service(sp)?;
            stats.writes += s.writes;
            stats.deletes += s.deletes;
        }
        for id in stale {
            let s = self.remove_service(id)?;
            stats.writes += s.writes;
            stats.deletes += s.deletes;
        }
        Ok(stats)
    }

    fn write_sets(
        &mut self,
        id: u32,
        old: &Applied,
        new: &Applied,
        stats: &mut WriteStats,
    ) -> Result<(), EbpfError> {
        for (target, slots) in &new.sets {
            let before = old.sets.get(target);
            for (slot, value) in slots.iter().enumerate() {
                if before.and_then(|b| b.get(slot)) == Some(value) {
                    continue;
                }
                let key = backend_key(id, *target, slot as u16);
                self.backends
                    .insert(key, value, 0)
                    .map_err(map_err("sy_backends"))?;
                stats.writes += 1;
            }
        }
        Ok(())
    }

    fn write_ranges(
        &mut self,
        old: &Applied,
        new: &Applied,
        stats: &mut WriteStats,
    ) -> Result<(), EbpfError> {
        for (len, data) in new.ranges.difference(&old.ranges) {
            let key = LpmKey::new(*len, SrcRangeData { data: *data });
            self.ranges
                .insert(&key, 1u8, 0)
                .map_err(map_err("sy_src_ranges"))?;
            stats.writes += 1;
        }
        Ok(())
    }

    fn write_entries(
        &mut self,
        old: &Applied,
        new: &Applied,
        stats: &mut WriteStats,
    ) -> Result<(), EbpfError> {
        for (key, value) in &new.entries {
            if old.entries.get(key) == Some(value) {
                continue;
            }
            self.services
                .insert(key, value, 0)
                .map_err(map_err("sy_services"))?;
            stats.writes += 1;
        }
        Ok(())
    }

    /// Deletes what `old` had and `new` has not: entries, then ranges, then slots.
    fn remove_stale(
        &mut self,
        id: u32,
        old: &Applied,
        new: &Applied,
        stats: &mut WriteStats,
    ) -> Result<(), EbpfError> {
        for key in old.entries.keys().filter(|k| !new.entries.contains_key(k)) {
            delete(&mut self.services, key, "sy_services", stats)?;
        }
        for (len, data) in old.ranges.difference(&new.ranges) {
            let key = LpmKey::new(*len, SrcRangeData { data: *data });
            match self.ranges.remove(&key) {
                Ok(()) => stats.deletes += 1,
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err("sy_src_ranges")(e)),
            }
        }
        for (target, slots) in &old.sets {
            let keep = new.sets.get(target).map_or(0, Vec::len);
            for slot in keep..slots.len() {
                let key = backend_key(id, *target, slot as u16);
                delete(&mut self.backends, &key, "sy_backends", stats)?;
            }
        }
        Ok(())
    }
}

fn delete<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    key: &K,
    name: &'static str,
    stats: &mut WriteStats,
) -> Result<(), EbpfError> {
    match map.remove(key) {
        Ok(()) => {
            stats.deletes += 1;
            Ok(())
        }
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(map_err(name)(e)),
    }
}

/// Checks a service port and turns it into map content.
fn encode(sp: &ServicePort) -> Result<Applied, EbpfError> {
    let mut out = Applied::default();
    for (target, backends) in &sp.sets {
        if backends.len() > usize::from(u16::MAX) {
            return Err(EbpfError::BadService {
                key: format!("id {} set {target:?}", sp.id),
                reason: format!("{} backends, at most {}", backends.len(), u16::MAX),
            });
        }
        if !backends.is_empty() {
            out.sets
                .insert(*target, backends.iter().map(|b| b.to_raw()).collect());
        }
    }
    for (key, entry) in &sp.entries {
        let bad = |reason: String| EbpfError::BadService {
            key: format!(
                "{}:{} {:?} {:?}",
                key.vip, key.port, key.protocol, key.scope
            ),
            reason,
        };
        if entry.id != sp.id {
            return Err(bad(format!(
                "entry id {} in service port {}",
                entry.id, sp.id
            )));
        }
        let count = match (entry.action, sp.sets.get(&entry.target)) {
            (Action::Forward, None) => {
                return Err(bad(format!(
                    "forwards to set {:?}, not given",
                    entry.target
                )))
            }
            (Action::Forward, Some(set)) => {
                if let Some(b) = set.iter().find(|b| b.addr.is_ipv4() != key.vip.is_ipv4()) {
                    return Err(bad(format!("backend {} of another family", b.addr)));
                }
                set.len() as u16
            }
            _ => 0,
        };
        out.entries.insert(key.to_raw(), entry.to_raw(count));
    }
    for (net, prefix) in &sp.source_ranges {
        let (len, data) = source_range_key(sp.id, *net, *prefix);
        out.ranges.insert((len, data.data));
    }
    Ok(out)
}

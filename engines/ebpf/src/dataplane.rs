//! The dataplane: loaded programs plus a typed writer for the maps, and a record of what
//! was written so that a change writes only what changed.
//!
//! Write order (so no lookup sees a half-written service): for every service port of a
//! batch, its backend slots first, then its source ranges, then the service entries that
//! carry the count; only then, for every port, what is no longer wanted (entries, ranges,
//! slots past the new count), and last the ports removed. Every single map write is atomic
//! for a reader, so at every instant an entry's count covers only written slots, and an
//! address moving from one service port to another is never left without an entry. A
//! one-endpoint change is one slot write (plus one entry write per key when the count
//! changes; see `record` for the slot arrangement).
//!
//! Every service entry has one owner (the id whose value it holds): an entry is deleted
//! only by its owner, so a port that took an address over from another (two Services
//! claiming one external IP and port; the last written wins) never loses it when the
//! other goes.
//!
//! The record is rebuilt from the maps when a dataplane is loaded over pinned maps, and
//! on [`Dataplane::reread`], so a restarted agent knows what the kernel holds without
//! rewriting it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use std::os::fd::AsFd;

use aya::maps::{
    lpm_trie::Key as LpmKey, Array, HashMap as BpfHashMap, IterableMap, LpmTrie, MapData,
};

use crate::{
    batch,
    error::EbpfError,
    layout::{self, BackendKey, BackendValue, ConfigValue, SrcRangeData, SvcKey, SvcValue},
    loader::{self, DataplaneConfig, Loaded, TcSide},
    record::{encode, Applied},
    service::{addr_bytes, backend_key, Backend, ServiceEntry, ServiceKey, TargetSet},
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

/// Map writes gathered for one batch, in the order they are made.
#[derive(Default)]
struct Writes {
    slot_keys: Vec<BackendKey>,
    slot_values: Vec<BackendValue>,
    ranges: Vec<(u32, [u8; 20])>,
    entry_keys: Vec<SvcKey>,
    entry_values: Vec<SvcValue>,
}

/// How many map operations one call made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub writes: usize,
    pub deletes: usize,
}

/// The loaded, attached dataplane and its map writer.
pub struct Dataplane {
    pub(crate) services: BpfHashMap<MapData, SvcKey, SvcValue>,
    pub(crate) backends: BpfHashMap<MapData, BackendKey, BackendValue>,
    pub(crate) ranges: LpmTrie<MapData, SrcRangeData, u8>,
    config: Array<MapData, ConfigValue>,
    pub(crate) record: BTreeMap<u32, Applied>,
    /// Which id each service entry holds (see the module doc).
    owners: HashMap<SvcKey, u32>,
    /// Map entries the record holds (kept as it changes: summing 50k records on every
    /// sync costs milliseconds of cache misses).
    objects: usize,
    cfg: DataplaneConfig,
    loaded: Loaded,
}

pub(crate) fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> EbpfError {
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
        let services = take(&mut loaded, "sy_services", BpfHashMap::try_from)?;
        let backends = take(&mut loaded, "sy_backends", BpfHashMap::try_from)?;
        let ranges = take(&mut loaded, "sy_src_ranges", LpmTrie::try_from)?;
        let config = take(&mut loaded, "sy_config", Array::try_from)?;
        let mut dp = Dataplane {
            services,
            backends,
            ranges,
            config,
            record: BTreeMap::new(),
            owners: HashMap::new(),
            objects: 0,
            cfg,
            loaded,
        };
        dp.reread()?;
        Ok(dp)
    }

    pub fn config(&self) -> &DataplaneConfig {
        &self.cfg
    }

    /// Rebuilds the record from what the maps hold now (after a restart, or before a
    /// full sync that must repair what someone else changed).
    pub fn reread(&mut self) -> Result<(), EbpfError> {
        self.record = self.read_record()?;
        self.objects = self.record.values().map(Applied::objects).sum();
        self.owners = self
            .record
            .iter()
            .flat_map(|(id, a)| a.entries.iter().map(move |(k, _)| (*k, *id)))
            .collect();
        Ok(())
    }

    /// Attaches the tc programs to exactly these interfaces (ingress and egress on the
    /// external ones, ingress on the backend-facing ones), in the calling thread's network
    /// namespace. Interfaces already attached (by this or a previous process) get the new
    /// programs without a gap; interfaces no longer listed are detached.
    pub fn set_tc_interfaces(
        &mut self,
        external: &[String],
        backend: &[String],
    ) -> Result<(), EbpfError> {
        let mut wanted: Vec<(TcSide, &str)> = Vec::new();
        for iface in external {
            wanted.push((TcSide::Ingress, iface));
            wanted.push((TcSide::Egress, iface));
        }
        for iface in backend {
            if !external.contains(iface) {
                wanted.push((TcSide::Ingress, iface));
            }
        }
        loader::set_tc(&mut self.loaded, &self.cfg.pin_dir(), &wanted)
    }

    /// The interfaces the tc programs are attached to (from the pinned links).
    pub fn tc_interfaces(&self) -> Result<Vec<(TcSide, String)>, EbpfError> {
        loader::pinned_tc(&self.cfg.pin_dir())
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
        self.apply(std::slice::from_ref(sp), &[])
    }

    /// Removes one service port: the entries it owns, its ranges and backend slots.
    pub fn remove_service(&mut self, id: u32) -> Result<WriteStats, EbpfError> {
        self.apply(&[], &[id])
    }

    /// A full sync: every service port in `all` is written, every other one removed.
    pub fn sync_all(&mut self, all: &[ServicePort]) -> Result<WriteStats, EbpfError> {
        let keep: BTreeSet<u32> = all.iter().map(|sp| sp.id).collect();
        let stale: Vec<u32> = self
            .record
            .keys()
            .filter(|id| !keep.contains(id))
            .copied()
            .collect();
        self.apply(all, &stale)
    }

    /// Writes `upserts` and removes `removals`, in the order of the module doc: every
    /// backend slot of the batch (one batched write), then source ranges, then every
    /// service entry (one batched write), then what is no longer wanted. A failure
    /// leaves the ports it touched out of the record: the caller's next sync must be a
    /// full one (which rereads the maps).
    pub fn apply(
        &mut self,
        upserts: &[ServicePort],
        removals: &[u32],
    ) -> Result<WriteStats, EbpfError> {
        let mut stats = WriteStats::default();
        let mut writes = Writes::default();
        let mut written: Vec<(u32, Applied, Applied)> = Vec::with_capacity(upserts.len());
        for sp in upserts {
            let old = self.record.remove(&sp.id).unwrap_or_default();
            self.objects -= old.objects();
            let new = encode(sp, &old)?;
            self.collect(sp.id, &old, &new, &mut writes);
            written.push((sp.id, old, new));
        }
        self.flush(writes, &mut stats)?;
        for (id, old, mut new) in written {
            self.remove_stale(id, &old, &new, &mut stats)?;
            // Entries another port of this batch took over are that port's.
            new.entries.retain(|(k, _)| self.owners.get(k) == Some(&id));
            if !new.is_empty() {
                self.objects += new.objects();
                self.record.insert(id, new);
            }
        }
        for id in removals {
            if let Some(old) = self.record.remove(id) {
                self.objects -= old.objects();
                self.remove_stale(*id, &old, &Applied::default(), &mut stats)?;
            }
        }
        Ok(stats)
    }

    /// Where a service port family whose entries are `keys` lives, of two `candidates`
    /// ids: one it already owns alone, else one nothing points at. Two ids per port let a
    /// full sync after a restart (whose ids may have been handed out in another order)
    /// write a port beside a foreign one still using its id, never into it.
    pub fn place(&mut self, candidates: [u32; 2], keys: &[ServiceKey]) -> Result<u32, EbpfError> {
        let raw: BTreeSet<SvcKey> = keys.iter().map(|k| k.to_raw()).collect();
        let usable = |id: &u32| {
            self.record
                .get(id)
                .is_none_or(|a| a.entries.iter().all(|(k, _)| raw.contains(k)))
        };
        let holds = |id: &u32| self.record.get(id).is_some_and(|a| !a.entries.is_empty());
        if let Some(id) = candidates.iter().find(|id| usable(id) && holds(id)) {
            return Ok(*id);
        }
        if let Some(id) = candidates.iter().find(|id| usable(id)) {
            return Ok(*id);
        }
        // Both ids serve other entries: can only be a leftover of an interrupted sync.
        tracing::warn!(
            id = candidates[0],
            "both ids of a service port hold other entries: evicting the first"
        );
        self.remove_service(candidates[0])?;
        Ok(candidates[0])
    }

    /// Collects what `new` writes over `old` (only differences).
    fn collect(&mut self, id: u32, old: &Applied, new: &Applied, writes: &mut Writes) {
        for (target, slots) in &new.sets {
            let before = old.set(*target);
            for (slot, value) in slots.iter().enumerate() {
                if before.get(slot) != Some(value) {
                    writes.slot_keys.push(backend_key(id, *target, slot as u16));
                    writes.slot_values.push(*value);
                }
            }
        }
        writes
            .ranges
            .extend(new.ranges.iter().filter(|r| !old.has_range(r)));
        for (key, value) in &new.entries {
            let owned = self.owners.get(key) == Some(&id);
            if owned && old.entry(key) == Some(value) {
                continue;
            }
            writes.entry_keys.push(*key);
            writes.entry_values.push(*value);
            self.take_over(*key, id);
        }
    }

    /// Writes what [`Dataplane::collect`] gathered: slots, ranges, entries.
    fn flush(&mut self, w: Writes, stats: &mut WriteStats) -> Result<(), EbpfError> {
        let batch_err =
            |map: &'static str| move |source: std::io::Error| EbpfError::Batch { map, source };
        batch::update(
            self.backends.map().fd().as_fd(),
            &w.slot_keys,
            &w.slot_values,
        )
        .map_err(batch_err("sy_backends"))?;
        stats.writes += w.slot_keys.len();
        for range in &w.ranges {
            let key = LpmKey::new(range.0, SrcRangeData { data: range.1 });
            self.ranges
                .insert(&key, 1u8, 0)
                .map_err(map_err("sy_src_ranges"))?;
            stats.writes += 1;
        }
        batch::update(
            self.services.map().fd().as_fd(),
            &w.entry_keys,
            &w.entry_values,
        )
        .map_err(batch_err("sy_services"))?;
        stats.writes += w.entry_keys.len();
        Ok(())
    }

    /// Records that `id` now holds `key`, out of the record of its previous owner.
    fn take_over(&mut self, key: SvcKey, id: u32) {
        if let Some(prev) = self.owners.insert(key, id).filter(|p| *p != id) {
            if let Some(a) = self.record.get_mut(&prev) {
                let before = a.entries.len();
                a.entries.retain(|(k, _)| *k != key);
                self.objects -= before - a.entries.len();
            }
        }
    }

    /// Deletes what `old` had and `new` has not: owned entries, then ranges, then slots.
    fn remove_stale(
        &mut self,
        id: u32,
        old: &Applied,
        new: &Applied,
        stats: &mut WriteStats,
    ) -> Result<(), EbpfError> {
        for (key, _) in &old.entries {
            if new.entry(key).is_some() || self.owners.get(key) != Some(&id) {
                continue;
            }
            delete(&mut self.services, key, "sy_services", stats)?;
            self.owners.remove(key);
        }
        for range in old.ranges.iter().filter(|r| !new.has_range(r)) {
            let key = LpmKey::new(range.0, SrcRangeData { data: range.1 });
            match self.ranges.remove(&key) {
                Ok(()) => stats.deletes += 1,
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err("sy_src_ranges")(e)),
            }
        }
        for (target, slots) in &old.sets {
            for slot in new.set(*target).len()..slots.len() {
                let key = backend_key(id, *target, slot as u16);
                delete(&mut self.backends, &key, "sy_backends", stats)?;
            }
        }
        Ok(())
    }

    /// Map entries applied (service entries plus backend slots).
    pub fn applied_objects(&self) -> usize {
        self.objects
    }
}

fn delete<K: aya::Pod, V: aya::Pod>(
    map: &mut BpfHashMap<MapData, K, V>,
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

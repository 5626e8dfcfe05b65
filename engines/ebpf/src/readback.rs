//! Reading the maps back: the record a loaded dataplane starts from (what pinned maps
//! already hold), the typed content for callers, and `verify` (does the kernel still hold
//! what was applied?).

use std::{collections::BTreeMap, os::fd::AsFd};

use aya::maps::IterableMap;

use crate::{
    batch,
    dataplane::{map_err, Dataplane, ServicePort},
    error::EbpfError,
    layout::{BackendKey, BackendValue, SvcKey, SvcValue},
    record::Applied,
    service::{addr_from_bytes, Backend, ServiceEntry, ServiceKey, TargetSet},
};

/// One difference between the maps and the record.
pub type Drift = String;

/// The maps a reader needs, borrowed from a loaded dataplane or opened from their
/// pins (`inspect`).
pub(crate) struct MapsRef<'a> {
    pub services: &'a aya::maps::HashMap<aya::maps::MapData, SvcKey, SvcValue>,
    pub backends: &'a aya::maps::HashMap<aya::maps::MapData, BackendKey, BackendValue>,
    pub ranges: &'a aya::maps::LpmTrie<aya::maps::MapData, crate::layout::SrcRangeData, u8>,
}

impl MapsRef<'_> {
    /// Everything the maps hold, grouped by service id (backend slots of a set only while
    /// they are contiguous from 0; anything after a gap is drift).
    pub(crate) fn read_record(&self) -> Result<BTreeMap<u32, Applied>, EbpfError> {
        let mut out: BTreeMap<u32, Applied> = BTreeMap::new();
        let batch_err = |map: &'static str| move |source| EbpfError::Batch { map, source };
        let services: Vec<(SvcKey, SvcValue)> = batch::lookup_all(self.services.map().fd().as_fd())
            .map_err(batch_err("sy_services"))?;
        for (k, v) in services {
            out.entry(v.id).or_default().entries.push((k, v));
        }
        let mut backends: Vec<(BackendKey, BackendValue)> =
            batch::lookup_all(self.backends.map().fd().as_fd())
                .map_err(batch_err("sy_backends"))?;
        // Sorted by (id, set, slot), each set is a run: no tree per set (50k of them).
        backends.sort_unstable_by_key(|(k, _)| (k.id, k.target, k.slot));
        for run in backends.chunk_by(|(a, _), (b, _)| (a.id, a.target) == (b.id, b.target)) {
            let (first, _) = run[0];
            let target = TargetSet::from_code(first.target).ok_or_else(|| {
                EbpfError::Corrupt(format!(
                    "backend set of id {}: target {}",
                    first.id, first.target
                ))
            })?;
            let contiguous: Vec<BackendValue> = run
                .iter()
                .enumerate()
                .take_while(|(i, (k, _))| usize::from(k.slot) == *i)
                .map(|(_, (_, v))| *v)
                .collect();
            out.entry(first.id)
                .or_default()
                .sets
                .push((target, contiguous));
        }
        for item in self.ranges.iter() {
            let (k, _) = item.map_err(map_err("sy_src_ranges"))?;
            let data = k.data().data;
            let id = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            out.entry(id)
                .or_default()
                .ranges
                .push((k.prefix_len(), data));
        }
        for a in out.values_mut() {
            a.entries.sort_by_key(|(k, _)| *k);
            a.sets.sort_by_key(|(t, _)| *t);
            a.ranges.sort();
        }
        Ok(out)
    }

    /// The service ports the maps hold, decoded.
    pub(crate) fn read_back(&self) -> Result<BTreeMap<u32, ServicePort>, EbpfError> {
        let mut out = BTreeMap::new();
        for (id, applied) in self.read_record()? {
            let mut sp = ServicePort {
                id,
                ..ServicePort::default()
            };
            for (target, values) in applied.sets {
                sp.sets
                    .insert(target, values.iter().map(Backend::from_raw).collect());
            }
            for (k, v) in &applied.entries {
                sp.entries
                    .insert(ServiceKey::from_raw(k)?, ServiceEntry::from_raw(v)?.0);
            }
            for (len, data) in applied.ranges {
                let mut addr = [0u8; 16];
                addr.copy_from_slice(&data[4..]);
                let ip = addr_from_bytes(addr);
                let bits = len.saturating_sub(32);
                let prefix = if ip.is_ipv4() {
                    bits.saturating_sub(96)
                } else {
                    bits
                };
                sp.source_ranges.insert((ip, prefix as u8));
            }
            out.insert(id, sp);
        }
        Ok(out)
    }
}

impl Dataplane {
    fn maps(&self) -> MapsRef<'_> {
        MapsRef {
            services: &self.services,
            backends: &self.backends,
            ranges: &self.ranges,
        }
    }

    /// Everything the maps hold, grouped by service id.
    pub(crate) fn read_record(&self) -> Result<BTreeMap<u32, Applied>, EbpfError> {
        self.maps().read_record()
    }

    /// The service ports the maps hold, decoded.
    pub fn read_back(&self) -> Result<BTreeMap<u32, ServicePort>, EbpfError> {
        self.maps().read_back()
    }

    /// Compares the maps with what this dataplane applied; an empty list means no drift.
    pub fn verify(&self) -> Result<Vec<Drift>, EbpfError> {
        let kernel = self.read_record()?;
        let mut drift = Vec::new();
        for (id, want) in &self.record {
            match kernel.get(id) {
                None => drift.push(format!("service id {id}: missing from the maps")),
                Some(have) if have != want => drift.push(format!(
                    "service id {id}: maps differ from what was applied"
                )),
                Some(_) => {}
            }
        }
        for id in kernel.keys().filter(|id| !self.record.contains_key(id)) {
            drift.push(format!("service id {id}: in the maps, never applied"));
        }
        Ok(drift)
    }

    /// Number of service ports applied.
    pub fn applied_len(&self) -> usize {
        self.record.len()
    }
}

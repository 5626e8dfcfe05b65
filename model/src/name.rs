//! Names of service ports and the hashes engines derive kernel object names and
//! numeric ids from. Kubernetes names can hold anything an engine's syntax treats as
//! special, so engines never put a name in a kernel object: they use its digest.

use std::{collections::HashSet, fmt, net::IpAddr};

pub use compact_str::CompactString;
use sha2::{Digest, Sha256};

use crate::family::Protocol;

/// `namespace/name:port/protocol` — the identity of one service port.
///
/// The names are [`CompactString`]s: up to 24 bytes live inline, without an allocation
/// of their own. A model holds each name twice (its map's key and the plan's), and an
/// engine's record often a third time: at 50k ports that was ≈ 300k small allocations.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    pub namespace: CompactString,
    pub name: CompactString,
    /// The port's `name` (empty for a single unnamed port).
    pub port: CompactString,
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}:{}/{}",
            self.namespace, self.name, self.port, self.protocol
        )
    }
}

impl ServicePortName {
    pub fn new(namespace: &str, name: &str, port: &str, protocol: Protocol) -> ServicePortName {
        ServicePortName {
            namespace: namespace.into(),
            name: name.into(),
            port: port.into(),
            protocol,
        }
    }

    /// SHA-256 of the name's fields, each length-prefixed (no two names hash the same
    /// input). Stable across versions: engines name chains and sets after it.
    pub fn digest(&self) -> PortDigest {
        let mut hasher = Sha256::new();
        for part in [
            self.namespace.as_str(),
            self.name.as_str(),
            self.port.as_str(),
            self.protocol.as_str(),
        ] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        PortDigest(hasher.finalize().into())
    }
}

/// The digest of a [`ServicePortName`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortDigest(pub [u8; 32]);

impl PortDigest {
    /// A digest of this service port and one of its endpoints (per-endpoint objects).
    pub fn with_endpoint(&self, ip: IpAddr, port: u16) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.0);
        match ip {
            IpAddr::V4(v4) => hasher.update(v4.octets()),
            IpAddr::V6(v6) => hasher.update(v6.octets()),
        }
        hasher.update(port.to_be_bytes());
        hasher.finalize().into()
    }

    /// The id this digest asks for first (see [`PortIds`]).
    fn preferred_id(&self) -> u32 {
        let n = u32::from_be_bytes([0, self.0[0], self.0[1], self.0[2]]);
        n.clamp(1, PortIds::MAX)
    }
}

/// Stable numeric ids of service ports, for BPF map keys and IPVS firewall marks: in
/// `1..=0xFF_FFFF` (24 bits, leaving a mark's high bits to other uses), unique among the
/// ports present. A port asks for the id its digest names and probes upwards on a
/// collision (≈ 75 collisions at 50k ports). The model keeps a port's id while the port
/// exists (it reuses the id of the port's previous plan), so a collision resolved one
/// way is never reshuffled by later changes; a fresh model (a restarted agent)
/// allocates in name order, so the same set of ports gets the same ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortIds {
    taken: HashSet<u32>,
}

impl PortIds {
    pub const MAX: u32 = 0xFF_FFFF;

    /// A free id for the port whose digest is `digest`.
    pub fn allocate(&mut self, digest: &PortDigest) -> u32 {
        let mut id = digest.preferred_id();
        while !self.taken.insert(id) {
            id = if id == PortIds::MAX { 1 } else { id + 1 };
        }
        id
    }

    /// Marks `id` as used (a port keeping the id it had).
    pub fn keep(&mut self, id: u32) {
        self.taken.insert(id);
    }

    /// Frees the id of a removed port.
    pub fn release(&mut self, id: u32) {
        self.taken.remove(&id);
    }

    pub fn len(&self) -> usize {
        self.taken.len()
    }

    pub fn is_empty(&self) -> bool {
        self.taken.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spn(name: &str) -> ServicePortName {
        ServicePortName::new("ns", name, "http", Protocol::Tcp)
    }

    #[test]
    fn digests_separate_fields() {
        let a = ServicePortName::new("ab", "c", "", Protocol::Tcp);
        let b = ServicePortName::new("a", "bc", "", Protocol::Tcp);
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn ids_are_unique_and_in_range_and_deterministic() {
        let names: Vec<ServicePortName> = (0..20_000).map(|i| spn(&format!("s{i}"))).collect();
        let allocate = || {
            let mut ids = PortIds::default();
            names
                .iter()
                .map(|n| ids.allocate(&n.digest()))
                .collect::<Vec<u32>>()
        };
        let first = allocate();
        let unique: HashSet<u32> = first.iter().copied().collect();
        assert_eq!(unique.len(), names.len());
        assert!(first.iter().all(|id| (1..=PortIds::MAX).contains(id)));
        assert_eq!(first, allocate(), "same ports, same order, same ids");
    }

    #[test]
    fn a_released_id_is_free_again() {
        let mut ids = PortIds::default();
        let d = spn("a").digest();
        let id = ids.allocate(&d);
        assert_ne!(ids.allocate(&d), id, "taken: probes to the next");
        ids.release(id);
        assert_eq!(ids.allocate(&d), id);
    }
}

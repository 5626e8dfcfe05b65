//! Digests of what the engine writes: per service port and family, of everything the
//! port owns (chains and their rules' bytecode, affinity sets, map elements and their
//! verdicts), and per family, of the fixed part of every table. They are written to the
//! kernel with the objects they describe (`port-digests`, one element per port in its
//! shard, the fixed part's under port id 0 in every table), in the same transaction,
//! so a digest in the kernel always describes what the same transaction wrote. A
//! restarted engine compares them with what it would write now (`adopt`).
//!
//! The digest is the first 8 bytes of a SHA-256 over the netlink encoding (rules as
//! the expressions the kernel receives), so it changes whenever what would be written
//! changes, including after an upgrade that encodes differently.

use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use crate::{
    element::{Element, ElementKey, Verdict},
    fixed::FixedTable,
    netlink::Attrs,
    port::PortRules,
    rule::Rule,
    ruleset::{Family, MapKind},
};

/// Bumped when the layout changes in a way the digested data does not show.
const FORMAT: &[u8] = b"switchyard-nftables layout 2";

/// The port id of a table's fixed part in `port-digests`.
pub const FIXED_ID: [u8; 8] = [0; 8];

/// A digest being computed (SHA-256, and a buffer the rules are encoded into).
pub struct Digester {
    hash: Sha256,
    scratch: Vec<u8>,
}

impl Default for Digester {
    fn default() -> Self {
        Digester::new()
    }
}

impl Digester {
    pub fn new() -> Digester {
        let mut hash = Sha256::new();
        hash.update(FORMAT);
        Digester {
            hash,
            scratch: Vec::with_capacity(4096),
        }
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.hash.update((bytes.len() as u32).to_be_bytes());
        self.hash.update(bytes);
    }

    fn rules(&mut self, family: Family, name: &str, rules: &[Rule]) {
        self.bytes(name.as_bytes());
        self.hash.update((rules.len() as u32).to_be_bytes());
        for rule in rules {
            self.scratch.clear();
            rule.encode(family, &mut Attrs::new(&mut self.scratch));
            let Digester { hash, scratch } = self;
            hash.update((scratch.len() as u32).to_be_bytes());
            hash.update(&scratch[..]);
        }
    }

    fn element(&mut self, e: &Element) {
        self.hash.update([e.kind.index() as u8]);
        self.bytes(&e.key.bytes());
        match &e.value {
            Verdict::None => self.hash.update([0]),
            Verdict::Drop => self.hash.update([1]),
            Verdict::Goto(c) => {
                self.hash.update([2, c.table as u8]);
                self.bytes(c.name.as_bytes());
            }
            Verdict::Comment(text) => {
                self.hash.update([3]);
                self.bytes(text.as_bytes());
            }
        }
    }

    fn finish(self) -> [u8; 8] {
        self.hash.finalize()[..8].try_into().expect("8 bytes")
    }
}

/// The digest of everything `port` writes in `family` (its own digest element aside).
pub fn port(family: Family, port: &PortRules) -> [u8; 8] {
    let mut d = Digester::new();
    d.hash.update([family.index() as u8]);
    for (chain, rules) in &port.chains {
        d.hash.update([chain.table as u8]);
        d.rules(family, &chain.name, rules);
    }
    for (set, timeout) in &port.sets {
        d.hash.update([set.table as u8]);
        d.bytes(set.name.as_bytes());
        d.hash.update(timeout.to_be_bytes());
    }
    for e in port
        .elements
        .iter()
        .filter(|e| e.kind != MapKind::PortDigests)
    {
        d.element(e);
    }
    for m in &port.mapped {
        let r = &m.range;
        d.hash.update([r.table, r.chunk]);
        d.hash.update(r.offset.to_be_bytes());
        for (key, value) in m.elements() {
            d.bytes(&key);
            d.bytes(&value);
        }
    }
    d.finish()
}

/// The digest of the fixed part of a family's tables (`tables[t]` for table `t`).
pub fn fixed(family: Family, tables: &[FixedTable]) -> [u8; 8] {
    let mut d = Digester::new();
    d.hash.update([family.index() as u8]);
    for kind in MapKind::ALL {
        let spec = kind.spec(family);
        d.bytes(kind.name().as_bytes());
        d.bytes(format!("{spec:?}").as_bytes());
    }
    for (t, table) in tables.iter().enumerate() {
        d.hash.update([t as u8]);
        for (base, rules) in &table.base_chains {
            d.bytes(base.declaration().as_bytes());
            d.rules(family, base.name, rules);
        }
        for (name, rules) in &table.chains {
            d.rules(family, name, rules);
        }
        for (name, nets) in &table.interval_sets {
            d.bytes(name.as_bytes());
            for net in nets {
                d.bytes(net.to_string().as_bytes());
            }
        }
    }
    d.finish()
}

/// The `port-digests` element of a port, commented with its chain names' base (or,
/// with [`FIXED_ID`] and no comment, of a fixed part).
pub fn element(id: [u8; 8], digest: [u8; 8], base: Option<Arc<str>>) -> Element {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&id);
    key[8..].copy_from_slice(&digest);
    Element {
        kind: MapKind::PortDigests,
        key: ElementKey::Digest(key),
        value: base.map_or(Verdict::None, Verdict::Comment),
    }
}

/// The id and digest of a `port-digests` key.
pub fn split(key: &[u8]) -> Option<([u8; 8], [u8; 8])> {
    let key: &[u8; 16] = key.try_into().ok()?;
    Some((
        key[..8].try_into().expect("8 bytes"),
        key[8..].try_into().expect("8 bytes"),
    ))
}

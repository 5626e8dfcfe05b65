//! The byte layout of every map key and value: the Rust mirror of `bpf/maps.h`, and the
//! only place in this crate with `unsafe` (aya's [`Pod`] trait, which promises that any
//! byte pattern is a valid value). Each struct is `#[repr(C)]` with its padding spelled
//! out as fields, so the structs have no implicit padding (no uninitialised bytes reach
//! the kernel) and every bit pattern is a valid value: that is what makes each `Pod` impl
//! sound.
//!
//! A change here or in `maps.h` is a layout change: bump [`LAYOUT_VERSION`]. The maps then
//! live in a new pin directory, built beside the old ones (see `pins`).
#![allow(unsafe_code)]

use aya::Pod;

/// Version of the map layout; part of the pin path (`<pin root>/v<N>-<sizes>/`).
pub const LAYOUT_VERSION: u32 = 1;

pub const SCOPE_NODE: u8 = 0;
pub const SCOPE_EXTERNAL: u8 = 1;

pub const ACTION_FORWARD: u8 = 0;
pub const ACTION_DROP: u8 = 1;
pub const ACTION_REJECT: u8 = 2;

pub const SVC_F_MASQUERADE: u8 = 1;
pub const SVC_F_SOURCE_RANGES: u8 = 2;
pub const SVC_F_AFFINITY: u8 = 4;

pub const TARGET_INTERNAL: u8 = 0;
pub const TARGET_EXTERNAL: u8 = 1;
pub const TARGET_SHORT_CIRCUIT: u8 = 2;

pub const BACKEND_F_LOCAL: u8 = 1;

pub const CONFIG_SNAT_V4: u32 = 0;
pub const CONFIG_SNAT_V6: u32 = 1;

/// `struct svc_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SvcKey {
    pub addr: [u8; 16],
    /// Network byte order.
    pub port_be: u16,
    pub proto: u8,
    pub scope: u8,
}

/// `struct svc_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SvcValue {
    pub id: u32,
    pub count: u16,
    pub action: u8,
    pub flags: u8,
    pub affinity_timeout: u32,
    pub target: u8,
    pub pad: [u8; 3],
}

/// `struct backend_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub id: u32,
    pub slot: u16,
    pub target: u8,
    pub pad: u8,
}

/// `struct backend_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendValue {
    pub addr: [u8; 16],
    /// Network byte order.
    pub port_be: u16,
    pub flags: u8,
    pub pad: u8,
}

/// `struct src_range_key` without its `prefixlen` (aya's `lpm_trie::Key` adds it):
/// the service id, big-endian, then the client address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SrcRangeData {
    pub data: [u8; 20],
}

/// `struct config_value`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConfigValue {
    pub addr: [u8; 16],
    pub set: u8,
    pub pad: [u8; 7],
}

// SAFETY (all impls below): `#[repr(C)]` structs made only of integers and byte arrays,
// with every padding byte declared as a field (sizes asserted in the tests below match
// `maps.h`), so they contain no uninitialised bytes and any bit pattern is valid.
unsafe impl Pod for SvcKey {}
unsafe impl Pod for SvcValue {}
unsafe impl Pod for BackendKey {}
unsafe impl Pod for BackendValue {}
unsafe impl Pod for SrcRangeData {}
unsafe impl Pod for ConfigValue {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    #[test]
    fn sizes_match_maps_h_without_implicit_padding() {
        assert_eq!(size_of::<SvcKey>(), 20);
        assert_eq!(size_of::<SvcValue>(), 16);
        assert_eq!(size_of::<BackendKey>(), 8);
        assert_eq!(size_of::<BackendValue>(), 20);
        assert_eq!(size_of::<SrcRangeData>(), 20);
        assert_eq!(size_of::<ConfigValue>(), 24);
    }
}

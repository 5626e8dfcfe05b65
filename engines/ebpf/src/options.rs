//! [`EbpfOptions`]: where the engine pins, which cgroup and interfaces it attaches to, and
//! its map sizes. The binary's engine registry fills them from the ProxyConfig's `ebpf`
//! block; every unset value has a default found on the node itself.

use std::path::PathBuf;

use crate::loader::MapSizes;

/// How the eBPF engine runs on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EbpfOptions {
    /// Where bpffs is mounted when `pin_root` is not on one yet (default `/sys/fs/bpf`;
    /// the engine mounts it, as Cilium does).
    pub bpffs: PathBuf,
    /// Pin directory of maps and links (default `/sys/fs/bpf/switchyard`): what this
    /// engine owns. Engines with different pin roots never touch each other's objects.
    pub pin_root: PathBuf,
    /// cgroup v2 directory the socket programs attach to; `None`: the cgroup v2 mount
    /// (found in `/proc/self/mountinfo`), i.e. every process of the node.
    pub cgroup: Option<PathBuf>,
    pub sizes: MapSizes,
    /// Interfaces carrying traffic from outside the node (tc ingress and egress);
    /// `None`: the interfaces holding the node's primary IPs, resolved at every full
    /// sync.
    pub external_interfaces: Option<Vec<String>>,
    /// Interfaces local backends reply through (tc ingress, for masqueraded flows);
    /// `None`: the interfaces holding an address in the cluster CIDRs (a pod bridge),
    /// resolved at every full sync. A CNI with one routed veth per pod and no bridge
    /// needs them listed.
    pub backend_interfaces: Option<Vec<String>>,
    /// The network namespace whose interfaces are meant (tests run the engine outside
    /// the node's namespace); `None`: the calling thread's.
    pub netns: Option<PathBuf>,
}

impl Default for EbpfOptions {
    fn default() -> Self {
        EbpfOptions {
            bpffs: PathBuf::from("/sys/fs/bpf"),
            pin_root: PathBuf::from("/sys/fs/bpf/switchyard"),
            cgroup: None,
            sizes: MapSizes::default(),
            external_interfaces: None,
            backend_interfaces: None,
            netns: None,
        }
    }
}

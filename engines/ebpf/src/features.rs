//! What of this kernel the programs use, asked of the kernel itself: program types, map
//! types, and helpers per program type (aya's probes, as libbpf's: a minimal program or
//! map of each kind is loaded or created, and released). They need the engine's own
//! capabilities (CAP_BPF, CAP_NET_ADMIN), where `bpftool feature probe` needs
//! CAP_SYS_ADMIN: the probe then answers for the agent as the chart runs it.

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_helper_supported, is_map_supported, is_program_supported, BpfHelper},
};

/// One kernel feature the programs use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feature {
    /// What was checked (`cgroup_sock_addr programs`).
    pub name: String,
    /// What a node lacking it lacks (`cgroup_sock_addr program type`).
    pub missing: String,
    /// `Err`: the probe itself failed (for instance without CAP_BPF).
    pub supported: Result<bool, String>,
}

const PROGRAMS: [(ProgramType, &str); 3] = [
    (ProgramType::CgroupSockAddr, "cgroup_sock_addr"),
    (ProgramType::CgroupSkb, "cgroup_skb"),
    (ProgramType::SchedClassifier, "sched_cls"),
];

const MAPS: [(MapType, &str); 5] = [
    (MapType::Hash, "hash"),
    (MapType::Array, "array"),
    (MapType::LruHash, "lru_hash"),
    (MapType::LpmTrie, "lpm_trie"),
    (MapType::SkStorage, "sk_storage"),
];

/// `(program type, helper)` pairs the programs call.
const HELPERS: [(ProgramType, &str, BpfHelper, &str); 7] = [
    (
        ProgramType::CgroupSockAddr,
        "cgroup_sock_addr",
        BpfHelper::BPF_FUNC_set_retval,
        "bpf_set_retval",
    ),
    (
        ProgramType::CgroupSockAddr,
        "cgroup_sock_addr",
        BpfHelper::BPF_FUNC_get_netns_cookie,
        "bpf_get_netns_cookie",
    ),
    (
        ProgramType::CgroupSockAddr,
        "cgroup_sock_addr",
        BpfHelper::BPF_FUNC_get_socket_cookie,
        "bpf_get_socket_cookie",
    ),
    (
        ProgramType::CgroupSockAddr,
        "cgroup_sock_addr",
        BpfHelper::BPF_FUNC_sk_storage_get,
        "bpf_sk_storage_get",
    ),
    (
        ProgramType::CgroupSkb,
        "cgroup_skb",
        BpfHelper::BPF_FUNC_sk_storage_get,
        "bpf_sk_storage_get",
    ),
    (
        ProgramType::SchedClassifier,
        "sched_cls",
        BpfHelper::BPF_FUNC_fib_lookup,
        "bpf_fib_lookup",
    ),
    (
        ProgramType::SchedClassifier,
        "sched_cls",
        BpfHelper::BPF_FUNC_redirect_neigh,
        "bpf_redirect_neigh",
    ),
];

/// Every feature the programs use, probed.
pub fn probe() -> Vec<Feature> {
    let mut out = Vec::new();
    for (t, name) in PROGRAMS {
        out.push(Feature {
            name: format!("{name} programs"),
            missing: format!("{name} program type"),
            supported: is_program_supported(t).map_err(|e| e.to_string()),
        });
    }
    for (t, name) in MAPS {
        out.push(Feature {
            name: format!("{name} maps"),
            missing: format!("{name} map type"),
            supported: is_map_supported(t).map_err(|e| e.to_string()),
        });
    }
    for (t, prog, helper, name) in HELPERS {
        let what = format!("{name} in {prog} programs");
        out.push(Feature {
            name: what.clone(),
            missing: what,
            supported: is_helper_supported(t, helper).map_err(|e| e.to_string()),
        });
    }
    out
}

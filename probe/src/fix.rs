//! The fix for each missing feature a probe reports: the `modprobe` line for a module
//! that is there but not loaded, the package for a missing tool, the kernel option for
//! what the kernel was built without, `mount` for a missing mount, a newer kernel for
//! what only newer kernels have.
//!
//! Kernel options follow the names in the kernel's Kconfig files (`CONFIG_IP_VS_RR` for
//! `ip_vs_rr`, `CONFIG_NETFILTER_XT_MATCH_STATISTIC` for `xt_statistic`, …); the eBPF
//! options are the ones Cilium's kube-proxy replacement lists as required. Packages are
//! named as Debian and Ubuntu name them (also the names on most other distributions).
//! Minimum kernel versions are the releases that added the feature.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{kernel_module::is_module_name, report::NotLoaded};

/// What to do about one missing feature.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Fix {
    /// The missing feature, as `missing` names it.
    pub missing: String,
    /// The command to run or the change to make, in one line.
    pub fix: String,
}

/// The fix for `missing` on kernel `release`; `not_loaded` when the probe found the
/// module present but not loaded (or its load failed).
pub fn fix_for(missing: &str, not_loaded: Option<&NotLoaded>, release: &str) -> String {
    if let Some(n) = not_loaded {
        return match &n.load_error {
            None => format!("modprobe {}", n.module),
            Some(_) => format!(
                "modprobe {m} failed (see above): install this kernel's modules package \
                 (linux-modules-extra-{release} on Ubuntu) or rebuild with {}=m",
                option_of_module(&n.module),
                m = n.module
            ),
        };
    }
    if let Some(fix) = known(missing) {
        return fix.to_string();
    }
    if let Some(tool) = missing.strip_suffix(" command") {
        return format!("install {} (package {})", tool, package_of(tool));
    }
    if let Some(version) = missing.strip_prefix("kernel >= ") {
        return format!("upgrade the node's kernel to {version} or newer");
    }
    if let Some(version) = missing.strip_prefix("nft >= ") {
        return format!("upgrade nftables (the nft command) to {version} or newer");
    }
    if is_module_name(missing) {
        return format!(
            "not built for kernel {release}: install its modules package \
             (linux-modules-extra-{release} on Ubuntu) or rebuild with {}=m, then modprobe {missing}",
            option_of_module(missing)
        );
    }
    format!("no known fix for \"{missing}\": see the probe's checks above")
}

/// Fixes for the names the probes use that are neither modules nor tools.
fn known(missing: &str) -> Option<&'static str> {
    Some(match missing {
        "bpf syscall" => "a kernel built with CONFIG_BPF=y and CONFIG_BPF_SYSCALL=y",
        "bpffs support" => {
            "a kernel built with CONFIG_BPF_SYSCALL=y (bpffs comes with it), then: mount -t bpf bpf /sys/fs/bpf"
        }
        "cgroup v2 mount" => {
            "mount -t cgroup2 none /sys/fs/cgroup (or boot with systemd.unified_cgroup_hierarchy=1)"
        }
        "kernel BTF" => "a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        "cgroup_sock_addr program type" | "cgroup_skb program type" => {
            "a kernel built with CONFIG_CGROUPS=y and CONFIG_CGROUP_BPF=y"
        }
        "sched_cls program type" => {
            "a kernel built with CONFIG_NET_CLS_BPF, CONFIG_NET_CLS_ACT and CONFIG_NET_SCH_INGRESS (=y or =m)"
        }
        "hash map type" | "array map type" => "a kernel built with CONFIG_BPF_SYSCALL=y",
        "lru_hash map type" => "a kernel >= 4.10 with CONFIG_BPF_SYSCALL=y",
        "lpm_trie map type" => "a kernel >= 4.11 with CONFIG_BPF_SYSCALL=y",
        "sk_storage map type" => "a kernel >= 5.2 with CONFIG_BPF_SYSCALL=y",
        "cgroup connect/sendmsg/recvmsg hooks" => "upgrade the node's kernel to 5.2 or newer",
        "cgroup getpeername hooks" => "upgrade the node's kernel to 5.8 or newer",
        "batched map operations" => "upgrade the node's kernel to 5.6 or newer",
        "CAP_NET_ADMIN capability" => {
            "run the agent with CAP_NET_ADMIN (the chart grants it: agent.capabilities)"
        }
        "CAP_BPF capability" | "CAP_PERFMON capability" => {
            "run the agent with CAP_BPF and CAP_PERFMON (kernel 5.8+; the chart adds them for a ProxyConfig naming ebpf)"
        }
        "capabilities" => "run the probe where /proc/self/status has a CapEff line (Linux)",
        "tcx links (pinnable tc attachment)" => {
            "upgrade the node's kernel to 6.6 or newer (CONFIG_NET_XGRESS=y)"
        }
        "bpf_set_retval in cgroup_sock_addr programs" => "upgrade the node's kernel to 5.18 or newer",
        "bpf_get_netns_cookie in cgroup_sock_addr programs" => {
            "upgrade the node's kernel to 5.7 or newer"
        }
        "bpf_get_socket_cookie in cgroup_sock_addr programs" => {
            "upgrade the node's kernel to 5.0 or newer"
        }
        "bpf_fib_lookup in sched_cls programs" => "upgrade the node's kernel to 4.18 or newer",
        "bpf_redirect_neigh in sched_cls programs" => "upgrade the node's kernel to 5.10 or newer",
        "bpf_sk_storage_get in cgroup_sock_addr programs"
        | "bpf_sk_storage_get in cgroup_skb programs" => {
            "a newer kernel whose BPF offers sk_storage to cgroup programs (5.2+ for cgroup_skb; later for sock_addr)"
        }
        "network namespace for tests" => {
            "run the probe as root (CAP_SYS_ADMIN and CAP_NET_ADMIN) with the ip command (package iproute2)"
        }
        "IPVS netlink family" => "reload IPVS: modprobe -r ip_vs && modprobe ip_vs",
        "nf_tables verdict maps and numgen" => {
            "a kernel built with CONFIG_NF_TABLES and CONFIG_NFT_NUMGEN (=y or =m); modprobe nft_numgen"
        }
        _ => return None,
    })
}

/// The package that ships `tool`.
fn package_of(tool: &str) -> &str {
    match tool {
        "nft" => "nftables",
        "ipset" => "ipset",
        "bpftool" => "bpftool",
        t if t.starts_with("iptables") || t.starts_with("ip6tables") => "iptables",
        t => t,
    }
}

/// The kernel option that builds module `module`.
pub fn option_of_module(module: &str) -> String {
    let upper = |s: &str| s.to_ascii_uppercase().replace('-', "_");
    let named = match module {
        "ip_vs" => "IP_VS",
        "nf_conntrack" => "NF_CONNTRACK",
        "nf_tables" => "NF_TABLES",
        "iptable_nat" => "IP_NF_NAT",
        "iptable_filter" => "IP_NF_FILTER",
        "ip6table_nat" => "IP6_NF_NAT",
        "ip6table_filter" => "IP6_NF_FILTER",
        "br_netfilter" => "BRIDGE_NETFILTER",
        "xt_mark" => "NETFILTER_XT_MARK",
        "ip_set" => "IP_SET",
        _ => "",
    };
    if !named.is_empty() {
        return format!("CONFIG_{named}");
    }
    if let Some(sched) = module.strip_prefix("ip_vs_") {
        return format!("CONFIG_IP_VS_{}", upper(sched));
    }
    if let Some(m) = module.strip_prefix("xt_") {
        // Targets are upper-case in module names (xt_MASQUERADE), matches lower-case.
        let kind = if m.chars().all(|c| !c.is_ascii_lowercase()) {
            "TARGET"
        } else {
            "MATCH"
        };
        return format!("CONFIG_NETFILTER_XT_{kind}_{}", upper(m));
    }
    if let Some(m) = module.strip_prefix("nft_") {
        return format!("CONFIG_NFT_{}", upper(m));
    }
    if let Some(m) = module.strip_prefix("ip_set_") {
        return format!("CONFIG_IP_SET_{}", upper(m));
    }
    format!("the kernel option that builds {module}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_get_modprobe_or_their_kernel_option() {
        let idle = NotLoaded {
            module: "ip_vs_rr".into(),
            load_error: None,
        };
        assert_eq!(
            fix_for("ip_vs_rr", Some(&idle), "6.1.0"),
            "modprobe ip_vs_rr"
        );
        let failed = NotLoaded {
            module: "ip_vs".into(),
            load_error: Some("modprobe: FATAL: Module ip_vs not found".into()),
        };
        let f = fix_for("ip_vs", Some(&failed), "6.1.0-13-amd64");
        assert!(
            f.contains("CONFIG_IP_VS=m") && f.contains("6.1.0-13-amd64"),
            "{f}"
        );
        let f = fix_for("xt_statistic", None, "6.1.0");
        assert!(
            f.contains("CONFIG_NETFILTER_XT_MATCH_STATISTIC=m")
                && f.ends_with("modprobe xt_statistic"),
            "{f}"
        );
        assert_eq!(option_of_module("ip_vs_wlc"), "CONFIG_IP_VS_WLC");
        assert_eq!(
            option_of_module("xt_MASQUERADE"),
            "CONFIG_NETFILTER_XT_TARGET_MASQUERADE"
        );
        assert_eq!(option_of_module("ip_set_hash_ip"), "CONFIG_IP_SET_HASH_IP");
        assert_eq!(option_of_module("nft_numgen"), "CONFIG_NFT_NUMGEN");
        assert_eq!(option_of_module("iptable_nat"), "CONFIG_IP_NF_NAT");
    }

    #[test]
    fn tools_versions_mounts_and_kernel_features() {
        assert_eq!(
            fix_for("ipset command", None, "6.1"),
            "install ipset (package ipset)"
        );
        assert_eq!(
            fix_for("iptables-nft-restore command", None, "6.1"),
            "install iptables-nft-restore (package iptables)"
        );
        assert_eq!(
            fix_for("kernel >= 5.13", None, "5.4"),
            "upgrade the node's kernel to 5.13 or newer"
        );
        assert!(fix_for("bpffs support", None, "6.1").contains("mount -t bpf bpf /sys/fs/bpf"));
        assert!(fix_for("cgroup v2 mount", None, "6.1").starts_with("mount -t cgroup2"));
        assert!(fix_for("kernel BTF", None, "6.1").contains("CONFIG_DEBUG_INFO_BTF=y"));
        assert!(fix_for("something new", None, "6.1").starts_with("no known fix"));
    }
}

//! Pod bridges without `br_netfilter`. When pods share a Linux bridge (`cbr0`, `cni0`,
//! the sandbox's `cbr0`), a packet from one pod to another is switched, not routed: unless
//! `br_netfilter` is loaded with `net.bridge.bridge-nf-call-iptables = 1`, it skips the IP
//! hooks, so a reply to a ClusterIP connection is never un-NATed and the client's
//! connection times out (hairpin traffic still works). kubeadm's preflight requires the
//! same. Every mode is affected, so this is a node warning, not a mode's check.
//!
//! Reads `<sys>/class/net/*/bridge` (the bridges of the namespace `/sys` was mounted in)
//! and `<proc>/sys/net/bridge/bridge-nf-call-ip{,6}tables` (present only with
//! `br_netfilter`; per network namespace since Linux 5.3).

use std::fs;

use crate::roots::ProbeRoots;

/// The Linux bridges in this network namespace, sorted.
pub fn bridges(roots: &ProbeRoots) -> Vec<String> {
    let Ok(entries) = fs::read_dir(roots.sys.join("class/net")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().join("bridge").is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The warning for bridges whose traffic skips netfilter, if any.
pub fn br_netfilter_warning(roots: &ProbeRoots) -> Option<String> {
    let bridges = bridges(roots);
    if bridges.is_empty() {
        return None;
    }
    let on = format!(
        "bridge{} {}",
        if bridges.len() > 1 { "s" } else { "" },
        bridges.join(", ")
    );
    let consequence = "traffic between pods on it skips conntrack and the proxy's \
                       rules, so pod-to-ClusterIP connections to a pod on the same bridge \
                       time out";
    let dir = roots.proc.join("sys/net/bridge");
    if !dir.is_dir() {
        return Some(format!(
            "{on} present but kernel module br_netfilter is not loaded: {consequence} \
             (modprobe br_netfilter)"
        ));
    }
    let off: Vec<String> = ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"]
        .iter()
        .filter(|key| fs::read_to_string(dir.join(key)).is_ok_and(|value| value.trim() == "0"))
        .map(|key| format!("net.bridge.{key} = 0"))
        .collect();
    (!off.is_empty()).then(|| {
        format!(
            "{on} present with {}: {consequence} (set it to 1)",
            off.join(" and ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(bridges: &[&str], others: &[&str]) -> (tempfile::TempDir, ProbeRoots) {
        let dir = tempfile::tempdir().unwrap();
        for b in bridges {
            fs::create_dir_all(dir.path().join("sys/class/net").join(b).join("bridge")).unwrap();
        }
        for o in others {
            fs::create_dir_all(dir.path().join("sys/class/net").join(o)).unwrap();
        }
        let roots = ProbeRoots::under(dir.path());
        (dir, roots)
    }

    fn set(dir: &tempfile::TempDir, key: &str, value: &str) {
        let p = dir.path().join("proc/sys/net/bridge");
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join(key), value).unwrap();
    }

    #[test]
    fn no_bridge_no_warning() {
        let (_dir, roots) = node(&[], &["lo", "eth0"]);
        assert_eq!(br_netfilter_warning(&roots), None);
    }

    #[test]
    fn bridge_without_br_netfilter_warns() {
        let (_dir, roots) = node(&["cni0", "cbr0"], &["eth0"]);
        assert_eq!(bridges(&roots), ["cbr0", "cni0"]);
        let w = br_netfilter_warning(&roots).unwrap();
        assert!(
            w.starts_with(
                "bridges cbr0, cni0 present but kernel module br_netfilter is not loaded"
            ),
            "{w}"
        );
        assert!(w.ends_with("(modprobe br_netfilter)"), "{w}");
    }

    #[test]
    fn bridge_with_br_netfilter_on_is_fine_and_off_warns() {
        let (dir, roots) = node(&["cbr0"], &[]);
        set(&dir, "bridge-nf-call-iptables", "1\n");
        set(&dir, "bridge-nf-call-ip6tables", "1\n");
        assert_eq!(br_netfilter_warning(&roots), None);
        set(&dir, "bridge-nf-call-iptables", "0\n");
        let w = br_netfilter_warning(&roots).unwrap();
        assert!(
            w.starts_with("bridge cbr0 present with net.bridge.bridge-nf-call-iptables = 0"),
            "{w}"
        );
    }
}

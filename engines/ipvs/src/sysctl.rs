//! Kernel settings IPVS mode needs, as upstream kube-proxy sets them, in the network
//! namespace the engine programs: `net.ipv4.vs.conntrack=1` (IPVS connections get
//! conntrack entries, so the helper ruleset can masquerade them and the stale-flow
//! cleaner can find them), `expire_nodest_conn=1` (a connection whose real server was
//! deleted is dropped at its next packet, so the client reconnects to a live one),
//! `expire_quiescent_template=1` (persistence templates of weight-0 real servers
//! expire), `ip_forward=1`; with `strictARP`, `arp_ignore=1` and `arp_announce=2`.
//! `conn_reuse_mode` is set to 0 only on kernels 4.1 to 5.8, as upstream: 5.9 fixed
//! the slow reuse that made kube-proxy turn it off (kubernetes#93297).
//!
//! `/proc/sys/net` shows the namespace of the thread that opens it: written through
//! [`Netns::run`].

use std::{fs, path::PathBuf};

use switchyard_model::EngineError;
use switchyard_netlink::Netns;

/// One setting: path under `/proc/sys`, value.
pub type Setting = (&'static str, &'static str);

/// The settings for `strict_arp` on a kernel of `release` (`uname -r`).
pub fn settings(strict_arp: bool, release: &str) -> Vec<Setting> {
    let mut out = vec![
        ("net/ipv4/vs/conntrack", "1"),
        ("net/ipv4/vs/expire_nodest_conn", "1"),
        ("net/ipv4/vs/expire_quiescent_template", "1"),
        ("net/ipv4/ip_forward", "1"),
    ];
    let version = kernel_version(release);
    if ((4, 1)..(5, 9)).contains(&version) {
        out.push(("net/ipv4/vs/conn_reuse_mode", "0"));
    }
    if strict_arp {
        out.push(("net/ipv4/conf/all/arp_ignore", "1"));
        out.push(("net/ipv4/conf/all/arp_announce", "2"));
    }
    out
}

/// `(major, minor)` of a release string such as `6.1.0-57-amd64`.
pub fn kernel_version(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The running kernel's release.
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn write_all(settings: &[Setting]) -> Result<(), EngineError> {
    for (path, value) in settings {
        let file = PathBuf::from("/proc/sys").join(path);
        let current = fs::read_to_string(&file).map_err(|source| EngineError::Kernel {
            operation: format!("reading {}", file.display()),
            source,
        })?;
        if current.trim() != *value {
            fs::write(&file, value).map_err(|source| EngineError::Kernel {
                operation: format!("setting {} to {value}", file.display()),
                source,
            })?;
        }
    }
    Ok(())
}

/// Applies `settings` in `netns` (a name under `/run/netns`, or the caller's own).
pub fn apply(netns: Option<&str>, settings: &[Setting]) -> Result<(), EngineError> {
    Netns::from_name(netns).run(|| write_all(settings))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_reuse_mode_only_where_upstream_sets_it() {
        let has = |s: &[Setting], p: &str| s.iter().any(|(k, _)| *k == p);
        assert!(!has(
            &settings(false, "6.1.0-57-amd64"),
            "net/ipv4/vs/conn_reuse_mode"
        ));
        assert!(has(
            &settings(false, "5.4.0-100-generic"),
            "net/ipv4/vs/conn_reuse_mode"
        ));
        assert!(!has(
            &settings(false, "3.10.0"),
            "net/ipv4/vs/conn_reuse_mode"
        ));
        let strict = settings(true, "6.18.44");
        assert!(strict.contains(&("net/ipv4/conf/all/arp_ignore", "1")));
        assert!(strict.contains(&("net/ipv4/conf/all/arp_announce", "2")));
        assert_eq!(kernel_version("6.18.44-fc-v1147"), (6, 18));
    }
}

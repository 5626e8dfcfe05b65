//! [`Sysctls`]: the conntrack table's size and timeouts, set from the ProxyConfig
//! `conntrack` block as kube-proxy sets them (`cmd/kube-proxy/app/conntrack.go`,
//! `setupConntrack` in `server_linux.go`), and read back as [`TableUsage`].
//!
//! What is written, and when (kube-proxy's rules):
//! - `nf_conntrack_max` = max(`maxPerCore` × CPUs, `min`), written when it differs;
//!   `maxPerCore: 0` leaves it;
//! - the hash size (`/sys/module/nf_conntrack/parameters/hashsize`): unset, it is only
//!   ever *raised*, to a quarter of the maximum; an explicit `hashSize` is written as
//!   given; `0` leaves it;
//! - `nf_conntrack_tcp_timeout_established`, `…_close_wait`, `nf_conntrack_udp_timeout`,
//!   `…_udp_timeout_stream` in seconds, written when they differ; `nf_conntrack_tcp_be_liberal`
//!   only turned on.
//!
//! Unlike kube-proxy, a refused write does not stop the others (kube-proxy exits on the
//! first one but a read-only sysfs): every setting is tried and each refusal is reported
//! with its cause ([`Refusal`]), for the agent's log, ProxyNode status and metrics.
//!
//! Which namespace: `nf_conntrack_max` and the hash size are global. The kernel lets only
//! the initial network namespace write them (mode 0444 elsewhere: `EACCES`, even for
//! root; the hash size answers `EOPNOTSUPP`), while the timeouts and
//! `nf_conntrack_count` belong to each namespace. The agent runs in the node's namespace
//! (`hostNetwork`), so it sets and reads the node's. The file locations are parameters
//! ([`Sysctls::under`]) so tests never write the host's global values.

use std::{
    fmt, io,
    path::{Path, PathBuf},
};

use switchyard_crd::ConntrackSettings;

/// One conntrack setting Switchyard may write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Setting {
    Max,
    HashSize,
    TcpEstablishedTimeout,
    TcpCloseWaitTimeout,
    TcpBeLiberal,
    UdpTimeout,
    UdpStreamTimeout,
}

impl Setting {
    pub const ALL: [Setting; 7] = [
        Setting::Max,
        Setting::HashSize,
        Setting::TcpEstablishedTimeout,
        Setting::TcpCloseWaitTimeout,
        Setting::TcpBeLiberal,
        Setting::UdpTimeout,
        Setting::UdpStreamTimeout,
    ];

    /// The kernel's name for it (the sysctl, or the module parameter).
    pub fn kernel_name(self) -> &'static str {
        match self {
            Setting::Max => "nf_conntrack_max",
            Setting::HashSize => "nf_conntrack hashsize",
            Setting::TcpEstablishedTimeout => "nf_conntrack_tcp_timeout_established",
            Setting::TcpCloseWaitTimeout => "nf_conntrack_tcp_timeout_close_wait",
            Setting::TcpBeLiberal => "nf_conntrack_tcp_be_liberal",
            Setting::UdpTimeout => "nf_conntrack_udp_timeout",
            Setting::UdpStreamTimeout => "nf_conntrack_udp_timeout_stream",
        }
    }

    /// The ProxyConfig field it comes from.
    pub fn field(self) -> &'static str {
        match self {
            Setting::Max => "spec.conntrack.maxPerCore",
            Setting::HashSize => "spec.conntrack.hashSize",
            Setting::TcpEstablishedTimeout => "spec.conntrack.tcpEstablishedTimeout",
            Setting::TcpCloseWaitTimeout => "spec.conntrack.tcpCloseWaitTimeout",
            Setting::TcpBeLiberal => "spec.conntrack.tcpBeLiberal",
            Setting::UdpTimeout => "spec.conntrack.udpTimeout",
            Setting::UdpStreamTimeout => "spec.conntrack.udpStreamTimeout",
        }
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kernel_name())
    }
}

/// Reading or writing one conntrack file failed.
#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} holds {text:?}, not a number")]
    NotANumber { path: PathBuf, text: String },
    #[error("writing {value} to {path}: {source}{}", hint(source))]
    Write {
        path: PathBuf,
        value: u64,
        #[source]
        source: io::Error,
    },
}

impl SysctlError {
    /// The file is absent: `nf_conntrack` is not loaded yet (the engines' rules load it),
    /// so a later attempt may succeed.
    pub fn is_not_loaded(&self) -> bool {
        matches!(self, SysctlError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Why the kernel commonly refuses, after the errno.
fn hint(e: &io::Error) -> &'static str {
    use nix::errno::Errno;
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::EROFS) => {
            " (mounted read-only: the container runtime gave the agent a read-only /proc/sys or /sys; run it privileged)"
        }
        Some(Errno::EACCES | Errno::EPERM) => {
            " (global settings are writable only from the node's initial network namespace, with CAP_NET_ADMIN: run the agent with hostNetwork and privileges)"
        }
        Some(Errno::EOPNOTSUPP) => {
            " (the hash size can be changed only from the node's initial network namespace)"
        }
        _ => "",
    }
}

/// What applying one setting did.
#[derive(Debug)]
pub enum Outcome {
    /// The kernel already had the wanted value (or a larger hash size).
    Unchanged,
    /// Written; the value before.
    Set { previous: u64 },
    /// The kernel (or the file system) refused, or the file could not be read.
    Refused(SysctlError),
}

/// One setting's wanted value and what became of it.
#[derive(Debug)]
pub struct Applied {
    pub setting: Setting,
    pub wanted: u64,
    pub outcome: Outcome,
}

/// A refused setting, in words for logs and status: `nf_conntrack_max = 131072
/// (spec.conntrack.maxPerCore): writing 131072 to …: Permission denied (…)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub setting: Setting,
    pub wanted: u64,
    pub message: String,
    /// The file was absent (`nf_conntrack` not loaded): worth retrying later.
    pub retry: bool,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} = {} ({}): {}",
            self.setting,
            self.wanted,
            self.setting.field(),
            self.message
        )
    }
}

/// The result of [`Sysctls::apply`]: one entry per setting the config asks for.
#[derive(Debug, Default)]
pub struct Tuning {
    pub applied: Vec<Applied>,
}

impl Tuning {
    /// The settings that were not applied, each with why.
    pub fn refusals(&self) -> Vec<Refusal> {
        self.applied
            .iter()
            .filter_map(|a| match &a.outcome {
                Outcome::Refused(e) => Some(Refusal {
                    setting: a.setting,
                    wanted: a.wanted,
                    message: e.to_string(),
                    retry: e.is_not_loaded(),
                }),
                _ => None,
            })
            .collect()
    }
}

/// How full the conntrack table of this network namespace is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableUsage {
    /// `nf_conntrack_count`: entries in this namespace's table.
    pub entries: u64,
    /// `nf_conntrack_max`: the limit each namespace's count is held to.
    pub limit: u64,
}

impl TableUsage {
    /// Entries over limit, 0.0 for no limit (`nf_conntrack_max` 0 means none).
    pub fn fill(&self) -> f64 {
        if self.limit == 0 {
            0.0
        } else {
            self.entries as f64 / self.limit as f64
        }
    }
}

/// Where the conntrack settings live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sysctls {
    /// `/proc/sys/net/netfilter` (per network namespace of the reading thread).
    netfilter: PathBuf,
    /// `/sys/module/nf_conntrack/parameters/hashsize`.
    hashsize: PathBuf,
}

impl Default for Sysctls {
    fn default() -> Self {
        Sysctls::host()
    }
}

impl Sysctls {
    /// The running kernel's files, as seen from the calling thread's network namespace.
    pub fn host() -> Self {
        Sysctls::under(
            "/proc/sys/net/netfilter",
            "/sys/module/nf_conntrack/parameters/hashsize",
        )
    }

    /// Files elsewhere: a directory standing for `/proc/sys/net/netfilter`, and a file
    /// standing for the hash size parameter.
    pub fn under(netfilter: impl Into<PathBuf>, hashsize: impl Into<PathBuf>) -> Self {
        Sysctls {
            netfilter: netfilter.into(),
            hashsize: hashsize.into(),
        }
    }

    fn path(&self, setting: Setting) -> PathBuf {
        match setting {
            Setting::HashSize => self.hashsize.clone(),
            other => self.netfilter.join(other.kernel_name()),
        }
    }

    /// The current value of `setting`.
    pub fn read(&self, setting: Setting) -> Result<u64, SysctlError> {
        read_number(&self.path(setting))
    }

    /// How full this namespace's table is.
    pub fn usage(&self) -> Result<TableUsage, SysctlError> {
        Ok(TableUsage {
            entries: read_number(&self.netfilter.join("nf_conntrack_count"))?,
            limit: self.read(Setting::Max)?,
        })
    }

    /// Applies `settings` for a node with `cpus` CPUs (see the module doc for the rules).
    pub fn apply(&self, settings: &ConntrackSettings, cpus: u32) -> Tuning {
        let mut tuning = Tuning::default();
        let max = settings.max_entries(cpus).map(u64::from);
        if let Some(max) = max {
            tuning
                .applied
                .push(self.set(Setting::Max, max, Rule::Exact));
        }
        match (settings.hash_size, max) {
            (Some(0), _) | (None, None) => {}
            (Some(n), _) => {
                let wanted = u64::from(n);
                tuning
                    .applied
                    .push(self.set(Setting::HashSize, wanted, Rule::Exact));
            }
            (None, Some(max)) => {
                let wanted = max / 4;
                tuning
                    .applied
                    .push(self.set(Setting::HashSize, wanted, Rule::RaiseOnly));
            }
        }
        let seconds = |d: Option<std::time::Duration>| d.map(|d| d.as_secs());
        for (setting, wanted) in [
            (
                Setting::TcpEstablishedTimeout,
                seconds(settings.tcp_established_timeout),
            ),
            (
                Setting::TcpCloseWaitTimeout,
                seconds(settings.tcp_close_wait_timeout),
            ),
            (Setting::TcpBeLiberal, settings.tcp_be_liberal.then_some(1)),
            (Setting::UdpTimeout, seconds(settings.udp_timeout)),
            (
                Setting::UdpStreamTimeout,
                seconds(settings.udp_stream_timeout),
            ),
        ] {
            if let Some(wanted) = wanted {
                tuning.applied.push(self.set(setting, wanted, Rule::Exact));
            }
        }
        tuning
    }

    fn set(&self, setting: Setting, wanted: u64, rule: Rule) -> Applied {
        let path = self.path(setting);
        let outcome = match read_number(&path) {
            Err(e) => Outcome::Refused(e),
            Ok(now) if now == wanted || (rule == Rule::RaiseOnly && now >= wanted) => {
                Outcome::Unchanged
            }
            Ok(previous) => match std::fs::write(&path, wanted.to_string()) {
                Ok(()) => Outcome::Set { previous },
                Err(source) => Outcome::Refused(SysctlError::Write {
                    path,
                    value: wanted,
                    source,
                }),
            },
        };
        Applied {
            setting,
            wanted,
            outcome,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    Exact,
    /// Written only when the kernel's value is smaller (kube-proxy's hash size rule).
    RaiseOnly,
}

fn read_number(path: &Path) -> Result<u64, SysctlError> {
    let text = std::fs::read_to_string(path).map_err(|source| SysctlError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.trim().parse().map_err(|_| SysctlError::NotANumber {
        path: path.to_path_buf(),
        text: text.trim().chars().take(32).collect(),
    })
}

/// The node's CPU count as kube-proxy counts it for `maxPerCore`: the CPUs online
/// (`/sys/devices/system/cpu/online`, e.g. `0-3,6`), not the process's affinity or
/// cgroup quota; the standard library's count when that file is unreadable.
pub fn node_cpus(sys: &Path) -> u32 {
    std::fs::read_to_string(sys.join("devices/system/cpu/online"))
        .ok()
        .and_then(|list| count_cpu_list(&list))
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
                .unwrap_or(1)
        })
}

/// Counts a kernel CPU list (`0-3,6,8-9`); `None` when it does not parse.
fn count_cpu_list(list: &str) -> Option<u32> {
    let mut n = 0u32;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let a = part.parse::<u32>().ok()?;
                (a, a)
            }
        };
        n = n.checked_add(b.checked_sub(a)?.checked_add(1)?)?;
    }
    (n > 0).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpu_list("0-3\n"), Some(4));
        assert_eq!(count_cpu_list("0-3,6,8-9"), Some(7));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("x"), None);
    }

    /// A fake `/proc/sys/net/netfilter` and hashsize parameter holding `values`.
    fn fake(tag: &str, values: &[(&str, u64)], hashsize: u64) -> (PathBuf, Sysctls) {
        let dir = std::env::temp_dir().join(format!("sy-ct-sysctl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("netfilter")).unwrap();
        for (name, v) in values {
            std::fs::write(dir.join("netfilter").join(name), format!("{v}\n")).unwrap();
        }
        std::fs::write(dir.join("hashsize"), format!("{hashsize}\n")).unwrap();
        let s = Sysctls::under(dir.join("netfilter"), dir.join("hashsize"));
        (dir, s)
    }

    fn settings() -> ConntrackSettings {
        switchyard_crd::ConntrackConfig::default()
            .settings()
            .unwrap()
    }

    const KERNEL: [(&str, u64); 7] = [
        ("nf_conntrack_max", 65536),
        ("nf_conntrack_count", 10),
        ("nf_conntrack_tcp_timeout_established", 432000),
        ("nf_conntrack_tcp_timeout_close_wait", 60),
        ("nf_conntrack_tcp_be_liberal", 0),
        ("nf_conntrack_udp_timeout", 30),
        ("nf_conntrack_udp_timeout_stream", 120),
    ];

    #[test]
    fn defaults_are_applied_as_kube_proxy_applies_them() {
        let (dir, s) = fake("defaults", &KERNEL, 16384);
        let t = s.apply(&settings(), 8);
        assert!(t.refusals().is_empty(), "{:?}", t.refusals());
        // max(32768 × 8, 131072), hash size raised to a quarter, timeouts in seconds.
        assert_eq!(s.read(Setting::Max).unwrap(), 262144);
        assert_eq!(s.read(Setting::HashSize).unwrap(), 65536);
        assert_eq!(s.read(Setting::TcpEstablishedTimeout).unwrap(), 86400);
        assert_eq!(s.read(Setting::TcpCloseWaitTimeout).unwrap(), 3600);
        // Unset: left alone.
        assert_eq!(s.read(Setting::UdpTimeout).unwrap(), 30);
        assert_eq!(s.read(Setting::TcpBeLiberal).unwrap(), 0);
        let set: Vec<Setting> = t.applied.iter().map(|a| a.setting).collect();
        assert_eq!(
            set,
            [
                Setting::Max,
                Setting::HashSize,
                Setting::TcpEstablishedTimeout,
                Setting::TcpCloseWaitTimeout
            ]
        );
        assert!(matches!(
            t.applied[0].outcome,
            Outcome::Set { previous: 65536 }
        ));
        // Again: nothing to write.
        let again = s.apply(&settings(), 8);
        assert!(again
            .applied
            .iter()
            .all(|a| matches!(a.outcome, Outcome::Unchanged)));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn hash_size_is_only_raised_unless_given() {
        let (dir, s) = fake("hash", &KERNEL, 1_000_000);
        s.apply(&settings(), 2);
        assert_eq!(
            s.read(Setting::HashSize).unwrap(),
            1_000_000,
            "never lowered"
        );
        let mut given = settings();
        given.hash_size = Some(4096);
        s.apply(&given, 2);
        assert_eq!(s.read(Setting::HashSize).unwrap(), 4096, "as given");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn zero_leaves_the_kernel_values_and_udp_is_set_when_given() {
        let (dir, s) = fake("zero", &KERNEL, 16384);
        let ct = switchyard_crd::ConntrackConfig {
            max_per_core: Some(0),
            tcp_established_timeout: Some("0".into()),
            tcp_close_wait_timeout: Some("0s".into()),
            udp_timeout: Some("45s".into()),
            udp_stream_timeout: Some("3m".into()),
            tcp_be_liberal: true,
            ..Default::default()
        }
        .settings()
        .unwrap();
        let t = s.apply(&ct, 4);
        assert_eq!(s.read(Setting::Max).unwrap(), 65536);
        assert_eq!(s.read(Setting::HashSize).unwrap(), 16384);
        assert_eq!(s.read(Setting::TcpEstablishedTimeout).unwrap(), 432000);
        assert_eq!(s.read(Setting::UdpTimeout).unwrap(), 45);
        assert_eq!(s.read(Setting::UdpStreamTimeout).unwrap(), 180);
        assert_eq!(s.read(Setting::TcpBeLiberal).unwrap(), 1);
        assert_eq!(t.applied.len(), 3);
        assert_eq!(ct.udp_timeout, Some(Duration::from_secs(45)));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missing_module_is_a_retryable_refusal_and_usage_reads_count_and_max() {
        let (dir, s) = fake("usage", &KERNEL, 16384);
        assert_eq!(
            s.usage().unwrap(),
            TableUsage {
                entries: 10,
                limit: 65536
            }
        );
        let absent = Sysctls::under(dir.join("none"), dir.join("none/hashsize"));
        let refusals = absent.apply(&settings(), 2).refusals();
        assert_eq!(refusals.len(), 4);
        assert!(refusals.iter().all(|r| r.retry), "{refusals:?}");
        let text = refusals[0].to_string();
        assert!(
            text.starts_with("nf_conntrack_max = 131072 (spec.conntrack.maxPerCore): reading"),
            "{text}"
        );
        assert!(absent.usage().unwrap_err().is_not_loaded());
        std::fs::remove_dir_all(dir).unwrap();
    }
}

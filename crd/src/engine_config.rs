//! The per-engine blocks of a `ProxyConfig` (`ipvs`, `conntrack`, `ebpf`): the CRD types
//! an operator writes, and the typed, defaulted settings an engine receives.
//!
//! Defaults are kube-proxy's where kube-proxy has the setting (`KubeProxyIPVSConfiguration`,
//! `KubeProxyConntrackConfiguration`): scheduler `rr`, conntrack `maxPerCore` 32768, `min`
//! 131072, TCP established 24 h, close-wait 1 h. As in kube-proxy, a `0` duration or count
//! means "leave the kernel's value", which the settings spell `None`.
//!
//! Each settings struct is `Clone + Debug + PartialEq`: the runner compares an engine's
//! block before and after a config change to decide whether that engine is rebuilt.

use std::{path::PathBuf, time::Duration};

use ipnet::IpNet;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::bounds::{self, DurationLimit};
use crate::duration::parse_duration;
use crate::ConfigError;

/// An IPVS scheduler, as `ipvsadm -s` names it.
#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash,
)]
#[serde(rename_all = "lowercase")]
pub enum IpvsScheduler {
    /// Round robin (kube-proxy's default).
    #[default]
    Rr,
    /// Weighted round robin.
    Wrr,
    /// Least connection.
    Lc,
    /// Weighted least connection.
    Wlc,
    /// Locality-based least connection.
    Lblc,
    /// Locality-based least connection with replication.
    Lblcr,
    /// Destination hashing.
    Dh,
    /// Source hashing.
    Sh,
    /// Shortest expected delay.
    Sed,
    /// Never queue.
    Nq,
    /// Maglev hashing.
    Mh,
}

impl IpvsScheduler {
    /// The name `ipvsadm` and the kernel module (`ip_vs_<name>`) use.
    pub fn as_str(self) -> &'static str {
        match self {
            IpvsScheduler::Rr => "rr",
            IpvsScheduler::Wrr => "wrr",
            IpvsScheduler::Lc => "lc",
            IpvsScheduler::Wlc => "wlc",
            IpvsScheduler::Lblc => "lblc",
            IpvsScheduler::Lblcr => "lblcr",
            IpvsScheduler::Dh => "dh",
            IpvsScheduler::Sh => "sh",
            IpvsScheduler::Sed => "sed",
            IpvsScheduler::Nq => "nq",
            IpvsScheduler::Mh => "mh",
        }
    }
}

/// A scheduler flag, as `ipvsadm -b` names it; each belongs to one scheduler.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpvsSchedulerFlag {
    /// `sh`: fall back to another real server when the hashed one is unavailable.
    #[serde(rename = "sh-fallback")]
    ShFallback,
    /// `sh`: hash the source port too.
    #[serde(rename = "sh-port")]
    ShPort,
    /// `mh`: fall back to another real server when the hashed one is unavailable.
    #[serde(rename = "mh-fallback")]
    MhFallback,
    /// `mh`: hash the source port too.
    #[serde(rename = "mh-port")]
    MhPort,
}

impl IpvsSchedulerFlag {
    pub fn as_str(self) -> &'static str {
        match self {
            IpvsSchedulerFlag::ShFallback => "sh-fallback",
            IpvsSchedulerFlag::ShPort => "sh-port",
            IpvsSchedulerFlag::MhFallback => "mh-fallback",
            IpvsSchedulerFlag::MhPort => "mh-port",
        }
    }

    /// The scheduler this flag belongs to.
    pub fn scheduler(self) -> IpvsScheduler {
        match self {
            IpvsSchedulerFlag::ShFallback | IpvsSchedulerFlag::ShPort => IpvsScheduler::Sh,
            IpvsSchedulerFlag::MhFallback | IpvsSchedulerFlag::MhPort => IpvsScheduler::Mh,
        }
    }
}

/// IPVS tuning (kube-proxy's `ipvs` block).
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.schedulerFlags) || self.schedulerFlags.all(f, f.startsWith(has(self.scheduler) ? self.scheduler : 'rr'))").message("schedulerFlags must belong to the scheduler (sh-* with sh, mh-* with mh)"))]
pub struct IpvsConfig {
    /// IPVS scheduler for every virtual server (default `rr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 8))]
    pub scheduler: Option<IpvsScheduler>,
    /// Scheduler flags (`sh-fallback`, `sh-port` with `sh`; `mh-fallback`, `mh-port` with
    /// `mh`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2), transform = scheduler_flag_items)]
    pub scheduler_flags: Vec<IpvsSchedulerFlag>,
    /// Answer ARP only for addresses on the receiving interface (`arp_ignore=1`,
    /// `arp_announce=2`), needed by some load balancers. Default false.
    #[serde(default, rename = "strictARP")]
    pub strict_arp: bool,
    /// Idle timeout of IPVS TCP connections; `0` leaves the kernel's (15m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = bounds::ipvs_timeout)]
    pub tcp_timeout: Option<String>,
    /// Timeout of IPVS TCP connections after a FIN; `0` leaves the kernel's (2m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = bounds::ipvs_timeout)]
    pub tcp_fin_timeout: Option<String>,
    /// Timeout of IPVS UDP flows; `0` leaves the kernel's (5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = bounds::ipvs_timeout)]
    pub udp_timeout: Option<String>,
    /// CIDRs whose IPVS virtual servers the agent must never touch (kube-proxy's
    /// `excludeCIDRs`).
    #[serde(
        default,
        rename = "excludeCIDRs",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(length(max = 16), transform = bounds::cidr_list)]
    pub exclude_cidrs: Vec<String>,
}

fn scheduler_flag_items(schema: &mut schemars::Schema) {
    bounds::bound_items(schema, 16);
}

/// Conntrack sizing and timeouts (kube-proxy's `conntrack` block).
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConntrackConfig {
    /// Conntrack entries per CPU core; `nf_conntrack_max` = max(maxPerCore × cores, min).
    /// Default 32768; `0` leaves the kernel's limit (and `min` is ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4194304))]
    pub max_per_core: Option<i32>,
    /// Lower bound of `nf_conntrack_max`. Default 131072.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 67108864))]
    pub min: Option<i32>,
    /// Conntrack hash table buckets (`nf_conntrack_buckets`). Unset: a quarter of
    /// `nf_conntrack_max`, as kube-proxy sets it; `0` leaves the kernel's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16777216))]
    pub hash_size: Option<i32>,
    /// `nf_conntrack_tcp_timeout_established`. Default 24h; `0` leaves the kernel's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = bounds::conntrack_timeout)]
    pub tcp_established_timeout: Option<String>,
    /// `nf_conntrack_tcp_timeout_close_wait`. Default 1h; `0` leaves the kernel's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = bounds::conntrack_timeout)]
    pub tcp_close_wait_timeout: Option<String>,
    /// `nf_conntrack_tcp_be_liberal`: do not mark out-of-window packets INVALID.
    #[serde(default)]
    pub tcp_be_liberal: bool,
    /// `nf_conntrack_udp_timeout`; unset or `0` leaves the kernel's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = bounds::conntrack_timeout)]
    pub udp_timeout: Option<String>,
    /// `nf_conntrack_udp_timeout_stream`; unset or `0` leaves the kernel's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = bounds::conntrack_timeout)]
    pub udp_stream_timeout: Option<String>,
}

/// eBPF engine tuning.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EbpfConfig {
    /// cgroup v2 directory the socket programs attach to (default: the node's cgroup v2
    /// root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("must be an absolute path"))]
    pub cgroup_path: Option<String>,
    /// Capacity of the service map (default 65536).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_services: Option<u32>,
    /// Capacity of the backend map (default 262144).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4194304))]
    pub max_endpoints: Option<u32>,
}

/// Validated `ipvs` block.
#[derive(Clone, Debug, PartialEq)]
pub struct IpvsSettings {
    pub scheduler: IpvsScheduler,
    pub scheduler_flags: Vec<IpvsSchedulerFlag>,
    pub strict_arp: bool,
    /// `None`: leave the kernel's value.
    pub tcp_timeout: Option<Duration>,
    pub tcp_fin_timeout: Option<Duration>,
    pub udp_timeout: Option<Duration>,
    pub exclude_cidrs: Vec<IpNet>,
}

/// Validated `conntrack` block.
#[derive(Clone, Debug, PartialEq)]
pub struct ConntrackSettings {
    /// `None`: leave `nf_conntrack_max` alone.
    pub max_per_core: Option<u32>,
    pub min: u32,
    /// `None`: derive from the maximum (a quarter of it); `Some(0)`: leave the kernel's.
    pub hash_size: Option<u32>,
    /// `None`: leave the kernel's value (for every timeout).
    pub tcp_established_timeout: Option<Duration>,
    pub tcp_close_wait_timeout: Option<Duration>,
    pub tcp_be_liberal: bool,
    pub udp_timeout: Option<Duration>,
    pub udp_stream_timeout: Option<Duration>,
}

impl ConntrackSettings {
    /// `nf_conntrack_max` for a node with `cores` CPUs, as kube-proxy computes it;
    /// `None` leaves the kernel's.
    pub fn max_entries(&self, cores: u32) -> Option<u32> {
        self.max_per_core
            .map(|per_core| per_core.saturating_mul(cores.max(1)).max(self.min))
    }

    /// `nf_conntrack_buckets` to set for that node; `None` leaves the kernel's.
    pub fn buckets(&self, cores: u32) -> Option<u32> {
        match self.hash_size {
            Some(0) => None,
            Some(n) => Some(n),
            None => self.max_entries(cores).map(|m| (m / 4).max(1)),
        }
    }
}

/// Validated `ebpf` block.
#[derive(Clone, Debug, PartialEq)]
pub struct EbpfSettings {
    /// `None`: the node's cgroup v2 root.
    pub cgroup_path: Option<PathBuf>,
    pub max_services: u32,
    pub max_endpoints: u32,
}

fn bad(field: String, message: String) -> ConfigError {
    ConfigError { field, message }
}

/// A duration field: unset → `default`; `0` → `None` (leave the kernel's value).
fn timeout(
    field: &str,
    value: &Option<String>,
    default: Option<Duration>,
    limit: DurationLimit,
) -> Result<Option<Duration>, ConfigError> {
    let Some(s) = value else {
        return Ok(default);
    };
    if s.len() > bounds::MAX_DURATION_LENGTH {
        return Err(bad(
            field.into(),
            format!("longer than {} characters", bounds::MAX_DURATION_LENGTH),
        ));
    }
    let d = parse_duration(s).map_err(|e| bad(field.into(), e.to_string()))?;
    let d = limit.check(d).map_err(|m| bad(field.into(), m))?;
    Ok((!d.is_zero()).then_some(d))
}

fn count(field: &str, value: Option<i32>, default: u32, max: u32) -> Result<u32, ConfigError> {
    let v = value.map_or(i64::from(default), i64::from);
    if v < 0 || v > i64::from(max) {
        return Err(bad(field.into(), format!("{v} is out of range 0..={max}")));
    }
    Ok(v as u32)
}

pub(crate) fn cidrs(field: &str, list: &[String], max: usize) -> Result<Vec<IpNet>, ConfigError> {
    if list.len() > max {
        return Err(bad(
            field.into(),
            format!("{} entries, at most {max} allowed", list.len()),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, c)| {
            c.trim()
                .parse::<IpNet>()
                .map(|n| n.trunc())
                .map_err(|_| bad(format!("{field}[{i}]"), format!("{c:?} is not a CIDR")))
        })
        .collect()
}

impl IpvsConfig {
    pub fn settings(&self) -> Result<IpvsSettings, ConfigError> {
        let scheduler = self.scheduler.unwrap_or_default();
        if self.scheduler_flags.len() > 2 {
            return Err(bad(
                "ipvs.schedulerFlags".into(),
                "at most 2 flags allowed".into(),
            ));
        }
        for (i, f) in self.scheduler_flags.iter().enumerate() {
            if f.scheduler() != scheduler {
                return Err(bad(
                    format!("ipvs.schedulerFlags[{i}]"),
                    format!(
                        "{} is a flag of the {} scheduler, not of {}",
                        f.as_str(),
                        f.scheduler().as_str(),
                        scheduler.as_str()
                    ),
                ));
            }
        }
        let t = |field: &str, v: &Option<String>| {
            timeout(
                &format!("ipvs.{field}"),
                v,
                None,
                DurationLimit::IPVS_TIMEOUT,
            )
        };
        Ok(IpvsSettings {
            scheduler,
            scheduler_flags: self.scheduler_flags.clone(),
            strict_arp: self.strict_arp,
            tcp_timeout: t("tcpTimeout", &self.tcp_timeout)?,
            tcp_fin_timeout: t("tcpFinTimeout", &self.tcp_fin_timeout)?,
            udp_timeout: t("udpTimeout", &self.udp_timeout)?,
            exclude_cidrs: cidrs("ipvs.excludeCIDRs", &self.exclude_cidrs, bounds::MAX_CIDRS)?,
        })
    }
}

impl ConntrackConfig {
    pub fn settings(&self) -> Result<ConntrackSettings, ConfigError> {
        let t = |field: &str, v: &Option<String>, default: Option<Duration>| {
            timeout(
                &format!("conntrack.{field}"),
                v,
                default,
                DurationLimit::CONNTRACK_TIMEOUT,
            )
        };
        let max_per_core = count("conntrack.maxPerCore", self.max_per_core, 32768, 4194304)?;
        Ok(ConntrackSettings {
            max_per_core: (max_per_core != 0).then_some(max_per_core),
            min: count("conntrack.min", self.min, 131072, 67108864)?,
            hash_size: match self.hash_size {
                None => None,
                Some(_) => Some(count("conntrack.hashSize", self.hash_size, 0, 16777216)?),
            },
            tcp_established_timeout: t(
                "tcpEstablishedTimeout",
                &self.tcp_established_timeout,
                Some(Duration::from_secs(24 * 3600)),
            )?,
            tcp_close_wait_timeout: t(
                "tcpCloseWaitTimeout",
                &self.tcp_close_wait_timeout,
                Some(Duration::from_secs(3600)),
            )?,
            tcp_be_liberal: self.tcp_be_liberal,
            udp_timeout: t("udpTimeout", &self.udp_timeout, None)?,
            udp_stream_timeout: t("udpStreamTimeout", &self.udp_stream_timeout, None)?,
        })
    }
}

impl EbpfConfig {
    pub fn settings(&self) -> Result<EbpfSettings, ConfigError> {
        let cgroup_path = match &self.cgroup_path {
            None => None,
            Some(p) if p.starts_with('/') && p.len() <= bounds::MAX_PATH_LENGTH => {
                Some(PathBuf::from(p))
            }
            Some(p) => {
                return Err(bad(
                    "ebpf.cgroupPath".into(),
                    format!(
                        "{:?} must be an absolute path of at most {} characters",
                        p.chars().take(64).collect::<String>(),
                        bounds::MAX_PATH_LENGTH
                    ),
                ))
            }
        };
        let size = |field: &str, v: Option<u32>, default: u32, max: u32| match v {
            None => Ok(default),
            Some(n) if (1..=max).contains(&n) => Ok(n),
            Some(n) => Err(bad(
                format!("ebpf.{field}"),
                format!("{n} is out of range 1..={max}"),
            )),
        };
        Ok(EbpfSettings {
            cgroup_path,
            max_services: size("maxServices", self.max_services, 65536, 1048576)?,
            max_endpoints: size("maxEndpoints", self.max_endpoints, 262144, 4194304)?,
        })
    }
}

/// The three blocks, validated, with defaults for absent ones.
pub(crate) fn engine_settings(
    ipvs: &Option<IpvsConfig>,
    conntrack: &Option<ConntrackConfig>,
    ebpf: &Option<EbpfConfig>,
) -> Result<(IpvsSettings, ConntrackSettings, EbpfSettings), ConfigError> {
    Ok((
        ipvs.clone().unwrap_or_default().settings()?,
        conntrack.clone().unwrap_or_default().settings()?,
        ebpf.clone().unwrap_or_default().settings()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_kube_proxys() {
        let (ipvs, ct, ebpf) = engine_settings(&None, &None, &None).unwrap();
        assert_eq!(ipvs.scheduler, IpvsScheduler::Rr);
        assert_eq!(ipvs.tcp_timeout, None);
        assert_eq!(ct.max_per_core, Some(32768));
        assert_eq!(ct.min, 131072);
        assert_eq!(ct.tcp_established_timeout, Some(Duration::from_secs(86400)));
        assert_eq!(ct.tcp_close_wait_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(ct.max_entries(2), Some(131072));
        assert_eq!(ct.max_entries(8), Some(262144));
        assert_eq!(ct.buckets(8), Some(65536));
        assert_eq!(ebpf.max_services, 65536);
        assert_eq!(ebpf.cgroup_path, None);
    }

    #[test]
    fn zero_leaves_the_kernel_value() {
        let ct = ConntrackConfig {
            max_per_core: Some(0),
            tcp_established_timeout: Some("0".into()),
            hash_size: Some(0),
            ..Default::default()
        }
        .settings()
        .unwrap();
        assert_eq!(ct.max_entries(4), None);
        assert_eq!(ct.buckets(4), None);
        assert_eq!(ct.tcp_established_timeout, None);
    }

    #[test]
    fn errors_name_the_field() {
        let e = IpvsConfig {
            scheduler: Some(IpvsScheduler::Rr),
            scheduler_flags: vec![IpvsSchedulerFlag::ShPort],
            ..Default::default()
        }
        .settings()
        .unwrap_err();
        assert_eq!(e.field, "ipvs.schedulerFlags[0]");
        let e = IpvsConfig {
            tcp_timeout: Some("3000000000000000h".into()),
            ..Default::default()
        }
        .settings()
        .unwrap_err();
        assert_eq!(e.field, "ipvs.tcpTimeout");
        let e = ConntrackConfig {
            udp_timeout: Some("200h".into()),
            ..Default::default()
        }
        .settings()
        .unwrap_err();
        assert_eq!(e.field, "conntrack.udpTimeout");
        assert!(e.message.contains("168h"), "{e}");
        let e = EbpfConfig {
            cgroup_path: Some("relative".into()),
            ..Default::default()
        }
        .settings()
        .unwrap_err();
        assert_eq!(e.field, "ebpf.cgroupPath");
        let e = ConntrackConfig {
            max_per_core: Some(-1),
            ..Default::default()
        }
        .settings()
        .unwrap_err();
        assert_eq!(e.field, "conntrack.maxPerCore");
    }
}

//! The engines this binary has, in one list: for each mode, how to build its engine from
//! the ProxyConfig, which kinds of kernel state it can leave behind (for `cleanup` and
//! for removing another mode's leftovers at start), whether a ProxyConfig change
//! concerns it, and its rank for `auto`. Adding an engine adds an entry here and touches
//! nothing else in the binary.

use std::path::PathBuf;

use switchyard_core::runner::EngineFactory;
use switchyard_crd::{EffectiveConfig, IpvsSchedulerFlag, IpvsSettings, Mode, ModeCapability};
use switchyard_ebpf::{EbpfEngine, EbpfOptions, MapSizes};
use switchyard_iptables::{Backend as IptBackend, IptOptions, IptablesEngine};
use switchyard_ipvs::{IpvsEngine, IpvsOptions, Scheduler};
use switchyard_model::{EngineError, ProxyEngine};
use switchyard_nftables::{NftOptions, NftablesEngine};
use switchyard_probe::ProbeReport;

/// What the command line adds to the ProxyConfig when building engines.
#[derive(Clone, Debug)]
pub struct BuildContext {
    /// `--iptables-backend`.
    pub iptables_backend: IptBackend,
    /// `--bpffs-root`: where bpffs is (or gets) mounted for the eBPF engine's pins
    /// (`<root>/switchyard`); `None`: `/sys/fs/bpf`.
    pub bpffs_root: Option<PathBuf>,
    /// `--cgroup-root`: the node's cgroup v2 root for the eBPF engine when the
    /// ProxyConfig names none; `None`: found in `/proc/self/mountinfo`.
    pub cgroup_root: Option<PathBuf>,
}

/// One engine of the binary.
pub struct EngineEntry {
    pub mode: Mode,
    /// `auto` takes the available engine of lowest rank (DESIGN: eBPF skips netfilter
    /// entirely, nftables scales with verdict maps, IPVS with hash tables, iptables last
    /// with linear rule walks).
    pub auto_rank: u8,
    pub build: fn(&BuildContext, &EffectiveConfig) -> Box<dyn ProxyEngine>,
    /// One engine per kind of kernel state this mode can leave on a node (their
    /// `cleanup` removes it all), where the command line puts it (the eBPF engine's
    /// pins live under `--bpffs-root`).
    pub owners: fn(&BuildContext) -> Vec<Box<dyn ProxyEngine>>,
    /// Whether the part of the ProxyConfig this engine was built from changed.
    pub settings_changed: fn(&EffectiveConfig, &EffectiveConfig) -> bool,
}

fn nftables(_: &BuildContext, _: &EffectiveConfig) -> Box<dyn ProxyEngine> {
    Box::new(NftablesEngine::new(NftOptions::default()))
}

fn nftables_owners(_: &BuildContext) -> Vec<Box<dyn ProxyEngine>> {
    vec![Box::new(NftablesEngine::new(NftOptions::default()))]
}

fn iptables(ctx: &BuildContext, _: &EffectiveConfig) -> Box<dyn ProxyEngine> {
    Box::new(IptablesEngine::new(IptOptions {
        backend: ctx.iptables_backend,
        ..IptOptions::default()
    }))
}

/// Each iptables backend on its own: whichever a previous run used.
fn iptables_owners(_: &BuildContext) -> Vec<Box<dyn ProxyEngine>> {
    [IptBackend::Nft, IptBackend::Legacy]
        .into_iter()
        .map(|backend| {
            Box::new(IptablesEngine::new(IptOptions {
                backend,
                ..IptOptions::default()
            })) as Box<dyn ProxyEngine>
        })
        .collect()
}

/// The `ebpf` block's settings as the engine's options; everything else (interfaces)
/// is found on the node.
fn ebpf_options(ctx: &BuildContext, config: &EffectiveConfig) -> EbpfOptions {
    let s = &config.ebpf;
    let mut options = EbpfOptions {
        cgroup: s.cgroup_path.clone().or_else(|| ctx.cgroup_root.clone()),
        sizes: MapSizes {
            services: s.max_services,
            backends: s.max_endpoints,
            ..MapSizes::default()
        },
        ..EbpfOptions::default()
    };
    if let Some(root) = &ctx.bpffs_root {
        options.bpffs = root.clone();
        options.pin_root = root.join("switchyard");
    }
    options
}

fn ebpf(ctx: &BuildContext, config: &EffectiveConfig) -> Box<dyn ProxyEngine> {
    Box::new(EbpfEngine::new(ebpf_options(ctx, config)))
}

/// The pins under the command line's bpffs root: a previous process in ebpf mode left
/// them there, not necessarily under `/sys/fs/bpf` (found by the fault-injection suite:
/// with `--bpffs-root`, a restart into another mode left the eBPF programs attached and
/// routing to the endpoints of before).
fn ebpf_owners(ctx: &BuildContext) -> Vec<Box<dyn ProxyEngine>> {
    vec![Box::new(EbpfEngine::new(ebpf_options(
        ctx,
        &EffectiveConfig::default(),
    )))]
}

fn ebpf_settings_changed(old: &EffectiveConfig, new: &EffectiveConfig) -> bool {
    old.ebpf != new.ebpf
}

/// The `ipvs` block in the engine's terms.
pub fn ipvs_options(settings: &IpvsSettings) -> IpvsOptions {
    use switchyard_netlink::ipvs::{Timeouts, SVC_F_SCHED1, SVC_F_SCHED2};
    let flags = settings
        .scheduler_flags
        .iter()
        .map(|f| match f {
            IpvsSchedulerFlag::ShFallback | IpvsSchedulerFlag::MhFallback => SVC_F_SCHED1,
            IpvsSchedulerFlag::ShPort | IpvsSchedulerFlag::MhPort => SVC_F_SCHED2,
        })
        .fold(0, |a, b| a | b);
    let secs = |d: Option<std::time::Duration>| {
        d.map_or(0, |d| d.as_secs().min(u64::from(u32::MAX)) as u32)
    };
    IpvsOptions {
        scheduler: Scheduler {
            name: settings.scheduler.as_str().to_string(),
            flags,
        },
        strict_arp: settings.strict_arp,
        timeouts: Timeouts {
            tcp: secs(settings.tcp_timeout),
            tcp_fin: secs(settings.tcp_fin_timeout),
            udp: secs(settings.udp_timeout),
        },
        exclude_cidrs: settings.exclude_cidrs.clone(),
        ..IpvsOptions::default()
    }
}

fn ipvs(_: &BuildContext, config: &EffectiveConfig) -> Box<dyn ProxyEngine> {
    Box::new(IpvsEngine::new(ipvs_options(&config.ipvs)))
}

fn ipvs_owners(_: &BuildContext) -> Vec<Box<dyn ProxyEngine>> {
    vec![Box::new(IpvsEngine::new(IpvsOptions::default()))]
}

fn ipvs_settings_changed(old: &EffectiveConfig, new: &EffectiveConfig) -> bool {
    old.ipvs != new.ipvs
}

fn never(_: &EffectiveConfig, _: &EffectiveConfig) -> bool {
    false
}

/// Every engine of this binary.
pub const ENGINES: &[EngineEntry] = &[
    EngineEntry {
        mode: Mode::Ebpf,
        auto_rank: 0,
        build: ebpf,
        owners: ebpf_owners,
        settings_changed: ebpf_settings_changed,
    },
    EngineEntry {
        mode: Mode::Nftables,
        auto_rank: 1,
        build: nftables,
        owners: nftables_owners,
        settings_changed: never,
    },
    EngineEntry {
        mode: Mode::Ipvs,
        auto_rank: 2,
        build: ipvs,
        owners: ipvs_owners,
        settings_changed: ipvs_settings_changed,
    },
    EngineEntry {
        mode: Mode::Iptables,
        auto_rank: 3,
        build: iptables,
        owners: iptables_owners,
        settings_changed: never,
    },
];

fn entry(mode: Mode) -> Option<&'static EngineEntry> {
    ENGINES.iter().find(|e| e.mode == mode)
}

/// The registry as the runner sees it.
pub struct Registry {
    pub ctx: BuildContext,
}

impl EngineFactory for Registry {
    fn build(
        &self,
        mode: Mode,
        config: &EffectiveConfig,
    ) -> Result<Box<dyn ProxyEngine>, EngineError> {
        match entry(mode) {
            Some(e) => Ok((e.build)(&self.ctx, config)),
            None => Err(EngineError::Unavailable {
                mode,
                reason: "engine not built".into(),
            }),
        }
    }

    fn settings_changed(&self, mode: Mode, old: &EffectiveConfig, new: &EffectiveConfig) -> bool {
        entry(mode).is_some_and(|e| (e.settings_changed)(old, new))
    }

    fn leftover_cleaners(&self) -> Vec<Box<dyn ProxyEngine>> {
        every_owner(&self.ctx)
    }

    fn auto_preference(&self) -> Vec<Mode> {
        let mut entries: Vec<&EngineEntry> = ENGINES.iter().collect();
        entries.sort_by_key(|e| e.auto_rank);
        entries.into_iter().map(|e| e.mode).collect()
    }
}

/// One engine per kind of kernel state any engine of this binary can leave on a node,
/// where `ctx` (the command line) puts it.
pub fn every_owner(ctx: &BuildContext) -> Vec<Box<dyn ProxyEngine>> {
    ENGINES.iter().flat_map(|e| (e.owners)(ctx)).collect()
}

/// What each mode can do here: the kernel probe's verdict, and whether this binary has
/// an engine for it.
pub fn capabilities(report: &ProbeReport) -> Vec<ModeCapability> {
    Mode::ENGINES
        .iter()
        .map(|&mode| {
            let probed = report.get(mode);
            let kernel_ok = probed.is_some_and(|r| r.available);
            let built = entry(mode).is_some();
            let mut missing = probed.map(|r| r.missing.clone()).unwrap_or_default();
            let detail = if !kernel_ok {
                probed
                    .map(|r| r.reason())
                    .unwrap_or_else(|| "not probed".into())
            } else if !built {
                missing.push(format!("{mode} engine (not built)"));
                "engine not built".to_string()
            } else {
                probed.map(|r| r.notes.join("; ")).unwrap_or_default()
            };
            ModeCapability {
                mode,
                available: kernel_ok && built,
                missing,
                detail,
            }
        })
        .collect()
}

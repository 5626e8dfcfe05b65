//! Loading the BPF objects and attaching their programs, so that a restarted agent never
//! interrupts traffic:
//!
//! - Maps are pinned by name under `<pin root>/v<layout>/`; a new loader opens the pinned
//!   maps instead of creating empty ones, so every service entry survives a restart.
//! - Every attachment is a BPF link pinned under `<pin root>/v<layout>/links/`, so programs
//!   stay attached while no process holds them. A new loader replaces each one without a
//!   gap: tc links are swapped atomically (`BPF_LINK_UPDATE` through aya's
//!   `attach_to_link`); cgroup links have no update in aya 0.14, so the new program is
//!   attached beside the old one (cgroup links always coexist) before the old link is released. Running
//!   both for that moment is harmless: the second sees an already-translated backend
//!   address, which is no VIP.
//! - tc programs attach as TCX links (kernel 6.6+): no clsact qdisc is created, so there is
//!   none to remove later, and a link can be pinned (netlink tc filters cannot).
//!
//! tc attachments resolve interface names in the calling thread's network namespace: load
//! the dataplane from a thread inside the node's namespace.

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, LinkOrder,
        SchedClassifier, TcAttachType,
    },
    sys::SyscallError,
    Ebpf, EbpfLoader,
};

use crate::{error::EbpfError, layout::LAYOUT_VERSION, mounts};

/// The cgroup sock_addr programs of `sock.c`.
pub const SOCK_PROGRAMS: [&str; 8] = [
    "sy_connect4",
    "sy_sendmsg4",
    "sy_recvmsg4",
    "sy_getpeername4",
    "sy_connect6",
    "sy_sendmsg6",
    "sy_recvmsg6",
    "sy_getpeername6",
];

/// The cgroup_skb egress program of `sock.c` (Drop entries).
pub const DROP_EGRESS: &str = "sy_drop_egress";

const TC_INGRESS: &str = "sy_tc_ingress";
const TC_EGRESS: &str = "sy_tc_egress";

/// Map sizes (`max_entries`). A pinned map keeps the size it was made with, so the sizes
/// are part of the pin directory's name: other sizes are another layout, built beside
/// the old one (see [`DataplaneConfig::pin_dir`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Service entries (VIP, port, protocol, scope).
    pub services: u32,
    /// Backend slots over all sets.
    pub backends: u32,
    /// ClientIP affinity entries (LRU).
    pub affinity: u32,
    /// tc flows, each direction (LRU), and socket-LB reverse translations (LRU).
    pub flows: u32,
    /// Source-range prefixes.
    pub source_ranges: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            services: 65536,
            backends: 262144,
            affinity: 65536,
            flows: 131072,
            source_ranges: 16384,
        }
    }
}

/// Where and what to load and attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Where bpffs is mounted when `pin_root` is not on bpffs yet.
    pub bpffs: PathBuf,
    /// Pin directory; maps and links live in `<pin_root>/v<layout>/`.
    pub pin_root: PathBuf,
    /// cgroup v2 directory the socket-LB programs attach to (the node's cgroup v2 root in
    /// production; a private cgroup in tests).
    pub cgroup: PathBuf,
    /// Interfaces that carry traffic from outside the node: tc ingress (service NAT,
    /// replies) and egress (replies, Drop).
    pub external_interfaces: Vec<String>,
    /// Interfaces that carry local backends' replies to masqueraded flows (a pod bridge):
    /// tc ingress only.
    pub backend_interfaces: Vec<String>,
    pub sizes: MapSizes,
}

impl DataplaneConfig {
    /// Production defaults: bpffs at `/sys/fs/bpf`, pins in `/sys/fs/bpf/switchyard`, the
    /// given cgroup v2 directory and interfaces.
    pub fn new(cgroup: PathBuf, external_interfaces: Vec<String>) -> DataplaneConfig {
        DataplaneConfig {
            bpffs: PathBuf::from("/sys/fs/bpf"),
            pin_root: PathBuf::from("/sys/fs/bpf/switchyard"),
            cgroup,
            external_interfaces,
            backend_interfaces: Vec::new(),
            sizes: MapSizes::default(),
        }
    }

    /// `<pin_root>/v<layout>-<sizes>`: this layout's maps and links. The sizes are part
    /// of the name because a pinned map keeps the size it was made with: new sizes are a
    /// new layout, built beside the old one and swapped in (see the engine).
    pub fn pin_dir(&self) -> PathBuf {
        let s = &self.sizes;
        self.pin_root.join(format!(
            "v{LAYOUT_VERSION}-{}-{}-{}-{}-{}",
            s.services, s.backends, s.affinity, s.flows, s.source_ranges
        ))
    }
}

fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

/// The loaded objects; their maps have been taken by the dataplane.
pub(crate) struct Loaded {
    pub sock: Ebpf,
    pub tc: Ebpf,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> EbpfError + 'a {
    move |source| EbpfError::Io {
        what,
        path: path.into(),
        source,
    }
}

/// Mounts bpffs when needed, loads both objects (reusing pinned maps) and attaches every
/// program (replacing pinned attachments without a gap).
pub(crate) fn load_and_attach(cfg: &DataplaneConfig) -> Result<Loaded, EbpfError> {
    mounts::ensure_bpffs(&cfg.bpffs, &cfg.pin_root)?;
    let links = links_dir(&cfg.pin_dir());
    std::fs::create_dir_all(&links).map_err(io_err("creating", &links))?;
    let mut sock = load_object("sock.o", crate::objects::SOCK, cfg)?;
    let mut tc = load_object("tc.o", crate::objects::TC, cfg)?;
    attach_cgroup(&mut sock, cfg, &links)?;
    attach_tc(&mut tc, cfg, &links)?;
    Ok(Loaded { sock, tc })
}

fn load_object(
    object: &'static str,
    bytes: &[u8],
    cfg: &DataplaneConfig,
) -> Result<Ebpf, EbpfError> {
    let s = &cfg.sizes;
    EbpfLoader::new()
        .default_map_pin_directory(cfg.pin_dir())
        .map_max_entries("sy_services", s.services)
        .map_max_entries("sy_backends", s.backends)
        .map_max_entries("sy_affinity", s.affinity)
        .map_max_entries("sy_src_ranges", s.source_ranges)
        .map_max_entries("sy_sock_revnat", s.flows)
        .map_max_entries("sy_nat_fwd", s.flows)
        .map_max_entries("sy_nat_rev", s.flows)
        .load(bytes)
        .map_err(|e| EbpfError::Load {
            object,
            source: Box::new(e),
        })
}

fn prog_err(program: &str) -> impl FnOnce(aya::programs::ProgramError) -> EbpfError + '_ {
    move |e| EbpfError::Program {
        program: program.to_string(),
        source: Box::new(e),
    }
}

/// An existing pinned link, `None` when nothing is pinned at `path`.
fn pinned_link(path: &Path) -> Result<Option<PinnedLink>, EbpfError> {
    match PinnedLink::from_pin(path) {
        Ok(link) => Ok(Some(link)),
        Err(LinkError::SyscallError(SyscallError { io_error, .. }))
            if io_error.kind() == io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(e) => Err(EbpfError::Link {
            path: path.into(),
            source: Box::new(e),
        }),
    }
}

fn pin(link: FdLink, path: &Path) -> Result<(), EbpfError> {
    link.pin(path).map(drop).map_err(|e| EbpfError::Pin {
        path: path.into(),
        source: Box::new(e),
    })
}

fn attach_cgroup(sock: &mut Ebpf, cfg: &DataplaneConfig, links: &Path) -> Result<(), EbpfError> {
    let cgroup = File::open(&cfg.cgroup).map_err(io_err("opening cgroup", &cfg.cgroup))?;
    // A cgroup BPF link takes no flags (BPF_LINK_CREATE rejects BPF_F_ALLOW_MULTI) yet
    // always coexists with other links: `Single` is aya's "no flags".
    for name in SOCK_PROGRAMS {
        let prog: &mut CgroupSockAddr = sock
            .program_mut(name)
            .ok_or(EbpfError::MissingProgram(name))?
            .try_into()
            .map_err(prog_err(name))?;
        prog.load().map_err(prog_err(name))?;
        let path = links.join(format!("cgroup-{name}"));
        let old = pinned_link(&path)?;
        let id = prog
            .attach(&cgroup, CgroupAttachMode::Single)
            .map_err(prog_err(name))?;
        let link = prog.take_link(id).map_err(prog_err(name))?;
        replace_pinned(link.try_into(), old, &path)?;
    }
    let prog: &mut CgroupSkb = sock
        .program_mut(DROP_EGRESS)
        .ok_or(EbpfError::MissingProgram(DROP_EGRESS))?
        .try_into()
        .map_err(prog_err(DROP_EGRESS))?;
    prog.load().map_err(prog_err(DROP_EGRESS))?;
    let path = links.join(format!("cgroup-{DROP_EGRESS}"));
    let old = pinned_link(&path)?;
    let id = prog
        .attach(
            &cgroup,
            CgroupSkbAttachType::Egress,
            CgroupAttachMode::Single,
        )
        .map_err(prog_err(DROP_EGRESS))?;
    let link = prog.take_link(id).map_err(prog_err(DROP_EGRESS))?;
    replace_pinned(link.try_into(), old, &path)
}

/// Pins the new link at `path` in place of `old` (when there was one), keeping `old`
/// attached until the new one is pinned.
fn replace_pinned(
    link: Result<FdLink, LinkError>,
    old: Option<PinnedLink>,
    path: &Path,
) -> Result<(), EbpfError> {
    let link = link.map_err(|e| EbpfError::Link {
        path: path.into(),
        source: Box::new(e),
    })?;
    match old {
        Some(old) => {
            // Unpinned but still attached until `old_fd` is dropped, after the new pin.
            let old_fd = old.unpin().map_err(io_err("unpinning", path))?;
            pin(link, path)?;
            drop(old_fd);
            Ok(())
        }
        None => pin(link, path),
    }
}

/// A tc hook of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcSide {
    Ingress,
    Egress,
}

impl TcSide {
    fn name(self) -> &'static str {
        match self {
            TcSide::Ingress => "ingress",
            TcSide::Egress => "egress",
        }
    }

    fn program(self) -> &'static str {
        match self {
            TcSide::Ingress => TC_INGRESS,
            TcSide::Egress => TC_EGRESS,
        }
    }

    fn attach_type(self) -> TcAttachType {
        match self {
            TcSide::Ingress => TcAttachType::Ingress,
            TcSide::Egress => TcAttachType::Egress,
        }
    }
}

/// The pin file of one interface's tc link: `tc-<side>-<interface>`.
fn tc_pin(links: &Path, side: TcSide, iface: &str) -> PathBuf {
    links.join(format!("tc-{}-{iface}", side.name()))
}

fn attach_tc(tc: &mut Ebpf, cfg: &DataplaneConfig, links: &Path) -> Result<(), EbpfError> {
    let mut wanted: Vec<(TcSide, &str)> = Vec::new();
    for iface in &cfg.external_interfaces {
        wanted.push((TcSide::Ingress, iface));
        wanted.push((TcSide::Egress, iface));
    }
    for iface in &cfg.backend_interfaces {
        wanted.push((TcSide::Ingress, iface));
    }
    for (side, iface) in wanted {
        attach_tc_one(tc, side, iface, links)?;
    }
    Ok(())
}

fn tc_program(tc: &mut Ebpf, side: TcSide) -> Result<&mut SchedClassifier, EbpfError> {
    let name = side.program();
    let prog: &mut SchedClassifier = tc
        .program_mut(name)
        .ok_or(EbpfError::MissingProgram(name))?
        .try_into()
        .map_err(prog_err(name))?;
    if prog.fd().is_err() {
        prog.load().map_err(prog_err(name))?;
    }
    Ok(prog)
}

/// Attaches one side of one interface: onto the link a previous process pinned (same
/// kernel link, new program), else as a new TCX link, pinned.
fn attach_tc_one(tc: &mut Ebpf, side: TcSide, iface: &str, links: &Path) -> Result<(), EbpfError> {
    let name = side.program();
    let path = tc_pin(links, side, iface);
    let link_err = |e| EbpfError::Link {
        path: path.clone(),
        source: Box::new(e),
    };
    let prog = tc_program(tc, side)?;
    if let Some(old) = pinned_link(&path)? {
        let link = SchedClassifierLink::try_from(FdLink::from(old)).map_err(link_err)?;
        match prog.attach_to_link(link) {
            Ok(_) => return Ok(()),
            // The interface went away (and its link with it): attach afresh.
            Err(e) => {
                tracing::warn!(interface = iface, error = %e, "replacing a defunct tc link");
                std::fs::remove_file(&path).map_err(io_err("unpinning", &path))?;
            }
        }
    }
    let id = prog
        .attach_with_options(
            iface,
            side.attach_type(),
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|e| EbpfError::Program {
            program: format!("{name} on {iface}"),
            source: Box::new(e),
        })?;
    let link: FdLink = prog
        .take_link(id)
        .map_err(prog_err(name))?
        .try_into()
        .map_err(link_err)?;
    pin(link, &path)
}

/// Attaches the tc programs to exactly `wanted` (see [`crate::Dataplane::set_tc_interfaces`]).
pub(crate) fn set_tc(
    loaded: &mut Loaded,
    pin_dir: &Path,
    wanted: &[(TcSide, &str)],
) -> Result<(), EbpfError> {
    let links = links_dir(pin_dir);
    for (side, iface) in wanted {
        attach_tc_one(&mut loaded.tc, *side, iface, &links)?;
    }
    for (side, iface) in pinned_tc(pin_dir)? {
        if !wanted.contains(&(side, iface.as_str())) {
            let path = tc_pin(&links, side, &iface);
            std::fs::remove_file(&path).map_err(io_err("unpinning", &path))?;
        }
    }
    Ok(())
}

/// The (side, interface) of every pinned tc link of the layout at `pin_dir`.
pub(crate) fn pinned_tc(pin_dir: &Path) -> Result<Vec<(TcSide, String)>, EbpfError> {
    let links = links_dir(pin_dir);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&links).map_err(io_err("reading", &links))? {
        let entry = entry.map_err(io_err("reading", &links))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        for side in [TcSide::Ingress, TcSide::Egress] {
            if let Some(iface) = name.strip_prefix(&format!("tc-{}-", side.name())) {
                out.push((side, iface.to_string()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The pinned cgroup links of the layout at `pin_dir`, by program name.
pub(crate) fn pinned_cgroup_programs(pin_dir: &Path) -> Result<Vec<String>, EbpfError> {
    let links = links_dir(pin_dir);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&links).map_err(io_err("reading", &links))? {
        let entry = entry.map_err(io_err("reading", &links))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(program) = name.strip_prefix("cgroup-") {
            out.push(program.to_string());
        }
    }
    out.sort();
    Ok(out)
}

/// Whether a directory name is a layout's: `v<N>` or `v<N>-<sizes>`.
fn is_layout(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .and_then(|n| n.strip_prefix('v'))
        .and_then(|n| n.split('-').next())
        .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
}

/// Removes the pins of every layout under `pin_root` but the one at `keep`: once this
/// layout's maps hold everything (after a full sync), the old programs and maps go
/// (their links first). Returns the directories removed.
pub fn remove_other_layouts(pin_root: &Path, keep: &Path) -> Result<Vec<PathBuf>, EbpfError> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(pin_root).map_err(io_err("reading", pin_root))? {
        let entry = entry.map_err(io_err("reading", pin_root))?;
        let path = entry.path();
        if is_layout(&entry.file_name()) && path != keep {
            remove_layout(&path)?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// Removes one layout directory: links first, so no program runs against half-removed
/// maps.
fn remove_layout(path: &Path) -> Result<(), EbpfError> {
    let links = path.join("links");
    if links.is_dir() {
        std::fs::remove_dir_all(&links).map_err(io_err("removing", &links))?;
    }
    std::fs::remove_dir_all(path).map_err(io_err("removing", path))
}

/// Removes everything the dataplane pinned under `pin_root` (every layout):
/// unpinning a link detaches its program once no process holds it, unpinning a map frees
/// it once no program uses it. The directory itself goes too. bpffs stays mounted.
pub fn cleanup(pin_root: &Path) -> Result<(), EbpfError> {
    let entries = match std::fs::read_dir(pin_root) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("reading", pin_root)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("reading", pin_root))?;
        if is_layout(&entry.file_name()) {
            remove_layout(&entry.path())?;
        }
    }
    std::fs::remove_dir(pin_root).map_err(io_err("removing", pin_root))
}

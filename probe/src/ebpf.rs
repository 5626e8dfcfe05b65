//! The eBPF engine's needs (see `engines/ebpf`): the `bpf` syscall; the program types,
//! map types and helpers its programs use (asked of the kernel by loading minimal ones,
//! `switchyard_ebpf::features`: unlike `bpftool feature probe`, this needs no
//! CAP_SYS_ADMIN, so the agent probes with the capabilities it runs with); the attach types it uses,
//! by kernel release (getpeername hooks 5.8, batched map operations 5.6, TCX links 6.6); a cgroup v2 mount (found in
//! `/proc/self/mountinfo`: a hybrid hierarchy mounts it at `/sys/fs/cgroup/unified`);
//! kernel BTF; the capabilities the engine uses (CAP_NET_ADMIN, and CAP_BPF with
//! CAP_PERFMON or CAP_SYS_ADMIN, from `CapEff` in `/proc/self/status`); and bpffs, which
//! the engine mounts itself when it is missing (a note, not a blocker: mounting needs
//! CAP_SYS_ADMIN, the note says when this process lacks it).

use std::collections::HashSet;

use switchyard_crd::Mode;

use switchyard_ebpf::mounts::{cgroup2_mount, parse_mountinfo};

use crate::{
    context::{Context, Findings},
    report::ModeReport,
    version::Version,
};

/// `(attach type or kernel interface, minimum kernel)`: what no load probe shows.
const ATTACH_TYPES: [(&str, Version); 4] = [
    (
        "cgroup connect/sendmsg/recvmsg hooks",
        Version::new(5, 2, 0),
    ),
    ("cgroup getpeername hooks", Version::new(5, 8, 0)),
    ("batched map operations", Version::new(5, 6, 0)),
    ("tcx links (pinnable tc attachment)", Version::new(6, 6, 0)),
];

/// Capability numbers (`linux/capability.h`).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set of `/proc/<pid>/status` text (`CapEff:` in hex).
fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// What the engine does needs: CAP_NET_ADMIN (networking programs, tc and cgroup
/// attachment) and CAP_BPF with CAP_PERFMON (loading; kernel 5.8+), or CAP_SYS_ADMIN
/// which covers both on any kernel. Mounting bpffs when the host has not needs
/// CAP_SYS_ADMIN too (see the bpffs check). Returns whether CAP_SYS_ADMIN is there.
fn check_capabilities(f: &mut Findings, status: &str) -> bool {
    let Some(caps) = effective_caps(status) else {
        f.fail(
            "capabilities",
            "no CapEff line in /proc/self/status",
            ["capabilities"],
        );
        return false;
    };
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    let mut missing: Vec<&str> = Vec::new();
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN capability");
    }
    if !has(CAP_SYS_ADMIN) {
        if !has(CAP_BPF) {
            missing.push("CAP_BPF capability");
        }
        if !has(CAP_PERFMON) {
            missing.push("CAP_PERFMON capability");
        }
    }
    if missing.is_empty() {
        f.pass("capabilities", format!("effective {caps:#x}"));
    } else {
        f.fail(
            "capabilities",
            format!("effective {caps:#x} lacks {}", missing.join(", ")),
            missing,
        );
    }
    has(CAP_SYS_ADMIN)
}

/// File system types the kernel knows (`/proc/filesystems`).
fn filesystems(text: &str) -> HashSet<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(str::to_string)
        .collect()
}

pub(crate) fn probe(ctx: &Context) -> ModeReport {
    let mut f = Findings::default();
    let proc = &ctx.roots.proc;
    let sys = &ctx.roots.sys;

    let sysctl = proc.join("sys/kernel/unprivileged_bpf_disabled");
    if sysctl.exists() {
        f.pass("bpf syscall", format!("{} exists", sysctl.display()));
    } else {
        f.fail(
            "bpf syscall",
            format!("{} absent (CONFIG_BPF_SYSCALL unset?)", sysctl.display()),
            ["bpf syscall"],
        );
    }
    for feature in switchyard_ebpf::features::probe() {
        match feature.supported {
            Ok(true) => f.pass(&feature.name, "the kernel loads it"),
            Ok(false) => f.fail(&feature.name, "the kernel refuses it", [feature.missing]),
            Err(e) => f.fail(
                &feature.name,
                format!("not checked: the probe failed: {e}"),
                [feature.missing],
            ),
        }
    }
    check_attach_types(&mut f, &ctx.release);
    let status = std::fs::read_to_string(proc.join("self/status")).unwrap_or_default();
    let can_mount = check_capabilities(&mut f, &status);

    let mountinfo = std::fs::read_to_string(proc.join("self/mountinfo")).unwrap_or_default();
    let known_fs = std::fs::read_to_string(proc.join("filesystems"))
        .map(|t| filesystems(&t))
        .unwrap_or_default();
    match cgroup2_mount(&mountinfo) {
        Some(at) => f.pass("cgroup v2", format!("cgroup2 mounted at {}", at.display())),
        None => f.fail(
            "cgroup v2",
            format!(
                "no cgroup2 mount in {}",
                proc.join("self/mountinfo").display()
            ),
            ["cgroup v2 mount"],
        ),
    }

    let btf = sys.join("kernel/btf/vmlinux");
    if btf.exists() {
        f.pass("BTF", format!("{} present", btf.display()));
    } else {
        f.fail("BTF", format!("{} absent", btf.display()), ["kernel BTF"]);
    }

    let bpffs = sys.join("fs/bpf");
    let bpffs_str = bpffs.display().to_string();
    if parse_mountinfo(&mountinfo)
        .iter()
        .any(|m| m.fs_type == "bpf" && m.mount_point == bpffs)
    {
        f.pass("bpffs", format!("mounted at {bpffs_str}"));
    } else if known_fs.contains("bpf") {
        f.pass(
            "bpffs",
            format!("supported, not mounted at {bpffs_str}: the engine mounts it"),
        );
        f.note(if can_mount {
            format!(
                "bpffs is not mounted at {bpffs_str}; the eBPF engine mounts it (to mount it \
                 for good, before the agent starts: mount -t bpf bpf {bpffs_str})"
            )
        } else {
            format!(
                "bpffs is not mounted at {bpffs_str} and mounting it needs CAP_SYS_ADMIN, \
                 which this process lacks: mount it before the agent starts (mount -t bpf \
                 bpf {bpffs_str}; systemd does at boot; the chart's agent.ebpf.mountBpffs)"
            )
        });
    } else {
        f.fail(
            "bpffs",
            format!("not mounted at {bpffs_str} and not in /proc/filesystems"),
            ["bpffs support"],
        );
    }
    f.finish(Mode::Ebpf)
}

/// Attach types by kernel release.
fn check_attach_types(f: &mut Findings, release: &str) {
    let Some(have) = Version::from_kernel_release(release) else {
        for (name, _) in ATTACH_TYPES {
            f.fail(
                name,
                format!("kernel release {release:?} not understood"),
                [name],
            );
        }
        return;
    };
    for (name, min) in ATTACH_TYPES {
        if have >= min {
            f.pass(
                name,
                format!("kernel {release} >= {}.{}", min.major, min.minor),
            );
        } else {
            f.fail(
                name,
                format!("kernel {release} < {}.{}", min.major, min.minor),
                [name],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_name_what_is_missing() {
        let with = |caps: u64| format!("Name:\tx\nCapEff:\t{caps:016x}\n");
        let report = |status: &str| {
            let mut f = Findings::default();
            let sys_admin = check_capabilities(&mut f, status);
            (f.finish(Mode::Ebpf), sys_admin)
        };
        let minimal = (1 << CAP_NET_ADMIN) | (1 << CAP_BPF) | (1 << CAP_PERFMON);
        let (r, sys_admin) = report(&with(minimal));
        assert!(r.missing.is_empty() && !sys_admin, "{:?}", r.missing);
        let (r, sys_admin) = report(&with((1 << CAP_NET_ADMIN) | (1 << CAP_SYS_ADMIN)));
        assert!(r.missing.is_empty() && sys_admin, "{:?}", r.missing);
        let (r, _) = report(&with(1 << CAP_BPF));
        assert_eq!(
            r.missing,
            ["CAP_NET_ADMIN capability", "CAP_PERFMON capability"]
        );
        let (r, _) = report("Name:\tx\n");
        assert_eq!(r.missing, ["capabilities"]);
    }

    #[test]
    fn finds_the_hybrid_cgroup2_mount_and_filesystems() {
        let info = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(info).as_deref(),
            Some(std::path::Path::new("/sys/fs/cgroup/unified"))
        );
        let fs = filesystems("nodev\tcgroup2\n\text4\nnodev\tbpf\n");
        assert!(fs.contains("bpf") && fs.contains("ext4") && !fs.contains("nodev"));
    }
}

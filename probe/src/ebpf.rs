//! The eBPF engine's needs: the `bpf` syscall, `cgroup_sock_addr` and `sched_cls`
//! program types and LRU hash maps (asked of `bpftool feature probe kernel --json`; when
//! bpftool is absent these are reported "not checked"), a cgroup v2 hierarchy, kernel
//! BTF, and bpffs.

use std::collections::HashSet;

use serde_json::Value;
use switchyard_crd::Mode;

use crate::{
    command,
    context::{Context, Findings},
    report::ModeReport,
};

/// `(check name, bpftool JSON section, key, missing name)`.
const FEATURES: [(&str, &str, &str, &str); 3] = [
    (
        "cgroup_sock_addr programs",
        "program_types",
        "have_cgroup_sock_addr_prog_type",
        "cgroup_sock_addr program type",
    ),
    (
        "sched_cls programs",
        "program_types",
        "have_sched_cls_prog_type",
        "sched_cls program type",
    ),
    (
        "lru_hash maps",
        "map_types",
        "have_lru_hash_map_type",
        "lru_hash map type",
    ),
];

/// `(mount point, fs type)` of every line of a `/proc/mounts`.
fn mounts(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let _source = parts.next()?;
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
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

    let features = command::find("bpftool").map(|tool| {
        command::run(
            &tool,
            &["feature", "probe", "kernel", "--json"],
            None,
            ctx.timeout,
        )
        .map_err(|e| e.to_string())
        .and_then(|out| serde_json::from_str::<Value>(&out.stdout).map_err(|e| e.to_string()))
    });

    let sysctl = proc.join("sys/kernel/unprivileged_bpf_disabled");
    let bpftool_says = features
        .as_ref()
        .and_then(|r| r.as_ref().ok())
        .and_then(|v| v["syscall_config"]["have_bpf_syscall"].as_bool());
    if sysctl.exists() {
        f.pass("bpf syscall", format!("{} exists", sysctl.display()));
    } else if bpftool_says == Some(true) {
        f.pass("bpf syscall", "bpftool: have_bpf_syscall");
    } else {
        f.fail(
            "bpf syscall",
            format!("{} absent (CONFIG_BPF_SYSCALL unset?)", sysctl.display()),
            ["bpf syscall"],
        );
    }

    match &features {
        None => {
            for (name, _, _, _) in FEATURES {
                f.fail(
                    name,
                    "not checked: bpftool is not installed (Debian package bpftool)",
                    ["bpftool command"],
                );
            }
        }
        Some(Err(e)) => {
            for (name, _, _, missing) in FEATURES {
                f.fail(
                    name,
                    format!("not checked: bpftool feature probe failed: {e}"),
                    [missing],
                );
            }
        }
        Some(Ok(json)) => {
            for (name, section, key, missing) in FEATURES {
                match json[section][key].as_bool() {
                    Some(true) => f.pass(name, format!("bpftool: {key}")),
                    Some(false) => f.fail(name, format!("bpftool: no {key}"), [missing]),
                    None => f.fail(
                        name,
                        format!("bpftool did not report {section}.{key}"),
                        [missing],
                    ),
                }
            }
        }
    }

    let mounted = std::fs::read_to_string(proc.join("mounts"))
        .map(|t| mounts(&t))
        .unwrap_or_default();
    let known_fs = std::fs::read_to_string(proc.join("filesystems"))
        .map(|t| filesystems(&t))
        .unwrap_or_default();

    let unified = sys.join("fs/cgroup");
    if unified.join("cgroup.controllers").exists() {
        f.pass(
            "cgroup v2",
            format!("unified hierarchy at {}", unified.display()),
        );
    } else if let Some((at, _)) = mounted.iter().find(|(_, ty)| ty == "cgroup2") {
        f.pass("cgroup v2", format!("cgroup2 mounted at {at} (hybrid)"));
        f.note(format!(
            "cgroup v2 is at {at}, not {}: attach cgroup programs there",
            unified.display()
        ));
    } else {
        f.fail(
            "cgroup v2",
            format!(
                "no cgroup2 mount ({} absent)",
                unified.join("cgroup.controllers").display()
            ),
            ["cgroup v2 mount"],
        );
    }

    let btf = sys.join("kernel/btf/vmlinux");
    if btf.exists() {
        f.pass("BTF", format!("{} present", btf.display()));
    } else {
        f.fail("BTF", format!("{} absent", btf.display()), ["kernel BTF"]);
    }

    let bpffs = sys.join("fs/bpf");
    let bpffs_str = bpffs.display().to_string();
    if mounted
        .iter()
        .any(|(at, ty)| ty == "bpf" && *at == bpffs_str)
    {
        f.pass("bpffs", format!("mounted at {bpffs_str}"));
    } else if known_fs.contains("bpf") {
        f.pass(
            "bpffs",
            format!("supported, not mounted at {bpffs_str} (mount -t bpf bpf {bpffs_str})"),
        );
        f.note(format!("bpffs is not mounted at {bpffs_str}"));
    } else {
        f.fail(
            "bpffs",
            format!("not mounted at {bpffs_str} and not in /proc/filesystems"),
            ["bpffs support"],
        );
    }
    f.finish(Mode::Ebpf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mounts_and_filesystems() {
        let m =
            mounts("cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\nbpf /sys/fs/bpf bpf rw 0 0\n");
        assert_eq!(m[0], ("/sys/fs/cgroup/unified".into(), "cgroup2".into()));
        assert_eq!(m[1].1, "bpf");
        let fs = filesystems("nodev\tcgroup2\n\text4\nnodev\tbpf\n");
        assert!(fs.contains("bpf") && fs.contains("ext4") && !fs.contains("nodev"));
    }
}

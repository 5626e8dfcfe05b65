//! The eBPF engine's needs (see `engines/ebpf`): the `bpf` syscall; the program types,
//! map types and helpers its programs use (asked of `bpftool feature probe kernel --json`;
//! when bpftool is absent these are reported "not checked"); the attach types it uses,
//! by kernel release (getpeername hooks 5.8, TCX links 6.6); a cgroup v2 mount (found in
//! `/proc/self/mountinfo`: a hybrid hierarchy mounts it at `/sys/fs/cgroup/unified`);
//! kernel BTF; and bpffs, which the engine mounts itself when it is missing (a note, not a
//! blocker).

use std::collections::HashSet;

use serde_json::Value;
use switchyard_crd::Mode;

use switchyard_ebpf::mounts::{cgroup2_mount, parse_mountinfo};

use crate::{
    command,
    context::{Context, Findings},
    report::ModeReport,
    version::Version,
};

/// `(check name, bpftool JSON section, key, missing name)`.
const FEATURES: [(&str, &str, &str, &str); 6] = [
    (
        "cgroup_sock_addr programs",
        "program_types",
        "have_cgroup_sock_addr_prog_type",
        "cgroup_sock_addr program type",
    ),
    (
        "cgroup_skb programs",
        "program_types",
        "have_cgroup_skb_prog_type",
        "cgroup_skb program type",
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
    (
        "lpm_trie maps",
        "map_types",
        "have_lpm_trie_map_type",
        "lpm_trie map type",
    ),
    (
        "sk_storage maps",
        "map_types",
        "have_sk_storage_map_type",
        "sk_storage map type",
    ),
];

/// `(program type, helper)` the programs call (bpftool's `helpers.<type>_available_helpers`).
const HELPERS: [(&str, &str); 7] = [
    ("cgroup_sock_addr", "bpf_set_retval"),
    ("cgroup_sock_addr", "bpf_get_netns_cookie"),
    ("cgroup_sock_addr", "bpf_get_socket_cookie"),
    ("cgroup_sock_addr", "bpf_sk_storage_get"),
    ("cgroup_skb", "bpf_sk_storage_get"),
    ("sched_cls", "bpf_fib_lookup"),
    ("sched_cls", "bpf_redirect_neigh"),
];

/// `(attach type, minimum kernel)`: attach types bpftool does not probe.
const ATTACH_TYPES: [(&str, Version); 3] = [
    (
        "cgroup connect/sendmsg/recvmsg hooks",
        Version::new(5, 2, 0),
    ),
    ("cgroup getpeername hooks", Version::new(5, 8, 0)),
    ("tcx links (pinnable tc attachment)", Version::new(6, 6, 0)),
];

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

    check_helpers(&mut f, features.as_ref().and_then(|r| r.as_ref().ok()));
    check_attach_types(&mut f, &ctx.release);

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
        f.note(format!(
            "bpffs is not mounted at {bpffs_str}; the eBPF engine mounts it (to mount it \
             for good, before the agent starts: mount -t bpf bpf {bpffs_str})"
        ));
    } else {
        f.fail(
            "bpffs",
            format!("not mounted at {bpffs_str} and not in /proc/filesystems"),
            ["bpffs support"],
        );
    }
    f.finish(Mode::Ebpf)
}

/// The helpers the programs call, per program type.
fn check_helpers(f: &mut Findings, json: Option<&Value>) {
    let Some(json) = json else {
        return; // already reported as "not checked" with the program types
    };
    for (prog, helper) in HELPERS {
        let name = format!("{helper} in {prog} programs");
        let list = &json["helpers"][format!("{prog}_available_helpers")];
        let found = list
            .as_array()
            .is_some_and(|l| l.iter().any(|h| h.as_str() == Some(helper)));
        if found {
            f.pass(&name, "bpftool: available");
        } else {
            f.fail(&name, "bpftool: not available", [name.as_str()]);
        }
    }
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

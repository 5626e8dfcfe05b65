//! The eBPF engine in a benchmark namespace: its socket programs attach to a private
//! cgroup (never the host's root cgroup) and its pins go to a private bpffs, both removed
//! with the [`EbpfEnv`]. Clients of the connection-rate benchmark run as a child process
//! inside that cgroup ([`client_in_cgroup`]), since only its sockets see the programs.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use switchyard_e2e::{
    bpffs::PrivateBpffs,
    cgroup::{cgroup2_root, PrivateCgroup},
    netns::NetNs,
};
use switchyard_ebpf::{EbpfEngine, EbpfOptions};

/// A private cgroup and bpffs for one engine.
pub struct EbpfEnv {
    cgroup: PrivateCgroup,
    bpffs: PrivateBpffs,
}

impl EbpfEnv {
    pub fn new() -> Result<EbpfEnv> {
        Ok(EbpfEnv {
            cgroup: PrivateCgroup::create(&cgroup2_root()?)?,
            bpffs: PrivateBpffs::create()?,
        })
    }

    pub fn cgroup(&self) -> &Path {
        self.cgroup.path()
    }

    pub fn bpffs(&self) -> &Path {
        self.bpffs.path()
    }

    /// The engine, programming namespace `ns`, attached to this cgroup.
    pub fn engine(&self, ns: &NetNs) -> EbpfEngine {
        EbpfEngine::new(EbpfOptions {
            bpffs: self.bpffs.path().to_path_buf(),
            pin_root: self.bpffs.path().join("switchyard"),
            cgroup: Some(self.cgroup.path().to_path_buf()),
            netns: Some(ns.path()),
            ..EbpfOptions::default()
        })
    }
}

/// Runs this binary as a connection-rate client inside `cgroup` and namespace `netns`
/// (it joins the cgroup before it starts: `echo $$ > cgroup.procs; exec`), returning
/// the rate it prints.
pub fn client_in_cgroup(cgroup: &Path, netns: &Path, target: SocketAddr) -> Result<f64> {
    let bin: PathBuf = std::env::current_exe().context("locating the bench binary")?;
    let out = Command::new("sh")
        .args([
            "-c",
            "echo $$ > \"$1/cgroup.procs\" && shift && exec \"$@\"",
            "sh",
        ])
        .arg(cgroup)
        .arg(&bin)
        .arg("--client-netns")
        .arg(netns)
        .arg("--client-target")
        .arg(target.to_string())
        .output()
        .context("starting the client process")?;
    if !out.status.success() {
        bail!(
            "client process failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("client process output")
}

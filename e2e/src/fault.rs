//! The fault-injection suite's common ground (issue 14): the engines under test
//! ([`EngineUnderTest`]: the host runs four, the qemu VM lane adds IPVS, which the host
//! kernel lacks), a sandboxed node set up the same way for every one of them
//! ([`FaultNode`]: a private cgroup and bpffs always, so every engine is driven by the
//! same client process and a switch to eBPF is possible at any time; in the VM the lane's
//! runner mounts cgroup2 and bpffs before the first job, so the same node works there),
//! and how many faults a run injects ([`fault_count`]: short in `make test`, long under
//! `make chaos`).

use std::time::Duration;

use anyhow::{bail, Result};
use serde_yaml::{Mapping, Value};

use crate::{
    cgroup::CgroupClient,
    manifests::{node_object, proxy_config, ManifestDir},
    readback::{self, Backends, Dataplane},
    sandbox::{EbpfPaths, Sandbox},
    Source,
};

/// One engine as a node runs it: the mode, and for iptables the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineUnderTest {
    Nftables,
    IptablesNft,
    IptablesLegacy,
    Ebpf,
    /// Only in the VM lane (`require_ipvs`): the host kernel has no `ip_vs`.
    Ipvs,
}

impl EngineUnderTest {
    /// Every engine the host kernel can run (IPVS only runs in the VM lane).
    pub const HOST: [EngineUnderTest; 4] = [
        EngineUnderTest::Nftables,
        EngineUnderTest::IptablesNft,
        EngineUnderTest::IptablesLegacy,
        EngineUnderTest::Ebpf,
    ];

    /// The ProxyConfig `mode`.
    pub fn mode(self) -> &'static str {
        match self {
            EngineUnderTest::Nftables => "nftables",
            EngineUnderTest::IptablesNft | EngineUnderTest::IptablesLegacy => "iptables",
            EngineUnderTest::Ebpf => "ebpf",
            EngineUnderTest::Ipvs => "ipvs",
        }
    }

    /// The `--iptables-backend` the agent runs with.
    pub fn iptables_backend(self) -> &'static str {
        match self {
            EngineUnderTest::IptablesLegacy => "legacy",
            _ => "nft",
        }
    }

    /// A name for reports: `nftables`, `iptables-nft`, `iptables-legacy`, `ebpf`, `ipvs`.
    pub fn name(self) -> &'static str {
        match self {
            EngineUnderTest::Nftables => "nftables",
            EngineUnderTest::IptablesNft => "iptables-nft",
            EngineUnderTest::IptablesLegacy => "iptables-legacy",
            EngineUnderTest::Ebpf => "ebpf",
            EngineUnderTest::Ipvs => "ipvs",
        }
    }

    /// Every ordered pair of engines with different modes that one agent can switch
    /// between (the iptables backend is a command-line flag, fixed per process).
    pub fn switch_pairs() -> Vec<(EngineUnderTest, EngineUnderTest)> {
        use EngineUnderTest::*;
        vec![
            (Nftables, IptablesNft),
            (IptablesNft, Nftables),
            (Nftables, Ebpf),
            (Ebpf, Nftables),
            (IptablesLegacy, Ebpf),
            (Ebpf, IptablesLegacy),
            (Nftables, IptablesLegacy),
            (IptablesLegacy, Nftables),
            (IptablesNft, Ebpf),
            (Ebpf, IptablesNft),
        ]
    }

    /// The ordered pairs with IPVS that the VM lane runs: to and from nftables and
    /// iptables (nft backend), each pair starting where the previous one ended (a
    /// chain). eBPF is left out there: see `e2e/tests/chaos_switch.rs`.
    pub fn ipvs_switch_pairs() -> Vec<(EngineUnderTest, EngineUnderTest)> {
        use EngineUnderTest::*;
        vec![
            (Ipvs, Nftables),
            (Nftables, Ipvs),
            (Ipvs, IptablesNft),
            (IptablesNft, Ipvs),
        ]
    }
}

/// `SY_CHAOS_<what>` from the environment (`make chaos` sets the long counts), else
/// `short` (what `make test` runs).
pub fn fault_count(what: &str, short: usize) -> usize {
    std::env::var(format!("SY_CHAOS_{what}"))
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(short)
}

/// A sandboxed node for fault injection: the sandbox (private cgroup and bpffs enabled),
/// its manifests directory holding the Node and ProxyConfig, and the agent's arguments.
pub struct FaultNode {
    pub sb: Sandbox,
    pub dir: ManifestDir,
    pub paths: EbpfPaths,
    /// Extra ProxyConfig spec fields (kept on every mode change).
    pub overrides: Mapping,
}

impl FaultNode {
    /// A node whose pods own `pods` with echo servers on `ports`, in `engine`'s mode.
    pub fn new(
        tag: &str,
        engine: EngineUnderTest,
        pods: &[&str],
        ports: &[u16],
    ) -> Result<FaultNode> {
        let mut sb = Sandbox::new()?;
        for ip in pods {
            sb.add_pod(&[ip.parse()?], ports)?;
        }
        let paths = sb.enable_ebpf()?;
        let dir = ManifestDir::new_temp(tag)?;
        dir.write(&node_object())?;
        let node = FaultNode {
            sb,
            dir,
            paths,
            overrides: Mapping::new(),
        };
        node.set_mode(engine)?;
        Ok(node)
    }

    /// The ProxyConfig for `engine`'s mode (with the private cgroup for eBPF).
    pub fn config(&self, engine: EngineUnderTest) -> Value {
        let mut ebpf = Mapping::new();
        ebpf.insert(
            "cgroupPath".into(),
            self.paths.cgroup.to_string_lossy().into_owned().into(),
        );
        let mut overrides = self.overrides.clone();
        overrides.insert("ebpf".into(), Value::Mapping(ebpf));
        proxy_config(engine.mode(), &overrides)
    }

    /// Rewrites the ProxyConfig file for `engine`'s mode.
    pub fn set_mode(&self, engine: EngineUnderTest) -> Result<()> {
        self.dir.write(&self.config(engine))?;
        Ok(())
    }

    /// The agent's arguments for `engine` (iptables backend, private bpffs).
    pub fn args(&self, engine: EngineUnderTest) -> Vec<String> {
        vec![
            "--iptables-backend".into(),
            engine.iptables_backend().into(),
            "--bpffs-root".into(),
            self.paths.bpffs.to_string_lossy().into_owned(),
        ]
    }

    /// Starts the agent for `engine` (without waiting).
    pub fn start(&mut self, engine: EngineUnderTest) -> Result<()> {
        self.start_with_env(engine, &[])
    }

    /// Starts the agent for `engine` with extra environment (without waiting).
    pub fn start_with_env(
        &mut self,
        engine: EngineUnderTest,
        env: &[(String, String)],
    ) -> Result<()> {
        let args = self.args(engine);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let dir = self.dir.path().to_path_buf();
        self.sb.run_agent_with_env(&dir, &args, env)
    }

    /// Starts the agent for `engine` and waits until it is healthy.
    pub fn start_healthy(&mut self, engine: EngineUnderTest) -> Result<()> {
        self.start(engine)?;
        self.sb.wait_healthy(Duration::from_secs(60))
    }

    fn plane(&self, engine: EngineUnderTest) -> Dataplane<'_> {
        match engine {
            EngineUnderTest::Nftables => Dataplane::Nftables,
            EngineUnderTest::IptablesNft => Dataplane::Iptables("nft"),
            EngineUnderTest::IptablesLegacy => Dataplane::Iptables("legacy"),
            EngineUnderTest::Ebpf => Dataplane::Ebpf(&self.paths.bpffs),
            EngineUnderTest::Ipvs => Dataplane::Ipvs,
        }
    }

    /// What `engine`'s dataplane holds, read back from the kernel.
    pub fn kernel(&self, engine: EngineUnderTest) -> Result<Backends> {
        readback::backends(&self.sb, self.plane(engine))
    }

    /// A dump of `engine`'s whole dataplane (see [`readback::dump`]).
    pub fn dump(&self, engine: EngineUnderTest) -> Result<String> {
        readback::dump(&self.sb, self.plane(engine))
    }

    /// A client process of its own in the private cgroup and the `pod` source, for load
    /// that runs on another thread while the agent is restarted or reconfigured.
    pub fn load_client(&self) -> Result<(CgroupClient, Source)> {
        Ok((self.sb.spawn_cgroup_client()?, self.sb.source("pod")?))
    }

    /// Fails with the agent's log when it is not running.
    pub fn ensure_running(&mut self, what: &str) -> Result<()> {
        if !self.sb.agent_mut()?.is_running() {
            bail!("{what}: the agent exited; log:\n{}", self.sb.agent_log());
        }
        Ok(())
    }
}

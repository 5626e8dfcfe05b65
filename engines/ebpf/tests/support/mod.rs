//! The eBPF kernel tests' node: the e2e sandbox with a private cgroup (its client process
//! makes the node-side probes: `pod`, `node`, hairpin) and a private bpffs instance for
//! the pins, plus the engine under test, built as the agent builds it but pointed at
//! them. Models come from `switchyard_model::test_util`: the real planner's plans.
#![allow(dead_code)]

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use switchyard_e2e::{cgroup::LoopStats, netns::run_cmd, Outcome, Proto, Sandbox};
use switchyard_ebpf::{mounts, EbpfEngine, EbpfOptions};
use switchyard_model::{ChangeSet, Drift, NodeModel, ProxyEngine, SyncReport};

pub use switchyard_model::test_util::{ep, model, service, TestService};

pub const TIMEOUT: Duration = Duration::from_millis(1500);

/// A sandboxed node with the eBPF engine's prerequisites.
pub struct Node {
    pub sb: Sandbox,
    pub options: EbpfOptions,
    bpffs: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Node {
    /// Sandbox + private cgroup + private bpffs mount point (mounted by the engine
    /// itself, as in production). One pod per entry of `pods` (its addresses, any
    /// family), each with TCP and UDP echo servers on `ports`.
    pub fn new(pods: &[&[&str]], ports: &[u16]) -> Node {
        let mut sb = Sandbox::new().expect("sandbox");
        for ips in pods {
            let ips: Vec<IpAddr> = ips.iter().map(|ip| ip.parse().unwrap()).collect();
            sb.add_pod(&ips, ports).expect("pod");
        }
        let root = mounts::find_cgroup2().expect("a cgroup v2 mount");
        let cgroup = sb.enable_cgroup(&root).expect("private cgroup");
        let bpffs = std::env::temp_dir().join(format!(
            "sye-{}-bpffs-{}",
            std::process::id(),
            cgroup.file_name().unwrap().to_string_lossy()
        ));
        let options = EbpfOptions {
            bpffs: bpffs.clone(),
            pin_root: bpffs.join("switchyard"),
            cgroup: Some(cgroup),
            netns: Some(sb.node_ns().path()),
            ..EbpfOptions::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Node {
            sb,
            options,
            bpffs,
            rt,
        }
    }

    /// Endpoint pods for `endpoints` (each address its own pod, every port of the list).
    pub fn with_endpoints(endpoints: &[&str], ports: &[u16]) -> Node {
        let pods: Vec<[&str; 1]> = endpoints.iter().map(|e| [*e]).collect();
        let pods: Vec<&[&str]> = pods.iter().map(|p| &p[..]).collect();
        Node::new(&pods, ports)
    }

    /// A prepared engine (programs loaded, cgroup programs attached).
    pub fn engine(&self) -> EbpfEngine {
        let mut engine = EbpfEngine::new(self.options.clone());
        self.rt.block_on(engine.prepare()).expect("prepare");
        engine
    }

    pub fn sync(&self, e: &mut EbpfEngine, m: &NodeModel, changes: &ChangeSet) -> SyncReport {
        self.rt.block_on(e.sync(m, changes)).expect("sync")
    }

    pub fn full_sync(&self, e: &mut EbpfEngine, m: &NodeModel) -> SyncReport {
        self.sync(e, m, &ChangeSet::full(m))
    }

    /// A prepared engine holding `m`.
    pub fn engine_with(&self, m: &NodeModel) -> EbpfEngine {
        let mut e = self.engine();
        self.full_sync(&mut e, m);
        e
    }

    pub fn verify(&self, e: &mut EbpfEngine, m: &NodeModel) -> Drift {
        self.rt.block_on(e.verify(m)).expect("verify")
    }

    pub fn cleanup(&self, e: &mut EbpfEngine) {
        self.rt.block_on(e.cleanup()).expect("cleanup")
    }

    pub fn probe(&self, role: &str, dst: &str, proto: Proto) -> Outcome {
        self.sb
            .probe(role, dst.parse().unwrap(), proto, TIMEOUT)
            .expect("probe")
    }

    /// The backends reached over `tries` probes (panics on anything but an answer), with
    /// the sources they saw.
    pub fn reached(
        &self,
        role: &str,
        dst: &str,
        proto: Proto,
        tries: usize,
    ) -> BTreeMap<String, BTreeSet<IpAddr>> {
        let mut out: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
        for _ in 0..tries {
            match self.probe(role, dst, proto) {
                Outcome::Answered {
                    backend,
                    seen_source,
                } => {
                    out.entry(backend).or_default().insert(seen_source.ip());
                }
                other => panic!("{role} -> {dst} {proto}: {other}"),
            }
        }
        out
    }

    /// Asserts that `role` reaches exactly `backends` at `dst` and that every backend saw
    /// `source` (the client's own address when nothing is masqueraded).
    pub fn expect(&self, role: &str, dst: &str, proto: Proto, backends: &[&str], source: &str) {
        let seen = self.reached(role, dst, proto, 8 * backends.len().max(2));
        let want: BTreeSet<String> = backends
            .iter()
            .map(|b| b.parse::<SocketAddr>().unwrap().to_string())
            .collect();
        assert_eq!(
            seen.keys().cloned().collect::<BTreeSet<_>>(),
            want,
            "{role} -> {dst} {proto}: backends"
        );
        let source: IpAddr = source.parse().unwrap();
        for (b, sources) in &seen {
            assert_eq!(
                sources,
                &BTreeSet::from([source]),
                "{role} -> {dst} {proto}: source seen by {b}"
            );
        }
    }

    /// TCP connections from `role` to `dst`, back to back, for `d`.
    pub fn connect_loop(&self, role: &str, dst: &str, d: Duration) -> LoopStats {
        let src = self.sb.source(role).unwrap();
        self.sb
            .cgroup_client()
            .unwrap()
            .connect_loop(&src, dst.parse().unwrap(), d)
            .unwrap()
    }

    /// A command's output inside the node namespace.
    pub fn in_node(&self, args: &[&str]) -> String {
        let ns = self.sb.node_ns().name().to_string();
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &ns]).args(args);
        run_cmd(&mut cmd).unwrap_or_else(|e| format!("({args:?} failed: {e:#})"))
    }

    /// Where the engine's current layout pins its maps and links.
    pub fn pin_dir(&self) -> PathBuf {
        switchyard_ebpf::DataplaneConfig {
            bpffs: self.options.bpffs.clone(),
            pin_root: self.options.pin_root.clone(),
            cgroup: PathBuf::new(),
            external_interfaces: vec![],
            backend_interfaces: vec![],
            sizes: self.options.sizes.clone(),
        }
        .pin_dir()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = switchyard_ebpf::cleanup(&self.options.pin_root);
        if self.bpffs.exists() {
            let _ = run_cmd(std::process::Command::new("umount").arg(&self.bpffs));
            let _ = std::fs::remove_dir(&self.bpffs);
        }
    }
}

/// A service from its parts (the test_util builder's fields are public).
pub fn svc(
    name: &str,
    cluster_ip: &str,
    port: u16,
    endpoints: &[(&str, u16, bool)],
) -> TestService {
    let eps = endpoints
        .iter()
        .map(|(ip, port, local)| ep(ip, *port, *local))
        .collect();
    service(name, &[cluster_ip], port, eps)
}

pub fn root_or_skip(test: &str) -> bool {
    switchyard_e2e::require_root(test)
}

//! The eBPF kernel tests' node: the e2e sandbox with a private cgroup (its client process
//! makes the node-side probes) and a private bpffs instance for the pins, plus builders for
//! hand-made service ports (the model's plans do not exist yet).
#![allow(dead_code)]

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use switchyard_e2e::{netns::run_cmd, Outcome, Proto, Sandbox};
use switchyard_ebpf::{
    mounts, Action, Backend, Dataplane, DataplaneConfig, MapSizes, Protocol, Scope, ServiceEntry,
    ServiceKey, ServicePort, TargetSet,
};

pub const TIMEOUT: Duration = Duration::from_millis(1500);

/// A sandboxed node with the eBPF dataplane's prerequisites.
pub struct Node {
    pub sb: Sandbox,
    pub cfg: DataplaneConfig,
    bpffs: PathBuf,
}

impl Node {
    /// Sandbox + private cgroup + private bpffs mount point (mounted by the dataplane
    /// itself, as in production). Pods: `backends` x `ports` echo servers.
    pub fn new(pods: &[&str], ports: &[u16]) -> Node {
        let mut sb = Sandbox::new().expect("sandbox");
        for ip in pods {
            sb.add_pod(&[ip.parse().unwrap()], ports).expect("pod");
        }
        let root = mounts::find_cgroup2().expect("a cgroup v2 mount");
        let cgroup = sb.enable_cgroup(&root).expect("private cgroup");
        let bpffs = std::env::temp_dir().join(format!(
            "sye-{}-bpffs-{}",
            std::process::id(),
            cgroup.file_name().unwrap().to_string_lossy()
        ));
        let cfg = DataplaneConfig {
            bpffs: bpffs.clone(),
            pin_root: bpffs.join("switchyard"),
            cgroup,
            external_interfaces: vec!["uplink".into()],
            backend_interfaces: vec!["cbr0".into()],
            sizes: MapSizes::default(),
        };
        Node { sb, cfg, bpffs }
    }

    /// Loads (or reloads) the dataplane from a thread inside the node namespace.
    pub fn load(&self) -> Dataplane {
        let cfg = self.cfg.clone();
        self.sb
            .node_ns()
            .run(move || Dataplane::load(cfg))
            .expect("node namespace thread")
            .expect("loading the dataplane")
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

    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = switchyard_ebpf::cleanup(&self.cfg.pin_root);
        if self.bpffs.exists() {
            let _ = run_cmd(std::process::Command::new("umount").arg(&self.bpffs));
            let _ = std::fs::remove_dir(&self.bpffs);
        }
    }
}

pub fn key(vip: &str, port: u16, protocol: Protocol, scope: Scope) -> ServiceKey {
    ServiceKey {
        vip: vip.parse().unwrap(),
        port,
        protocol,
        scope,
    }
}

pub fn forward(id: u32, target: TargetSet) -> ServiceEntry {
    ServiceEntry {
        id,
        action: Action::Forward,
        target,
        masquerade: false,
        source_ranges: false,
        affinity_timeout: None,
    }
}

pub fn backends(addrs: &[&str]) -> Vec<Backend> {
    addrs
        .iter()
        .map(|a| Backend {
            addr: a.parse::<SocketAddr>().unwrap(),
            local: true,
        })
        .collect()
}

/// A ClusterIP service port: one node-scope entry per protocol on `vip:port`.
pub fn cluster_ip(id: u32, vip: &str, port: u16, protos: &[Protocol], eps: &[&str]) -> ServicePort {
    let mut sp = ServicePort {
        id,
        ..ServicePort::default()
    };
    sp.sets.insert(TargetSet::Internal, backends(eps));
    for p in protos {
        sp.entries.insert(
            key(vip, port, *p, Scope::Node),
            forward(id, TargetSet::Internal),
        );
    }
    sp
}

pub fn root_or_skip(test: &str) -> bool {
    switchyard_e2e::require_root(test)
}

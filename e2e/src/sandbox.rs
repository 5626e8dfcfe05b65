//! The sandboxed node: private network namespaces wired as DESIGN.md "Sandbox topology" —
//! a node namespace (bridge `cbr0`, uplink, forwarding), an "external" namespace playing
//! the outside world, a `pod` client and one namespace per endpoint pod running echo
//! servers — plus the agent running inside the node namespace. Everything is deleted on
//! drop; the host's own network is never touched.
//!
//! Pods get host addresses (/32, /128) with an on-link default route via the bridge
//! (10.0.0.1, fd00:10::1), so pod-to-pod and pod-to-service traffic is always routed by the
//! node (as with routed CNIs) and reply traffic passes the node's conntrack.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex, Once,
    },
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};

use crate::{
    agent::{http_get, Agent, Launch, Mounts, DEFAULT_HEALTHZ, DEFAULT_METRICS},
    bpffs::PrivateBpffs,
    cgroup::{cgroup2_root, CgroupClient, PrivateCgroup},
    echo::{EchoServer, StreamEchoServer},
    manifests::ManifestDir,
    netns::{run_cmd, NetNs},
    probe::{self, Outcome, Proto, Source},
};

/// The node under test.
pub const NODE_NAME: &str = "test-node";
/// The node's primary IPv4 address (uplink), the `node` source.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
/// The node's primary IPv6 address (uplink), the `node6` source.
pub const NODE_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// The bridge address, the pods' default gateway.
pub const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const BRIDGE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 1);
/// The `pod` / `pod6` client.
pub const POD_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const POD_CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 2);
/// External sources behind the uplink.
pub const EXT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const EXT_BLOCKED_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 130);
pub const EXT_IP6: Ipv6Addr = Ipv6Addr::new(0x2600, 0x5200, 0, 0, 0, 0, 0, 1);

/// Node uplink addresses (address/prefix).
const UPLINK_ADDRS: [&str; 5] = [
    "192.168.0.2/24",
    "192.168.1.2/24",
    "192.168.99.11/32",
    "2001:db8::1/64",
    "2001:db8:1::2/64",
];
/// The external router's side of the uplink.
const ROUTER_ADDRS: [&str; 4] = [
    "192.168.0.1/24",
    "192.168.1.1/24",
    "2001:db8::ff/64",
    "2001:db8:1::1/64",
];
const ROUTER_IP: &str = "192.168.0.1";
const ROUTER_IP6: &str = "2001:db8::ff";

static NEXT_SANDBOX: AtomicUsize = AtomicUsize::new(0);
static STALE_CLEANUP: Once = Once::new();

/// Whether this process runs with effective uid 0.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// For tests needing root: true if root; otherwise panics when `CI=true`, else prints a
/// loud SKIPPED line and returns false.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs root (network namespaces, nftables); CI=true so this is a failure");
    }
    // Written to the stderr handle directly so the test harness's capture does not hide it.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("\n*** SKIPPED: {test} needs root (network namespaces, nftables) ***\n\n")
            .as_bytes(),
    );
    false
}

/// Set by the VM lane for the jobs that need what only its kernel has (IPVS, the dummy
/// link type): a missing feature is then a failure, not a skip.
pub const REQUIRE_VM_FEATURES: &str = "SWITCHYARD_REQUIRE_VM_FEATURES";

/// For tests needing IPVS: true when this kernel has it (`ip_vs` loaded, or loaded now
/// by `modprobe`); otherwise panics when the VM lane requires it
/// ([`REQUIRE_VM_FEATURES`]), else prints a loud SKIPPED line (the host kernel has no
/// IPVS: the VM lane runs these) and returns false.
pub fn require_ipvs(test: &str) -> bool {
    let present = || Path::new("/proc/sys/net/ipv4/vs").exists();
    if !present() {
        let _ = std::process::Command::new("modprobe")
            .arg("ip_vs")
            .stderr(std::process::Stdio::null())
            .status();
    }
    if present() {
        return true;
    }
    if std::env::var(REQUIRE_VM_FEATURES).as_deref() == Ok("1") {
        panic!("{test}: IPVS is required here ({REQUIRE_VM_FEATURES}=1) but this kernel has none");
    }
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("\n*** SKIPPED: {test} needs IPVS, which this kernel lacks; the VM lane runs it ***\n\n")
            .as_bytes(),
    );
    false
}

/// Where a sandboxed eBPF engine attaches and pins (see [`Sandbox::enable_ebpf`]).
#[derive(Clone, Debug)]
pub struct EbpfPaths {
    pub cgroup: PathBuf,
    pub bpffs: PathBuf,
}

/// One pod namespace on `cbr0`.
struct Pod {
    // Field order matters: echo sockets close before the namespace goes away.
    _stream: Option<StreamEchoServer>,
    _echo: Option<EchoServer>,
    ns: NetNs,
    ips: Vec<IpAddr>,
}

/// The sandboxed node with its outside world and pods. See the module doc.
pub struct Sandbox {
    // Drop order: agent, its bpffs, the cgroup client and its cgroup, pods, client, ext,
    // node.
    agent: Option<Agent>,
    /// Run before the agent binary (see [`Sandbox::set_agent_wrapper`]).
    agent_wrapper: Vec<String>,
    bpffs: Option<PrivateBpffs>,
    cgroup_client: Option<Mutex<CgroupClient>>,
    cgroup: Option<PrivateCgroup>,
    pods: Vec<Pod>,
    client: Pod,
    ext: NetNs,
    node: NetNs,
    logs: ManifestDir,
    prefix: String,
    next_pod: usize,
}

impl Sandbox {
    /// Builds the node, external and `pod` client namespaces.
    pub fn new() -> Result<Sandbox> {
        if !is_root() {
            bail!("the sandbox needs root (network namespaces, nftables)");
        }
        STALE_CLEANUP.call_once(remove_stale_leftovers);
        let prefix = format!(
            "sye-{}-{}",
            std::process::id(),
            NEXT_SANDBOX.fetch_add(1, Ordering::SeqCst)
        );
        let node = NetNs::create(&format!("{prefix}-node"))?;
        for (k, v) in [
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.conf.all.send_redirects", "0"),
            ("net.ipv4.conf.default.send_redirects", "0"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv4.icmp_ratelimit", "0"),
            ("net.ipv6.icmp.ratelimit", "0"),
        ] {
            node.sysctl(k, v)?;
        }
        node.ip(&[
            "link",
            "add",
            "cbr0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        node.ip(&["addr", "add", "10.0.0.1/8", "dev", "cbr0"])?;
        node.ip(&["addr", "add", "fd00:10::1/32", "dev", "cbr0", "nodad"])?;
        node.ip(&["link", "set", "cbr0", "up"])?;

        let ext = NetNs::create(&format!("{prefix}-ext"))?;
        for (k, v) in [
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ] {
            ext.sysctl(k, v)?;
        }
        node.ip(&[
            "link",
            "add",
            "uplink",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ext.name(),
        ])?;
        for a in UPLINK_ADDRS {
            add_addr(&node, a, "uplink")?;
        }
        node.ip(&["link", "set", "uplink", "up"])?;
        for a in ROUTER_ADDRS {
            add_addr(&ext, a, "eth0")?;
        }
        for a in ["203.0.113.2/32", "203.0.113.130/32", "2600:5200::1/128"] {
            add_addr(&ext, a, "lo")?;
        }
        ext.ip(&["link", "set", "eth0", "up"])?;
        // The outside world sends everything (VIPs, LB IPs, external IPs) to the node...
        ext.ip(&["route", "add", "default", "via", &NODE_IP.to_string()])?;
        ext.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &NODE_IP6.to_string(),
        ])?;
        // ...and the node's default route points back at it.
        node.ip(&["route", "add", "default", "via", ROUTER_IP])?;
        node.ip(&["-6", "route", "add", "default", "via", ROUTER_IP6])?;

        let logs = ManifestDir::new_temp("logs")?;
        let client = make_pod(
            &node,
            &format!("{prefix}-pod"),
            "pclient",
            &[POD_CLIENT_IP.into(), POD_CLIENT_IP6.into()],
            &[],
        )?;
        Ok(Sandbox {
            agent: None,
            agent_wrapper: Vec::new(),
            bpffs: None,
            cgroup_client: None,
            cgroup: None,
            pods: Vec::new(),
            client,
            ext,
            node,
            logs,
            prefix,
            next_pod: 0,
        })
    }

    /// The node namespace (where the agent runs and programs the dataplane).
    pub fn node_ns(&self) -> &NetNs {
        &self.node
    }

    /// The external-world namespace.
    pub fn ext_ns(&self) -> &NetNs {
        &self.ext
    }

    /// Adds a pod namespace owning `ips` with echo servers on TCP and UDP for every port.
    pub fn add_pod(&mut self, ips: &[IpAddr], ports: &[u16]) -> Result<()> {
        for ip in ips {
            if self.owner_of(*ip).is_some() {
                bail!("address {ip} already belongs to a sandbox namespace");
            }
        }
        let n = self.next_pod;
        self.next_pod += 1;
        let pod = make_pod(
            &self.node,
            &format!("{}-p{n}", self.prefix),
            &format!("p{n}"),
            ips,
            ports,
        )?;
        self.pods.push(pod);
        Ok(())
    }

    /// Like [`Sandbox::add_pod`], plus long-lived line-echo TCP servers on `stream_ports`
    /// (see [`StreamEchoServer`]; reach them with [`probe::LineStream`]).
    pub fn add_pod_with_streams(
        &mut self,
        ips: &[IpAddr],
        ports: &[u16],
        stream_ports: &[u16],
    ) -> Result<()> {
        self.add_pod(ips, ports)?;
        let pod = self.pods.last_mut().expect("just added");
        pod._stream = Some(StreamEchoServer::start(&pod.ns.path(), ips, stream_ports)?);
        Ok(())
    }

    /// Removes the pod owning `ip` (its echo servers stop, its namespace goes away).
    pub fn remove_pod(&mut self, ip: IpAddr) -> Result<()> {
        let at = self
            .pods
            .iter()
            .position(|p| p.ips.contains(&ip))
            .ok_or_else(|| anyhow!("no pod owns {ip}"))?;
        self.pods.remove(at);
        Ok(())
    }

    /// Resolves a flow `src`: `pod`, `pod6`, `node`, `node6`, `ext`, `extblocked`, `ext6`,
    /// or an endpoint IP (that pod itself).
    pub fn source(&self, role: &str) -> Result<Source> {
        let at = |ns: &NetNs, ip: IpAddr| Source {
            netns: ns.path(),
            ip,
        };
        Ok(match role {
            "pod" => at(&self.client.ns, POD_CLIENT_IP.into()),
            "pod6" => at(&self.client.ns, POD_CLIENT_IP6.into()),
            "node" => at(&self.node, NODE_IP.into()),
            "node6" => at(&self.node, NODE_IP6.into()),
            "ext" => at(&self.ext, EXT_IP.into()),
            "extblocked" => at(&self.ext, EXT_BLOCKED_IP.into()),
            "ext6" => at(&self.ext, EXT_IP6.into()),
            other => {
                let ip: IpAddr = other
                    .trim_matches(|c| c == '[' || c == ']')
                    .parse()
                    .with_context(|| format!("unknown source role {other:?}"))?;
                let path = self
                    .owner_of(ip)
                    .ok_or_else(|| anyhow!("source {ip} is not a pod of this sandbox"))?;
                Source { netns: path, ip }
            }
        })
    }

    /// One request from `role` to `dst` (see [`probe::probe`]). With a private cgroup
    /// ([`Sandbox::enable_cgroup`]), the node's own clients (`pod`, `node`, endpoint pods)
    /// probe from the cgroup's client process; the external roles never do.
    pub fn probe(
        &self,
        role: &str,
        dst: SocketAddr,
        proto: Proto,
        timeout: Duration,
    ) -> Result<Outcome> {
        let src = self.source(role)?;
        match &self.cgroup_client {
            Some(client) if !role.starts_with("ext") => client
                .lock()
                .map_err(|_| anyhow!("cgroup client lock poisoned"))?
                .probe(&src, dst, proto, timeout),
            _ => probe::probe(&src, dst, proto, timeout),
        }
    }

    /// Opt-in: creates a private cgroup under the cgroup v2 mount `cgroup2_root` and a
    /// client process inside it that makes the node-side probes from then on (see
    /// [`crate::cgroup`]). Returns the cgroup's directory, to attach cgroup programs to.
    /// Removed (its processes killed) when the sandbox is dropped.
    pub fn enable_cgroup(&mut self, cgroup2_root: &Path) -> Result<PathBuf> {
        if let Some(cg) = &self.cgroup {
            return Ok(cg.path().to_path_buf());
        }
        let cg = PrivateCgroup::create(cgroup2_root)?;
        let client = CgroupClient::spawn(&cg)?;
        let path = cg.path().to_path_buf();
        self.cgroup = Some(cg);
        self.cgroup_client = Some(Mutex::new(client));
        Ok(path)
    }

    /// Opt-in, for an agent running the eBPF engine: a private cgroup (as
    /// [`Sandbox::enable_cgroup`], under this machine's cgroup v2 mount) for its socket
    /// programs, and a private bpffs directory for its pins. The agent gets them through
    /// `ebpf.cgroupPath` and `--bpffs-root`, and from then on runs with the host's mounts
    /// ([`Mounts::Host`]).
    pub fn enable_ebpf(&mut self) -> Result<EbpfPaths> {
        let cgroup = self.enable_cgroup(&cgroup2_root()?)?;
        if self.bpffs.is_none() {
            self.bpffs = Some(PrivateBpffs::create()?);
        }
        let bpffs = self.bpffs.as_ref().expect("just made").path().to_path_buf();
        Ok(EbpfPaths { cgroup, bpffs })
    }

    /// Mounts the private bpffs beforehand (after [`Sandbox::enable_ebpf`]), as a node's
    /// systemd mounts `/sys/fs/bpf`: for an agent without CAP_SYS_ADMIN.
    pub fn premount_bpffs(&self) -> Result<()> {
        self.bpffs
            .as_ref()
            .ok_or_else(|| anyhow!("no private bpffs (call enable_ebpf first)"))?
            .mount()
    }

    /// Agents started from now on run under `wrapper` (e.g. `setpriv` with the chart's
    /// capabilities).
    pub fn set_agent_wrapper(&mut self, wrapper: &[&str]) {
        self.agent_wrapper = wrapper.iter().map(|s| s.to_string()).collect();
    }

    /// The client process in the private cgroup, for requests beyond [`Sandbox::probe`]
    /// (connection loops, unconnected UDP).
    pub fn cgroup_client(&self) -> Result<std::sync::MutexGuard<'_, CgroupClient>> {
        self.cgroup_client
            .as_ref()
            .ok_or_else(|| anyhow!("no private cgroup (call enable_cgroup first)"))?
            .lock()
            .map_err(|_| anyhow!("cgroup client lock poisoned"))
    }

    /// Another client process in the private cgroup, for load running beside the
    /// sandbox's own client (a UDP flow during a TCP connection loop).
    pub fn spawn_cgroup_client(&self) -> Result<CgroupClient> {
        let cg = self
            .cgroup
            .as_ref()
            .ok_or_else(|| anyhow!("no private cgroup (call enable_cgroup first)"))?;
        CgroupClient::spawn(cg)
    }

    /// Starts the agent in the node namespace reading `manifests`; `extra_args` are appended
    /// to `switchyard run --manifests DIR --node-name test-node`.
    pub fn run_agent(&mut self, manifests: &Path, extra_args: &[&str]) -> Result<()> {
        self.run_agent_with_env(manifests, extra_args, &[])
    }

    /// Like [`Sandbox::run_agent`], with extra environment variables for the agent.
    pub fn run_agent_with_env(
        &mut self,
        manifests: &Path,
        extra_args: &[&str],
        env: &[(String, String)],
    ) -> Result<()> {
        if let Some(mut old) = self.agent.take() {
            old.stop();
        }
        let log = self.logs.path().join("agent.log");
        let launch = Launch {
            mounts: if self.bpffs.is_some() {
                Mounts::Host
            } else {
                Mounts::Netns
            },
            wrapper: self.agent_wrapper.clone(),
        };
        self.agent = Some(Agent::start_with_env(
            self.node.name(),
            &launch,
            manifests,
            NODE_NAME,
            extra_args,
            env,
            &log,
        )?);
        Ok(())
    }

    /// Waits until the agent answers 200 on http://127.0.0.1:10256/healthz in the node
    /// namespace.
    pub fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let addr = DEFAULT_HEALTHZ.parse().expect("valid address");
        self.wait_healthy_at(addr, timeout)
    }

    /// Like [`Sandbox::wait_healthy`] for another `healthzBindAddress` (an unspecified
    /// address such as 0.0.0.0 or [::] is polled on loopback).
    pub fn wait_healthy_at(&mut self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let mut addr = addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
        }
        let path = self.node.path();
        self.agent_mut()?.wait_healthy(&path, addr, timeout)
    }

    pub fn agent(&self) -> Option<&Agent> {
        self.agent.as_ref()
    }

    pub fn agent_mut(&mut self) -> Result<&mut Agent> {
        self.agent
            .as_mut()
            .ok_or_else(|| anyhow!("no agent started (call run_agent first)"))
    }

    /// The agent's log so far (empty if none started).
    pub fn agent_log(&self) -> String {
        self.agent.as_ref().map(Agent::log).unwrap_or_default()
    }

    /// Stops the agent (SIGTERM, then SIGKILL).
    pub fn stop_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.stop();
        }
    }

    /// The agent's `/metrics` text (default `metricsBindAddress`, from the node namespace).
    pub fn metrics(&self) -> Result<String> {
        let addr = DEFAULT_METRICS.parse().expect("valid address");
        let (code, body) = http_get(&self.node.path(), addr, "/metrics")?;
        if code != 200 {
            bail!("GET /metrics answered {code}");
        }
        Ok(body)
    }

    /// A command's standard output inside the node namespace.
    pub fn in_node(&self, args: &[&str]) -> Result<String> {
        run_cmd(
            std::process::Command::new("ip")
                .args(["netns", "exec", self.node.name()])
                .args(args),
        )
    }

    /// The TCP counters that explain a slow or failed connection (the nonzero TIME_WAIT,
    /// PAWS, SYN and reset counters of `nstat`) in the node, the client pod and every
    /// endpoint pod, for failure reports.
    pub fn tcp_counters(&self) -> String {
        let mut spaces = vec![
            ("node".to_string(), &self.node),
            ("pod client".to_string(), &self.client.ns),
        ];
        spaces.extend(
            self.pods
                .iter()
                .map(|p| (format!("pod {:?}", p.ips), &p.ns)),
        );
        let mut out = String::new();
        for (what, ns) in spaces {
            let shown: Vec<String> = match tcp_counters_of(ns) {
                Ok(counters) => counters
                    .into_iter()
                    .filter(|(k, v)| {
                        *v > 0
                            && [
                                "TW",
                                "TimeWait",
                                "PAWS",
                                "Syn",
                                "SYN",
                                "Rst",
                                "Reset",
                                "Retrans",
                                "Challenge",
                                "AttemptFails",
                            ]
                            .iter()
                            .any(|w| k.contains(w))
                    })
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect(),
                Err(e) => vec![format!("(nstat failed: {e:#})")],
            };
            out.push_str(&format!("{what}: {}\n", shown.join(" ")));
        }
        out
    }

    /// How many SYNs the endpoint pods' TIME_WAIT sockets refused by their timestamps
    /// (`TcpExtPAWSTimewait`, summed over the pods): a client reusing a source port
    /// towards an endpoint whose previous connection from that port saw other timestamps.
    pub fn endpoint_paws_timewait(&self) -> Result<u64> {
        let mut sum = 0;
        for pod in &self.pods {
            sum += tcp_counters_of(&pod.ns)?
                .get("TcpExtPAWSTimewait")
                .copied()
                .unwrap_or(0);
        }
        Ok(sum)
    }

    /// The nftables ruleset of the node namespace, and its IPVS table where the kernel
    /// has IPVS (for failure reports).
    pub fn node_ruleset(&self) -> String {
        let in_node = |args: &[&str]| {
            let mut all = vec!["netns", "exec", self.node.name()];
            all.extend_from_slice(args);
            run_cmd(std::process::Command::new("ip").args(&all))
        };
        let mut out = in_node(&["nft", "list", "ruleset"])
            .unwrap_or_else(|e| format!("(nft list ruleset failed: {e:#})"));
        if Path::new("/proc/sys/net/ipv4/vs").exists() {
            match in_node(&["ipvsadm", "-Ln"]) {
                Ok(table) => out.push_str(&format!("\nipvsadm -Ln:\n{table}")),
                Err(e) => out.push_str(&format!("\n(ipvsadm -Ln failed: {e:#})")),
            }
        }
        out
    }

    fn owner_of(&self, ip: IpAddr) -> Option<PathBuf> {
        std::iter::once(&self.client)
            .chain(self.pods.iter())
            .find(|p| p.ips.contains(&ip))
            .map(|p| p.ns.path())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop_agent();
        self.bpffs = None;
        self.cgroup_client = None;
        self.cgroup = None;
        self.pods.clear();
    }
}

fn add_addr(ns: &NetNs, cidr: &str, dev: &str) -> Result<()> {
    if cidr.contains(':') {
        ns.ip(&["addr", "add", cidr, "dev", dev, "nodad"])?;
    } else {
        ns.ip(&["addr", "add", cidr, "dev", dev])?;
    }
    Ok(())
}

fn on_bridge_subnet(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 10,
        IpAddr::V6(v6) => v6.segments()[0] == 0xfd00 && v6.segments()[1] == 0x10,
    }
}

/// Creates a pod namespace plugged into `cbr0` through port `port_name`.
fn make_pod(
    node: &NetNs,
    ns_name: &str,
    port_name: &str,
    ips: &[IpAddr],
    ports: &[u16],
) -> Result<Pod> {
    let ns = NetNs::create(ns_name)?;
    for (k, v) in [
        ("net.ipv6.conf.all.accept_dad", "0"),
        ("net.ipv6.conf.default.accept_dad", "0"),
        ("net.ipv4.conf.all.accept_redirects", "0"),
        ("net.ipv4.conf.default.accept_redirects", "0"),
        ("net.ipv6.conf.all.accept_redirects", "0"),
        ("net.ipv6.conf.default.accept_redirects", "0"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
    ] {
        ns.sysctl(k, v)?;
    }
    node.ip(&[
        "link",
        "add",
        port_name,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ])?;
    node.ip(&["link", "set", port_name, "master", "cbr0"])?;
    node.ip(&[
        "link",
        "set",
        "dev",
        port_name,
        "type",
        "bridge_slave",
        "hairpin",
        "on",
    ])?;
    node.ip(&["link", "set", port_name, "up"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    let (mut v4, mut v6) = (false, false);
    for ip in ips {
        match ip {
            IpAddr::V4(_) => {
                v4 = true;
                ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
            }
            IpAddr::V6(_) => {
                v6 = true;
                ns.ip(&["addr", "add", &format!("{ip}/128"), "dev", "eth0", "nodad"])?;
            }
        }
        if !on_bridge_subnet(*ip) {
            let host = if ip.is_ipv4() {
                format!("{ip}/32")
            } else {
                format!("{ip}/128")
            };
            node.ip(&["route", "add", &host, "dev", "cbr0"])?;
        }
    }
    if v4 {
        ns.ip(&["route", "add", &format!("{BRIDGE_IP}/32"), "dev", "eth0"])?;
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &BRIDGE_IP.to_string(),
            "dev",
            "eth0",
        ])?;
    }
    if v6 {
        ns.ip(&[
            "-6",
            "route",
            "add",
            &format!("{BRIDGE_IP6}/128"),
            "dev",
            "eth0",
        ])?;
        ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &BRIDGE_IP6.to_string(),
            "dev",
            "eth0",
        ])?;
    }
    let echo = if ports.is_empty() {
        None
    } else {
        Some(EchoServer::start(&ns.path(), ips, ports)?)
    };
    Ok(Pod {
        _stream: None,
        _echo: echo,
        ns,
        ips: ips.to_vec(),
    })
}

/// Whether `name` is `sye-<pid>-...` for a test process that no longer exists.
fn left_by_dead_process(name: &str) -> bool {
    name.strip_prefix("sye-")
        .and_then(|rest| rest.split('-').next())
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|pid| {
            pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
        })
}

/// Whether `name` is `sy-probe-<pid>-<n>` of a process that no longer exists.
fn probe_namespace_of_dead_process(name: &str) -> bool {
    name.strip_prefix("sy-probe-")
        .and_then(|rest| rest.split('-').next())
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Cleans up after harness processes that died without running their destructors: their
/// temp directories, the agents they started (found by their namespace, so only processes
/// inside our own `sye-` namespaces are killed) and the namespaces themselves.
fn remove_stale_leftovers() {
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            if left_by_dead_process(&e.file_name().to_string_lossy()) && e.path().is_dir() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // The probe's throwaway namespace of an agent killed mid-probe (the fault
        // suite kills hundreds): empty, named after the dead agent's pid.
        if probe_namespace_of_dead_process(&name) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &name])
                .output();
            continue;
        }
        if !left_by_dead_process(&name) {
            continue;
        }
        if let Ok(pids) = run_cmd(std::process::Command::new("ip").args(["netns", "pids", &name])) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .output();
    }
}

/// Every counter `nstat -az` reports in a namespace (absolute values since it was made).
fn tcp_counters_of(ns: &NetNs) -> Result<std::collections::BTreeMap<String, u64>> {
    let text = run_cmd(std::process::Command::new("ip").args([
        "netns",
        "exec",
        ns.name(),
        "nstat",
        "-az",
        "--json",
    ]))?;
    let value: serde_json::Value = serde_json::from_str(&text).context("nstat --json output")?;
    Ok(value
        .get("kernel")
        .and_then(|k| k.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .collect()
        })
        .unwrap_or_default())
}

//! Real traffic through the rules, on both backends. The engine programs the node
//! namespace of the e2e sandbox (DESIGN.md "Sandbox topology": pods on `cbr0`, the
//! outside world behind the uplink, echo servers naming the endpoint and the source
//! they saw), with models planned from Services as facts. Needs root.
//!
//! Each test shows one of the behaviours this engine changed to match the plan and the
//! nftables engine (the findings' D4, D7, D8, D9), with the flows that differ.

mod support;

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use nix::sys::socket::{recv, socket, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType};
use support::*;
use switchyard_e2e::{
    netns::run_in,
    probe::{probe_here, PROBE_TIMEOUT},
    require_root, Outcome, Proto, Sandbox, Source,
};
use switchyard_iptables::{Backend, IptOptions, IptablesEngine};
use switchyard_model::{ChangeSet, Drift, ModelConfig, NodeModel, ProxyEngine};

const BACKENDS: [Backend; 2] = [Backend::Nft, Backend::Legacy];

/// A sandboxed node programmed by the engine.
struct Node {
    sandbox: Sandbox,
    engine: IptablesEngine,
    model: NodeModel,
    backend: Backend,
}

impl Node {
    /// A sandbox with echo pods at `pods` (address, ports), programmed with `services`.
    async fn new(
        backend: Backend,
        pods: &[(&str, &[u16])],
        services: Vec<TestService>,
        config: &ModelConfig,
    ) -> Node {
        let mut sandbox = Sandbox::new().expect("sandbox");
        for (ip, ports) in pods {
            let ip: IpAddr = ip.parse().unwrap();
            sandbox.add_pod(&[ip], ports).expect("pod");
        }
        let mut engine = IptablesEngine::new(IptOptions {
            netns: Some(sandbox.node_ns().name().to_string()),
            backend,
            ipv6: true,
            ..IptOptions::default()
        });
        engine.prepare().await.unwrap();
        let model = model_with(services, config);
        engine.sync(&model, &ChangeSet::full(&model)).await.unwrap();
        Node {
            sandbox,
            engine,
            model,
            backend,
        }
    }

    /// Replaces the model with a partial sync.
    async fn update(&mut self, services: Vec<TestService>, config: &ModelConfig) {
        let new = model_with(services, config);
        let changes = ChangeSet::between(&self.model, &new);
        let report = self.engine.sync(&new, &changes).await.unwrap();
        assert!(!report.full);
        assert_eq!(self.engine.verify(&new).await.unwrap(), Drift::None);
        self.model = new;
    }

    fn probe(&self, role: &str, dst: &str, proto: Proto) -> Outcome {
        let dst: SocketAddr = dst.parse().unwrap();
        self.sandbox
            .probe(role, dst, proto, PROBE_TIMEOUT)
            .unwrap_or_else(|e| panic!("{role} -> {dst}: {e:#}"))
    }

    fn expect_refused(&self, role: &str, dst: &str, proto: Proto) {
        let o = self.probe(role, dst, proto);
        let b = self.backend;
        assert!(
            matches!(o, Outcome::Refused(_)),
            "{b:?} {role} -> {dst} {proto}: {o}"
        );
    }

    fn expect_dropped(&self, role: &str, dst: &str, proto: Proto) {
        let o = self.probe(role, dst, proto);
        let b = self.backend;
        assert_eq!(o, Outcome::Timeout, "{b:?} {role} -> {dst} {proto}: {o}");
    }

    fn expect_answer(&self, role: &str, dst: &str, backend: &str) {
        match self.probe(role, dst, Proto::Tcp) {
            Outcome::Answered { backend: b, .. } if b == backend => {}
            o => panic!(
                "{:?} {role} -> {dst}: {o}, expected {backend}",
                self.backend
            ),
        }
    }
}

/// D7: a service without endpoints refuses TCP with a reset, not ICMP (which the kernel
/// rate-limits, and which Linux ignores for the first SYN of an IPv6 connection), and
/// other protocols with ICMP port unreachable. Seen from the client: a raw ICMP socket
/// in the pod namespace receives no destination-unreachable for the TCP refusals, one
/// for the UDP refusal; the IPv6 TCP refusal is immediate.
#[tokio::test]
async fn reject_is_a_tcp_reset_and_icmp_for_other_protocols() {
    if !require_root("reject_is_a_tcp_reset_and_icmp_for_other_protocols") {
        return;
    }
    for backend in BACKENDS {
        let tcp = service("empty", &["172.30.0.50", "fd00:30::50"], 80, vec![]);
        let mut udp = tcp.clone();
        udp.name.protocol = switchyard_model::Protocol::Udp;
        let node = Node::new(backend, &[], vec![tcp, udp], &config()).await;
        let pod = node.sandbox.source("pod").unwrap();
        let pod6 = node.sandbox.source("pod6").unwrap();
        for (src, dst, proto) in [
            (&pod, "172.30.0.50:80", Proto::Tcp),
            (&pod6, "[fd00:30::50]:80", Proto::Tcp),
        ] {
            let (outcome, unreachables, took) = probe_watching_icmp(src, dst, proto);
            assert!(
                matches!(outcome, Outcome::Refused(_)),
                "{backend:?} {dst}: {outcome}"
            );
            assert_eq!(
                unreachables, 0,
                "{backend:?} {dst}: refused by ICMP, not a reset"
            );
            assert!(
                took < Duration::from_millis(500),
                "{backend:?} {dst}: {took:?}"
            );
        }
        let (outcome, unreachables, _) = probe_watching_icmp(&pod, "172.30.0.50:80", Proto::Udp);
        assert!(
            matches!(outcome, Outcome::Refused(_)),
            "{backend:?} udp: {outcome}"
        );
        assert!(unreachables > 0, "{backend:?}: UDP refused without ICMP?");
    }
}

/// One probe from `src` while a raw ICMP socket in the same namespace listens: the
/// outcome, how many destination-unreachable messages arrived, and how long it took.
fn probe_watching_icmp(src: &Source, dst: &str, proto: Proto) -> (Outcome, usize, Duration) {
    let dst: SocketAddr = dst.parse().unwrap();
    let ip = src.ip;
    run_in(&src.netns, move || {
        let (family, protocol, unreachable) = if ip.is_ipv4() {
            (AddressFamily::Inet, SockProtocol::Icmp, 3u8)
        } else {
            (AddressFamily::Inet6, SockProtocol::IcmpV6, 1u8)
        };
        let raw = socket(family, SockType::Raw, SockFlag::SOCK_NONBLOCK, protocol).unwrap();
        let start = Instant::now();
        let outcome = probe_here(ip, dst, proto, PROBE_TIMEOUT).unwrap();
        let took = start.elapsed();
        std::thread::sleep(Duration::from_millis(100));
        let mut count = 0;
        let mut buf = [0u8; 2048];
        while let Ok(n) = recv(raw.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            // IPv4 raw sockets see the IP header; ICMPv6 ones only the message.
            let at = if ip.is_ipv4() {
                usize::from(buf[0] & 0x0f) * 4
            } else {
                0
            };
            if n > at && buf[at] == unreachable {
                count += 1;
            }
        }
        (outcome, count, took)
    })
    .unwrap()
}

/// An LB Service with source ranges: `ext` (203.0.113.2) is inside, `extblocked`
/// (203.0.113.130) outside.
fn ranged(endpoints: Vec<switchyard_model::Endpoint>) -> TestService {
    let mut s = service("ranged", &["172.30.0.52"], 80, endpoints);
    s.node_port = Some(3052);
    s.load_balancer_ips = vec!["1.2.3.5".parse().unwrap()];
    s.load_balancer_source_ranges = vec!["203.0.113.0/25".parse().unwrap()];
    s
}

/// D4: the firewall applies with or without endpoints. Without: clients outside the
/// ranges are dropped (they never learn the service exists), those inside refused;
/// with endpoints, inside is served and outside still dropped.
#[tokio::test]
async fn firewall_applies_with_and_without_endpoints() {
    if !require_root("firewall_applies_with_and_without_endpoints") {
        return;
    }
    for backend in BACKENDS {
        let pods: &[(&str, &[u16])] = &[("10.180.0.1", &[80])];
        let mut node = Node::new(backend, pods, vec![ranged(vec![])], &config()).await;
        node.expect_refused("ext", "1.2.3.5:80", Proto::Tcp);
        node.expect_dropped("extblocked", "1.2.3.5:80", Proto::Tcp);
        // The NodePort is not subject to the ranges.
        node.expect_refused("extblocked", "192.168.0.2:3052", Proto::Tcp);

        node.update(vec![ranged(vec![ep("10.180.0.1", 80, true)])], &config())
            .await;
        node.expect_answer("ext", "1.2.3.5:80", "10.180.0.1:80");
        node.expect_dropped("extblocked", "1.2.3.5:80", Proto::Tcp);
        node.expect_answer("extblocked", "192.168.0.2:3052", "10.180.0.1:80");

        // And back: the filter chain replaces the nat one in a partial sync.
        node.update(vec![ranged(vec![])], &config()).await;
        node.expect_refused("ext", "1.2.3.5:80", Proto::Tcp);
        node.expect_dropped("extblocked", "1.2.3.5:80", Proto::Tcp);
    }
}

/// D8: a NodePort whose external traffic has no (local) endpoint is dropped only on the
/// addresses that accept NodePorts (here the primary IP). On another local address
/// (192.168.1.2) nothing of the service applies: the node's own stack answers, and
/// refuses (nothing listens there).
#[tokio::test]
async fn nodeport_refusals_only_on_nodeport_addresses() {
    if !require_root("nodeport_refusals_only_on_nodeport_addresses") {
        return;
    }
    for backend in BACKENDS {
        let s = TestService {
            node_port: Some(3051),
            external_policy_local: true,
            ..service(
                "remote-only",
                &["172.30.0.51"],
                80,
                vec![ep("10.180.2.1", 80, false)],
            )
        };
        let pods: &[(&str, &[u16])] = &[("10.180.2.1", &[80])];
        let node = Node::new(backend, pods, vec![s], &config()).await;
        node.expect_dropped("ext", "192.168.0.2:3051", Proto::Tcp);
        node.expect_refused("ext", "192.168.1.2:3051", Proto::Tcp);
        // Pods are short-circuited to the cluster-wide endpoint.
        node.expect_answer("pod", "192.168.0.2:3051", "10.180.2.1:80");
    }
}

/// D9: loopback never accepts NodePorts, also when `nodePortAddresses` holds a CIDR
/// containing it (`0.0.0.0/0`): the node reaches the NodePort on its address, but on
/// 127.0.0.1 its own stack refuses (nothing listens), where a DNAT would have sent
/// the connection away.
#[tokio::test]
async fn loopback_never_accepts_nodeports() {
    if !require_root("loopback_never_accepts_nodeports") {
        return;
    }
    for backend in BACKENDS {
        let mut s = service("np", &["172.30.0.53"], 80, vec![ep("10.180.0.1", 80, true)]);
        s.node_port = Some(3053);
        let mut c = config();
        c.node_port_cidrs = vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
        let pods: &[(&str, &[u16])] = &[("10.180.0.1", &[80])];
        let node = Node::new(backend, pods, vec![s], &c).await;
        node.expect_answer("node", "192.168.0.2:3053", "10.180.0.1:80");
        node.expect_answer("ext", "192.168.1.2:3053", "10.180.0.1:80");
        node.expect_refused("node", "127.0.0.1:3053", Proto::Tcp);
        let lo = Source {
            netns: node.sandbox.node_ns().path(),
            ip: "127.0.0.1".parse().unwrap(),
        };
        let dst: SocketAddr = "127.0.0.1:3053".parse().unwrap();
        let o = run_in(&lo.netns, move || {
            probe_here(lo.ip, dst, Proto::Tcp, PROBE_TIMEOUT)
        })
        .unwrap()
        .unwrap();
        assert!(
            matches!(o, Outcome::Refused(_)),
            "{backend:?} 127.0.0.1: {o}"
        );
    }
}

/// The basics through a partial sync: a cluster IP served, hairpin masqueraded,
/// nothing left after cleanup.
#[tokio::test]
async fn cluster_ip_traffic_and_cleanup() {
    if !require_root("cluster_ip_traffic_and_cleanup") {
        return;
    }
    for backend in BACKENDS {
        let pods: &[(&str, &[u16])] = &[("10.180.0.1", &[80]), ("10.180.0.2", &[80])];
        let web = |eps| service("web", &["172.30.0.10"], 80, eps);
        let mut node = Node::new(
            backend,
            pods,
            vec![web(vec![ep("10.180.0.1", 80, true)])],
            &config(),
        )
        .await;
        node.expect_answer("pod", "172.30.0.10:80", "10.180.0.1:80");
        node.update(vec![web(vec![ep("10.180.0.2", 80, true)])], &config())
            .await;
        node.expect_answer("pod", "172.30.0.10:80", "10.180.0.2:80");
        // Hairpin: the endpoint reaching itself is masqueraded.
        match node.probe("10.180.0.2", "172.30.0.10:80", Proto::Tcp) {
            Outcome::Answered { seen_source, .. } => {
                assert_ne!(seen_source.ip().to_string(), "10.180.0.2", "{backend:?}")
            }
            o => panic!("{backend:?} hairpin: {o}"),
        }
        node.engine.cleanup().await.unwrap();
        assert!(
            !matches!(
                node.probe("pod", "172.30.0.10:80", Proto::Tcp),
                Outcome::Answered { .. }
            ),
            "{backend:?}: still answering after cleanup"
        );
    }
}

//! Real traffic through the rules: a "node" namespace programmed by the engine, a "pod"
//! namespace behind a veth pair running a TCP server that answers with the client
//! address it saw. Both backends. Needs root.

mod support;

use std::{
    fs::File,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::Duration,
};

use nix::sched::{setns, CloneFlags};
use support::{netns::*, *};
use switchyard_core::{ChangeSet, ProxyEngine};
use switchyard_iptables::{Backend, IptablesEngine};

fn ip(ns: &Netns, args: &str) {
    let status = Command::new("ip")
        .args(["netns", "exec", &ns.name, "ip"])
        .args(args.split_whitespace())
        .status()
        .unwrap();
    assert!(status.success(), "ip {args}");
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let file = File::open(format!("/run/netns/{ns}")).unwrap();
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// Connects from inside `ns`; returns the server's answer or the error kind.
fn connect(ns: &str, to: &str) -> Result<String, std::io::ErrorKind> {
    let to: SocketAddr = to.parse().unwrap();
    in_netns(ns, move || {
        let mut s =
            TcpStream::connect_timeout(&to, Duration::from_secs(2)).map_err(|e| e.kind())?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.kind())?;
        Ok(out)
    })
    .join()
    .unwrap()
}

#[tokio::test]
async fn cluster_ip_traffic_reaches_the_endpoint() {
    if !have_root("cluster_ip_traffic_reaches_the_endpoint") {
        return;
    }
    for backend in [Backend::Nft, Backend::Legacy] {
        let node = Netns::new();
        let pod = Netns::new();
        let status = Command::new("ip")
            .args([
                "link", "add", "sy-n", "netns", &node.name, "type", "veth", "peer", "name", "sy-p",
                "netns", &pod.name,
            ])
            .status()
            .unwrap();
        assert!(status.success());
        for (ns, dev, addr) in [
            (&node, "sy-n", "10.0.0.1/24"),
            (&pod, "sy-p", "10.0.0.5/24"),
        ] {
            ip(ns, "link set lo up");
            ip(ns, &format!("link set {dev} up"));
            ip(ns, &format!("addr add {addr} dev {dev}"));
        }
        ip(&node, "route add default dev sy-n");
        let (ok, out) = node.run("sysctl", &["-w", "net.ipv4.ip_forward=1"], "");
        assert!(ok, "{out}");
        ip(&pod, "route add default via 10.0.0.1");

        // The pod's server: answers with the address it saw.
        let listener = in_netns(&pod.name, || TcpListener::bind("10.0.0.5:8080").unwrap())
            .join()
            .unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { break };
                let peer = s.peer_addr().unwrap();
                let _ = s.write_all(format!("10.0.0.5:8080 saw {}", peer.ip()).as_bytes());
            }
        });

        let web = service(
            "web",
            &["172.16.0.10"],
            80,
            vec![ep("10.0.0.5", 8080, false)],
        );
        let empty = service("empty", &["172.16.0.11"], 80, vec![]);
        let m = model(vec![web, empty]);
        let mut engine = IptablesEngine::new(node.options(backend));
        engine.sync(&m, &ChangeSet::full(&m)).await.unwrap();

        let answer =
            connect(&node.name, "172.16.0.10:80").unwrap_or_else(|e| panic!("{backend:?}: {e:?}"));
        assert!(answer.starts_with("10.0.0.5:8080 saw "), "{answer}");
        // No endpoints: refused (REJECT), not a timeout.
        assert_eq!(
            connect(&node.name, "172.16.0.11:80"),
            Err(std::io::ErrorKind::ConnectionRefused),
            "{backend:?}"
        );

        // Hairpin: the endpoint reaching itself through the cluster IP is masqueraded
        // (it sees the node's address, not its own).
        let answer = connect(&pod.name, "172.16.0.10:80")
            .unwrap_or_else(|e| panic!("{backend:?} hairpin: {e:?}"));
        assert_eq!(answer, "10.0.0.5:8080 saw 10.0.0.1", "{backend:?}");

        // Cleanup: the cluster IP no longer answers.
        engine.cleanup().await.unwrap();
        assert!(
            connect(&node.name, "172.16.0.10:80").is_err(),
            "{backend:?}: still answering after cleanup"
        );
    }
}

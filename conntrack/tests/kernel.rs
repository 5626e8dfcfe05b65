//! Kernel tests: real conntrack entries in a private network namespace (conntrack
//! tables are per namespace), inserted and inspected with the `conntrack` tool, cleaned
//! with [`Conntrack`] from a thread that entered the namespace. Needs root.

use std::{
    fs::File,
    net::IpAddr,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use nix::sched::{setns, CloneFlags};
use switchyard_conntrack::{Conntrack, ConntrackFilter};
use switchyard_model::{IpFamily, Protocol};

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// Whether the test may run; panics under CI when it cannot.
fn need_root() -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("kernel conntrack tests need root (CI=true, refusing to skip)");
    }
    eprintln!("\n*** SKIPPED: needs root (conntrack kernel test) ***\n");
    false
}

/// A private network namespace, deleted on drop.
struct Netns {
    name: String,
    /// Next client source port, so every inserted flow has its own original tuple.
    next_sport: std::cell::Cell<u16>,
}

impl Netns {
    fn new() -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "sy-ct-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        Netns {
            name,
            next_sport: std::cell::Cell::new(40000),
        }
    }

    /// Runs `conntrack ARGS` inside the namespace; returns stdout.
    fn conntrack(&self, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", &self.name, "conntrack"];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Inserts a flow: `client:sport -> dst:dport`, answered by `reply_src:rport`.
    fn insert(&self, proto: &str, client: &str, dst: &str, dport: u16, reply_src: &str) {
        let dport = dport.to_string();
        let sport = self.next_sport.get();
        self.next_sport.set(sport + 1);
        let sport = sport.to_string();
        let mut args = vec![
            "-I",
            "-p",
            proto,
            "-s",
            client,
            "-d",
            dst,
            "--sport",
            &sport,
            "--dport",
            &dport,
            "--reply-src",
            reply_src,
            "--reply-dst",
            client,
            "--reply-port-src",
            "5353",
            "--reply-port-dst",
            &sport,
            "--timeout",
            "120",
        ];
        if proto == "tcp" {
            args.extend(["--state", "ESTABLISHED"]);
        }
        self.conntrack(&args);
    }

    /// `(proto, orig dst, orig dport, reply src)` of every flow, sorted.
    fn listing(&self, family: &str) -> Vec<String> {
        let out = self.conntrack(&["-L", "-f", family]);
        let mut flows: Vec<String> = out
            .lines()
            .map(|line| {
                let words: Vec<&str> = line.split_whitespace().collect();
                let field = |key: &str, nth: usize| {
                    words
                        .iter()
                        .filter_map(|w| w.strip_prefix(key))
                        .nth(nth)
                        .unwrap_or("?")
                        .to_string()
                };
                format!(
                    "{} {}:{} <- {}",
                    words[0],
                    field("dst=", 0),
                    field("dport=", 0),
                    field("src=", 1)
                )
            })
            .collect();
        flows.sort();
        flows
    }

    /// Runs `f` on a thread inside the namespace.
    fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).expect("open netns");
            setns(ns, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread panicked")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn udp(dst: Option<&str>, port: u16, reply: Option<&str>) -> ConntrackFilter {
    ConntrackFilter {
        protocol: Protocol::Udp,
        orig_dst: dst.map(ip),
        orig_dst_port: Some(port),
        reply_src: reply.map(ip),
    }
}

/// Addresses of one family: client, VIP, other VIP, new VIP, node IP, endpoints.
struct Plan {
    family: &'static str,
    client: &'static str,
    vip: &'static str,
    other_vip: &'static str,
    new_vip: &'static str,
    node: &'static str,
    dead: &'static str,
    alive: &'static str,
}

const V4: Plan = Plan {
    family: "ipv4",
    client: "10.0.0.2",
    vip: "172.30.0.10",
    other_vip: "172.30.0.11",
    new_vip: "172.30.0.20",
    node: "192.168.0.2",
    dead: "10.180.0.1",
    alive: "10.180.0.2",
};

const V6: Plan = Plan {
    family: "ipv6",
    client: "fd00:10::2",
    vip: "fd00:30::10",
    other_vip: "fd00:30::11",
    new_vip: "fd00:30::20",
    node: "2001:db8::1",
    dead: "fd00:180::1",
    alive: "fd00:180::2",
};

fn deletes_exactly_the_matching_flows(p: &Plan) {
    let ns = Netns::new();
    ns.insert("udp", p.client, p.vip, 53, p.dead); // rule 1: gone
    ns.insert("udp", p.client, p.vip, 53, p.alive); // other endpoint: stays
    ns.insert("udp", p.client, p.other_vip, 53, p.dead); // other service: stays
    ns.insert("udp", p.client, p.node, 30053, p.dead); // NodePort, dead: gone
    ns.insert("udp", p.client, p.node, 30054, p.dead); // other NodePort: stays
    ns.insert("tcp", p.client, p.vip, 53, p.dead); // TCP: stays
    ns.insert("udp", p.client, p.new_vip, 53, p.new_vip); // rule 2 (unreplied): gone
    ns.insert("udp", p.client, p.new_vip, 54, p.new_vip); // other port: stays
                                                          // A flow of the other family never matches.
    let other = if p.family == "ipv4" { &V6 } else { &V4 };
    ns.insert("udp", other.client, other.vip, 53, other.dead);

    let filters = vec![
        udp(Some(p.vip), 53, Some(p.dead)),
        udp(None, 30053, Some(p.dead)),
        udp(Some(p.new_vip), 53, None),
    ];
    let family = if p.family == "ipv4" {
        IpFamily::V4
    } else {
        IpFamily::V6
    };
    let (listed, deleted, again) = ns.enter(move || {
        let mut ct = Conntrack::open().expect("open");
        let listed = ct.flows(family).expect("flows");
        let deleted = ct.delete_matching(&filters).expect("delete");
        let again = ct.delete_matching(&filters).expect("delete again");
        (listed, deleted, again)
    });
    assert_eq!(listed.len(), 8, "{listed:#?}");
    assert!(listed.iter().all(|f| f.family() == family));
    let first = listed
        .iter()
        .find(|f| f.original.dst_port == 30053)
        .expect("NodePort flow listed");
    assert_eq!(first.original.dst, ip(p.node));
    assert_eq!(first.original.src_port, first.reply.dst_port);
    assert_eq!(first.reply.src, ip(p.dead));
    assert_eq!(first.reply.src_port, 5353);
    assert_eq!(first.protocol(), Some(Protocol::Udp));

    assert_eq!((deleted, again), (3, 0));
    let mut want = vec![
        format!("udp {}:53 <- {}", p.vip, p.alive),
        format!("udp {}:53 <- {}", p.other_vip, p.dead),
        format!("udp {}:30054 <- {}", p.node, p.dead),
        format!("tcp {}:53 <- {}", p.vip, p.dead),
        format!("udp {}:54 <- {}", p.new_vip, p.new_vip),
    ];
    want.sort();
    assert_eq!(ns.listing(p.family), want);
    assert_eq!(ns.listing(other.family).len(), 1);
}

#[test]
fn ipv4_deletes_exactly_the_matching_flows() {
    if need_root() {
        deletes_exactly_the_matching_flows(&V4);
    }
}

#[test]
fn ipv6_deletes_exactly_the_matching_flows() {
    if need_root() {
        deletes_exactly_the_matching_flows(&V6);
    }
}

#[test]
fn flows_already_gone_are_not_an_error() {
    if !need_root() {
        return;
    }
    let ns = Netns::new();
    ns.insert("udp", V4.client, V4.vip, 53, V4.dead);
    ns.insert("udp", V4.client, V4.vip, 53, V4.alive);
    let name = ns.name.clone();
    let deleted = ns.enter(move || {
        let mut ct = Conntrack::open().expect("open");
        let flows = ct.flows(IpFamily::V4).expect("flows");
        assert_eq!(flows.len(), 2);
        // Someone else deletes one between our dump and our delete.
        run(
            "ip",
            &["netns", "exec", &name, "conntrack", "-D", "-r", V4.dead],
        );
        ct.delete(&flows).expect("delete")
    });
    assert_eq!(deleted, 1);
    assert!(ns.listing("ipv4").is_empty());
}

/// Flows for the scale test: 600 by default (several dump datagrams, several delete
/// batches); set `SWITCHYARD_CT_FLOWS` to try a node-sized table.
fn scale_flows() -> u32 {
    std::env::var("SWITCHYARD_CT_FLOWS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(600)
}

#[test]
fn many_flows_span_several_datagrams_and_batches() {
    if !need_root() {
        return;
    }
    let n = scale_flows();
    assert!(
        n.is_multiple_of(2) && n <= 250 * 250,
        "SWITCHYARD_CT_FLOWS: even, at most 62500"
    );
    let ns = Netns::new();
    // Load them at once (`conntrack -R` reads one `-I ...` per line).
    let mut script = String::new();
    for i in 0..n {
        let reply = if i % 2 == 0 { V4.dead } else { V4.alive };
        let client = format!("10.{}.{}.{}", 1 + i / 62500, i / 250 % 250, i % 250 + 2);
        script.push_str(&format!(
            "-I -p udp -s {client} -d {} --sport 40000 --dport 53 --reply-src {reply} \
             --reply-dst {client} --reply-port-src 5353 --reply-port-dst 40000 --timeout 120\n",
            V4.vip,
        ));
    }
    let file = std::env::temp_dir().join(format!("{}.ct", ns.name));
    std::fs::write(&file, script).unwrap();
    ns.conntrack(&["-R", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);

    let (listed, deleted, took) = ns.enter(|| {
        let mut ct = Conntrack::open().expect("open");
        let listed = ct.flows(IpFamily::V4).expect("flows").len();
        let start = std::time::Instant::now();
        let deleted = ct
            .delete_matching(&[udp(Some(V4.vip), 53, Some(V4.dead))])
            .expect("delete");
        (listed, deleted, start.elapsed())
    });
    eprintln!("{n} flows: deleted {deleted} in {took:?}");
    assert_eq!((listed, deleted), (n as usize, n as usize / 2));
    let left = ns.listing("ipv4");
    assert_eq!(left.len(), n as usize / 2);
    assert!(left.iter().all(|l| l.ends_with(V4.alive)));
}

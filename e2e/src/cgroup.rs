//! Private cgroups (v2) for the sandbox's client processes, so that cgroup BPF programs
//! (the eBPF engine's socket LB) can be attached to a cgroup holding only test processes,
//! never to the host's root cgroup.
//!
//! A socket belongs to the cgroup of the task that created it, and a cgroup v2 process
//! moves with all its threads, so the clients run in a child process
//! (`cgroup-client`, see [`CgroupClient`]) that puts itself into the private cgroup before
//! it starts: the harness's own threads (echo servers, external clients) stay outside.
//!
//! Every cgroup made here is `sye-<pid>-<n>` under the cgroup2 mount; it is removed on drop
//! (its processes killed first), and leftovers of dead test processes are removed when the
//! next one is created.

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    agent::workspace_root,
    flow::FlowStats,
    probe::{Outcome, Proto, Source},
};

static NEXT_CGROUP: AtomicUsize = AtomicUsize::new(0);

/// A cgroup of our own under the cgroup v2 mount; removed on drop.
#[derive(Debug)]
pub struct PrivateCgroup {
    path: PathBuf,
}

impl PrivateCgroup {
    /// Creates `<cgroup2_root>/sye-<pid>-<n>`.
    pub fn create(cgroup2_root: &Path) -> Result<PrivateCgroup> {
        remove_stale(cgroup2_root);
        let name = format!(
            "sye-{}-{}",
            std::process::id(),
            NEXT_CGROUP.fetch_add(1, Ordering::SeqCst)
        );
        let path = cgroup2_root.join(name);
        std::fs::create_dir(&path)
            .with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(PrivateCgroup { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PrivateCgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.path);
    }
}

fn remove_cgroup(path: &Path) {
    for _ in 0..50 {
        let procs = std::fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
        let pids: Vec<i32> = procs
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() && std::fs::remove_dir(path).is_ok() {
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn remove_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let dead = name
            .strip_prefix("sye-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|pid| {
                pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
            });
        if dead {
            remove_cgroup(&e.path());
        }
    }
}

/// One request to the client process.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// One probe (see [`crate::probe::probe`]).
    Probe {
        netns: PathBuf,
        src: std::net::IpAddr,
        dst: SocketAddr,
        proto: Proto,
        timeout_ms: u64,
    },
    /// One datagram from an unconnected UDP socket (sendto / recvfrom).
    UdpUnconnected {
        netns: PathBuf,
        src: std::net::IpAddr,
        dst: SocketAddr,
        timeout_ms: u64,
    },
    /// TCP connections (connect, read the echo line, close) back to back for `millis`.
    ConnectLoop {
        netns: PathBuf,
        src: std::net::IpAddr,
        dst: SocketAddr,
        millis: u64,
    },
    /// One long-lived UDP flow (see [`crate::flow`]) for `millis`, a datagram every
    /// `interval_ms`.
    UdpFlow {
        netns: PathBuf,
        src: std::net::IpAddr,
        dst: SocketAddr,
        millis: u64,
        interval_ms: u64,
    },
}

/// The client's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Probe(Outcome),
    /// The outcome and the address recvfrom reported the answer from.
    Datagram(Outcome, Option<SocketAddr>),
    Loop(LoopStats),
    Flow(FlowStats),
    Error(String),
}

/// What a connection loop saw. A connection that is not answered within
/// [`LOOP_CONNECT_TIMEOUT`] is failed (lost); one answered after more than
/// [`LOOP_SLOW`] is slow: it needed a SYN retransmission (TCP's first retransmission
/// timeout is 1 s).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LoopStats {
    pub ok: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    /// Answered, but after more than [`LOOP_SLOW`].
    pub slow: u64,
    /// The longest time an answered connection took, in milliseconds.
    pub slowest_ms: f64,
    pub seconds: f64,
}

/// How long a connection loop waits for one connection's answer before it counts the
/// connection as failed: long enough for two SYN retransmissions (1 s, then 2 s).
pub const LOOP_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// An answered connection slower than this needed a SYN retransmission.
pub const LOOP_SLOW: std::time::Duration = std::time::Duration::from_millis(900);

impl LoopStats {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.seconds.max(1e-9)
    }
}

/// The `cgroup-client` binary: `$SWITCHYARD_CGROUP_CLIENT`, else next to the other
/// workspace binaries in `<workspace>/target/debug`.
pub fn client_binary() -> Result<PathBuf> {
    let path = std::env::var_os("SWITCHYARD_CGROUP_CLIENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/debug/cgroup-client"));
    if !path.is_file() {
        bail!(
            "cgroup-client binary not found at {}: run `cargo build -p switchyard-e2e --bins` \
             first (make test does)",
            path.display()
        );
    }
    Ok(path)
}

/// A `cgroup-client` process living in a private cgroup, running probes on request. It
/// moves itself into the cgroup before it starts (a shell writes its pid to
/// `cgroup.procs`, then execs the client), so every socket it creates belongs there.
pub struct CgroupClient {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl CgroupClient {
    pub fn spawn(cgroup: &PrivateCgroup) -> Result<CgroupClient> {
        let bin = client_binary()?;
        let mut child = Command::new("sh")
            .args(["-c", "echo $$ > \"$1/cgroup.procs\" && exec \"$2\"", "sh"])
            .arg(cgroup.path())
            .arg(&bin)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        let stdout = BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?);
        Ok(CgroupClient {
            child,
            stdin,
            stdout,
        })
    }

    fn ask(&mut self, req: &Request) -> Result<Response> {
        let mut line = serde_json::to_string(req)?;
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .context("writing to cgroup-client")?;
        let mut answer = String::new();
        self.stdout
            .read_line(&mut answer)
            .context("reading from cgroup-client")?;
        if answer.is_empty() {
            bail!("cgroup-client exited");
        }
        match serde_json::from_str(&answer)? {
            Response::Error(e) => bail!("cgroup-client: {e}"),
            r => Ok(r),
        }
    }

    /// One probe from `src`, made by a socket of the cgroup.
    pub fn probe(
        &mut self,
        src: &Source,
        dst: SocketAddr,
        proto: Proto,
        timeout: Duration,
    ) -> Result<Outcome> {
        match self.ask(&Request::Probe {
            netns: src.netns.clone(),
            src: src.ip,
            dst,
            proto,
            timeout_ms: timeout.as_millis() as u64,
        })? {
            Response::Probe(o) => Ok(o),
            other => bail!("unexpected answer {other:?}"),
        }
    }

    /// One unconnected UDP datagram from `src`: the outcome and where the answer came from.
    pub fn udp_unconnected(
        &mut self,
        src: &Source,
        dst: SocketAddr,
        timeout: Duration,
    ) -> Result<(Outcome, Option<SocketAddr>)> {
        match self.ask(&Request::UdpUnconnected {
            netns: src.netns.clone(),
            src: src.ip,
            dst,
            timeout_ms: timeout.as_millis() as u64,
        })? {
            Response::Datagram(o, from) => Ok((o, from)),
            other => bail!("unexpected answer {other:?}"),
        }
    }

    /// Back-to-back TCP connections from `src` to `dst` for `duration`.
    pub fn connect_loop(
        &mut self,
        src: &Source,
        dst: SocketAddr,
        duration: Duration,
    ) -> Result<LoopStats> {
        match self.ask(&Request::ConnectLoop {
            netns: src.netns.clone(),
            src: src.ip,
            dst,
            millis: duration.as_millis() as u64,
        })? {
            Response::Loop(s) => Ok(s),
            other => bail!("unexpected answer {other:?}"),
        }
    }

    /// One long-lived UDP flow from `src` to `dst` for `duration`.
    pub fn udp_flow(
        &mut self,
        src: &Source,
        dst: SocketAddr,
        duration: Duration,
        interval: Duration,
    ) -> Result<FlowStats> {
        match self.ask(&Request::UdpFlow {
            netns: src.netns.clone(),
            src: src.ip,
            dst,
            millis: duration.as_millis() as u64,
            interval_ms: interval.as_millis() as u64,
        })? {
            Response::Flow(s) => Ok(s),
            other => bail!("unexpected answer {other:?}"),
        }
    }
}

impl Drop for CgroupClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The cgroup v2 mount point of this machine (`findmnt`): on a hybrid hierarchy it is
/// `/sys/fs/cgroup/unified`, not `/sys/fs/cgroup`.
pub fn cgroup2_root() -> Result<PathBuf> {
    let out = Command::new("findmnt")
        .args(["-n", "-t", "cgroup2", "-o", "TARGET"])
        .output()
        .context("running findmnt")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()
        .map(|l| PathBuf::from(l.trim()))
        .context("no cgroup2 mount (findmnt -t cgroup2 found none)")
}

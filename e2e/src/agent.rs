//! The Switchyard agent under test: locating its binary, running
//! `switchyard run --manifests DIR --node-name NAME` inside the node namespace with stderr
//! captured to a log file, polling `/healthz`, and stopping it (SIGTERM, then SIGKILL) on
//! drop.

use std::{
    fs::File,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use crate::netns;

/// Where `/healthz` is served by default (ProxyConfig `healthzBindAddress` 0.0.0.0:10256).
pub const DEFAULT_HEALTHZ: &str = "127.0.0.1:10256";
/// Where `/metrics` is served by default (ProxyConfig `metricsBindAddress`).
pub const DEFAULT_METRICS: &str = "127.0.0.1:10249";

/// The workspace root (parent of this crate's manifest dir).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e crate sits inside the workspace")
        .to_path_buf()
}

/// The agent binary: `$SWITCHYARD_BIN` (a relative path is tried against the current
/// directory, then the workspace root), else `<workspace>/target/debug/switchyard`.
pub fn agent_binary() -> Result<PathBuf> {
    let path = match std::env::var_os("SWITCHYARD_BIN") {
        Some(p) => {
            let p = PathBuf::from(p);
            if p.is_relative() && !p.is_file() {
                workspace_root().join(p)
            } else {
                p
            }
        }
        None => workspace_root().join("target/debug/switchyard"),
    };
    if !path.is_file() {
        bail!(
            "switchyard binary not found at {}: run `cargo build` (or `cargo build --release` \
             and set SWITCHYARD_BIN=target/release/switchyard) first",
            path.display()
        );
    }
    Ok(path)
}

/// Which mounts the agent sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mounts {
    /// `ip netns exec`: a private mount namespace with the network namespace's own
    /// `/sys` (which hides every mount below `/sys`, cgroup v2 and bpffs among them).
    Netns,
    /// `nsenter --net`: only the network namespace changes; the host's mounts stay
    /// visible (what the eBPF engine needs: the cgroup v2 mount, and a bpffs it mounts
    /// that outlives the process, as on a real node).
    Host,
}

/// How the agent process is started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub mounts: Mounts,
    /// A command the binary runs under (`setpriv ... --` to run it with fewer
    /// capabilities, as the chart does).
    pub wrapper: Vec<String>,
}

/// A command prefix that runs what follows in the named network namespace, with
/// `mounts`: `ip netns exec NS` or `nsenter --net=PATH --`.
pub fn command_in(netns_name: &str, mounts: Mounts) -> Command {
    match mounts {
        Mounts::Netns => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", netns_name]);
            c
        }
        Mounts::Host => {
            let mut c = Command::new("nsenter");
            c.arg(format!(
                "--net={}",
                crate::netns::ns_path(netns_name).display()
            ))
            .arg("--");
            c
        }
    }
}

impl Default for Launch {
    fn default() -> Self {
        Launch {
            mounts: Mounts::Netns,
            wrapper: Vec::new(),
        }
    }
}

/// A running agent process; stopped on drop.
pub struct Agent {
    child: Child,
    log_path: PathBuf,
}

impl Agent {
    /// Starts `$SWITCHYARD_BIN run --manifests <dir> --node-name <node> <extra..>` inside the
    /// named namespace, stderr and stdout going to `log_path`.
    pub fn start(
        netns_name: &str,
        manifests: &Path,
        node_name: &str,
        extra_args: &[&str],
        log_path: &Path,
    ) -> Result<Agent> {
        Agent::start_with_env(
            netns_name,
            &Launch::default(),
            manifests,
            node_name,
            extra_args,
            &[],
            log_path,
        )
    }

    /// Like [`Agent::start`], with extra environment variables (such as a `PATH` that puts
    /// a test's wrapper of a dataplane tool first).
    #[allow(clippy::too_many_arguments)]
    pub fn start_with_env(
        netns_name: &str,
        launch: &Launch,
        manifests: &Path,
        node_name: &str,
        extra_args: &[&str],
        env: &[(String, String)],
        log_path: &Path,
    ) -> Result<Agent> {
        let bin = agent_binary()?;
        let log = File::create(log_path)
            .with_context(|| format!("creating agent log {}", log_path.display()))?;
        let child = command_in(netns_name, launch.mounts)
            .args(&launch.wrapper)
            .arg(&bin)
            .arg("run")
            .arg("--manifests")
            .arg(manifests)
            .arg("--node-name")
            .arg(node_name)
            .args(extra_args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Agent {
            child,
            log_path: log_path.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still alive (not exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything the agent wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The mode the agent reports in its log (`mode=nftables`), if any line says so.
    pub fn logged_mode(&self) -> Option<String> {
        logged_mode(&self.log())
    }

    /// Polls `http://<addr>/healthz` from inside the namespace at `netns_path` until it
    /// answers 200, the agent exits, or `timeout` passes.
    pub fn wait_healthy(
        &mut self,
        netns_path: &Path,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "agent exited ({status}) before becoming healthy; its log:\n{}",
                    self.log()
                );
            }
            let last = match http_get(netns_path, addr, "/healthz") {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => format!("HTTP {code}: {}", body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "agent not healthy at http://{addr}/healthz after {timeout:?} (last: {last}); \
                     its log:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash or an OOM kill would end the process: nothing runs on exit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, wait up to 3 s, then SIGKILL.
    pub fn stop(&mut self) {
        if !self.is_running() {
            return;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Finds `mode=<word>` in an agent log (last occurrence wins).
pub fn logged_mode(log: &str) -> Option<String> {
    let log = strip_ansi(log);
    log.lines().rev().find_map(|line| {
        let at = line.find("mode=")?;
        let rest = line[at + 5..].trim_start_matches('"');
        let word: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        (!word.is_empty()).then_some(word)
    })
}

/// The engine `/metrics` reports as active: `switchyard_engine_active{mode="nftables"} 1`.
pub fn engine_mode_from_metrics(metrics: &str) -> Option<String> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix("switchyard_engine_active{")?;
        let (labels, value) = rest.split_once('}')?;
        if value.trim().parse::<f64>().ok()? != 1.0 {
            return None;
        }
        let at = labels.find("mode=\"")?;
        let mode = labels[at + 6..].split('"').next()?;
        Some(mode.to_string())
    })
}

/// Removes ANSI colour sequences (`ESC [ ... letter`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A minimal HTTP/1.0 GET from inside a namespace: (status code, body).
pub fn http_get(netns_path: &Path, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let path = path.to_string();
    netns::run_in(netns_path, move || -> Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("bad HTTP answer {text:?}"))?;
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        Ok((status, body))
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_logged_mode() {
        let log = "INFO starting\nINFO engine ready mode=nftables node=test-node\n";
        assert_eq!(logged_mode(log).as_deref(), Some("nftables"));
        assert_eq!(
            logged_mode("x mode=\"iptables\" y").as_deref(),
            Some("iptables")
        );
        assert_eq!(logged_mode("nothing"), None);
        let coloured = "\x1b[3mmode\x1b[0m\x1b[2m=\x1b[0mnftables \x1b[3mnode\x1b[0m";
        assert_eq!(logged_mode(coloured).as_deref(), Some("nftables"));
        let metrics = "# HELP x\nswitchyard_engine_active{mode=\"iptables\"} 0\nswitchyard_engine_active{mode=\"nftables\"} 1\n";
        assert_eq!(
            engine_mode_from_metrics(metrics).as_deref(),
            Some("nftables")
        );
    }
}

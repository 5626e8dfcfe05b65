//! Named network namespaces (`/run/netns/<name>`): creating and deleting them with
//! `ip netns`, running `ip -n` commands and sysctls inside them, and running Rust code on a
//! thread that has joined one (sockets created there stay in that namespace for life).
//!
//! Only namespaces this module created are ever deleted; the host's own namespace is
//! never configured.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::Command,
    thread::{self, JoinHandle},
};

use anyhow::{anyhow, bail, Context, Result};
use nix::sched::{setns, CloneFlags};

/// A named network namespace owned by the test; deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `/run/netns/<name>` and brings its loopback up.
    pub fn create(name: &str) -> Result<NetNs> {
        if name.len() > 200 || name.contains('/') {
            bail!("bad namespace name {name:?}");
        }
        run_cmd(Command::new("ip").args(["netns", "add", name]))?;
        let ns = NetNs {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, usable with `setns`.
    pub fn path(&self) -> PathBuf {
        ns_path(&self.name)
    }

    /// Runs `ip -n <name> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run_cmd(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Writes a sysctl (`net.ipv4.ip_forward`) inside this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let file = Path::new("/proc/sys").join(key.replace('.', "/"));
        let value = value.to_string();
        self.run(move || {
            std::fs::write(&file, value).with_context(|| format!("writing {}", file.display()))
        })?
        .with_context(|| format!("sysctl {key} in netns {}", self.name))
    }

    /// Runs `f` on a fresh thread that joined this namespace, and waits for it.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        run_in(&self.path(), f)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// `/run/netns/<name>`.
pub fn ns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Moves the calling thread into the network namespace at `path`. Only call this on a
/// thread dedicated to that namespace.
pub fn enter(path: &Path) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    setns(&file, CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("setns into {}", path.display()))?;
    Ok(())
}

/// Spawns a thread that joins the namespace at `path` and then runs `f`.
pub fn spawn_in<T, F>(path: &Path, f: F) -> Result<JoinHandle<Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let path = path.to_path_buf();
    let label = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    thread::Builder::new()
        .name(format!("netns:{label}"))
        .spawn(move || {
            enter(&path)?;
            Ok(f())
        })
        .context("spawning a namespace thread")
}

/// Runs `f` on a thread inside the namespace at `path` and returns its result.
pub fn run_in<T, F>(path: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    spawn_in(path, f)?
        .join()
        .map_err(|_| anyhow!("namespace thread panicked"))?
}

/// Runs a command, returning its stdout, or an error carrying the command line and stderr.
pub fn run_cmd(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `tool ARGS` inside the named namespace with `input` on stdin; returns whether it
/// succeeded and its stdout followed by its stderr (for kernel tests that expect either).
pub fn exec(netns: &str, tool: &str, args: &[&str], input: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, tool])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {tool} in {netns}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = input.to_string();
    let writer = thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {tool}: {e}"));
    writer.join().expect("stdin writer");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

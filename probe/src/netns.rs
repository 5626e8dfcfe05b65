//! The network namespace the programming checks (a test ruleset, a test ipset) run in:
//! either one the caller names, or a throwaway `sy-probe-<pid>-<n>` created with
//! `ip netns add` and deleted when the guard drops. The host's network state is never
//! touched by a check that creates something.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::{
    command::{self, Output},
    error::{CommandError, NetnsError},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace to run tools in; deletes it on drop when it created it.
#[derive(Debug)]
pub struct Netns {
    name: String,
    ip: PathBuf,
    owned: bool,
    timeout: Duration,
}

impl Netns {
    /// Creates a fresh, empty namespace, deleted when the returned guard drops.
    ///
    /// A namespace of that name already there is stale: a previous process with the
    /// same pid was killed (`kill -9`, an OOM kill) before its guard dropped. In a
    /// container the agent always has the same pid, so without this every restart after
    /// such a kill found no namespace to test in, judged every mode unusable and left
    /// the node degraded (found by the fault-injection suite, `e2e/tests/chaos_kill.rs`).
    /// It is deleted and made again.
    pub fn throwaway(timeout: Duration) -> Result<Netns, NetnsError> {
        let ip = command::find("ip").ok_or(NetnsError::NoIpCommand)?;
        let name = format!(
            "sy-probe-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let add = || command::run(&ip, &["netns", "add", &name], None, timeout);
        let created = match add() {
            Err(_) if Path::new("/run/netns").join(&name).exists() => {
                let _ = command::run(&ip, &["netns", "delete", &name], None, timeout);
                add()
            }
            other => other,
        };
        created.map_err(|source| NetnsError::Create {
            name: name.clone(),
            source,
        })?;
        Ok(Netns {
            name,
            ip,
            owned: true,
            timeout,
        })
    }

    /// An existing named namespace (`ip netns list`), left in place afterwards.
    pub fn existing(name: &str, timeout: Duration) -> Result<Netns, NetnsError> {
        let ip = command::find("ip").ok_or(NetnsError::NoIpCommand)?;
        Ok(Netns {
            name: name.to_string(),
            ip,
            owned: false,
            timeout,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this guard created the namespace (and will delete it).
    pub fn is_throwaway(&self) -> bool {
        self.owned
    }

    /// Runs `program args…` inside the namespace (`ip netns exec`).
    pub fn run(
        &self,
        program: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<Output, CommandError> {
        let program = program.to_string_lossy();
        let mut full = vec!["netns", "exec", self.name.as_str(), program.as_ref()];
        full.extend_from_slice(args);
        command::run(&self.ip, &full, stdin, self.timeout)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned {
            let _ = command::run(
                &self.ip,
                &["netns", "delete", &self.name],
                None,
                self.timeout,
            );
        }
    }
}

//! The contract between core and every dataplane engine. An engine owns kernel state and
//! nothing else: it never reads the Kubernetes API and never derives service semantics.

use std::{process::Stdio, time::Duration};

use async_trait::async_trait;
use switchyard_crd::Mode;
use tokio::{io::AsyncWriteExt, process::Command};

use crate::{changes::ChangeSet, model::NodeModel};

/// What one successful sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Whether the whole ruleset was rewritten.
    pub full: bool,
    /// Service ports written (added or changed) and removed.
    pub service_ports_written: usize,
    pub service_ports_removed: usize,
    /// Rules (or equivalent kernel objects) now programmed, when the engine knows.
    pub rules: usize,
    /// Time spent applying to the kernel.
    pub apply_time: Duration,
}

/// Whether the kernel still holds what the engine applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drift {
    None,
    /// Something differs; the text says what.
    Found(String),
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The kernel or its tool refused what was sent.
    #[error("{tool} failed: {message}")]
    Apply { tool: String, message: String },
    /// A tool could not be run at all.
    #[error("cannot run {tool}: {source}")]
    Spawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    /// This engine cannot run on this node.
    #[error("{mode} engine unavailable: {reason}")]
    Unavailable { mode: Mode, reason: String },
}

#[async_trait]
pub trait ProxyEngine: Send {
    fn mode(&self) -> Mode;

    /// Names the kernel state this engine programs (`nftables`, `iptables-nft`,
    /// `iptables-legacy`...): two engines with different owners never delete each
    /// other's objects, and the runner removes at start what other owners left.
    fn owner(&self) -> String {
        self.mode().to_string()
    }

    /// Brings the kernel to `model`. `changes` says what differs from the model last
    /// applied successfully; `changes.full` asks for a rewrite of everything. On error
    /// the previously applied rules must still be in place.
    async fn sync(
        &mut self,
        model: &NodeModel,
        changes: &ChangeSet,
    ) -> Result<SyncReport, EngineError>;

    /// Checks that the kernel still holds what was last applied.
    async fn verify(&mut self, model: &NodeModel) -> Result<Drift, EngineError>;

    /// Removes everything this engine ever created on this node.
    async fn cleanup(&mut self) -> Result<(), EngineError>;

    /// Rules programmed per kernel table, for engines that count them (iptables:
    /// `kubeproxy_sync_proxy_rules_iptables_total{table}`).
    fn rule_counts(&self) -> Vec<(String, usize)> {
        Vec::new()
    }
}

/// Longest tool message kept in an error (`nft` echoes the offending input line, which
/// can be a huge element list).
const MESSAGE_MAX: usize = 4096;

fn bounded(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let text = text.trim();
    if text.len() <= MESSAGE_MAX {
        return text.to_string();
    }
    let mut end = MESSAGE_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

/// Runs an engine's tool (`nft`, `iptables-restore`, ...) with `args`, `input` on stdin,
/// optionally inside the named network namespace (`ip netns exec NAME TOOL`, for tests and
/// benchmarks); returns its stdout. A non-zero exit is an [`EngineError::Apply`] carrying
/// the tool's (bounded) stderr. Core does not know what the tools do.
pub async fn run_tool(
    netns: Option<&str>,
    tool: &str,
    args: &[&str],
    input: &str,
) -> Result<String, EngineError> {
    let stdout = spawn_tool(netns, tool, args, &[input], Stdout::Keep).await?;
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// Applies a transaction with an engine's tool: like [`run_tool`], but stdin is given
/// as consecutive pieces (a full sync at 50k services is ≈ 32 MB: no need to
/// concatenate it first) and stdout is discarded, not collected (iptables-nft-restore
/// may print a whole-table listing the engine asked for only for its side effect).
pub async fn apply_with_tool(
    netns: Option<&str>,
    tool: &str,
    args: &[&str],
    input: &[&str],
) -> Result<(), EngineError> {
    spawn_tool(netns, tool, args, input, Stdout::Discard)
        .await
        .map(drop)
}

/// What becomes of a tool's stdout.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stdout {
    Keep,
    Discard,
}

async fn spawn_tool(
    netns: Option<&str>,
    tool: &str,
    args: &[&str],
    input: &[&str],
    stdout: Stdout,
) -> Result<Vec<u8>, EngineError> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, tool]);
            c
        }
        None => Command::new(tool),
    };
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(match stdout {
            Stdout::Keep => Stdio::piped(),
            Stdout::Discard => Stdio::null(),
        })
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let spawn_error = |source| EngineError::Spawn {
        tool: tool.to_string(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_error)?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let write = async move {
        for piece in input {
            stdin.write_all(piece.as_bytes()).await?;
        }
        drop(stdin);
        Ok::<(), std::io::Error>(())
    };
    let (written, output) = tokio::join!(write, child.wait_with_output());
    let output = output.map_err(spawn_error)?;
    if !output.status.success() {
        return Err(EngineError::Apply {
            tool: tool.to_string(),
            message: format!("{}: {}", output.status, bounded(&output.stderr)),
        });
    }
    // A write error with a successful exit means the tool did not read everything.
    if let Err(e) = written {
        return Err(EngineError::Apply {
            tool: tool.to_string(),
            message: format!("writing the transaction: {e}"),
        });
    }
    Ok(output.stdout)
}

/// Whether this kernel has IPv6 at all. A kernel booted with `ipv6.disable=1` has no
/// `/proc/sys/net/ipv6` (in any network namespace), and no IPv6 netfilter hooks: engines
/// then program IPv4 only, as kube-proxy runs single-stack there.
pub fn kernel_has_ipv6() -> bool {
    std::path::Path::new("/proc/sys/net/ipv6").exists()
}

//! Running an engine's command-line tool (`nft`, `iptables-restore`, ...) with a
//! transaction on stdin, optionally inside a network namespace (`ip netns exec NAME
//! TOOL`, for tests and benchmarks). A failure keeps the exit status and what the tool
//! said ([`EngineError::Tool`]).

use std::process::Stdio;

use tokio::{io::AsyncWriteExt, process::Command};

use crate::engine::EngineError;

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

/// Runs `tool` with `args` and `input` on stdin; returns its stdout.
pub async fn run_tool(
    netns: Option<&str>,
    tool: &str,
    args: &[&str],
    input: &str,
) -> Result<String, EngineError> {
    let stdout = spawn_tool(netns, tool, args, &[input], Stdout::Keep).await?;
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// Applies a transaction: like [`run_tool`], but stdin is given as consecutive pieces
/// (a full sync at 50k services is ≈ 32 MB: no need to concatenate it first) and stdout
/// is discarded (iptables-nft-restore may print a whole-table listing the engine asked
/// for only for its side effect).
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

fn command(netns: Option<&str>, tool: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, tool]);
            c
        }
        None => Command::new(tool),
    }
}

async fn spawn_tool(
    netns: Option<&str>,
    tool: &str,
    args: &[&str],
    input: &[&str],
    stdout: Stdout,
) -> Result<Vec<u8>, EngineError> {
    let mut cmd = command(netns, tool);
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
        return Err(EngineError::Tool {
            tool: tool.to_string(),
            exit: output.status.code(),
            stderr: bounded(&output.stderr),
        });
    }
    // A write error with a successful exit means the tool did not read everything.
    if let Err(e) = written {
        return Err(EngineError::Tool {
            tool: tool.to_string(),
            exit: Some(0),
            stderr: format!("exited without reading the whole transaction: {e}"),
        });
    }
    Ok(output.stdout)
}

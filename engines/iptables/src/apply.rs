//! Running the iptables tools: `*-restore --noflush --wait` with a transaction on stdin,
//! and `*-save` listings. Optionally inside a network namespace
//! (`ip netns exec NAME TOOL ...`), for tests and benchmarks.

use std::process::Stdio;

use switchyard_core::EngineError;
use tokio::{io::AsyncWriteExt, process::Command};

/// Longest tool message kept in an error.
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

/// Runs `tool ARGS` with `input` on stdin; returns stdout.
pub async fn run(
    netns: Option<&str>,
    tool: &str,
    args: &[&str],
    input: &str,
) -> Result<String, EngineError> {
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
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| EngineError::Spawn {
        tool: tool.to_string(),
        source,
    })?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let write = async move {
        let r = stdin.write_all(input.as_bytes()).await;
        drop(stdin);
        r
    };
    let (written, output) = tokio::join!(write, child.wait_with_output());
    let output = output.map_err(|source| EngineError::Spawn {
        tool: tool.to_string(),
        source,
    })?;
    if !output.status.success() {
        return Err(EngineError::Apply {
            tool: tool.to_string(),
            message: format!("{}: {}", output.status, bounded(&output.stderr)),
        });
    }
    if let Err(e) = written {
        return Err(EngineError::Apply {
            tool: tool.to_string(),
            message: format!("writing the transaction: {e}"),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Applies restore input without flushing anything it does not name.
pub async fn restore(netns: Option<&str>, tool: &str, text: &str) -> Result<(), EngineError> {
    // Bounded wait for the host-wide xtables lock, as kube-proxy (`-w 5`):
    // a held lock fails the sync, which is retried, instead of hanging the agent.
    run(netns, tool, &["--noflush", "--wait=5"], text)
        .await
        .map(drop)
}

/// The `nat` and `filter` tables as `*-save` prints them.
pub async fn save(netns: Option<&str>, tool: &str) -> Result<String, EngineError> {
    let mut out = save_table(netns, tool, "filter").await?;
    out.push_str(&save_table(netns, tool, "nat").await?);
    Ok(out)
}

/// One table as `*-save` prints it.
pub async fn save_table(
    netns: Option<&str>,
    tool: &str,
    table: &str,
) -> Result<String, EngineError> {
    run(netns, tool, &["-t", table], "").await
}

/// One chain's rules (`iptables -w -t TABLE -S CHAIN`, as `-A CHAIN ...` lines);
/// `None` when the chain does not exist. Much cheaper than a whole-table save with
/// iptables-nft, which fetches only this chain.
pub async fn list_chain(
    netns: Option<&str>,
    tool: &str,
    table: &str,
    chain: &str,
) -> Result<Option<String>, EngineError> {
    match run(netns, tool, &["-w", "5", "-t", table, "-S", chain], "").await {
        Ok(out) => Ok(Some(out)),
        Err(EngineError::Apply { message, .. })
            if message.contains("No chain/target/match by that name")
                || message.contains("does not exist")
                // iptables-nft's answer for a chain it does not find.
                || message.contains("is incompatible") =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

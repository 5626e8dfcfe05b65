//! Running `nft`: a transaction on stdin (`nft -f -`), or a listing. Optionally inside a
//! network namespace (`ip netns exec NAME nft ...`), for tests and benchmarks.

use std::process::Stdio;

use switchyard_core::EngineError;
use tokio::{io::AsyncWriteExt, process::Command};

use crate::NftOptions;

/// Longest tool message kept in an error (nft echoes the offending input line, which
/// can be a huge element list).
const MESSAGE_MAX: usize = 4096;

fn command(options: &NftOptions, args: &[&str]) -> (Command, String) {
    let mut cmd = match &options.netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns.as_str(), options.nft_path.as_str()]);
            c
        }
        None => Command::new(&options.nft_path),
    };
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    (cmd, options.nft_path.clone())
}

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

/// Runs `nft ARGS`, feeding `input` on stdin; returns stdout.
pub async fn run(options: &NftOptions, args: &[&str], input: &str) -> Result<String, EngineError> {
    let (mut cmd, tool) = command(options, args);
    let mut child = cmd.spawn().map_err(|source| EngineError::Spawn {
        tool: tool.clone(),
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
        tool: tool.clone(),
        source,
    })?;
    if !output.status.success() {
        return Err(EngineError::Apply {
            tool,
            message: format!("{}: {}", output.status, bounded(&output.stderr)),
        });
    }
    // A write error with a successful exit means nft did not read everything.
    if let Err(e) = written {
        return Err(EngineError::Apply {
            tool,
            message: format!("writing the transaction: {e}"),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Applies a transaction atomically.
pub async fn transaction(options: &NftOptions, text: &str) -> Result<(), EngineError> {
    run(options, &["-f", "-"], text).await.map(drop)
}

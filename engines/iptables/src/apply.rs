//! Running the iptables tools: `*-restore --noflush --wait` with a transaction on stdin,
//! `*-save` listings and single-chain listings. Optionally inside a network namespace
//! (`ip netns exec NAME TOOL ...`), for tests and benchmarks.

use switchyard_model::{
    tool::{apply_with_tool, run_tool},
    EngineError,
};

/// Applies restore input without flushing anything it does not name.
pub async fn restore(netns: Option<&str>, tool: &str, text: &str) -> Result<(), EngineError> {
    // Bounded wait for the host-wide xtables lock, as kube-proxy (`-w 5`):
    // a held lock fails the sync, which is retried, instead of hanging the agent.
    // stdout is discarded: a full sync's input lists the nat table (see
    // `render::LIST_ALL`) only for the tool's own caching.
    apply_with_tool(netns, tool, &["--noflush", "--wait=5"], &[text]).await
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
    run_tool(netns, tool, &["-t", table], "").await
}

/// The exit status of `iptables -S CHAIN` for a chain that does not exist — measured:
/// 1 with iptables-nft and iptables-legacy 1.8.9 alike (iptables-nft also answers 1 for
/// a chain of a table it cannot represent), where bad usage exits 2 and a held xtables
/// lock 4.
const NO_SUCH_CHAIN: i32 = 1;

/// One chain's rules (`iptables -w -t TABLE -S CHAIN`, as `-A CHAIN ...` lines);
/// `None` when the chain does not exist. Much cheaper than a whole-table save with
/// iptables-nft, which fetches only this chain.
pub async fn list_chain(
    netns: Option<&str>,
    tool: &str,
    table: &str,
    chain: &str,
) -> Result<Option<String>, EngineError> {
    match run_tool(netns, tool, &["-w", "5", "-t", table, "-S", chain], "").await {
        Ok(out) => Ok(Some(out)),
        Err(EngineError::Tool {
            exit: Some(NO_SUCH_CHAIN),
            ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A sysctl of the namespace the tools run in (`/proc/sys/...` read there), trimmed;
/// `None` when it does not exist (its module is not loaded).
pub async fn sysctl(netns: Option<&str>, path: &str) -> Result<Option<String>, EngineError> {
    let full = format!("/proc/sys/{path}");
    match netns {
        None => match tokio::fs::read_to_string(&full).await {
            Ok(v) => Ok(Some(v.trim().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(EngineError::Kernel {
                operation: format!("reading {full}"),
                source,
            }),
        },
        // `cat` exits 1 for a missing file.
        Some(_) => match run_tool(netns, "cat", &[&full], "").await {
            Ok(v) => Ok(Some(v.trim().to_string())),
            Err(EngineError::Tool { exit: Some(1), .. }) => Ok(None),
            Err(e) => Err(e),
        },
    }
}

/// `TOOL --version`: whether the tool runs at all ([`EngineError::Spawn`] when it is
/// not installed).
pub async fn version(netns: Option<&str>, tool: &str) -> Result<String, EngineError> {
    run_tool(netns, tool, &["--version"], "").await
}

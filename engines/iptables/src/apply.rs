//! Running the iptables tools: `*-restore --noflush --wait` with a transaction on stdin,
//! and `*-save` listings. Optionally inside a network namespace
//! (`ip netns exec NAME TOOL ...`), for tests and benchmarks.

use switchyard_core::{
    engine::{apply_with_tool, run_tool},
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

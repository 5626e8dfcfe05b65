//! Running `nft`: a transaction on stdin (`nft -f -`), or a listing. Optionally inside a
//! network namespace (`ip netns exec NAME nft ...`), for tests and benchmarks.

use switchyard_model::{
    tool::{apply_with_tool, run_tool},
    EngineError,
};

use crate::NftOptions;

/// Runs `nft ARGS`, feeding `input` on stdin; returns stdout.
pub async fn run(options: &NftOptions, args: &[&str], input: &str) -> Result<String, EngineError> {
    run_tool(options.netns.as_deref(), &options.nft_path, args, input).await
}

/// Applies a transaction atomically.
pub async fn transaction(options: &NftOptions, text: &str) -> Result<(), EngineError> {
    transaction_pieces(options, &[text]).await
}

/// Applies a transaction given as consecutive pieces of text, atomically.
pub async fn transaction_pieces(options: &NftOptions, pieces: &[&str]) -> Result<(), EngineError> {
    apply_with_tool(
        options.netns.as_deref(),
        &options.nft_path,
        &["-f", "-"],
        pieces,
    )
    .await
}

//! Writes the full IPv4 restore input for N synthetic services to stdout (for profiling
//! the iptables tools): `cargo run --release -p switchyard-iptables --example render_dump -- 10000 2 [nft]`
//! (`nft`: the shape the engine sends to iptables-nft-restore). The services are the
//! model's test builders' (`big_model`: every fourth a NodePort, the first endpoint of
//! each on this node), planned by the real planner.

use std::io::Write;

use switchyard_model::{test_util::big_model, IpFamily};

fn main() {
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let per: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let shape = match args.next().as_deref() {
        Some("nft") => switchyard_iptables::Shape::NftListFirst,
        _ => switchyard_iptables::Shape::Plain,
    };
    let model = big_model(count, per);
    let text = switchyard_iptables::render_full_shaped(&model, IpFamily::V4, shape);
    std::io::stdout().write_all(text.as_bytes()).unwrap();
}

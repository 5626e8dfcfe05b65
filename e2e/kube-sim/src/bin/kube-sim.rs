//! `kube-sim` binary.
fn main() {}

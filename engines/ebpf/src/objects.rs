//! The BPF objects `build.rs` compiled from `bpf/`, embedded in the binary (8-byte
//! aligned, as the ELF parser needs).

/// `bpf/sock.c`: the cgroup socket-LB programs.
pub(crate) static SOCK: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock.o"));
/// `bpf/tc.c`: the tc NodePort / LB / external-IP programs.
pub(crate) static TC: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc.o"));

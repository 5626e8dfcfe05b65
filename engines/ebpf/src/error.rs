//! The crate's error type: every variant names the object (map, program, path, interface,
//! service) it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting bpffs at {path}: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("joining the network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("listing the interfaces' addresses: {source}")]
    Interfaces {
        #[source]
        source: nix::Error,
    },
    #[error("no cgroup v2 mount in {0} (mount -t cgroup2 none /sys/fs/cgroup)")]
    NoCgroup2(PathBuf),
    #[error("loading BPF object {object}: {source}")]
    Load {
        object: &'static str,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("BPF program {program}: {source}")]
    Program {
        program: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("BPF program {program} on {interface}: attaching: {source}")]
    Tc {
        program: &'static str,
        interface: String,
        #[source]
        source: Box<aya::programs::tc::TcError>,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: Box<aya::pin::PinError>,
    },
    #[error("link pinned at {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: Box<aya::programs::links::LinkError>,
    },
    #[error("BPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("BPF map {map}: batched operation: {source}")]
    Batch {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("BPF map {0} missing from the loaded object")]
    MissingMap(&'static str),
    #[error("BPF program {0} missing from the loaded object")]
    MissingProgram(&'static str),
    #[error("service {key}: {reason}")]
    BadService { key: String, reason: String },
    #[error("map content is not what this layout writes: {0}")]
    Corrupt(String),
}

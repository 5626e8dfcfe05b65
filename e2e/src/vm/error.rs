//! Why the VM lane could not run, or did not finish: each error names what to install, the
//! file involved, or the job that hung together with the tail of the VM's console.

use std::{io, path::PathBuf, time::Duration};

/// What to run when something the lane needs is not installed.
pub const INSTALL_HINT: &str = "run scripts/install-vm-lane-deps.sh as root";

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "no Debian kernel to boot: no {}/vmlinuz-*-amd64 with a module tree under {} \
         (package linux-image-amd64; {INSTALL_HINT})",
        boot.display(),
        modules.display()
    )]
    NoKernel { boot: PathBuf, modules: PathBuf },
    #[error("kernel module {module} is neither in modules.dep nor built into kernel {release}")]
    NoModule { module: String, release: String },
    #[error("{}: compressed kernel modules are not supported by the lane's initramfs", path.display())]
    CompressedModule { path: PathBuf },
    #[error("{tool} is not installed (package {package}; {INSTALL_HINT})")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error(
        "the lane's job runner is not built at {}: cargo build -p switchyard-e2e --bin \
         vm-lane-runner (or set SWITCHYARD_VM_RUNNER)",
        path.display()
    )]
    NoRunner { path: PathBuf },
    #[error("{what} {path:?} cannot go on the kernel command line (whitespace or quotes)")]
    UnsafePath { what: &'static str, path: PathBuf },
    #[error("cannot start qemu-system-x86_64: {0}")]
    Spawn(#[source] io::Error),
    #[error(
        "VM lane hung in {phase}: VM killed after {after:.1?} (bound {bound:?}); console \
         tail ({console}):\n{console_tail}"
    )]
    Hung {
        /// `boot`, `shutdown` or `job 'NAME'`.
        phase: String,
        after: Duration,
        bound: Duration,
        console: PathBuf,
        console_tail: String,
    },
    #[error(
        "VM lane: the VM stopped during {phase} ({qemu}); console tail ({console}):\n\
         {console_tail}"
    )]
    Died {
        phase: String,
        qemu: String,
        console: PathBuf,
        console_tail: String,
    },
    #[error("finding test binary {test} with cargo: {detail}")]
    TestBinary { test: String, detail: String },
    #[error("listing the tests of {}: {detail}", binary.display())]
    TestList { binary: PathBuf, detail: String },
}

impl VmError {
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        VmError::Io {
            path: path.into(),
            source,
        }
    }
}

//! Errors of the probe's building blocks. The probe itself never fails: every error
//! becomes a failed [`Check`](crate::Check) whose detail is the error's text.

use std::time::Duration;

/// A userspace tool that could not be run to success.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("`{command}` could not be started: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` did not finish within {after:?}")]
    TimedOut { command: String, after: Duration },
    #[error("`{command}` failed with exit status {status}: {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// Failure to create or enter the network namespace checks program things in.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("the `ip` command (iproute2) is not installed")]
    NoIpCommand,
    #[error("cannot create throwaway network namespace {name}: {source}")]
    Create {
        name: String,
        #[source]
        source: CommandError,
    },
}

/// Failure to ask the kernel about a generic-netlink family.
#[derive(Debug, thiserror::Error)]
pub enum GenlError {
    #[error("generic netlink family {family} is not registered (ENOENT)")]
    NotRegistered { family: String },
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("no answer from the generic netlink controller within {0:?}")]
    TimedOut(Duration),
    #[error("netlink error {code} resolving {family}")]
    Kernel { family: String, code: i32 },
    #[error("malformed netlink answer: {0}")]
    Decode(String),
}

/// A kernel module `modprobe` could not load, with modprobe's own words.
#[derive(Debug, thiserror::Error)]
pub enum ModuleLoadError {
    #[error("{module:?} is not a kernel module name (expected [a-z0-9_-]+, not starting with -)")]
    BadName { module: String },
    #[error("cannot load kernel module {module}: modprobe is not installed (package kmod)")]
    NoModprobe { module: String },
    #[error("cannot load kernel module {module}: {source}")]
    Modprobe {
        module: String,
        #[source]
        source: CommandError,
    },
}

impl ModuleLoadError {
    /// The module that could not be loaded.
    pub fn module(&self) -> &str {
        match self {
            ModuleLoadError::BadName { module }
            | ModuleLoadError::NoModprobe { module }
            | ModuleLoadError::Modprobe { module, .. } => module,
        }
    }
}

//! [`ConntrackError`]: everything that can go wrong talking ctnetlink.

use nix::errno::Errno;

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// The netfilter netlink socket could not be created or bound.
    #[error("opening the ctnetlink socket: {0}")]
    Open(#[source] Errno),
    /// Sending to or receiving from the socket failed.
    #[error("ctnetlink socket I/O: {0}")]
    Io(#[source] Errno),
    /// The kernel answered a request with an error.
    #[error("kernel refused ctnetlink {operation}: {errno}")]
    Kernel {
        operation: &'static str,
        #[source]
        errno: Errno,
    },
    /// The kernel's answer could not be decoded.
    #[error("malformed ctnetlink message: {0}")]
    Malformed(&'static str),
}

//! [`NetlinkError`]: what can go wrong talking netlink. Every kernel refusal keeps its
//! errno, so callers branch on it ([`NetlinkError::errno`]), never on message text.

use std::{io, time::Duration};

use switchyard_model::EngineError;

/// A reply this layer cannot make sense of: a header or attribute whose length runs past
/// the data, a value of the wrong size, a required attribute missing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

impl Malformed {
    pub fn new(what: impl Into<String>) -> Malformed {
        Malformed(what.into())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// A socket call failed (`source` carries the errno).
    #[error("{operation}: {source}")]
    Io {
        operation: String,
        #[source]
        source: io::Error,
    },
    /// The kernel answered the request with an error (`NLMSG_ERROR` with a negative
    /// code); `source` carries the errno.
    #[error("{operation}: the kernel refused: {source}")]
    Kernel {
        operation: String,
        #[source]
        source: io::Error,
    },
    /// The kernel's answer could not be decoded.
    #[error("{operation}: malformed netlink reply: {source}")]
    Malformed {
        operation: String,
        #[source]
        source: Malformed,
    },
    /// No answer within the socket's receive timeout.
    #[error("{operation}: no answer from the kernel within {after:?}")]
    TimedOut { operation: String, after: Duration },
}

impl NetlinkError {
    pub fn io(operation: impl Into<String>, source: io::Error) -> NetlinkError {
        NetlinkError::Io {
            operation: operation.into(),
            source,
        }
    }

    /// A kernel refusal; `errno` may be given negated, as netlink carries it.
    pub fn kernel(operation: impl Into<String>, errno: i32) -> NetlinkError {
        NetlinkError::Kernel {
            operation: operation.into(),
            source: io::Error::from_raw_os_error(errno.saturating_abs()),
        }
    }

    pub fn malformed(operation: impl Into<String>, source: Malformed) -> NetlinkError {
        NetlinkError::Malformed {
            operation: operation.into(),
            source,
        }
    }

    /// The errno of a kernel refusal or a failed socket call.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Io { source, .. } | NetlinkError::Kernel { source, .. } => {
                source.raw_os_error()
            }
            NetlinkError::Malformed { .. } | NetlinkError::TimedOut { .. } => None,
        }
    }

    /// The kernel refused with `errno`.
    pub fn is_kernel(&self, errno: nix::errno::Errno) -> bool {
        matches!(self, NetlinkError::Kernel { source, .. } if source.raw_os_error() == Some(errno as i32))
    }
}

/// At the engine boundary a netlink error is a kernel error: the errno stays in the
/// `io::Error`, an undecodable reply becomes `InvalidData`, a timeout `TimedOut`.
impl From<NetlinkError> for EngineError {
    fn from(e: NetlinkError) -> EngineError {
        let operation = match &e {
            NetlinkError::Io { operation, .. }
            | NetlinkError::Kernel { operation, .. }
            | NetlinkError::Malformed { operation, .. }
            | NetlinkError::TimedOut { operation, .. } => operation.clone(),
        };
        let source = match e {
            NetlinkError::Io { source, .. } | NetlinkError::Kernel { source, .. } => source,
            NetlinkError::Malformed { source, .. } => {
                io::Error::new(io::ErrorKind::InvalidData, source)
            }
            NetlinkError::TimedOut { after, .. } => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer from the kernel within {after:?}"),
            ),
        };
        EngineError::Kernel { operation, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_errno_survives_into_the_engine_error() {
        let e = NetlinkError::kernel("adding a service", -17);
        assert_eq!(e.errno(), Some(17));
        assert!(e.is_kernel(nix::errno::Errno::EEXIST));
        let engine: EngineError = e.into();
        assert_eq!(engine.os_error(), Some(17));
        let bad: EngineError =
            NetlinkError::malformed("dump", Malformed::new("short header")).into();
        assert_eq!(bad.os_error(), None);
        assert!(bad.to_string().contains("dump"), "{bad}");
    }
}

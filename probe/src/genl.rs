//! Resolving a generic-netlink family by name, the way an IPVS client finds the
//! kernel's `IPVS` family, over the shared netlink layer
//! (`switchyard_netlink::genl`). The kernel's controller autoloads a loadable family
//! module (`ip_vs`) on this request. Read-only; the answer is bounded by a receive
//! timeout.

use std::time::Duration;

use nix::errno::Errno;
use switchyard_netlink::{genl, NetlinkError, NetlinkSocket, Netns, Protocol};

use crate::error::GenlError;

/// The kernel's id for generic-netlink family `name`.
pub fn resolve_family(name: &str, timeout: Duration) -> Result<u16, GenlError> {
    let mut socket =
        NetlinkSocket::open(Protocol::Generic, &Netns::Current).map_err(socket_error)?;
    socket.set_timeout(timeout).map_err(socket_error)?;
    genl::resolve_family(&mut socket, name).map_err(|e| match e {
        e if e.is_kernel(Errno::ENOENT) => GenlError::NotRegistered {
            family: name.to_string(),
        },
        NetlinkError::TimedOut { .. } => GenlError::TimedOut(timeout),
        NetlinkError::Kernel { source, .. } => GenlError::Kernel {
            family: name.to_string(),
            code: source.raw_os_error().unwrap_or(0),
        },
        NetlinkError::Malformed { source, .. } => GenlError::Decode(source.to_string()),
        NetlinkError::Io { source, .. } => GenlError::Socket(source),
    })
}

fn socket_error(e: NetlinkError) -> GenlError {
    match e {
        NetlinkError::Io { source, .. } => GenlError::Socket(source),
        other => GenlError::Socket(std::io::Error::other(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_the_controller_and_rejects_nonsense() {
        // "nlctrl" is always registered (id 0x10); netlink sockets need no privileges.
        assert_eq!(
            resolve_family("nlctrl", Duration::from_secs(2)).unwrap(),
            0x10
        );
        let err = resolve_family("SY_NO_FAMILY", Duration::from_secs(2)).unwrap_err();
        assert!(matches!(err, GenlError::NotRegistered { .. }), "{err}");
    }
}

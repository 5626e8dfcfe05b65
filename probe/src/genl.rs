//! Resolving a generic-netlink family by name (`CTRL_CMD_GETFAMILY` on a
//! `NETLINK_GENERIC` socket), the way an IPVS client finds the kernel's `IPVS` family.
//! The kernel's controller autoloads a loadable family module (`ip_vs`) on this request.
//! Read-only; the answer is bounded by a receive timeout.

use std::time::{Duration, Instant};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_generic::{
    ctrl::{nlas::GenlCtrlAttrs, GenlCtrl, GenlCtrlCmd},
    GenlMessage,
};
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};
use nix::sys::{
    socket::{setsockopt, sockopt::ReceiveTimeout},
    time::TimeVal,
};

use crate::error::GenlError;

const ENOENT: i32 = 2;

/// The kernel's id for generic-netlink family `name`.
pub fn resolve_family(name: &str, timeout: Duration) -> Result<u16, GenlError> {
    let mut socket = Socket::new(NETLINK_GENERIC).map_err(GenlError::Socket)?;
    socket.bind_auto().map_err(GenlError::Socket)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(GenlError::Socket)?;
    let tv = TimeVal::new(timeout.as_secs() as i64, i64::from(timeout.subsec_micros()));
    setsockopt(&socket, ReceiveTimeout, &tv).map_err(|e| GenlError::Socket(e.into()))?;

    let mut genl = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(name.to_string())],
    });
    genl.finalize();
    let mut msg = NetlinkMessage::from(genl);
    msg.header.flags = NLM_F_REQUEST;
    msg.header.sequence_number = 1;
    msg.finalize();
    let mut tx = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut tx);
    socket.send(&tx, 0).map_err(GenlError::Socket)?;

    let deadline = Instant::now() + timeout;
    loop {
        if Instant::now() >= deadline {
            return Err(GenlError::TimedOut(timeout));
        }
        let mut rx = Vec::with_capacity(16 * 1024);
        let n = match socket.recv(&mut rx, 0) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(GenlError::TimedOut(timeout))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(GenlError::Socket(e)),
        };
        let mut offset = 0;
        while offset < n {
            let reply = <NetlinkMessage<GenlMessage<GenlCtrl>>>::deserialize(&rx[offset..n])
                .map_err(|e| GenlError::Decode(e.to_string()))?;
            let len = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::InnerMessage(m) => {
                    if let Some(id) = m.payload.nlas.iter().find_map(|a| match a {
                        GenlCtrlAttrs::FamilyId(id) => Some(*id),
                        _ => None,
                    }) {
                        return Ok(id);
                    }
                }
                NetlinkPayload::Error(e) => {
                    let code = e.code.map_or(0, |c| -c.get());
                    if code == ENOENT {
                        return Err(GenlError::NotRegistered {
                            family: name.to_string(),
                        });
                    }
                    if code != 0 {
                        return Err(GenlError::Kernel {
                            family: name.to_string(),
                            code,
                        });
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
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

//! Generic netlink: resolving a family by name (`CTRL_CMD_GETFAMILY` to the controller),
//! the way an IPVS client finds the kernel's `IPVS` family. The controller autoloads a
//! loadable family's module (`ip_vs`) on this request. The request is
//! `netlink-packet-generic`'s controller message, carried by [`NetlinkSocket`]; the
//! answer is read with this layer's checked parser (see [`decode_family_id`]).

use netlink_packet_core::Emitable;
use netlink_packet_generic::{
    ctrl::{nlas::GenlCtrlAttrs, GenlCtrl, GenlCtrlCmd},
    GenlMessage,
};

use crate::{
    attr::attrs,
    error::{Malformed, NetlinkError},
    message::{Message, MessageWriter, NLM_F_ACK, NLM_F_REQUEST},
    socket::NetlinkSocket,
};

/// The controller's own family id (`GENL_ID_CTRL`).
pub const GENL_ID_CTRL: u16 = 0x10;

/// `genlmsghdr`: command, version, reserved.
pub fn genlmsghdr(cmd: u8, version: u8) -> [u8; 4] {
    [cmd, version, 0, 0]
}

/// The kernel's id for generic-netlink family `name`; a family that is not registered
/// is a kernel refusal with `ENOENT`.
pub fn resolve_family(socket: &mut NetlinkSocket, name: &str) -> Result<u16, NetlinkError> {
    let operation = format!("resolving generic netlink family {name}");
    let mut genl = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(name.to_string())],
    });
    genl.finalize();
    let mut payload = vec![0; genl.buffer_len()];
    genl.emit(&mut payload);
    let seq = socket.next_seq();
    let mut w = MessageWriter::with_capacity(64);
    w.begin(GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK, seq, &payload);
    let mut id = None;
    socket.exchange(w.finish(), seq, &operation, |m| {
        let found = decode_family_id(m).map_err(|e| NetlinkError::malformed(&operation, e))?;
        id = id.or(found);
        Ok(())
    })?;
    id.ok_or_else(|| {
        NetlinkError::malformed(&operation, Malformed::new("answer without a family id"))
    })
}

/// The family id (`CTRL_ATTR_FAMILY_ID`) in a controller's answer. Walked with this
/// layer's checked attribute parser, not `netlink-packet-generic`'s: its parser of the
/// answer's policy attributes panics on a short attribute (found by `tests/fuzz.rs`,
/// netlink-packet-generic 0.5.0, `ctrl/nlas/policy.rs`).
pub fn decode_family_id(message: &Message<'_>) -> Result<Option<u16>, Malformed> {
    const CTRL_ATTR_FAMILY_ID: u16 = 1;
    for a in attrs(message.after_fixed(4)?) {
        let a = a?;
        if a.kind == CTRL_ATTR_FAMILY_ID {
            return a.ne16().map(Some);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::{Netns, Protocol};

    #[test]
    fn resolves_the_controller_and_refuses_nonsense() {
        // "nlctrl" is always registered; netlink sockets need no privileges.
        let mut s = NetlinkSocket::open(Protocol::Generic, &Netns::Current).unwrap();
        assert_eq!(resolve_family(&mut s, "nlctrl").unwrap(), GENL_ID_CTRL);
        let err = resolve_family(&mut s, "SY_NO_FAMILY").unwrap_err();
        assert_eq!(err.errno(), Some(2), "{err}");
        // The socket is still usable after a refusal.
        assert_eq!(resolve_family(&mut s, "nlctrl").unwrap(), GENL_ID_CTRL);
    }
}

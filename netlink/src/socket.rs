//! [`NetlinkSocket`]: one netlink socket of one protocol, in the network namespace it was
//! opened in, with the exchange every protocol module uses: send a request, read answers
//! until the kernel's `NLMSG_ERROR` (an acknowledgement or an errno) or `NLMSG_DONE` (end
//! of a dump) for that request's sequence number.
//!
//! Sends and receives retry on `EINTR`; a receive past the socket's timeout is an error,
//! never a hang; a datagram larger than the receive buffer is an error, never silently
//! cut. The socket is `netlink-sys`'s; nothing here needs `unsafe`.

use std::{
    io::{self, IoSlice},
    os::fd::AsRawFd,
    path::PathBuf,
    time::Duration,
};

use netlink_sys::{protocols, Socket, SocketAddr};
use nix::{
    sched::{setns, CloneFlags},
    sys::{
        socket::{sendmsg, setsockopt, sockopt, MsgFlags, NetlinkAddr},
        time::TimeVal,
    },
};

use crate::{
    error::NetlinkError,
    message::{error_code, messages, Message, NLMSG_DONE, NLMSG_ERROR, NLMSG_OVERRUN},
};

/// Netlink dumps come in datagrams of at most 32 KiB; this holds any of them.
const RECV_BUFFER: usize = 64 * 1024;
/// Socket receive buffer asked for, so a burst of acknowledgements never overflows it.
const SOCKET_RCVBUF: usize = 1024 * 1024;
/// How long a receive waits before the exchange fails.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The netlink protocols this layer speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// rtnetlink: links and addresses.
    Route,
    /// nfnetlink: nf_tables, ctnetlink.
    Netfilter,
    /// Generic netlink: family resolution, IPVS.
    Generic,
}

impl Protocol {
    fn number(self) -> isize {
        match self {
            Protocol::Route => protocols::NETLINK_ROUTE,
            Protocol::Netfilter => protocols::NETLINK_NETFILTER,
            Protocol::Generic => protocols::NETLINK_GENERIC,
        }
    }
}

/// Where to open a socket: the calling thread's network namespace, or a named one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Netns {
    #[default]
    Current,
    /// A namespace bound at `/run/netns/NAME` (`ip netns add NAME`), or an absolute path
    /// to a namespace file (`/proc/PID/ns/net`).
    Named(String),
}

impl Netns {
    /// `None` is the current namespace.
    pub fn from_name(name: Option<&str>) -> Netns {
        name.map_or(Netns::Current, |n| Netns::Named(n.to_string()))
    }

    fn path(name: &str) -> PathBuf {
        if name.starts_with('/') {
            PathBuf::from(name)
        } else {
            PathBuf::from("/run/netns").join(name)
        }
    }

    /// Runs `f` in this namespace: right here for `Current`, else on a short-lived
    /// thread that enters it first (`setns` changes only the calling thread). For what
    /// the calling thread's namespace decides: a new socket, `/proc/sys/net`, `/proc/net`.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetlinkError> {
        let Netns::Named(name) = self else {
            return Ok(f());
        };
        let path = Netns::path(name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path)
                    .map_err(|e| NetlinkError::io(format!("opening {}", path.display()), e))?;
                setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| {
                    NetlinkError::io(format!("entering {}", path.display()), e.into())
                })?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

/// A netlink socket and its sequence numbers.
#[derive(Debug)]
pub struct NetlinkSocket {
    socket: Socket,
    seq: u32,
    recv_buf: Vec<u8>,
    timeout: Duration,
}

fn open_socket(protocol: Protocol) -> io::Result<Socket> {
    let mut socket = Socket::new(protocol.number())?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

impl NetlinkSocket {
    /// Opens a socket in `netns` (see [`Netns::run`]); the socket stays in it for good.
    pub fn open(protocol: Protocol, netns: &Netns) -> Result<NetlinkSocket, NetlinkError> {
        let operation = || format!("opening a {protocol:?} netlink socket");
        let socket = netns
            .run(|| open_socket(protocol))?
            .map_err(|e| NetlinkError::io(operation(), e))?;
        // Best effort: the larger buffer needs CAP_NET_ADMIN, the default one works too.
        if setsockopt(&socket, sockopt::RcvBufForce, &SOCKET_RCVBUF).is_err() {
            let _ = setsockopt(&socket, sockopt::RcvBuf, &SOCKET_RCVBUF);
        }
        let mut s = NetlinkSocket {
            socket,
            seq: 0,
            recv_buf: Vec::with_capacity(RECV_BUFFER),
            timeout: DEFAULT_TIMEOUT,
        };
        s.set_timeout(DEFAULT_TIMEOUT)?;
        Ok(s)
    }

    /// How long a receive waits for the kernel before failing.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), NetlinkError> {
        let tv = TimeVal::new(timeout.as_secs() as i64, i64::from(timeout.subsec_micros()));
        setsockopt(&self.socket, sockopt::ReceiveTimeout, &tv)
            .map_err(|e| NetlinkError::io("setting the receive timeout", e.into()))?;
        self.timeout = timeout;
        Ok(())
    }

    /// Raises the send buffer so one datagram of `bytes` fits (nf_tables batches): with
    /// `SO_SNDBUFFORCE` (needs `CAP_NET_ADMIN`; the kernel caps it near 2 GiB), else
    /// `SO_SNDBUF` (capped by `net.core.wmem_max`; a larger datagram then fails with
    /// `EMSGSIZE`). Returns the buffer the kernel granted.
    pub fn set_send_buffer(&self, bytes: usize) -> usize {
        let bytes = bytes.min(i32::MAX as usize / 2);
        if setsockopt(&self.socket, sockopt::SndBufForce, &bytes).is_err() {
            let _ = setsockopt(&self.socket, sockopt::SndBuf, &bytes);
        }
        nix::sys::socket::getsockopt(&self.socket, sockopt::SndBuf).unwrap_or(0)
    }

    /// The next sequence number.
    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// The sequence number [`NetlinkSocket::next_seq`] will return.
    pub fn peek_seq(&self) -> u32 {
        self.seq.wrapping_add(1)
    }

    /// Reserves `n` consecutive sequence numbers; returns the first.
    pub fn reserve_seqs(&mut self, n: u32) -> u32 {
        let first = self.seq.wrapping_add(1);
        self.seq = self.seq.wrapping_add(n);
        first
    }

    /// Sends one datagram, retrying when interrupted.
    pub fn send(&self, data: &[u8], operation: &str) -> Result<(), NetlinkError> {
        loop {
            match self.socket.send(data, 0) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NetlinkError::io(format!("{operation}: sending"), e)),
            }
        }
    }

    /// Sends one datagram given as consecutive pieces (the iovecs of one `sendmsg`, so
    /// nothing is copied into one buffer first), retrying when interrupted. More pieces
    /// than the kernel takes in one call (`UIO_MAXIOV`, 1024) are joined first.
    pub fn send_vectored(&self, pieces: &[Vec<u8>], operation: &str) -> Result<(), NetlinkError> {
        const UIO_MAXIOV: usize = 1024;
        let joined;
        let pieces: &[Vec<u8>] = if pieces.len() > UIO_MAXIOV {
            joined = [pieces.concat()];
            &joined
        } else {
            pieces
        };
        let iov: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
        loop {
            match sendmsg::<NetlinkAddr>(
                self.socket.as_raw_fd(),
                &iov,
                &[],
                MsgFlags::empty(),
                None,
            ) {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    return Err(NetlinkError::io(
                        format!("{operation}: sending"),
                        io::Error::from(e),
                    ))
                }
            }
        }
    }

    /// Receives one datagram, retrying when interrupted.
    pub fn receive(&mut self, operation: &str) -> Result<&[u8], NetlinkError> {
        loop {
            self.recv_buf.clear();
            match self.socket.recv(&mut self.recv_buf, libc_msg_trunc()) {
                Ok(n) if n > self.recv_buf.len() => {
                    return Err(NetlinkError::io(
                        format!("{operation}: receiving"),
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "datagram of {n} bytes larger than the {RECV_BUFFER}-byte buffer"
                            ),
                        ),
                    ))
                }
                Ok(_) => return Ok(&self.recv_buf),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(NetlinkError::TimedOut {
                        operation: operation.to_string(),
                        after: self.timeout,
                    })
                }
                Err(e) => return Err(NetlinkError::io(format!("{operation}: receiving"), e)),
            }
        }
    }

    /// Sends `request` (whose messages carry sequence number `seq`; set `NLM_F_ACK` on a
    /// request that is not a dump) and hands every answer of that sequence number to
    /// `on_reply` until the kernel's acknowledgement, error or end of dump. When
    /// `on_reply` fails, the answers are still read to their end (so the socket is ready
    /// for the next request), then its first error is returned.
    pub fn exchange(
        &mut self,
        request: &[u8],
        seq: u32,
        operation: &str,
        mut on_reply: impl FnMut(&Message<'_>) -> Result<(), NetlinkError>,
    ) -> Result<(), NetlinkError> {
        self.send(request, operation)?;
        let mut failure: Option<NetlinkError> = None;
        loop {
            let data = self.receive(operation)?;
            for message in messages(data) {
                let message =
                    message.map_err(|e| NetlinkError::malformed(operation.to_string(), e))?;
                if message.seq != seq {
                    continue; // left over from an earlier request
                }
                match message.kind {
                    NLMSG_ERROR | NLMSG_DONE => {
                        let code = error_code(&message)
                            .map_err(|e| NetlinkError::malformed(operation.to_string(), e))?;
                        return match (failure, code) {
                            (Some(first), _) => Err(first),
                            (None, 0) => Ok(()),
                            (None, errno) => {
                                Err(NetlinkError::kernel(operation.to_string(), errno))
                            }
                        };
                    }
                    NLMSG_OVERRUN => {
                        return Err(NetlinkError::io(
                            operation.to_string(),
                            io::Error::from_raw_os_error(nix::errno::Errno::ENOBUFS as i32),
                        ))
                    }
                    _ if failure.is_none() => {
                        if let Err(e) = on_reply(&message) {
                            failure = Some(e);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// `MSG_TRUNC`: `recv` returns the datagram's real length, so truncation shows.
fn libc_msg_trunc() -> i32 {
    nix::sys::socket::MsgFlags::MSG_TRUNC.bits()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_are_consecutive() {
        // Generic netlink sockets need no privileges.
        let mut s = NetlinkSocket::open(Protocol::Generic, &Netns::Current).unwrap();
        assert_eq!(s.next_seq(), 1);
        assert_eq!(s.reserve_seqs(3), 2);
        assert_eq!(s.next_seq(), 5);
    }

    #[test]
    fn a_missing_namespace_is_an_io_error_naming_it() {
        let e = NetlinkSocket::open(Protocol::Route, &Netns::Named("sy-no-such-ns".into()))
            .unwrap_err();
        assert_eq!(e.errno(), Some(2));
        assert!(e.to_string().contains("/run/netns/sy-no-such-ns"), "{e}");
    }
}

//! [`Conntrack`]: a ctnetlink socket (`NETLINK_NETFILTER`) in the network namespace of
//! the thread that opened it. Lists the table with one `IPCTNL_MSG_CT_GET` dump and
//! deletes flows with `IPCTNL_MSG_CT_DELETE`, batched many to a datagram.
//!
//! A dump is parsed as it streams in: each flow is decoded on the stack, matched, and
//! only the matches are kept, so a table of 100k+ flows costs no more memory than its
//! stale part.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::{
    errno::Errno,
    sys::socket::{
        bind, recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr,
        SockFlag, SockProtocol, SockType,
    },
};
use switchyard_model::IpFamily;

use crate::{
    error::ConntrackError,
    filters::{ConntrackFilter, FilterIndex},
    flow::Flow,
    message::{self, AF_INET, AF_INET6, AF_UNSPEC, CT_NEW, NLMSG_DONE, NLMSG_ERROR, NLMSG_OVERRUN},
};

/// Netlink dumps come in datagrams of at most 32 KiB; this holds any of them.
const RECV_BUFFER: usize = 64 * 1024;
/// Socket receive buffer asked for, so a batch of acknowledgements never overflows it.
const SOCKET_RCVBUF: usize = 1024 * 1024;
/// Deletes sent in one datagram before reading their acknowledgements.
const DELETE_BATCH: usize = 64;

/// A ctnetlink socket. Not shared between threads; open one per user.
pub struct Conntrack {
    fd: OwnedFd,
    seq: u32,
    recv_buf: Vec<u8>,
    send_buf: Vec<u8>,
}

impl Conntrack {
    /// Opens a ctnetlink socket in the calling thread's current network namespace.
    pub fn open() -> Result<Conntrack, ConntrackError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(ConntrackError::Open)?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(ConntrackError::Open)?;
        // Best effort: the larger buffer needs CAP_NET_ADMIN, the default one works too.
        if setsockopt(&fd, sockopt::RcvBufForce, &SOCKET_RCVBUF).is_err() {
            let _ = setsockopt(&fd, sockopt::RcvBuf, &SOCKET_RCVBUF);
        }
        Ok(Conntrack {
            fd,
            seq: 0,
            recv_buf: vec![0; RECV_BUFFER],
            send_buf: Vec::with_capacity(DELETE_BATCH * 128),
        })
    }

    /// Every flow of `family` in the table.
    pub fn flows(&mut self, family: IpFamily) -> Result<Vec<Flow>, ConntrackError> {
        let family = match family {
            IpFamily::V4 => AF_INET,
            IpFamily::V6 => AF_INET6,
        };
        let mut flows = Vec::new();
        self.dump(family, |flow| flows.push(flow))?;
        Ok(flows)
    }

    /// Deletes every flow (of any family) matching any of `filters`, with one dump of
    /// the table. Returns how many flows were deleted; a flow that disappeared between
    /// the dump and its delete is not counted and is no error.
    pub fn delete_matching(
        &mut self,
        filters: &[ConntrackFilter],
    ) -> Result<usize, ConntrackError> {
        if filters.is_empty() {
            return Ok(0);
        }
        let index = FilterIndex::new(filters);
        let mut stale = Vec::new();
        self.dump(AF_UNSPEC, |flow| {
            if index.matches(&flow) {
                stale.push(flow);
            }
        })?;
        self.delete(&stale)
    }

    /// Deletes `flows`, each identified by its original tuple, zone and id. Returns how
    /// many were deleted; flows already gone (`ENOENT`) are skipped silently.
    pub fn delete(&mut self, flows: &[Flow]) -> Result<usize, ConntrackError> {
        let mut deleted = 0;
        for batch in flows.chunks(DELETE_BATCH) {
            let first = self.seq.wrapping_add(1);
            self.send_buf.clear();
            for flow in batch {
                let seq = self.next_seq();
                message::encode_delete_request(&mut self.send_buf, seq, flow);
            }
            self.send()?;
            let mut pending = batch.len();
            let mut failure = None;
            while pending > 0 {
                let n = self.recv()?;
                for msg in message::messages(&self.recv_buf[..n]) {
                    let msg = msg?;
                    if msg.kind != NLMSG_ERROR
                        || msg.seq.wrapping_sub(first) as usize >= batch.len()
                    {
                        continue; // not an answer to this batch
                    }
                    pending -= 1;
                    match message::decode_error(msg.payload)? {
                        0 => deleted += 1,
                        e if e == Errno::ENOENT as i32 => {}
                        errno => {
                            failure.get_or_insert(ConntrackError::Kernel {
                                operation: "delete",
                                errno: Errno::from_raw(errno),
                            });
                        }
                    }
                }
            }
            if let Some(failure) = failure {
                return Err(failure);
            }
        }
        Ok(deleted)
    }

    /// Dumps the table of `family`, handing each flow to `on_flow` as it is decoded.
    fn dump(&mut self, family: u8, mut on_flow: impl FnMut(Flow)) -> Result<(), ConntrackError> {
        let seq = self.next_seq();
        self.send_buf.clear();
        message::encode_dump_request(&mut self.send_buf, seq, family);
        self.send()?;
        // After a bad message keep reading to the end of the dump, so the socket is
        // ready for the next request, then report it.
        let mut failure: Option<ConntrackError> = None;
        loop {
            let n = self.recv()?;
            for msg in message::messages(&self.recv_buf[..n]) {
                let msg = match msg {
                    Ok(msg) => msg,
                    Err(e) => {
                        failure.get_or_insert(e);
                        break;
                    }
                };
                if msg.seq != seq {
                    continue; // left over from an earlier request
                }
                match msg.kind {
                    CT_NEW => match message::decode_flow(msg.payload) {
                        Ok(flow) => on_flow(flow),
                        Err(e) => {
                            failure.get_or_insert(e);
                        }
                    },
                    NLMSG_DONE | NLMSG_ERROR => {
                        let errno = message::decode_error(msg.payload).unwrap_or(0);
                        if errno != 0 {
                            failure.get_or_insert(ConntrackError::Kernel {
                                operation: "dump",
                                errno: Errno::from_raw(errno),
                            });
                        }
                        return failure.map_or(Ok(()), Err);
                    }
                    NLMSG_OVERRUN => {
                        return Err(ConntrackError::Malformed("netlink overrun"));
                    }
                    _ => {}
                }
            }
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&mut self) -> Result<(), ConntrackError> {
        let kernel = NetlinkAddr::new(0, 0);
        loop {
            match sendto(
                self.fd.as_raw_fd(),
                &self.send_buf,
                &kernel,
                MsgFlags::empty(),
            ) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(ConntrackError::Io(e)),
            }
        }
    }

    /// Receives one datagram into `recv_buf`; returns its length.
    fn recv(&mut self) -> Result<usize, ConntrackError> {
        loop {
            match recv(self.fd.as_raw_fd(), &mut self.recv_buf, MsgFlags::MSG_TRUNC) {
                Ok(n) if n > self.recv_buf.len() => {
                    return Err(ConntrackError::Malformed("datagram larger than the buffer"))
                }
                Ok(n) => return Ok(n),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(ConntrackError::Io(e)),
            }
        }
    }
}

//! Traffic probes: one TCP connection or one UDP datagram from a source (a namespace and
//! an address to bind) to `ip:port`, classified as answered (by which backend, seeing which
//! source), refused (RST / ICMP unreachable) or timed out.

use std::{
    fmt,
    io::{self, Read},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    os::fd::{AsFd, AsRawFd},
    path::PathBuf,
    str::FromStr,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use nix::{
    errno::Errno,
    fcntl::{fcntl, FcntlArg, OFlag},
    poll::{poll, PollFd, PollFlags, PollTimeout},
    sys::socket::{
        bind, connect, getsockopt, socket, sockopt, AddressFamily, SockFlag, SockType,
        SockaddrStorage,
    },
};

use crate::{echo::parse_echo_line, netns};

/// Default per-probe timeout (TCP connect + read, or UDP reply). Longer than the 1 s
/// initial SYN retransmission timeout on purpose: Linux ignores an ICMPv6 unreachable for
/// the first SYN of an IPv6 connection and only fails the connect when the one for the
/// retransmitted SYN arrives (~1.0 s), so a 1 s timeout would turn IPv6 REJECT into
/// TIMEOUT.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Proto {
    Tcp,
    Udp,
}

impl FromStr for Proto {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Proto> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            other => bail!("unsupported protocol {other:?} (tcp or udp)"),
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// Where a probe is sent from: a network namespace and the address to bind there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub netns: PathBuf,
    pub ip: IpAddr,
}

/// What became of one probe.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    /// An echo server answered: `backend` is the endpoint `ip:port` it names, `seen_source`
    /// the client address it saw.
    Answered {
        backend: String,
        seen_source: SocketAddr,
    },
    /// Connection refused, reset, or an ICMP unreachable (the reason says which).
    Refused(String),
    /// No answer within the timeout (or dropped by local netfilter, `EPERM`).
    Timeout,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Answered {
                backend,
                seen_source,
            } => write!(f, "{backend} (saw {seen_source})"),
            Outcome::Refused(why) => write!(f, "REFUSED ({why})"),
            Outcome::Timeout => f.write_str("TIMEOUT"),
        }
    }
}

/// Sends one request from `src` to `dst` and classifies the result. Errors are harness
/// failures (namespace missing, bad address), never network outcomes.
pub fn probe(src: &Source, dst: SocketAddr, proto: Proto, timeout: Duration) -> Result<Outcome> {
    if src.ip.is_ipv4() != dst.is_ipv4() {
        bail!(
            "source {} and destination {dst} are of different families",
            src.ip
        );
    }
    let ip = src.ip;
    netns::run_in(&src.netns, move || probe_here(ip, dst, proto, timeout))?
}

/// [`probe`] on the calling thread, which must already be in the source's namespace.
pub fn probe_here(ip: IpAddr, dst: SocketAddr, proto: Proto, timeout: Duration) -> Result<Outcome> {
    match proto {
        Proto::Tcp => probe_tcp(ip, dst, timeout),
        Proto::Udp => probe_udp(ip, dst, timeout),
    }
}

/// One datagram from an unconnected UDP socket (sendto / recvfrom) on the calling thread,
/// which must be in the source's namespace: the outcome and the address the answer came
/// from, as recvfrom reports it.
pub fn probe_udp_unconnected(
    ip: IpAddr,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<(Outcome, Option<SocketAddr>)> {
    let sock = UdpSocket::from(new_socket(ip, SockType::Datagram)?);
    sock.set_read_timeout(Some(timeout))?;
    if let Err(e) = sock.send_to(b"probe\n", dst) {
        return match classify_io(&e) {
            Some(o) => Ok((o, None)),
            None => Err(e).with_context(|| format!("sending to {dst}")),
        };
    }
    let mut buf = [0u8; 2048];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => Ok((answered(&String::from_utf8_lossy(&buf[..n]))?, Some(from))),
        Err(e) => match classify_io(&e) {
            Some(o) => Ok((o, None)),
            None => Err(e).with_context(|| format!("receiving from {dst}")),
        },
    }
}

/// A long-lived TCP connection to a stream echo port (see
/// [`crate::echo::StreamEchoServer`]): every [`LineStream::ask`] sends one line and reads
/// the echo line naming the endpoint, over the same connection.
pub struct LineStream {
    stream: TcpStream,
    reader: io::BufReader<TcpStream>,
}

impl LineStream {
    /// Connects from `src` to `dst` (the socket lives in the source's namespace for good).
    pub fn connect(src: &Source, dst: SocketAddr, timeout: Duration) -> Result<LineStream> {
        let ip = src.ip;
        let stream = netns::run_in(&src.netns, move || -> Result<TcpStream> {
            let fd = new_socket(ip, SockType::Stream)?;
            fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
            match connect(fd.as_raw_fd(), &storage(dst)) {
                Ok(()) | Err(Errno::EINPROGRESS) => {}
                Err(errno) => return Err(errno).with_context(|| format!("connect to {dst}")),
            }
            let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
            if poll(&mut fds, PollTimeout::from(ms))? == 0 {
                bail!("connect to {dst}: timed out");
            }
            let err = getsockopt(&fd, sockopt::SocketError)?;
            if err != 0 {
                return Err(Errno::from_raw(err)).with_context(|| format!("connect to {dst}"));
            }
            fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::empty()))?;
            Ok(TcpStream::from(fd))
        })??;
        let reader = io::BufReader::new(stream.try_clone()?);
        Ok(LineStream { stream, reader })
    }

    /// The connection's local address (the client side).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.stream.local_addr()?)
    }

    /// Sends one line and waits up to `timeout` for the answer: (endpoint, seen source).
    pub fn ask(&mut self, timeout: Duration) -> Result<(String, SocketAddr)> {
        use io::{BufRead, Write};
        self.stream.set_read_timeout(Some(timeout))?;
        self.stream.set_write_timeout(Some(timeout))?;
        self.stream
            .write_all(b"ping\n")
            .context("writing to the stream")?;
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .context("reading from the stream")?;
        if n == 0 {
            bail!("the stream was closed by the peer");
        }
        parse_echo_line(&line).with_context(|| format!("not an echo answer: {line:?}"))
    }
}

fn new_socket(ip: IpAddr, ty: SockType) -> Result<std::os::fd::OwnedFd> {
    let family = if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, ty, SockFlag::SOCK_CLOEXEC, None).context("socket()")?;
    bind(fd.as_raw_fd(), &storage(SocketAddr::new(ip, 0)))
        .with_context(|| format!("binding probe source {ip}"))?;
    Ok(fd)
}

fn storage(addr: SocketAddr) -> SockaddrStorage {
    match addr {
        SocketAddr::V4(a) => SockaddrStorage::from(a),
        SocketAddr::V6(a) => SockaddrStorage::from(a),
    }
}

fn classify(errno: Errno) -> Option<Outcome> {
    match errno {
        Errno::ECONNREFUSED
        | Errno::ECONNRESET
        | Errno::EHOSTUNREACH
        | Errno::ENETUNREACH
        | Errno::EACCES => Some(Outcome::Refused(errno.desc().to_string())),
        Errno::EINPROGRESS | Errno::EAGAIN | Errno::ETIMEDOUT | Errno::EPERM => {
            Some(Outcome::Timeout)
        }
        _ => None,
    }
}

fn classify_io(e: &io::Error) -> Option<Outcome> {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => return Some(Outcome::Timeout),
        _ => {}
    }
    e.raw_os_error().and_then(|n| classify(Errno::from_raw(n)))
}

fn answered(text: &str) -> Result<Outcome> {
    match parse_echo_line(text) {
        Some((backend, seen_source)) => Ok(Outcome::Answered {
            backend,
            seen_source,
        }),
        None => bail!("not an echo answer: {text:?}"),
    }
}

fn probe_tcp(ip: IpAddr, dst: SocketAddr, timeout: Duration) -> Result<Outcome> {
    let fd = new_socket(ip, SockType::Stream)?;
    // Non-blocking connect + poll: a blocking connect with SO_SNDTIMEO misses ICMP errors.
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    match connect(fd.as_raw_fd(), &storage(dst)) {
        Ok(()) | Err(Errno::EINPROGRESS) => {}
        Err(errno) => {
            return match classify(errno) {
                Some(o) => Ok(o),
                None => Err(errno).with_context(|| format!("connect to {dst}")),
            }
        }
    }
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
    if poll(&mut fds, PollTimeout::from(ms))? == 0 {
        return Ok(Outcome::Timeout);
    }
    let err = getsockopt(&fd, sockopt::SocketError)?;
    if err != 0 {
        let errno = Errno::from_raw(err);
        return match classify(errno) {
            Some(o) => Ok(o),
            None => Err(errno).with_context(|| format!("connect to {dst}")),
        };
    }
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::empty()))?;
    let mut stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(timeout))?;
    let mut text = String::new();
    match stream.read_to_string(&mut text) {
        Ok(_) => answered(&text),
        Err(e) => match classify_io(&e) {
            Some(o) => Ok(o),
            None => Err(e).with_context(|| format!("reading from {dst}")),
        },
    }
}

fn probe_udp(ip: IpAddr, dst: SocketAddr, timeout: Duration) -> Result<Outcome> {
    let fd = new_socket(ip, SockType::Datagram)?;
    if let Err(errno) = connect(fd.as_raw_fd(), &storage(dst)) {
        return match classify(errno) {
            Some(o) => Ok(o),
            None => Err(errno).with_context(|| format!("connect to {dst}")),
        };
    }
    let sock = UdpSocket::from(fd);
    sock.set_read_timeout(Some(timeout))?;
    if let Err(e) = sock.send(b"probe\n") {
        return match classify_io(&e) {
            Some(o) => Ok(o),
            None => Err(e).with_context(|| format!("sending to {dst}")),
        };
    }
    let mut buf = [0u8; 2048];
    match sock.recv(&mut buf) {
        Ok(n) => answered(&String::from_utf8_lossy(&buf[..n])),
        Err(e) => match classify_io(&e) {
            Some(o) => Ok(o),
            None => Err(e).with_context(|| format!("receiving from {dst}")),
        },
    }
}

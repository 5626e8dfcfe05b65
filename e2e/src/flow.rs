//! A long-lived UDP flow: ONE connected socket (one 5-tuple, one conntrack entry or one
//! socket-level translation) sending a datagram every interval and recording who
//! answered. It is the load of upstream kubernetes#122740 (a restart of the proxy broke
//! established UDP flows): across a restart the same flow must keep being answered, by
//! the same backend, with no silence longer than the loss budget.

use std::{
    collections::BTreeSet,
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, SockaddrStorage};
use serde::{Deserialize, Serialize};

use crate::echo::parse_echo_line;

/// The longest an answer may take before its datagram counts as lost.
pub const PATIENCE: Duration = Duration::from_secs(1);

/// What one UDP flow saw.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FlowStats {
    /// Datagrams sent.
    pub sent: u64,
    /// Datagrams answered (within [`PATIENCE`]).
    pub answered: u64,
    /// The backends that answered (`ip:port`).
    pub backends: BTreeSet<String>,
    /// The longest run of unanswered datagrams, in datagrams.
    pub longest_silence: u64,
    /// The first socket error (ICMP unreachable reported on the connected socket).
    pub first_error: Option<String>,
    pub seconds: f64,
}

/// Sends one datagram every `interval` for `duration` from `src` (any port, fixed for the
/// whole flow) to `dst`, on the calling thread (which must be in the source's namespace).
pub fn udp_flow_here(
    src: IpAddr,
    dst: SocketAddr,
    duration: Duration,
    interval: Duration,
) -> Result<FlowStats> {
    let sock = connected(src, dst)?;
    // An answer slower than this counts as lost (generous: a loaded 2-core machine).
    sock.set_read_timeout(Some(interval.max(PATIENCE)))?;
    let mut stats = FlowStats::default();
    let mut silence = 0u64;
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    while start.elapsed() < duration {
        let sent_at = Instant::now();
        stats.sent += 1;
        let got = sock.send(b"flow\n").and_then(|_| sock.recv(&mut buf));
        match got {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                if let Some((backend, _)) = parse_echo_line(&text) {
                    stats.answered += 1;
                    stats.backends.insert(backend);
                    silence = 0;
                }
            }
            Err(e) => {
                silence += 1;
                stats.longest_silence = stats.longest_silence.max(silence);
                if !is_timeout(&e) && stats.first_error.is_none() {
                    stats.first_error = Some(e.to_string());
                }
            }
        }
        // Drain late answers so they are not read as the next datagram's.
        sock.set_nonblocking(true)?;
        while sock.recv(&mut buf).is_ok() {}
        sock.set_nonblocking(false)?;
        if let Some(rest) = interval.checked_sub(sent_at.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    stats.seconds = start.elapsed().as_secs_f64();
    Ok(stats)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn connected(src: IpAddr, dst: SocketAddr) -> Result<UdpSocket> {
    let family = if src.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd =
        socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).context("socket()")?;
    let local = match SocketAddr::new(src, 0) {
        SocketAddr::V4(a) => SockaddrStorage::from(a),
        SocketAddr::V6(a) => SockaddrStorage::from(a),
    };
    bind(fd.as_raw_fd(), &local).with_context(|| format!("binding flow source {src}"))?;
    let sock = UdpSocket::from(fd);
    sock.connect(dst)
        .with_context(|| format!("connecting the flow to {dst}"))?;
    Ok(sock)
}

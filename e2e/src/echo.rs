//! Echo servers standing in for pods: for every (IP, port) a TCP listener and a UDP socket
//! bound to that specific IP inside the pod's namespace. TCP: on accept, write one line
//! `<endpoint ip:port> <client ip:port>\n` and close; UDP: answer each datagram with the
//! same line. The endpoint is the socket's local address (the address after DNAT), the
//! client is the source the pod saw (after any masquerade). IPv6 is written `[addr]:port`.
//!
//! [`StreamEchoServer`] serves long-lived TCP connections instead: it answers every line
//! received with the same echo line and keeps the connection open (for tests that need
//! one connection to survive a dataplane change).

use std::{
    io::{ErrorKind, Write},
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{anyhow, Context, Result};

use crate::netns;

/// How long the serving loop sleeps when no socket had work.
const IDLE: Duration = Duration::from_millis(5);

/// The line an echo server answers with.
pub fn echo_line(endpoint: SocketAddr, client: SocketAddr) -> String {
    format!("{endpoint} {client}\n")
}

/// Parses an echo line into (endpoint as written, client source address).
pub fn parse_echo_line(line: &str) -> Option<(String, SocketAddr)> {
    let mut parts = line.split_whitespace();
    let endpoint = parts.next()?;
    let client = parts.next()?.parse().ok()?;
    endpoint.parse::<SocketAddr>().ok()?;
    Some((endpoint.to_string(), client))
}

/// Running echo sockets of one pod; stopped (and its sockets closed) on drop.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Binds TCP and UDP on every `ips` x `ports` inside the namespace at `netns_path` and
    /// serves them from one background thread.
    pub fn start(netns_path: &Path, ips: &[IpAddr], ports: &[u16]) -> Result<EchoServer> {
        let addrs: Vec<SocketAddr> = ips
            .iter()
            .flat_map(|ip| ports.iter().map(move |p| SocketAddr::new(*ip, *p)))
            .collect();
        let (tcp, udp) = netns::run_in(netns_path, move || bind_all(&addrs))??;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name("echo".into())
            .spawn(move || serve(tcp, udp, &flag))
            .context("spawning echo thread")?;
        Ok(EchoServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn bind_all(addrs: &[SocketAddr]) -> Result<(Vec<TcpListener>, Vec<UdpSocket>)> {
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for addr in addrs {
        let l = TcpListener::bind(addr).with_context(|| format!("echo: bind tcp {addr}"))?;
        l.set_nonblocking(true)?;
        tcp.push(l);
        let u = UdpSocket::bind(addr).with_context(|| format!("echo: bind udp {addr}"))?;
        u.set_nonblocking(true)?;
        udp.push(u);
    }
    if tcp.is_empty() {
        return Err(anyhow!("echo: no addresses to serve"));
    }
    Ok((tcp, udp))
}

fn serve(tcp: Vec<TcpListener>, udp: Vec<UdpSocket>, stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        let mut busy = false;
        for l in &tcp {
            match l.accept() {
                Ok((mut stream, peer)) => {
                    busy = true;
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                    if let Ok(local) = stream.local_addr() {
                        let _ = stream.write_all(echo_line(local, peer).as_bytes());
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {}
            }
        }
        for u in &udp {
            match u.recv_from(&mut buf) {
                Ok((_, peer)) => {
                    busy = true;
                    if let Ok(local) = u.local_addr() {
                        let _ = u.send_to(echo_line(local, peer).as_bytes(), peer);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {}
            }
        }
        if !busy {
            thread::sleep(IDLE);
        }
    }
}

/// Long-lived TCP echo: for every (IP, port) a listener inside the pod's namespace; each
/// connection gets a thread answering every received line with
/// `<endpoint ip:port> <client ip:port>\n`, until the client closes or the server stops.
pub struct StreamEchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StreamEchoServer {
    pub fn start(netns_path: &Path, ips: &[IpAddr], ports: &[u16]) -> Result<StreamEchoServer> {
        let addrs: Vec<SocketAddr> = ips
            .iter()
            .flat_map(|ip| ports.iter().map(move |p| SocketAddr::new(*ip, *p)))
            .collect();
        let listeners = netns::run_in(netns_path, move || -> Result<Vec<TcpListener>> {
            let mut out = Vec::new();
            for addr in &addrs {
                let l = TcpListener::bind(addr)
                    .with_context(|| format!("stream echo: bind tcp {addr}"))?;
                l.set_nonblocking(true)?;
                out.push(l);
            }
            Ok(out)
        })??;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name("stream-echo".into())
            .spawn(move || serve_streams(listeners, &flag))
            .context("spawning stream echo thread")?;
        Ok(StreamEchoServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for StreamEchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_streams(listeners: Vec<TcpListener>, stop: &Arc<AtomicBool>) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let mut busy = false;
        for l in &listeners {
            if let Ok((stream, peer)) = l.accept() {
                busy = true;
                let flag = stop.clone();
                if let Ok(t) = thread::Builder::new()
                    .name("stream-conn".into())
                    .spawn(move || serve_stream(stream, peer, &flag))
                {
                    conns.push(t);
                }
            }
        }
        if !busy {
            thread::sleep(IDLE);
        }
    }
    for t in conns {
        let _ = t.join();
    }
}

fn serve_stream(stream: std::net::TcpStream, peer: SocketAddr, stop: &AtomicBool) {
    use std::io::BufRead;
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = std::io::BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::SeqCst) {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                if line.ends_with('\n') {
                    line.clear();
                    if writer.write_all(echo_line(local, peer).as_bytes()).is_err() {
                        return;
                    }
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_line_round_trips_both_families() {
        let v4: SocketAddr = "10.180.0.1:80".parse().unwrap();
        let v6: SocketAddr = "[fd00:10::5]:53".parse().unwrap();
        let line = echo_line(v6, v4);
        assert_eq!(line, "[fd00:10::5]:53 10.180.0.1:80\n");
        assert_eq!(parse_echo_line(&line), Some(("[fd00:10::5]:53".into(), v4)));
        assert_eq!(parse_echo_line("garbage"), None);
    }
}

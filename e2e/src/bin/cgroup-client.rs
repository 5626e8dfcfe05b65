//! The sandbox's client process for cgroup-attached dataplanes (see
//! `switchyard_e2e::cgroup`): started inside a private cgroup, it reads one JSON
//! [`Request`] per line on stdin and answers one JSON [`Response`] per line on stdout.

use std::{
    io::{BufRead, Write},
    time::{Duration, Instant},
};

use switchyard_e2e::{
    cgroup::{LoopStats, Request, Response, LOOP_CONNECT_TIMEOUT, LOOP_SLOW},
    flow::udp_flow_here,
    netns,
    probe::{probe_here, probe_udp_unconnected},
    Outcome, Proto,
};

fn handle(req: Request) -> Response {
    let result = match req {
        Request::Probe {
            netns,
            src,
            dst,
            proto,
            timeout_ms,
        } => netns::run_in(&netns, move || {
            probe_here(src, dst, proto, Duration::from_millis(timeout_ms))
        })
        .and_then(|r| r)
        .map(Response::Probe),
        Request::UdpUnconnected {
            netns,
            src,
            dst,
            timeout_ms,
        } => netns::run_in(&netns, move || {
            probe_udp_unconnected(src, dst, Duration::from_millis(timeout_ms))
        })
        .and_then(|r| r)
        .map(|(o, from)| Response::Datagram(o, from)),
        Request::ConnectLoop {
            netns,
            src,
            dst,
            millis,
        } => netns::run_in(&netns, move || connect_loop(src, dst, millis)).map(Response::Loop),
        Request::UdpFlow {
            netns,
            src,
            dst,
            millis,
            interval_ms,
        } => netns::run_in(&netns, move || {
            udp_flow_here(
                src,
                dst,
                Duration::from_millis(millis),
                Duration::from_millis(interval_ms),
            )
        })
        .and_then(|r| r)
        .map(Response::Flow),
    };
    result.unwrap_or_else(|e| Response::Error(format!("{e:#}")))
}

fn connect_loop(src: std::net::IpAddr, dst: std::net::SocketAddr, millis: u64) -> LoopStats {
    let mut stats = LoopStats::default();
    let start = Instant::now();
    let until = start + Duration::from_millis(millis);
    while Instant::now() < until {
        let began = Instant::now();
        match probe_here(src, dst, Proto::Tcp, LOOP_CONNECT_TIMEOUT) {
            Ok(Outcome::Answered { .. }) => {
                stats.ok += 1;
                let took = began.elapsed();
                stats.slowest_ms = stats.slowest_ms.max(took.as_secs_f64() * 1000.0);
                if took > LOOP_SLOW {
                    stats.slow += 1;
                }
            }
            other => {
                stats.failed += 1;
                if stats.first_error.is_none() {
                    stats.first_error = Some(format!("{other:?}"));
                }
            }
        }
    }
    stats.seconds = start.elapsed().as_secs_f64();
    stats
}

fn main() {
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(req) => handle(req),
            Err(e) => Response::Error(format!("bad request {line:?}: {e}")),
        };
        let text = serde_json::to_string(&response).expect("responses serialize");
        if writeln!(stdout, "{text}")
            .and_then(|_| stdout.flush())
            .is_err()
        {
            break;
        }
    }
}

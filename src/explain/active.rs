//! Which engine programs this node, asked of the running agent: its metrics endpoint
//! exports `switchyard_engine_active{mode="..."} 1` for the engine it runs (core's
//! metrics). A plain HTTP/1.0 GET over TCP with a short timeout: the endpoint is local
//! and answers in milliseconds, and no HTTP client is worth a dependency for one line.
//! When no agent answers, the caller falls back to the kernel (which engine's state
//! holds the port).

use std::{net::SocketAddr, time::Duration};

use switchyard_crd::Mode;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const TIMEOUT: Duration = Duration::from_secs(2);

/// The active mode the agent at `addr` reports, or why it could not be asked.
pub async fn ask_agent(addr: SocketAddr) -> Result<Mode, String> {
    let text = tokio::time::timeout(TIMEOUT, get_metrics(addr))
        .await
        .map_err(|_| format!("no answer from {addr} within {TIMEOUT:?}"))?
        .map_err(|e| format!("{addr}: {e}"))?;
    active_mode(&text).ok_or_else(|| {
        format!("{addr}/metrics has no switchyard_engine_active sample at 1 (no sync yet?)")
    })
}

async fn get_metrics(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body)
}

/// The mode of the `switchyard_engine_active{mode="M"} 1` sample, if any.
pub fn active_mode(metrics: &str) -> Option<Mode> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix("switchyard_engine_active{")?;
        let (labels, value) = rest.split_once('}')?;
        if value.trim().parse::<f64>().ok()? != 1.0 {
            return None;
        }
        let mode = labels
            .split(',')
            .find_map(|l| l.trim().strip_prefix("mode=\""))?
            .strip_suffix('"')?;
        mode.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_active_mode() {
        let text = "# HELP switchyard_engine_active 1 for the dataplane engine\n\
                    switchyard_engine_active{mode=\"iptables\"} 0\n\
                    switchyard_engine_active{mode=\"nftables\"} 1\n";
        assert_eq!(active_mode(text), Some(Mode::Nftables));
        assert_eq!(
            active_mode("switchyard_engine_active{mode=\"ebpf\"} 0\n"),
            None
        );
        assert_eq!(active_mode(""), None);
    }
}

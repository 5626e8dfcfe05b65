//! `/healthz`, `/livez` and `/metrics`.
//!
//! - `/healthz` (readiness): healthy means the first sync succeeded, the node is not
//!   degraded, and no sync is overdue (no change has waited, and no successful sync is
//!   older than, twice the sync period — kube-proxy's rule).
//! - `/livez` (liveness): the process and its loops are turning (see [`crate::liveness`]);
//!   a node whose syncs fail is unhealthy but alive, and keeps its rules.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};

use crate::{
    liveness::{Heartbeat, Liveness},
    metrics::Metrics,
};

/// Longest silence of the sync runner's loop before `/livez` fails, for a sync period.
/// The runner starts a pass at least once per sync period (retries back off to at most
/// one sync period), so the gap between two pass starts is at most about twice the
/// period plus the longest pass. The longest pass measured is a full sync of 50k
/// services with iptables-nft, 155 s (BENCHMARKS.md); five minutes covers it with room.
pub fn runner_silence_limit(sync_period: Duration) -> Duration {
    sync_period
        .saturating_mul(2)
        .saturating_add(Duration::from_secs(300))
}

#[derive(Debug, Default)]
struct Inner {
    last_success: Option<(Instant, SystemTime)>,
    pending_since: Option<Instant>,
    sync_period: Duration,
    degraded: Option<String>,
    /// The sync runner's heartbeat, registered at its first pass.
    runner: Option<Heartbeat>,
}

/// Shared view of sync health, written by the runner, read by `/healthz`; and the
/// process's [`Liveness`], read by `/livez`.
#[derive(Clone, Debug, Default)]
pub struct Health {
    inner: Arc<Mutex<Inner>>,
    liveness: Liveness,
}

/// One answer of `/healthz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthVerdict {
    pub healthy: bool,
    pub reason: String,
    pub last_updated: Option<SystemTime>,
}

impl Health {
    pub fn new(sync_period: Duration) -> Self {
        let h = Health::default();
        h.inner.lock().unwrap().sync_period = sync_period;
        h
    }

    /// The loops `/livez` watches (register source loops here).
    pub fn liveness(&self) -> Liveness {
        self.liveness.clone()
    }

    /// The runner calls this at the start of every sync pass, so it is also the sync
    /// runner loop's heartbeat for `/livez` (registered at the first pass, so a process
    /// still waiting for its source before the runner starts is not "dead").
    pub fn set_sync_period(&self, period: Duration) {
        let mut i = self.inner.lock().unwrap();
        i.sync_period = period;
        let within = runner_silence_limit(period);
        match &i.runner {
            Some(beat) => beat.tick_within(within),
            None => i.runner = Some(self.liveness.register("sync runner", within)),
        }
    }

    /// A change is waiting to be applied (kept: the oldest).
    pub fn queued(&self) {
        let mut i = self.inner.lock().unwrap();
        i.pending_since.get_or_insert_with(Instant::now);
    }

    /// A sync succeeded; everything queued before it is applied.
    pub fn synced(&self) {
        let mut i = self.inner.lock().unwrap();
        i.last_success = Some((Instant::now(), SystemTime::now()));
        i.pending_since = None;
    }

    /// The node cannot run any usable engine (`None` clears it).
    pub fn set_degraded(&self, reason: Option<String>) {
        self.inner.lock().unwrap().degraded = reason;
    }

    pub fn verdict(&self) -> HealthVerdict {
        let i = self.inner.lock().unwrap();
        let timeout = i.sync_period.saturating_mul(2);
        let last_updated = i.last_success.map(|(_, t)| t);
        let (healthy, reason) = if let Some(d) = &i.degraded {
            (false, format!("degraded: {d}"))
        } else {
            match i.last_success {
                None => (false, "no successful sync yet".to_string()),
                Some((at, _)) => match i.pending_since {
                    Some(p) if p.elapsed() > timeout && at.elapsed() > timeout => (
                        false,
                        format!(
                            "a change has waited {:.1}s for a sync (limit {:.0}s)",
                            p.elapsed().as_secs_f64(),
                            timeout.as_secs_f64()
                        ),
                    ),
                    _ if at.elapsed() > timeout.saturating_add(i.sync_period) => (
                        false,
                        format!(
                            "last successful sync {:.1}s ago",
                            at.elapsed().as_secs_f64()
                        ),
                    ),
                    _ => (true, "ok".to_string()),
                },
            }
        };
        HealthVerdict {
            healthy,
            reason,
            last_updated,
        }
    }
}

fn unix_seconds(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    format!("{secs:.3}")
}

async fn healthz(State(health): State<Health>) -> impl IntoResponse {
    let v = health.verdict();
    let body = serde_json::json!({
        "lastUpdated": v.last_updated.map(unix_seconds),
        "currentTime": unix_seconds(SystemTime::now()),
        "nodeHealthy": v.healthy,
        "reason": v.reason,
    });
    let code = if v.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [("content-type", "application/json")],
        body.to_string(),
    )
}

async fn livez(State(health): State<Health>) -> impl IntoResponse {
    let v = health.liveness.verdict();
    let loops: Vec<serde_json::Value> = v
        .loops
        .iter()
        .map(|l| {
            serde_json::json!({
                "name": l.name,
                "alive": l.alive(),
                "silentSeconds": (l.silent_for.as_secs_f64() * 1e3).round() / 1e3,
                "limitSeconds": l.within.as_secs_f64(),
            })
        })
        .collect();
    let body = serde_json::json!({
        "currentTime": unix_seconds(SystemTime::now()),
        "alive": v.alive,
        "reason": v.reason(),
        "loops": loops,
    });
    let code = if v.alive {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [("content-type", "application/json")],
        body.to_string(),
    )
}

async fn metrics(State(m): State<Metrics>) -> impl IntoResponse {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
}

/// Serves `/healthz` and `/livez` on `addr`.
pub async fn serve_healthz(addr: SocketAddr, health: Health) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .with_state(health);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}

/// Serves `/metrics` on `addr`.
pub async fn serve_metrics(addr: SocketAddr, m: Metrics) -> std::io::Result<()> {
    let app = Router::new().route("/metrics", get(metrics)).with_state(m);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhealthy_until_first_sync() {
        let h = Health::new(Duration::from_secs(30));
        assert!(!h.verdict().healthy);
        h.queued();
        h.synced();
        assert!(h.verdict().healthy);
        h.set_degraded(Some("no usable engine".into()));
        assert!(!h.verdict().healthy);
    }

    #[test]
    fn overdue_change_is_unhealthy() {
        let h = Health::new(Duration::from_millis(10));
        h.synced();
        h.queued();
        std::thread::sleep(Duration::from_millis(40));
        assert!(!h.verdict().healthy);
        h.synced();
        assert!(h.verdict().healthy);
    }

    #[test]
    fn huge_sync_periods_do_not_overflow() {
        let h = Health::new(Duration::MAX);
        h.synced();
        h.queued();
        assert!(h.verdict().healthy);
        assert_eq!(runner_silence_limit(Duration::MAX), Duration::MAX);
    }

    #[test]
    fn failing_syncs_are_unhealthy_but_alive() {
        let h = Health::new(Duration::from_millis(10));
        h.set_sync_period(Duration::from_millis(10));
        h.queued();
        std::thread::sleep(Duration::from_millis(40));
        // No sync ever succeeded, but the runner keeps starting passes.
        h.set_sync_period(Duration::from_millis(10));
        assert!(!h.verdict().healthy);
        let live = h.liveness().verdict();
        assert!(live.alive, "{}", live.reason());
        assert_eq!(live.loops[0].name, "sync runner");
    }

    async fn get(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for _ in 0..100 {
            let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            let code = out[9..12].parse().unwrap();
            let body = out.split("\r\n\r\n").nth(1).unwrap();
            return (code, serde_json::from_str(body).unwrap());
        }
        panic!("{addr} never answered");
    }

    #[tokio::test]
    async fn livez_and_healthz_answer_separately() {
        let h = Health::new(Duration::from_secs(30));
        let addr: SocketAddr = ([127, 0, 0, 1], 20000 + (std::process::id() % 5000) as u16).into();
        tokio::spawn(serve_healthz(addr, h.clone()));
        // Not synced, but nothing has stopped: not ready, alive.
        let (code, body) = get(addr, "/healthz").await;
        assert_eq!(
            (code, &body["nodeHealthy"]),
            (503, &serde_json::json!(false))
        );
        let (code, body) = get(addr, "/livez").await;
        assert_eq!(code, 200, "{body}");
        // A loop that stops ticking makes /livez fail, naming it.
        let _scan = h
            .liveness()
            .register("manifests scan", Duration::from_millis(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (code, body) = get(addr, "/livez").await;
        assert_eq!(code, 503, "{body}");
        assert!(
            body["reason"]
                .as_str()
                .unwrap()
                .starts_with("manifests scan silent"),
            "{body}"
        );
    }
}

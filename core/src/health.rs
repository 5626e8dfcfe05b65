//! `/healthz` and `/metrics`. Healthy means: the first sync succeeded, the node is not
//! degraded, and no sync is overdue (no change has waited, and no successful sync is
//! older than, twice the sync period — kube-proxy's rule).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};

use crate::metrics::Metrics;

#[derive(Debug, Default)]
struct Inner {
    last_success: Option<(Instant, SystemTime)>,
    pending_since: Option<Instant>,
    sync_period: Duration,
    degraded: Option<String>,
}

/// Shared view of sync health, written by the runner, read by `/healthz`.
#[derive(Clone, Debug, Default)]
pub struct Health {
    inner: Arc<Mutex<Inner>>,
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

    pub fn set_sync_period(&self, period: Duration) {
        self.inner.lock().unwrap().sync_period = period;
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
        let timeout = i.sync_period * 2;
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
                    _ if at.elapsed() > timeout + i.sync_period => (
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

async fn metrics(State(m): State<Metrics>) -> impl IntoResponse {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
}

/// Serves `/healthz` (and `/livez`) on `addr`.
pub async fn serve_healthz(addr: SocketAddr, health: Health) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
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
}

//! Per-service health servers for `externalTrafficPolicy: Local` services with a
//! `healthCheckNodePort`, answering load balancers as upstream kube-proxy does: JSON
//! `{"service":{"namespace","name"},"localEndpoints":N,"serviceProxyHealthy":bool}`,
//! header `X-Load-Balancing-Endpoint-Weight: N`, 200 only when this node has local
//! endpoints and the proxy is healthy, else 503.

use std::{
    collections::BTreeMap,
    net::{Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use tokio::task::JoinHandle;

use crate::{health::Health, model::NodeModel};

/// What one health check port reports.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ServiceStatus {
    namespace: String,
    name: String,
    local_endpoints: usize,
}

type Shared = Arc<Mutex<Option<ServiceStatus>>>;

struct Server {
    status: Shared,
    task: JoinHandle<()>,
}

/// The set of running health check servers, reconciled with the model after each sync.
pub struct ServiceHealthServers {
    health: Health,
    servers: BTreeMap<u16, Server>,
}

#[derive(Clone)]
struct Ctx {
    status: Shared,
    health: Health,
}

async fn answer(State(ctx): State<Ctx>) -> impl IntoResponse {
    let status = ctx.status.lock().expect("status lock").clone();
    let healthy = ctx.health.verdict().healthy;
    let (namespace, name, count) = match status {
        Some(s) => (s.namespace, s.name, s.local_endpoints),
        None => (String::new(), String::new(), 0),
    };
    let body = serde_json::json!({
        "service": {"namespace": namespace, "name": name},
        "localEndpoints": count,
        "serviceProxyHealthy": healthy,
    });
    let code = if count > 0 && healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        [
            ("content-type", "application/json".to_string()),
            ("x-content-type-options", "nosniff".to_string()),
            ("x-load-balancing-endpoint-weight", count.to_string()),
        ],
        body.to_string(),
    )
}

impl ServiceHealthServers {
    pub fn new(health: Health) -> Self {
        ServiceHealthServers {
            health,
            servers: BTreeMap::new(),
        }
    }

    /// Ports currently served.
    pub fn ports(&self) -> Vec<u16> {
        self.servers.keys().copied().collect()
    }

    /// Starts, updates and stops servers to match `model`. A port that cannot be bound
    /// is logged and retried at the next call; other services are unaffected.
    pub fn reconcile(&mut self, model: &NodeModel) {
        let mut wanted: BTreeMap<u16, ServiceStatus> = BTreeMap::new();
        for sp in model.services.values() {
            let Some(port) = sp.health_check_node_port else {
                continue;
            };
            let entry = wanted.entry(port).or_insert_with(|| ServiceStatus {
                namespace: sp.name.namespace.clone(),
                name: sp.name.name.clone(),
                local_endpoints: 0,
            });
            if entry.namespace != sp.name.namespace || entry.name != sp.name.name {
                tracing::warn!(port, service = %sp.name, "healthCheckNodePort already used by another service; ignoring");
                continue;
            }
            // Count distinct local endpoint addresses across the service's ports.
            entry.local_endpoints = entry.local_endpoints.max(sp.local_endpoints.len());
        }
        self.servers.retain(|port, server| {
            let keep = wanted.contains_key(port) && !server.task.is_finished();
            if !keep {
                server.task.abort();
            }
            keep
        });
        for (port, status) in wanted {
            if let Some(server) = self.servers.get(&port) {
                *server.status.lock().expect("status lock") = Some(status);
                continue;
            }
            let shared: Shared = Arc::new(Mutex::new(Some(status)));
            let ctx = Ctx {
                status: shared.clone(),
                health: self.health.clone(),
            };
            let app = Router::new().fallback(get(answer)).with_state(ctx);
            let task = tokio::spawn(async move {
                let listener = match bind(port).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(port, error = %e, "cannot serve healthCheckNodePort");
                        return;
                    }
                };
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(port, error = %e, "healthCheckNodePort server stopped");
                }
            });
            self.servers.insert(
                port,
                Server {
                    status: shared,
                    task,
                },
            );
        }
    }
}

/// Binds `[::]:port` (dual-stack), or `0.0.0.0:port` where IPv6 is unavailable.
async fn bind(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))).await {
        Ok(l) => Ok(l),
        Err(_) => tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await,
    }
}

impl Drop for ServiceHealthServers {
    fn drop(&mut self) {
        for server in self.servers.values() {
            server.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Protocol, ServicePort, ServicePortName};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn model(port: u16, local: usize) -> NodeModel {
        let name = ServicePortName {
            namespace: "ns".into(),
            name: "web".into(),
            port: "http".into(),
            protocol: Protocol::Tcp,
        };
        let ep = |i: u8| Endpoint {
            ip: [10, 0, 0, i].into(),
            port: 80,
            local: true,
            ready: true,
            serving: true,
            terminating: false,
            zone_hints: vec![],
            node_hints: vec![],
        };
        let sp = ServicePort {
            name: name.clone(),
            protocol: Protocol::Tcp,
            port: 80,
            cluster_ips: vec!["10.96.0.1".parse().unwrap()],
            node_port: Some(30080),
            external_ips: vec![],
            load_balancer_ips: vec![],
            load_balancer_source_ranges: vec![],
            external_policy_local: true,
            internal_policy_local: false,
            affinity_timeout: None,
            health_check_node_port: Some(port),
            cluster_endpoints: (1..=local as u8).map(ep).collect(),
            local_endpoints: (1..=local as u8).map(ep).collect(),
        };
        NodeModel {
            services: [(name, sp)].into_iter().collect(),
            ..Default::default()
        }
    }

    async fn get(port: u16) -> String {
        for _ in 0..50 {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await
                    .unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).await.unwrap();
                return out;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("health server on {port} never answered");
    }

    #[tokio::test]
    async fn answers_like_upstream() {
        let health = Health::new(Duration::from_secs(30));
        health.synced();
        let mut servers = ServiceHealthServers::new(health.clone());
        let port = 32000 + (std::process::id() % 1000) as u16;
        servers.reconcile(&model(port, 2));
        let r = get(port).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(
            r.to_lowercase()
                .contains("x-load-balancing-endpoint-weight: 2"),
            "{r}"
        );
        assert!(
            r.contains(r#""localEndpoints":2"#) && r.contains(r#""serviceProxyHealthy":true"#),
            "{r}"
        );
        assert!(
            r.contains(r#""namespace":"ns""#) && r.contains(r#""name":"web""#),
            "{r}"
        );

        servers.reconcile(&model(port, 0));
        let r = get(port).await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");

        servers.reconcile(&model(port, 1));
        health.set_degraded(Some("test".into()));
        let r = get(port).await;
        assert!(
            r.starts_with("HTTP/1.1 503") && r.contains(r#""serviceProxyHealthy":false"#),
            "{r}"
        );

        servers.reconcile(&NodeModel::default());
        assert!(servers.ports().is_empty());
    }
}

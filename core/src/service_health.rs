//! Per-service health servers for `externalTrafficPolicy: Local` services with a
//! `healthCheckNodePort`, answering load balancers as upstream kube-proxy does: JSON
//! `{"service":{"namespace","name"},"localEndpoints":N,"serviceProxyHealthy":bool}`,
//! header `X-Load-Balancing-Endpoint-Weight: N`, 200 only when this node has local
//! endpoints and the proxy is healthy, else 503.
//!
//! Where they listen follows `nodePortAddresses`, as upstream's health check server does:
//! on every address when the family's NodePort addresses match all (a `/0`), otherwise
//! on each local address inside them — with the default (`primary`), only the node's
//! primary IPs, never loopback or other interfaces. The addresses are looked up at every
//! reconcile (upstream reads them once at start), so a port moves with the node's
//! addresses; IPv6 link-local addresses are skipped (they need an interface scope).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use ipnet::IpNet;
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

/// One health check port: its status and one serving task per address.
struct Server {
    status: Shared,
    addresses: Vec<IpAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
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
    /// (on any of its addresses) is logged and retried at the next call; other services
    /// are unaffected.
    pub fn reconcile(&mut self, model: &NodeModel) {
        let wanted = wanted_ports(model);
        let addresses = if wanted.is_empty() {
            Vec::new()
        } else {
            match local_addresses() {
                Ok(local) => listen_addresses(&model.node_port_addresses, &local),
                Err(e) => {
                    // Upstream's choice too: better every address than none.
                    tracing::error!(error = %e, "cannot list the node's addresses: health check ports listen on every address");
                    vec![Ipv4Addr::UNSPECIFIED.into(), Ipv6Addr::UNSPECIFIED.into()]
                }
            }
        };
        let ipv6 = crate::engine::kernel_has_ipv6();
        let addresses: Vec<IpAddr> = addresses
            .into_iter()
            .filter(|ip| ip.is_ipv4() || ipv6)
            .collect();
        if !wanted.is_empty() && addresses.is_empty() {
            tracing::warn!(node_port_addresses = ?model.node_port_addresses, "no local address within nodePortAddresses: healthCheckNodePorts are not served");
        }
        self.servers.retain(|port, server| {
            let keep = wanted.contains_key(port)
                && server.addresses == addresses
                && !server.tasks.iter().any(JoinHandle::is_finished);
            if !keep {
                server.stop();
            }
            keep
        });
        for (port, status) in wanted {
            if let Some(server) = self.servers.get(&port) {
                *server.status.lock().expect("status lock") = Some(status);
                continue;
            }
            let shared: Shared = Arc::new(Mutex::new(Some(status)));
            let tasks = addresses
                .iter()
                .map(|ip| self.serve(SocketAddr::new(*ip, port), shared.clone()))
                .collect();
            self.servers.insert(
                port,
                Server {
                    status: shared,
                    addresses: addresses.clone(),
                    tasks,
                },
            );
        }
    }

    /// Serves one health check port on one address (a task; a bind error ends it).
    fn serve(&self, addr: SocketAddr, status: Shared) -> JoinHandle<()> {
        let ctx = Ctx {
            status,
            health: self.health.clone(),
        };
        let app = Router::new().fallback(get(answer)).with_state(ctx);
        tokio::spawn(async move {
            let listener = match bind(addr) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(%addr, error = %e, "cannot serve healthCheckNodePort");
                    return;
                }
            };
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(%addr, error = %e, "healthCheckNodePort server stopped");
            }
        })
    }
}

/// The health check ports `model` asks for, with what each reports: the distinct
/// addresses of the Service's local ready endpoints over all its ports, as upstream
/// counts them.
fn wanted_ports(model: &NodeModel) -> BTreeMap<u16, ServiceStatus> {
    let mut wanted: BTreeMap<u16, (ServiceStatus, BTreeSet<IpAddr>)> = BTreeMap::new();
    for plan in model.services.values() {
        let Some(hc) = &plan.health_check else {
            continue;
        };
        let (status, ips) = wanted.entry(hc.node_port).or_insert_with(|| {
            let status = ServiceStatus {
                namespace: plan.name.namespace.to_string(),
                name: plan.name.name.to_string(),
                local_endpoints: 0,
            };
            (status, BTreeSet::new())
        });
        if status.namespace != plan.name.namespace || status.name != plan.name.name {
            tracing::warn!(port = hc.node_port, service = %plan.name, "healthCheckNodePort already used by another service; ignoring");
            continue;
        }
        ips.extend(hc.local_ready_ips.iter().copied());
    }
    wanted
        .into_iter()
        .map(|(port, (mut status, ips))| {
            status.local_endpoints = ips.len();
            (port, status)
        })
        .collect()
}

/// The node's own addresses (every interface, both families).
fn local_addresses() -> Result<Vec<IpAddr>, nix::Error> {
    Ok(nix::ifaddrs::getifaddrs()?
        .filter_map(|a| {
            let addr = a.address?;
            if let Some(v4) = addr.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect())
}

/// Where health check ports listen, per family: the unspecified address when a
/// `nodePortAddresses` CIDR of that family is a `/0`, else every `local` address inside
/// one of them (IPv6 link-local excepted). Sorted, without duplicates.
fn listen_addresses(node_port_addresses: &[IpNet], local: &[IpAddr]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for unspecified in [
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    ] {
        let family: Vec<&IpNet> = node_port_addresses
            .iter()
            .filter(|n| n.addr().is_ipv4() == unspecified.is_ipv4())
            .collect();
        if family.iter().any(|n| n.prefix_len() == 0) {
            out.push(unspecified);
            continue;
        }
        out.extend(local.iter().filter(|ip| {
            let link_local = matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
            !link_local && family.iter().any(|n| n.contains(*ip))
        }));
    }
    out.sort();
    out.dedup();
    out
}

/// Binds one listener. IPv6 sockets are IPv6-only, so `[::]` and an IPv4 address (or
/// `0.0.0.0`) of the same port coexist; address reuse as every TCP server sets it.
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}

impl Drop for ServiceHealthServers {
    fn drop(&mut self) {
        for server in self.servers.values() {
            server.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use switchyard_model::test_util::{self, ep};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn model(port: u16, local: usize) -> NodeModel {
        let mut web = test_util::service(
            "web",
            &["10.96.0.1"],
            80,
            (1..=local)
                .map(|i| ep(&format!("10.0.0.{i}"), 80, true))
                .collect(),
        );
        web.node_port = Some(30080);
        web.external_policy_local = true;
        web.health_check_node_port = Some(port);
        let config = switchyard_model::ModelConfig {
            node_port_cidrs: vec!["127.0.0.1/32".parse().unwrap()],
            ..test_util::config()
        };
        test_util::model_with(vec![web], &config)
    }

    #[test]
    fn listens_where_node_ports_are_accepted() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let local = [
            ip("127.0.0.1"),
            ip("192.168.0.2"),
            ip("192.168.1.2"),
            ip("10.0.0.1"),
            ip("::1"),
            ip("2001:db8::1"),
            ip("fe80::1"),
        ];
        // Default (primary node IPs as host prefixes): only those.
        assert_eq!(
            listen_addresses(&[net("192.168.0.2/32"), net("2001:db8::1/128")], &local),
            [ip("192.168.0.2"), ip("2001:db8::1")]
        );
        // A CIDR: every local address inside it; none of another family.
        assert_eq!(
            listen_addresses(&[net("192.168.0.0/16")], &local),
            [ip("192.168.0.2"), ip("192.168.1.2")]
        );
        // A /0 matches all of its family: the unspecified address; link-local is
        // never bound on its own.
        assert_eq!(
            listen_addresses(&[net("0.0.0.0/0"), net("fe80::/10")], &local),
            [ip("0.0.0.0")]
        );
        assert_eq!(
            listen_addresses(&[net("::/0"), net("10.0.0.0/8")], &local),
            [ip("10.0.0.1"), ip("::")]
        );
        // Nothing configured, or nothing local inside: nowhere.
        assert!(listen_addresses(&[], &local).is_empty());
        assert!(listen_addresses(&[net("172.16.0.0/12")], &local).is_empty());
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
            r.contains(r#""namespace":"default""#) && r.contains(r#""name":"web""#),
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

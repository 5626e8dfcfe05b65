//! `healthCheckNodePort` served by the agent, asked from outside the node as a cloud load
//! balancer would: 200 with the local endpoint count while this node has a local endpoint
//! of the `externalTrafficPolicy: Local` service, 503 when it has none; the body and the
//! `X-Load-Balancing-Endpoint-Weight` header as upstream kube-proxy writes them. The port
//! listens where NodePorts are accepted (`nodePortAddresses`, as upstream): by default on
//! the node's primary IP only — not on its other addresses, not on loopback — and with a
//! CIDR, on the node's addresses inside it.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Result};
use serde_yaml::Value;
use switchyard_e2e::{
    agent::http_get,
    manifests::{node_object, proxy_config, ManifestDir},
    require_root,
    sandbox::NODE_IP,
    Sandbox,
};

const HEALTH_PORT: u16 = 32100;

fn objects(local_node: &str) -> Vec<Value> {
    let svc = r#"
apiVersion: v1
kind: Service
metadata: {namespace: e2e, name: lb}
spec:
  type: LoadBalancer
  clusterIP: 172.30.5.1
  clusterIPs: [172.30.5.1]
  ipFamilies: [IPv4]
  externalTrafficPolicy: Local
  healthCheckNodePort: 32100
  selector: {app: lb}
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30500}
status:
  loadBalancer:
    ingress: [{ip: 1.2.3.9}]
"#;
    let slice = format!(
        r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  namespace: e2e
  name: lb-1
  labels: {{kubernetes.io/service-name: lb}}
addressType: IPv4
ports:
- {{name: http, port: 8080, protocol: TCP}}
endpoints:
- addresses: [10.180.0.1]
  conditions: {{ready: true, serving: true, terminating: false}}
  nodeName: {local_node}
- addresses: [10.180.2.1]
  conditions: {{ready: true, serving: true, terminating: false}}
  nodeName: node2
"#
    );
    vec![
        serde_yaml::from_str(svc).unwrap(),
        serde_yaml::from_str(&slice).unwrap(),
    ]
}

/// Asks the health port on the node's primary IP from the external namespace until
/// `want` answers, returning the body.
fn wait_for_status(sb: &Sandbox, want: u16, within: Duration) -> Result<String> {
    wait_for_status_at(sb, NODE_IP.into(), want, within)
}

fn wait_for_status_at(sb: &Sandbox, ip: IpAddr, want: u16, within: Duration) -> Result<String> {
    let addr = SocketAddr::new(ip, HEALTH_PORT);
    let start = Instant::now();
    loop {
        let last = match http_get(&sb.ext_ns().path(), addr, "/healthz") {
            Ok((code, body)) if code == want => return Ok(body),
            Ok((code, body)) => format!("{code} {body}"),
            Err(e) => format!("{e:#}"),
        };
        if start.elapsed() > within {
            bail!(
                "health check port never answered {want} within {within:?}; last: {last}\nagent log:\n{}",
                sb.agent_log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn health_check_node_port_answers_like_upstream() -> Result<()> {
    if !require_root("health_check_node_port_answers_like_upstream") {
        return Ok(());
    }
    let mut sb = Sandbox::new()?;
    for p in ["10.180.0.1", "10.180.2.1"] {
        sb.add_pod(&[p.parse::<IpAddr>()?], &[8080])?;
    }
    let dir = ManifestDir::new_temp("hcnp")?;
    dir.write(&node_object())?;
    dir.write(&proxy_config("nftables", &Default::default()))?;
    for o in objects("test-node") {
        dir.write(&o)?;
    }
    sb.run_agent(dir.path(), &[])?;
    sb.wait_healthy(Duration::from_secs(20))?;

    let body = wait_for_status(&sb, 200, Duration::from_secs(5))?;
    let json: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(json["service"]["namespace"], "e2e", "{body}");
    assert_eq!(json["service"]["name"], "lb", "{body}");
    assert_eq!(json["localEndpoints"], 1, "{body}");
    assert_eq!(json["serviceProxyHealthy"], true, "{body}");

    // The local endpoint moves to another node: this node must drop out of the pool.
    for o in objects("node3") {
        dir.write(&o)?;
    }
    let body = wait_for_status(&sb, 503, Duration::from_secs(5))?;
    let json: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(json["localEndpoints"], 0, "{body}");
    Ok(())
}

/// Whether anything accepts a connection on the health port at `ip` (asked from `ns`).
fn listening(ns: &Path, ip: IpAddr) -> bool {
    http_get(ns, SocketAddr::new(ip, HEALTH_PORT), "/healthz").is_ok()
}

#[test]
fn health_check_node_port_binds_node_port_addresses() -> Result<()> {
    if !require_root("health_check_node_port_binds_node_port_addresses") {
        return Ok(());
    }
    let mut sb = Sandbox::new()?;
    sb.add_pod(&["10.180.0.1".parse::<IpAddr>()?], &[8080])?;
    let dir = ManifestDir::new_temp("hcnp-addrs")?;
    dir.write(&node_object())?;
    dir.write(&proxy_config("nftables", &Default::default()))?;
    for o in objects("test-node") {
        dir.write(&o)?;
    }
    sb.run_agent(dir.path(), &[])?;
    sb.wait_healthy(Duration::from_secs(20))?;
    let ext = sb.ext_ns().path();
    let node = sb.node_ns().path();
    let other: IpAddr = "192.168.1.2".parse()?;

    // Default nodePortAddresses: the primary IP only.
    wait_for_status(&sb, 200, Duration::from_secs(5))?;
    ensure!(
        !listening(&ext, other),
        "the health check port must not listen on {other}, which is not a NodePort address"
    );
    ensure!(
        !listening(&node, Ipv4Addr::LOCALHOST.into()),
        "the health check port must not listen on loopback"
    );

    // nodePortAddresses: [192.168.1.0/24]: there, and no longer on the primary IP.
    let mut o = serde_yaml::Mapping::new();
    o.insert("nodePortAddresses".into(), vec!["192.168.1.0/24"].into());
    dir.write(&proxy_config("nftables", &o))?;
    wait_for_status_at(&sb, other, 200, Duration::from_secs(10))?;
    let start = Instant::now();
    while listening(&ext, NODE_IP.into()) {
        ensure!(
            start.elapsed() < Duration::from_secs(5),
            "still listening on {NODE_IP} after nodePortAddresses moved away from it"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

//! `healthCheckNodePort` served by the agent, asked from outside the node as a cloud load
//! balancer would: 200 with the local endpoint count while this node has a local endpoint
//! of the `externalTrafficPolicy: Local` service, 503 when it has none; the body and the
//! `X-Load-Balancing-Endpoint-Weight` header as upstream kube-proxy writes them.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
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

/// Asks the health port from the external namespace until `want` answers, returning the
/// whole response head and body.
fn wait_for_status(sb: &Sandbox, want: u16, within: Duration) -> Result<String> {
    let addr = SocketAddr::from((NODE_IP, HEALTH_PORT));
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

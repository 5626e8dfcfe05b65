//! Defaulting the API server does on create: Service `type`, `clusterIP`(s) allocated from
//! 10.96.0.0/12, node ports from 30000-32767, port protocol and targetPort.

use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::Ipv4Addr;

/// Allocators for Service addresses and node ports, aware of what is in use.
#[derive(Debug, Default, Clone)]
pub struct Allocators {
    next_ip: u32,
    next_node_port: i64,
}

impl Allocators {
    /// Whether defaulting `svc` allocates anything (a cluster IP, a node port): only
    /// then are the addresses and ports in use collected, a walk of every Service
    /// (loading 50k Services otherwise takes time quadratic in their number).
    pub fn allocates(svc: &Value) -> bool {
        let spec = &svc["spec"];
        let type_ = spec["type"].as_str().unwrap_or("ClusterIP");
        if type_ == "ExternalName" {
            return false;
        }
        let has_ip = spec["clusterIP"].as_str().is_some_and(|s| !s.is_empty())
            || spec["clusterIPs"].get(0).and_then(Value::as_str).is_some();
        let wants_node_port = matches!(type_, "NodePort" | "LoadBalancer");
        !has_ip
            || (wants_node_port
                && spec["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p.is_object() && p.get("nodePort").is_none()))
    }

    /// Fills in the defaults of a Service being created. `used_ips`/`used_ports` are the
    /// cluster IPs and node ports held by existing Services.
    pub fn default_service(
        &mut self,
        svc: &mut Value,
        used_ips: &HashSet<String>,
        used_ports: &HashSet<i64>,
    ) {
        let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        let type_ = spec
            .entry("type")
            .or_insert(json!("ClusterIP"))
            .as_str()
            .unwrap_or("ClusterIP")
            .to_string();
        if type_ == "ExternalName" {
            return;
        }
        spec.entry("sessionAffinity").or_insert(json!("None"));
        spec.entry("internalTrafficPolicy")
            .or_insert(json!("Cluster"));
        if matches!(type_.as_str(), "NodePort" | "LoadBalancer") {
            spec.entry("externalTrafficPolicy")
                .or_insert(json!("Cluster"));
        }
        let cluster_ip = spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .or_else(|| {
                spec.get("clusterIPs")
                    .and_then(|a| a.get(0))
                    .and_then(Value::as_str)
                    .map(String::from)
            });
        let cluster_ip = match cluster_ip {
            Some(ip) => ip,
            None => self.alloc_ip(used_ips),
        };
        spec.insert("clusterIP".into(), json!(cluster_ip));
        if !spec.get("clusterIPs").is_some_and(Value::is_array) {
            spec.insert("clusterIPs".into(), json!([cluster_ip]));
        }
        if cluster_ip != "None" && !spec.contains_key("ipFamilies") {
            let fam = if cluster_ip.contains(':') {
                "IPv6"
            } else {
                "IPv4"
            };
            spec.insert("ipFamilies".into(), json!([fam]));
        }
        spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
        let wants_node_port = matches!(type_.as_str(), "NodePort" | "LoadBalancer");
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                p.entry("protocol").or_insert(json!("TCP"));
                if !p.contains_key("targetPort") {
                    if let Some(port) = p.get("port").cloned() {
                        p.insert("targetPort".into(), port);
                    }
                }
                if wants_node_port && !p.contains_key("nodePort") {
                    let np = self.alloc_node_port(used_ports);
                    p.insert("nodePort".into(), json!(np));
                }
            }
        }
    }

    fn alloc_ip(&mut self, used: &HashSet<String>) -> String {
        let base = u32::from(Ipv4Addr::new(10, 96, 0, 0));
        loop {
            self.next_ip = if self.next_ip < 10 || self.next_ip >= (1 << 20) - 2 {
                10
            } else {
                self.next_ip + 1
            };
            let ip = Ipv4Addr::from(base + self.next_ip).to_string();
            if !used.contains(&ip) {
                return ip;
            }
        }
    }

    fn alloc_node_port(&mut self, used: &HashSet<i64>) -> i64 {
        loop {
            self.next_node_port = if (30000..32767).contains(&self.next_node_port) {
                self.next_node_port + 1
            } else {
                30000
            };
            if !used.contains(&self.next_node_port) {
                return self.next_node_port;
            }
        }
    }
}

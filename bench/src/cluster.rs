//! A synthetic cluster of N ClusterIP/NodePort services with M endpoints each, as typed
//! Kubernetes objects (so the benchmark runs the same model code as the agent) and as
//! manifest files (for the agent memory figure).

use std::{io::Write, net::Ipv4Addr, path::Path};

use anyhow::Result;
use switchyard_core::{ClusterState, Object};

pub const NODE: &str = "bench-node";

pub struct SyntheticCluster {
    services: usize,
    per_service: usize,
}

/// The i-th address of a range starting at `base`.
fn nth(base: Ipv4Addr, i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + i as u32)
}

impl SyntheticCluster {
    pub fn new(services: usize, per_service: usize) -> Self {
        SyntheticCluster {
            services,
            per_service,
        }
    }

    fn service_json(&self, i: usize) -> serde_json::Value {
        // Every tenth service is a NodePort, as in a typical cluster.
        let node_port = i.is_multiple_of(10).then(|| 30000 + (i / 10) % 2768);
        let mut port =
            serde_json::json!({"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080});
        if let Some(np) = node_port {
            port["nodePort"] = np.into();
        }
        serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": format!("ns-{}", i % 100), "name": format!("svc-{i}")},
            "spec": {
                "type": if node_port.is_some() { "NodePort" } else { "ClusterIP" },
                "clusterIP": nth(Ipv4Addr::new(172, 20, 0, 0), i).to_string(),
                "ports": [port],
            }
        })
    }

    fn slice_json(&self, i: usize, replaced: Option<usize>) -> serde_json::Value {
        let endpoints: Vec<serde_json::Value> = (0..self.per_service)
            .map(|e| {
                let ip = match (e, replaced) {
                    (0, Some(gen)) => nth(Ipv4Addr::new(10, 200, 0, 0), gen),
                    _ => nth(Ipv4Addr::new(10, 64, 0, 0), i * self.per_service + e),
                };
                serde_json::json!({
                    "addresses": [ip.to_string()],
                    "conditions": {"ready": true, "serving": true, "terminating": false},
                    "nodeName": if e == 0 { NODE.to_string() } else { format!("node-{}", e) },
                })
            })
            .collect();
        serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "namespace": format!("ns-{}", i % 100), "name": format!("svc-{i}-abcde"),
                "labels": {"kubernetes.io/service-name": format!("svc-{i}")},
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        })
    }

    fn node_json(&self) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NODE},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]},
        })
    }

    pub fn state(&self) -> ClusterState {
        let mut state = ClusterState::default();
        state.upsert(Object::Node(Box::new(
            serde_json::from_value(self.node_json()).expect("node"),
        )));
        for i in 0..self.services {
            state.upsert(Object::Service(Box::new(
                serde_json::from_value(self.service_json(i)).expect("service"),
            )));
            state.upsert(Object::EndpointSlice(Box::new(
                serde_json::from_value(self.slice_json(i, None)).expect("slice"),
            )));
        }
        state
    }

    /// Service `i`'s slice with its first endpoint replaced by a new pod (`generation`
    /// picks its address).
    pub fn slice_with_replaced_endpoint(&self, i: usize, generation: usize) -> Object {
        Object::EndpointSlice(Box::new(
            serde_json::from_value(self.slice_json(i, Some(generation))).expect("slice"),
        ))
    }

    /// Service `i`'s slice as built, or without its last endpoint (the endpoint gone:
    /// a pod deleted, or no longer on the slice).
    pub fn slice_with_endpoints(&self, i: usize, without_last: bool) -> Object {
        let mut slice = self.slice_json(i, None);
        if without_last {
            if let Some(eps) = slice["endpoints"].as_array_mut() {
                eps.pop();
            }
        }
        Object::EndpointSlice(Box::new(serde_json::from_value(slice).expect("slice")))
    }

    /// Writes the cluster as manifests: the Node, a ProxyConfig (with `ebpf.cgroupPath`
    /// when given), and services with their slices in files of 1000 services each.
    pub fn write_manifests(&self, dir: &Path, ebpf_cgroup: Option<&Path>) -> Result<()> {
        let mut config = serde_json::json!({
            "apiVersion": "switchyard.dev/v1alpha1", "kind": "ProxyConfig",
            "metadata": {"name": "bench"},
            "spec": {"mode": "nftables", "clusterCIDRs": ["10.0.0.0/8"],
                     "healthzBindAddress": "127.0.0.1:10256", "metricsBindAddress": "127.0.0.1:10249"},
        });
        if let Some(cg) = ebpf_cgroup {
            config["spec"]["ebpf"] = serde_json::json!({"cgroupPath": cg.to_string_lossy()});
        }
        std::fs::write(
            dir.join("node.json"),
            serde_json::to_string(
                &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [self.node_json(), config]}),
            )?,
        )?;
        for chunk in 0..self.services.div_ceil(1000) {
            let mut f = std::io::BufWriter::new(std::fs::File::create(
                dir.join(format!("services-{chunk:04}.json")),
            )?);
            let items: Vec<serde_json::Value> = (chunk * 1000
                ..((chunk + 1) * 1000).min(self.services))
                .flat_map(|i| [self.service_json(i), self.slice_json(i, None)])
                .collect();
            serde_json::to_writer(
                &mut f,
                &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}),
            )?;
            f.flush()?;
        }
        Ok(())
    }
}

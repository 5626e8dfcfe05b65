//! The manifests directory the agent reads in standalone mode: a private temp directory,
//! atomic writes of Kubernetes objects (one file per object), and the objects every
//! sandboxed node needs — its `Node` (`test-node`) and a `ProxyConfig`.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use anyhow::{Context, Result};
use serde_yaml::{Mapping, Value};

use crate::sandbox::{NODE_IP, NODE_IP6, NODE_NAME};

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A directory of manifests owned by the test; removed on drop unless
/// `SWITCHYARD_E2E_KEEP=1`.
#[derive(Debug)]
pub struct ManifestDir {
    path: PathBuf,
}

impl ManifestDir {
    /// A fresh empty directory under the system temp dir.
    pub fn new_temp(tag: &str) -> Result<ManifestDir> {
        let n = NEXT_DIR.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("sye-{}-{n}-{tag}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(ManifestDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `text` to `file_name` atomically (temp file + rename, so the agent never sees
    /// half a file).
    pub fn write_text(&self, file_name: &str, text: &str) -> Result<PathBuf> {
        let target = self.path.join(file_name);
        let tmp = self.path.join(format!(".{file_name}.tmp"));
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &target)
            .with_context(|| format!("renaming to {}", target.display()))?;
        Ok(target)
    }

    /// Writes one object as YAML into `file_name`.
    pub fn write_object(&self, file_name: &str, object: &Value) -> Result<PathBuf> {
        self.write_text(file_name, &serde_yaml::to_string(object)?)
    }

    /// Writes one object into a file named after it (see [`file_name_for`]).
    pub fn write(&self, object: &Value) -> Result<PathBuf> {
        self.write_object(&file_name_for(object), object)
    }

    pub fn remove(&self, file_name: &str) -> Result<()> {
        let p = self.path.join(file_name);
        std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))
    }
}

impl Drop for ManifestDir {
    fn drop(&mut self) {
        if std::env::var("SWITCHYARD_E2E_KEEP").as_deref() != Ok("1") {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// `<kind>-<namespace>-<name>.yaml`, lower case (namespace omitted for cluster objects).
pub fn file_name_for(object: &Value) -> String {
    let kind = object["kind"]
        .as_str()
        .unwrap_or("object")
        .to_ascii_lowercase();
    let meta = &object["metadata"];
    let name = meta["name"].as_str().unwrap_or("unnamed");
    let base = match meta["namespace"].as_str() {
        Some(ns) => format!("{kind}-{ns}-{name}"),
        None => format!("{kind}-{name}"),
    };
    let safe: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.yaml")
}

/// The sandboxed node's `Node` object: InternalIPs 192.168.0.2 and 2001:db8::1, podCIDRs
/// 10.0.0.0/8 and fd00:10::/32, zone `zone-a`.
pub fn node_object() -> Value {
    yaml(&format!(
        r#"
apiVersion: v1
kind: Node
metadata:
  name: {NODE_NAME}
  labels:
    kubernetes.io/hostname: {NODE_NAME}
    topology.kubernetes.io/zone: zone-a
spec:
  podCIDR: 10.0.0.0/8
  podCIDRs: [10.0.0.0/8, "fd00:10::/32"]
status:
  addresses:
  - {{type: InternalIP, address: {NODE_IP}}}
  - {{type: InternalIP, address: "{NODE_IP6}"}}
  - {{type: Hostname, address: {NODE_NAME}}}
"#
    ))
}

/// A `ProxyConfig` for the sandbox: the given mode, both cluster CIDRs, a 5 s sync period
/// and 100 ms minimum, then `overrides` (a scenario's `config`) on top.
pub fn proxy_config(mode: &str, overrides: &Mapping) -> Value {
    let mut config = yaml(&format!(
        r#"
apiVersion: switchyard.dev/v1alpha1
kind: ProxyConfig
metadata:
  name: sandbox
spec:
  mode: {mode}
  clusterCIDRs: [10.0.0.0/8, "fd00:10::/32"]
  syncPeriod: 5s
  minSyncPeriod: 100ms
"#
    ));
    if let Some(spec) = config["spec"].as_mapping_mut() {
        for (k, v) in overrides {
            spec.insert(k.clone(), v.clone());
        }
    }
    config
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).expect("built-in manifest is valid YAML")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_spec_fields() {
        let mut o = Mapping::new();
        o.insert("nodePortAddresses".into(), vec!["192.168.0.0/24"].into());
        o.insert("minSyncPeriod".into(), "1s".into());
        let pc = proxy_config("nftables", &o);
        assert_eq!(pc["spec"]["mode"], "nftables");
        assert_eq!(pc["spec"]["minSyncPeriod"], "1s");
        assert_eq!(pc["spec"]["nodePortAddresses"][0], "192.168.0.0/24");
        assert_eq!(file_name_for(&pc), "proxyconfig-sandbox.yaml");
        assert_eq!(file_name_for(&node_object()), "node-test-node.yaml");
        assert_eq!(
            node_object()["status"]["addresses"][1]["address"],
            "2001:db8::1"
        );
    }
}

/// One port of a test Service: its name, port, protocol (`TCP`/`UDP`) and the pods'
/// port (the targetPort, and the EndpointSlice port).
#[derive(Clone, Copy, Debug)]
pub struct TestPort {
    pub name: &'static str,
    pub port: u16,
    pub protocol: &'static str,
    pub target: u16,
}

/// `e2e/<name>`: a one-port ClusterIP Service at `vip`.
pub fn cluster_ip_service(name: &str, vip: &str, p: TestPort) -> Value {
    yaml(&format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{namespace: e2e, name: {name}}}
spec:
  type: ClusterIP
  clusterIP: {vip}
  clusterIPs: [{vip}]
  ipFamilies: [IPv4]
  selector: {{app: {name}}}
  ports:
  - {{name: {}, port: {}, protocol: {}, targetPort: {}}}
"#,
        p.name, p.port, p.protocol, p.target
    ))
}

/// The EndpointSlice `e2e/<service>-1` of that Service: the given pods, ready, on
/// `test-node` (an empty list is a Service with no endpoints).
pub fn ready_slice(service: &str, p: TestPort, ips: &[&str]) -> Value {
    let endpoints: String = ips
        .iter()
        .map(|ip| {
            format!(
                "\n- addresses: [{ip}]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  nodeName: {NODE_NAME}"
            )
        })
        .collect();
    let endpoints = if endpoints.is_empty() {
        " []".to_string()
    } else {
        endpoints
    };
    yaml(&format!(
        r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  namespace: e2e
  name: {service}-1
  labels: {{kubernetes.io/service-name: {service}}}
addressType: IPv4
ports:
- {{name: {}, port: {}, protocol: {}}}
endpoints:{endpoints}
"#,
        p.name, p.target, p.protocol
    ))
}

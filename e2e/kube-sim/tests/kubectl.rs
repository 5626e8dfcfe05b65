//! kubectl 1.32 against the simulator: discovery, apply (client- and server-side), get with
//! server-side Table printing (built-in and CRD printer columns), patch, edit, delete, diff.
//! kubectl is found as `common::kubectl` says (skipped without it, failing under CI=true).

mod common;

use common::kubectl::{binary, kubectl_sync, Kubectl};

fn header(out: &str) -> Vec<String> {
    out.lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(String::from)
        .collect()
}

fn row<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    out.lines()
        .find(|l| l.split_whitespace().any(|w| w == name))
        .unwrap_or_else(|| panic!("no row {name} in:\n{out}"))
        .split_whitespace()
        .collect()
}

const NODE: &str = "apiVersion: v1
kind: Node
metadata:
  name: test-node
  labels: {topology.kubernetes.io/zone: zone-a}
spec:
  podCIDR: 10.0.0.0/8
status:
  addresses: [{type: InternalIP, address: 192.168.0.2}]
  conditions: [{type: Ready, status: \"True\"}]
  nodeInfo: {kubeletVersion: v1.32.0}
";

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
";

#[tokio::test]
async fn nodes_services_apply_get_delete() {
    let Some(k) = Kubectl::start("svc").await else {
        return;
    };
    k.ok(&["version"]).await;
    let node = k.file("node.yaml", NODE);
    k.ok(&["apply", "-f", &node]).await;
    let out = k.ok(&["get", "nodes"]).await;
    assert_eq!(header(&out), ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]);
    assert_eq!(row(&out, "test-node")[1], "Ready");

    let ns = k.file(
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
    );
    k.ok(&["apply", "-f", &ns]).await;
    let svc = k.file("svc.yaml", SERVICE);
    let out = k.ok(&["apply", "-f", &svc]).await;
    assert!(out.contains("service/web created"), "{out}");
    let out = k.ok(&["apply", "-f", &svc]).await;
    assert!(out.contains("service/web unchanged"), "{out}");
    let svc2 = k.file("svc2.yaml", &SERVICE.replace("8080", "9090"));
    let out = k.ok(&["apply", "-f", &svc2]).await;
    assert!(out.contains("service/web configured"), "{out}");
    assert_eq!(
        k.ok(&[
            "get",
            "svc",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.ports[0].targetPort}"
        ])
        .await,
        "9090"
    );

    let out = k.ok(&["get", "svc", "-A"]).await;
    assert_eq!(
        header(&out),
        [
            "NAMESPACE",
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    let r = row(&out, "web");
    assert_eq!(&r[..3], ["shop", "web", "ClusterIP"]);
    assert!(r[3].starts_with("10.96."), "{out}");
    assert_eq!(r[5], "80/TCP");

    let out = k
        .ok(&["get", "svc", "-n", "shop", "-l", "app=web", "-o", "name"])
        .await;
    assert_eq!(out.trim(), "service/web");
    let out = k
        .ok(&["get", "svc", "-n", "shop", "-l", "app!=web", "-o", "name"])
        .await;
    assert_eq!(out.trim(), "");

    // Server-side apply and typed-client creates (protobuf bodies).
    let out = k.ok(&["apply", "--server-side", "-f", &svc]).await;
    assert!(out.contains("serverside-applied"), "{out}");
    k.ok(&["create", "namespace", "team-a"]).await;
    assert!(k.ok(&["get", "ns"]).await.contains("team-a"));

    let out = k.ok(&["delete", "svc", "web", "-n", "shop"]).await;
    assert!(out.contains("service \"web\" deleted"), "{out}");
    let (ok, out, err) = k.run(&["get", "svc", "-A"]).await;
    assert!(
        ok && out.is_empty() && err.contains("No resources found"),
        "{out}{err}"
    );
    let (ok, _, err) = k.run(&["get", "svc", "web", "-n", "shop"]).await;
    assert!(!ok && err.contains("NotFound"), "{err}");
}

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: proxyconfigs.switchyard.dev
spec:
  group: switchyard.dev
  names: {kind: ProxyConfig, plural: proxyconfigs, singular: proxyconfig, shortNames: [pxc]}
  scope: Cluster
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {jsonPath: .spec.mode, name: Mode, type: string}
    - {jsonPath: .status.nodesReady, name: Ready, type: integer}
    - {jsonPath: '.status.conditions[?(@.type=="FallbackActive")].status', name: Fallback, type: string}
    - {jsonPath: .metadata.creationTimestamp, name: Age, type: date}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              mode: {type: string, enum: [iptables, nftables, ipvs, ebpf, auto]}
              priority: {type: integer}
          status:
            type: object
            x-kubernetes-preserve-unknown-fields: true
"#;

const PXC: &str = "apiVersion: switchyard.dev/v1alpha1
kind: ProxyConfig
metadata: {name: default}
spec: {mode: nftables, priority: 10}
";

#[tokio::test]
async fn crd_printer_columns_patch_edit() {
    let Some(k) = Kubectl::start("crd").await else {
        return;
    };
    let crd = k.file("crd.yaml", CRD);
    k.ok(&["apply", "-f", &crd]).await;
    k.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/proxyconfigs.switchyard.dev",
        "--timeout=10s",
    ])
    .await;
    assert!(k.ok(&["api-resources"]).await.contains("proxyconfigs"));
    let pxc = k.file("pxc.yaml", PXC);
    k.ok(&["apply", "-f", &pxc]).await;
    k.ok(&[
        "patch",
        "proxyconfig",
        "default",
        "--subresource",
        "status",
        "--type",
        "merge",
        "-p",
        r#"{"status":{"nodesReady":2,"conditions":[{"type":"FallbackActive","status":"False"}]}}"#,
    ])
    .await;

    for args in [
        &["get", "proxyconfigs"][..],
        &["get", "pxc"],
        &["get", "proxyconfig.switchyard.dev"],
    ] {
        let out = k.ok(args).await;
        assert_eq!(
            header(&out),
            ["NAME", "MODE", "READY", "FALLBACK", "AGE"],
            "{out}"
        );
        let r = row(&out, "default");
        assert_eq!(&r[..4], ["default", "nftables", "2", "False"], "{out}");
        assert!(r[4].ends_with('s'), "{out}");
    }

    let yaml = k.ok(&["get", "ProxyConfig", "default", "-o", "yaml"]).await;
    assert!(
        yaml.contains("kind: ProxyConfig") && yaml.contains("mode: nftables"),
        "{yaml}"
    );
    assert!(yaml.contains("nodesReady: 2"), "{yaml}");

    let out = k
        .ok(&[
            "patch",
            "pxc",
            "default",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"mode":"iptables"}}"#,
        ])
        .await;
    assert!(out.contains("patched"), "{out}");
    assert_eq!(
        k.ok(&["get", "pxc", "default", "-o", "jsonpath={.spec.mode}"])
            .await,
        "iptables"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "pxc",
            "default",
            "-o",
            "jsonpath={.metadata.generation}"
        ])
        .await,
        "2"
    );

    let (ok, _, err) = k
        .run(&[
            "patch",
            "pxc",
            "default",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"mode":"bogus"}}"#,
        ])
        .await;
    assert!(
        !ok && err.contains("spec.mode") && err.contains("Unsupported value"),
        "{err}"
    );

    let out = k
        .ok(&[
            "patch",
            "pxc",
            "default",
            "--type",
            "json",
            "-p",
            r#"[{"op":"replace","path":"/spec/priority","value":20}]"#,
        ])
        .await;
    assert!(out.contains("patched"), "{out}");

    let (ok, out, err) = k
        .run_env(
            &["edit", "pxc", "default"],
            &[("EDITOR", "sed -i s/iptables/ipvs/"), ("KUBE_EDITOR", "")],
        )
        .await;
    assert!(ok, "{out}{err}");
    assert_eq!(
        k.ok(&["get", "pxc", "default", "-o", "jsonpath={.spec.mode}"])
            .await,
        "ipvs"
    );

    let pxc2 = k.file("pxc2.yaml", &PXC.replace("nftables", "ebpf"));
    let (_, diff, _) = k.run(&["diff", "-f", &pxc2]).await;
    assert!(diff.contains("+  mode: ebpf"), "{diff}");
    assert_eq!(
        k.ok(&["get", "pxc", "default", "-o", "jsonpath={.spec.mode}"])
            .await,
        "ipvs",
        "diff is a dry run"
    );

    let out = k.ok(&["delete", "-f", &pxc]).await;
    assert!(out.contains("deleted"), "{out}");
    k.ok(&["delete", "crd", "proxyconfigs.switchyard.dev"])
        .await;
    let (ok, _, err) = k.run(&["get", "pxc"]).await;
    // kubectl's discovery cache may still name the type; either way the API is gone.
    assert!(
        !ok && (err.contains("doesn't have a resource type") || err.contains("NotFound")),
        "{err}"
    );
}

/// The background (sync) handle: serves kubectl without a caller runtime; stop/restart.
#[test]
fn background_sim_stop_restart() {
    let Some(bin) = binary() else {
        return;
    };
    let mut sim = switchyard_kube_sim::BackgroundKubeSim::start().unwrap();
    let dir = std::env::temp_dir().join(format!("kube-sim-bg-{}", sim.port()));
    std::fs::create_dir_all(&dir).unwrap();
    let kc = dir.join("kubeconfig");
    sim.write_kubeconfig(&kc).unwrap();
    sim.apply_yaml(NODE).unwrap();
    let (ok, out) = kubectl_sync(&bin, &kc, &["get", "nodes", "-o", "name"]);
    assert!(ok && out.contains("node/test-node"), "{out}");
    sim.stop();
    let (ok, _) = kubectl_sync(&bin, &kc, &["get", "nodes", "--request-timeout=2s"]);
    assert!(!ok, "stopped simulator answers nothing");
    sim.restart().unwrap();
    let (ok, out) = kubectl_sync(&bin, &kc, &["get", "nodes", "-o", "name"]);
    assert!(ok && out.contains("node/test-node"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `kube-sim` binary: `--port`, `--kubeconfig`, `--load`.
#[test]
fn binary_serves_kubectl() {
    let Some(bin) = binary() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("kube-sim-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kc = dir.join("kubeconfig");
    let objects = dir.join("objects.yaml");
    std::fs::write(&objects, format!("{NODE}---\n{SERVICE}")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kube-sim"))
        .args(["--port", "0", "--kubeconfig"])
        .arg(&kc)
        .arg("--load")
        .arg(&objects)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if kc.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (ok, out) = kubectl_sync(&bin, &kc, &["get", "svc", "-A", "-o", "name"]);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok && out.contains("service/web"), "{out}");
}

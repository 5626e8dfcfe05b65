//! HTTP-level tests of the simulator: verbs, patches, apply, status subresources, watches,
//! selectors, discovery and Table output.

mod common;

use std::time::Duration;

use common::Http;
use serde_json::{json, Value};
use switchyard_kube_sim::{KubeSim, Options};

const SVCS: &str = "/api/v1/namespaces/default/services";

fn svc(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
}

async fn sim() -> (KubeSim, Http) {
    let s = KubeSim::start_with(
        0,
        Options {
            history: 1000,
            bookmark_interval: Duration::from_millis(200),
        },
    )
    .await
    .unwrap();
    let h = Http::new(s.url());
    (s, h)
}

#[tokio::test]
async fn crud_and_conflicts() {
    let (_s, h) = sim().await;
    let (code, created) = h.post(SVCS, &svc("web", json!({"app": "web"}))).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["metadata"]["namespace"], "default");
    assert!(created["metadata"]["uid"].as_str().unwrap().len() == 36);
    assert_eq!(created["metadata"]["generation"], 1);
    assert!(created["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .starts_with("10.96."));
    assert_eq!(created["spec"]["ports"][0]["protocol"], "TCP");

    let (code, e) = h.post(SVCS, &svc("web", json!({}))).await;
    assert_eq!((code, e["reason"].as_str()), (409, Some("AlreadyExists")));

    let (code, got) = h.get(&format!("{SVCS}/web")).await;
    assert_eq!(code, 200);
    assert_eq!(got, created);

    let (code, e) = h.get(&format!("{SVCS}/nope")).await;
    assert_eq!((code, e["reason"].as_str()), (404, Some("NotFound")));
    assert_eq!(e["kind"], "Status");
    assert_eq!(e["details"]["name"], "nope");

    // Update with the current resourceVersion works and bumps generation; a stale one conflicts.
    let mut upd = got.clone();
    upd["spec"]["ports"][0]["port"] = json!(81);
    let (code, updated) = h.put(&format!("{SVCS}/web"), &upd).await;
    assert_eq!(code, 200, "{updated}");
    assert_eq!(updated["metadata"]["generation"], 2);
    assert_ne!(
        updated["metadata"]["resourceVersion"],
        got["metadata"]["resourceVersion"]
    );
    let (code, e) = h.put(&format!("{SVCS}/web"), &upd).await;
    assert_eq!((code, e["reason"].as_str()), (409, Some("Conflict")));

    // Not an object: 422.
    let (code, e) = h.put(&format!("{SVCS}/web"), &json!([1, 2])).await;
    assert_eq!(code, 422, "{e}");

    // List (namespaced and across namespaces).
    h.post(
        "/api/v1/namespaces/other/services",
        &svc("db", json!({"app": "db"})),
    )
    .await;
    let (code, list) = h.get(SVCS).await;
    assert_eq!(code, 200);
    assert_eq!(list["kind"], "ServiceList");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["kind"], "Service");
    assert_eq!(list["items"][0]["apiVersion"], "v1");
    let (_, all) = h.get("/api/v1/services").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    assert!(all["metadata"]["resourceVersion"].as_str().is_some());

    // Delete returns the object; then it is gone.
    let (code, d) = h.delete(&format!("{SVCS}/web")).await;
    assert_eq!((code, d["metadata"]["name"].as_str()), (200, Some("web")));
    assert_eq!(h.get(&format!("{SVCS}/web")).await.0, 404);
    assert_eq!(h.delete(&format!("{SVCS}/web")).await.0, 404);

    // generateName, 405.
    let (code, g) = h
        .post(
            "/api/v1/nodes",
            &json!({"metadata": {"generateName": "node-"}}),
        )
        .await;
    assert_eq!(code, 201);
    assert!(g["metadata"]["name"].as_str().unwrap().starts_with("node-"));
    assert_eq!(g["metadata"].get("namespace"), None);
    assert_eq!(
        h.request(
            "POST",
            &format!("{SVCS}/x"),
            "application/json",
            Some(&json!({}))
        )
        .await
        .0,
        405
    );
}

#[tokio::test]
async fn patches_and_apply() {
    let (_s, h) = sim().await;
    h.post(SVCS, &svc("web", json!({"app": "web", "tier": "fe"})))
        .await;
    let path = format!("{SVCS}/web");

    let (code, p) = h
        .patch(
            &path,
            "application/merge-patch+json",
            &json!({"metadata": {"labels": {"tier": null, "x": "y"}}}),
        )
        .await;
    assert_eq!(code, 200, "{p}");
    assert_eq!(p["metadata"]["labels"], json!({"app": "web", "x": "y"}));
    assert_eq!(
        p["metadata"]["generation"], 1,
        "metadata changes do not bump generation"
    );

    let (_, p) = h
        .patch(
            &path,
            "application/strategic-merge-patch+json",
            &json!({"spec": {"ports": [{"port": 443, "name": "https"}]}}),
        )
        .await;
    assert_eq!(
        p["spec"]["ports"].as_array().unwrap().len(),
        2,
        "merged by key"
    );

    let (code, p) = h
        .patch(
            &path,
            "application/json-patch+json",
            &json!([{"op": "replace", "path": "/spec/selector/app", "value": "web2"}]),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(p["spec"]["selector"]["app"], "web2");

    // Patch of a missing object: 404; apply creates it, then merges.
    let missing = format!("{SVCS}/applied");
    assert_eq!(
        h.patch(&missing, "application/merge-patch+json", &json!({}))
            .await
            .0,
        404
    );
    let (code, a) = h
        .patch(
            &format!("{missing}?fieldManager=test&force=true"),
            "application/apply-patch+yaml",
            &svc("applied", json!({"a": "1"})),
        )
        .await;
    assert_eq!(code, 201, "{a}");
    let (code, a) = h
        .patch(
            &format!("{missing}?fieldManager=other&force=true"),
            "application/apply-patch+yaml",
            &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "applied", "labels": {"b": "2"}}}),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(a["metadata"]["labels"], json!({"a": "1", "b": "2"}));
    assert_eq!(a["spec"]["ports"][0]["port"], 80);

    // YAML apply body.
    let yaml = "apiVersion: v1\nkind: Service\nmetadata:\n  name: applied\n  labels:\n    c: '3'\n";
    let (code, _) = h
        .request(
            "PATCH",
            &missing,
            "application/apply-patch+yaml",
            Some(&serde_yaml::from_str::<Value>(yaml).unwrap()),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(h.patch(&missing, "text/plain", &json!({})).await.0, 415);
}

#[tokio::test]
async fn status_subresource_isolation() {
    let (_s, h) = sim().await;
    let mut s = svc("lb", json!({}));
    s["spec"]["type"] = json!("LoadBalancer");
    s["status"] = json!({"loadBalancer": {"ingress": [{"ip": "1.1.1.1"}]}});
    let (_, created) = h.post(SVCS, &s).await;
    assert!(created["spec"]["ports"][0]["nodePort"].as_i64().unwrap() >= 30000);
    let path = format!("{SVCS}/lb");

    // Main resource ignores status.
    let (_, p) = h
        .patch(
            &path,
            "application/merge-patch+json",
            &json!({"status": {"loadBalancer": {"ingress": [{"ip": "9.9.9.9"}]}}}),
        )
        .await;
    assert_ne!(p["status"]["loadBalancer"]["ingress"][0]["ip"], "9.9.9.9");

    // Status subresource changes only status.
    let (code, p) = h
        .patch(
            &format!("{path}/status"),
            "application/merge-patch+json",
            &json!({"spec": {"type": "ClusterIP"}, "status": {"loadBalancer": {"ingress": [{"ip": "2.2.2.2"}]}}}),
        )
        .await;
    assert_eq!(code, 200, "{p}");
    assert_eq!(p["status"]["loadBalancer"]["ingress"][0]["ip"], "2.2.2.2");
    assert_eq!(p["spec"]["type"], "LoadBalancer");
    assert_eq!(p["metadata"]["generation"], 1);

    let mut put = p.clone();
    put["status"] = json!({"loadBalancer": {}});
    put["spec"]["type"] = json!("NodePort");
    let (code, q) = h.put(&format!("{path}/status"), &put).await;
    assert_eq!(code, 200);
    assert_eq!(q["status"], json!({"loadBalancer": {}}));
    assert_eq!(q["spec"]["type"], "LoadBalancer");
}

fn names(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn selectors() {
    let (_s, h) = sim().await;
    h.post(SVCS, &svc("a", json!({"app": "x", "tier": "fe"})))
        .await;
    h.post(SVCS, &svc("b", json!({"app": "y"}))).await;
    h.post(SVCS, &svc("c", json!({"app": "z", "tier": "be"})))
        .await;
    for (q, want) in [
        ("labelSelector=app%3Dx", vec!["a"]),
        ("labelSelector=app%3D%3Dy", vec!["b"]),
        ("labelSelector=app!%3Dx", vec!["b", "c"]),
        ("labelSelector=app+in+(x,z)", vec!["a", "c"]),
        ("labelSelector=app%20notin%20(x,z)", vec!["b"]),
        ("labelSelector=tier", vec!["a", "c"]),
        ("labelSelector=!tier", vec!["b"]),
        ("fieldSelector=metadata.name%3Db", vec!["b"]),
        ("fieldSelector=metadata.name!%3Db", vec!["a", "c"]),
        (
            "fieldSelector=metadata.namespace%3Ddefault,metadata.name%3Dc",
            vec!["c"],
        ),
        ("fieldSelector=metadata.namespace%3Dother", vec![]),
    ] {
        let (code, l) = h.get(&format!("{SVCS}?{q}")).await;
        assert_eq!(code, 200, "{q}");
        assert_eq!(names(&l), want, "{q}");
    }
}

#[tokio::test]
async fn watch_from_resource_version() {
    let (s, h) = sim().await;
    let (_, list) = h.get(SVCS).await;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    h.post(SVCS, &svc("w", json!({"app": "w"}))).await;
    h.patch(
        &format!("{SVCS}/w"),
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {"v": "2"}}}),
    )
    .await;
    h.delete(&format!("{SVCS}/w")).await;

    let mut w = h
        .watch(&format!("{SVCS}?watch=true&resourceVersion={rv}"))
        .await;
    let types: Vec<String> = [w.next().await, w.next().await, w.next().await]
        .into_iter()
        .map(|e| e.unwrap()["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, ["ADDED", "MODIFIED", "DELETED"]);

    // Live events follow.
    h.post(SVCS, &svc("live", json!({}))).await;
    let e = w.next().await.unwrap();
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("live"))
    );
    assert_eq!(e["object"]["kind"], "Service");

    // A watch without resourceVersion starts with the current objects.
    let mut w0 = h.watch(&format!("{SVCS}?watch=1")).await;
    let e = w0.next().await.unwrap();
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("live"))
    );

    // Expired resourceVersion: an ERROR event with 410.
    s.compact_history();
    let mut old = h
        .watch(&format!("{SVCS}?watch=true&resourceVersion={rv}"))
        .await;
    let e = old.next().await.unwrap();
    assert_eq!(e["type"], "ERROR");
    assert_eq!(e["object"]["code"], 410);
    assert_eq!(e["object"]["reason"], "Expired");
    assert!(old.next().await.is_none(), "stream ends after the error");
}

#[tokio::test]
async fn watch_bookmarks_timeout_selectors_initial_events() {
    let (s, h) = sim().await;
    h.post(SVCS, &svc("pre", json!({"app": "pre"}))).await;
    let rv = s.resource_version();
    let mut w = h
        .watch(&format!(
            "{SVCS}?watch=true&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=2"
        ))
        .await;
    let b = w.next().await.unwrap();
    assert_eq!(b["type"], "BOOKMARK");
    assert_eq!(b["object"]["metadata"]["resourceVersion"], rv.to_string());
    assert_eq!(b["object"]["kind"], "Service");
    let start = std::time::Instant::now();
    while w.next().await.is_some() {}
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "timeoutSeconds ends the stream"
    );

    // Selector-filtered watch: leaving the selection is a DELETED, entering an ADDED.
    let mut w = h
        .watch(&format!(
            "{SVCS}?watch=true&resourceVersion={rv}&labelSelector=app%3Dsel"
        ))
        .await;
    h.post(SVCS, &svc("other", json!({"app": "other"}))).await;
    h.post(SVCS, &svc("sel", json!({"app": "sel"}))).await;
    h.patch(
        &format!("{SVCS}/sel"),
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {"app": "gone"}}}),
    )
    .await;
    h.patch(
        &format!("{SVCS}/other"),
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {"app": "sel"}}}),
    )
    .await;
    let got: Vec<(String, String)> = [w.next().await, w.next().await, w.next().await]
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            (
                e["type"].as_str().unwrap().into(),
                e["object"]["metadata"]["name"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("ADDED".into(), "sel".into()),
            ("DELETED".into(), "sel".into()),
            ("ADDED".into(), "other".into())
        ]
    );

    // Streaming list: ADDED for each current object, then the initial-events-end bookmark.
    let mut w = h
        .watch(&format!("{SVCS}?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"))
        .await;
    let mut added = Vec::new();
    loop {
        let e = w.next().await.unwrap();
        if e["type"] == "BOOKMARK" {
            assert_eq!(
                e["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
                "true"
            );
            break;
        }
        added.push(
            e["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    added.sort();
    assert_eq!(added, ["other", "pre", "sel"]);
}

#[tokio::test]
async fn outage_and_restart() {
    let (mut s, h) = sim().await;
    let mut w = h.watch(&format!("{SVCS}?watch=true")).await;
    s.pause_for(Duration::from_millis(500));
    assert!(w.next().await.is_none(), "watches end on an outage");
    assert_eq!(h.get(SVCS).await.0, 503);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(h.get(SVCS).await.0, 200);

    s.stop();
    assert!(
        tokio::net::TcpStream::connect(h.base.trim_start_matches("http://"))
            .await
            .is_err()
    );
    s.restart().await.unwrap();
    assert_eq!(h.get(SVCS).await.0, 200);
}

#[tokio::test]
async fn discovery_and_crds() {
    let (_s, h) = sim().await;
    let (_, v) = h.get("/version").await;
    assert_eq!(v["major"], "1");
    let (_, api) = h.get("/api").await;
    assert_eq!(api["versions"], json!(["v1"]));
    let (_, core) = h.get("/api/v1").await;
    let res: Vec<&str> = core["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for want in [
        "services",
        "services/status",
        "nodes",
        "nodes/status",
        "namespaces",
        "events",
    ] {
        assert!(res.contains(&want), "{want} in {res:?}");
    }
    let (_, groups) = h.get("/apis").await;
    let gnames: Vec<&str> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    for want in [
        "discovery.k8s.io",
        "coordination.k8s.io",
        "events.k8s.io",
        "apiextensions.k8s.io",
    ] {
        assert!(gnames.contains(&want));
    }

    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
                    {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "required": ["mode"], "properties": {"mode": {"type": "string", "enum": ["fast", "slow"]}}},
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}]}});
    let (code, c) = h
        .post(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            &crd,
        )
        .await;
    assert_eq!(code, 201, "{c}");
    assert_eq!(c["status"]["conditions"][1]["type"], "Established");
    let (_, groups) = h.get("/apis").await;
    assert!(groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["name"] == "example.com"));
    let (code, rl) = h.get("/apis/example.com/v1").await;
    assert_eq!(code, 200);
    assert_eq!(rl["resources"][0]["shortNames"], json!(["wd"]));
    assert_eq!(rl["resources"][1]["name"], "widgets/status");

    let base = "/apis/example.com/v1/namespaces/default/widgets";
    let w = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"mode": "fast"}});
    assert_eq!(h.post(base, &w).await.0, 201);
    let (code, e) = h
        .post(base, &json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w2"}, "spec": {"mode": "bogus"}}))
        .await;
    assert_eq!(code, 422, "{e}");
    assert_eq!(e["details"]["causes"][0]["field"], "spec.mode");
    h.patch(
        &format!("{base}/w1/status"),
        "application/merge-patch+json",
        &json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
    )
    .await;

    let (code, t) = h
        .request_accept(
            "GET",
            base,
            "application/json",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            None,
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(t["kind"], "Table");
    let cols: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, ["Name", "Mode", "Ready", "Age"]);
    assert_eq!(
        t["rows"][0]["cells"].as_array().unwrap()[0..3],
        [json!("w1"), json!("fast"), json!("True")]
    );
    assert!(t["rows"][0]["cells"][3].as_str().unwrap().ends_with('s'));
    assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");

    // Deleting the CRD removes its objects and its API.
    assert_eq!(
        h.delete("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com")
            .await
            .0,
        200
    );
    assert_eq!(h.get(base).await.0, 404);
}

#[tokio::test]
async fn finalizers_and_owner_cleanup() {
    let (_s, h) = sim().await;
    let (_, node) = h
        .post("/api/v1/nodes", &json!({"metadata": {"name": "n1"}}))
        .await;
    let lease = json!({"metadata": {"name": "l1", "finalizers": ["x/y"],
        "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": node["metadata"]["uid"]}]},
        "spec": {"holderIdentity": "me"}});
    let leases = "/apis/coordination.k8s.io/v1/namespaces/default/leases";
    assert_eq!(h.post(leases, &lease).await.0, 201);
    h.post(leases, &json!({"metadata": {"name": "l2", "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": node["metadata"]["uid"]}]}})).await;
    h.delete("/api/v1/nodes/n1").await;
    assert_eq!(
        h.get(&format!("{leases}/l2")).await.0,
        404,
        "owned object collected"
    );
    let (code, l1) = h.get(&format!("{leases}/l1")).await;
    assert_eq!(code, 200, "finalizer holds it");
    assert!(l1["metadata"]["deletionTimestamp"].is_string());
    h.patch(
        &format!("{leases}/l1"),
        "application/merge-patch+json",
        &json!({"metadata": {"finalizers": null}}),
    )
    .await;
    assert_eq!(h.get(&format!("{leases}/l1")).await.0, 404);
}

#[tokio::test]
async fn server_side_apply_field_ownership() {
    let (_s, h) = sim().await;
    let path = |m: &str| format!("{SVCS}/owned?fieldManager={m}&force=true");
    let apply = |labels: Value| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "owned", "labels": labels},
            "spec": {"ports": [{"port": 80}]}})
    };
    let ct = "application/apply-patch+yaml";
    assert_eq!(
        h.patch(&path("m1"), ct, &apply(json!({"a": "1", "b": "2"})))
            .await
            .0,
        201
    );
    h.patch(
        &path("m2"),
        ct,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "owned", "labels": {"c": "3"}}}),
    )
    .await;
    let (_, o) = h.patch(&path("m1"), ct, &apply(json!({"a": "1"}))).await;
    assert_eq!(
        o["metadata"]["labels"],
        json!({"a": "1", "c": "3"}),
        "m1 dropped b; c is m2's"
    );
    assert_eq!(o["spec"]["ports"][0]["port"], 80);

    // Status applies are tracked separately from the main resource's.
    let status_path = format!("{SVCS}/owned/status?fieldManager=m1&force=true");
    let (code, o) = h
        .patch(
            &status_path,
            ct,
            &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "owned"},
                "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}, "conditions": []}}),
        )
        .await;
    assert_eq!(code, 200, "{o}");
    assert_eq!(o["status"]["loadBalancer"]["ingress"][0]["ip"], "1.2.3.4");
    let (_, o) = h
        .patch(
            &status_path,
            ct,
            &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "owned"},
                "status": {"loadBalancer": {}}}),
        )
        .await;
    assert_eq!(o["status"], json!({"loadBalancer": {}}), "{o}");
    let (_, o) = h.patch(&path("m1"), ct, &apply(json!({"a": "1"}))).await;
    assert_eq!(
        o["status"],
        json!({"loadBalancer": {}}),
        "main apply leaves status alone"
    );
}

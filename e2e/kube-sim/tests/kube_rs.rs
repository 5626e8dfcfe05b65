//! kube-rs client tests: lists, reflectors (including relists after 410 and outages),
//! CRD registration, server-side apply of spec and status, optimistic concurrency on Leases.

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{conditions, reflector, wait::await_condition, watcher, WatchStreamExt};
use kube::{Client, CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;
use switchyard_kube_sim::{KubeSim, Options};

async fn sim() -> (KubeSim, Client) {
    let s = KubeSim::start_with(
        0,
        Options {
            history: 1000,
            bookmark_interval: Duration::from_millis(300),
        },
    )
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("kube-sim-kubeconfig-{}", s.port()));
    s.write_kubeconfig(&dir).unwrap();
    let kc = kube::config::Kubeconfig::read_from(&dir).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let _ = std::fs::remove_file(&dir);
    let client = Client::try_from(cfg).unwrap();
    (s, client)
}

fn service(name: &str) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"ports": [{"port": 80}]}
    }))
    .unwrap()
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn list_create_get_delete() {
    let (_s, client) = sim().await;
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &service("a"))
        .await
        .unwrap();
    api.create(&PostParams::default(), &service("b"))
        .await
        .unwrap();
    let err = api
        .create(&PostParams::default(), &service("a"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err:?}"
    );
    let list = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 2);
    assert!(list.metadata.resource_version.is_some());
    let sel = api
        .list(&ListParams::default().labels("app=b"))
        .await
        .unwrap();
    assert_eq!(
        sel.items.iter().map(|s| s.name_any()).collect::<Vec<_>>(),
        ["b"]
    );
    let all: Api<Service> = Api::all(client);
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        2
    );
    let got = api.get("a").await.unwrap();
    assert!(got.spec.unwrap().cluster_ip.unwrap().starts_with("10.96."));
    api.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(api.get_opt("a").await.unwrap().is_none());
}

#[tokio::test]
async fn reflector_converges_through_outages_and_expiry() {
    let (s, client) = sim().await;
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    for n in ["a", "b", "c"] {
        api.create(&PostParams::default(), &service(n))
            .await
            .unwrap();
    }
    let (reader, writer) = reflector::store::<Service>();
    let stream = reflector(
        writer,
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff(),
    )
    .applied_objects();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    reader.wait_until_ready().await.unwrap();
    let names = |r: &reflector::Store<Service>| {
        let mut v: Vec<String> = r.state().iter().map(|s| s.name_any()).collect();
        v.sort();
        v
    };
    eventually("initial list", || names(&reader) == ["a", "b", "c"]).await;

    api.create(&PostParams::default(), &service("d"))
        .await
        .unwrap();
    api.delete("a", &DeleteParams::default()).await.unwrap();
    eventually("create+delete", || names(&reader) == ["b", "c", "d"]).await;

    // Watch dropped and history compacted: kube-rs gets 410 and relists.
    s.drop_watches();
    api.delete("b", &DeleteParams::default()).await.unwrap();
    s.compact_history();
    api.create(&PostParams::default(), &service("e"))
        .await
        .unwrap();
    eventually("relist after 410", || names(&reader) == ["c", "d", "e"]).await;

    // A short outage: the watcher backs off and recovers.
    s.pause_for(Duration::from_millis(800));
    tokio::time::sleep(Duration::from_millis(900)).await;
    api.delete("c", &DeleteParams::default()).await.unwrap();
    eventually("after outage", || names(&reader) == ["d", "e"]).await;
    task.abort();
}

#[tokio::test]
async fn streaming_list_watcher() {
    let (_s, client) = sim().await;
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &service("x"))
        .await
        .unwrap();
    let (reader, writer) = reflector::store::<Service>();
    let stream = reflector(
        writer,
        watcher(api.clone(), watcher::Config::default().streaming_lists()).default_backoff(),
    );
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    reader.wait_until_ready().await.unwrap();
    assert_eq!(reader.state().len(), 1);
    api.create(&PostParams::default(), &service("y"))
        .await
        .unwrap();
    eventually("streamed add", || reader.state().len() == 2).await;
    task.abort();
}

/// A tiny custom resource.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq)]
#[kube(
    group = "test.switchyard.dev",
    version = "v1",
    kind = "Gadget",
    namespaced,
    shortname = "gd",
    status = "GadgetStatus",
    printcolumn = r#"{"name":"Size","type":"integer","jsonPath":".spec.size"}"#
)]
pub struct GadgetSpec {
    size: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<String>,
}

/// Its status.
#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, PartialEq, Default)]
pub struct GadgetStatus {
    ready: bool,
    observed: i64,
}

#[tokio::test]
async fn crd_and_server_side_apply() {
    let (_s, client) = sim().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &Gadget::crd())
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        await_condition(
            crds,
            "gadgets.test.switchyard.dev",
            conditions::is_crd_established(),
        ),
    )
    .await
    .unwrap()
    .unwrap();

    let api: Api<Gadget> = Api::namespaced(client.clone(), "default");
    let pp = PatchParams::apply("kube-sim-test").force();
    let g = Gadget::new(
        "g1",
        GadgetSpec {
            size: 3,
            label: None,
        },
    );
    let created = api.patch("g1", &pp, &Patch::Apply(&g)).await.unwrap();
    assert_eq!(created.spec.size, 3);
    assert_eq!(created.metadata.generation, Some(1));

    let applied = api
        .patch(
            "g1",
            &pp,
            &Patch::Apply(
                json!({"apiVersion": "test.switchyard.dev/v1", "kind": "Gadget",
                "spec": {"size": 4, "label": "x"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        applied.spec,
        GadgetSpec {
            size: 4,
            label: Some("x".into())
        }
    );
    assert_eq!(applied.metadata.generation, Some(2));

    let st = api
        .patch_status(
            "g1",
            &pp,
            &Patch::Apply(
                json!({"apiVersion": "test.switchyard.dev/v1", "kind": "Gadget",
                "status": {"ready": true, "observed": 2}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        st.status,
        Some(GadgetStatus {
            ready: true,
            observed: 2
        })
    );
    assert_eq!(
        st.metadata.generation,
        Some(2),
        "status does not bump generation"
    );

    // The main resource ignores status; merge patches work too.
    let p = api
        .patch(
            "g1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 5}, "status": {"ready": false}})),
        )
        .await
        .unwrap();
    assert_eq!((p.spec.size, p.status.unwrap().ready), (5, true));
    let got = api.get_status("g1").await.unwrap();
    assert_eq!(got.status.unwrap().observed, 2);
}

#[tokio::test]
async fn lease_optimistic_concurrency() {
    let (_s, client) = sim().await;
    let leases: Api<Lease> = Api::namespaced(client, "kube-system");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "switchyard-operator"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}
    }))
    .unwrap();
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    let mut mine = created.clone();
    mine.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let replaced = leases
        .replace("switchyard-operator", &PostParams::default(), &mine)
        .await
        .unwrap();
    let replaced_rv = replaced.metadata.resource_version.clone();
    assert_eq!(replaced.spec.unwrap().holder_identity.as_deref(), Some("b"));
    // A second replace with the stale resourceVersion loses.
    let err = leases
        .replace("switchyard-operator", &PostParams::default(), &mine)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err:?}"
    );
    // Delete with a stale resourceVersion precondition conflicts; the current one works.
    let stale = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            resource_version: created.metadata.resource_version.clone(),
            uid: None,
        }),
        ..Default::default()
    };
    let err = leases
        .delete("switchyard-operator", &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err:?}"
    );
    let current = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            resource_version: replaced_rv,
            uid: None,
        }),
        ..Default::default()
    };
    leases
        .delete("switchyard-operator", &current)
        .await
        .unwrap();
}

#[tokio::test]
async fn recorder_events_show_in_both_event_apis() {
    use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference};
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let (_s, client) = sim().await;
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "switchyard-agent".into(),
            instance: Some("test-node".into()),
        },
    );
    let node = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some("test-node".into()),
        namespace: Some("default".into()),
        ..Default::default()
    };
    let ev = Event {
        type_: EventType::Warning,
        reason: "FallbackActivated".into(),
        note: Some("nftables unavailable".into()),
        action: "Sync".into(),
        secondary: None,
    };
    recorder.publish(&ev, &node).await.unwrap();
    recorder.publish(&ev, &node).await.unwrap();
    let core: Api<CoreEvent> = Api::namespaced(client, "default");
    let list = core
        .list(&ListParams::default().fields("involvedObject.name=test-node"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1, "the repeat is a series patch");
    let e = &list.items[0];
    assert_eq!(e.message.as_deref(), Some("nftables unavailable"));
    assert_eq!(e.reason.as_deref(), Some("FallbackActivated"));
}

//! Watch streams: newline-delimited JSON events over a chunked response, replayed from the
//! requested resourceVersion (410 Expired when it is older than the history), filtered by
//! namespace and selectors, with periodic BOOKMARKs, `timeoutSeconds`, the
//! `sendInitialEvents` streaming-list mode, and termination on a simulated outage.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use crate::registry::ResourceType;
use crate::selector::Selectors;
use crate::server::Shared;
use crate::store::{Event, EventType, Store};
use crate::table::{self, IncludeObject};

/// What the client asked of a watch.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    pub rt: ResourceType,
    pub namespace: Option<String>,
    pub selectors: Selectors,
    /// `None`: start with synthetic ADDED events for every current object.
    pub from: Option<u64>,
    pub send_initial_events: bool,
    pub bookmarks: bool,
    pub timeout: Option<Duration>,
    /// `Some` when kubectl asked for Table-wrapped objects.
    pub table: Option<IncludeObject>,
}

fn line(type_: &str, object: Value) -> Bytes {
    let mut s = json!({"type": type_, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

impl WatchRequest {
    fn wants(&self, obj: &Value) -> bool {
        let ns_ok = self
            .namespace
            .as_deref()
            .is_none_or(|n| obj["metadata"]["namespace"] == n);
        ns_ok && self.selectors.matches(obj)
    }

    /// Wraps an already presented object as kubectl asked.
    fn render(&self, o: Value) -> Value {
        match self.table {
            Some(inc) => {
                let rv = o["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                table::to_table(&self.rt, &[o], &rv, inc)
            }
            None => o,
        }
    }

    /// The line(s) an event produces for this watch.
    fn translate(&self, ev: &Event) -> Option<Bytes> {
        if ev.key != self.rt.store_key() {
            return None;
        }
        let object = Store::present(&self.rt, &ev.object);
        let now = self.wants(&object);
        let before = ev
            .old
            .as_ref()
            .is_some_and(|o| self.wants(&Store::present(&self.rt, o)));
        let type_ = match (ev.type_, before, now) {
            (EventType::Added, _, true) => EventType::Added,
            (EventType::Deleted, _, true) => EventType::Deleted,
            (EventType::Modified, true, true) => EventType::Modified,
            (EventType::Modified, false, true) => EventType::Added,
            (EventType::Modified, true, false) => EventType::Deleted,
            _ => return None,
        };
        Some(line(type_.as_str(), self.render(object)))
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(
            "BOOKMARK",
            json!({"kind": self.rt.kind, "apiVersion": self.rt.api_version(), "metadata": meta}),
        )
    }
}

/// Starts a watch and returns the streaming response.
pub fn respond(shared: Arc<Shared>, req: WatchRequest) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let setup = {
        let store = shared.store.lock().expect("store lock");
        let from = if req.send_initial_events {
            None
        } else {
            req.from
        };
        store.watch(&req.rt, from)
    };
    let mut epoch = shared.epoch.subscribe();
    let interval = shared.options.bookmark_interval;
    tokio::spawn(async move {
        let (replay, start_rv, mut events) = match setup {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(line("ERROR", e.to_status())).await;
                return;
            }
        };
        for ev in &replay {
            if let Some(b) = req.translate(ev) {
                if tx.send(b).await.is_err() {
                    return;
                }
            }
        }
        let mut last_rv = start_rv;
        if req.send_initial_events && tx.send(req.bookmark(last_rv, true)).await.is_err() {
            return;
        }
        let deadline = req.timeout.map(|t| tokio::time::Instant::now() + t);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            let sleep_until = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(ev) => {
                        if ev.rv <= last_rv {
                            continue;
                        }
                        last_rv = ev.rv;
                        if let Some(b) = req.translate(&ev) {
                            if tx.send(b).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let e = crate::status::ApiError::expired();
                        let _ = tx.send(line("ERROR", e.to_status())).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick(), if req.bookmarks => {
                    if tx.send(req.bookmark(last_rv, false)).await.is_err() {
                        return;
                    }
                }
                _ = sleep_until => return,
                _ = epoch.changed() => return,
                _ = tx.closed() => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(stream))
        .expect("response")
}

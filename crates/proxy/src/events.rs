//! The event bus and its sinks: the structured log, the SSE stream
//! (`/_marathon/events`), an optional webhook, an optional command hook.
//!
//! Publishing never blocks a request: the bus is a broadcast channel, and slow
//! sinks lag (and say so) instead of holding anyone up. Events carry labels,
//! never secrets — that is enforced where they are built, in the core.

use std::process::Stdio;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request};
use marathon_core::events::Event;
use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast;

use crate::activity::Activity;
use crate::body::ProxyBody;
use crate::upstream::UpstreamClient;

/// Where events go besides the log and the SSE stream.
#[derive(Clone, Debug, Default)]
pub struct EventSinks {
    /// POST each event as JSON to this URL.
    pub webhook: Option<String>,
    /// Run this shell command per event with the event JSON on stdin
    /// (e.g. `notify-send marathon "$(jq -r .summary)"`).
    pub command: Option<String>,
}

/// Fan-out of events to every subscriber.
#[derive(Clone)]
pub(crate) struct EventBus {
    tx: broadcast::Sender<Arc<EventJson>>,
    /// The last events and per-account counts, for the views.
    pub(crate) activity: Arc<Activity>,
}

/// An event, serialized once for every sink.
pub(crate) struct EventJson {
    pub json: String,
}

impl EventBus {
    pub(crate) fn new() -> Self {
        EventBus {
            tx: broadcast::channel(1024).0,
            activity: Arc::default(),
        }
    }

    pub(crate) fn publish(&self, event: &Event) -> Arc<EventJson> {
        let mut value = serde_json::to_value(event).unwrap_or_default();
        if let Some(obj) = value.as_object_mut() {
            obj.insert("summary".into(), event.to_string().into());
        }
        let json = value.to_string();
        tracing::info!(target: "marathon::event", provider = %event.provider, "{event}");
        self.activity.record_event(event, &json);
        let ev = Arc::new(EventJson { json });
        let _ = self.tx.send(ev.clone());
        ev
    }

    /// Another instance's event (already logged there): to this instance's
    /// subscribers only, so `/_marathon/events` on any instance shows all.
    pub(crate) fn relay(&self, json: String) {
        let _ = self.tx.send(Arc::new(EventJson { json }));
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<EventJson>> {
        self.tx.subscribe()
    }

    /// Starts the webhook and command sinks, if configured.
    pub(crate) fn start_sinks(&self, sinks: &EventSinks, client: UpstreamClient) {
        if let Some(url) = sinks.webhook.clone() {
            match url.parse::<http::Uri>() {
                Ok(uri) => {
                    let rx = self.subscribe();
                    tokio::spawn(webhook_sink(rx, uri, client));
                }
                Err(_) => {
                    tracing::error!("events.webhook is not a valid URL; webhook sink disabled")
                }
            }
        }
        if let Some(cmd) = sinks.command.clone() {
            let rx = self.subscribe();
            tokio::spawn(command_sink(rx, cmd));
        }
    }
}

async fn webhook_sink(
    mut rx: broadcast::Receiver<Arc<EventJson>>,
    uri: http::Uri,
    client: UpstreamClient,
) {
    let Some((endpoint, path)) = client.endpoint_of_url(&uri) else {
        tracing::error!("events.webhook must be an absolute http(s) URL; webhook sink disabled");
        return;
    };
    loop {
        let ev = match rx.recv().await {
            Ok(ev) => ev,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!("webhook sink fell behind; {n} events not delivered");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let req = Request::builder()
            .method(Method::POST)
            .uri(path.clone())
            .header(http::header::HOST, endpoint.host().clone())
            .header("content-type", "application/json")
            .body(ProxyBody::full(Bytes::from(ev.json.clone())));
        let Ok(req) = req else { continue };
        let sent = client.send(&endpoint, req);
        match tokio::time::timeout(std::time::Duration::from_secs(10), sent).await {
            Ok(Ok((resp, _))) if resp.status().is_success() => {}
            Ok(Ok((resp, _))) => {
                tracing::warn!(status = resp.status().as_u16(), "webhook answered an error")
            }
            Ok(Err(e)) => tracing::warn!("webhook unreachable: {e}"),
            Err(_) => tracing::warn!("webhook timed out"),
        }
    }
}

async fn command_sink(mut rx: broadcast::Receiver<Arc<EventJson>>, cmd: String) {
    loop {
        let ev = match rx.recv().await {
            Ok(ev) => ev,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!("event command hook fell behind; {n} events skipped");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        // One at a time, in order: a notifier that pops toasts should see
        // them in the order they happened.
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("event command hook could not start: {e}");
                continue;
            }
        };
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(ev.json.as_bytes()).await;
            let _ = stdin.write_all(b"\n").await;
        }
        match tokio::time::timeout(std::time::Duration::from_secs(30), child.wait()).await {
            Ok(Ok(status)) if !status.success() => {
                tracing::warn!("event command hook exited with {status}")
            }
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill().await;
                tracing::warn!("event command hook took over 30s; killed");
            }
        }
    }
}
